//! Real SIP user agents around a real `medpool serve`: the pieces a test needs to place calls
//! between baresip and linphone through medpool and to check them on the wire.
//!
//! ```text
//!   scene   — one case's addresses, medpool's config, the node, the wire capture, `ctl calls`
//!     │
//!     ├── baresip   — a baresip process driven over ctrl_tcp (JSON commands, call events)
//!     ├── linphone  — a linphone-daemon process driven over stdin (commands, call states)
//!     └── wire      — a raw-socket capture of one loopback block: SIP messages, RTP packets
//! ```
//!
//! A later test (SIP over TLS, SRTP) reuses all four: [`baresip::BaresipSpec`] takes extra config
//! lines and account parameters, [`scene::SceneSpec`] extra trunk keys.

#![allow(dead_code)] // each test file uses part of the toolkit

pub mod baresip;
pub mod linphone;
pub mod scene;
pub mod wire;
