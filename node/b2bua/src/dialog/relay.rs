//! In-dialog relay: a request on one leg goes out on the other, in that leg's dialog, and its
//! answer comes back; ACKs of relayed re-INVITEs follow.

use bytes::Bytes;
use medpool_sip::transaction::{ClientKey, Outcome, ServerKey};
use medpool_sip::{HeaderName, Method, SipMessage, ids};
use ractor::ActorRef;

use super::call::{Call, Relay, SentAck};
use super::leg::{local_response, relay_request_parts, relay_response};
use super::msg::{DialogMsg, Phase};
use crate::config::ReferPolicy;
use crate::txlayer::{Envelope, Side};

pub(super) fn on_response(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    key: ClientKey,
    status: u16,
    env: Envelope,
) {
    // 0. A re-INVITE moving the media onto this node (a rebuilt call).
    if super::media::on_reanchor_response(st, myself, &key, status, &env) {
        return;
    }
    // 0'. Our session refresh.
    if super::session::on_refresh_response(st, myself, &key, status, &env) {
        return;
    }
    // 1. A relayed in-dialog request (a leg-B INVITE's answers are set-up's).
    if let Some(pos) = st.relays.iter().position(|r| r.client == key) {
        let from_side = match st.relays[pos].from {
            Side::A => Side::B,
            Side::B => Side::A,
        };
        let body = if (101..300).contains(&status)
            && matches!(
                st.relays[pos].request.msg.method(),
                Some(Method::Invite | Method::Update)
            ) {
            let offered = st.relays[pos].offered;
            st.media_sdp_of(from_side, &env.msg, !offered)
        } else {
            None
        };
        if status < 200 {
            // An early answer without the required SRTP: the final answer decides.
            st.crypto_refused = false;
            if status > 100 {
                answer_relayed(st, &st.relays[pos], status, &env, body.as_deref());
            }
            return;
        }
        let r = st.relays.remove(pos);
        r.span.record("sip.status", status);
        if status >= 300
            && let Some(previous) = r.media_undo.clone()
        {
            st.offer_rejected(r.from, previous);
        }
        let to_side = match r.from {
            Side::A => Side::B,
            Side::B => Side::A,
        };
        if (200..300).contains(&status) {
            // Target refresh on the far leg (RFC 3261 §12.2.1.2).
            let is_refresh = matches!(
                r.request.msg.method(),
                Some(Method::Invite | Method::Update)
            );
            if is_refresh && let Some(leg) = st.leg_mut(to_side) {
                leg.learn_remote(&env.msg, None);
            }
            // A session refresh passing through (RFC 4028 §10: any 2xx re-INVITE or UPDATE).
            if is_refresh {
                st.session_refreshed(&env.msg);
            }
            if let Some(cseq) = r.invite_cseq {
                let a_cseq = r
                    .request
                    .msg
                    .cseq()
                    .and_then(|c| c.ok())
                    .map_or(0, |c| c.seq);
                match r.from {
                    Side::A => st.pending_ack_b.push((a_cseq, cseq)),
                    Side::B => st.pending_ack_a.push((a_cseq, cseq)),
                }
            }
        }
        answer_relayed(st, &r, status, &env, body.as_deref());
        if std::mem::take(&mut st.crypto_refused) && (200..300).contains(&status) {
            // The far peer took a relayed offer but answered without the SRTP its trunk requires:
            // its leg has no keys, so no media can flow to or from it. The call is hung up on both
            // legs rather than left silent (the answer cannot be refused: RFC 3264 §6).
            st.history
                .push(("srtp".into(), "answer without the required SRTP".into()));
            st.bye_all(myself, None);
        }
        st.maybe_finish(myself);
        return;
    }
    // 2. Our BYE / CANCEL / refresh: nothing to relay.
    if status >= 200 {
        st.bye_keys.retain(|k| *k != key);
        st.maybe_finish(myself);
    }
}

/// Answers relayed request `r` on the side it came from with the far side's response `env` (its
/// body, or `body` in its place), under our tag on that side.
fn answer_relayed(st: &Call, r: &Relay, status: u16, env: &Envelope, body: Option<&[u8]>) {
    let (tag, port) = match r.from {
        Side::A => (st.a.local_tag.clone(), st.a.local_port),
        Side::B => st
            .leg(Side::B)
            .map(|l| (l.local_tag.clone(), l.local_port))
            .unwrap_or_default(),
    };
    let bytes = relay_response(
        st.ctx.me.on(port),
        &r.request,
        status,
        env.msg.reason_phrase().unwrap_or_default(),
        &tag,
        Some((&env.msg, body)),
        None,
    );
    let _ = st
        .ctx
        .driver
        .respond(&r.server, status, r.request.reply(bytes));
}

pub(super) fn on_ack(st: &mut Call, myself: &ActorRef<DialogMsg>, side: Side, env: Envelope) {
    let cseq = env.msg.cseq().and_then(|c| c.ok()).map_or(0, |c| c.seq);
    match side {
        Side::A if st.phase == Phase::Answered && cseq == st.a_cseq_invite => {
            st.phase = Phase::Confirmed;
            // Only the dialogs are needed from here on: keep the established call small.
            st.drop_set_up_state();
            if let Some(idx) = st.attempts.iter().position(|a| a.answered && !a.abandoned) {
                // End-to-end ACK: the caller's ACK may carry the SDP answer to a late offer.
                let sdp = st.media_sdp_of(Side::A, &env.msg, false);
                send_ack_b(
                    st,
                    idx,
                    st.attempts[idx].invite_cseq(),
                    Some(&env.msg),
                    sdp.as_deref(),
                    true,
                );
            }
            st.start_media_timeout(myself);
            if !st.stored && st.write_record() {
                st.mark_stored();
            }
            st.ctx.call_answered();
            st.start_session_timer(myself, false);
        }
        Side::A => {
            if let Some(pos) = st.pending_ack_b.iter().position(|(a, _)| *a == cseq) {
                let (_, b_cseq) = st.pending_ack_b.remove(pos);
                if let Some(idx) = st.attempts.iter().position(|a| a.answered && !a.abandoned) {
                    let sdp = st.media_sdp_of(Side::A, &env.msg, false);
                    send_ack_b(st, idx, b_cseq, Some(&env.msg), sdp.as_deref(), false);
                }
            }
        }
        Side::B => {
            if let Some(pos) = st.pending_ack_a.iter().position(|(b, _)| *b == cseq) {
                let (_, a_cseq) = st.pending_ack_a.remove(pos);
                let branch = ids::new_branch(st.shard);
                let sdp = st.media_sdp_of(Side::B, &env.msg, false);
                let mut b = st.a.request(&st.ctx.me, b"ACK", a_cseq, &branch);
                let body = sdp.as_deref().unwrap_or(env.msg.body());
                if !body.is_empty() {
                    let ct = env
                        .msg
                        .header(HeaderName::ContentType)
                        .unwrap_or(b"application/sdp");
                    b.body(ct, Bytes::copy_from_slice(body));
                }
                let hop = st.a.next_hop();
                let _ = st.ctx.transports.send_now(st.a.transport, hop, b.build());
            }
        }
    }
}

/// Sends an ACK on a leg-B attempt (end to end: `body` is the caller's ACK, which may carry the SDP
/// answer to a late offer; `sdp` goes in place of its body when given). It is kept to ACK a
/// retransmitted 2xx again: as the INVITE's ACK when `initial`, else as the latest re-INVITE's.
pub(super) fn send_ack_b(
    st: &mut Call,
    idx: usize,
    cseq: u32,
    body: Option<&SipMessage>,
    sdp: Option<&[u8]>,
    initial: bool,
) {
    let att = &st.attempts[idx];
    let branch = ids::new_branch(st.shard);
    let mut b = att.leg.request(&st.ctx.me, b"ACK", cseq, &branch);
    if let Some(src) = body {
        let content = sdp.unwrap_or(src.body());
        if !content.is_empty() {
            let ct = src
                .header(HeaderName::ContentType)
                .unwrap_or(b"application/sdp");
            b.body(ct, Bytes::copy_from_slice(content));
        }
    }
    let hop = att.leg.next_hop();
    let ack = SentAck {
        call_id: att.leg.call_id.clone(),
        cseq,
        bytes: b.build(),
        peer: hop,
        transport: att.leg.transport,
    };
    let _ = st
        .ctx
        .transports
        .send_now(ack.transport, ack.peer, ack.bytes.clone());
    if initial {
        st.ack_b = Some(ack);
    } else {
        st.reinvite_ack_b = Some(Box::new(ack));
    }
}

pub(super) fn on_request(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    side: Side,
    key: ServerKey,
    env: Envelope,
) {
    let method = env.msg.method().unwrap_or(Method::Other);
    let my_tag = match side {
        Side::A => st.a.local_tag.clone(),
        Side::B => st
            .leg(Side::B)
            .map(|l| l.local_tag.clone())
            .unwrap_or_default(),
    };
    let respond_local = |st: &Call, status: u16, extra: &[(HeaderName, &[u8])]| {
        let bytes = local_response(&env, status, Some(&my_tag), extra);
        let _ = st.ctx.driver.respond(&key, status, env.reply(bytes));
    };
    // CSeq must grow within a dialog (RFC 3261 §12.2.2).
    let cseq = env.msg.cseq().and_then(|c| c.ok()).map_or(0, |c| c.seq);
    if let Some(leg) = st.leg_mut(side) {
        if cseq < leg.remote_cseq && method != Method::Ack {
            let _ = leg;
            respond_local(st, 500, &[]);
            return;
        }
        leg.remote_cseq = leg.remote_cseq.max(cseq);
    }
    if method == Method::Bye {
        respond_local(st, 200, &[]);
        st.history.push((
            if side == Side::A { "caller" } else { "gateway" }.into(),
            "BYE".into(),
        ));
        if st.phase == Phase::Confirmed || st.phase == Phase::Answered || st.phase == Phase::Ending
        {
            st.bye_all(myself, Some(side));
        } else {
            // BYE in an early dialog: end the call.
            st.fail_a(487, &[]);
            for i in 0..st.attempts.len() {
                st.attempts[i].abandoned = true;
                st.cancel_attempt(i);
            }
            st.phase = Phase::Ending;
            st.maybe_finish(myself);
        }
        return;
    }
    if method == Method::Refer {
        // The policy of the trunk the REFER came from: the caller's (inbound) trunk for leg A,
        // the gateway's for leg B (`refer`: "REFER handling for requests from this trunk").
        let policy_trunk = match side {
            Side::A => st.inbound.name.clone(),
            Side::B => st.current().map(|a| a.trunk.clone()).unwrap_or_default(),
        };
        let pass = st
            .ctx
            .config()
            .trunk(&policy_trunk)
            .is_some_and(|t| t.refer == ReferPolicy::Pass);
        if !pass {
            respond_local(st, 403, &[]);
            return;
        }
    }
    let to_side = match side {
        Side::A => Side::B,
        Side::B => Side::A,
    };
    let Some(far) = st.leg(to_side).cloned() else {
        respond_local(st, 481, &[]);
        return;
    };
    if far.remote_tag.is_none() && method != Method::Prack && method != Method::Update {
        respond_local(st, 491, &[]);
        return;
    }
    if st.phase == Phase::Ending {
        respond_local(st, 481, &[]);
        return;
    }
    // Our own re-INVITEs moving the media here are in progress: an offer now would cross them
    // (RFC 3261 §14.2: 491, the offerer tries again later).
    if !st.reanchors.is_empty()
        && (method == Method::Invite
            || method == Method::Update && super::media::sdp_body(&env.msg).is_some())
    {
        respond_local(st, 491, &[]);
        return;
    }
    // Relay: the same method on the far leg, in its dialog, with its CSeq (PRACK maps its RAck).
    let mut leg = far;
    let method_bytes = env.msg.method_bytes().unwrap_or_default().to_vec();
    leg.local_cseq += 1;
    let cseq_far = leg.local_cseq;
    let branch = ids::new_branch(st.shard);
    let mut b = leg.request(&st.ctx.me, &method_bytes, cseq_far, &branch);
    if matches!(
        method,
        Method::Invite | Method::Update | Method::Subscribe | Method::Notify | Method::Refer
    ) {
        b.header(
            HeaderName::Contact,
            st.ctx
                .me
                .on(leg.local_port)
                .contact(leg.transport)
                .as_bytes(),
        );
    }
    if method == Method::Prack
        && let Some(Ok(rack)) = env.msg.rack()
    {
        {
            let inv_cseq = st.current().map_or(1, |a| a.invite_cseq());
            b.header_fmt(
                HeaderName::RAck,
                format_args!("{} {} INVITE", rack.rseq, inv_cseq),
            );
        }
    }
    if method == Method::Refer {
        b.copy_headers(&env.msg, HeaderName::ReferTo);
        b.copy_headers(&env.msg, HeaderName::ReferredBy);
    }
    // An offer in a re-INVITE or UPDATE (hold, resume, a codec change) is rewritten for the
    // far leg, and the relay follows the offerer at once (RFC 3264 §8: it listens there now).
    let offered = matches!(method, Method::Invite | Method::Update)
        && super::media::sdp_body(&env.msg).is_some();
    let media_undo = (offered && st.relaying()).then(|| st.last_sdp(side));
    let body = if offered {
        let sdp = super::media::sdp_body(&env.msg)
            .unwrap_or_default()
            .to_vec();
        match st.media_sdp(side, &sdp, true) {
            Ok(b) => b,
            Err(e) => {
                tracing::debug!(parent: &st.span, error = %e, "an offer the relay cannot carry");
                respond_local(st, 488, &[]);
                return;
            }
        }
    } else if method == Method::Prack {
        // With a late offer, the PRACK carries the answer to the reliable 18x's offer.
        st.media_sdp_of(side, &env.msg, false)
    } else {
        None
    };
    // A REFER's NOTIFY names the REFER's CSeq on this leg: renumbered for the far leg.
    let event = (method == Method::Notify)
        .then(|| env.msg.header(HeaderName::Event))
        .flatten()
        .and_then(|e| super::refer_event::renumbered(&st.refers, side, e));
    if let Some(e) = &event {
        b.header(HeaderName::Event, e);
    }
    let skip: &[HeaderName] = if event.is_some() {
        &[HeaderName::Event]
    } else {
        &[]
    };
    relay_request_parts(&mut b, &env.msg, skip, body.as_deref());
    if method == Method::Refer {
        super::refer_event::remember(
            &mut st.refers,
            super::refer_event::ReferIds {
                notifier: to_side,
                there: cseq_far,
                here: cseq,
            },
        );
    }
    if let Some(l) = st.leg_mut(to_side) {
        l.local_cseq = cseq_far;
    }
    match st.send_request(to_side, b.build()) {
        Some(client) => st.relays.push(Relay {
            span: {
                let parent = if to_side == Side::A {
                    &st.a_span
                } else {
                    st.current().map_or(&st.span, |a| &a.span)
                };
                tracing::info_span!(
                    parent: parent,
                    "sip.transaction",
                    sip.method = %String::from_utf8_lossy(&method_bytes),
                    sip.relayed_from = if side == Side::A { "A" } else { "B" },
                    sip.status = tracing::field::Empty,
                )
            },
            client,
            from: side,
            server: key,
            request: env,
            invite_cseq: (method == Method::Invite).then_some(cseq_far),
            offered,
            media_undo,
        }),
        None => respond_local(st, 503, &[]),
    }
}

/// One of the call's other client transactions ended (a relayed request, or our BYE): a relayed
/// request that got no final answer is answered 408/503 on the leg it came from (a BYE or an
/// INVITE that timed out ends the call); our BYEs done, the call may finish.
pub(super) fn on_client_ended(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    key: ClientKey,
    outcome: Outcome,
) {
    super::media::on_reanchor_ended(st, myself, &key, outcome);
    if super::session::on_refresh_ended(st, myself, &key, outcome) {
        return;
    }
    if let Some(pos) = st.relays.iter().position(|r| r.client == key)
        && outcome != Outcome::Completed
    {
        let r = st.relays.remove(pos);
        if let Some(previous) = r.media_undo.clone() {
            st.offer_rejected(r.from, previous);
        }
        let status = if outcome == Outcome::Timeout {
            408
        } else {
            503
        };
        let tag = st.a.local_tag.clone();
        let bytes = local_response(&r.request, status, Some(&tag), &[]);
        let _ = st
            .ctx
            .driver
            .respond(&r.server, status, r.request.reply(bytes));
        if r.request.msg.method() == Some(Method::Bye)
            || outcome == Outcome::Timeout && r.request.msg.method() == Some(Method::Invite)
        {
            st.bye_all(myself, None);
        }
    }
    let before = st.bye_keys.len();
    st.bye_keys.retain(|k| *k != key);
    if before != st.bye_keys.len() || st.phase == Phase::Ending {
        st.maybe_finish(myself);
    }
}
