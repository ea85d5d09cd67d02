//! medpool-harness: starting `medpool serve` as a child process, the way `medpool demo`, the chaos
//! tests (`chaos-tests`) and the binary's own tests (`node/medpool/tests`) all do it.
//!
//! ```text
//!   status    a node's view of the pool (Info over its internal service) and its rows
//!   process   MedpoolProcess (any medpool child: stderr captured, waits for a line, stopped by
//!             PID, its log printed when a test panics); NodeSpec + NodeProcess (a pool node)
//!     │
//!   env       THE rule for a child's environment: every inherited MEDPOOL_* and OTEL_* variable
//!             is removed (flags decide; traces go where a test says), NO_COLOR=1
//!   error     HarnessError
//! ```
//! Each module uses only those drawn below it. Nothing here links the medpool binary: nodes are
//! processes, faults are signals.

pub mod env;
pub mod error;
pub mod process;
pub mod status;

pub use env::medpool_command;
pub use error::HarnessError;
