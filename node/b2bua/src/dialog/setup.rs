//! Setting a call up: answering the caller, choosing and calling gateways, failing over, and the
//! leg-B INVITE's answers.

use std::time::Duration;

use bytes::Bytes;
use medpool_sip::message::builder::{MessageBuilder, quote_display, reason_phrase};
use medpool_sip::message::uri::escape_user;
use medpool_sip::transaction::{ClientKey, Outcome};
use medpool_sip::transport::Transport;
use medpool_sip::{HeaderName, Method, SipMessage, ids};
use ractor::ActorRef;

use super::actor::*;
use super::call::*;
use super::leg::{Leg, local_response, relay_response};
use crate::config::Trunk;
use crate::ctx::NodeEvent;
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
                    self.a_2xx = Some((status, env.clone()));
                    self.a_answered = true;
                    self.answered_after = Some(self.started.elapsed());
                    // Written down as soon as the caller has its 2xx, not at its ACK: a shard that
                    // moves in between (a drain) must not lose a call the caller considers up. The
                    // new owner carries it on as confirmed (the ACK is then absorbed there).
                    if !self.stored
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

    /// Relays a gateway's response to the caller's INVITE (same status and reason, its body and headers).
    pub(super) fn relay_to_a(&mut self, status: u16, from: &SipMessage, rseq: Option<u32>) {
        let Some(inv) = self.a_invite.clone() else {
            return;
        };
        let reason = from.reason_phrase().unwrap_or_default().to_vec();
        let bytes = relay_response(
            &self.ctx.me,
            &inv,
            status,
            &reason,
            &self.a.local_tag,
            Some(from),
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
        self.ctx.gateways.invite_outcome(trunk, outcome);
    }

    /// Starts the next gateway attempt; false when the route is exhausted.
    pub(super) fn try_next(&mut self, myself: &ActorRef<DialogMsg>) -> bool {
        let config = self.ctx.config();
        while self.next_candidate < self.plan.len() {
            let cand = self.plan[self.next_candidate].clone();
            self.next_candidate += 1;
            let Some(trunk) = config.trunk(&cand.trunk).cloned() else {
                continue;
            };
            if !self.ctx.gateways.try_acquire(&trunk) {
                self.history
                    .push((trunk.name.clone(), "at capacity".into()));
                continue;
            }
            if let Some(prev) = self.gateway_active.replace(trunk.name.clone()) {
                self.ctx.gateways.release(&prev);
            }
            let Some(att) = self.build_attempt(&trunk) else {
                continue;
            };
            let key = att.key.clone();
            let env = att.invite.clone();
            let number = att.number;
            let call_id = att.leg.call_id.clone();
            self.attempts.push(att);
            self.ctx.registry.add_leg_b(&call_id, myself.get_derived());
            self.ctx
                .registry
                .add_client(key.clone(), Owner::Dialog(myself.get_derived()));
            if let Err(e) = self.ctx.driver.start_client(
                key.clone(),
                env,
                trunk.transport == crate::config::Transport::Tcp,
            ) {
                tracing::warn!(error = %e, "could not start the INVITE to the gateway");
                self.ctx.registry.remove_client(&key);
                self.history.push((trunk.name.clone(), "overloaded".into()));
                continue;
            }
            if let Some(ff) = trunk.fast_failover() {
                drop(myself.send_after(ff, move || DialogMsg::FastFailover { attempt: number }));
            }
            tracing::debug!(trunk = %trunk.name, attempt = number, "calling gateway");
            return true;
        }
        false
    }

    pub(super) fn build_attempt(&self, trunk: &Trunk) -> Option<Attempt> {
        let inv = self.a_invite.as_ref()?;
        let a = &inv.msg;
        let me = self.me();
        let transport = match trunk.transport {
            crate::config::Transport::Udp => Transport::Udp,
            crate::config::Transport::Tcp => Transport::Tcp,
        };
        let ip = trunk.address.ip()?;
        let peer = std::net::SocketAddr::new(ip, trunk.port);
        let host = match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]:{}", trunk.port),
            std::net::IpAddr::V4(v4) => format!("{v4}:{}", trunk.port),
        };
        let called = trunk.called_out_number(&self.called).into_owned();
        let calling = trunk.calling_out_number(&self.calling).into_owned();
        let user_phone = called.starts_with('+') || called.bytes().all(|b| b.is_ascii_digit());
        let ruri = format!(
            "sip:{}@{host}{}",
            escape_user(called.as_bytes()),
            if user_phone && !called.is_empty() {
                ";user=phone"
            } else {
                ""
            }
        );
        let call_id = ids::new_call_id(self.shard);
        let tag = ids::new_tag(self.shard);
        let branch = ids::new_branch(self.shard);
        let display = a
            .from()
            .and_then(|f| f.ok())
            .and_then(|f| f.display_unquoted());
        let mut from = Vec::with_capacity(96);
        if let Some(d) = display.filter(|d| !d.is_empty()) {
            from.extend_from_slice(&quote_display(&d));
            from.push(b' ');
        }
        let my_host = me
            .hostport
            .rsplit_once(':')
            .map_or(me.hostport.as_str(), |(h, _)| h);
        from.extend_from_slice(
            format!(
                "<sip:{}@{my_host}>;tag={tag}",
                escape_user(calling.as_bytes())
            )
            .as_bytes(),
        );
        let to = format!("<sip:{}@{host}>", escape_user(called.as_bytes()));
        let mf = a
            .max_forwards()
            .and_then(|r| r.ok())
            .map_or(70, |m| m.saturating_sub(1).min(70));
        let mut b = MessageBuilder::request_method(Method::Invite, ruri.as_bytes());
        b.header(HeaderName::Via, me.via(transport, &branch).as_bytes())
            .header_fmt(HeaderName::MaxForwards, format_args!("{mf}"))
            .header(HeaderName::From, &from)
            .header(HeaderName::To, to.as_bytes())
            .header(HeaderName::CallId, call_id.as_bytes())
            .header(HeaderName::CSeq, b"1 INVITE")
            .header(HeaderName::Contact, me.contact(transport).as_bytes())
            .header(
                HeaderName::Allow,
                medpool_sip::check::ALLOWED_METHODS.as_bytes(),
            );
        let mut supported: Vec<&[u8]> = a
            .supported()
            .filter(|t| {
                medpool_sip::check::SUPPORTED_OPTIONS
                    .iter()
                    .any(|s| t.eq_ignore_ascii_case(s.as_bytes()))
            })
            .collect();
        let want_timer = trunk.session_expires.is_some() && a.session_expires().is_none();
        if want_timer && !supported.iter().any(|t| t.eq_ignore_ascii_case(b"timer")) {
            supported.push(b"timer");
        }
        if !supported.is_empty() {
            b.header(HeaderName::Supported, &supported.join(&b", "[..]));
        }
        b.copy_headers(a, HeaderName::Require);
        if want_timer {
            if let Some(se) = trunk.session_expires {
                b.header_fmt(HeaderName::SessionExpires, format_args!("{se}"));
                b.header_fmt(HeaderName::MinSe, format_args!("{}", trunk.min_se));
            }
        } else {
            b.copy_headers(a, HeaderName::SessionExpires);
            b.copy_headers(a, HeaderName::MinSe);
        }
        if trunk.forward_pai || self.inbound.forward_pai {
            b.copy_headers(a, HeaderName::PAssertedIdentity);
            b.copy_headers(a, HeaderName::Privacy);
        }
        if trunk.forward_history_info {
            b.copy_headers(a, HeaderName::HistoryInfo);
            b.copy_headers(a, HeaderName::Diversion);
        }
        if !a.body().is_empty() {
            let ct = a
                .header(HeaderName::ContentType)
                .unwrap_or(b"application/sdp");
            b.body(ct, Bytes::copy_from_slice(a.body()));
        }
        let invite = Envelope::outgoing(b.build(), peer, transport)?;
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
            leg: Leg {
                call_id: Bytes::from(call_id),
                local_tag: tag,
                local_uri: Bytes::from(from),
                remote_uri: Bytes::from(to),
                remote_tag: None,
                remote_target: Bytes::from(ruri),
                route_set: Vec::new(),
                peer,
                transport,
                local_cseq: 1,
                remote_cseq: 0,
            },
            trunk: trunk.name.clone(),
            invite,
            key,
            number,
            got_100: false,
            got_18x: false,
            cancel_sent: false,
            abandoned: false,
            answered: false,
            settled: false,
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
            self.me(),
            &inv,
            mapped,
            &reason,
            &self.a.local_tag,
            response,
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
        att.cancel_sent = true;
        let inv = &att.invite.msg;
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
        if let Some(env) = Envelope::outgoing(b.build(), att.invite.peer, att.invite.transport) {
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

    /// Sends the leg-B ACK again for a retransmitted 2xx of the answer we took (none yet: the ACK
    /// goes when it can, e.g. once the caller's ACK brings a late offer's answer).
    pub(super) fn reack_b(&self, env: &Envelope) {
        if let Some(ack) = &self.ack_b
            && env.msg.call_id().and_then(|c| c.ok()) == ack.msg.call_id().and_then(|c| c.ok())
        {
            let _ = self
                .ctx
                .transports
                .send_now(ack.transport, ack.peer, ack.msg.bytes());
        }
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
            st.attempts[idx]
                .leg
                .learn_remote(&env.msg, env.msg.to_tag());
            let rseq = env.msg.rseq().and_then(|r| r.ok());
            if st.a_invite.is_some() {
                st.relay_to_a(status, &env.msg, rseq);
                if st.phase == Phase::Calling {
                    st.phase = Phase::Early;
                }
            }
        }
        200..=299 if st.attempts[idx].answered => {
            // The gateway sent its 2xx again (our ACK was lost; the INVITE transaction hands
            // retransmissions up, RFC 6026 §8.4): ACK it again. Never mistake it for a new answer.
            st.reack_b(&env);
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
            // Session timer: when the gateway makes us (the UAC on leg B) the refresher.
            if let Some(Ok(se)) = env.msg.session_expires()
                && se.refresher == Some(medpool_sip::message::headers::Refresher::Uac)
                && st
                    .a_invite
                    .as_ref()
                    .is_some_and(|a| a.msg.session_expires().is_none())
            {
                let half = Duration::from_secs(u64::from(se.delta.max(2)) / 2);
                st.session_refresh = Some(half);
            }
            st.relay_to_a(status, &env.msg, None);
            st.phase = Phase::Answered;
            if !st.a.transport.is_reliable() {
                let t1 = st.ctx.timers.t1;
                drop(myself.send_after(t1, move || DialogMsg::Retransmit2xx { interval: t1 * 2 }));
            }
        }
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
                        &st.ctx.me,
                        &inv,
                        mapped,
                        &reason,
                        &st.a.local_tag,
                        Some(&env.msg),
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

pub(super) fn on_client_ended(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    key: ClientKey,
    outcome: Outcome,
) {
    if let Some(idx) = st.attempts.iter().position(|a| a.key == key) {
        let was_settled = st.attempts[idx].settled;
        st.attempts[idx].settled = true;
        let att = &st.attempts[idx];
        if was_settled || att.abandoned {
            st.maybe_finish(myself);
            return;
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
        return;
    }
    if let Some(pos) = st.relays.iter().position(|r| r.client == key)
        && outcome != Outcome::Completed
    {
        let r = st.relays.remove(pos);
        let status = if outcome == Outcome::Timeout {
            408
        } else {
            503
        };
        let tag = st.a.local_tag.clone();
        let bytes = local_response(&r.request, status, Some(&tag), &[]);
        if let Some(e) = r.request.reply(bytes) {
            let _ = st.ctx.driver.respond(&r.server, status, e);
        }
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
