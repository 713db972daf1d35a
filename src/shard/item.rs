//! The stored form of an item and the per-shard memory that holds items.
//!
//! An item is one contiguous record: a 16-byte header, the key, the value.
//! The index stores only an [`ItemId`]; the key lives in the record, so the
//! index costs a few bytes per item.
//!
//! Header (little-endian):
//! - bytes 0..8: `version_us` in the low 52 bits (microsecond hybrid clock of
//!   the write, also its creation time), key length in bits 52..60, flags in
//!   bits 60..64;
//! - bytes 8..12: TTL in seconds (0 = never expires);
//! - bytes 12..16: value length.
//!
//! [`ItemMemory`] is the narrow interface between the store and the memory
//! that holds records: the store never sees how records are laid out in
//! memory.

use crate::protocol::binary::Meta;

/// Bytes of the item header.
pub const HEADER_BYTES: usize = 16;

const VERSION_BITS: u32 = 52;
const VERSION_MASK: u64 = (1 << VERSION_BITS) - 1;

/// Handle of a stored record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ItemId(pub u32);

/// Size of the record for a key and value.
#[inline]
pub const fn record_len(key_len: usize, value_len: usize) -> usize {
    HEADER_BYTES + key_len + value_len
}

/// Writes header, key and value into a record of exactly `record_len` bytes.
#[inline]
pub fn write_record(record: &mut [u8], version_us: u64, ttl_s: u32, key: &[u8], value: &[u8]) {
    debug_assert!(key.len() <= 255 && record.len() == record_len(key.len(), value.len()));
    let word0 = (version_us & VERSION_MASK) | ((key.len() as u64) << VERSION_BITS);
    record[0..8].copy_from_slice(&word0.to_le_bytes());
    record[8..12].copy_from_slice(&ttl_s.to_le_bytes());
    record[12..16].copy_from_slice(&(value.len() as u32).to_le_bytes());
    record[HEADER_BYTES..HEADER_BYTES + key.len()].copy_from_slice(key);
    record[HEADER_BYTES + key.len()..].copy_from_slice(value);
}

/// A read-only view of a record.
#[derive(Clone, Copy)]
pub struct ItemView<'a> {
    record: &'a [u8],
}

impl<'a> ItemView<'a> {
    #[inline]
    pub fn new(record: &'a [u8]) -> Self {
        ItemView { record }
    }

    #[inline]
    fn word0(&self) -> u64 {
        u64::from_le_bytes(self.record[0..8].try_into().expect("header"))
    }

    #[inline]
    pub fn version_us(&self) -> u64 {
        self.word0() & VERSION_MASK
    }

    #[inline]
    pub fn key_len(&self) -> usize {
        ((self.word0() >> VERSION_BITS) & 0xff) as usize
    }

    #[inline]
    pub fn ttl_s(&self) -> u32 {
        u32::from_le_bytes(self.record[8..12].try_into().expect("header"))
    }

    #[inline]
    pub fn value_len(&self) -> usize {
        u32::from_le_bytes(self.record[12..16].try_into().expect("header")) as usize
    }

    #[inline]
    pub fn key(&self) -> &'a [u8] {
        &self.record[HEADER_BYTES..HEADER_BYTES + self.key_len()]
    }

    #[inline]
    pub fn value(&self) -> &'a [u8] {
        let start = HEADER_BYTES + self.key_len();
        &self.record[start..start + self.value_len()]
    }

    /// Microsecond at which the item expires; `None` = never.
    #[inline]
    pub fn expires_at_us(&self) -> Option<u64> {
        match self.ttl_s() {
            0 => None,
            ttl => Some(self.version_us().saturating_add(u64::from(ttl) * 1_000_000)),
        }
    }

    #[inline]
    pub fn is_expired(&self, now_us: u64) -> bool {
        self.expires_at_us().is_some_and(|at| now_us >= at)
    }

    /// Wire metadata.
    #[inline]
    pub fn meta(&self) -> Meta {
        let version = self.version_us();
        Meta {
            created_at_ms: version / 1000,
            expires_at_ms: self.expires_at_us().map_or(0, |us| us / 1000),
            version,
        }
    }
}

/// Why memory could not be had for a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocError {
    /// The shard's memory limit is reached.
    Full,
}

/// Per-shard memory for item records, within a byte limit.
///
/// Every record is one allocation of exactly its size; the slots table maps
/// [`ItemId`]s to records and recycles ids.
pub struct ItemMemory {
    slots: Vec<Option<Box<[u8]>>>,
    free_ids: Vec<u32>,
    used_bytes: usize,
    limit_bytes: usize,
}

/// Bookkeeping bytes per slot, counted toward the limit.
const SLOT_OVERHEAD: usize = std::mem::size_of::<Option<Box<[u8]>>>();

impl ItemMemory {
    pub fn new(limit_bytes: usize) -> Self {
        ItemMemory {
            slots: Vec::new(),
            free_ids: Vec::new(),
            used_bytes: 0,
            limit_bytes,
        }
    }

    /// Reserves a record of `len` bytes (zeroed).
    pub fn alloc(&mut self, len: usize) -> Result<ItemId, AllocError> {
        let cost = len + SLOT_OVERHEAD;
        if self.used_bytes.saturating_add(cost) > self.limit_bytes {
            return Err(AllocError::Full);
        }
        let record = vec![0u8; len].into_boxed_slice();
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.slots[id as usize] = Some(record);
                id
            }
            None => {
                let id = u32::try_from(self.slots.len()).map_err(|_| AllocError::Full)?;
                self.slots.push(Some(record));
                id
            }
        };
        self.used_bytes += cost;
        Ok(ItemId(id))
    }

    /// Releases a record.
    pub fn free(&mut self, id: ItemId) {
        if let Some(record) = self.slots.get_mut(id.0 as usize).and_then(Option::take) {
            self.used_bytes -= record.len() + SLOT_OVERHEAD;
            self.free_ids.push(id.0);
        }
    }

    #[inline]
    pub fn record(&self, id: ItemId) -> &[u8] {
        self.slots[id.0 as usize].as_deref().expect("live item id")
    }

    #[inline]
    pub fn record_mut(&mut self, id: ItemId) -> &mut [u8] {
        self.slots[id.0 as usize].as_deref_mut().expect("live item id")
    }

    #[inline]
    pub fn view(&self, id: ItemId) -> ItemView<'_> {
        ItemView::new(self.record(id))
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    /// Drops every record.
    pub fn clear(&mut self) {
        self.slots.clear();
        self.free_ids.clear();
        self.used_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trips() {
        let mut buf = vec![0u8; record_len(3, 5)];
        write_record(&mut buf, 1_700_000_000_123_456, 60, b"key", b"value");
        let v = ItemView::new(&buf);
        assert_eq!(v.key(), b"key");
        assert_eq!(v.value(), b"value");
        assert_eq!(v.ttl_s(), 60);
        assert_eq!(v.version_us(), 1_700_000_000_123_456);
        assert_eq!(v.meta().created_at_ms, 1_700_000_000_123);
        assert_eq!(v.meta().expires_at_ms, 1_700_000_060_123);
        assert!(!v.is_expired(1_700_000_060_123_455));
        assert!(v.is_expired(1_700_000_060_123_456));
    }

    #[test]
    fn memory_counts_and_limits() {
        let mut m = ItemMemory::new(1000);
        let a = m.alloc(400).unwrap();
        let b = m.alloc(400).unwrap();
        assert_eq!(m.alloc(400), Err(AllocError::Full));
        m.free(a);
        let c = m.alloc(400).unwrap();
        assert_eq!(c, a, "ids are recycled");
        m.free(b);
        m.free(c);
        assert_eq!(m.used_bytes(), 0);
    }
}
