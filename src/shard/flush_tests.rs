//! Flushes of some slots (a primary's flush marker) and flushes that spare
//! some (a flush heard after a primary's marker): exactly the items the
//! rules name go (docs/cluster.md, "Flush").

use std::sync::Arc;

use crate::key::{key_hash, owner_of, slot_of};
use crate::shard::{FlushRule, Shard, ShardCommand};

const NOW: u64 = 1_700_000_000_000_000;
const KEYS: usize = 3000;

fn filled() -> Shard {
    let shard = crate::shard::test_shard(0, 1);
    for i in 0..KEYS {
        let key = format!("k:{i}");
        let hash = key_hash(key.as_bytes(), shard.seed());
        // Some with a TTL already past: a flush removes those as well.
        let ttl = if i.is_multiple_of(10) { 1 } else { 0 };
        shard
            .store
            .borrow_mut()
            .set(hash, key.as_bytes(), b"v", ttl, NOW)
            .unwrap();
    }
    shard
}

/// Every third slot, items of shard 1 of 2 (as a primary with two shards
/// holds them).
fn rule() -> FlushRule {
    FlushRule {
        slots: Arc::new((0..crate::key::SLOTS).map(|s| s.is_multiple_of(3)).collect()),
        shard: 1,
        shards: 2,
    }
}

fn named(shard: &Shard, key: &str) -> bool {
    let hash = key_hash(key.as_bytes(), shard.seed());
    slot_of(hash).is_multiple_of(3) && owner_of(hash, 2) == 1
}

fn held(shard: &Shard, key: &str) -> bool {
    let hash = key_hash(key.as_bytes(), shard.seed());
    shard.store.borrow().peek(hash, key.as_bytes()).is_some()
}

#[test]
fn a_marker_removes_exactly_the_items_of_its_primary_shards_slots() {
    let shard = filled();
    futures_lite::future::block_on(shard.run_command(ShardCommand::FlushSlots(vec![rule()])));
    let mut gone = 0;
    for i in 0..KEYS {
        let key = format!("k:{i}");
        assert_eq!(held(&shard, &key), !named(&shard, &key), "{key}");
        gone += usize::from(named(&shard, &key));
    }
    // The rule names about a sixth of the keys: the test is not vacuous.
    assert!((KEYS / 9..KEYS / 4).contains(&gone), "{gone}");
}

#[test]
fn a_flush_spares_what_a_marker_already_flushed() {
    let shard = filled();
    futures_lite::future::block_on(shard.run_command(ShardCommand::FlushCluster {
        origin: "n2".into(),
        id: 1,
        spare: vec![rule()],
    }));
    for i in 0..KEYS {
        let key = format!("k:{i}");
        assert_eq!(held(&shard, &key), named(&shard, &key), "{key}");
    }
    // Without rules, everything goes.
    futures_lite::future::block_on(shard.run_command(ShardCommand::FlushCluster {
        origin: "n2".into(),
        id: 2,
        spare: Vec::new(),
    }));
    assert_eq!(shard.store.borrow().len(), 0);
}
