//! The media of a call, as pure functions of SDP bodies and trunk settings: whether a call's media
//! is relayed or bypasses the node, how an offer or an answer is rewritten for the other leg (its
//! addresses pointing at the node's relay endpoint, the codecs the receiving trunk accepts, G.711
//! translation when the legs share no law), and the relay session's plan from both peers' SDP.
//! Also the handle of the node's relay runtime ([`MediaRuntime`]), which the calls open their
//! sessions with; this module opens nothing itself.
//!
//! What the rewriting touches: the `c=` lines, the relayed section's `m=` port (and `a=rtcp`),
//! the `m=` port of other sections (set to 0: the relay carries one audio stream), and — only when
//! the receiving trunk's `codecs` demand it — the payload list and the `a=rtpmap`/`a=fmtp` lines
//! of the payload types it drops or translates. Every other line goes on byte for byte, the `o=`
//! version included (the node's rewriting is the same for every SDP of a call, so the peer's own
//! versioning stays right) — until a new owner re-anchors the call after a failover: from then
//! on the versions each peer gets are raised by the plan's bump for that direction
//! ([`MediaPlan::numbered`]), so they stay above the re-anchoring offer's.
//!
//! The call keeps a [`MediaPlan`] (serde-friendly: the last SDP each peer sent, as received),
//! from which the relay's [`SessionPlan`] is rebuilt at every offer or answer. The dialog record
//! carries it for media failover: a new owner opens its own endpoints and sends both peers an
//! offer rebuilt from it ([`MediaPlan::reanchor_offer`]).

use std::net::{IpAddr, SocketAddr};

use medpool_media::pt_map::PayloadMap;
use medpool_media::relay::{Leg, LegPlan, Relay, SessionPlan};
use medpool_media::sdp::{Direction, Media, RewriteError, Sdp, SdpError};
use serde::{Deserialize, Serialize};

use crate::config::{MediaMode, Trunk};

/// How long a relayed call's session keeps relaying on a node that handed the call's shard over
/// alive (a drain, a rebalance): time for the new owner to rebuild the call and re-INVITE both
/// peers onto its own relay (make before break). Its ports are held that much longer.
pub const MEDIA_HANDOVER: std::time::Duration = std::time::Duration::from_secs(10);

/// The node's relay runtime: where sessions are opened and what address SDP advertises.
#[derive(Debug, Clone)]
pub struct MediaRuntime {
    /// Opens relay sessions (port range, listen address).
    pub relay: Relay,
    /// The address put in rewritten SDP (`--media-advertise`).
    pub advertise: IpAddr,
}

/// Why an SDP body cannot be relayed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    /// The body is not valid SDP.
    #[error("SDP: {0}")]
    Sdp(#[from] SdpError),
    /// No RTP audio section with a port: nothing the relay can carry (T.38 and video are not
    /// relayed yet).
    #[error("no RTP audio stream to relay")]
    NoAudio,
    /// The offer has none of the codecs the receiving trunk accepts, and no G.711 law to translate.
    #[error("no codec of the offer is accepted by the trunk")]
    NoCommonCodec,
    /// The rewrite could not be applied.
    #[error("SDP rewrite: {0}")]
    Rewrite(#[from] RewriteError),
    /// The SDP's keys do not meet the trunk's `encryption`.
    #[error("SRTP: {0}")]
    Crypto(#[from] crate::srtp::CryptoRefusal),
}

/// The relay endpoint a rewritten SDP points at: the advertised address and the leg's ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// The address peers send to (`--media-advertise`).
    pub ip: IpAddr,
    /// The RTP port.
    pub rtp: u16,
    /// The RTCP port.
    pub rtcp: u16,
}

/// What a call remembers of its media, and what its dialog record carries for media failover:
/// from it a new owner rebuilds both peers' view of the session (addresses, codecs, payload-type
/// maps, hold, translation) and the relay's plan.
///
/// In a record (JSON) each SDP is a string: about 250–400 bytes per peer for a typical audio
/// offer, plus the two version bumps (omitted while 0).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaPlan {
    /// The last SDP leg A's peer sent (offer or answer), as received.
    #[serde(default, with = "sdp_text")]
    pub a_sdp: Option<Vec<u8>>,
    /// The last SDP leg B's peer sent, as received.
    #[serde(default, with = "sdp_text")]
    pub b_sdp: Option<Vec<u8>>,
    /// How far above leg B's peer's own `o=` version the SDP the node sends leg A's peer is
    /// numbered: 0 until a new owner re-anchors the call, one more at every re-anchoring (the
    /// re-anchoring offer is new SDP to the peer: RFC 3264 §8 wants a higher version, and every
    /// later SDP must stay above it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub a_bump: u64,
    /// The same towards leg B's peer (above leg A's peer's own versions).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub b_bump: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// An SDP body in a record: a string when it is UTF-8 (SDP is text: the record stays small and
/// readable), else its bytes.
mod sdp_text {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(untagged)]
    enum Body {
        Text(String),
        Bytes(Vec<u8>),
    }

    pub(super) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v.as_deref().map(std::str::from_utf8) {
            None => s.serialize_none(),
            Some(Ok(t)) => s.serialize_some(t),
            Some(Err(_)) => s.serialize_some(v),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Ok(Option::<Body>::deserialize(d)?.map(|b| match b {
            Body::Text(t) => t.into_bytes(),
            Body::Bytes(b) => b,
        }))
    }
}

impl MediaPlan {
    /// The relay session's plan: each peer's addresses from its last SDP, payload routes between
    /// them (renumbering, G.711 translation), RTCP multiplexed only when both sides said so.
    pub fn session_plan(&self) -> SessionPlan {
        fn parse(b: &Option<Vec<u8>>) -> Option<Sdp<'_>> {
            b.as_deref().and_then(|b| Sdp::parse(b).ok())
        }
        let (a, b) = (parse(&self.a_sdp), parse(&self.b_sdp));
        let leg = |s: &Option<Sdp<'_>>| {
            s.as_ref()
                .and_then(|s| relayed_index(s).and_then(|i| LegPlan::from_sdp(s, i)))
                .unwrap_or_default()
        };
        let (mut la, mut lb) = (leg(&a), leg(&b));
        let mux = la.rtcp_mux && lb.rtcp_mux;
        la.rtcp_mux = mux;
        lb.rtcp_mux = mux;
        let media = |s: &Option<Sdp<'_>>| -> Option<usize> { s.as_ref().and_then(relayed_index) };
        let (a_to_b, b_to_a) = match (&a, &b, media(&a), media(&b)) {
            (Some(a), Some(b), Some(ia), Some(ib)) => (
                PayloadMap::between(&a.media[ia], &b.media[ib]),
                PayloadMap::between(&b.media[ib], &a.media[ia]),
            ),
            _ => (PayloadMap::new(), PayloadMap::new()),
        };
        SessionPlan {
            a: la,
            b: lb,
            a_to_b,
            b_to_a,
            ..SessionPlan::default()
        }
    }

    /// Whether the plan has anything to re-anchor: both peers' SDP.
    pub fn complete(&self) -> bool {
        self.a_sdp.is_some() && self.b_sdp.is_some()
    }

    /// The SDP the node sends `to`'s peer, numbered above everything it sent that peer before:
    /// `body` (already rewritten) with its `o=` version raised by that direction's bump.
    pub fn numbered(&self, to: Leg, body: Vec<u8>) -> Vec<u8> {
        let bump = match to {
            Leg::A => self.a_bump,
            Leg::B => self.b_bump,
        };
        if bump == 0 {
            return body;
        }
        let Ok(sdp) = Sdp::parse(&body) else {
            return body;
        };
        let mut rw = sdp.rewrite();
        rw.origin_version(sdp.origin.version.saturating_add(bump));
        rw.finish()
    }

    /// The offer with which a new owner re-anchors `to`'s peer on the node's endpoint `at`: what
    /// that peer last heard from the call — the other peer's last SDP, with its codecs, payload
    /// types, direction (a hold stays a hold) and G.711 law as that peer knows them — pointing at
    /// `at`, its `o=` version one above the last one that peer saw (the bumps are raised by
    /// [`MediaPlan::reanchored`] first). Should the other peer's SDP not map onto that peer's
    /// (a payload list it cannot rename), it is offered as a new offer towards a trunk accepting
    /// `accepted` codecs instead.
    pub fn reanchor_offer(
        &self,
        to: Leg,
        at: Endpoint,
        accepted: &[String],
    ) -> Result<Vec<u8>, MediaError> {
        let (theirs, other) = match to {
            Leg::A => (&self.a_sdp, &self.b_sdp),
            Leg::B => (&self.b_sdp, &self.a_sdp),
        };
        let (Some(theirs), Some(other)) = (theirs, other) else {
            return Err(MediaError::NoAudio);
        };
        let body = match answer_towards(other, theirs, at) {
            Ok(b) => b,
            Err(_) => offer_towards(other, at, accepted)?.body,
        };
        Ok(self.numbered(to, body))
    }

    /// A new owner re-anchors the call: every SDP it sends either peer from here on is numbered
    /// one above what the old owner sent.
    pub fn reanchored(&mut self) {
        self.a_bump = self.a_bump.saturating_add(1);
        self.b_bump = self.b_bump.saturating_add(1);
    }

    /// Whether the call is on hold: a peer's last SDP makes its stream one-way or inactive, or
    /// points it at `0.0.0.0` (RFC 2543 hold). A held call is exempt from the media timeout.
    pub fn on_hold(&self) -> bool {
        [&self.a_sdp, &self.b_sdp]
            .into_iter()
            .flatten()
            .any(|b| Sdp::parse(b).is_ok_and(|s| held(&s)))
    }
}

fn held(s: &Sdp<'_>) -> bool {
    let Some(i) = relayed_index(s) else {
        return false;
    };
    let m = &s.media[i];
    m.effective_direction(s) != Direction::SendRecv
        || m.effective_connection(s)
            .and_then(|c| c.ip())
            .is_some_and(|ip| ip.is_unspecified())
}

/// The `m=` section the relay carries: the first RTP audio section with a port.
fn relayed_index(s: &Sdp<'_>) -> Option<usize> {
    s.media
        .iter()
        .position(|m| m.kind.eq_ignore_ascii_case("audio") && m.is_rtp() && m.port != 0)
}

/// The G.711 laws and their static payload types.
const LAWS: [(&str, u8); 2] = [("PCMU", 0), ("PCMA", 8)];

fn other_law(name: &str) -> Option<(&'static str, u8)> {
    match LAWS
        .iter()
        .position(|(n, _)| n.eq_ignore_ascii_case(name))?
    {
        0 => Some(LAWS[1]),
        _ => Some(LAWS[0]),
    }
}

fn is_event(m: &Media<'_>, pt: u8) -> bool {
    m.encoding_of(pt)
        .is_some_and(|e| e.eq_ignore_ascii_case("telephone-event"))
}

/// The payload list an offer gets towards a trunk.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Codecs {
    /// The offer's list as it is (no `codecs` on the trunk, or every offered codec accepted).
    Unchanged,
    /// These payload types, in this order (the trunk's preference; telephone-event kept).
    Keep(Vec<u8>),
    /// G.711 translation: offer law `to` (its static payload type) in place of the offered `from`
    /// payload type; telephone-event kept.
    Translate {
        from: u8,
        to: (&'static str, u8),
        events: Vec<u8>,
    },
}

/// Which codecs an offer's section `m` gets towards a trunk accepting `accepted` (in order; empty
/// = anything): those it offers, in the trunk's order; if it offers none and a G.711 law the trunk
/// accepts is the other law of one it offers, that law with translation.
fn choose(m: &Media<'_>, accepted: &[String]) -> Result<Codecs, MediaError> {
    if accepted.is_empty() {
        return Ok(Codecs::Unchanged);
    }
    let offered = m.payload_types().ok_or(MediaError::NoAudio)?;
    let events: Vec<u8> = offered
        .iter()
        .copied()
        .filter(|&pt| is_event(m, pt))
        .collect();
    let mut keep = Vec::new();
    for name in accepted {
        for &pt in &offered {
            if !keep.contains(&pt)
                && m.encoding_of(pt)
                    .is_some_and(|e| e.eq_ignore_ascii_case(name))
            {
                keep.push(pt);
            }
        }
    }
    if keep.iter().any(|&pt| !is_event(m, pt)) {
        for pt in events {
            if !keep.contains(&pt) {
                keep.push(pt);
            }
        }
        if keep == offered {
            return Ok(Codecs::Unchanged);
        }
        return Ok(Codecs::Keep(keep));
    }
    for name in accepted {
        let Some((offered_law, _)) = other_law(name) else {
            continue;
        };
        let Some(from) = offered.iter().copied().find(|&pt| {
            m.encoding_of(pt)
                .is_some_and(|e| e.eq_ignore_ascii_case(offered_law))
        }) else {
            continue;
        };
        let Some(to) = LAWS
            .iter()
            .copied()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        else {
            continue;
        };
        return Ok(Codecs::Translate { from, to, events });
    }
    Err(MediaError::NoCommonCodec)
}

/// Whether a call between `inbound` and `gateway` with the caller's `offer` (none: a late offer)
/// bypasses the node: both trunks say `bypass` and the offer needs no translation towards the
/// gateway. An offer that is not valid SDP bypasses too (nothing to translate it with).
pub fn bypasses(inbound: &Trunk, gateway: &Trunk, offer: Option<&[u8]>) -> bool {
    if inbound.media != MediaMode::Bypass || gateway.media != MediaMode::Bypass {
        return false;
    }
    // Legs that need different protection (SRTP on one, RTP on the other) meet in the relay.
    if inbound.encryption != gateway.encryption {
        return false;
    }
    let Some(offer) = offer else {
        return true;
    };
    let Ok(sdp) = Sdp::parse(offer) else {
        return true;
    };
    !relayed_index(&sdp).is_some_and(|i| {
        matches!(
            choose(&sdp.media[i], &gateway.codecs),
            Ok(Codecs::Translate { .. })
        )
    })
}

/// An offer rewritten for the other leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The new body.
    pub body: Vec<u8>,
    /// Whether the relay translates G.711 for it.
    pub translates: bool,
}

/// Points every `c=` at the endpoint, the relayed section's port (and `a=rtcp`) at its ports, and
/// disables the other sections.
fn point_at(
    sdp: &Sdp<'_>,
    rw: &mut medpool_media::sdp::Rewrite<'_, '_>,
    relayed: usize,
    at: Endpoint,
) -> Result<(), MediaError> {
    // A peer that points its stream at 0.0.0.0 (RFC 2543 hold) asks not to be sent media: the
    // other side is told the same.
    let unspecified = sdp.media[relayed]
        .effective_connection(sdp)
        .and_then(|c| c.ip())
        .is_some_and(|ip| ip.is_unspecified());
    if !unspecified {
        rw.connection(at.ip);
    }
    for (i, m) in sdp.media.iter().enumerate() {
        if i == relayed {
            let mut mr = rw.media(i)?;
            mr.port(at.rtp);
            if let Some(r) = &m.rtcp {
                mr.rtcp(Some((at.rtcp, r.connection.as_ref().map(|_| at.ip))));
            }
        } else if m.port != 0 {
            rw.media(i)?.port(0);
        }
    }
    Ok(())
}

/// The offer a peer sent, rewritten for the other leg's peer, whose trunk accepts `accepted`
/// codecs (empty: any): it points at the node's endpoint `at` on that leg.
pub fn offer_towards(
    offer: &[u8],
    at: Endpoint,
    accepted: &[String],
) -> Result<Rewritten, MediaError> {
    let sdp = Sdp::parse(offer)?;
    let relayed = relayed_index(&sdp).ok_or(MediaError::NoAudio)?;
    let choice = choose(&sdp.media[relayed], accepted)?;
    let mut rw = sdp.rewrite();
    point_at(&sdp, &mut rw, relayed, at)?;
    let translates = matches!(choice, Codecs::Translate { .. });
    match choice {
        Codecs::Unchanged => {}
        Codecs::Keep(pts) => {
            let map: Vec<(u8, u8)> = pts.iter().map(|&pt| (pt, pt)).collect();
            rw.media(relayed)?.payloads(&map)?;
        }
        Codecs::Translate {
            from,
            to: (name, to),
            events,
        } => {
            let mut map = vec![(from, to)];
            map.extend(events.iter().map(|&pt| (pt, pt)));
            let mut mr = rw.media(relayed)?;
            mr.payloads(&map)?;
            mr.retype(from, to, &format!("{name}/8000"))?;
        }
    }
    Ok(Rewritten {
        body: rw.finish(),
        translates,
    })
}

/// The answer a peer sent, rewritten for the offerer: it points at the node's endpoint `at` on
/// the offerer's leg, and a G.711 law the offerer did not offer (the relay translates it) is named
/// as the offerer's law again.
pub fn answer_towards(answer: &[u8], offer: &[u8], at: Endpoint) -> Result<Vec<u8>, MediaError> {
    let sdp = Sdp::parse(answer)?;
    let Some(relayed) = relayed_index(&sdp) else {
        // The answerer refused the stream (port 0): nothing to point anywhere but the addresses.
        let mut rw = sdp.rewrite();
        rw.connection(at.ip);
        return Ok(rw.finish());
    };
    let mut rw = sdp.rewrite();
    point_at(&sdp, &mut rw, relayed, at)?;
    let original = Sdp::parse(offer).ok();
    let offered = original
        .as_ref()
        .and_then(|o| relayed_index(o).map(|i| &o.media[i]));
    if let Some(offered) = offered {
        let m = &sdp.media[relayed];
        let pts = m.payload_types().unwrap_or_default();
        let mut map = Vec::with_capacity(pts.len());
        let mut retype = None;
        for &pt in &pts {
            let enc = m.encoding_of(pt).unwrap_or_default();
            let direct = offered.payload_types().unwrap_or_default().contains(&pt)
                && offered
                    .encoding_of(pt)
                    .is_some_and(|e| e.eq_ignore_ascii_case(enc));
            match other_law(enc).filter(|_| !direct) {
                Some((law, _)) => match offered.payload_type_of(law, 8000) {
                    Some(back) if retype.is_none() => {
                        map.push((pt, back));
                        retype = Some((pt, back, law));
                    }
                    _ => map.push((pt, pt)),
                },
                None => map.push((pt, pt)),
            }
        }
        if let Some((pt, back, law)) = retype {
            let mut mr = rw.media(relayed)?;
            mr.payloads(&map)?;
            mr.retype(pt, back, &format!("{law}/8000"))?;
        }
    }
    Ok(rw.finish())
}

/// Packets, bytes and sequence-gap losses of one direction of a leg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MediaCounts {
    /// RTP packets.
    pub packets: u64,
    /// RTP bytes (headers included).
    pub bytes: u64,
    /// Packets lost (sequence gaps).
    pub lost: u64,
}

/// One leg's media as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegMedia {
    /// The node's endpoint for this leg, as SDP advertises it.
    pub local: SocketAddr,
    /// Where the leg's peer sends from (once latched) or said it receives (its SDP).
    pub remote: Option<SocketAddr>,
    /// The first codec of the peer's last SDP (`PCMA/8000`); empty when unknown.
    pub codec: String,
    /// What the peer sent to the node.
    pub received: MediaCounts,
    /// What the node relayed to the peer (what the other leg's peer sent, forwarded).
    pub sent: MediaCounts,
    /// Milliseconds since the peer's last packet; `None` before its first.
    pub last_packet_age_ms: Option<u64>,
    /// The leg's SRTP suite and whether its packets carry an MKI; `None`: plain RTP.
    pub srtp: Option<(medpool_media::srtp::Suite, bool)>,
    /// SRTP packets from the peer that failed authentication (dropped).
    pub srtp_auth_failed: u64,
    /// SRTP packets from the peer that were replayed or too old (dropped).
    pub srtp_replayed: u64,
}

/// The first codec (`<encoding>/<clock rate>`) of the relayed section of `sdp`.
pub fn codec_of(sdp: &[u8]) -> Option<String> {
    let s = Sdp::parse(sdp).ok()?;
    let m = &s.media[relayed_index(&s)?];
    let pt = *m.payload_types()?.first()?;
    let enc = m.encoding_of(pt)?;
    let clock = m.rtpmap(pt).and_then(|r| r.clock_rate).unwrap_or(8000);
    Some(format!("{enc}/{clock}"))
}

/// The endpoint of a relay leg as SDP advertises it.
pub fn endpoint(advertise: IpAddr, local_rtp: SocketAddr, local_rtcp: SocketAddr) -> Endpoint {
    Endpoint {
        ip: advertise,
        rtp: local_rtp.port(),
        rtcp: local_rtcp.port(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::PoolConfig;

    fn sdp(ip: &str, port: u16, fmts: &str, attrs: &str) -> Vec<u8> {
        format!(
            "v=0\r\no=pbx 1 7 IN IP4 {ip}\r\ns=call\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {fmts}\r\n{attrs}a=x-vendor:keep me\r\n"
        )
        .into_bytes()
    }

    fn at(port: u16) -> Endpoint {
        Endpoint {
            ip: "192.0.2.100".parse().unwrap(),
            rtp: port,
            rtcp: port + 1,
        }
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).unwrap()
    }

    const PCMA_ONLY: &str =
        "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n";

    #[test]
    fn an_offer_points_at_the_relay_and_keeps_every_other_line() {
        let offer = sdp(
            "10.0.0.5",
            4000,
            "0 8 101",
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n",
        );
        let out = offer_towards(&offer, at(20000), &[]).unwrap();
        assert!(!out.translates);
        assert_eq!(
            text(&out.body),
            text(&offer)
                .replace("c=IN IP4 10.0.0.5", "c=IN IP4 192.0.2.100")
                .replace("m=audio 4000", "m=audio 20000")
        );
    }

    #[test]
    fn an_rfc_2543_hold_keeps_its_unspecified_address() {
        let offer = sdp("0.0.0.0", 4000, "0", "");
        let out = text(&offer_towards(&offer, at(20000), &[]).unwrap().body);
        assert!(out.contains("c=IN IP4 0.0.0.0\r\n"), "{out}");
        assert!(out.contains("m=audio 20000 RTP/AVP 0\r\n"), "{out}");
    }

    #[test]
    fn a_second_section_is_disabled_and_rtcp_follows_the_relay() {
        let mut offer = sdp("10.0.0.5", 4000, "0", "a=rtcp:4001 IN IP4 10.0.0.5\r\n");
        offer.extend_from_slice(b"m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n");
        let out = text(&offer_towards(&offer, at(20000), &[]).unwrap().body);
        assert!(
            out.contains("m=audio 20000 RTP/AVP 0\r\na=rtcp:20001 IN IP4 192.0.2.100\r\n"),
            "{out}"
        );
        assert!(out.contains("m=video 0 RTP/AVP 96\r\n"), "{out}");
    }

    /// (offered formats, trunk codecs, formats offered to the trunk, translates)
    #[test]
    fn the_trunks_codecs_choose_what_is_offered_and_when_to_translate() {
        let attrs = "a=rtpmap:18 G729/8000\r\na=rtpmap:101 telephone-event/8000\r\n";
        let cases: &[(&str, &[&str], &str, bool)] = &[
            ("0 8 101", &[], "0 8 101", false),
            ("0 8 101", &["PCMA"], "8 101", false),
            ("0 8 18 101", &["g729", "PCMU"], "18 0 101", false),
            ("8 101", &["PCMU"], "0 101", true),
            ("0", &["PCMA"], "8", true),
            ("8 0", &["PCMU", "PCMA"], "0 8", false),
            ("18 8", &["PCMU"], "0", true),
        ];
        for (fmts, codecs, expect, translates) in cases {
            let codecs: Vec<String> = codecs.iter().map(|s| s.to_string()).collect();
            let out =
                offer_towards(&sdp("10.0.0.5", 4000, fmts, attrs), at(20000), &codecs).unwrap();
            let body = text(&out.body);
            assert!(
                body.contains(&format!("m=audio 20000 RTP/AVP {expect}\r\n")),
                "{fmts} {codecs:?}: {body}"
            );
            assert_eq!(out.translates, *translates, "{fmts} {codecs:?}");
        }
        let none = offer_towards(
            &sdp("10.0.0.5", 4000, "18", attrs),
            at(20000),
            &["PCMU".into()],
        );
        assert_eq!(none, Err(MediaError::NoCommonCodec));
    }

    #[test]
    fn a_translated_answer_names_the_offerers_law_and_the_plan_translates() {
        let offer = sdp("10.0.0.5", 4000, "8 101", PCMA_ONLY);
        let towards_b = offer_towards(&offer, at(20002), &["PCMU".into()]).unwrap();
        assert!(
            text(&towards_b.body)
                .contains("m=audio 20002 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n")
        );
        let answer = sdp(
            "10.0.1.9",
            6000,
            "0 101",
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
        );
        let towards_a = text(&answer_towards(&answer, &offer, at(20000)).unwrap());
        assert!(
            towards_a.contains("c=IN IP4 192.0.2.100\r\nt=0 0\r\nm=audio 20000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n"),
            "{towards_a}"
        );
        let plan = MediaPlan {
            a_sdp: Some(offer),
            b_sdp: Some(answer),
            ..Default::default()
        }
        .session_plan();
        assert_eq!(plan.a.rtp, Some("10.0.0.5:4000".parse().unwrap()));
        assert_eq!(plan.b.rtp, Some("10.0.1.9:6000".parse().unwrap()));
        assert!(plan.a_to_b.translates() && plan.b_to_a.translates());
    }

    #[test]
    fn an_untranslated_answer_only_moves_addresses_and_the_plan_never_touches_payloads() {
        let offer = sdp("10.0.0.5", 4000, "0 101", PCMA_ONLY);
        let answer = sdp(
            "10.0.1.9",
            6000,
            "0 101",
            "a=rtpmap:101 telephone-event/8000\r\n",
        );
        let towards_a = answer_towards(&answer, &offer, at(20000)).unwrap();
        assert_eq!(
            text(&towards_a),
            text(&answer)
                .replace("c=IN IP4 10.0.1.9", "c=IN IP4 192.0.2.100")
                .replace("m=audio 6000", "m=audio 20000")
        );
        let plan = MediaPlan {
            a_sdp: Some(offer),
            b_sdp: Some(answer),
            ..Default::default()
        }
        .session_plan();
        assert!(plan.a_to_b.is_identity() && plan.b_to_a.is_identity());
        assert!(!plan.a.rtcp_mux && !plan.b.rtcp_mux);
    }

    #[test]
    fn a_reanchoring_offer_is_what_the_peer_last_heard_pointed_here_and_numbered_above_it() {
        // The caller offered A-law only; the gateway, on a mu-law trunk, answered mu-law and holds.
        let a_sdp = sdp("10.0.0.5", 4000, "8 101", PCMA_ONLY);
        let b_sdp = sdp(
            "10.0.1.9",
            6000,
            "0 101",
            "a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=recvonly\r\n",
        );
        let mut plan = MediaPlan {
            a_sdp: Some(a_sdp.clone()),
            b_sdp: Some(b_sdp.clone()),
            ..Default::default()
        };
        plan.reanchored();
        let to_a = text(&plan.reanchor_offer(Leg::A, at(31000), &[]).unwrap());
        assert!(
            to_a.starts_with("v=0\r\no=pbx 1 8 IN IP4 10.0.1.9\r\n"),
            "{to_a}"
        );
        assert!(
            to_a.contains("c=IN IP4 192.0.2.100\r\nt=0 0\r\nm=audio 31000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n"),
            "the caller hears of its own law: {to_a}"
        );
        assert!(to_a.contains("a=recvonly\r\n"), "the hold stays: {to_a}");
        let to_b = text(&plan.reanchor_offer(Leg::B, at(31002), &[]).unwrap());
        assert!(to_b.contains("o=pbx 1 8 IN IP4 10.0.0.5\r\n"), "{to_b}");
        assert!(
            to_b.contains("m=audio 31002 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"),
            "the gateway hears of its own law: {to_b}"
        );
        assert!(plan.session_plan().a_to_b.translates(), "still translated");

        // Every later SDP is numbered above; with no bump, nothing changes.
        assert_eq!(
            text(&plan.numbered(Leg::B, a_sdp.clone())),
            text(&a_sdp).replace("o=pbx 1 7 ", "o=pbx 1 8 ")
        );
        assert_eq!(MediaPlan::default().numbered(Leg::B, a_sdp.clone()), a_sdp);
        // Nothing to re-anchor from half a plan.
        plan.b_sdp = None;
        assert!(!plan.complete());
        assert!(plan.reanchor_offer(Leg::A, at(31000), &[]).is_err());
    }

    #[test]
    fn hold_is_read_from_either_peers_last_sdp() {
        let live = sdp("10.0.0.5", 4000, "0", "a=sendrecv\r\n");
        let mut plan = MediaPlan {
            a_sdp: Some(live.clone()),
            b_sdp: Some(live.clone()),
            ..Default::default()
        };
        assert!(!plan.on_hold());
        for held in [
            sdp("10.0.0.5", 4000, "0", "a=sendonly\r\n"),
            sdp("10.0.0.5", 4000, "0", "a=inactive\r\n"),
            sdp("0.0.0.0", 4000, "0", ""),
        ] {
            plan.b_sdp = Some(held);
            assert!(plan.on_hold());
        }
    }

    #[test]
    fn bypass_needs_both_trunks_and_no_translation() {
        let text = crate::testkit::CONFIG
            .replace(
                "side = \"internal\"",
                "side = \"internal\"\nmedia = \"bypass\"",
            )
            .replace(
                "address = \"127.0.9.21\"",
                "address = \"127.0.9.21\"\nmedia = \"bypass\"\ncodecs = [\"PCMU\"]",
            )
            .replace(
                "address = \"127.0.9.22\"",
                "address = \"127.0.9.22\"\nmedia = \"relay\"",
            );
        let config = PoolConfig::from_toml_str(&text, "test.toml").unwrap();
        let (pbx, gw1, gw2) = (
            config.trunk("pbx").unwrap(),
            config.trunk("gw1").unwrap(),
            config.trunk("gw2").unwrap(),
        );
        let pcmu = sdp("10.0.0.5", 4000, "0", "");
        let pcma = sdp("10.0.0.5", 4000, "8", "");
        assert!(bypasses(pbx, gw1, Some(&pcmu)));
        assert!(bypasses(pbx, gw1, None));
        assert!(
            !bypasses(pbx, gw1, Some(&pcma)),
            "A-law needs translation towards gw1"
        );
        assert!(!bypasses(pbx, gw2, Some(&pcmu)), "gw2 relays");
        assert!(!bypasses(gw2, gw1, Some(&pcmu)));
    }
}
