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

/// A `config.cache.update` and a `control.cache.action` body (ICD 3.2).
const SEED_HUB_CONFIG: &[u8] = br#"{"event":"config.cache.update","correlation_id":"c-1","source":"ops","data":{"policy":"ttl","parameters":{"ttl":600},"scope":"character"}}"#;
const SEED_HUB_CONTROL: &[u8] = br#"{"event":"control.cache.action","data":{"action":"invalidate","target":"character:*","parameters":{"pattern":true}}}"#;

/// A configuration file touching every value shape (systemd/config.example.yaml style).
const SEED_CONFIG: &[u8] = b"config:\n  service:\n    id: cache_service\n  policies:\n    eviction: lru\n    ttl_default: 3600\n    max_memory: \"75%\"\n  shards:\n    cpus: [0, 1]\n    pin: false\n  nats:\n    event_headers: true\n  cache_types:\n    character:\n      ttl: 600\n  auth:\n    public_key_files: [a.pem, b.pem]\n";

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

    #[test]
    fn hub_message_random(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        hostile::hub_message(&data);
    }

    #[test]
    fn hub_message_mutated(data in mutated(SEED_HUB_CONFIG.to_vec()), control in mutated(SEED_HUB_CONTROL.to_vec())) {
        hostile::hub_message(&data);
        hostile::hub_message(&control);
    }

    #[test]
    fn hub_message_shaped(policy in "ttl|ttl_default|consistency|events|eviction|max_memory|[a-z]{0,8}",
                          scope in "global|character|campaign|[a-z*]{0,8}",
                          value in "-?[0-9]{1,20}|\"[0-9a-zA-Z%.]{0,12}\"|true|false|null|\\{\\}",
                          target in "[a-z:*?\\[\\]!\\\\ ]{0,20}") {
        let config = format!(r#"{{"data":{{"policy":"{policy}","scope":"{scope}","parameters":{{"value":{value},"coalesce_ms":{value},"enabled":{value}}}}}}}"#);
        hostile::hub_message(config.as_bytes());
        let control = format!(r#"{{"data":{{"action":"invalidate","target":"{target}"}}}}"#);
        hostile::hub_message(control.as_bytes());
    }

    #[test]
    fn config_file_random(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        hostile::config_file(&data);
    }

    #[test]
    fn config_file_mutated(data in mutated(SEED_CONFIG.to_vec())) {
        hostile::config_file(&data);
    }
}

/// Every file of a `tests/corpus/` directory: fuzz seeds, and the inputs
/// of crashes the fuzzers found, replayed by stable CI.
fn replay_corpus(dir: &str, body: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(dir);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        body(&std::fs::read(entry.unwrap().path()).unwrap());
        n += 1;
    }
    assert!(n > 0, "{} holds inputs", dir.display());
}

#[test]
fn corpus_replays_through_the_fuzz_bodies() {
    replay_corpus("hub", hostile::hub_message);
    replay_corpus("config", hostile::config_file);
    replay_corpus("jwt", hostile::jwt);
    replay_corpus("binary", hostile::binary_frames);
    replay_corpus("http", hostile::http_requests);
    replay_corpus("value_codec", hostile::value_codec);
}

/// Inputs the fuzzers once crashed on, kept as regressions.
#[test]
fn value_codec_found_by_fuzzing() {
    // The body keeps its buffers between calls. A compressed value of
    // 65,535 bytes then one of 65,536 leave the lz4 buffer at twice the
    // item limit; a sealed value of 4 KiB then grows the decrypt buffer;
    // the fuzzer's last input (an lz4 header announcing more than the
    // limit) was then blamed for the sum, found by `fuzz/run.sh` in CI.
    let lz4_header = |len: u32| {
        let mut input = vec![1];
        input.extend_from_slice(&len.to_le_bytes());
        input.extend_from_slice(&[0x1f, 0, 1, 0, 0xff, 0xff]);
        input
    };
    hostile::value_codec(&lz4_header(65_535));
    hostile::value_codec(&lz4_header(65_536));
    let mut sealed = vec![2];
    sealed.extend(std::iter::repeat_n(0x5a, 4096));
    hostile::value_codec(&sealed);
    hostile::value_codec(&[61, 0, 4, 0, 61, 33, 0, 61]);
}
