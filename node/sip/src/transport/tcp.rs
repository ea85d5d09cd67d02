//! TCP: an accept loop, one reader task and one writer task per connection, and a table of open
//! connections keyed by the peer's address so that responses and later requests reuse them (RFC 3261
//! §18.2.2, RFC 5626-style reuse). A framing error closes only that connection; RFC 5626 CRLF
//! keep-alive pings are answered.
//!
//! No peer can hold more than its share ([`admission`] keeps the budgets):
//! - **at accept**: a connection beyond its address's cap or the unlisted total is reset at once,
//!   before any byte is read; listed peers (the user's trunks, [`TcpPool::set_listed_ips`]) have a
//!   cap of their own outside that total; connections this node opens have a separate budget;
//! - **while reading**: a message must arrive whole within `message_timeout` of its first byte, and
//!   a connection with no complete message for `idle_timeout` is closed (bytes do not restart that
//!   clock, complete messages do); the framer resumes its scan where it stopped;
//! - **while writing**: one write may take `write_timeout`; a peer that stops reading loses its
//!   connection (reset, its queued bytes dropped), and a full per-connection queue refuses a send
//!   ([`TransportError::Busy`]) instead of waiting: nobody else's sends wait on it.
//!
//! The same table carries SIP over TLS ([`super::tls`]): a pool made with a [`TlsSide`] runs a
//! handshake after each accept (within `message_timeout`, holding the slot it was admitted in) and
//! after each connect (within `connect_timeout`), then frames the decrypted stream exactly as TCP.
//! An RFC 5923 `alias` in a request's top Via (sent-by at the connection's own IP, another port)
//! makes the connection serve requests to that address too (one alias per connection).
//!
//! Accept errors (EMFILE, ENFILE, ENOBUFS, ...) are retried with an exponential backoff up to
//! [`ACCEPT_BACKOFF_MAX`]; errors of one connection (reset before accept) are not. Everything refused
//! or closed is counted in [`TcpStats`].

mod accept;
pub mod admission;
mod conn;
mod connect;
mod reader;
mod stats;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use admission::{Admission, Slot};
pub use admission::{Refusal, TcpLimits};
pub use stats::TcpStats;

use super::gate::{Bucket, SourceClass, UnknownPolicy};
use super::tls::{ClientCheck, ClientVerdict, HandshakeResult, PeerTls, TlsSide};
use super::{
    FrontDoorStats, Inbound, Screened, Transport, TransportConfig, TransportError, overload_answer,
    screen,
};
use crate::check::{Rejection, rejection_response};
use crate::framing::{Frame, PONG, StreamFramer};
use crate::message::builder::response_to;

/// Queue depth of one connection's writer.
const WRITE_QUEUE: usize = 1024;

/// First wait after a failed accept; doubled on each failure in a row.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Longest wait after failed accepts.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The shared connection table and settings.
#[derive(Clone, Debug)]
pub struct TcpPool {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: TransportConfig,
    /// `Tcp`, or `Tls` when `tls` is set.
    transport: Transport,
    tls: Option<Arc<TlsSide>>,
    conns: Mutex<HashMap<SocketAddr, Conn>>,
    /// Destinations being connected to, with what was sent to them meanwhile (one connect per
    /// destination at a time). At most `max_outbound` entries (each holds an outbound slot) of at
    /// most [`WRITE_QUEUE`] messages.
    connecting: Mutex<HashMap<SocketAddr, Vec<Bytes>>>,
    admission: Mutex<Admission>,
    next_id: AtomicU64,
    tx: super::lanes::InboundTx,
    stats: Arc<FrontDoorStats>,
    tcp_stats: TcpStats,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// The clock of the connections' token buckets starts here.
    started: Instant,
}

/// A connection's budget of new requests: the policy entry it was made for and its bucket; and
/// its last verdict on the client certificate (TLS).
#[derive(Debug, Default)]
struct ConnBudget(Option<(usize, Bucket)>, ClientVerdict);

/// An entry of the connection table: the writer's queue, and which connection it is (a newer
/// connection from the same address replaces the entry; the older one must not remove it).
#[derive(Debug)]
struct Conn {
    id: u64,
    tx: mpsc::Sender<Bytes>,
    /// What the TLS handshake learnt of the peer (`None` over TCP).
    tls: Option<Arc<PeerTls>>,
}

/// A budget slot, given back when dropped.
#[derive(Debug)]
struct SlotGuard {
    inner: Arc<Inner>,
    slot: Slot,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Ok(mut a) = self.inner.admission.lock() {
            a.release(self.slot);
        }
    }
}

/// One open connection, shared by its reader and writer: when both are gone its table entry and its
/// budget slot are given back.
#[derive(Debug)]
struct Live {
    id: u64,
    peer: SocketAddr,
    /// What the TLS handshake learnt of the peer (`None` over TCP).
    tls: Option<Arc<PeerTls>>,
    /// The RFC 5923 alias this connection also serves, once set.
    alias: Mutex<Option<SocketAddr>>,
    /// Turns true when either half wants the whole connection gone now.
    closed: watch::Sender<bool>,
    slot: SlotGuard,
}

impl Live {
    fn inner(&self) -> &Inner {
        &self.slot.inner
    }

    /// Both halves stop now.
    fn close(&self) {
        self.closed.send_replace(true);
    }

    /// New sends no longer find this connection.
    fn forget(&self) {
        let alias = self.alias.lock().ok().and_then(|a| *a);
        if let Ok(mut c) = self.inner().conns.lock() {
            for key in std::iter::once(self.peer).chain(alias) {
                if c.get(&key).is_some_and(|e| e.id == self.id) {
                    c.remove(&key);
                }
            }
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.forget();
    }
}

/// Whether an accept error is about one connection only (retry at once) rather than the process
/// or system (back off).
pub fn is_connection_error(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::ConnectionReset
    )
}

/// Resets a connection (SO_LINGER 0): no FIN handshake, queued bytes dropped.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// A second handle on a connection's socket, to reset it once the stream is split behind TLS.
fn dup(stream: &TcpStream) -> Option<socket2::Socket> {
    use std::os::fd::AsFd;
    stream
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(socket2::Socket::from)
}

impl TcpPool {
    pub(crate) fn new(
        config: TransportConfig,
        tls: Option<Arc<TlsSide>>,
        tx: super::lanes::InboundTx,
        stats: Arc<FrontDoorStats>,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> TcpPool {
        TcpPool {
            inner: Arc::new(Inner {
                config,
                transport: if tls.is_some() {
                    Transport::Tls
                } else {
                    Transport::Tcp
                },
                tls,
                conns: Mutex::new(HashMap::new()),
                connecting: Mutex::new(HashMap::new()),
                admission: Mutex::new(Admission::default()),
                next_id: AtomicU64::new(0),
                tx,
                stats,
                tcp_stats: TcpStats::default(),
                shutdown,
                started: Instant::now(),
            }),
        }
    }

    /// How many connections are open (in and out).
    pub fn open_connections(&self) -> usize {
        self.open_inbound() + self.open_outbound()
    }

    /// Accepted connections open.
    pub fn open_inbound(&self) -> usize {
        self.inner
            .admission
            .lock()
            .map(|a| a.inbound())
            .unwrap_or(0)
    }

    /// Connections this node opened (or is opening) that are open.
    pub fn open_outbound(&self) -> usize {
        self.inner
            .admission
            .lock()
            .map(|a| a.outbound())
            .unwrap_or(0)
    }

    /// The TLS side (`None` for the TCP table).
    pub fn tls(&self) -> Option<&Arc<TlsSide>> {
        self.inner.tls.as_ref()
    }

    /// What was refused or closed, and why.
    pub fn stats(&self) -> &TcpStats {
        &self.inner.tcp_stats
    }

    /// The limits in force.
    pub fn limits(&self) -> &TcpLimits {
        &self.inner.config.tcp
    }

    /// The hook for the user's trusted peers (a B2BUA's trunk addresses): these addresses get
    /// `max_inbound_per_listed_ip` connections each, outside the unlisted total. Replaces the
    /// previous list; open connections keep the budget they were admitted in.
    pub fn set_listed_ips(&self, ips: impl IntoIterator<Item = IpAddr>) {
        if let Ok(mut a) = self.inner.admission.lock() {
            a.set_listed(ips);
        }
    }

    fn guard(&self, slot: Slot) -> SlotGuard {
        SlotGuard {
            inner: self.inner.clone(),
            slot,
        }
    }

    /// What the TLS handshake of the open connection to `peer` learnt (`None`: no such
    /// connection, or not TLS).
    pub fn peer_tls(&self, peer: SocketAddr) -> Option<Arc<PeerTls>> {
        self.inner
            .conns
            .lock()
            .ok()
            .and_then(|c| c.get(&peer).and_then(|e| e.tls.clone()))
    }

    fn existing(&self, dest: SocketAddr) -> Option<mpsc::Sender<Bytes>> {
        self.inner
            .conns
            .lock()
            .ok()
            .and_then(|c| c.get(&dest).map(|e| e.tx.clone()))
            .filter(|w| !w.is_closed())
    }

    /// Sends on the open connection to `conn` (a response on the connection its request came on);
    /// when that is gone, as [`TcpPool::send_now`] to `fallback`. Never waits.
    pub fn send_on(
        &self,
        conn: SocketAddr,
        fallback: SocketAddr,
        bytes: Bytes,
    ) -> Result<(), TransportError> {
        match self.existing(conn) {
            Some(w) => w.try_send(bytes).map_err(|_| TransportError::Busy),
            None => self.send_now(fallback, bytes),
        }
    }

    /// Sends on the open connection to `dest`; when there is none, connects in the background and sends
    /// then (a failure is logged; the transaction layer's timers notice the silence).
    pub fn send_now(&self, dest: SocketAddr, bytes: Bytes) -> Result<(), TransportError> {
        match self.existing(dest) {
            Some(w) => w.try_send(bytes).map_err(|_| TransportError::Busy),
            None => {
                let pool = self.clone();
                tokio::spawn(async move {
                    if let Err(e) = pool.send(dest, bytes).await {
                        tracing::debug!(%dest, error = %e, "tcp send failed");
                    }
                });
                Ok(())
            }
        }
    }

    /// Sends on the connection to `dest`, opening one (within the outbound budget) when there is none.
    /// While a connection to `dest` is being opened, later sends wait in its queue (they are sent
    /// once it is open, dropped if it cannot be opened) instead of opening more.
    pub async fn send(&self, dest: SocketAddr, bytes: Bytes) -> Result<(), TransportError> {
        if let Some(w) = self.existing(dest) {
            return w.try_send(bytes).map_err(|_| TransportError::Busy);
        }
        let slot = {
            let Ok(mut connecting) = self.inner.connecting.lock() else {
                return Err(TransportError::Busy);
            };
            if let Some(waiting) = connecting.get_mut(&dest) {
                if waiting.len() >= WRITE_QUEUE {
                    return Err(TransportError::Busy);
                }
                waiting.push(bytes);
                return Ok(());
            }
            let admitted = self
                .inner
                .admission
                .lock()
                .map_err(|_| Refusal::OutboundFull)
                .and_then(|mut a| a.admit_outbound(&self.inner.config.tcp));
            match admitted {
                Ok(slot) => {
                    connecting.insert(dest, Vec::new());
                    self.guard(slot)
                }
                Err(why) => {
                    self.inner.tcp_stats.refused(why);
                    return Err(TransportError::TooManyConnections);
                }
            }
        };
        // The slot is held while connecting (and given back if that fails).
        let connected = tokio::time::timeout(
            self.inner.config.tcp.connect_timeout,
            self.connect(dest, slot),
        )
        .await
        .unwrap_or(Err(TransportError::ConnectTimeout));
        let waiting = self
            .inner
            .connecting
            .lock()
            .ok()
            .and_then(|mut c| c.remove(&dest))
            .unwrap_or_default();
        let wtx = connected?;
        let first = wtx.try_send(bytes).map_err(|_| TransportError::Busy);
        for b in waiting {
            let _ = wtx.try_send(b);
        }
        first
    }
}
