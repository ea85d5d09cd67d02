//! medpool-sip: the SIP layer every medpool node runs.
//!
//! ```text
//!  sockets ─► transport (UDP, TCP; TLS seam) ─► message::parse ─► check (400/416/420/...) ─► transactions ─► the user (B2BUA)
//!                 ▲                                                                              │
//!                 └───────────────────────────── message::builder ◄──────────────────────────────┘
//! ```
//! - [`message`]: the codec. Keeps the received bytes and an index; typed views parse lazily.
//! - [`check`]: what a node answers to a malformed or unacceptable request before any dialog logic.
//! - [`framing`]: RFC 3261 §18.3 stream framing (check, then parse).
//! - [`transport`]: UDP and TCP listeners, connection reuse, `received`/`rport`, response routing.
//! - [`transaction`]: RFC 3261 §17 (+ RFC 6026) transactions as pure state machines with a tokio driver.
//! - [`fuzzing`]: one entry point over every parsing path, for the fuzz target and the mutation test.
//! - [`ids`]: branch, tag and Call-ID generation carrying a shard number, and `shard_of(message)`.
//!
//! It knows nothing of actors, Raft or configuration files.

pub mod check;
pub mod framing;
pub mod fuzzing;
pub mod ids;
pub mod limits;
pub mod message;
pub mod transaction;
pub mod transport;

pub use limits::Limits;
pub use message::{HeaderName, Method, SipMessage};
