//! Ending a call: BYE on the confirmed legs, ACK + BYE for answers nobody wants, and the end
//! when nothing is left outstanding.

use medpool_sip::transaction::ClientKey;
use medpool_sip::{HeaderName, ids};
use ractor::ActorRef;

use super::call::Call;
use super::leg::Leg;
use super::msg::{DialogMsg, Phase};
use super::relay::send_ack_b;
use crate::ctx::NodeEvent;
use crate::txlayer::{Envelope, Side};

impl Call {
    /// ACK a 2xx from an attempt the call no longer wants (cancelled, failed over) and BYE it at once.
    pub(super) fn ack_and_bye(&mut self, idx: usize, env: &Envelope) {
        let att = &mut self.attempts[idx];
        att.leg.learn_from_answer(&env.msg);
        att.answered = true;
        let cseq = env.msg.cseq().and_then(|c| c.ok()).map_or(1, |c| c.seq);
        send_ack_b(self, idx, cseq, None, None, false);
        let leg = self.attempts[idx].leg.clone();
        self.send_bye_on(&leg);
    }

    pub(super) fn send_bye_on(&mut self, leg: &Leg) {
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
            && self
                .start_client(&key, env, leg.transport.is_reliable())
                .is_ok()
        {
            self.bye_keys.push(key);
        }
    }

    /// BYE the confirmed legs except `except`.
    pub(super) fn bye_all(&mut self, myself: &ActorRef<DialogMsg>, except: Option<Side>) {
        self.phase = Phase::Ending;
        if except != Some(Side::A) && self.a_answered {
            self.a.local_cseq += 1;
            let leg = self.a.clone();
            self.send_bye_on(&leg);
        }
        if except != Some(Side::B)
            && let Some(b) = self.confirmed_b()
        {
            let leg = b.leg.clone();
            self.send_bye_on(&leg);
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
        hand_over(st, myself);
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
            send_ack_b(st, idx, st.attempts[idx].invite_cseq(), None, None, true);
        }
        for i in 0..st.attempts.len() {
            if !st.attempts[i].answered {
                st.attempts[i].abandoned = true;
                st.cancel_attempt(i);
            }
        }
        st.bye_all(myself, None);
    } else if st.lingering {
        // Released again (its shard came back and moved away again): it goes on lingering.
    } else if !st.ctx.shards.hands_over() {
        // A failover, not a planned move (this node was declared down, or its lease lapsed): the
        // new owner took the shard without asking this node, so nothing would send the call's
        // messages here. Still being set up, nobody else knows the call: it ends here, cleanly.
        on_end_set_up(st, myself);
    } else {
        // Still being set up: nobody else knows the call. It lingers here — its messages still
        // reach it (the node handles a call in set-up whatever its shard; the new owner sends it
        // what it receives for it) — until it is confirmed, then hands its record over.
        tracing::debug!(parent: &st.span, "shard moved during set-up: the set-up finishes here");
        st.history
            .push(("pool".into(), "shard moved during set-up: lingers".into()));
        st.lingering = true;
        st.ctx
            .stats
            .setups_lingering
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        st.after(myself, crate::handover::SETUP_LINGER, || {
            DialogMsg::EndSetUp
        });
    }
}

/// The call stops here without a word: its record is written, and the shard's new owner carries
/// it on. Its media keeps flowing through here until the new owner has moved it (make before
/// break; the new owner re-INVITEs both peers onto its own relay).
///
/// Its gateway leg goes on at the new owner, but a 2xx of it may still reach this node (the
/// gateway resends to the INVITE's Via): the 2xx to the INVITE when the shard moved between that
/// 2xx and the caller's ACK (the new owner's rebuilt call is confirmed and lets the caller's ACK
/// go), or to a re-INVITE this node sent. Such a 2xx is only ACKed here, never hung up
/// ([`NodeCtx::leg_moved`](crate::ctx::NodeCtx::leg_moved)): a BYE from here would end the
/// gateway's half of a call the new owner carries on, or reach the gateway after the new owner's
/// re-INVITE with a lower CSeq (soak 0xb92769024e78ba4c replayed, round 111).
fn hand_over(st: &mut Call, myself: &ActorRef<DialogMsg>) {
    st.media_handover = st.relaying();
    if let Some(b) = st.confirmed_b() {
        st.ctx.leg_moved(&b.leg.call_id);
    }
    myself.stop(Some("shard moved".into()));
}

/// A lingering call (its shard moved during its set-up) that is now confirmed and written down
/// stops here: its record reaches the new owner, which rebuilds it (late records). Before its
/// caller's ACK it stays, so that the ACK reaches the gateway and the call is not left with an
/// unacknowledged 2xx.
pub(super) fn hand_over_once_recorded(st: &mut Call, myself: &ActorRef<DialogMsg>) {
    if st.lingering && st.stored && st.phase == Phase::Confirmed && !st.released {
        st.lingering = false;
        tracing::debug!(parent: &st.span, "set up after its shard moved: handed over to the new owner");
        st.history
            .push(("pool".into(), "handed over after set-up".into()));
        st.ctx
            .stats
            .setups_handed_over
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        hand_over(st, myself);
    }
}

/// End a call still being set up (see [`DialogMsg::EndSetUp`]): 503 + Retry-After to the caller,
/// CANCEL to its gateways. A call answered meanwhile goes on (a lingering one hands over once
/// confirmed; its 2xx retransmissions end it if the caller never ACKs).
pub(super) fn on_end_set_up(st: &mut Call, myself: &ActorRef<DialogMsg>) {
    // Only a call in set-up: not one answered, recorded or rebuilt here, nor one already ending.
    if st.a_final_sent
        || st.a_answered
        || st.stored
        || !matches!(st.phase, Phase::Calling | Phase::Early)
    {
        return;
    }
    st.history.push((
        "pool".into(),
        if st.lingering {
            "shard moved during set-up: linger bound passed"
        } else {
            "set-up ended by the node (shard moved away or node stopping)"
        }
        .into(),
    ));
    st.fail_a(503, &[(HeaderName::RetryAfter, b"1")]);
    for i in 0..st.attempts.len() {
        st.attempts[i].abandoned = true;
        st.cancel_attempt(i);
    }
    st.phase = Phase::Ending;
    st.maybe_finish(myself);
}

/// Hang the call up (admin or shutdown): BYE both confirmed legs, or end the set-up with 480.
pub(super) fn on_hangup(st: &mut Call, myself: &ActorRef<DialogMsg>) {
    if st.a_final_sent {
        st.bye_all(myself, None);
    } else {
        st.fail_a(480, &[]);
        for i in 0..st.attempts.len() {
            st.attempts[i].abandoned = true;
            st.cancel_attempt(i);
        }
        st.maybe_finish(myself);
    }
}

impl Call {
    /// Takes the routes of the call's client transactions that have their final answer (an
    /// INVITE's lingers 64*T1 after its 2xx) out of the registry as the call stops: they name a
    /// call that is gone, and kept for the transactions' linger they were most of the registry's
    /// memory after a burst of short calls. One still waiting for its answer keeps its route, so
    /// that in a pool its answer is still this node's own (and ends its retransmissions here).
    /// Those whose key the call no longer holds (a relayed request or a BYE answered before the
    /// end: non-INVITE, lingering T4 over UDP) go when their transaction ends, as before.
    fn forget_settled_clients(&self) {
        use medpool_sip::transaction::State;
        let settled = |key: &ClientKey| {
            !matches!(
                self.ctx.driver.client_state(key),
                Some(State::Calling | State::Trying | State::Proceeding)
            )
        };
        let cancels: Vec<ClientKey> = self
            .attempts
            .iter()
            .filter(|a| a.cancel_sent)
            .map(|a| a.key.cancel_key())
            .collect();
        let keys = self
            .attempts
            .iter()
            .map(|a| &a.key)
            .chain(&cancels)
            .chain(&self.bye_keys)
            .chain(self.relays.iter().map(|r| &r.client))
            .chain(&self.session_refresh_key)
            .chain(self.reanchors.iter().filter_map(|r| r.key.as_ref()))
            .filter(|k| settled(k));
        self.ctx.registry.forget_clients(keys);
    }

    /// The call stopped: unregister it, give back its gateway slot and counts, remove the record of
    /// a call that really ended, and tell the node. Once: the actor's `post_stop` calls it, and so
    /// does dropping the state of a call that died without one (a panic: ractor skips `post_stop`
    /// then, but drops the state), so whatever way a call ends, what it held goes back.
    pub(super) fn release(&mut self) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        // Its long timers end now, and let go of the actor's reference.
        self.timers_stop = None;
        self.close_media();
        let reg = &self.ctx.registry;
        self.forget_settled_clients();
        reg.remove_call(
            &self.a_key,
            &self.a.call_id,
            self.a.remote_tag.as_deref().unwrap_or_default(),
            self.shard,
            self.actor,
        );
        for att in &self.attempts {
            reg.remove_leg_b(&att.leg.call_id);
        }
        if let Some(g) = self.gateway_active.take() {
            self.ctx.gateways.release(&g);
        }
        self.ctx.set_ups.end(self.actor.pid());
        if self.stored && self.ended && self.ctx.store.keeps_records() {
            self.ctx
                .store
                .remove(self.shard, &String::from_utf8_lossy(&self.a.call_id));
        }
        if self.ended {
            // Its answered legs B were hung up with it (or never confirmed): a late copy of their
            // 2xx is only ACKed by the node (`CoreEvent::OrphanAnswer`).
            for att in self.attempts.iter().filter(|a| a.answered) {
                self.ctx.leg_hung_up(&att.leg.call_id);
            }
        }
        if !self.stored {
            // Counted in post_start (calls rebuilt here start stored and are never counted).
            self.ctx
                .unrecorded_calls
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
        self.ctx
            .call_ended(&self.inbound.name, self.last_status, self.started.elapsed());
        self.span.record("sip.status", self.last_status);
        tracing::debug!(parent: &self.span, status = self.last_status, cause = ?self.history.last(), "call ended");
        // A shutdown may be waiting for this call (or its unrecorded count).
        self.ctx.progressed();
        self.ctx.publish(NodeEvent::CallEnded {
            call_id: String::from_utf8_lossy(&self.a.call_id).into_owned(),
            status: self.last_status,
            cause: self
                .history
                .last()
                .map(|(who, what)| format!("{who}: {what}"))
                .unwrap_or_default(),
        });
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // The actor died without its post_stop (a panic). Its caller, if still waiting for a final
        // answer, is told (the INVITE's server transaction must end); its legs B end by their
        // transactions' timers, a late 2xx being ACKed and hung up by the node (orphan answer).
        tracing::error!(parent: &self.span, "the call's actor died: what it held is given back");
        self.history.push(("node".into(), "call failed".into()));
        self.fail_a(500, &[]);
        self.release();
    }
}
