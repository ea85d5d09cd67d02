//! SRTP per trunk (`encryption`), as pure offer/answer state: which key a peer's SDP carries and
//! whether its trunk's policy accepts it, the profile and `a=crypto` lines the node puts in the
//! SDP it sends a peer (fresh keys from the OS's secure random source, one per leg), and the keys
//! in force on each leg, which the relay session's plan carries ([`LegKeys`]).
//!
//! Keys live in the call's memory only. What a call records for failover (its [`MediaPlan`])
//! holds each peer's SDP with its `a=crypto` lines taken out ([`without_keys`]); a node that
//! takes a call over has no key, and its re-anchoring re-INVITEs offer fresh ones.
//!
//! Policies (RFC 4568 SDES over RFC 3264 offer/answer):
//! - `required`: offers towards the trunk are `RTP/SAVP` with a line per suite; an offer or an
//!   answer from it without an acceptable line is refused.
//! - `optional`: offers are `RTP/AVP` with the same lines (best-effort SRTP, as SBCs do); the
//!   peer's answer decides; an offer from it with or without a key is taken.
//! - `none`: plain RTP; an `RTP/SAVP` offer from the trunk is refused (it cannot be answered
//!   with plain RTP).
//!
//! [`MediaPlan`]: crate::media::MediaPlan

use std::sync::Arc;

use medpool_media::relay::LegKeys;
use medpool_media::sdp::{RewriteError, Sdp};
use medpool_media::srtp::{self, CryptoAttribute, Mki, Suite};

use crate::config::Encryption;

/// The suites the node offers, in its order of preference.
pub const SUITES: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

/// Why a peer's SDP is refused under its trunk's `encryption` (the call or request gets 488).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CryptoRefusal {
    /// `encryption = "required"` and the SDP has no acceptable `a=crypto` line.
    #[error("the trunk requires SRTP and the SDP carries no acceptable key")]
    Required,
    /// `encryption = "none"` and the offer is `RTP/SAVP`.
    #[error("the trunk does not do SRTP and the offer is RTP/SAVP")]
    NotAllowed,
    /// `RTP/SAVP` offered with no key this node supports.
    #[error("RTP/SAVP offered with no supported key")]
    NoSupportedKey,
    /// The OS's secure random source failed.
    #[error("no key could be made")]
    Random,
}

/// The relayed audio section of `body`: its profile and `a=crypto` values.
fn relayed(body: &[u8]) -> Option<(bool, Option<CryptoAttribute>)> {
    let sdp = Sdp::parse(body).ok()?;
    let m = sdp
        .media
        .iter()
        .find(|m| m.kind.eq_ignore_ascii_case("audio") && m.is_rtp() && m.port != 0)?;
    let savp = m.proto.eq_ignore_ascii_case("RTP/SAVP");
    Some((savp, srtp::choose_offer(m.crypto.iter().copied())))
}

/// The profile an SDP the node sends uses.
fn proto(savp: bool) -> &'static str {
    if savp { "RTP/SAVP" } else { "RTP/AVP" }
}

/// One leg's SRTP offer/answer state.
#[derive(Debug, Default, Clone)]
pub struct SideSrtp {
    /// The lines the node offered this leg's peer, until its next offer.
    offered: Vec<CryptoAttribute>,
    /// The key this leg's peer offered and the node accepted, and whether its offer was
    /// `RTP/SAVP`, until the node answers it.
    accepted: Option<(Option<CryptoAttribute>, bool)>,
    /// The keys in force on this leg.
    keys: Option<Arc<LegKeys>>,
    /// The MKI length this leg's peer used (the node's offers to it carry one too).
    mki_len: Option<usize>,
}

impl SideSrtp {
    /// The keys in force (for the relay's plan).
    pub fn keys(&self) -> Option<&Arc<LegKeys>> {
        self.keys.as_ref()
    }

    /// The MKI length this leg's peer uses, if any (kept in the call's record: not a secret, and
    /// a node that rebuilds the call re-keys the leg with an MKI of the same length, as Lync and
    /// Skype for Business expect).
    pub fn mki_len(&self) -> Option<u8> {
        self.mki_len.and_then(|l| u8::try_from(l).ok())
    }

    /// Forgets every key and offer (a call rebuilt elsewhere re-keys from scratch); the MKI
    /// length the peer uses is kept.
    pub fn forget_keys(&mut self) {
        *self = Self {
            mki_len: self.mki_len,
            ..Self::default()
        };
    }

    /// A rebuilt call's leg: the MKI length its record kept ([`SideSrtp::mki_len`]).
    pub fn remember_mki_len(&mut self, len: Option<u8>) {
        self.mki_len = len.map(usize::from);
    }

    /// What `calls show` says of the leg's protection: the suite and whether packets carry an
    /// MKI; `None` for plain RTP. Never a key.
    pub fn protection(&self) -> Option<(Suite, bool)> {
        self.keys
            .as_ref()
            .map(|k| (k.ours.suite, k.ours.key.mki.is_some()))
    }

    /// This leg's peer offers `body`: its key is accepted (or not) under `policy`; the node
    /// answers it with [`SideSrtp::answer`].
    pub fn on_offer(&mut self, policy: Encryption, body: &[u8]) -> Result<(), CryptoRefusal> {
        let (savp, key) = relayed(body).unwrap_or((false, None));
        let key = match policy {
            Encryption::None if savp => return Err(CryptoRefusal::NotAllowed),
            Encryption::None => None,
            Encryption::Required => Some(key.ok_or(CryptoRefusal::Required)?),
            Encryption::Optional if savp => Some(key.ok_or(CryptoRefusal::NoSupportedKey)?),
            Encryption::Optional => key,
        };
        if let Some(k) = &key {
            self.mki_len = k.key.mki.map(Mki::len);
        }
        self.accepted = Some((key, savp));
        Ok(())
    }

    /// The node's answer to this leg's accepted offer: the profile of the offer and the node's
    /// line (a fresh key, or the one in force when the peer kept its key; an MKI of the same
    /// length when it used one). The keys take effect.
    pub fn answer(&mut self) -> Result<(&'static str, Vec<CryptoAttribute>), CryptoRefusal> {
        let Some((key, savp)) = self.accepted.take() else {
            // No offer seen (nothing to answer): as things are.
            let lines = self.keys.iter().map(|k| k.ours.clone()).collect();
            return Ok((proto(self.keys.is_some()), lines));
        };
        let Some(theirs) = key else {
            self.keys = None;
            return Ok((proto(savp), Vec::new()));
        };
        let ours = match &self.keys {
            Some(k)
                if k.ours.tag == theirs.tag
                    && k.ours.suite == theirs.suite
                    && k.ours.key.mki.map(Mki::len) == theirs.key.mki.map(Mki::len) =>
            {
                k.ours.clone()
            }
            _ => srtp::answer(&theirs).map_err(|_| CryptoRefusal::Random)?,
        };
        self.keys = Some(Arc::new(LegKeys {
            theirs,
            ours: ours.clone(),
        }));
        Ok((proto(savp), vec![ours]))
    }

    /// The node's offer to this leg's peer under `policy`: its profile and lines (the key in
    /// force when there is one, else a fresh line per suite; an MKI when the peer used one).
    pub fn offer(
        &mut self,
        policy: Encryption,
    ) -> Result<(&'static str, Vec<CryptoAttribute>), CryptoRefusal> {
        let savp = policy == Encryption::Required;
        if policy == Encryption::None {
            self.offered.clear();
            return Ok((proto(false), Vec::new()));
        }
        self.offered = match &self.keys {
            Some(k) => vec![k.ours.clone()],
            None => {
                let mki = match self.mki_len {
                    Some(len) => Some(Mki::new(1, len as u8).map_err(|_| CryptoRefusal::Random)?),
                    None => None,
                };
                srtp::offer(&SUITES, mki).map_err(|_| CryptoRefusal::Random)?
            }
        };
        Ok((proto(savp), self.offered.clone()))
    }

    /// This leg's peer answers the node's offer with `body`: the line it took (same tag and suite
    /// as one offered) and its key take effect; none, under `required`, is refused (the keys are
    /// then dropped: nothing is relayed to or from that leg in the clear by mistake… nor at all).
    pub fn on_answer(&mut self, policy: Encryption, body: &[u8]) -> Result<(), CryptoRefusal> {
        // The offer stays until the next one: an early answer (18x) and the final one (2xx) may
        // both answer it.
        let theirs = relayed(body).and_then(|(_, k)| k);
        let chosen = theirs.and_then(|t| {
            self.offered
                .iter()
                .find(|o| o.tag == t.tag && o.suite == t.suite)
                .map(|o| (t, o.clone()))
        });
        match chosen {
            Some((theirs, ours)) => {
                self.mki_len = theirs.key.mki.map(Mki::len);
                let same = self
                    .keys
                    .as_ref()
                    .is_some_and(|k| k.theirs == theirs && k.ours == ours);
                if !same {
                    self.keys = Some(Arc::new(LegKeys { theirs, ours }));
                }
                Ok(())
            }
            None => {
                self.keys = None;
                if policy == Encryption::Required {
                    Err(CryptoRefusal::Required)
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// Both legs' [`SideSrtp`] of one call (A, B), made at the first offer or answer the relay
/// rewrites: a call whose media is not relayed (most, with `media = "bypass"`) keeps one empty
/// pointer instead of two legs' state, for its whole life.
#[derive(Debug, Default)]
pub struct CallSrtp(Option<Box<[SideSrtp; 2]>>);

/// What a leg without SRTP state reads.
static NO_SRTP: SideSrtp = SideSrtp {
    offered: Vec::new(),
    accepted: None,
    keys: None,
    mki_len: None,
};

impl CallSrtp {
    /// Leg `i`'s state (0: A, 1: B), empty until the call made it.
    pub fn side(&self, i: usize) -> &SideSrtp {
        self.0.as_ref().map_or(&NO_SRTP, |s| &s[i])
    }

    /// Leg `i`'s state to change: both legs' are made the first time.
    pub fn side_mut(&mut self, i: usize) -> &mut SideSrtp {
        &mut self.0.get_or_insert_with(Box::default)[i]
    }

    /// Leg `i` starts over (a new gateway): nothing is made when the call has no state yet.
    pub fn reset(&mut self, i: usize) {
        if let Some(s) = &mut self.0 {
            s[i] = SideSrtp::default();
        }
    }

    /// Every key and offer of both legs forgotten, the MKI lengths kept
    /// ([`SideSrtp::forget_keys`]).
    pub fn forget_keys(&mut self) {
        for side in self.0.iter_mut().flat_map(|s| s.iter_mut()) {
            side.forget_keys();
        }
    }

    /// A rebuilt call's MKI lengths (A, B) from its record; state is made only for a length.
    pub fn remember_mki_lens(&mut self, a: Option<u8>, b: Option<u8>) {
        if a.is_some() || b.is_some() {
            self.side_mut(0).remember_mki_len(a);
            self.side_mut(1).remember_mki_len(b);
        }
    }
}

/// `body` with the relayed section's profile set to `proto` and its `a=crypto` lines replaced by
/// `lines` (removed when empty).
pub fn secured(
    body: Vec<u8>,
    proto: &str,
    lines: &[CryptoAttribute],
) -> Result<Vec<u8>, RewriteError> {
    let Ok(sdp) = Sdp::parse(&body) else {
        return Ok(body);
    };
    let Some(i) = sdp
        .media
        .iter()
        .position(|m| m.kind.eq_ignore_ascii_case("audio") && m.is_rtp() && m.port != 0)
    else {
        return Ok(body);
    };
    let values: Vec<String> = lines.iter().map(ToString::to_string).collect();
    let values: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    let mut rw = sdp.rewrite();
    let m = &sdp.media[i];
    let mut mr = rw.media(i)?;
    if !m.proto.eq_ignore_ascii_case(proto) {
        mr.proto(proto)?;
    }
    if !(values.is_empty() && m.crypto.is_empty()) {
        mr.crypto(&values)?;
    }
    Ok(rw.finish())
}

/// `body` without any `a=crypto` line (what a call keeps of a peer's SDP for its record: never
/// a key). A body that is not SDP loses every line that starts with `a=crypto`.
pub fn without_keys(body: &[u8]) -> Vec<u8> {
    if let Ok(sdp) = Sdp::parse(body)
        && sdp.media.iter().any(|m| !m.crypto.is_empty())
    {
        let mut rw = sdp.rewrite();
        for (i, m) in sdp.media.iter().enumerate() {
            if !m.crypto.is_empty()
                && let Ok(mut mr) = rw.media(i)
            {
                let _ = mr.crypto(&[]);
            }
        }
        return rw.finish();
    }
    if !body
        .windows(9)
        .any(|w| w.eq_ignore_ascii_case(b"a=crypto:"))
    {
        return body.to_vec();
    }
    let mut out = Vec::with_capacity(body.len());
    for line in body.split_inclusive(|&b| b == b'\n') {
        if !line
            .get(..9)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"a=crypto:"))
        {
            out.extend_from_slice(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn sdp(proto: &str, crypto: &[String]) -> Vec<u8> {
        let mut s = format!(
            "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\nm=audio 4000 {proto} 0\r\na=rtpmap:0 PCMU/8000\r\n"
        );
        for c in crypto {
            s.push_str(&format!("a=crypto:{c}\r\n"));
        }
        s.into_bytes()
    }

    fn line(tag: u32, suite: Suite, mki: Option<Mki>) -> String {
        CryptoAttribute::generate(tag, suite, mki)
            .unwrap()
            .to_string()
    }

    /// The offer/answer matrix on the offering side: (policy, the peer's answer) → keys / 488.
    #[test]
    fn our_offer_and_the_peers_answer_under_each_policy() {
        for policy in [Encryption::Required, Encryption::Optional, Encryption::None] {
            let mut s = SideSrtp::default();
            let (proto, lines) = s.offer(policy).unwrap();
            match policy {
                Encryption::Required => assert_eq!((proto, lines.len()), ("RTP/SAVP", 2)),
                Encryption::Optional => assert_eq!((proto, lines.len()), ("RTP/AVP", 2)),
                Encryption::None => assert_eq!((proto, lines.len()), ("RTP/AVP", 0)),
            }
            // The peer answers SRTP on the second line (tag 2, the 32-bit tag suite).
            if policy != Encryption::None {
                let mut s2 = s.clone();
                let answer = sdp("RTP/SAVP", &[line(2, Suite::AesCm128HmacSha1_32, None)]);
                s2.on_answer(policy, &answer).unwrap();
                let keys = s2.keys().unwrap();
                assert_eq!(keys.ours, lines[1]);
                assert_eq!(s2.protection(), Some((Suite::AesCm128HmacSha1_32, false)));
            }
            // A line that was never offered (tag 7) or none at all: no SRTP; 488 when required.
            for answer in [
                sdp("RTP/SAVP", &[line(7, Suite::AesCm128HmacSha1_80, None)]),
                sdp("RTP/AVP", &[]),
            ] {
                let mut s2 = s.clone();
                s2.offer(policy).unwrap();
                let r = s2.on_answer(policy, &answer);
                if policy == Encryption::Required {
                    assert_eq!(r, Err(CryptoRefusal::Required));
                } else {
                    assert_eq!(r, Ok(()));
                }
                assert!(s2.keys().is_none());
            }
        }
    }

    /// The answering side: (policy, the peer's offer) → our answer / 488.
    #[test]
    fn the_peers_offer_and_our_answer_under_each_policy() {
        let mki = Some(Mki::new(5, 2).unwrap());
        let savp = sdp("RTP/SAVP", &[line(1, Suite::AesCm128HmacSha1_80, mki)]);
        let avp_crypto = sdp("RTP/AVP", &[line(3, Suite::AesCm128HmacSha1_32, None)]);
        let plain = sdp("RTP/AVP", &[]);
        let unsupported = sdp("RTP/SAVP", &["1 AEAD_AES_256_GCM inline:AAAA".to_owned()]);
        type Case<'a> = (
            Encryption,
            &'a [u8],
            Result<(&'a str, Option<Suite>), CryptoRefusal>,
        );
        let cases: Vec<Case> = vec![
            (
                Encryption::Required,
                &savp,
                Ok(("RTP/SAVP", Some(Suite::AesCm128HmacSha1_80))),
            ),
            (
                Encryption::Required,
                &avp_crypto,
                Ok(("RTP/AVP", Some(Suite::AesCm128HmacSha1_32))),
            ),
            (Encryption::Required, &plain, Err(CryptoRefusal::Required)),
            (
                Encryption::Required,
                &unsupported,
                Err(CryptoRefusal::Required),
            ),
            (
                Encryption::Optional,
                &savp,
                Ok(("RTP/SAVP", Some(Suite::AesCm128HmacSha1_80))),
            ),
            (
                Encryption::Optional,
                &avp_crypto,
                Ok(("RTP/AVP", Some(Suite::AesCm128HmacSha1_32))),
            ),
            (Encryption::Optional, &plain, Ok(("RTP/AVP", None))),
            (
                Encryption::Optional,
                &unsupported,
                Err(CryptoRefusal::NoSupportedKey),
            ),
            (Encryption::None, &savp, Err(CryptoRefusal::NotAllowed)),
            (Encryption::None, &avp_crypto, Ok(("RTP/AVP", None))),
            (Encryption::None, &plain, Ok(("RTP/AVP", None))),
        ];
        for (policy, offer, want) in cases {
            let mut s = SideSrtp::default();
            let got = s.on_offer(policy, offer).and_then(|()| {
                let (proto, lines) = s.answer()?;
                Ok((proto, lines.first().map(|l| l.suite)))
            });
            assert_eq!(got, want, "{policy:?} {}", String::from_utf8_lossy(offer));
            if let Ok((_, Some(_))) = got {
                let k = s.keys().unwrap();
                assert_ne!(k.ours.key, k.theirs.key, "a fresh key of our own");
                assert_eq!(k.ours.tag, k.theirs.tag);
                assert_eq!(
                    k.ours.key.mki.map(Mki::len),
                    k.theirs.key.mki.map(Mki::len),
                    "an MKI of the same length as the peer's"
                );
            }
        }
        // A peer that used an MKI gets one in the node's next offer (a re-INVITE) too.
        let mut s = SideSrtp::default();
        s.on_offer(Encryption::Required, &savp).unwrap();
        s.answer().unwrap();
        s.keys = None;
        let (_, lines) = s.offer(Encryption::Required).unwrap();
        assert!(lines.iter().all(|l| l.key.mki.map(Mki::len) == Some(2)));
    }

    #[test]
    fn a_body_is_secured_and_its_keys_are_taken_out_for_the_record() {
        let lines = srtp::offer(&SUITES, None).unwrap();
        let body = secured(sdp("RTP/AVP", &[]), "RTP/SAVP", &lines).unwrap();
        let text = String::from_utf8(body.clone()).unwrap();
        assert!(text.contains("m=audio 4000 RTP/SAVP 0\r\n"), "{text}");
        assert_eq!(text.matches("a=crypto:").count(), 2, "{text}");
        let plain = secured(body.clone(), "RTP/AVP", &[]).unwrap();
        assert_eq!(plain, sdp("RTP/AVP", &[]));
        let stripped = String::from_utf8(without_keys(&body)).unwrap();
        assert!(
            !stripped.contains("crypto") && !stripped.contains("inline:"),
            "{stripped}"
        );
        assert!(
            stripped.contains("RTP/SAVP"),
            "the profile stays: {stripped}"
        );
        let odd = b"not sdp\na=crypto:1 X inline:secret\nkeep\n";
        assert_eq!(without_keys(odd), b"not sdp\nkeep\n");
    }

    #[test]
    fn a_call_makes_srtp_state_only_when_a_leg_needs_it() {
        let mut call = CallSrtp::default();
        // Reads, a new gateway and a failover's forgetting make nothing.
        assert!(call.side(0).keys().is_none() && call.side(1).mki_len().is_none());
        call.reset(1);
        call.forget_keys();
        call.remember_mki_lens(None, None);
        assert!(call.0.is_none());
        // A rebuilt call whose peer used an MKI keeps its length.
        call.remember_mki_lens(None, Some(4));
        assert_eq!(call.side(1).mki_len(), Some(4));
        assert_eq!(call.side(0).mki_len(), None);
        // A leg's offer and answer: the keys are in force on that leg only.
        let mut call = CallSrtp::default();
        let theirs = srtp::offer(&SUITES, None).unwrap();
        let savp = sdp("RTP/SAVP", &[theirs[0].to_string()]);
        call.side_mut(0)
            .on_offer(Encryption::Required, &savp)
            .unwrap();
        call.side_mut(0).answer().unwrap();
        assert!(call.side(0).keys().is_some());
        assert!(call.side(1).keys().is_none());
        call.forget_keys();
        assert!(call.side(0).keys().is_none());
    }
}
