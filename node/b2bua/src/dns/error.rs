//! Why a trunk's name has no usable answer.

/// A failed lookup of a trunk's host name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    /// The DNS answered, and there is nothing usable: the name does not exist, or has no NAPTR,
    /// SRV, A or AAAA record we can use (an authoritative answer: no stale answer is kept).
    #[error("{name}: no usable NAPTR, SRV, A or AAAA records")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// The DNS server did not answer, or answered with an error (SERVFAIL, REFUSED, a timeout,
    /// a broken message). `detail` is the resolver's description, for people only.
    #[error("{name}: DNS lookup failed: {detail}")]
    Server {
        /// The name asked for.
        name: String,
        /// What the resolver said.
        detail: String,
    },
}
