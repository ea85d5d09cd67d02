//! `medpool serve`: its flags, and running a node. [`run`] loads the configuration, starts the node
//! (B2BUA, pool when `--raft-listen` is given, admin API, metrics), waits for the caller's shutdown
//! future (SIGTERM/SIGINT in the binary, a test's trigger in process) or a fatal Raft failure, and
//! shuts down through the node's single shutdown path. Nothing here installs signal handlers.
//!
//! The pool configuration is kept equal to the pool's replicated one by [`config_sync`], which wakes
//! on every change of the pool's Raft metrics (an applied entry, a new leader) instead of polling.

use std::sync::Arc;
use std::time::Duration;

use medpool_b2bua::cluster::{NoRelay, SingleNode};
use medpool_b2bua::config::{ConfigError, PoolConfig};
use medpool_b2bua::node::{self, NodeCtx, NodeError, NodeOptions};
use medpool_cluster::pool::{Pool, PoolOptions};
use medpool_cluster::{Command, NodeAddrs};

use medpool_sip::transaction::TimerConfig;
use medpool_sip::transport::TransportConfig;
use medpool_sip::transport::tcp::TcpLimits;
use openraft::async_runtime::watch::WatchReceiver;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

use crate::admin::{AdminListener, AdminServer};
use crate::pool::{NodeSink, PoolAdapter};
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
    fn internal_tls(
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
    fn listen(
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

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad configuration (the message names file, line and field).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The data folder cannot be used.
    #[error("data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The node could not start.
    #[error("{0}")]
    Node(#[from] NodeError),
    /// The metrics port could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The pool could not start.
    #[error("{0}")]
    Pool(medpool_cluster::pool::PoolError),
    /// A non-loopback internal address without TLS material or --insecure-internal.
    #[error(
        "--raft-listen {addr} is not a loopback address: give the internal port's TLS material \
         (--internal-tls-cert, --internal-tls-key, --internal-tls-ca) or allow plain TCP \
         explicitly with --insecure-internal"
    )]
    InsecureInternal {
        /// The internal address.
        addr: SocketAddr,
    },
    /// Some of the internal TLS flags are given, not all.
    #[error(
        "{missing} is missing: the internal port's TLS needs --internal-tls-cert, \
         --internal-tls-key and --internal-tls-ca together"
    )]
    InternalTlsIncomplete {
        /// The flag not given.
        missing: &'static str,
    },
    /// SIP TLS flags given without the certificate or key.
    #[error("SIP over TLS needs {missing} (--sip-tls-cert and --sip-tls-key go together)")]
    SipTlsIncomplete {
        /// The flag missing.
        missing: &'static str,
    },
    /// The SIP TLS material cannot be used (the message names the file).
    #[error("SIP TLS (--sip-tls-cert/--sip-tls-key/--sip-tls-ca): {0}")]
    SipTls(medpool_sip::transport::tls::TlsError),
    /// The internal TLS material cannot be used (the message names the file).
    #[error("internal TLS (--internal-tls-cert/--internal-tls-key/--internal-tls-ca): {0}")]
    InternalTls(medpool_cluster::tls::TlsError),
    /// This node's certificate does not name its node id.
    #[error(
        "--internal-tls-cert {cert}: the certificate is not valid for {name} (node {node}'s name)"
    )]
    InternalTlsWrongNode {
        /// The certificate file.
        cert: String,
        /// The name it must carry.
        name: String,
        /// This node's id.
        node: u64,
    },
    /// The pool's Raft stopped on a fatal error (its store could not be written).
    #[error(
        "the pool's Raft store in {data_dir} failed ({why}): stopped so that the other nodes take this node's shards over"
    )]
    RaftFailed {
        /// The data folder.
        data_dir: String,
        /// The error.
        why: String,
    },
    /// The admin API could not start.
    #[error("{0}")]
    Admin(#[from] crate::admin::AdminStartError),
    /// `--media-advertise` is a wildcard address (peers cannot send to it).
    #[error(
        "--media-advertise {advertise}: a wildcard address in SDP means \"do not send\"; give the address peers send RTP to"
    )]
    MediaAdvertise {
        /// The address given.
        advertise: std::net::IpAddr,
    },
}

fn load_config(args: &ServeArgs) -> Result<PoolConfig, ConfigError> {
    match &args.config {
        Some(path) => PoolConfig::load(path),
        None if std::path::Path::new("medpool.toml").exists() => PoolConfig::load("medpool.toml"),
        None => Ok(PoolConfig::default_embedded()),
    }
}

/// What a node listens on that must be bound before it starts: the admin API's port (the pool
/// records its real address, so it is bound before the pool starts). SIP and the internal service
/// are bound by the node and the pool themselves.
pub struct Listeners {
    /// The admin API.
    pub admin: AdminListener,
}

impl Listeners {
    /// Binds what `args` names (`--admin-listen`, default next to the SIP address).
    pub async fn bind(args: &ServeArgs) -> Result<Listeners, ServeError> {
        Ok(Listeners {
            admin: crate::admin::bind(&args.admin, args.sip_listen).await?,
        })
    }
}

/// A started node: what [`run`] waits on. Addresses are the bound ones (port 0 resolved).
pub struct Serving {
    running: node::RunningNode,
    pool: Option<Arc<Pool>>,
    admin: AdminServer,
    data_dir: PathBuf,
    shutdown_grace: Duration,
    bye_on_shutdown: bool,
}

impl Serving {
    /// The SIP address the node listens on.
    pub fn sip_addr(&self) -> SocketAddr {
        self.running.sip_addr
    }

    /// The admin API's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.addr
    }

    /// Runs until `shutdown` completes (or the pool's Raft fails), then shuts the node down: calls
    /// and transactions finish (at most `--shutdown-grace`), the admin API stops, the last dialog
    /// records are written and the pool stops.
    pub async fn until(self, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
        let Serving {
            running,
            pool,
            admin,
            data_dir,
            shutdown_grace,
            bye_on_shutdown,
        } = self;
        let raft_failed = async {
            match &pool {
                Some(p) => p.fatal().await,
                None => std::future::pending().await,
            }
        };
        let mut failure = None;
        tokio::select! {
            () = shutdown => {}
            why = raft_failed => {
                tracing::error!(
                    error = %why,
                    data_dir = %data_dir.display(),
                    "the pool's Raft store failed: this node stops so that the others take its shards \
                     over; fix the cause (e.g. free space in the data folder) and start it again"
                );
                failure = Some(why);
            }
        }
        running.shutdown(shutdown_grace, bye_on_shutdown).await;
        admin.shutdown().await;
        if let Some(pool) = pool {
            // Records of calls answered in the last instant (still in the group commit) go out first;
            // when this node's own Raft failed they still go through the leader.
            let unwritten = pool.flush_dialogs(Duration::from_secs(3)).await;
            if unwritten > 0 {
                tracing::warn!(
                    records = unwritten,
                    "dialog records not written before stopping"
                );
            }
            let _ = tokio::time::timeout(Duration::from_secs(5), pool.shutdown()).await;
        }
        match failure {
            Some(why) => Err(ServeError::RaftFailed {
                data_dir: data_dir.display().to_string(),
                why,
            }),
            None => Ok(()),
        }
    }
}

/// Runs a node on `listeners` until `shutdown` completes: [`start`], then [`Serving::until`].
pub async fn run(
    args: ServeArgs,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    start(args, listeners).await?.until(shutdown).await
}

/// Starts a node: configuration, data folder, the B2BUA, the pool when `--raft-listen` is given,
/// metrics, the admin API. Prints the `medpool ready` line when it serves.
pub async fn start(args: ServeArgs, listeners: Listeners) -> Result<Serving, ServeError> {
    let config = load_config(&args)?;
    std::fs::create_dir_all(&args.data_dir).map_err(|source| ServeError::DataDir {
        path: args.data_dir.display().to_string(),
        source,
    })?;
    // The flag wins; else the pool configuration's `[node] advertised_address` (e.g. a Service address).
    let advertise = args.advertise.clone().or_else(|| {
        config
            .node
            .advertised_address
            .as_ref()
            .map(ToString::to_string)
    });
    let media = args.media.options(args.sip_listen.ip())?;
    let opts = NodeOptions {
        sip: TransportConfig {
            listen: args.sip_listen,
            queue: args.sip_queue,
            retry_after_secs: config.node.retry_after,
            tcp: args.sip_tcp.limits(),
            tls: args.sip_tls.listen(args.sip_listen)?,
            udp_receivers: match args.sip_udp_receivers {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => usize::from(n),
            },
            lanes: match args.sip_lanes {
                0 => std::thread::available_parallelism().map_or(1, usize::from),
                n => usize::from(n),
            },
            ..TransportConfig::default()
        },
        advertise,
        timers: TimerConfig {
            t1: Duration::from_millis(args.t1_ms.max(1)),
            ..TimerConfig::default()
        },
        max_transactions: args.max_transactions,
        trusted_forwarders: args.trusted_forwarders.clone(),
        redact_numbers: args.trace_redact_numbers,
        media,
        dns_server: args.dns_server,
    };
    let trunks = config.trunks.len();
    let routes = config.routes.len();
    let config_text = args
        .config
        .as_ref()
        .and_then(|p| std::fs::read_to_string(p).ok());
    let admin_listener = listeners.admin;
    let (running, pool) = match args.pool.raft_listen {
        None => {
            let single = Arc::new(SingleNode::alone(args.shards));
            let running =
                node::start(opts, config, single.clone(), single, Arc::new(NoRelay)).await?;
            (running, None)
        }
        Some(raft_listen) => {
            // Connections to peers leave from the internal address (what peers and firewalls expect).
            medpool_cluster::network::set_source_address(raft_listen.ip());
            let mut pool_opts = pool_options(&args, raft_listen)?;
            let raft_host = pool_opts
                .addrs
                .raft_addr
                .rsplit_once(':')
                .map(|(h, _)| h.to_owned());
            pool_opts.addrs.admin_addr = admin_listener.advertised(raft_host.as_deref());
            let pool = Pool::start(pool_opts).await.map_err(ServeError::Pool)?;
            let adapter = Arc::new(PoolAdapter { pool: pool.clone() });
            let running =
                node::start(opts, config, adapter.clone(), adapter.clone(), adapter).await?;
            // Gateway capacity is the pool's (shares, replicated gateway states) before the node
            // acts for any shard: the shard watcher starts with `attach`.
            running
                .ctx
                .gateways
                .capacity
                .attach(Arc::new(crate::capacity::PoolCapacity {
                    pool: pool.clone(),
                }));
            let sink = Arc::new(NodeSink::default());
            let _ = sink.node.set(running.ctx.clone());
            tokio::spawn(crate::capacity::settle_task(
                pool.clone(),
                running.ctx.clone(),
                sink.adoptions.clone(),
            ));
            pool.attach(sink);
            tokio::spawn(config_sync(
                pool.clone(),
                running.ctx.clone(),
                config_text.clone(),
            ));
            tokio::spawn(mac_key_sync(pool.clone()));
            (running, Some(pool))
        }
    };
    if let Some(addr) = args.metrics_listen {
        let registry = Arc::new(crate::metrics::registry(running.ctx.clone(), pool.clone()));
        let bound = crate::metrics::serve(addr, registry)
            .await
            .map_err(|source| ServeError::Metrics { addr, source })?;
        tracing::info!(%bound, "metrics on /metrics");
    }
    let admin_mode = match &pool {
        Some(p) => crate::admin::ctx::Mode::Pool {
            pool: p.clone(),
            lease: Duration::from_millis(args.pool.lease_ms.max(100)),
        },
        None => crate::admin::ctx::Mode::Single(crate::admin::ctx::Standalone::new(
            config_text.or_else(|| {
                args.config
                    .is_none()
                    .then(|| std::fs::read_to_string("medpool.toml").ok())
                    .flatten()
            }),
        )),
    };
    let admin = crate::admin::start(admin_listener, running.ctx.clone(), admin_mode)?;
    eprintln!(
        "medpool ready sip={} trunks={trunks} routes={routes} admin={}{}",
        running.sip_addr,
        admin.addr,
        match &pool {
            Some(p) => format!(
                " node={} raft={} internal={}",
                p.node_id(),
                args.pool
                    .raft_listen
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                if p.internal_tls() {
                    "mtls"
                } else if p.insecure_internal() {
                    "INSECURE"
                } else {
                    "loopback"
                }
            ),
            None => String::new(),
        }
    );
    Ok(Serving {
        running,
        pool,
        admin,
        data_dir: args.data_dir.clone(),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        bye_on_shutdown: args.bye_on_shutdown,
    })
}

/// The node id from a StatefulSet hostname `<name>-<ordinal>`.
fn ordinal_of(hostname: &str) -> Option<(String, u64)> {
    let (name, ord) = hostname.rsplit_once('-')?;
    Some((name.to_owned(), ord.parse().ok()?))
}

fn pool_options(
    args: &ServeArgs,
    raft_listen: std::net::SocketAddr,
) -> Result<PoolOptions, ServeError> {
    let p = &args.pool;
    if let Some(path) = &p.hosts_file {
        let text = std::fs::read_to_string(path).map_err(|source| ServeError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
        medpool_cluster::network::set_host_overrides(medpool_cluster::network::parse_hosts(&text));
    }
    let hostname = std::env::var("HOSTNAME").unwrap_or_default();
    let mut node_id = p.node_id;
    let mut join = p.join.clone();
    if let Some(domain) = &p.peer_domain
        && let Some((name, ordinal)) = ordinal_of(&hostname)
    {
        node_id.get_or_insert(ordinal);
        if join.is_empty() && ordinal > 0 {
            join.push(format!("{name}-0.{domain}:{}", raft_listen.port()));
        }
    }
    let node_id = node_id.unwrap_or(0);
    let raft_addr = p
        .raft_advertise
        .clone()
        .unwrap_or_else(|| raft_listen.to_string());
    let tls = p.internal_tls(raft_listen)?;
    if let Some(t) = &tls
        && !t.names_node(node_id)
    {
        return Err(ServeError::InternalTlsWrongNode {
            cert: t.files().cert.display().to_string(),
            name: medpool_cluster::tls::node_name(node_id),
            node: node_id,
        });
    }
    Ok(PoolOptions {
        node_id,
        addrs: NodeAddrs {
            raft_addr,
            sip_addr: args
                .advertise
                .clone()
                .unwrap_or_else(|| args.sip_listen.to_string()),
            admin_addr: String::new(),
        },
        raft_listen,
        data_dir: args.data_dir.join("raft"),
        join,
        shard_count: args.shards,
        max_voters: usize::from(p.voters),
        lease: Duration::from_millis(p.lease_ms.max(100)),
        margin: Duration::from_millis(p.lease_margin_ms),
        snapshot_logs: 5000,
        audit: p.audit_file.clone(),
        tls,
        insecure_internal: p.insecure_internal,
        config_validator: Some(Arc::new(crate::pool::B2buaConfigCheck)),
    })
}

/// Keeps the node's configuration equal to the pool's: the file seeds an empty pool; afterwards every
/// node applies the replicated version (versions only grow). Wakes on every change of the pool's Raft
/// metrics (each applied entry, each change of leader), so a new version is applied as soon as this
/// node has applied it, and a failed seed is tried again when the pool changes (e.g. elects a leader).
async fn config_sync(pool: Arc<Pool>, ctx: Arc<NodeCtx>, seed: Option<String>) {
    let mut changes = pool.raft().metrics();
    let mut applied: Option<u64> = None;
    let mut seeded = false;
    loop {
        // The body is copied only when its version is new (entries are applied by the thousand
        // under load, each waking this loop).
        let current = pool.state().read(|s| {
            s.config().map(|c| {
                (
                    c.version,
                    (applied != Some(c.version)).then(|| c.body.clone()),
                )
            })
        });
        match current {
            None => {
                if !seeded
                    && let Some(text) = &seed
                    && pool.state().read(|s| s.is_bootstrapped())
                {
                    let cmd = Command::SetConfig {
                        expected_version: None,
                        body: text.as_bytes().to_vec(),
                    };
                    seeded = pool.write(cmd).await.is_ok();
                }
            }
            Some((_, None)) => {}
            Some((version, Some(body))) => {
                let text = String::from_utf8_lossy(&body);
                match PoolConfig::from_toml_str(&text, &format!("pool configuration v{version}")) {
                    Ok(c) => {
                        ctx.apply_config(c).await;
                        applied = Some(version);
                        tracing::info!(version, "pool configuration applied");
                    }
                    Err(e) => {
                        tracing::error!(version, error = %e, "replicated configuration does not validate here");
                        applied = Some(version);
                    }
                }
            }
        }
        if changes.changed().await.is_err() {
            // The pool's Raft has stopped: nothing more will change.
            return;
        }
    }
}

/// Keys the MAC of the Call-IDs this node mints with the pool's secret once the pool has one
/// (made at bootstrap, replicated, kept across restarts), so that any node recognises any node's
/// Call-IDs in a late 2xx, also after a failover or a restart. Until then, and in a pool
/// bootstrapped before secrets existed, the key is this process's own.
async fn mac_key_sync(pool: Arc<Pool>) {
    let mut changes = pool.raft().metrics();
    loop {
        if let Some(secret) = pool.pool_secret() {
            let mut key = [0u8; 16];
            key.copy_from_slice(&secret[..16]);
            medpool_sip::ids::set_mac_key(key);
            tracing::debug!("Call-ID MAC keyed with the pool's secret");
            return;
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
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
