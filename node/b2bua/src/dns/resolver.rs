//! The lookups of RFC 3263 §4 through hickory-resolver: NAPTR → SRV → A/AAAA for a trunk's host
//! name, as much of the chain as the trunk's [`Lookup`] leaves open, into the list of
//! [`Target`]s calls and probes go to, with the smallest TTL of the records used. No cache of
//! our own here (see [`super::cache`]), no SIP.
//!
//! Bounds: at most [`MAX_SRV`] SRV records of one name are used and at most [`MAX_ADDRS`]
//! addresses of one target host, so one answer gives at most `MAX_SRV × MAX_ADDRS` targets.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};

use super::cache::Outcome;
use super::error::LookupError;
use super::naptr::{self, Naptr};
use crate::config::{Lookup, Transport, Trunk};

/// SRV records of one name used at most (in RFC 2782 order of priority).
pub const MAX_SRV: usize = 16;
/// Addresses of one target host used at most.
pub const MAX_ADDRS: usize = 4;

/// One address a trunk's calls and probes may go to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The host name the address is of (the SRV target, or the trunk's name).
    pub host: String,
    /// The address and port.
    pub addr: SocketAddr,
    /// The transport.
    pub transport: Transport,
    /// SRV priority (0 without SRV).
    pub priority: u16,
    /// SRV weight (0 without SRV).
    pub weight: u16,
}

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    /// The system's resolver configuration (`/etc/resolv.conf`) could not be read.
    #[error("cannot read the system resolver configuration: {0}")]
    SystemConfig(#[source] NetError),
    /// The resolver could not be built.
    #[error("cannot build the DNS resolver: {0}")]
    Build(#[source] NetError),
}

/// A stub resolver: the system's, or one DNS server's (`--dns-server`).
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// The system resolver, or the DNS server at `server` (UDP, and TCP for long answers).
    pub fn new(server: Option<SocketAddr>) -> Result<Resolver, ResolverError> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = match server {
            None => TokioResolver::builder(provider).map_err(ResolverError::SystemConfig)?,
            Some(server) => {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                let ns = NameServerConfig::new(server.ip(), true, vec![udp, tcp]);
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![ns]),
                    provider,
                )
            }
        };
        let opts = builder.options_mut();
        opts.timeout = Duration::from_secs(2);
        opts.attempts = 2;
        let inner = builder.build().map_err(ResolverError::Build)?;
        Ok(Resolver { inner })
    }

    /// Looks up `trunk`'s host name as its [`Lookup`] says (nothing for an IP literal: an empty
    /// answer).
    pub async fn lookup(&self, trunk: &Trunk) -> Outcome<Vec<Target>> {
        let host = fqdn(&trunk.address.to_string());
        let fixed = match trunk.lookup {
            Lookup::Literal => {
                return Outcome::Answer {
                    value: Vec::new(),
                    ttl: super::cache::MAX_TTL,
                };
            }
            Lookup::Address => {
                return self
                    .addresses(&host, trunk.port, trunk.transport, 0, 0)
                    .await
                    .map_or_else(Outcome::Failed, |(value, ttl)| Outcome::Answer {
                        value,
                        ttl,
                    });
            }
            Lookup::Srv => Some(trunk.transport),
            Lookup::Naptr => None,
        };
        match self.chain(&host, fixed).await {
            Ok((value, ttl)) => Outcome::Answer { value, ttl },
            Err(e) => Outcome::Failed(e),
        }
    }

    /// NAPTR (unless the transport is fixed) → SRV → A/AAAA; without SRV, A/AAAA on 5060.
    async fn chain(
        &self,
        host: &str,
        fixed: Option<Transport>,
    ) -> Result<(Vec<Target>, Duration), LookupError> {
        let mut ttl = super::cache::MAX_TTL;
        let mut names = Vec::new();
        if fixed.is_none() {
            match self.inner.lookup(host, RecordType::NAPTR).await {
                Ok(l) => {
                    let records: Vec<Naptr> = l
                        .answers()
                        .iter()
                        .filter_map(|r| match &r.data {
                            RData::NAPTR(n) => {
                                ttl = ttl.min(Duration::from_secs(u64::from(r.ttl)));
                                Some(Naptr {
                                    order: n.order,
                                    preference: n.preference,
                                    flags: String::from_utf8_lossy(&n.flags).into_owned(),
                                    services: String::from_utf8_lossy(&n.services).into_owned(),
                                    replacement: n.replacement.to_string(),
                                })
                            }
                            _ => None,
                        })
                        .collect();
                    names = naptr::srv_names(&records, fixed);
                }
                Err(e) => {
                    classify(host, e)?;
                }
            }
        }
        if names.is_empty() {
            names = naptr::default_srv_names(host, fixed);
        }
        for (name, transport) in names {
            if let Some((targets, srv_ttl)) = self.srv(&name, transport).await? {
                return Ok((targets, ttl.min(srv_ttl)));
            }
        }
        // No SRV: the name's own addresses, port 5060 (5061 for TLS; RFC 3263 §4.2).
        let transport = fixed.unwrap_or(Transport::Udp);
        let port = if transport == Transport::Tls {
            5061
        } else {
            5060
        };
        let (targets, a_ttl) = self.addresses(host, port, transport, 0, 0).await?;
        Ok((targets, ttl.min(a_ttl)))
    }

    /// The targets of SRV name `name`; `None` when it has no records (the next name is tried).
    async fn srv(
        &self,
        name: &str,
        transport: Transport,
    ) -> Result<Option<(Vec<Target>, Duration)>, LookupError> {
        let lookup = match self.inner.lookup(name, RecordType::SRV).await {
            Ok(l) => l,
            Err(e) => {
                classify(name, e)?;
                return Ok(None);
            }
        };
        let mut ttl = super::cache::MAX_TTL;
        let mut records: Vec<(u16, u16, u16, String)> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(s) => {
                    ttl = ttl.min(Duration::from_secs(u64::from(r.ttl)));
                    Some((s.priority, s.weight, s.port, s.target.to_string()))
                }
                _ => None,
            })
            // A target of "." says the service is not offered there (RFC 2782).
            .filter(|(_, _, _, target)| target != ".")
            .collect();
        if records.is_empty() {
            return Ok(None);
        }
        records.sort();
        records.truncate(MAX_SRV);
        let mut targets = Vec::new();
        let mut last_error = None;
        for (priority, weight, port, target) in records {
            match self
                .addresses(&target, port, transport, priority, weight)
                .await
            {
                Ok((mut t, a_ttl)) => {
                    ttl = ttl.min(a_ttl);
                    targets.append(&mut t);
                }
                // One target without addresses does not spoil the others.
                Err(e) => last_error = Some(e),
            }
        }
        match (targets.is_empty(), last_error) {
            (true, Some(e)) => Err(e),
            _ => Ok(Some((targets, ttl))),
        }
    }

    /// The A/AAAA addresses of `host` as targets on `port`.
    async fn addresses(
        &self,
        host: &str,
        port: u16,
        transport: Transport,
        priority: u16,
        weight: u16,
    ) -> Result<(Vec<Target>, Duration), LookupError> {
        let lookup = self
            .inner
            .lookup_ip(host)
            .await
            .map_err(|e| match classify(host, e) {
                Err(e) => e,
                Ok(()) => not_found(host),
            })?;
        let lookup = hickory_resolver::lookup::Lookup::from(lookup);
        let mut ttl = super::cache::MAX_TTL;
        let mut targets = Vec::new();
        for r in lookup.answers() {
            let ip = match &r.data {
                RData::A(a) => IpAddr::V4(a.0),
                RData::AAAA(a) => IpAddr::V6(a.0),
                _ => continue,
            };
            if targets.len() == MAX_ADDRS {
                break;
            }
            ttl = ttl.min(Duration::from_secs(u64::from(r.ttl)));
            targets.push(Target {
                host: host.trim_end_matches('.').to_owned(),
                addr: SocketAddr::new(ip, port),
                transport,
                priority,
                weight,
            });
        }
        if targets.is_empty() {
            return Err(not_found(host));
        }
        Ok((targets, ttl))
    }
}

/// A name as a fully qualified one (no search domains appended).
fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    }
}

fn not_found(name: &str) -> LookupError {
    LookupError::NotFound {
        name: name.trim_end_matches('.').to_owned(),
    }
}

/// `Ok(())` for "no such records" (the chain goes on), the typed error for a failing server.
fn classify(name: &str, e: NetError) -> Result<(), LookupError> {
    if e.is_no_records_found() {
        Ok(())
    } else {
        Err(LookupError::Server {
            name: name.trim_end_matches('.').to_owned(),
            detail: e.to_string(),
        })
    }
}
