//! The `medpool.admin.v1.MedpoolAdmin` service: each RPC checks its request, works on this node
//! through [`AdminCtx`], and gathers from (or forwards to) the other nodes where the thing asked
//! about lives elsewhere. Errors are [`AdminError`]s, turned into statuses in `error.rs` only.

use std::sync::Arc;
use std::time::Duration;

use medpool_proto::admin::medpool_admin_server::MedpoolAdmin;
use medpool_proto::admin::{self as pb, GatewayAdminState};
use openraft::async_runtime::watch::WatchReceiver;
use tonic::{Code, Request, Response, Status};

use super::calls;
use super::convert;
use super::ctx::{AdminCtx, Mode};
use super::diff;
use super::error::{AdminError, NoLeader};
use super::events;
use super::peers::PeerClient;

/// How long a write forwarded to the leader may take (membership changes, leadership transfer).
const FORWARD_TIMEOUT: Duration = Duration::from_secs(10);

/// The admin service of one node.
#[derive(Debug, Clone)]
pub struct AdminService {
    ctx: Arc<AdminCtx>,
}

impl AdminService {
    /// The service over `ctx`.
    pub fn new(ctx: Arc<AdminCtx>) -> AdminService {
        AdminService { ctx }
    }

    /// After a gateway state was committed: the nodes of `nodes` that show it within 3 s (each
    /// applies the Raft entry in its own time), and those that did not (or did not answer).
    async fn confirm_gateway_state(
        &self,
        name: &str,
        state: GatewayAdminState,
        nodes: Vec<u64>,
    ) -> (Vec<u64>, Vec<u64>) {
        let me = self.ctx.node_id();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        let mut confirmed = Vec::new();
        let mut waiting: Vec<u64> = nodes;
        loop {
            if waiting.contains(&me) && self.ctx.gateway_admin(name).0 == state {
                confirmed.push(me);
                waiting.retain(|n| *n != me);
            }
            let targets: Vec<(u64, String)> = self
                .ctx
                .others()
                .into_iter()
                .filter(|(id, _)| waiting.contains(id))
                .collect();
            let ask = pb::ListGatewaysRequest {
                name: name.to_owned(),
                local_only: true,
            };
            let g = self
                .ctx
                .peers
                .gather(targets, |mut c| {
                    let ask = ask.clone();
                    async move { c.list_gateways(ask).await }
                })
                .await;
            for (id, r) in g.answers {
                if r.gateways.iter().any(|h| h.admin() == state) {
                    confirmed.push(id);
                    waiting.retain(|n| *n != id);
                }
            }
            if waiting.is_empty() || tokio::time::Instant::now() >= deadline {
                return (confirmed, waiting);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pool as this node sees it, its own entry filled in, the others' marked unreachable.
    fn status_here(&self) -> pb::PoolStatusReply {
        let ctx = &self.ctx;
        let me = ctx.node_id();
        let active_calls = u32::try_from(ctx.node.active_calls()).unwrap_or(u32::MAX);
        let version = env!("CARGO_PKG_VERSION").to_owned();
        let media = media_status(&ctx.node);
        match &ctx.mode {
            Mode::Single(_) => {
                let (config_version, _) = ctx.config();
                let shards = u32::from(ctx.node.shards.shard_count());
                pb::PoolStatusReply {
                    node_id: me,
                    mode: "single".into(),
                    leader: Some(me),
                    term: 0,
                    committed_index: None,
                    applied_index: None,
                    shard_count: shards,
                    unowned_shards: 0,
                    config_version,
                    dialogs: 0,
                    nodes: vec![pb::NodeStatus {
                        id: me,
                        sip_addr: ctx.node.me.hostport.clone(),
                        admin_addr: ctx.admin_addr.clone(),
                        state: pb::NodeState::Active.into(),
                        voter: true,
                        leader: true,
                        shards,
                        reachable: true,
                        holds_lease: true,
                        active_calls,
                        version,
                        media_ports_in_use: media.map(|m| m.0),
                        media_ports_free: media.map(|m| m.1),
                        media_sessions: media.map(|m| m.2),
                        ..Default::default()
                    }],
                }
            }
            Mode::Pool { pool, lease } => {
                let m = pool.raft().metrics().borrow_watched().clone();
                let voters = ctx.voters();
                let remaining = pool.lease_remaining().filter(|r| !r.is_zero());
                let (nodes, shard_count, unowned, config_version, dialogs) =
                    pool.state().read(|s| {
                        let nodes: Vec<pb::NodeStatus> = s
                            .nodes()
                            .iter()
                            .map(|(id, n)| {
                                let mut st = pb::NodeStatus {
                                    id: *id,
                                    sip_addr: n.addresses.sip_addr.clone(),
                                    raft_addr: n.addresses.raft_addr.clone(),
                                    admin_addr: n.addresses.admin_addr.clone(),
                                    state: convert::node_state(n.state).into(),
                                    voter: voters.contains(id),
                                    leader: m.current_leader == Some(*id),
                                    shards: u32::try_from(s.shards_of(*id).len())
                                        .unwrap_or(u32::MAX),
                                    ..Default::default()
                                };
                                if *id == me {
                                    st.reachable = true;
                                    st.holds_lease = pool.holds_lease();
                                    st.lease_remaining_ms = remaining.map(convert::ms);
                                    st.lease_age_ms =
                                        remaining.map(|r| convert::ms(lease.saturating_sub(r)));
                                    st.active_calls = active_calls;
                                    st.version = version.clone();
                                    st.applied_index = m.last_applied.map(|l| l.index);
                                    st.internal_port = internal_port(pool).to_owned();
                                    st.media_ports_in_use = media.map(|m| m.0);
                                    st.media_ports_free = media.map(|m| m.1);
                                    st.media_sessions = media.map(|m| m.2);
                                }
                                st
                            })
                            .collect();
                        let unowned = s.shards().iter().filter(|e| e.owner.is_none()).count();
                        (
                            nodes,
                            u32::from(s.shard_count()),
                            u32::try_from(unowned).unwrap_or(u32::MAX),
                            s.config_version(),
                            u64::try_from(s.dialog_count()).unwrap_or(u64::MAX),
                        )
                    });
                pb::PoolStatusReply {
                    node_id: me,
                    mode: "pool".into(),
                    leader: m.current_leader,
                    term: m.current_term,
                    committed_index: m.cluster_committed.map(|l| l.index),
                    applied_index: m.last_applied.map(|l| l.index),
                    shard_count,
                    unowned_shards: unowned,
                    config_version,
                    dialogs,
                    nodes,
                }
            }
        }
    }

    /// Forwards a request to the leader when this node is not it.
    fn leader_addr(&self) -> Result<(u64, String), AdminError> {
        let leader = self
            .ctx
            .leader()
            .ok_or_else(|| AdminError::NoLeader(NoLeader::Unknown))?;
        let addr = self
            .ctx
            .admin_addr_of(leader)
            .ok_or_else(|| AdminError::NoLeader(NoLeader::NoAdminAddress(leader)))?;
        Ok((leader, addr))
    }

    /// Asks every other node (`ask` sets `local_only`) for a call this node does not know: the
    /// first answer wins; otherwise `CallNotFound`, naming the nodes that could not say (no answer
    /// in time, or an error other than NotFound).
    async fn ask_others_for_call<T, F, Fut>(&self, call_id: String, ask: F) -> Answer<T>
    where
        F: Fn(PeerClient) -> Fut,
        Fut: Future<Output = Answer<T>>,
    {
        let g = self.ctx.peers.gather(self.ctx.others(), ask).await;
        if let Some((_, answer)) = g.answers.into_iter().next() {
            return Ok(Response::new(answer));
        }
        let mut unavailable = g.unavailable;
        unavailable.extend(
            g.errors
                .into_iter()
                .filter(|(_, e)| e.code() != Code::NotFound)
                .map(|(id, _)| id),
        );
        unavailable.sort_unstable();
        Err(call_not_found(call_id, unavailable))
    }

    fn forwarded_error(leader: u64, e: Option<Status>) -> AdminError {
        match e {
            Some(status) => AdminError::Peer {
                node: leader,
                status,
            },
            None => AdminError::OutcomeUnknown(format!(
                "the leader (node {leader}) did not answer in {} s",
                FORWARD_TIMEOUT.as_secs()
            )),
        }
    }
}

/// This node's relay: (ports in use, ports free, sessions) — ports counted one by one, an RTP/RTCP
/// pair as two; `None` without a relay.
fn media_status(node: &medpool_b2bua::ctx::NodeCtx) -> Option<(u32, u32, u32)> {
    let relay = &node.media.as_ref()?.relay;
    let n = |v: usize| u32::try_from(v).unwrap_or(u32::MAX);
    Some((
        n(relay.ports().pairs_in_use() * 2),
        n(relay.ports().free_pairs() * 2),
        n(relay.sessions()),
    ))
}

type Answer<T> = Result<Response<T>, Status>;

/// A request field that must be given: `BadRequest` naming it when it is empty.
fn not_empty(field: &'static str, value: &str) -> Result<(), Status> {
    if value.is_empty() {
        return Err(AdminError::BadRequest {
            field,
            problem: "must not be empty",
        }
        .into());
    }
    Ok(())
}

fn call_not_found(call_id: String, unavailable: Vec<u64>) -> Status {
    AdminError::CallNotFound {
        call_id,
        unavailable,
    }
    .into()
}

#[tonic::async_trait]
impl MedpoolAdmin for AdminService {
    async fn pool_status(
        &self,
        req: Request<pb::PoolStatusRequest>,
    ) -> Answer<pb::PoolStatusReply> {
        let req = req.into_inner();
        let mut reply = self.status_here();
        if req.local_only {
            return Ok(Response::new(reply));
        }
        let others = self.ctx.others();
        if !others.is_empty() {
            let g = self
                .ctx
                .peers
                .gather(others, |mut c| async move {
                    c.pool_status(pb::PoolStatusRequest { local_only: true })
                        .await
                })
                .await;
            for (id, r) in g.answers {
                if let (Some(theirs), Some(slot)) = (
                    r.nodes.into_iter().find(|n| n.id == id),
                    reply.nodes.iter_mut().find(|n| n.id == id),
                ) {
                    slot.reachable = true;
                    slot.holds_lease = theirs.holds_lease;
                    slot.lease_remaining_ms = theirs.lease_remaining_ms;
                    slot.lease_age_ms = theirs.lease_age_ms;
                    slot.active_calls = theirs.active_calls;
                    slot.version = theirs.version;
                    slot.applied_index = theirs.applied_index;
                    slot.internal_port = theirs.internal_port;
                    slot.media_ports_in_use = theirs.media_ports_in_use;
                    slot.media_ports_free = theirs.media_ports_free;
                    slot.media_sessions = theirs.media_sessions;
                }
            }
        }
        Ok(Response::new(reply))
    }

    async fn list_calls(&self, req: Request<pb::ListCallsRequest>) -> Answer<pb::ListCallsReply> {
        let req = req.into_inner();
        let me = self.ctx.node_id();
        let mut targets = self.ctx.others();
        if let Some(n) = req.node {
            if n != me && !targets.iter().any(|(id, _)| *id == n) {
                return Err(AdminError::NodeNotFound(n).into());
            }
            targets.retain(|(id, _)| *id == n);
        }
        let mut all = Vec::new();
        if req.node.is_none_or(|n| n == me) {
            all = calls::list_local(&self.ctx.node, me, &req).await;
        }
        let mut unavailable = Vec::new();
        // A node that holds more than a page of calls sends its first page and its own token.
        let mut more_elsewhere = false;
        if !req.local_only && !targets.is_empty() {
            let ask = pb::ListCallsRequest {
                local_only: true,
                node: None,
                ..req.clone()
            };
            let g = self
                .ctx
                .peers
                .gather(targets, |mut c| {
                    let ask = ask.clone();
                    async move { c.list_calls(ask).await }
                })
                .await;
            for (_, r) in g.answers {
                more_elsewhere |= !r.next_page_token.is_empty();
                all.extend(r.calls);
            }
            unavailable = g.unavailable;
            for (id, e) in g.errors {
                tracing::warn!(node = id, error = %e, "ListCalls: node answered with an error");
                unavailable.push(id);
            }
            unavailable.sort_unstable();
        }
        let (calls, next_page_token) =
            calls::page(all, &req.page_token, req.page_size, more_elsewhere);
        Ok(Response::new(pb::ListCallsReply {
            calls,
            next_page_token,
            unavailable_nodes: unavailable,
        }))
    }

    async fn get_call(&self, req: Request<pb::GetCallRequest>) -> Answer<pb::Call> {
        let req = req.into_inner();
        not_empty("call_id", &req.call_id)?;
        if let Some((info, _)) = calls::find(&self.ctx.node, &req.call_id).await {
            return Ok(Response::new(convert::call(info, self.ctx.node_id())));
        }
        if req.local_only {
            return Err(call_not_found(req.call_id, Vec::new()));
        }
        let ask = pb::GetCallRequest {
            call_id: req.call_id.clone(),
            local_only: true,
        };
        self.ask_others_for_call(req.call_id, |mut c| {
            let ask = ask.clone();
            async move { c.get_call(ask).await }
        })
        .await
    }

    async fn hangup_call(
        &self,
        req: Request<pb::HangupCallRequest>,
    ) -> Answer<pb::HangupCallReply> {
        let req = req.into_inner();
        not_empty("call_id", &req.call_id)?;
        if let Some((info, actor)) = calls::find(&self.ctx.node, &req.call_id).await
            && calls::hangup(&actor)
        {
            tracing::info!(call_id = %info.a_call_id, "call hung up by an operator");
            return Ok(Response::new(pb::HangupCallReply {
                node_id: self.ctx.node_id(),
                call_id: info.a_call_id,
            }));
        }
        if req.local_only {
            return Err(call_not_found(req.call_id, Vec::new()));
        }
        let ask = pb::HangupCallRequest {
            call_id: req.call_id.clone(),
            local_only: true,
        };
        self.ask_others_for_call(req.call_id, |mut c| {
            let ask = ask.clone();
            async move { c.hangup_call(ask).await }
        })
        .await
    }

    type WatchEventsStream = events::EventStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Answer<Self::WatchEventsStream> {
        Ok(Response::new(events::watch(
            self.ctx.clone(),
            req.into_inner().local_only,
        )))
    }

    async fn list_gateways(
        &self,
        req: Request<pb::ListGatewaysRequest>,
    ) -> Answer<pb::ListGatewaysReply> {
        let req = req.into_inner();
        let me = self.ctx.node_id();
        let config = self.ctx.node.config();
        let mut gateways: Vec<pb::GatewayHealth> = self
            .ctx
            .node
            .gateways
            .all()
            .iter()
            .filter(|h| req.name.is_empty() || h.name == req.name)
            .map(|h| {
                let mut g = convert::gateway(
                    h,
                    config.trunk(&h.name),
                    self.ctx.gateway_admin(&h.name),
                    self.ctx.node.gateways.ceilings(&h.name),
                    me,
                );
                convert::gateway_dns(&mut g, self.ctx.node.dns.view(&h.name));
                g
            })
            .collect();
        let mut unavailable = Vec::new();
        if !req.local_only {
            let ask = pb::ListGatewaysRequest {
                name: req.name.clone(),
                local_only: true,
            };
            let g = self
                .ctx
                .peers
                .gather(self.ctx.others(), |mut c| {
                    let ask = ask.clone();
                    async move { c.list_gateways(ask).await }
                })
                .await;
            for (_, r) in g.answers {
                gateways.extend(r.gateways);
            }
            unavailable = g.unavailable;
            unavailable.extend(g.errors.into_iter().map(|(id, _)| id));
            unavailable.sort_unstable();
            if !req.name.is_empty() && gateways.is_empty() {
                return Err(AdminError::GatewayNotFound(req.name).into());
            }
        }
        gateways.sort_by(|a, b| (&a.name, a.node_id).cmp(&(&b.name, b.node_id)));
        Ok(Response::new(pb::ListGatewaysReply {
            gateways,
            unavailable_nodes: unavailable,
        }))
    }

    async fn set_gateway_state(
        &self,
        req: Request<pb::SetGatewayStateRequest>,
    ) -> Answer<pb::SetGatewayStateReply> {
        let req = req.into_inner();
        not_empty("name", &req.name)?;
        if req.state() == GatewayAdminState::Unspecified {
            return Err(AdminError::BadRequest {
                field: "state",
                problem: "give enabled, disabled or draining",
            }
            .into());
        }
        let me = self.ctx.node_id();
        // In a pool the choice is one Raft write, applied on every node (and on a node that
        // restarts or joins later); a request relayed by a node of an older version
        // (`local_only`) is that node's own choice.
        let node = match (self.ctx.pool().is_some(), req.local_only, req.node) {
            (true, true, _) => Some(me),
            (true, false, n) => n,
            (false, _, Some(n)) if n != me => return Err(AdminError::NodeNotFound(n).into()),
            (false, _, _) => None,
        };
        let nodes = self
            .ctx
            .set_gateway_admin(&req.name, node, req.state())
            .await?;
        tracing::info!(gateway = %req.name, state = ?req.state(), node = ?node, "gateway state set by an operator");
        let (mut nodes, mut unavailable) = if self.ctx.pool().is_some() && !req.local_only {
            self.confirm_gateway_state(&req.name, req.state(), nodes)
                .await
        } else {
            (nodes, Vec::new())
        };
        nodes.sort_unstable();
        unavailable.sort_unstable();
        Ok(Response::new(pb::SetGatewayStateReply {
            nodes,
            unavailable_nodes: unavailable,
        }))
    }

    async fn get_config(&self, _req: Request<pb::GetConfigRequest>) -> Answer<pb::GetConfigReply> {
        let (version, body) = self.ctx.config();
        Ok(Response::new(pb::GetConfigReply { version, body }))
    }

    async fn validate_config(
        &self,
        req: Request<pb::ValidateConfigRequest>,
    ) -> Answer<pb::ValidateConfigReply> {
        let req = req.into_inner();
        let config = self.ctx.validate(&req.body, &req.name)?;
        let (_, current) = self.ctx.config();
        Ok(Response::new(pb::ValidateConfigReply {
            diff: diff::diff(&current, &req.body),
            trunks: u32::try_from(config.trunks.len()).unwrap_or(u32::MAX),
            routes: u32::try_from(config.routes.len()).unwrap_or(u32::MAX),
        }))
    }

    async fn apply_config(
        &self,
        req: Request<pb::ApplyConfigRequest>,
    ) -> Answer<pb::ApplyConfigReply> {
        let req = req.into_inner();
        let (version, diff) = self
            .ctx
            .apply_config(req.body, &req.name, req.expected_version)
            .await?;
        tracing::info!(
            version,
            changes = diff.len(),
            "configuration applied by an operator"
        );
        Ok(Response::new(pb::ApplyConfigReply { version, diff }))
    }

    async fn drain_node(&self, req: Request<pb::NodeRequest>) -> Answer<pb::NodeReply> {
        let r = self.ctx.set_node_state(req.into_inner().node, true).await?;
        tracing::info!(node = r.node, "node draining (operator)");
        Ok(Response::new(r))
    }

    async fn undrain_node(&self, req: Request<pb::NodeRequest>) -> Answer<pb::NodeReply> {
        let r = self
            .ctx
            .set_node_state(req.into_inner().node, false)
            .await?;
        tracing::info!(node = r.node, "node active again (operator)");
        Ok(Response::new(r))
    }

    async fn remove_node(&self, req: Request<pb::NodeRequest>) -> Answer<pb::NodeReply> {
        let req = req.into_inner();
        if self.ctx.pool().is_none() {
            return Err(AdminError::SingleNode("removing a node").into());
        }
        let me = self.ctx.node_id();
        if self.ctx.leader() == Some(me) {
            let r = self.ctx.remove_node_here(req.node).await?;
            tracing::info!(node = req.node, "node removed from the pool (operator)");
            return Ok(Response::new(r));
        }
        if req.forwarded {
            return Err(AdminError::NoLeader(NoLeader::Moved).into());
        }
        self.ctx.node_record(req.node)?;
        let (leader, addr) = self.leader_addr()?;
        let ask = pb::NodeRequest {
            node: req.node,
            forwarded: true,
        };
        let r = self
            .ctx
            .peers
            .ask(leader, &addr, FORWARD_TIMEOUT, |mut c| async move {
                c.remove_node(ask).await
            })
            .await
            .map_err(|e| Self::forwarded_error(leader, e))?;
        // The leader applied it; wait (briefly) for this node's copy to agree.
        self.ctx
            .wait_until(Duration::from_secs(2), |c| c.node_record(req.node).is_err())
            .await;
        Ok(Response::new(r))
    }

    async fn set_log_level(
        &self,
        req: Request<pb::SetLogLevelRequest>,
    ) -> Answer<pb::SetLogLevelReply> {
        let filter = req.into_inner().filter;
        crate::telemetry::set_log_filter(&filter).map_err(|_| AdminError::BadRequest {
            field: "filter",
            problem: "not a valid log filter (the --log syntax, e.g. info,medpool_b2bua=debug)",
        })?;
        tracing::info!(%filter, "log filter changed (operator)");
        Ok(Response::new(pb::SetLogLevelReply { filter }))
    }

    async fn transfer_leader(
        &self,
        req: Request<pb::TransferLeaderRequest>,
    ) -> Answer<pb::TransferLeaderReply> {
        let req = req.into_inner();
        if self.ctx.pool().is_none() {
            return Err(AdminError::SingleNode("transferring leadership").into());
        }
        let me = self.ctx.node_id();
        if self.ctx.leader() == Some(me) {
            let r = self.ctx.transfer_leader_here(req.to).await?;
            tracing::info!(from = me, to = ?r.leader, "leadership transferred (operator)");
            return Ok(Response::new(r));
        }
        if req.forwarded {
            return Err(AdminError::NoLeader(NoLeader::Moved).into());
        }
        if let Some(to) = req.to {
            self.ctx.node_record(to)?;
        }
        let (leader, addr) = self.leader_addr()?;
        let ask = pb::TransferLeaderRequest {
            to: req.to,
            forwarded: true,
        };
        let r = self
            .ctx
            .peers
            .ask(leader, &addr, FORWARD_TIMEOUT, |mut c| async move {
                c.transfer_leader(ask).await
            })
            .await
            .map_err(|e| Self::forwarded_error(leader, e))?;
        Ok(Response::new(r))
    }
}

/// How this node's internal port is served (`NodeStatus.internal_port`).
fn internal_port(pool: &medpool_cluster::pool::Pool) -> &'static str {
    if pool.internal_tls() {
        "mtls"
    } else if pool.insecure_internal() {
        "insecure"
    } else {
        "loopback"
    }
}
