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

pub mod admission;

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

/// What the TCP door refused or closed, and why (for metrics).
#[derive(Debug, Default)]
pub struct TcpStats {
    /// Connections reset at accept: unlisted peers held `max_inbound`.
    pub refused_inbound_full: AtomicU64,
    /// Connections reset at accept: the address held its cap.
    pub refused_per_ip: AtomicU64,
    /// Connections not opened: this node held `max_outbound`.
    pub refused_outbound_full: AtomicU64,
    /// Connections closed because a message did not arrive whole within `message_timeout`.
    pub closed_message_timeout: AtomicU64,
    /// Connections closed after `idle_timeout` without a complete message.
    pub closed_idle: AtomicU64,
    /// Connections reset because a write took longer than `write_timeout` (the peer did not read).
    pub closed_write_timeout: AtomicU64,
    /// Connections closed because the stream could not be framed.
    pub closed_framing: AtomicU64,
    /// Failed accepts (retried with backoff when not about one connection).
    pub accept_errors: AtomicU64,
}

impl TcpStats {
    /// Connections refused, by reason (labels for an exporter): `inbound_full`, `per_ip`,
    /// `outbound_full`.
    pub fn refused_by_reason(&self) -> [(&'static str, u64); 3] {
        [
            (
                "inbound_full",
                self.refused_inbound_full.load(Ordering::Relaxed),
            ),
            ("per_ip", self.refused_per_ip.load(Ordering::Relaxed)),
            (
                "outbound_full",
                self.refused_outbound_full.load(Ordering::Relaxed),
            ),
        ]
    }

    /// Connections the node closed, by reason (labels for an exporter): `message_timeout`, `idle`,
    /// `write_timeout`, `framing`.
    pub fn closed_by_reason(&self) -> [(&'static str, u64); 4] {
        [
            (
                "message_timeout",
                self.closed_message_timeout.load(Ordering::Relaxed),
            ),
            ("idle", self.closed_idle.load(Ordering::Relaxed)),
            (
                "write_timeout",
                self.closed_write_timeout.load(Ordering::Relaxed),
            ),
            ("framing", self.closed_framing.load(Ordering::Relaxed)),
        ]
    }

    fn refused(&self, why: Refusal) {
        match why {
            Refusal::InboundFull => &self.refused_inbound_full,
            Refusal::PerIpFull => &self.refused_per_ip,
            Refusal::OutboundFull => &self.refused_outbound_full,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

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

/// Why a reader stopped waiting.
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// For the rest of a message begun.
    Message,
    /// For a next message.
    Idle,
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

    pub(crate) async fn accept_loop(self, listener: tokio::net::TcpListener) {
        let mut shutdown = self.inner.shutdown.clone();
        let mut backoff = ACCEPT_BACKOFF_MIN;
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => {
                        backoff = ACCEPT_BACKOFF_MIN;
                        x
                    }
                    Err(e) => {
                        self.inner.tcp_stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                        if is_connection_error(&e) {
                            tracing::debug!(error = %e, "tcp accept error");
                            continue;
                        }
                        // EMFILE and friends: wait (longer each time in a row) instead of spinning.
                        tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "tcp accept failed, backing off");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            _ = shutdown.changed() => break,
                        }
                        backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let policy = self.inner.config.gate.current();
            let has_rules = self
                .inner
                .tls
                .as_ref()
                .is_some_and(|t| t.has_rules(peer.ip()));
            if !policy.knows_ip(peer.ip()) && !has_rules && policy.unknown() == UnknownPolicy::Drop
            {
                // No trunk on that address, and unknown sources get nothing: not even a connection.
                self.inner
                    .stats
                    .gate
                    .unknown
                    .fetch_add(1, Ordering::Relaxed);
                reset(&stream);
                continue;
            }
            let admitted = self
                .inner
                .admission
                .lock()
                .map_err(|_| Refusal::InboundFull)
                .and_then(|mut a| a.admit_inbound(peer.ip(), &self.inner.config.tcp));
            match admitted {
                Ok(slot) => {
                    let guard = self.guard(slot);
                    match &self.inner.tls {
                        None => {
                            self.adopt_tcp(stream, peer, guard);
                        }
                        Some(tls) => {
                            let pool = self.clone();
                            let tls = tls.clone();
                            tokio::spawn(async move {
                                pool.accept_tls(&tls, stream, peer, guard).await;
                            });
                        }
                    }
                }
                Err(why) => {
                    self.inner.tcp_stats.refused(why);
                    tracing::debug!(%peer, %why, "tcp connection refused");
                    reset(&stream);
                }
            }
        }
    }

    /// The server side of a TLS handshake on an accepted connection, within `message_timeout`
    /// (the slot stays held meanwhile and is given back if it fails).
    async fn accept_tls(
        &self,
        tls: &TlsSide,
        stream: TcpStream,
        peer: SocketAddr,
        slot: SlotGuard,
    ) {
        let _ = stream.set_nodelay(true);
        let sock = dup(&stream);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.material().server_config());
        let mut shutdown = self.inner.shutdown.clone();
        let label = tls.label(peer.ip());
        let done = tokio::select! {
            r = tokio::time::timeout(self.inner.config.tcp.message_timeout, acceptor.accept(stream)) => r,
            _ = shutdown.changed() => return,
        };
        match done {
            Ok(Ok(s)) => {
                tls.count(label, true, HandshakeResult::Ok);
                let info = Arc::new(PeerTls::of(s.get_ref().1));
                self.adopt_tls(tokio_rustls::TlsStream::Server(s), sock, peer, slot, info);
            }
            Ok(Err(e)) => {
                tls.count(label, true, HandshakeResult::Failed);
                tracing::debug!(%peer, error = %e, "tls handshake failed");
            }
            Err(_) => {
                tls.count(label, true, HandshakeResult::Timeout);
                tracing::debug!(%peer, "tls handshake not finished in time, closing");
                if let Some(s) = &sock {
                    let _ = s.set_linger(Some(Duration::ZERO));
                }
            }
        }
    }

    /// Registers a TCP connection and starts its reader and writer.
    fn adopt_tcp(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        slot: SlotGuard,
    ) -> mpsc::Sender<Bytes> {
        let _ = stream.set_nodelay(true);
        let (rd, wr) = stream.into_split();
        self.adopt(rd, wr, |w| reset(w.as_ref()), peer, slot, None)
    }

    /// Registers a TLS connection (handshake done) and starts its reader and writer.
    fn adopt_tls(
        &self,
        stream: tokio_rustls::TlsStream<TcpStream>,
        sock: Option<socket2::Socket>,
        peer: SocketAddr,
        slot: SlotGuard,
        info: Arc<PeerTls>,
    ) -> mpsc::Sender<Bytes> {
        let (rd, wr) = tokio::io::split(stream);
        let reset = move |_: &_| {
            if let Some(s) = &sock {
                let _ = s.set_linger(Some(Duration::ZERO));
            }
        };
        self.adopt(rd, wr, reset, peer, slot, Some(info))
    }

    /// Registers a connection and starts its reader and writer.
    fn adopt<R, W>(
        &self,
        rd: R,
        wr: W,
        reset: impl Fn(&W) + Send + 'static,
        peer: SocketAddr,
        slot: SlotGuard,
        tls: Option<Arc<PeerTls>>,
    ) -> mpsc::Sender<Bytes>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (wtx, wrx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let live = Arc::new(Live {
            id,
            peer,
            tls,
            alias: Mutex::new(None),
            closed: watch::Sender::new(false),
            slot,
        });
        if let Ok(mut c) = self.inner.conns.lock() {
            c.insert(
                peer,
                Conn {
                    id,
                    tx: wtx.clone(),
                    tls: live.tls.clone(),
                },
            );
        }
        tokio::spawn(writer(wr, reset, wrx, live.clone()));
        let pool = self.clone();
        let wtx2 = wtx.clone();
        tokio::spawn(async move {
            pool.reader(rd, &live, wtx2).await;
            // New sends open a new connection; the writer sends what is queued, then closes.
            live.forget();
        });
        wtx
    }

    async fn reader(&self, mut rd: impl AsyncRead + Unpin, live: &Live, wtx: mpsc::Sender<Bytes>) {
        let peer = live.peer;
        let limits = self.inner.config.tcp;
        let mut framer = StreamFramer::new(self.inner.config.limits);
        let mut shutdown = self.inner.shutdown.clone();
        let mut closed = live.closed.subscribe();
        let mut last_complete = Instant::now();
        let mut message_since: Option<Instant> = None;
        let mut budget = ConnBudget::default();
        loop {
            // Drain every complete frame before reading more.
            let mut completed = false;
            loop {
                match framer.next_frame() {
                    Ok(None) => break,
                    Ok(Some(Frame::Ping)) => {
                        completed = true;
                        let _ = wtx.try_send(Bytes::from_static(PONG));
                    }
                    Ok(Some(Frame::Message(msg))) => {
                        completed = true;
                        self.deliver(msg, live, &wtx, &mut budget);
                    }
                    Ok(Some(Frame::Fatal(msg))) => {
                        if let Some(d) = msg.defect() {
                            let rej = Rejection {
                                status: d.status(),
                                reason: "Framing Error",
                                extra: Vec::new(),
                            };
                            if let Some(answer) = rejection_response(
                                &msg,
                                &rej,
                                Some(&crate::ids::new_tag(0)),
                                Some(peer),
                            ) {
                                let _ = wtx.try_send(answer);
                            }
                        }
                        self.inner
                            .stats
                            .parse_errors
                            .fetch_add(1, Ordering::Relaxed);
                        self.inner
                            .tcp_stats
                            .closed_framing
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    Err(e) => {
                        self.inner
                            .stats
                            .parse_errors
                            .fetch_add(1, Ordering::Relaxed);
                        self.inner
                            .tcp_stats
                            .closed_framing
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, error = %e, "tcp framing error, closing");
                        return;
                    }
                }
            }
            // The clocks: a message begun must end within `message_timeout` of its first byte; with
            // none begun, the next must come within `idle_timeout` of the last complete one.
            let now = Instant::now();
            if completed {
                last_complete = now;
            }
            message_since = match (framer.in_message(), message_since) {
                (false, _) => None,
                (true, Some(since)) if !completed => Some(since),
                (true, _) => Some(now),
            };
            let idle_end = last_complete + limits.idle_timeout;
            let (deadline, waiting) = match message_since {
                Some(since) if since + limits.message_timeout < idle_end => {
                    (since + limits.message_timeout, Wait::Message)
                }
                _ => (idle_end, Wait::Idle),
            };
            let buf = framer.buffer();
            buf.reserve(8192);
            let read = tokio::select! {
                r = tokio::time::timeout_at(deadline, rd.read_buf(buf)) => r,
                _ = shutdown.changed() => {
                    live.close();
                    return;
                }
                _ = closed.wait_for(|c| *c) => return,
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) => return,
                Ok(Ok(_)) => {}
                Err(_) => {
                    let counter = match waiting {
                        Wait::Message => &self.inner.tcp_stats.closed_message_timeout,
                        Wait::Idle => &self.inner.tcp_stats.closed_idle,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, ?waiting, "tcp connection timed out, closing");
                    return;
                }
            }
        }
    }

    fn deliver(
        &self,
        msg: crate::SipMessage,
        live: &Live,
        wtx: &mpsc::Sender<Bytes>,
        budget: &mut ConnBudget,
    ) {
        let peer = live.peer;
        self.inner.stats.traffic.count_in(&msg);
        if msg.is_request() && !self.admit_request(&msg, peer, live.tls.as_deref(), wtx, budget) {
            return;
        }
        if msg.is_request() {
            self.alias(&msg, live, wtx);
        }
        match screen(Ok(msg), peer) {
            Screened::Pass(msg) => {
                let is_request = msg.is_request();
                let inbound = Inbound {
                    msg,
                    source: peer,
                    transport: self.inner.transport,
                    tls: live.tls.clone(),
                };
                if let Err(
                    mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i),
                ) = self.inner.tx.try_send(inbound)
                {
                    if is_request && super::is_new_call(&i.msg) {
                        self.inner.stats.overloaded.fetch_add(1, Ordering::Relaxed);
                        if let Some(a) =
                            overload_answer(&i.msg, peer, self.inner.config.retry_after_secs)
                        {
                            let _ = wtx.try_send(a);
                        }
                    } else {
                        self.inner
                            .stats
                            .dropped_responses
                            .fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Screened::Answer(a) => {
                self.inner.stats.rejected.fetch_add(1, Ordering::Relaxed);
                let _ = wtx.try_send(a);
            }
            Screened::Drop(why) => {
                self.inner
                    .stats
                    .parse_errors
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, why, "dropped tcp message");
            }
        }
    }

    /// The source gate for a request on a connection (the trunk check before anything is queued,
    /// as over UDP): an unknown source's request is dropped, or answered 403 on its own connection
    /// (over TCP an answer cannot be reflected to a third party); a known source's new request
    /// takes a token from its trunk's budget, kept per connection (connections per address are
    /// capped), and over it is answered 503 with Retry-After. Whether the request may be queued.
    ///
    /// Over TLS, an address with client-certificate rules ([`TlsSide::set_client_rules`]) is
    /// served only when the connection's certificate meets one (then without a budget: the
    /// address is in no source policy, see the user's trunks), else answered 403 on the
    /// connection whatever the unknown-source policy.
    fn admit_request(
        &self,
        msg: &crate::SipMessage,
        peer: SocketAddr,
        tls: Option<&PeerTls>,
        wtx: &mpsc::Sender<Bytes>,
        budget: &mut ConnBudget,
    ) -> bool {
        let gate = &self.inner.stats.gate;
        if let Some(side) = &self.inner.tls {
            match side.check_client_cached(peer.ip(), tls, &mut budget.1) {
                ClientCheck::NoRule => {}
                ClientCheck::Admitted => return true,
                ClientCheck::Refused => {
                    self.forbid(msg, peer, wtx);
                    return false;
                }
            }
        }
        let policy = self.inner.config.gate.current();
        match policy.classify(peer) {
            SourceClass::Unlimited => true,
            SourceClass::Unknown(how) => {
                gate.unknown.fetch_add(1, Ordering::Relaxed);
                if how == UnknownPolicy::Reject {
                    self.forbid(msg, peer, wtx);
                }
                false
            }
            SourceClass::Known(entry) => {
                if !super::starts_something_new(msg) {
                    return true;
                }
                let Some(b) = policy.budget(entry) else {
                    return true;
                };
                let now = self.inner.started.elapsed();
                let bucket = match &mut budget.0 {
                    Some((e, bucket)) if *e == entry => bucket,
                    slot => &mut slot.insert((entry, Bucket::new(b, now))).1,
                };
                if bucket.try_take(now) {
                    return true;
                }
                gate.rate_limited.fetch_add(1, Ordering::Relaxed);
                if let Some(a) = overload_answer(msg, peer, self.inner.config.retry_after_secs) {
                    let _ = wtx.try_send(a);
                }
                false
            }
        }
    }

    /// RFC 5923: a request whose top Via carries `alias` with a sent-by at the connection's own
    /// IP (another port) makes the connection serve requests to that address too, once per
    /// connection. Another IP is not taken (nothing here proves the peer owns it).
    fn alias(&self, msg: &crate::SipMessage, live: &Live, wtx: &mpsc::Sender<Bytes>) {
        let Some(Ok(via)) = msg.top_via() else {
            return;
        };
        if via.params.get("alias").is_none() {
            return;
        }
        let Some(ip) = std::str::from_utf8(via.host)
            .ok()
            .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
        else {
            return;
        };
        let default_port = if self.inner.transport == Transport::Tls {
            5061
        } else {
            5060
        };
        let at = SocketAddr::new(ip, via.port.unwrap_or(default_port));
        if ip != live.peer.ip() || at == live.peer {
            return;
        }
        let Ok(mut alias) = live.alias.lock() else {
            return;
        };
        if alias.is_some() {
            return;
        }
        *alias = Some(at);
        if let Ok(mut c) = self.inner.conns.lock() {
            c.insert(
                at,
                Conn {
                    id: live.id,
                    tx: wtx.clone(),
                    tls: live.tls.clone(),
                },
            );
        }
    }

    /// Answers 403 on the connection (not to an ACK, nor when no answer can be built).
    fn forbid(&self, msg: &crate::SipMessage, peer: SocketAddr, wtx: &mpsc::Sender<Bytes>) {
        if msg.method() == Some(crate::Method::Ack) || !crate::check::can_answer(msg) {
            return;
        }
        let tag = crate::ids::new_tag(0);
        let answer = response_to(msg, 403, b"Forbidden", Some(&tag), Some(peer)).build();
        self.inner.stats.traffic.count_out(&answer);
        if wtx.try_send(answer).is_ok() {
            self.inner
                .stats
                .gate
                .forbidden
                .fetch_add(1, Ordering::Relaxed);
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
    async fn connect(
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

/// A second handle on a connection's socket, to reset it once the stream is split behind TLS.
fn dup(stream: &TcpStream) -> Option<socket2::Socket> {
    use std::os::fd::AsFd;
    stream
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .map(socket2::Socket::from)
}

/// Writes what the connection's queue holds, one write at most `write_timeout` long. Ends when the
/// queue's senders are all gone (then closes gracefully), or at once when the connection is closed,
/// a write fails or takes too long (then resets it: a peer that does not read gets no more of the
/// node's memory or time).
async fn writer<W: AsyncWrite + Unpin>(
    mut wr: W,
    reset: impl Fn(&W),
    mut rx: mpsc::Receiver<Bytes>,
    live: Arc<Live>,
) {
    let limit = live.inner().config.tcp.write_timeout;
    let mut closed = live.closed.subscribe();
    let abort = loop {
        let bytes = tokio::select! {
            biased;
            _ = closed.wait_for(|c| *c) => break true,
            b = rx.recv() => match b {
                Some(b) => b,
                None => break false,
            },
        };
        let write = async {
            wr.write_all(&bytes).await?;
            wr.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break true,
            Err(_) => {
                live.inner()
                    .tcp_stats
                    .closed_write_timeout
                    .fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %live.peer, "tcp write timed out (the peer does not read), resetting");
                break true;
            }
        }
    };
    if abort {
        reset(&wr);
    } else {
        let _ = tokio::time::timeout(limit, wr.shutdown()).await;
    }
    live.forget();
    live.close();
}
