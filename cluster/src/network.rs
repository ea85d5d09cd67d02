//! The Raft network over the internal gRPC service (`medpool.cluster.v1.Cluster`): one lazily
//! connected tonic client per peer. openraft's requests and responses travel as serde-encoded bytes
//! ([`encode`]/[`decode`]); both ends of a pool run the same medpool version.

use std::future::Future;
use std::time::Duration;

use medpool_proto::cluster::RaftPayload;
use medpool_proto::cluster::cluster_client::ClusterClient;
use openraft::errors::{NetworkError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, Endpoint};

use crate::typ::{
    NodeAddrs, NodeId, RaftError, RpcError, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote,
};

/// Largest gRPC message on the internal port (snapshots of many dialogs are large).
pub const MAX_MESSAGE: usize = 256 * 1024 * 1024;

/// Encodes an openraft value for the wire.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(v)
}

/// Decodes an openraft value from the wire.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, serde_json::Error> {
    serde_json::from_slice(b)
}

/// A snapshot on the wire: the vote of the sender, what it covers, and the state bytes.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SnapshotEnvelope {
    /// The leader's vote.
    pub vote: Vote,
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
    /// The serialized state.
    pub data: SnapshotData,
}

static HOST_OVERRIDES: std::sync::OnceLock<std::collections::HashMap<String, std::net::IpAddr>> =
    std::sync::OnceLock::new();

/// Name → address overrides for internal addresses (an /etc/hosts-style file given at start-up), so
/// tests can start nodes exactly as a StatefulSet does (`medpool-0.medpool-peers...`) without DNS.
/// Set once, before the pool starts; later calls are ignored.
pub fn set_host_overrides(map: std::collections::HashMap<String, std::net::IpAddr>) {
    let _ = HOST_OVERRIDES.set(map);
}

/// Parses an /etc/hosts-style text: `IP name [name...]` per line, `#` comments.
pub fn parse_hosts(text: &str) -> std::collections::HashMap<String, std::net::IpAddr> {
    let mut map = std::collections::HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse().ok()) else {
            continue;
        };
        for name in words {
            map.insert(name.to_ascii_lowercase(), ip);
        }
    }
    map
}

/// `host:port` with the host replaced by its override, when there is one.
pub fn resolve_override(addr: &str) -> String {
    let Some(map) = HOST_OVERRIDES.get() else {
        return addr.to_owned();
    };
    match addr.rsplit_once(':') {
        Some((host, port)) => match map.get(&host.to_ascii_lowercase()) {
            Some(std::net::IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            Some(ip) => format!("{ip}:{port}"),
            None => addr.to_owned(),
        },
        None => addr.to_owned(),
    }
}

/// The address this node's connections to its peers leave from (its internal listen address), set
/// once at start. Without it the kernel picks one: on a multi-homed host (or between 127.0.x.y
/// addresses on one machine) peers and firewalls would see another address than the advertised one.
static SOURCE: std::sync::OnceLock<std::net::IpAddr> = std::sync::OnceLock::new();

/// Makes connections to peers leave from `ip` (ignored when unspecified, or when already set).
pub fn set_source_address(ip: std::net::IpAddr) {
    if !ip.is_unspecified() {
        let _ = SOURCE.set(ip);
    }
}

/// A client of one node's internal service.
pub fn client(addr: &str) -> Result<ClusterClient<Channel>, tonic::transport::Error> {
    let addr = resolve_override(addr);
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_millis(500))
        .local_address(SOURCE.get().copied())
        .tcp_nodelay(true);
    Ok(ClusterClient::new(endpoint.connect_lazy())
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// Builds connections to peers for openraft.
#[derive(Debug, Clone, Default)]
pub struct GrpcNetwork;

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddrs) -> GrpcConnection {
        GrpcConnection {
            target,
            addr: node.raft_addr.clone(),
            client: None,
        }
    }
}

/// One peer.
#[derive(Debug)]
pub struct GrpcConnection {
    target: NodeId,
    addr: String,
    client: Option<ClusterClient<Channel>>,
}

fn unreachable(e: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::from_string(e.to_string())
}

impl GrpcConnection {
    fn client(&mut self) -> Result<&mut ClusterClient<Channel>, Unreachable<TypeConfig>> {
        if self.client.is_none() {
            self.client = Some(client(&self.addr).map_err(unreachable)?);
        }
        self.client.as_mut().ok_or_else(|| unreachable("no client"))
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        req: &Req,
        ttl: Duration,
        which: Rpc,
    ) -> Result<Resp, RpcError> {
        let data =
            encode(req).map_err(|e| RpcError::Network(NetworkError::from_string(e.to_string())))?;
        let target = self.target;
        let client = self.client()?;
        let fut = async {
            match which {
                Rpc::Append => client.append_entries(RaftPayload { data }).await,
                Rpc::Vote => client.vote(RaftPayload { data }).await,
                Rpc::Snapshot => client.install_snapshot(RaftPayload { data }).await,
                Rpc::TransferLeader => client.transfer_leader(RaftPayload { data }).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(RpcError::Unreachable(unreachable(format!(
                    "node {target}: timed out"
                ))));
            }
            Ok(Err(status)) => {
                self.client = None;
                return Err(RpcError::Unreachable(unreachable(format!(
                    "node {target}: {status}"
                ))));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<Resp, RaftError> = decode(&reply.data)
            .map_err(|e| RpcError::Network(NetworkError::from_string(e.to_string())))?;
        result.map_err(|e| {
            RpcError::Network(NetworkError::from_string(format!("node {target}: {e}")))
        })
    }
}

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
    TransferLeader,
}

impl RaftNetworkV2<TypeConfig> for GrpcConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcError> {
        self.call(&rpc, option.hard_ttl(), Rpc::Append).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        self.call(&rpc, option.hard_ttl(), Rpc::Vote).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcError> {
        self.call(&req, option.hard_ttl(), Rpc::TransferLeader)
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let env = SnapshotEnvelope {
            vote,
            meta: snapshot.meta,
            data: snapshot.snapshot,
        };
        let ttl = option.hard_ttl().max(Duration::from_secs(30));
        self.call(&env, ttl, Rpc::Snapshot)
            .await
            .map_err(|e| match e {
                RpcError::Unreachable(u) => StreamingError::Unreachable(u),
                RpcError::Timeout(t) => StreamingError::Timeout(t),
                other => StreamingError::Network(NetworkError::from_string(other.to_string())),
            })
    }
}
