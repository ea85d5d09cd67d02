//! The pool configuration: trunks (peers), routes, number translation rules and node-wide
//! settings, loaded from TOML and validated into the typed [`PoolConfig`].
//!
//! This module owns the file format, its validation (errors name the file, line and field
//! path, see [`ConfigError`]) and the typed model. It does no I/O besides
//! [`PoolConfig::load`] reading one file, resolves no host names and reads no clock, so the
//! model can be validated on one node and replicated through Raft to the others as is
//! (`Clone + PartialEq + Serialize + Deserialize`, deterministic: `Vec`s in file order).
//!
//! Layout: `raw` mirrors the file; `validate` turns it into the `model` types; `span` finds
//! the line of a field path; `error` holds [`ConfigError`]; [`Pattern`] is a regex that keeps
//! its source; `shared` holds one trunk through its configuration ([`SharedTrunk`]: what a
//! call keeps of its inbound trunk).
//!
//! The file, in short (`examples/medpool.toml` is the commented reference):
//! ```toml
//! [node]                        # all optional
//! max_calls = 20000             # concurrent calls on this node; above → 503
//! max_tries = 3                 # trunks one call is offered to, first attempt included
//! unknown_source = "reject"     # "reject" (403) or "drop" for requests from unknown peers
//! retry_after = 5               # Retry-After seconds on an overload 503
//! advertised_address = "sip.example.net:5060"   # our Contact / Record-Route; default: listen address
//! dns_stale_max = 3600          # seconds a DNS-named trunk keeps its last answer while DNS fails
//! local_calls = true            # a pool node sets up the new calls it receives itself
//!
//! [[trunk]]
//! name = "gw1"                  # unique
//! address = "192.0.2.21"        # IP literal, or host name: NAPTR/SRV/A per RFC 3263 (see `Lookup`)
//! side = "gateway"              # "internal" or "gateway"
//! # port = 5060, transport = "udp" | "tcp", match_any_port, max_calls, max_cps,
//! # rate = 5000, burst = rate (new requests a second per source address, checked before queueing),
//! # failover_codes = [408, 503, 504], fast_failover_ms = 10000 (0 = off), refer = "refuse" | "pass",
//! # session_expires, min_se = 90, forward_pai = true, forward_history_info = true,
//! # options_interval_ms (5000 for gateways, 0 = off), down_after = 3, up_after = 2, weight = 1,
//! # usages = ["local"], normalize / called_out / calling_out = [{ pattern = "^00", replace = "+" }],
//! # response_map = [{ from = 486, to = 480 }],
//! # media = "bypass" | "relay", codecs = ["PCMU", "PCMA"] (default: the offer's), media_timeout = 60
//!
//! [[route]]
//! name = "all"
//! pattern = ".*"                # unanchored regex on the normalised called number
//! # except = ["^\\+1900"], usage = "international"
//! trunks = ["gw1", { trunk = "gw2", priority = 1 }]
//! ```

mod error;
mod model;
mod pattern;
mod raw;
mod shared;
mod span;
mod validate;

use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

pub use error::{ConfigError, Location, Problem};
pub use model::{
    Encryption, HostPort, Lookup, MediaMode, NodeSettings, NumberRule, PeerAddress, PoolConfig,
    ReferPolicy, ResponseRule, Route, RouteTarget, Side, Transport, Trunk, TrunkTls, UnknownSource,
};
pub use shared::SharedTrunk;

/// The SIP layer's transport for a trunk's `transport`.
pub fn sip_transport(t: Transport) -> medpool_sip::transport::Transport {
    match t {
        Transport::Udp => medpool_sip::transport::Transport::Udp,
        Transport::Tcp => medpool_sip::transport::Transport::Tcp,
        Transport::Tls => medpool_sip::transport::Transport::Tls,
    }
}

/// The SIP layer's transport named `udp`, `tcp` or `tls` (as records and forwarded messages
/// carry it); anything else is UDP.
pub fn transport_named(name: &str) -> medpool_sip::transport::Transport {
    match name {
        "tcp" => medpool_sip::transport::Transport::Tcp,
        "tls" => medpool_sip::transport::Transport::Tls,
        _ => medpool_sip::transport::Transport::Udp,
    }
}
pub use pattern::Pattern;

use raw::RawConfig;
use span::Doc;

impl PoolConfig {
    /// Parses and validates a configuration. `file_name` is only used in error messages.
    pub fn from_toml_str(text: &str, file_name: &str) -> Result<PoolConfig, ConfigError> {
        let parsed = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
            at: span::location(
                file_name,
                text,
                e.span().map_or(0, |s| s.start),
                String::new(),
            ),
            message: e.message().trim_end().to_owned(),
        })?;
        let root_span = parsed.span();
        let table = parsed.into_inner();
        let doc = Doc::new(file_name, text, DeValue::Table(table.clone()));
        let deserializer = toml::de::Deserializer::from(toml::Spanned::new(root_span, table));
        let raw = RawConfig::deserialize(deserializer).map_err(|e| ConfigError::Shape {
            at: doc.locate_offset(e.span().map_or(0, |s| s.start)),
            message: e.message().trim_end().to_owned(),
        })?;
        validate::validate(raw, &doc)
    }

    /// Reads and validates a configuration file.
    pub fn load(path: impl AsRef<Path>) -> Result<PoolConfig, ConfigError> {
        let path = path.as_ref();
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_toml_str(&text, &file)
    }

    /// The configuration of `medpool serve` without a file: default node settings, no trunks,
    /// no routes.
    ///
    /// With no trunks every source is unknown, so every request is answered 403 (or dropped):
    /// the embedded default trusts nobody, not even 127.0.0.1. Start with
    /// `examples/medpool.toml` to accept calls.
    pub fn default_embedded() -> PoolConfig {
        PoolConfig {
            node: NodeSettings::default(),
            trunks: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// The trunk with this name.
    pub fn trunk(&self, name: &str) -> Option<&Trunk> {
        self.trunks.iter().find(|t| t.name == name)
    }

    /// The route with this name.
    pub fn route(&self, name: &str) -> Option<&Route> {
        self.routes.iter().find(|r| r.name == name)
    }

    /// The trunk a request from `ip:port` arrived on: the trunk with exactly that address and
    /// port, else the trunk with that address and `match_any_port`. IPv4-mapped IPv6 sources
    /// (`::ffff:a.b.c.d`) match IPv4 trunks.
    ///
    /// Only trunks whose `address` is an IP literal are matched; host names are resolved by
    /// the caller, which is not done here (configuration is pure). Validation guarantees at
    /// most one trunk for each source.
    pub fn trunk_for_source(&self, ip: IpAddr, port: u16) -> Option<&Trunk> {
        let ip = ip.to_canonical();
        let same_ip = |t: &&Trunk| t.address.ip().map(|a| a.to_canonical()) == Some(ip);
        self.trunks
            .iter()
            .filter(same_ip)
            .find(|t| t.port == port)
            .or_else(|| {
                self.trunks
                    .iter()
                    .filter(same_ip)
                    .find(|t| t.match_any_port)
            })
    }
}

#[cfg(test)]
mod tests;
