//! What this node answers on the internal service ([`PoolHooks`]): joins, forwarded SIP, lease
//! heartbeats and writes carried from other nodes, each handed to the [`Pool`] while it lives.

use medpool_proto::cluster::{
    ForwardAck, JoinReply, JoinRequest, LeaseReply, LeaseRequest, SipForward,
};

use crate::command::{Command, CommandResult};
use crate::error::{NotAppended, WriteError};
use crate::grpc::PoolHooks;

use super::Pool;

pub(super) struct Hooks(pub(super) std::sync::Weak<Pool>);

#[tonic::async_trait]
impl PoolHooks for Hooks {
    async fn join(&self, req: JoinRequest) -> JoinReply {
        match self.0.upgrade() {
            Some(p) => p.handle_join(req).await,
            None => JoinReply {
                accepted: false,
                error: "shutting down".into(),
                ..JoinReply::default()
            },
        }
    }
    async fn forward(&self, msg: SipForward) -> ForwardAck {
        let pool = self.0.upgrade();
        if let Some(p) = &pool {
            p.note_forward_from(&msg);
        }
        let accepted = pool.and_then(|p| p.sink()).is_some_and(|s| s.deliver(msg));
        ForwardAck { accepted }
    }
    async fn lease(&self, req: LeaseRequest) -> LeaseReply {
        match self.0.upgrade() {
            Some(p) => p.handle_lease(req).await,
            None => LeaseReply::default(),
        }
    }
    async fn write(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        match self.0.upgrade() {
            Some(p) => p.write_from_peer(cmd).await,
            None => Err(WriteError::NotAppended(NotAppended::AtLeader(
                "shutting down".into(),
            ))),
        }
    }
    async fn info(&self) -> Vec<u8> {
        match self.0.upgrade() {
            Some(p) => serde_json::to_vec(&p.info()).unwrap_or_default(),
            None => Vec::new(),
        }
    }
    fn leader_rpc(&self, term: u64) {
        if let Some(p) = self.0.upgrade() {
            p.leader_rpc(term);
        }
    }
}
