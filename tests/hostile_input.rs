//! The fuzz targets' bodies (`dnd_cache::hostile`, also run by cargo-fuzz
//! from `fuzz/` on nightly) on random and on mutated well-formed input,
//! in stable CI.

use dnd_cache::hostile;
use dnd_cache::proto::{CacheConnection, CacheOperation, Entry, Options};
use proptest::prelude::*;
use prost::Message;

fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    out
}

/// A handshake and a batch operation: well-formed bytes to mutate.
fn seed_frames() -> Vec<u8> {
    let hello = CacheConnection {
        service_id: "svc".into(),
        auth_token: "a.b.c".into(),
        options: Some(Options {
            compression: true,
            ..Default::default()
        }),
        ..Default::default()
    };
    let op = CacheOperation {
        operation: "set_many".into(),
        entries: vec![Entry {
            key: b"k".to_vec().into(),
            value: b"v".to_vec().into(),
            ttl: 3,
        }],
        keys: vec![b"x".to_vec().into()],
        ..Default::default()
    };
    let mut out = frame(&hello.encode_to_vec());
    out.extend(frame(&op.encode_to_vec()));
    out
}

const SEED_HTTP: &[u8] = b"PUT /api/v2/cache/k HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer a.b.c\r\n\
Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /health/live HTTP/1.0\r\n\r\n";

fn mutated(seed: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8).prop_map(move |edits| {
        let mut bytes = seed.clone();
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = b;
        }
        bytes
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn binary_frames_random(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        hostile::binary_frames(&data);
    }

    #[test]
    fn binary_frames_mutated(data in mutated(seed_frames())) {
        hostile::binary_frames(&data);
    }

    #[test]
    fn http_random(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        hostile::http_requests(&data);
    }

    #[test]
    fn http_mutated(data in mutated(SEED_HTTP.to_vec())) {
        hostile::http_requests(&data);
    }

    #[test]
    fn jwt_random(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        hostile::jwt(&data);
    }

    #[test]
    fn jwt_shaped(header in "[A-Za-z0-9_-]{0,40}", claims in "[A-Za-z0-9_-]{0,80}", sig in "[A-Za-z0-9_-]{0,44}") {
        hostile::jwt(format!("{header}.{claims}.{sig}").as_bytes());
        hostile::jwt(format!("eyJhbGciOiJIUzI1NiJ9.{claims}.{sig}").as_bytes());
    }

    #[test]
    fn value_codec_random(data in proptest::collection::vec(any::<u8>(), 0..1024)) {
        hostile::value_codec(&data);
    }
}
