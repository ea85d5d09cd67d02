//! The internal gRPC service (`medpool.cluster.v1.Cluster`) a node serves to the other nodes of its
//! pool: Raft RPCs into the local openraft instance, writes sent to the leader, and the pool's own
//! calls (join, SIP forwarding, leases) handed to [`PoolHooks`]. Never served on the admin port.
//!
//! Over mutual TLS (crate::listen, crate::tls) every request that names a node is refused unless
//! the client certificate is valid for that node's name ([`crate::tls::node_name`]): a join's and a
//! lease's node id, a forward's `via_node`, the candidate of a vote, the leader of an append, a
//! snapshot or a leader transfer, the node a write speaks for ([`crate::admit`]). Each message type
//! has its cap; snapshots arrive in chunks. [`Denied`] becomes a gRPC status in one place here.

use std::sync::Arc;

use medpool_proto::cluster::cluster_server::{Cluster, ClusterServer};
use medpool_proto::cluster::write_failure::Kind;
use medpool_proto::cluster::write_reply::Outcome;
use medpool_proto::cluster::{
    ForwardAck, InfoReply, InfoRequest, JoinReply, JoinRequest, LeaseReply, LeaseRequest,
    RaftPayload, SipForward, SnapshotChunk, WriteFailure, WriteReply,
};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use rustls::pki_types::CertificateDer;
use tonic::{Request, Response, Status, Streaming};

use crate::admit::{Denied, admit_write, cap};
use crate::codec::CodecError;
use crate::command::{Command, CommandResult};
use crate::error::{NotAppended, WriteError};
use crate::network::{
    MAX_MESSAGE, MAX_SMALL, MAX_SNAPSHOT, SnapshotAssembly, SnapshotRefused, decode, encode,
};
use crate::stats::{Rpc, STATS};
use crate::store::Raft;
use crate::tls::cert_names_node;
use crate::typ::{NodeId, Snapshot, TypeConfig};

/// Largest forwarded SIP message (a SIP message over TCP is at most 64 KiB here).
pub const MAX_SIP_FORWARD: usize = 64 * 1024;
/// Largest address or name field of a join or a forward.
pub const MAX_FIELD: usize = 256;
/// Largest serialized write (a command within its own caps, base64 and JSON included).
pub const MAX_WRITE: usize = 2 * MAX_SMALL;

/// What the pool layer answers on the internal service.
#[tonic::async_trait]
pub trait PoolHooks: Send + Sync + 'static {
    /// A node asks to join the pool.
    async fn join(&self, req: JoinRequest) -> JoinReply;
    /// A message for a shard this node owns (or an answer to send from here).
    async fn forward(&self, msg: SipForward) -> ForwardAck;
    /// A lease heartbeat (served by the leader).
    async fn lease(&self, req: LeaseRequest) -> LeaseReply;
    /// A write another node sent (admitted by [`admit_write`]): proposed when this node leads
    /// (a configuration only after the leader's validation), else refused as not appended
    /// ([`NotAppended::NotLeader`]): writes are never relayed.
    async fn write(&self, cmd: Command) -> Result<CommandResult, WriteError>;
    /// The pool as this node sees it (JSON).
    async fn info(&self) -> Vec<u8>;
    /// An RPC from the leader of `term` (AppendEntries or a snapshot) arrived; called before Raft
    /// handles it (the pool's failure detector uses it, `pool/prior.rs`).
    fn leader_rpc(&self, term: u64) {
        let _ = term;
    }
}

/// The service.
pub struct ClusterService {
    raft: Raft,
    hooks: Arc<dyn PoolHooks>,
    mtls: bool,
}

impl ClusterService {
    /// A tonic server for `raft` with the pool's `hooks`, with the internal message-size limits.
    /// `mtls`: connections arrive over mutual TLS (crate::listen::tls), and each request is checked
    /// against its client certificate; without it nothing is checked (loopback, or an explicitly
    /// insecure internal port).
    pub fn server(
        raft: Raft,
        hooks: Arc<dyn PoolHooks>,
        mtls: bool,
    ) -> ClusterServer<ClusterService> {
        ClusterServer::new(ClusterService { raft, hooks, mtls })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The end-entity certificate the request's connection presented (`None` without TLS).
    fn cert<T>(&self, req: &Request<T>) -> Result<Option<CertificateDer<'static>>, Denied> {
        if !self.mtls {
            return Ok(None);
        }
        req.peer_certs()
            .and_then(|c| c.first().cloned())
            .map(Some)
            .ok_or(Denied::NoCertificate)
    }

    /// Refuses the request unless its certificate speaks for `node` (anything goes without TLS).
    fn must_be<T>(&self, req: &Request<T>, node: NodeId) -> Result<(), Status> {
        match self.cert(req)? {
            Some(c) if !cert_names_node(&c, node) => Err(Denied::NotThatNode { node }.into()),
            _ => Ok(()),
        }
    }
}

impl From<Denied> for Status {
    fn from(d: Denied) -> Status {
        match d {
            Denied::TooLarge { .. } => Status::invalid_argument(d.to_string()),
            Denied::NoCertificate | Denied::NotThatNode { .. } | Denied::LeaderOnly { .. } => {
                Status::permission_denied(d.to_string())
            }
        }
    }
}

impl From<SnapshotRefused> for Status {
    fn from(r: SnapshotRefused) -> Status {
        Status::invalid_argument(r.to_string())
    }
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// A forwarded message's caps (unary or streamed).
fn check_forward(m: &SipForward) -> Result<(), Denied> {
    cap("forwarded SIP message", m.message.len(), MAX_SIP_FORWARD)?;
    for f in [&m.peer, &m.transport, &m.traceparent] {
        cap("forward field", f.len(), MAX_FIELD)?;
    }
    Ok(())
}

fn small(what: &'static str, req: &Request<RaftPayload>) -> Result<(), Status> {
    Ok(cap(what, req.get_ref().data.len(), MAX_SMALL)?)
}

fn payload<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    encode(v)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(e.to_string()))
}

/// A write's outcome as the leader sends it back: applied or refused (a [`CommandResult`], a
/// refusal as [`CommandResult::Rejected`]), or a typed failure.
pub fn write_reply(r: Result<CommandResult, WriteError>) -> Result<WriteReply, CodecError> {
    let failure = |kind: Kind, detail: String| {
        Outcome::Failure(WriteFailure {
            kind: kind.into(),
            detail,
        })
    };
    let outcome = match r {
        Ok(result) => Outcome::Result(encode(&result)?),
        Err(WriteError::Refused(rejection)) => {
            Outcome::Result(encode(&CommandResult::Rejected(rejection))?)
        }
        Err(WriteError::NotAppended(NotAppended::NotLeader(why))) => failure(Kind::NotLeader, why),
        Err(WriteError::NotAppended(why)) => failure(Kind::NotAppended, why.to_string()),
        Err(WriteError::MaybeApplied(why)) => failure(Kind::MaybeApplied, why),
    };
    Ok(WriteReply {
        outcome: Some(outcome),
    })
}

/// A write's outcome as received from the leader ([`write_reply`]'s inverse). The leader's "not
/// appended" becomes [`NotAppended::AtLeader`] (it already retried); an answer that cannot be
/// read, or names no outcome, may hide an applied command.
pub fn read_write_reply(reply: WriteReply) -> Result<CommandResult, WriteError> {
    match reply.outcome {
        Some(Outcome::Result(data)) => match decode::<CommandResult>(&data) {
            Ok(CommandResult::Rejected(r)) => Err(WriteError::Refused(r)),
            Ok(result) => Ok(result),
            Err(e) => Err(WriteError::MaybeApplied(format!("bad answer: {e}"))),
        },
        Some(Outcome::Failure(f)) => match Kind::try_from(f.kind) {
            Ok(Kind::NotAppended) => Err(WriteError::NotAppended(NotAppended::AtLeader(f.detail))),
            Ok(Kind::NotLeader) => Err(WriteError::NotAppended(NotAppended::NotLeader(f.detail))),
            Ok(Kind::MaybeApplied | Kind::Unspecified) | Err(_) => {
                Err(WriteError::MaybeApplied(f.detail))
            }
        },
        None => Err(WriteError::MaybeApplied("empty answer".into())),
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn append_entries(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        STATS.rpc(Rpc::AppendEntries, false);
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.get_ref().data).map_err(bad)?;
        self.must_be(&req, rpc.vote.leader_id().node_id)?;
        self.hooks.leader_rpc(rpc.vote.leader_id().term);
        payload(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        STATS.rpc(Rpc::Vote, false);
        small("vote", &req)?;
        let rpc: VoteRequest<TypeConfig> = decode(&req.get_ref().data).map_err(bad)?;
        self.must_be(&req, rpc.vote.leader_id().node_id)?;
        payload(&self.raft.vote(rpc).await)
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        STATS.rpc(Rpc::Other, false);
        small("transfer-leader", &req)?;
        let rpc: TransferLeaderRequest<TypeConfig> = decode(&req.get_ref().data).map_err(bad)?;
        self.must_be(&req, rpc.from_leader().leader_id().node_id)?;
        let r: Result<_, crate::typ::RaftError> = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(crate::typ::RaftError::Fatal);
        payload(&r)
    }

    async fn install_snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftPayload>, Status> {
        STATS.rpc(Rpc::InstallSnapshot, false);
        // Only a member reads on; which member is known from the first chunk's header.
        let cert = self.cert(&req)?;
        let mut chunks = req.into_inner();
        let mut assembly = SnapshotAssembly::new(MAX_SNAPSHOT);
        let mut checked = false;
        while let Some(chunk) = chunks.message().await? {
            assembly.push(chunk)?;
            if !checked && let Some(leader) = assembly.leader() {
                if let Some(c) = &cert
                    && !cert_names_node(c, leader)
                {
                    return Err(Denied::NotThatNode { node: leader }.into());
                }
                checked = true;
            }
        }
        let (header, data) = assembly.finish()?;
        self.hooks.leader_rpc(header.vote.leader_id().term);
        let snapshot = Snapshot {
            meta: header.meta,
            snapshot: data,
        };
        let r: Result<_, crate::typ::RaftError> = self
            .raft
            .install_full_snapshot(header.vote, snapshot)
            .await
            .map_err(crate::typ::RaftError::Fatal);
        payload(&r)
    }

    async fn client_write(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<WriteReply>, Status> {
        STATS.rpc(Rpc::ClientWrite, false);
        cap("write", req.get_ref().data.len(), MAX_WRITE)?;
        let cert = self.cert(&req)?;
        let cmd: Command = decode(&req.get_ref().data).map_err(bad)?;
        admit_write(&cmd, |node| {
            cert.as_ref().is_none_or(|c| cert_names_node(c, node))
        })?;
        write_reply(self.hooks.write(cmd).await)
            .map(Response::new)
            .map_err(|e| Status::internal(e.to_string()))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        STATS.rpc(Rpc::Other, false);
        let r = req.get_ref();
        for f in [&r.raft_addr, &r.sip_addr, &r.admin_addr] {
            cap("join address", f.len(), MAX_FIELD)?;
        }
        self.must_be(&req, r.node_id)?;
        Ok(Response::new(self.hooks.join(req.into_inner()).await))
    }

    async fn forward(&self, req: Request<SipForward>) -> Result<Response<ForwardAck>, Status> {
        STATS.rpc(Rpc::Forward, false);
        let m = req.get_ref();
        check_forward(m)?;
        self.must_be(&req, m.via_node)?;
        STATS
            .forward_in
            .record(1, m.message.len() as u64, std::time::Duration::ZERO);
        Ok(Response::new(self.hooks.forward(req.into_inner()).await))
    }

    async fn forward_stream(
        &self,
        req: Request<Streaming<SipForward>>,
    ) -> Result<Response<ForwardAck>, Status> {
        STATS.rpc(Rpc::Forward, false);
        let cert = self.cert(&req)?;
        let mut messages = req.into_inner();
        while let Some(m) = messages.message().await? {
            check_forward(&m)?;
            if let Some(c) = &cert
                && !cert_names_node(c, m.via_node)
            {
                return Err(Denied::NotThatNode { node: m.via_node }.into());
            }
            STATS
                .forward_in
                .record(1, m.message.len() as u64, std::time::Duration::ZERO);
            // Delivery is a queue push: one stream's messages are handled in their order.
            self.hooks.forward(m).await;
        }
        Ok(Response::new(ForwardAck { accepted: true }))
    }

    async fn info(&self, req: Request<InfoRequest>) -> Result<Response<InfoReply>, Status> {
        STATS.rpc(Rpc::Other, false);
        // Any member (with TLS, the handshake already asked for a certificate of the pool CA).
        self.cert(&req)?;
        Ok(Response::new(InfoReply {
            json: self.hooks.info().await,
        }))
    }

    async fn lease(&self, req: Request<LeaseRequest>) -> Result<Response<LeaseReply>, Status> {
        STATS.rpc(Rpc::Lease, false);
        self.must_be(&req, req.get_ref().node_id)?;
        Ok(Response::new(self.hooks.lease(req.into_inner()).await))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Rejection;

    /// What the follower reads back from what the leader answered.
    fn round_trip(r: Result<CommandResult, WriteError>) -> Result<CommandResult, WriteError> {
        read_write_reply(write_reply(r).unwrap_or_default())
    }

    #[test]
    fn a_write_outcome_keeps_its_type_across_the_internal_rpc() {
        assert_eq!(
            round_trip(Ok(CommandResult::ConfigSet { version: 3 })),
            Ok(CommandResult::ConfigSet { version: 3 })
        );
        let stale = Rejection::StaleConfigVersion {
            expected: Some(1),
            current: Some(2),
        };
        assert_eq!(
            round_trip(Err(WriteError::Refused(stale.clone()))),
            Err(WriteError::Refused(stale))
        );
        // The leader's "not appended" is final at the follower (the leader already retried).
        let at_leader = round_trip(Err(WriteError::NotAppended(NotAppended::NoLeader)));
        assert_eq!(
            at_leader,
            Err(WriteError::NotAppended(NotAppended::AtLeader(
                "no leader".into()
            )))
        );
        assert!(at_leader.is_err_and(|e| !e.is_retryable()));
        assert_eq!(
            round_trip(Err(WriteError::MaybeApplied("leader lost".into()))),
            Err(WriteError::MaybeApplied("leader lost".into()))
        );
        // An answer naming no outcome may hide an applied command.
        assert!(matches!(
            read_write_reply(WriteReply { outcome: None }),
            Err(WriteError::MaybeApplied(_))
        ));
    }
}
