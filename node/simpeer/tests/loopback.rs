//! The simulated peers against each other on loopback (127.0.8x.x; 127.0.177.6x-7x): a caller's
//! calls answered by a gateway directly and through the forwarder; the forwarder's header
//! insertion, return path, re-pinning and probes, with raw sockets as backends; the gateway's
//! account of an in-dialog request out of CSeq order.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::time::Duration;

use medpool_simpeer::forwarder::with_source_header;
use medpool_simpeer::{
    Caller, CallerConfig, Forwarder, ForwarderConfig, Gateway, GatewayConfig, Summary,
};
use tokio::net::UdpSocket;
use tokio::time::timeout;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

#[tokio::test]
async fn caller_places_reinvites_and_hangs_up_calls_on_a_gateway() {
    let gw = Gateway::start(GatewayConfig::new(addr("127.0.81.21:5060")))
        .await
        .unwrap();
    let caller = Caller::start(CallerConfig::new(addr("127.0.81.50:0"), gw.local_addr(), 7))
        .await
        .unwrap();
    assert_eq!(caller.place(20).await, 20);
    assert_eq!(gw.counts().active, 20);
    assert_eq!(caller.reinvite_all().await, 20);
    assert_eq!(caller.hangup_all().await, 20);
    let s = Summary::of(&caller.ledger());
    assert_eq!(s.survived, 20, "{s}");
    assert_eq!(s.unknown, 0);
    let c = gw.counts();
    assert_eq!((c.calls, c.reinvites, c.byes, c.active), (20, 20, 20, 0));
    assert_eq!(c.unknown_dialog, 0);
    // The ids derive from the seed.
    assert_eq!(caller.ledger()[3].call_id, "sp7-3@simpeer");
}

#[tokio::test]
async fn calls_through_the_forwarder_come_back_through_it() {
    let gw = Gateway::start(GatewayConfig::new(addr("127.0.83.21:5060")))
        .await
        .unwrap();
    let fwd = Forwarder::start(ForwarderConfig::new(
        addr("127.0.83.100:5060"),
        vec![gw.local_addr()],
    ))
    .await
    .unwrap();
    let caller = Caller::start(CallerConfig::new(
        addr("127.0.83.50:0"),
        fwd.local_addr(),
        9,
    ))
    .await
    .unwrap();
    assert_eq!(caller.place(5).await, 5);
    assert_eq!(caller.hangup_all().await, 5);
    let c = fwd.counts();
    assert!(c.to_backends >= 5 && c.to_peers >= 15, "{c:?}");
    assert_eq!(fwd.backend_of(caller.local_addr()), Some(gw.local_addr()));
}

#[test]
fn the_source_header_is_appended_as_the_last_header() {
    let src = addr("192.0.2.7:5070");
    let out = with_source_header(b"BYE sip:a@b SIP/2.0\r\nVia: x\r\n\r\nbody\r\n\r\n", src);
    assert_eq!(
        out,
        b"BYE sip:a@b SIP/2.0\r\nVia: x\r\nX-Medpool-Source: 192.0.2.7:5070\r\n\r\nbody\r\n\r\n"
    );
    assert_eq!(with_source_header(b"\r\n\r\n", src), b"\r\n\r\n");
    // A truncated message (no empty line) passes unchanged.
    let cut = b"BYE sip:a@b SIP/2.0\r\nVia: x\r\n";
    assert_eq!(with_source_header(cut, src), cut);
}

async fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65_535];
    let (n, from) = timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .expect("a datagram")
        .unwrap();
    (buf[..n].to_vec(), from)
}

#[tokio::test]
async fn flows_are_sticky_relayed_both_ways_and_re_pinned_when_a_backend_dies() {
    let b1 = UdpSocket::bind("127.0.82.1:5060").await.unwrap();
    let b2 = UdpSocket::bind("127.0.82.2:5060").await.unwrap();
    let peer = UdpSocket::bind("127.0.82.50:5080").await.unwrap();
    let fwd = Forwarder::start(ForwarderConfig::new(
        addr("127.0.82.100:5060"),
        vec![b1.local_addr().unwrap(), b2.local_addr().unwrap()],
    ))
    .await
    .unwrap();
    let msg = b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\n\r\n";
    peer.send_to(msg, fwd.local_addr()).await.unwrap();
    let (got, upstream) = recv(&b1).await;
    assert_eq!(
        got,
        b"OPTIONS sip:x SIP/2.0\r\nCall-ID: 1\r\nX-Medpool-Source: 127.0.82.50:5080\r\n\r\n"
    );
    assert_eq!(upstream.ip(), fwd.local_addr().ip());
    // The return path: what b1 sends to the flow's upstream socket reaches the peer from the Service.
    b1.send_to(b"SIP/2.0 200 OK\r\n\r\n", upstream)
        .await
        .unwrap();
    let (back, from) = recv(&peer).await;
    assert_eq!(back, b"SIP/2.0 200 OK\r\n\r\n");
    assert_eq!(from, fwd.local_addr());
    // Sticky.
    peer.send_to(msg, fwd.local_addr()).await.unwrap();
    recv(&b1).await;
    // b1 dies: the flow moves to b2.
    fwd.mark_dead(b1.local_addr().unwrap());
    peer.send_to(msg, fwd.local_addr()).await.unwrap();
    recv(&b2).await;
    assert_eq!(
        fwd.backend_of(peer.local_addr().unwrap()),
        b2.local_addr().ok()
    );
    let c = fwd.counts();
    assert_eq!(
        (c.to_backends, c.to_peers, c.repinned, c.flows),
        (3, 1, 1, 1)
    );
    fwd.mark_alive(b1.local_addr().unwrap());
    assert_eq!(fwd.alive().len(), 2);
    // An operator's pin moves the flow back.
    fwd.pin(peer.local_addr().unwrap(), b1.local_addr().unwrap());
    peer.send_to(msg, fwd.local_addr()).await.unwrap();
    recv(&b1).await;
    // A pin made before a peer's first datagram decides its first backend.
    let other = UdpSocket::bind("127.0.82.51:5080").await.unwrap();
    fwd.pin(other.local_addr().unwrap(), b2.local_addr().unwrap());
    other.send_to(msg, fwd.local_addr()).await.unwrap();
    recv(&b2).await;
}

#[tokio::test]
async fn probes_mark_a_silent_backend_dead_and_an_answering_one_alive() {
    let gw = Gateway::start(GatewayConfig::new(addr("127.0.84.1:5060")))
        .await
        .unwrap();
    let silent = UdpSocket::bind("127.0.84.2:5060").await.unwrap();
    let fwd = Forwarder::start(
        ForwarderConfig::new(
            addr("127.0.84.100:5060"),
            vec![gw.local_addr(), silent.local_addr().unwrap()],
        )
        .with_probes(Duration::from_millis(100)),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(fwd.alive(), vec![gw.local_addr()]);
    assert!(gw.counts().options >= 3);
}

/// A request from a raw socket in the dialog of Call-ID "disorder-1" (`to_tag`: none for the
/// INVITE that starts it).
fn request(method: &str, cseq: u32, branch: &str, from: SocketAddr, to_tag: &str) -> Vec<u8> {
    let to = if to_tag.is_empty() {
        String::new()
    } else {
        format!(";tag={to_tag}")
    };
    format!(
        "{method} sip:gw@127.0.177.61:5062 SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch={branch}\r\n\
         From: <sip:a@127.0.177.71>;tag=n1\r\n\
         To: <sip:gw@127.0.177.61>{to}\r\n\
         Call-ID: disorder-1\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:a@{from}>\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// The first final answer `sock` receives: its status line and its To tag.
async fn final_answer(sock: &UdpSocket) -> (String, String) {
    loop {
        let (bytes, _) = recv(sock).await;
        let text = String::from_utf8(bytes).unwrap();
        let status = text.lines().next().unwrap().to_owned();
        if status.starts_with("SIP/2.0 1") {
            continue;
        }
        let tag = text
            .lines()
            .find(|l| l.starts_with("To:"))
            .and_then(|l| l.split(";tag=").nth(1))
            .unwrap_or_default()
            .to_owned();
        return (status, tag);
    }
}

/// Two nodes acting for one call each send their own "next" request: the gateway answers the
/// second 500, counts it, and says which call, which requests and where each came from (what the
/// chaos suite prints when single-actor-per-shard fails on it).
#[tokio::test]
async fn the_gateway_describes_an_in_dialog_request_out_of_cseq_order() {
    let gw = Gateway::start(GatewayConfig::new(addr("127.0.177.61:5062")))
        .await
        .unwrap();
    let first = UdpSocket::bind("127.0.177.71:0").await.unwrap();
    let second = UdpSocket::bind("127.0.177.72:0").await.unwrap();
    let (a, b) = (first.local_addr().unwrap(), second.local_addr().unwrap());
    let dest = gw.local_addr();
    first
        .send_to(&request("INVITE", 1, "z9hG4bK-d1", a, ""), dest)
        .await
        .unwrap();
    let (status, tag) = final_answer(&first).await;
    assert_eq!(status, "SIP/2.0 200 OK");
    assert!(!tag.is_empty());
    first
        .send_to(&request("INVITE", 1001, "z9hG4bK-d2", a, &tag), dest)
        .await
        .unwrap();
    assert_eq!(final_answer(&first).await.0, "SIP/2.0 200 OK");
    // The same "next" CSeq from elsewhere: out of order.
    second
        .send_to(&request("INVITE", 1001, "z9hG4bK-d3", b, &tag), dest)
        .await
        .unwrap();
    assert_eq!(
        final_answer(&second).await.0,
        "SIP/2.0 500 Server Internal Error"
    );
    // A higher one is in order again.
    second
        .send_to(&request("BYE", 1002, "z9hG4bK-d4", b, &tag), dest)
        .await
        .unwrap();
    assert_eq!(final_answer(&second).await.0, "SIP/2.0 200 OK");
    let c = gw.counts();
    assert_eq!((c.cseq_out_of_order, c.reinvites, c.byes), (1, 1, 1));
    let d = gw.cseq_disorders();
    assert_eq!(d.len(), 1);
    assert_eq!(
        d[0].to_string(),
        format!("Call-ID disorder-1: INVITE CSeq 1001 from {b} after INVITE CSeq 1001 from {a}")
    );
}
