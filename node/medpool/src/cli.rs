//! The command line: `medpool serve | ctl | demo`. Every setting is a flag and an environment variable
//! (`MEDPOOL_*`); each subcommand's flags live with the subcommand ([`ServeArgs`](crate::serve::ServeArgs),
//! [`CtlArgs`](crate::ctl::CtlArgs), [`DemoArgs`](crate::demo::DemoArgs)). [`run`] builds the runtime a
//! subcommand needs and, for `serve`, turns SIGTERM and SIGINT into the node's shutdown future: the
//! only place signals are handled.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::{ctl, demo, serve, telemetry};

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
    Serve(Box<serve::ServeArgs>),
    /// Operate the pool through a node's admin API: status, calls, gateways, configuration, nodes.
    Ctl(Box<ctl::CtlArgs>),
    /// A local 3-node pool with simulated peers: hold calls, SIGKILL a node, watch the calls survive.
    Demo(demo::DemoArgs),
}

/// Runs a parsed command line and answers the process exit code.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Demo(args) => {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            else {
                return ExitCode::FAILURE;
            };
            match rt.block_on(demo::run(args)) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("medpool demo: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Ctl(args) => {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return ExitCode::FAILURE;
            };
            ExitCode::from(rt.block_on(ctl::run(*args)) as u8)
        }
        Command::Serve(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .on_thread_park(crate::reclaim::on_worker_park)
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("medpool: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(serve_until_signal(*args));
            // Whatever blocking work is still running (a store write stuck on a failed disk, a
            // resolver thread) must not keep a stopped node alive: the others take its shards over
            // only once it is gone. Dropping the runtime would wait for it without bound.
            runtime.shutdown_timeout(std::time::Duration::from_secs(2));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("medpool: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Why `medpool serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
enum ServeFailure {
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    #[error(transparent)]
    Serve(#[from] serve::ServeError),
}

/// `medpool serve`: logging, then the node until SIGTERM or SIGINT.
async fn serve_until_signal(args: serve::ServeArgs) -> Result<(), ServeFailure> {
    let node = args
        .pool
        .node_id
        .map_or_else(|| args.sip_listen.to_string(), |n| n.to_string());
    let telemetry = telemetry::init(&args.log, &node);
    let result = async {
        let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(ServeFailure::Signals)?;
        let shutdown = async move {
            tokio::select! {
                _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
            }
        };
        let listeners = serve::Listeners::bind(&args).await?;
        serve::run(args, listeners, shutdown).await?;
        Ok(())
    }
    .await;
    telemetry.shutdown(Duration::from_secs(5)).await;
    result
}
