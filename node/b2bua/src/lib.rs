//! medpool-b2bua: the back-to-back user agent of one node.
//!
//! ```text
//!   medpool-sip transports ─► node (dispatcher) ─► sipcore (transaction Driver + Registry)
//!                                   │                     │ events by key / dialog
//!                                   ├─ new INVITE ─► dialog::DialogActor (one per call)
//!                                   │                     ├─ routing + translate (pure): which gateway, which numbers
//!                                   │                     └─ gateway::Gateways (health view, capacity)
//!                                   └─ gateway::GatewayActor (one per gateway: OPTIONS, passive health)
//!   config (TOML → validated PoolConfig)        cluster (traits: shard ownership, dialog store)
//! ```
//! Pure cores: [`config`], [`routing`], [`translate`], [`health`]. Actors and tasks: [`dialog`],
//! [`gateway`], [`node`]. The pool is reached only through [`cluster`]'s traits, so this crate never
//! depends on Raft.

pub mod cluster;
pub mod config;
pub mod dialog;
pub mod gateway;
pub mod health;
pub mod node;
pub mod routing;
pub mod sipcore;
pub mod trace;
pub mod translate;
