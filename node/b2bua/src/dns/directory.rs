//! The node's table of trunks named by DNS: each one's cached answer ([`Cache`]) and status, its
//! targets with a health handle each (probed like a gateway of its own by the node's `dns_sync`),
//! and the background task that keeps the answer fresh ([`Directory::reconcile`] starts and stops
//! one per trunk). Readers: route selection (targets in RFC 2782 order, [`Directory::expand`];
//! trunk health = any target up, [`WithTargets`]), the attempt that binds a candidate to its
//! address ([`Directory::bind`]), the source gate and the inbound trunk of a request
//! ([`Directory::add_sources`], [`Directory::trunk_for_source`]), and the admin API.
//!
//! Bounds: one entry per configured trunk with a host name; per entry at most
//! `resolver::MAX_SRV × resolver::MAX_ADDRS` targets.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use medpool_sip::transport::gate::{Budget, SourcePolicy};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::cache::{Cache, Outcome, Status};
use super::error::LookupError;
use super::resolver::{Resolver, Target};
use super::srv::{self, Weighted};
use crate::config::{Lookup, PeerAddress, PoolConfig, Transport, Trunk};
use crate::gateways::GatewayHandle;
use crate::health::{GatewayView, HealthView, InviteOutcome};
use crate::routing::{Candidate, ResolvedAddr};

/// Counters of the DNS lookups of this node (exported as metrics).
#[derive(Debug, Default)]
pub struct DnsStats {
    /// Lookups made (one per trunk name and refresh, the whole NAPTR/SRV/A chain counting once).
    pub lookups: AtomicU64,
    /// Lookups that failed (no answer, or no usable records).
    pub failures: AtomicU64,
    /// Failed lookups after which an expired answer was kept (stale).
    pub stale_kept: AtomicU64,
}

/// One resolved target and its health.
#[derive(Debug, Clone)]
pub struct TargetView {
    /// The target.
    pub target: Target,
    /// Its health (the prober's handle: up, last OPTIONS answer, round trip).
    pub health: Arc<GatewayHandle>,
}

/// What the node knows of one trunk's name.
#[derive(Debug, Clone)]
pub struct TrunkView {
    /// The trunk.
    pub trunk: String,
    /// The name looked up.
    pub host: String,
    /// Fresh, stale, unresolved or not yet looked up.
    pub status: Status,
    /// The targets in use (empty when unresolved).
    pub targets: Vec<TargetView>,
}

impl TrunkView {
    /// One line for people: `resolved`, `stale (…)`, `unresolved (…)`, `pending`.
    pub fn status_text(&self) -> String {
        match &self.status {
            Status::Pending => "pending".into(),
            Status::Fresh => "resolved".into(),
            Status::Stale { error, until } => format!(
                "stale, kept {} s more ({error})",
                until.saturating_duration_since(Instant::now()).as_secs()
            ),
            Status::Unresolved { error } => format!("unresolved ({error})"),
        }
    }
}

#[derive(Debug)]
struct Entry {
    trunk: Trunk,
    cache: Cache<Vec<Target>>,
    health: BTreeMap<(SocketAddr, u8), Arc<GatewayHandle>>,
}

fn key(t: &Target) -> (SocketAddr, u8) {
    (
        t.addr,
        match t.transport {
            Transport::Udp => 0,
            Transport::Tcp => 1,
            Transport::Tls => 2,
        },
    )
}

/// Why a candidate trunk named by DNS has no address to call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Unbound {
    /// Its name has not been looked up yet (the node just started, or the trunk just changed).
    #[error("DNS name not resolved yet")]
    Pending,
    /// Its name has no usable answer.
    #[error("DNS name unresolved: {0}")]
    Unresolved(LookupError),
    /// It has an answer, but none of its targets was in the plan (a bug, or the answer changed
    /// between route selection and the attempt).
    #[error("no resolved target")]
    NoTarget,
}

/// The trunks named by DNS of one node.
#[derive(Debug)]
pub struct Directory {
    entries: RwLock<BTreeMap<String, Entry>>,
    refreshers: Mutex<BTreeMap<String, (Trunk, AbortHandle)>>,
    resolver: Result<Resolver, String>,
    stale_max_secs: AtomicU64,
    changed: watch::Sender<u64>,
    /// Lookup counters.
    pub stats: DnsStats,
}

impl Directory {
    /// An empty directory resolving with `resolver` (an error: every name stays unresolved, with
    /// that error as the reason).
    pub fn new(resolver: Result<Resolver, String>) -> Directory {
        Directory {
            entries: RwLock::default(),
            refreshers: Mutex::default(),
            resolver,
            stale_max_secs: AtomicU64::new(u64::from(
                crate::config::NodeSettings::DEFAULT_DNS_STALE_MAX,
            )),
            changed: watch::channel(0).0,
            stats: DnsStats::default(),
        }
    }

    /// Told whenever a trunk's targets or status change.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Brings the lookups in line with `config`: a trunk with a host name that is new, or whose
    /// name, port, transport or lookup changed, is looked up afresh by a new background task; a
    /// trunk that is gone (or now has an IP literal) is stopped and forgotten. Subscribers are
    /// told in any case (the node's sync then reads the configuration now in force).
    pub fn reconcile(self: &Arc<Self>, config: &PoolConfig) {
        self.stale_max_secs
            .store(u64::from(config.node.dns_stale_max), Ordering::Relaxed);
        let wanted: BTreeMap<&str, &Trunk> = config
            .trunks
            .iter()
            .filter(|t| t.lookup != Lookup::Literal)
            .map(|t| (t.name.as_str(), t))
            .collect();
        let same = |a: &Trunk, b: &Trunk| {
            (a.address == b.address && a.port == b.port)
                && (a.transport == b.transport && a.lookup == b.lookup)
        };
        let Ok(mut refreshers) = self.refreshers.lock() else {
            return;
        };
        refreshers.retain(|name, (trunk, task)| {
            let keep = wanted.get(name.as_str()).is_some_and(|t| same(t, trunk));
            if !keep {
                task.abort();
                if let Ok(mut e) = self.entries.write() {
                    e.remove(name);
                }
            }
            keep
        });
        for (name, trunk) in wanted {
            if let Some((_, _)) = refreshers.get(name) {
                // Same name: the entry keeps its answer. Other settings changed (probing, limits):
                // its targets get new health handles, so new probers (health starts over, as for a
                // changed gateway with an IP literal).
                if let Ok(mut e) = self.entries.write()
                    && let Some(entry) = e.get_mut(name)
                    && entry.trunk != *trunk
                {
                    entry.trunk = trunk.clone();
                    let targets = entry.cache.answer().cloned().unwrap_or_default();
                    entry.health = targets
                        .iter()
                        .map(|t| {
                            (
                                key(t),
                                Arc::new(GatewayHandle::new(&target_trunk(trunk, t))),
                            )
                        })
                        .collect();
                }
                continue;
            }
            if let Ok(mut e) = self.entries.write() {
                e.insert(
                    name.to_owned(),
                    Entry {
                        trunk: trunk.clone(),
                        cache: Cache::default(),
                        health: BTreeMap::new(),
                    },
                );
            }
            let task = tokio::spawn(refresh(self.clone(), trunk.clone()));
            refreshers.insert(name.to_owned(), (trunk.clone(), task.abort_handle()));
        }
        drop(refreshers);
        self.bump();
    }

    /// Stops every background lookup (node shutdown).
    pub fn stop(&self) {
        if let Ok(mut r) = self.refreshers.lock() {
            for (_, (_, task)) in std::mem::take(&mut *r) {
                task.abort();
            }
        }
    }

    /// Folds one lookup's outcome into `trunk`'s entry; returns when to look up next.
    fn publish(&self, trunk: &Trunk, outcome: Outcome<Vec<Target>>, now: Instant) -> Instant {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        let stale_max = Duration::from_secs(self.stale_max_secs.load(Ordering::Relaxed));
        let failed = matches!(outcome, Outcome::Failed(_));
        if failed {
            self.stats.failures.fetch_add(1, Ordering::Relaxed);
        }
        let Ok(mut entries) = self.entries.write() else {
            return now + super::cache::MAX_RETRY;
        };
        let Some(entry) = entries.get_mut(&trunk.name) else {
            return now + super::cache::MAX_RETRY; // removed meanwhile: the task is being aborted
        };
        let before = (entry.cache.status().clone(), entry.cache.answer().cloned());
        let next = entry.cache.on_lookup(outcome, now, stale_max);
        let status = entry.cache.status().clone();
        let answer = entry.cache.answer().cloned().unwrap_or_default();
        // Health handles: kept for targets that stay, new for new ones, dropped for gone ones.
        let mut health = BTreeMap::new();
        for t in &answer {
            let k = key(t);
            let h = entry
                .health
                .remove(&k)
                .unwrap_or_else(|| Arc::new(GatewayHandle::new(&target_trunk(&entry.trunk, t))));
            health.insert(k, h);
        }
        entry.health = health;
        drop(entries);
        if failed && matches!(status, Status::Stale { .. }) {
            self.stats.stale_kept.fetch_add(1, Ordering::Relaxed);
        }
        let status_changed = std::mem::discriminant(&before.0) != std::mem::discriminant(&status);
        match (&status, status_changed) {
            (Status::Stale { error, until }, true) => tracing::warn!(
                trunk = %trunk.name,
                %error,
                keep_secs = until.saturating_duration_since(now).as_secs(),
                "DNS failing: keeping the trunk's expired answer (stale)"
            ),
            (Status::Unresolved { error }, true) => {
                tracing::warn!(trunk = %trunk.name, %error, "trunk name unresolved: calls skip it");
            }
            (Status::Fresh, _) if before.1.as_ref() != Some(&answer) => {
                tracing::info!(
                    trunk = %trunk.name,
                    targets = ?answer.iter().map(|t| t.addr).collect::<Vec<_>>(),
                    "trunk name resolved"
                );
            }
            _ => {}
        }
        if status_changed || before.1.as_ref() != Some(&answer) {
            self.bump();
        }
        next
    }

    /// Every trunk named by DNS, in name order.
    pub fn views(&self) -> Vec<TrunkView> {
        let Ok(entries) = self.entries.read() else {
            return Vec::new();
        };
        entries.values().map(view_of).collect()
    }

    /// One trunk's view, when it is named by DNS.
    pub fn view(&self, trunk: &str) -> Option<TrunkView> {
        self.entries.read().ok()?.get(trunk).map(view_of)
    }

    /// Whether any target of `trunk` is up; `None` when the trunk is not named by DNS or has no
    /// target (unresolved: it keeps its place in the plan, so that the call records why it was
    /// skipped there).
    fn any_target_up(&self, trunk: &str) -> Option<bool> {
        let entries = self.entries.read().ok()?;
        let e = entries.get(trunk)?;
        (!e.health.is_empty()).then(|| e.health.values().any(|h| h.is_up()))
    }

    /// The plan with each candidate trunk named by DNS replaced by its targets, in RFC 2782 order
    /// (up first, then SRV priority, then weighted draws from `random`), and cut to `max_tries`
    /// attempts. A trunk without targets stays as one candidate without an address: its attempt
    /// records why it was skipped ([`Directory::bind`]).
    pub fn expand(&self, plan: Vec<Candidate>, random: u64, max_tries: u32) -> Vec<Candidate> {
        let Ok(entries) = self.entries.read() else {
            return plan;
        };
        let mut out = Vec::with_capacity(plan.len());
        for (i, cand) in plan.into_iter().enumerate() {
            let Some(e) = entries.get(&cand.trunk) else {
                out.push(cand);
                continue;
            };
            let targets: Vec<Ranked> = e
                .cache
                .answer()
                .into_iter()
                .flatten()
                .map(|t| Ranked {
                    up: e.health.get(&key(t)).is_none_or(|h| h.is_up()),
                    target: t.clone(),
                })
                .collect();
            if targets.is_empty() {
                out.push(cand);
                continue;
            }
            let seed = random.wrapping_add(i as u64);
            for r in srv::order(targets, seed) {
                out.push(Candidate {
                    up: cand.up && r.up,
                    resolved: Some(ResolvedAddr {
                        addr: r.target.addr,
                        transport: r.target.transport,
                    }),
                    ..cand.clone()
                });
            }
        }
        out.truncate(usize::try_from(max_tries.max(1)).unwrap_or(usize::MAX));
        out
    }

    /// The trunk an attempt on `cand` calls: `trunk` itself for an IP literal; for a trunk named
    /// by DNS, a copy addressed to the candidate's resolved target (address, port, transport);
    /// or why there is none.
    pub fn bind(&self, trunk: &Trunk, cand: &Candidate) -> Result<Trunk, Unbound> {
        if trunk.lookup == Lookup::Literal {
            return Ok(trunk.clone());
        }
        if let Some(r) = cand.resolved {
            let mut bound = trunk.clone();
            bound.address = PeerAddress::Ip(r.addr.ip());
            bound.port = r.addr.port();
            bound.transport = r.transport;
            bound.lookup = Lookup::Literal;
            return Ok(bound);
        }
        match self.view(&trunk.name).map(|v| v.status) {
            Some(Status::Unresolved { error }) => Err(Unbound::Unresolved(error)),
            Some(Status::Pending) | None => Err(Unbound::Pending),
            Some(_) => Err(Unbound::NoTarget),
        }
    }

    /// The host of the Request-URI and To of calls to `trunk` (RFC 3263: the name stays in the
    /// URI, the INVITE goes to the resolved address): the name, with the trunk's port when it
    /// gave one (A/AAAA only); `None` for an IP literal.
    pub fn uri_host(trunk: &Trunk) -> Option<String> {
        let name = trunk.address.to_string();
        let name = name.strip_suffix('.').unwrap_or(&name);
        match trunk.lookup {
            Lookup::Literal => None,
            Lookup::Address => Some(format!("{name}:{}", trunk.port)),
            Lookup::Naptr | Lookup::Srv => Some(name.to_owned()),
        }
    }

    /// Reports an INVITE outcome to the prober of the target at `peer` of `trunk` (passive
    /// health); false when `trunk` is not named by DNS or `peer` is none of its targets.
    pub fn invite_outcome(&self, trunk: &str, peer: SocketAddr, outcome: InviteOutcome) -> bool {
        let Ok(entries) = self.entries.read() else {
            return false;
        };
        let Some(e) = entries.get(trunk) else {
            return false;
        };
        let Some(h) = e
            .health
            .iter()
            .find(|((a, _), _)| *a == peer)
            .map(|(_, h)| h)
        else {
            return true; // a DNS trunk, the target gone since: nobody to tell
        };
        if let Ok(a) = h.actor.lock()
            && let Some(a) = a.as_ref()
        {
            let _ = a.send_message(outcome);
        }
        true
    }

    /// Every target's health handle with the trunk it was made for (probers are started for
    /// these), in trunk order.
    pub fn probe_targets(&self) -> Vec<(Trunk, Target, Arc<GatewayHandle>)> {
        let Ok(entries) = self.entries.read() else {
            return Vec::new();
        };
        entries
            .values()
            .flat_map(|e| {
                e.cache.answer().into_iter().flatten().filter_map(|t| {
                    e.health
                        .get(&key(t))
                        .map(|h| (target_trunk(&e.trunk, t), t.clone(), h.clone()))
                })
            })
            .collect()
    }

    /// Adds every resolved address of the trunks named by DNS to `policy` with the trunk's budget:
    /// each target's `ip:port`, and its IP on any port when the trunk has `match_any_port`. An
    /// address a trunk with an IP literal already has stays that trunk's.
    /// A trunk that requires a client certificate is left out: its addresses are served only over
    /// mutual TLS ([`crate::sources::tls_view`] gives the TLS door their rules).
    pub fn add_sources(&self, config: &PoolConfig, policy: &mut SourcePolicy) {
        for (trunk, addr) in self.resolved_sources(config) {
            if config.trunk_for_source(addr.ip(), addr.port()).is_some()
                || trunk.tls.requires_client_cert()
            {
                continue;
            }
            let budget = Budget {
                rate: trunk.rate,
                burst: trunk.burst,
            };
            policy.add_exact(addr, budget);
            if trunk.match_any_port {
                policy.add_any_port(addr.ip(), budget);
            }
        }
    }

    /// The IPs of every resolved target (the TCP door gives them a connection cap of their own).
    pub fn ips(&self) -> Vec<IpAddr> {
        let Ok(entries) = self.entries.read() else {
            return Vec::new();
        };
        let mut ips: Vec<IpAddr> = entries
            .values()
            .flat_map(|e| e.cache.answer().into_iter().flatten().map(|t| t.addr.ip()))
            .collect();
        ips.sort();
        ips.dedup();
        ips
    }

    /// Every resolved target of the trunks named by DNS, with its trunk.
    pub fn resolved_sources<'c>(&self, config: &'c PoolConfig) -> Vec<(&'c Trunk, SocketAddr)> {
        let Ok(entries) = self.entries.read() else {
            return Vec::new();
        };
        config
            .trunks
            .iter()
            .filter_map(|t| entries.get(&t.name).map(|e| (t, e)))
            .flat_map(|(t, e)| {
                e.cache
                    .answer()
                    .into_iter()
                    .flatten()
                    .map(move |target| (t, target.addr))
            })
            .collect()
    }

    /// The trunk a request from `ip:port` arrived on: a trunk with an IP literal as
    /// [`PoolConfig::trunk_for_source`] finds it; else the first trunk (file order) one of whose
    /// resolved targets is `ip:port`; else the first with a target on `ip` and `match_any_port`.
    pub fn trunk_for_source<'c>(
        &self,
        config: &'c PoolConfig,
        ip: IpAddr,
        port: u16,
    ) -> Option<&'c Trunk> {
        if let Some(t) = config.trunk_for_source(ip, port) {
            return Some(t);
        }
        let ip = ip.to_canonical();
        let sources = self.resolved_sources(config);
        let same_ip = |a: &SocketAddr| a.ip().to_canonical() == ip;
        sources
            .iter()
            .find(|(_, a)| same_ip(a) && a.port() == port)
            .or_else(|| sources.iter().find(|(t, a)| same_ip(a) && t.match_any_port))
            .map(|(t, _)| *t)
    }

    /// The name of the trunk `ip` is an address of (literal or resolved), whatever the port.
    pub fn trunk_of_ip<'c>(&self, config: &'c PoolConfig, ip: IpAddr) -> Option<&'c str> {
        let ip = ip.to_canonical();
        config
            .trunks
            .iter()
            .find(|t| t.address.ip().map(|a| a.to_canonical()) == Some(ip))
            .or_else(|| {
                self.resolved_sources(config)
                    .into_iter()
                    .find(|(_, a)| a.ip().to_canonical() == ip)
                    .map(|(t, _)| t)
            })
            .map(|t| t.name.as_str())
    }

    /// Test hook: `trunk` (named by DNS) has resolved to `targets`.
    #[cfg(test)]
    pub(crate) fn set_answer(&self, trunk: &Trunk, targets: Vec<Target>) {
        if let Ok(mut e) = self.entries.write() {
            e.entry(trunk.name.clone()).or_insert_with(|| Entry {
                trunk: trunk.clone(),
                cache: Cache::default(),
                health: BTreeMap::new(),
            });
        }
        self.publish(
            trunk,
            Outcome::Answer {
                value: targets,
                ttl: Duration::from_secs(60),
            },
            Instant::now(),
        );
    }

    /// The resolver, or why there is none.
    fn resolver(&self) -> Result<Resolver, LookupError> {
        self.resolver.clone().map_err(|detail| LookupError::Server {
            name: String::new(),
            detail,
        })
    }
}

fn view_of(e: &Entry) -> TrunkView {
    TrunkView {
        trunk: e.trunk.name.clone(),
        host: e.trunk.address.to_string(),
        status: e.cache.status().clone(),
        targets: e
            .cache
            .answer()
            .into_iter()
            .flatten()
            .filter_map(|t| {
                e.health.get(&key(t)).map(|h| TargetView {
                    target: t.clone(),
                    health: h.clone(),
                })
            })
            .collect(),
    }
}

/// The trunk a target's prober works with: the DNS trunk's settings, addressed to the target, and
/// named `trunk@ip:port` in its logs and events.
pub fn target_trunk(trunk: &Trunk, t: &Target) -> Trunk {
    let mut probe = trunk.clone();
    probe.name = format!("{}@{}", trunk.name, t.addr);
    probe.address = PeerAddress::Ip(t.addr.ip());
    probe.port = t.addr.port();
    probe.transport = t.transport;
    probe.lookup = Lookup::Literal;
    probe
}

struct Ranked {
    target: Target,
    up: bool,
}

impl Weighted for Ranked {
    fn priority(&self) -> u16 {
        self.target.priority
    }
    fn weight(&self) -> u16 {
        self.target.weight
    }
    fn up(&self) -> bool {
        self.up
    }
}

/// Route selection's view of the gateways with the trunks named by DNS: such a trunk is up when
/// any of its targets is (one without targets keeps the gateway table's view).
#[derive(Debug)]
pub struct WithTargets<'a, H> {
    /// The gateway table.
    pub gateways: &'a H,
    /// The DNS directory.
    pub dns: &'a Directory,
}

impl<H: HealthView> HealthView for WithTargets<'_, H> {
    fn view(&self, trunk: &str) -> GatewayView {
        let mut v = self.gateways.view(trunk);
        if let Some(up) = self.dns.any_target_up(trunk) {
            v.up = up;
        }
        v
    }
}

/// One trunk's lookups, until aborted: look up, publish, wait until the answer expires (or the
/// retry after a failure), again.
async fn refresh(dir: Arc<Directory>, trunk: Trunk) {
    loop {
        let outcome = match dir.resolver() {
            Ok(r) => r.lookup(&trunk).await,
            Err(mut e) => {
                if let LookupError::Server { name, .. } = &mut e {
                    *name = trunk.address.to_string();
                }
                Outcome::Failed(e)
            }
        };
        let next = dir.publish(&trunk, outcome, Instant::now());
        tokio::time::sleep_until(next).await;
    }
}

#[cfg(test)]
#[path = "directory_tests.rs"]
mod tests;
