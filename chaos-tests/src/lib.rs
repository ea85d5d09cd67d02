//! medpool-chaos-tests: real `medpool serve` processes under real faults, checked against invariants.
//!
//! The harness (processes on 127.0.0.x, a Service-like UDP forwarder, seeded fault schedules, a call ledger)
//! arrives with the pool and chaos issues; until then this crate holds nothing but this note, so that the
//! workspace has the layout DESIGN.md specifies.
