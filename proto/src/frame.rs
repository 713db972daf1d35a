//! Framing: a 4-byte big-endian length, then that many bytes of one message.
//!
//! The only code of the project that reads or writes a length prefix:
//! [`check_frame`] (is a whole frame there, under which limit), [`Frames`]
//! and [`next_frame`] (walk frames already checked), [`write_frame`],
//! [`encode_frame`] and [`FrameSlot`] (write one).

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
    let Some(len) = declared_len(buf) else {
        return Ok(FrameStatus::Incomplete { needed: None });
    };
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

/// The length a frame header declares (`None` when fewer than 4 bytes).
#[inline]
pub fn declared_len(buf: &[u8]) -> Option<usize> {
    let header = buf.get(..FRAME_HEADER_BYTES)?;
    Some(u32::from_be_bytes([header[0], header[1], header[2], header[3]]) as usize)
}

/// The body of the frame at `*pos` of `buf`, moving `*pos` past it; `None`
/// when no whole frame starts there.
#[inline]
pub fn next_frame<'a>(buf: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len = declared_len(buf.get(*pos..)?)?;
    let start = *pos + FRAME_HEADER_BYTES;
    let body = buf.get(start..start.checked_add(len)?)?;
    *pos = start + len;
    Some(body)
}

/// The bodies of the whole frames of a buffer, in order; stops at the first
/// incomplete one.
pub struct Frames<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Frames<'a> {
    /// Walks `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Frames { buf, pos: 0 }
    }

    /// Bytes walked so far (whole frames only).
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        next_frame(self.buf, &mut self.pos)
    }
}

/// Appends `body` as one frame.
pub fn write_frame(out: &mut Vec<u8>, body: &[u8]) {
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Appends `msg` as one frame.
pub fn encode_frame<M: prost::Message>(msg: &M, out: &mut Vec<u8>) {
    let len = msg.encoded_len();
    out.reserve(FRAME_HEADER_BYTES + len);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(out).expect("Vec grows as needed");
}

/// A frame whose body is written in place: [`FrameSlot::open`] reserves the
/// header, the caller appends the body, [`FrameSlot::close`] writes its
/// length.
#[must_use = "a frame slot must be closed"]
pub struct FrameSlot {
    start: usize,
}

impl FrameSlot {
    /// Reserves a header at the end of `out`.
    #[inline]
    pub fn open(out: &mut Vec<u8>) -> FrameSlot {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
        FrameSlot { start }
    }

    /// Bytes of the frame written so far, header included.
    #[inline]
    pub fn written(&self, out: &[u8]) -> usize {
        out.len() - self.start
    }

    /// Rewinds `out` to the start of this frame, which is dropped.
    #[inline]
    pub fn discard(self, out: &mut Vec<u8>) {
        out.truncate(self.start);
    }

    /// Writes the length of everything appended since [`FrameSlot::open`].
    #[inline]
    pub fn close(self, out: &mut [u8]) {
        let len = (out.len() - self.start - FRAME_HEADER_BYTES) as u32;
        out[self.start..self.start + FRAME_HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
    }
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

    #[test]
    fn frames_walk_whole_frames_and_stop_at_a_partial_one() {
        let mut buf = Vec::new();
        write_frame(&mut buf, b"one");
        let slot = FrameSlot::open(&mut buf);
        buf.extend_from_slice(b"two!");
        slot.close(&mut buf);
        write_frame(&mut buf, b"three");
        buf.truncate(buf.len() - 1);
        let mut frames = Frames::new(&buf);
        assert_eq!(frames.next(), Some(&b"one"[..]));
        assert_eq!(frames.next(), Some(&b"two!"[..]));
        assert_eq!(frames.next(), None);
        assert_eq!(frames.consumed(), 4 + 3 + 4 + 4);
        assert_eq!(declared_len(&buf[15..]), Some(5));
        assert_eq!(declared_len(&buf[..3]), None);
    }
}
