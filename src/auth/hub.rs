//! The verifier shared by every shard, and its reload.
//!
//! A reload (SIGHUP, REST `POST /api/v2/cache/reload`) builds a new
//! [`Verifier`] from the key files off the request path, publishes it under
//! a mutex and bumps a generation counter. Each shard keeps its own
//! `Arc<Verifier>` and compares the generation (one relaxed atomic load)
//! only when it authenticates, i.e. once per binary connection or REST
//! request, never per operation; only after a reload does it take the
//! mutex, once.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::verifier::{AuthError, AuthSettings, Verifier};
use super::Grant;

/// The key source and the current verifier.
#[derive(Debug)]
pub struct AuthHub {
    settings: AuthSettings,
    generation: AtomicU64,
    current: Mutex<Arc<Verifier>>,
}

/// What a reload did, for the REST answer and the log.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AuthReload {
    pub enabled: bool,
    pub generation: u64,
    /// `(kid, algorithm)` of the keys now in use.
    pub keys: Vec<(Option<String>, String)>,
}

impl AuthHub {
    /// Loads the keys once; an error names the file.
    pub fn new(settings: AuthSettings) -> Result<Arc<AuthHub>, String> {
        let verifier = if settings.enabled() {
            Verifier::load(&settings)?
        } else {
            Verifier::empty()
        };
        Ok(Arc::new(AuthHub {
            settings,
            generation: AtomicU64::new(1),
            current: Mutex::new(Arc::new(verifier)),
        }))
    }

    /// Auth off: every request is allowed (protected mode keeps such a
    /// server on loopback).
    pub fn disabled() -> Arc<AuthHub> {
        AuthHub::new(AuthSettings::default()).expect("no files to read")
    }

    /// Whether tokens are required.
    pub fn enabled(&self) -> bool {
        self.settings.enabled()
    }

    /// Re-reads every key file. On any error the keys in use stay.
    pub fn reload(&self) -> Result<AuthReload, String> {
        if self.enabled() {
            let verifier = Arc::new(Verifier::load(&self.settings)?);
            *self.current.lock().unwrap_or_else(|p| p.into_inner()) = verifier;
            self.generation.fetch_add(1, Ordering::Release);
        }
        Ok(self.report())
    }

    /// The keys in use.
    pub fn report(&self) -> AuthReload {
        AuthReload {
            enabled: self.enabled(),
            generation: self.generation.load(Ordering::Acquire),
            keys: self.current().describe(),
        }
    }

    fn current(&self) -> Arc<Verifier> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A shard's view of the [`AuthHub`].
pub struct ShardAuth {
    hub: Arc<AuthHub>,
    enabled: bool,
    seen: Cell<u64>,
    verifier: RefCell<Arc<Verifier>>,
}

impl ShardAuth {
    pub fn new(hub: Arc<AuthHub>) -> ShardAuth {
        let seen = hub.generation.load(Ordering::Acquire);
        let verifier = hub.current();
        ShardAuth {
            enabled: hub.enabled(),
            hub,
            seen: Cell::new(seen),
            verifier: RefCell::new(verifier),
        }
    }

    pub fn hub(&self) -> &Arc<AuthHub> {
        &self.hub
    }

    /// Whether tokens are required.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// What a token allows: [`Grant::UNRESTRICTED`] when auth is off (the
    /// token is then ignored).
    pub fn authenticate(&self, token: &[u8], service_id: Option<&str>) -> Result<Grant, AuthError> {
        if !self.enabled {
            return Ok(Grant::UNRESTRICTED);
        }
        let generation = self.hub.generation.load(Ordering::Relaxed);
        if generation != self.seen.get() {
            *self.verifier.borrow_mut() = self.hub.current();
            self.seen.set(generation);
        }
        self.verifier.borrow().verify(token, service_id)
    }
}
