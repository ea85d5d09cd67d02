//! What the transaction layer hands up, and to whom: [`CallEvent`]s to the call that owns a
//! transaction or a dialog, [`ProbeEvent`]s to the gateway prober that sent an OPTIONS, and
//! [`CoreEvent`]s to the node for what no one owns yet. Owners are reached through ractor's
//! [`DerivedActorRef`]: this layer names the events, never the actors that take them.

use medpool_sip::transaction::{ClientKey, Outcome, ServerKey};
use ractor::{ActorId, DerivedActorRef};

use super::Envelope;

/// Which leg a message belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The caller's side.
    A,
    /// The side we called.
    B,
}

/// A transaction event that belongs to one call.
#[derive(Debug)]
pub enum CallEvent {
    /// An in-dialog request from one side (its server transaction exists).
    Request {
        /// Which leg it came on.
        side: Side,
        /// Its server transaction.
        key: ServerKey,
        /// The request.
        env: Envelope,
    },
    /// An ACK for a 2xx (or for a non-2xx the transaction layer did not absorb).
    Ack {
        /// Which leg.
        side: Side,
        /// The ACK.
        env: Envelope,
    },
    /// A CANCEL for the call's INVITE.
    Cancel {
        /// The CANCEL's server transaction.
        key: ServerKey,
        /// The CANCEL.
        env: Envelope,
    },
    /// A response to one of the call's client transactions.
    Response {
        /// The client transaction.
        key: ClientKey,
        /// Status code.
        status: u16,
        /// The response.
        env: Envelope,
    },
    /// A 2xx on leg B after its transaction ended (to be ACKed again).
    StrayAnswer {
        /// The response.
        env: Envelope,
    },
    /// A client transaction of the call ended.
    ClientEnded {
        /// Which.
        key: ClientKey,
        /// How.
        outcome: Outcome,
    },
}

/// A transaction event that belongs to a gateway's OPTIONS probe.
#[derive(Debug)]
pub enum ProbeEvent {
    /// The probe with this key was answered.
    Answer {
        /// The OPTIONS transaction.
        key: ClientKey,
        /// Status.
        status: u16,
    },
    /// The probe's transaction failed (transport error or Timer F).
    Failed {
        /// The OPTIONS transaction.
        key: ClientKey,
    },
}

/// Where a call's events go.
pub type CallRef = DerivedActorRef<CallEvent>;
/// Where a probe's events go.
pub type ProbeRef = DerivedActorRef<ProbeEvent>;

/// Who owns a client transaction, found when one of its events comes.
#[derive(Clone, Debug)]
pub enum Owner {
    /// A call.
    Dialog(CallRef),
    /// A gateway's OPTIONS probe.
    Gateway(ProbeRef),
}

/// Who owns a client transaction, as the registry keeps it. A call is named, not held: by its
/// shard and actor, and looked up among the live calls when an event of the transaction comes. A
/// client transaction outlives its call by up to 64*T1 (an INVITE's Timer M after its 2xx);
/// holding the call's reference for that long kept the stopped actor's cell and its
/// mailboxes (~10 KB) alive with it, which after a burst of calls was most of the node's memory.
#[derive(Clone, Debug)]
pub enum ClientOwner {
    /// A call: its shard and its actor.
    Dialog {
        /// The call's shard (where the registry lists its live calls).
        shard: u16,
        /// The call's actor.
        actor: ActorId,
    },
    /// A gateway's OPTIONS probe (a long-lived actor: held).
    Gateway(ProbeRef),
}

impl ClientOwner {
    /// The actor that owns the transaction.
    pub fn actor(&self) -> ActorId {
        match self {
            Self::Dialog { actor, .. } => *actor,
            Self::Gateway(g) => g.get_id(),
        }
    }
}

/// Work for the node dispatcher: requests no actor owns yet.
#[derive(Debug)]
pub enum CoreEvent {
    /// A request that created a server transaction but matches no dialog: a new INVITE, an
    /// out-of-dialog OPTIONS, an unknown dialog (481), an unmatched CANCEL (481).
    Unrouted {
        /// Its server transaction.
        key: ServerKey,
        /// The request.
        env: Envelope,
    },
    /// A 2xx to an INVITE of ours (its Call-ID is one we minted) that no call knows any more: its
    /// call ended, or moved, before the gateway answered. The node ACKs it and hangs the leg up.
    OrphanAnswer {
        /// The response.
        env: Envelope,
    },
}
