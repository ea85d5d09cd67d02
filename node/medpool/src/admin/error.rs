//! What an admin request can fail with, and the one place where that becomes a gRPC status
//! (STYLE.md item 6). Every RPC, the authentication interceptor and the fan-out to other nodes
//! return [`AdminError`]; only `From<AdminError> for tonic::Status` below picks codes:
//!
//! | error | code |
//! |---|---|
//! | invalid configuration (names the field path) / malformed request | `INVALID_ARGUMENT` |
//! | unknown call, gateway or node | `NOT_FOUND` |
//! | stale configuration version, refused by the pool, single-node pool, owns shards | `FAILED_PRECONDITION` |
//! | no or bad token | `UNAUTHENTICATED` |
//! | no leader / no quorum (nothing was changed) | `UNAVAILABLE` |
//! | the leader was lost during a write (it may or may not be applied) | `UNKNOWN` |
//! | another node answered with an error | that node's code |

use medpool_b2bua::config::ConfigError;
use medpool_cluster::pool::WriteError;
use tonic::{Code, Status};

/// gRPC metadata key (a trailer) naming the configuration field an `INVALID_ARGUMENT` is about.
pub const FIELD_PATH_KEY: &str = "medpool-field-path";

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The configuration does not validate; `field` is its path, e.g. `route[1].trunks[0]`.
    #[error("invalid configuration: {message}")]
    InvalidConfig {
        /// The field path (empty when the text could not be parsed at all).
        field: String,
        /// The validator's message: `FILE:LINE: FIELD.PATH: problem`.
        message: String,
    },
    /// A request field is missing or malformed.
    #[error("{field}: {problem}")]
    BadRequest {
        /// The request field.
        field: &'static str,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// No call with that Call-ID on any node that answered.
    #[error("no call with Call-ID {call_id:?}{}", unavailable_suffix(.unavailable))]
    CallNotFound {
        /// The Call-ID asked for.
        call_id: String,
        /// Nodes that did not answer (the call may be on one of them).
        unavailable: Vec<u64>,
    },
    /// No gateway trunk of that name.
    #[error("no gateway {0:?}")]
    GatewayNotFound(String),
    /// No node of that id in the pool.
    #[error("node {0} is not a member of the pool")]
    NodeNotFound(u64),
    /// The configuration changed since the version the change was based on.
    #[error(
        "configuration version {} is current, the change was based on version {}",
        version_text(*.current),
        version_text(*.expected)
    )]
    StaleVersion {
        /// The version the caller expected.
        expected: Option<u64>,
        /// The current version.
        current: Option<u64>,
    },
    /// A node to remove still owns shards.
    #[error(
        "node {node} still owns {shards} shards: drain it first (medpool ctl node drain {node})"
    )]
    NodeOwnsShards {
        /// The node.
        node: u64,
        /// How many shards.
        shards: u32,
    },
    /// The leader cannot remove itself.
    #[error("node {0} is the leader: transfer leadership first (medpool ctl leader transfer)")]
    RemoveLeader(u64),
    /// Leadership can only go to a voter.
    #[error("node {0} is not a Raft voter")]
    NotVoter(u64),
    /// No other voter to hand leadership to.
    #[error("no other voter to hand leadership to")]
    NoOtherVoter,
    /// An operation that needs a Raft pool, on the embedded single-node pool.
    #[error(
        "{0} needs a pool of several nodes; this node runs the single-node pool (no --raft-listen)"
    )]
    SingleNode(&'static str),
    /// The pool's state machine refused the command (nothing changed).
    #[error("refused by the pool: {0}")]
    Refused(String),
    /// No leader, or no quorum: nothing was changed.
    #[error("no leader or no quorum ({0}); nothing was changed, try again")]
    NoLeader(String),
    /// The write may or may not have been applied (the leader was lost during it).
    #[error("outcome unknown: {0}; check with `medpool ctl status` before trying again")]
    OutcomeUnknown(String),
    /// No or bad bearer token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// Another node answered with an error (its code is kept).
    #[error("node {node}: {}", .status.message())]
    Peer {
        /// The node.
        node: u64,
        /// Its answer.
        status: Status,
    },
}

fn version_text(v: Option<u64>) -> String {
    v.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

fn unavailable_suffix(nodes: &[u64]) -> String {
    if nodes.is_empty() {
        String::new()
    } else {
        let ids: Vec<String> = nodes.iter().map(u64::to_string).collect();
        format!(" (nodes {} did not answer)", ids.join(", "))
    }
}

impl AdminError {
    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            AdminError::InvalidConfig { .. } | AdminError::BadRequest { .. } => {
                Code::InvalidArgument
            }
            AdminError::CallNotFound { .. }
            | AdminError::GatewayNotFound(_)
            | AdminError::NodeNotFound(_) => Code::NotFound,
            AdminError::StaleVersion { .. }
            | AdminError::NodeOwnsShards { .. }
            | AdminError::RemoveLeader(_)
            | AdminError::NotVoter(_)
            | AdminError::NoOtherVoter
            | AdminError::SingleNode(_)
            | AdminError::Refused(_) => Code::FailedPrecondition,
            AdminError::NoLeader(_) => Code::Unavailable,
            AdminError::OutcomeUnknown(_) => Code::Unknown,
            AdminError::Unauthenticated(_) => Code::Unauthenticated,
            AdminError::Peer { status, .. } => status.code(),
        }
    }
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        let mut status = Status::new(e.code(), e.to_string());
        if let AdminError::InvalidConfig { field, .. } = &e
            && !field.is_empty()
            && let Ok(v) = field.parse()
        {
            status.metadata_mut().insert(FIELD_PATH_KEY, v);
        }
        status
    }
}

impl From<ConfigError> for AdminError {
    fn from(e: ConfigError) -> AdminError {
        AdminError::InvalidConfig {
            field: e.location().map(|l| l.field.clone()).unwrap_or_default(),
            message: e.to_string(),
        }
    }
}

impl From<WriteError> for AdminError {
    /// `Pool::write` retries for a few seconds what never reached the log; what it gives up on is
    /// either "no leader" / "leader address unknown" (nothing was appended: `UNAVAILABLE`) or
    /// something that may have been appended (`UNKNOWN`). Anything not known to be harmless is
    /// reported as unknown: a false "unknown" only makes an operator look, a false "nothing
    /// changed" could make them apply twice.
    fn from(e: WriteError) -> AdminError {
        match e {
            WriteError::Refused(why) => {
                AdminError::Refused(why.strip_prefix("refused: ").unwrap_or(&why).to_owned())
            }
            WriteError::NoLeader(why) if why == "no leader" || why == "leader address unknown" => {
                AdminError::NoLeader(why)
            }
            WriteError::NoLeader(why) => AdminError::OutcomeUnknown(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_follow_the_table() {
        let invalid = AdminError::InvalidConfig {
            field: "route[1].trunks[0]".into(),
            message: "x.toml:3: route[1].trunks[0]: unknown trunk \"gw9\"".into(),
        };
        let s = Status::from(invalid);
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("route[1].trunks[0]"));
        assert_eq!(
            s.metadata()
                .get(FIELD_PATH_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("route[1].trunks[0]")
        );
        let stale = AdminError::StaleVersion {
            expected: Some(1),
            current: Some(2),
        };
        assert_eq!(Status::from(stale).code(), Code::FailedPrecondition);
        assert_eq!(
            AdminError::CallNotFound {
                call_id: "x".into(),
                unavailable: vec![3]
            }
            .to_string(),
            "no call with Call-ID \"x\" (nodes 3 did not answer)"
        );
        assert_eq!(
            AdminError::from(WriteError::NoLeader("no leader".into())).code(),
            Code::Unavailable
        );
        assert_eq!(
            AdminError::from(WriteError::NoLeader("leader timed out".into())).code(),
            Code::Unknown
        );
        assert_eq!(
            AdminError::from(WriteError::Refused("refused: stale".into())).code(),
            Code::FailedPrecondition
        );
        assert_eq!(
            Status::from(AdminError::Unauthenticated("no token")).code(),
            Code::Unauthenticated
        );
    }
}
