//! Wire codecs. Nothing here knows about storage: bytes in, operations out;
//! results in, bytes out.

pub mod binary;
pub mod frame;
pub mod http;
pub mod wire;

pub use binary::{decode_operation, OpView, ResponseEncoder};
pub use frame::{FrameError, FRAME_HEADER_BYTES};
