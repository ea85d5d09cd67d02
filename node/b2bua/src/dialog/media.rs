//! The call's media through the node's relay: the session (opened with the first relayed gateway
//! attempt, reused by the next ones, closed with the call), every offer and answer rewritten for
//! the other leg (the pure rules are in [`crate::media`]), the media timeout, and media failover:
//! a call rebuilt from a record with a media plan opens its own session and re-INVITEs both legs
//! onto it ([`start_reanchor`]). Nothing here touches a packet: the relay session's own task
//! carries them.

use std::time::Duration;

use bytes::Bytes;
use medpool_media::relay::{Leg as MediaLeg, RelayError, SessionPlan};
use medpool_sip::transaction::{ClientKey, Outcome};
use medpool_sip::{HeaderName, SipMessage, ids};
use ractor::ActorRef;
use rand::Rng;
use tokio::time::Instant;

use super::call::{Call, MediaRefusal, Reanchor};
use super::msg::{DialogMsg, Phase};
use crate::config::{Encryption, Trunk};
use crate::media::{self, Endpoint, MediaError};
use crate::srtp::{self as keys, SideSrtp};
use crate::txlayer::{Envelope, Side};

/// What a new gateway attempt does with the media.
#[derive(Debug)]
pub(super) enum AttemptMedia {
    /// The SDP passes unchanged (both trunks bypass, or the node has no relay).
    Bypass,
    /// Relayed: the leg-B INVITE carries this body (empty: a late offer).
    Relayed(Bytes),
}

fn media_leg(side: Side) -> MediaLeg {
    match side {
        Side::A => MediaLeg::A,
        Side::B => MediaLeg::B,
    }
}

fn idx(side: Side) -> usize {
    match side {
        Side::A => 0,
        Side::B => 1,
    }
}

fn other(side: Side) -> Side {
    match side {
        Side::A => Side::B,
        Side::B => Side::A,
    }
}

/// The SDP of a message: its body when it is `application/sdp` (or untyped), the SDP part of a
/// `multipart/mixed` body (see `body`), else none.
pub(super) fn sdp_body(msg: &SipMessage) -> Option<&[u8]> {
    super::body::sdp_of(msg)
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

    /// The `encryption` of `side`'s trunk.
    fn encryption_of(&self, side: Side) -> Encryption {
        match side {
            Side::A => self.inbound.encryption,
            Side::B => self
                .current()
                .and_then(|a| self.ctx.config().trunk(&a.trunk).map(|t| t.encryption))
                .unwrap_or_default(),
        }
    }

    fn srtp_mut(&mut self, side: Side) -> &mut SideSrtp {
        self.srtp.side_mut(idx(side))
    }

    /// The relay plan from the media plan, with each leg's SRTP keys.
    fn plan_with_keys(&self) -> SessionPlan {
        let mut plan = self.media.session_plan();
        plan.a_srtp = self.srtp.side(0).keys().cloned();
        plan.b_srtp = self.srtp.side(1).keys().cloned();
        // A leg whose trunk requires SRTP never gets (or gives) a packet in the clear, even while
        // its keys are being (re)negotiated.
        plan.a_srtp_required = self.encryption_of(Side::A) == Encryption::Required;
        plan.b_srtp_required = self.encryption_of(Side::B) == Encryption::Required;
        plan
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
        let changed = *self.sdp_of(side) != previous;
        *self.sdp_of(side) = previous;
        self.update_session();
        if changed {
            self.media_changed();
        }
    }

    fn update_session(&self) {
        if let Some(s) = &self.media_session {
            s.update(self.plan_with_keys());
        }
    }

    /// [`Call::update_session`] for a pending offer: new peer addresses, the current payload
    /// routes.
    fn update_session_addresses(&self) {
        if let Some(s) = &self.media_session {
            let current = s.plan();
            let mut plan = self.plan_with_keys();
            plan.a_to_b = current.a_to_b;
            plan.b_to_a = current.b_to_a;
            s.update(plan);
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
                Ok(s) => self.media_session = Some(Box::new(s)),
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
        self.srtp.reset(1);
        let body = match &offer {
            None => Bytes::new(),
            Some(o) => {
                let at = self.endpoint(Side::B).ok_or(MediaRefusal::Ports)?;
                let inbound = self.inbound.encryption;
                let rewritten = media::offer_towards(o, at, &trunk.codecs).and_then(|r| {
                    self.srtp.side_mut(0).on_offer(inbound, o)?;
                    let (proto, lines) = self.srtp.side_mut(1).offer(trunk.encryption)?;
                    Ok((keys::secured(r.body, proto, &lines)?, r.translates))
                });
                match rewritten {
                    Ok((body, translates)) => {
                        self.span.record("media.translated", translates);
                        self.media.a_sdp = Some(keys::without_keys(o));
                        Bytes::from(body)
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
    /// not relayed (it passes unchanged). The relay session follows: an offer's addresses at once,
    /// its payload routes once the answer completes the exchange.
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
        let answering = !offer && self.sdp_of(to).is_some();
        let out = match (offer, self.sdp_of(to).clone()) {
            (false, Some(their_offer)) => media::answer_towards(body, &their_offer, at)?,
            _ => media::offer_towards(body, at, &self.codecs_of(to))?.body,
        };
        // SRTP: the sender's key under its trunk's policy, the node's own towards the receiver.
        let (from_policy, to_policy) = (self.encryption_of(from), self.encryption_of(to));
        let (proto, lines) = if answering {
            if let Err(e) = self.srtp_mut(from).on_answer(from_policy, body) {
                self.crypto_refused = true;
                tracing::warn!(parent: &self.span, error = %e, side = ?from, "an answer without the SRTP its trunk requires");
            }
            self.srtp_mut(to).answer()?
        } else {
            self.srtp_mut(from).on_offer(from_policy, body)?;
            self.srtp_mut(to).offer(to_policy)?
        };
        let out = keys::secured(out, proto, &lines)?;
        let out = self.media.numbered(media_leg(to), out);
        let body = keys::without_keys(body);
        let body = body.as_slice();
        let changed = self.sdp_of(from).as_deref() != Some(body);
        *self.sdp_of(from) = Some(body.to_vec());
        // New media (a resume, a new address): silence counts from here.
        self.media_counted_from = Instant::now();
        // An offer moves the offerer's address at once (RFC 3264 §8: it listens there from its
        // offer on) but keeps the payload routes both peers agreed on until the answer: routes
        // built from a new offer and the old answer could see two laws and translate (a codec
        // change PCMU → PCMA would turn the gateway's last µ-law packets into A-law).
        if offer {
            self.update_session_addresses();
        } else {
            self.update_session();
        }
        if changed {
            self.media_changed();
        }
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
            self.after(myself, t, || DialogMsg::MediaCheck);
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
        let c = s.counters(leg);
        Some(media::LegMedia {
            local: std::net::SocketAddr::new(at.ip, at.rtp),
            remote,
            codec: sdp.and_then(media::codec_of).unwrap_or_default(),
            received,
            sent,
            last_packet_age_ms: age,
            srtp: self.srtp.side(idx(side)).protection(),
            srtp_auth_failed: c.srtp_auth_failed,
            srtp_replayed: c.srtp_replayed,
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
        st.after(myself, timeout, || DialogMsg::MediaCheck);
    } else if idle >= timeout {
        tracing::info!(parent: &st.span, idle_ms = idle.as_millis() as u64, "no media: the call is hung up");
        st.history.push(("media".into(), "timeout".into()));
        st.ctx
            .stats
            .media_timeouts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        st.bye_all(myself, None);
    } else {
        st.after(myself, timeout - idle, || DialogMsg::MediaCheck);
    }
}

/// How many times a re-anchoring re-INVITE is sent again after a 491 (glare) before the leg is
/// left with signalling only.
const REANCHOR_GLARE_TRIES: u8 = 3;

/// A call rebuilt from a record with a media plan, on a node with a relay: the media moves onto
/// this node (make-before-break is impossible here: the old node is gone). It opens a session
/// aimed at both peers' last addresses and re-INVITEs both legs with an offer pointing at its
/// own endpoints, numbered above what each peer saw (see [`crate::media::MediaPlan`]). A node
/// without a relay, or a record without a plan, carries the signalling only, as before.
pub(super) fn start_reanchor(st: &mut Call) {
    let Some(rt) = st.ctx.media.clone() else {
        return;
    };
    if st.media_session.is_some() || !st.media.complete() || st.phase != Phase::Confirmed {
        return;
    }
    // No key survives a failover (none is in the record): both legs are offered fresh ones, with
    // an MKI where the record says the peer used one.
    st.srtp.forget_keys();
    match rt.relay.open_now(st.plan_with_keys()) {
        Ok(s) => st.media_session = Some(Box::new(s)),
        Err(e) => {
            tracing::warn!(parent: &st.span, error = %e, "cannot open a media session: the call goes on with signalling only");
            st.history
                .push(("media".into(), format!("not re-anchored: {e}")));
            count(&st.ctx.stats.media_reanchor_failed, 2);
            st.reanchor_failed = true;
            return;
        }
    }
    st.span.record("media.mode", "relay");
    if let Some(a) = st.current_mut() {
        a.relayed = true;
    }
    let gateway = st
        .current()
        .and_then(|a| st.ctx.config().trunk(&a.trunk).cloned());
    st.media_timeout = [
        st.inbound.media_timeout(),
        gateway.and_then(|t| t.media_timeout()),
    ]
    .into_iter()
    .flatten()
    .min();
    st.media.reanchored();
    for side in [Side::A, Side::B] {
        send_reanchor(st, side, 0);
    }
}

fn count(c: &std::sync::atomic::AtomicU64, n: u64) {
    c.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

/// Sends the re-anchoring re-INVITE on `side` (try `tries` after a glare).
fn send_reanchor(st: &mut Call, side: Side, tries: u8) {
    let Some(at) = st.endpoint(side) else {
        return reanchor_failed(st, side, "no relay session");
    };
    let policy = st.encryption_of(side);
    let body = st
        .media
        .reanchor_offer(media_leg(side), at, &st.codecs_of(side))
        .and_then(|b| {
            let (proto, lines) = st.srtp_mut(side).offer(policy)?;
            Ok(keys::secured(b, proto, &lines)?)
        });
    let body = match body {
        Ok(b) => b,
        Err(e) => return reanchor_failed(st, side, &e.to_string()),
    };
    let Some(mut leg) = st.leg(side).cloned() else {
        return;
    };
    leg.local_cseq += 1;
    let cseq = leg.local_cseq;
    let branch = ids::new_branch(st.shard);
    let mut b = leg.request(&st.ctx.me, b"INVITE", cseq, &branch);
    b.header(
        HeaderName::Contact,
        st.ctx
            .me
            .on(leg.local_port)
            .contact(leg.transport)
            .as_bytes(),
    );
    b.body(b"application/sdp", Bytes::from(body));
    if let Some(l) = st.leg_mut(side) {
        l.local_cseq = cseq;
    }
    match st.send_request(side, b.build()) {
        Some(key) => st.reanchors.push(Reanchor {
            side,
            key: Some(key),
            cseq,
            tries,
        }),
        None => reanchor_failed(st, side, "cannot send the re-INVITE"),
    }
}

/// A re-anchoring re-INVITE failed: the leg goes on with signalling only (its media may still
/// flow some other way: the call is never hung up for it).
fn reanchor_failed(st: &mut Call, side: Side, why: &str) {
    tracing::warn!(parent: &st.span, side = ?side, why, "media not re-anchored on this leg: the call goes on with signalling only");
    st.history.push((
        "media".into(),
        format!("leg {side:?} not re-anchored: {why}"),
    ));
    count(&st.ctx.stats.media_reanchor_failed, 1);
    st.reanchor_failed = true;
}

/// A 491 on a re-anchoring re-INVITE: try again after a random delay (RFC 3261 §14.1: 2.1–4 s
/// when this node minted the leg's Call-ID, leg B; 0–2 s otherwise).
pub(super) fn on_reanchor_retry(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    side: Side,
    tries: u8,
) {
    let Some(pos) = st
        .reanchors
        .iter()
        .position(|r| r.side == side && r.key.is_none())
    else {
        return;
    };
    st.reanchors.remove(pos);
    if st.phase == Phase::Confirmed && st.media_session.is_some() {
        send_reanchor(st, side, tries);
    }
    reanchor_settled(st, myself);
}

/// A response to one of the call's client transactions: whether it was a re-anchoring re-INVITE's
/// (then handled here). A 2xx is ACKed, its SDP becomes the peer's in the plan and the relay
/// follows; a 491 is tried again later; any other final answer leaves the leg as it was.
pub(super) fn on_reanchor_response(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    key: &ClientKey,
    status: u16,
    env: &Envelope,
) -> bool {
    let Some(pos) = st
        .reanchors
        .iter()
        .position(|r| r.key.as_ref() == Some(key))
    else {
        return false;
    };
    if status < 200 {
        return true;
    }
    let r = st.reanchors.remove(pos);
    if (200..300).contains(&status) {
        send_reanchor_ack(st, &r);
        if let Some(leg) = st.leg_mut(r.side) {
            leg.learn_remote(&env.msg, None);
        }
        match sdp_body(&env.msg) {
            Some(answer) => {
                let policy = st.encryption_of(r.side);
                let refused = st.srtp_mut(r.side).on_answer(policy, answer).err();
                *st.sdp_of(r.side) = Some(keys::without_keys(answer));
                st.update_session();
                if let Some(e) = refused {
                    reanchor_failed(st, r.side, &e.to_string());
                }
            }
            None => reanchor_failed(st, r.side, "a 2xx without SDP"),
        }
    } else if status == 491 && r.tries < REANCHOR_GLARE_TRIES {
        let ms = match r.side {
            Side::B => rand::rng().random_range(2100..=4000),
            Side::A => rand::rng().random_range(0..=2000),
        };
        let (side, tries) = (r.side, r.tries + 1);
        tracing::debug!(parent: &st.span, side = ?side, ms, "re-anchoring re-INVITE met a 491: tried again later");
        // Kept, without a transaction, until the retry: the re-anchoring is not over.
        st.reanchors.push(Reanchor {
            key: None,
            tries,
            ..r
        });
        drop(
            myself.send_after(Duration::from_millis(ms), move || DialogMsg::Reanchor {
                side,
                tries,
            }),
        );
        return true;
    } else {
        reanchor_failed(st, r.side, &format!("answered {status}"));
    }
    reanchor_settled(st, myself);
    true
}

/// A re-anchoring re-INVITE's transaction ended without a final answer (timeout, transport).
pub(super) fn on_reanchor_ended(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    key: &ClientKey,
    outcome: Outcome,
) {
    if outcome == Outcome::Completed {
        return;
    }
    if let Some(pos) = st
        .reanchors
        .iter()
        .position(|r| r.key.as_ref() == Some(key))
    {
        let r = st.reanchors.remove(pos);
        reanchor_failed(st, r.side, &format!("{outcome:?}"));
        reanchor_settled(st, myself);
    }
}

/// ACKs a re-anchoring re-INVITE's 2xx (kept, one per leg, for a retransmitted 2xx).
fn send_reanchor_ack(st: &mut Call, r: &Reanchor) {
    let Some(leg) = st.leg(r.side) else {
        return;
    };
    let branch = ids::new_branch(st.shard);
    let ack = leg.request(&st.ctx.me, b"ACK", r.cseq, &branch).build();
    let (hop, transport) = (leg.next_hop(), leg.transport);
    if let Some(ack) = Envelope::outgoing(ack, hop, transport) {
        let _ = st.ctx.transports.send_now(transport, hop, ack.msg.bytes());
        let call_id = ack.msg.call_id().and_then(|c| c.ok()).map(<[u8]>::to_vec);
        st.reanchor_acks
            .retain(|a| a.msg.call_id().and_then(|c| c.ok()).map(<[u8]>::to_vec) != call_id);
        st.reanchor_acks.push(ack);
    }
}

/// A retransmitted 2xx of a re-anchoring re-INVITE: its ACK again. Whether it was one.
pub(super) fn reack_reanchor(st: &Call, env: &Envelope) -> bool {
    let key = |m: &SipMessage| {
        (
            m.call_id().and_then(|c| c.ok()).map(<[u8]>::to_vec),
            m.cseq().and_then(|c| c.ok()).map(|c| c.seq),
        )
    };
    let Some(ack) = st
        .reanchor_acks
        .iter()
        .find(|a| key(&a.msg) == key(&env.msg))
    else {
        return false;
    };
    let _ = st
        .ctx
        .transports
        .send_now(ack.transport, ack.peer, ack.msg.bytes());
    true
}

/// Once both re-anchoring re-INVITEs are answered: the new plan is written to the record, and a
/// call whose legs both moved counts as re-anchored and gets its media timeout.
fn reanchor_settled(st: &mut Call, myself: &ActorRef<DialogMsg>) {
    if !st.reanchors.is_empty() {
        return;
    }
    st.media_changed();
    if !st.reanchor_failed {
        count(&st.ctx.stats.media_reanchored, 1);
        st.history
            .push(("media".into(), "re-anchored on this node".into()));
        tracing::info!(parent: &st.span, "media re-anchored on this node");
        st.start_media_timeout(myself);
    }
}
