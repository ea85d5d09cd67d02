//! The gateways' answers to a leg-B INVITE: provisional answers relayed to the caller (with their
//! SDP rewritten), the 2xx that answers the call (or, when the call no longer wants it, is ACKed and
//! hung up), a 2xx sent again ACKed again, a 422 retried once with a larger session interval
//! (RFC 4028), and a non-2xx final failed over or relayed, mapped per the trunk.

use bytes::Bytes;
use medpool_sip::message::builder::reason_phrase;
use medpool_sip::{SipMessage, ids};
use ractor::ActorRef;

use super::call::Call;
use super::leg::relay_response;
use super::msg::{DialogMsg, Phase};
use super::outbound::{OutboundIds, outbound_invite_to};
use crate::health::InviteOutcome;
use crate::txlayer::Envelope;

impl Call {
    /// The SDP of a gateway's 18x or 2xx to our INVITE, rewritten for the caller: the answer to the
    /// caller's offer, or (a late offer: the caller's INVITE had none) the gateway's offer.
    pub(super) fn media_from_gateway(&mut self, msg: &SipMessage) -> Option<Bytes> {
        let caller_offered = self
            .a_invite
            .as_ref()
            .is_some_and(|e| super::media::sdp_body(&e.msg).is_some());
        self.media_sdp_of(crate::txlayer::Side::B, msg, !caller_offered)
    }

    /// Sends the leg-B ACK again for a retransmitted 2xx of the answer we took (none yet: the ACK
    /// goes when it can, e.g. once the caller's ACK brings a late offer's answer).
    pub(super) fn reack_b(&self, env: &Envelope) {
        // The ACK of the very INVITE the 2xx answers: same Call-ID and CSeq number.
        let call_id = env.msg.call_id().and_then(|c| c.ok());
        let cseq = env.msg.cseq().and_then(|c| c.ok()).map(|c| c.seq);
        if let Some(ack) = self
            .ack_b
            .iter()
            .chain(self.reinvite_ack_b.as_deref())
            .find(|ack| call_id == Some(&ack.call_id[..]) && cseq == Some(ack.cseq))
        {
            let _ = self
                .ctx
                .transports
                .send_now(ack.transport, ack.peer, ack.bytes.clone());
        }
    }
}

impl Call {
    /// Attempt `idx` was refused 422 (Session Interval Too Small): its INVITE goes again, once,
    /// with Session-Expires and Min-SE raised to the 422's Min-SE (RFC 4028 §7.4), as a new
    /// transaction of the same leg (same Call-ID and From tag, the next CSeq). False when it
    /// cannot (retried already, no larger Min-SE, the caller gone): the 422 is then an answer
    /// like any other.
    fn retry_with_larger_interval(&mut self, idx: usize, env: &Envelope) -> bool {
        let att = &self.attempts[idx];
        if att.timer_retried || self.a_final_sent {
            return false;
        }
        let Some(min_se) = env.msg.min_se().and_then(Result::ok) else {
            return false;
        };
        let Some(old) = att.invite.as_ref().map(|e| &e.msg) else {
            return false;
        };
        let asked = old
            .session_expires()
            .and_then(Result::ok)
            .map_or(0, |s| s.delta);
        let Some(interval) = super::session::raised(asked, min_se) else {
            return false;
        };
        let config = self.ctx.config();
        let (Some(configured), Some(inv)) = (config.trunk(&att.trunk), self.a_invite.as_ref())
        else {
            return false;
        };
        // The same target as the first INVITE: a trunk named by DNS keeps its name in the
        // Request-URI and goes to the address the first attempt was resolved to.
        let uri_host = crate::dns::Directory::uri_host(configured);
        let trunk = &super::outbound::at_peer(configured, att.leg.peer, att.leg.transport);
        let cseq = old.cseq().and_then(Result::ok).map_or(1, |c| c.seq) + 1;
        let ids = OutboundIds {
            call_id: String::from_utf8_lossy(&att.leg.call_id).into_owned(),
            tag: att.leg.local_tag.clone(),
            branch: ids::new_branch(self.shard),
            cseq,
        };
        // The offer the first INVITE carried (rewritten for the relay, if it was); outbound_invite
        // puts it in place of the caller's SDP again, in a multipart body too.
        let body = super::body::sdp_of(old);
        let ask = super::outbound::SessionAsk {
            interval,
            min_se: min_se.max(trunk.min_se),
        };
        let Some(out) = outbound_invite_to(
            self.me(),
            &inv.msg,
            trunk,
            uri_host.as_deref(),
            &self.inbound,
            &self.called,
            &self.calling,
            ids,
            body,
            Some(ask),
        ) else {
            return false;
        };
        let Some(invite) = Envelope::outgoing(out.bytes, out.leg.peer, out.leg.transport) else {
            return false;
        };
        let Some(key) = crate::txlayer::client_key_of_request(&invite.msg) else {
            return false;
        };
        let reliable = out.leg.transport.is_reliable();
        if let Err(e) = self.start_client(&key, invite.clone(), reliable) {
            tracing::debug!(error = %e, "could not send the INVITE again after a 422");
            return false;
        }
        let trunk_name = trunk.name.clone();
        let att = &mut self.attempts[idx];
        att.timer_retried = true;
        att.settled = false;
        att.leg = out.leg;
        att.invite_cseq = cseq;
        att.invite = Some(Box::new(invite));
        att.key = key;
        att.tx_span = tracing::info_span!(parent: &att.span, "sip.transaction", sip.method = "INVITE", sip.status = tracing::field::Empty);
        self.history.push((
            trunk_name,
            format!("422: sent again with Session-Expires {interval}"),
        ));
        true
    }
}

pub(super) fn on_invite_response(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    idx: usize,
    status: u16,
    env: Envelope,
) {
    let trunk = st.attempts[idx].trunk.clone();
    if status >= 200 {
        // A final answer: nothing more can come on this INVITE that needs the call.
        st.attempts[idx].settled = true;
        let att = &mut st.attempts[idx];
        att.tx_span.record("sip.status", status);
        att.span.record("sip.status", status);
        att.tx_span = tracing::Span::none();
    } else {
        tracing::debug!(parent: &st.attempts[idx].tx_span, status, "provisional");
    }
    if st.attempts[idx].abandoned {
        // A late answer to an attempt we gave up on.
        if (200..300).contains(&status) && !st.attempts[idx].answered {
            st.ack_and_bye(idx, &env);
        } else if (200..300).contains(&status) {
            st.on_answer_again(idx, &env);
        } else if status > 100 && status < 200 {
            st.cancel_attempt(idx);
        }
        st.maybe_finish(myself);
        return;
    }
    match status {
        100 => st.attempts[idx].got_100 = true,
        101..=199 if st.a_final_sent => {} // the caller has its final answer: nothing after it
        101..=199 => {
            let first = !st.attempts[idx].got_18x;
            st.attempts[idx].got_18x = true;
            if first {
                st.gateway_outcome(&trunk, InviteOutcome::Answered(status));
            }
            st.attempts[idx].on_early(&env.msg);
            let rseq = env.msg.rseq().and_then(|r| r.ok());
            if st.a_invite.is_some() {
                let body = st.media_from_gateway(&env.msg);
                // An early answer without the required SRTP: the final answer decides.
                st.crypto_refused = false;
                st.relay_to_a(status, &env.msg, rseq, body.as_deref());
                if st.phase == Phase::Calling {
                    st.phase = Phase::Early;
                }
            }
        }
        200..=299 if st.attempts[idx].answered => {
            // The gateway sent its 2xx again (our ACK was lost; the INVITE transaction hands
            // retransmissions up, RFC 6026 §8.4): ACK it again. Never mistake it for a new answer.
            // A 2xx from another fork is ACKed and hung up.
            st.on_answer_again(idx, &env);
        }
        200..=299 => {
            if !st.attempts[idx].got_18x {
                st.gateway_outcome(&trunk, InviteOutcome::Answered(status));
            }
            st.attempts[idx].answered = true;
            if st.a_final_sent {
                // The caller cancelled (or the call was refused) while the 200 was on its way: ACK and BYE.
                st.attempts[idx].abandoned = true;
                st.ack_and_bye(idx, &env);
                st.maybe_finish(myself);
                return;
            }
            st.attempts[idx].leg.learn_from_answer(&env.msg);
            // The session timer the answer set up (before the record is written with it).
            st.session_answered(&env.msg);
            // Our refreshes' Min-SE: the trunk's, or what a 422 raised it to.
            let asked_min_se = st.attempts[idx]
                .invite
                .as_ref()
                .and_then(|e| e.msg.min_se())
                .and_then(Result::ok)
                .unwrap_or(0);
            if let Some(t) = st.ctx.config().trunk(&trunk) {
                st.session_min_se = t.min_se.max(asked_min_se);
            }
            let body = st.media_from_gateway(&env.msg);
            if std::mem::take(&mut st.crypto_refused) {
                // The gateway answered without the SRTP its trunk requires: it is hung up and the
                // caller refused, as if the offer had been (RFC 4568 §7.1.3 gives no other way).
                st.history
                    .push((trunk.clone(), "answer without the required SRTP".into()));
                st.attempts[idx].abandoned = true;
                st.ack_and_bye(idx, &env);
                st.fail_a(488, &[]);
                st.maybe_finish(myself);
                return;
            }
            st.relay_to_a(status, &env.msg, None, body.as_deref());
            st.phase = Phase::Answered;
            if !st.a.transport.is_reliable() {
                let t1 = st.ctx.timers.t1;
                drop(myself.send_after(t1, move || DialogMsg::Retransmit2xx { interval: t1 * 2 }));
            }
        }
        422 if st.retry_with_larger_interval(idx, &env) => {}
        _ => {
            // A non-2xx final (the transaction layer ACKed it).
            let outcome = InviteOutcome::Answered(status);
            if !st.attempts[idx].got_18x || status == 503 {
                st.gateway_outcome(&trunk, outcome);
            }
            if st.attempts[idx].got_18x || st.phase != Phase::Calling {
                // After a provisional reached the caller there is no failover: relay the answer.
                st.attempts[idx].abandoned = true;
                st.history.push((trunk.clone(), format!("{status}")));
                if !st.a_final_sent
                    && let Some(inv) = st.a_invite.clone()
                {
                    let mapped = st
                        .ctx
                        .config()
                        .trunk(&trunk)
                        .map_or(status, |t| t.map_response(status));
                    let reason = if mapped == status {
                        env.msg.reason_phrase().unwrap_or_default().to_vec()
                    } else {
                        reason_phrase(mapped).as_bytes().to_vec()
                    };
                    let bytes = relay_response(
                        st.ctx.me.on(st.a.local_port),
                        &inv,
                        mapped,
                        &reason,
                        &st.a.local_tag,
                        Some((&env.msg, None)),
                        None,
                    );
                    st.respond_a(mapped, bytes);
                }
                st.phase = Phase::Ending;
                st.maybe_finish(myself);
            } else {
                st.attempt_failed(myself, status, Some(&env.msg), &format!("{status}"));
            }
        }
    }
}
