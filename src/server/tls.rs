//! TLS for both listeners (rustls over glommio's `TcpStream`, which
//! implements futures' `AsyncRead`/`AsyncWrite`). Off unless `--tls-cert`
//! and `--tls-key` are given; the connection loops are generic over the
//! stream, so plain and TLS connections run the same code. The
//! certificate and key are loaded with the other security settings
//! ([`crate::config::SecurityConfig`]).

use std::sync::Arc;

use futures_rustls::TlsAcceptor;

use super::binary::handshake::HANDSHAKE_DEADLINE;

/// A connection's byte stream: plain TCP or TLS over it.
pub trait Transport: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin {}

impl<S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin> Transport for S {}

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
