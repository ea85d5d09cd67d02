//! The gateways' metrics: each gateway's health, capacity and calls, and the trunks named by DNS
//! (look-ups, their failures, each resolved target's health).

use std::sync::atomic::Ordering::Relaxed;

use medpool_b2bua::node::NodeCtx;
use prometheus_client::encoding::DescriptorEncoder;

use super::family::{Labels, counter, gauge, one};

/// Writes the gateway and DNS metrics.
pub(super) fn encode(e: &mut DescriptorEncoder<'_>, ctx: &NodeCtx) -> Result<(), std::fmt::Error> {
    let gws = ctx.gateways.all();
    let gw = |f: &dyn Fn(&medpool_b2bua::gateway::GatewayHandle) -> i64| -> Vec<(Labels, i64)> {
        gws.iter()
            .map(|g| (vec![("gateway", g.name.clone())], f(g)))
            .collect()
    };
    gauge(
        e,
        "medpool_gateway_up",
        "1 when the gateway is up",
        &gw(&|g| i64::from(g.is_up())),
    )?;
    gauge(
        e,
        "medpool_gateway_enabled",
        "1 when an operator allows new calls",
        &gw(&|g| i64::from(g.is_enabled())),
    )?;
    gauge(
        e,
        "medpool_gateway_active_calls",
        "Calls through the gateway on this node",
        &gw(&|g| i64::from(g.active_calls())),
    )?;
    gauge(
        e,
        "medpool_gateway_options_rtt_microseconds",
        "Last OPTIONS round trip",
        &gw(&|g| g.last_rtt_us.load(Relaxed) as i64),
    )?;
    gauge(
        e,
        "medpool_gateway_consecutive_failures",
        "Probe/INVITE failures in a row",
        &gw(&|g| i64::from(g.failures.load(Relaxed))),
    )?;
    // Trunks named by DNS.
    {
        use medpool_b2bua::dns::Status;
        let d = &ctx.dns.stats;
        counter(
            e,
            "medpool_dns_lookups",
            "DNS lookups of trunk names (the NAPTR/SRV/A chain counting once)",
            &one(d.lookups.load(Relaxed)),
        )?;
        counter(
            e,
            "medpool_dns_lookup_failures",
            "DNS lookups of trunk names that failed",
            &one(d.failures.load(Relaxed)),
        )?;
        counter(
            e,
            "medpool_dns_stale_kept",
            "Failed DNS lookups after which the trunk's expired answer was kept (stale)",
            &one(d.stale_kept.load(Relaxed)),
        )?;
        let views = ctx.dns.views();
        let per = |f: &dyn Fn(&medpool_b2bua::dns::TrunkView) -> i64| -> Vec<(Labels, i64)> {
            views
                .iter()
                .map(|v| (vec![("trunk", v.trunk.clone())], f(v)))
                .collect()
        };
        gauge(
            e,
            "medpool_dns_stale",
            "1 while a trunk named by DNS uses an expired answer because its DNS server fails",
            &per(&|v| i64::from(matches!(v.status, Status::Stale { .. }))),
        )?;
        gauge(
            e,
            "medpool_dns_unresolved",
            "1 while a trunk named by DNS has no usable answer (calls skip it)",
            &per(&|v| i64::from(matches!(v.status, Status::Unresolved { .. }))),
        )?;
        let targets: Vec<(Labels, i64)> = views
            .iter()
            .flat_map(|v| {
                v.targets.iter().map(|t| {
                    (
                        vec![
                            ("trunk", v.trunk.clone()),
                            ("target", t.target.addr.to_string()),
                        ],
                        i64::from(t.health.is_up()),
                    )
                })
            })
            .collect();
        gauge(
            e,
            "medpool_dns_target_up",
            "1 when a resolved target of a trunk named by DNS is up",
            &targets,
        )?;
    }
    Ok(())
}
