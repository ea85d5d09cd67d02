//! The DialogActor's dispatch: the messages a call takes, how it starts and stops, and which
//! concern handles each message (`setup`, `attempts`, `invite_answers`, `relay`, `teardown`,
//! `record`). The actor holds no logic of its own: it only routes.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, ActorRuntime};

use super::call::Call;
use super::msg::{DialogArgs, DialogMsg, DialogStart, Phase};
use super::{attempts, invite_answers, media, record, relay, session, setup, teardown};
use crate::cluster::DialogRecord;
use crate::ctx::NodeCtx;
use crate::txlayer::{CallEvent, Side};

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
        match start {
            DialogStart::New(args, registered) => {
                // Its spawner registers it first (`spawn`): never run before that.
                registered.await?;
                Ok(setup::new_call(*args, &myself))
            }
            DialogStart::Restored(ctx, record) => record::restored(ctx, *record, &myself),
        }
    }

    async fn post_start(
        &self,
        myself: ActorRef<DialogMsg>,
        st: &mut Call,
    ) -> Result<(), ActorProcessingErr> {
        if st.phase == Phase::Confirmed {
            record::watch_record(&myself);
            record::take_over_when_acting(st, &myself, record::ACTING_CHECKS);
        } else {
            setup::start(st, &myself);
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DialogMsg>,
        st: &mut Call,
    ) -> Result<(), ActorProcessingErr> {
        st.release();
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<DialogMsg>,
        msg: DialogMsg,
        st: &mut Call,
    ) -> Result<(), ActorProcessingErr> {
        let me = &myself;
        match msg {
            DialogMsg::Tx(event) => match *event {
                CallEvent::Response { key, status, env } => {
                    match st.attempts.iter().position(|a| a.key == key) {
                        Some(idx) => invite_answers::on_invite_response(st, me, idx, status, env),
                        None => relay::on_response(st, me, key, status, env),
                    }
                }
                CallEvent::StrayAnswer { env } => {
                    if !media::reack_reanchor(st, &env) {
                        st.on_stray_answer(&env);
                    }
                }
                CallEvent::ClientEnded { key, outcome } => {
                    if !attempts::on_attempt_ended(st, me, &key, outcome) {
                        relay::on_client_ended(st, me, key, outcome);
                    }
                }
                CallEvent::Cancel { key, env } => setup::on_cancel(st, me, &key, &env),
                CallEvent::Request { side, key, env } => relay::on_request(st, me, side, key, env),
                CallEvent::Ack { side, env } => relay::on_ack(st, me, side, env),
            },
            DialogMsg::ShardReleased => teardown::on_shard_released(st, me),
            DialogMsg::EndSetUp => teardown::on_end_set_up(st, me),
            DialogMsg::StoreRecord => record::on_store_record(st),
            DialogMsg::RecordCheck { left } => record::on_record_check(st, me, left),
            DialogMsg::FastFailover { attempt } => attempts::on_fast_failover(st, me, attempt),
            DialogMsg::Retransmit2xx { interval } => setup::on_retransmit_2xx(st, me, interval),
            DialogMsg::SessionRefresh => session::on_session_refresh(st, me),
            DialogMsg::SessionCheck => session::on_session_check(st, me),
            DialogMsg::MediaCheck => media::on_media_check(st, me),
            DialogMsg::TakeOver { left } => record::take_over_when_acting(st, me, left),
            DialogMsg::Reanchor { side, tries } => media::on_reanchor_retry(st, me, side, tries),
            DialogMsg::Hangup => teardown::on_hangup(st, me),
            DialogMsg::Info(reply) => {
                let mut info = st.info();
                info.a_media = st.leg_media(Side::A);
                info.b_media = st.leg_media(Side::B);
                if let Some(pool) = st.ctx.transports.tls() {
                    for w in std::iter::once(&mut info.a_wire).chain(info.b_wire.as_mut()) {
                        if w.transport == medpool_sip::transport::Transport::Tls {
                            w.tls = pool.peer_tls(w.peer);
                        }
                    }
                }
                let _ = reply.send(info);
            }
            #[cfg(test)]
            DialogMsg::PanicForTest => panic!("a panic planted by a test"),
        }
        record::retry_store_later(st, me);
        teardown::hand_over_once_recorded(st, me);
        Ok(())
    }
}

/// Starts a DialogActor, linked to the node's supervisor (when it has one).
async fn spawn_call(
    ctx: &NodeCtx,
    start: DialogStart,
) -> Result<ActorRef<DialogMsg>, ractor::SpawnErr> {
    let (actor, _handle) = match ctx.supervisor() {
        Some(sup) => Actor::spawn_linked(None, DialogActor, start, sup).await?,
        None => Actor::spawn(None, DialogActor, start).await?,
    };
    Ok(actor)
}

/// Spawns the actor for a new call without waiting for it to start: the spawner (the node's
/// dispatcher) goes on with the next message at once, and the actor starts on whichever worker
/// is free. Before it returns, the call is registered (see [`setup::register`]), so a CANCEL or
/// any request of the call that the spawner takes next is routed to the actor's queue, where it
/// waits for the actor to start. The actor's `pre_start` waits for that registration.
///
/// A `pre_start` that failed (it cannot, short of a panic) would leave its routes in the
/// registry; the call's transactions still end on their timers.
pub fn spawn(args: DialogArgs) -> Result<ActorRef<DialogMsg>, ractor::SpawnErr> {
    let ctx = args.ctx.clone();
    // The registration needs the actor's reference, which exists only once it is spawned, and the
    // arguments move into the actor: what it reads is taken first.
    let routes = setup::Routes::of(&args);
    let (registered_tx, registered) = tokio::sync::oneshot::channel();
    let start = DialogStart::New(Box::new(args), registered);
    let (actor, _started) = match ctx.supervisor() {
        Some(sup) => ActorRuntime::spawn_linked_instant(None, DialogActor, start, sup)?,
        None => ActorRuntime::spawn_instant(None, DialogActor, start)?,
    };
    routes.register(&ctx, &actor);
    // Cannot fail: the actor holds the receiver until its `pre_start` has it.
    let _ = registered_tx.send(());
    Ok(actor)
}

/// Rebuilds a confirmed call from its replicated record (failover, drain).
pub async fn spawn_restored(
    ctx: Arc<NodeCtx>,
    record: DialogRecord,
) -> Result<ActorRef<DialogMsg>, ractor::SpawnErr> {
    spawn_call(&ctx.clone(), DialogStart::Restored(ctx, Box::new(record))).await
}
