//! Ending a call: BYE on the confirmed legs, ACK + BYE for answers nobody wants, and the end
//! when nothing is left outstanding.

use medpool_sip::{HeaderName, ids};
use ractor::ActorRef;

use super::actor::*;
use super::call::*;
use super::leg::Leg;
use super::relay::*;
use crate::ctx::NodeEvent;
use crate::txlayer::{Envelope, Owner, Side};

impl Call {
    /// ACK a 2xx from an attempt the call no longer wants (cancelled, failed over) and BYE it at once.
    pub(super) fn ack_and_bye(&mut self, idx: usize, env: &Envelope, myself: &ActorRef<DialogMsg>) {
        let att = &mut self.attempts[idx];
        att.leg.learn_from_answer(&env.msg);
        att.answered = true;
        let cseq = env.msg.cseq().and_then(|c| c.ok()).map_or(1, |c| c.seq);
        send_ack_b(self, idx, cseq, None, false);
        let leg = self.attempts[idx].leg.clone();
        self.send_bye_on(&leg, myself);
    }

    pub(super) fn send_bye_on(&mut self, leg: &Leg, myself: &ActorRef<DialogMsg>) {
        let mut leg = leg.clone();
        leg.local_cseq += 1;
        let branch = ids::new_branch(self.shard);
        let mut b = leg.request(&self.ctx.me, b"BYE", leg.local_cseq, &branch);
        b.header(
            HeaderName::Reason,
            b"SIP;cause=200;text=\"Call completed elsewhere\"",
        );
        if let Some(env) = Envelope::outgoing(b.build(), leg.next_hop(), leg.transport)
            && let Some(key) = crate::txlayer::client_key_of_request(&env.msg)
        {
            self.ctx
                .registry
                .add_client(key.clone(), Owner::Dialog(myself.get_derived()));
            if self
                .ctx
                .driver
                .start_client(key.clone(), env, leg.transport.is_reliable())
                .is_ok()
            {
                self.bye_keys.push(key);
            } else {
                self.ctx.registry.remove_client(&key);
            }
        }
    }

    /// BYE the confirmed legs except `except`.
    pub(super) fn bye_all(&mut self, myself: &ActorRef<DialogMsg>, except: Option<Side>) {
        self.phase = Phase::Ending;
        if except != Some(Side::A) && self.a_answered {
            self.a.local_cseq += 1;
            let leg = self.a.clone();
            self.send_bye_on(&leg, myself);
        }
        if except != Some(Side::B)
            && let Some(b) = self.confirmed_b()
        {
            let leg = b.leg.clone();
            self.send_bye_on(&leg, myself);
        }
        self.maybe_finish(myself);
    }

    pub(super) fn maybe_finish(&mut self, myself: &ActorRef<DialogMsg>) {
        // An unanswered INVITE on leg B may still ring (→ CANCEL) or answer (→ ACK + BYE): wait for it.
        let unsettled = self.attempts.iter().any(|a| !a.settled);
        if self.phase == Phase::Ending
            && self.bye_keys.is_empty()
            && self.relays.is_empty()
            && !unsettled
        {
            self.ended = true;
            myself.stop(None);
        }
    }
}

/// The call's shard moved to another node (see [`DialogMsg::ShardReleased`]).
pub(super) fn on_shard_released(st: &mut Call, myself: &ActorRef<DialogMsg>) {
    if st.phase == Phase::Ending {
        // Already ending (a BYE or CANCEL under way): it finishes here, and its record is
        // removed with it, so that the new owner's copy, if any, follows (RecordCheck).
        tracing::debug!(parent: &st.span, "shard moved while the call ends: it ends here");
    } else if st.stored {
        tracing::debug!(parent: &st.span, "shard moved: the call goes on at its new owner");
        myself.stop(Some("shard moved".into()));
    } else if st.a_answered {
        // Answered while this node could not write the record (a frozen node waking up
        // after its lease lapsed): the new owner cannot know the call, so it ends here.
        st.history.push((
            "pool".into(),
            "shard moved before the call's record was written".into(),
        ));
        // The caller has not ACKed yet: the gateway's 2xx is still unACKed too (ours goes
        // with the caller's). ACK it first: every 2xx is ACKed (RFC 3261 §13.2.2.4).
        if st.phase == Phase::Answered
            && let Some(idx) = st.attempts.iter().position(|a| a.answered && !a.abandoned)
        {
            send_ack_b(st, idx, 1, None, true);
        }
        for i in 0..st.attempts.len() {
            if !st.attempts[i].answered {
                st.attempts[i].abandoned = true;
                st.cancel_attempt(i, myself);
            }
        }
        st.bye_all(myself, None);
    } else {
        st.history
            .push(("pool".into(), "shard moved during set-up".into()));
        st.fail_a(503, &[(HeaderName::RetryAfter, b"1")]);
        for i in 0..st.attempts.len() {
            st.attempts[i].abandoned = true;
            st.cancel_attempt(i, myself);
        }
        st.phase = Phase::Ending;
        st.maybe_finish(myself);
    }
}

/// Hang the call up (admin or shutdown): BYE both confirmed legs, or end the set-up with 480.
pub(super) fn on_hangup(st: &mut Call, myself: &ActorRef<DialogMsg>) {
    if st.a_final_sent {
        st.bye_all(myself, None);
    } else {
        st.fail_a(480, &[]);
        for i in 0..st.attempts.len() {
            st.attempts[i].abandoned = true;
            st.cancel_attempt(i, myself);
        }
        st.maybe_finish(myself);
    }
}

/// The call stopped: unregister it, give back its gateway slot and counts, remove the record of a
/// call that really ended, and tell the node.
pub(super) fn release(st: &mut Call, myself: &ActorRef<DialogMsg>) {
    let reg = &st.ctx.registry;
    reg.remove_call(
        &st.a_key,
        &st.a.call_id,
        st.a.remote_tag.as_deref().unwrap_or_default(),
        st.shard,
        myself.get_id(),
    );
    for att in &st.attempts {
        reg.remove_leg_b(&att.leg.call_id);
    }
    if let Some(g) = st.gateway_active.take() {
        st.ctx.gateways.release(&g);
    }
    if st.stored && st.ended {
        st.ctx
            .store
            .remove(st.shard, &String::from_utf8_lossy(&st.a.call_id));
    }
    if st.ended {
        // Its answered legs B were hung up with it (or never confirmed): a late copy of their
        // 2xx is only ACKed by the node (`CoreEvent::OrphanAnswer`).
        for att in st.attempts.iter().filter(|a| a.answered) {
            st.ctx.leg_hung_up(&att.leg.call_id);
        }
    }
    if !st.stored {
        // Counted in post_start (calls rebuilt here start stored and are never counted).
        st.ctx
            .unrecorded_calls
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
    st.ctx
        .call_ended(&st.inbound.name, st.last_status, st.started.elapsed());
    st.span.record("sip.status", st.last_status);
    tracing::debug!(parent: &st.span, status = st.last_status, cause = ?st.history.last(), "call ended");
    st.ctx.publish(NodeEvent::CallEnded {
        call_id: String::from_utf8_lossy(&st.a.call_id).into_owned(),
        status: st.last_status,
        cause: st
            .history
            .last()
            .map(|(who, what)| format!("{who}: {what}"))
            .unwrap_or_default(),
    });
}
