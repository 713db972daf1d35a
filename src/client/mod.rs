//! Rust client (placeholder while the core lands).
pub struct CacheClient;
pub struct ClientConfig;
