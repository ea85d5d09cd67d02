//! `medpool serve`: load the configuration, start the node, wait for SIGTERM/SIGINT, shut down
//! through the node's single shutdown path.

use std::sync::Arc;
use std::time::Duration;

use medpool_b2bua::cluster::{NoRelay, SingleNode};
use medpool_b2bua::config::{ConfigError, PoolConfig};
use medpool_b2bua::node::{self, NodeCtx, NodeError, NodeOptions};
use medpool_cluster::pool::{Pool, PoolOptions};
use medpool_cluster::{Command, NodeAddrs};

use crate::pool::{NodeSink, PoolAdapter};
use medpool_sip::transaction::TimerConfig;
use medpool_sip::transport::TransportConfig;

use crate::cli::ServeArgs;

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad configuration (the message names file, line and field).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The data folder cannot be used.
    #[error("data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The node could not start.
    #[error("{0}")]
    Node(#[from] NodeError),
    /// The metrics port could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The pool could not start.
    #[error("{0}")]
    Pool(medpool_cluster::pool::PoolError),
    /// The pool's Raft stopped on a fatal error (its store could not be written).
    #[error(
        "the pool's Raft store in {data_dir} failed ({why}): stopped so that the other nodes take this node's shards over"
    )]
    RaftFailed {
        /// The data folder.
        data_dir: String,
        /// The error.
        why: String,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The admin API could not start.
    #[error("{0}")]
    Admin(#[from] crate::admin::AdminStartError),
}

fn load_config(args: &ServeArgs) -> Result<PoolConfig, ConfigError> {
    match &args.config {
        Some(path) => PoolConfig::load(path),
        None if std::path::Path::new("medpool.toml").exists() => PoolConfig::load("medpool.toml"),
        None => Ok(PoolConfig::default_embedded()),
    }
}

/// Runs a node until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> Result<(), ServeError> {
    let config = load_config(&args)?;
    std::fs::create_dir_all(&args.data_dir).map_err(|source| ServeError::DataDir {
        path: args.data_dir.display().to_string(),
        source,
    })?;
    let opts = NodeOptions {
        sip: TransportConfig {
            listen: args.sip_listen,
            queue: args.sip_queue,
            retry_after_secs: config.node.retry_after,
            ..TransportConfig::default()
        },
        // The flag wins; else the pool configuration's `[node] advertised_address` (e.g. a Service address).
        advertise: args.advertise.clone().or_else(|| {
            config
                .node
                .advertised_address
                .as_ref()
                .map(ToString::to_string)
        }),
        timers: TimerConfig {
            t1: Duration::from_millis(args.t1_ms.max(1)),
            ..TimerConfig::default()
        },
        max_transactions: args.max_transactions,
        trusted_forwarders: args.trusted_forwarders.clone(),
        redact_numbers: args.trace_redact_numbers,
    };
    let trunks = config.trunks.len();
    let routes = config.routes.len();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServeError::Signals)?;
    let config_text = args
        .config
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    // Bound before the pool starts, so that the pool records the admin API's real address.
    let admin_listener = crate::admin::bind(&args.admin, args.sip_listen).await?;
    let (running, pool) = match args.pool.raft_listen {
        None => {
            let single = Arc::new(SingleNode::new(args.shards));
            let running =
                node::start(opts, config, single.clone(), single, Arc::new(NoRelay)).await?;
            (running, None)
        }
        Some(raft_listen) => {
            // Connections to peers leave from the internal address (what peers and firewalls expect).
            medpool_cluster::network::set_source_address(raft_listen.ip());
            let mut pool_opts = pool_options(&args, raft_listen)?;
            let raft_host = pool_opts
                .addrs
                .raft_addr
                .rsplit_once(':')
                .map(|(h, _)| h.to_owned());
            pool_opts.addrs.admin_addr = admin_listener.advertised(raft_host.as_deref());
            let pool = Pool::start(pool_opts).await.map_err(ServeError::Pool)?;
            let adapter = Arc::new(PoolAdapter { pool: pool.clone() });
            let running =
                node::start(opts, config, adapter.clone(), adapter.clone(), adapter).await?;
            let sink = Arc::new(NodeSink::default());
            let _ = sink.node.set(running.ctx.clone());
            pool.attach(sink);
            tokio::spawn(config_sync(
                pool.clone(),
                running.ctx.clone(),
                config_text.clone(),
            ));
            (running, Some(pool))
        }
    };
    if let Some(addr) = args.metrics_listen {
        let registry = Arc::new(crate::metrics::registry(running.ctx.clone(), pool.clone()));
        let bound = crate::metrics::serve(addr, registry)
            .await
            .map_err(|source| ServeError::Metrics { addr, source })?;
        tracing::info!(%bound, "metrics on /metrics");
    }
    let admin_mode = match &pool {
        Some(p) => crate::admin::ctx::Mode::Pool {
            pool: p.clone(),
            lease: Duration::from_millis(args.pool.lease_ms.max(100)),
        },
        None => crate::admin::ctx::Mode::Single(crate::admin::ctx::Standalone::new(
            config_text.or_else(|| {
                args.config
                    .is_none()
                    .then(|| std::fs::read_to_string("medpool.toml").ok())
                    .flatten()
            }),
        )),
    };
    let admin = crate::admin::start(admin_listener, running.ctx.clone(), admin_mode)?;
    eprintln!(
        "medpool ready sip={} trunks={trunks} routes={routes} admin={}{}",
        running.sip_addr,
        admin.addr,
        match &pool {
            Some(p) => format!(
                " node={} raft={}",
                p.node_id(),
                args.pool
                    .raft_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            ),
            None => String::new(),
        }
    );
    let raft_failed = async {
        match &pool {
            Some(p) => p.fatal().await,
            None => std::future::pending().await,
        }
    };
    let mut failure = None;
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        why = raft_failed => {
            tracing::error!(
                error = %why,
                data_dir = %args.data_dir.display(),
                "the pool's Raft store failed: this node stops so that the others take its shards \
                 over; fix the cause (e.g. free space in the data folder) and start it again"
            );
            failure = Some(why);
        }
    }
    running
        .shutdown(
            Duration::from_secs(args.shutdown_grace),
            args.bye_on_shutdown,
        )
        .await;
    admin.shutdown().await;
    if let Some(pool) = pool {
        // Records of calls answered in the last instant (still in the group commit) go out first;
        // when this node's own Raft failed they still go through the leader.
        let unwritten = pool.flush_dialogs(Duration::from_secs(3)).await;
        if unwritten > 0 {
            tracing::warn!(
                records = unwritten,
                "dialog records not written before stopping"
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), pool.shutdown()).await;
    }
    match failure {
        Some(why) => Err(ServeError::RaftFailed {
            data_dir: args.data_dir.display().to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// The node id from a StatefulSet hostname `<name>-<ordinal>`.
fn ordinal_of(hostname: &str) -> Option<(String, u64)> {
    let (name, ord) = hostname.rsplit_once('-')?;
    Some((name.to_owned(), ord.parse().ok()?))
}

fn pool_options(
    args: &ServeArgs,
    raft_listen: std::net::SocketAddr,
) -> Result<PoolOptions, ServeError> {
    let p = &args.pool;
    if let Some(path) = &p.hosts_file {
        let text = std::fs::read_to_string(path).map_err(|source| ServeError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
        medpool_cluster::network::set_host_overrides(medpool_cluster::network::parse_hosts(&text));
    }
    let hostname = std::env::var("HOSTNAME").unwrap_or_default();
    let mut node_id = p.node_id;
    let mut join = p.join.clone();
    if let Some(domain) = &p.peer_domain
        && let Some((name, ordinal)) = ordinal_of(&hostname)
    {
        node_id.get_or_insert(ordinal);
        if join.is_empty() && ordinal > 0 {
            join.push(format!("{name}-0.{domain}:{}", raft_listen.port()));
        }
    }
    let node_id = node_id.unwrap_or(0);
    let raft_addr = p
        .raft_advertise
        .clone()
        .unwrap_or_else(|| raft_listen.to_string());
    Ok(PoolOptions {
        node_id,
        addrs: NodeAddrs {
            raft_addr,
            sip_addr: args
                .advertise
                .clone()
                .unwrap_or_else(|| args.sip_listen.to_string()),
            admin_addr: String::new(),
        },
        raft_listen,
        data_dir: args.data_dir.join("raft"),
        join,
        shard_count: args.shards,
        max_voters: usize::from(p.voters),
        lease: Duration::from_millis(p.lease_ms.max(100)),
        margin: Duration::from_millis(p.lease_margin_ms),
        snapshot_logs: 5000,
        audit: p.audit_file.clone(),
    })
}

/// Keeps the node's configuration equal to the pool's: the file seeds an empty pool; afterwards every
/// node applies the replicated version (versions only grow).
async fn config_sync(pool: Arc<Pool>, ctx: Arc<NodeCtx>, seed: Option<String>) {
    let mut applied: Option<u64> = None;
    let mut seeded = false;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let current = pool
            .state()
            .read(|s| s.config().map(|c| (c.version, c.body.clone())));
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
            Some((version, body)) if applied != Some(version) => {
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
            _ => {}
        }
    }
}
