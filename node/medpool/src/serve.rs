//! `medpool serve`: its flags, and running a node. [`run`] loads the configuration, starts the node
//! (B2BUA, pool when `--raft-listen` is given, admin API, metrics), waits for the caller's shutdown
//! future (SIGTERM/SIGINT in the binary, a test's trigger in process) or a fatal Raft failure, and
//! shuts down through the node's single shutdown path. Nothing here installs signal handlers.
//!
//! The pool configuration is kept equal to the pool's replicated one by [`config_sync`], which wakes
//! on every change of the pool's Raft metrics (an applied entry, a new leader) instead of polling.
//!
//! Inside: `serve.rs` starts and stops the node; `serve/args.rs` holds the flags and what they turn
//! into, `serve/error.rs` the errors, `serve/pool_setup.rs` the pool's options, `serve/sync.rs` the
//! tasks that keep a pool node in step with the pool (configuration, Call-ID MAC key).

mod args;
mod error;
mod pool_setup;
mod sync;

use std::sync::Arc;
use std::time::Duration;

use medpool_b2bua::cluster::{NoRelay, SingleNode};
use medpool_b2bua::config::{ConfigError, PoolConfig};
use medpool_b2bua::node::{self, NodeOptions};
use medpool_cluster::pool::Pool;

use medpool_sip::transaction::TimerConfig;
use medpool_sip::transport::TransportConfig;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

pub use args::{MediaArgs, PoolArgs, ServeArgs, SipTcpArgs, SipTlsArgs};
pub use error::ServeError;
use pool_setup::pool_options;
use sync::{config_sync, mac_key_sync};

use crate::admin::{AdminListener, AdminServer};
use crate::pool::{NodeSink, PoolAdapter};

fn load_config(args: &ServeArgs) -> Result<PoolConfig, ConfigError> {
    match &args.config {
        Some(path) => PoolConfig::load(path),
        None if std::path::Path::new("medpool.toml").exists() => PoolConfig::load("medpool.toml"),
        None => Ok(PoolConfig::default_embedded()),
    }
}

/// What a node listens on that must be bound before it starts: the admin API's port (the pool
/// records its real address, so it is bound before the pool starts). SIP and the internal service
/// are bound by the node and the pool themselves.
pub struct Listeners {
    /// The admin API.
    pub admin: AdminListener,
}

impl Listeners {
    /// Binds what `args` names (`--admin-listen`, default next to the SIP address).
    pub async fn bind(args: &ServeArgs) -> Result<Listeners, ServeError> {
        Ok(Listeners {
            admin: crate::admin::bind(&args.admin, args.sip_listen).await?,
        })
    }
}

/// A started node: what [`run`] waits on. Addresses are the bound ones (port 0 resolved).
pub struct Serving {
    running: node::RunningNode,
    pool: Option<Arc<Pool>>,
    admin: AdminServer,
    data_dir: PathBuf,
    shutdown_grace: Duration,
    bye_on_shutdown: bool,
}

impl Serving {
    /// The SIP address the node listens on.
    pub fn sip_addr(&self) -> SocketAddr {
        self.running.sip_addr
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr
    }

    /// Runs until `shutdown` completes (or the pool's Raft fails), then shuts the node down: calls
    /// and transactions finish (at most `--shutdown-grace`), the admin API stops, the last dialog
    /// records are written and the pool stops.
    pub async fn until(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Serving {
            running,
            pool,
            admin,
            data_dir,
            shutdown_grace,
            bye_on_shutdown,
        } = self;
        let raft_failed = async {
            match &pool {
                Some(p) => p.fatal().await,
                None => std::future::pending().await,
            }
        };
        let mut failure = None;
        tokio::select! {
            () = shutdown => {}
            why = raft_failed => {
                tracing::error!(
                    error = %why,
                    data_dir = %data_dir.display(),
                    "the pool's Raft store failed: this node stops so that the others take its shards \
                     over; fix the cause (e.g. free space in the data folder) and start it again"
                );
                failure = Some(why);
            }
        }
        running.shutdown(shutdown_grace, bye_on_shutdown).await;
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
                data_dir: data_dir.display().to_string(),
                why,
            }),
            None => Ok(()),
        }
    }
}

/// Runs a node on `listeners` until `shutdown` completes: [`start`], then [`Serving::until`].
pub async fn run(
    args: ServeArgs,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    start(args, listeners).await?.until(shutdown).await
}

/// Starts a node: configuration, data folder, the B2BUA, the pool when `--raft-listen` is given,
/// metrics, the admin API. Prints the `medpool ready` line when it serves.
pub async fn start(args: ServeArgs, listeners: Listeners) -> Result<Serving, ServeError> {
    let config = load_config(&args)?;
    std::fs::create_dir_all(&args.data_dir).map_err(|source| ServeError::DataDir {
        path: args.data_dir.display().to_string(),
        source,
    })?;
    // The flag wins; else the pool configuration's `[node] advertised_address` (e.g. a Service address).
    let advertise = args.advertise.clone().or_else(|| {
        config
            .node
            .advertised_address
            .as_ref()
            .map(ToString::to_string)
    });
    let media = args.media.options(args.sip_listen.ip())?;
    let opts = NodeOptions {
        sip: TransportConfig {
            listen: args.sip_listen,
            queue: args.sip_queue,
            retry_after_secs: config.node.retry_after,
            tcp: args.sip_tcp.limits(),
            tls: args.sip_tls.listen(args.sip_listen)?,
            udp_receivers: match args.sip_udp_receivers {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => usize::from(n),
            },
            lanes: match args.sip_lanes {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => usize::from(n),
            },
            ..TransportConfig::default()
        },
        advertise,
        timers: TimerConfig {
            t1: Duration::from_millis(args.t1_ms.max(1)),
            ..TimerConfig::default()
        },
        max_transactions: args.max_transactions,
        trusted_forwarders: args.trusted_forwarders.clone(),
        redact_numbers: args.trace_redact_numbers,
        media,
        dns_server: args.dns_server,
    };
    let trunks = config.trunks.len();
    let routes = config.routes.len();
    let config_text = args
        .config
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let admin_listener = listeners.admin;
    let (running, pool) = match args.pool.raft_listen {
        None => {
            let single = Arc::new(SingleNode::alone(args.shards));
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
            // Gateway capacity is the pool's (shares, replicated gateway states) before the node
            // acts for any shard: the shard watcher starts with `attach`.
            running
                .ctx
                .gateways
                .capacity
                .attach(Arc::new(crate::capacity::PoolCapacity {
                    pool: pool.clone(),
                }));
            let sink = Arc::new(NodeSink::default());
            let _ = sink.node.set(running.ctx.clone());
            tokio::spawn(crate::capacity::settle_task(
                pool.clone(),
                running.ctx.clone(),
                sink.adoptions.clone(),
            ));
            pool.attach(sink);
            tokio::spawn(config_sync(
                pool.clone(),
                running.ctx.clone(),
                config_text.clone(),
            ));
            tokio::spawn(mac_key_sync(pool.clone()));
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
                " node={} raft={} internal={}",
                p.node_id(),
                args.pool
                    .raft_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                if p.internal_tls() {
                    "mtls"
                } else if p.insecure_internal() {
                    "INSECURE"
                } else {
                    "loopback"
                }
            ),
            None => String::new(),
        }
    );
    Ok(Serving {
        running,
        pool,
        admin,
        data_dir: args.data_dir.clone(),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        bye_on_shutdown: args.bye_on_shutdown,
    })
}
