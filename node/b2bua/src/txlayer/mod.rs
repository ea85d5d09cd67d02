//! The transaction-event layer between the transports and the actors: the transaction layer (one
//! [`medpool_sip::transaction::Driver`] per node), the [`Envelope`] it carries, the [`Wire`] it sends
//! on, and the [`Registry`] that routes its events to whoever owns them. It knows no actor type: a
//! call or a gateway prober registers a [`ractor::DerivedActorRef`] of the events it takes
//! ([`CallEvent`], [`ProbeEvent`]); what no one owns goes to the node as a [`CoreEvent`].
//!
//! ```text
//! transports ─Inbound─► node dispatcher ─► Driver (retransmissions, absorption, timers)
//!                                              │ TuEvent (SipIo::deliver)
//!                      ┌───────────────────────┼────────────────────────────┐
//!                      ▼                       ▼                            ▼
//!        Registry: client key → owner   in-dialog (Call-ID, tag) → call   anything new → dispatcher
//! ```
//! Transaction state lives here, per node; dialog state lives in the DialogActor. A transaction is
//! not replicated: a call's confirmed dialog is (see [`crate::cluster`]).
//!
//! Files: `envelope` (the message, the responses kept, the keys), `events` (what goes up, to whom), `registry`,
//! `io` (the driver's [`medpool_sip::transaction::TransactionIo`]), `wire` (what sends).

mod envelope;
mod events;
mod io;
mod registry;
mod wire;

pub use envelope::{Envelope, Reply, client_key, client_key_of_request, server_key};
pub use events::{CallEvent, CallRef, ClientOwner, CoreEvent, Owner, ProbeEvent, ProbeRef, Side};
pub use io::SipIo;
pub use registry::Registry;
pub use wire::Wire;

/// The node's transaction layer: messages as [`Envelope`]s, the responses its server transactions
/// keep as [`Reply`]s.
pub type TxDriver = medpool_sip::transaction::Driver<Envelope, std::sync::Arc<SipIo>, Reply>;
