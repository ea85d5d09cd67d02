//! medpool-b2bua: the back-to-back user agent of one node.
//!
//! ```text
//!   medpool-sip transports ─► node (dispatcher) ─► txlayer (transaction Driver + Registry)
//!                                   │                     │ events by key / dialog
//!                                   ├─ new INVITE ─► dialog::DialogActor (one per call)
//!                                   │                     ├─ routing + translate (pure): which gateway, which numbers
//!                                   │                     └─ gateways::Gateways (health view, capacity)
//!                                   └─ gateway::GatewayActor (one per gateway: OPTIONS, passive health)
//!   config (TOML → validated PoolConfig)        cluster (traits: shard ownership, dialog store)
//! ```
//!
//! Layers, each importing only from the layers below it (or beside it, without a cycle):
//! ```text
//!   5  node                   dispatcher, start, shutdown; shard adopt/release, config apply
//!      dns_sync               starts the probers of DNS-resolved targets, feeds the source gate
//!   4  dialog  gateway        the actors: DialogActor (one per call), GatewayActor (one per gateway)
//!      supervisor             every actor is linked to it: it sweeps what a dead one left
//!                             registered and starts a dead gateway prober again (→ gateway)
//!   3  ctx  gateways          NodeCtx (what the actors share); the gateway table
//!      dns                    trunks named by DNS: lookups (RFC 3263), their cache, targets
//!      trunk_ports            ports bound for trunks (`local_port`), the wire sending from them
//!   2  txlayer                transaction events: Envelope, Registry, SipIo, Wire (no actor type)
//!   1  config routing translate health ingress sources cluster trace   pure: no I/O, no actors
//!      latency                the per-stage histograms (dispatch, call start, INVITE out, scheduler lag)
//!      media                  the call's media plan: SDP offer/answer rewriting, relay plans
//!      srtp                   SRTP per trunk (`encryption`): SDES offer/answer state, keys per leg
//!      capacity               this node's share of a gateway's pool-wide limits; gateway states
//!      handover               calls in set-up across a planned shard move: who holds them
//!      recent                 keys remembered for a while (hung-up legs), in generations that go whole
//! ```
//! Tests only: `testkit` (a node context over a channel wire, no socket) sits on top of all;
//! `fixtures` (trunk tables for the configuration, source and DNS tests) beside `config`.
//!
//! The transaction-event layer hands events up through ractor's `DerivedActorRef` of its own event
//! types, so it never names an actor; the node context and the gateway table name none either. The
//! pool is reached only through [`cluster`]'s traits, so this crate never depends on Raft.

pub mod capacity;
pub mod cluster;
pub mod config;
pub mod ctx;
pub mod dialog;
pub mod dns;
pub mod dns_sync;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod gateway;
pub mod gateways;
pub mod handover;
pub mod health;
pub mod ingress;
pub mod latency;
pub mod media;
pub mod node;
pub mod recent;
pub(crate) mod relayed;
pub mod routing;
pub mod sources;
pub mod srtp;
pub mod supervisor;
#[cfg(test)]
pub(crate) mod testkit;
pub mod trace;
pub mod translate;
pub mod trunk_ports;
pub mod txlayer;
