//! The `medpool` binary: `medpool serve` runs a node. Thin by design (STYLE.md item 1): it reads the
//! command line and environment, starts logging, loads the pool configuration and calls
//! [`serve::run`]; everything else lives in the library crates.

mod admin;
mod cli;
mod ctl;
mod demo;
mod metrics;
mod pool;
mod poolctl;
mod serve;
mod telemetry;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let small_runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        cli::Command::Demo(args) => {
            let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            else {
                return std::process::ExitCode::FAILURE;
            };
            match rt.block_on(demo::run(args)) {
                Ok(true) => std::process::ExitCode::SUCCESS,
                Ok(false) => std::process::ExitCode::FAILURE,
                Err(e) => {
                    eprintln!("medpool demo: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        cli::Command::Ctl(args) => {
            let Ok(rt) = small_runtime() else {
                return std::process::ExitCode::FAILURE;
            };
            std::process::ExitCode::from(rt.block_on(ctl::run(*args)) as u8)
        }
        cli::Command::Pool { command, server } => {
            let Ok(rt) = small_runtime() else {
                return std::process::ExitCode::FAILURE;
            };
            let outcome = rt.block_on(async {
                match command {
                    cli::PoolCommand::Status => poolctl::status(&server).await,
                    cli::PoolCommand::Drain { node } => {
                        poolctl::set_state(&server, node, true).await
                    }
                    cli::PoolCommand::Undrain { node } => {
                        poolctl::set_state(&server, node, false).await
                    }
                }
            });
            std::process::ExitCode::from(outcome as u8)
        }
        cli::Command::Config { command, server } => {
            let Ok(rt) = small_runtime() else {
                return std::process::ExitCode::FAILURE;
            };
            let outcome = rt.block_on(async {
                match command {
                    cli::ConfigCommand::Apply {
                        file,
                        expected_version,
                    } => poolctl::apply_config(&server, &file, expected_version).await,
                }
            });
            std::process::ExitCode::from(outcome as u8)
        }
        cli::Command::Serve(args) => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("medpool: cannot start the runtime: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                let node = args
                    .pool
                    .node_id
                    .map_or_else(|| args.sip_listen.to_string(), |n| n.to_string());
                let telemetry = telemetry::init(&args.log, &node);
                let result = serve::run(*args).await;
                telemetry.shutdown(std::time::Duration::from_secs(5)).await;
                result
            });
            match result {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("medpool: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
