//! Running a decoded operation on this shard's store and encoding its
//! response. The caller has routed the operation here: nothing in this file
//! looks at key ownership.

use serde_json::json;

use super::item::ItemView;
use super::store::{Lookup, Store, WriteError};
use super::Shard;
use crate::key::key_hash;
use crate::ops::OpKind;
use crate::protocol::binary::{EntryView, Meta, OpView, OptionsView, ResponseEncoder};
use crate::validate::{check_batch, check_key, pattern_limit};
use crate::Status;

/// Data of the CACHE_012 items of a batch answer that reached the frame
/// limit.
pub const RESPONSE_FULL: &[u8] = b"answer reached the frame limit: ask for this key again";

impl Shard {
    /// Executes `op` on this shard and appends exactly one response frame
    /// to `out`.
    pub fn execute_local(&self, op: &OpView<'_>, kind: OpKind, now_us: u64, out: &mut Vec<u8>) {
        let corr = op.correlation_id;
        match kind {
            OpKind::Get | OpKind::Set | OpKind::Delete => {
                if let Err(e) = check_key(op.key) {
                    return ResponseEncoder::refuse(out, e, corr);
                }
                self.execute_single(op, kind, key_hash(op.key, self.seed), now_us, out)
            }
            OpKind::GetMany | OpKind::DeleteMany | OpKind::SetMany => {
                self.execute_batch(op, kind, now_us, out)
            }
            OpKind::Pattern => self.execute_pattern(op, now_us, out),
            OpKind::Flush => {
                let flushed = self.store.borrow_mut().flush();
                // The whole cluster flushes: the agent tells the other
                // nodes, and this shard's replicas see the marker in order.
                // Every shard of this node runs this op with the cycle's
                // `now_us`, so they share the flush id.
                self.push_flush_marker(now_us, b"");
                let body = json!({ "flushed": flushed }).to_string();
                ResponseEncoder::simple(out, Status::Ok, body.as_bytes(), None, corr)
            }
            OpKind::Stats => {
                let body = self.stats_json().to_string();
                ResponseEncoder::simple(out, Status::Ok, body.as_bytes(), None, corr)
            }
            OpKind::Reload => {
                // Server-wide: the connection's dispatcher runs it.
                ResponseEncoder::error(out, Status::Malformed, "reload is not a shard operation", corr)
            }
            OpKind::Health => {
                let body = json!({ "status": "ok", "shard": self.id }).to_string();
                ResponseEncoder::simple(out, Status::Ok, body.as_bytes(), None, corr)
            }
        }
    }

    /// Executes `get`, `set` or `delete` of a valid key whose hash the
    /// caller computed (once, for routing and lookup alike).
    #[inline]
    pub fn execute_single(&self, op: &OpView<'_>, kind: OpKind, hash: u64, now_us: u64, out: &mut Vec<u8>) {
        let corr = op.correlation_id;
        let strong = match self.strong_gate(hash, op.key, op.options.consistency, kind != OpKind::Get, now_us)
        {
            Ok(strong) => strong,
            Err(message) => return ResponseEncoder::error(out, Status::Timeout, message, corr),
        };
        let mut store = self.store.borrow_mut();
        match kind {
            OpKind::Get => match store.get(hash, op.key, now_us) {
                Lookup::Hit(item) => self.with_value(item, |value| match value {
                    Ok(value) => ResponseEncoder::simple(out, Status::Ok, value, Some(&item.meta()), corr),
                    Err((status, message)) => ResponseEncoder::error(out, status, message, corr),
                }),
                Lookup::Expired => ResponseEncoder::error(out, Status::Expired, "key expired", corr),
                Lookup::Miss => ResponseEncoder::simple(out, Status::NotFound, b"", None, corr),
            },
            OpKind::Set => {
                let ttl = self.resolve_ttl(op.key, op.ttl);
                match self.write_item(&mut store, hash, op.key, op.value, ttl, &op.options, now_us) {
                    Ok(meta) => {
                        self.replicate_set(&store, hash, op.key, op.value, ttl, &op.options, meta.version);
                        self.strong_written(strong);
                        ResponseEncoder::simple(out, Status::Ok, b"", Some(&meta), corr)
                    }
                    Err((status, message)) => ResponseEncoder::error(out, status, message, corr),
                }
            }
            _ => {
                let status = if store.delete(hash, op.key) {
                    Status::Ok
                } else {
                    Status::NotFound
                };
                self.replicate_delete(hash, op.key);
                self.strong_written(strong);
                ResponseEncoder::simple(out, status, b"", None, corr)
            }
        }
    }

    fn execute_batch(&self, op: &OpView<'_>, kind: OpKind, now_us: u64, out: &mut Vec<u8>) {
        let count = if kind == OpKind::SetMany {
            op.entry_count
        } else {
            op.key_count
        };
        if let Err(e) = check_batch(count) {
            return ResponseEncoder::refuse(out, e, op.correlation_id);
        }
        let frame = ResponseEncoder::begin(out);
        let mut store = self.store.borrow_mut();
        match kind {
            OpKind::GetMany => {
                for key in op.keys() {
                    let hash = key_hash(key, self.seed);
                    if self
                        .admit_item(key, hash, op.options.consistency, false, now_us, out)
                        .is_none()
                    {
                        continue;
                    }
                    match store.get(hash, key, now_us) {
                        Lookup::Hit(item) => self.with_value(item, |value| match value {
                            // No answer frame may exceed the frame limit
                            // (checked on the decoded length): the client
                            // asks again for these keys.
                            Ok(value)
                                if ResponseEncoder::written(out, &frame) + value.len() + key.len() + 64
                                    > self.limits.max_frame_bytes =>
                            {
                                ResponseEncoder::put_item(
                                    out,
                                    key,
                                    Status::BatchTooLarge,
                                    RESPONSE_FULL,
                                    None,
                                )
                            }
                            Ok(value) => {
                                ResponseEncoder::put_item(out, key, Status::Ok, value, Some(&item.meta()))
                            }
                            Err((status, message)) => {
                                ResponseEncoder::put_item(out, key, status, message.as_bytes(), None)
                            }
                        }),
                        Lookup::Expired => ResponseEncoder::put_item(out, key, Status::Expired, b"", None),
                        Lookup::Miss => ResponseEncoder::put_item(out, key, Status::NotFound, b"", None),
                    }
                }
            }
            OpKind::DeleteMany => {
                for key in op.keys() {
                    let hash = key_hash(key, self.seed);
                    let Some(strong) = self.admit_item(key, hash, op.options.consistency, true, now_us, out)
                    else {
                        continue;
                    };
                    let status = if store.delete(hash, key) {
                        Status::Ok
                    } else {
                        Status::NotFound
                    };
                    self.replicate_delete(hash, key);
                    self.strong_written(strong);
                    ResponseEncoder::put_item(out, key, status, b"", None);
                }
            }
            _ => {
                for EntryView { key, value, ttl } in op.entries() {
                    let hash = key_hash(key, self.seed);
                    let Some(strong) = self.admit_item(key, hash, op.options.consistency, true, now_us, out)
                    else {
                        continue;
                    };
                    let ttl = self.resolve_ttl(key, if ttl == 0 { op.ttl } else { ttl });
                    match self.write_item(&mut store, hash, key, value, ttl, &op.options, now_us) {
                        Ok(meta) => {
                            self.replicate_set(&store, hash, key, value, ttl, &op.options, meta.version);
                            self.strong_written(strong);
                            ResponseEncoder::put_item(out, key, Status::Ok, b"", Some(&meta))
                        }
                        Err((status, message)) => {
                            ResponseEncoder::put_item(out, key, status, message.as_bytes(), None)
                        }
                    }
                }
            }
        }
        ResponseEncoder::put_summary(out, Status::Ok, op.correlation_id, false);
        ResponseEncoder::finish(out, frame);
    }

    /// [`Shard::refuse_item`], then [`Shard::strong_gate`] (CACHE_005):
    /// `None` when the item was answered, else whether it runs strong.
    #[inline]
    fn admit_item(
        &self,
        key: &[u8],
        hash: u64,
        consistency: &[u8],
        write: bool,
        now_us: u64,
        out: &mut Vec<u8>,
    ) -> Option<bool> {
        if self.refuse_item(key, hash, out) {
            return None;
        }
        match self.strong_gate(hash, key, consistency, write, now_us) {
            Ok(strong) => Some(strong),
            Err(message) => {
                ResponseEncoder::put_item(out, key, Status::Timeout, message.as_bytes(), None);
                None
            }
        }
    }

    /// Answers a batch item that breaks the key rules (CACHE_004) or whose
    /// slot another node of the cluster owns (CACHE_013); true if it did.
    #[inline]
    fn refuse_item(&self, key: &[u8], hash: u64, out: &mut Vec<u8>) -> bool {
        if let Err(e) = check_key(key) {
            ResponseEncoder::put_item(out, key, e.status(), b"", None);
            return true;
        }
        if let Some(moved) = self.moved(hash) {
            ResponseEncoder::put_item(out, key, Status::Moved, moved.as_bytes(), None);
            return true;
        }
        false
    }

    fn execute_pattern(&self, op: &OpView<'_>, now_us: u64, out: &mut Vec<u8>) {
        if !crate::pattern::is_valid_pattern(op.key) {
            return ResponseEncoder::error(
                out,
                Status::InvalidKey,
                "pattern must be 1-1024 bytes",
                op.correlation_id,
            );
        }
        let limit = pattern_limit(op.limit);
        let frame = ResponseEncoder::begin(out);
        let mut found = 0usize;
        let mut truncated = false;
        // In a cluster, only the keys of this node's primary slots: the
        // answers of the nodes are disjoint and together the whole cluster
        // (a client fans `pattern` out to every node; docs/cluster.md).
        let ownership = self.ownership.borrow();
        let primaries = ownership.as_ref().map(|o| (&o.primary, o.me));
        self.store.borrow().scan(op.key, now_us, |item| {
            if let Some((primary, me)) = primaries {
                let slot = crate::key::slot_of(crate::key::key_hash(item.key(), self.seed));
                if Some(primary[slot]) != me {
                    return true;
                }
            }
            if found == limit {
                truncated = true;
                return false;
            }
            let mut emit = |value: Result<&[u8], (Status, &'static str)>| {
                let len = value.as_ref().map_or(0, |v| v.len());
                if ResponseEncoder::written(out, &frame) + len + item.key().len() + 64
                    > self.limits.max_frame_bytes
                {
                    truncated = true;
                    return false;
                }
                found += 1;
                match value {
                    Ok(value) => {
                        ResponseEncoder::put_item(out, item.key(), Status::Ok, value, Some(&item.meta()))
                    }
                    Err((status, message)) => {
                        ResponseEncoder::put_item(out, item.key(), status, message.as_bytes(), None)
                    }
                }
                true
            };
            if !op.with_values {
                return emit(Ok(b""));
            }
            self.with_value(item, emit)
        });
        ResponseEncoder::put_summary(out, Status::Ok, op.correlation_id, truncated);
        ResponseEncoder::finish(out, frame);
    }

    /// The TTL a write gets: its own, else its cache type's, else the
    /// default (the shard's policy).
    #[inline]
    fn resolve_ttl(&self, key: &[u8], ttl: u32) -> u32 {
        if ttl != 0 {
            return ttl;
        }
        self.policy.borrow().resolve_ttl(key, 0)
    }

    /// This shard's counters and memory as a JSON object.
    pub fn stats_json(&self) -> serde_json::Value {
        let store = self.store.borrow();
        let s = store.stats;
        let c = *self.counters.borrow();
        let slab = store.slab();
        let items = store.len();
        let payload = store.payload_bytes();
        let used = store.used_bytes();
        json!({
            "shard": self.id,
            "items": items,
            "bytes": used,
            "memory_limit_bytes": slab.limit_bytes(),
            "memory_used_bytes": used,
            "memory_index_bytes": store.index_bytes(),
            "memory_pages": slab.live_pages(),
            "memory_free_in_pages_bytes": slab.free_bytes_in_pages(),
            "memory_large_bytes": slab.large_bytes(),
            "large_items": slab.large_records(),
            "payload_bytes": payload,
            "overhead_per_item_bytes": if items == 0 { 0.0 } else { (used.saturating_sub(payload)) as f64 / items as f64 },
            "pages_moved": slab.pages_moved(),
            "eviction_policy": store.config().eviction.name(),
            "slab_classes": slab.class_stats(),
            "hits": s.hits,
            "misses": s.misses,
            "sets": s.sets,
            "deletes": s.deletes,
            "evictions": s.evictions,
            "expirations": s.expired_on_access + s.expired_swept + s.expired_evicted,
            "rejected_writes": s.rejected_writes,
            "flushed": s.flushed,
            "connections_open": c.connections_open,
            "connections_accepted": c.connections_accepted,
            "connections_refused": c.connections_refused,
            "requests": c.requests,
            "forwarded_ops": c.forwarded_ops,
            "forwarded_batches": c.forwarded_batches,
            "protocol_errors": c.protocol_errors,
            "output_bytes": c.output_bytes,
            "output_paused_connections": c.output_paused,
            "output_stall_closes": c.output_stall_closes,
            "events_queued": self.metrics.borrow().events_queued,
            "events_dropped": self.metrics.borrow().events_dropped,
        })
    }
}

// ---- replication (docs/cluster.md): what primaries send, replicas apply ----

impl Shard {
    /// Hands a set to the replica: as the client sent it, or, when the
    /// value went through the codec (compressed, encrypted at rest), as it
    /// is stored, so that an encrypted value travels encrypted.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn replicate_set(
        &self,
        store: &Store,
        hash: u64,
        key: &[u8],
        value: &[u8],
        ttl: u32,
        options: &OptionsView<'_>,
        version: u64,
    ) {
        use super::replication::{ReplRecord, OP_COPY, OP_SET};
        if self.repl.is_none() {
            return;
        }
        if self.codec_eager | options.compression | options.encryption {
            if let Some(item) = store.peek(hash, key) {
                let record = ReplRecord {
                    target: 0,
                    op: OP_COPY,
                    options: item.codec_flags() as u8,
                    ttl_s: item.ttl_s(),
                    version: item.version_us(),
                    key,
                    value: item.value(),
                };
                self.replicate(hash, record);
            }
            return;
        }
        let record = ReplRecord {
            target: 0,
            op: OP_SET,
            options: 0,
            ttl_s: ttl,
            version,
            key,
            value,
        };
        self.replicate(hash, record);
    }

    #[inline]
    fn replicate_delete(&self, hash: u64, key: &[u8]) {
        use super::replication::{ReplRecord, OP_DELETE};
        if self.repl.is_none() {
            return;
        }
        let record = ReplRecord {
            target: 0,
            op: OP_DELETE,
            options: 0,
            ttl_s: 0,
            // When it was deleted: a replica keeps a newer write.
            version: crate::time::unix_now_us(),
            key,
            value: b"",
        };
        self.tombstones
            .borrow_mut()
            .record(hash, record.version, record.version);
        self.replicate(hash, record);
    }

    /// Applies writes its primaries replicated to this node: sets keep the
    /// primary's version (so both copies carry the same version and
    /// expiry); stored values (full copies, codec writes) are kept as they
    /// came, with their codec flags; a record older than the item held is
    /// skipped. Returns how many records were applied.
    pub fn apply_replicated(&self, records: &[u8]) -> usize {
        use super::replication::{records as read, OP_COPY, OP_DELETE, OP_SET};
        let now_us = crate::time::unix_now_us();
        let mut store = self.store.borrow_mut();
        let mut applied = 0;
        for r in read(records) {
            if check_key(r.key).is_err() {
                continue;
            }
            let hash = key_hash(r.key, self.seed);
            // The newer version wins: a full copy, or a write in flight
            // from the slot's previous primary, never replaces a newer item
            // (versions come from the hybrid clocks of the primaries).
            if r.version != 0
                && store
                    .peek(hash, r.key)
                    .is_some_and(|i| i.version_us() > r.version)
            {
                continue;
            }
            match r.op {
                OP_SET | OP_COPY if self.tombstones.borrow().hides(hash, r.version) => {}
                OP_SET | OP_COPY => {
                    let flags = if r.op == OP_COPY {
                        u32::from(r.options & 3)
                    } else {
                        0
                    };
                    let written = if r.op == OP_SET && self.codec_eager {
                        // A server that always transforms values does so
                        // for its replicas' copies too.
                        let mut codec = self.codec.borrow_mut();
                        match codec.encode(r.key, r.value, false, false) {
                            Ok((stored, flags)) => store
                                .set_replicated(hash, r.key, stored, r.ttl_s, flags, r.version, now_us)
                                .is_ok(),
                            Err(_) => false,
                        }
                    } else {
                        store
                            .set_replicated(hash, r.key, r.value, r.ttl_s, flags, r.version, now_us)
                            .is_ok()
                    };
                    applied += usize::from(written);
                }
                OP_DELETE => {
                    self.tombstones.borrow_mut().record(hash, r.version, now_us);
                    store.delete(hash, r.key);
                    applied += 1;
                }
                _ => {}
            }
        }
        applied
    }
}

// ---- value codec hooks (compression, encryption at rest: crate::codec) ----

impl Shard {
    /// Stores a value, through the codec when the write asks for it, its
    /// connection did, or the server always transforms values. Without any
    /// of these (the default) this costs one branch.
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn write_item(
        &self,
        store: &mut Store,
        hash: u64,
        key: &[u8],
        value: &[u8],
        ttl: u32,
        options: &OptionsView<'_>,
        now_us: u64,
    ) -> Result<Meta, (Status, &'static str)> {
        if !(self.codec_eager | options.encryption | options.compression) {
            return store.set(hash, key, value, ttl, now_us).map_err(write_failure);
        }
        let mut codec = self.codec.borrow_mut();
        let (stored, flags) = codec
            .encode(key, value, options.compression, options.encryption)
            .map_err(|e| (e.status(), e.message()))?;
        let stored = store
            .set_flagged(hash, key, stored, ttl, flags, now_us)
            .map_err(write_failure);
        if flags & crate::codec::ENCRYPTED != 0 {
            codec.wipe_scratch();
            self.secret.set(true);
        }
        stored
    }

    /// Calls `f` with the client's bytes of a stored item: the record's own
    /// bytes unless its codec bits are set (one branch), else decoded into
    /// the shard's scratch buffers.
    #[inline]
    fn with_value<R>(
        &self,
        item: ItemView<'_>,
        f: impl FnOnce(Result<&[u8], (Status, &'static str)>) -> R,
    ) -> R {
        let flags = item.codec_flags();
        if flags == 0 {
            return f(Ok(item.value()));
        }
        let mut codec = self.codec.borrow_mut();
        let answer = f(codec
            .decode(item.key(), flags, item.value())
            .map_err(|e| (e.status(), e.message())));
        if flags & crate::codec::ENCRYPTED != 0 {
            codec.wipe_scratch();
            self.secret.set(true);
        }
        answer
    }
}

fn write_failure(e: WriteError) -> (Status, &'static str) {
    (Status::StorageFull, write_error_message(e))
}

// ---- end of value codec hooks ----

fn write_error_message(e: WriteError) -> &'static str {
    match e {
        WriteError::Full => "storage full",
        WriteError::TooLarge => "item larger than max_item_bytes",
    }
}

/// Metadata helper for tests and merges.
pub fn meta_of(m: Option<&crate::proto::Metadata>) -> Option<Meta> {
    m.map(|m| Meta {
        created_at_ms: m.created_at,
        expires_at_ms: m.expires_at,
        version: m.version,
    })
}
