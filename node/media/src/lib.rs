//! medpool-media: the media plane as a library — SDP in, SDP out, RTP relay sessions, counters.
//!
//! It knows nothing of SIP transactions, actors, Raft or configuration files: the B2BUA asks it to
//! rewrite offers and answers and to open relay sessions; packets flow socket → relay task →
//! socket and never pass through an actor.
//!
//! Layers (a module imports only modules drawn below it; none imports one above, so no cycles):
//! ```text
//!   sdp · rtp · g711             leaves: SDP view and rewriter; RTP/RTCP header views; G.711 tables
//! ```
//! - [`sdp`]: SDP view and rewriter (RFC 8866, RFC 3264 offer/answer fields, RFC 3605, RFC 5761).
//! - [`rtp`]: zero-copy RTP/RTCP header views and in-place setters (RFC 3550, RFC 5761 demux).
//! - [`g711`]: A-law ↔ µ-law by G.711's tables, and to/from 16-bit linear.

pub mod g711;
pub mod rtp;
pub mod sdp;
