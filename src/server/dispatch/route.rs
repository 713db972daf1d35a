//! The owner decision: which shard of this node runs a key's requests.
//! Every request's key is hashed once, here; the hash then serves both
//! this choice and the owner's index lookup.

use crate::key::{key_hash, owner_of};
use crate::shard::Shard;

/// The key's hash and the shard that owns it.
#[inline]
pub fn owner_of_key(shard: &Shard, key: &[u8]) -> (u64, usize) {
    let hash = key_hash(key, shard.seed());
    (hash, owner_of(hash, shard.count()))
}
