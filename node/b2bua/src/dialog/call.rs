//! The state of one call ([`Call`]): both legs, the gateway attempts, the relayed requests, and
//! the helpers every concern reads it through.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use medpool_sip::transaction::{ClientKey, ServerKey};
use ractor::{ActorId, ActorRef};
use tokio::time::Instant;

use super::leg::{self, Leg};
use super::msg::{CallInfo, DialogMsg, LegWire, Phase};
use crate::config::SharedTrunk;
use crate::ctx::NodeCtx;
use crate::routing::Candidate;
use crate::txlayer::{ClientOwner, Envelope, Reply, Side};

/// One gateway attempt on leg B.
#[derive(Debug)]
pub(super) struct Attempt {
    /// This leg B attempt's span, and its INVITE transaction's (closed at the final answer).
    pub(super) span: tracing::Span,
    pub(super) tx_span: tracing::Span,
    pub(super) leg: Leg,
    pub(super) trunk: String,
    /// The INVITE, until the call is confirmed (CANCEL, a 422's retry and PRACK are built from
    /// it; an established call needs only its CSeq). Boxed: an established call keeps the slot.
    pub(super) invite: Option<Box<Envelope>>,
    /// The INVITE's CSeq number (1, or 2 once sent again after a 422): its ACK's.
    pub(super) invite_cseq: u32,
    pub(super) key: ClientKey,
    pub(super) number: u32,
    pub(super) got_100: bool,
    pub(super) got_18x: bool,
    pub(super) cancel_sent: bool,
    /// Abandoned (failover or caller cancel): a late 2xx is ACKed and BYE'd.
    pub(super) abandoned: bool,
    pub(super) answered: bool,
    /// A final response arrived or the transaction ended: nothing more can come that needs us.
    pub(super) settled: bool,
    /// The attempt's media goes through the node's relay (else its SDP passes unchanged).
    pub(super) relayed: bool,
    /// The INVITE was sent again after a 422 (Session Interval Too Small): once per attempt.
    pub(super) timer_retried: bool,
    /// The early dialogs of this attempt, one per To tag of its 18x (forking; at most
    /// [`MAX_EARLY_DIALOGS`]).
    pub(super) early: Vec<EarlyDialog>,
    /// 2xx answers from other forks than the one that won: ACKed and hung up, their ACK kept for a
    /// retransmitted 2xx (at most [`MAX_EXTRA_ANSWERS`]).
    pub(super) extra_answers: Vec<ExtraAnswer>,
}

/// An in-dialog request being relayed: answer `server` on `from` when `client` gets its final.
#[derive(Debug)]
pub(super) struct Relay {
    /// The relayed transaction's span (closed at the final answer).
    pub(super) span: tracing::Span,
    pub(super) client: ClientKey,
    pub(super) from: Side,
    pub(super) server: ServerKey,
    pub(super) request: Envelope,
    /// For a relayed INVITE answered 2xx: the CSeq to ACK on the far leg with the caller's ACK.
    pub(super) invite_cseq: Option<u32>,
    /// The request carried an SDP offer (so an SDP in its answer is the answer to it).
    pub(super) offered: bool,
    /// The offerer's SDP before the offer, to restore if the far side rejects it (relayed
    /// media only).
    pub(super) media_undo: Option<Option<Vec<u8>>>,
}

/// Why a gateway attempt cannot relay the call's media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MediaRefusal {
    /// No free relay ports (the caller gets 503 with Retry-After).
    Ports,
    /// The caller's offer cannot be relayed to this trunk (the caller gets 488).
    Offer,
}

/// The state of one call.
pub struct Call {
    pub(super) ctx: Arc<NodeCtx>,
    /// The call's root span (one trace per call); legs and transactions are its children.
    pub(super) span: tracing::Span,
    /// Leg A's span.
    pub(super) a_span: tracing::Span,
    pub(super) shard: u16,
    /// The trunk the call came in on, as its configuration said when the call began (shared with
    /// that configuration, not copied).
    pub(super) inbound: SharedTrunk,
    pub(super) a: Leg,
    /// The caller's INVITE, until the call is confirmed. This and the other messages only a call
    /// being set up holds are boxed: an established call keeps just the empty slots.
    pub(super) a_invite: Option<Box<Envelope>>,
    pub(super) a_key: ServerKey,
    pub(super) a_cseq_invite: u32,
    pub(super) phase: Phase,
    pub(super) plan: Vec<Candidate>,
    pub(super) next_candidate: usize,
    pub(super) attempts: Vec<Attempt>,
    pub(super) history: Vec<(String, String)>,
    pub(super) called: String,
    pub(super) calling: String,
    pub(super) a_final_sent: bool,
    /// Our 2xx to the caller's INVITE, sent again until the caller ACKs it (its wire form).
    pub(super) a_2xx: Option<(u16, Box<Reply>)>,
    /// A 2xx went to the caller: leg A is (or was) a confirmed dialog.
    pub(super) a_answered: bool,
    /// INVITE → 2xx time.
    pub(super) answered_after: Option<Duration>,
    /// The post-dial delay was recorded.
    pub(super) pdd_recorded: bool,
    /// The ACK sent on leg B for the answered INVITE, sent again for a retransmitted 2xx.
    pub(super) ack_b: Option<SentAck>,
    /// The ACK sent on leg B for the latest relayed re-INVITE's 2xx (likewise: a retransmitted
    /// 2xx gets the ACK of its own CSeq, never the first INVITE's).
    /// Boxed: most calls never relay a re-INVITE.
    pub(super) reinvite_ack_b: Option<Box<SentAck>>,
    pub(super) relays: Vec<Relay>,
    /// REFERs relayed in this call, so their NOTIFYs name the right CSeq on each leg.
    pub(super) refers: Vec<super::refer_event::ReferIds>,
    /// A relayed re-INVITE answered 2xx on the A side, waiting for A's ACK: (A's CSeq, B's CSeq).
    pub(super) pending_ack_b: Vec<(u32, u32)>,
    pub(super) pending_ack_a: Vec<(u32, u32)>,
    pub(super) bye_keys: Vec<ClientKey>,
    pub(super) started: Instant,
    pub(super) last_status: u16,
    pub(super) gateway_active: Option<String>,
    /// The RFC 4028 session timer, once an answer set one up (see `session`).
    pub(super) session: Option<SessionTimer>,
    /// When the session is torn down unless refreshed before.
    pub(super) session_deadline: Option<Instant>,
    /// A [`DialogMsg::SessionCheck`] is scheduled.
    pub(super) session_check_armed: bool,
    /// Our refresh in flight on leg B.
    pub(super) session_refresh_key: Option<ClientKey>,
    /// The Min-SE our refreshes carry (the gateway trunk's, raised by a 422).
    pub(super) session_min_se: u32,
    /// The call's record was taken for writing (or the call was rebuilt from it).
    pub(super) stored: bool,
    /// The call was rebuilt from its record (a shard take-over): its writes only replace the
    /// record, never bring back one its old node removed (`record::write_record`).
    pub(super) rebuilt: bool,
    /// A [`DialogMsg::StoreRecord`] retry is scheduled.
    pub(super) store_retry: bool,
    /// The call really ended (both legs done); stops for a shard move or a shutdown leave it false,
    /// and only an ended call's record is removed.
    pub(super) ended: bool,
    /// The actor the call runs in (its registry entries name it).
    pub(super) actor: ActorId,
    /// What the call held on the node was given back (see `Call::release`).
    pub(super) released: bool,
    /// Ends the call's long timers (fast failover, session refresh and expiry, media timeout, a
    /// lingering set-up's bound) when the call stops: each timer waits on a receiver of it, and
    /// dropping it wakes them all, so they let go of the actor's reference at once. A pending
    /// timer holds that reference, which would keep a stopped call's cell and mailboxes (~10 KB)
    /// alive until it fired — 10 s for the default fast failover of a call that lasted one,
    /// minutes for a session refresh. (Keeping the timers' task handles instead kept each
    /// finished timer's task allocated as long as the call.) Made at the first timer.
    pub(super) timers_stop: Option<tokio::sync::watch::Sender<()>>,
    /// The call's media: the last SDP of each peer (see [`crate::media`]).
    pub(super) media: crate::media::MediaPlan,
    /// The relay session, once a relayed attempt opened it (closed when the call is released).
    /// Boxed: a call whose media bypasses the node keeps only the empty slot.
    pub(super) media_session: Option<Box<medpool_media::relay::Session>>,
    /// Each leg's SRTP offer/answer state and keys (A, B): in memory only, never in the record;
    /// made when the call's media is first relayed.
    pub(super) srtp: crate::srtp::CallSrtp,
    /// The last answer a peer sent was refused by its trunk's `encryption` (no acceptable key on
    /// a `required` trunk): a gateway's 2xx so refused is hung up and the caller gets 488.
    pub(super) crypto_refused: bool,
    /// The media timeout (the shorter of the call's trunks'), when the media is relayed.
    pub(super) media_timeout: Option<Duration>,
    /// Since when the media timeout counts silence: the answer, the last offer or answer, or the
    /// last check that found the call on hold (silence before them does not count).
    pub(super) media_counted_from: Instant,
    /// Why the last gateway candidate could not be tried for media reasons, if it could not
    /// (cleared by a candidate skipped for another reason).
    pub(super) media_refusal: Option<MediaRefusal>,
    /// The written record no longer holds the call's media plan, and rewriting it failed: the
    /// [`DialogMsg::StoreRecord`] retry writes it again.
    pub(super) record_stale: bool,
    /// A rebuilt call's re-INVITEs moving its media onto this node, until their final answers
    /// (at most one per leg).
    pub(super) reanchors: Vec<Reanchor>,
    /// The ACKs of the re-anchoring re-INVITEs' 2xx, sent again for a retransmitted 2xx (at most
    /// one per leg).
    pub(super) reanchor_acks: Vec<Envelope>,
    /// A re-anchoring re-INVITE failed: the call goes on with signalling only where it did.
    pub(super) reanchor_failed: bool,
    /// The call stops here because its shard moved to a live node: its relay session outlives it
    /// by [`crate::media::MEDIA_HANDOVER`].
    pub(super) media_handover: bool,
    /// Its shard moved away while the call was being set up: it finishes here (at most
    /// [`crate::handover::SETUP_LINGER`]), writes its record once confirmed and then stops, the
    /// new owner carrying it on (see `teardown::on_shard_released`).
    pub(super) lingering: bool,
}

/// An ACK sent on leg B for a 2xx, kept to be sent again when that 2xx comes again: its bytes and
/// where they went, without a parsed copy (it is only ever sent again, for a call's whole life).
#[derive(Debug, Clone)]
pub(super) struct SentAck {
    /// The Call-ID and CSeq number of the INVITE it ACKs (a retransmitted 2xx names them).
    pub(super) call_id: Bytes,
    pub(super) cseq: u32,
    pub(super) bytes: Bytes,
    pub(super) peer: std::net::SocketAddr,
    pub(super) transport: medpool_sip::transport::Transport,
}

/// A re-INVITE moving one leg's media onto this node (media failover).
#[derive(Debug)]
pub(super) struct Reanchor {
    pub(super) side: Side,
    /// Its transaction (none while waiting to try again after a 491).
    pub(super) key: Option<ClientKey>,
    pub(super) cseq: u32,
    /// Tries so far after a 491 (glare).
    pub(super) tries: u8,
}

impl Call {
    pub(super) fn me(&self) -> &leg::Me {
        &self.ctx.me
    }

    /// The call is established (the caller ACKed): what only its set-up needed is dropped — the
    /// caller's INVITE and our 2xx to it, each attempt's INVITE and early dialogs, the route plan
    /// — so that an established call holds its dialogs and little else.
    pub(super) fn drop_set_up_state(&mut self) {
        self.a_invite = None;
        self.a_2xx = None;
        self.plan = Vec::new();
        for att in &mut self.attempts {
            att.invite = None;
            att.early = Vec::new();
        }
    }

    pub(super) fn current(&self) -> Option<&Attempt> {
        self.attempts.iter().rev().find(|a| !a.abandoned)
    }

    pub(super) fn current_mut(&mut self) -> Option<&mut Attempt> {
        self.attempts.iter_mut().rev().find(|a| !a.abandoned)
    }

    pub(super) fn confirmed_b(&self) -> Option<&Attempt> {
        self.attempts.iter().find(|a| a.answered && !a.abandoned)
    }

    pub(super) fn leg(&self, side: Side) -> Option<&Leg> {
        match side {
            Side::A => Some(&self.a),
            Side::B => self
                .attempts
                .iter()
                .rev()
                .find(|a| !a.abandoned)
                .map(|a| &a.leg),
        }
    }

    pub(super) fn leg_mut(&mut self, side: Side) -> Option<&mut Leg> {
        match side {
            Side::A => Some(&mut self.a),
            Side::B => self
                .attempts
                .iter_mut()
                .rev()
                .find(|a| !a.abandoned)
                .map(|a| &mut a.leg),
        }
    }

    /// Closes the relay session (the call ended, however it ended), noting on the call's span
    /// what it relayed.
    pub(super) fn close_media(&mut self) {
        if let Some(s) = &self.media_session {
            let (a, b) = (
                s.counters(medpool_media::relay::Leg::A),
                s.counters(medpool_media::relay::Leg::B),
            );
            self.span.record("media.packets_a", a.packets);
            self.span.record("media.packets_b", b.packets);
            self.span.record("media.lost", a.lost + b.lost);
            // What each leg's peer sent that failed SRTP, on its trunk's count.
            let gateway = self.current().map(|att| att.trunk.clone());
            let stats = &self.ctx.stats;
            stats.record_srtp_drops(&self.inbound.name, a.srtp_auth_failed, a.srtp_replayed);
            if let Some(t) = gateway {
                stats.record_srtp_drops(&t, b.srtp_auth_failed, b.srtp_replayed);
            }
        }
        // Dropping the handle ends the session's task, which releases its ports. A call whose
        // shard was handed over (a drain, a rebalance) keeps relaying for a while: make before
        // break, while the new owner re-INVITEs the peers onto its own relay.
        let session = self.media_session.take();
        if self.media_handover
            && let Some(s) = session
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                tokio::time::sleep(crate::media::MEDIA_HANDOVER).await;
                drop(s);
            });
        }
    }

    /// Sends `msg` to the call after `wait`, as one of its long timers: one that the call's stop
    /// ends at once ([`Call::timers_stop`]).
    pub(super) fn after<F>(&mut self, myself: &ActorRef<DialogMsg>, wait: Duration, msg: F)
    where
        F: FnOnce() -> DialogMsg + Send + 'static,
    {
        let mut stopped = self
            .timers_stop
            .get_or_insert_with(|| tokio::sync::watch::channel(()).0)
            .subscribe();
        let myself = myself.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(wait) => {
                    // The call may have stopped meanwhile: nobody to tell.
                    let _ = myself.send_message(msg());
                }
                // Only ever an error: the sender never sends, it is dropped when the call stops.
                _ = stopped.changed() => {}
            }
        });
    }

    /// How the registry names this call as the owner of a client transaction (by its shard and
    /// actor: a transaction outliving the call does not keep the actor alive).
    pub(super) fn client_owner(&self) -> ClientOwner {
        ClientOwner::Dialog {
            shard: self.shard,
            actor: self.actor,
        }
    }

    /// Starts client transaction `key` for `env`, its answers routed to this call; when the
    /// transaction layer refuses it (at its limit), the route is taken back.
    pub(super) fn start_client(
        &self,
        key: &ClientKey,
        env: Envelope,
        reliable: bool,
    ) -> Result<(), medpool_sip::transaction::DriverError> {
        let reg = &self.ctx.registry;
        reg.add_client(key.clone(), self.client_owner());
        let started = self.ctx.driver.start_client(key.clone(), env, reliable);
        if started.is_err() {
            reg.remove_client(key);
        }
        started
    }

    /// Sends a request on a leg in its own client transaction, routed back to this actor.
    pub(super) fn send_request(&mut self, side: Side, bytes: Bytes) -> Option<ClientKey> {
        let leg = self.leg(side)?;
        let env = Envelope::outgoing(bytes, leg.next_hop(), leg.transport)?;
        let key = crate::txlayer::client_key_of_request(&env.msg)?;
        let reliable = leg.transport.is_reliable();
        if let Err(e) = self.start_client(&key, env, reliable) {
            tracing::warn!(error = %e, "could not start a client transaction");
            return None;
        }
        Some(key)
    }
}

/// What sets one call apart at its start; everything else starts the same for every call. A new
/// call has leg A and its INVITE; a call rebuilt from its record also has its answered leg B.
pub(super) struct CallSeed {
    /// The node.
    pub(super) ctx: Arc<NodeCtx>,
    /// The call's root span and leg A's.
    pub(super) span: tracing::Span,
    pub(super) a_span: tracing::Span,
    pub(super) shard: u16,
    pub(super) inbound: SharedTrunk,
    pub(super) a: Leg,
    pub(super) a_key: ServerKey,
    /// The caller's INVITE (none for a rebuilt call: it was answered on another node).
    pub(super) a_invite: Option<Envelope>,
    pub(super) a_cseq_invite: u32,
    pub(super) called: String,
    pub(super) calling: String,
    /// A rebuilt call's leg B, answered and confirmed.
    pub(super) answered_b: Option<Attempt>,
    /// The gateway slot the call holds (a rebuilt call takes its own at once).
    pub(super) gateway_active: Option<String>,
    pub(super) history: Vec<(String, String)>,
    /// The actor the call runs in.
    pub(super) actor: ActorId,
    /// A rebuilt call's session timer (from its record).
    pub(super) session: Option<SessionTimer>,
}

impl Call {
    /// The one way a call's state is built: for a new INVITE (phase Calling, nothing answered) and
    /// for a call rebuilt from its record (confirmed, answered, written down).
    pub(super) fn new(seed: CallSeed) -> Call {
        let confirmed = seed.answered_b.is_some();
        Call {
            ctx: seed.ctx,
            span: seed.span,
            a_span: seed.a_span,
            shard: seed.shard,
            inbound: seed.inbound,
            a: seed.a,
            a_invite: seed.a_invite.map(Box::new),
            a_key: seed.a_key,
            a_cseq_invite: seed.a_cseq_invite,
            phase: if confirmed {
                Phase::Confirmed
            } else {
                Phase::Calling
            },
            plan: Vec::new(),
            next_candidate: 0,
            attempts: seed.answered_b.into_iter().collect(),
            history: seed.history,
            called: seed.called,
            calling: seed.calling,
            a_final_sent: confirmed,
            a_2xx: None,
            a_answered: confirmed,
            answered_after: None,
            pdd_recorded: confirmed,
            ack_b: None,
            reinvite_ack_b: None,
            relays: Vec::new(),
            refers: Vec::new(),
            pending_ack_b: Vec::new(),
            pending_ack_a: Vec::new(),
            bye_keys: Vec::new(),
            started: Instant::now(),
            last_status: if confirmed { 200 } else { 0 },
            gateway_active: seed.gateway_active,
            session: seed.session,
            session_deadline: None,
            session_check_armed: false,
            session_refresh_key: None,
            session_min_se: 90,
            stored: confirmed,
            rebuilt: confirmed,
            store_retry: false,
            ended: false,
            actor: seed.actor,
            released: false,
            timers_stop: None,
            media: Default::default(),
            media_session: None,
            srtp: Default::default(),
            crypto_refused: false,
            media_timeout: None,
            media_counted_from: Instant::now(),
            media_refusal: None,
            record_stale: false,
            reanchors: Vec::new(),
            reanchor_acks: Vec::new(),
            reanchor_failed: false,
            media_handover: false,
            lingering: false,
        }
    }

    /// What the admin API and tests see of the call.
    pub(super) fn info(&self) -> CallInfo {
        let tag = |t: &Option<Bytes>| {
            t.as_ref()
                .map(|t| String::from_utf8_lossy(t).into_owned())
                .unwrap_or_default()
        };
        CallInfo {
            a_call_id: String::from_utf8_lossy(&self.a.call_id).into_owned(),
            b_call_id: self
                .current()
                .map(|a| String::from_utf8_lossy(&a.leg.call_id).into_owned()),
            phase: self.phase,
            attempts: self.history.clone(),
            shard: self.shard,
            inbound_trunk: self.inbound.name.clone(),
            gateway: self.current().map(|a| a.trunk.clone()),
            called: self.called.clone(),
            calling: self.calling.clone(),
            age: self.started.elapsed(),
            answered_after: self.answered_after,
            a_tags: (self.a.local_tag.clone(), tag(&self.a.remote_tag)),
            b_tags: self
                .current()
                .map(|a| (a.leg.local_tag.clone(), tag(&a.leg.remote_tag))),
            // Filled in by the actor (the media concern sits above this file).
            a_media: None,
            b_media: None,
            a_wire: LegWire {
                transport: self.a.transport,
                peer: self.a.peer,
                tls: None,
            },
            b_wire: self.current().map(|a| LegWire {
                transport: a.leg.transport,
                peer: a.leg.peer,
                tls: None,
            }),
        }
    }
}

// The state `forks` and `session` keep in a call (defined here, below them: they act on a Call).

/// Early dialogs one attempt keeps: a fork beyond them is still relayed to the caller, but leg B
/// does not switch to it.
pub(super) const MAX_EARLY_DIALOGS: usize = 16;
/// 2xx answers from losing forks one attempt remembers (to ACK their retransmissions without
/// hanging up again); beyond them each is still ACKed and hung up.
pub(super) const MAX_EXTRA_ANSWERS: usize = 16;

/// One early dialog of leg B: what its 18x said.
#[derive(Debug, Clone)]
pub(super) struct EarlyDialog {
    /// The fork's To tag.
    pub(super) tag: Bytes,
    /// Its Contact.
    pub(super) remote_target: Bytes,
    /// Its To value (with the tag).
    pub(super) remote_uri: Bytes,
    /// Its route set (Record-Route reversed).
    pub(super) route_set: Vec<Bytes>,
}

/// A 2xx from a fork that lost: its tag and the ACK we sent it.
#[derive(Debug)]
pub(super) struct ExtraAnswer {
    pub(super) tag: Bytes,
    pub(super) ack: Envelope,
}

/// The session timer a call runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SessionTimer {
    /// Session interval, seconds.
    pub(super) interval: u32,
    /// This node refreshes leg B; else a peer refreshes (its refreshes pass through the call).
    pub(super) we_refresh: bool,
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// An established call's state lives inline in its actor's task for the call's whole life
    /// (BENCHMARKS.md, "Memory"): what only a call being set up needs is boxed, so the slot stays
    /// small. Prints the sizes (`-- --nocapture`) and fails when the call grows past its budget.
    #[test]
    fn the_state_of_a_call_stays_within_its_inline_budget() {
        println!(
            "Call {} B, Attempt {} B, Leg {} B, Envelope {} B, Trunk {} B, MediaPlan {} B, \
             SideSrtp {} B, Span {} B, DialogMsg {} B, SentAck {} B, ServerKey {} B, ClientKey {} B, \
             Session {} B",
            size_of::<Call>(),
            size_of::<Attempt>(),
            size_of::<Leg>(),
            size_of::<Envelope>(),
            size_of::<crate::config::Trunk>(),
            size_of::<crate::media::MediaPlan>(),
            size_of::<crate::srtp::SideSrtp>(),
            size_of::<tracing::Span>(),
            size_of::<DialogMsg>(),
            size_of::<SentAck>(),
            size_of::<ServerKey>(),
            size_of::<ClientKey>(),
            size_of::<Option<medpool_media::relay::Session>>(),
        );
        // Measured 2,088 and 472 B (rustc 1.95, x86_64) once the set-up messages were boxed;
        // 1,136 B with the inbound trunk shared with the configuration and the state only a
        // relayed call or a relayed re-INVITE needs (SRTP, relay session, its ACK) boxed; 1,144 B
        // with what ends its long timers when it stops (8 B, which free ~10 KB per call the moment
        // it stops instead of when its timers fire).
        assert!(size_of::<Call>() <= 1152, "Call is {} B", size_of::<Call>());
        // The message loop an idle call waits in holds a message inline (see `DialogMsg`).
        assert!(
            size_of::<DialogMsg>() <= 32,
            "DialogMsg is {} B",
            size_of::<DialogMsg>()
        );
        assert!(
            size_of::<Attempt>() <= 480,
            "Attempt is {} B",
            size_of::<Attempt>()
        );
    }
}
