//! What a DialogActor takes: how it starts ([`DialogStart`], [`DialogArgs`]), the messages it
//! handles ([`DialogMsg`]), and what it reports ([`CallInfo`], [`Phase`]). A leaf of `dialog`:
//! every concern file schedules its timers with these messages.

use std::sync::Arc;
use std::time::Duration;

use medpool_sip::transaction::ServerKey;
use ractor::{ActorRef, RpcReplyPort};

use crate::cluster::DialogRecord;
use crate::config::SharedTrunk;
use crate::ctx::NodeCtx;
use crate::txlayer::{CallEvent, CallRef, Envelope, Registry, Side};

/// Messages a call receives.
// Transaction events are boxed: the size of this enum is paid by every call for its whole life
// (ractor's message loop future, which an idle call sits in, holds a message inline more than
// once), while the box is one small allocation per event, next to the one ractor already makes
// for every message (BENCHMARKS.md, "Memory").
#[derive(Debug)]
pub enum DialogMsg {
    /// A transaction event of the call (from the transaction layer).
    Tx(Box<CallEvent>),
    /// The call's shard moved to another node. A call written down (answered) goes on there: this
    /// actor stops without a word. A call still being set up is known nowhere else: it lingers,
    /// finishing its set-up here (for at most [`crate::handover::SETUP_LINGER`]), and once
    /// confirmed writes its record and stops, the new owner carrying it on.
    ShardReleased,
    /// A call still being set up is ended (503 + Retry-After to the caller, CANCEL to the
    /// gateway): its linger bound passed, or its node is about to stop. Any other call ignores it.
    EndSetUp,
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
    /// Time to check whether the session expired without a refresh (RFC 4028 §10).
    SessionCheck,
    /// Time to check that the call's relayed media still flows (the media timeout).
    MediaCheck,
    /// A rebuilt call checks again whether its node acts for its shard yet (it re-anchors its
    /// media and takes its session timer up only then); `left` checks remain.
    TakeOver {
        /// Checks left.
        left: u8,
    },
    /// Time to send a rebuilt call's re-anchoring re-INVITE on `side` again (its last one met a
    /// 491: glare, RFC 3261 §14.1).
    Reanchor {
        /// The leg.
        side: Side,
        /// Tries so far.
        tries: u8,
    },
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
        DialogMsg::Tx(Box::new(e))
    }
}

impl TryFrom<DialogMsg> for CallEvent {
    type Error = DialogMsg;
    fn try_from(m: DialogMsg) -> Result<Self, DialogMsg> {
        match m {
            DialogMsg::Tx(e) => Ok(*e),
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
    /// A new INVITE, and the signal that its spawner has registered the call
    /// ([`super::actor::spawn`]).
    New(Box<DialogArgs>, tokio::sync::oneshot::Receiver<()>),
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
    /// The trunk it came in on (shared with the configuration the call began under).
    pub inbound: SharedTrunk,
    /// The call's shard.
    pub shard: u16,
}

/// What the admin API and tests see of a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    /// Leg A Call-ID.
    pub a_call_id: String,
    /// Leg B Call-ID (of the current attempt).
    pub b_call_id: Option<String>,
    /// Phase.
    pub phase: Phase,
    /// Gateway trunks tried, with what happened.
    pub attempts: Vec<(String, String)>,
    /// Shard of the call.
    pub shard: u16,
    /// The trunk it came in on.
    pub inbound_trunk: String,
    /// The gateway trunk of the current attempt.
    pub gateway: Option<String>,
    /// Normalised called number.
    pub called: String,
    /// Normalised calling number.
    pub calling: String,
    /// Time since the INVITE arrived (or since the call was restored here).
    pub age: Duration,
    /// Time from the INVITE to the answer, when answered.
    pub answered_after: Option<Duration>,
    /// Leg A: our tag and the peer's.
    pub a_tags: (String, String),
    /// Leg B: our tag and the peer's, when there is a leg B.
    pub b_tags: Option<(String, String)>,
    /// Leg A's relayed media (none: not relayed).
    pub a_media: Option<crate::media::LegMedia>,
    /// Leg B's relayed media (none: not relayed).
    pub b_media: Option<crate::media::LegMedia>,
    /// Leg A's signalling transport.
    pub a_wire: LegWire,
    /// Leg B's, when there is a leg B.
    pub b_wire: Option<LegWire>,
}

/// How a leg's signalling travels: its transport and peer, and over TLS what the handshake of
/// the connection open to that peer learnt (filled in by the actor; `None` when no TLS connection
/// to the peer is open now).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LegWire {
    /// UDP, TCP or TLS.
    pub transport: medpool_sip::transport::Transport,
    /// The peer's address.
    pub peer: std::net::SocketAddr,
    /// Version and peer certificate of the TLS connection.
    pub tls: Option<std::sync::Arc<medpool_sip::transport::tls::PeerTls>>,
}

/// Where a call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Choosing / calling a gateway.
    Calling,
    /// A provisional response was relayed to the caller.
    Early,
    /// 2xx relayed, waiting for the caller's ACK.
    Answered,
    /// Established.
    Confirmed,
    /// Ending (BYE or CANCEL under way).
    Ending,
}
