//! The command line. Every setting is a flag and an environment variable (`MEDPOOL_*`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// medpool: a clustered SIP Mediation Server pool.
#[derive(Debug, Parser)]
#[command(name = "medpool", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node. With no flags: a single-node pool on 127.0.0.1:5060 (UDP and TCP), data in
    /// ./medpool-data, configuration from ./medpool.toml when present.
    Serve(Box<ServeArgs>),
    /// Operate the pool through a node's admin API: status, calls, gateways, configuration, nodes.
    Ctl(Box<crate::ctl::CtlArgs>),
    /// A local 3-node pool with simulated peers: hold calls, SIGKILL a node, watch the calls survive.
    Demo(crate::demo::DemoArgs),
    /// Pool membership commands (over a node's internal service).
    Pool {
        /// What to do.
        #[command(subcommand)]
        command: PoolCommand,
        /// A node's internal address (`--raft-listen` of some node).
        #[arg(
            long,
            env = "MEDPOOL_SERVER",
            default_value = "127.0.0.1:7000",
            global = true
        )]
        server: String,
    },
    /// Pool configuration commands.
    Config {
        /// What to do.
        #[command(subcommand)]
        command: ConfigCommand,
        /// A node's internal address.
        #[arg(
            long,
            env = "MEDPOOL_SERVER",
            default_value = "127.0.0.1:7000",
            global = true
        )]
        server: String,
    },
}

/// `medpool pool ...`.
#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Nodes, leader, term, shards per node.
    Status,
    /// Move every shard off a node (its calls go on elsewhere); it gets no new shards.
    Drain {
        /// Node id.
        node: u64,
    },
    /// Let a drained node own shards again.
    Undrain {
        /// Node id.
        node: u64,
    },
}

/// `medpool config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE and make it the pool's configuration (all nodes, or none).
    Apply {
        /// The TOML file.
        file: std::path::PathBuf,
        /// Apply only if the pool is at this version (default: the version read just before).
        #[arg(long)]
        expected_version: Option<u64>,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Logging flags.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format.
    #[arg(long, env = "MEDPOOL_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,medpool_b2bua=debug`).
    #[arg(long, env = "MEDPOOL_LOG", default_value = "info")]
    pub log: String,
}

/// `medpool serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Pool configuration file (TOML). Default: ./medpool.toml when it exists, else an empty pool.
    #[arg(long, env = "MEDPOOL_CONFIG")]
    pub config: Option<PathBuf>,
    /// SIP listen address (UDP and TCP).
    #[arg(long, env = "MEDPOOL_SIP_LISTEN", default_value = "127.0.0.1:5060")]
    pub sip_listen: SocketAddr,
    /// Address advertised in Via and Contact (`host:port`); default: the SIP listen address.
    #[arg(long, env = "MEDPOOL_ADVERTISE")]
    pub advertise: Option<String>,
    /// Data folder (Raft log and snapshots in a pool).
    #[arg(long, env = "MEDPOOL_DATA_DIR", default_value = "./medpool-data")]
    pub data_dir: PathBuf,
    /// Number of shards of a new pool (fixed for its life).
    #[arg(long, env = "MEDPOOL_SHARDS", default_value_t = 1024, value_parser = clap::value_parser!(u16).range(1..))]
    pub shards: u16,
    /// On SIGTERM/SIGINT, send BYE to every call in progress (default: let calls and transactions finish).
    #[arg(long, env = "MEDPOOL_BYE_ON_SHUTDOWN")]
    pub bye_on_shutdown: bool,
    /// Longest wait for calls/transactions to finish at shutdown, in seconds.
    #[arg(long, env = "MEDPOOL_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,
    /// Capacity of the inbound SIP queue; beyond it requests are answered 503.
    #[arg(long, env = "MEDPOOL_SIP_QUEUE", default_value_t = 8192)]
    pub sip_queue: usize,
    /// Most live SIP transactions; beyond it requests are answered 503.
    #[arg(long, env = "MEDPOOL_MAX_TRANSACTIONS", default_value_t = 1_000_000)]
    pub max_transactions: usize,
    /// SIP load balancers trusted to name a message's real source in `X-Medpool-Source` (comma-separated IPs).
    #[arg(long, env = "MEDPOOL_TRUSTED_FORWARDERS", value_delimiter = ',')]
    pub trusted_forwarders: Vec<std::net::IpAddr>,
    /// In traces, keep only the last two digits of phone numbers.
    #[arg(long, env = "MEDPOOL_TRACE_REDACT_NUMBERS")]
    pub trace_redact_numbers: bool,
    /// Prometheus metrics address (`GET /metrics`); off when not given.
    #[arg(long, env = "MEDPOOL_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// SIP timer T1 in milliseconds (RFC 3261 default 500).
    #[arg(long, env = "MEDPOOL_T1_MS", default_value_t = 500)]
    pub t1_ms: u64,
    /// Pool membership (omit `--raft-listen` for the embedded single-node pool).
    #[command(flatten)]
    pub pool: PoolArgs,
    /// The admin gRPC API.
    #[command(flatten)]
    pub admin: crate::admin::AdminArgs,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Raft pool flags. A node runs in a pool when `--raft-listen` is given.
#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// Internal gRPC address (Raft, SIP forwarding, join): turns pool mode on.
    #[arg(long, env = "MEDPOOL_RAFT_LISTEN")]
    pub raft_listen: Option<std::net::SocketAddr>,
    /// Address other nodes reach the internal service on (default: --raft-listen).
    #[arg(long, env = "MEDPOOL_RAFT_ADVERTISE")]
    pub raft_advertise: Option<String>,
    /// This node's id (stable across restarts). Default: the ordinal of a StatefulSet hostname
    /// (`<name>-<ordinal>`), else 0.
    #[arg(long, env = "MEDPOOL_NODE_ID")]
    pub node_id: Option<u64>,
    /// Members to join through, `host:port` of their internal service, comma-separated. Empty: this
    /// node bootstraps a new pool (node 0 of a StatefulSet does; the others join `<name>-0`).
    #[arg(long, env = "MEDPOOL_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// With a StatefulSet: the headless Service's domain (e.g. `medpool-peers.default.svc.cluster.local`);
    /// node id and join address are derived from the hostname.
    #[arg(long, env = "MEDPOOL_PEER_DOMAIN")]
    pub peer_domain: Option<String>,
    /// An /etc/hosts-style file whose names override DNS for internal addresses (tests that start
    /// nodes as a StatefulSet would, without Kubernetes DNS).
    #[arg(long, env = "MEDPOOL_HOSTS_FILE")]
    pub hosts_file: Option<std::path::PathBuf>,
    /// Raft voters (the first nodes); later nodes are learners. 1 to 5.
    #[arg(long, env = "MEDPOOL_VOTERS", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub voters: u8,
    /// Lease length L in milliseconds.
    #[arg(long, env = "MEDPOOL_LEASE_MS", default_value_t = 2000)]
    pub lease_ms: u64,
    /// Margin added to L before the leader declares a silent node down, in milliseconds.
    #[arg(long, env = "MEDPOOL_LEASE_MARGIN_MS", default_value_t = 1000)]
    pub lease_margin_ms: u64,
    /// Append this node's audit report to PATH (created if missing): its leases, the shards it may
    /// act for, leadership and configuration versions, one line each with Unix-microsecond times,
    /// for fault-injection tests that check at most one node acts for a shard at a time. Pool mode
    /// only; the format is documented in medpool-cluster's `audit` module.
    #[arg(long, env = "MEDPOOL_AUDIT_FILE", value_name = "PATH")]
    pub audit_file: Option<PathBuf>,
}
