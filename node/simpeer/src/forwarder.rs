//! A UDP "Service" in front of the pool, like a Kubernetes Service: one address that spreads flows
//! over live backends (the nodes' SIP addresses).
//!
//! ```text
//!  peer ──► listen address ──(flow of that peer: its own upstream socket)──► backend (a node)
//!  peer ◄── listen address ◄──────────── anything the backend sends to that upstream socket
//! ```
//! - A flow is keyed by the peer's source address; a new flow takes the next live backend (round
//!   robin) and keeps it (sticky), like conntrack.
//! - Each datagram to a backend gets a header line `X-Medpool-Source: <peer ip:port>` right after its
//!   start line; every other byte is kept. Nodes started with `--trusted-forwarders <our IP>` then
//!   treat the peer as the source and usually answer it directly; whatever a node sends back to the
//!   flow's upstream socket is relayed to the peer from the listen address, unchanged.
//! - [`Forwarder::pin`] chooses a peer's backend ahead of time (session affinity).
//! - [`Forwarder::mark_dead`] re-pins the flows of a dead backend onto live ones;
//!   [`Forwarder::mark_alive`] lets new flows use it again. With probes on, it sends OPTIONS to every
//!   backend each interval, marks a backend dead after N intervals without any answer (a 403 proves
//!   life as well as a 200) and alive again on the next answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use medpool_sip::message::builder::MessageBuilder;
use medpool_sip::{HeaderName, Method};
use tokio::net::UdpSocket;
use tokio::task::{AbortHandle, JoinHandle};

use crate::error::{SimpeerError, bind_udp};

/// The header that names a datagram's real source.
pub const SOURCE_HEADER: &str = "X-Medpool-Source";

/// How to run a forwarder.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// The Service address peers send to.
    pub listen: SocketAddr,
    /// The nodes' SIP addresses.
    pub backends: Vec<SocketAddr>,
    /// Probe every backend with OPTIONS at this interval (`None`: only `mark_dead`/`mark_alive`).
    pub probe_interval: Option<Duration>,
    /// Intervals without an answer before a backend is marked dead.
    pub probe_misses: u32,
    /// Flows at most; datagrams of further new peers are dropped.
    pub max_flows: usize,
}

impl ForwarderConfig {
    /// A forwarder on `listen` over `backends`, without probes.
    pub fn new(listen: SocketAddr, backends: Vec<SocketAddr>) -> ForwarderConfig {
        ForwarderConfig {
            listen,
            backends,
            probe_interval: None,
            probe_misses: 3,
            max_flows: 4096,
        }
    }

    /// Turns OPTIONS probes on (every `interval`, dead after 3 misses).
    pub fn with_probes(mut self, interval: Duration) -> ForwarderConfig {
        self.probe_interval = Some(interval);
        self
    }
}

/// What the forwarder did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwarderCounts {
    /// Datagrams relayed from peers to backends.
    pub to_backends: u64,
    /// Datagrams relayed from backends back to peers.
    pub to_peers: u64,
    /// Datagrams dropped (no live backend, too many flows, no socket).
    pub dropped: u64,
    /// Flows moved off a dead backend.
    pub repinned: u64,
    /// Flows known.
    pub flows: usize,
    /// Datagrams dropped on purpose by [`Forwarder::impair`].
    pub lost: u64,
}

/// A running forwarder. Dropping it stops it.
#[derive(Debug)]
pub struct Forwarder {
    inner: Arc<Inner>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Inner {
    sock: Arc<UdpSocket>,
    local: SocketAddr,
    max_flows: usize,
    state: Mutex<State>,
    to_backends: AtomicU64,
    to_peers: AtomicU64,
    dropped: AtomicU64,
    repinned: AtomicU64,
    impairment: Impairment,
}

/// Loss and delay the forwarder applies to every datagram, both ways (a lossy, slow network on the
/// SIP path). Loss draws from a seeded generator, so a run replays.
#[derive(Debug, Default)]
struct Impairment {
    /// Drop probability in parts per million.
    loss_ppm: std::sync::atomic::AtomicU32,
    /// Added one-way delay in milliseconds.
    delay_ms: std::sync::atomic::AtomicU32,
    /// xorshift64* state.
    rng: Mutex<u64>,
    /// Datagrams dropped on purpose.
    lost: AtomicU64,
}

impl Impairment {
    /// Whether to drop this datagram; else the delay to add.
    fn decide(&self) -> Option<Duration> {
        let ppm = self.loss_ppm.load(Ordering::Relaxed);
        if ppm > 0 {
            let draw = {
                let mut x = lock(&self.rng);
                *x ^= *x >> 12;
                *x ^= *x << 25;
                *x ^= *x >> 27;
                x.wrapping_mul(0x2545_F491_4F6C_DD1D)
            };
            if draw % 1_000_000 < u64::from(ppm) {
                self.lost.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        Some(Duration::from_millis(u64::from(
            self.delay_ms.load(Ordering::Relaxed),
        )))
    }
}

/// Sends `bytes` to `dest` on `sock`, now or after `delay` (in its own task: later datagrams are not
/// held up, and a fixed delay keeps their order).
async fn send_impaired(
    sock: &Arc<UdpSocket>,
    bytes: &[u8],
    dest: SocketAddr,
    delay: Duration,
) -> std::io::Result<usize> {
    if delay.is_zero() {
        return sock.send_to(bytes, dest).await;
    }
    let sock = Arc::clone(sock);
    let len = bytes.len();
    let bytes = bytes.to_vec();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let _ = sock.send_to(&bytes, dest).await;
    });
    Ok(len)
}

#[derive(Debug, Default)]
struct State {
    backends: Vec<Backend>,
    next: usize,
    flows: HashMap<SocketAddr, Flow>,
    /// Backends chosen for peers ahead of their first datagram.
    pins: HashMap<SocketAddr, SocketAddr>,
}

#[derive(Debug)]
struct Backend {
    addr: SocketAddr,
    alive: bool,
    misses: u32,
}

#[derive(Debug)]
struct Flow {
    backend: SocketAddr,
    upstream: Arc<UdpSocket>,
    task: AbortHandle,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `datagram` with `X-Medpool-Source: source` appended as its last header line (a balancer appends:
/// medpool believes the last copy, so a copy the sender wrote itself cannot win). Datagrams without
/// a complete header section (keep-alive CRLFs, a truncated message, garbage) are returned unchanged.
pub fn with_source_header(datagram: &[u8], source: SocketAddr) -> Vec<u8> {
    let starts_with_text = datagram.first().is_some_and(|b| !b.is_ascii_whitespace());
    let Some(at) = end_of_last_header(datagram).filter(|_| starts_with_text) else {
        return datagram.to_vec();
    };
    let line = format!("{SOURCE_HEADER}: {source}\r\n");
    let mut out = Vec::with_capacity(datagram.len() + line.len());
    out.extend_from_slice(&datagram[..at]);
    out.extend_from_slice(line.as_bytes());
    out.extend_from_slice(&datagram[at..]);
    out
}

/// Where the empty line that ends the header section starts (just after the last header's line end).
fn end_of_last_header(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 2);
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| i + 1);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl State {
    /// The next live backend, round robin.
    fn pick(&mut self) -> Option<SocketAddr> {
        let n = self.backends.len();
        for _ in 0..n {
            let i = self.next % n;
            self.next = self.next.wrapping_add(1);
            if self.backends[i].alive {
                return Some(self.backends[i].addr);
            }
        }
        None
    }

    fn is_alive(&self, addr: SocketAddr) -> bool {
        self.backends.iter().any(|b| b.addr == addr && b.alive)
    }
}

impl Forwarder {
    /// Binds the Service address and starts relaying (and probing, when configured).
    pub async fn start(cfg: ForwarderConfig) -> Result<Forwarder, SimpeerError> {
        let sock = Arc::new(bind_udp(cfg.listen).await?);
        let local = sock.local_addr()?;
        let state = State {
            backends: cfg
                .backends
                .iter()
                .map(|&addr| Backend {
                    addr,
                    alive: true,
                    misses: 0,
                })
                .collect(),
            next: 0,
            flows: HashMap::new(),
            pins: HashMap::new(),
        };
        let inner = Arc::new(Inner {
            sock,
            local,
            max_flows: cfg.max_flows,
            state: Mutex::new(state),
            to_backends: AtomicU64::new(0),
            to_peers: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            repinned: AtomicU64::new(0),
            impairment: Impairment::default(),
        });
        let mut tasks = vec![tokio::spawn(Arc::clone(&inner).relay())];
        if let Some(interval) = cfg.probe_interval {
            let probe_sock = bind_udp(SocketAddr::new(local.ip(), 0)).await?;
            tasks.push(tokio::spawn(Arc::clone(&inner).probe(
                probe_sock,
                interval,
                cfg.probe_misses.max(1),
            )));
        }
        Ok(Forwarder { inner, tasks })
    }

    /// The Service address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Takes `backend` out of service and re-pins its flows onto live backends.
    pub fn mark_dead(&self, backend: SocketAddr) {
        self.inner.mark_dead(backend);
    }

    /// Puts `backend` back in service for new flows (existing flows stay where they are).
    pub fn mark_alive(&self, backend: SocketAddr) {
        self.inner.mark_alive(backend);
    }

    /// Sends `peer`'s flow to `backend` (session affinity chosen by the operator): at once when the
    /// flow exists, else from its first datagram on (if `backend` is then alive).
    pub fn pin(&self, peer: SocketAddr, backend: SocketAddr) {
        let mut st = lock(&self.inner.state);
        match st.flows.get_mut(&peer) {
            Some(f) => f.backend = backend,
            None => {
                st.pins.insert(peer, backend);
            }
        }
    }

    /// The backends in service.
    pub fn alive(&self) -> Vec<SocketAddr> {
        lock(&self.inner.state)
            .backends
            .iter()
            .filter(|b| b.alive)
            .map(|b| b.addr)
            .collect()
    }

    /// The backend a peer's flow is pinned to.
    pub fn backend_of(&self, peer: SocketAddr) -> Option<SocketAddr> {
        lock(&self.inner.state).flows.get(&peer).map(|f| f.backend)
    }

    /// Every flow: (peer, backend).
    pub fn flows(&self) -> Vec<(SocketAddr, SocketAddr)> {
        let mut v: Vec<_> = lock(&self.inner.state)
            .flows
            .iter()
            .map(|(p, f)| (*p, f.backend))
            .collect();
        v.sort();
        v
    }

    /// What it did so far.
    pub fn counts(&self) -> ForwarderCounts {
        let i = &self.inner;
        ForwarderCounts {
            to_backends: i.to_backends.load(Ordering::Relaxed),
            to_peers: i.to_peers.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
            repinned: i.repinned.load(Ordering::Relaxed),
            lost: i.impairment.lost.load(Ordering::Relaxed),
            flows: lock(&i.state).flows.len(),
        }
    }

    /// From now on drops each relayed datagram (both ways) with probability `loss` (0.0-1.0, drawn
    /// from `seed`) and delays the others by `delay`; `impair(0.0, Duration::ZERO, _)` heals. Probes
    /// are not impaired (the load balancer's health checks are not the path under test).
    pub fn impair(&self, loss: f64, delay: Duration, seed: u64) {
        let i = &self.inner.impairment;
        *lock(&i.rng) = seed | 1;
        i.loss_ppm
            .store((loss.clamp(0.0, 1.0) * 1e6) as u32, Ordering::Relaxed);
        i.delay_ms.store(
            u32::try_from(delay.as_millis()).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
    }

    /// Stops relaying and probing.
    pub fn stop(&self) {
        for t in &self.tasks {
            t.abort();
        }
        for (_, f) in lock(&self.inner.state).flows.drain() {
            f.task.abort();
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Inner {
    fn mark_dead(&self, backend: SocketAddr) {
        let mut st = lock(&self.state);
        let mut changed = false;
        for b in st.backends.iter_mut().filter(|b| b.addr == backend) {
            changed |= b.alive;
            b.alive = false;
        }
        let stranded: Vec<SocketAddr> = st
            .flows
            .iter()
            .filter(|(_, f)| f.backend == backend)
            .map(|(p, _)| *p)
            .collect();
        for peer in stranded {
            let Some(to) = st.pick() else { break };
            if let Some(f) = st.flows.get_mut(&peer) {
                f.backend = to;
                self.repinned.fetch_add(1, Ordering::Relaxed);
                tracing::info!(%peer, from = %backend, %to, "forwarder: flow re-pinned");
            }
        }
        if changed {
            tracing::info!(%backend, "forwarder: backend marked dead");
        }
    }

    fn mark_alive(&self, backend: SocketAddr) {
        let mut st = lock(&self.state);
        for b in st.backends.iter_mut().filter(|b| b.addr == backend) {
            if !b.alive {
                tracing::info!(%backend, "forwarder: backend marked alive");
            }
            b.alive = true;
            b.misses = 0;
        }
    }

    /// The flow of `peer` (created on its first datagram): its backend and upstream socket.
    async fn flow_for(self: &Arc<Self>, peer: SocketAddr) -> Option<(SocketAddr, Arc<UdpSocket>)> {
        {
            let st = lock(&self.state);
            if let Some(f) = st.flows.get(&peer) {
                return Some((f.backend, Arc::clone(&f.upstream)));
            }
            if st.flows.len() >= self.max_flows {
                return None;
            }
        }
        let upstream = Arc::new(
            UdpSocket::bind(SocketAddr::new(self.local.ip(), 0))
                .await
                .ok()?,
        );
        let mut st = lock(&self.state);
        let backend = match st.pins.remove(&peer) {
            Some(b) if st.is_alive(b) => b,
            _ => st.pick()?,
        };
        let back = {
            let inner = Arc::clone(self);
            let upstream = Arc::clone(&upstream);
            tokio::spawn(async move { inner.relay_back(upstream, peer).await })
        };
        st.flows.insert(
            peer,
            Flow {
                backend,
                upstream: Arc::clone(&upstream),
                task: back.abort_handle(),
            },
        );
        Some((backend, upstream))
    }

    /// Peers → backends.
    async fn relay(self: Arc<Self>) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, peer)) = self.sock.recv_from(&mut buf).await else {
                continue;
            };
            let Some((backend, upstream)) = self.flow_for(peer).await else {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let Some(delay) = self.impairment.decide() else {
                continue;
            };
            let out = with_source_header(&buf[..n], peer);
            match send_impaired(&upstream, &out, backend, delay).await {
                Ok(_) => self.to_backends.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    /// Backend → the peer of one flow.
    async fn relay_back(self: Arc<Self>, upstream: Arc<UdpSocket>, peer: SocketAddr) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, _from)) = upstream.recv_from(&mut buf).await else {
                continue;
            };
            let Some(delay) = self.impairment.decide() else {
                continue;
            };
            match send_impaired(&self.sock, &buf[..n], peer, delay).await {
                Ok(_) => self.to_peers.fetch_add(1, Ordering::Relaxed),
                Err(_) => self.dropped.fetch_add(1, Ordering::Relaxed),
            };
        }
    }

    /// OPTIONS to every backend each interval; dead after `misses` silent intervals.
    async fn probe(self: Arc<Self>, sock: UdpSocket, interval: Duration, misses: u32) {
        let local = sock.local_addr().unwrap_or(self.local);
        let mut buf = vec![0u8; 65_535];
        let mut seq: u32 = 0;
        loop {
            seq = seq.wrapping_add(1) % (1 << 30);
            let backends: Vec<SocketAddr> =
                lock(&self.state).backends.iter().map(|b| b.addr).collect();
            for (i, b) in backends.iter().enumerate() {
                let _ = sock.send_to(&probe_request(local, *b, seq, i), *b).await;
            }
            let mut answered = Vec::new();
            let until = tokio::time::Instant::now() + interval;
            while let Ok(Ok((_, from))) =
                tokio::time::timeout_at(until, sock.recv_from(&mut buf)).await
            {
                answered.push(from);
            }
            for b in backends {
                if answered.contains(&b) {
                    self.mark_alive(b);
                    continue;
                }
                let dead = {
                    let mut st = lock(&self.state);
                    let alive = st.is_alive(b);
                    st.backends.iter_mut().filter(|x| x.addr == b).any(|x| {
                        x.misses = x.misses.saturating_add(1);
                        x.misses >= misses
                    }) && alive
                };
                if dead {
                    self.mark_dead(b);
                }
            }
        }
    }
}

fn probe_request(local: SocketAddr, backend: SocketAddr, seq: u32, i: usize) -> Bytes {
    let mut b =
        MessageBuilder::request_method(Method::Options, format!("sip:{backend}").as_bytes());
    b.header_fmt(
        HeaderName::Via,
        format_args!("SIP/2.0/UDP {local};branch=z9hG4bKfwd{seq}x{i};rport"),
    )
    .header(HeaderName::MaxForwards, b"70")
    .header_fmt(
        HeaderName::From,
        format_args!("<sip:forwarder@{local}>;tag=fwd{seq}"),
    )
    .header_fmt(HeaderName::To, format_args!("<sip:{backend}>"))
    .header_fmt(
        HeaderName::CallId,
        format_args!("fwdprobe-{seq}-{i}@{local}"),
    )
    .header_fmt(HeaderName::CSeq, format_args!("{seq} OPTIONS"));
    b.build()
}
