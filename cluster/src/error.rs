//! Why a write to the pool did not commit ([`WriteError`]): the three outcomes a caller must tell
//! apart — nothing was appended (safe to try again), the outcome is unknown (the command may be in
//! the log), or the state machine refused it (nothing changed, with the typed [`Rejection`]).
//! Pure data: callers decide by matching on the variants, never on the text.

use crate::command::Rejection;

/// A write that did not commit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Nothing was appended to the log: trying again cannot apply the command twice.
    #[error("no leader reachable ({0})")]
    NotAppended(NotAppended),
    /// The command may have reached the log (the leader was lost or timed out during the write):
    /// its outcome is unknown.
    #[error("outcome unknown ({0})")]
    MaybeApplied(String),
    /// The state machine refused the command; the state did not change.
    #[error("refused: {0}")]
    Refused(Rejection),
}

/// Why nothing was appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotAppended {
    /// No leader is known (an election is under way, or there is no quorum).
    #[error("no leader")]
    NoLeader,
    /// A leader is known but its internal address is not (yet) in this node's applied state.
    #[error("leader address unknown")]
    LeaderAddressUnknown,
    /// The request never reached the leader: its transport answered UNAVAILABLE (the text is the
    /// transport's).
    #[error("{0}")]
    LeaderUnreachable(String),
    /// This node's Raft refused to append: it is not (or no longer) the leader (the text is
    /// openraft's).
    #[error("{0}")]
    NotLeader(String),
    /// The command could not be serialized to be sent to the leader (nothing was sent).
    #[error("cannot send the command: {0}")]
    Unsendable(String),
    /// The leader itself could not append the command (it gave up after its own retries, or it is
    /// shutting down); the text is its account.
    #[error("{0}")]
    AtLeader(String),
}

impl WriteError {
    /// Whether [`Pool::write`](crate::pool::Pool::write) tries this again (within its deadline):
    /// nothing was appended, and this node can still find a leader that may append it. A leader's
    /// own "not appended" is final (it already retried).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            WriteError::NotAppended(
                NotAppended::NoLeader
                    | NotAppended::LeaderAddressUnknown
                    | NotAppended::LeaderUnreachable(_)
                    | NotAppended::NotLeader(_)
            )
        )
    }
}
