//! Who may do what: JWT credentials (checked once per binary connection, on
//! each REST request) turned into a [`Grant`], a bitmask of ICD 7.2
//! permissions that the dispatcher tests with one branch per request.
//!
//! - [`verifier`]: key files → [`Verifier`] (algorithms, `kid`, claims).
//! - [`hub`]: the verifier shared with the shards, swapped on reload with no
//!   lock on the request path.

pub mod hub;
pub mod verifier;

pub use hub::{AuthHub, ShardAuth};
pub use verifier::AuthSettings;

use crate::ops::OpKind;

/// One ICD 7.2 permission, as a bit.
pub type Permissions = u16;

pub const CACHE_READ: Permissions = 1 << 0;
pub const CACHE_WRITE: Permissions = 1 << 1;
pub const CACHE_DELETE: Permissions = 1 << 2;
pub const CACHE_FLUSH: Permissions = 1 << 3;
pub const CACHE_RELOAD: Permissions = 1 << 4;
pub const METRICS_READ: Permissions = 1 << 5;
/// Every permission (auth off).
pub const ALL: Permissions = 0x3f;

/// The permission names of tokens, with their bits.
pub const PERMISSION_NAMES: [(&str, Permissions); 6] = [
    ("cache:read", CACHE_READ),
    ("cache:write", CACHE_WRITE),
    ("cache:delete", CACHE_DELETE),
    ("cache:flush", CACHE_FLUSH),
    ("cache:reload", CACHE_RELOAD),
    ("metrics:read", METRICS_READ),
];

/// ICD 7.2 roles: a role name grants its group of permissions.
pub const ROLES: [(&str, Permissions); 3] = [
    ("read", CACHE_READ | METRICS_READ),
    ("write", CACHE_WRITE | CACHE_DELETE),
    ("admin", CACHE_FLUSH | CACHE_RELOAD),
];

/// The permission an operation needs; 0 = open (health).
#[inline]
pub const fn required(kind: OpKind) -> Permissions {
    match kind {
        OpKind::Get | OpKind::GetMany | OpKind::Pattern => CACHE_READ,
        OpKind::Set | OpKind::SetMany => CACHE_WRITE,
        OpKind::Delete | OpKind::DeleteMany => CACHE_DELETE,
        OpKind::Flush => CACHE_FLUSH,
        OpKind::Reload => CACHE_RELOAD,
        OpKind::Stats => METRICS_READ,
        OpKind::Health => 0,
    }
}

/// Bits of a permission or role name; 0 for names we do not know (ignored,
/// so that tokens may carry permissions of other services).
pub fn permission_bits(name: &str) -> Permissions {
    PERMISSION_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |&(_, bits)| bits)
}

/// Bits of an ICD 7.2 role name.
pub fn role_bits(name: &str) -> Permissions {
    ROLES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(0, |&(_, bits)| bits)
}

/// What a connection (or one REST request) may do, until when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub permissions: Permissions,
    /// Unix microseconds from which the credentials no longer count (the
    /// token's `exp` plus the leeway); `u64::MAX` without auth.
    pub expires_us: u64,
    /// Whether valid credentials were shown (AUTH_002 rather than AUTH_001
    /// when a permission is missing).
    pub authenticated: bool,
}

impl Grant {
    /// No credentials: only open operations.
    pub const NONE: Grant = Grant {
        permissions: 0,
        expires_us: 0,
        authenticated: false,
    };

    /// Auth is off: everything, forever.
    pub const UNRESTRICTED: Grant = Grant {
        permissions: ALL,
        expires_us: u64::MAX,
        authenticated: true,
    };

    /// Whether an operation needing `need` may run at `now_us`. Branch-free
    /// so that the dispatcher's check is a single branch.
    #[inline(always)]
    pub fn allows(&self, need: Permissions, now_us: u64) -> bool {
        ((self.permissions & need) == need) & ((need == 0) | (now_us < self.expires_us))
    }

    /// The refusal for an operation [`Grant::allows`] refused: AUTH_001 when
    /// there are no valid credentials (any more), else AUTH_002.
    #[cold]
    pub fn refusal(&self, need: Permissions, now_us: u64) -> (crate::Status, &'static str) {
        use crate::Status;
        if !self.authenticated {
            (Status::InvalidCredentials, "authentication required")
        } else if now_us >= self.expires_us && need != 0 {
            (Status::InvalidCredentials, "token expired")
        } else {
            (
                Status::Forbidden,
                "the token does not grant the permission this operation needs",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Status;

    #[test]
    fn icd_permission_table() {
        assert_eq!(required(OpKind::Get), CACHE_READ);
        assert_eq!(required(OpKind::GetMany), CACHE_READ);
        assert_eq!(required(OpKind::Pattern), CACHE_READ);
        assert_eq!(required(OpKind::Set), CACHE_WRITE);
        assert_eq!(required(OpKind::SetMany), CACHE_WRITE);
        assert_eq!(required(OpKind::Delete), CACHE_DELETE);
        assert_eq!(required(OpKind::DeleteMany), CACHE_DELETE);
        assert_eq!(required(OpKind::Flush), CACHE_FLUSH);
        assert_eq!(required(OpKind::Reload), CACHE_RELOAD);
        assert_eq!(required(OpKind::Stats), METRICS_READ);
        assert_eq!(required(OpKind::Health), 0);
        assert_eq!(role_bits("read"), CACHE_READ | METRICS_READ);
        assert_eq!(role_bits("admin"), CACHE_FLUSH | CACHE_RELOAD);
        assert_eq!(permission_bits("cache:delete"), CACHE_DELETE);
        assert_eq!(permission_bits("cache:*"), 0);
    }

    #[test]
    fn grants() {
        let g = Grant {
            permissions: CACHE_READ,
            expires_us: 1_000,
            authenticated: true,
        };
        assert!(g.allows(CACHE_READ, 999));
        assert!(!g.allows(CACHE_READ, 1_000));
        assert!(g.allows(0, 5_000), "health stays open after expiry");
        assert!(!g.allows(CACHE_WRITE, 0));
        assert_eq!(g.refusal(CACHE_WRITE, 0).0, Status::Forbidden);
        assert_eq!(g.refusal(CACHE_READ, 1_000).0, Status::InvalidCredentials);
        assert!(!Grant::NONE.allows(CACHE_READ, 0));
        assert!(Grant::NONE.allows(0, 0));
        assert_eq!(Grant::NONE.refusal(CACHE_READ, 0).0, Status::InvalidCredentials);
        assert!(Grant::UNRESTRICTED.allows(ALL, u64::MAX - 1));
    }
}
