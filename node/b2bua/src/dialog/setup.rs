//! Setting a call up, the caller's side: the call built from the caller's INVITE and made reachable
//! before its actor runs, its start (100 unless the node that received the INVITE sent it, the
//! route, the first gateway), the answers to the caller
//! (relayed or local), the caller's CANCEL, and the 2xx sent again until the caller ACKs it. The
//! gateway attempts are `attempts.rs`, their answers `invite_answers.rs`.

use std::time::Duration;

use bytes::Bytes;
use medpool_sip::SipMessage;
use medpool_sip::transaction::ServerKey;
use medpool_sip::{HeaderName, ids};
use ractor::ActorRef;

use super::call::{Call, CallSeed, MediaRefusal};
use super::leg::{Leg, local_response, relay_response};
use super::msg::{DialogArgs, DialogMsg, Phase};
use super::spans::call_span;
use crate::ctx::{NodeCtx, NodeEvent};
use crate::txlayer::{Envelope, Reply};

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
        let env = inv.reply(bytes);
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
                if !self.stored && !self.lingering && self.write_record() {
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
    // 100 Trying at once (RFC 3261 §16.2 practice for a B2BUA: stops the caller's retransmissions),
    // unless the pool node that received the INVITE from the network sent it already (it forwarded
    // the INVITE here): 100 is hop by hop, and one from there costs no crossing between nodes.
    if let Some(inv) = st.a_invite.clone().filter(|e| !e.trying_sent) {
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
    let _ = st.ctx.driver.respond(key, 200, env.reply(ok));
    if !st.a_final_sent {
        st.fail_a(487, &[]);
        for i in 0..st.attempts.len() {
            st.attempts[i].abandoned = true;
            st.cancel_attempt(i);
        }
        st.history.push(("caller".into(), "cancelled".into()));
        st.maybe_finish(myself);
    }
}

/// The caller has not ACKed our 2xx yet: send it again (doubling up to T2), or, after 64*T1, end the
/// call (RFC 3261 §13.3.1.4).
pub(super) fn on_retransmit_2xx(st: &mut Call, myself: &ActorRef<DialogMsg>, interval: Duration) {
    if st.phase == Phase::Answered
        && let Some((status, reply)) = st.a_2xx.clone()
    {
        if st
            .ctx
            .driver
            .respond(&st.a_key, status, Reply::clone(&reply))
            .is_err()
        {
            let _ = st
                .ctx
                .transports
                .send_now(reply.transport, reply.peer, reply.bytes);
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
