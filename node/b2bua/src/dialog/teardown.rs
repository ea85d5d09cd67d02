//! Ending a call: BYE on the confirmed legs, ACK + BYE for answers nobody wants, and the end
//! when nothing is left outstanding.

use medpool_sip::{HeaderName, ids};
use ractor::ActorRef;

use super::actor::*;
use super::call::*;
use super::leg::Leg;
use super::relay::*;
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
