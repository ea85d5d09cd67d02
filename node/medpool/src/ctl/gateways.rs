//! `medpool ctl gateways …`: health on every node, each node's share of the pool-wide limits;
//! enable, disable, drain (in a pool: written to the pool's Raft log, kept across restarts).

use clap::{Args, Subcommand};
use medpool_proto::admin as pb;
use serde_json::{Value, json};
use tonic::Status;

use super::conn::{Ctl, CtlError};
use super::output::{Table, print_json, warn_unavailable, word};

/// `medpool ctl gateways ...`.
#[derive(Debug, Subcommand)]
pub enum GatewaysCommand {
    /// Health of every gateway on every node.
    #[command(alias = "list")]
    Ls {
        /// Only this gateway.
        name: Option<String>,
    },
    /// Allow new calls to a gateway again (pool-wide: replicated, kept across restarts).
    Enable(GatewayTarget),
    /// No new calls to a gateway (calls in progress go on; pool-wide, kept across restarts).
    Disable(GatewayTarget),
    /// No new calls; calls in progress finish (shown as draining; pool-wide, kept across restarts).
    Drain(GatewayTarget),
}

/// Which gateway, where.
#[derive(Debug, Args)]
pub struct GatewayTarget {
    /// The gateway trunk.
    pub name: String,
    /// Only on this node (default: every node; a later pool-wide choice replaces it).
    #[arg(long)]
    pub node: Option<u64>,
}

impl Ctl {
    /// Runs one `gateways` subcommand.
    pub(super) async fn gateways(&self, command: GatewaysCommand) -> Result<(), CtlError> {
        match command {
            GatewaysCommand::Ls { name } => self.gateways_ls(name.unwrap_or_default()).await,
            GatewaysCommand::Enable(t) => {
                self.gateway_state(t, pb::GatewayAdminState::Enabled).await
            }
            GatewaysCommand::Disable(t) => {
                self.gateway_state(t, pb::GatewayAdminState::Disabled).await
            }
            GatewaysCommand::Drain(t) => {
                self.gateway_state(t, pb::GatewayAdminState::Draining).await
            }
        }
    }

    async fn gateways_ls(&self, name: String) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let r = self
            .call(
                false,
                c.list_gateways(pb::ListGatewaysRequest {
                    name,
                    local_only: false,
                }),
            )
            .await?;
        if self.json() {
            print_json(&json!({
                "gateways": r.gateways.iter().map(gateway_json).collect::<Vec<_>>(),
                "unavailable_nodes": r.unavailable_nodes,
            }));
            return Ok(());
        }
        let mut t = Table::new(&[
            "GATEWAY", "NODE", "HEALTH", "ADMIN", "CALLS", "SHARE", "MAX", "CPS", "OPTIONS", "RTT",
            "FAILS", "ADDRESS",
        ]);
        for g in &r.gateways {
            t.row(vec![
                g.name.clone(),
                g.node_id.to_string(),
                if g.up { "up" } else { "down" }.to_owned(),
                word(g.admin().as_str_name(), "GATEWAY_ADMIN_STATE_"),
                g.active_calls.to_string(),
                share(g.share_calls, g.share_cps),
                g.max_calls
                    .map_or_else(|| "-".to_owned(), |m| m.to_string()),
                g.max_cps.map_or_else(|| "-".to_owned(), |m| m.to_string()),
                match g.last_options_status {
                    0 => "-".to_owned(),
                    s => s.to_string(),
                },
                match g.last_rtt_us {
                    0 => "-".to_owned(),
                    us @ 1..1000 => format!("{us}µs"),
                    us => format!("{:.1}ms", us as f64 / 1000.0),
                },
                g.consecutive_failures.to_string(),
                g.address.clone(),
            ]);
        }
        t.print();
        warn_unavailable(&r.unavailable_nodes);
        Ok(())
    }

    async fn gateway_state(
        &self,
        t: GatewayTarget,
        state: pb::GatewayAdminState,
    ) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let r = self
            .call(
                true,
                c.set_gateway_state(pb::SetGatewayStateRequest {
                    name: t.name.clone(),
                    state: state.into(),
                    node: t.node,
                    local_only: false,
                }),
            )
            .await?;
        let word = word(state.as_str_name(), "GATEWAY_ADMIN_STATE_");
        if self.json() {
            print_json(&json!({
                "gateway": t.name,
                "state": word,
                "nodes": r.nodes,
                "unavailable_nodes": r.unavailable_nodes,
            }));
        } else {
            let nodes: Vec<String> = r.nodes.iter().map(u64::to_string).collect();
            out!("gateway {} {word} on nodes {}", t.name, nodes.join(", "));
            warn_unavailable(&r.unavailable_nodes);
        }
        if r.unavailable_nodes.is_empty() {
            Ok(())
        } else {
            Err(CtlError::Status(
                Status::unknown("some nodes did not answer: the state is set only where listed"),
                true,
            ))
        }
    }
}

/// This node's share of the pool-wide limits: `calls` or `calls/cps` ("-": unlimited).
fn share(calls: Option<u32>, cps: Option<u32>) -> String {
    let one = |v: Option<u32>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    match cps {
        None => one(calls),
        Some(_) => format!("{}/{}", one(calls), one(cps)),
    }
}

fn gateway_json(g: &pb::GatewayHealth) -> Value {
    json!({
        "name": g.name,
        "node_id": g.node_id,
        "up": g.up,
        "admin": word(g.admin().as_str_name(), "GATEWAY_ADMIN_STATE_"),
        "active_calls": g.active_calls,
        "max_calls": g.max_calls,
        "max_cps": g.max_cps,
        "share_calls": g.share_calls,
        "share_cps": g.share_cps,
        "admin_replicated": g.admin_replicated,
        "last_options_status": g.last_options_status,
        "last_rtt_us": g.last_rtt_us,
        "consecutive_failures": g.consecutive_failures,
        "address": g.address,
    })
}
