//! memcached's text protocol: `get key` and `set key 0 ttl bytes`.

use super::{find_crlf, parse_decimal, push_decimal, Kind, Outcome, Parsed, ProtoError};
use crate::stats::ErrLabel;

/// Appends `get key`.
#[inline]
pub fn encode_get(out: &mut Vec<u8>, key: &[u8]) {
    out.extend_from_slice(b"get ");
    out.extend_from_slice(key);
    out.extend_from_slice(b"\r\n");
}

/// Appends `set key 0 ttl len` and the value.
#[inline]
pub fn encode_set(out: &mut Vec<u8>, key: &[u8], value: &[u8], ttl: u32) {
    out.extend_from_slice(b"set ");
    out.extend_from_slice(key);
    out.extend_from_slice(b" 0 ");
    push_decimal(out, ttl as u64);
    out.push(b' ');
    push_decimal(out, value.len() as u64);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// An error line (`ERROR`, `CLIENT_ERROR ...`, `SERVER_ERROR ...`), if it is one.
fn error_line(line: &[u8]) -> Option<ErrLabel> {
    let word = line.split(|&b| b == b' ').next().unwrap_or(line);
    matches!(word, b"ERROR" | b"CLIENT_ERROR" | b"SERVER_ERROR").then(|| ErrLabel::new(word))
}

/// Reads one response to a get or set.
#[inline]
pub fn parse_response(buf: &[u8], kind: Kind) -> Result<Parsed, ProtoError> {
    let Some(eol) = find_crlf(buf) else {
        return Ok(Parsed::Incomplete);
    };
    let line = &buf[..eol];
    let head = eol + 2;
    if let Some(label) = error_line(line) {
        return Ok(Parsed::Done {
            len: head,
            outcome: Outcome::Error(label),
        });
    }
    match kind {
        Kind::Set => {
            let outcome = match line {
                b"STORED" => Outcome::Stored,
                b"NOT_STORED" | b"EXISTS" | b"NOT_FOUND" => Outcome::Error(ErrLabel::new(line)),
                _ => return Err(ProtoError("unexpected reply to set")),
            };
            Ok(Parsed::Done { len: head, outcome })
        }
        Kind::Get if line == b"END" => Ok(Parsed::Done {
            len: head,
            outcome: Outcome::Miss,
        }),
        Kind::Get => {
            // VALUE <key> <flags> <bytes> [<cas>]
            let mut words = line.split(|&b| b == b' ');
            if words.next() != Some(b"VALUE") {
                return Err(ProtoError("unexpected reply to get"));
            }
            let bytes = words
                .nth(2)
                .and_then(parse_decimal)
                .ok_or(ProtoError("bad VALUE line"))? as usize;
            let len = head + bytes + 2 + 5;
            if buf.len() < len {
                return Ok(Parsed::Incomplete);
            }
            if &buf[head + bytes..len] != b"\r\nEND\r\n" {
                return Err(ProtoError("VALUE not followed by END"));
            }
            Ok(Parsed::Done {
                len,
                outcome: Outcome::Hit,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode_get(&mut out, b"k:1");
        assert_eq!(out, b"get k:1\r\n");
        out.clear();
        encode_set(&mut out, b"k", b"hello", 60);
        assert_eq!(out, b"set k 0 60 5\r\nhello\r\n");
    }

    #[test]
    fn parses_replies() {
        let p = parse_response;
        let hit = b"VALUE k:1 0 5\r\nhello\r\nEND\r\n";
        assert_eq!(
            p(hit, Kind::Get),
            Ok(Parsed::Done {
                len: hit.len(),
                outcome: Outcome::Hit
            })
        );
        for cut in 0..hit.len() {
            assert_eq!(p(&hit[..cut], Kind::Get), Ok(Parsed::Incomplete), "cut {cut}");
        }
        let with_cas = b"VALUE k 3 2 77\r\nhi\r\nEND\r\n";
        assert_eq!(
            p(with_cas, Kind::Get),
            Ok(Parsed::Done {
                len: with_cas.len(),
                outcome: Outcome::Hit
            })
        );
        assert_eq!(
            p(b"END\r\nEND\r\n", Kind::Get),
            Ok(Parsed::Done {
                len: 5,
                outcome: Outcome::Miss
            })
        );
        assert_eq!(
            p(b"STORED\r\n", Kind::Set),
            Ok(Parsed::Done {
                len: 8,
                outcome: Outcome::Stored
            })
        );
        let Ok(Parsed::Done {
            outcome: Outcome::Error(l),
            ..
        }) = p(b"SERVER_ERROR out of memory storing object\r\n", Kind::Set)
        else {
            panic!("server error not recognised");
        };
        assert_eq!(l.as_str(), "SERVER_ERROR");
        let Ok(Parsed::Done {
            outcome: Outcome::Error(l),
            ..
        }) = p(b"NOT_STORED\r\n", Kind::Set)
        else {
            panic!("NOT_STORED not an error");
        };
        assert_eq!(l.as_str(), "NOT_STORED");
        assert!(p(b"VALUE k 0 2\r\nhiXXEND\r\n", Kind::Get).is_err());
        assert!(p(b"WHAT\r\n", Kind::Set).is_err());
        assert!(p(b"STORED\r\n", Kind::Get).is_err());
    }
}
