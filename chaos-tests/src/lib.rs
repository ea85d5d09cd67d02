//! medpool-chaos-tests: real `medpool serve` processes under real faults, checked against invariants.
//!
//! ```text
//!  medpool-chaos (src/bin) ─► runner: CI mode (every scenario once) | soak (seeded random rounds)
//!     │  seed (printed; --seed / MEDPOOL_SEED replays) ─► the schedule and every call's identifiers
//!     ├─ netns: re-exec inside a namespace of its own (iptables partitions and loss, a tmpfs)
//!     ├─ world: LocalPool (3 × `medpool serve --audit-file`) + Forwarder + Gateways + Callers + sampler
//!     ├─ scenarios: one fault each (SIGKILL, SIGSTOP, partition, loss/delay, gateway flap, leader
//!     │             kill during a config change, rolling restart, full data folder)
//!     └─ invariants/: one a file, judged from ledgers, gateway counts, audit reports and samples
//! ```
//! - [`binary`]: finds `target/debug/medpool` (building it with `cargo build -p medpool` when it is
//!   missing or older than its sources).
//! - [`process`]: one node process, its log, and the guard that stops it by PID (also on panic).
//! - [`pool`]: a 3-node pool on 127.0.N.x and the waits a test needs (converged, failed over, rejoined).
//! - [`world`], [`scenarios`], [`runner`]: the chaos run; [`invariants`], [`audit`], [`observe`]: how
//!   it is judged; [`netns`]: network faults; [`seed`]: the seed of the older single-scenario tests.
//! - tests/: `chaos_ci.rs` (the runner in CI mode), and failover, rejoin and start-up contract tests.
//!
//! It never links the binary crate: nodes are processes, faults are signals.

pub mod audit;
pub mod binary;
pub mod invariants;
pub mod netns;
pub mod observe;
pub mod pool;
pub mod process;
pub mod runner;
pub mod scenarios;
pub mod seed;
pub mod world;

/// Why a harness step failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The medpool binary is missing and could not be built.
    #[error("no medpool binary at {path}: {why}")]
    Binary {
        /// Where it was looked for.
        path: std::path::PathBuf,
        /// What went wrong building it.
        why: String,
    },
    /// A process could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// Which process.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A node exited while it should have been serving.
    #[error("{node} exited ({status}); last log lines:\n{tail}")]
    Exited {
        /// Which node.
        node: String,
        /// How it ended.
        status: String,
        /// The end of its log.
        tail: String,
    },
    /// Something a test waited for did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: std::time::Duration,
    },
    /// The pool's status could not be read.
    #[error("pool status from {server}: {reason}")]
    Status {
        /// The node asked.
        server: String,
        /// Why it failed.
        reason: String,
    },
    /// A file could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A simulated peer could not start.
    #[error(transparent)]
    Peer(#[from] medpool_simpeer::SimpeerError),
}
