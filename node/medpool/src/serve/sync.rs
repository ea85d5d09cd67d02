//! Keeping a pool node in step with the pool's replicated state: its configuration (applied as
//! each version is applied here, the file seeding an empty pool) and the key of the Call-ID MAC
//! (the pool's secret once there is one). Both wake when a control entry is applied (not on
//! dialog records: under load those change Raft's metrics hundreds of times a second) and when
//! Raft's role or leader changes, instead of polling.

use std::sync::Arc;
use std::time::Duration;

use medpool_b2bua::config::PoolConfig;
use medpool_b2bua::node::NodeCtx;
use medpool_cluster::Command;
use medpool_cluster::pool::Pool;
use openraft::async_runtime::watch::WatchReceiver;

/// Keeps the node's configuration equal to the pool's: the file seeds an empty pool; afterwards every
/// node applies the replicated version (versions only grow). Wakes on every applied control entry
/// and every change of Raft's role or leader, so a new version is applied as soon as this node has
/// applied it, and a failed seed is tried again when the pool changes (e.g. elects a leader) or a
/// second later.
pub(super) async fn config_sync(pool: Arc<Pool>, ctx: Arc<NodeCtx>, seed: Option<String>) {
    let mut control = pool.state().control_changes();
    let mut server = pool.raft().server_metrics();
    let mut applied: Option<u64> = None;
    let mut seeded = false;
    loop {
        // The body is copied only when its version is new (entries are applied by the thousand
        // under load, each waking this loop).
        let current = pool.state().read(|s| {
            s.config().map(|c| {
                (
                    c.version,
                    (applied != Some(c.version)).then(|| c.body.clone()),
                )
            })
        });
        let unconfigured = current.is_none();
        match current {
            None => {
                if !seeded
                    && let Some(text) = &seed
                    && pool.state().read(|s| s.is_bootstrapped())
                {
                    let cmd = Command::SetConfig {
                        expected_version: None,
                        body: text.as_bytes().to_vec(),
                    };
                    seeded = pool.write(cmd).await.is_ok();
                }
            }
            Some((_, None)) => {}
            Some((version, Some(body))) => {
                let text = String::from_utf8_lossy(&body);
                match PoolConfig::from_toml_str(&text, &format!("pool configuration v{version}")) {
                    Ok(c) => {
                        ctx.apply_config(c).await;
                        applied = Some(version);
                        tracing::info!(version, "pool configuration applied");
                    }
                    Err(e) => {
                        tracing::error!(version, error = %e, "replicated configuration does not validate here");
                        applied = Some(version);
                    }
                }
            }
        }
        let seed_pending = !seeded && seed.is_some() && unconfigured;
        tokio::select! {
            r = control.changed() => if r.is_err() { return },
            // The pool's Raft has stopped: nothing more will change.
            r = server.changed() => if r.is_err() { return },
            () = tokio::time::sleep(Duration::from_secs(1)), if seed_pending => {}
        }
    }
}

/// Keys the MAC of the Call-IDs this node mints with the pool's secret once the pool has one
/// (made at bootstrap, replicated, kept across restarts), so that any node recognises any node's
/// Call-IDs in a late 2xx, also after a failover or a restart. Until then, and in a pool
/// bootstrapped before secrets existed, the key is this process's own.
pub(super) async fn mac_key_sync(pool: Arc<Pool>) {
    let mut changes = pool.state().control_changes();
    loop {
        if let Some(secret) = pool.pool_secret() {
            let mut key = [0u8; 16];
            key.copy_from_slice(&secret[..16]);
            medpool_sip::ids::set_mac_key(key);
            tracing::debug!("Call-ID MAC keyed with the pool's secret");
            return;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
