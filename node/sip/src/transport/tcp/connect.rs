//! Outbound connections: from the node's own address, and the client side of the TLS handshake.

use super::*;

/// Connects to `dest` from `local_ip` when it is a specific address of `dest`'s family (the node's
/// SIP address: a peer that knows the node by it sees connections come from it, as it sees UDP),
/// else from the address the kernel chooses.
async fn connect_from(local_ip: std::net::IpAddr, dest: SocketAddr) -> std::io::Result<TcpStream> {
    if local_ip.is_unspecified() || local_ip.is_ipv4() != dest.is_ipv4() {
        return TcpStream::connect(dest).await;
    }
    let sock = if dest.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.bind(SocketAddr::new(local_ip, 0))?;
    sock.connect(dest).await
}

impl TcpPool {
    /// The address connections this pool opens come from: the TLS listener's IP for TLS, the
    /// SIP listen IP otherwise.
    fn source_ip(&self) -> std::net::IpAddr {
        let config = &self.inner.config;
        match (&self.inner.tls, config.tls.as_ref().and_then(|t| t.listen)) {
            (Some(_), Some(tls)) => tls.ip(),
            _ => config.listen.ip(),
        }
    }

    /// Opens a connection to `dest` (and, for TLS, finishes the handshake), then adopts it.
    pub(super) async fn connect(
        &self,
        dest: SocketAddr,
        slot: SlotGuard,
    ) -> Result<mpsc::Sender<Bytes>, TransportError> {
        let stream = connect_from(self.source_ip(), dest)
            .await
            .map_err(|e| TransportError::Io(e.kind()))?;
        let Some(tls) = &self.inner.tls else {
            return Ok(self.adopt_tcp(stream, dest, slot));
        };
        let _ = stream.set_nodelay(true);
        let sock = dup(&stream);
        let peer = tls.peer(dest);
        let config = tls
            .material()
            .client_config(peer.ca.as_deref())
            .map_err(|e| {
                tracing::warn!(%dest, error = %e, "no TLS client configuration for this peer");
                TransportError::Tls
            })?;
        match tokio_rustls::TlsConnector::from(config)
            .connect(peer.name.clone(), stream)
            .await
        {
            Ok(s) => {
                tls.count(peer.label, false, HandshakeResult::Ok);
                let info = Arc::new(PeerTls::of(s.get_ref().1));
                Ok(self.adopt_tls(tokio_rustls::TlsStream::Client(s), sock, dest, slot, info))
            }
            Err(e) => {
                tls.count(peer.label, false, HandshakeResult::Failed);
                tracing::debug!(%dest, error = %e, "tls handshake failed");
                Err(TransportError::Tls)
            }
        }
    }
}
