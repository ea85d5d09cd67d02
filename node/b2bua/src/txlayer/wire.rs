//! The network below the transaction layer: what sends bytes now. The node's [`Transports`] are the
//! real one; a test stands in with a channel, so calls run without a bound socket.

use std::net::SocketAddr;

use bytes::Bytes;
use medpool_sip::transport::tcp::TcpPool;
use medpool_sip::transport::{FrontDoorStats, Transport, TransportError, Transports};

/// Sends SIP without waiting (for the transaction layer and the calls, which cannot await).
pub trait Wire: Send + Sync + 'static {
    /// Sends `bytes` to `dest` now: UDP never waits; TCP uses an open connection or connects in the
    /// background.
    fn send_now(
        &self,
        transport: Transport,
        dest: SocketAddr,
        bytes: Bytes,
    ) -> Result<(), TransportError>;
    /// Front-door and traffic counters.
    fn stats(&self) -> &FrontDoorStats;
    /// The TCP connections (counts, refusals, the hook for trunk addresses), when real ones exist.
    fn tcp(&self) -> Option<&TcpPool> {
        None
    }
    /// Tells every TCP and TLS listener which peers are listed (trunks, forwarders): see
    /// [`TcpPool::set_listed_ips`].
    fn set_listed_ips(&self, ips: Vec<std::net::IpAddr>) {
        if let Some(tls) = self.tls() {
            tls.set_listed_ips(ips.clone());
        }
        if let Some(tcp) = self.tcp() {
            tcp.set_listed_ips(ips);
        }
    }
    /// The TLS connections, when the node has a TLS listener or client.
    fn tls(&self) -> Option<&TcpPool> {
        None
    }
}

impl Wire for Transports {
    fn send_now(
        &self,
        transport: Transport,
        dest: SocketAddr,
        bytes: Bytes,
    ) -> Result<(), TransportError> {
        Transports::send_now(self, transport, dest, bytes)
    }
    fn stats(&self) -> &FrontDoorStats {
        Transports::stats(self)
    }
    fn tls(&self) -> Option<&TcpPool> {
        Transports::tls(self)
    }
    fn tcp(&self) -> Option<&TcpPool> {
        Some(Transports::tcp(self))
    }
}
