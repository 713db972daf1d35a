//! Key rules and the key → owner shard hash.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Longest key accepted, in bytes (memcached's limit).
pub const MAX_KEY_BYTES: usize = 250;

/// Checks the key rules of the protocol: 1 to 250 bytes, no ASCII control
/// character and no space. Other bytes (UTF-8 or binary) are allowed.
pub fn is_valid_key(key: &[u8]) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_BYTES && key.iter().all(|&b| b > 0x20 && b != 0x7f)
}

/// The 64-bit hash of a key, computed once per request and used both to pick
/// the owner shard and to find the key in that shard's index.
#[inline]
pub fn key_hash(key: &[u8], seed: u64) -> u64 {
    xxh3_64_with_seed(key, seed)
}

/// Slots of a cluster's key space (docs/cluster.md).
pub const SLOTS: usize = 4096;

/// The cluster slot of a key hash: its top 12 bits, so that the slot and
/// the shard inside a node (`hash % shards`) are independent.
#[inline]
pub fn slot_of(hash: u64) -> usize {
    (hash >> (64 - SLOTS.trailing_zeros())) as usize
}

/// Owner shard of a key hash: `hash % shard_count` (the wire contract).
#[inline]
pub fn owner_of(hash: u64, shard_count: usize) -> usize {
    (hash % shard_count as u64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn key_rules() {
        assert!(is_valid_key(b"character:1234"));
        assert!(is_valid_key("héros:1".as_bytes()));
        assert!(is_valid_key(&[b'k'; 250]));
        assert!(!is_valid_key(b""));
        assert!(!is_valid_key(&[b'k'; 251]));
        assert!(!is_valid_key(b"a b"));
        assert!(!is_valid_key(b"a\nb"));
        assert!(!is_valid_key(b"a\x7fb"));
        assert!(!is_valid_key(b"\0"));
    }

    #[test]
    fn hash_matches_reference_vector() {
        // XXH3_64bits_withSeed("", 0) from the reference implementation.
        assert_eq!(key_hash(b"", 0), 0x2D06800538D394C2);
    }

    proptest! {
        #[test]
        fn owner_is_in_range_and_stable(key in proptest::collection::vec(any::<u8>(), 1..64),
                                        seed in any::<u64>(), shards in 1usize..64) {
            let h = key_hash(&key, seed);
            let o = owner_of(h, shards);
            prop_assert!(o < shards);
            prop_assert_eq!(o, owner_of(key_hash(&key, seed), shards));
        }

        #[test]
        fn owners_spread_evenly(seed in any::<u64>(), shards in 2usize..9) {
            let mut counts = vec![0usize; shards];
            for i in 0..4000u32 {
                counts[owner_of(key_hash(format!("character:{i}").as_bytes(), seed), shards)] += 1;
            }
            let expected = 4000 / shards;
            for c in counts {
                prop_assert!(c > expected / 2 && c < expected * 3 / 2, "{c} vs {expected}");
            }
        }
    }
}
