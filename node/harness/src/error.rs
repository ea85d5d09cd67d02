//! Why a harness step failed.

/// Why a harness step failed.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The medpool binary is missing and could not be built.
    #[error("no medpool binary at {path}: {why}")]
    Binary {
        /// Where it was looked for.
        path: std::path::PathBuf,
        /// What went wrong building it.
        why: String,
    },
    /// A process could not be started.
    #[error("cannot start {what}: {source}")]
    Spawn {
        /// Which process.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A node exited while it should have been serving.
    #[error("{node} exited ({status}); last log lines:\n{tail}")]
    Exited {
        /// Which node.
        node: String,
        /// How it ended.
        status: String,
        /// The end of its log.
        tail: String,
    },
    /// Something a test waited for did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: std::time::Duration,
    },
    /// The pool's status could not be read.
    #[error("pool status from {server}: {reason}")]
    Status {
        /// The node asked.
        server: String,
        /// Why it failed.
        reason: String,
    },
    /// A file could not be written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A simulated peer could not start.
    #[error(transparent)]
    Peer(#[from] medpool_simpeer::SimpeerError),
}
