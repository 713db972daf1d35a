//! dnd-cache's binary protocol (docs/protocol.md): every message is a 4-byte
//! big-endian length and one protobuf body. Only the few fields a load
//! generator needs are written or read; unknown response fields are skipped,
//! so the server may add fields without breaking us.

use super::{Kind, Outcome, Parsed, ProtoError};
use crate::stats::ErrLabel;

/// Largest response frame we accept (the server's own limit is 16 MiB).
const MAX_FRAME: usize = 64 << 20;

const WIRE_VARINT: u8 = 0;
const WIRE_I64: u8 = 1;
const WIRE_LEN: u8 = 2;
const WIRE_I32: u8 = 5;

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn push_bytes_field(out: &mut Vec<u8>, field: u8, bytes: &[u8]) {
    out.push(field << 3 | WIRE_LEN);
    push_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// Starts a frame; returns where its length goes.
fn begin_frame(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    at
}

fn end_frame(out: &mut [u8], at: usize) {
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// Appends `CacheConnection{service_id, auth_token, protocol_version: 1}`.
pub fn encode_handshake(out: &mut Vec<u8>, service_id: &str, token: &str, consistency: &str) {
    let at = begin_frame(out);
    push_bytes_field(out, 1, service_id.as_bytes());
    if !token.is_empty() {
        push_bytes_field(out, 2, token.as_bytes());
    }
    if !consistency.is_empty() {
        // options { consistency }: every request of the connection.
        let mut options = Vec::new();
        push_bytes_field(&mut options, 3, consistency.as_bytes());
        push_bytes_field(out, 3, &options);
    }
    out.push(6 << 3 | WIRE_VARINT);
    push_varint(out, 1);
    end_frame(out, at);
}

/// Appends `CacheOperation{operation: "get", key}`.
#[inline]
pub fn encode_get(out: &mut Vec<u8>, key: &[u8]) {
    let at = begin_frame(out);
    push_bytes_field(out, 1, b"get");
    push_bytes_field(out, 2, key);
    end_frame(out, at);
}

/// Appends `CacheOperation{operation: "set", key, value, ttl}`.
#[inline]
pub fn encode_set(out: &mut Vec<u8>, key: &[u8], value: &[u8], ttl: u32) {
    let at = begin_frame(out);
    push_bytes_field(out, 1, b"set");
    push_bytes_field(out, 2, key);
    push_bytes_field(out, 3, value);
    if ttl != 0 {
        out.push(4 << 3 | WIRE_VARINT);
        push_varint(out, ttl as u64);
    }
    end_frame(out, at);
}

/// Reads a varint at `*pos`, advancing it.
fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, ProtoError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or(ProtoError("truncated varint"))?;
        *pos += 1;
        v |= ((b & 0x7f) as u64) << shift;
        if b < 0x80 {
            return Ok(v);
        }
    }
    Err(ProtoError("varint too long"))
}

/// One field of a protobuf message.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

/// Iterates the fields of one message body.
fn next_field<'a>(body: &'a [u8], pos: &mut usize) -> Result<Option<(u32, Field<'a>)>, ProtoError> {
    if *pos >= body.len() {
        return Ok(None);
    }
    let tag = read_varint(body, pos)?;
    let number = (tag >> 3) as u32;
    let field = match (tag & 7) as u8 {
        WIRE_VARINT => Field::Varint(read_varint(body, pos)?),
        WIRE_LEN => {
            let len = read_varint(body, pos)? as usize;
            let end = pos
                .checked_add(len)
                .filter(|&e| e <= body.len())
                .ok_or(ProtoError("field overruns"))?;
            let bytes = &body[*pos..end];
            *pos = end;
            Field::Bytes(bytes)
        }
        w @ (WIRE_I64 | WIRE_I32) => {
            *pos += if w == WIRE_I64 { 8 } else { 4 };
            if *pos > body.len() {
                return Err(ProtoError("fixed field overruns"));
            }
            Field::Fixed
        }
        _ => return Err(ProtoError("unsupported wire type")),
    };
    Ok(Some((number, field)))
}

/// Splits one frame off the front of `buf`: `(frame length, body)`.
fn frame(buf: &[u8]) -> Result<Option<(usize, &[u8])>, ProtoError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let n = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if n > MAX_FRAME {
        return Err(ProtoError("response frame too large"));
    }
    if buf.len() < 4 + n {
        return Ok(None);
    }
    Ok(Some((4 + n, &buf[4..4 + n])))
}

/// The label of a non-zero status, as docs/protocol.md names it (no
/// allocation: a server may answer every request with an error).
pub fn status_label(status: u32) -> ErrLabel {
    let (prefix, n, width): (&[u8], u32, usize) = match status {
        1..=99 => (b"CACHE_0", status, 2),
        101..=199 => (b"AUTH_0", status - 100, 2),
        _ => (b"status_", status, status.max(1).ilog10() as usize + 1),
    };
    let mut text = [0u8; 24];
    text[..prefix.len()].copy_from_slice(prefix);
    let mut v = n;
    for i in (0..width).rev() {
        text[prefix.len() + i] = b'0' + (v % 10) as u8;
        v /= 10;
    }
    ErrLabel::new(&text[..prefix.len() + width])
}

/// Reads one `CacheResponse` to a get or set.
#[inline]
pub fn parse_response(buf: &[u8], kind: Kind) -> Result<Parsed, ProtoError> {
    let Some((len, body)) = frame(buf)? else {
        return Ok(Parsed::Incomplete);
    };
    let mut status = 0u32;
    let mut pos = 0;
    while let Some((number, field)) = next_field(body, &mut pos)? {
        if let (1, Field::Varint(v)) = (number, field) {
            status = v as u32;
        }
    }
    let outcome = match (status, kind) {
        (0, Kind::Get) => Outcome::Hit,
        (0, Kind::Set) => Outcome::Stored,
        (1 | 2, Kind::Get) => Outcome::Miss,
        (s, _) => Outcome::Error(status_label(s)),
    };
    Ok(Parsed::Done { len, outcome })
}

/// What a shard-aware client keeps from the handshake answer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct HandshakeAnswer {
    /// 0 when the server accepted the connection.
    pub status: u32,
    /// The error text when it did not.
    pub message: String,
    /// Shard that accepted this connection.
    pub shard_id: u32,
    /// Number of shards.
    pub shard_count: u32,
    /// `shard_ports[i]` is shard `i`'s port.
    pub shard_ports: Vec<u16>,
    /// Seed of `xxh3_64_with_seed` for key ownership.
    pub hash_seed: u64,
    /// In a cluster: the slot map's epoch (0: a node alone), its nodes and
    /// the primary node (index into `nodes`) of each slot.
    pub cluster_epoch: u64,
    pub nodes: Vec<NodeAnswer>,
    pub slot_primary: Vec<u32>,
}

/// A node of the cluster as the handshake lists it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeAnswer {
    pub id: String,
    pub host: String,
    pub shard_ports: Vec<u16>,
}

/// Repeated varints, packed or one per field, appended to `out`.
fn varints(field: Field<'_>, out: &mut Vec<u64>) -> Result<(), ProtoError> {
    match field {
        Field::Varint(v) => out.push(v),
        Field::Bytes(packed) => {
            let mut p = 0;
            while p < packed.len() {
                out.push(read_varint(packed, &mut p)?);
            }
        }
        _ => {}
    }
    Ok(())
}

fn parse_node(body: &[u8]) -> Result<NodeAnswer, ProtoError> {
    let mut node = NodeAnswer::default();
    let mut ports = Vec::new();
    let mut pos = 0;
    while let Some((number, field)) = next_field(body, &mut pos)? {
        match (number, field) {
            (1, Field::Bytes(b)) => node.id = String::from_utf8_lossy(b).into_owned(),
            (3, Field::Bytes(b)) => node.host = String::from_utf8_lossy(b).into_owned(),
            (5, f) => varints(f, &mut ports)?,
            _ => {}
        }
    }
    node.shard_ports = ports
        .into_iter()
        .map(|p| u16::try_from(p).map_err(|_| ProtoError("shard port out of range")))
        .collect::<Result<_, _>>()?;
    Ok(node)
}

/// Reads the answer to a `CacheConnection`; `Ok(None)` when incomplete,
/// else the answer and the frame's length.
pub fn parse_handshake(buf: &[u8]) -> Result<Option<(usize, HandshakeAnswer)>, ProtoError> {
    let Some((len, body)) = frame(buf)? else {
        return Ok(None);
    };
    let mut ans = HandshakeAnswer::default();
    let mut pos = 0;
    while let Some((number, field)) = next_field(body, &mut pos)? {
        match (number, field) {
            (1, Field::Varint(v)) => ans.status = v as u32,
            (2, Field::Bytes(b)) => ans.message = String::from_utf8_lossy(b).into_owned(),
            (8, Field::Bytes(hs)) => parse_handshake_body(hs, &mut ans)?,
            _ => {}
        }
    }
    Ok(Some((len, ans)))
}

fn parse_handshake_body(hs: &[u8], ans: &mut HandshakeAnswer) -> Result<(), ProtoError> {
    let port = |v: u64| u16::try_from(v).map_err(|_| ProtoError("shard port out of range"));
    let mut pos = 0;
    while let Some((number, field)) = next_field(hs, &mut pos)? {
        match (number, field) {
            (1, Field::Varint(v)) => ans.shard_id = v as u32,
            (2, Field::Varint(v)) => ans.shard_count = v as u32,
            // Packed (proto3's default) or one value per field.
            (3, Field::Varint(v)) => ans.shard_ports.push(port(v)?),
            (3, Field::Bytes(packed)) => {
                let mut p = 0;
                while p < packed.len() {
                    ans.shard_ports.push(port(read_varint(packed, &mut p)?)?);
                }
            }
            (5, Field::Varint(v)) => ans.hash_seed = v,
            (9, Field::Varint(v)) => ans.cluster_epoch = v,
            (10, Field::Bytes(b)) => ans.nodes.push(parse_node(b)?),
            (12, f) => {
                let mut slots = Vec::new();
                varints(f, &mut slots)?;
                ans.slot_primary.extend(slots.into_iter().map(|v| v as u32));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_bytes_from_the_protocol_doc() {
        let mut out = Vec::new();
        encode_handshake(&mut out, "svc", "", "");
        assert_eq!(out, [0, 0, 0, 7, 0x0a, 0x03, b's', b'v', b'c', 0x30, 0x01]);
        out.clear();
        encode_get(&mut out, b"k1");
        assert_eq!(
            out,
            [0, 0, 0, 9, 0x0a, 0x03, b'g', b'e', b't', 0x12, 0x02, b'k', b'1']
        );
        let miss = [0, 0, 0, 2, 0x08, 0x01];
        assert_eq!(
            parse_response(&miss, Kind::Get),
            Ok(Parsed::Done {
                len: 6,
                outcome: Outcome::Miss
            })
        );
    }

    #[test]
    fn set_encodes_value_and_ttl() {
        let mut out = Vec::new();
        encode_set(&mut out, b"k", &[7u8; 200], 60);
        // Body: op(5) + key(3) + value tag, 2-byte varint 200, 200 bytes + ttl(2).
        let body_len = 5 + 3 + 1 + 2 + 200 + 2;
        assert_eq!(&out[..4], &(body_len as u32).to_be_bytes());
        assert_eq!(&out[4..9], &[0x0a, 3, b's', b'e', b't']);
        assert_eq!(&out[9..12], &[0x12, 1, b'k']);
        assert_eq!(&out[12..15], &[0x1a, 0xc8, 0x01]);
        assert_eq!(&out[out.len() - 2..], &[0x20, 60]);
        out.clear();
        encode_set(&mut out, b"k", b"v", 0);
        assert_eq!(
            out,
            [0, 0, 0, 11, 0x0a, 3, b's', b'e', b't', 0x12, 1, b'k', 0x1a, 1, b'v']
        );
    }

    #[test]
    fn responses_hit_stored_errors_and_incomplete() {
        // status 0, data "abc", metadata {created_at: 5}, correlation_id "x".
        let hit = [
            0, 0, 0, 12, 0x12, 3, b'a', b'b', b'c', 0x1a, 2, 0x08, 5, 0x3a, 1, b'x',
        ];
        assert_eq!(hit.len(), 16);
        assert_eq!(
            parse_response(&hit, Kind::Get),
            Ok(Parsed::Done {
                len: 16,
                outcome: Outcome::Hit
            })
        );
        assert_eq!(
            parse_response(&[0, 0, 0, 0], Kind::Set),
            Ok(Parsed::Done {
                len: 4,
                outcome: Outcome::Stored
            })
        );
        for cut in 0..hit.len() {
            assert_eq!(parse_response(&hit[..cut], Kind::Get), Ok(Parsed::Incomplete));
        }
        let full = [0, 0, 0, 4, 0x08, 3, 0x12, 0];
        let Ok(Parsed::Done {
            outcome: Outcome::Error(label),
            ..
        }) = parse_response(&full, Kind::Set)
        else {
            panic!("storage full must be an error");
        };
        assert_eq!(label.as_str(), "CACHE_003");
        assert_eq!(status_label(102).as_str(), "AUTH_002");
        assert_eq!(status_label(12).as_str(), "CACHE_012");
        assert_eq!(status_label(777).as_str(), "status_777");
        assert!(parse_response(&[0xff, 0, 0, 0], Kind::Get).is_err());
        assert!(parse_response(&[0, 0, 0, 2, 0x12, 5], Kind::Get).is_err());
        assert!(parse_response(&[0, 0, 0, 1, 0x0b], Kind::Get).is_err());
    }

    #[test]
    fn handshake_answer_packed_and_unpacked_ports() {
        // handshake{shard_id 1, shard_count 2, shard_ports [7100, 7101] packed, hash "xxh3_64", seed 99}
        let mut hs = vec![0x08, 1, 0x10, 2, 0x1a, 4, 0xbc, 0x37, 0xbd, 0x37, 0x22, 7];
        hs.extend_from_slice(b"xxh3_64");
        hs.extend_from_slice(&[0x28, 99]);
        let mut body = vec![0x08, 0, 0x42, hs.len() as u8];
        body.extend_from_slice(&hs);
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let (len, ans) = parse_handshake(&frame).unwrap().unwrap();
        assert_eq!(len, frame.len());
        assert_eq!(ans.shard_id, 1);
        assert_eq!(ans.shard_count, 2);
        assert_eq!(ans.shard_ports, vec![7100, 7101]);
        assert_eq!(ans.hash_seed, 99);
        assert_eq!(parse_handshake(&frame[..frame.len() - 1]), Ok(None));

        let unpacked = [0, 0, 0, 10, 0x42, 8, 0x10, 1, 0x18, 0xbc, 0x37, 0x18, 0xbd, 0x37];
        let (_, ans) = parse_handshake(&unpacked).unwrap().unwrap();
        assert_eq!(ans.shard_ports, vec![7100, 7101]);

        let refused = [0, 0, 0, 6, 0x08, 101, 0x12, 2, b'n', b'o'];
        let (_, ans) = parse_handshake(&refused).unwrap().unwrap();
        assert_eq!((ans.status, ans.message.as_str()), (101, "no"));
    }

    #[test]
    fn owner_matches_reference_xxh3() {
        // XXH3_64bits_withSeed("", 0) = 0x2D06800538D394C2 (reference test vector).
        assert_eq!(
            xxhash_rust::xxh3::xxh3_64_with_seed(b"", 0),
            0x2D06_8005_38D3_94C2
        );
        // The shard that owns a key (docs/protocol.md): xxh3_64 with the
        // seed, modulo the shard count.
        let key = b"character:1234";
        let h = xxhash_rust::xxh3::xxh3_64_with_seed(key, 42);
        let route = |seed| crate::connect::Route {
            seed,
            ..Default::default()
        };
        assert_eq!(route(42).socket(key, 4) as u64, h % 4);
        assert_eq!(route(42).socket(key, 1), 0);
        let spread: std::collections::HashSet<u32> = (0..100u32)
            .map(|i| route(7).socket(format!("k{i}").as_bytes(), 4))
            .collect();
        assert_eq!(spread.len(), 4);
        // In a cluster: the slot's primary node, then the shard there.
        let slot_node: Vec<u32> = (0..4096).map(|slot| u32::from(slot >= 2048)).collect();
        let cluster = crate::connect::Route {
            seed: 42,
            slot_node: slot_node.into(),
            per_node: 2,
            node: None,
        };
        let node = u64::from(h >> 52 >= 2048);
        assert_eq!(cluster.socket(key, 4) as u64, node * 2 + h % 2);
    }
}
