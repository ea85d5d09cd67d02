//! The admin gRPC API of a node (`medpool.admin.v1`, see `proto/proto/admin.proto`), with
//! `grpc.health.v1` and server reflection on the same port. Operators reach the whole pool through
//! any node: reads about calls and gateways are gathered from the other nodes' admin APIs, writes go
//! through Raft to the leader.
//!
//! ```text
//!  medpool ctl / grpcurl ──► admin port (--admin-listen, optional TLS)
//!       │  grpc.health.v1 (open: Kubernetes probes)    reflection v1 + v1alpha (token)
//!       └─ auth.rs     bearer tokens (admin: all; viewer: reads), required beyond loopback,
//!                      checked whenever configured; the method → scope table
//!          service.rs  one method per RPC ─┬─ ctx.rs     this node + its pool (Raft or single-node):
//!                                          │             config, node states, membership, leadership
//!                                          ├─ calls.rs   this node's DialogActors (Info, Hangup)
//!                                          ├─ events.rs  node events + pool snapshots → WatchEvents
//!                                          ├─ peers.rs   fan-out to the other nodes' admin APIs
//!                                          ├─ diff.rs    what a configuration change changes (pure)
//!                                          └─ convert.rs domain → proto
//!          error.rs    AdminError → gRPC status codes: the one place
//! ```
//! Never touched from here: the internal Raft/forwarding service (a separate port, never exposed to operators) — the admin
//! API is a separate server on its own port with its own descriptor set.

pub mod auth;
pub mod calls;
pub mod convert;
pub mod ctx;
pub mod diff;
pub mod error;
pub mod events;
pub mod peers;
pub mod service;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use medpool_proto::admin::medpool_admin_server::MedpoolAdminServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, ClientTlsConfig, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;

use auth::{Guard, Token, TokenError, Tokens};
use ctx::AdminCtx;
use peers::Peers;

/// The admin port of a node, unless `--admin-listen` says otherwise.
pub const DEFAULT_ADMIN_PORT: u16 = 7001;
/// The service name health is reported under (besides the empty name: the whole server).
pub const SERVICE_NAME: &str = "medpool.admin.v1.MedpoolAdmin";
/// How long a node waits for another node's answer when gathering.
const PEER_TIMEOUT: Duration = Duration::from_millis(1500);

/// `medpool serve` flags of the admin API.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    /// Admin gRPC API address (medpool ctl, grpcurl; health and reflection on the same port).
    /// Default: port 7001 on the SIP listen IP (127.0.0.1:7001 with the default SIP address), or
    /// a free port on that IP when 7001 is taken (printed in the "medpool ready" line).
    #[arg(long, env = "MEDPOOL_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// File holding the admin API's bearer token (required when the admin port is not on
    /// loopback; checked whenever set).
    #[arg(long, env = "MEDPOOL_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// The bearer token itself (prefer the environment variable or the file: a command line is
    /// visible to every user of the host).
    #[arg(long, env = "MEDPOOL_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<auth::SecretText>,
    /// File holding a read-only ("viewer") bearer token: status, calls, gateways, configuration
    /// show/validate, events; no hang-up, apply, gateway state, node or leadership change. Needs an
    /// admin token too.
    #[arg(long, env = "MEDPOOL_ADMIN_VIEWER_TOKEN_FILE")]
    pub admin_viewer_token_file: Option<PathBuf>,
    /// The viewer token itself (prefer the environment variable or the file).
    #[arg(long, env = "MEDPOOL_ADMIN_VIEWER_TOKEN", hide_env_values = true)]
    pub admin_viewer_token: Option<auth::SecretText>,
    /// TLS certificate chain (PEM) of the admin port; with --admin-tls-key turns TLS on.
    #[arg(long, env = "MEDPOOL_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    pub admin_tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of the admin port.
    #[arg(long, env = "MEDPOOL_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,
    /// CA (PEM) that other nodes' admin certificates are checked against when gathering from
    /// them (default: the --admin-tls-cert file, which must then hold the CA certificate too).
    #[arg(long, env = "MEDPOOL_ADMIN_TLS_CA")]
    pub admin_tls_ca: Option<PathBuf>,
}

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminStartError {
    /// Token problems, or an open port without a token.
    #[error("{0}")]
    Token(#[from] TokenError),
    /// The port could not be bound.
    #[error("cannot listen on {addr} (admin API): {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// A TLS file could not be read.
    #[error("admin TLS file {path}: {source}")]
    TlsFile {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The TLS configuration was refused.
    #[error("admin TLS: {0}")]
    Tls(#[from] tonic::transport::Error),
    /// The reflection service could not be built from the descriptor sets.
    #[error("admin reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The admin port, bound (before the pool starts, so that the pool records its real address).
#[derive(Debug)]
pub struct AdminListener {
    listener: TcpListener,
    /// The bound address.
    pub addr: SocketAddr,
    tokens: Tokens,
    tls: Option<(ServerTlsConfig, ClientTlsConfig)>,
}

fn read(path: &Path) -> Result<Vec<u8>, AdminStartError> {
    std::fs::read(path).map_err(|source| AdminStartError::TlsFile {
        path: path.display().to_string(),
        source,
    })
}

/// Loads the token and TLS files, checks that an open port has a token, and binds.
pub async fn bind(
    args: &AdminArgs,
    sip_listen: SocketAddr,
) -> Result<AdminListener, AdminStartError> {
    let token = Token::load(
        args.admin_token_file.as_deref(),
        args.admin_token.as_ref().map(|t| t.0.as_str()),
    )?;
    let viewer = Token::load_named(
        args.admin_viewer_token_file.as_deref(),
        args.admin_viewer_token.as_ref().map(|t| t.0.as_str()),
        "MEDPOOL_ADMIN_VIEWER_TOKEN",
    )?;
    let tokens = Tokens::new(token, viewer)?;
    let wanted = args
        .admin_listen
        .unwrap_or_else(|| SocketAddr::new(sip_listen.ip(), DEFAULT_ADMIN_PORT));
    auth::check_listen(wanted, tokens.admin())?;
    let tls = match (&args.admin_tls_cert, &args.admin_tls_key) {
        (Some(cert), Some(key)) => {
            let cert_pem = read(cert)?;
            let key_pem = read(key)?;
            let ca_pem = match &args.admin_tls_ca {
                Some(ca) => read(ca)?,
                None => cert_pem.clone(),
            };
            Some((
                ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem)),
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem)),
            ))
        }
        _ => None,
    };
    let listener = match TcpListener::bind(wanted).await {
        Ok(l) => l,
        Err(e) if args.admin_listen.is_none() && e.kind() == std::io::ErrorKind::AddrInUse => {
            // The default port is taken (another node on this IP): any free port on the same IP.
            let any = SocketAddr::new(wanted.ip(), 0);
            let l = TcpListener::bind(any)
                .await
                .map_err(|source| AdminStartError::Bind { addr: any, source })?;
            tracing::warn!(
                default = %wanted,
                "admin port {} is taken on this IP: listening on a free port instead (set --admin-listen)",
                DEFAULT_ADMIN_PORT
            );
            l
        }
        Err(source) => {
            return Err(AdminStartError::Bind {
                addr: wanted,
                source,
            });
        }
    };
    let addr = listener
        .local_addr()
        .map_err(|source| AdminStartError::Bind {
            addr: wanted,
            source,
        })?;
    Ok(AdminListener {
        listener,
        addr,
        tokens,
        tls,
    })
}

impl AdminListener {
    /// The address other nodes reach this admin API on: the bound address, with `advertise_host`
    /// in place of an unspecified IP (0.0.0.0 / ::).
    pub fn advertised(&self, advertise_host: Option<&str>) -> String {
        match advertise_host {
            Some(h) if self.addr.ip().is_unspecified() => format!("{h}:{}", self.addr.port()),
            _ => self.addr.to_string(),
        }
    }

    /// The client side of the fan-out (same token, same trust).
    fn peers(&self) -> Peers {
        Peers::new(
            self.tokens.admin().cloned(),
            self.tls.as_ref().map(|(_, c)| c.clone()),
            PEER_TIMEOUT,
        )
    }
}

/// A running admin server.
#[derive(Debug)]
pub struct AdminServer {
    /// The bound address.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Stops serving (open streams end).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }
}

/// Serves the admin API, health and reflection on `listener` for `node` in `mode`.
pub fn start(
    listener: AdminListener,
    node: Arc<medpool_b2bua::node::NodeCtx>,
    mode: ctx::Mode,
) -> Result<AdminServer, AdminStartError> {
    let peers = listener.peers();
    let AdminListener {
        listener,
        addr,
        tokens,
        tls,
    } = listener;
    let tokens = Arc::new(tokens);
    let ctx = Arc::new(AdminCtx::new(node, mode, peers, addr.to_string()));
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(medpool_proto::admin::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(medpool_proto::admin::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let admin = Guard::new(
        MedpoolAdminServer::new(service::AdminService::new(ctx.clone())),
        tokens.clone(),
    );
    let mut builder = Server::builder();
    if let Some((server_tls, _)) = tls {
        builder = builder.tls_config(server_tls)?;
    }
    let router = builder
        .add_service(health)
        .add_service(Guard::new(reflection_v1, tokens.clone()))
        .add_service(Guard::new(reflection_v1alpha, tokens))
        .add_service(admin);
    let (stop, mut stop_rx) = watch::channel(false);
    tokio::spawn(report_health(ctx, reporter, stop.subscribe()));
    let task = tokio::spawn(async move {
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let r = router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop_rx.changed().await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!(error = %e, "admin gRPC server stopped");
        }
    });
    tracing::info!(%addr, "admin API listening");
    Ok(AdminServer { addr, stop, task })
}

/// Keeps grpc.health.v1 current: SERVING while the node holds its lease and the pool has a leader
/// (always, once started, in the single-node pool).
async fn report_health(
    ctx: Arc<AdminCtx>,
    reporter: tonic_health::server::HealthReporter,
    mut stop: watch::Receiver<bool>,
) {
    let mut last = None;
    loop {
        let status = if ctx.serving() {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        if last != Some(status) {
            reporter.set_service_status("", status).await;
            reporter.set_service_status(SERVICE_NAME, status).await;
            last = Some(status);
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => return,
        }
    }
}
