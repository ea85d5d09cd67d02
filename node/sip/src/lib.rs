//! medpool-sip: the SIP layer every medpool node runs.
//!
//! ```text
//!  sockets ─► transport (UDP, TCP, TLS) ─► message::parse ─► check (400/416/420/...) ─► transactions ─► the user (B2BUA)
//!                 ▲                                                                              │
//!                 └───────────────────────────── message::builder ◄──────────────────────────────┘
//! ```
//! - [`message`]: the codec. Keeps the received bytes and an index; typed views parse lazily.
//! - [`check`]: what a node answers to a malformed or unacceptable request before any dialog logic.
//! - [`framing`]: RFC 3261 §18.3 stream framing (check, then parse).
//! - [`transport`]: UDP, TCP and TLS listeners, connection reuse, `received`/`rport`, response routing.
//! - [`transaction`]: RFC 3261 §17 (+ RFC 6026) transactions as pure state machines with a tokio driver.
//! - [`fuzzing`]: one entry point over every parsing path, for the fuzz target and the mutation test.
//! - [`ids`]: branch, tag and Call-ID generation carrying a shard number, and `shard_of(message)`.
//! - [`limits`]: the size limits every parsing path enforces.
//!
//! Layers: a module imports only modules drawn below it (none imports one above, so there is no
//! cycle); [`transaction`] imports nothing else of the crate (it works on byte slices the caller hands
//! it).
//! ```text
//!   fuzzing                      every parsing path, for the fuzz target
//!   transport                    sockets; screens with check, frames streams with framing
//!   check · framing · ids        read messages; framing also uses limits
//!   message                      the codec (its own layers: see the module)
//!   limits          transaction  leaves
//! ```
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
