//! dnd-cache's REST API over HTTP/1.1 keep-alive (pipelined when
//! `--pipeline` > 1): `GET /api/v2/cache/{key}` and `PUT /api/v2/cache/{key}`
//! with the raw value as an `application/octet-stream` body.

use super::{find_crlf, parse_decimal, push_decimal, Kind, Outcome, Parsed, ProtoError};
use crate::stats::ErrLabel;

/// Largest response header block we accept.
const MAX_HEAD: usize = 64 << 10;

/// Appends `key` to a path, percent-encoding bytes outside RFC 3986 `pchar`.
fn push_path_key(out: &mut Vec<u8>, key: &[u8]) {
    for &b in key {
        let plain = b.is_ascii_alphanumeric() || b"-._~:@!$&'()*+,;=".contains(&b);
        if plain {
            out.push(b);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.extend_from_slice(&[b'%', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        }
    }
}

/// Appends `GET /api/v2/cache/{key}`.
#[inline]
pub fn encode_get(out: &mut Vec<u8>, host: &str, key: &[u8]) {
    out.extend_from_slice(b"GET /api/v2/cache/");
    push_path_key(out, key);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
}

/// Appends `PUT /api/v2/cache/{key}[?ttl=N]` with `value` as the body.
#[inline]
pub fn encode_set(out: &mut Vec<u8>, host: &str, key: &[u8], value: &[u8], ttl: u32) {
    out.extend_from_slice(b"PUT /api/v2/cache/");
    push_path_key(out, key);
    if ttl != 0 {
        out.extend_from_slice(b"?ttl=");
        push_decimal(out, ttl as u64);
    }
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(host.as_bytes());
    out.extend_from_slice(b"\r\nContent-Type: application/octet-stream\r\nContent-Length: ");
    push_decimal(out, value.len() as u64);
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(value);
}

/// How the body of a response is delimited.
enum Body {
    Length(usize),
    Chunked,
}

/// Length of a chunked body starting at `buf[0]`, or `None` when incomplete.
fn chunked_len(buf: &[u8]) -> Result<Option<usize>, ProtoError> {
    let mut pos = 0;
    loop {
        let Some(eol) = find_crlf(&buf[pos..]) else {
            return Ok(None);
        };
        let size_field = &buf[pos..pos + eol];
        let hex = size_field.split(|&b| b == b';').next().unwrap_or(size_field);
        let hex = std::str::from_utf8(hex).map_err(|_| ProtoError("bad chunk size"))?;
        let size = usize::from_str_radix(hex.trim(), 16).map_err(|_| ProtoError("bad chunk size"))?;
        pos += eol + 2;
        if size == 0 {
            // Trailer fields, then an empty line.
            loop {
                let Some(eol) = find_crlf(&buf[pos..]) else {
                    return Ok(None);
                };
                pos += eol + 2;
                if eol == 0 {
                    return Ok(Some(pos));
                }
            }
        }
        pos += size + 2;
        if buf.len() < pos {
            return Ok(None);
        }
        if &buf[pos - 2..pos] != b"\r\n" {
            return Err(ProtoError("chunk not followed by CRLF"));
        }
    }
}

/// Reads one response to a GET or PUT.
pub fn parse_response(buf: &[u8], kind: Kind) -> Result<Parsed, ProtoError> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            return Err(ProtoError("response header too large"));
        }
        return Ok(Parsed::Incomplete);
    };
    let head = &buf[..head_end];
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = lines.next().unwrap_or_default();
    if !status_line.starts_with(b"HTTP/1.") || status_line.len() < 12 {
        return Err(ProtoError("not an HTTP/1.x status line"));
    }
    let status = parse_decimal(&status_line[9..12]).ok_or(ProtoError("bad HTTP status"))? as u32;
    let mut body = if (100..200).contains(&status) || status == 204 || status == 304 {
        Some(Body::Length(0))
    } else {
        None
    };
    for line in lines {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(ProtoError("bad header line"));
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_decimal(value).ok_or(ProtoError("bad Content-Length"))?;
            body = Some(Body::Length(n as usize));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") && value.eq_ignore_ascii_case(b"chunked") {
            body = Some(Body::Chunked);
        }
    }
    let start = head_end + 4;
    let len = match body {
        Some(Body::Length(n)) => start + n,
        Some(Body::Chunked) => match chunked_len(&buf[start..])? {
            Some(n) => start + n,
            None => return Ok(Parsed::Incomplete),
        },
        None => {
            return Err(ProtoError(
                "response without Content-Length on a kept-alive connection",
            ))
        }
    };
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let outcome = match (status, kind) {
        (200, Kind::Get) => Outcome::Hit,
        (404, Kind::Get) => Outcome::Miss,
        (200..=299, Kind::Set) => Outcome::Stored,
        (s, _) => {
            let mut label = *b"http_000";
            label[5] = b'0' + (s / 100 % 10) as u8;
            label[6] = b'0' + (s / 10 % 10) as u8;
            label[7] = b'0' + (s % 10) as u8;
            Outcome::Error(ErrLabel::new(&label))
        }
    };
    Ok(Parsed::Done { len, outcome })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_requests() {
        let mut out = Vec::new();
        encode_get(&mut out, "h:1", b"character:7");
        assert_eq!(
            out,
            b"GET /api/v2/cache/character:7 HTTP/1.1\r\nHost: h:1\r\n\r\n"
        );
        out.clear();
        encode_set(&mut out, "h", b"a/b%", b"xyz", 0);
        assert_eq!(
            out,
            b"PUT /api/v2/cache/a%2Fb%25 HTTP/1.1\r\nHost: h\r\nContent-Type: application/octet-stream\r\n\
              Content-Length: 3\r\n\r\nxyz"
                .as_slice()
        );
        out.clear();
        encode_set(&mut out, "h", b"k", b"", 30);
        assert!(out.starts_with(b"PUT /api/v2/cache/k?ttl=30 HTTP/1.1\r\n"));
    }

    #[test]
    fn parses_length_chunked_and_errors() {
        let hit = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc";
        assert_eq!(
            parse_response(hit, Kind::Get),
            Ok(Parsed::Done {
                len: hit.len(),
                outcome: Outcome::Hit
            })
        );
        for cut in 0..hit.len() {
            assert_eq!(parse_response(&hit[..cut], Kind::Get), Ok(Parsed::Incomplete));
        }
        let miss = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\nHTTP/1.1";
        assert_eq!(
            parse_response(miss, Kind::Get),
            Ok(Parsed::Done {
                len: 45,
                outcome: Outcome::Miss
            })
        );
        let put = b"HTTP/1.1 204 No Content\r\n\r\n";
        assert_eq!(
            parse_response(put, Kind::Set),
            Ok(Parsed::Done {
                len: put.len(),
                outcome: Outcome::Stored
            })
        );
        let chunked =
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n";
        assert_eq!(
            parse_response(chunked, Kind::Get),
            Ok(Parsed::Done {
                len: chunked.len(),
                outcome: Outcome::Hit
            })
        );
        for cut in 0..chunked.len() {
            assert_eq!(
                parse_response(&chunked[..cut], Kind::Get),
                Ok(Parsed::Incomplete),
                "cut {cut}"
            );
        }
        let full = b"HTTP/1.1 507 Insufficient Storage\r\nContent-Length: 2\r\n\r\n{}";
        let Ok(Parsed::Done {
            outcome: Outcome::Error(l),
            ..
        }) = parse_response(full, Kind::Set)
        else {
            panic!("507 must be an error");
        };
        assert_eq!(l.as_str(), "http_507");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n", Kind::Get).is_err());
        assert!(parse_response(b"SSH-2.0 hi\r\n\r\n", Kind::Get).is_err());
        assert!(parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            Kind::Get
        )
        .is_err());
    }
}
