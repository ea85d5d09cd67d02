//! SIP over TLS (RFC 3261 §26, RFC 5630): the third [`super::Transport`], carried by the same
//! connection table, framing, admission and timeouts as TCP ([`super::tcp::TcpPool`] runs a second
//! table for it), with a TLS handshake between the TCP connect or accept and the first SIP byte.
//!
//! - [`material`]: the node's certificate, key and default CA from PEM files, reloaded on change.
//! - [`verify`]: what a handshake lets in, what a connection records of its peer, and the rule a
//!   trunk's client certificate must meet.
//!
//! This module ([`TlsSide`]) keeps what the pool needs beyond TCP's: the material, how each
//! destination is verified ([`TlsPeer`], set by the user per trunk address), the labels handshakes
//! are counted under, and those counts. A handshake must finish within the TCP limits'
//! `message_timeout` of the accept (a stranger that opens a connection and says nothing loses its
//! slot then), or within `connect_timeout` of the connect.
//!
//! Layers: `verify` imports `material` (the PEM readers); `material` imports `verify` only for the
//! server's client-certificate policy — both are leaves of this module, which imports them.

pub mod material;
pub mod verify;

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

pub use rustls::pki_types::ServerName;

pub use material::{TlsError, TlsFiles, TlsMaterial};
pub use verify::{ClientRule, PeerTls};

/// How a destination's server certificate is verified, and what its handshakes are counted as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsPeer {
    /// The name sent as SNI and the certificate must be valid for (a DNS name or an IP address).
    pub name: ServerName<'static>,
    /// A CA pinned for this peer; `None`: the node's default CA.
    pub ca: Option<PathBuf>,
    /// The label its handshakes are counted under (a trunk's name).
    pub label: String,
}

/// The result label of a handshake count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HandshakeResult {
    /// Finished.
    Ok,
    /// Failed (bad certificate, protocol error, a version below 1.2, ...).
    Failed,
    /// Not finished in time.
    Timeout,
}

impl HandshakeResult {
    /// The label value: `ok`, `failed`, `timeout`.
    pub fn as_str(self) -> &'static str {
        match self {
            HandshakeResult::Ok => "ok",
            HandshakeResult::Failed => "failed",
            HandshakeResult::Timeout => "timeout",
        }
    }
}

/// The label of handshakes with a peer the user named no label for.
pub const UNKNOWN_LABEL: &str = "unknown";

/// What the TLS table of a pool keeps beyond TCP's.
#[derive(Debug)]
pub struct TlsSide {
    material: Arc<TlsMaterial>,
    /// How destinations are verified, by address (the user's trunks; bounded by its configuration).
    peers: RwLock<HashMap<SocketAddr, TlsPeer>>,
    /// Labels of inbound handshakes by peer address (bounded by the configuration).
    labels: RwLock<HashMap<IpAddr, String>>,
    /// Handshakes by (label, inbound?, result): at most (labels + 1) × 2 × 3 entries.
    handshakes: Mutex<BTreeMap<(String, bool, HandshakeResult), u64>>,
    /// Peer IPs whose requests need a client certificate meeting one of the rules (mutual TLS
    /// trunks; bounded by the configuration).
    rules: RwLock<HashMap<IpAddr, Vec<Arc<ClientRule>>>>,
    /// Requests refused for want of a matching client certificate.
    refused: std::sync::atomic::AtomicU64,
    /// Bumped whenever the rules change: a connection's cached verdict ([`ClientVerdict`]) of an
    /// older generation is taken again.
    generation: std::sync::atomic::AtomicU64,
}

/// How long a connection's verdict on its client certificate is reused before the chain is
/// verified again (a certificate that expires, or a rule's CA file that changes, is seen within
/// this long on a connection that stays open).
pub const VERDICT_REUSE: std::time::Duration = std::time::Duration::from_secs(60);

/// A connection's last verdict on its certificate: verifying the chain costs an ECDSA or RSA
/// verification per certificate, too much for every request of a connection that carries
/// thousands (it was a third of a node's CPU over kept TLS connections). Kept by the
/// connection's reader, so no lock.
#[derive(Debug, Default, Clone, Copy)]
pub struct ClientVerdict(Option<(u64, tokio::time::Instant, ClientCheck)>);

/// Whether a request over TLS may speak for the address it comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCheck {
    /// No rule for that address: the address decides, as over TCP.
    NoRule,
    /// The peer's certificate meets a rule for that address.
    Admitted,
    /// Rules exist for that address and the certificate (or its absence) meets none: answered 403.
    Refused,
}

impl TlsSide {
    /// Around the node's material.
    pub fn new(material: Arc<TlsMaterial>) -> TlsSide {
        TlsSide {
            material,
            peers: RwLock::new(HashMap::new()),
            labels: RwLock::new(HashMap::new()),
            handshakes: Mutex::new(BTreeMap::new()),
            rules: RwLock::new(HashMap::new()),
            refused: std::sync::atomic::AtomicU64::new(0),
            generation: std::sync::atomic::AtomicU64::new(1),
        }
    }

    /// Replaces the client-certificate rules: requests over TLS from a listed IP are served only
    /// when the connection's certificate meets one of its rules ([`ClientRule::admits`]).
    pub fn set_client_rules(&self, rules: impl IntoIterator<Item = (IpAddr, Arc<ClientRule>)>) {
        let mut map: HashMap<IpAddr, Vec<Arc<ClientRule>>> = HashMap::new();
        for (ip, r) in rules {
            map.entry(ip).or_default().push(r);
        }
        if let Ok(mut r) = self.rules.write() {
            *r = map;
        }
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether `ip` has client-certificate rules (a mutual TLS trunk's address).
    pub fn has_rules(&self, ip: IpAddr) -> bool {
        self.rules.read().is_ok_and(|r| r.contains_key(&ip))
    }

    /// Whether a request from `ip` on a connection whose peer is `peer` may be served.
    pub fn check_client(&self, ip: IpAddr, peer: Option<&PeerTls>) -> ClientCheck {
        self.counted(self.verdict(ip, peer))
    }

    /// [`TlsSide::check_client`] for a connection that keeps its last verdict in `cache`: the
    /// chain is verified again only when the rules changed or [`VERDICT_REUSE`] has passed.
    pub fn check_client_cached(
        &self,
        ip: IpAddr,
        peer: Option<&PeerTls>,
        cache: &mut ClientVerdict,
    ) -> ClientCheck {
        let generation = self.generation.load(std::sync::atomic::Ordering::Relaxed);
        let now = tokio::time::Instant::now();
        let check = match cache.0 {
            Some((g, at, check)) if g == generation && now.duration_since(at) < VERDICT_REUSE => {
                check
            }
            _ => {
                let check = self.verdict(ip, peer);
                cache.0 = Some((generation, now, check));
                check
            }
        };
        self.counted(check)
    }

    fn verdict(&self, ip: IpAddr, peer: Option<&PeerTls>) -> ClientCheck {
        let Ok(rules) = self.rules.read() else {
            return ClientCheck::Refused;
        };
        match rules.get(&ip) {
            None => ClientCheck::NoRule,
            Some(list) if peer.is_some_and(|p| list.iter().any(|r| r.admits(p))) => {
                ClientCheck::Admitted
            }
            Some(_) => ClientCheck::Refused,
        }
    }

    fn counted(&self, check: ClientCheck) -> ClientCheck {
        if check == ClientCheck::Refused {
            self.refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        check
    }

    /// Requests refused because the client certificate met no rule of their address.
    pub fn refused_requests(&self) -> u64 {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The node's material.
    pub fn material(&self) -> &Arc<TlsMaterial> {
        &self.material
    }

    /// Replaces how destinations are verified (see [`TlsPeer`]) and the labels of inbound
    /// handshakes by peer IP. A destination not listed is verified against the node's default CA
    /// for its IP address.
    pub fn set_peers(
        &self,
        peers: impl IntoIterator<Item = (SocketAddr, TlsPeer)>,
        labels: impl IntoIterator<Item = (IpAddr, String)>,
    ) {
        if let Ok(mut p) = self.peers.write() {
            *p = peers.into_iter().collect();
        }
        if let Ok(mut l) = self.labels.write() {
            *l = labels.into_iter().collect();
        }
    }

    /// How `dest` is verified.
    pub fn peer(&self, dest: SocketAddr) -> TlsPeer {
        self.peers
            .read()
            .ok()
            .and_then(|p| p.get(&dest).cloned())
            .unwrap_or_else(|| TlsPeer {
                name: ServerName::IpAddress(dest.ip().into()),
                ca: None,
                label: self.label(dest.ip()),
            })
    }

    /// The label of inbound handshakes from `ip`.
    pub fn label(&self, ip: IpAddr) -> String {
        self.labels
            .read()
            .ok()
            .and_then(|l| l.get(&ip).cloned())
            .unwrap_or_else(|| UNKNOWN_LABEL.to_owned())
    }

    /// Counts a handshake.
    pub fn count(&self, label: String, inbound: bool, result: HandshakeResult) {
        if let Ok(mut h) = self.handshakes.lock() {
            *h.entry((label, inbound, result)).or_default() += 1;
        }
    }

    /// Handshakes so far: (label, inbound?, result, count).
    pub fn handshakes(&self) -> Vec<(String, bool, HandshakeResult, u64)> {
        self.handshakes
            .lock()
            .map(|h| {
                h.iter()
                    .map(|((l, i, r), n)| (l.clone(), *i, *r, *n))
                    .collect()
            })
            .unwrap_or_default()
    }
}
