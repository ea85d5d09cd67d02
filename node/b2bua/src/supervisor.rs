//! The supervisor of a node's actors: every DialogActor and GatewayActor is spawned linked to it.
//! An actor that dies without stopping cleanly (a panic: ractor then skips its `post_stop`) is
//! swept out of the routing registry here, whatever it had registered; a call gives back its
//! gateway slot, its counts and its place in the shutdown wait when its state is dropped (see
//! `dialog::Call::release`), which ractor does whichever way the actor ended. The supervisor
//! names no actor type: it sees only cells.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::ctx::NodeCtx;

/// The supervisor actor.
#[derive(Debug)]
pub struct Supervisor;

impl Actor for Supervisor {
    type Msg = ();
    type State = Weak<NodeCtx>;
    type Arguments = Weak<NodeCtx>;

    async fn pre_start(
        &self,
        _myself: ActorRef<()>,
        ctx: Weak<NodeCtx>,
    ) -> Result<Weak<NodeCtx>, ActorProcessingErr> {
        Ok(ctx)
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<()>,
        event: SupervisionEvent,
        ctx: &mut Weak<NodeCtx>,
    ) -> Result<(), ActorProcessingErr> {
        // A clean stop cleaned up after itself (post_stop); only a failure is handled here. The
        // supervisor itself never stops for a child.
        if let SupervisionEvent::ActorFailed(cell, error) = event
            && let Some(ctx) = ctx.upgrade()
        {
            let leftovers = ctx.registry.forget_actor(cell.get_id());
            ctx.stats.actors_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(actor = %cell.get_id(), %error, leftovers, "an actor died");
        }
        Ok(())
    }
}

/// Starts the supervisor of `ctx`'s actors and links new actors to it.
pub(crate) async fn start(ctx: &Arc<NodeCtx>) -> Result<ActorRef<()>, ractor::SpawnErr> {
    let (sup, _handle) = Actor::spawn(None, Supervisor, Arc::downgrade(ctx)).await?;
    let _ = ctx.supervisor.set(sup.get_cell());
    Ok(sup)
}
