//! The forwarding decision for one datagram of a relay session: symmetric-RTP latching, RTP/RTCP
//! demultiplexing (RFC 5761), payload-type routes (renumbering, G.711 translation) applied in
//! place, counters, and the destination on the other leg. Pure: no sockets, no clock (time comes
//! in as milliseconds), no allocation.

use std::net::SocketAddr;
use std::sync::Arc;

use super::secure::LegKeys;
use crate::pt_map::{Applied, PayloadMap};
use crate::rtp::{self, RtcpPacket, RtpPacketMut};
use crate::sdp::Sdp;
use crate::stats::{DirectionCounters, SeqTracker, SessionCounters};

/// The two legs of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    /// The first leg (by convention the caller's side).
    A,
    /// The second leg.
    B,
}

impl Leg {
    /// The other leg.
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Leg::A => 0,
            Leg::B => 1,
        }
    }
}

/// A leg's two local sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Port {
    /// The even port: RTP (and RTCP when multiplexed).
    Rtp,
    /// The odd port: RTCP.
    Rtcp,
}

impl Port {
    pub(crate) fn index(self) -> usize {
        match self {
            Port::Rtp => 0,
            Port::Rtcp => 1,
        }
    }
}

/// Where a leg's peer said (in its SDP) it receives media.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LegPlan {
    /// The `c=` address and `m=` port.
    pub rtp: Option<SocketAddr>,
    /// The `a=rtcp` address (default: the RTP address, port + 1).
    pub rtcp: Option<SocketAddr>,
    /// Whether the leg multiplexes RTCP on the RTP port (`a=rtcp-mux` accepted).
    pub rtcp_mux: bool,
}

impl LegPlan {
    /// Where the peer that wrote `sdp` receives the media of its `m=` section `index`: the
    /// section's (or the session's) `c=` address and the `m=` port; `a=rtcp` with its address
    /// (or the same one); `a=rtcp-mux` as written (an offerer's `a=rtcp-mux` binds only once the
    /// answer accepts it: the caller clears it otherwise). `None` when the section does not exist,
    /// is disabled (port 0), or its address is not an IP address; an unspecified address
    /// (`0.0.0.0`, `::`) gives a plan without destinations (the leg latches).
    pub fn from_sdp(sdp: &Sdp<'_>, index: usize) -> Option<LegPlan> {
        let m = sdp.media.get(index)?;
        if m.port == 0 {
            return None;
        }
        let ip = m.effective_connection(sdp)?.ip()?;
        // 0.0.0.0 / :: (RFC 2543 hold, or ICE's placeholder) names no destination: the leg's
        // packets go wherever its peer's first packet comes from.
        let usable = |a: SocketAddr| (!a.ip().is_unspecified() && a.port() != 0).then_some(a);
        let rtcp = m.rtcp.as_ref().and_then(|r| {
            let rip = r.connection.as_ref().and_then(|c| c.ip()).unwrap_or(ip);
            usable(SocketAddr::new(rip, r.port))
        });
        Some(LegPlan {
            rtp: usable(SocketAddr::new(ip, m.port)),
            rtcp,
            rtcp_mux: m.rtcp_mux,
        })
    }

    /// The RTCP destination the plan implies.
    pub fn rtcp_destination(&self) -> Option<SocketAddr> {
        if self.rtcp_mux {
            return self.rtp;
        }
        self.rtcp.or_else(|| {
            self.rtp
                .and_then(|a| a.port().checked_add(1).map(|p| SocketAddr::new(a.ip(), p)))
        })
    }
}

/// What a session does with its packets; replaced as a whole when offer/answer changes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionPlan {
    /// Leg A's peer.
    pub a: LegPlan,
    /// Leg B's peer.
    pub b: LegPlan,
    /// Payload-type routes for packets from A to B.
    pub a_to_b: PayloadMap,
    /// Payload-type routes for packets from B to A.
    pub b_to_a: PayloadMap,
    /// Leg A's SRTP keys (`None`: plain RTP on that leg).
    pub a_srtp: Option<Arc<LegKeys>>,
    /// Leg B's SRTP keys.
    pub b_srtp: Option<Arc<LegKeys>>,
    /// Leg A must speak SRTP: while it has no keys (its offer/answer is under way, e.g. a
    /// re-anchoring re-INVITE), its packets are dropped both ways rather than relayed in the clear.
    pub a_srtp_required: bool,
    /// The same for leg B.
    pub b_srtp_required: bool,
}

impl SessionPlan {
    pub(crate) fn leg(&self, leg: Leg) -> &LegPlan {
        match leg {
            Leg::A => &self.a,
            Leg::B => &self.b,
        }
    }

    /// Whether a leg must speak SRTP (see [`SessionPlan::a_srtp_required`]).
    pub fn srtp_required(&self, leg: Leg) -> bool {
        match leg {
            Leg::A => self.a_srtp_required,
            Leg::B => self.b_srtp_required,
        }
    }

    /// A leg's SRTP keys, if it is protected.
    pub fn srtp(&self, leg: Leg) -> Option<&Arc<LegKeys>> {
        match leg {
            Leg::A => self.a_srtp.as_ref(),
            Leg::B => self.b_srtp.as_ref(),
        }
    }

    fn map_from(&self, leg: Leg) -> &PayloadMap {
        match leg {
            Leg::A => &self.a_to_b,
            Leg::B => &self.b_to_a,
        }
    }
}

#[derive(Debug, Clone, Default)]
struct LegState {
    /// The source latched on each local port (RTP, RTCP).
    latched: [Option<SocketAddr>; 2],
    seq: SeqTracker,
}

/// Where to send a forwarded datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The leg whose socket sends it.
    pub leg: Leg,
    /// Which of that leg's sockets.
    pub port: Port,
    /// The peer address.
    pub dest: SocketAddr,
}

/// One session's forwarding state (owned by its relay task).
#[derive(Debug, Clone)]
pub struct Forwarder {
    plan: SessionPlan,
    legs: [LegState; 2],
}

fn counters_of(counters: &SessionCounters, leg: Leg) -> &DirectionCounters {
    match leg {
        Leg::A => &counters.from_a,
        Leg::B => &counters.from_b,
    }
}

impl Forwarder {
    /// Nothing latched yet.
    pub fn new(plan: SessionPlan) -> Self {
        Forwarder {
            plan,
            legs: Default::default(),
        }
    }

    /// Takes a new plan. A leg whose peer address changed latches again (the peer moved, e.g.
    /// after a re-INVITE); returns which legs did.
    pub fn update(&mut self, plan: SessionPlan) -> [bool; 2] {
        let mut relatched = [false; 2];
        for leg in [Leg::A, Leg::B] {
            let (old, new) = (self.plan.leg(leg), plan.leg(leg));
            if old.rtp != new.rtp || old.rtcp != new.rtcp || old.rtcp_mux != new.rtcp_mux {
                self.legs[leg.index()].latched = [None; 2];
                relatched[leg.index()] = true;
            }
        }
        self.plan = plan;
        relatched
    }

    /// The sources latched on a leg's (RTP, RTCP) ports.
    pub fn latched(&self, leg: Leg) -> [Option<SocketAddr>; 2] {
        self.legs[leg.index()].latched
    }

    /// Decides what to do with `buf`, which arrived on `leg`'s `port` from `src`: `None` to drop
    /// it (counted), or where to send it (the payload type and payload may have been rewritten in
    /// place).
    pub fn on_datagram(
        &mut self,
        leg: Leg,
        port: Port,
        src: SocketAddr,
        buf: &mut [u8],
        counters: &SessionCounters,
        now_ms: u64,
    ) -> Option<Route> {
        let c = counters_of(counters, leg);
        let state = &mut self.legs[leg.index()];
        match state.latched[port.index()] {
            None => {
                state.latched[port.index()] = Some(src);
                c.record_latch();
            }
            Some(latched) if latched != src => {
                c.record_stray();
                return None;
            }
            Some(_) => {}
        }
        let is_rtcp = port == Port::Rtcp || rtp::is_rtcp(buf);
        if is_rtcp {
            if RtcpPacket::parse(buf).is_err() {
                c.record_malformed();
                return None;
            }
            c.record_rtcp(buf.len(), now_ms);
        } else {
            let len = buf.len();
            let Ok(mut packet) = RtpPacketMut::parse(buf) else {
                c.record_malformed();
                return None;
            };
            let view = packet.view();
            let event = state.seq.observe(view.ssrc(), view.sequence());
            if self.plan.map_from(leg).apply(&mut packet) == Applied::Translated {
                c.record_translated();
            }
            c.record_rtp(len, event, now_ms);
        }
        let out = leg.other();
        let peer = self.plan.leg(out);
        let latched = self.legs[out.index()].latched;
        // Never towards an unspecified address or port 0 (a hand-made plan may hold one).
        let usable = |a: &SocketAddr| !a.ip().is_unspecified() && a.port() != 0;
        let route = if !is_rtcp || peer.rtcp_mux {
            latched[0].or(peer.rtp).filter(usable).map(|dest| Route {
                leg: out,
                port: Port::Rtp,
                dest,
            })
        } else {
            latched[1].or(peer.rtcp_destination()).map(|dest| Route {
                leg: out,
                port: Port::Rtcp,
                dest,
            })
        };
        if route.is_none() {
            c.record_unroutable();
        }
        route
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::g711::Law;
    use crate::pt_map::PtRoute;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn rtp(pt: u8, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt, 0, 0, 0, 0, 0, 160, 0, 0, 0, 9];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn rr() -> Vec<u8> {
        vec![0x80, 201, 0, 1, 0, 0, 0, 9]
    }

    fn plan() -> SessionPlan {
        SessionPlan {
            a: LegPlan {
                rtp: Some(addr("192.0.2.1:4000")),
                ..LegPlan::default()
            },
            b: LegPlan {
                rtp: Some(addr("192.0.2.2:5000")),
                rtcp: Some(addr("192.0.2.2:5999")),
                rtcp_mux: false,
            },
            ..SessionPlan::default()
        }
    }

    #[test]
    fn latches_to_the_first_source_and_drops_strays() {
        let c = SessionCounters::default();
        let mut f = Forwarder::new(plan());
        // Before A's peer sent anything, B's packets go to A's SDP address.
        let r = f.on_datagram(
            Leg::B,
            Port::Rtp,
            addr("192.0.2.2:5000"),
            &mut rtp(0, 1, &[1]),
            &c,
            0,
        );
        assert_eq!(r.unwrap().dest, addr("192.0.2.1:4000"));
        // A's peer is behind NAT: its packets come from elsewhere; the leg latches there.
        let nat = addr("203.0.113.9:31000");
        let r = f
            .on_datagram(Leg::A, Port::Rtp, nat, &mut rtp(0, 1, &[1]), &c, 0)
            .unwrap();
        assert_eq!(
            r,
            Route {
                leg: Leg::B,
                port: Port::Rtp,
                dest: addr("192.0.2.2:5000")
            }
        );
        assert_eq!(f.latched(Leg::A), [Some(nat), None]);
        let r = f.on_datagram(
            Leg::B,
            Port::Rtp,
            addr("192.0.2.2:5000"),
            &mut rtp(0, 2, &[1]),
            &c,
            0,
        );
        assert_eq!(r.unwrap().dest, nat, "B → A follows the latch");
        // Someone else sends to A's port: dropped and counted.
        let stray = addr("198.51.100.66:1234");
        assert_eq!(
            f.on_datagram(Leg::A, Port::Rtp, stray, &mut rtp(0, 2, &[1]), &c, 0),
            None
        );
        assert_eq!(
            f.on_datagram(
                Leg::A,
                Port::Rtp,
                addr("192.0.2.1:4000"),
                &mut rtp(0, 3, &[1]),
                &c,
                0
            ),
            None
        );
        let s = c.from_a.snapshot();
        assert_eq!((s.packets, s.stray, s.latches), (1, 2, 1));
        // A new plan with a new peer address latches again.
        let mut p2 = plan();
        p2.a.rtp = Some(addr("192.0.2.7:4002"));
        assert_eq!(f.update(p2), [true, false]);
        assert!(
            f.on_datagram(Leg::A, Port::Rtp, stray, &mut rtp(0, 4, &[1]), &c, 0)
                .is_some()
        );
        assert_eq!(c.from_a.snapshot().latches, 2);
    }

    #[test]
    fn rtcp_goes_to_the_rtcp_destination_or_the_muxed_port() {
        let c = SessionCounters::default();
        let mut f = Forwarder::new(plan());
        // A's RTCP on A's RTCP port → B's a=rtcp address, out of B's RTCP socket.
        let r = f
            .on_datagram(Leg::A, Port::Rtcp, addr("192.0.2.1:4001"), &mut rr(), &c, 5)
            .unwrap();
        assert_eq!(
            r,
            Route {
                leg: Leg::B,
                port: Port::Rtcp,
                dest: addr("192.0.2.2:5999")
            }
        );
        // A multiplexes: its RTCP arrives on the RTP port and is told apart by type.
        let mut p = plan();
        p.a.rtcp_mux = true;
        f.update(p);
        let r = f
            .on_datagram(Leg::A, Port::Rtp, addr("192.0.2.1:4000"), &mut rr(), &c, 6)
            .unwrap();
        assert_eq!(r.port, Port::Rtcp);
        // B's RTCP to a muxing A goes out of A's RTP socket to A's RTP address.
        let r = f
            .on_datagram(Leg::B, Port::Rtcp, addr("192.0.2.2:5999"), &mut rr(), &c, 7)
            .unwrap();
        assert_eq!(
            r,
            Route {
                leg: Leg::A,
                port: Port::Rtp,
                dest: addr("192.0.2.1:4000")
            }
        );
        assert_eq!(c.from_a.snapshot().rtcp_packets, 2);
        assert_eq!(c.from_a.snapshot().packets, 0, "RTCP is not counted as RTP");
        // Without an a=rtcp line the RTCP destination is RTP port + 1.
        assert_eq!(plan().a.rtcp_destination(), Some(addr("192.0.2.1:4001")));
    }

    #[test]
    fn translates_and_renumbers_only_per_the_plan() {
        let c = SessionCounters::default();
        let mut p = plan();
        p.a_to_b
            .insert(
                8,
                PtRoute {
                    pt: 0,
                    translate: Some((Law::A, Law::Mu)),
                },
            )
            .unwrap();
        p.a_to_b
            .insert(
                101,
                PtRoute {
                    pt: 96,
                    translate: None,
                },
            )
            .unwrap();
        let mut f = Forwarder::new(p);
        let src = addr("192.0.2.1:4000");
        let mut pkt = rtp(8, 1, &[0xD5, 0xAA]);
        f.on_datagram(Leg::A, Port::Rtp, src, &mut pkt, &c, 0)
            .unwrap();
        assert_eq!(pkt, rtp(0, 1, &[0xFE, 0x80]));
        let mut ev = rtp(101, 2, &[5, 0x8a, 1, 0]);
        f.on_datagram(Leg::A, Port::Rtp, src, &mut ev, &c, 0)
            .unwrap();
        assert_eq!(ev, rtp(96, 2, &[5, 0x8a, 1, 0]));
        // The other direction has no routes: untouched.
        let mut back = rtp(0, 1, &[0xFE, 0x80]);
        f.on_datagram(Leg::B, Port::Rtp, addr("192.0.2.2:5000"), &mut back, &c, 0)
            .unwrap();
        assert_eq!(back, rtp(0, 1, &[0xFE, 0x80]));
        assert_eq!(c.from_a.snapshot().translated, 1);
        assert_eq!(c.from_b.snapshot().translated, 0);
    }

    #[test]
    fn malformed_and_unroutable_packets_are_dropped_and_counted() {
        let c = SessionCounters::default();
        let mut f = Forwarder::new(SessionPlan::default());
        let src = addr("192.0.2.1:4000");
        assert_eq!(
            f.on_datagram(Leg::A, Port::Rtp, src, &mut [0x80, 0, 1], &c, 0),
            None
        );
        assert_eq!(
            f.on_datagram(Leg::A, Port::Rtp, src, &mut [0x40; 20], &c, 0),
            None
        );
        assert_eq!(
            f.on_datagram(Leg::A, Port::Rtcp, src, &mut [0x80, 201, 0, 9], &c, 0),
            None
        );
        assert_eq!(
            f.on_datagram(Leg::A, Port::Rtp, src, &mut rtp(0, 1, &[]), &c, 0),
            None
        );
        let s = c.from_a.snapshot();
        assert_eq!(
            (s.malformed, s.unroutable, s.packets, s.stray),
            (3, 1, 1, 0)
        );
    }

    #[test]
    fn a_leg_plan_comes_from_the_peer_sdp() {
        let body = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:4444 IN IP4 192.0.2.9\r\nm=video 0 RTP/AVP 31\r\nm=audio 5000 RTP/AVP 0\r\nc=IN IP6 2001:db8::5\r\na=rtcp-mux\r\nm=audio 6000 RTP/AVP 0\r\nc=IN IP4 gw.example.net\r\na=rtcp:6002\r\n";
        let sdp = Sdp::parse(body).unwrap();
        let p = LegPlan::from_sdp(&sdp, 0).unwrap();
        assert_eq!(p.rtp, Some(addr("192.0.2.1:4000")));
        assert_eq!(p.rtcp, Some(addr("192.0.2.9:4444")));
        assert!(!p.rtcp_mux);
        assert_eq!(LegPlan::from_sdp(&sdp, 1), None, "port 0: disabled");
        let p = LegPlan::from_sdp(&sdp, 2).unwrap();
        assert_eq!(p.rtp, Some(addr("[2001:db8::5]:5000")));
        assert_eq!(p.rtcp_destination(), p.rtp);
        assert_eq!(LegPlan::from_sdp(&sdp, 3), None, "not an IP address");
        assert_eq!(LegPlan::from_sdp(&sdp, 4), None);
        let hold = b"v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtcp:9 IN IP4 0.0.0.0\r\n";
        let hold = Sdp::parse(hold).unwrap();
        assert_eq!(
            LegPlan::from_sdp(&hold, 0),
            Some(LegPlan {
                rtp: None,
                rtcp: None,
                rtcp_mux: false
            })
        );
        // A hand-made plan naming 0.0.0.0 sends nothing there.
        let c = SessionCounters::default();
        let mut p = plan();
        p.b.rtp = Some(addr("0.0.0.0:5000"));
        let mut f = Forwarder::new(p);
        let r = f.on_datagram(
            Leg::A,
            Port::Rtp,
            addr("192.0.2.1:4000"),
            &mut rtp(0, 1, &[1]),
            &c,
            0,
        );
        assert_eq!(r, None);
        assert_eq!(c.from_a.snapshot().unroutable, 1);
    }

    #[test]
    fn counts_loss_per_direction() {
        let c = SessionCounters::default();
        let mut f = Forwarder::new(plan());
        let src = addr("192.0.2.1:4000");
        for seq in [1u16, 2, 4, 5, 3, 3] {
            f.on_datagram(
                Leg::A,
                Port::Rtp,
                src,
                &mut rtp(0, seq, &[0; 160]),
                &c,
                u64::from(seq) * 20,
            );
        }
        let s = c.from_a.snapshot();
        assert_eq!((s.packets, s.lost, s.late, s.duplicates), (6, 0, 1, 1));
        assert_eq!(s.bytes, 6 * 172);
        assert_eq!(s.last_packet_ms, Some(100));
        assert_eq!(c.from_b.snapshot().packets, 0);
    }

    #[test]
    fn random_datagrams_never_panic_and_every_one_is_accounted_for() {
        let c = SessionCounters::default();
        let mut p = plan();
        p.a_to_b
            .insert(
                8,
                PtRoute {
                    pt: 0,
                    translate: Some((Law::A, Law::Mu)),
                },
            )
            .unwrap();
        let mut f = Forwarder::new(p);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let sources = [
            addr("192.0.2.1:4000"),
            addr("192.0.2.1:4001"),
            addr("192.0.2.66:1"),
        ];
        let mut buf = [0u8; 300];
        let total = 20_000;
        for _ in 0..total {
            let len = (next() % 300) as usize;
            for b in buf[..len].iter_mut() {
                *b = next() as u8;
            }
            // Half the datagrams look like RTP/RTCP version 2, so the deeper paths run too.
            if len > 0 && next() % 2 == 0 {
                buf[0] = 0x80 | (buf[0] & 0x3f);
            }
            let port = if next() % 2 == 0 {
                Port::Rtp
            } else {
                Port::Rtcp
            };
            let src = sources[(next() % 3) as usize];
            let _ = f.on_datagram(Leg::A, port, src, &mut buf[..len], &c, 0);
        }
        let s = c.from_a.snapshot();
        assert_eq!(s.packets + s.rtcp_packets + s.stray + s.malformed, total);
        assert!(
            s.packets > 0 && s.rtcp_packets > 0 && s.stray > 0 && s.malformed > 0,
            "{s:?}"
        );
    }
}
