//! A caller's media in SDP: each call's offer and answer (its RTP leg's port, or a made-up one
//! without a leg), the SRTP keys it offers and answers with, and its leg following the far side's
//! answer or stopping when the call ends.

use std::net::SocketAddr;

use bytes::Bytes;
use medpool_media::sdp::Direction;
use medpool_media::srtp::{CryptoAttribute, Mki, Suite};

use super::state::{Inner, lock};
use crate::rtp::{Negotiated, RtpLeg, combine, read_crypto, read_sdp};
use crate::sdp;

impl Inner {
    /// payload types): its RTP leg's port, or a made-up one without a leg.
    pub(super) fn offer(&self, index: usize, version: u32) -> Bytes {
        self.media_sdp(index, version, None, b"")
    }

    /// The SRTP key call `index`'s leg offers: its own, or a fresh one (with SRTP configured).
    fn offer_key(&self, leg: &RtpLeg) -> Option<CryptoAttribute> {
        if !self.cfg.srtp {
            return None;
        }
        if let Some(k) = leg.local_key() {
            return Some(k);
        }
        let mki = self.cfg.srtp_mki.then(|| Mki::new(1, 1).ok()).flatten();
        let k = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80, mki).ok();
        leg.set_local_key(k.clone());
        k
    }

    /// The SRTP key call `index`'s leg answers an offer carrying `offered` with (its own when
    /// it fits, else a fresh one); the leg speaks SRTP from the answer on.
    fn answer_key(
        &self,
        leg: &RtpLeg,
        offered: Option<&CryptoAttribute>,
    ) -> Option<CryptoAttribute> {
        let offered = offered.filter(|_| self.cfg.srtp);
        let ours = offered.and_then(|o| {
            leg.local_key()
                .filter(|k| {
                    k.tag == o.tag
                        && k.suite == o.suite
                        && k.key.mki.map(|m| m.len()) == o.key.mki.map(|m| m.len())
                })
                .or_else(|| medpool_media::srtp::answer(o).ok())
        });
        leg.set_local_key(ours.clone());
        leg.set_remote_key(offered);
        ours
    }

    pub(super) fn media_sdp(
        &self,
        index: usize,
        version: u32,
        answering: Option<(SocketAddr, Direction, Vec<u8>)>,
        offer: &[u8],
    ) -> Bytes {
        let session = self.cfg.seed ^ index as u64;
        let ip = self.local.ip();
        let (leg, want) = {
            let calls = lock(&self.calls);
            match calls.list.get(index) {
                Some(c) => (c.rtp.clone(), c.want),
                None => (None, (Direction::SendRecv, 0)),
            }
        };
        let Some(leg) = leg else {
            let port = 10_000u16.wrapping_add((index as u16).wrapping_mul(2));
            return sdp::audio(session, version, ip, port);
        };
        let port = leg.local_addr().port();
        match answering {
            Some((remote, theirs, pts)) => {
                let pt = pts
                    .iter()
                    .copied()
                    .find(|p| *p == want.1)
                    .or(pts.first().copied())
                    .unwrap_or(0);
                let direction = combine(want.0, theirs);
                leg.negotiate(Negotiated {
                    remote: Some(remote),
                    direction,
                    payload_type: pt,
                });
                let (offered, savp) = read_crypto(offer);
                let key = self.answer_key(&leg, offered.as_ref());
                let body = sdp::audio_with(session, version, ip, port, pt, direction);
                sdp::secured(body, key.as_ref(), savp)
            }
            None => {
                let key = self.offer_key(&leg);
                let body = sdp::audio_with(session, version, ip, port, want.1, want.0);
                sdp::secured(body, key.as_ref(), true)
            }
        }
    }

    /// The far side answered our offer in call `index`: its leg follows the answer.
    pub(super) fn media_answered(&self, index: usize, answer: &[u8]) {
        let (leg, want) = {
            let calls = lock(&self.calls);
            match calls.list.get(index) {
                Some(c) => (c.rtp.clone(), c.want),
                None => return,
            }
        };
        if let (Some(leg), Some((remote, theirs, pts))) = (leg, read_sdp(answer)) {
            leg.set_remote_key(read_crypto(answer).0.as_ref());
            leg.negotiate(Negotiated {
                remote: Some(remote),
                direction: combine(want.0, theirs),
                payload_type: pts.first().copied().unwrap_or(want.1),
            });
        }
    }

    /// Stops call `index`'s RTP (the call ended); its counts stay readable.
    pub(super) fn media_ended(&self, index: usize) {
        let leg = lock(&self.calls)
            .list
            .get(index)
            .and_then(|c| c.rtp.clone());
        if let Some(leg) = leg {
            leg.stop();
        }
    }
}
