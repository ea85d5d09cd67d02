//! `medpool serve`'s flags ([`ServeArgs`] and its groups: pool, SIP over TLS and TCP, media) and
//! what each group turns into for the node: the internal port's TLS material, the SIP TLS
//! listener, the TCP limits, the media options. Checked here, before anything binds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use medpool_sip::transport::tcp::TcpLimits;

use super::error::ServeError;
use crate::telemetry::LogArgs;

/// `medpool serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Pool configuration file (TOML). Default: ./medpool.toml when it exists, else an empty pool.
    #[arg(long, env = "MEDPOOL_CONFIG")]
    pub config: Option<PathBuf>,
    /// SIP listen address (UDP and TCP).
    #[arg(long, env = "MEDPOOL_SIP_LISTEN", default_value = "127.0.0.1:5060")]
    pub sip_listen: SocketAddr,
    /// Address advertised in Via and Contact (`host:port`); default: the SIP listen address.
    #[arg(long, env = "MEDPOOL_ADVERTISE")]
    pub advertise: Option<String>,
    /// Data folder (Raft log and snapshots in a pool).
    #[arg(long, env = "MEDPOOL_DATA_DIR", default_value = "./medpool-data")]
    pub data_dir: PathBuf,
    /// Number of shards of a new pool (fixed for its life).
    #[arg(long, env = "MEDPOOL_SHARDS", default_value_t = 1024, value_parser = clap::value_parser!(u16).range(1..))]
    pub shards: u16,
    /// On SIGTERM/SIGINT, send BYE to every call in progress (default: let calls and transactions finish).
    #[arg(long, env = "MEDPOOL_BYE_ON_SHUTDOWN")]
    pub bye_on_shutdown: bool,
    /// Longest wait for calls/transactions to finish at shutdown, in seconds.
    #[arg(long, env = "MEDPOOL_SHUTDOWN_GRACE", default_value_t = 10)]
    pub shutdown_grace: u64,
    /// Capacity of the inbound SIP queue; beyond it requests are answered 503.
    #[arg(long, env = "MEDPOOL_SIP_QUEUE", default_value_t = 8192)]
    pub sip_queue: usize,
    /// UDP receive loops, each on its own socket sharing the SIP address (SO_REUSEPORT): 0 (the
    /// default) = one per available core; 1 = a single socket.
    #[arg(long, env = "MEDPOOL_SIP_UDP_RECEIVERS", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub sip_udp_receivers: u16,
    /// SIP dispatcher tasks (lanes), each taking the calls a hash of their Call-ID names: 0 (the
    /// default) = one per available core; 1 = a single dispatcher.
    #[arg(long, env = "MEDPOOL_SIP_LANES", default_value_t = 0, value_parser = clap::value_parser!(u16).range(0..=64))]
    pub sip_lanes: u16,
    /// Most live SIP transactions; beyond it requests are answered 503.
    #[arg(long, env = "MEDPOOL_MAX_TRANSACTIONS", default_value_t = 1_000_000)]
    pub max_transactions: usize,
    /// SIP load balancers trusted to name a message's real source in `X-Medpool-Source` (comma-separated IPs).
    #[arg(long, env = "MEDPOOL_TRUSTED_FORWARDERS", value_delimiter = ',')]
    pub trusted_forwarders: Vec<std::net::IpAddr>,
    /// The DNS server (`IP:PORT`) trunks named by DNS are looked up at, instead of the system
    /// resolver's (`/etc/resolv.conf`).
    #[arg(long, env = "MEDPOOL_DNS_SERVER")]
    pub dns_server: Option<std::net::SocketAddr>,
    /// In traces, keep only the last two digits of phone numbers.
    #[arg(long, env = "MEDPOOL_TRACE_REDACT_NUMBERS")]
    pub trace_redact_numbers: bool,
    /// Prometheus metrics address (`GET /metrics`); off when not given.
    #[arg(long, env = "MEDPOOL_METRICS_LISTEN")]
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// SIP timer T1 in milliseconds (RFC 3261 default 500).
    #[arg(long, env = "MEDPOOL_T1_MS", default_value_t = 500)]
    pub t1_ms: u64,
    /// SIP over TCP: connection caps and timeouts.
    #[command(flatten)]
    pub sip_tcp: SipTcpArgs,
    /// SIP over TLS: certificate, key, CA and listen address.
    #[command(flatten)]
    pub sip_tls: SipTlsArgs,
    /// Pool membership (omit `--raft-listen` for the embedded single-node pool).
    #[command(flatten)]
    pub pool: PoolArgs,
    /// The media relay.
    #[command(flatten)]
    pub media: MediaArgs,
    /// The admin gRPC API.
    #[command(flatten)]
    pub admin: crate::admin::AdminArgs,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

/// Raft pool flags. A node runs in a pool when `--raft-listen` is given.
#[derive(Debug, Clone, Args)]
pub struct PoolArgs {
    /// Internal gRPC address (Raft, SIP forwarding, join): turns pool mode on.
    #[arg(long, env = "MEDPOOL_RAFT_LISTEN")]
    pub raft_listen: Option<std::net::SocketAddr>,
    /// Address other nodes reach the internal service on (default: --raft-listen).
    #[arg(long, env = "MEDPOOL_RAFT_ADVERTISE")]
    pub raft_advertise: Option<String>,
    /// This node's id (stable across restarts). Default: the ordinal of a StatefulSet hostname
    /// (`<name>-<ordinal>`), else 0.
    #[arg(long, env = "MEDPOOL_NODE_ID")]
    pub node_id: Option<u64>,
    /// Members to join through, `host:port` of their internal service, comma-separated. Empty: this
    /// node bootstraps a new pool (node 0 of a StatefulSet does; the others join `<name>-0`).
    #[arg(long, env = "MEDPOOL_JOIN", value_delimiter = ',')]
    pub join: Vec<String>,
    /// With a StatefulSet: the headless Service's domain (e.g. `medpool-peers.default.svc.cluster.local`);
    /// node id and join address are derived from the hostname.
    #[arg(long, env = "MEDPOOL_PEER_DOMAIN")]
    pub peer_domain: Option<String>,
    /// An /etc/hosts-style file whose names override DNS for internal addresses (tests that start
    /// nodes as a StatefulSet would, without Kubernetes DNS).
    #[arg(long, env = "MEDPOOL_HOSTS_FILE")]
    pub hosts_file: Option<std::path::PathBuf>,
    /// Raft voters (the first nodes); later nodes are learners. 1 to 5.
    #[arg(long, env = "MEDPOOL_VOTERS", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub voters: u8,
    /// Lease length L in milliseconds (a node heartbeats every L/4; ARCHITECTURE.md, "Leases").
    #[arg(long, env = "MEDPOOL_LEASE_MS", default_value_t = 1000)]
    pub lease_ms: u64,
    /// Margin m added to every bound on when a lease has ended, in milliseconds: before the leader
    /// declares a silent node down, and before a hand-over fence gives up waiting.
    #[arg(long, env = "MEDPOOL_LEASE_MARGIN_MS", default_value_t = 200)]
    pub lease_margin_ms: u64,
    /// Append this node's audit report to PATH (created if missing): its leases, the shards it may
    /// act for, leadership and configuration versions, one line each with Unix-microsecond times,
    /// for fault-injection tests that check at most one node acts for a shard at a time. Pool mode
    /// only; the format is documented in medpool-cluster's `audit` module.
    #[arg(long, env = "MEDPOOL_AUDIT_FILE", value_name = "PATH")]
    pub audit_file: Option<PathBuf>,
    /// Internal port (mutual TLS): this node's certificate chain, PEM. Its certificate must name
    /// `node-<id>.medpool.internal` (DNS SAN). With --internal-tls-key and --internal-tls-ca.
    #[arg(long, env = "MEDPOOL_INTERNAL_TLS_CERT", value_name = "FILE")]
    pub internal_tls_cert: Option<PathBuf>,
    /// Internal port (mutual TLS): this node's private key, PEM.
    #[arg(long, env = "MEDPOOL_INTERNAL_TLS_KEY", value_name = "FILE")]
    pub internal_tls_key: Option<PathBuf>,
    /// Internal port (mutual TLS): the pool CA's certificate, PEM (peers must present certificates
    /// it signed).
    #[arg(long, env = "MEDPOOL_INTERNAL_TLS_CA", value_name = "FILE")]
    pub internal_tls_ca: Option<PathBuf>,
    /// Serve the internal port over plain TCP on a non-loopback --raft-listen (no authentication:
    /// whoever reaches the port can control the pool). Reported in the ready line and status.
    #[arg(long, env = "MEDPOOL_INSECURE_INTERNAL")]
    pub insecure_internal: bool,
}

impl PoolArgs {
    /// The internal port's TLS material: all three files, or none. Refuses a non-loopback
    /// `raft_listen` without it unless --insecure-internal is given (checked before anything binds).
    pub(super) fn internal_tls(
        &self,
        raft_listen: SocketAddr,
    ) -> Result<Option<Arc<medpool_cluster::tls::InternalTls>>, ServeError> {
        use medpool_cluster::tls::{InternalTls, TlsFiles};
        let files = match (
            &self.internal_tls_cert,
            &self.internal_tls_key,
            &self.internal_tls_ca,
        ) {
            (None, None, None) => None,
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                ca: ca.clone(),
            }),
            (cert, key, _) => {
                return Err(ServeError::InternalTlsIncomplete {
                    missing: if cert.is_none() {
                        "--internal-tls-cert"
                    } else if key.is_none() {
                        "--internal-tls-key"
                    } else {
                        "--internal-tls-ca"
                    },
                });
            }
        };
        let Some(files) = files else {
            if !raft_listen.ip().is_loopback() && !self.insecure_internal {
                return Err(ServeError::InsecureInternal { addr: raft_listen });
            }
            return Ok(None);
        };
        InternalTls::load(files)
            .map(Some)
            .map_err(ServeError::InternalTls)
    }
}

/// SIP over TLS (RFC 3261 §26): the node's certificate, key and default CA (PEM files, re-read
/// when they change), and where it listens. No certificate: no TLS.
#[derive(Debug, Clone, Args)]
pub struct SipTlsArgs {
    /// SIP over TLS listen address; default: the SIP listen IP, port 5061, when --sip-tls-cert is
    /// given.
    #[arg(long, env = "MEDPOOL_SIP_TLS_LISTEN")]
    pub sip_tls_listen: Option<SocketAddr>,
    /// SIP over TLS: this node's certificate chain, PEM (presented to callers, and to trunks that
    /// require a client certificate). With --sip-tls-key.
    #[arg(long, env = "MEDPOOL_SIP_TLS_CERT", value_name = "FILE")]
    pub sip_tls_cert: Option<PathBuf>,
    /// SIP over TLS: this node's private key, PEM.
    #[arg(long, env = "MEDPOOL_SIP_TLS_KEY", value_name = "FILE")]
    pub sip_tls_key: Option<PathBuf>,
    /// SIP over TLS: CA certificate(s), PEM, trunks' certificates are verified against when the
    /// trunk pins none (`tls_ca`, `tls_client_ca`).
    #[arg(long, env = "MEDPOOL_SIP_TLS_CA", value_name = "FILE")]
    pub sip_tls_ca: Option<PathBuf>,
}

impl SipTlsArgs {
    /// The TLS listener's settings, `None` without a certificate; an incomplete set is an error
    /// naming the missing flag.
    pub(super) fn listen(
        &self,
        sip_listen: SocketAddr,
    ) -> Result<Option<medpool_sip::transport::TlsListen>, ServeError> {
        use medpool_sip::transport::tls::{TlsFiles, TlsMaterial};
        let (cert, key) = match (&self.sip_tls_cert, &self.sip_tls_key) {
            (None, None) => {
                return match (&self.sip_tls_listen, &self.sip_tls_ca) {
                    (None, None) => Ok(None),
                    _ => Err(ServeError::SipTlsIncomplete {
                        missing: "--sip-tls-cert",
                    }),
                };
            }
            (Some(c), Some(k)) => (c.clone(), k.clone()),
            (None, Some(_)) => {
                return Err(ServeError::SipTlsIncomplete {
                    missing: "--sip-tls-cert",
                });
            }
            (Some(_), None) => {
                return Err(ServeError::SipTlsIncomplete {
                    missing: "--sip-tls-key",
                });
            }
        };
        let material = TlsMaterial::load(TlsFiles {
            cert,
            key,
            ca: self.sip_tls_ca.clone(),
        })
        .map_err(ServeError::SipTls)?;
        Ok(Some(medpool_sip::transport::TlsListen {
            listen: Some(
                self.sip_tls_listen
                    .unwrap_or_else(|| SocketAddr::new(sip_listen.ip(), 5061)),
            ),
            material,
        }))
    }
}

/// SIP over TCP: connection caps (checked at accept) and timeouts. Defaults suit a node serving a
/// few trunks; every value must be at least 1.
#[derive(Debug, Clone, Args)]
pub struct SipTcpArgs {
    /// Inbound SIP TCP connections from addresses that are no trunk, all together.
    #[arg(long, env = "MEDPOOL_SIP_TCP_MAX_INBOUND", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub sip_tcp_max_inbound: u32,
    /// Inbound SIP TCP connections from one address that is no trunk (an IPv6 /64).
    #[arg(long, env = "MEDPOOL_SIP_TCP_MAX_PER_IP", default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..))]
    pub sip_tcp_max_per_ip: u32,
    /// Inbound SIP TCP connections from one trunk address (outside --sip-tcp-max-inbound).
    #[arg(long, env = "MEDPOOL_SIP_TCP_MAX_PER_TRUNK_IP", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub sip_tcp_max_per_trunk_ip: u32,
    /// SIP TCP connections this node opens (to gateways and trunks), a budget of their own.
    #[arg(long, env = "MEDPOOL_SIP_TCP_MAX_OUTBOUND", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub sip_tcp_max_outbound: u32,
    /// Milliseconds a SIP message may take to arrive whole over TCP, from its first byte.
    #[arg(long, env = "MEDPOOL_SIP_TCP_MESSAGE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sip_tcp_message_timeout_ms: u64,
    /// Seconds a SIP TCP connection may go without a complete message before it is closed.
    #[arg(long, env = "MEDPOOL_SIP_TCP_IDLE_TIMEOUT", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    pub sip_tcp_idle_timeout: u64,
    /// Milliseconds one SIP TCP write may take; a peer that does not read for longer is cut off.
    #[arg(long, env = "MEDPOOL_SIP_TCP_WRITE_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    pub sip_tcp_write_timeout_ms: u64,
}

impl SipTcpArgs {
    /// The SIP transport's TCP limits.
    pub fn limits(&self) -> TcpLimits {
        let n = |v: u32| usize::try_from(v).unwrap_or(usize::MAX);
        TcpLimits {
            max_inbound: n(self.sip_tcp_max_inbound),
            max_inbound_per_ip: n(self.sip_tcp_max_per_ip),
            max_inbound_per_listed_ip: n(self.sip_tcp_max_per_trunk_ip),
            max_outbound: n(self.sip_tcp_max_outbound),
            message_timeout: Duration::from_millis(self.sip_tcp_message_timeout_ms),
            idle_timeout: Duration::from_secs(self.sip_tcp_idle_timeout),
            write_timeout: Duration::from_millis(self.sip_tcp_write_timeout_ms),
            ..TcpLimits::default()
        }
    }
}

/// Media relay flags: where RTP is received and what address SDP advertises.
#[derive(Debug, Clone, Args)]
pub struct MediaArgs {
    /// Address the media relay binds its UDP ports on; default: the SIP listen address's IP.
    #[arg(long, env = "MEDPOOL_MEDIA_LISTEN")]
    pub media_listen: Option<std::net::IpAddr>,
    /// Address put in the SDP the node sends (peers send RTP to it); default: --media-listen.
    /// Behind NAT or in Kubernetes: the pod's or the host's reachable IP. Needed when media
    /// listens on 0.0.0.0 or ::, else the relay is off (SDP passes unchanged).
    #[arg(long, env = "MEDPOOL_MEDIA_ADVERTISE")]
    pub media_advertise: Option<std::net::IpAddr>,
    /// UDP port range of the relay, `LOW-HIGH` (RTP on even ports, RTCP on the next odd one; two
    /// pairs per relayed call). A full range refuses new relayed calls with 503.
    #[arg(long, env = "MEDPOOL_MEDIA_PORTS", default_value = "20000-29999", value_parser = parse_port_range)]
    pub media_ports: medpool_media::relay::PortRange,
}

impl MediaArgs {
    /// The node's media options for a node whose SIP listens on `sip_ip`; `None` (the relay off:
    /// SDP passes unchanged, with a warning) when media listens on a wildcard address (`0.0.0.0`,
    /// `::`, e.g. a container's default) and no `--media-advertise` says what peers can reach: a
    /// wildcard address in SDP would mean "do not send". An explicit wildcard `--media-advertise`
    /// is an error.
    pub fn options(
        &self,
        sip_ip: std::net::IpAddr,
    ) -> Result<Option<medpool_b2bua::node::MediaOptions>, ServeError> {
        let listen = self.media_listen.unwrap_or(sip_ip);
        let advertise = match self.media_advertise {
            Some(ip) if ip.is_unspecified() => {
                return Err(ServeError::MediaAdvertise { advertise: ip });
            }
            Some(ip) => ip,
            None if !listen.is_unspecified() => listen,
            None => {
                tracing::warn!(
                    %listen,
                    "media relay off: media listens on a wildcard address and no --media-advertise \
                     names the address peers send RTP to (SDP passes unchanged)"
                );
                return Ok(None);
            }
        };
        Ok(Some(medpool_b2bua::node::MediaOptions {
            listen: Some(listen),
            advertise: Some(advertise),
            ports: self.media_ports,
        }))
    }
}

fn parse_port_range(s: &str) -> Result<medpool_media::relay::PortRange, String> {
    medpool_media::relay::PortRange::parse(s)
        .map_err(|e| format!("{e} (expected LOW-HIGH, e.g. 20000-29999)"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn media(listen: Option<&str>, advertise: Option<&str>) -> MediaArgs {
        MediaArgs {
            media_listen: listen.map(|s| s.parse().unwrap()),
            media_advertise: advertise.map(|s| s.parse().unwrap()),
            media_ports: medpool_media::relay::PortRange::parse("20000-29999").unwrap(),
        }
    }

    #[test]
    fn media_advertises_the_listen_address_unless_it_is_a_wildcard() {
        let ip = |s: &str| -> std::net::IpAddr { s.parse().unwrap() };
        let o = media(None, None).options(ip("10.0.0.7")).unwrap().unwrap();
        assert_eq!(
            (o.listen, o.advertise),
            (Some(ip("10.0.0.7")), Some(ip("10.0.0.7")))
        );
        let o = media(Some("10.0.0.8"), None)
            .options(ip("10.0.0.7"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (o.listen, o.advertise),
            (Some(ip("10.0.0.8")), Some(ip("10.0.0.8")))
        );
        // A container listening on every address: the relay needs to be told what to advertise.
        assert!(media(None, None).options(ip("0.0.0.0")).unwrap().is_none());
        let o = media(None, Some("192.0.2.5"))
            .options(ip("0.0.0.0"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (o.listen, o.advertise),
            (Some(ip("0.0.0.0")), Some(ip("192.0.2.5")))
        );
        assert!(matches!(
            media(None, Some("::")).options(ip("10.0.0.7")),
            Err(ServeError::MediaAdvertise { .. })
        ));
    }
}
