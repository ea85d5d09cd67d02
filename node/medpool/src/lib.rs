//! medpool, the binary's library: the command line, running a node (`serve`), the operator's
//! command line (`ctl`), the demo, and the glue between the B2BUA and the Raft pool. The `medpool`
//! binary is only `main.rs`, which hands the parsed command line to [`cli::run`]; tests run a node in
//! process with [`serve::run`] (a shutdown future instead of signals).
//!
//! Modules in layers: each uses only modules drawn below it.
//!
//! ```text
//!   cli        the command line; builds runtimes; SIGTERM/SIGINT → serve's shutdown future
//!    │
//!    ├── serve     flags of `serve`; start a node, wait for shutdown, stop it (→ pool, metrics, admin)
//!    ├── ctl       `medpool ctl`: the admin API's client (→ admin::{auth, diff, error})
//!    └── demo      `medpool demo`: a 3-node pool as child processes, simulated peers
//!    │
//!   pool       adapters between the B2BUA's traits and medpool-cluster's Pool
//!   capacity   the pool's gateway capacity division and gateway states for the B2BUA;
//!              reporting this node settled in a new division
//!   metrics    Prometheus /metrics of a node and its pool
//!   admin      the admin gRPC API (→ telemetry, to change the log filter)
//!    │
//!   telemetry  logging and OTLP traces; its flags (a leaf: uses no other module)
//!   reclaim    idle runtime workers hand their free pages back (mimalloc; a leaf)
//! ```

pub mod admin;
pub mod capacity;
pub mod cli;
pub mod ctl;
pub mod demo;
pub mod metrics;
pub mod pool;
pub mod reclaim;
pub mod serve;
pub mod telemetry;
