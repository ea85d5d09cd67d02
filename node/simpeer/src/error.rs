//! Why a simulated peer could not start.

use std::net::SocketAddr;

/// A peer or the forwarder could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SimpeerError {
    /// The address could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// Test certificates could not be made or written.
    #[error("test PKI: {0}")]
    Pki(String),
    /// The TLS material could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] medpool_sip::transport::tls::TlsError),
    /// Another socket operation failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Binds a tokio UDP socket, naming the address in the error.
pub(crate) async fn bind_udp(addr: SocketAddr) -> Result<tokio::net::UdpSocket, SimpeerError> {
    tokio::net::UdpSocket::bind(addr)
        .await
        .map_err(|source| SimpeerError::Bind { addr, source })
}
