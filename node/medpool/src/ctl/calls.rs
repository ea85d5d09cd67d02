//! `medpool ctl calls …`: list, show, hang up, watch events.

use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use clap::{Subcommand, ValueEnum};
use medpool_proto::admin::{self as pb, event::Kind};
use serde_json::{Value, json};

use super::conn::{Ctl, CtlError};
use super::output::{Table, age, dash, print_json, timestamp, warn_unavailable, word};

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

impl Ctl {
    /// Runs one `calls` subcommand.
    pub(super) async fn calls(&self, command: CallsCommand) -> Result<(), CtlError> {
        match command {
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
        }
    }

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
            if !l.transport.is_empty() {
                let tls = if l.tls_version.is_empty() {
                    String::new()
                } else {
                    format!(
                        " · {} · peer certificate {}",
                        l.tls_version,
                        dash(&l.tls_peer_subject)
                    )
                };
                out!("          transport {}{tls}", l.transport);
            }
            if let Some(m) = &l.media {
                out!("{}", media_line(m));
            }
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
}

fn leg_json(l: &pb::Leg) -> Value {
    json!({
        "call_id": l.call_id,
        "local_tag": l.local_tag,
        "remote_tag": l.remote_tag,
        "trunk": l.trunk,
        "media": l.media.as_ref().map(media_json),
        "transport": l.transport,
        "tls_version": l.tls_version,
        "tls_peer_subject": l.tls_peer_subject,
    })
}

fn counters_json(c: Option<&pb::MediaCounters>) -> Value {
    let c = c.cloned().unwrap_or_default();
    json!({"packets": c.packets, "bytes": c.bytes, "lost": c.lost})
}

fn media_json(m: &pb::LegMedia) -> Value {
    json!({
        "local": m.local,
        "remote": m.remote,
        "codec": m.codec,
        "received": counters_json(m.received.as_ref()),
        "sent": counters_json(m.sent.as_ref()),
        "last_packet_age_ms": m.last_packet_age_ms,
    })
}

/// `  media   local … ⇄ remote … · codec · in … · out …` for `calls show`.
fn media_line(m: &pb::LegMedia) -> String {
    let c = |c: Option<&pb::MediaCounters>| {
        let c = c.cloned().unwrap_or_default();
        format!("{} pkts {} B {} lost", c.packets, c.bytes, c.lost)
    };
    format!(
        "  media   {} ⇄ {} · {} · in {} · out {} · last packet {}",
        m.local,
        dash(&m.remote),
        dash(&m.codec),
        c(m.received.as_ref()),
        c(m.sent.as_ref()),
        m.last_packet_age_ms
            .map_or_else(|| "-".to_owned(), |ms| format!("{ms} ms ago"))
    )
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
