//! `medpool ctl`: the operator's command line over the admin gRPC API (`medpool.admin.v1`) of any
//! node. Human tables by default, `-o json` for scripts (one JSON document per command, one JSON
//! object per line for `calls watch`).
//!
//! Exit codes scripts can rely on:
//!
//! | code | meaning |
//! |---|---|
//! | 0 | done |
//! | 2 | usage (bad arguments, unreadable file) |
//! | 3 | unreachable: no answer from the server, or no leader/quorum (nothing changed) |
//! | 4 | refused: invalid configuration, stale version, not found, bad token, precondition (nothing changed) |
//! | 5 | outcome unknown: a change may or may not have been applied |

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use medpool_proto::admin::medpool_admin_client::MedpoolAdminClient;
use medpool_proto::admin::{self as pb, event::Kind};
use serde_json::{Value, json};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use crate::admin::auth::{AddToken, Token};

/// `println!` that ignores a closed stdout (`medpool ctl status | head` must not panic).
macro_rules! out {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// `print!` that ignores a closed stdout.
macro_rules! outn {
    ($($t:tt)*) => {{
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}
use crate::admin::diff;
use crate::admin::error::FIELD_PATH_KEY;

/// `medpool ctl` and its options (valid before or after the subcommand).
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: CtlCommand,
    /// A node's admin API (`host:port`, or `https://host:port` for TLS).
    #[arg(
        long,
        env = "MEDPOOL_ADMIN",
        default_value = "127.0.0.1:7001",
        global = true
    )]
    pub server: String,
    /// File holding the bearer token.
    #[arg(long, env = "MEDPOOL_ADMIN_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The bearer token (prefer the environment variable or --token-file).
    #[arg(
        long,
        env = "MEDPOOL_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<crate::admin::auth::SecretText>,
    /// CA certificate (PEM) to check the server's certificate against; turns TLS on.
    #[arg(long, env = "MEDPOOL_ADMIN_TLS_CA", global = true)]
    pub tls_ca: Option<PathBuf>,
    /// Name expected in the server's certificate (default: the host of --server).
    #[arg(long, env = "MEDPOOL_ADMIN_TLS_DOMAIN", global = true)]
    pub tls_domain: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "table", global = true)]
    pub output: Output,
    /// Longest wait for an answer, in seconds.
    #[arg(long, default_value_t = 15, global = true)]
    pub timeout: u64,
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Human-readable tables.
    Table,
    /// JSON.
    Json,
}

/// `medpool ctl ...`.
#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Nodes, leader, term, indexes, shards per node, configuration version.
    Status,
    /// Calls in progress.
    Calls {
        /// What to do.
        #[command(subcommand)]
        command: CallsCommand,
    },
    /// Gateway health as each node sees it; enable, disable, drain.
    Gateways {
        /// What to do.
        #[command(subcommand)]
        command: GatewaysCommand,
    },
    /// The pool configuration.
    Config {
        /// What to do.
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Node membership.
    Node {
        /// What to do.
        #[command(subcommand)]
        command: NodeCommand,
    },
    /// Raft leadership.
    Leader {
        /// What to do.
        #[command(subcommand)]
        command: LeaderCommand,
    },
    /// The node's logging.
    Log {
        /// What to do.
        #[command(subcommand)]
        command: LogCommand,
    },
}

/// `medpool ctl log ...`.
#[derive(Debug, Subcommand)]
pub enum LogCommand {
    /// Change the log filter of the node at --server, at run time (`--log` syntax).
    Set {
        /// e.g. `info,medpool_b2bua=debug`.
        filter: String,
    },
}

/// Call states a filter can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CallState {
    /// Choosing or calling a gateway.
    Calling,
    /// Provisional answer relayed.
    Early,
    /// 2xx relayed, waiting for the ACK.
    Answered,
    /// Established.
    Confirmed,
    /// Ending.
    Ending,
}

/// `medpool ctl calls ...`.
#[derive(Debug, Subcommand)]
pub enum CallsCommand {
    /// List calls (every node; filters combine).
    #[command(alias = "list")]
    Ls {
        /// Only calls owned by this node.
        #[arg(long)]
        node: Option<u64>,
        /// Inbound or gateway trunk.
        #[arg(long)]
        trunk: Option<String>,
        /// Gateway trunk of the current attempt.
        #[arg(long)]
        gateway: Option<String>,
        /// Call state.
        #[arg(long, value_enum)]
        state: Option<CallState>,
        /// Called or calling number prefix.
        #[arg(long)]
        number: Option<String>,
        /// Calls per page (at most 1000).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Start after this page token (from the previous page).
        #[arg(long)]
        page_token: Option<String>,
        /// Fetch every page.
        #[arg(long)]
        all: bool,
    },
    /// One call in detail.
    Show {
        /// Leg A's or leg B's Call-ID.
        call_id: String,
    },
    /// End a call (BYE both legs; 480/CANCEL while it is being set up).
    Hangup {
        /// Leg A's or leg B's Call-ID.
        call_id: String,
    },
    /// Print events as they happen (calls, gateways, shards, nodes, leader, configuration).
    Watch {
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long = "for")]
        for_secs: Option<u64>,
    },
}

/// `medpool ctl gateways ...`.
#[derive(Debug, Subcommand)]
pub enum GatewaysCommand {
    /// Health of every gateway on every node.
    #[command(alias = "list")]
    Ls {
        /// Only this gateway.
        name: Option<String>,
    },
    /// Allow new calls to a gateway again.
    Enable(GatewayTarget),
    /// No new calls to a gateway (calls in progress go on).
    Disable(GatewayTarget),
    /// No new calls; calls in progress finish (shown as draining until they have).
    Drain(GatewayTarget),
}

/// Which gateway, where.
#[derive(Debug, Args)]
pub struct GatewayTarget {
    /// The gateway trunk.
    pub name: String,
    /// Only on this node (default: every node).
    #[arg(long)]
    pub node: Option<u64>,
}

/// `medpool ctl config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the configuration (TOML) and its version.
    Get,
    /// Validate a file the way start-up does and show what it would change.
    Validate {
        /// The TOML file.
        #[arg(short, long)]
        file: PathBuf,
    },
    /// Validate a file, show what it changes and make it the pool's configuration.
    Apply {
        /// The TOML file.
        #[arg(short, long)]
        file: PathBuf,
        /// Apply only if the pool is at this version (default: the version the diff was made
        /// against; 0: only if the pool has no configuration).
        #[arg(long)]
        expected_version: Option<u64>,
        /// Do not ask for confirmation on a terminal.
        #[arg(short, long)]
        yes: bool,
    },
}

/// `medpool ctl node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Move every shard off a node (its calls go on elsewhere); it gets no new shards.
    Drain {
        /// Node id.
        node: u64,
        /// Wait until the node owns no shard.
        #[arg(long)]
        wait: bool,
    },
    /// Let a drained node own shards again.
    Undrain {
        /// Node id.
        node: u64,
    },
    /// Forget a node that owns no shard and remove it from the Raft membership.
    Remove {
        /// Node id.
        node: u64,
    },
}

/// `medpool ctl leader ...`.
#[derive(Debug, Subcommand)]
pub enum LeaderCommand {
    /// Hand leadership to another voter.
    Transfer {
        /// The voter (default: any other voter).
        #[arg(long)]
        to: Option<u64>,
    },
}

/// How a command ended, as an exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Done.
    Ok = 0,
    /// Bad arguments or file.
    Usage = 2,
    /// No answer, or no leader.
    Unreachable = 3,
    /// Refused: nothing changed.
    Refused = 4,
    /// May or may not have been applied.
    Unknown = 5,
}

/// Why a command failed (printed on stderr).
#[derive(Debug, thiserror::Error)]
enum CtlError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach {server}: {why}")]
    Unreachable { server: String, why: String },
    #[error("{}", describe(.0))]
    Status(Status, bool),
    #[error("no answer within {0} s{suffix}", suffix = if *.1 { "; the change may or may not have been applied" } else { "" })]
    Timeout(u64, bool),
}

fn describe(s: &Status) -> String {
    let mut text = s.message().to_owned();
    if let Some(field) = s
        .metadata()
        .get(FIELD_PATH_KEY)
        .and_then(|v| v.to_str().ok())
        && !text.contains(field)
    {
        text.push_str(&format!(" (field {field})"));
    }
    let label = match s.code() {
        Code::InvalidArgument | Code::FailedPrecondition => "refused",
        Code::NotFound => "not found",
        Code::Unauthenticated => "unauthenticated",
        Code::Unavailable => "unavailable",
        Code::Unknown => "outcome unknown",
        _ => "error",
    };
    if text.starts_with(label) {
        text
    } else {
        format!("{label}: {text}")
    }
}

impl CtlError {
    fn exit(&self) -> Exit {
        match self {
            CtlError::Usage(_) => Exit::Usage,
            CtlError::Unreachable { .. } => Exit::Unreachable,
            CtlError::Timeout(_, write) => {
                if *write {
                    Exit::Unknown
                } else {
                    Exit::Unreachable
                }
            }
            CtlError::Status(s, write) => match s.code() {
                Code::Unavailable => Exit::Unreachable,
                Code::DeadlineExceeded | Code::Cancelled if !write => Exit::Unreachable,
                Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::Unauthenticated
                | Code::PermissionDenied
                | Code::AlreadyExists
                | Code::OutOfRange => Exit::Refused,
                _ => Exit::Unknown,
            },
        }
    }
}

type Client = MedpoolAdminClient<InterceptedService<Channel, AddToken>>;

struct Ctl {
    client: Client,
    server: String,
    output: Output,
    timeout: Duration,
}

/// Runs `medpool ctl` and answers the exit code.
pub async fn run(args: CtlArgs) -> Exit {
    let ctl = match connect(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("medpool ctl: {e}");
            return e.exit();
        }
    };
    match ctl.dispatch(args.command).await {
        Ok(()) => Exit::Ok,
        Err(e) => {
            eprintln!("medpool ctl: {e}");
            e.exit()
        }
    }
}

fn connect(args: &CtlArgs) -> Result<Ctl, CtlError> {
    let token = Token::load(
        args.token_file.as_deref(),
        args.token.as_ref().map(|t| t.0.as_str()),
    )
    .map_err(|e| CtlError::Usage(e.to_string()))?;
    let (tls, rest) = match args.server.split_once("://") {
        Some(("https", rest)) => (true, rest),
        Some(("http", rest)) => (false, rest),
        Some((scheme, _)) => {
            return Err(CtlError::Usage(format!(
                "--server: unknown scheme {scheme:?} (http or https)"
            )));
        }
        None => (false, args.server.as_str()),
    };
    let tls = tls || args.tls_ca.is_some();
    let uri = format!("{}://{rest}", if tls { "https" } else { "http" });
    let usage =
        |e: &dyn std::fmt::Display| CtlError::Usage(format!("--server {}: {e}", args.server));
    let mut endpoint = Endpoint::from_shared(uri)
        .map_err(|e| usage(&e))?
        .connect_timeout(Duration::from_secs(args.timeout.clamp(1, 5)));
    if tls {
        let mut cfg = ClientTlsConfig::new();
        if let Some(ca) = &args.tls_ca {
            let pem = std::fs::read(ca)
                .map_err(|e| CtlError::Usage(format!("--tls-ca {}: {e}", ca.display())))?;
            cfg = cfg.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(d) = &args.tls_domain {
            cfg = cfg.domain_name(d.clone());
        }
        endpoint = endpoint.tls_config(cfg).map_err(|e| usage(&e))?;
    }
    let channel = endpoint.connect_lazy();
    Ok(Ctl {
        client: MedpoolAdminClient::with_interceptor(channel, AddToken(token)),
        server: args.server.clone(),
        output: args.output,
        timeout: Duration::from_secs(args.timeout.max(1)),
    })
}

impl Ctl {
    /// One RPC with the command's timeout; `write` says whether an unknown outcome is possible.
    async fn call<T, F>(&self, write: bool, f: F) -> Result<T, CtlError>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        match tokio::time::timeout(self.timeout, f).await {
            Err(_) => Err(CtlError::Timeout(self.timeout.as_secs(), write)),
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) if s.code() == Code::Unavailable && is_transport(&s) => {
                Err(CtlError::Unreachable {
                    server: self.server.clone(),
                    why: s.message().to_owned(),
                })
            }
            Ok(Err(s)) => Err(CtlError::Status(s, write)),
        }
    }

    fn json(&self) -> bool {
        self.output == Output::Json
    }

    async fn dispatch(&self, command: CtlCommand) -> Result<(), CtlError> {
        match command {
            CtlCommand::Status => self.status().await,
            CtlCommand::Calls { command } => match command {
                CallsCommand::Ls {
                    node,
                    trunk,
                    gateway,
                    state,
                    number,
                    limit,
                    page_token,
                    all,
                } => {
                    let mut req = pb::ListCallsRequest {
                        node,
                        trunk: trunk.unwrap_or_default(),
                        gateway: gateway.unwrap_or_default(),
                        number_prefix: number.unwrap_or_default(),
                        page_size: limit,
                        page_token: page_token.unwrap_or_default(),
                        local_only: false,
                        ..Default::default()
                    };
                    if let Some(s) = state {
                        req.set_phase(match s {
                            CallState::Calling => pb::CallPhase::Calling,
                            CallState::Early => pb::CallPhase::Early,
                            CallState::Answered => pb::CallPhase::Answered,
                            CallState::Confirmed => pb::CallPhase::Confirmed,
                            CallState::Ending => pb::CallPhase::Ending,
                        });
                    }
                    self.calls_ls(req, all).await
                }
                CallsCommand::Show { call_id } => self.calls_show(call_id).await,
                CallsCommand::Hangup { call_id } => self.calls_hangup(call_id).await,
                CallsCommand::Watch { count, for_secs } => self.watch(count, for_secs).await,
            },
            CtlCommand::Gateways { command } => match command {
                GatewaysCommand::Ls { name } => self.gateways_ls(name.unwrap_or_default()).await,
                GatewaysCommand::Enable(t) => {
                    self.gateway_state(t, pb::GatewayAdminState::Enabled).await
                }
                GatewaysCommand::Disable(t) => {
                    self.gateway_state(t, pb::GatewayAdminState::Disabled).await
                }
                GatewaysCommand::Drain(t) => {
                    self.gateway_state(t, pb::GatewayAdminState::Draining).await
                }
            },
            CtlCommand::Config { command } => match command {
                ConfigCommand::Get => self.config_get().await,
                ConfigCommand::Validate { file } => self.config_validate(file).await,
                ConfigCommand::Apply {
                    file,
                    expected_version,
                    yes,
                } => self.config_apply(file, expected_version, yes).await,
            },
            CtlCommand::Node { command } => match command {
                NodeCommand::Drain { node, wait } => self.node_state(node, true, wait).await,
                NodeCommand::Undrain { node } => self.node_state(node, false, false).await,
                NodeCommand::Remove { node } => self.node_remove(node).await,
            },
            CtlCommand::Leader {
                command: LeaderCommand::Transfer { to },
            } => self.leader_transfer(to).await,
            CtlCommand::Log {
                command: LogCommand::Set { filter },
            } => self.log_set(filter).await,
        }
    }

    // ------------------------------------------------------------------------------------------
    // status

    async fn status(&self) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let r = self
            .call(
                false,
                c.pool_status(pb::PoolStatusRequest { local_only: false }),
            )
            .await?;
        if self.json() {
            print_json(&status_json(&r));
            return Ok(());
        }
        let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
        out!(
            "pool ({}): {} nodes · leader {} · term {} · committed {} · applied {} · config v{} · {} shards ({} unowned) · {} dialogs recorded · answered by node {}",
            r.mode,
            r.nodes.len(),
            r.leader
                .map_or_else(|| "none".to_owned(), |l| l.to_string()),
            r.term,
            opt(r.committed_index),
            opt(r.applied_index),
            opt(r.config_version),
            r.shard_count,
            r.unowned_shards,
            r.dialogs,
            r.node_id
        );
        let mut t = Table::new(&[
            "NODE", "STATE", "ROLE", "SHARDS", "CALLS", "LEASE", "APPLIED", "SIP", "ADMIN",
            "VERSION",
        ]);
        for n in &r.nodes {
            let role = if n.leader {
                "leader"
            } else if n.voter {
                "voter"
            } else {
                "learner"
            };
            let (calls, lease, applied) = if n.reachable {
                (
                    n.active_calls.to_string(),
                    match n.lease_remaining_ms {
                        Some(ms) if n.holds_lease => format!("{:.1}s", ms as f64 / 1000.0),
                        _ if r.mode == "single" => "-".to_owned(),
                        _ => "none".to_owned(),
                    },
                    opt(n.applied_index),
                )
            } else {
                ("?".to_owned(), "?".to_owned(), "?".to_owned())
            };
            t.row(vec![
                n.id.to_string(),
                word(n.state().as_str_name(), "NODE_STATE_"),
                role.to_owned(),
                n.shards.to_string(),
                calls,
                lease,
                applied,
                n.sip_addr.clone(),
                dash(&n.admin_addr),
                if n.reachable {
                    n.version.clone()
                } else {
                    "unreachable".to_owned()
                },
            ]);
        }
        t.print();
        Ok(())
    }

    // ------------------------------------------------------------------------------------------
    // calls

    async fn calls_ls(&self, mut req: pb::ListCallsRequest, all: bool) -> Result<(), CtlError> {
        let mut calls = Vec::new();
        let mut unavailable = Vec::new();
        let next = loop {
            let mut c = self.client.clone();
            let r = self.call(false, c.list_calls(req.clone())).await?;
            calls.extend(r.calls);
            for n in r.unavailable_nodes {
                if !unavailable.contains(&n) {
                    unavailable.push(n);
                }
            }
            if !all || r.next_page_token.is_empty() {
                break r.next_page_token;
            }
            req.page_token = r.next_page_token;
        };
        if self.json() {
            print_json(&json!({
                "calls": calls.iter().map(call_json).collect::<Vec<_>>(),
                "next_page_token": next,
                "unavailable_nodes": unavailable,
            }));
            return Ok(());
        }
        let mut t = Table::new(&[
            "CALL-ID", "NODE", "SHARD", "STATE", "FROM", "GATEWAY", "CALLED", "CALLING", "AGE",
        ]);
        for c in &calls {
            t.row(vec![
                c.call_id.clone(),
                c.node_id.to_string(),
                c.shard.to_string(),
                word(c.phase().as_str_name(), "CALL_PHASE_"),
                c.inbound_trunk.clone(),
                dash(&c.gateway),
                dash(&c.called),
                dash(&c.calling),
                age(c.age_ms),
            ]);
        }
        t.print();
        out!("{} calls", calls.len());
        if !next.is_empty() {
            out!("more: --page-token {next}  (or --all)");
        }
        warn_unavailable(&unavailable);
        Ok(())
    }

    async fn calls_show(&self, call_id: String) -> Result<(), CtlError> {
        let mut cl = self.client.clone();
        let c = self
            .call(
                false,
                cl.get_call(pb::GetCallRequest {
                    call_id,
                    local_only: false,
                }),
            )
            .await?;
        if self.json() {
            print_json(&call_json(&c));
            return Ok(());
        }
        out!("call      {}", c.call_id);
        out!("node      {} (shard {})", c.node_id, c.shard);
        out!("state     {}", word(c.phase().as_str_name(), "CALL_PHASE_"));
        out!("from      {}", c.inbound_trunk);
        out!("gateway   {}", dash(&c.gateway));
        out!("called    {}", dash(&c.called));
        out!("calling   {}", dash(&c.calling));
        out!("age       {}", age(c.age_ms));
        out!(
            "answered  {}",
            c.answered_after_ms
                .map_or_else(|| "-".to_owned(), |ms| format!("after {ms} ms"))
        );
        let leg = |name: &str, l: &pb::Leg| {
            out!(
                "leg {name}     trunk {} · Call-ID {} · our tag {} · their tag {}",
                l.trunk,
                l.call_id,
                dash(&l.local_tag),
                dash(&l.remote_tag)
            );
        };
        if let Some(a) = &c.a {
            leg("A", a);
        }
        match &c.b {
            Some(b) => leg("B", b),
            None => out!("leg B     none yet"),
        }
        for (i, a) in c.attempts.iter().enumerate() {
            out!("attempt {} {} → {}", i + 1, a.gateway, a.outcome);
        }
        Ok(())
    }

    async fn calls_hangup(&self, call_id: String) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let r = self
            .call(
                true,
                c.hangup_call(pb::HangupCallRequest {
                    call_id,
                    local_only: false,
                }),
            )
            .await?;
        if self.json() {
            print_json(&json!({"call_id": r.call_id, "node_id": r.node_id}));
        } else {
            out!("call {} on node {}: hanging up", r.call_id, r.node_id);
        }
        Ok(())
    }

    async fn watch(&self, count: Option<u64>, for_secs: Option<u64>) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let mut stream = self
            .call(
                false,
                c.watch_events(pb::WatchEventsRequest { local_only: false }),
            )
            .await?;
        let deadline = for_secs.map(|s| tokio::time::Instant::now() + Duration::from_secs(s));
        let mut seen = 0u64;
        if !self.json() && std::io::stdout().is_terminal() {
            eprintln!("watching {} (Ctrl-C to stop)", self.server);
        }
        loop {
            if count.is_some_and(|n| seen >= n) {
                return Ok(());
            }
            let next = match deadline {
                Some(d) => match tokio::time::timeout_at(d, stream.message()).await {
                    Ok(m) => m,
                    Err(_) => return Ok(()),
                },
                None => stream.message().await,
            };
            match next {
                Ok(Some(e)) => {
                    seen += 1;
                    if self.json() {
                        out!("{}", event_json(&e));
                    } else {
                        out!("{}", event_line(&e));
                    }
                    let _ = std::io::stdout().flush();
                }
                Ok(None) => {
                    return Err(CtlError::Unreachable {
                        server: self.server.clone(),
                        why: "the server ended the stream".into(),
                    });
                }
                Err(s) => return Err(CtlError::Status(s, false)),
            }
        }
    }

    // ------------------------------------------------------------------------------------------
    // gateways

    async fn gateways_ls(&self, name: String) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let r = self
            .call(
                false,
                c.list_gateways(pb::ListGatewaysRequest {
                    name,
                    local_only: false,
                }),
            )
            .await?;
        if self.json() {
            print_json(&json!({
                "gateways": r.gateways.iter().map(gateway_json).collect::<Vec<_>>(),
                "unavailable_nodes": r.unavailable_nodes,
            }));
            return Ok(());
        }
        let mut t = Table::new(&[
            "GATEWAY", "NODE", "HEALTH", "ADMIN", "CALLS", "MAX", "CPS", "OPTIONS", "RTT", "FAILS",
            "ADDRESS",
        ]);
        for g in &r.gateways {
            t.row(vec![
                g.name.clone(),
                g.node_id.to_string(),
                if g.up { "up" } else { "down" }.to_owned(),
                word(g.admin().as_str_name(), "GATEWAY_ADMIN_STATE_"),
                g.active_calls.to_string(),
                g.max_calls
                    .map_or_else(|| "-".to_owned(), |m| m.to_string()),
                g.max_cps.map_or_else(|| "-".to_owned(), |m| m.to_string()),
                match g.last_options_status {
                    0 => "-".to_owned(),
                    s => s.to_string(),
                },
                match g.last_rtt_us {
                    0 => "-".to_owned(),
                    us @ 1..1000 => format!("{us}µs"),
                    us => format!("{:.1}ms", us as f64 / 1000.0),
                },
                g.consecutive_failures.to_string(),
                g.address.clone(),
            ]);
        }
        t.print();
        warn_unavailable(&r.unavailable_nodes);
        Ok(())
    }

    async fn gateway_state(
        &self,
        t: GatewayTarget,
        state: pb::GatewayAdminState,
    ) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let r = self
            .call(
                true,
                c.set_gateway_state(pb::SetGatewayStateRequest {
                    name: t.name.clone(),
                    state: state.into(),
                    node: t.node,
                    local_only: false,
                }),
            )
            .await?;
        let word = word(state.as_str_name(), "GATEWAY_ADMIN_STATE_");
        if self.json() {
            print_json(&json!({
                "gateway": t.name,
                "state": word,
                "nodes": r.nodes,
                "unavailable_nodes": r.unavailable_nodes,
            }));
        } else {
            let nodes: Vec<String> = r.nodes.iter().map(u64::to_string).collect();
            out!("gateway {} {word} on nodes {}", t.name, nodes.join(", "));
            warn_unavailable(&r.unavailable_nodes);
        }
        if r.unavailable_nodes.is_empty() {
            Ok(())
        } else {
            Err(CtlError::Status(
                Status::unknown("some nodes did not answer: the state is set only where listed"),
                true,
            ))
        }
    }

    // ------------------------------------------------------------------------------------------
    // configuration

    async fn config_get(&self) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let r = self
            .call(false, c.get_config(pb::GetConfigRequest {}))
            .await?;
        if self.json() {
            print_json(&json!({"version": r.version, "body": r.body}));
        } else {
            match r.version {
                Some(v) => out!("# pool configuration version {v}"),
                None => out!("# the pool has no configuration yet"),
            }
            outn!("{}", r.body);
            if !r.body.ends_with('\n') && !r.body.is_empty() {
                out!();
            }
        }
        Ok(())
    }

    fn read_file(file: &std::path::Path) -> Result<String, CtlError> {
        std::fs::read_to_string(file)
            .map_err(|e| CtlError::Usage(format!("{}: {e}", file.display())))
    }

    async fn config_validate(&self, file: PathBuf) -> Result<(), CtlError> {
        let body = Self::read_file(&file)?;
        let mut c = self.client.clone();
        let r = self
            .call(
                false,
                c.validate_config(pb::ValidateConfigRequest {
                    body,
                    name: file.display().to_string(),
                }),
            )
            .await?;
        if self.json() {
            print_json(&json!({
                "valid": true,
                "trunks": r.trunks,
                "routes": r.routes,
                "diff": r.diff.iter().map(change_json).collect::<Vec<_>>(),
            }));
        } else {
            out!(
                "{}: valid ({} trunks, {} routes)",
                file.display(),
                r.trunks,
                r.routes
            );
            print_diff(&r.diff, "against the current configuration");
        }
        Ok(())
    }

    async fn config_apply(
        &self,
        file: PathBuf,
        expected: Option<u64>,
        yes: bool,
    ) -> Result<(), CtlError> {
        let body = Self::read_file(&file)?;
        let name = file.display().to_string();
        let mut c = self.client.clone();
        let current = self
            .call(false, c.get_config(pb::GetConfigRequest {}))
            .await?;
        let expected = expected.or(Some(current.version.unwrap_or(0)));
        let interactive = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
        if interactive && !yes && !self.json() {
            let v = self
                .call(
                    false,
                    c.validate_config(pb::ValidateConfigRequest {
                        body: body.clone(),
                        name: name.clone(),
                    }),
                )
                .await?;
            print_diff(&v.diff, "to apply");
            outn!("apply to the pool? [y/N] ");
            let _ = std::io::stdout().flush();
            let mut answer = String::new();
            let _ = std::io::stdin().read_line(&mut answer);
            if !matches!(answer.trim(), "y" | "Y" | "yes") {
                out!("nothing applied");
                return Ok(());
            }
        }
        let r = self
            .call(
                true,
                c.apply_config(pb::ApplyConfigRequest {
                    body,
                    name,
                    expected_version: expected,
                }),
            )
            .await?;
        if self.json() {
            print_json(&json!({
                "version": r.version,
                "diff": r.diff.iter().map(change_json).collect::<Vec<_>>(),
            }));
        } else {
            out!(
                "configuration version {} applied (was {})",
                r.version,
                current
                    .version
                    .map_or_else(|| "none".to_owned(), |v| v.to_string())
            );
            print_diff(&r.diff, "made");
        }
        Ok(())
    }

    // ------------------------------------------------------------------------------------------
    // nodes and leadership

    async fn node_state(&self, node: u64, drain: bool, wait: bool) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let req = pb::NodeRequest {
            node,
            forwarded: false,
        };
        let r = if drain {
            self.call(true, c.drain_node(req)).await?
        } else {
            self.call(true, c.undrain_node(req)).await?
        };
        let mut shards = r.shards;
        if wait && shards > 0 {
            let deadline = tokio::time::Instant::now() + self.timeout.max(Duration::from_secs(60));
            while shards > 0 {
                if tokio::time::Instant::now() >= deadline {
                    return Err(CtlError::Status(
                        Status::unknown(format!(
                            "node {node} is draining but still owns {shards} shards"
                        )),
                        true,
                    ));
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
                let s = self
                    .call(
                        false,
                        c.pool_status(pb::PoolStatusRequest { local_only: true }),
                    )
                    .await?;
                shards = s
                    .nodes
                    .iter()
                    .find(|n| n.id == node)
                    .map_or(0, |n| n.shards);
            }
        }
        let state = word(r.state().as_str_name(), "NODE_STATE_");
        if self.json() {
            print_json(&json!({"node": node, "state": state, "shards": shards}));
        } else if drain && wait {
            out!("node {node} drained: it owns no shard");
        } else {
            out!("node {node} {state} ({shards} shards)");
        }
        Ok(())
    }

    async fn node_remove(&self, node: u64) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        self.call(
            true,
            c.remove_node(pb::NodeRequest {
                node,
                forwarded: false,
            }),
        )
        .await?;
        if self.json() {
            print_json(&json!({"node": node, "removed": true}));
        } else {
            out!("node {node} removed from the pool");
        }
        Ok(())
    }

    async fn log_set(&self, filter: String) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let r = self
            .call(true, c.set_log_level(pb::SetLogLevelRequest { filter }))
            .await?;
        if self.json() {
            print_json(&json!({"filter": r.filter}));
        } else {
            out!("log filter: {}", r.filter);
        }
        Ok(())
    }

    async fn leader_transfer(&self, to: Option<u64>) -> Result<(), CtlError> {
        let mut c = self.client.clone();
        let r = self
            .call(
                true,
                c.transfer_leader(pb::TransferLeaderRequest {
                    to,
                    forwarded: false,
                }),
            )
            .await?;
        if self.json() {
            print_json(&json!({"previous": r.previous, "leader": r.leader, "term": r.term}));
        } else {
            let show = |v: Option<u64>| v.map_or_else(|| "none".to_owned(), |v| v.to_string());
            out!(
                "leader: node {} (was node {}), term {}",
                show(r.leader),
                show(r.previous),
                r.term
            );
        }
        Ok(())
    }
}

/// Whether an `UNAVAILABLE` came from the transport (no connection) rather than the server.
fn is_transport(s: &Status) -> bool {
    s.metadata().is_empty() && !s.message().starts_with("no leader")
}

// ----------------------------------------------------------------------------------------------
// Output helpers

/// A text table with columns as wide as their widest cell.
struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    fn new(header: &[&str]) -> Table {
        Table {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }
    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    fn print(&self) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(c.chars().count());
                }
            }
        }
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                let w = widths.get(i).copied().unwrap_or(0);
                if i + 1 == cells.len() {
                    s.push_str(c);
                } else {
                    s.push_str(&format!("{c:<w$}  "));
                }
            }
            out!("{}", s.trim_end());
        };
        line(&self.header);
        for r in &self.rows {
            line(r);
        }
    }
}

fn print_json(v: &Value) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => out!("{s}"),
        Err(e) => eprintln!("medpool ctl: cannot print JSON: {e}"),
    }
}

fn print_diff(changes: &[pb::ConfigChange], what: &str) {
    if changes.is_empty() {
        out!("no change {what}");
        return;
    }
    out!("changes {what} (+ added, - removed, ~ changed):");
    for line in diff::render(changes) {
        out!("  {line}");
    }
}

fn warn_unavailable(nodes: &[u64]) {
    if !nodes.is_empty() {
        let ids: Vec<String> = nodes.iter().map(u64::to_string).collect();
        eprintln!(
            "medpool ctl: nodes {} did not answer; their part is missing",
            ids.join(", ")
        );
    }
}

/// `NODE_STATE_ACTIVE` → `active`.
fn word(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_lowercase()
}

fn dash(s: &str) -> String {
    if s.is_empty() {
        "-".to_owned()
    } else {
        s.to_owned()
    }
}

fn age(ms: u64) -> String {
    if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        let s = ms / 1000;
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

/// `2026-11-22T03:52:11.123Z` from milliseconds since the epoch.
fn timestamp(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        unix_ms % 1000
    )
}

fn status_json(r: &pb::PoolStatusReply) -> Value {
    json!({
        "node_id": r.node_id,
        "mode": r.mode,
        "leader": r.leader,
        "term": r.term,
        "committed_index": r.committed_index,
        "applied_index": r.applied_index,
        "shard_count": r.shard_count,
        "unowned_shards": r.unowned_shards,
        "config_version": r.config_version,
        "dialogs": r.dialogs,
        "nodes": r.nodes.iter().map(|n| json!({
            "id": n.id,
            "state": word(n.state().as_str_name(), "NODE_STATE_"),
            "voter": n.voter,
            "leader": n.leader,
            "shards": n.shards,
            "reachable": n.reachable,
            "holds_lease": n.holds_lease,
            "lease_remaining_ms": n.lease_remaining_ms,
            "lease_age_ms": n.lease_age_ms,
            "active_calls": n.active_calls,
            "applied_index": n.applied_index,
            "version": n.version,
            "sip_addr": n.sip_addr,
            "raft_addr": n.raft_addr,
            "admin_addr": n.admin_addr,
        })).collect::<Vec<_>>(),
    })
}

fn leg_json(l: &pb::Leg) -> Value {
    json!({
        "call_id": l.call_id,
        "local_tag": l.local_tag,
        "remote_tag": l.remote_tag,
        "trunk": l.trunk,
    })
}

fn call_json(c: &pb::Call) -> Value {
    json!({
        "call_id": c.call_id,
        "node_id": c.node_id,
        "shard": c.shard,
        "state": word(c.phase().as_str_name(), "CALL_PHASE_"),
        "inbound_trunk": c.inbound_trunk,
        "gateway": c.gateway,
        "called": c.called,
        "calling": c.calling,
        "age_ms": c.age_ms,
        "answered_after_ms": c.answered_after_ms,
        "a": c.a.as_ref().map(leg_json),
        "b": c.b.as_ref().map(leg_json),
        "attempts": c.attempts.iter().map(|a| json!({"gateway": a.gateway, "outcome": a.outcome})).collect::<Vec<_>>(),
    })
}

fn gateway_json(g: &pb::GatewayHealth) -> Value {
    json!({
        "name": g.name,
        "node_id": g.node_id,
        "up": g.up,
        "admin": word(g.admin().as_str_name(), "GATEWAY_ADMIN_STATE_"),
        "active_calls": g.active_calls,
        "max_calls": g.max_calls,
        "max_cps": g.max_cps,
        "last_options_status": g.last_options_status,
        "last_rtt_us": g.last_rtt_us,
        "consecutive_failures": g.consecutive_failures,
        "address": g.address,
    })
}

fn change_json(c: &pb::ConfigChange) -> Value {
    json!({
        "kind": word(c.kind().as_str_name(), "CHANGE_KIND_"),
        "item": c.item,
        "details": c.details,
    })
}

fn event_json(e: &pb::Event) -> Value {
    let (kind, body) = match &e.kind {
        Some(Kind::CallStarted(c)) => (
            "call_started",
            json!({"call_id": c.call_id, "shard": c.shard, "trunk": c.trunk}),
        ),
        Some(Kind::CallAnswered(c)) => (
            "call_answered",
            json!({"call_id": c.call_id, "gateway": c.gateway}),
        ),
        Some(Kind::CallEnded(c)) => (
            "call_ended",
            json!({"call_id": c.call_id, "status": c.status, "cause": c.cause}),
        ),
        Some(Kind::Gateway(g)) => ("gateway", json!({"gateway": g.gateway, "up": g.up})),
        Some(Kind::ShardsMoved(m)) => (
            "shards_moved",
            json!({"from_node": m.from_node, "to_node": m.to_node, "shards": m.shards}),
        ),
        Some(Kind::Node(n)) => (
            "node",
            json!({"id": n.id, "change": word(n.change().as_str_name(), "NODE_CHANGE_")}),
        ),
        Some(Kind::Leader(l)) => ("leader", json!({"leader": l.leader, "term": l.term})),
        Some(Kind::Config(c)) => ("config", json!({"version": c.version})),
        Some(Kind::Lost(l)) => ("lost", json!({"count": l.count})),
        None => ("unknown", json!({})),
    };
    json!({"node_id": e.node_id, "unix_ms": e.unix_ms, "kind": kind, "event": body})
}

fn event_line(e: &pb::Event) -> String {
    let what = match &e.kind {
        Some(Kind::CallStarted(c)) => format!(
            "call started   {} (shard {}, from {})",
            c.call_id, c.shard, c.trunk
        ),
        Some(Kind::CallAnswered(c)) => {
            format!("call answered  {} (gateway {})", c.call_id, c.gateway)
        }
        Some(Kind::CallEnded(c)) if c.cause.is_empty() => {
            format!("call ended     {} ({})", c.call_id, c.status)
        }
        Some(Kind::CallEnded(c)) => {
            format!("call ended     {} ({}, {})", c.call_id, c.status, c.cause)
        }
        Some(Kind::Gateway(g)) => format!(
            "gateway        {} {}",
            g.gateway,
            if g.up { "up" } else { "down" }
        ),
        Some(Kind::ShardsMoved(m)) => format!(
            "shards moved   {} shards from node {} to node {}",
            m.shards.len(),
            m.from_node
                .map_or_else(|| "(none)".to_owned(), |n| n.to_string()),
            m.to_node
        ),
        Some(Kind::Node(n)) => format!(
            "node           {} {}",
            n.id,
            word(n.change().as_str_name(), "NODE_CHANGE_")
        ),
        Some(Kind::Leader(l)) => format!(
            "leader         {} (term {})",
            l.leader
                .map_or_else(|| "none".to_owned(), |l| format!("node {l}")),
            l.term
        ),
        Some(Kind::Config(c)) => format!("configuration  version {}", c.version),
        Some(Kind::Lost(l)) => format!("(missed {} events: watcher too slow)", l.count),
        None => "(unknown event)".to_owned(),
    };
    format!("{} node {:<3} {what}", timestamp(e.unix_ms), e.node_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_795_319_531_123), "2026-11-22T03:52:11.123Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn exit_codes() {
        let refused = CtlError::Status(Status::failed_precondition("stale"), true);
        assert_eq!(refused.exit(), Exit::Refused);
        let unknown = CtlError::Status(Status::unknown("lost"), true);
        assert_eq!(unknown.exit(), Exit::Unknown);
        let unavailable = CtlError::Status(Status::unavailable("no leader"), true);
        assert_eq!(unavailable.exit(), Exit::Unreachable);
        assert_eq!(CtlError::Timeout(5, true).exit(), Exit::Unknown);
        assert_eq!(CtlError::Timeout(5, false).exit(), Exit::Unreachable);
        assert_eq!(CtlError::Usage("x".into()).exit(), Exit::Usage);
    }
}
