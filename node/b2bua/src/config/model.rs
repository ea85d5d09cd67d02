//! The validated pool configuration: the typed model every other part of the node reads.
//!
//! Values of these types are only built by validation ([`super::PoolConfig::from_toml_str`])
//! or by deserialising a model that was validated before (the Raft-replicated copy), so the
//! code that reads them can rely on the invariants listed on each type. Everything is
//! deterministic: `Vec` in file order, no hash maps.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::pattern::Pattern;

/// The whole configuration of a pool: node-wide settings, trunks (peers) and routes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolConfig {
    /// Node-wide settings (`[node]`).
    pub node: NodeSettings,
    /// Trunks in file order (`[[trunk]]`); names are unique.
    pub trunks: Vec<Trunk>,
    /// Routes in file order (`[[route]]`); the first that fits a call is used.
    pub routes: Vec<Route>,
}

/// Node-wide settings (`[node]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSettings {
    /// Concurrent calls this node carries at most; above it new INVITEs get 503 (`max_calls`,
    /// default 20000).
    pub max_calls: u32,
    /// Trunks one call is offered to at most, the first attempt included (`max_tries`,
    /// default 3). Route selection cuts its plan to this length.
    pub max_tries: u32,
    /// What a request from an address that is no configured trunk gets (`unknown_source`,
    /// default [`UnknownSource::Reject`]).
    pub unknown_source: UnknownSource,
    /// Seconds put in `Retry-After` of a 503 sent because of overload (`retry_after`,
    /// default 5).
    pub retry_after: u32,
    /// Address put in our Contact and Record-Route (`advertised_address = "host:port"`);
    /// `None` means the node's own SIP listen address.
    pub advertised_address: Option<HostPort>,
    /// Seconds a trunk named by DNS keeps its last good answer after its records expired while
    /// the DNS server fails to answer (`dns_stale_max`, default
    /// [`NodeSettings::DEFAULT_DNS_STALE_MAX`]; 0 = not at all: the trunk is unresolved as soon
    /// as its records expire unrenewed).
    #[serde(default = "default_dns_stale_max")]
    pub dns_stale_max: u32,
    /// A new call that reaches a node of a pool from the network is set up on that node, in one of
    /// the shards it acts for, rather than forwarded to the owner of its Call-ID's shard
    /// (`local_calls`, default true; ARCHITECTURE.md "Where a call lives"). Its messages then
    /// cross no node while that node lives; every identifier the call mints names its shard, so
    /// after a failover they find the shard's new owner as before. A node alone acts for every
    /// shard: there it changes nothing. Absent from a configuration written before it: true.
    #[serde(default = "default_local_calls")]
    pub local_calls: bool,
}

fn default_dns_stale_max() -> u32 {
    NodeSettings::DEFAULT_DNS_STALE_MAX
}

fn default_local_calls() -> bool {
    true
}

impl NodeSettings {
    /// The default `dns_stale_max`: one hour, long enough to ride out a DNS outage, short
    /// enough that a trunk whose records were withdrawn stops being called the same day.
    pub const DEFAULT_DNS_STALE_MAX: u32 = 3_600;
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            max_calls: 20_000,
            max_tries: 3,
            unknown_source: UnknownSource::Reject,
            retry_after: 5,
            advertised_address: None,
            dns_stale_max: NodeSettings::DEFAULT_DNS_STALE_MAX,
            local_calls: true,
        }
    }
}

/// What to do with a request whose source address is no configured trunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSource {
    /// Answer 403 Forbidden.
    Reject,
    /// Send nothing (do not tell a scanner that something is listening).
    Drop,
}

/// A host (IP literal or DNS name) and a port, as written in `"host:port"` (IPv6 as
/// `"[::1]:5060"`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostPort {
    /// The host.
    pub host: PeerAddress,
    /// The port, 1-65535.
    pub port: u16,
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host {
            PeerAddress::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]:{}", self.port),
            _ => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// The address of a peer: an IP literal, or a DNS name kept as written.
///
/// Configuration is pure, so names are not resolved here: the node's `dns` module resolves
/// them (RFC 3263) and recognises their addresses as sources; [`PoolConfig::trunk_for_source`]
/// only recognises trunks written with an IP literal.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerAddress {
    /// An IPv4 or IPv6 literal.
    Ip(IpAddr),
    /// A host name, resolved by the caller.
    Host(String),
}

impl PeerAddress {
    /// The IP address when the peer was written as an IP literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            PeerAddress::Ip(ip) => Some(*ip),
            PeerAddress::Host(_) => None,
        }
    }
}

impl fmt::Display for PeerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddress::Ip(ip) => write!(f, "{ip}"),
            PeerAddress::Host(host) => f.write_str(host),
        }
    }
}

/// How the address of a trunk is found (RFC 3263 §4), fixed by validation from what the trunk
/// names: an IP literal is used as is; a host name is looked up, the more of it the less the
/// trunk fixes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Lookup {
    /// `address` is an IP literal: no lookup.
    #[default]
    Literal,
    /// A host name without `port` and `transport`: NAPTR picks the transport, its SRV the
    /// targets; without NAPTR, SRV for UDP then TCP; without SRV, A/AAAA on port 5060/UDP.
    Naptr,
    /// A host name with `transport` but no `port`: SRV for that transport, else A/AAAA on 5060.
    Srv,
    /// A host name with a `port`: A/AAAA only (RFC 3263 §4.2).
    Address,
}

/// SIP transport towards a trunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// SIP over UDP.
    Udp,
    /// SIP over TCP.
    Tcp,
    /// SIP over TLS (RFC 3261 §26): the trunk's certificate is verified (see [`TrunkTls`]).
    Tls,
}

/// Which side of the pool a trunk's peer is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// The organisation's own side: front-ends, IP-PBXs, SIP clients.
    Internal,
    /// The outside: PSTN gateways, SBCs of ITSPs, direct SIP connections. Gateways have a
    /// health state and are probed with OPTIONS.
    Gateway,
}

/// What to do with a REFER received from a trunk's peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReferPolicy {
    /// Relay it to the other leg.
    Pass,
    /// Answer it ourselves with 403 (the default).
    Refuse,
}

/// One number translation rule: when `pattern` matches, its first match in the number is
/// replaced by `replace` (`$1` / `${1}` / `${name}` name capture groups; write `${1}` when a
/// digit follows, since `$1` followed by `0` would be read as group `10`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NumberRule {
    /// Where the rule applies.
    pub pattern: Pattern,
    /// The replacement for the matched text.
    pub replace: String,
}

/// One response code translation: a final response `from` relayed back from a trunk is sent
/// on as `to`. Both are 300-699.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseRule {
    /// The code the trunk answered.
    pub from: u16,
    /// The code relayed to the other leg instead.
    pub to: u16,
}

/// A trunk: the pairing of the pool with one peer, and everything about how we talk to it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trunk {
    /// Unique name, used by routes, metrics and the admin API.
    pub name: String,
    /// The peer's address.
    pub address: PeerAddress,
    /// The peer's SIP port (default 5060).
    pub port: u16,
    /// The transport we use towards it (default UDP; for a host name without `transport`,
    /// whichever its DNS records choose, see [`Lookup`]).
    pub transport: Transport,
    /// How `address` is turned into the addresses calls and probes go to.
    #[serde(default)]
    pub lookup: Lookup,
    /// Internal side or gateway.
    pub side: Side,
    /// Requests from `address` on any source port belong to this trunk (default: true for
    /// internal trunks, whose clients use ephemeral ports; false for gateways).
    pub match_any_port: bool,
    /// Concurrent calls through this trunk at most (per node), `None` = no limit.
    pub max_calls: Option<u32>,
    /// New calls per second towards this trunk at most (per node), `None` = no limit.
    pub max_cps: Option<u32>,
    /// New requests (INVITE, OPTIONS, ... outside a dialog) one source address of this trunk may
    /// start per second, checked on the receive path before anything is queued (`rate`, default
    /// [`Trunk::DEFAULT_RATE`]). Over it: 503 with Retry-After, or nothing under a flood.
    #[serde(default = "default_rate")]
    pub rate: u32,
    /// How many new requests one source may send at once above `rate` (`burst`, default: `rate`).
    #[serde(default = "default_rate")]
    pub burst: u32,
    /// Final responses from this trunk (before any provisional answer) that move the call
    /// to the next trunk of the route (default 408, 503, 504). Timeouts and transport errors
    /// always do.
    pub failover_codes: Vec<u16>,
    /// Milliseconds to wait for a first provisional answer before failing over; 0 = off
    /// (default 10000). See [`Trunk::fast_failover`].
    pub fast_failover_ms: u32,
    /// REFER handling for requests from this trunk.
    pub refer: ReferPolicy,
    /// RFC 4028 session interval (seconds) we ask for on calls sent to this trunk;
    /// `None` = no session timer unless the peer asks.
    pub session_expires: Option<u32>,
    /// RFC 4028 Min-SE (seconds) we accept (default 90).
    pub min_se: u32,
    /// The trunk is inside the RFC 3325 trust domain (default true): P-Asserted-Identity and
    /// Privacy received from it are believed, and they are given to it. A call relays them only when
    /// both its trunks have this set: an untrusted caller's asserted identity never gets through.
    pub forward_pai: bool,
    /// Relay History-Info to and from this trunk (default true).
    pub forward_history_info: bool,
    /// OPTIONS probe interval in milliseconds; 0 = no probing (default 5000 for gateways,
    /// 0 for internal trunks). See [`Trunk::options_interval`].
    pub options_interval_ms: u32,
    /// Consecutive failures that mark the peer down (default 3).
    pub down_after: u32,
    /// Consecutive successes that mark a down peer up again (default 2).
    pub up_after: u32,
    /// Share of calls among trunks of equal priority (default 1, at least 1).
    pub weight: u32,
    /// The route usages callers on this trunk may use; `None` = internal trunk: every
    /// route; gateway: only routes without a usage. See [`Trunk::may_use`].
    pub usages: Option<Vec<String>>,
    /// Inbound dial plan: applied to the called and calling numbers of requests arriving on
    /// this trunk, first matching rule wins.
    pub normalize: Vec<NumberRule>,
    /// Outbound called number translation for calls sent out on this trunk.
    pub called_out: Vec<NumberRule>,
    /// Outbound calling number translation for calls sent out on this trunk.
    pub calling_out: Vec<NumberRule>,
    /// Response code translation for final responses relayed back from this trunk.
    pub response_map: Vec<ResponseRule>,
    /// What the node does with the media of calls on this trunk (`media`, default
    /// [`MediaMode::Relay`], as a Mediation Server anchors media). A call bypasses only when both
    /// its trunks say `bypass` and no G.711 translation is needed.
    #[serde(default)]
    pub media: MediaMode,
    /// The audio codecs (encoding names as in `a=rtpmap`, e.g. `"PCMU"`, matched without regard
    /// to case) offers towards this trunk may carry, in order of preference (`codecs`); empty
    /// (the default) passes the offer's list on. `telephone-event` is always kept when offered.
    #[serde(default)]
    pub codecs: Vec<String>,
    /// Seconds without media in either direction after which a relayed call on this trunk is
    /// hung up (`media_timeout`, default 60; 0 = never). A call on hold is exempt.
    #[serde(default = "default_media_timeout")]
    pub media_timeout: u32,
    /// The port of this node the trunk is reached on and sent from (`local_port`), bound by every
    /// node (UDP and TCP) beside its main SIP listener, on the node's SIP IP (or `local_address`):
    /// Via, Contact and probes towards the trunk carry it, and the trunk's new requests are taken
    /// only on it (M:N trunking, one port per trunk). `None`: the node's main listener.
    #[serde(default)]
    pub local_port: Option<u16>,
    /// The IP the trunk's `local_port` is bound on and advertised with, in place of the node's SIP
    /// IP (`local_address`; single-node set-ups, or an address every node of the pool has).
    #[serde(default)]
    pub local_address: Option<std::net::IpAddr>,
    /// How the peer's certificates are checked when the trunk speaks TLS (`tls_*`; only with
    /// `transport = "tls"`).
    #[serde(default)]
    pub tls: TrunkTls,
    /// Media encryption on this trunk (`encryption`, the Lync/Skype for Business trunk setting;
    /// default [`Encryption::None`]): SRTP with SDES keys (RFC 4568) on the leg towards it.
    #[serde(default)]
    pub encryption: Encryption,
}

/// The TLS settings of a trunk (`transport = "tls"`). File paths are kept as written; the node
/// reads the files (and re-reads them when they change).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrunkTls {
    /// The name the peer's server certificate must be valid for, also sent as SNI (`tls_name`);
    /// `None`: the trunk's `address` (its host name, or its IP address).
    pub name: Option<String>,
    /// A CA file (PEM) the peer's server certificate must chain to (`tls_ca`); `None`: the node's
    /// `--sip-tls-ca`.
    pub ca: Option<String>,
    /// A CA file (PEM) a client certificate must chain to (`tls_client_ca`); `None`: `tls_ca`,
    /// else the node's `--sip-tls-ca`.
    pub client_ca: Option<String>,
    /// DNS names (subject alternative names) of which a client certificate must carry one
    /// (`tls_client_names`).
    pub client_names: Vec<String>,
}

impl TrunkTls {
    /// Whether requests over TLS are from this trunk only with a client certificate that meets
    /// `client_ca`/`client_names` (mutual TLS): set when either is.
    pub fn requires_client_cert(&self) -> bool {
        self.client_ca.is_some() || !self.client_names.is_empty()
    }
}

/// Whether a trunk's media is SRTP (`trunk.encryption`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encryption {
    /// SRTP only: offers towards the trunk are `RTP/SAVP` with `a=crypto` lines; an offer or an
    /// answer from it without an acceptable one is refused (488).
    Required,
    /// Best-effort SRTP, as common SBCs do: offers are `RTP/AVP` with `a=crypto` lines, and what
    /// the peer answers (with or without a key) is taken; its offers may be either.
    Optional,
    /// Plain RTP: offers carry no keys; an `RTP/SAVP` offer from the trunk is refused (488).
    #[default]
    None,
}

/// What the node does with a call's media (`trunk.media`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MediaMode {
    /// Anchor the media: both peers send RTP to this node, which relays it (the default). When
    /// the node dies, the node that takes the call over re-INVITEs both legs onto its own relay.
    #[default]
    Relay,
    /// Let the peers' media flow directly (SDP passed on unchanged), when the other trunk of the
    /// call allows it too and no translation is needed.
    Bypass,
}

fn default_media_timeout() -> u32 {
    Trunk::DEFAULT_MEDIA_TIMEOUT
}

fn default_rate() -> u32 {
    Trunk::DEFAULT_RATE
}

impl Trunk {
    /// The default `rate` (and `burst`): far above what one real peer starts, low enough that one
    /// source cannot fill the node's queue alone.
    pub const DEFAULT_RATE: u32 = 5_000;

    /// The default `media_timeout` (seconds).
    pub const DEFAULT_MEDIA_TIMEOUT: u32 = 60;

    /// The media inactivity timeout, `None` when off.
    pub fn media_timeout(&self) -> Option<Duration> {
        (self.media_timeout > 0).then(|| Duration::from_secs(u64::from(self.media_timeout)))
    }

    /// The fast-failover timer, `None` when off.
    pub fn fast_failover(&self) -> Option<Duration> {
        (self.fast_failover_ms > 0).then(|| Duration::from_millis(u64::from(self.fast_failover_ms)))
    }

    /// The OPTIONS probe interval, `None` when the trunk is not probed.
    pub fn options_interval(&self) -> Option<Duration> {
        (self.options_interval_ms > 0)
            .then(|| Duration::from_millis(u64::from(self.options_interval_ms)))
    }

    /// Whether a final response `code` from this trunk (before any provisional) moves the
    /// call to the next trunk.
    pub fn is_failover_code(&self, code: u16) -> bool {
        self.failover_codes.contains(&code)
    }

    /// Whether callers arriving on this trunk may use a route with the given usage.
    ///
    /// A route without a usage is open to every trunk. A route with a usage is open to trunks
    /// that list it in `usages`, and to internal trunks that list no usages at all. A gateway
    /// without `usages` may only use routes without a usage (calls from the outside are not
    /// sent back out through a restricted route unless the operator says so).
    pub fn may_use(&self, usage: Option<&str>) -> bool {
        match (usage, &self.usages) {
            (None, _) => true,
            (Some(usage), Some(list)) => list.iter().any(|u| u == usage),
            (Some(_), None) => self.side == Side::Internal,
        }
    }
}

/// A route: which called numbers it takes, who may use it, and the trunks to try.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Name (unique), for logs and the admin API.
    pub name: String,
    /// Matches the normalised called number (unanchored regex).
    pub pattern: Pattern,
    /// Numbers matching any of these are not taken by this route.
    pub except: Vec<Pattern>,
    /// The named usage of this route, `None` = open to every trunk (see [`Trunk::may_use`]).
    pub usage: Option<String>,
    /// Trunks to try, in file order; every name is a configured trunk, none twice.
    pub targets: Vec<RouteTarget>,
}

impl Route {
    /// Whether this route takes `called` (pattern matches, no exception does).
    pub fn matches(&self, called: &str) -> bool {
        self.pattern.is_match(called) && !self.except.iter().any(|p| p.is_match(called))
    }
}

/// One trunk of a route with its priority: lower priorities are tried first; trunks of equal
/// priority share the load by weight and active calls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTarget {
    /// The trunk's name.
    pub trunk: String,
    /// The priority group (1 = first).
    pub priority: u32,
}
