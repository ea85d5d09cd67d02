//! The relay on loopback (127.0.155.x only): two fake peers exchange RTP through a session;
//! latching, stray sources, translation on and off, RTCP with and without rtcp-mux, and the port
//! range (full → typed error, released ports reused).
//!
//! Each test has its own listen address so tests running in parallel never share a port. Every
//! receive has a 5 s guard so a lost packet fails the test instead of hanging it; nothing asserts
//! on timing.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use medpool_media::g711::Law;
use medpool_media::pt_map::{PayloadMap, PtRoute};
use medpool_media::relay::{
    Leg, LegPlan, PortRange, Relay, RelayConfig, RelayError, Session, SessionPlan,
};
use medpool_media::rtp::RtpPacket;
use tokio::net::UdpSocket;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 155, last))
}

fn relay(last: u8, low: u16, high: u16) -> Relay {
    Relay::new(RelayConfig {
        listen: ip(last),
        ports: PortRange::new(low, high).unwrap(),
    })
}

async fn peer(last: u8) -> UdpSocket {
    UdpSocket::bind(SocketAddr::new(ip(last), 0)).await.unwrap()
}

fn rtp(pt: u8, seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A payload that says which packet it belongs to.
fn pattern(seq: u16, dir: u8) -> [u8; 160] {
    let mut b = [0u8; 160];
    for (i, x) in b.iter_mut().enumerate() {
        *x = (seq as u8).wrapping_add(i as u8) ^ dir;
    }
    b
}

async fn recv(sock: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = [0u8; 2048];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("nothing arrived at {}", sock.local_addr().unwrap()))
        .unwrap();
    (buf[..n].to_vec(), from)
}

fn plan(a: SocketAddr, b: SocketAddr) -> SessionPlan {
    SessionPlan {
        a: LegPlan {
            rtp: Some(a),
            ..LegPlan::default()
        },
        b: LegPlan {
            rtp: Some(b),
            ..LegPlan::default()
        },
        ..SessionPlan::default()
    }
}

#[tokio::test]
async fn a_thousand_packets_each_way_arrive_once_and_in_order() {
    let relay = relay(10, 20000, 20019);
    let (pa, pb) = (peer(11).await, peer(12).await);
    let s = relay
        .open(plan(pa.local_addr().unwrap(), pb.local_addr().unwrap()))
        .await
        .unwrap();
    let (to_a, to_b) = (s.local(Leg::A).rtp, s.local(Leg::B).rtp);
    assert_eq!(s.idle_ms(), None, "no packet yet");
    assert_eq!(to_a.ip(), ip(10));
    assert!(to_a.port() % 2 == 0 && s.local(Leg::A).rtcp.port() == to_a.port() + 1);

    // Sequence numbers start near the top so both streams wrap.
    let first: u16 = 65000;
    for batch in 0..100u16 {
        let seqs: Vec<u16> = (0..10)
            .map(|i| first.wrapping_add(batch * 10 + i))
            .collect();
        for &seq in &seqs {
            pa.send_to(&rtp(8, seq, 0xA, &pattern(seq, 0xA)), to_a)
                .await
                .unwrap();
            pb.send_to(&rtp(8, seq, 0xB, &pattern(seq, 0xB)), to_b)
                .await
                .unwrap();
        }
        for &seq in &seqs {
            let (got, from) = recv(&pb).await;
            assert_eq!(from, to_b, "B hears from its own leg's socket");
            let p = RtpPacket::parse(&got).unwrap();
            assert_eq!((p.sequence(), p.ssrc(), p.payload_type()), (seq, 0xA, 8));
            assert_eq!(p.payload(), pattern(seq, 0xA), "A → B payload untouched");
            let (got, from) = recv(&pa).await;
            assert_eq!(from, to_a);
            let p = RtpPacket::parse(&got).unwrap();
            assert_eq!((p.sequence(), p.ssrc()), (seq, 0xB));
            assert_eq!(p.payload(), pattern(seq, 0xB));
        }
    }
    // Nothing extra is queued: the next packet each side gets is a fresh sentinel.
    let last = first.wrapping_add(1000);
    pa.send_to(&rtp(8, last, 0xA, b"end"), to_a).await.unwrap();
    pb.send_to(&rtp(8, last, 0xB, b"end"), to_b).await.unwrap();
    assert_eq!(
        RtpPacket::parse(&recv(&pb).await.0).unwrap().payload(),
        b"end"
    );
    assert_eq!(
        RtpPacket::parse(&recv(&pa).await.0).unwrap().payload(),
        b"end"
    );

    for leg in [Leg::A, Leg::B] {
        let c = s.counters(leg);
        assert_eq!(
            (c.packets, c.lost, c.duplicates, c.late, c.restarts, c.stray),
            (1001, 0, 0, 0, 0, 0),
            "{leg:?}"
        );
        assert_eq!(c.bytes, 1000 * 172 + 15);
        assert_eq!(c.latches, 1);
        assert!(c.last_packet_ms.is_some());
    }
    assert!(s.idle_ms().is_some());
    s.close().await;
    assert_eq!(relay.sessions(), 0);
    assert_eq!(relay.ports().pairs_in_use(), 0);
}

#[tokio::test]
async fn latches_to_the_nat_source_and_drops_a_stray_one() {
    let relay = relay(20, 20000, 20019);
    // A's SDP names an address A never sends from (A is behind NAT).
    let sdp_a: SocketAddr = SocketAddr::new(ip(21), 40000);
    let (pa, pb, stray) = (peer(22).await, peer(23).await, peer(24).await);
    let s = relay
        .open(plan(sdp_a, pb.local_addr().unwrap()))
        .await
        .unwrap();
    let (to_a, to_b) = (s.local(Leg::A).rtp, s.local(Leg::B).rtp);

    pa.send_to(&rtp(0, 1, 1, b"a1"), to_a).await.unwrap();
    assert_eq!(
        RtpPacket::parse(&recv(&pb).await.0).unwrap().payload(),
        b"a1"
    );
    assert_eq!(s.latched(Leg::A)[0], Some(pa.local_addr().unwrap()));
    // B's answer goes to where A's packets come from, not to A's SDP address.
    pb.send_to(&rtp(0, 1, 2, b"b1"), to_b).await.unwrap();
    assert_eq!(
        RtpPacket::parse(&recv(&pa).await.0).unwrap().payload(),
        b"b1"
    );

    // A stray source: dropped (B's next packet is A's, not the stray's) and counted.
    stray.send_to(&rtp(0, 2, 1, b"xx"), to_a).await.unwrap();
    pa.send_to(&rtp(0, 2, 1, b"a2"), to_a).await.unwrap();
    assert_eq!(
        RtpPacket::parse(&recv(&pb).await.0).unwrap().payload(),
        b"a2"
    );
    let c = s.counters(Leg::A);
    assert_eq!((c.stray, c.packets, c.latches), (1, 2, 1));
    assert_eq!(
        s.latched(Leg::A)[0],
        Some(pa.local_addr().unwrap()),
        "the latch holds"
    );

    // A re-INVITE moves A: the leg latches again, to the new source.
    let mut moved = plan(stray.local_addr().unwrap(), pb.local_addr().unwrap());
    moved.b = s.plan().b;
    s.update(moved);
    stray.send_to(&rtp(0, 3, 1, b"s3"), to_a).await.unwrap();
    assert_eq!(
        RtpPacket::parse(&recv(&pb).await.0).unwrap().payload(),
        b"s3"
    );
    assert_eq!(s.latched(Leg::A)[0], Some(stray.local_addr().unwrap()));
    assert_eq!(s.counters(Leg::A).latches, 2);
}

#[tokio::test]
async fn translates_a_law_to_mu_law_only_when_the_plan_says_so() {
    let relay = relay(30, 20000, 20019);
    let (pa, pb) = (peer(31).await, peer(32).await);
    let mut p = plan(pa.local_addr().unwrap(), pb.local_addr().unwrap());
    p.a_to_b
        .insert(
            8,
            PtRoute {
                pt: 0,
                translate: Some((Law::A, Law::Mu)),
            },
        )
        .unwrap();
    p.b_to_a
        .insert(
            0,
            PtRoute {
                pt: 8,
                translate: Some((Law::Mu, Law::A)),
            },
        )
        .unwrap();
    let s = relay.open(p.clone()).await.unwrap();
    let (to_a, to_b) = (s.local(Leg::A).rtp, s.local(Leg::B).rtp);
    let alaw = [0xD5u8, 0x55, 0xAA, 0x2A];
    let ulaw = [0xFEu8, 0x7E, 0x80, 0x00];

    pa.send_to(&rtp(8, 1, 1, &alaw), to_a).await.unwrap();
    let got = recv(&pb).await.0;
    let v = RtpPacket::parse(&got).unwrap();
    assert_eq!((v.payload_type(), v.payload()), (0, &ulaw[..]));
    pb.send_to(&rtp(0, 1, 2, &[0xFF, 0x80]), to_b)
        .await
        .unwrap();
    let got = recv(&pa).await.0;
    let v = RtpPacket::parse(&got).unwrap();
    assert_eq!((v.payload_type(), v.payload()), (8, &[0xD5, 0xAA][..]));
    assert_eq!(s.counters(Leg::A).translated, 1);
    assert_eq!(s.counters(Leg::B).translated, 1);

    // Off: both legs now speak A-law; payloads pass untouched.
    p.a_to_b = PayloadMap::new();
    p.b_to_a = PayloadMap::new();
    s.update(p);
    pa.send_to(&rtp(8, 2, 1, &alaw), to_a).await.unwrap();
    assert_eq!(recv(&pb).await.0, rtp(8, 2, 1, &alaw));
    assert_eq!(s.counters(Leg::A).translated, 1);
}

#[tokio::test]
async fn rtcp_is_relayed_with_and_without_rtcp_mux() {
    let relay = relay(50, 20000, 20019);
    let (pa, pa_rtcp, pb) = (peer(51).await, peer(51).await, peer(52).await);
    let pb_rtcp = peer(52).await;
    let mut p = plan(pa.local_addr().unwrap(), pb.local_addr().unwrap());
    p.a.rtcp = Some(pa_rtcp.local_addr().unwrap());
    p.b.rtcp = Some(pb_rtcp.local_addr().unwrap());
    let s = relay.open(p.clone()).await.unwrap();
    let rr = |ssrc: u8| vec![0x80, 201, 0, 1, 0, 0, 0, ssrc];

    // A's RTCP port → B's RTCP address, from B's RTCP socket.
    pa_rtcp.send_to(&rr(1), s.local(Leg::A).rtcp).await.unwrap();
    let (got, from) = recv(&pb_rtcp).await;
    assert_eq!((got, from), (rr(1), s.local(Leg::B).rtcp));

    // B multiplexes: its RTCP comes on its RTP port and goes to A's RTCP address; A's RTCP goes
    // to B's RTP address.
    p.b.rtcp_mux = true;
    s.update(p);
    pb.send_to(&rr(2), s.local(Leg::B).rtp).await.unwrap();
    assert_eq!(recv(&pa_rtcp).await, (rr(2), s.local(Leg::A).rtcp));
    pa_rtcp.send_to(&rr(3), s.local(Leg::A).rtcp).await.unwrap();
    assert_eq!(recv(&pb).await, (rr(3), s.local(Leg::B).rtp));
    assert_eq!(s.counters(Leg::A).rtcp_packets, 2);
    assert_eq!(s.counters(Leg::B).rtcp_packets, 1);
    assert_eq!(s.counters(Leg::B).packets, 0);
}

#[tokio::test]
async fn a_full_range_refuses_new_sessions_and_released_ports_are_reused() {
    // Four pairs: two sessions.
    let relay = relay(40, 20000, 20007);
    let (pa, pb) = (peer(41).await, peer(42).await);
    let p = plan(pa.local_addr().unwrap(), pb.local_addr().unwrap());
    let s1 = relay.open(p.clone()).await.unwrap();
    let s2 = relay.open(p.clone()).await.unwrap();
    assert_eq!((relay.sessions(), relay.ports().free_pairs()), (2, 0));
    match relay.open(p.clone()).await {
        Err(RelayError::PortsExhausted) => {}
        other => panic!("expected PortsExhausted, got {other:?}"),
    }
    assert_eq!(relay.sessions(), 2, "a refused open leaves nothing behind");

    // The established session still relays while the range is full.
    pa.send_to(&rtp(0, 1, 1, b"full"), s2.local(Leg::A).rtp)
        .await
        .unwrap();
    assert_eq!(
        RtpPacket::parse(&recv(&pb).await.0).unwrap().payload(),
        b"full"
    );

    let ports = |s: &Session| {
        let mut v = vec![s.local(Leg::A).rtp.port(), s.local(Leg::B).rtp.port()];
        v.sort_unstable();
        v
    };
    let freed = ports(&s1);
    s1.close().await;
    assert_eq!((relay.sessions(), relay.ports().free_pairs()), (1, 2));
    // The new session binds the very ports the closed one held (so they were really released).
    let s3 = relay.open(p.clone()).await.unwrap();
    assert_eq!(ports(&s3), freed);
    pa.send_to(&rtp(0, 1, 1, b"again"), s3.local(Leg::A).rtp)
        .await
        .unwrap();
    assert_eq!(
        RtpPacket::parse(&recv(&pb).await.0).unwrap().payload(),
        b"again"
    );

    // Dropping a handle also ends its session; close() of the last one waits for it.
    drop(s2);
    s3.close().await;
    tokio::time::timeout(Duration::from_secs(5), relay.wait_idle())
        .await
        .unwrap();
    assert_eq!(relay.sessions(), 0);
    assert_eq!(relay.ports().pairs_in_use(), 0);
}
