//! Rust client (being written).
pub struct CacheClient;
pub struct ClientConfig;
