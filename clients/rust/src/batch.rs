//! Batches (`get_many`, `set_many`, `delete_many`): in a cluster each is
//! split by the node its keys' slots live on, the parts sent at once and
//! the items put back in order; an item answered CACHE_013 (the map moved
//! meanwhile) is re-sent alone, as a single-key request that follows the
//! map. `pattern` in a cluster asks every node (each answers the keys of
//! its primary slots) and merges.

use std::sync::Arc;

use bytes::Bytes;

use crate::{
    check_status, cluster, item_error, op, proto, CacheClient, ClientError, ItemResult, Status, Target,
};
use dnd_cache_proto::key::key_hash;

impl CacheClient {
    /// Keys matching a glob (at most `limit`, 0 = 1000). In a cluster, the
    /// keys of every node: each node of the map is asked at once for the
    /// keys of its primary slots, and the answers are merged (a key named
    /// twice while the map moves is kept once).
    pub async fn pattern(&self, glob: &str, limit: u32) -> Result<Vec<Bytes>, ClientError> {
        let mut o = op("pattern", glob.as_bytes());
        o.limit = limit;
        let Some(cluster) = &self.inner.cluster else {
            return Ok(self.call(o).await?.items.into_iter().map(|i| i.key).collect());
        };
        let mut parts = Vec::new();
        for node in cluster.members() {
            let (me, o) = (self.clone(), o.clone());
            let target = Target {
                route: node.public.clone(),
                node: Some(node),
            };
            parts.push(tokio::spawn(async move {
                let resp = me.send(&o, target, None).await?;
                check_status(&resp)?;
                Ok::<_, ClientError>(resp.items)
            }));
        }
        let most = dnd_cache_proto::validate::pattern_limit(limit);
        let mut seen = std::collections::HashSet::new();
        let mut keys = Vec::new();
        for part in parts {
            let items = part
                .await
                .map_err(|e| ClientError::Protocol(format!("pattern part failed: {e}")))??;
            for item in items {
                if keys.len() < most && seen.insert(item.key.clone()) {
                    keys.push(item.key);
                }
            }
        }
        Ok(keys)
    }

    /// Values of `keys`, in order; `None` for keys missing or expired.
    pub async fn get_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<Vec<Option<Bytes>>, ClientError> {
        let mut o = op("get_many", b"");
        o.keys = keys.iter().map(|k| Bytes::copy_from_slice(k.as_ref())).collect();
        let items = self.call_batch(o).await?;
        let mut values = Vec::with_capacity(items.len());
        for item in items {
            values.push(match Status::from_u32(item.status) {
                Some(Status::Ok) => Some(item.data),
                Some(Status::NotFound | Status::Expired) => None,
                // In a cluster: a key of another node's slot.
                Some(Status::Moved) => self.get(&item.key).await?,
                _ => return Err(item_error(&item)),
            });
        }
        Ok(values)
    }

    /// Stores every entry with `ttl_s`; per-entry results in order.
    pub async fn set_many<K: AsRef<[u8]>, V: AsRef<[u8]>>(
        &self,
        entries: &[(K, V)],
        ttl_s: u32,
    ) -> Result<Vec<ItemResult>, ClientError> {
        let mut o = op("set_many", b"");
        o.ttl = ttl_s;
        o.entries = entries
            .iter()
            .map(|(k, v)| proto::Entry {
                key: Bytes::copy_from_slice(k.as_ref()),
                value: Bytes::copy_from_slice(v.as_ref()),
                ttl: 0,
            })
            .collect();
        let mut items = self.call_batch(o).await?;
        for (item, (_, value)) in items.iter_mut().zip(entries) {
            // In a cluster: a key of another node's slot.
            if item.status == Status::Moved.code_number() {
                let metadata = self.set(&item.key, value, ttl_s).await?;
                *item = ItemResult {
                    key: item.key.clone(),
                    status: Status::Ok.code_number(),
                    data: Bytes::new(),
                    metadata: Some(metadata),
                };
            }
        }
        Ok(items)
    }

    /// Removes `keys`; how many existed.
    pub async fn delete_many<K: AsRef<[u8]>>(&self, keys: &[K]) -> Result<usize, ClientError> {
        let mut o = op("delete_many", b"");
        o.keys = keys.iter().map(|k| Bytes::copy_from_slice(k.as_ref())).collect();
        let mut removed = 0;
        for item in self.call_batch(o).await? {
            removed += match Status::from_u32(item.status) {
                Some(Status::Ok) => 1,
                // In a cluster: a key of another node's slot.
                Some(Status::Moved) => usize::from(self.delete(&item.key).await?),
                _ => 0,
            };
        }
        Ok(removed)
    }

    /// A batch's items, in the order of its keys (or entries). In a
    /// cluster the batch is split by the node each key's slot lives on,
    /// the parts sent at once, and the items put back in order; an item
    /// still answered CACHE_013 (the map moved meanwhile) is left to the
    /// caller, which re-sends it alone.
    pub(crate) async fn call_batch(&self, o: proto::CacheOperation) -> Result<Vec<ItemResult>, ClientError> {
        let Some(cluster) = &self.inner.cluster else {
            return Ok(self.call(o).await?.items);
        };
        let by_entries = !o.entries.is_empty();
        let count = if by_entries { o.entries.len() } else { o.keys.len() };
        let key = |i: usize| if by_entries { &o.entries[i].key } else { &o.keys[i] };
        let mut groups: Vec<(Arc<cluster::Node>, Vec<usize>)> = Vec::new();
        for i in 0..count {
            let node = cluster.route(key_hash(key(i), self.inner.seed)).0;
            match groups.iter_mut().find(|(n, _)| Arc::ptr_eq(n, &node)) {
                Some((_, members)) => members.push(i),
                None => groups.push((node, vec![i])),
            }
        }
        if groups.len() <= 1 {
            let target = match groups.pop() {
                Some((node, _)) => Target {
                    route: node.public.clone(),
                    node: Some(node),
                },
                None => self.target(None),
            };
            let resp = self.send(&o, target, None).await?;
            check_status(&resp)?;
            return Ok(resp.items);
        }
        let mut parts = Vec::with_capacity(groups.len());
        for (node, members) in &groups {
            let mut part = proto::CacheOperation {
                keys: Vec::new(),
                entries: Vec::new(),
                ..o.clone()
            };
            if by_entries {
                part.entries = members.iter().map(|&i| o.entries[i].clone()).collect();
            } else {
                part.keys = members.iter().map(|&i| o.keys[i].clone()).collect();
            }
            let me = self.clone();
            let target = Target {
                route: node.public.clone(),
                node: Some(node.clone()),
            };
            parts.push(tokio::spawn(async move {
                let resp = me.send(&part, target, None).await?;
                check_status(&resp)?;
                Ok::<_, ClientError>(resp.items)
            }));
        }
        let mut items: Vec<Option<ItemResult>> = vec![None; count];
        for (part, (_, members)) in parts.into_iter().zip(&groups) {
            let answered = part
                .await
                .map_err(|e| ClientError::Protocol(format!("batch part failed: {e}")))??;
            if answered.len() != members.len() {
                return Err(ClientError::Protocol(format!(
                    "batch of {} keys answered with {} items",
                    members.len(),
                    answered.len()
                )));
            }
            for (item, &i) in answered.into_iter().zip(members) {
                items[i] = Some(item);
            }
        }
        Ok(items.into_iter().flatten().collect())
    }
}
