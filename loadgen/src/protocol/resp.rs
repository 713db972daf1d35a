//! Redis RESP2: `GET key` and `SET key value [EX ttl]` as arrays of bulk
//! strings; replies are read without building reply objects (the cost that
//! makes redis-benchmark's hiredis reader expensive per request).

use super::{find_crlf, parse_decimal, push_decimal, Kind, Outcome, Parsed, ProtoError};
use crate::stats::ErrLabel;

fn push_bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'$');
    push_decimal(out, bytes.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// Appends `GET key`.
#[inline]
pub fn encode_get(out: &mut Vec<u8>, key: &[u8]) {
    out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
    push_bulk(out, key);
}

/// Appends `SET key value` (with `EX ttl` when `ttl` is not 0).
#[inline]
pub fn encode_set(out: &mut Vec<u8>, key: &[u8], value: &[u8], ttl: u32) {
    out.extend_from_slice(if ttl == 0 {
        b"*3\r\n$3\r\nSET\r\n"
    } else {
        b"*5\r\n$3\r\nSET\r\n"
    });
    push_bulk(out, key);
    push_bulk(out, value);
    if ttl != 0 {
        out.extend_from_slice(b"$2\r\nEX\r\n");
        let mut digits = [0u8; 10];
        let mut v = ttl;
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        push_bulk(out, &digits[i..]);
    }
}

/// The first word of an error line (`ERR`, `WRONGTYPE`, `OOM`, ...).
fn error_label(line: &[u8]) -> ErrLabel {
    let word = line.split(|&b| b == b' ').next().unwrap_or(line);
    ErrLabel::new(word)
}

/// Reads one reply to a GET or SET.
#[inline]
pub fn parse_response(buf: &[u8], kind: Kind) -> Result<Parsed, ProtoError> {
    let Some(eol) = find_crlf(buf) else {
        return Ok(Parsed::Incomplete);
    };
    let line = &buf[1..eol];
    let head = eol + 2;
    let done = |len, outcome| Ok(Parsed::Done { len, outcome });
    match buf[0] {
        b'+' | b':' => done(
            head,
            if kind == Kind::Get {
                Outcome::Hit
            } else {
                Outcome::Stored
            },
        ),
        b'-' => done(head, Outcome::Error(error_label(line))),
        b'_' => done(head, Outcome::Miss),
        b'$' if line == b"-1" => done(head, Outcome::Miss),
        b'$' => {
            let n = parse_decimal(line).ok_or(ProtoError("bad bulk length"))? as usize;
            let len = head + n + 2;
            if buf.len() < len {
                return Ok(Parsed::Incomplete);
            }
            if &buf[len - 2..len] != b"\r\n" {
                return Err(ProtoError("bulk string not followed by CRLF"));
            }
            // A SET answered with a bulk string is SET ... GET; count it stored.
            done(
                len,
                if kind == Kind::Get {
                    Outcome::Hit
                } else {
                    Outcome::Stored
                },
            )
        }
        _ => Err(ProtoError("unexpected RESP reply type")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_get(&mut out, b"k:1");
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$3\r\nk:1\r\n");
        out.clear();
        encode_set(&mut out, b"k", b"hello", 0);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n");
        out.clear();
        encode_set(&mut out, b"k", b"v", 3600);
        assert_eq!(
            out,
            b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nEX\r\n$4\r\n3600\r\n"
        );
    }

    #[test]
    fn parses_replies() {
        let p = |b: &[u8], k| parse_response(b, k);
        assert_eq!(
            p(b"+OK\r\n", Kind::Set),
            Ok(Parsed::Done {
                len: 5,
                outcome: Outcome::Stored
            })
        );
        assert_eq!(
            p(b"$-1\r\n", Kind::Get),
            Ok(Parsed::Done {
                len: 5,
                outcome: Outcome::Miss
            })
        );
        assert_eq!(
            p(b"$5\r\nhello\r\n+OK", Kind::Get),
            Ok(Parsed::Done {
                len: 11,
                outcome: Outcome::Hit
            })
        );
        assert_eq!(
            p(b"$0\r\n\r\n", Kind::Get),
            Ok(Parsed::Done {
                len: 6,
                outcome: Outcome::Hit
            })
        );
        let Ok(Parsed::Done {
            outcome: Outcome::Error(l),
            len: 40,
        }) = p(b"-OOM command not allowed when used mem\r\n", Kind::Set)
        else {
            panic!("error reply not recognised");
        };
        assert_eq!(l.as_str(), "OOM");
        for cut in 0..11 {
            assert_eq!(p(&b"$5\r\nhello\r\n"[..cut], Kind::Get), Ok(Parsed::Incomplete));
        }
        assert!(p(b"$5\r\nhelloXY", Kind::Get).is_err());
        assert!(p(b"*1\r\n", Kind::Get).is_err());
        assert!(p(b"$x\r\n", Kind::Get).is_err());
    }
}
