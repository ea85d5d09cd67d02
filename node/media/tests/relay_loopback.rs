//! The relay on loopback (127.0.155.x only): two fake peers exchange RTP through a session;
//! latching, stray sources, translation on and off, RTCP with and without rtcp-mux, and the port
//! range (full → typed error, released ports reused).
//!
//! The tests run on a two-worker runtime, so the relay task and the peers really run in parallel.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
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

fn sdp(ip_last: u8, port: u16, m: &str) -> String {
    format!(
        "v=0\r\no=peer 7 7 IN IP4 127.0.155.{ip_last}\r\ns=-\r\nc=IN IP4 127.0.155.{ip_last}\r\nt=0 0\r\n{}",
        m.replace("PORT", &port.to_string())
    )
}

/// The library end to end: both peers' SDP → a plan (addresses, payload routes) → a session;
/// the offer rewritten towards B points at the relay; audio is translated A-law → µ-law and
/// telephone-events cross from PT 101 on A's side to PT 96 on B's, and back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdp_to_plan_to_relay_with_dtmf_across_a_payload_type_change() {
    use medpool_media::dtmf::{self, TelephoneEvent};
    use medpool_media::sdp::Sdp;

    let relay = relay(70, 20000, 20019);
    let (pa, pb) = (peer(71).await, peer(72).await);
    let offer = sdp(
        71,
        pa.local_addr().unwrap().port(),
        "m=audio PORT RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\n",
    );
    let answer = sdp(
        72,
        pb.local_addr().unwrap().port(),
        "m=audio PORT RTP/AVP 0 96\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\n",
    );
    let (offer, answer) = (
        Sdp::parse(offer.as_bytes()).unwrap(),
        Sdp::parse(answer.as_bytes()).unwrap(),
    );
    let (ma, mb) = (&offer.media[0], &answer.media[0]);
    let plan = SessionPlan {
        a: LegPlan::from_sdp(&offer, 0).unwrap(),
        b: LegPlan::from_sdp(&answer, 0).unwrap(),
        a_to_b: PayloadMap::between(ma, mb),
        b_to_a: PayloadMap::between(mb, ma),
        ..SessionPlan::default()
    };
    assert_eq!(plan.a.rtp, Some(pa.local_addr().unwrap()));
    let s = relay.open(plan).await.unwrap();

    // The offer as B's side sees it: the relay's address and leg B's port, version bumped.
    let mut rw = offer.rewrite();
    rw.bump_origin_version().connection(ip(70));
    rw.media(0).unwrap().port(s.local(Leg::B).rtp.port());
    let towards_b = rw.finish();
    let seen = Sdp::parse(&towards_b).unwrap();
    assert_eq!(seen.connection.as_ref().unwrap().ip(), Some(ip(70)));
    assert_eq!(seen.media[0].port, s.local(Leg::B).rtp.port());
    assert_eq!(seen.origin.version, 8);

    let (to_a, to_b) = (s.local(Leg::A).rtp, s.local(Leg::B).rtp);
    let te_a = dtmf::telephone_event_pt(ma, 8000).unwrap();
    let te_b = dtmf::telephone_event_pt(mb, 8000).unwrap();
    assert_eq!((te_a, te_b), (101, 96));

    // Audio: A-law from A, µ-law at B.
    pa.send_to(&rtp(8, 1, 1, &[0xD5; 160]), to_a).await.unwrap();
    let got = recv(&pb).await.0;
    let v = RtpPacket::parse(&got).unwrap();
    assert_eq!((v.payload_type(), v.payload()), (0, &[0xFE; 160][..]));

    // A '9' from A: start (marker), continuation, three end packets.
    for (i, (end, dur)) in [
        (false, 160u16),
        (false, 320),
        (true, 480),
        (true, 480),
        (true, 480),
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = rtp(te_a, 2 + i as u16, 1, &dtmf::encode(9, end, 10, dur));
        if i == 0 {
            p[1] |= 0x80;
        }
        pa.send_to(&p, to_a).await.unwrap();
        let got = recv(&pb).await.0;
        let v = RtpPacket::parse(&got).unwrap();
        assert_eq!(v.payload_type(), te_b);
        assert_eq!(v.marker(), i == 0);
        let e = TelephoneEvent::parse(v.payload()).unwrap();
        assert_eq!(
            (e.digit(), e.end(), e.volume(), e.duration()),
            (Some('9'), end, 10, dur)
        );
    }
    // And a '#' from B arrives at A as 101.
    pb.send_to(&rtp(te_b, 1, 2, &dtmf::encode(11, true, 5, 800)), to_b)
        .await
        .unwrap();
    let got = recv(&pa).await.0;
    let v = RtpPacket::parse(&got).unwrap();
    assert_eq!(v.payload_type(), te_a);
    assert_eq!(
        TelephoneEvent::parse(v.payload()).unwrap().digit(),
        Some('#')
    );
    assert_eq!(
        s.counters(Leg::A).translated,
        1,
        "events are renumbered, not translated"
    );
}

/// The runtime's totals count every session's packets, those of ended sessions too. (On
/// 127.0.156.20x: written with the B2BUA's media wiring, whose tests use that block.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_totals_keep_what_ended_sessions_relayed() {
    let at = |last: u8| IpAddr::V4(Ipv4Addr::new(127, 0, 156, last));
    let relay = Relay::new(RelayConfig {
        listen: at(200),
        ports: PortRange::new(20000, 20019).unwrap(),
    });
    let pa = UdpSocket::bind(SocketAddr::new(at(201), 0)).await.unwrap();
    let pb = UdpSocket::bind(SocketAddr::new(at(202), 0)).await.unwrap();
    for round in 1..=2u64 {
        let s = relay
            .open(plan(pa.local_addr().unwrap(), pb.local_addr().unwrap()))
            .await
            .unwrap();
        let to_a = s.local(Leg::A).rtp;
        for seq in 0..5u16 {
            pa.send_to(&rtp(0, seq, 7, &[0xFF; 160]), to_a)
                .await
                .unwrap();
            recv(&pb).await;
        }
        let during = relay.totals();
        assert_eq!((during.packets, during.bytes), (5 * round, 5 * round * 172));
        s.close().await;
        let after = relay.totals();
        assert_eq!(after, during, "an ended session's packets stay counted");
    }
    assert_eq!(relay.totals().latches, 2);
}

/// More datagrams queued on a socket than one receive takes (the relay reads in batches): the
/// session's task reads full batches, goes on until its queue is empty, and forwards every
/// datagram once and in order. On a current-thread runtime the task cannot run while the test
/// sends, so the whole burst is queued before the first receive. (127.0.150.20x: the block of
/// the media benchmark's author.)
#[tokio::test]
async fn a_burst_larger_than_a_batch_is_forwarded_whole_and_in_order() {
    let mine = |last| IpAddr::V4(Ipv4Addr::new(127, 0, 150, last));
    let relay = Relay::new(RelayConfig {
        listen: mine(200),
        ports: PortRange::new(20000, 20007).unwrap(),
    });
    let pa = std::net::UdpSocket::bind(SocketAddr::new(mine(201), 0)).unwrap();
    let pb = UdpSocket::bind(SocketAddr::new(mine(202), 0))
        .await
        .unwrap();
    let s = relay
        .open(plan(pa.local_addr().unwrap(), pb.local_addr().unwrap()))
        .await
        .unwrap();
    let to_a = s.local(Leg::A).rtp;
    let burst: u16 = 100;
    for seq in 0..burst {
        pa.send_to(&rtp(8, seq, 0xA, &pattern(seq, 0xA)), to_a)
            .unwrap();
    }
    for seq in 0..burst {
        let (got, _) = recv(&pb).await;
        let p = RtpPacket::parse(&got).unwrap();
        assert_eq!((p.sequence(), p.ssrc()), (seq, 0xA));
        assert_eq!(p.payload(), pattern(seq, 0xA));
    }
    let c = s.counters(Leg::A);
    assert_eq!(
        (c.packets, c.lost, c.duplicates, c.late, c.malformed),
        (u64::from(burst), 0, 0, 0, 0)
    );
    s.close().await;
    assert_eq!(relay.ports().pairs_in_use(), 0);
}
