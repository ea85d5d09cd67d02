//! The DialogActor's dispatch: the messages a call takes, how it starts and stops, and which
//! concern handles each message (`setup`, `relay`, `teardown`, `record`). The actor holds no logic
//! of its own: it only routes.

use std::sync::Arc;
use std::time::Duration;

use medpool_sip::transaction::ServerKey;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::call::{Call, CallInfo, Phase};
use super::{record, relay, setup, teardown};
use crate::cluster::DialogRecord;
use crate::config::Trunk;
use crate::ctx::NodeCtx;
use crate::txlayer::{CallEvent, CallRef, Envelope, Registry};

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
    /// Test hook: the call panics (to show what its supervisor and its state's drop give back).
    #[cfg(test)]
    PanicForTest,
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
        match start {
            DialogStart::New(args) => Ok(setup::new_call(*args, &myself)),
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
            DialogMsg::Tx(event) => match event {
                CallEvent::Response { key, status, env } => {
                    relay::on_response(st, me, key, status, env);
                }
                CallEvent::StrayAnswer { env } => st.reack_b(&env),
                CallEvent::ClientEnded { key, outcome } => {
                    setup::on_client_ended(st, me, key, outcome);
                }
                CallEvent::Cancel { key, env } => setup::on_cancel(st, me, &key, &env),
                CallEvent::Request { side, key, env } => relay::on_request(st, me, side, key, env),
                CallEvent::Ack { side, env } => relay::on_ack(st, me, side, env),
            },
            DialogMsg::ShardReleased => teardown::on_shard_released(st, me),
            DialogMsg::StoreRecord => record::on_store_record(st),
            DialogMsg::RecordCheck { left } => record::on_record_check(st, me, left),
            DialogMsg::FastFailover { attempt } => setup::on_fast_failover(st, me, attempt),
            DialogMsg::Retransmit2xx { interval } => setup::on_retransmit_2xx(st, me, interval),
            DialogMsg::SessionRefresh => relay::on_session_refresh(st, me),
            DialogMsg::Hangup => teardown::on_hangup(st, me),
            DialogMsg::Info(reply) => {
                let _ = reply.send(st.info());
            }
            #[cfg(test)]
            DialogMsg::PanicForTest => panic!("a panic planted by a test"),
        }
        record::retry_store_later(st, me);
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

/// Spawns the actor for a new call.
pub async fn spawn(args: DialogArgs) -> Result<ActorRef<DialogMsg>, ractor::SpawnErr> {
    let ctx = args.ctx.clone();
    spawn_call(&ctx, DialogStart::New(Box::new(args))).await
}

/// Rebuilds a confirmed call from its replicated record (failover, drain).
pub async fn spawn_restored(
    ctx: Arc<NodeCtx>,
    record: DialogRecord,
) -> Result<ActorRef<DialogMsg>, ractor::SpawnErr> {
    spawn_call(&ctx.clone(), DialogStart::Restored(ctx, Box::new(record))).await
}
