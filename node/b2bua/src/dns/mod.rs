//! Trunks named by DNS (RFC 3263): a trunk whose `address` is a host name is looked up NAPTR →
//! SRV → A/AAAA (as much of the chain as its `port` and `transport` leave open, see
//! [`crate::config::Lookup`]), its answer cached for the records' TTL and refreshed in the
//! background, and each resolved target used as a gateway of its own for health probing, load
//! balancing (SRV priority, then weight, RFC 2782) and failover, and recognised as the trunk when a
//! request comes from it. A DNS server that stops answering leaves the last answer in use, *stale*,
//! for at most `[node] dns_stale_max` seconds after it expired (logged, counted, shown per gateway).
//!
//! No SIP here, and no actor: the node's `dns_sync` starts the targets' probers and feeds the
//! source gate when the [`Directory`] says something changed.
//!
//! ```text
//!   directory   the table: per trunk its cache, targets and their health; expand / bind / sources
//!     ├─ resolver   hickory-resolver lookups into targets (I/O)
//!     ├─ cache      answer + TTL + stale bound as a pure machine
//!     ├─ srv        RFC 2782 ordering, pure
//!     ├─ naptr      RFC 3263 transport selection, pure
//!     └─ error      LookupError
//! ```

mod cache;
mod directory;
mod error;
mod naptr;
mod resolver;
mod srv;

pub use cache::{MAX_RETRY, MAX_TTL, MIN_TTL, Status};
pub use directory::{
    Directory, DnsStats, TargetView, TrunkView, Unbound, WithTargets, target_trunk,
};
pub use error::LookupError;
pub use resolver::{MAX_ADDRS, MAX_SRV, Resolver, ResolverError, Target};
