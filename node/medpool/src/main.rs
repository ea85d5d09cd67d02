//! The `medpool` binary: `medpool serve` runs a node. Thin by design (STYLE.md item 1): it reads the
//! command line and environment, starts logging, loads the pool configuration and calls
//! [`serve::run`]; everything else lives in the library crates.

mod cli;
mod pool;
mod serve;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli.command {
        cli::Command::Serve(args) => {
            serve::init_logging(&args.log);
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
            match runtime.block_on(serve::run(*args)) {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("medpool: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}
