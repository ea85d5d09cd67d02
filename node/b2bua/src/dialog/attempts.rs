//! Calling gateways: each attempt built (a new leg B and its INVITE) and started on the next
//! candidate of the route that binds, has media and has capacity; an attempt that fails before any
//! provisional reached the caller fails over to the next (or the caller gets the final answer);
//! CANCEL of an attempt; the fast-failover timer; a leg-B INVITE transaction that ended without an
//! answer; and each attempt's outcome reported to the gateway's health.

use medpool_sip::message::builder::{MessageBuilder, reason_phrase};
use medpool_sip::transaction::{ClientKey, Outcome};
use medpool_sip::{HeaderName, Method, SipMessage, ids};
use ractor::ActorRef;

use super::call::{Attempt, Call, MediaRefusal};
use super::leg::relay_response;
use super::media::AttemptMedia;
use super::msg::{DialogMsg, Phase};
use super::outbound::{OutboundIds, outbound_invite_to};
use crate::config::Trunk;
use crate::health::InviteOutcome;
use crate::txlayer::Envelope;

impl Call {
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
            let reliable = trunk.transport != crate::config::Transport::Udp;
            if let Err(e) = self.start_client(&key, env, reliable) {
                tracing::warn!(error = %e, "could not start the INVITE to the gateway");
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
                self.after(myself, ff, move || DialogMsg::FastFailover {
                    attempt: number,
                });
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

    pub(super) fn cancel_attempt(&mut self, idx: usize) {
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
            let reliable = env.transport.is_reliable();
            // A CANCEL the layer refuses (at its limit) is not sent; its route is taken back.
            let _ = self.start_client(&key, env, reliable);
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
        st.cancel_attempt(idx);
        st.attempt_failed(myself, 408, None, "fast failover: no provisional in time");
    }
}
