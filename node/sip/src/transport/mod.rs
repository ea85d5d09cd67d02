//! SIP transports: a UDP socket, a TCP listener and (when the node has a certificate) a TLS
//! listener per node, with one handle to send on any of them.
//!
//! Every received datagram or stream frame goes through the same front door ([`screen`]): parse →
//! [`crate::check`] → a malformed request is answered here (400/505/513/416/420/415/406/501) or dropped
//! when no answer can be built, a malformed response is dropped, and everything else is handed to the
//! user through a **bounded** channel — split into lanes by Call-ID ([`lanes`]) when the user takes
//! messages on several tasks. When that channel is full a request is answered 503 with
//! Retry-After (never queued without limit) and a response is dropped (its sender retransmits).
//! One bad peer never stops a listener: errors are logged at debug and the loop goes on.
//!
//! Over UDP the source is checked first, before the datagram is parsed ([`gate`]): an unknown source
//! is dropped unparsed (or, under `Reject`, answered 403 within a small global budget); a known
//! source's requests that start something new draw from that source's token bucket; answers to
//! malformed requests are rate limited; and new requests may not fill the last
//! [`reserved_slots`] of the queue, which stay for responses and in-dialog requests.
//!
//! TLS ([`tls`]) is the third [`Transport`]: a second connection table of [`tcp::TcpPool`] with
//! the same framing, caps and timeouts, and a handshake first. A message that came over TLS carries
//! what the handshake learnt of its peer ([`Inbound::tls`]), for the user to decide whose it is.

pub mod gate;
pub mod lanes;
pub mod tcp;
pub mod tls;
pub mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::check::{Rejection, can_answer, check_request, check_response, rejection_response};
use crate::message::Via;
use crate::message::builder::response_to;
use crate::{HeaderName, Method, SipMessage};

/// A transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Transport {
    /// UDP (unreliable: transactions retransmit).
    Udp,
    /// TCP (reliable).
    Tcp,
    /// TLS over TCP (reliable; RFC 3261 §26).
    Tls,
}

impl Transport {
    /// Whether the transport is reliable (no retransmissions, RFC 3261 §17).
    pub fn is_reliable(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Tls)
    }
    /// The Via transport token.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
    /// The lower-case name (`udp`, `tcp`, `tls`), as in a URI's `transport` parameter.
    pub fn as_lower(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
    /// The port a peer listens on when none is given: 5061 for TLS, else 5060.
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 5061,
            Transport::Udp | Transport::Tcp => 5060,
        }
    }
}

/// A message that passed the front door, with where it came from.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The message.
    pub msg: SipMessage,
    /// The peer's address (source IP and port).
    pub source: SocketAddr,
    /// The transport it arrived on.
    pub transport: Transport,
    /// Over TLS: the protocol version and the certificate the peer presented (`None` otherwise).
    pub tls: Option<Arc<tls::PeerTls>>,
}

/// Counters of what the front door did, for metrics.
#[derive(Debug, Default)]
pub struct FrontDoorStats {
    /// Messages that failed to parse (dropped).
    pub parse_errors: std::sync::atomic::AtomicU64,
    /// Requests answered by the front door itself (4xx/5xx).
    pub rejected: std::sync::atomic::AtomicU64,
    /// Requests answered 503 because the user's queue was full.
    pub overloaded: std::sync::atomic::AtomicU64,
    /// Responses dropped (malformed or queue full).
    pub dropped_responses: std::sync::atomic::AtomicU64,
    /// Messages in and out, by method and status class.
    pub traffic: SipTraffic,
    /// Source screening (see [`gate`]).
    pub gate: GateStats,
}

/// Counters of the source gate.
#[derive(Debug, Default)]
pub struct GateStats {
    /// Datagrams from unknown sources (never queued; most never parsed).
    pub unknown: std::sync::atomic::AtomicU64,
    /// 403s sent to unknown sources (within [`gate::FORBIDDEN_BUDGET`]).
    pub forbidden: std::sync::atomic::AtomicU64,
    /// New requests over their source's budget (answered 503 or dropped).
    pub rate_limited: std::sync::atomic::AtomicU64,
    /// New requests refused because only the queue's reserve was left.
    pub reserve_refused: std::sync::atomic::AtomicU64,
    /// Answers (400, 503, ...) not sent because their global budget was used up.
    pub unanswered: std::sync::atomic::AtomicU64,
    /// Datagrams from known sources over their budget dropped unparsed
    /// ([`gate::OVER_BUDGET_PARSE`]).
    pub unparsed: std::sync::atomic::AtomicU64,
}

/// Every method the codec classifies, in [`Method`] order (the index of the counters).
pub const METHODS: [Method; 15] = [
    Method::Invite,
    Method::Ack,
    Method::Bye,
    Method::Cancel,
    Method::Options,
    Method::Register,
    Method::Prack,
    Method::Update,
    Method::Info,
    Method::Refer,
    Method::Notify,
    Method::Subscribe,
    Method::Message,
    Method::Publish,
    Method::Other,
];

/// Counters of SIP messages by direction, method (requests) and status class (responses).
#[derive(Debug, Default)]
pub struct SipTraffic {
    /// Requests received, by [`METHODS`] index.
    pub requests_in: [std::sync::atomic::AtomicU64; 15],
    /// Responses received, by class (1xx = 0 ... 6xx = 5).
    pub responses_in: [std::sync::atomic::AtomicU64; 6],
    /// Requests sent.
    pub requests_out: [std::sync::atomic::AtomicU64; 15],
    /// Responses sent.
    pub responses_out: [std::sync::atomic::AtomicU64; 6],
}

fn method_index(m: Method) -> usize {
    METHODS.iter().position(|x| *x == m).unwrap_or(14)
}

impl SipTraffic {
    /// Counts a parsed incoming message.
    pub fn count_in(&self, msg: &SipMessage) {
        use std::sync::atomic::Ordering::Relaxed;
        match (msg.method(), msg.status()) {
            (Some(m), _) => self.requests_in[method_index(m)].fetch_add(1, Relaxed),
            (_, Some(s)) => {
                self.responses_in[usize::from(s / 100).clamp(1, 6) - 1].fetch_add(1, Relaxed)
            }
            _ => 0,
        };
    }
    /// Counts an outgoing message from its first bytes (no parse).
    pub fn count_out(&self, bytes: &[u8]) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(rest) = bytes.strip_prefix(b"SIP/2.0 ") {
            let class = rest
                .first()
                .map_or(1, |d| usize::from(d.saturating_sub(b'0')).clamp(1, 6));
            self.responses_out[class - 1].fetch_add(1, Relaxed);
        } else {
            let end = memchr::memchr(b' ', bytes).unwrap_or(0);
            self.requests_out[method_index(Method::classify(&bytes[..end]))].fetch_add(1, Relaxed);
        }
    }
}

/// What to do with one received message.
#[derive(Debug)]
pub enum Screened {
    /// Hand it to the user.
    Pass(SipMessage),
    /// Send this answer back to the source; the request goes no further.
    Answer(Bytes),
    /// Drop it silently.
    Drop(&'static str),
}

/// The front door: parse result + checks → pass, answer, or drop.
pub fn screen(
    parsed: Result<SipMessage, crate::message::ParseError>,
    source: SocketAddr,
) -> Screened {
    let mut msg = match parsed {
        Ok(m) => m,
        Err(_) => return Screened::Drop("unparseable"),
    };
    if !msg.is_request() {
        return match check_response(&msg) {
            Ok(()) => {
                msg.mark_checked();
                Screened::Pass(msg)
            }
            Err(_) => Screened::Drop("malformed response"),
        };
    }
    match check_request(&msg) {
        Ok(()) => {
            msg.mark_checked();
            Screened::Pass(msg)
        }
        Err(rej) => answer_or_drop(&msg, &rej, source),
    }
}

fn answer_or_drop(msg: &SipMessage, rej: &Rejection, source: SocketAddr) -> Screened {
    let tag = crate::ids::new_tag(0);
    match rejection_response(msg, rej, Some(&tag), Some(source)) {
        Some(b) => Screened::Answer(b),
        None => Screened::Drop("malformed request, no answer possible"),
    }
}

/// Whether a request starts a new call (an INVITE outside a dialog): the only kind refused with 503
/// under overload; anything in a dialog is dropped and retransmitted instead.
pub fn is_new_call(msg: &SipMessage) -> bool {
    msg.method() == Some(Method::Invite) && msg.to_tag().is_none()
}

/// Whether a request starts something new (a transaction outside any dialog: INVITE, OPTIONS,
/// REGISTER, ... without a To tag), so it draws from its source's budget. Responses, ACK, CANCEL
/// and requests in a dialog never do.
pub fn starts_something_new(msg: &SipMessage) -> bool {
    msg.is_request()
        && !matches!(msg.method(), Some(Method::Ack | Method::Cancel))
        && msg.to_tag().is_none()
}

/// The slots at the end of a queue of `capacity` that new requests may not take: they stay for
/// responses and in-dialog requests, so a burst of new requests never starves calls in progress.
pub fn reserved_slots(capacity: usize) -> usize {
    capacity / 4
}

/// The 503 a request gets when the node cannot take it now (RFC 3261 §21.5.4).
pub fn overload_answer(
    msg: &SipMessage,
    source: SocketAddr,
    retry_after_secs: u32,
) -> Option<Bytes> {
    if !can_answer(msg) || msg.method() == Some(Method::Ack) {
        return None;
    }
    let tag = crate::ids::new_tag(0);
    let mut b = response_to(msg, 503, b"Service Unavailable", Some(&tag), Some(source));
    b.header_fmt(HeaderName::RetryAfter, format_args!("{retry_after_secs}"));
    Some(b.build())
}

/// Where a response to a request goes over UDP (RFC 3261 §18.2.2 with RFC 3581): the source address,
/// at the source port when the request asked for `rport`, else at the sent-by port (default 5060).
pub fn response_target(top_via: &Via<'_>, source: SocketAddr) -> SocketAddr {
    match top_via.rport() {
        Some(_) => source,
        None => SocketAddr::new(source.ip(), top_via.port.unwrap_or(5060)),
    }
}

/// A handle to send on the node's transports. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Transports {
    pub(crate) udp: Arc<tokio::net::UdpSocket>,
    pub(crate) tcp: tcp::TcpPool,
    pub(crate) tls: Option<tcp::TcpPool>,
    pub(crate) tls_local: Option<SocketAddr>,
    pub(crate) stats: Arc<FrontDoorStats>,
}

impl Transports {
    /// Front-door and traffic counters.
    pub fn stats(&self) -> &FrontDoorStats {
        &self.stats
    }

    /// The TCP connections: their counts, what was refused or closed and why
    /// ([`tcp::TcpPool::stats`]), and the hook for listed peers ([`tcp::TcpPool::set_listed_ips`]).
    pub fn tcp(&self) -> &tcp::TcpPool {
        &self.tcp
    }

    /// The TLS connections (`None` when the node has no certificate): as [`Transports::tcp`], and
    /// the TLS side ([`tcp::TcpPool::tls`]) where peers' verification is set and handshakes counted.
    pub fn tls(&self) -> Option<&tcp::TcpPool> {
        self.tls.as_ref()
    }

    /// The local TLS listen address, when there is a TLS listener.
    pub fn tls_local(&self) -> Option<SocketAddr> {
        self.tls_local
    }

    fn tls_pool(&self) -> Result<&tcp::TcpPool, TransportError> {
        self.tls.as_ref().ok_or(TransportError::NoTls)
    }

    /// The local UDP address.
    pub fn udp_local(&self) -> SocketAddr {
        self.udp
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Sends bytes to `dest`. UDP sends never wait (a full socket buffer drops the datagram, as the
    /// network would); TCP reuses the connection to `dest` or opens one (waiting for the connect; while
    /// another send is opening it, the bytes wait in its queue: see [`tcp::TcpPool::send`]).
    pub async fn send(
        &self,
        transport: Transport,
        dest: SocketAddr,
        bytes: Bytes,
    ) -> Result<(), TransportError> {
        self.stats.traffic.count_out(&bytes);
        match transport {
            Transport::Udp => match self.udp.try_send_to(&bytes, dest) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(TransportError::Busy),
                Err(e) => Err(TransportError::Io(e.kind())),
            },
            Transport::Tcp => self.tcp.send(dest, bytes).await,
            Transport::Tls => self.tls_pool()?.send(dest, bytes).await,
        }
    }

    /// Sends without waiting (for callers that cannot await, such as the transaction layer): UDP as
    /// [`Transports::send`]; TCP on an open connection, or by a background connect when there is none.
    pub fn send_now(
        &self,
        transport: Transport,
        dest: SocketAddr,
        bytes: Bytes,
    ) -> Result<(), TransportError> {
        self.stats.traffic.count_out(&bytes);
        match transport {
            Transport::Udp => match self.udp.try_send_to(&bytes, dest) {
                Ok(_) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(TransportError::Busy),
                Err(e) => Err(TransportError::Io(e.kind())),
            },
            Transport::Tcp => self.tcp.send_now(dest, bytes),
            Transport::Tls => self.tls_pool()?.send_now(dest, bytes),
        }
    }

    /// Sends a response to a request that arrived from `source` on `transport` (RFC 3261 §18.2.2): over
    /// TCP on the connection it came on — when that is gone, a new one is opened in the background to
    /// the source address at the Via's sent-by port, so the caller never waits on a connect (a peer
    /// that drops SYNs would hold it for the connect timeout) — and over UDP to [`response_target`].
    pub async fn send_response(
        &self,
        request: &Inbound,
        bytes: Bytes,
    ) -> Result<(), TransportError> {
        match request.transport {
            Transport::Tcp | Transport::Tls => {
                self.stats.traffic.count_out(&bytes);
                let pool = match request.transport {
                    Transport::Tls => self.tls_pool()?,
                    _ => &self.tcp,
                };
                let sent_by = match request.msg.top_via() {
                    Some(Ok(v)) => SocketAddr::new(
                        request.source.ip(),
                        v.port.unwrap_or(request.transport.default_port()),
                    ),
                    _ => request.source,
                };
                pool.send_on(request.source, sent_by, bytes)
            }
            Transport::Udp => {
                let dest = match request.msg.top_via() {
                    Some(Ok(v)) => response_target(&v, request.source),
                    _ => request.source,
                };
                self.send(request.transport, dest, bytes).await
            }
        }
    }
}

/// A send that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// An I/O error.
    #[error("I/O error: {0}")]
    Io(std::io::ErrorKind),
    /// The socket or connection queue is full.
    #[error("transport busy")]
    Busy,
    /// A TCP connection could not be opened in time.
    #[error("connect timed out")]
    ConnectTimeout,
    /// Too many open connections.
    #[error("connection limit reached")]
    TooManyConnections,
    /// A TLS connection could not be made: no client configuration for the peer, or the
    /// handshake failed (the peer's certificate did not verify, ...).
    #[error("TLS handshake failed")]
    Tls,
    /// TLS asked for, but the node has no TLS material.
    #[error("TLS is not configured")]
    NoTls,
}

/// Settings of the transports.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// UDP and TCP listen address.
    pub listen: SocketAddr,
    /// Parser limits.
    pub limits: crate::Limits,
    /// Capacity of the queue towards the user.
    pub queue: usize,
    /// Retry-After seconds in the 503 sent when the queue is full.
    pub retry_after_secs: u32,
    /// TCP connection caps (per address, inbound, outbound) and timeouts (message, idle, write,
    /// connect): see [`tcp::TcpLimits`].
    pub tcp: tcp::TcpLimits,
    /// The sources served and their budgets, set by the user (default: everyone, no limit).
    pub gate: Arc<gate::SourceGate>,
    /// UDP receive loops, each on its own socket sharing the address (`SO_REUSEPORT`; see
    /// [`udp`]): 1 (the default) to [`udp::MAX_RECEIVERS`].
    pub udp_receivers: usize,
    /// Inbound lanes, one per consumer task ([`lanes`]): 1 (the default) to [`lanes::MAX_LANES`];
    /// `queue` is split between them.
    pub lanes: usize,
    /// SIP over TLS: the node's material and the TLS listen address (`None`: no TLS at all). The
    /// TLS table has its own connection caps, equal to TCP's.
    pub tls: Option<TlsListen>,
}

/// The TLS listener's settings.
#[derive(Debug, Clone)]
pub struct TlsListen {
    /// Where to accept TLS connections (port 0: any; no listener at all when `None`, for a node
    /// that only makes TLS connections, like a test caller).
    pub listen: Option<SocketAddr>,
    /// The certificate, key and default CA.
    pub material: Arc<tls::TlsMaterial>,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            limits: crate::Limits::default(),
            queue: 4096,
            retry_after_secs: 5,
            tcp: tcp::TcpLimits::default(),
            gate: Arc::new(gate::SourceGate::default()),
            tls: None,
            udp_receivers: 1,
            lanes: 1,
        }
    }
}

/// The running transports: a send handle, the inbound queue, and the listener tasks.
pub struct Running {
    /// Send handle.
    pub transports: Transports,
    /// Messages that passed the front door: lane 0 (all of them with one lane).
    pub inbound: mpsc::Receiver<Inbound>,
    /// Lanes 1 and up (`TransportConfig::lanes` > 1): each takes the calls [`lanes::lane_of`] names.
    pub other_lanes: Vec<mpsc::Receiver<Inbound>>,
    /// Front-door counters.
    pub stats: Arc<FrontDoorStats>,
    /// The listener tasks (they end when the shutdown signal fires).
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Binds UDP and TCP on `config.listen` and starts their listeners. They stop when `shutdown` turns true.
pub async fn start(
    config: TransportConfig,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<Running> {
    let sockets: Vec<Arc<tokio::net::UdpSocket>> =
        udp::bind_all(config.listen, config.udp_receivers)?
            .into_iter()
            .map(Arc::new)
            .collect();
    let Some(udp) = sockets.first().cloned() else {
        return Err(std::io::Error::other("no UDP socket bound"));
    };
    let listen = udp.local_addr()?;
    let tcp_listener = tokio::net::TcpListener::bind(listen).await?;
    let lanes = config.lanes.clamp(1, lanes::MAX_LANES);
    let (tx, mut receivers) = lanes::channel(lanes, config.queue.div_ceil(lanes));
    let inbound = receivers.remove(0);
    let stats = Arc::new(FrontDoorStats::default());
    let tcp = tcp::TcpPool::new(
        config.clone(),
        None,
        tx.clone(),
        stats.clone(),
        shutdown.clone(),
    );
    let mut tasks = Vec::new();
    let mut tls_local = None;
    let tls = match &config.tls {
        None => None,
        Some(t) => {
            let side = Arc::new(tls::TlsSide::new(t.material.clone()));
            let pool = tcp::TcpPool::new(
                config.clone(),
                Some(side),
                tx.clone(),
                stats.clone(),
                shutdown.clone(),
            );
            if let Some(at) = t.listen {
                let listener = tokio::net::TcpListener::bind(at).await?;
                tls_local = Some(listener.local_addr()?);
                tasks.push(tokio::spawn(pool.clone().accept_loop(listener)));
            }
            Some(pool)
        }
    };
    let transports = Transports {
        udp: udp.clone(),
        tcp: tcp.clone(),
        tls,
        tls_local,
        stats: stats.clone(),
    };
    tasks.extend(sockets.into_iter().map(|socket| {
        tokio::spawn(udp::receive_loop(
            socket,
            config.clone(),
            tx.clone(),
            stats.clone(),
            shutdown.clone(),
        ))
    }));
    drop(tx);
    tasks.push(tokio::spawn(tcp.accept_loop(tcp_listener)));
    Ok(Running {
        transports,
        inbound,
        other_lanes: receivers,
        stats,
        tasks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_target_honours_rport() {
        let src: SocketAddr = "10.0.0.1:40000".parse().unwrap();
        let v = Via::parse(b"SIP/2.0/UDP host:5070;branch=z9hG4bK1;rport").unwrap();
        assert_eq!(response_target(&v, src), src);
        let v = Via::parse(b"SIP/2.0/UDP host:5070;branch=z9hG4bK1").unwrap();
        assert_eq!(response_target(&v, src), "10.0.0.1:5070".parse().unwrap());
        let v = Via::parse(b"SIP/2.0/UDP host;branch=z9hG4bK1").unwrap();
        assert_eq!(response_target(&v, src), "10.0.0.1:5060".parse().unwrap());
    }

    const BYE: &[u8] = b"BYE sip:bob@127.0.0.21 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-9\r\nFrom: \"Al\" <sip:al@127.0.0.1>;tag=1\r\nTo: <sip:bob@127.0.0.21>;tag=2\r\nCall-ID: c1\r\nCSeq: 2 BYE\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";

    #[test]
    fn only_what_passed_the_checks_is_marked_checked() {
        let src: SocketAddr = "127.0.0.1:5070".parse().unwrap();
        let fresh = SipMessage::parse(BYE).unwrap();
        assert!(!fresh.is_checked());
        let Screened::Pass(m) = screen(Ok(fresh.clone()), src) else {
            panic!("a well-formed BYE must pass");
        };
        assert!(m.is_checked());
        assert_eq!(m.to_tag(), Some(&b"2"[..]));
        assert_eq!(m.from(), fresh.from());
        assert_eq!(m.top_via(), fresh.top_via());
        // A To the checks refuse (a parameter without a name) is answered, never passed on.
        let bad = String::from_utf8_lossy(BYE).replace(";tag=2", ";=2");
        let bad = SipMessage::parse(bad.into_bytes()).unwrap();
        assert!(bad.to().is_some_and(|t| t.is_err()));
        assert!(matches!(screen(Ok(bad), src), Screened::Answer(_)));
    }
}
