//! The `medpool` binary. Thin by design (library first): it parses the command line and hands it to
//! the library ([`medpool::cli::run`]), where everything else lives.

use clap::Parser;

mod alloc;

fn main() -> std::process::ExitCode {
    medpool::cli::run(medpool::cli::Cli::parse())
}
