//! The operations both protocols produce and shards execute.

/// What a request asks for. Parsed from `CacheOperation.operation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    Get,
    Set,
    Delete,
    GetMany,
    SetMany,
    DeleteMany,
    Pattern,
    Flush,
    Stats,
    Health,
    Reload,
}

/// How an operation reaches the shards that hold its keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// One key: runs on the key's owner.
    SingleKey,
    /// Several keys: split by owner, run in parallel, gathered in key order.
    MultiKey,
    /// No key: runs on every shard, the answers merged.
    EveryShard,
    /// Server-wide: run once by the shard that read it (`reload`).
    Server,
}

impl OpKind {
    /// Every operation, for tables and tests.
    pub const ALL: [OpKind; 11] = [
        OpKind::Get,
        OpKind::Set,
        OpKind::Delete,
        OpKind::GetMany,
        OpKind::SetMany,
        OpKind::DeleteMany,
        OpKind::Pattern,
        OpKind::Flush,
        OpKind::Stats,
        OpKind::Health,
        OpKind::Reload,
    ];

    /// Parses the wire name (exact, lower case).
    #[inline]
    pub fn parse(name: &[u8]) -> Option<OpKind> {
        Some(match name {
            b"get" => OpKind::Get,
            b"set" => OpKind::Set,
            b"delete" => OpKind::Delete,
            b"get_many" => OpKind::GetMany,
            b"set_many" => OpKind::SetMany,
            b"delete_many" => OpKind::DeleteMany,
            b"pattern" => OpKind::Pattern,
            b"flush" => OpKind::Flush,
            b"stats" => OpKind::Stats,
            b"health" => OpKind::Health,
            b"reload" => OpKind::Reload,
            _ => return None,
        })
    }

    /// The wire name.
    pub const fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Set => "set",
            OpKind::Delete => "delete",
            OpKind::GetMany => "get_many",
            OpKind::SetMany => "set_many",
            OpKind::DeleteMany => "delete_many",
            OpKind::Pattern => "pattern",
            OpKind::Flush => "flush",
            OpKind::Stats => "stats",
            OpKind::Health => "health",
            OpKind::Reload => "reload",
        }
    }

    /// How the operation is routed.
    pub const fn reach(self) -> Reach {
        match self {
            OpKind::Get | OpKind::Set | OpKind::Delete => Reach::SingleKey,
            OpKind::GetMany | OpKind::SetMany | OpKind::DeleteMany => Reach::MultiKey,
            OpKind::Pattern | OpKind::Flush | OpKind::Stats | OpKind::Health => Reach::EveryShard,
            OpKind::Reload => Reach::Server,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for op in OpKind::ALL {
            assert_eq!(OpKind::parse(op.name().as_bytes()), Some(op));
        }
        assert_eq!(OpKind::parse(b"GET"), None);
        assert_eq!(OpKind::parse(b""), None);
    }
}
