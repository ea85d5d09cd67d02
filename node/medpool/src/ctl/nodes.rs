//! `medpool ctl status`, `node …` (drain, undrain, remove), `leader transfer` and `log set`: the
//! pool's membership and the node's own settings.

use std::time::Duration;

use clap::Subcommand;
use medpool_proto::admin as pb;
use serde_json::{Value, json};
use tonic::Status;

use super::conn::{Ctl, CtlError};
use super::output::{Table, dash, print_json, word};

/// `medpool ctl node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Move every shard off a node (its calls go on elsewhere); it gets no new shards.
    Drain {
        /// Node id.
        node: u64,
        /// Wait until the node owns no shard.
        #[arg(long)]
        wait: bool,
    },
    /// Let a drained node own shards again.
    Undrain {
        /// Node id.
        node: u64,
    },
    /// Forget a node that owns no shard and remove it from the Raft membership.
    Remove {
        /// Node id.
        node: u64,
    },
}

/// `medpool ctl leader ...`.
#[derive(Debug, Subcommand)]
pub enum LeaderCommand {
    /// Hand leadership to another voter.
    Transfer {
        /// The voter (default: any other voter).
        #[arg(long)]
        to: Option<u64>,
    },
}

/// `medpool ctl log ...`.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Change the log filter of the node at --server, at run time (`--log` syntax).
    Set {
        /// e.g. `info,medpool_b2bua=debug`.
        filter: String,
    },
}

impl Ctl {
    /// Runs one `node` subcommand.
    pub(super) async fn node(&self, command: NodeCommand) -> Result<(), CtlError> {
        match command {
            NodeCommand::Drain { node, wait } => self.node_state(node, true, wait).await,
            NodeCommand::Undrain { node } => self.node_state(node, false, false).await,
            NodeCommand::Remove { node } => self.node_remove(node).await,
        }
    }

    pub(super) async fn status(&self, local: bool) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let r = self
            .call(
                false,
                c.pool_status(pb::PoolStatusRequest { local_only: local }),
            )
            .await?;
        if self.json() {
            print_json(&status_json(&r));
            return Ok(());
        }
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        out!(
            "pool ({}): {} nodes · leader {} · term {} · committed {} · applied {} · config v{} · {} shards ({} unowned) · {} dialogs recorded · answered by node {}",
            r.mode,
            r.nodes.len(),
            r.leader
                .map_or_else(|| "none".to_owned(), |l| l.to_string()),
            r.term,
            opt(r.committed_index),
            opt(r.applied_index),
            opt(r.config_version),
            r.shard_count,
            r.unowned_shards,
            r.dialogs,
            r.node_id
        );
        let mut t = Table::new(&[
            "NODE",
            "STATE",
            "ROLE",
            "SHARDS",
            "CALLS",
            "LEASE",
            "APPLIED",
            "MEDIA PORTS",
            "SIP",
            "ADMIN",
            "VERSION",
        ]);
        for n in &r.nodes {
            let role = if n.leader {
                "leader"
            } else if n.voter {
                "voter"
            } else {
                "learner"
            };
            let media_ports = match (n.reachable, n.media_ports_in_use, n.media_ports_free) {
                (false, ..) => "?".to_owned(),
                (true, Some(used), Some(free)) => format!("{used}/{}", used + free),
                _ => "-".to_owned(),
            };
            let (calls, lease, applied) = if n.reachable {
                (
                    n.active_calls.to_string(),
                    match n.lease_remaining_ms {
                        Some(ms) if n.holds_lease => format!("{:.1}s", ms as f64 / 1000.0),
                        _ if r.mode == "single" => "-".to_owned(),
                        _ => "none".to_owned(),
                    },
                    opt(n.applied_index),
                )
            } else {
                ("?".to_owned(), "?".to_owned(), "?".to_owned())
            };
            t.row(vec![
                n.id.to_string(),
                word(n.state().as_str_name(), "NODE_STATE_"),
                role.to_owned(),
                n.shards.to_string(),
                calls,
                lease,
                applied,
                media_ports,
                n.sip_addr.clone(),
                dash(&n.admin_addr),
                if n.reachable {
                    n.version.clone()
                } else {
                    "unreachable".to_owned()
                },
            ]);
        }
        t.print();
        for n in r.nodes.iter().filter(|n| n.internal_port == "insecure") {
            out!(
                "warning: node {}: insecure internal port {} (plain TCP, --insecure-internal): \
                 anyone who reaches it can control the pool",
                n.id,
                n.raft_addr
            );
        }
        Ok(())
    }

    async fn node_state(&self, node: u64, drain: bool, wait: bool) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let req = pb::NodeRequest {
            node,
            forwarded: false,
        };
        let r = if drain {
            self.call(true, c.drain_node(req)).await?
        } else {
            self.call(true, c.undrain_node(req)).await?
        };
        let mut shards = r.shards;
        if wait && shards > 0 {
            let deadline = tokio::time::Instant::now() + self.timeout.max(Duration::from_secs(60));
            while shards > 0 {
                if tokio::time::Instant::now() >= deadline {
                    return Err(CtlError::Status(
                        Status::unknown(format!(
                            "node {node} is draining but still owns {shards} shards"
                        )),
                        true,
                    ));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                let s = self
                    .call(
                        false,
                        c.pool_status(pb::PoolStatusRequest { local_only: true }),
                    )
                    .await?;
                shards = s
                    .nodes
                    .iter()
                    .find(|n| n.id == node)
                    .map_or(0, |n| n.shards);
            }
        }
        let state = word(r.state().as_str_name(), "NODE_STATE_");
        if self.json() {
            print_json(&json!({"node": node, "state": state, "shards": shards}));
        } else if drain && wait {
            out!("node {node} drained: it owns no shard");
        } else {
            out!("node {node} {state} ({shards} shards)");
        }
        Ok(())
    }

    async fn node_remove(&self, node: u64) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        self.call(
            true,
            c.remove_node(pb::NodeRequest {
                node,
                forwarded: false,
            }),
        )
        .await?;
        if self.json() {
            print_json(&json!({"node": node, "removed": true}));
        } else {
            out!("node {node} removed from the pool");
        }
        Ok(())
    }

    pub(super) async fn log_set(&self, filter: String) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let r = self
            .call(true, c.set_log_level(pb::SetLogLevelRequest { filter }))
            .await?;
        if self.json() {
            print_json(&json!({"filter": r.filter}));
        } else {
            out!("log filter: {}", r.filter);
        }
        Ok(())
    }

    pub(super) async fn leader_transfer(&self, to: Option<u64>) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let r = self
            .call(
                true,
                c.transfer_leader(pb::TransferLeaderRequest {
                    to,
                    forwarded: false,
                }),
            )
            .await?;
        if self.json() {
            print_json(&json!({"previous": r.previous, "leader": r.leader, "term": r.term}));
        } else {
            let show = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
            out!(
                "leader: node {} (was node {}), term {}",
                show(r.leader),
                show(r.previous),
                r.term
            );
        }
        Ok(())
    }
}

fn status_json(r: &pb::PoolStatusReply) -> Value {
    json!({
        "node_id": r.node_id,
        "mode": r.mode,
        "leader": r.leader,
        "term": r.term,
        "committed_index": r.committed_index,
        "applied_index": r.applied_index,
        "shard_count": r.shard_count,
        "unowned_shards": r.unowned_shards,
        "config_version": r.config_version,
        "dialogs": r.dialogs,
        "nodes": r.nodes.iter().map(|n| json!({
            "id": n.id,
            "state": word(n.state().as_str_name(), "NODE_STATE_"),
            "voter": n.voter,
            "leader": n.leader,
            "shards": n.shards,
            "reachable": n.reachable,
            "holds_lease": n.holds_lease,
            "lease_remaining_ms": n.lease_remaining_ms,
            "lease_age_ms": n.lease_age_ms,
            "active_calls": n.active_calls,
            "applied_index": n.applied_index,
            "version": n.version,
            "internal_port": n.internal_port,
            "media_ports_in_use": n.media_ports_in_use,
            "media_ports_free": n.media_ports_free,
            "media_sessions": n.media_sessions,
            "sip_addr": n.sip_addr,
            "raft_addr": n.raft_addr,
            "admin_addr": n.admin_addr,
        })).collect::<Vec<_>>(),
    })
}
