//! The TCP door of the SIP transports, against real sockets on loopback (addresses 127.0.153.0/24):
//! per-address caps checked at accept, listed peers outside the unlisted total, a separate outbound
//! budget, a deadline for a message to arrive whole (one byte at a time never holds a slot past
//! it), and a write timeout (a peer that never reads loses its connection; nobody else's sends
//! wait on it).

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use medpool_sip::transport::gate::{Budget, SourceGate, SourcePolicy, UnknownPolicy};
use medpool_sip::transport::tcp::TcpLimits;
use medpool_sip::transport::{self, Running, Transport, TransportConfig, TransportError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;

const NODE: &str = "127.0.153.2:0";

async fn start(tcp: TcpLimits) -> (Running, watch::Sender<bool>) {
    let (stop, rx) = watch::channel(false);
    let config = TransportConfig {
        listen: NODE.parse().unwrap(),
        tcp,
        ..TransportConfig::default()
    };
    (transport::start(config, rx).await.unwrap(), stop)
}

/// A connection from `from` (an address of this test's block) to `to`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    match try_connect_from(from, to).await {
        Ok(c) => c,
        Err(e) => panic!("connect from {from} to {to}: {e}"),
    }
}

/// A connection attempt that the node may refuse: a reset at accept can reach the connect itself.
async fn try_connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(format!("{from}:0").parse().unwrap())?;
    s.connect(to).await
}

/// Waits (on the wall clock, real sockets) until `cond` holds; false after `limit`.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// Whether the node closed or reset `s` (a read ends at once) rather than keeping it open.
async fn closed_by_node(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 64];
    matches!(
        tokio::time::timeout(Duration::from_millis(200), s.read(&mut b)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn caps_are_checked_at_accept_and_listed_peers_and_outbound_have_their_own() {
    let limits = TcpLimits {
        max_inbound: 4,
        max_inbound_per_ip: 3,
        max_inbound_per_listed_ip: 5,
        max_outbound: 1,
        ..TcpLimits::default()
    };
    let (running, _stop) = start(limits).await;
    let node = running.transports.udp_local();
    let tcp = running.transports.tcp();

    // One address: three in, the next two reset at accept.
    let mut from9 = Vec::new();
    let mut refused = 0;
    for _ in 0..5 {
        match try_connect_from("127.0.153.9", node).await {
            Ok(s) => from9.push(s),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => refused += 1,
            Err(e) => panic!("connect: {e}"),
        }
    }
    assert!(
        eventually(Duration::from_secs(5), || tcp
            .stats()
            .refused_per_ip
            .load(std::sync::atomic::Ordering::Relaxed)
            == 2)
        .await,
        "two connections over the per-address cap are refused"
    );
    assert_eq!(tcp.open_inbound(), 3);
    assert_eq!(
        tcp.stats().refused_by_reason(),
        [("inbound_full", 0), ("per_ip", 2), ("outbound_full", 0)]
    );
    for s in &mut from9 {
        if closed_by_node(s).await {
            refused += 1;
        }
    }
    assert_eq!(refused, 2, "exactly the two over the cap were reset");

    // A second address fills the unlisted total (4): one more in, then refused.
    let mut from10 = Vec::new();
    for _ in 0..2 {
        from10.push(try_connect_from("127.0.153.10", node).await);
    }
    assert!(
        eventually(Duration::from_secs(5), || tcp
            .stats()
            .refused_inbound_full
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1)
        .await
    );
    assert_eq!(tcp.open_inbound(), 4);

    // A listed address (a trunk) still gets its own five, with the unlisted total full.
    tcp.set_listed_ips(["127.0.153.11".parse().unwrap()]);
    let mut from11 = Vec::new();
    for _ in 0..6 {
        from11.push(try_connect_from("127.0.153.11", node).await);
    }
    assert!(
        eventually(Duration::from_secs(5), || tcp.open_inbound() == 9
            && tcp
                .stats()
                .refused_per_ip
                .load(std::sync::atomic::Ordering::Relaxed)
                == 3)
        .await,
        "open {}",
        tcp.open_inbound()
    );

    // Outbound: with every inbound budget full, the node still opens its one outbound connection;
    // a second is refused by the outbound budget, not by the inbound ones.
    let gw = TcpListener::bind("127.0.153.21:0").await.unwrap();
    let gw2 = TcpListener::bind("127.0.153.22:0").await.unwrap();
    let t = &running.transports;
    t.send(
        Transport::Tcp,
        gw.local_addr().unwrap(),
        Bytes::from_static(b"\r\n\r\n"),
    )
    .await
    .unwrap();
    let (mut at_gw, _) = gw.accept().await.unwrap();
    let mut b = [0u8; 4];
    at_gw.read_exact(&mut b).await.unwrap();
    assert_eq!(
        t.send(
            Transport::Tcp,
            gw2.local_addr().unwrap(),
            Bytes::from_static(b"\r\n\r\n")
        )
        .await,
        Err(TransportError::TooManyConnections)
    );
    assert_eq!(
        tcp.stats()
            .refused_outbound_full
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // Slots come back when connections close.
    drop(from9);
    drop(from10);
    assert!(eventually(Duration::from_secs(5), || tcp.open_inbound() == 5).await);
    let _again = connect_from("127.0.153.9", node).await;
    assert!(eventually(Duration::from_secs(5), || tcp.open_inbound() == 6).await);
}

#[tokio::test]
async fn one_byte_at_a_time_never_holds_a_slot_past_the_message_deadline() {
    let limits = TcpLimits {
        message_timeout: Duration::from_secs(1),
        // The idle clock is far away: only the message deadline can end this connection.
        idle_timeout: Duration::from_secs(600),
        ..TcpLimits::default()
    };
    let (running, _stop) = start(limits).await;
    let node = running.transports.udp_local();
    let tcp = running.transports.tcp();
    let mut s = connect_from("127.0.153.12", node).await;

    // A complete message first: the connection is in use, not idle.
    let options = b"OPTIONS sip:n@127.0.153.2 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.153.12;branch=z9hG4bK-lor-1\r\nFrom: <sip:a@127.0.153.12>;tag=1\r\nTo: <sip:n@127.0.153.2>\r\nCall-ID: loris-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    s.write_all(options).await.unwrap();
    let mut inbound = running.inbound;
    let got = tokio::time::timeout(Duration::from_secs(5), inbound.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.transport, Transport::Tcp);

    // Then a header section trickled one byte every 50 ms, forever: every byte would restart a
    // per-byte idle timer; the message deadline (1 s from its first byte) does not move.
    let started = Instant::now();
    let trickle = b"INVITE sip:n@127.0.153.2 SIP/2.0\r\nX-Slow: "
        .iter()
        .copied()
        .chain(std::iter::repeat(b'a'));
    let mut sent = 0usize;
    let mut closed_after = None;
    for byte in trickle {
        if s.write_all(&[byte]).await.is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        sent += 1;
        if tcp
            .stats()
            .closed_message_timeout
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
            && tcp.open_inbound() == 0
        {
            closed_after = Some(started.elapsed());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a peer trickling bytes held its connection for 30 s ({sent} bytes sent)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed_after = closed_after.unwrap();
    assert!(
        closed_after >= Duration::from_secs(1),
        "closed before the deadline ({closed_after:?})"
    );
    assert!(sent > 5, "the peer kept sending ({sent} bytes)");
    assert!(
        eventually(Duration::from_secs(5), || tcp.open_inbound() == 0).await,
        "the slot is given back"
    );
    assert_eq!(
        tcp.stats()
            .closed_idle
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // The peer sees the close.
    let mut rest = Vec::new();
    let end = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        matches!(end, Ok(Ok(_) | Err(_))),
        "the node closed its side"
    );
}

#[tokio::test]
async fn a_peer_that_never_reads_loses_its_connection_and_blocks_nobody() {
    let limits = TcpLimits {
        write_timeout: Duration::from_secs(3),
        ..TcpLimits::default()
    };
    let (running, _stop) = start(limits).await;
    let t = running.transports.clone();
    let tcp = t.tcp();

    // The stuck peer accepts and never reads (a small receive buffer fills quickly).
    let stuck_sock = TcpSocket::new_v4().unwrap();
    stuck_sock.set_recv_buffer_size(4096).unwrap();
    stuck_sock.bind("127.0.153.20:0".parse().unwrap()).unwrap();
    let stuck = stuck_sock.listen(8).unwrap();
    let stuck_addr = stuck.local_addr().unwrap();
    // The good peer reads everything.
    let good = TcpListener::bind("127.0.153.21:0").await.unwrap();
    let good_addr = good.local_addr().unwrap();

    let chunk = Bytes::from(vec![b'x'; 8192]);
    t.send(Transport::Tcp, stuck_addr, chunk.clone())
        .await
        .unwrap();
    let (_held, _) = stuck.accept().await.unwrap();
    // Fill the kernel's buffers and then the connection's queue: sends are refused (Busy) at
    // once, never waited on.
    let mut queued = 1usize;
    loop {
        match t.send(Transport::Tcp, stuck_addr, chunk.clone()).await {
            Ok(()) => queued += 1,
            Err(TransportError::Busy) => break,
            Err(e) => panic!("unexpected send error to the stuck peer: {e}"),
        }
        if queued.is_multiple_of(64) {
            tokio::task::yield_now().await;
        }
        assert!(
            queued < 100_000,
            "8 KiB × {queued} went to a peer that never reads"
        );
    }

    // Meanwhile the good peer gets everything sent to it.
    let reader = tokio::spawn(async move {
        let (mut s, _) = good.accept().await.unwrap();
        let mut got = vec![0u8; 100 * 8192];
        s.read_exact(&mut got).await.unwrap();
        (got.iter().all(|&b| b == b'y'), s)
    });
    let ychunk = Bytes::from(vec![b'y'; 8192]);
    for _ in 0..100 {
        t.send(Transport::Tcp, good_addr, ychunk.clone())
            .await
            .unwrap();
    }
    let (all_there, _good_conn) = reader.await.unwrap();
    assert!(all_there, "the good peer received its bytes");
    assert_eq!(
        tcp.stats()
            .closed_write_timeout
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the good peer was served while the stuck connection was still open"
    );

    // The stuck connection is reset after the write timeout and its slot given back.
    assert!(
        eventually(Duration::from_secs(30), || tcp
            .stats()
            .closed_write_timeout
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
            && tcp.open_outbound() == 1)
        .await,
        "the stuck connection is closed (outbound open: {})",
        tcp.open_outbound()
    );
    // A later send to that peer opens a new connection instead of finding the dead one.
    t.send(Transport::Tcp, stuck_addr, Bytes::from_static(b"\r\n\r\n"))
        .await
        .unwrap();
    let _second = tokio::time::timeout(Duration::from_secs(5), stuck.accept())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(tcp.open_outbound(), 2);
}

#[tokio::test]
async fn messages_sent_while_connecting_share_one_connection() {
    let (running, _stop) = start(TcpLimits::default()).await;
    let t = running.transports.clone();
    let gw = TcpListener::bind("127.0.153.23:0").await.unwrap();
    let gw_addr = gw.local_addr().unwrap();
    // A burst towards a destination with no connection yet (as the transaction layer sends).
    for i in 0..50u8 {
        t.send_now(
            Transport::Tcp,
            gw_addr,
            Bytes::from(vec![b'a' + i % 26; 10]),
        )
        .unwrap();
    }
    let (mut s, _) = gw.accept().await.unwrap();
    let mut got = vec![0u8; 500];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        t.tcp().open_outbound(),
        1,
        "one connection, not one per message"
    );
    let second = tokio::time::timeout(Duration::from_millis(300), gw.accept()).await;
    assert!(second.is_err(), "no second connection was opened");
}

#[tokio::test]
async fn the_idle_clock_runs_from_the_last_complete_message_not_the_last_byte() {
    let limits = TcpLimits {
        idle_timeout: Duration::from_secs(2),
        // Far away: only the idle clock can end this connection.
        message_timeout: Duration::from_secs(600),
        ..TcpLimits::default()
    };
    let (running, _stop) = start(limits).await;
    let node = running.transports.udp_local();
    let tcp = running.transports.tcp();
    let mut s = connect_from("127.0.153.13", node).await;
    let options = b"OPTIONS sip:n@127.0.153.2 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.153.13;branch=z9hG4bK-idle-1\r\nFrom: <sip:a@127.0.153.13>;tag=1\r\nTo: <sip:n@127.0.153.2>\r\nCall-ID: idle-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n";
    // Complete messages keep the connection: 3 s of them, one every 200 ms.
    for _ in 0..15 {
        s.write_all(options).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(tcp.open_inbound(), 1, "complete messages keep it open");
    // Bytes of a message that never ends do not: the idle clock closes it.
    let mut sent = 0usize;
    let started = Instant::now();
    while tcp
        .stats()
        .closed_idle
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        if s.write_all(b"X").await.is_err() {
            break;
        }
        sent += 1;
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "a trickle of bytes kept the connection for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(sent > 5, "bytes kept coming ({sent})");
    assert!(eventually(Duration::from_secs(5), || tcp.open_inbound() == 0).await);
    assert_eq!(
        tcp.stats()
            .closed_idle
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test]
async fn a_response_whose_connection_is_gone_never_waits_on_a_connect() {
    let limits = TcpLimits {
        connect_timeout: Duration::from_secs(60),
        ..TcpLimits::default()
    };
    let (running, _stop) = start(limits).await;
    let node = running.transports.udp_local();
    let t = running.transports.clone();
    let mut inbound = running.inbound;

    // A request over TCP from 127.0.153.14:P, whose Via names the same port.
    let client = TcpSocket::new_v4().unwrap();
    client.set_reuseaddr(true).unwrap();
    client.bind("127.0.153.14:0".parse().unwrap()).unwrap();
    let mut client = client.connect(node).await.unwrap();
    let me = client.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:n@127.0.153.2 SIP/2.0\r\nVia: SIP/2.0/TCP {me};branch=z9hG4bK-hole-1\r\nFrom: <sip:a@{me}>;tag=1\r\nTo: <sip:n@127.0.153.2>\r\nCall-ID: hole-1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    client.write_all(options.as_bytes()).await.unwrap();
    let request = tokio::time::timeout(Duration::from_secs(5), inbound.recv())
        .await
        .unwrap()
        .unwrap();
    // The peer goes away, and its address becomes a black hole: a listener that never accepts,
    // its accept queue full, so SYNs to it are never answered.
    drop(client);
    assert!(eventually(Duration::from_secs(5), || t.tcp().open_inbound() == 0).await);
    let hole = TcpSocket::new_v4().unwrap();
    hole.set_reuseaddr(true).unwrap();
    hole.bind(me).unwrap();
    let _hole = hole.listen(1).unwrap();
    let mut fillers = Vec::new();
    let mut full = false;
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(500), connect_from_async(me)).await {
            Ok(s) => fillers.push(s),
            Err(_) => {
                full = true;
                break;
            }
        }
    }
    assert!(full, "the black hole still answers SYNs");

    // The answer is handed off at once; the connect (to the black hole) runs in the background.
    let answer = Bytes::from_static(b"SIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n");
    let sent =
        tokio::time::timeout(Duration::from_secs(10), t.send_response(&request, answer)).await;
    assert!(
        matches!(sent, Ok(Ok(()))),
        "the caller waited on the connect ({sent:?})"
    );
    assert!(
        eventually(Duration::from_secs(5), || t.tcp().open_outbound() == 1).await,
        "a connection is being opened"
    );
}

async fn connect_from_async(to: SocketAddr) -> std::io::Result<TcpStream> {
    try_connect_from("127.0.153.15", to).await
}

/// A request over TCP from `from_ip` (its Via names it), new or in a dialog.
fn request(method: &str, n: u32, in_dialog: bool) -> Vec<u8> {
    let to_tag = if in_dialog { ";tag=mp0001x" } else { "" };
    format!(
        "{method} sip:gw@127.0.153.40 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.153.40:5060;branch=z9hG4bK-g{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@127.0.153.40>;tag=f{n}\r\nTo: <sip:b@127.0.153.40>{to_tag}\r\n\
         Call-ID: gate-{n}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// Reads what the node answered on `s` within `wait` (status codes of the responses).
async fn statuses(s: &mut TcpStream, wait: Duration) -> Vec<u16> {
    let mut got = Vec::new();
    let end = Instant::now() + wait;
    let mut buf = vec![0u8; 65536];
    while let Ok(Ok(n)) = tokio::time::timeout_at(end, s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .filter_map(|l| l.strip_prefix("SIP/2.0 "))
        .filter_map(|l| l.get(..3)?.parse().ok())
        .collect()
}

async fn start_gated(unknown: UnknownPolicy) -> (Running, watch::Sender<bool>) {
    let mut policy = SourcePolicy::closed(unknown);
    policy.add_any_port(
        "127.0.153.40".parse().unwrap(),
        Budget { rate: 1, burst: 2 },
    );
    let (stop, rx) = watch::channel(false);
    let config = TransportConfig {
        listen: NODE.parse().unwrap(),
        gate: std::sync::Arc::new(SourceGate::new(policy)),
        ..TransportConfig::default()
    };
    (transport::start(config, rx).await.unwrap(), stop)
}

#[tokio::test]
async fn the_source_gate_holds_over_tcp_before_anything_is_queued() {
    // unknown_source = "drop": a stranger does not even keep a connection.
    let (mut running, _stop) = start_gated(UnknownPolicy::Drop).await;
    let node = running.transports.udp_local();
    let mut stranger = connect_from("127.0.153.41", node).await;
    let _ = stranger.write_all(&request("OPTIONS", 1, false)).await;
    assert!(closed_by_node(&mut stranger).await, "reset at accept");
    assert!(running.inbound.try_recv().is_err(), "nothing queued");

    // A trunk's new requests draw from its budget (burst 2): the rest get 503 and are not queued;
    // its in-dialog requests are never charged.
    let mut trunk = connect_from("127.0.153.40", node).await;
    for n in 0..4 {
        trunk
            .write_all(&request("INVITE", 10 + n, false))
            .await
            .unwrap();
    }
    trunk.write_all(&request("BYE", 20, true)).await.unwrap();
    let answered = statuses(&mut trunk, Duration::from_millis(500)).await;
    assert_eq!(answered, [503, 503], "two over the budget");
    let mut queued = Vec::new();
    while let Ok(i) = running.inbound.try_recv() {
        queued.push(i.msg.method().map(|m| m.as_str().to_owned()));
    }
    assert_eq!(
        queued,
        [
            Some("INVITE".into()),
            Some("INVITE".into()),
            Some("BYE".into())
        ]
    );
    let gate = &running.stats.gate;
    assert_eq!(
        gate.rate_limited.load(std::sync::atomic::Ordering::Relaxed),
        2
    );

    // unknown_source = "reject": a stranger's request is answered 403 on its own connection and
    // never queued.
    let (mut running, _stop) = start_gated(UnknownPolicy::Reject).await;
    let node = running.transports.udp_local();
    let mut stranger = connect_from("127.0.153.41", node).await;
    stranger
        .write_all(&request("OPTIONS", 2, false))
        .await
        .unwrap();
    assert_eq!(
        statuses(&mut stranger, Duration::from_millis(500)).await,
        [403]
    );
    assert!(running.inbound.try_recv().is_err(), "nothing queued");
}
