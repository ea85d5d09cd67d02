//! Writes through the leader: [`Pool::write`] proposes a command to this node's Raft when it leads,
//! or sends it to the leader over the internal service, and answers a typed [`WriteError`]. What
//! appended nothing is retried for a few seconds; what may have reached the log never is. A write
//! another node sent ([`Pool::write_from_peer`]) is proposed only by the leader, never relayed
//! (the leader checks it against the certificate of the node that wrote it); a configuration is
//! proposed only after the leader's own validation ([`super::ConfigValidator`]).

use std::time::Duration;

use medpool_proto::cluster::RaftPayload;
use tokio::time::Instant;

use crate::command::{Command, CommandResult, Rejection};
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
            return self.propose(cmd).await;
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
                // The leader refused the request itself (crate::admit): nothing was appended, and
                // sending it again would be refused again.
                Ok(Err(e))
                    if matches!(
                        e.code(),
                        tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
                    ) =>
                {
                    return Err(WriteError::NotAppended(NotAppended::AtLeader(
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

    /// A write another node sent (already admitted by [`crate::admit::admit_write`]): proposed
    /// when this node leads, else refused as not appended (the sender finds the leader).
    pub(super) async fn write_from_peer(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        if self.raft.current_leader().await != Some(self.opts.node_id) {
            return Err(WriteError::NotAppended(NotAppended::NotLeader(
                "not the leader".into(),
            )));
        }
        self.propose(cmd).await
    }

    /// Proposes a command to this node's Raft (as the leader): a configuration only once the
    /// validator accepts it, a dialog batch with the others of the next gathering (`gather.rs`).
    async fn propose(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        if let (Command::SetConfig { body, .. }, Some(v)) = (&cmd, &self.opts.config_validator)
            && let Err(reason) = v.validate(body)
        {
            return Err(WriteError::Refused(Rejection::InvalidConfig { reason }));
        }
        if matches!(cmd, Command::OwnerDialogBatch { .. }) {
            return self.propose_gathered(cmd).await;
        }
        self.propose_alone(cmd).await
    }

    /// Proposes a command to this node's Raft in an append of its own.
    pub(super) async fn propose_alone(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        let result = match self.raft.client_write(cmd).await {
            Ok(r) => r.data,
            // Nothing was appended: safe to try again (possibly at another leader).
            Err(e) if e.forward_to_leader().is_some() => {
                return Err(WriteError::NotAppended(NotAppended::NotLeader(
                    e.to_string(),
                )));
            }
            Err(e) => return Err(WriteError::MaybeApplied(e.to_string())),
        };
        super::gather::outcome_of(result)
    }
}
