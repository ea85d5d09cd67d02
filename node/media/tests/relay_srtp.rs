//! The relay's SRTP path on loopback (127.0.162.x only): a session whose leg A speaks SRTP and
//! leg B plain RTP, then (a new plan, as after a re-INVITE) SRTP on both legs with keys of their
//! own. Each fake peer protects with its key and unprotects with the node's, as a phone does;
//! what arrives decrypted is byte for byte what the other peer sent. A forged and a replayed
//! packet are dropped and counted. Every receive has a 5 s guard; nothing asserts on timing.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use medpool_media::relay::{Leg, LegKeys, LegPlan, PortRange, Relay, RelayConfig, SessionPlan};
use medpool_media::srtp::{CryptoAttribute, Mki, ReplayWindow, Srtp, Suite};
use tokio::net::UdpSocket;

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 162, last))
}

async fn peer(last: u8) -> UdpSocket {
    UdpSocket::bind(SocketAddr::new(ip(last), 0)).await.unwrap()
}

fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

async fn recv(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = [0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("nothing arrived at {}", sock.local_addr().unwrap()))
        .unwrap();
    buf[..n].to_vec()
}

/// A leg's keys and the peer's contexts (it protects with `theirs`, unprotects with `ours`).
fn keys(suite: Suite, mki: Option<Mki>) -> (Arc<LegKeys>, Srtp, Srtp) {
    let k = LegKeys {
        theirs: CryptoAttribute::generate(1, suite, mki).unwrap(),
        ours: CryptoAttribute::generate(1, suite, mki).unwrap(),
    };
    let send = Srtp::from_attribute(&k.theirs, ReplayWindow::W64);
    let recv = Srtp::from_attribute(&k.ours, ReplayWindow::W64);
    (Arc::new(k), send, recv)
}

fn protect(ctx: &mut Srtp, packet: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; packet.len() + 32];
    buf[..packet.len()].copy_from_slice(packet);
    let n = ctx.protect_rtp(&mut buf, packet.len()).unwrap();
    buf.truncate(n);
    buf
}

fn unprotect(ctx: &mut Srtp, mut packet: Vec<u8>) -> Vec<u8> {
    let n = ctx.unprotect_rtp(&mut packet).unwrap();
    packet.truncate(n);
    packet
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_to_rtp_then_srtp_to_srtp_rekeyed_both_ways() {
    let relay = Relay::new(RelayConfig {
        listen: ip(10),
        ports: PortRange::new(24000, 24019).unwrap(),
    });
    let (pa, pb) = (peer(11).await, peer(12).await);
    let (a_keys, mut a_send, mut a_recv) =
        keys(Suite::AesCm128HmacSha1_80, Some(Mki::new(1, 1).unwrap()));
    let mut plan = SessionPlan {
        a: LegPlan {
            rtp: Some(pa.local_addr().unwrap()),
            ..LegPlan::default()
        },
        b: LegPlan {
            rtp: Some(pb.local_addr().unwrap()),
            ..LegPlan::default()
        },
        a_srtp: Some(a_keys.clone()),
        ..SessionPlan::default()
    };
    let s = relay.open(plan.clone()).await.unwrap();
    let (to_a, to_b) = (s.local(Leg::A).rtp, s.local(Leg::B).rtp);

    // SRTP ↔ RTP.
    for seq in 0..50u16 {
        let from_a = rtp(seq, 0xA, &[seq as u8; 160]);
        pa.send_to(&protect(&mut a_send, &from_a), to_a)
            .await
            .unwrap();
        assert_eq!(
            recv(&pb).await,
            from_a,
            "A's SRTP reaches B as the original RTP"
        );
        let from_b = rtp(seq, 0xB, &[!(seq as u8); 160]);
        pb.send_to(&from_b, to_b).await.unwrap();
        let got = recv(&pa).await;
        assert_eq!(got.len(), from_b.len() + 1 + 10, "MKI and an 80-bit tag");
        assert_eq!(
            unprotect(&mut a_recv, got),
            from_b,
            "B's RTP reaches A as SRTP"
        );
    }
    // A forged packet and a replay from A's peer: dropped, counted, nothing reaches B.
    let mut forged = protect(&mut a_send, &rtp(50, 0xA, &[1; 160]));
    let replay = forged.clone();
    forged[30] ^= 0x40;
    pa.send_to(&forged, to_a).await.unwrap();
    pa.send_to(&replay, to_a).await.unwrap();
    pa.send_to(&replay, to_a).await.unwrap();
    assert_eq!(
        recv(&pb).await,
        rtp(50, 0xA, &[1; 160]),
        "only the genuine one"
    );

    // SRTP ↔ SRTP, leg B with its own keys and suite (re-keyed per leg); A's contexts carry on.
    let (b_keys, mut b_send, mut b_recv) = keys(Suite::AesCm128HmacSha1_32, None);
    plan.b_srtp = Some(b_keys);
    s.update(plan);
    for seq in 51..100u16 {
        let from_a = rtp(seq, 0xA, &[seq as u8; 160]);
        pa.send_to(&protect(&mut a_send, &from_a), to_a)
            .await
            .unwrap();
        let got = recv(&pb).await;
        assert_ne!(got[12..172], from_a[12..], "encrypted towards B");
        assert_eq!(unprotect(&mut b_recv, got), from_a);
        let from_b = rtp(seq, 0xB, &[!(seq as u8); 160]);
        pb.send_to(&protect(&mut b_send, &from_b), to_b)
            .await
            .unwrap();
        assert_eq!(unprotect(&mut a_recv, recv(&pa).await), from_b);
    }
    let c = s.counters(Leg::A);
    assert_eq!((c.srtp_auth_failed, c.srtp_replayed), (1, 1));
    assert_eq!(c.packets, 100);
    let c = s.counters(Leg::B);
    assert_eq!((c.srtp_auth_failed, c.srtp_replayed, c.packets), (0, 0, 99));
    s.close().await;
    assert_eq!(relay.totals().srtp_auth_failed, 1);
}

/// A leg that must be SRTP gets nothing in the clear while its keys are being negotiated, and
/// nothing it sends passes: the first packet either peer receives is one sent after the keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_leg_without_keys_passes_nothing_in_the_clear() {
    let relay = Relay::new(RelayConfig {
        listen: ip(13),
        ports: PortRange::new(24020, 24039).unwrap(),
    });
    let (pa, pb) = (peer(14).await, peer(15).await);
    let mut plan = SessionPlan {
        a: LegPlan {
            rtp: Some(pa.local_addr().unwrap()),
            ..LegPlan::default()
        },
        b: LegPlan {
            rtp: Some(pb.local_addr().unwrap()),
            ..LegPlan::default()
        },
        a_srtp_required: true,
        ..SessionPlan::default()
    };
    let s = relay.open(plan.clone()).await.unwrap();
    let (to_a, to_b) = (s.local(Leg::A).rtp, s.local(Leg::B).rtp);
    // B's plain RTP towards A (no keys yet): dropped; A's packets (which it would protect with a
    // key the node does not know yet): dropped.
    pb.send_to(&rtp(1, 0xB, b"clear"), to_b).await.unwrap();
    pa.send_to(&rtp(1, 0xA, b"early"), to_a).await.unwrap();
    // Both were handled (and dropped) under the plan without keys before the keys come.
    let dropped =
        || s.counters(Leg::A).srtp_auth_failed == 1 && s.counters(Leg::B).send_failed == 1;
    for _ in 0..500 {
        if dropped() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        dropped(),
        "{:?} {:?}",
        s.counters(Leg::A),
        s.counters(Leg::B)
    );
    // The keys arrive (the answer): from now on both ways work.
    let (a_keys, mut a_send, mut a_recv) = keys(Suite::AesCm128HmacSha1_80, None);
    plan.a_srtp = Some(a_keys);
    s.update(plan);
    let late = rtp(2, 0xA, b"after the keys");
    pa.send_to(&protect(&mut a_send, &late), to_a)
        .await
        .unwrap();
    assert_eq!(
        recv(&pb).await,
        late,
        "B's first packet is the one sent after the keys"
    );
    let back = rtp(2, 0xB, b"protected");
    pb.send_to(&back, to_b).await.unwrap();
    assert_eq!(
        unprotect(&mut a_recv, recv(&pa).await),
        back,
        "A's first packet is protected"
    );
    assert_eq!(s.counters(Leg::A).srtp_auth_failed, 1);
    assert_eq!(s.counters(Leg::B).send_failed, 1);
}
