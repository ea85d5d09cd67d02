//! Keeps the node in line with its DNS directory ([`crate::dns`]): whenever a trunk's resolved
//! targets change, the SIP front door learns the new addresses (source gate, TCP connection caps)
//! without a restart, every new target of a gateway trunk gets a prober of its own (a GatewayActor addressed to it,
//! named `trunk@ip:port`), and the prober of a target that is gone is stopped.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::Side;
use crate::ctx::NodeCtx;
use crate::gateway::{self, GatewayArgs, GatewayHandle};

/// Runs until `stop` turns true: one sync at once, then one per change of the directory.
pub(crate) async fn run(ctx: Arc<NodeCtx>, mut stop: watch::Receiver<bool>) {
    let mut changed = ctx.dns.subscribe();
    // Probers started here, by target name; bounded by the directory's targets.
    let mut probers: BTreeMap<String, Arc<GatewayHandle>> = BTreeMap::new();
    loop {
        changed.borrow_and_update();
        sync(&ctx, &mut probers).await;
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            r = stop.wait_for(|s| *s) => {
                let _ = r;
                return;
            }
        }
    }
}

async fn sync(ctx: &Arc<NodeCtx>, probers: &mut BTreeMap<String, Arc<GatewayHandle>>) {
    ctx.refresh_sources();
    {
        let config = ctx.config();
        let mut ips = crate::sources::listed_ips(&config.trunks, &ctx.trusted_forwarders);
        ips.extend(ctx.dns.ips());
        ctx.transports.set_listed_ips(ips);
    }
    let targets = ctx.dns.probe_targets();
    let mut current = BTreeMap::new();
    for (trunk, _target, handle) in targets {
        if trunk.side != Side::Gateway {
            continue; // internal trunks are not probed (as with an IP literal)
        }
        let name = trunk.name.clone();
        let running = probers.get(&name).is_some_and(|h| Arc::ptr_eq(h, &handle));
        if !running {
            let spawned = gateway::spawn(GatewayArgs {
                ctx: ctx.clone(),
                trunk,
                handle: handle.clone(),
            })
            .await;
            if let Err(e) = spawned {
                tracing::error!(error = %e, target = %name, "cannot start a DNS target's prober");
            }
        }
        current.insert(name, handle);
    }
    for (name, handle) in std::mem::replace(probers, current.clone()) {
        if current.get(&name).is_none_or(|h| !Arc::ptr_eq(h, &handle)) {
            stop_prober(&handle);
        }
    }
}

fn stop_prober(handle: &GatewayHandle) {
    if let Ok(a) = handle.actor.lock()
        && let Some(a) = a.as_ref()
    {
        a.stop(Some("DNS target gone".into()));
    }
}

/// Stops the probers of every current target (node shutdown).
pub(crate) fn stop_probers(ctx: &NodeCtx) {
    for (_, _, handle) in ctx.dns.probe_targets() {
        stop_prober(&handle);
    }
}
