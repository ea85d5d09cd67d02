//! The internal gRPC service (`medpool.cluster.v1.Cluster`) a node serves to the other nodes of its
//! pool: Raft RPCs into the local openraft instance, writes carried to the leader, and the pool's own
//! calls (join, SIP forwarding, leases) handed to [`PoolHooks`]. Never served on the admin port.

use std::sync::Arc;

use medpool_proto::cluster::cluster_server::{Cluster, ClusterServer};
use medpool_proto::cluster::write_failure::Kind;
use medpool_proto::cluster::write_reply::Outcome;
use medpool_proto::cluster::{
    ForwardAck, InfoReply, InfoRequest, JoinReply, JoinRequest, LeaseReply, LeaseRequest,
    RaftPayload, SipForward, WriteFailure, WriteReply,
};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use tonic::{Request, Response, Status};

use crate::command::{Command, CommandResult};
use crate::error::{NotAppended, WriteError};
use crate::network::{MAX_MESSAGE, SnapshotEnvelope, decode, encode};
use crate::store::Raft;
use crate::typ::{Snapshot, TypeConfig};

/// What the pool layer answers on the internal service.
#[tonic::async_trait]
pub trait PoolHooks: Send + Sync + 'static {
    /// A node asks to join the pool.
    async fn join(&self, req: JoinRequest) -> JoinReply;
    /// A message for a shard this node owns (or an answer to send from here).
    async fn forward(&self, msg: SipForward) -> ForwardAck;
    /// A lease heartbeat (served by the leader).
    async fn lease(&self, req: LeaseRequest) -> LeaseReply;
    /// A write, carried to the leader when this node is not it.
    async fn write(&self, cmd: Command) -> Result<CommandResult, WriteError>;
    /// The pool as this node sees it (JSON).
    async fn info(&self) -> Vec<u8>;
}

/// The service.
pub struct ClusterService {
    raft: Raft,
    hooks: Arc<dyn PoolHooks>,
}

impl ClusterService {
    /// A tonic server for `raft` with the pool's `hooks`, with the internal message-size limits.
    pub fn server(raft: Raft, hooks: Arc<dyn PoolHooks>) -> ClusterServer<ClusterService> {
        ClusterServer::new(ClusterService { raft, hooks })
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

fn bad(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn payload<T: serde::Serialize>(v: &T) -> Result<Response<RaftPayload>, Status> {
    encode(v)
        .map(|data| Response::new(RaftPayload { data }))
        .map_err(|e| Status::internal(e.to_string()))
}

/// A write's outcome as the leader sends it back: applied or refused (a [`CommandResult`], a
/// refusal as [`CommandResult::Rejected`]), or a typed failure.
pub fn write_reply(r: Result<CommandResult, WriteError>) -> Result<WriteReply, serde_json::Error> {
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
        let rpc: AppendEntriesRequest<TypeConfig> = decode(&req.into_inner().data).map_err(bad)?;
        payload(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, req: Request<RaftPayload>) -> Result<Response<RaftPayload>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(&req.into_inner().data).map_err(bad)?;
        payload(&self.raft.vote(rpc).await)
    }

    async fn transfer_leader(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = decode(&req.into_inner().data).map_err(bad)?;
        let r: Result<_, crate::typ::RaftError> = self
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(crate::typ::RaftError::Fatal);
        payload(&r)
    }

    async fn install_snapshot(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<RaftPayload>, Status> {
        let env: SnapshotEnvelope = decode(&req.into_inner().data).map_err(bad)?;
        let snapshot = Snapshot {
            meta: env.meta,
            snapshot: env.data,
        };
        let r: Result<_, crate::typ::RaftError> = self
            .raft
            .install_full_snapshot(env.vote, snapshot)
            .await
            .map_err(crate::typ::RaftError::Fatal);
        payload(&r)
    }

    async fn client_write(
        &self,
        req: Request<RaftPayload>,
    ) -> Result<Response<WriteReply>, Status> {
        let cmd: Command = decode(&req.into_inner().data).map_err(bad)?;
        write_reply(self.hooks.write(cmd).await)
            .map(Response::new)
            .map_err(|e| Status::internal(e.to_string()))
    }

    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        Ok(Response::new(self.hooks.join(req.into_inner()).await))
    }

    async fn forward(&self, req: Request<SipForward>) -> Result<Response<ForwardAck>, Status> {
        Ok(Response::new(self.hooks.forward(req.into_inner()).await))
    }

    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoReply>, Status> {
        Ok(Response::new(InfoReply {
            json: self.hooks.info().await,
        }))
    }

    async fn lease(&self, req: Request<LeaseRequest>) -> Result<Response<LeaseReply>, Status> {
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
