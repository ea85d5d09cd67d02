//! medpool-media: the media plane as a library — SDP in, SDP out, RTP relay sessions, counters.
//!
//! It knows nothing of SIP transactions, actors, Raft or configuration files: the B2BUA asks it to
//! rewrite offers and answers and to open relay sessions; packets flow socket → relay task →
//! socket and never pass through an actor.
//!
//! Layers (a module imports only modules drawn below it; none imports one above, so no cycles):
//! ```text
//!   sdp                          parse a body into a light view; rewrite only the lines it must
//! ```
//! - [`sdp`]: SDP view and rewriter (RFC 8866, RFC 3264 offer/answer fields, RFC 3605, RFC 5761).

pub mod sdp;
