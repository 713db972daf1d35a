//! Runtime policy: the default TTL, the ICD's cache types (section 4) with
//! their key prefixes, TTLs, consistency and event switches, and the memory
//! settings owned by the allocator work. Changed at runtime by
//! `config.cache.update`; every shard holds a copy and reads it on writes.

use serde::Serialize;
use serde_json::Value;

/// A cache type of ICD section 4, recognised by its key prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheType {
    CharacterData,
    ComputationResults,
    CampaignState,
    ParticipantList,
    ImageMetadata,
    TransformationResults,
}

impl CacheType {
    pub const ALL: [CacheType; 6] = [
        CacheType::CharacterData,
        CacheType::ComputationResults,
        CacheType::CampaignState,
        CacheType::ParticipantList,
        CacheType::ImageMetadata,
        CacheType::TransformationResults,
    ];

    /// The ICD name, used as `scope` in `config.cache.update`.
    pub const fn name(self) -> &'static str {
        match self {
            CacheType::CharacterData => "character_data",
            CacheType::ComputationResults => "computation_results",
            CacheType::CampaignState => "campaign_state",
            CacheType::ParticipantList => "participant_list",
            CacheType::ImageMetadata => "image_metadata",
            CacheType::TransformationResults => "transformation_results",
        }
    }

    /// Keys starting with this prefix belong to the type.
    pub const fn prefix(self) -> &'static [u8] {
        match self {
            CacheType::CharacterData => b"character:",
            CacheType::ComputationResults => b"computation:",
            CacheType::CampaignState => b"campaign:",
            CacheType::ParticipantList => b"participants:",
            CacheType::ImageMetadata => b"image:",
            CacheType::TransformationResults => b"transform:",
        }
    }

    /// The ICD's TTL and consistency for the type.
    pub const fn icd_defaults(self) -> (u32, Consistency) {
        match self {
            CacheType::CharacterData => (3600, Consistency::Strong),
            CacheType::ComputationResults => (300, Consistency::Eventual),
            CacheType::CampaignState => (1800, Consistency::Strong),
            CacheType::ParticipantList => (600, Consistency::Eventual),
            CacheType::ImageMetadata => (7200, Consistency::Eventual),
            CacheType::TransformationResults => (86400, Consistency::Eventual),
        }
    }

    pub fn from_name(name: &str) -> Option<CacheType> {
        CacheType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The type of a key, by prefix.
    #[inline]
    pub fn of_key(key: &[u8]) -> Option<CacheType> {
        // The first byte rules out most keys before any prefix compare.
        match key.first()? {
            b'c' | b'p' | b'i' | b't' => CacheType::ALL.into_iter().find(|t| key.starts_with(t.prefix())),
            _ => None,
        }
    }
}

/// Consistency a cache type asks for (docs/cluster.md): with replication 2,
/// a strong write is answered once its replica applied it, and a strong
/// request needs the node's lease; a node alone treats both alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Consistency {
    Strong,
    Eventual,
}

impl Consistency {
    fn parse(text: &str) -> Option<Consistency> {
        match text {
            "strong" => Some(Consistency::Strong),
            "eventual" => Some(Consistency::Eventual),
            _ => None,
        }
    }
}

/// Settings of one cache type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TypePolicy {
    /// TTL of writes that give 0; 0 = keep until evicted.
    pub ttl_s: u32,
    pub consistency: Consistency,
    /// Whether writes of this type publish `cache.item.updated`.
    pub events: bool,
}

/// Everything `config.cache.update` can change. Shards read their copy on
/// writes; the memory fields are applied by the store's owner (the slab
/// allocator work) when it reads them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Policy {
    /// Grows with every applied change.
    pub version: u64,
    /// TTL of writes that give 0 and match no cache type; 0 = never expire.
    pub default_ttl_s: u32,
    pub default_consistency: Consistency,
    /// Whether writes of keys of no cache type (and flushes) publish events.
    pub default_events: bool,
    /// Indexed like [`CacheType::ALL`].
    pub types: [TypePolicy; 6],
    /// Window in which writes of one key are coalesced into one event; 0 = off.
    pub coalesce_ms: u32,
    /// Eviction policy name ("lru" or "noeviction").
    pub eviction: String,
    /// Memory budget as received ("75%", "4GiB"), or none for the start value.
    pub max_memory: Option<String>,
    /// The same budget in bytes, parsed once when it was received.
    #[serde(skip)]
    pub max_memory_bytes: Option<usize>,
}

impl Policy {
    /// The start policy: the server's default TTL and the ICD's types.
    pub fn new(default_ttl_s: u32, coalesce_ms: u32) -> Policy {
        Policy {
            version: 0,
            default_ttl_s,
            default_consistency: Consistency::Eventual,
            default_events: true,
            types: CacheType::ALL.map(|t| {
                let (ttl_s, consistency) = t.icd_defaults();
                TypePolicy {
                    ttl_s,
                    consistency,
                    events: true,
                }
            }),
            coalesce_ms,
            eviction: "lru".into(),
            max_memory: None,
            max_memory_bytes: None,
        }
    }

    pub fn of(&self, t: CacheType) -> &TypePolicy {
        &self.types[t as usize]
    }

    fn of_mut(&mut self, t: CacheType) -> &mut TypePolicy {
        &mut self.types[t as usize]
    }

    /// The TTL a write of `key` gets when it gives `ttl_s` (0 = default).
    #[inline]
    pub fn resolve_ttl(&self, key: &[u8], ttl_s: u32) -> u32 {
        if ttl_s != 0 {
            return ttl_s;
        }
        match CacheType::of_key(key) {
            Some(t) => self.of(t).ttl_s,
            None => self.default_ttl_s,
        }
    }

    /// The consistency of a request of `key` that asks for none (its
    /// cache type's, else the default: eventual, as ICD 4 gives every type
    /// but character and campaign data).
    #[inline]
    pub fn consistency_of(&self, key: &[u8]) -> Consistency {
        match CacheType::of_key(key) {
            Some(t) => self.of(t).consistency,
            None => self.default_consistency,
        }
    }

    /// Whether a write of `key` publishes an event.
    #[inline]
    pub fn events_for(&self, key: &[u8]) -> bool {
        match CacheType::of_key(key) {
            Some(t) => self.of(t).events,
            None => self.default_events,
        }
    }

    /// Applies one `config.cache.update` (`data` of the message): `policy`
    /// names the setting, `parameters` holds its value (under `value` or the
    /// setting's own name), `scope` is `global` (or empty) or a cache type.
    /// Returns a summary of the change.
    pub fn apply(&mut self, data: &Value) -> Result<String, String> {
        let policy = data
            .get("policy")
            .and_then(Value::as_str)
            .ok_or("data.policy must be a string")?;
        let scope = data.get("scope").and_then(Value::as_str).unwrap_or("global");
        let params = data.get("parameters").cloned().unwrap_or(Value::Null);
        let param = |names: &[&str]| -> Option<Value> {
            names
                .iter()
                .chain(std::iter::once(&"value"))
                .find_map(|n| params.get(*n).cloned())
        };
        let target = match scope {
            "" | "global" | "*" | "default" => None,
            name => Some(CacheType::from_name(name).ok_or_else(|| format!("unknown scope {name:?}"))?),
        };
        if target.is_some() && matches!(policy, "eviction" | "max_memory") {
            return Err(format!(
                "{policy} applies to the whole server: use scope \"global\""
            ));
        }
        match policy {
            "ttl" | "ttl_default" => {
                let ttl = param(&["ttl", "ttl_default"])
                    .and_then(|v| v.as_u64())
                    .filter(|&t| t <= u64::from(u32::MAX))
                    .ok_or("parameters.ttl must be a number of seconds")? as u32;
                match target {
                    None => self.default_ttl_s = ttl,
                    Some(t) => self.of_mut(t).ttl_s = ttl,
                }
            }
            "consistency" => {
                let c = param(&["consistency"])
                    .and_then(|v| v.as_str().and_then(Consistency::parse))
                    .ok_or("parameters.consistency must be \"strong\" or \"eventual\"")?;
                match target {
                    None => self.default_consistency = c,
                    Some(t) => self.of_mut(t).consistency = c,
                }
            }
            "events" => {
                let coalesce = match params.get("coalesce_ms") {
                    None => None,
                    Some(ms) => Some(
                        ms.as_u64()
                            .filter(|&m| m <= 60_000)
                            .ok_or("parameters.coalesce_ms must be 0 to 60000")?
                            as u32,
                    ),
                };
                let enabled = match param(&["enabled"]) {
                    None => None,
                    Some(on) => Some(on.as_bool().ok_or("parameters.enabled must be true or false")?),
                };
                if coalesce.is_none() && enabled.is_none() {
                    return Err("parameters must hold enabled and/or coalesce_ms".into());
                }
                if let Some(ms) = coalesce {
                    self.coalesce_ms = ms;
                }
                match (enabled, target) {
                    (Some(on), None) => self.default_events = on,
                    (Some(on), Some(t)) => self.of_mut(t).events = on,
                    (None, _) => {}
                }
            }
            "eviction" => {
                let name = param(&["eviction", "policy"])
                    .and_then(|v| v.as_str().map(str::to_string))
                    .filter(|n| crate::shard::store::EvictionPolicy::parse(n).is_some())
                    .ok_or("parameters.eviction must be lru or noeviction")?;
                self.eviction = name;
            }
            "max_memory" => {
                let text = match param(&["max_memory"]) {
                    Some(Value::String(s)) => s,
                    Some(Value::Number(n)) => n.to_string(),
                    _ => return Err("parameters.max_memory must be a size or a percentage".into()),
                };
                self.max_memory_bytes = Some(crate::size::parse_memory(&text)?);
                self.max_memory = Some(text);
            }
            other => return Err(format!("unknown policy {other:?}")),
        }
        self.version += 1;
        Ok(format!(
            "{policy} updated for {}",
            target.map_or("global", CacheType::name)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_map_to_types_by_prefix() {
        assert_eq!(CacheType::of_key(b"character:1"), Some(CacheType::CharacterData));
        assert_eq!(
            CacheType::of_key(b"participants:9"),
            Some(CacheType::ParticipantList)
        );
        assert_eq!(
            CacheType::of_key(b"transform:x"),
            Some(CacheType::TransformationResults)
        );
        assert_eq!(CacheType::of_key(b"characters"), None);
        assert_eq!(CacheType::of_key(b"zzz"), None);
        assert_eq!(CacheType::of_key(b""), None);
    }

    #[test]
    fn ttl_resolution_uses_type_then_default() {
        let p = Policy::new(100, 0);
        assert_eq!(p.resolve_ttl(b"image:1", 0), 7200);
        assert_eq!(p.resolve_ttl(b"image:1", 5), 5);
        assert_eq!(p.resolve_ttl(b"other:1", 0), 100);
    }

    #[test]
    fn updates_apply_by_scope() {
        let mut p = Policy::new(100, 0);
        p.apply(&json!({"policy": "ttl", "parameters": {"ttl": 7}, "scope": "global"}))
            .unwrap();
        assert_eq!(p.resolve_ttl(b"k", 0), 7);
        p.apply(&json!({"policy": "ttl", "parameters": {"value": 9}, "scope": "campaign_state"}))
            .unwrap();
        assert_eq!(p.resolve_ttl(b"campaign:1", 0), 9);
        p.apply(&json!({"policy": "events", "parameters": {"enabled": false}, "scope": "image_metadata"}))
            .unwrap();
        assert!(!p.events_for(b"image:1"));
        assert!(p.events_for(b"character:1"));
        p.apply(&json!({"policy": "consistency", "parameters": {"consistency": "eventual"}, "scope": "character_data"}))
            .unwrap();
        assert_eq!(p.of(CacheType::CharacterData).consistency, Consistency::Eventual);
        p.apply(&json!({"policy": "max_memory", "parameters": {"max_memory": "50%"}}))
            .unwrap();
        assert_eq!(p.max_memory.as_deref(), Some("50%"));
        assert_eq!(p.version, 5);
    }

    #[test]
    fn bad_updates_are_refused_without_change() {
        let mut p = Policy::new(100, 0);
        let before = p.clone();
        for bad in [
            json!({}),
            json!({"policy": "ttl", "parameters": {"ttl": "x"}}),
            json!({"policy": "ttl", "parameters": {"ttl": 5}, "scope": "nope"}),
            json!({"policy": "nope", "parameters": {}}),
            json!({"policy": "eviction", "parameters": {"eviction": "bogus"}}),
            json!({"policy": "max_memory", "parameters": {"max_memory": "lots"}}),
            json!({"policy": "events", "parameters": {}}),
        ] {
            assert!(p.apply(&bad).is_err(), "{bad}");
        }
        assert_eq!(p, before);
    }
}
