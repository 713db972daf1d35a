//! Request encoders and response decoders for the four targets. A codec turns
//! a key (and value) into request bytes appended to a connection's write
//! buffer, and reads one response from the front of a read buffer. Neither
//! allocates: buffers are the connection's, reused for the whole run.

pub mod binary;
pub mod http;
pub mod memcache;
pub mod resp;
pub mod template;

#[cfg(test)]
mod proptests;

use crate::stats::ErrLabel;

/// What a request asked for; decides how its response is read and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read one key.
    Get,
    /// Write one key.
    Set,
}

/// How one request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A get that found its key.
    Hit,
    /// A get whose key was absent (or expired): not an error.
    Miss,
    /// A set the server accepted.
    Stored,
    /// The server answered with an error; the label names its status.
    Error(ErrLabel),
}

/// The result of looking at the front of a read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// One whole response of `len` bytes.
    Done { len: usize, outcome: Outcome },
    /// More bytes are needed.
    Incomplete,
}

/// The bytes cannot be a response of this protocol; the connection must close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProtoError(pub &'static str);

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// A target protocol with its per-run settings.
#[derive(Debug, Clone)]
pub enum Codec {
    /// dnd-cache's framed protobuf protocol.
    Binary,
    /// dnd-cache's REST API; `host` goes in the Host header.
    Http { host: String },
    /// Redis RESP2.
    Resp,
    /// memcached's text protocol.
    Memcache,
}

impl Codec {
    /// Appends a get of `key`.
    #[inline]
    pub fn encode_get(&self, out: &mut Vec<u8>, key: &[u8]) {
        match self {
            Codec::Binary => binary::encode_get(out, key),
            Codec::Http { host } => http::encode_get(out, host, key),
            Codec::Resp => resp::encode_get(out, key),
            Codec::Memcache => memcache::encode_get(out, key),
        }
    }

    /// Appends a set of `key` to `value`; `ttl` seconds, 0 for none/default.
    #[inline]
    pub fn encode_set(&self, out: &mut Vec<u8>, key: &[u8], value: &[u8], ttl: u32) {
        match self {
            Codec::Binary => binary::encode_set(out, key, value, ttl),
            Codec::Http { host } => http::encode_set(out, host, key, value, ttl),
            Codec::Resp => resp::encode_set(out, key, value, ttl),
            Codec::Memcache => memcache::encode_set(out, key, value, ttl),
        }
    }

    /// Reads the response to a request of `kind` from the front of `buf`.
    #[inline]
    pub fn parse(&self, buf: &[u8], kind: Kind) -> Result<Parsed, ProtoError> {
        match self {
            Codec::Binary => binary::parse_response(buf, kind),
            Codec::Http { .. } => http::parse_response(buf, kind),
            Codec::Resp => resp::parse_response(buf, kind),
            Codec::Memcache => memcache::parse_response(buf, kind),
        }
    }
}

/// Appends the decimal digits of `v`.
#[inline]
pub(crate) fn push_decimal(out: &mut Vec<u8>, v: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = v;
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Index of the first `\r\n` in `buf`, if any.
#[inline]
pub(crate) fn find_crlf(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let at = from + i;
        if at > 0 && buf[at - 1] == b'\r' {
            return Some(at - 1);
        }
        from = at + 1;
    }
    None
}

/// Parses an unsigned decimal; `None` on anything else (or overflow).
#[inline]
pub(crate) fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + (b - b'0') as u64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_round_trip() {
        for v in [
            0u64,
            7,
            10,
            99,
            100,
            12345,
            u32::MAX as u64,
            1_000_000_000_000_000_000,
        ] {
            let mut out = Vec::new();
            push_decimal(&mut out, v);
            assert_eq!(out, v.to_string().as_bytes());
            assert_eq!(parse_decimal(&out), Some(v));
        }
        assert_eq!(parse_decimal(b""), None);
        assert_eq!(parse_decimal(b"1a"), None);
        assert_eq!(parse_decimal(b"-1"), None);
    }

    #[test]
    fn crlf_search_skips_bare_newlines() {
        assert_eq!(find_crlf(b"ab\r\n"), Some(2));
        assert_eq!(find_crlf(b"a\nb\r\n"), Some(3));
        assert_eq!(find_crlf(b"\nabc"), None);
        assert_eq!(find_crlf(b"abc\r"), None);
    }
}
