//! The pool's options from `medpool serve`'s flags: the node id and join addresses (given, or
//! derived from a StatefulSet hostname), the internal addresses, the internal port's TLS (which
//! must name this node), leases and the data folder.

use std::sync::Arc;
use std::time::Duration;

use medpool_cluster::NodeAddrs;
use medpool_cluster::pool::PoolOptions;

use super::args::ServeArgs;
use super::error::ServeError;

/// The node id from a StatefulSet hostname `<name>-<ordinal>`.
fn ordinal_of(hostname: &str) -> Option<(String, u64)> {
    let (name, ord) = hostname.rsplit_once('-')?;
    Some((name.to_owned(), ord.parse().ok()?))
}

pub(super) fn pool_options(
    args: &ServeArgs,
    raft_listen: std::net::SocketAddr,
) -> Result<PoolOptions, ServeError> {
    let p = &args.pool;
    if let Some(path) = &p.hosts_file {
        let text = std::fs::read_to_string(path).map_err(|source| ServeError::DataDir {
            path: path.display().to_string(),
            source,
        })?;
        medpool_cluster::network::set_host_overrides(medpool_cluster::network::parse_hosts(&text));
    }
    let hostname = std::env::var("HOSTNAME").unwrap_or_default();
    let mut node_id = p.node_id;
    let mut join = p.join.clone();
    if let Some(domain) = &p.peer_domain
        && let Some((name, ordinal)) = ordinal_of(&hostname)
    {
        node_id.get_or_insert(ordinal);
        if join.is_empty() && ordinal > 0 {
            join.push(format!("{name}-0.{domain}:{}", raft_listen.port()));
        }
    }
    let node_id = node_id.unwrap_or(0);
    let raft_addr = p
        .raft_advertise
        .clone()
        .unwrap_or_else(|| raft_listen.to_string());
    let tls = p.internal_tls(raft_listen)?;
    if let Some(t) = &tls
        && !t.names_node(node_id)
    {
        return Err(ServeError::InternalTlsWrongNode {
            cert: t.files().cert.display().to_string(),
            name: medpool_cluster::tls::node_name(node_id),
            node: node_id,
        });
    }
    Ok(PoolOptions {
        node_id,
        addrs: NodeAddrs {
            raft_addr,
            sip_addr: args
                .advertise
                .clone()
                .unwrap_or_else(|| args.sip_listen.to_string()),
            admin_addr: String::new(),
        },
        raft_listen,
        data_dir: args.data_dir.join("raft"),
        join,
        shard_count: args.shards,
        max_voters: usize::from(p.voters),
        lease: Duration::from_millis(p.lease_ms.max(100)),
        margin: Duration::from_millis(p.lease_margin_ms),
        snapshot_logs: 5000,
        audit: p.audit_file.clone(),
        tls,
        insecure_internal: p.insecure_internal,
        config_validator: Some(Arc::new(crate::pool::B2buaConfigCheck)),
    })
}
