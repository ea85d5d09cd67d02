//! The relay data path: sessions of two legs, each with a local RTP and RTCP socket from the
//! node's port range, forwarding between the legs' peers on tokio tasks.
//!
//! ```text
//!   Relay (runtime)      open(plan) → Session: leases two port pairs, binds four sockets,
//!     │                  spawns the session's task; counts sessions; bounded by the range
//!     ├─ task            one per session: readable → drain in batches → Forwarder → try_send_to
//!     │    ├─ mmsg       sockets registered for reads only; a batch of datagrams per receive
//!     │    │             (recvmmsg); the crate's only unsafe
//!     │    ├─ forward    pure per-datagram decision: latching, RTP/RTCP demux, PT routes, counters
//!     │    └─ secure     per-leg SRTP contexts from the plan's keys: unprotect on the way in,
//!     │                  protect (renumbered across source jumps) on the way out
//!     └─ ports           port range and pair allocator (bounded, released pairs reused last)
//! ```
//! Packets never pass through an actor or a channel: the socket's readiness wakes the session's
//! own task, which forwards in place. The [`Session`] handle updates the plan (a watch channel)
//! and reads counters (relaxed atomics); dropping or closing it ends the task and releases the
//! ports.
//!
//! Sends are one `sendto` per packet: consecutive packets leave from different sockets (each
//! session's), which `sendmmsg` cannot batch.

pub mod forward;
mod mmsg;
pub mod ports;
pub mod secure;
mod task;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use forward::{Leg, LegPlan, Port, Route, SessionPlan};
pub use mmsg::MAX_DATAGRAM;
pub use ports::{PortAllocator, PortError, PortPair, PortRange};
pub use secure::LegKeys;

use crate::stats::DirectionSnapshot;
use mmsg::RelaySocket;
use task::{LegSockets, Running, Shared};

/// Times a bind of a leased pair may fail with "address in use" (another process holds the
/// port) before opening a session gives up.
const BIND_ATTEMPTS: usize = 8;

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No free port pair (the caller refuses the call, e.g. with 503).
    #[error("media ports exhausted")]
    PortsExhausted,
    /// A socket could not be bound.
    #[error("binding media port {port}: {source}")]
    Bind {
        /// The port.
        port: u16,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Where the relay listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayConfig {
    /// The local address media sockets bind to.
    pub listen: IpAddr,
    /// The port range.
    pub ports: PortRange,
}

/// The node's relay runtime: opens sessions. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Relay {
    listen: IpAddr,
    ports: PortAllocator,
    sessions: Arc<watch::Sender<usize>>,
    book: Arc<Book>,
}

/// What every session relayed since the runtime started (what metrics export): the sum over
/// both directions of all sessions, ended ones included.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayTotals {
    /// RTP packets received from the peers.
    pub packets: u64,
    /// RTP bytes received from the peers.
    pub bytes: u64,
    /// RTCP packets received.
    pub rtcp_packets: u64,
    /// Packets lost on the way to the node (sequence gaps).
    pub lost: u64,
    /// Packets from a source other than the latched one (dropped).
    pub stray: u64,
    /// Packets whose G.711 payload was translated.
    pub translated: u64,
    /// Times a leg latched to a source.
    pub latches: u64,
    /// Packets that could not be sent on.
    pub send_failed: u64,
    /// SRTP/SRTCP packets that failed authentication (dropped).
    pub srtp_auth_failed: u64,
    /// SRTP/SRTCP packets replayed or too old (dropped).
    pub srtp_replayed: u64,
}

impl RelayTotals {
    fn add(&mut self, c: &DirectionSnapshot) {
        self.packets += c.packets;
        self.bytes += c.bytes;
        self.rtcp_packets += c.rtcp_packets;
        self.lost += c.lost;
        self.stray += c.stray;
        self.translated += c.translated;
        self.latches += c.latches;
        self.send_failed += c.send_failed;
        self.srtp_auth_failed += c.srtp_auth_failed;
        self.srtp_replayed += c.srtp_replayed;
    }

    fn add_session(&mut self, s: &Shared) {
        self.add(&s.counters.from_a.snapshot());
        self.add(&s.counters.from_b.snapshot());
    }
}

/// The sessions' counters, for [`Relay::totals`]: those of running sessions are read where
/// they are; an ended session's are added to `ended` when the book is next swept (at an open or
/// a read), so the book holds at most the running sessions plus those ended since.
#[derive(Debug, Default)]
struct Book {
    ended: std::sync::Mutex<(RelayTotals, Vec<Arc<Shared>>)>,
}

impl Book {
    /// Moves ended sessions (nobody but the book holds their counters) into the totals.
    fn sweep(book: &mut (RelayTotals, Vec<Arc<Shared>>)) {
        let (totals, live) = book;
        live.retain(|s| {
            if Arc::strong_count(s) == 1 {
                totals.add_session(s);
                false
            } else {
                true
            }
        });
    }
}

/// A leg's local media addresses (what the rewritten SDP advertises, with the advertised IP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalLeg {
    /// The RTP socket's address.
    pub rtp: SocketAddr,
    /// The RTCP socket's address.
    pub rtcp: SocketAddr,
}

impl Relay {
    /// A relay over `config`'s range; nothing is bound until a session opens.
    pub fn new(config: RelayConfig) -> Self {
        Relay {
            listen: config.listen,
            ports: PortAllocator::new(config.ports),
            sessions: Arc::new(watch::Sender::new(0)),
            book: Arc::new(Book::default()),
        }
    }

    /// What every session relayed since the runtime started.
    pub fn totals(&self) -> RelayTotals {
        let mut book = self.book.ended.lock().unwrap_or_else(|p| p.into_inner());
        Book::sweep(&mut book);
        let mut t = book.0;
        for s in &book.1 {
            t.add_session(s);
        }
        t
    }

    /// Sessions running now.
    pub fn sessions(&self) -> usize {
        *self.sessions.borrow()
    }

    /// Waits until no session is running (every handle closed or dropped, every task ended and
    /// its ports released).
    pub async fn wait_idle(&self) {
        let mut rx = self.sessions.subscribe();
        // The sender lives in `self`, so the channel cannot close while this waits.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// The port allocator (ports in use and free).
    pub fn ports(&self) -> &PortAllocator {
        &self.ports
    }

    fn bind_leg(&self) -> Result<LegSockets, RelayError> {
        let mut last = None;
        for _ in 0..BIND_ATTEMPTS {
            let lease = self.ports.lease().map_err(|_| RelayError::PortsExhausted)?;
            match bind_pair(self.listen, lease.pair()) {
                Ok((rtp, rtcp)) => {
                    return Ok(LegSockets {
                        rtp,
                        rtcp,
                        _lease: lease,
                    });
                }
                // Another process holds the port: the lease goes back (to the end of the queue)
                // and the next pair is tried.
                Err((port, source)) if source.kind() == std::io::ErrorKind::AddrInUse => {
                    last = Some(RelayError::Bind { port, source });
                }
                Err((port, source)) => return Err(RelayError::Bind { port, source }),
            }
        }
        Err(last.unwrap_or(RelayError::PortsExhausted))
    }

    /// Opens a session: two legs with their own port pairs, relaying per `plan`. Must be called
    /// inside a tokio runtime (it spawns the session's task).
    pub async fn open(&self, plan: SessionPlan) -> Result<Session, RelayError> {
        self.open_now(plan)
    }

    /// [`Relay::open`] for callers that cannot await (an actor's synchronous handler): binding a
    /// UDP socket never blocks, so the session opens at once. Must be called inside a tokio
    /// runtime (it registers the sockets and spawns the session's task).
    pub fn open_now(&self, plan: SessionPlan) -> Result<Session, RelayError> {
        let a = self.bind_leg()?;
        let b = self.bind_leg()?;
        let local = |l: &LegSockets| -> Result<LocalLeg, RelayError> {
            let port = l._lease.pair().rtp;
            let map = |e| RelayError::Bind { port, source: e };
            Ok(LocalLeg {
                rtp: l.rtp.get_ref().local_addr().map_err(map)?,
                rtcp: l.rtcp.get_ref().local_addr().map_err(map)?,
            })
        };
        let local = [local(&a)?, local(&b)?];
        let (tx, rx) = watch::channel(plan);
        let shared = Arc::new(Shared::default());
        {
            let mut book = self.book.ended.lock().unwrap_or_else(|p| p.into_inner());
            // Swept when it holds twice the running sessions: amortised O(1) per open.
            if book.1.len() >= 2 * self.sessions() + 64 {
                Book::sweep(&mut book);
            }
            book.1.push(shared.clone());
        }
        let start = Instant::now();
        let running = Running::new(self.sessions.clone());
        let task = tokio::spawn(task::run([a, b], rx, shared.clone(), start, running));
        Ok(Session {
            plan: tx,
            shared,
            local,
            start,
            task,
        })
    }
}

fn bind_one(ip: IpAddr, port: u16) -> Result<RelaySocket, (u16, std::io::Error)> {
    let bind = || mmsg::register_readable(std::net::UdpSocket::bind((ip, port))?);
    bind().map_err(|e| (port, e))
}

fn bind_pair(
    ip: IpAddr,
    pair: PortPair,
) -> Result<(RelaySocket, RelaySocket), (u16, std::io::Error)> {
    Ok((bind_one(ip, pair.rtp)?, bind_one(ip, pair.rtcp())?))
}

/// A running relay session. Dropping it ends the session (the task stops and the ports are
/// released); [`Session::close`] also waits for that.
#[derive(Debug)]
pub struct Session {
    plan: watch::Sender<SessionPlan>,
    shared: Arc<Shared>,
    local: [LocalLeg; 2],
    start: Instant,
    task: JoinHandle<()>,
}

impl Session {
    /// A leg's local addresses.
    pub fn local(&self, leg: Leg) -> LocalLeg {
        self.local[leg.index()]
    }

    /// Replaces the plan (new peer addresses, payload routes). A leg whose peer changed latches
    /// again on its next packet.
    pub fn update(&self, plan: SessionPlan) {
        self.plan.send_replace(plan);
    }

    /// The current plan.
    pub fn plan(&self) -> SessionPlan {
        self.plan.borrow().clone()
    }

    /// Counters of the packets arriving on `leg`.
    pub fn counters(&self, leg: Leg) -> DirectionSnapshot {
        match leg {
            Leg::A => self.shared.counters.from_a.snapshot(),
            Leg::B => self.shared.counters.from_b.snapshot(),
        }
    }

    /// The sources latched on `leg`'s (RTP, RTCP) ports.
    pub fn latched(&self, leg: Leg) -> [Option<SocketAddr>; 2] {
        let l = self
            .shared
            .latched
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        l[leg.index()]
    }

    /// How long ago (ms) the last packet arrived in either direction; `None` before the first.
    /// With [`Session::elapsed_ms`] this is what a media timeout checks.
    pub fn idle_ms(&self) -> Option<u64> {
        let now = self.elapsed_ms();
        [Leg::A, Leg::B]
            .into_iter()
            .filter_map(|l| self.counters(l).last_packet_age_ms(now))
            .min()
    }

    /// Milliseconds since the session opened (the clock of `last_packet_ms`).
    pub fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Ends the session and waits until its task has stopped and its ports are free again.
    pub async fn close(self) {
        let Session { plan, task, .. } = self;
        drop(plan);
        if let Err(e) = task.await {
            tracing::debug!(error = %e, "media session task");
        }
    }
}
