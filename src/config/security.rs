//! Security settings (issue 5): JWT auth, TLS, encryption at rest and
//! compression, and protected mode. The flags are one block of
//! [`crate::config::Cli`]; [`SecurityConfig::from_args`] reads every key
//! and certificate file at start, so that a bad file is a configuration
//! error (exit 78) rather than a failure at the first request.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ConfigError;
use crate::auth::verifier::parse_key_spec;
use crate::auth::{AuthHub, AuthSettings};
use crate::codec::{CodecSettings, CompressionMode, EncryptionKey};

/// The security flags of `cache-server` (see docs/security.md).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SecurityArgs {
    /// JWT: HS256 secret file, `[KID=]PATH` (at least 32 bytes; a final newline is ignored).
    #[arg(long, value_name = "[KID=]PATH")]
    pub auth_hs256_secret_file: Option<String>,
    /// JWT: PEM public key, `[KID=]PATH`; RSA → RS256, EC P-256 → ES256, Ed25519 → EdDSA. Repeatable.
    #[arg(long, value_name = "[KID=]PATH")]
    pub auth_public_key_file: Vec<String>,
    /// JWT: required `iss` claim.
    #[arg(long, value_name = "ISSUER")]
    pub auth_issuer: Option<String>,
    /// JWT: required `aud` claim.
    #[arg(long, value_name = "AUDIENCE")]
    pub auth_audience: Option<String>,
    /// Serve without authentication on a non-loopback --bind (protected mode off).
    #[arg(long)]
    pub insecure_no_auth: bool,
    /// TLS certificate chain (PEM) for both listeners; needs --tls-key.
    #[arg(long, value_name = "PATH", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, value_name = "PATH", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Encryption at rest: key file, 32 raw bytes or 64 hex digits.
    #[arg(long, value_name = "PATH")]
    pub encryption_key_file: Option<PathBuf>,
    /// Always encrypt keys starting with PREFIX (needs --encryption-key-file). Repeatable.
    #[arg(long, value_name = "PREFIX")]
    pub encrypt_prefix: Vec<String>,
    /// lz4 compression of values: "requested" (options.compression), "always" or "off".
    #[arg(long, default_value = "requested")]
    pub compression: String,
    /// Values of at most this many bytes are never compressed.
    #[arg(long, value_name = "BYTES", default_value_t = crate::codec::DEFAULT_COMPRESSION_THRESHOLD)]
    pub compression_threshold: usize,
}

/// Validated, loaded security settings.
#[derive(Debug, Clone)]
pub struct SecurityConfig {
    pub auth: Arc<AuthHub>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub codec: CodecSettings,
    /// `--insecure-no-auth` was given.
    pub insecure_no_auth: bool,
    /// The encryption key was generated at start (no `--encryption-key-file`).
    pub generated_key: bool,
}

impl Default for SecurityConfig {
    /// Auth, TLS and encryption off; compression on request.
    fn default() -> Self {
        SecurityConfig {
            auth: AuthHub::disabled(),
            tls: None,
            codec: CodecSettings {
                compression_threshold: crate::codec::DEFAULT_COMPRESSION_THRESHOLD,
                ..CodecSettings::default()
            },
            insecure_no_auth: false,
            generated_key: false,
        }
    }
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        flag,
        reason: reason.into(),
    }
}

impl SecurityConfig {
    /// Checks the flags against `bind` (protected mode) and loads every
    /// file they name.
    /// Without `--encryption-key-file`, a node that serves alone
    /// (`cluster_nodes` 1) encrypts with a key generated at start and kept
    /// in memory only: encrypted values last as long as the process, like
    /// the cache itself. A cluster node has no key then (values must be
    /// readable on every node): requests for encryption get CACHE_006.
    pub fn from_args(
        args: &SecurityArgs,
        bind: IpAddr,
        cluster_nodes: usize,
    ) -> Result<SecurityConfig, ConfigError> {
        let settings = AuthSettings {
            hs256_secret_files: args
                .auth_hs256_secret_file
                .iter()
                .map(|s| parse_key_spec(s))
                .collect(),
            public_key_files: args
                .auth_public_key_file
                .iter()
                .map(|s| parse_key_spec(s))
                .collect(),
            issuer: args.auth_issuer.clone(),
            audience: args.auth_audience.clone(),
        };
        let flag = if args.auth_hs256_secret_file.is_some() {
            "--auth-hs256-secret-file"
        } else {
            "--auth-public-key-file"
        };
        if settings.enabled() && args.insecure_no_auth {
            return Err(invalid(
                "--insecure-no-auth",
                "cannot be combined with --auth-hs256-secret-file or --auth-public-key-file",
            ));
        }
        if !settings.enabled() && (settings.issuer.is_some() || settings.audience.is_some()) {
            return Err(invalid(
                "--auth-issuer",
                "--auth-issuer and --auth-audience need a key (--auth-hs256-secret-file or --auth-public-key-file)",
            ));
        }
        check_protected_mode(settings.enabled(), args.insecure_no_auth, bind)?;
        let auth = AuthHub::new(settings).map_err(|e| invalid(flag, e))?;

        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                Some(load_server_config(cert, key).map_err(|e| invalid("--tls-cert", e))?)
            }
            _ => None,
        };

        let key = match &args.encryption_key_file {
            Some(path) => Some(Arc::new(
                EncryptionKey::load(path).map_err(|e| invalid("--encryption-key-file", e))?,
            )),
            None if cluster_nodes <= 1 => Some(Arc::new(
                EncryptionKey::generate().map_err(|e| invalid("--encryption-key-file", e))?,
            )),
            None => None,
        };
        if args.encryption_key_file.is_none() && !args.encrypt_prefix.is_empty() {
            return Err(invalid("--encrypt-prefix", "needs --encryption-key-file"));
        }
        if args.encrypt_prefix.iter().any(String::is_empty) {
            return Err(invalid(
                "--encrypt-prefix",
                "an empty prefix would match every key",
            ));
        }
        let compression = CompressionMode::parse(&args.compression).ok_or_else(|| {
            invalid(
                "--compression",
                format!(
                    "{:?} is not \"requested\", \"always\" or \"off\"",
                    args.compression
                ),
            )
        })?;
        Ok(SecurityConfig {
            auth,
            tls,
            codec: CodecSettings {
                key,
                encrypt_prefixes: args
                    .encrypt_prefix
                    .iter()
                    .map(|p| p.as_bytes().to_vec())
                    .collect(),
                compression,
                compression_threshold: args.compression_threshold,
            },
            insecure_no_auth: args.insecure_no_auth,
            generated_key: args.encryption_key_file.is_none() && cluster_nodes <= 1,
        })
    }
}

/// Protected mode: without authentication the server listens on loopback
/// only, unless told otherwise in so many words.
pub fn check_protected_mode(
    auth_enabled: bool,
    insecure_no_auth: bool,
    bind: IpAddr,
) -> Result<(), ConfigError> {
    if auth_enabled || insecure_no_auth || bind.is_loopback() {
        return Ok(());
    }
    Err(invalid(
        "--bind",
        format!(
            "{bind} is not a loopback address and no authentication is configured (protected mode): \
             configure --auth-hs256-secret-file or --auth-public-key-file, or pass --insecure-no-auth \
             to serve every client without authentication"
        ),
    ))
}

/// Reads a PEM certificate chain and private key into a server config
/// (TLS 1.2 and 1.3, rustls' safe defaults, no client certificates).
pub fn load_server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let cert_pem = std::fs::read(cert).map_err(|e| format!("reading {}: {e}", cert.display()))?;
    let key_pem =
        zeroize::Zeroizing::new(std::fs::read(key).map_err(|e| format!("reading {}: {e}", key.display()))?);
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", cert.display()));
    }
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("{}: {e}", key.display()))?
        .ok_or_else(|| format!("{} holds no PEM private key", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not fit: {e}"))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn config(args: &[&str]) -> Result<SecurityConfig, ConfigError> {
        let cli = crate::config::Cli::parse_from(std::iter::once("cache-server").chain(args.iter().copied()));
        SecurityConfig::from_args(&cli.security, cli.bind, cli.cluster_nodes)
    }

    #[test]
    fn protected_mode() {
        assert!(config(&[]).is_ok());
        assert!(config(&["--bind", "::1"]).is_ok());
        let e = config(&["--bind", "0.0.0.0"]).unwrap_err();
        assert_eq!(e.flag, "--bind");
        assert!(e.reason.contains("--insecure-no-auth"), "{e}");
        assert!(config(&["--bind", "0.0.0.0", "--insecure-no-auth"]).is_ok());
        let secret = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/hs256.secret");
        let c = config(&["--bind", "0.0.0.0", "--auth-hs256-secret-file", secret]).unwrap();
        assert!(c.auth.enabled());
        let e = config(&["--auth-hs256-secret-file", secret, "--insecure-no-auth"]).unwrap_err();
        assert_eq!(e.flag, "--insecure-no-auth");
    }

    #[test]
    fn codec_flags() {
        assert_eq!(
            config(&["--encrypt-prefix", "x:"]).unwrap_err().flag,
            "--encrypt-prefix"
        );
        assert_eq!(
            config(&["--compression", "gzip"]).unwrap_err().flag,
            "--compression"
        );
        assert_eq!(
            config(&["--encryption-key-file", "/nonexistent"])
                .unwrap_err()
                .flag,
            "--encryption-key-file"
        );
        assert_eq!(
            config(&["--auth-public-key-file", "/nonexistent"])
                .unwrap_err()
                .flag,
            "--auth-public-key-file"
        );
    }
}
