//! The UDP listener: one or more sockets on the same address, one receive loop each. Each datagram's
//! source is checked before it is parsed ([`super::gate`]); each is parsed on its own; nothing a
//! peer sends can stop a loop.
//!
//! **Several receive loops** ([`bind_all`], `TransportConfig::udp_receivers`): the sockets share
//! the address with `SO_REUSEPORT`, and the kernel spreads datagrams over them by a hash of the
//! source and destination address and port, so the receive, gate and parse work runs on as many
//! cores as there are loops, without a lock between them. Every loop feeds the same lanes
//! ([`super::lanes`]: a message's lane is chosen by its Call-ID, not by the socket) to the same
//! transaction layer, so a response or a retransmission reaches its transaction whichever socket
//! it came in on; everything is sent from the first socket (the same address).
//!
//! **The gate with several loops.** Each loop keeps its own [`Door`] (no lock). A source — one IP
//! and port — always hashes to the same socket while the set of sockets stays the same, so its
//! token bucket sees every new request it sends: its budget holds exactly. What is spread over the
//! loops is what is shared between sources: the global answer budgets (403s, error answers, 503s
//! to sources over budget), an entry's overflow bucket beyond [`super::gate::MAX_SOURCES`]
//! sources, and the parse budget of an IP whose ports land on different sockets. Each is then at
//! most `udp_receivers` times its figure: still a fixed bound, just a larger one.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::gate::{Door, NewRequest, SourceClass, UnknownPolicy};
use super::lanes::InboundTx;
use super::{
    FrontDoorStats, Inbound, Screened, Transport, TransportConfig, overload_answer, screen,
};
use crate::check::can_answer;
use crate::message::builder::response_to;
use crate::{Method, SipMessage};

/// Socket buffer size asked for (the kernel caps it at net.core.rmem_max / wmem_max): the default
/// ~200 KiB drops datagrams in bursts of a few thousand calls per second.
pub const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// The most receive loops (sockets) one listener may have.
pub const MAX_RECEIVERS: usize = 64;

/// Binds the SIP UDP socket with large buffers (bursts of thousands of calls per second).
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    bind_one(addr, false)
}

/// Binds `n` UDP sockets (at least 1, at most [`MAX_RECEIVERS`]) on `addr` with large buffers; with
/// more than one, they share the address with `SO_REUSEPORT` (see the module documentation). When
/// `addr` names port 0, the first socket picks the port and the others take the same.
pub fn bind_all(addr: SocketAddr, n: usize) -> std::io::Result<Vec<UdpSocket>> {
    let n = n.clamp(1, MAX_RECEIVERS);
    let first = bind_one(addr, n > 1)?;
    let local = first.local_addr()?;
    let mut all = Vec::with_capacity(n);
    all.push(first);
    for _ in 1..n {
        all.push(bind_one(local, true)?);
    }
    Ok(all)
}

fn bind_one(addr: SocketAddr, reuse_port: bool) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: a smaller buffer than asked for is not an error.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock.into())
}

/// Datagrams read in one go once the socket is readable, before the loop looks at the shutdown
/// signal again (reading until the socket is empty costs one wake-up per burst, not per datagram).
const DRAIN_BATCH: usize = 256;

/// Receives datagrams until `shutdown` turns true.
///
/// Per datagram, in this order: the source ([`Door::classify`], no parse yet): an unknown source is
/// dropped, or answered 403 within the global budget ([`Door::may_forbid`]); a known source's
/// datagram is parsed and screened; a request that starts something new takes a token from its
/// source's bucket and may not use the queue's reserve; everything else is queued as long as
/// there is room.
pub async fn receive_loop(
    socket: Arc<UdpSocket>,
    config: TransportConfig,
    tx: InboundTx,
    stats: Arc<FrontDoorStats>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // One buffer larger than any legal datagram; a datagram longer than the limit is still read whole so
    // it can be answered 513.
    let mut buf = vec![0u8; 65536];
    let mut rx = Receiver {
        start: tokio::time::Instant::now(),
        door: Door::new(config.gate.clone(), Duration::ZERO),
        reserve: super::reserved_slots(tx.max_capacity()),
        socket,
        config,
        tx,
        stats,
    };
    loop {
        tokio::select! {
            r = rx.socket.readable() => if let Err(e) = r {
                tracing::debug!(error = %e, "udp socket not readable");
                continue;
            },
            _ = shutdown.changed() => break,
        }
        let mut emptied = false;
        for _ in 0..DRAIN_BATCH {
            match rx.socket.try_recv_from(&mut buf) {
                Ok((n, source)) => rx.on_datagram(&buf[..n], source),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    emptied = true;
                    break;
                }
                // ICMP port-unreachable surfaces here on Linux as ConnectionRefused: not fatal.
                Err(e) => tracing::debug!(error = %e, "udp receive error"),
            }
        }
        // A full batch: let the tasks it fed run before reading on. An emptied socket needs no
        // yield: the next `readable()` waits anyway, and a yield would schedule this task again
        // (waking an idle worker for nothing, once per datagram at low rates).
        if !emptied {
            tokio::task::yield_now().await;
        }
    }
}

/// The receive loop's state.
struct Receiver {
    socket: Arc<UdpSocket>,
    config: TransportConfig,
    tx: InboundTx,
    stats: Arc<FrontDoorStats>,
    door: Door,
    start: tokio::time::Instant,
    reserve: usize,
}

impl Receiver {
    fn on_datagram(&mut self, data: &[u8], source: SocketAddr) {
        let Receiver {
            socket,
            config,
            tx,
            stats,
            door,
            start,
            reserve,
        } = self;
        let reserve = *reserve;
        if data.iter().all(|&b| b == b'\r' || b == b'\n') {
            return; // keep-alive
        }
        let now = start.elapsed();
        let entry = match door.classify(source) {
            SourceClass::Unknown(policy) => {
                stats.gate.unknown.fetch_add(1, Ordering::Relaxed);
                if policy == UnknownPolicy::Reject {
                    let loaded = tx.loaded();
                    if door.may_forbid(now, loaded) {
                        forbid(socket, data, source, config, stats);
                    }
                }
                return;
            }
            SourceClass::Known(entry) => {
                if !door.may_parse(entry, source, now) {
                    stats.gate.unparsed.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Some(entry)
            }
            SourceClass::Unlimited => None,
        };
        let parsed = SipMessage::parse_datagram(Bytes::copy_from_slice(data), &config.limits);
        if let Ok(m) = &parsed {
            stats.traffic.count_in(m);
            // A request that starts something new pays first (before the checks: a source over its
            // budget costs no more than the parse).
            if super::starts_something_new(m) {
                let verdict = match entry {
                    Some(entry) => door.new_request(entry, source, now),
                    None => NewRequest::Admit,
                };
                let answer = match verdict {
                    NewRequest::Admit if tx.lane_for(m).capacity() > reserve => None,
                    NewRequest::Admit => {
                        stats.gate.reserve_refused.fetch_add(1, Ordering::Relaxed);
                        Some(true)
                    }
                    NewRequest::Refuse => {
                        stats.gate.rate_limited.fetch_add(1, Ordering::Relaxed);
                        Some(true)
                    }
                    NewRequest::Drop => {
                        stats.gate.rate_limited.fetch_add(1, Ordering::Relaxed);
                        stats.gate.unanswered.fetch_add(1, Ordering::Relaxed);
                        Some(false)
                    }
                };
                if let Some(answer) = answer {
                    if answer && let Some(a) = overload_answer(m, source, config.retry_after_secs) {
                        let _ = socket.try_send_to(&a, reply_target(m, source));
                    }
                    return;
                }
            }
        }
        match screen(parsed, source) {
            Screened::Pass(msg) => {
                let is_request = msg.is_request();
                let inbound = Inbound {
                    msg,
                    source,
                    transport: Transport::Udp,
                    tls: None,
                };
                if let Err(
                    mpsc::error::TrySendError::Full(inbound)
                    | mpsc::error::TrySendError::Closed(inbound),
                ) = tx.try_send(inbound)
                {
                    // Only a new call is refused with 503; a request in a dialog (BYE, re-INVITE, ACK)
                    // is dropped instead, so its sender retransmits it and the call is not hurt.
                    if is_request && super::is_new_call(&inbound.msg) {
                        stats.overloaded.fetch_add(1, Ordering::Relaxed);
                        if let Some(answer) =
                            overload_answer(&inbound.msg, source, config.retry_after_secs)
                        {
                            let _ = socket.try_send_to(&answer, reply_target(&inbound.msg, source));
                        }
                    } else {
                        stats.dropped_responses.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Screened::Answer(bytes) => {
                if !door.may_answer_error(now) {
                    // Junk at a high rate is not reflected back.
                    stats.gate.unanswered.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                // The answer's top Via tells where it goes; recompute from the parsed answer.
                let dest = SipMessage::parse(bytes.clone())
                    .ok()
                    .and_then(|m| {
                        m.top_via()
                            .and_then(|v| v.ok())
                            .map(|v| super::response_target(&v, source))
                    })
                    .unwrap_or(source);
                let _ = socket.try_send_to(&bytes, dest);
            }
            Screened::Drop(why) => {
                stats.parse_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%source, why, "dropped datagram");
            }
        }
    }
}

/// Answers a request from an unknown source 403 (its budget was checked): parsed only now; an ACK,
/// a response or anything that cannot be answered gets nothing.
fn forbid(
    socket: &UdpSocket,
    data: &[u8],
    source: SocketAddr,
    config: &TransportConfig,
    stats: &FrontDoorStats,
) {
    let Ok(msg) = SipMessage::parse_datagram(Bytes::copy_from_slice(data), &config.limits) else {
        return;
    };
    if !msg.is_request() || msg.method() == Some(Method::Ack) || !can_answer(&msg) {
        return;
    }
    let tag = crate::ids::new_tag(0);
    let answer = response_to(&msg, 403, b"Forbidden", Some(&tag), Some(source)).build();
    stats.traffic.count_out(&answer);
    if socket
        .try_send_to(&answer, reply_target(&msg, source))
        .is_ok()
    {
        stats.gate.forbidden.fetch_add(1, Ordering::Relaxed);
    }
}

fn reply_target(msg: &SipMessage, source: SocketAddr) -> SocketAddr {
    match msg.top_via() {
        Some(Ok(v)) => super::response_target(&v, source),
        _ => source,
    }
}

#[cfg(test)]
mod tests {
    //! The receive loop on real loopback sockets (block 127.0.152.0/24): what is queued, what is
    //! answered, what is dropped, by source.

    use std::time::Duration;

    use super::super::gate::{Budget, SourceGate, SourcePolicy};
    use super::super::{Running, TransportConfig, start};
    use super::*;

    const NODE: &str = "127.0.152.40:0";
    const KNOWN: &str = "127.0.152.50";
    const UNKNOWN: &str = "127.0.152.51:5071";

    fn request(method: &str, from: &str, n: u32, to_tag: &str) -> String {
        format!(
            "{method} sip:100@127.0.152.40 SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bKt{n};rport\r\n\
             From: <sip:a@{from}>;tag=f{n}\r\nTo: <sip:100@127.0.152.40>{to_tag}\r\nCall-ID: t{n}@x\r\n\
             CSeq: 1 {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        )
    }

    async fn node(policy: SourcePolicy) -> (Running, tokio::sync::watch::Sender<bool>) {
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let config = TransportConfig {
            listen: NODE.parse().unwrap(),
            gate: Arc::new(SourceGate::new(policy)),
            ..TransportConfig::default()
        };
        (start(config, shutdown).await.unwrap(), stop)
    }

    /// Answers that reach `sock` within `wait`, by status.
    async fn answers(sock: &UdpSocket, wait: Duration) -> Vec<u16> {
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(Ok(n)) = tokio::time::timeout(wait, sock.recv(&mut buf)).await {
            let status = buf[..n]
                .strip_prefix(b"SIP/2.0 ")
                .and_then(|r| std::str::from_utf8(r.get(..3)?).ok()?.parse().ok())
                .unwrap_or(0);
            got.push(status);
        }
        got
    }

    fn queued(running: &mut Running) -> usize {
        std::iter::from_fn(|| running.inbound.try_recv().ok()).count()
    }

    #[tokio::test]
    async fn unknown_sources_are_never_queued_and_get_only_a_few_403s() {
        let mut p = SourcePolicy::closed(UnknownPolicy::Reject);
        p.add_any_port(KNOWN.parse().unwrap(), Budget { rate: 1, burst: 1 });
        let (mut running, _stop) = node(p).await;
        let to = running.transports.udp_local();
        let sock = UdpSocket::bind(UNKNOWN).await.unwrap();
        sock.connect(to).await.unwrap();
        for n in 0..300 {
            sock.send(request("INVITE", UNKNOWN, n, "").as_bytes())
                .await
                .unwrap();
        }
        let got = answers(&sock, Duration::from_millis(300)).await;
        assert!(
            !got.is_empty() && got.len() <= 10 && got.iter().all(|s| *s == 403),
            "answers to 300 INVITEs from an unknown source: {got:?}"
        );
        assert_eq!(
            queued(&mut running),
            0,
            "nothing from an unknown source is queued"
        );
        let gate = &running.stats.gate;
        assert_eq!(gate.unknown.load(Ordering::Relaxed), 300);
        assert_eq!(gate.forbidden.load(Ordering::Relaxed), got.len() as u64);
    }

    #[tokio::test]
    async fn unknown_sources_get_nothing_with_drop() {
        let (mut running, _stop) = node(SourcePolicy::closed(UnknownPolicy::Drop)).await;
        let to = running.transports.udp_local();
        let sock = UdpSocket::bind("127.0.152.51:5072").await.unwrap();
        sock.connect(to).await.unwrap();
        for n in 0..20 {
            sock.send(request("OPTIONS", "127.0.152.51:5072", n, "").as_bytes())
                .await
                .unwrap();
        }
        assert_eq!(
            answers(&sock, Duration::from_millis(300)).await,
            Vec::<u16>::new()
        );
        assert_eq!(queued(&mut running), 0);
    }

    #[tokio::test]
    async fn a_known_source_pays_for_new_requests_only() {
        let mut p = SourcePolicy::closed(UnknownPolicy::Drop);
        p.add_any_port(KNOWN.parse().unwrap(), Budget { rate: 1, burst: 2 });
        let (mut running, _stop) = node(p).await;
        let to = running.transports.udp_local();
        let from = format!("{KNOWN}:5073");
        let sock = UdpSocket::bind(&from).await.unwrap();
        sock.connect(to).await.unwrap();
        for n in 0..10 {
            sock.send(request("INVITE", &from, n, "").as_bytes())
                .await
                .unwrap();
        }
        for n in 10..60 {
            sock.send(request("BYE", &from, n, ";tag=mp1").as_bytes())
                .await
                .unwrap();
        }
        let got = answers(&sock, Duration::from_millis(300)).await;
        assert_eq!(
            got,
            vec![503; 8],
            "the burst of 2 INVITEs passes, the other 8 are refused 503"
        );
        assert_eq!(
            queued(&mut running),
            2 + 50,
            "2 INVITEs and every in-dialog BYE are queued"
        );
        assert_eq!(running.stats.gate.rate_limited.load(Ordering::Relaxed), 8);
    }

    #[tokio::test]
    async fn several_receive_loops_queue_every_datagram_and_each_source_keeps_its_budget() {
        // Block 127.0.166.0/24: four loops sharing one address, 32 sources on one IP.
        const SOURCES: u32 = 32;
        let mut p = SourcePolicy::closed(UnknownPolicy::Drop);
        p.add_any_port(
            "127.0.166.20".parse().unwrap(),
            Budget { rate: 1, burst: 2 },
        );
        let (_stop_tx, shutdown) = tokio::sync::watch::channel(false);
        let config = TransportConfig {
            listen: "127.0.166.10:0".parse().unwrap(),
            gate: Arc::new(SourceGate::new(p)),
            udp_receivers: 4,
            ..TransportConfig::default()
        };
        let mut running = start(config, shutdown).await.unwrap();
        assert_eq!(
            running.tasks.len(),
            4 + 1,
            "four UDP loops and the TCP accept loop"
        );
        let to = running.transports.udp_local();
        let mut socks = Vec::new();
        for s in 0..SOURCES {
            let sock = UdpSocket::bind("127.0.166.20:0").await.unwrap();
            sock.connect(to).await.unwrap();
            let from = sock.local_addr().unwrap().to_string();
            // 5 new calls (2 within the burst) and then 3 in-dialog requests, in this order.
            for n in 0..5 {
                sock.send(request("INVITE", &from, s * 100 + n, "").as_bytes())
                    .await
                    .unwrap();
            }
            for n in 5..8 {
                sock.send(request("BYE", &from, s * 100 + n, ";tag=mp1").as_bytes())
                    .await
                    .unwrap();
            }
            socks.push(sock);
        }
        let want = (SOURCES * (2 + 3)) as usize;
        let mut got = 0;
        while got < want {
            match tokio::time::timeout(Duration::from_secs(5), running.inbound.recv()).await {
                Ok(Some(_)) => got += 1,
                _ => break,
            }
        }
        assert_eq!(got, want, "2 INVITEs and 3 BYEs of every source are queued");
        assert_eq!(
            queued(&mut running),
            0,
            "and nothing else (no datagram twice)"
        );
        assert_eq!(
            running.stats.gate.rate_limited.load(Ordering::Relaxed),
            u64::from(SOURCES * 3),
            "every source's budget held exactly: 3 of its 5 INVITEs refused"
        );
    }

    #[tokio::test]
    async fn sockets_bound_together_share_one_address() {
        let all = bind_all("127.0.166.11:0".parse().unwrap(), 3).unwrap();
        let addrs: Vec<_> = all.iter().map(|s| s.local_addr().unwrap()).collect();
        assert_eq!(addrs.len(), 3);
        assert!(addrs[0].port() != 0 && addrs.iter().all(|a| *a == addrs[0]));
        let one = bind_all("127.0.166.11:0".parse().unwrap(), 0).unwrap();
        assert_eq!(one.len(), 1, "none asked for is one");
        assert!(
            bind(addrs[0]).is_err(),
            "a socket without SO_REUSEPORT cannot take the shared address"
        );
    }
}
