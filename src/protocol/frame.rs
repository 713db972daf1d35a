//! Framing: a 4-byte big-endian length, then that many bytes of one message.

use thiserror::Error;

/// Bytes of the length prefix.
pub const FRAME_HEADER_BYTES: usize = 4;

/// Largest frame accepted before the handshake succeeds.
pub const HANDSHAKE_MAX_FRAME_BYTES: usize = 16 * 1024;

/// Default largest frame (`--max-frame-bytes`).
pub const DEFAULT_MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Why the byte stream cannot be read as frames any more.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// The declared length exceeds the limit in force.
    #[error("frame of {declared} bytes exceeds the limit of {limit}")]
    TooLarge { declared: usize, limit: usize },
    /// The stream starts like an HTTP request, not a frame.
    #[error("an HTTP request was sent to the binary port")]
    LooksLikeHttp,
}

/// The outcome of looking for one frame at the start of `buf`.
#[derive(Debug, PartialEq, Eq)]
pub enum FrameStatus {
    /// A whole frame: its body is `buf[4..4 + len]`.
    Complete { len: usize },
    /// More bytes are needed; `needed` is the total frame size when known.
    Incomplete { needed: Option<usize> },
}

/// Looks for one frame at the start of `buf` under `max_frame` bytes.
#[inline]
pub fn check_frame(buf: &[u8], max_frame: usize) -> Result<FrameStatus, FrameError> {
    let Some(header) = buf.get(..FRAME_HEADER_BYTES) else {
        return Ok(FrameStatus::Incomplete { needed: None });
    };
    let len = u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize;
    if len > max_frame {
        if looks_like_http(buf) {
            return Err(FrameError::LooksLikeHttp);
        }
        return Err(FrameError::TooLarge {
            declared: len,
            limit: max_frame,
        });
    }
    let total = FRAME_HEADER_BYTES + len;
    if buf.len() >= total {
        Ok(FrameStatus::Complete { len })
    } else {
        Ok(FrameStatus::Incomplete { needed: Some(total) })
    }
}

/// HTTP methods as the first bytes of a stream: such a "length" is always
/// far over any frame limit, so this only refines the error message.
fn looks_like_http(buf: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ", b"PUT ", b"POST", b"HEAD", b"DELE", b"OPTI", b"PATC", b"CONN", b"TRAC",
    ];
    METHODS.iter().any(|m| buf.starts_with(m))
}

/// Appends `body` as one frame.
pub fn write_frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_found_whole_or_reported_incomplete() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"hello");
        assert_eq!(check_frame(&buf, 100), Ok(FrameStatus::Complete { len: 5 }));
        assert_eq!(
            check_frame(&buf[..6], 100),
            Ok(FrameStatus::Incomplete { needed: Some(9) })
        );
        assert_eq!(
            check_frame(&buf[..3], 100),
            Ok(FrameStatus::Incomplete { needed: None })
        );
        assert_eq!(
            check_frame(&buf, 4),
            Err(FrameError::TooLarge {
                declared: 5,
                limit: 4
            })
        );
        assert_eq!(
            check_frame(b"GET / HTTP/1.1\r\n", 1 << 24),
            Err(FrameError::LooksLikeHttp)
        );
        assert_eq!(
            check_frame(&[0, 0, 0, 0], 0),
            Ok(FrameStatus::Complete { len: 0 })
        );
    }
}
