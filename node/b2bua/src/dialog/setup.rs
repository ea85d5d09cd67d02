//! Setting a call up: answering the caller, choosing and calling gateways, failing over, and the
//! leg-B INVITE's answers.

use std::time::Duration;

use bytes::Bytes;
use medpool_sip::message::builder::{MessageBuilder, reason_phrase};
use medpool_sip::transaction::{ClientKey, Outcome, ServerKey};
use medpool_sip::{HeaderName, Method, SipMessage, ids};
use ractor::ActorRef;

use super::call::{Attempt, Call, CallSeed, MediaRefusal};
use super::leg::{Leg, local_response, relay_response};
use super::media::AttemptMedia;
use super::msg::{DialogArgs, DialogMsg, Phase};
use super::outbound::{OutboundIds, outbound_invite_to};
use super::spans::call_span;
use crate::config::Trunk;
use crate::ctx::{NodeCtx, NodeEvent};
use crate::health::InviteOutcome;
use crate::txlayer::{Envelope, Owner};

impl Call {
    /// Answers the caller's INVITE (final or provisional) through its server transaction.
    pub(super) fn respond_a(&mut self, status: u16, bytes: Bytes) {
        let Some(inv) = &self.a_invite else { return };
        if status > 100 && status < 300 && !self.pdd_recorded {
            self.pdd_recorded = true;
            self.ctx
                .stats
                .post_dial_delay
                .observe(self.started.elapsed());
        }
        if let Some(env) = inv.reply(bytes) {
            if status >= 200 {
                self.a_final_sent = true;
                if (200..300).contains(&status) {
                    self.a_2xx = Some((status, Box::new(env.clone())));
                    self.a_answered = true;
                    self.answered_after = Some(self.started.elapsed());
                    // Written down as soon as the caller has its 2xx, not at its ACK: a shard that
                    // moves in between (a drain) must not lose a call the caller considers up. The
                    // new owner carries it on as confirmed (the ACK is then absorbed there).
                    // A lingering call (its shard moved during its set-up) writes it at the
                    // caller's ACK instead, and then hands over: it is not moved again, and the
                    // new owner must not carry it on before this node has relayed that ACK.
                    if !self.stored
                        && !self.lingering
                        && let Some(rec) = self.record()
                        && self.ctx.store.store(rec)
                    {
                        self.mark_stored();
                    }
                    tracing::debug!(parent: &self.span, status, "answered");
                    self.ctx.publish(NodeEvent::CallAnswered {
                        call_id: String::from_utf8_lossy(&self.a.call_id).into_owned(),
                        gateway: self.current().map(|a| a.trunk.clone()).unwrap_or_default(),
                    });
                }
            }
            self.last_status = status;
            if let Err(e) = self.ctx.driver.respond(&self.a_key, status, env) {
                tracing::debug!(error = %e, status, "could not answer the caller's INVITE");
            }
        }
    }

    /// Relays a gateway's response to the caller's INVITE (same status and reason, its headers, and
    /// its body or `body` in its place).
    pub(super) fn relay_to_a(
        &mut self,
        status: u16,
        from: &SipMessage,
        rseq: Option<u32>,
        body: Option<&[u8]>,
    ) {
        let Some(inv) = self.a_invite.clone() else {
            return;
        };
        let reason = from.reason_phrase().unwrap_or_default().to_vec();
        let bytes = relay_response(
            self.ctx.me.on(self.a.local_port),
            &inv,
            status,
            &reason,
            &self.a.local_tag,
            Some((from, body)),
            rseq,
        );
        self.respond_a(status, bytes);
    }

    pub(super) fn fail_a(&mut self, status: u16, extra: &[(HeaderName, &[u8])]) {
        if self.a_final_sent {
            return;
        }
        let Some(inv) = self.a_invite.clone() else {
            return;
        };
        let bytes = local_response(&inv, status, Some(&self.a.local_tag), extra);
        self.respond_a(status, bytes);
        self.phase = Phase::Ending;
    }

    pub(super) fn gateway_outcome(&self, trunk: &str, outcome: InviteOutcome) {
        // A trunk named by DNS: the outcome is its target's (the latest attempt on the trunk).
        let peer = self.attempts.iter().rev().find(|a| a.trunk == trunk);
        if !peer.is_some_and(|a| self.ctx.dns.invite_outcome(trunk, a.leg.peer, outcome)) {
            self.ctx.gateways.invite_outcome(trunk, outcome);
        }
    }

    /// Starts the next gateway attempt; false when the route is exhausted.
    pub(super) fn try_next(&mut self, myself: &ActorRef<DialogMsg>) -> bool {
        let config = self.ctx.config();
        while self.next_candidate < self.plan.len() {
            let cand = self.plan[self.next_candidate].clone();
            self.next_candidate += 1;
            let Some(trunk) = config.trunk(&cand.trunk) else {
                continue;
            };
            let uri_host = crate::dns::Directory::uri_host(trunk);
            let trunk = match self.ctx.dns.bind(trunk, &cand) {
                Ok(t) => t,
                Err(why) => {
                    self.history.push((trunk.name.clone(), why.to_string()));
                    continue;
                }
            };
            let media = match self.attempt_media(&trunk) {
                Ok(m) => m,
                Err(refusal) => {
                    self.media_refusal = Some(refusal);
                    let why = match refusal {
                        MediaRefusal::Ports => "media ports exhausted",
                        MediaRefusal::Offer => "offer not acceptable to the trunk",
                    };
                    self.history.push((trunk.name.clone(), why.into()));
                    continue;
                }
            };
            if !self.ctx.gateways.try_acquire(&trunk) {
                self.history
                    .push((trunk.name.clone(), "at capacity".into()));
                // A gateway that may take the offer later: the caller gets 503, not 488.
                self.media_refusal = None;
                continue;
            }
            if let Some(prev) = self.gateway_active.replace(trunk.name.clone()) {
                self.ctx.gateways.release(&prev);
            }
            let Some(att) = self.build_attempt(&trunk, uri_host.as_deref(), media) else {
                continue;
            };
            let key = att.key.clone();
            let Some(env) = att.invite.as_deref().cloned() else {
                continue;
            };
            let number = att.number;
            let call_id = att.leg.call_id.clone();
            // Room for this attempt only (a Vec's first growth makes room for four, and an
            // attempt is large): most calls make one.
            self.attempts.reserve_exact(1);
            self.attempts.push(att);
            self.ctx.registry.add_leg_b(&call_id, myself.get_derived());
            self.ctx.set_ups.leg(self.actor.pid(), call_id.clone());
            self.ctx
                .registry
                .add_client(key.clone(), Owner::Dialog(myself.get_derived()));
            if let Err(e) = self.ctx.driver.start_client(
                key.clone(),
                env,
                trunk.transport != crate::config::Transport::Udp,
            ) {
                tracing::warn!(error = %e, "could not start the INVITE to the gateway");
                self.ctx.registry.remove_client(&key);
                self.history.push((trunk.name.clone(), "overloaded".into()));
                continue;
            }
            if self.attempts.len() == 1 {
                self.ctx
                    .stats
                    .stages
                    .invite_out
                    .observe(self.started.elapsed());
            }
            if let Some(ff) = trunk.fast_failover() {
                drop(myself.send_after(ff, move || DialogMsg::FastFailover { attempt: number }));
            }
            tracing::debug!(trunk = %trunk.name, attempt = number, "calling gateway");
            return true;
        }
        false
    }

    pub(super) fn build_attempt(
        &self,
        trunk: &Trunk,
        uri_host: Option<&str>,
        media: AttemptMedia,
    ) -> Option<Attempt> {
        let inv = self.a_invite.as_ref()?;
        let ids = OutboundIds {
            call_id: ids::new_call_id(self.shard),
            tag: ids::new_tag(self.shard),
            branch: ids::new_branch(self.shard),
            cseq: 1,
        };
        let branch = ids.branch.clone();
        let out = outbound_invite_to(
            self.me(),
            &inv.msg,
            trunk,
            uri_host,
            &self.inbound,
            &self.called,
            &self.calling,
            ids,
            match &media {
                AttemptMedia::Bypass => None,
                AttemptMedia::Relayed(body) => Some(body),
            },
            None,
        )?;
        let leg = out.leg;
        let call_id = String::from_utf8_lossy(&leg.call_id).into_owned();
        let invite = Envelope::outgoing(out.bytes, leg.peer, leg.transport)?;
        let key = crate::txlayer::client_key_of_request(&invite.msg)?;
        let number = self.attempts.len() as u32 + 1;
        let span = tracing::info_span!(
            parent: &self.span,
            "leg",
            leg.side = "B",
            leg.attempt = number,
            leg.trunk = %trunk.name,
            sip.call_id = %call_id,
            sip.status = tracing::field::Empty,
        );
        let tx_span = tracing::info_span!(parent: &span, "sip.transaction", sip.method = "INVITE", sip.branch = %branch, sip.status = tracing::field::Empty);
        self.span.record("call.gateway", trunk.name.as_str());
        self.span.record("call.b_call_id", call_id.as_str());
        if number > 1 {
            self.span.record("call.failovers", number - 1);
            tracing::debug!(parent: &self.span, attempt = number, trunk = %trunk.name, "failover to the next gateway");
        }
        Some(Attempt {
            span,
            tx_span,
            leg,
            trunk: trunk.name.clone(),
            invite_cseq: invite.msg.cseq().and_then(Result::ok).map_or(1, |c| c.seq),
            invite: Some(Box::new(invite)),
            key,
            number,
            got_100: false,
            got_18x: false,
            cancel_sent: false,
            abandoned: false,
            answered: false,
            settled: false,
            relayed: matches!(media, AttemptMedia::Relayed(_)),
            timer_retried: false,
            early: Vec::new(),
            extra_answers: Vec::new(),
        })
    }

    /// The current attempt failed before any provisional reached the caller: fail over or give up.
    pub(super) fn attempt_failed(
        &mut self,
        myself: &ActorRef<DialogMsg>,
        status: u16,
        response: Option<&SipMessage>,
        why: &str,
    ) {
        let trunk = self.current().map(|a| a.trunk.clone()).unwrap_or_default();
        if let Some(cur) = self.current_mut() {
            cur.abandoned = true;
        }
        self.history.push((trunk.clone(), why.to_owned()));
        let failover_allowed = self
            .ctx
            .config()
            .trunk(&trunk)
            .is_some_and(|t| t.is_failover_code(status));
        if self.phase == Phase::Calling && failover_allowed && self.try_next(myself) {
            return;
        }
        if self.a_final_sent {
            return;
        }
        // Give up: relay the final answer, mapped per the trunk.
        let mapped = self
            .ctx
            .config()
            .trunk(&trunk)
            .map_or(status, |t| t.map_response(status));
        let Some(inv) = self.a_invite.clone() else {
            return;
        };
        let reason = if mapped == status {
            response
                .and_then(|r| r.reason_phrase())
                .filter(|r| !r.is_empty())
                .map(<[u8]>::to_vec)
        } else {
            None
        }
        .unwrap_or_else(|| reason_phrase(mapped).as_bytes().to_vec());
        let bytes = relay_response(
            self.me().on(self.a.local_port),
            &inv,
            mapped,
            &reason,
            &self.a.local_tag,
            response.map(|r| (r, None)),
            None,
        );
        self.respond_a(mapped, bytes);
        self.phase = Phase::Ending;
        self.maybe_finish(myself);
    }

    pub(super) fn cancel_attempt(&mut self, idx: usize, myself: &ActorRef<DialogMsg>) {
        let att = &mut self.attempts[idx];
        if att.cancel_sent || att.answered {
            return;
        }
        if !self.ctx.driver.may_cancel(&att.key) {
            return; // no provisional yet: CANCEL when one arrives (RFC 3261 §9.1)
        }
        let Some(invite) = &att.invite else { return };
        att.cancel_sent = true;
        let inv = &invite.msg;
        let mut b = MessageBuilder::request_method(
            Method::Cancel,
            inv.request_uri_bytes().unwrap_or_default(),
        );
        if let Some(Ok(v)) = inv.top_via() {
            b.header(HeaderName::Via, v.raw);
        }
        b.header(HeaderName::MaxForwards, b"70");
        b.copy_headers(inv, HeaderName::Route);
        b.copy_headers(inv, HeaderName::From);
        b.copy_headers(inv, HeaderName::To);
        b.copy_headers(inv, HeaderName::CallId);
        let seq = inv.cseq().and_then(|c| c.ok()).map_or(1, |c| c.seq);
        b.header_fmt(HeaderName::CSeq, format_args!("{seq} CANCEL"));
        if let Some(env) = Envelope::outgoing(b.build(), invite.peer, invite.transport) {
            let key = att.key.cancel_key();
            self.ctx
                .registry
                .add_client(key.clone(), Owner::Dialog(myself.get_derived()));
            let reliable = env.transport.is_reliable();
            if self
                .ctx
                .driver
                .start_client(key.clone(), env, reliable)
                .is_err()
            {
                self.ctx.registry.remove_client(&key);
            }
        }
    }

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
    fn retry_with_larger_interval(
        &mut self,
        idx: usize,
        env: &Envelope,
        myself: &ActorRef<DialogMsg>,
    ) -> bool {
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
        self.ctx
            .registry
            .add_client(key.clone(), Owner::Dialog(myself.get_derived()));
        if let Err(e) = self
            .ctx
            .driver
            .start_client(key.clone(), invite.clone(), reliable)
        {
            tracing::debug!(error = %e, "could not send the INVITE again after a 422");
            self.ctx.registry.remove_client(&key);
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
            st.ack_and_bye(idx, &env, myself);
        } else if (200..300).contains(&status) {
            st.on_answer_again(idx, &env, myself);
        } else if status > 100 && status < 200 {
            st.cancel_attempt(idx, myself);
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
            st.on_answer_again(idx, &env, myself);
        }
        200..=299 => {
            if !st.attempts[idx].got_18x {
                st.gateway_outcome(&trunk, InviteOutcome::Answered(status));
            }
            st.attempts[idx].answered = true;
            if st.a_final_sent {
                // The caller cancelled (or the call was refused) while the 200 was on its way: ACK and BYE.
                st.attempts[idx].abandoned = true;
                st.ack_and_bye(idx, &env, myself);
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
                st.ack_and_bye(idx, &env, myself);
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
        422 if st.retry_with_larger_interval(idx, &env, myself) => {}
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

/// A leg-B INVITE's transaction ended (true when `key` is one): a timeout or transport error
/// before any answer fails the attempt over, or ends the call.
pub(super) fn on_attempt_ended(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    key: &ClientKey,
    outcome: Outcome,
) -> bool {
    if let Some(idx) = st.attempts.iter().position(|a| a.key == *key) {
        let was_settled = st.attempts[idx].settled;
        st.attempts[idx].settled = true;
        let att = &st.attempts[idx];
        if was_settled || att.abandoned {
            st.maybe_finish(myself);
            return true;
        }
        if outcome != Outcome::Completed && !att.abandoned && !att.answered {
            let trunk = att.trunk.clone();
            let (gw, status, why) = match outcome {
                Outcome::TransportError => (InviteOutcome::TransportError, 503, "transport error"),
                _ => (InviteOutcome::Timeout, 408, "timeout"),
            };
            st.gateway_outcome(&trunk, gw);
            if st.attempts[idx].got_18x || st.phase != Phase::Calling {
                st.attempts[idx].abandoned = true;
                st.fail_a(status, &[]);
                st.maybe_finish(myself);
            } else {
                st.attempt_failed(myself, status, None, why);
            }
        }
        st.maybe_finish(myself);
        return true;
    }
    false
}

/// The state of a call for a new INVITE, registered before the actor runs (its release unregisters
/// it): a CANCEL or an in-dialog request handled right after the spawn finds the call, and a call
/// that ends at once leaves nothing behind.
/// What makes a new call's actor reachable ([`Routes::register`]), read from its arguments before
/// they move into the actor.
pub(super) struct Routes {
    key: ServerKey,
    call_id: Bytes,
    remote_tag: Bytes,
    shard: u16,
}

impl Routes {
    pub(super) fn of(args: &DialogArgs) -> Self {
        let msg = &args.env.msg;
        Self {
            key: args.key.clone(),
            call_id: Bytes::copy_from_slice(msg.call_id().and_then(|c| c.ok()).unwrap_or_default()),
            remote_tag: Bytes::copy_from_slice(msg.from_tag().unwrap_or_default()),
            shard: args.shard,
        }
    }

    /// Makes the call's actor reachable, from the task that spawned it and before the actor runs:
    /// the registry routes CANCELs of its INVITE and requests of leg A to it, and it counts as in
    /// set-up until written down or ended (`mark_stored`, `release`), so its messages reach it
    /// here even if its shard moves away meanwhile. The next message the spawning task takes (a
    /// CANCEL right behind the INVITE) finds it.
    pub(super) fn register(self, ctx: &NodeCtx, myself: &ActorRef<DialogMsg>) {
        ctx.registry.add_call(
            self.key,
            &self.call_id,
            &self.remote_tag,
            self.shard,
            myself.get_derived(),
        );
        ctx.set_ups
            .begin(myself.get_id().pid(), self.shard, self.call_id);
    }
}

pub(super) fn new_call(args: DialogArgs, myself: &ActorRef<DialogMsg>) -> Call {
    let DialogArgs {
        ctx,
        key,
        env,
        inbound,
        shard,
    } = args;
    let msg = &env.msg;
    // Routed to by the registry and counted in set-up since its spawn (`register`).
    let call_id = Bytes::copy_from_slice(msg.call_id().and_then(|c| c.ok()).unwrap_or_default());
    let remote_tag = msg.from_tag().map(Bytes::copy_from_slice);
    let local_tag = ids::new_tag(shard);
    let to = msg.header(HeaderName::To).unwrap_or_default();
    let mut local_uri = to.to_vec();
    local_uri.extend_from_slice(b";tag=");
    local_uri.extend_from_slice(local_tag.as_bytes());
    let remote_target = msg
        .contacts()
        .next()
        .and_then(|c| c.ok())
        .map(|c| Bytes::copy_from_slice(c.uri))
        .unwrap_or_else(|| Bytes::copy_from_slice(msg.request_uri_bytes().unwrap_or_default()));
    let route_set = msg
        .record_routes()
        .flatten()
        .map(|r| Bytes::copy_from_slice(r.raw))
        .collect();
    let cseq = msg.cseq().and_then(|c| c.ok()).map_or(0, |c| c.seq);
    let called_raw = msg
        .request_uri_bytes()
        .and_then(|u| crate::translate::number_from_uri(&String::from_utf8_lossy(u)))
        .unwrap_or_default();
    let called = inbound.normalize_number(&called_raw).into_owned();
    let calling_src = msg
        .p_asserted_identities()
        .next()
        .and_then(|p| p.ok())
        .map(|p| p.uri)
        .or_else(|| msg.from().and_then(|f| f.ok()).map(|f| f.uri))
        .map(|u| crate::translate::number_from_uri(&String::from_utf8_lossy(u)).unwrap_or_default())
        .unwrap_or_default();
    let calling = inbound.normalize_number(&calling_src).into_owned();
    let a = Leg {
        call_id,
        local_tag,
        local_uri: Bytes::from(local_uri),
        remote_uri: Bytes::copy_from_slice(msg.header(HeaderName::From).unwrap_or_default()),
        remote_tag,
        remote_target,
        route_set,
        peer: env.reply_peer(),
        transport: env.transport,
        local_cseq: 0,
        remote_cseq: cseq,
        local_port: ctx.me.bound(inbound.local_port),
    };
    let span = call_span(
        &ctx,
        &String::from_utf8_lossy(&a.call_id),
        shard,
        &inbound.name,
        &called,
        &calling,
        env.traceparent.as_deref(),
    );
    let a_span = tracing::info_span!(parent: &span, "leg", leg.side = "A", sip.call_id = %String::from_utf8_lossy(&a.call_id), leg.trunk = %inbound.name);
    Call::new(CallSeed {
        ctx,
        span,
        a_span,
        shard,
        inbound,
        a,
        a_key: key,
        a_invite: Some(env),
        a_cseq_invite: cseq,
        called,
        calling,
        answered_b: None,
        gateway_active: None,
        history: Vec::new(),
        actor: myself.get_id(),
        session: None,
    })
}

/// A new call starts: it counts as unrecorded, answers 100, and calls its first gateway (or fails
/// at once: Max-Forwards exhausted, no route, every gateway at capacity).
pub(super) fn start(st: &mut Call, myself: &ActorRef<DialogMsg>) {
    // Until its record is written, only this node can finish the call (see `mark_stored`).
    st.ctx
        .unrecorded_calls
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    tracing::debug!(parent: &st.span, via = ?st.a_invite.as_ref().and_then(|e| e.via), "call started");
    st.ctx.publish(NodeEvent::CallStarted {
        call_id: String::from_utf8_lossy(&st.a.call_id).into_owned(),
        shard: st.shard,
        trunk: st.inbound.name.clone(),
    });
    // 100 Trying at once (RFC 3261 §16.2 practice for a B2BUA: stops the caller's retransmissions).
    if let Some(inv) = st.a_invite.clone() {
        let trying = local_response(&inv, 100, None, &[]);
        st.respond_a(100, trying);
    }
    let config = st.ctx.config();
    let msg_mf = st
        .a_invite
        .as_ref()
        .and_then(|e| e.msg.max_forwards())
        .and_then(|r| r.ok());
    if msg_mf == Some(0) {
        st.fail_a(483, &[]);
        st.maybe_finish(myself);
        return;
    }
    // A session interval below what the inbound trunk accepts: 422 with our Min-SE (RFC 4028 §8.1).
    let caller_se = st
        .a_invite
        .as_ref()
        .and_then(|e| e.msg.session_expires())
        .and_then(Result::ok);
    if let Some(se) = caller_se
        && se.delta < st.inbound.min_se
    {
        let min_se = st.inbound.min_se.to_string();
        st.history.push((
            "caller".into(),
            format!("Session-Expires {} too small", se.delta),
        ));
        st.fail_a(422, &[(HeaderName::MinSe, min_se.as_bytes())]);
        st.maybe_finish(myself);
        return;
    }
    let random = rand::random::<u64>();
    let health = crate::dns::WithTargets {
        gateways: &st.ctx.gateways,
        dns: &st.ctx.dns,
    };
    match crate::routing::select(&config, &st.called, &st.inbound, &health, random) {
        Ok(plan) => {
            st.plan = st
                .ctx
                .dns
                .expand(plan.candidates, random, config.node.max_tries);
            if !st.try_next(myself) {
                let retry = config.node.retry_after.to_string();
                if st.media_refusal == Some(MediaRefusal::Offer) {
                    st.fail_a(488, &[]);
                } else {
                    if st.media_refusal == Some(MediaRefusal::Ports) {
                        st.ctx
                            .stats
                            .media_ports_exhausted
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    st.fail_a(503, &[(HeaderName::RetryAfter, retry.as_bytes())]);
                }
                st.maybe_finish(myself);
            }
        }
        Err(no_route) => {
            tracing::debug!(called = %st.called, %no_route, "no route");
            let status = no_route.status();
            let retry = config.node.retry_after.to_string();
            let extra: &[(HeaderName, &[u8])] = if status == 503 {
                &[(HeaderName::RetryAfter, retry.as_bytes())]
            } else {
                &[]
            };
            st.fail_a(status, extra);
            st.maybe_finish(myself);
        }
    }
}

/// The caller cancelled: 200 to the CANCEL; unless the caller has its final answer, 487 and every
/// attempt cancelled.
pub(super) fn on_cancel(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    key: &ServerKey,
    env: &Envelope,
) {
    let ok = local_response(env, 200, Some(&st.a.local_tag), &[]);
    if let Some(e) = env.reply(ok) {
        let _ = st.ctx.driver.respond(key, 200, e);
    }
    if !st.a_final_sent {
        st.fail_a(487, &[]);
        for i in 0..st.attempts.len() {
            st.attempts[i].abandoned = true;
            st.cancel_attempt(i, myself);
        }
        st.history.push(("caller".into(), "cancelled".into()));
        st.maybe_finish(myself);
    }
}

/// Attempt `attempt` had no provisional answer in time: CANCEL it and fail over.
pub(super) fn on_fast_failover(st: &mut Call, myself: &ActorRef<DialogMsg>, attempt: u32) {
    let idx = st.attempts.iter().position(|a| a.number == attempt);
    if let Some(idx) = idx
        && !st.attempts[idx].abandoned
        && !st.attempts[idx].got_18x
        && !st.attempts[idx].answered
        && st.phase == Phase::Calling
    {
        let trunk = st.attempts[idx].trunk.clone();
        st.gateway_outcome(&trunk, InviteOutcome::Timeout);
        st.cancel_attempt(idx, myself);
        st.attempt_failed(myself, 408, None, "fast failover: no provisional in time");
    }
}

/// The caller has not ACKed our 2xx yet: send it again (doubling up to T2), or, after 64*T1, end the
/// call (RFC 3261 §13.3.1.4).
pub(super) fn on_retransmit_2xx(st: &mut Call, myself: &ActorRef<DialogMsg>, interval: Duration) {
    if st.phase == Phase::Answered
        && let Some((status, env)) = st.a_2xx.clone()
    {
        if st
            .ctx
            .driver
            .respond(&st.a_key, status, Envelope::clone(&env))
            .is_err()
        {
            let _ = st
                .ctx
                .transports
                .send_now(env.transport, env.peer, env.msg.bytes());
        }
        let t = st.ctx.timers;
        if st.started.elapsed() > t.t1 * 64 + Duration::from_secs(1) && interval >= t.t2 {
            // No ACK in 64*T1: end the call (RFC 3261 §13.3.1.4).
            st.history.push(("caller".into(), "no ACK for 2xx".into()));
            st.bye_all(myself, None);
        } else {
            let next = (interval * 2).min(t.t2);
            drop(
                myself.send_after(interval, move || DialogMsg::Retransmit2xx {
                    interval: next,
                }),
            );
        }
    }
}
