//! An axum [`Listener`] that terminates TLS: the TCP accept loop hands each
//! connection to rustls with a handshake deadline, so one stalled client
//! cannot hold the listener for long.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::Listener;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::certs::{CertError, ServingCert};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// A TLS-terminating listener for [`axum::serve`].
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

/// Why the listener could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Bad certificate material.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// rustls rejected the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The address could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
}

impl TlsListener {
    /// Binds `addr` and serves `cert` (HTTP/1.1 only: ALPN offers nothing else).
    ///
    /// # Errors
    /// If the certificate does not load or the address cannot be bound.
    pub async fn bind(addr: SocketAddr, cert: &ServingCert) -> Result<Self, TlsError> {
        let (chain, key) = cert.rustls_material()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpListener::bind(addr)
            .await
            .map_err(|source| TlsError::Bind { addr, source })?;
        Ok(Self {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let (tcp, peer) = match self.tcp.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "webhook accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => return (tls, peer),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "webhook TLS handshake"),
                Err(_) => tracing::debug!(%peer, "webhook TLS handshake timed out"),
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
