//! Why `medpool serve` stopped with an error ([`ServeError`]): one variant per cause, each message
//! naming the flag, file or address at fault.

use std::net::SocketAddr;

use medpool_b2bua::config::ConfigError;
use medpool_b2bua::node::NodeError;

/// Why `serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Bad configuration (the message names file, line and field).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The data folder cannot be used.
    #[error("data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The node could not start.
    #[error("{0}")]
    Node(#[from] NodeError),
    /// The metrics port could not be bound.
    #[error("cannot listen for metrics on {addr}: {source}")]
    Metrics {
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The pool could not start.
    #[error("{0}")]
    Pool(medpool_cluster::pool::PoolError),
    /// A non-loopback internal address without TLS material or --insecure-internal.
    #[error(
        "--raft-listen {addr} is not a loopback address: give the internal port's TLS material \
         (--internal-tls-cert, --internal-tls-key, --internal-tls-ca) or allow plain TCP \
         explicitly with --insecure-internal"
    )]
    InsecureInternal {
        /// The internal address.
        addr: SocketAddr,
    },
    /// Some of the internal TLS flags are given, not all.
    #[error(
        "{missing} is missing: the internal port's TLS needs --internal-tls-cert, \
         --internal-tls-key and --internal-tls-ca together"
    )]
    InternalTlsIncomplete {
        /// The flag not given.
        missing: &'static str,
    },
    /// SIP TLS flags given without the certificate or key.
    #[error("SIP over TLS needs {missing} (--sip-tls-cert and --sip-tls-key go together)")]
    SipTlsIncomplete {
        /// The flag missing.
        missing: &'static str,
    },
    /// The SIP TLS material cannot be used (the message names the file).
    #[error("SIP TLS (--sip-tls-cert/--sip-tls-key/--sip-tls-ca): {0}")]
    SipTls(medpool_sip::transport::tls::TlsError),
    /// The internal TLS material cannot be used (the message names the file).
    #[error("internal TLS (--internal-tls-cert/--internal-tls-key/--internal-tls-ca): {0}")]
    InternalTls(medpool_cluster::tls::TlsError),
    /// This node's certificate does not name its node id.
    #[error(
        "--internal-tls-cert {cert}: the certificate is not valid for {name} (node {node}'s name)"
    )]
    InternalTlsWrongNode {
        /// The certificate file.
        cert: String,
        /// The name it must carry.
        name: String,
        /// This node's id.
        node: u64,
    },
    /// The pool's Raft stopped on a fatal error (its store could not be written).
    #[error(
        "the pool's Raft store in {data_dir} failed ({why}): stopped so that the other nodes take this node's shards over"
    )]
    RaftFailed {
        /// The data folder.
        data_dir: String,
        /// The error.
        why: String,
    },
    /// The admin API could not start.
    #[error("{0}")]
    Admin(#[from] crate::admin::AdminStartError),
    /// `--media-advertise` is a wildcard address (peers cannot send to it).
    #[error(
        "--media-advertise {advertise}: a wildcard address in SDP means \"do not send\"; give the address peers send RTP to"
    )]
    MediaAdvertise {
        /// The address given.
        advertise: std::net::IpAddr,
    },
}
