//! What an admin request can fail with, and the one place where that becomes a gRPC status
//! (typed, mapped to gRPC codes in this one place). Every RPC, the authentication interceptor and the fan-out to other nodes
//! return [`AdminError`]; only `From<AdminError> for tonic::Status` below picks codes:
//!
//! | error | code |
//! |---|---|
//! | invalid configuration (names the field path) / malformed request | `INVALID_ARGUMENT` |
//! | unknown call, gateway or node | `NOT_FOUND` |
//! | stale configuration version, refused by the pool, single-node pool, owns shards | `FAILED_PRECONDITION` |
//! | no or bad token | `UNAUTHENTICATED` |
//! | the viewer token on a write (auth.rs's table) | `PERMISSION_DENIED` |
//! | no leader / no quorum (nothing was changed) | `UNAVAILABLE` |
//! | the leader was lost during a write (it may or may not be applied) | `UNKNOWN` |
//! | another node answered with an error | that node's code |
//!
//! Every status built here also carries [`ERROR_KIND_KEY`] (a trailer naming the [`AdminError`]
//! variant, e.g. `no-leader`), so a client can tell this server's `UNAVAILABLE` ("no leader") from
//! its transport's (no connection) without reading the message.

use medpool_b2bua::config::ConfigError;
use medpool_cluster::{NotAppended, Rejection, WriteError};
use tonic::{Code, Status};

/// gRPC metadata key (a trailer) naming the configuration field an `INVALID_ARGUMENT` is about.
pub const FIELD_PATH_KEY: &str = "medpool-field-path";

/// gRPC metadata key (a trailer) on every error this server answers: which kind of [`AdminError`]
/// it is ([`AdminError::kind`]; a forwarded node's answer keeps that node's kind). Absent from a
/// status the client's own transport made up (no connection, TLS failure).
pub const ERROR_KIND_KEY: &str = "medpool-error-kind";

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
    Refused(Rejection),
    /// No leader, or no quorum: nothing was changed.
    #[error("no leader or no quorum ({0}); nothing was changed, try again")]
    NoLeader(NoLeader),
    /// The write may or may not have been applied (the leader was lost during it).
    #[error("outcome unknown: {0}; check with `medpool ctl status` before trying again")]
    OutcomeUnknown(String),
    /// No or bad bearer token.
    #[error("{0}")]
    Unauthenticated(&'static str),
    /// The viewer token on an RPC that needs the admin token (the method's name).
    #[error("permission denied: {0} needs the admin token; the viewer token may only read")]
    PermissionDenied(String),
    /// Another node answered with an error (its code is kept).
    #[error("node {node}: {}", .status.message())]
    Peer {
        /// The node.
        node: u64,
        /// Its answer.
        status: Status,
    },
}

/// Why no leader could take a change (nothing was changed).
#[derive(Debug, thiserror::Error)]
pub enum NoLeader {
    /// No leader is known (after waiting a moment for an election).
    #[error("no leader")]
    Unknown,
    /// The leader's admin address is not in this node's applied state.
    #[error("leader {0} has no admin address")]
    NoAdminAddress(u64),
    /// A request forwarded to the leader reached a node that is no longer it.
    #[error("leadership moved during the request")]
    Moved,
    /// Raft refused a membership change here: this node is not (or no longer) the leader
    /// (openraft's text).
    #[error("{0}")]
    NotLeader(String),
    /// The pool appended nothing: no leader, or its address is not known yet.
    #[error("{0}")]
    Pool(NotAppended),
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
            AdminError::PermissionDenied(_) => Code::PermissionDenied,
            AdminError::Peer { status, .. } => status.code(),
        }
    }
}

impl AdminError {
    /// The value of [`ERROR_KIND_KEY`] for this error.
    pub fn kind(&self) -> &'static str {
        match self {
            AdminError::InvalidConfig { .. } => "invalid-config",
            AdminError::BadRequest { .. } => "bad-request",
            AdminError::CallNotFound { .. } => "call-not-found",
            AdminError::GatewayNotFound(_) => "gateway-not-found",
            AdminError::NodeNotFound(_) => "node-not-found",
            AdminError::StaleVersion { .. } => "stale-version",
            AdminError::NodeOwnsShards { .. } => "node-owns-shards",
            AdminError::RemoveLeader(_) => "remove-leader",
            AdminError::NotVoter(_) => "not-voter",
            AdminError::NoOtherVoter => "no-other-voter",
            AdminError::SingleNode(_) => "single-node",
            AdminError::Refused(_) => "refused",
            AdminError::NoLeader(_) => "no-leader",
            AdminError::OutcomeUnknown(_) => "outcome-unknown",
            AdminError::Unauthenticated(_) => "unauthenticated",
            AdminError::PermissionDenied(_) => "permission-denied",
            AdminError::Peer { .. } => "peer",
        }
    }
}

impl From<AdminError> for Status {
    fn from(e: AdminError) -> Status {
        let mut status = Status::new(e.code(), e.to_string());
        let kind = match &e {
            AdminError::Peer { status, .. } => status.metadata().get(ERROR_KIND_KEY).cloned(),
            _ => None,
        };
        status.metadata_mut().insert(
            ERROR_KIND_KEY,
            kind.unwrap_or_else(|| tonic::metadata::MetadataValue::from_static(e.kind())),
        );
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
    /// either known to have changed nothing before any request left this node (no leader, its
    /// address unknown: `UNAVAILABLE`) or not known to be harmless: a transport failure or a
    /// leader's own failure may come after the command was sent, so it is reported as unknown. A
    /// false "unknown" only makes an operator look; a false "nothing changed" could make them apply
    /// twice.
    fn from(e: WriteError) -> AdminError {
        match e {
            WriteError::Refused(rejection) => AdminError::Refused(rejection),
            WriteError::NotAppended(
                why @ (NotAppended::NoLeader | NotAppended::LeaderAddressUnknown),
            ) => AdminError::NoLeader(NoLeader::Pool(why)),
            WriteError::NotAppended(why) => AdminError::OutcomeUnknown(why.to_string()),
            WriteError::MaybeApplied(why) => AdminError::OutcomeUnknown(why),
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
        let no_leader = Status::from(AdminError::from(WriteError::NotAppended(
            NotAppended::NoLeader,
        )));
        assert_eq!(no_leader.code(), Code::Unavailable);
        assert_eq!(
            no_leader.message(),
            "no leader or no quorum (no leader); nothing was changed, try again"
        );
        assert_eq!(
            no_leader
                .metadata()
                .get(ERROR_KIND_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("no-leader")
        );
        assert_eq!(
            AdminError::from(WriteError::NotAppended(NotAppended::LeaderAddressUnknown)).code(),
            Code::Unavailable
        );
        assert_eq!(
            AdminError::from(WriteError::NotAppended(NotAppended::LeaderUnreachable(
                "connection refused".into()
            )))
            .code(),
            Code::Unknown
        );
        assert_eq!(
            AdminError::from(WriteError::MaybeApplied("leader timed out".into())).code(),
            Code::Unknown
        );
        let refused = Status::from(AdminError::from(WriteError::Refused(
            Rejection::StaleConfigVersion {
                expected: Some(1),
                current: Some(2),
            },
        )));
        assert_eq!(refused.code(), Code::FailedPrecondition);
        assert_eq!(
            refused.message(),
            "refused by the pool: configuration version Some(2) is current, the change was based on Some(1)"
        );
        // A forwarded answer keeps the kind the other node gave it.
        let peer = Status::from(AdminError::Peer {
            node: 2,
            status: no_leader,
        });
        assert_eq!(peer.code(), Code::Unavailable);
        assert_eq!(
            peer.metadata()
                .get(ERROR_KIND_KEY)
                .and_then(|v| v.to_str().ok()),
            Some("no-leader")
        );
        assert_eq!(
            Status::from(AdminError::Unauthenticated("no token")).code(),
            Code::Unauthenticated
        );
    }
}
