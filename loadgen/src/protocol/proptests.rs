//! Properties of every response parser: arbitrary bytes never panic; a valid
//! response split anywhere is `Incomplete` until its last byte; back-to-back
//! responses parse one after another with exact lengths.

use proptest::prelude::*;

use super::{binary, http, memcache, resp, Kind, Outcome, Parsed};

type ParseFn = fn(&[u8], Kind) -> Result<Parsed, super::ProtoError>;

const PARSERS: [ParseFn; 4] = [
    binary::parse_response,
    resp::parse_response,
    memcache::parse_response,
    http::parse_response,
];

/// A valid response to a get of a present (`Some(value)`) or absent key, per protocol.
fn responses(value: &Option<Vec<u8>>, metadata: u64) -> [Vec<u8>; 4] {
    let mut bin = Vec::new();
    if let Some(v) = value {
        bin.push(0x12);
        let mut n = v.len() as u64;
        while n >= 0x80 {
            bin.push(n as u8 | 0x80);
            n >>= 7;
        }
        bin.push(n as u8);
        bin.extend_from_slice(v);
        // metadata { created_at }: an unknown-to-us submessage to skip.
        bin.extend_from_slice(&[0x1a, 0x02, 0x08, (metadata & 0x7f) as u8]);
    } else {
        bin.extend_from_slice(&[0x08, 0x01]);
    }
    let mut framed = (bin.len() as u32).to_be_bytes().to_vec();
    framed.extend_from_slice(&bin);
    let (r, m, h) = match value {
        Some(v) => {
            let mut r = format!("${}\r\n", v.len()).into_bytes();
            r.extend_from_slice(v);
            r.extend_from_slice(b"\r\n");
            let mut m = format!("VALUE k {} {}\r\n", metadata % 7, v.len()).into_bytes();
            m.extend_from_slice(v);
            m.extend_from_slice(b"\r\nEND\r\n");
            let mut h = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", v.len()).into_bytes();
            h.extend_from_slice(v);
            (r, m, h)
        }
        None => (
            b"$-1\r\n".to_vec(),
            b"END\r\n".to_vec(),
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
        ),
    };
    [framed, r, m, h]
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        for parse in PARSERS {
            let _ = parse(&bytes, Kind::Get);
            let _ = parse(&bytes, Kind::Set);
        }
    }

    #[test]
    fn split_and_concatenated_responses(
        values in proptest::collection::vec(
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..400)), 1..5),
        metadata in any::<u64>(),
        cut in any::<prop::sample::Index>(),
        flip in any::<u8>(),
    ) {
        for (p, parse) in PARSERS.iter().enumerate() {
            let mut stream = Vec::new();
            let mut lens = Vec::new();
            for v in &values {
                let one = responses(v, metadata)[p].clone();
                lens.push(one.len());
                stream.extend_from_slice(&one);
            }
            // Every proper prefix of the first response is incomplete.
            let first = lens[0];
            let at = cut.index(first);
            prop_assert_eq!(parse(&stream[..at], Kind::Get), Ok(Parsed::Incomplete), "protocol {}", p);
            // A corrupted byte may make it an error, never a panic.
            let mut bad = stream.clone();
            bad[at] ^= flip.max(1);
            let _ = parse(&bad, Kind::Get);
            let _ = parse(&bad, Kind::Set);
            // The whole stream parses response by response.
            let mut pos = 0;
            for (v, len) in values.iter().zip(&lens) {
                let expected = if v.is_some() { Outcome::Hit } else { Outcome::Miss };
                prop_assert_eq!(
                    parse(&stream[pos..], Kind::Get),
                    Ok(Parsed::Done { len: *len, outcome: expected }),
                    "protocol {}", p
                );
                pos += len;
            }
        }
    }
}
