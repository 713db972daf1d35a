//! TLS for both listeners (rustls over glommio's `TcpStream`, which
//! implements futures' `AsyncRead`/`AsyncWrite`). Off unless `--tls-cert`
//! and `--tls-key` are given; the connection loops are generic over the
//! stream, so plain and TLS connections run the same code.

use std::path::Path;
use std::sync::Arc;

use futures_rustls::TlsAcceptor;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::handshake::HANDSHAKE_DEADLINE;

/// A connection's byte stream: plain TCP or TLS over it.
pub trait Transport: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin {}

impl<S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin> Transport for S {}

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

/// Runs the TLS handshake of an accepted connection, within the same
/// deadline as the protocol handshake; `None` if it fails or is late.
pub async fn accept<S: Transport>(
    config: &Arc<rustls::ServerConfig>,
    stream: S,
) -> Option<futures_rustls::server::TlsStream<S>> {
    let acceptor = TlsAcceptor::from(config.clone());
    let handshake = async { acceptor.accept(stream).await.ok() };
    let late = async {
        glommio::timer::sleep(HANDSHAKE_DEADLINE).await;
        None
    };
    futures_lite::future::or(handshake, late).await
}
