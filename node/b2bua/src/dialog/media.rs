//! The call's media through the node's relay: the session (opened with the first relayed gateway
//! attempt, reused by the next ones, closed with the call), every offer and answer rewritten for
//! the other leg (the pure rules are in [`crate::media`]), and the media timeout. Nothing here
//! touches a packet: the relay session's own task carries them.

use std::time::Duration;

use bytes::Bytes;
use medpool_media::relay::{Leg as MediaLeg, RelayError, SessionPlan};
use medpool_sip::{HeaderName, SipMessage};
use ractor::ActorRef;
use tokio::time::Instant;

use super::call::Call;
use super::msg::{DialogMsg, Phase};
use crate::config::Trunk;
use crate::media::{self, Endpoint, MediaError};
use crate::txlayer::Side;

/// What a new gateway attempt does with the media.
#[derive(Debug)]
pub(super) enum AttemptMedia {
    /// The SDP passes unchanged (both trunks bypass, or the node has no relay).
    Bypass,
    /// Relayed: the leg-B INVITE carries this body (empty: a late offer).
    Relayed(Bytes),
}

/// Why a gateway attempt cannot relay the call's media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MediaRefusal {
    /// No free relay ports (the caller gets 503 with Retry-After).
    Ports,
    /// The caller's offer cannot be relayed to this trunk (the caller gets 488).
    Offer,
}

fn media_leg(side: Side) -> MediaLeg {
    match side {
        Side::A => MediaLeg::A,
        Side::B => MediaLeg::B,
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::A => Side::B,
        Side::B => Side::A,
    }
}

/// The SDP body of a message: its body when it is `application/sdp` (or untyped), else none.
pub(super) fn sdp_body(msg: &SipMessage) -> Option<&[u8]> {
    let body = msg.body();
    if body.is_empty() {
        return None;
    }
    let sdp = msg.header(HeaderName::ContentType).is_none_or(|ct| {
        ct.split(|&b| b == b';')
            .next()
            .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"application/sdp"))
    });
    sdp.then_some(body)
}

impl Call {
    /// Whether the call's media goes through this node's relay now.
    pub(super) fn relaying(&self) -> bool {
        self.media_session.is_some() && self.current().is_some_and(|a| a.relayed)
    }

    /// The node's endpoint on `side` as SDP advertises it.
    fn endpoint(&self, side: Side) -> Option<Endpoint> {
        let rt = self.ctx.media.as_ref()?;
        let local = self.media_session.as_ref()?.local(media_leg(side));
        Some(media::endpoint(rt.advertise, local.rtp, local.rtcp))
    }

    /// The codecs the trunk of `side` accepts in offers (empty: any).
    fn codecs_of(&self, side: Side) -> Vec<String> {
        match side {
            Side::A => self.inbound.codecs.clone(),
            Side::B => self
                .current()
                .and_then(|a| self.ctx.config().trunk(&a.trunk).map(|t| t.codecs.clone()))
                .unwrap_or_default(),
        }
    }

    fn sdp_of(&mut self, side: Side) -> &mut Option<Vec<u8>> {
        match side {
            Side::A => &mut self.media.a_sdp,
            Side::B => &mut self.media.b_sdp,
        }
    }

    /// The last SDP `side`'s peer sent (kept to undo an offer the far side rejects).
    pub(super) fn last_sdp(&self, side: Side) -> Option<Vec<u8>> {
        match side {
            Side::A => self.media.a_sdp.clone(),
            Side::B => self.media.b_sdp.clone(),
        }
    }

    /// An offer from `side` was rejected (a non-2xx final answer, RFC 3264 §8: the session stays
    /// as it was): its previous SDP holds again, and the relay follows.
    pub(super) fn offer_rejected(&mut self, side: Side, previous: Option<Vec<u8>>) {
        *self.sdp_of(side) = previous;
        self.update_session();
    }

    fn update_session(&self) {
        if let Some(s) = &self.media_session {
            s.update(self.media.session_plan());
        }
    }

    /// Media for a new attempt towards `trunk`: bypass, or the relay (opening the call's session
    /// on the first relayed attempt; a later attempt reuses its leg-B endpoint for the new
    /// gateway) with the caller's offer rewritten for the trunk.
    pub(super) fn attempt_media(&mut self, trunk: &Trunk) -> Result<AttemptMedia, MediaRefusal> {
        let Some(rt) = self.ctx.media.clone() else {
            self.span.record("media.mode", "none");
            return Ok(AttemptMedia::Bypass);
        };
        let offer = self
            .a_invite
            .as_ref()
            .and_then(|e| sdp_body(&e.msg).map(<[u8]>::to_vec));
        if media::bypasses(&self.inbound, trunk, offer.as_deref()) {
            self.span.record("media.mode", "bypass");
            return Ok(AttemptMedia::Bypass);
        }
        self.span.record("media.mode", "relay");
        if self.media_session.is_none() {
            match rt.relay.open_now(SessionPlan::default()) {
                Ok(s) => self.media_session = Some(s),
                Err(RelayError::PortsExhausted) => return Err(MediaRefusal::Ports),
                Err(e) => {
                    tracing::warn!(parent: &self.span, error = %e, "cannot open a media session");
                    return Err(MediaRefusal::Ports);
                }
            }
        }
        self.media_timeout = [self.inbound.media_timeout(), trunk.media_timeout()]
            .into_iter()
            .flatten()
            .min();
        // A new gateway: what the last one said no longer holds.
        self.media.b_sdp = None;
        let body = match &offer {
            None => Bytes::new(),
            Some(o) => {
                let at = self.endpoint(Side::B).ok_or(MediaRefusal::Ports)?;
                match media::offer_towards(o, at, &trunk.codecs) {
                    Ok(r) => {
                        self.span.record("media.translated", r.translates);
                        self.media.a_sdp = Some(o.clone());
                        Bytes::from(r.body)
                    }
                    Err(e) => {
                        tracing::debug!(parent: &self.span, error = %e, trunk = %trunk.name, "the caller's offer cannot be relayed");
                        return Err(MediaRefusal::Offer);
                    }
                }
            }
        };
        self.update_session();
        Ok(AttemptMedia::Relayed(body))
    }

    /// SDP `body` that came from `from`'s peer — an offer when `offer`, else the answer to the
    /// other leg's last offer — rewritten for the other leg's peer: `Ok(None)` when the media is
    /// not relayed (it passes unchanged). The relay session follows the new plan.
    pub(super) fn media_sdp(
        &mut self,
        from: Side,
        body: &[u8],
        offer: bool,
    ) -> Result<Option<Bytes>, MediaError> {
        if !self.relaying() {
            return Ok(None);
        }
        let to = other(from);
        let Some(at) = self.endpoint(to) else {
            return Ok(None);
        };
        let out = match (offer, self.sdp_of(to).clone()) {
            (false, Some(their_offer)) => media::answer_towards(body, &their_offer, at)?,
            _ => media::offer_towards(body, at, &self.codecs_of(to))?.body,
        };
        *self.sdp_of(from) = Some(body.to_vec());
        // New media (a resume, a new address): silence counts from here.
        self.media_counted_from = Instant::now();
        self.update_session();
        Ok(Some(Bytes::from(out)))
    }

    /// [`Call::media_sdp`] for a message that may carry SDP; a body that cannot be rewritten
    /// passes unchanged (logged): the call goes on, its media perhaps not.
    pub(super) fn media_sdp_of(
        &mut self,
        from: Side,
        msg: &SipMessage,
        offer: bool,
    ) -> Option<Bytes> {
        let body = sdp_body(msg)?;
        match self.media_sdp(from, body, offer) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(parent: &self.span, error = %e, side = ?from, "SDP passed on unchanged: it cannot be relayed");
                None
            }
        }
    }

    /// Starts the media timeout once the call is confirmed (relayed calls on trunks with one).
    pub(super) fn start_media_timeout(&mut self, myself: &ActorRef<DialogMsg>) {
        self.media_counted_from = Instant::now();
        if self.relaying()
            && let Some(t) = self.media_timeout
        {
            drop(myself.send_after(t, || DialogMsg::MediaCheck));
        }
    }

    /// What the admin API shows of `side`'s media (none when the media is not relayed).
    pub(super) fn leg_media(&self, side: Side) -> Option<media::LegMedia> {
        if !self.relaying() {
            return None;
        }
        let s = self.media_session.as_ref()?;
        let at = self.endpoint(side)?;
        let leg = media_leg(side);
        let sdp = match side {
            Side::A => self.media.a_sdp.as_deref(),
            Side::B => self.media.b_sdp.as_deref(),
        };
        let plan = s.plan();
        let remote = s.latched(leg)[0].or(match side {
            Side::A => plan.a.rtp,
            Side::B => plan.b.rtp,
        });
        let counts = |l: MediaLeg| {
            let c = s.counters(l);
            (
                media::MediaCounts {
                    packets: c.packets,
                    bytes: c.bytes,
                    lost: c.lost,
                },
                c.last_packet_age_ms(s.elapsed_ms()),
            )
        };
        let (received, age) = counts(leg);
        let (sent, _) = counts(leg.other());
        Some(media::LegMedia {
            local: std::net::SocketAddr::new(at.ip, at.rtp),
            remote,
            codec: sdp.and_then(media::codec_of).unwrap_or_default(),
            received,
            sent,
            last_packet_age_ms: age,
        })
    }
}

/// The media timeout is due: a call whose media stopped both ways for the trunk's timeout (and is
/// not on hold) is hung up on both legs; otherwise the next check is set for when it could be.
pub(super) fn on_media_check(st: &mut Call, myself: &ActorRef<DialogMsg>) {
    let (Some(timeout), Some(session)) = (st.media_timeout, st.media_session.as_ref()) else {
        return;
    };
    if st.phase != Phase::Confirmed || !st.relaying() {
        return;
    }
    // Silence counts from the last packet either way, but not from before the answer or a hold.
    let counted = st.media_counted_from.elapsed();
    let idle = session
        .idle_ms()
        .map_or(counted, |ms| Duration::from_millis(ms).min(counted));
    if st.media.on_hold() {
        st.media_counted_from = Instant::now();
        drop(myself.send_after(timeout, || DialogMsg::MediaCheck));
    } else if idle >= timeout {
        tracing::info!(parent: &st.span, idle_ms = idle.as_millis() as u64, "no media: the call is hung up");
        st.history.push(("media".into(), "timeout".into()));
        st.ctx
            .stats
            .media_timeouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        st.bye_all(myself, None);
    } else {
        drop(myself.send_after(timeout - idle, || DialogMsg::MediaCheck));
    }
}
