//! The DialogActor's dispatch: the messages a call takes, how it starts and stops, and which
//! concern handles each message.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use medpool_sip::transaction::ServerKey;
use medpool_sip::{HeaderName, ids};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;

use super::call::*;
use super::leg::{Leg, local_response};
use super::record::*;
use super::relay::*;
use super::setup::*;
use super::spans::*;
use crate::cluster::DialogRecord;
use crate::config::Trunk;
use crate::ctx::{NodeCtx, NodeEvent};
use crate::health::InviteOutcome;
use crate::txlayer::{CallEvent, CallRef, Envelope, Registry, Side};

/// Messages a call receives.
// Transaction events are most of a call's messages and carry their message inline, as before
// they were a variant of their own: boxing them would allocate once per message.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum DialogMsg {
    /// A transaction event of the call (from the transaction layer).
    Tx(CallEvent),
    /// The call's shard moved to another node. A call written down (answered) goes on there: this
    /// actor stops without a word. A call still being set up is known nowhere else: it is ended
    /// here (503 + Retry-After to the caller, CANCEL to the gateway), never left half-open.
    ShardReleased,
    /// Time to try writing the call's record again (this node could not write it when the call was
    /// answered: its lease had lapsed, or the write queue was full).
    StoreRecord,
    /// A call rebuilt from its record checks that the record still exists (`left` checks to go):
    /// its old node may have ended the call in the instant the shard moved.
    RecordCheck {
        /// Checks left after this one.
        left: u8,
    },
    /// The fast-failover timer of attempt `attempt` fired.
    FastFailover {
        /// Attempt number.
        attempt: u32,
    },
    /// Time to retransmit the 2xx to the caller (no ACK yet).
    Retransmit2xx {
        /// Interval used this time.
        interval: Duration,
    },
    /// The session timer refresh is due (we are the refresher on leg B).
    SessionRefresh,
    /// Hang the call up: BYE both confirmed legs (admin or shutdown).
    Hangup,
    /// Report the call's state.
    Info(RpcReplyPort<CallInfo>),
}

impl From<CallEvent> for DialogMsg {
    fn from(e: CallEvent) -> Self {
        DialogMsg::Tx(e)
    }
}

impl TryFrom<DialogMsg> for CallEvent {
    type Error = DialogMsg;
    fn try_from(m: DialogMsg) -> Result<Self, DialogMsg> {
        match m {
            DialogMsg::Tx(e) => Ok(e),
            other => Err(other),
        }
    }
}

/// The DialogActor behind a registry entry (the registry holds only calls in its call maps).
pub fn actor_of(call: &CallRef) -> ActorRef<DialogMsg> {
    ActorRef::from(call.get_cell())
}

impl Registry {
    /// Every call's actor (for shutdown and admin).
    pub fn call_actors(&self) -> Vec<ActorRef<DialogMsg>> {
        self.all_calls().iter().map(actor_of).collect()
    }
}

/// How a DialogActor starts.
pub enum DialogStart {
    /// A new INVITE.
    New(Box<DialogArgs>),
    /// A confirmed dialog taken over from another node (its shard moved here).
    Restored(Arc<NodeCtx>, Box<DialogRecord>),
}

/// Arguments of a new call.
pub struct DialogArgs {
    /// The node.
    pub ctx: Arc<NodeCtx>,
    /// The INVITE's server transaction.
    pub key: ServerKey,
    /// The INVITE.
    pub env: Envelope,
    /// The trunk it came in on.
    pub inbound: Trunk,
    /// The call's shard.
    pub shard: u16,
}

/// The actor (behaviour only; the state is [`Call`]).
pub struct DialogActor;

impl Actor for DialogActor {
    type Msg = DialogMsg;
    type State = Call;
    type Arguments = DialogStart;

    async fn pre_start(
        &self,
        myself: ActorRef<DialogMsg>,
        start: DialogStart,
    ) -> Result<Call, ActorProcessingErr> {
        let args = match start {
            DialogStart::New(args) => *args,
            DialogStart::Restored(ctx, record) => return restored(ctx, *record, myself),
        };
        let DialogArgs {
            ctx,
            key,
            env,
            inbound,
            shard,
        } = args;
        let msg = &env.msg;
        let call_id =
            Bytes::copy_from_slice(msg.call_id().and_then(|c| c.ok()).unwrap_or_default());
        let remote_tag = msg.from_tag().map(Bytes::copy_from_slice);
        // Registered before the actor runs (post_stop unregisters): a CANCEL or an in-dialog request
        // handled right after the spawn finds the call, and a call that ends at once leaves nothing behind.
        ctx.registry.add_call(
            key.clone(),
            &call_id,
            remote_tag.as_deref().unwrap_or_default(),
            shard,
            myself.get_derived(),
        );
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
            .map(|u| {
                crate::translate::number_from_uri(&String::from_utf8_lossy(u)).unwrap_or_default()
            })
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
        Ok(Call {
            ctx,
            span,
            a_span,
            shard,
            inbound,
            a,
            a_key: key,
            a_cseq_invite: cseq,
            a_invite: Some(env),
            phase: Phase::Calling,
            plan: Vec::new(),
            next_candidate: 0,
            attempts: Vec::new(),
            history: Vec::new(),
            called,
            calling,
            a_final_sent: false,
            a_2xx: None,
            a_answered: false,
            answered_after: None,
            pdd_recorded: false,
            ack_b: None,
            relays: Vec::new(),
            pending_ack_b: Vec::new(),
            pending_ack_a: Vec::new(),
            bye_keys: Vec::new(),
            started: Instant::now(),
            last_status: 0,
            gateway_active: None,
            session_refresh: None,
            stored: false,
            store_retry: false,
            ended: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<DialogMsg>,
        st: &mut Call,
    ) -> Result<(), ActorProcessingErr> {
        if st.phase == Phase::Confirmed {
            // A restored call: nothing to start, but its record is watched for the old owner's
            // removal, which may land up to its retry window after the move.
            drop(
                myself.send_after(RECORD_CHECK_EVERY, || DialogMsg::RecordCheck {
                    left: RECORD_CHECKS - 1,
                }),
            );
            return Ok(());
        }
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
            st.maybe_finish(&myself);
            return Ok(());
        }
        let random = rand::random::<u64>();
        match crate::routing::select(&config, &st.called, &st.inbound, &st.ctx.gateways, random) {
            Ok(plan) => {
                st.plan = plan.candidates;
                if !st.try_next(&myself) {
                    let retry = config.node.retry_after.to_string();
                    st.fail_a(503, &[(HeaderName::RetryAfter, retry.as_bytes())]);
                    st.maybe_finish(&myself);
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
                st.maybe_finish(&myself);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        myself: ActorRef<DialogMsg>,
        st: &mut Call,
    ) -> Result<(), ActorProcessingErr> {
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
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<DialogMsg>,
        msg: DialogMsg,
        st: &mut Call,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DialogMsg::Tx(CallEvent::Response { key, status, env }) => {
                on_response(st, &myself, key, status, env)
            }
            DialogMsg::Tx(CallEvent::StrayAnswer { env }) => st.reack_b(&env),
            DialogMsg::ShardReleased if st.phase == Phase::Ending => {
                // Already ending (a BYE or CANCEL under way): it finishes here, and its record is
                // removed with it, so that the new owner's copy, if any, follows (RecordCheck).
                tracing::debug!(parent: &st.span, "shard moved while the call ends: it ends here");
            }
            DialogMsg::ShardReleased if st.stored => {
                tracing::debug!(parent: &st.span, "shard moved: the call goes on at its new owner");
                myself.stop(Some("shard moved".into()));
            }
            DialogMsg::ShardReleased if st.a_answered => {
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
                        st.cancel_attempt(i, &myself);
                    }
                }
                st.bye_all(&myself, None);
            }
            DialogMsg::StoreRecord => {
                st.store_retry = false;
                if !st.stored
                    && st.phase != Phase::Ending
                    && let Some(rec) = st.record()
                    && st.ctx.store.store(rec)
                {
                    st.mark_stored();
                }
            }
            DialogMsg::RecordCheck { left } => {
                let call_id = String::from_utf8_lossy(&st.a.call_id).into_owned();
                if st.phase == Phase::Confirmed && !st.ctx.store.contains(st.shard, &call_id) {
                    tracing::debug!(parent: &st.span, "record gone: the call ended on its old node");
                    myself.stop(Some("record removed".into()));
                } else {
                    let every = if left > 0 {
                        RECORD_CHECK_EVERY
                    } else {
                        RECORD_CHECK_SLOW
                    };
                    let left = left.saturating_sub(1);
                    drop(myself.send_after(every, move || DialogMsg::RecordCheck { left }));
                }
            }
            DialogMsg::ShardReleased => {
                st.history
                    .push(("pool".into(), "shard moved during set-up".into()));
                st.fail_a(503, &[(HeaderName::RetryAfter, b"1")]);
                for i in 0..st.attempts.len() {
                    st.attempts[i].abandoned = true;
                    st.cancel_attempt(i, &myself);
                }
                st.phase = Phase::Ending;
                st.maybe_finish(&myself);
            }
            DialogMsg::Tx(CallEvent::ClientEnded { key, outcome }) => {
                on_client_ended(st, &myself, key, outcome)
            }
            DialogMsg::FastFailover { attempt } => {
                let idx = st.attempts.iter().position(|a| a.number == attempt);
                if let Some(idx) = idx
                    && !st.attempts[idx].abandoned
                    && !st.attempts[idx].got_18x
                    && !st.attempts[idx].answered
                    && st.phase == Phase::Calling
                {
                    let trunk = st.attempts[idx].trunk.clone();
                    st.gateway_outcome(&trunk, InviteOutcome::Timeout);
                    st.cancel_attempt(idx, &myself);
                    st.attempt_failed(&myself, 408, None, "fast failover: no provisional in time");
                }
            }
            DialogMsg::Tx(CallEvent::Cancel { key, env }) => {
                let ok = local_response(&env, 200, Some(&st.a.local_tag), &[]);
                if let Some(e) = env.reply(ok) {
                    let _ = st.ctx.driver.respond(&key, 200, e);
                }
                if !st.a_final_sent {
                    st.fail_a(487, &[]);
                    for i in 0..st.attempts.len() {
                        st.attempts[i].abandoned = true;
                        st.cancel_attempt(i, &myself);
                    }
                    st.history.push(("caller".into(), "cancelled".into()));
                    st.maybe_finish(&myself);
                }
            }
            DialogMsg::Tx(CallEvent::Request { side, key, env }) => {
                on_request(st, &myself, side, key, env)
            }
            DialogMsg::Tx(CallEvent::Ack { side, env }) => on_ack(st, &myself, side, env),
            DialogMsg::Retransmit2xx { interval } => {
                if st.phase == Phase::Answered
                    && let Some((status, env)) = st.a_2xx.clone()
                {
                    if st
                        .ctx
                        .driver
                        .respond(&st.a_key, status, env.clone())
                        .is_err()
                    {
                        let _ =
                            st.ctx
                                .transports
                                .send_now(env.transport, env.peer, env.msg.bytes());
                    }
                    let t = st.ctx.timers;
                    if st.started.elapsed() > t.t1 * 64 + Duration::from_secs(1) && interval >= t.t2
                    {
                        // No ACK in 64*T1: end the call (RFC 3261 §13.3.1.4).
                        st.history.push(("caller".into(), "no ACK for 2xx".into()));
                        st.bye_all(&myself, None);
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
            DialogMsg::SessionRefresh => {
                if matches!(st.phase, Phase::Confirmed)
                    && let Some(interval) = st.session_refresh
                    && let Some(b) = st.confirmed_b()
                {
                    let mut leg = b.leg.clone();
                    leg.local_cseq += 1;
                    let cseq = leg.local_cseq;
                    let branch = ids::new_branch(st.shard);
                    let mut req = leg.request(&st.ctx.me, b"UPDATE", cseq, &branch);
                    req.header(
                        HeaderName::Contact,
                        st.ctx.me.contact(leg.transport).as_bytes(),
                    );
                    req.header_fmt(
                        HeaderName::SessionExpires,
                        format_args!("{};refresher=uac", interval.as_secs() * 2),
                    );
                    req.header(HeaderName::Supported, b"timer");
                    if let Some(cur) = st.leg_mut(Side::B) {
                        cur.local_cseq = cseq;
                    }
                    let _ = st.send_request(&myself, Side::B, req.build());
                    drop(myself.send_after(interval, || DialogMsg::SessionRefresh));
                }
            }
            DialogMsg::Hangup => {
                if st.a_final_sent {
                    st.bye_all(&myself, None);
                } else {
                    st.fail_a(480, &[]);
                    for i in 0..st.attempts.len() {
                        st.attempts[i].abandoned = true;
                        st.cancel_attempt(i, &myself);
                    }
                    st.maybe_finish(&myself);
                }
            }
            DialogMsg::Info(reply) => {
                let _ = reply.send(CallInfo {
                    a_call_id: String::from_utf8_lossy(&st.a.call_id).into_owned(),
                    b_call_id: st
                        .current()
                        .map(|a| String::from_utf8_lossy(&a.leg.call_id).into_owned()),
                    phase: st.phase,
                    attempts: st.history.clone(),
                    shard: st.shard,
                    inbound_trunk: st.inbound.name.clone(),
                    gateway: st.current().map(|a| a.trunk.clone()),
                    called: st.called.clone(),
                    calling: st.calling.clone(),
                    age: st.started.elapsed(),
                    answered_after: st.answered_after,
                    a_tags: (
                        st.a.local_tag.clone(),
                        st.a.remote_tag
                            .as_ref()
                            .map(|t| String::from_utf8_lossy(t).into_owned())
                            .unwrap_or_default(),
                    ),
                    b_tags: st.current().map(|a| {
                        (
                            a.leg.local_tag.clone(),
                            a.leg
                                .remote_tag
                                .as_ref()
                                .map(|t| String::from_utf8_lossy(t).into_owned())
                                .unwrap_or_default(),
                        )
                    }),
                });
            }
        }
        // An answered call whose record this node could not write yet: try again shortly.
        if st.a_answered && !st.stored && !st.store_retry && st.phase != Phase::Ending {
            st.store_retry = true;
            drop(myself.send_after(STORE_RETRY_EVERY, || DialogMsg::StoreRecord));
        }
        Ok(())
    }
}

/// Spawns the actor for a new call.
pub async fn spawn(args: DialogArgs) -> Result<ActorRef<DialogMsg>, ractor::SpawnErr> {
    let (actor, _handle) =
        Actor::spawn(None, DialogActor, DialogStart::New(Box::new(args))).await?;
    Ok(actor)
}

/// Rebuilds a confirmed call from its replicated record (failover, drain).
pub async fn spawn_restored(
    ctx: Arc<NodeCtx>,
    record: DialogRecord,
) -> Result<ActorRef<DialogMsg>, ractor::SpawnErr> {
    let (actor, _handle) = Actor::spawn(
        None,
        DialogActor,
        DialogStart::Restored(ctx, Box::new(record)),
    )
    .await?;
    Ok(actor)
}
