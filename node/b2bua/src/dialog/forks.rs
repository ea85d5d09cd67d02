//! Forking on leg B (RFC 3261 §12.1.2, §13.2.2.4): a gateway (or a proxy behind it) may answer one
//! INVITE from several forks, each an early dialog of its own To tag. Leg B keeps each early dialog
//! (bounded), follows the fork that spoke last (PRACK and UPDATE go to it), and is confirmed with
//! the dialog of the 2xx, whatever the 18x said before. A 2xx from another fork after that is
//! ACKed and hung up at once with BYE; a retransmission of it gets its ACK again.

use bytes::Bytes;
use medpool_sip::{SipMessage, ids};

use super::call::{Attempt, Call, EarlyDialog, ExtraAnswer, MAX_EARLY_DIALOGS, MAX_EXTRA_ANSWERS};
use super::leg::Leg;
use crate::txlayer::Envelope;

impl Attempt {
    /// The CSeq number of the attempt's INVITE (1, or 2 once sent again after a 422): its ACK's.
    pub(super) fn invite_cseq(&self) -> u32 {
        self.invite_cseq
    }

    /// A provisional answer on leg B: its early dialog is kept (a new To tag is a new fork), and
    /// the leg follows it. Without a To tag only the target is learnt.
    pub(super) fn on_early(&mut self, msg: &SipMessage) {
        let Some(tag) = msg.to_tag() else {
            self.leg.learn_remote(msg, None);
            return;
        };
        match self.early.iter().position(|d| d.tag == tag) {
            Some(i) => {
                // The same fork again: it may have refreshed its target.
                self.leg.enter_dialog(msg, tag);
                let d = &mut self.early[i];
                d.remote_target = self.leg.remote_target.clone();
                d.route_set = self.leg.route_set.clone();
                d.remote_uri = self.leg.remote_uri.clone();
            }
            None if self.early.len() < MAX_EARLY_DIALOGS => {
                if !self.early.is_empty() {
                    tracing::debug!(parent: &self.span, forks = self.early.len() + 1, "a new early dialog: the INVITE forked");
                }
                self.leg.enter_dialog(msg, tag);
                self.early.push(EarlyDialog {
                    tag: Bytes::copy_from_slice(tag),
                    remote_target: self.leg.remote_target.clone(),
                    remote_uri: self.leg.remote_uri.clone(),
                    route_set: self.leg.route_set.clone(),
                });
            }
            None => {
                tracing::debug!(parent: &self.span, "early dialogs at their bound: a new fork is not followed");
            }
        }
    }
}

impl Call {
    /// A 2xx to an INVITE of attempt `idx` whose dialog is already confirmed: the same dialog's
    /// retransmission gets its ACK again; another fork's is ACKed and hung up.
    pub(super) fn on_answer_again(&mut self, idx: usize, env: &Envelope) {
        let att = &self.attempts[idx];
        match env.msg.to_tag() {
            Some(tag) if att.leg.remote_tag.as_deref().is_some_and(|t| t != tag) => {
                self.hang_up_fork(idx, env);
            }
            _ => self.reack_b(env),
        }
    }

    /// A 2xx the INVITE transaction no longer matched (it ended): a losing fork's is ACKed and
    /// hung up like any; anything else gets the ACK of its own INVITE.
    pub(super) fn on_stray_answer(&mut self, env: &Envelope) {
        let call_id = env.msg.call_id().and_then(Result::ok);
        let idx = self
            .attempts
            .iter()
            .position(|a| a.answered && Some(&a.leg.call_id[..]) == call_id);
        let answer_cseq = env.msg.cseq().and_then(Result::ok).map(|c| c.seq);
        match idx {
            Some(i) if Some(self.attempts[i].invite_cseq()) == answer_cseq => {
                self.on_answer_again(i, env);
            }
            _ => self.reack_b(env),
        }
    }

    /// ACKs a 2xx from a fork that lost and sends it BYE (RFC 3261 §13.2.2.4); its retransmission
    /// only gets the ACK again.
    fn hang_up_fork(&mut self, idx: usize, env: &Envelope) {
        let tag = env.msg.to_tag().map(Bytes::copy_from_slice);
        let att = &self.attempts[idx];
        if let Some(known) = att
            .extra_answers
            .iter()
            .find(|x| Some(&x.tag) == tag.as_ref())
        {
            let ack = &known.ack;
            let _ = self
                .ctx
                .transports
                .send_now(ack.transport, ack.peer, ack.msg.bytes());
            return;
        }
        let Some(leg) = Leg::from_answer(&env.msg, att.leg.peer, att.leg.transport) else {
            tracing::debug!(parent: &att.span, "a 2xx from another fork without a usable dialog: dropped");
            return;
        };
        let trunk = att.trunk.clone();
        let cseq = env.msg.cseq().and_then(Result::ok).map_or(1, |c| c.seq);
        let branch = ids::new_branch(self.shard);
        let ack = leg.request(&self.ctx.me, b"ACK", cseq, &branch).build();
        let hop = leg.next_hop();
        if let Some(ack) = Envelope::outgoing(ack, hop, leg.transport) {
            let _ = self
                .ctx
                .transports
                .send_now(leg.transport, hop, ack.msg.bytes());
            if let Some(tag) = tag
                && self.attempts[idx].extra_answers.len() < MAX_EXTRA_ANSWERS
            {
                self.attempts[idx]
                    .extra_answers
                    .push(ExtraAnswer { tag, ack });
            }
        }
        self.history
            .push((trunk, "2xx from another fork: ACKed and hung up".into()));
        self.send_bye_on(&leg);
    }
}
