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
//! - [`process`]: one node process, its log, and the guard that stops it by PID (also on panic):
//!   medpool-harness's, shared with `medpool demo` and the binary's tests.
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

pub use medpool_harness::HarnessError;
