//! The value codec through a real shard: the slab record never holds the
//! plain value, the client gets it back, and compression shrinks what is
//! stored.

use prost::Message;

use crate::codec::tests::{compressible, settings, MAX_ITEM};
use crate::codec::{CompressionMode, ValueCodec, ENCRYPTED};
use crate::ops::OpKind;
use crate::proto::{CacheOperation, CacheResponse, Options};
use crate::protocol::binary::decode_operation;
use crate::shard::store::{EvictionPolicy, StoreConfig};
use crate::shard::{Shard, ShardLimits};
use crate::Status;

const NOW: u64 = 1_700_000_000_000_000;

fn shard(compression: CompressionMode) -> Shard {
    let limits = ShardLimits {
        max_frame_bytes: 16 << 20,
        max_item_bytes: MAX_ITEM,
    };
    let store = StoreConfig {
        seed: 1,
        memory_limit_bytes: 8 << 20,
        max_item_bytes: MAX_ITEM,
        default_ttl_s: 0,
        eviction: EvictionPolicy::Lru,
    };
    Shard::new(0, 1, limits, store).with_codec(ValueCodec::new(&settings(compression), MAX_ITEM))
}

fn run(shard: &Shard, op: CacheOperation) -> CacheResponse {
    let body = op.encode_to_vec();
    let view = decode_operation(&body).unwrap();
    let kind = OpKind::parse(view.operation).unwrap();
    let mut out = Vec::new();
    shard.execute_local(&view, kind, NOW, &mut out);
    CacheResponse::decode(&out[4..]).unwrap()
}

fn set(key: &str, value: &[u8], compression: bool, encryption: bool) -> CacheOperation {
    CacheOperation {
        operation: "set".into(),
        key: key.as_bytes().to_vec().into(),
        value: value.to_vec().into(),
        options: Some(Options {
            compression,
            encryption,
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn get(key: &str) -> CacheOperation {
    CacheOperation {
        operation: "get".into(),
        key: key.as_bytes().to_vec().into(),
        ..Default::default()
    }
}

/// (record bytes, codec flags) of every item.
fn records(shard: &Shard) -> Vec<(Vec<u8>, u32)> {
    let mut found = Vec::new();
    shard.store.borrow().scan(b"*", NOW, |item| {
        found.push((item.record_bytes().to_vec(), item.codec_flags()));
        true
    });
    found
}

#[test]
fn encrypted_values_are_not_in_the_slab_in_plain_form() {
    let s = shard(CompressionMode::Requested);
    let secret = b"the lich's phylactery is hidden in the well";
    assert_eq!(run(&s, set("npc:1", secret, false, true)).status, 0);
    assert_eq!(
        run(&s, set("secret:2", secret, false, false)).status,
        0,
        "prefix forces it"
    );
    let recs = records(&s);
    assert_eq!(recs.len(), 2);
    for (bytes, flags) in &recs {
        assert_eq!(*flags, ENCRYPTED);
        assert!(
            !bytes.windows(11).any(|w| w == b"phylactery "),
            "plain value in the slab"
        );
    }
    for key in ["npc:1", "secret:2"] {
        let r = run(&s, get(key));
        assert_eq!((r.status, &r.data[..]), (0, &secret[..]));
    }
    // Plain writes stay plain.
    run(&s, set("plain", secret, false, false));
    let r = run(&s, get("plain"));
    assert_eq!(&r.data[..], &secret[..]);
}

#[test]
fn compressed_values_take_less_room_and_read_back() {
    let s = shard(CompressionMode::Requested);
    let value = compressible();
    run(&s, set("a", &value, true, false));
    let payload = s.store.borrow().payload_bytes();
    assert!(payload < value.len() / 4, "{payload} bytes stored");
    assert_eq!(&run(&s, get("a")).data[..], &value[..]);
    let batch = CacheOperation {
        operation: "get_many".into(),
        keys: vec![b"a".to_vec().into()],
        ..Default::default()
    };
    let r = run(&s, batch);
    assert_eq!(&r.items[0].data[..], &value[..]);
}

#[test]
fn encryption_without_a_key_is_a_clear_error() {
    let s = crate::shard::test_shard(0, 1);
    let r = run(&s, set("k", b"v", false, true));
    assert_eq!(r.status, Status::Malformed.code_number());
    assert!(String::from_utf8_lossy(&r.data).contains("--encryption-key-file"));
    assert_eq!(
        run(&s, get("k")).status,
        Status::NotFound.code_number(),
        "nothing written"
    );
}
