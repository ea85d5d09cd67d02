//! Trunk ports (M:N trunking, one port per trunk, as a Mediation Server pool has them): the ports a
//! node binds beside its main SIP listener for the trunks that name a `local_port`, the checks of
//! those ports against the node's own (main listener, media range), the node's identity on each
//! ([`identities`]: Via, Contact and probes towards the trunk carry the port), and the wire that
//! sends every message towards a trunk from its port ([`TrunkWire`]).
//!
//! Every node of a pool binds every trunk port, on its own SIP IP (the same configuration runs on
//! every pod of a StatefulSet), or on the trunk's `local_address` when it gives one. A call keeps
//! its legs' ports in its record, so the node that takes it over speaks to the trunk from the same
//! port. Which socket a message leaves from is chosen by where it goes: a message to an address of
//! a trunk with a bound port leaves from that port, anything else from the main listener.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock, Weak};

use bytes::Bytes;
use medpool_sip::transport::tcp::TcpPool;
use medpool_sip::transport::{FrontDoorStats, Transport, TransportError, Transports};

use crate::config::PoolConfig;
use crate::ctx::{Me, NodeCtx};
use crate::txlayer::Wire;

/// One port a node binds for a trunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkPort {
    /// The trunk's `local_port`.
    pub port: u16,
    /// Where the node binds it (UDP and TCP).
    pub bind: SocketAddr,
    /// Whether the trunk gave its own `local_address` (then it is also what peers are told).
    pub explicit: bool,
    /// The trunk's index in the configuration (for errors: `trunk[i].local_port`).
    pub index: usize,
    /// The trunk's name.
    pub trunk: String,
}

/// A trunk port the node cannot take.
#[derive(Debug, thiserror::Error)]
pub enum PortClash {
    /// The port is the main SIP listener's.
    #[error(
        "trunk[{index}].local_port: {port} (trunk {trunk:?}) is the node's main SIP port ({listen}); give the trunk a port of its own"
    )]
    MainListener {
        /// The trunk's index.
        index: usize,
        /// The trunk's name.
        trunk: String,
        /// The port.
        port: u16,
        /// The main listener.
        listen: SocketAddr,
    },
    /// The port is inside the media relay's port range.
    #[error(
        "trunk[{index}].local_port: {port} (trunk {trunk:?}) is inside the media port range {low}-{high}"
    )]
    MediaRange {
        /// The trunk's index.
        index: usize,
        /// The trunk's name.
        trunk: String,
        /// The port.
        port: u16,
        /// The range's first port.
        low: u16,
        /// The range's last port.
        high: u16,
    },
}

impl PortClash {
    /// The configuration field at fault (`trunk[i].local_port`).
    pub fn field(&self) -> String {
        match self {
            PortClash::MainListener { index, .. } | PortClash::MediaRange { index, .. } => {
                format!("trunk[{index}].local_port")
            }
        }
    }
}

/// The ports a node listening for SIP on `listen` (with media on `media`, `low..=high`, if any)
/// binds for the trunks of `config`, in port order. The configuration already refused two trunks
/// with one port.
pub fn plan(
    config: &PoolConfig,
    listen: SocketAddr,
    media: Option<(u16, u16)>,
) -> Result<Vec<TrunkPort>, PortClash> {
    let mut ports = Vec::new();
    for (index, t) in config.trunks.iter().enumerate() {
        let Some(port) = t.local_port else {
            continue;
        };
        let ip = t.local_address.unwrap_or(listen.ip());
        let same_ip = ip == listen.ip() || ip.is_unspecified() || listen.ip().is_unspecified();
        if port == listen.port() && same_ip {
            return Err(PortClash::MainListener {
                index,
                trunk: t.name.clone(),
                port,
                listen,
            });
        }
        if let Some((low, high)) = media
            && (low..=high).contains(&port)
        {
            return Err(PortClash::MediaRange {
                index,
                trunk: t.name.clone(),
                port,
                low,
                high,
            });
        }
        ports.push(TrunkPort {
            port,
            bind: SocketAddr::new(ip, port),
            explicit: t.local_address.is_some(),
            index,
            trunk: t.name.clone(),
        });
    }
    ports.sort_by_key(|p| p.port);
    Ok(ports)
}

/// `host:port` with the port replaced (`[v6]:p` stays bracketed).
fn with_port(hostport: &str, port: u16) -> String {
    let host = hostport.rsplit_once(':').map_or(hostport, |(h, _)| h);
    // A bare IPv6 literal has colons but no brackets: it has no port to cut.
    let host = if host.contains(':') && !host.starts_with('[') {
        hostport
    } else {
        host
    };
    format!("{host}:{port}")
}

/// The node's identity on each bound trunk port: the main identity's hosts (the advertised one for
/// Via and Contact, the node's own for probes) with the trunk's port; the trunk's `local_address`
/// for both when it gave one.
pub fn identities(main: &Me, bound: &[TrunkPort]) -> BTreeMap<u16, Me> {
    bound
        .iter()
        .map(|p| {
            let me = if p.explicit {
                Me {
                    hostport: p.bind.to_string(),
                    local: p.bind.to_string(),
                    ..Me::default()
                }
            } else {
                Me {
                    hostport: with_port(&main.hostport, p.port),
                    local: with_port(&main.local, p.port),
                    ..Me::default()
                }
            };
            (p.port, me)
        })
        .collect()
}

/// The node's wire: the main listener's transports and one set per bound trunk port; a message
/// leaves from the port of the trunk it goes to.
pub struct TrunkWire {
    main: Transports,
    ports: BTreeMap<u16, Transports>,
    ctx: OnceLock<Weak<NodeCtx>>,
}

impl std::fmt::Debug for TrunkWire {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkWire")
            .field("ports", &self.ports.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl TrunkWire {
    /// The wire over the main transports and the trunk ports' (by port).
    pub fn new(main: Transports, ports: BTreeMap<u16, Transports>) -> TrunkWire {
        TrunkWire {
            main,
            ports,
            ctx: OnceLock::new(),
        }
    }

    /// Gives the wire the node whose configuration and DNS answers say which trunk an address is
    /// (set once, after the context exists; until then everything leaves from the main listener).
    pub fn attach(&self, ctx: &Arc<NodeCtx>) {
        let _ = self.ctx.set(Arc::downgrade(ctx));
    }

    /// The transports of a bound trunk port.
    pub fn port(&self, port: u16) -> Option<&Transports> {
        self.ports.get(&port)
    }

    /// The trunk port messages to `dest` leave from: its trunk's (an IP literal or a resolved
    /// address; the exact address first, then any trunk at that IP) when the node bound it.
    pub fn port_toward(&self, dest: SocketAddr) -> Option<u16> {
        if self.ports.is_empty() {
            return None;
        }
        let ctx = self.ctx.get().and_then(Weak::upgrade)?;
        let config = ctx.config();
        port_toward(&config, &ctx.dns, dest).filter(|p| self.ports.contains_key(p))
    }

    fn toward(&self, dest: SocketAddr) -> &Transports {
        self.port_toward(dest)
            .and_then(|p| self.ports.get(&p))
            .unwrap_or(&self.main)
    }
}

/// The `local_port` of the trunk `dest` is an address of, if it has one.
pub fn port_toward(
    config: &PoolConfig,
    dns: &crate::dns::Directory,
    dest: SocketAddr,
) -> Option<u16> {
    dns.trunk_for_source(config, dest.ip(), dest.port())
        .or_else(|| {
            dns.trunk_of_ip(config, dest.ip())
                .and_then(|name| config.trunk(name))
        })
        .and_then(|t| t.local_port)
}

impl Wire for TrunkWire {
    fn send_now(
        &self,
        transport: Transport,
        dest: SocketAddr,
        bytes: Bytes,
    ) -> Result<(), TransportError> {
        // Trunk ports are UDP and TCP: TLS always leaves from the node's TLS listener.
        if transport == Transport::Tls {
            return self.main.send_now(transport, dest, bytes);
        }
        self.toward(dest).send_now(transport, dest, bytes)
    }
    fn stats(&self) -> &FrontDoorStats {
        self.main.stats()
    }
    fn tcp(&self) -> Option<&TcpPool> {
        Some(self.main.tcp())
    }
    fn tls(&self) -> Option<&TcpPool> {
        self.main.tls()
    }
    fn set_listed_ips(&self, ips: Vec<IpAddr>) {
        if let Some(tls) = self.main.tls() {
            tls.set_listed_ips(ips.iter().copied());
        }
        for t in self.ports.values() {
            t.tcp().set_listed_ips(ips.iter().copied());
        }
        self.main.tcp().set_listed_ips(ips);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const TRUNKS: &str = r#"
[[trunk]]
name = "pbx"
address = "127.0.160.10"
side = "internal"

[[trunk]]
name = "gw1"
address = "127.0.160.21"
side = "gateway"
local_port = 5071

[[trunk]]
name = "gw2"
address = "127.0.160.22"
side = "gateway"
local_port = 5072
local_address = "127.0.160.7"
"#;

    fn config(text: &str) -> PoolConfig {
        PoolConfig::from_toml_str(text, "test.toml").unwrap()
    }

    #[test]
    fn each_trunk_port_is_bound_on_the_node_ip_or_the_trunks_own_address() {
        let listen: SocketAddr = "127.0.160.1:5060".parse().unwrap();
        let ports = plan(&config(TRUNKS), listen, Some((20_000, 20_999))).unwrap();
        assert_eq!(
            ports
                .iter()
                .map(|p| (p.port, p.bind.to_string(), p.explicit))
                .collect::<Vec<_>>(),
            vec![
                (5071, "127.0.160.1:5071".to_owned(), false),
                (5072, "127.0.160.7:5072".to_owned(), true),
            ]
        );
    }

    #[test]
    fn a_trunk_port_on_the_main_listener_is_refused_naming_the_field() {
        let listen: SocketAddr = "127.0.160.1:5071".parse().unwrap();
        let e = plan(&config(TRUNKS), listen, None).unwrap_err();
        assert_eq!(e.field(), "trunk[1].local_port");
        assert!(
            e.to_string().starts_with("trunk[1].local_port: 5071"),
            "{e}"
        );
        // A wildcard main listener takes the port on every address.
        let listen: SocketAddr = "0.0.0.0:5072".parse().unwrap();
        let e = plan(&config(TRUNKS), listen, None).unwrap_err();
        assert_eq!(e.field(), "trunk[2].local_port");
        // The same port on another address of the node is fine.
        let listen: SocketAddr = "127.0.160.1:5072".parse().unwrap();
        assert_eq!(plan(&config(TRUNKS), listen, None).unwrap().len(), 2);
    }

    #[test]
    fn a_trunk_port_inside_the_media_range_is_refused_naming_the_field() {
        let listen: SocketAddr = "127.0.160.1:5060".parse().unwrap();
        let e = plan(&config(TRUNKS), listen, Some((5000, 5071))).unwrap_err();
        assert!(matches!(e, PortClash::MediaRange { port: 5071, .. }), "{e}");
        assert_eq!(e.field(), "trunk[1].local_port");
    }

    #[test]
    fn the_identity_on_a_trunk_port_keeps_the_nodes_hosts_with_the_trunks_port() {
        let listen: SocketAddr = "127.0.160.1:5060".parse().unwrap();
        let ports = plan(&config(TRUNKS), listen, None).unwrap();
        let main = Me {
            hostport: "sip.example.net:5060".into(),
            local: "127.0.160.1:5060".into(),
            ..Me::default()
        };
        let ids = identities(&main, &ports);
        assert_eq!(ids[&5071].hostport, "sip.example.net:5071");
        assert_eq!(ids[&5071].local, "127.0.160.1:5071");
        assert_eq!(ids[&5072].hostport, "127.0.160.7:5072");
        let main = Me {
            trunk_ports: Arc::new(ids),
            ..main
        };
        assert_eq!(main.on(Some(5071)).hostport, "sip.example.net:5071");
        assert_eq!(main.on(Some(5999)).hostport, "sip.example.net:5060");
        assert_eq!(main.on(None).hostport, "sip.example.net:5060");
        assert_eq!(main.bound(Some(5999)), None);
        assert_eq!(main.bound(Some(5072)), Some(5072));
        assert_eq!(with_port("[::1]:5060", 5071), "[::1]:5071");
    }

    #[test]
    fn messages_to_a_trunk_go_from_its_port_and_others_from_the_main_listener() {
        let c = config(TRUNKS);
        let dns = crate::dns::Directory::new(Err("no DNS in this test".into()));
        let at = |s: &str| port_toward(&c, &dns, s.parse().unwrap());
        assert_eq!(at("127.0.160.21:5060"), Some(5071));
        // Another port of the gateway's address (its Contact, say): still the trunk.
        assert_eq!(at("127.0.160.21:5999"), Some(5071));
        assert_eq!(at("127.0.160.22:5060"), Some(5072));
        assert_eq!(at("127.0.160.10:40000"), None);
        assert_eq!(at("127.0.160.99:5060"), None);
    }
}
