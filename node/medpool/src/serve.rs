//! `medpool serve`: load the configuration, start the node, wait for SIGTERM/SIGINT, shut down
//! through the node's single shutdown path.

use std::sync::Arc;
use std::time::Duration;

use medpool_b2bua::cluster::{NoRelay, SingleNode};
use medpool_b2bua::config::{ConfigError, PoolConfig};
use medpool_b2bua::node::{self, NodeError, NodeOptions};
use medpool_sip::transaction::TimerConfig;
use medpool_sip::transport::TransportConfig;

use crate::cli::{LogArgs, LogFormat, ServeArgs};

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
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Starts logging (human or JSON) to stderr.
pub fn init_logging(args: &LogArgs) {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match args.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
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
    let pool = Arc::new(SingleNode::new(args.shards));
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
    };
    let trunks = config.trunks.len();
    let routes = config.routes.len();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServeError::Signals)?;
    let running = node::start(opts, config, pool.clone(), pool, Arc::new(NoRelay)).await?;
    eprintln!(
        "medpool ready sip={} trunks={trunks} routes={routes}",
        running.sip_addr
    );
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    running
        .shutdown(
            Duration::from_secs(args.shutdown_grace),
            args.bye_on_shutdown,
        )
        .await;
    Ok(())
}
