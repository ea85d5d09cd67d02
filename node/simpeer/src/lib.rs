//! medpool-simpeer: simulated SIP peers and a Service-like UDP forwarder for demos and tests.
//!
//! Its one job is to play, on loopback, the parties that stand around a medpool pool, so that
//! `medpool demo` and the multi-process chaos tests run on a fresh machine without SIPp:
//!
//! ```text
//!   Caller ──INVITE/re-INVITE/BYE──► Forwarder (the "Service" address) ──► node 1 │ node 2 │ node 3 ──► Gateway gw1, gw2
//!   (internal trunk)                  adds X-Medpool-Source: <real source>        │                     (PSTN side)
//!      ▲                               re-pins a dead node's flows               │
//!      └──────────── answers (straight from a node, or back through the forwarder) ◄──┘
//! ```
//!
//! - [`caller`]: a UAC that places many calls, holds them, re-INVITEs and hangs them up, with UDP
//!   retransmissions, and keeps a [`ledger`] of what happened to each call.
//! - [`gateway`]: a UAS that answers every call (100, 180, 200 with SDP) and every in-dialog request.
//! - [`forwarder`]: a UDP load balancer playing a Kubernetes Service in front of the nodes.
//! - [`uas`]: the server-side transaction behaviour the caller and the gateway share.
//! - [`ledger`]: per-call outcomes and the summary table.
//! - [`sdp`]: the small SDP bodies the peers offer and answer.
//! - [`wire`]: what a peer speaks on: UDP, or SIP over TLS (with a client certificate) through
//!   medpool-sip's TLS transport.
//! - [`pki`]: a throwaway test CA writing PEM files for the TLS peers and the node.
//! - [`rtp`]: per-call RTP legs (a 20 ms G.711 stream, echoed by the gateway) and the check of
//!   every packet (loss, duplicates, reordering, timestamps, another call's packets, gaps).
//!
//! It speaks to the pool over UDP, or TLS ([`wire`]), with medpool-sip's codec (and reads SDP and RTP with
//! medpool-media's views); it never links the B2BUA, the
//! cluster or the binary. Every task it starts is aborted when its owner is dropped.

pub mod caller;
pub mod error;
pub mod forwarder;
pub mod gateway;
pub mod ledger;
pub mod pki;
pub mod rtp;
pub mod sdp;
pub mod uas;
pub mod wire;

pub use caller::{CallMedia, Caller, CallerConfig};
pub use error::SimpeerError;
pub use forwarder::{Forwarder, ForwarderConfig, ForwarderCounts};
pub use gateway::{CseqDisorder, Gateway, GatewayConfig, GatewayCounts};
pub use ledger::{CallRecord, Outcome, Summary};
pub use pki::{CertFiles, TestCa};
pub use uas::ResponseRouting;
pub use wire::{TlsOptions, Wire};
