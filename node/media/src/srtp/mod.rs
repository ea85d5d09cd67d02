//! SRTP and SRTCP (RFC 3711) with SDES key exchange (RFC 4568): the crypto suites
//! AES_CM_128_HMAC_SHA1_80 and AES_CM_128_HMAC_SHA1_32, MKI, replay protection and the
//! roll-over counter. A library only: the relay asks a [`Srtp`] context to protect or unprotect a
//! datagram in place in its own buffer; nothing here allocates per packet (a new SSRC adds one
//! entry to a bounded list).
//!
//! Layers (a module imports only modules drawn below it):
//! ```text
//!   sdes           offer/answer: which offered `a=crypto` line to take, the answer's line, an offer
//!   protect        per-leg context: protect/unprotect RTP and RTCP in place (MKI, tag, SRTCP index)
//!   context        per-SSRC state: RFC 3711 §3.3.1 index estimation, ROC, replay window
//!   kdf            RFC 3711 §4.3 session-key derivation (AES-CM PRF, key derivation rate 0)
//!   keys · cm      leaves: SDES key-params (`inline:`), suites, master keys from the OS's random
//!                  source; AES-128 counter mode (§4.1.1) over a caller's buffer
//!   error          the typed errors every layer returns
//! ```
//! Keys never appear in `Debug` output. Master keys, session keys and salts and the AES key
//! schedules are zeroed when dropped; the HMAC-SHA1 state kept per context (the hashed inner and
//! outer pads, from which the authentication key cannot be read back directly) is not, because
//! the `hmac` crate does not offer it.

mod cm;
mod context;
mod error;
mod kdf;
mod keys;
mod protect;
mod sdes;

pub use context::ReplayWindow;
pub use error::SrtpError;
pub use kdf::SessionKeys;
pub use keys::{CryptoAttribute, KeyParams, MasterKey, Mki, Suite};
pub use protect::{MAX_SSRCS, Srtp};
pub use sdes::{answer, choose_offer, offer};
