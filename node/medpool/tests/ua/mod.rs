//! Real SIP user agents around a real `medpool serve`: the pieces a test needs to place calls
//! between baresip and linphone through medpool and to check them on the wire.
//!
//! ```text
//!   scene   — one case's addresses, medpool's config, the node, the wire capture, `ctl calls`
//!     │
//!     ├── baresip   — a baresip process driven over ctrl_tcp (JSON commands, call events)
//!     ├── linphone  — a linphone-daemon process driven over stdin (commands, call states)
//!     ├── wire      — a raw-socket capture of one loopback block: SIP messages, RTP packets
//!     ├── trace     — baresip's own SIP trace read back as messages (over TLS, the wire shows none)
//!     ├── secure    — SDP profiles and a=crypto lines; captured SRTP unprotected with a leg's key
//!     └── certs     — a test CA (rcgen) and the certificate files medpool and baresip read
//! ```
//!
//! The SIP-over-TLS and SRTP tests (real_ua_tls.rs) reuse them: [`baresip::BaresipSpec`] takes
//! extra config lines and account parameters, [`scene::SceneSpec`] extra trunk keys, node flags
//! and an address block of its own. `trace` and `secure` read what `wire` and baresip's log hold.

#![allow(dead_code)] // each test file uses part of the toolkit

pub mod baresip;
pub mod certs;
pub mod linphone;
pub mod scene;
pub mod secure;
pub mod trace;
pub mod wire;
