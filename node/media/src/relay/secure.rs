//! SRTP on a relay leg: the keys the leg's SDP exchange agreed ([`LegKeys`]: the peer's, to
//! unprotect what it sends; the node's own, to protect what the relay sends it), the two
//! contexts built from them (kept, with their roll-over counters and replay windows, for as long
//! as a new plan carries the same keys), and the sequence renumbering of a protected stream.
//!
//! Why renumbering: the SRTP index of a packet the relay protects comes from its 16-bit sequence
//! number, estimated against the highest one sent (RFC 3711 §3.3.1). A plain-RTP source whose
//! sequence jumps by more than half the space on one SSRC (a gateway that restarts its stream
//! after a re-INVITE, a re-anchored call) would be estimated one roll-over off: the relay would
//! refuse to protect it (the index looks already used) and the receiver could not authenticate
//! it. So what goes out protected keeps its own continuous numbering per SSRC: a jump of more
//! than [`JUMP_FORWARD`] forward or [`JUMP_BACKWARD`] back is folded into an offset, so the
//! protected stream just continues. Small gaps and reordering pass unchanged.
//!
//! Per packet nothing allocates: contexts are made when a plan with new keys arrives.

use std::sync::Arc;

use crate::srtp::{CryptoAttribute, ReplayWindow, Srtp, SrtpError};
use crate::stats::DirectionCounters;

/// A forward jump (packets) above which a protected stream is renumbered.
pub const JUMP_FORWARD: u16 = 0x4000;
/// A backward jump (packets) above which a protected stream is renumbered (reordering is far
/// shorter; the replay window is 64).
pub const JUMP_BACKWARD: u16 = 512;
/// SSRCs per leg whose numbering is followed (one for a call's audio, one more after a
/// change); the oldest entry makes room for a new one.
const RENUMBERED_SSRCS: usize = 4;

/// The SRTP keys of one relay leg, from its SDES exchange (RFC 4568). `Debug` shows the suites,
/// never a key.
#[derive(Clone, PartialEq, Eq)]
pub struct LegKeys {
    /// The key the leg's peer put in its SDP: what the peer sends is unprotected with it.
    pub theirs: CryptoAttribute,
    /// The key the node put in its SDP to the peer: what the relay sends the peer is protected
    /// with it.
    pub ours: CryptoAttribute,
}

impl std::fmt::Debug for LegKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegKeys")
            .field("suite", &self.ours.suite)
            .field("mki", &self.ours.key.mki.map(|m| m.len()))
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// Per-SSRC renumbering of a protected stream (see the module).
#[derive(Debug, Clone, Copy, Default)]
struct Renumbered {
    ssrc: u32,
    /// The last sequence number received from the source.
    last_in: u16,
    /// Added to the source's numbers.
    offset: u16,
}

/// One leg's contexts.
pub(crate) struct LegSrtp {
    keys: Arc<LegKeys>,
    rx: Srtp,
    tx: Srtp,
    streams: [Option<Renumbered>; RENUMBERED_SSRCS],
    next_slot: usize,
}

impl std::fmt::Debug for LegSrtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LegSrtp")
            .field("rx", &self.rx)
            .field("tx", &self.tx)
            .finish_non_exhaustive()
    }
}

/// Which of a relay leg's packets a datagram is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Rtp,
    Rtcp,
}

impl LegSrtp {
    pub(crate) fn new(keys: &Arc<LegKeys>) -> LegSrtp {
        LegSrtp {
            keys: keys.clone(),
            rx: Srtp::from_attribute(&keys.theirs, ReplayWindow::W128),
            tx: Srtp::from_attribute(&keys.ours, ReplayWindow::W128),
            streams: [None; RENUMBERED_SSRCS],
            next_slot: 0,
        }
    }

    /// Unprotects the packet in `buf` that arrived from the leg's peer; its plain length, or
    /// `None` when it is dropped (counted on `c`: authentication failures, replays, malformed).
    pub(crate) fn unprotect(
        &mut self,
        kind: Kind,
        buf: &mut [u8],
        c: &DirectionCounters,
    ) -> Option<usize> {
        let r = match kind {
            Kind::Rtp => self.rx.unprotect_rtp(buf),
            Kind::Rtcp => self.rx.unprotect_rtcp(buf),
        };
        match r {
            Ok(n) => Some(n),
            Err(SrtpError::AuthFailed | SrtpError::UnknownMki) => {
                c.record_srtp_auth_failed();
                None
            }
            Err(SrtpError::Replayed | SrtpError::TooOld) => {
                c.record_srtp_replayed();
                None
            }
            Err(_) => {
                c.record_malformed();
                None
            }
        }
    }

    /// Protects the plain packet `buf[..len]` for the leg's peer in place (renumbered first if
    /// its source jumped); the protected length, or the error (the packet is then not sent).
    pub(crate) fn protect(
        &mut self,
        kind: Kind,
        buf: &mut [u8],
        len: usize,
    ) -> Result<usize, SrtpError> {
        match kind {
            Kind::Rtcp => self.tx.protect_rtcp(buf, len),
            Kind::Rtp => {
                self.renumber(buf.get_mut(..len).ok_or(SrtpError::TooShort)?);
                self.tx.protect_rtp(buf, len)
            }
        }
    }

    /// Keeps the sequence numbers of each SSRC sent to the peer continuous across large jumps.
    fn renumber(&mut self, p: &mut [u8]) {
        if p.len() < 12 {
            return;
        }
        let seq = u16::from_be_bytes([p[2], p[3]]);
        let ssrc = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
        let slot = match self
            .streams
            .iter()
            .position(|s| s.is_some_and(|s| s.ssrc == ssrc))
        {
            Some(i) => i,
            None => {
                let i = self.next_slot;
                self.next_slot = (i + 1) % RENUMBERED_SSRCS;
                self.streams[i] = Some(Renumbered {
                    ssrc,
                    last_in: seq,
                    offset: 0,
                });
                i
            }
        };
        let Some(s) = self.streams[slot].as_mut() else {
            return;
        };
        let ahead = seq.wrapping_sub(s.last_in);
        let behind = s.last_in.wrapping_sub(seq);
        if ahead > JUMP_FORWARD && behind > JUMP_BACKWARD {
            // Continue from the last number sent.
            let last_out = s.last_in.wrapping_add(s.offset);
            s.offset = last_out.wrapping_add(1).wrapping_sub(seq);
            s.last_in = seq;
        } else if ahead < 0x8000 {
            s.last_in = seq;
        }
        let out = seq.wrapping_add(s.offset);
        p[2..4].copy_from_slice(&out.to_be_bytes());
    }

    /// Whether these contexts were made from `keys`.
    pub(crate) fn keyed_by(&self, keys: &Arc<LegKeys>) -> bool {
        Arc::ptr_eq(&self.keys, keys) || *self.keys == **keys
    }
}

/// The SRTP contexts of a session's two legs, following its plan.
#[derive(Debug, Default)]
pub(crate) struct Secure {
    legs: [Option<Box<LegSrtp>>; 2],
    /// Legs that must be SRTP (while one has no keys, its packets are dropped both ways).
    required: [bool; 2],
}

impl Secure {
    /// Follows the keys of a new plan: a leg whose keys are unchanged keeps its contexts (and
    /// their ROC and replay state); new keys get new contexts; no keys, none.
    pub(crate) fn update(&mut self, keys: [Option<&Arc<LegKeys>>; 2], required: [bool; 2]) {
        self.required = required;
        for (slot, k) in self.legs.iter_mut().zip(keys) {
            match (slot.as_ref(), k) {
                (_, None) => *slot = None,
                (Some(cur), Some(k)) if cur.keyed_by(k) => {}
                (_, Some(k)) => *slot = Some(Box::new(LegSrtp::new(k))),
            }
        }
    }

    /// Whether leg `index` must be SRTP and has no keys yet.
    pub(crate) fn awaits_keys(&self, index: usize) -> bool {
        self.required.get(index).copied().unwrap_or(false)
            && self.legs.get(index).is_some_and(Option::is_none)
    }

    /// The contexts of leg `index` (0: A, 1: B), if it is protected.
    pub(crate) fn leg(&mut self, index: usize) -> Option<&mut LegSrtp> {
        self.legs.get_mut(index)?.as_deref_mut()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::{Mki, Suite};

    fn rtp(seq: u16, ssrc: u32, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0, 0, 0, 0, 0, 1, 0];
        p[2..4].copy_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn attr(suite: Suite, mki: Option<Mki>) -> CryptoAttribute {
        CryptoAttribute::generate(1, suite, mki).unwrap()
    }

    /// The relay in a test: a packet from leg `from`'s peer unprotected by that leg's context
    /// (if protected) and protected by the other leg's (if protected), as the task does.
    fn relay(
        from: Option<&mut LegSrtp>,
        to: Option<&mut LegSrtp>,
        kind: Kind,
        packet: &[u8],
        c: &DirectionCounters,
    ) -> Option<Vec<u8>> {
        let mut buf = [0u8; 256];
        buf[..packet.len()].copy_from_slice(packet);
        let mut len = packet.len();
        if let Some(f) = from {
            len = f.unprotect(kind, &mut buf[..len], c)?;
        }
        if let Some(t) = to {
            len = t.protect(kind, &mut buf, len).ok()?;
        }
        Some(buf[..len].to_vec())
    }

    /// A peer's own context pair (what a phone does with the node's SDP): it protects with its
    /// key (`theirs` to the node) and unprotects with the node's (`ours`).
    fn peer(keys: &LegKeys) -> (Srtp, Srtp) {
        (
            Srtp::from_attribute(&keys.theirs, ReplayWindow::W64),
            Srtp::from_attribute(&keys.ours, ReplayWindow::W64),
        )
    }

    #[test]
    fn srtp_to_rtp_and_srtp_to_srtp_rekeyed_give_back_the_original_bytes() {
        let c = DirectionCounters::default();
        let a_keys = Arc::new(LegKeys {
            theirs: attr(Suite::AesCm128HmacSha1_80, Some(Mki::new(1, 1).unwrap())),
            ours: attr(Suite::AesCm128HmacSha1_80, Some(Mki::new(1, 1).unwrap())),
        });
        let b_keys = Arc::new(LegKeys {
            theirs: attr(Suite::AesCm128HmacSha1_32, None),
            ours: attr(Suite::AesCm128HmacSha1_32, None),
        });
        let mut a = LegSrtp::new(&a_keys);
        let mut b = LegSrtp::new(&b_keys);
        let (mut a_send, _) = peer(&a_keys);
        let (_, mut b_recv) = peer(&b_keys);
        for seq in [65_530u16, 65_531, 65_535, 0, 1, 2] {
            let original = rtp(seq, 0x1234_5678, &[seq as u8; 160]);
            // A's phone protects; the relay unprotects with A's key: the original (SRTP → RTP).
            let mut wire = [0u8; 256];
            wire[..original.len()].copy_from_slice(&original);
            let n = a_send.protect_rtp(&mut wire, original.len()).unwrap();
            assert_ne!(&wire[..original.len()], &original[..]);
            let plain = relay(Some(&mut a), None, Kind::Rtp, &wire[..n], &c).unwrap();
            assert_eq!(plain, original, "SRTP → RTP, seq {seq}");
            // And onwards to B re-keyed (SRTP → SRTP): B's phone gets the original back.
            let out = relay(None, Some(&mut b), Kind::Rtp, &plain, &c).unwrap();
            assert_eq!(out.len(), original.len() + 4, "a 32-bit tag, no MKI");
            let mut got = out.clone();
            let len = b_recv.unprotect_rtp(&mut got).unwrap();
            assert_eq!(&got[..len], &original[..], "SRTP → SRTP, seq {seq}");
        }
        assert_eq!(b_recv.roc(0x1234_5678), Some(1));
        // RTCP too (SRTCP, RFC 3711 §3.4).
        let rr = vec![0x80, 201, 0, 1, 0x12, 0x34, 0x56, 0x78];
        let out = relay(None, Some(&mut b), Kind::Rtcp, &rr, &c).unwrap();
        let mut got = out.clone();
        let len = b_recv.unprotect_rtcp(&mut got).unwrap();
        assert_eq!(&got[..len], &rr[..]);
        let s = c.snapshot();
        assert_eq!((s.srtp_auth_failed, s.srtp_replayed), (0, 0));
    }

    #[test]
    fn forged_and_replayed_packets_are_dropped_and_counted() {
        let c = DirectionCounters::default();
        let keys = Arc::new(LegKeys {
            theirs: attr(Suite::AesCm128HmacSha1_80, None),
            ours: attr(Suite::AesCm128HmacSha1_80, None),
        });
        let mut leg = LegSrtp::new(&keys);
        let (mut send, _) = peer(&keys);
        let original = rtp(7, 9, &[1; 20]);
        let mut wire = [0u8; 64];
        wire[..original.len()].copy_from_slice(&original);
        let n = send.protect_rtp(&mut wire, original.len()).unwrap();
        assert!(relay(Some(&mut leg), None, Kind::Rtp, &wire[..n], &c).is_some());
        assert!(relay(Some(&mut leg), None, Kind::Rtp, &wire[..n], &c).is_none());
        // A tampered copy of a packet already received is a replay (checked before the tag).
        let mut forged = wire;
        forged[20] ^= 1;
        assert!(relay(Some(&mut leg), None, Kind::Rtp, &forged[..n], &c).is_none());
        let mut p = rtp(8, 9, &[1; 20]);
        p.extend_from_slice(&[0; 10]);
        assert!(relay(Some(&mut leg), None, Kind::Rtp, &p, &c).is_none());
        // Plain RTP on a protected leg fails authentication too.
        assert!(relay(Some(&mut leg), None, Kind::Rtp, &rtp(9, 9, &[0; 40]), &c).is_none());
        let s = c.snapshot();
        assert_eq!((s.srtp_auth_failed, s.srtp_replayed), (2, 2));
    }

    #[test]
    fn a_plain_source_that_jumps_is_renumbered_so_the_peer_keeps_decrypting() {
        let c = DirectionCounters::default();
        let keys = Arc::new(LegKeys {
            theirs: attr(Suite::AesCm128HmacSha1_80, None),
            ours: attr(Suite::AesCm128HmacSha1_80, None),
        });
        let mut leg = LegSrtp::new(&keys);
        let (_, mut recv) = peer(&keys);
        let mut received = Vec::new();
        // 100..110, then the source restarts at 50_000 (a re-anchored gateway), then goes back
        // to 30_000 (another restart), with one reordered packet in between.
        let sent: Vec<u16> = (100..110)
            .chain(50_000..50_005)
            .chain([50_007, 50_006])
            .chain(30_000..30_003)
            .collect();
        for &seq in &sent {
            let out = relay(None, Some(&mut leg), Kind::Rtp, &rtp(seq, 42, &[5; 10]), &c)
                .expect("protected");
            let mut got = out.clone();
            let len = recv.unprotect_rtp(&mut got).expect("the peer decrypts it");
            received.push(u16::from_be_bytes([got[2], got[3]]));
            assert_eq!(&got[12..len], &[5; 10]);
        }
        let expect: Vec<u16> = (100..110)
            .chain(110..115)
            .chain([117, 116])
            .chain(118..121)
            .collect();
        assert_eq!(received, expect);
    }

    #[test]
    fn new_keys_make_new_contexts_and_the_same_keys_keep_them() {
        let keys = Arc::new(LegKeys {
            theirs: attr(Suite::AesCm128HmacSha1_80, None),
            ours: attr(Suite::AesCm128HmacSha1_80, None),
        });
        let mut s = Secure::default();
        s.update([Some(&keys), None], [false; 2]);
        assert!(s.leg(0).is_some() && s.leg(1).is_none());
        let c = DirectionCounters::default();
        relay(None, s.leg(0), Kind::Rtp, &rtp(1, 1, &[0; 4]), &c).unwrap();
        // The same keys (another Arc): the context stays, so index 1 is not sent twice.
        let same = Arc::new((*keys).clone());
        s.update([Some(&same), None], [false; 2]);
        assert!(relay(None, s.leg(0), Kind::Rtp, &rtp(1, 1, &[0; 4]), &c).is_none());
        let fresh = Arc::new(LegKeys {
            theirs: attr(Suite::AesCm128HmacSha1_80, None),
            ours: attr(Suite::AesCm128HmacSha1_80, None),
        });
        s.update([Some(&fresh), Some(&fresh)], [false; 2]);
        assert!(relay(None, s.leg(0), Kind::Rtp, &rtp(1, 1, &[0; 4]), &c).is_some());
        s.update([None, None], [false, true]);
        assert!(s.leg(0).is_none());
        assert!(!s.awaits_keys(0) && s.awaits_keys(1));
        let inline = fresh.ours.key.to_string();
        let b64 = inline.trim_start_matches("inline:");
        assert!(b64.len() >= 40 && !format!("{fresh:?}").contains(b64));
    }
}
