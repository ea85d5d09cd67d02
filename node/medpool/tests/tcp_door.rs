//! The SIP TCP door of a real `medpool serve` (test number 153: addresses 127.0.153.0/24, see
//! tests/common): 4,000 idle TCP connections from one address (127.0.153.9) do not stop a trunk's
//! calls over TCP. The node keeps at most its per-address cap of them (64 by default) and resets the
//! rest at accept; meanwhile the internal trunk `pbx` (SIPp over TCP) places calls that the node
//! carries to a gateway it reaches over TCP itself (its own outbound budget).
//!
//! The test process opens 4,000 sockets: it raises its own open-file limit (RLIMIT_NOFILE soft
//! limit, up to the hard limit) and fails with a clear message if the hard limit is too low.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::*;

const N: u8 = 153;
const FLOOD: usize = 4000;
/// The node's default `--sip-tcp-max-per-ip`.
const PER_IP_CAP: usize = 64;
const ATTACKER: &str = "127.0.153.9";

/// Raises this process's open-file soft limit to at least `need` (the node, started afterwards,
/// inherits it).
fn raise_nofile(need: u64) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current.is_none_or(|c| c >= need) {
        return;
    }
    let hard = now.maximum;
    assert!(
        hard.is_none_or(|h| h >= need),
        "this test opens {FLOOD} sockets: the open-file hard limit ({hard:?}) is below {need}; \
         raise it (e.g. `ulimit -Hn 65536` as root, or the container's nofile limit)"
    );
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(need),
            maximum: hard,
        },
    )
    .unwrap_or_else(|e| panic!("cannot raise the open-file limit to {need}: {e}"));
}

/// A TCP connection from `from` to `to`, or the error the node's reset caused.
fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    let local: SocketAddr = format!("{from}:0").parse().unwrap();
    s.bind(&local.into())?;
    s.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(s.into())
}

/// Whether the node still holds `s` open (a read would wait) rather than having reset or closed it.
fn still_open(s: &TcpStream) -> bool {
    let mut b = [0u8; 16];
    s.set_nonblocking(true).unwrap();
    let open = matches!(
        std::io::Read::read(&mut &*s, &mut b),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    s.set_nonblocking(false).unwrap();
    open
}

#[test]
fn four_thousand_idle_connections_from_one_address_do_not_stop_a_trunks_tcp_calls() {
    raise_nofile(FLOOD as u64 + 1024);
    let dir = TestDir::new("tcp-door");
    let mut spec = PoolSpec::new(N);
    spec.priority = [Some(1), None];
    // gw1 is reached over TCP (the node's outbound connections).
    let toml = spec
        .toml()
        .replacen("transport = \"udp\"", "transport = \"tcp\"", 1);
    let gw1 = Sipp::uas("gw1", "uas_answer.xml", &gw_ip(N, 1))
        .tcp()
        .spawn(&dir);
    let mut node = MedpoolNode::start(&dir, N, &toml);
    gw1.wait_for_probes(2, Duration::from_secs(10));
    let node_addr: SocketAddr = node.addr().parse().unwrap();

    // 4,000 connections from one address, held open and silent.
    let mut held = Vec::with_capacity(FLOOD);
    let mut reset_at_connect = 0usize;
    for _ in 0..FLOOD {
        match connect_from(ATTACKER, node_addr) {
            Ok(s) => held.push(s),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                reset_at_connect += 1
            }
            Err(e) => panic!("connect from {ATTACKER}: {e}"),
        }
    }
    // The node resets what is over the cap at accept; give the last resets time to land.
    let mut open = 0;
    assert!(
        wait_until(Duration::from_secs(10), || {
            open = held.iter().filter(|s| still_open(s)).count();
            open <= PER_IP_CAP
        }),
        "{open} of {FLOOD} connections from one address are still open (cap {PER_IP_CAP})"
    );
    eprintln!(
        "{FLOOD} connections from {ATTACKER}: {open} held open by the node, {} reset \
         ({reset_at_connect} already at connect)",
        FLOOD - open
    );
    assert_eq!(
        open, PER_IP_CAP,
        "the node keeps exactly its per-address cap of idle connections"
    );

    // While they stay open, and while the same address keeps knocking, the trunk calls over TCP.
    let stop = Arc::new(AtomicBool::new(false));
    let knocks = Arc::new(AtomicUsize::new(0));
    let knocker = {
        let (stop, knocks) = (stop.clone(), knocks.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = connect_from(ATTACKER, node_addr);
                knocks.fetch_add(1, Ordering::Relaxed);
                sleep_ms(2);
            }
        })
    };
    let calls = 20;
    let mut pbx = caller("pbx", N, 5070, "uac_call.xml")
        .calls(calls)
        .rate(10)
        .tcp()
        .spawn(&dir);
    let outcome = pbx.wait(Duration::from_secs(60));
    stop.store(true, Ordering::Relaxed);
    knocker.join().unwrap();
    assert!(
        outcome.success(),
        "the trunk's TCP calls failed ({:?}) with {FLOOD} connections from {ATTACKER} \
         ({} more knocks during the calls)\n{}\n--- node ---\n{}",
        outcome.code,
        knocks.load(Ordering::Relaxed),
        outcome.report,
        node.log()
    );
    assert_eq!(gw1.calls_received().len(), calls as usize);
    // The held connections are still the node's (idle, not yet timed out), and the node runs.
    let still = held.iter().filter(|s| still_open(s)).count();
    assert_eq!(still, PER_IP_CAP);
    node.assert_running();
    eprintln!(
        "{calls} calls over TCP succeeded; {} more connection attempts from {ATTACKER} meanwhile",
        knocks.load(Ordering::Relaxed)
    );
}

/// The metrics port (`--metrics-listen`) serves at most `MAX_SCRAPES` connections at once: one
/// more is closed at accept, a silent one is cut off after `SCRAPE_TIMEOUT`, and a freed slot serves
/// a scrape again.
#[tokio::test]
async fn the_metrics_port_holds_a_bounded_number_of_connections() {
    use medpool::metrics::{MAX_SCRAPES, serve};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    let registry = Arc::new(prometheus_client::registry::Registry::default());
    let addr = serve("127.0.153.3:0".parse().unwrap(), registry)
        .await
        .unwrap();
    let mut silent = Vec::new();
    for _ in 0..MAX_SCRAPES {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    // One more is closed at once, before any answer.
    let mut extra = TcpStream::connect(addr).await.unwrap();
    extra
        .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut got))
        .await
        .expect("the connection over the cap is closed");
    assert!(got.is_empty(), "no answer over the cap");

    // A silent connection is cut off by the scrape timeout.
    let mut first = silent.remove(0);
    let mut b = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), first.read_to_end(&mut b)).await;
    assert!(
        closed.is_ok(),
        "a silent connection is closed by the server"
    );

    // Its slot serves a scrape again.
    let mut answered = false;
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
        let mut r = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut r)).await;
        if r.starts_with(b"HTTP/1.1 200 OK") {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "a scrape is answered once a slot is free");
}
