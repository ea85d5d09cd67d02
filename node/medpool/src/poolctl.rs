//! Pool commands over the internal service, until the admin API exists: `medpool pool status`,
//! `medpool pool drain|undrain`, `medpool config apply FILE`. A configuration is validated here (the
//! same validation as at start-up) before it is proposed; a write reaching a follower is carried to the
//! leader. Exit codes: 0 done, 3 unreachable, 4 refused (nothing changed), 5 outcome unknown.

use std::path::Path;
use std::time::Duration;

use medpool_b2bua::config::PoolConfig;
use medpool_cluster::pool::PoolInfo;
use medpool_cluster::{Command, NodeState};
use medpool_proto::cluster::{InfoRequest, RaftPayload};

/// How a pool command ended, as a process exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Ok = 0,
    /// Usage error (bad file, bad arguments).
    Usage = 2,
    /// The server could not be reached.
    Unreachable = 3,
    /// The pool refused the change: nothing changed.
    Refused = 4,
    /// The change may or may not have been applied (e.g. the leader died during it).
    Unknown = 5,
}

async fn info(server: &str) -> Result<PoolInfo, String> {
    let mut c = medpool_cluster::network::client(server).map_err(|e| e.to_string())?;
    let r = tokio::time::timeout(Duration::from_secs(5), c.info(InfoRequest {}))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|e| e.message().to_owned())?;
    serde_json::from_slice(&r.into_inner().json).map_err(|e| e.to_string())
}

async fn write(server: &str, cmd: &Command) -> Outcome {
    let Ok(mut c) = medpool_cluster::network::client(server) else {
        return Outcome::Unreachable;
    };
    let Ok(data) = medpool_cluster::network::encode(cmd) else {
        return Outcome::Usage;
    };
    let reply = match tokio::time::timeout(
        Duration::from_secs(10),
        c.client_write(RaftPayload { data }),
    )
    .await
    {
        Err(_) => {
            eprintln!(
                "medpool: no answer from {server} in 10 s: the change may or may not be applied"
            );
            return Outcome::Unknown;
        }
        Ok(Err(e)) if e.code() == tonic::Code::Unavailable => {
            eprintln!("medpool: cannot reach {server}: {}", e.message());
            return Outcome::Unreachable;
        }
        Ok(Err(e)) => {
            eprintln!(
                "medpool: {}: the change may or may not be applied",
                e.message()
            );
            return Outcome::Unknown;
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    match medpool_cluster::grpc::read_write_reply(reply) {
        Ok(r) => {
            println!("{r:?}");
            Outcome::Ok
        }
        Err(e @ medpool_cluster::WriteError::Refused(_)) => {
            eprintln!("medpool: {e}");
            Outcome::Refused
        }
        Err(e) => {
            eprintln!("medpool: {e}");
            Outcome::Unknown
        }
    }
}

/// `medpool pool status`.
pub async fn status(server: &str) -> Outcome {
    match info(server).await {
        Ok(i) => {
            println!(
                "node {} · leader {} · term {} · applied {} · config v{} · dialogs {} · unowned shards {}",
                i.node_id,
                i.leader.map_or("none".into(), |l| l.to_string()),
                i.term,
                i.applied.map_or("-".into(), |a| a.to_string()),
                i.config_version.map_or("-".into(), |v| v.to_string()),
                i.dialogs,
                i.unowned
            );
            println!(
                "{:<6} {:<24} {:<10} {:>6}",
                "NODE", "SIP", "STATE", "SHARDS"
            );
            for medpool_cluster::pool::NodeInfo {
                id,
                sip_addr: sip,
                state,
                shards,
            } in &i.nodes
            {
                println!("{id:<6} {sip:<24} {state:<10} {shards:>6}");
            }
            Outcome::Ok
        }
        Err(e) => {
            eprintln!("medpool: cannot reach {server}: {e}");
            Outcome::Unreachable
        }
    }
}

/// `medpool pool drain|undrain NODE`.
pub async fn set_state(server: &str, node: u64, drain: bool) -> Outcome {
    let state = if drain {
        NodeState::Draining
    } else {
        NodeState::Active
    };
    write(server, &Command::SetNodeState { id: node, state }).await
}

/// `medpool config apply FILE`: validate, then propose with optimistic concurrency.
pub async fn apply_config(server: &str, file: &Path, expected: Option<u64>) -> Outcome {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("medpool: {}: {e}", file.display());
            return Outcome::Usage;
        }
    };
    if let Err(e) = PoolConfig::from_toml_str(&text, &file.display().to_string()) {
        eprintln!("medpool: {e}");
        eprintln!("medpool: configuration refused; nothing changed");
        return Outcome::Refused;
    }
    let expected = match expected {
        Some(v) => Some(v),
        None => match info(server).await {
            Ok(i) => i.config_version,
            Err(e) => {
                eprintln!("medpool: cannot reach {server}: {e}");
                return Outcome::Unreachable;
            }
        },
    };
    write(
        server,
        &Command::SetConfig {
            expected_version: expected,
            body: text.into_bytes(),
        },
    )
    .await
}
