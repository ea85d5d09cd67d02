//! medpool-media: the media plane as a library — SDP in, SDP out, RTP relay sessions, counters.
//!
//! It knows nothing of SIP transactions, actors, Raft or configuration files: the B2BUA asks it to
//! rewrite offers and answers and to open relay sessions; packets flow socket → relay task →
//! socket and never pass through an actor.
//!
//! Layers (a module imports only modules drawn below it; none imports one above, so no cycles):
//! ```text
//!   relay                        the data path: port allocator, per-datagram forwarding, session
//!                                tasks, the runtime (its own layers: see the module)
//!   pt_map                       payload-type routes between legs (renumbering, G.711 translation)
//!   dtmf                         RFC 4733 telephone-event view; its payload type from a leg's SDP
//!   srtp                         SRTP/SRTCP (RFC 3711) with SDES keys (RFC 4568): protect and
//!                                unprotect in place; its own layers (see the module); no I/O
//!   sdp · rtp · g711 · stats     leaves: SDP view and rewriter; RTP/RTCP header views; G.711
//!                                tables; per-direction counters and sequence tracking
//! ```
//! - [`sdp`]: SDP view and rewriter (RFC 8866, RFC 3264 offer/answer fields, RFC 3605, RFC 5761).
//! - [`rtp`]: zero-copy RTP/RTCP header views and in-place setters (RFC 3550, RFC 5761 demux).
//! - [`g711`]: A-law ↔ µ-law by G.711's tables, and to/from 16-bit linear.
//! - [`stats`]: per-direction counters (atomics) and the sequence tracker that feeds them.
//! - [`dtmf`]: RFC 4733 telephone-event payloads; which payload type each leg uses.
//! - [`pt_map`]: one direction's payload-type routes, built from both legs' SDP, applied in place.
//! - [`srtp`]: SRTP/SRTCP contexts per leg (AES_CM_128_HMAC_SHA1_80/_32, MKI, replay window,
//!   ROC), `a=crypto` key parameters, master keys from the OS's secure random source.
//! - [`relay`]: relay sessions of two legs on tokio tasks; symmetric-RTP latching; port range.

pub mod dtmf;
pub mod g711;
pub mod pt_map;
pub mod relay;
pub mod rtp;
pub mod sdp;
pub mod srtp;
pub mod stats;
