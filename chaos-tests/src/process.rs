//! One `medpool serve` process: the shared harness's ([`medpool_harness::process`]), re-exported
//! under the name the chaos tests have always used.

pub use medpool_harness::process::{Log, MedpoolProcess, NodeProcess, NodeSpec, log_filter};
