//! `medpool ctl`: the operator's command line over the admin gRPC API (`medpool.admin.v1`) of any
//! node. Human tables by default, `-o json` for scripts (one JSON document per command, one JSON
//! object per line for `calls watch`).
//!
//! Exit codes scripts can rely on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 2 | usage (bad arguments, unreadable file) |
//! | 3 | unreachable: no answer from the server, or no leader/quorum (nothing changed) |
//! | 4 | refused: invalid configuration, stale version, not found, bad token, precondition (nothing changed) |
//! | 5 | outcome unknown: a change may or may not have been applied |
//!
//! One file per command group, mirroring `admin/`; each uses only the files drawn below it:
//!
//! ```text
//!   mod.rs       the flags (clap) and the dispatch to a group
//!    ├── nodes.rs     status, node drain|undrain|remove, leader transfer, log set
//!    ├── calls.rs     calls ls|show|hangup|watch
//!    ├── gateways.rs  gateways ls|enable|disable|drain
//!    └── config.rs    config get|validate|apply
//!   conn.rs      TLS, token, one RPC with a time limit, CtlError → exit code
//!   output.rs    out!/outn!, tables, JSON, formatters
//! ```

#[macro_use]
mod output;
mod calls;
mod config;
mod conn;
mod gateways;
mod nodes;

use std::path::PathBuf;

use clap::{Args, Subcommand};

pub use calls::{CallState, CallsCommand};
pub use config::ConfigCommand;
pub use conn::Exit;
pub use gateways::{GatewayTarget, GatewaysCommand};
pub use nodes::{LeaderCommand, LogCommand, NodeCommand};
pub use output::Output;

use conn::{Connect, Ctl, CtlError};

/// `medpool ctl` and its options (valid before or after the subcommand).
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
    /// A node's admin API (`host:port`, or `https://host:port` for TLS).
    #[arg(
        long,
        env = "MEDPOOL_ADMIN",
        default_value = "127.0.0.1:7001",
        global = true
    )]
    pub server: String,
    /// File holding the bearer token.
    #[arg(long, env = "MEDPOOL_ADMIN_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The bearer token (prefer the environment variable or --token-file).
    #[arg(
        long,
        env = "MEDPOOL_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<crate::admin::auth::SecretText>,
    /// CA certificate (PEM) to check the server's certificate against; turns TLS on.
    #[arg(long, env = "MEDPOOL_ADMIN_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Name expected in the server's certificate (default: the host of --server).
    #[arg(long, env = "MEDPOOL_ADMIN_TLS_DOMAIN", global = true)]
    pub tls_domain: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table", global = true)]
    pub output: Output,
    /// Longest wait for an answer, in seconds.
    #[arg(long, default_value_t = 15, global = true)]
    pub timeout: u64,
}

/// `medpool ctl ...`.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Nodes, leader, term, indexes, shards per node, configuration version.
    Status {
        /// Only this node's own view (no other node is asked: nothing waits for a dead one).
        #[arg(long)]
        local: bool,
    },
    /// Calls in progress.
    Calls {
        /// What to do.
        #[command(subcommand)]
        command: CallsCommand,
    },
    /// Gateway health as each node sees it; enable, disable, drain.
    Gateways {
        /// What to do.
        #[command(subcommand)]
        command: GatewaysCommand,
    },
    /// The pool configuration.
    Config {
        /// What to do.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Node membership.
    Node {
        /// What to do.
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Raft leadership.
    Leader {
        /// What to do.
        #[command(subcommand)]
        command: LeaderCommand,
    },
    /// The node's logging.
    Log {
        /// What to do.
        #[command(subcommand)]
        command: LogCommand,
    },
}

/// Runs `medpool ctl` and answers the exit code.
pub async fn run(args: CtlArgs) -> Exit {
    let ctl = match conn::connect(&Connect {
        server: &args.server,
        token_file: args.token_file.as_deref(),
        token: args.token.as_ref(),
        tls_ca: args.tls_ca.as_ref(),
        tls_domain: args.tls_domain.as_ref(),
        output: args.output,
        timeout: args.timeout,
    }) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("medpool ctl: {e}");
            return e.exit();
        }
    };
    match ctl.dispatch(args.command).await {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("medpool ctl: {e}");
            e.exit()
        }
    }
}

impl Ctl {
    async fn dispatch(&self, command: CtlCommand) -> Result<(), CtlError> {
        match command {
            CtlCommand::Status { local } => self.status(local).await,
            CtlCommand::Calls { command } => self.calls(command).await,
            CtlCommand::Gateways { command } => self.gateways(command).await,
            CtlCommand::Config { command } => self.config(command).await,
            CtlCommand::Node { command } => self.node(command).await,
            CtlCommand::Leader {
                command: LeaderCommand::Transfer { to },
            } => self.leader_transfer(to).await,
            CtlCommand::Log {
                command: LogCommand::Set { filter },
            } => self.log_set(filter).await,
        }
    }
}
