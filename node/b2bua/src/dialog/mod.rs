//! The DialogActor: one ractor actor per call, holding the whole B2BUA state of the call — both legs,
//! the gateway attempts, the in-dialog requests being relayed between the legs, and the call's timers.
//! Transactions (retransmissions, absorption) run in the node's transaction layer
//! ([`crate::txlayer`]); the actor sees their events and decides what the call does.
//!
//! Life of a call:
//! ```text
//! INVITE(A) ─► 100 ─► route ─► INVITE(B, gateway 1) ─┬─ 18x ─► 18x(A) ─► 200 ─► 200(A) ─► ACK(A) ─► ACK(B)   confirmed
//!                                                     ├─ 503/408/504/timeout before any 18x ─► INVITE(B, gateway 2) ...
//!                                                     ├─ fast-failover timer, no 18x ─► CANCEL(B) ─► next gateway
//!                                                     └─ other final ─► mapped final(A)
//! CANCEL(A) ─► 200, 487(A), CANCEL(B) (or ACK+BYE when B's 200 crosses it)
//! BYE from either side ─► 200 at once, BYE to the other side ─► call ends
//! re-INVITE / UPDATE / INFO / NOTIFY / MESSAGE / OPTIONS / PRACK / REFER ─► relayed to the other leg,
//!   with that leg's dialog identifiers and CSeq; the answer is relayed back.
//! ```
//!
//! Files, one concern each: `msg` (what the actor takes and reports), `actor` (the dispatch:
//! which concern handles what),
//! `call` (the state, built by one constructor for new and rebuilt calls), `outbound` (the leg-B
//! INVITE, a pure function), `setup` (a new call built and started; answers to the caller, its
//! CANCEL), `attempts` (gateway attempts and failover), `invite_answers` (the gateways' answers to
//! a leg-B INVITE),
//! `relay` (in-dialog requests between the legs; `refer_event` renumbers a relayed REFER's NOTIFYs,
//! pure), `session` (the RFC 4028 session timer: who refreshes, the refresh, the expiry teardown),
//! `forks` (leg B's early dialogs, one per fork, and the 2xx of a fork that lost: ACK and BYE),
//! `media` (the relay
//! session, SDP of offers and answers rewritten for the other leg, the media timeout, and a rebuilt
//! call's re-INVITEs moving its media onto this node), `teardown` (BYE, the
//! end, what a stopped call gives back), `record` (the replicated record and rebuilding a call
//! from it), `spans` (trace spans), `leg` (one leg's dialog identifiers and message builders),
//! `body` (a body's SDP, plain or the part of a multipart body beside a PIDF-LO; pure).
//! They import in one direction: `body` → `msg` → `call` (with `leg`, `outbound`, `spans`) → `media` →
//! `forks`, `session` → `setup`, `attempts`, `invite_answers`, `relay` → `teardown` (which ACKs through `relay`; `media`,
//! `forks` and `session` hang a call up through it) → `record` → `actor`.

mod actor;
mod attempts;
mod body;
mod call;
mod forks;
#[cfg(test)]
mod handover_tests;
mod invite_answers;
pub mod leg;
mod media;
#[cfg(test)]
mod media_failover_tests;
#[cfg(test)]
mod media_tests;
mod msg;
mod outbound;
mod record;
mod refer_event;
mod relay;
#[cfg(test)]
mod rfc_tests;
mod session;
mod setup;
mod spans;
#[cfg(test)]
mod srtp_tests;
mod teardown;
#[cfg(test)]
mod tests;

pub use actor::{DialogActor, spawn, spawn_restored};
pub use call::Call;
pub use msg::{CallInfo, DialogArgs, DialogMsg, DialogStart, LegWire, Phase, actor_of};
pub use record::CSEQ_SKIP;
