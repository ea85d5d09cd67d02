//! Payload-type maps between the two legs of a relayed call, and applying one to a packet in place.
//!
//! Each leg numbers its dynamic payload types as its own SDP says (telephone-event may be 101 on
//! one side and 96 on the other). [`PayloadMap::between`] builds, for one direction, the route of
//! every payload type the sending leg offered: the same encoding and clock rate on the receiving
//! leg (its number there), or — for G.711 only — the other law with A ↔ µ translation when the
//! receiving leg lacks the sender's law. A payload type the map does not know passes unchanged
//! (a relay that does not transcode forwards what it does not understand).

use crate::g711::{self, Law};
use crate::rtp::RtpPacketMut;
use crate::sdp::Media;

/// A payload type out of range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PtMapError {
    /// Payload types are 0..=127.
    #[error("payload type {0} is out of range")]
    OutOfRange(u8),
}

/// Where packets of one payload type go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PtRoute {
    /// The payload type on the receiving leg.
    pub pt: u8,
    /// G.711 translation of the payload (`from`, `to`), when the legs use different laws.
    pub translate: Option<(Law, Law)>,
}

/// What [`PayloadMap::apply`] did to a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Nothing (unknown payload type, or routed to the same number without translation).
    Unchanged,
    /// The payload type was renumbered.
    Renumbered,
    /// The payload was translated (and the payload type set).
    Translated,
}

/// The routes of one direction, indexed by the sender's payload type. Fixed size, no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadMap {
    routes: [Option<PtRoute>; 128],
}

impl Default for PayloadMap {
    fn default() -> Self {
        PayloadMap {
            routes: [None; 128],
        }
    }
}

impl PayloadMap {
    /// An empty map: every packet passes unchanged.
    pub fn new() -> Self {
        Self::default()
    }

    /// Routes payload type `from`.
    pub fn insert(&mut self, from: u8, route: PtRoute) -> Result<(), PtMapError> {
        for pt in [from, route.pt] {
            if pt > 127 {
                return Err(PtMapError::OutOfRange(pt));
            }
        }
        self.routes[usize::from(from)] = Some(route);
        Ok(())
    }

    /// The route of payload type `pt`.
    pub fn get(&self, pt: u8) -> Option<PtRoute> {
        self.routes.get(usize::from(pt)).copied().flatten()
    }

    /// Whether applying the map never changes a packet.
    pub fn is_identity(&self) -> bool {
        self.routes.iter().enumerate().all(|(from, r)| match r {
            None => true,
            Some(r) => usize::from(r.pt) == from && r.translate.is_none(),
        })
    }

    /// Whether some route translates G.711.
    pub fn translates(&self) -> bool {
        self.routes.iter().flatten().any(|r| r.translate.is_some())
    }

    /// The routes from leg `from` (the payload types its `m=` line offers) to leg `to`: same
    /// encoding and clock rate first; else, for PCMA/PCMU, the other law with translation. Payload
    /// types with no counterpart stay unrouted (they pass unchanged).
    pub fn between(from: &Media<'_>, to: &Media<'_>) -> PayloadMap {
        let mut map = PayloadMap::new();
        let Some(pts) = from.payload_types() else {
            return map;
        };
        for pt in pts {
            let Some(encoding) = from.encoding_of(pt) else {
                continue;
            };
            let clock = from.rtpmap(pt).and_then(|r| r.clock_rate).unwrap_or(8000);
            let route = if let Some(to_pt) = to.payload_type_of(encoding, clock) {
                Some(PtRoute {
                    pt: to_pt,
                    translate: None,
                })
            } else if let Some(law) = Law::from_encoding(encoding) {
                let other = match law {
                    Law::A => Law::Mu,
                    Law::Mu => Law::A,
                };
                let other_name = match other {
                    Law::A => "PCMA",
                    Law::Mu => "PCMU",
                };
                to.payload_type_of(other_name, 8000).map(|to_pt| PtRoute {
                    pt: to_pt,
                    translate: Some((law, other)),
                })
            } else {
                None
            };
            if let Some(route) = route {
                map.routes[usize::from(pt)] = Some(route);
            }
        }
        map
    }

    /// Applies the route of the packet's payload type in place: renumbers it and translates the
    /// payload if the route says so. The marker bit and every other header field are kept.
    pub fn apply(&self, packet: &mut RtpPacketMut<'_>) -> Applied {
        let pt = packet.view().payload_type();
        let Some(route) = self.get(pt) else {
            return Applied::Unchanged;
        };
        if route.pt != pt {
            packet.set_payload_type(route.pt);
        }
        match route.translate {
            Some((from, to)) => {
                g711::translate(from, to, packet.payload_mut());
                Applied::Translated
            }
            None if route.pt != pt => Applied::Renumbered,
            None => Applied::Unchanged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtmf::{self, TelephoneEvent};
    use crate::rtp::RtpPacket;
    use crate::sdp::Sdp;

    fn sdp(m: &str) -> &'static [u8] {
        let body =
            format!("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n{m}");
        Box::leak(body.into_bytes().into_boxed_slice())
    }

    fn rtp(pt: u8, marker: bool, seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, pt | if marker { 0x80 } else { 0 }];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0x10, 0, 0xAB, 0xCD, 0xEF, 0x01]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn telephone_events_cross_a_payload_type_change_both_ways() {
        let a = sdp(
            "m=audio 1 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n",
        );
        let b = sdp(
            "m=audio 2 RTP/AVP 8 96\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\n",
        );
        let (a, b) = (Sdp::parse(a).unwrap(), Sdp::parse(b).unwrap());
        let (ma, mb) = (&a.media[0], &b.media[0]);
        assert_eq!(dtmf::telephone_event_pt(ma, 8000), Some(101));
        assert_eq!(dtmf::telephone_event_pt(mb, 8000), Some(96));
        let a_to_b = PayloadMap::between(ma, mb);
        let b_to_a = PayloadMap::between(mb, ma);
        assert!(!a_to_b.translates());

        // A digit '5' (start with marker, update, three end packets) from A arrives at B as PT 96.
        let events = [
            (true, dtmf::encode(5, false, 10, 160)),
            (false, dtmf::encode(5, false, 10, 320)),
            (false, dtmf::encode(5, true, 10, 480)),
            (false, dtmf::encode(5, true, 10, 480)),
            (false, dtmf::encode(5, true, 10, 480)),
        ];
        for (i, (marker, ev)) in events.iter().enumerate() {
            let mut p = rtp(101, *marker, 1000 + i as u16, ev);
            let mut m = RtpPacketMut::parse(&mut p).unwrap();
            assert_eq!(a_to_b.apply(&mut m), Applied::Renumbered);
            let v = RtpPacket::parse(&p).unwrap();
            assert_eq!(v.payload_type(), 96);
            assert_eq!(v.marker(), *marker);
            assert_eq!(v.sequence(), 1000 + i as u16);
            let e = TelephoneEvent::parse(v.payload()).unwrap();
            assert_eq!(
                (e.digit(), e.end(), e.volume(), e.duration()),
                (Some('5'), i >= 2, 10, [160, 320, 480, 480, 480][i])
            );

            // And back: B's 96 reaches A as 101.
            let mut back = p.clone();
            let mut m = RtpPacketMut::parse(&mut back).unwrap();
            assert_eq!(b_to_a.apply(&mut m), Applied::Renumbered);
            assert_eq!(RtpPacket::parse(&back).unwrap().payload_type(), 101);
            assert_eq!(RtpPacket::parse(&back).unwrap().payload(), ev);
        }
        // Audio keeps its number, untouched.
        let mut p = rtp(8, false, 1, &[0xD5; 160]);
        assert_eq!(
            a_to_b.apply(&mut RtpPacketMut::parse(&mut p).unwrap()),
            Applied::Unchanged
        );
        assert_eq!(p, rtp(8, false, 1, &[0xD5; 160]));
    }

    #[test]
    fn pcma_to_pcmu_translates_only_when_the_other_leg_lacks_the_law() {
        let a = Sdp::parse(sdp(
            "m=audio 1 RTP/AVP 8 101\r\na=rtpmap:101 telephone-event/8000\r\n",
        ))
        .unwrap();
        let b = Sdp::parse(sdp(
            "m=audio 2 RTP/AVP 0 100\r\na=rtpmap:100 telephone-event/8000\r\n",
        ))
        .unwrap();
        let a_to_b = PayloadMap::between(&a.media[0], &b.media[0]);
        assert_eq!(
            a_to_b.get(8),
            Some(PtRoute {
                pt: 0,
                translate: Some((Law::A, Law::Mu))
            })
        );
        assert_eq!(
            a_to_b.get(101),
            Some(PtRoute {
                pt: 100,
                translate: None
            })
        );
        assert!(a_to_b.translates() && !a_to_b.is_identity());
        let mut p = rtp(8, true, 7, &[0xD5, 0x55, 0xAA, 0x2A]);
        assert_eq!(
            a_to_b.apply(&mut RtpPacketMut::parse(&mut p).unwrap()),
            Applied::Translated
        );
        let v = RtpPacket::parse(&p).unwrap();
        assert_eq!((v.payload_type(), v.marker()), (0, true));
        assert_eq!(v.payload(), &[0xFE, 0x7E, 0x80, 0x00]);

        // Both laws on the other side: no translation.
        let both = Sdp::parse(sdp("m=audio 2 RTP/AVP 0 8\r\n")).unwrap();
        let map = PayloadMap::between(&a.media[0], &both.media[0]);
        assert_eq!(
            map.get(8),
            Some(PtRoute {
                pt: 8,
                translate: None
            })
        );
        assert!(!map.translates());
        // A codec the other side lacks and cannot be translated stays unrouted.
        let g729 = Sdp::parse(sdp("m=audio 1 RTP/AVP 18\r\n")).unwrap();
        assert_eq!(
            PayloadMap::between(&g729.media[0], &b.media[0]).get(18),
            None
        );
    }

    #[test]
    fn identity_and_bounds() {
        let mut m = PayloadMap::new();
        assert!(m.is_identity());
        m.insert(
            0,
            PtRoute {
                pt: 0,
                translate: None,
            },
        )
        .unwrap();
        assert!(m.is_identity());
        assert_eq!(
            m.insert(
                128,
                PtRoute {
                    pt: 0,
                    translate: None
                }
            ),
            Err(PtMapError::OutOfRange(128))
        );
        assert_eq!(
            m.insert(
                1,
                PtRoute {
                    pt: 200,
                    translate: None
                }
            ),
            Err(PtMapError::OutOfRange(200))
        );
        assert_eq!(m.get(200), None);
    }
}
