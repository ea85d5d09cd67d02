//! RFC 3261 §17 transactions, with the RFC 6026 corrections for 2xx responses to INVITE.
//!
//! Two layers, pure cores, thin shells:
//!
//! ```text
//!   TU (B2BUA core) ◄──TuEvent──┐          ┌── start_client / respond ── TU
//!                               │          ▼
//!   transport ── on_request / on_response ─► Driver (driver.rs): table of live transactions, timers
//!                                              │ on tokio::time, bounded; calls TransactionIo
//!                                              ▼ (state, event) → actions
//!        ClientInvite · ClientNonInvite · ServerInvite · ServerNonInvite   (pure: no I/O, clock, message)
//!                                              │
//!                               timers.rs (T1/T2/T4, Timers A–M) · key.rs (matching keys)
//! ```
//!
//! - [`timers`]: [`TimerConfig`] and [`TimerId`], and the duration of every timer.
//! - [`machine`]: the shared vocabulary: [`State`], [`ClientEvent`], [`ServerEvent`], [`Action`],
//!   [`Actions`], [`Outcome`].
//! - [`client_invite`], [`client_non_invite`], [`server_invite`], [`server_non_invite`]: the four pure
//!   state machines. Each is built with `(TimerConfig, reliable)` and returns its first actions.
//! - [`key`]: [`ClientKey`], [`ServerKey`] and [`TransactionKey`], the RFC 3261 17.1.3 / 17.2.3
//!   matching rules (with the RFC 2543 fallback), built from byte slices the codec supplies.
//! - [`driver`]: [`Driver`], generic over an opaque message type and a [`TransactionIo`]; its table is
//!   split into independently locked shards by a hash of the key ([`shards`]), each with its own
//!   timer wheel (deadline-ordered timers and each transaction's slots: `wheel.rs`), below it.
//!   Inside `driver/`, one concern a file: `timer_task` (the sweeps), `shared` (what the driver and
//!   its timer task share), `apply` (actions into effects), `table` (a shard's entries and their
//!   compaction), `api` (the types exchanged with the caller).
//!
//! This module never parses a message and knows nothing of dialogs, actors or the cluster.

pub mod client_invite;
pub mod client_non_invite;
pub mod driver;
pub mod key;
pub mod machine;
pub mod server_invite;
pub mod server_non_invite;
pub mod shards;
pub mod timers;
mod wheel;

#[cfg(test)]
mod tests;

pub use client_invite::ClientInvite;
pub use client_non_invite::ClientNonInvite;
pub use driver::{
    DEFAULT_LINGER_GRID, Driver, DriverConfig, DriverError, RequestDisposition,
    ResponseDisposition, SLOW_SWEEP, SWEEP_BATCH, SweepStats, TABLE_SHARDS, TransactionIo,
    TransmitError, TuEvent,
};
pub use key::{
    ClientKey, KeyError, MAGIC_COOKIE, RequestParts, ServerKey, TransactionKey, is_rfc3261_branch,
};
pub use machine::{Action, Actions, ClientEvent, Outcome, ServerEvent, State};
pub use server_invite::ServerInvite;
pub use server_non_invite::ServerNonInvite;
pub use shards::{FastMap, FastState, Shards};
pub use timers::{TimerConfig, TimerId};
