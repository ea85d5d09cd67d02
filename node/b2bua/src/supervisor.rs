//! The supervisor of a node's actors: every DialogActor and GatewayActor is spawned linked to it.
//! An actor that dies without stopping cleanly (a panic: ractor then skips its `post_stop`) is
//! swept out of the routing registry here, whatever it had registered; a call gives back its
//! gateway slot, its counts and its place in the shutdown wait when its state is dropped (see
//! `dialog::Call::release`), which ractor does whichever way the actor ended. A gateway's prober
//! that died is started again, so that the gateway's health does not freeze.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use crate::ctx::NodeCtx;
use crate::gateway;

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
            ctx.progressed();
            ctx.stats.actors_failed.fetch_add(1, Ordering::Relaxed);
            tracing::error!(actor = %cell.get_id(), %error, leftovers, "an actor died");
            if let Some(handle) = ctx
                .gateways
                .all()
                .into_iter()
                .find(|h| h.prober() == Some(cell.get_id()))
            {
                gateway::restart(&ctx, handle).await;
            } else if let Some((trunk, _, handle)) = ctx
                .dns
                .probe_targets()
                .into_iter()
                .find(|(_, _, h)| h.prober() == Some(cell.get_id()))
            {
                // The prober of a DNS-resolved target: the same handle, a new actor.
                let args = gateway::GatewayArgs {
                    ctx: ctx.clone(),
                    trunk,
                    handle,
                };
                if let Err(e) = gateway::spawn(args).await {
                    tracing::error!(error = %e, "cannot restart a DNS target's prober");
                }
            }
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use std::time::Duration;

    use super::*;
    use crate::gateway::GatewayMsg;
    use crate::testkit::TestNode;

    #[tokio::test(start_paused = true)]
    async fn the_prober_of_a_dns_target_that_panics_is_started_again() {
        let node = TestNode::new().await;
        let mut trunk = node.ctx.config().trunk("gw1").unwrap().clone();
        trunk.lookup = crate::config::Lookup::Naptr;
        let target = crate::dns::Target {
            host: "gw.example.net".into(),
            addr: "127.0.0.99:5060".parse().unwrap(),
            transport: crate::config::Transport::Udp,
            priority: 10,
            weight: 10,
        };
        node.ctx.dns.set_answer(&trunk, vec![target.clone()]);
        let (probe, _, handle) = node.ctx.dns.probe_targets().pop().unwrap();
        gateway::spawn(gateway::GatewayArgs {
            ctx: node.ctx.clone(),
            trunk: probe,
            handle: handle.clone(),
        })
        .await
        .unwrap();
        let first = handle.prober().unwrap();
        let actor: ractor::ActorRef<GatewayMsg> =
            ractor::ActorRef::from(handle.actor.lock().unwrap().as_ref().unwrap().get_cell());
        actor.cast(GatewayMsg::PanicForTest).unwrap();
        for _ in 0..100 {
            if handle.prober().is_some_and(|p| p != first) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let second = handle.prober().unwrap();
        assert_ne!(second, first, "a new prober for the same target");
        assert_eq!(handle.name, "gw1@127.0.0.99:5060");
    }

    #[tokio::test(start_paused = true)]
    async fn a_gateway_prober_that_panics_is_started_again() {
        let node = TestNode::new().await;
        let trunks = node.ctx.config().trunks.clone();
        gateway::start_all(&node.ctx, &trunks).await.unwrap();
        let gw1 = node.ctx.gateways.get("gw1").unwrap();
        let first = gw1.prober().unwrap();
        let gw2 = node.ctx.gateways.get("gw2").unwrap().prober().unwrap();
        let actor: ractor::ActorRef<GatewayMsg> =
            ractor::ActorRef::from(gw1.actor.lock().unwrap().as_ref().unwrap().get_cell());
        actor.cast(GatewayMsg::PanicForTest).unwrap();
        for _ in 0..100 {
            if gw1.prober().is_some_and(|p| p != first) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let second = gw1.prober().unwrap();
        assert_ne!(first, second, "a new prober took over");
        assert_eq!(node.ctx.stats.actors_failed.load(Ordering::Relaxed), 1);
        assert_eq!(
            node.ctx.gateways.get("gw2").unwrap().prober(),
            Some(gw2),
            "the other gateway's prober is untouched"
        );
        gateway::stop_all(&node.ctx);
    }
}
