//! Writes through the leader: [`Pool::write`] proposes a command to this node's Raft when it leads,
//! or carries it to the leader over the internal service, and answers a typed [`WriteError`]. What
//! appended nothing is retried for a few seconds; what may have reached the log never is.

use std::time::Duration;

use medpool_proto::cluster::RaftPayload;
use tokio::time::Instant;

use crate::command::{Command, CommandResult};
use crate::error::{NotAppended, WriteError};
use crate::grpc::read_write_reply;
use crate::network::encode;

use super::Pool;

impl Pool {
    /// Proposes a command, through the leader when this node is not it. A refusal that appended
    /// nothing (no leader yet, a leader whose lease to its quorum lapsed, a leader change) is retried
    /// for up to 3 s; a write that may have reached the log is never retried (its outcome is unknown).
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.write_once(cmd.clone()).await {
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    pub(super) async fn write_once(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        let leader = self.raft.current_leader().await;
        let result = if leader == Some(self.opts.node_id) {
            match self.raft.client_write(cmd).await {
                Ok(r) => r.data,
                // Nothing was appended: safe to try again (possibly at another leader).
                Err(e) if e.forward_to_leader().is_some() => {
                    return Err(WriteError::NotAppended(NotAppended::NotLeader(
                        e.to_string(),
                    )));
                }
                Err(e) => return Err(WriteError::MaybeApplied(e.to_string())),
            }
        } else {
            let Some(leader) = leader else {
                return Err(WriteError::NotAppended(NotAppended::NoLeader));
            };
            let Some(mut c) = self.client_for(leader) else {
                return Err(WriteError::NotAppended(NotAppended::LeaderAddressUnknown));
            };
            // Serializing our own command cannot fail; if it did, nothing was sent.
            let data = encode(&cmd)
                .map_err(|e| WriteError::NotAppended(NotAppended::Unsendable(e.to_string())))?;
            let reply = match tokio::time::timeout(
                Duration::from_secs(5),
                c.client_write(RaftPayload { data }),
            )
            .await
            {
                Err(_) => return Err(WriteError::MaybeApplied("leader timed out".into())),
                // The request never reached the leader: safe to retry.
                Ok(Err(e)) if e.code() == tonic::Code::Unavailable => {
                    return Err(WriteError::NotAppended(NotAppended::LeaderUnreachable(
                        e.message().to_owned(),
                    )));
                }
                Ok(Err(e)) => return Err(WriteError::MaybeApplied(e.message().to_owned())),
                Ok(Ok(r)) => r.into_inner(),
            };
            read_write_reply(reply)?
        };
        match result {
            CommandResult::Rejected(r) => Err(WriteError::Refused(r)),
            ok => Ok(ok),
        }
    }
}
