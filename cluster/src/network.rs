//! The Raft network over the internal gRPC service (`medpool.cluster.v1.Cluster`): one lazily
//! connected tonic client per peer, over mutual TLS when the node has TLS material ([`Dialer`]).
//! openraft's requests and responses travel as serde-encoded bytes ([`encode`]/[`decode`]: the
//! binary form of [`crate::codec`]; the JSON of older versions is still read). Snapshots travel in chunks ([`snapshot_chunks`],
//! [`SnapshotAssembly`]), never as one large message.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use medpool_proto::cluster::cluster_client::ClusterClient;
use medpool_proto::cluster::{RaftPayload, SnapshotChunk};
use openraft::errors::{NetworkError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use rustls::pki_types::ServerName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::{TcpSocket, TcpStream};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::codec::{self, CodecError};
use crate::stats::{self, STATS};
use crate::tls::{Expect, InternalTls, node_name};
use crate::typ::{
    NodeAddrs, NodeId, RaftError, RpcError, Snapshot, SnapshotData, SnapshotMeta, TypeConfig, Vote,
};

/// Largest gRPC message on the internal port: an AppendEntries of at most
/// [`MAX_PAYLOAD_ENTRIES`] entries, each within its command's cap (a dialog batch of 2 MiB is
/// under 3 MiB encoded). Other messages are checked against their own, smaller caps
/// ([`MAX_SMALL`]) once decoded (tonic applies one limit to a whole service: only members, past the
/// TLS handshake, can send that much); snapshots travel in chunks.
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// Most log entries in one AppendEntries (openraft's `max_payload_entries`).
pub const MAX_PAYLOAD_ENTRIES: u64 = 16;
/// Cap of every internal message other than AppendEntries and snapshot chunks (a write, a join,
/// a lease, a vote, a forwarded SIP message, an answer).
pub const MAX_SMALL: usize = 4 * 1024 * 1024;
/// Size of a snapshot chunk.
pub const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Largest snapshot a node accepts (the total of its chunks).
pub const MAX_SNAPSHOT: usize = 1024 * 1024 * 1024;

/// Encodes an openraft value for the wire.
pub fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, CodecError> {
    codec::to_vec(v)
}

/// Decodes an openraft value from the wire.
pub fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, CodecError> {
    codec::from_slice(b)
}

/// The first chunk's header of a snapshot on the wire: the vote of the sender and what it covers.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SnapshotHeader {
    /// The leader's vote.
    pub vote: Vote,
    /// What the snapshot covers.
    pub meta: SnapshotMeta,
}

/// A snapshot as chunks, made one at a time as they are sent: the header in the first, the data
/// in pieces of at most `chunk` bytes (at least one chunk, even for empty data).
pub fn snapshot_chunks(
    vote: Vote,
    meta: SnapshotMeta,
    data: SnapshotData,
    chunk: usize,
) -> Result<impl Iterator<Item = SnapshotChunk> + Send + 'static, CodecError> {
    let mut header = encode(&SnapshotHeader { vote, meta })?;
    let chunk = chunk.max(1);
    let count = data.len().div_ceil(chunk).max(1);
    Ok((0..count).map(move |i| {
        let from = (i * chunk).min(data.len());
        let to = (from + chunk).min(data.len());
        SnapshotChunk {
            header: std::mem::take(&mut header),
            data: data[from..to].to_vec(),
        }
    }))
}

/// Why a chunked snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotRefused {
    /// The first chunk carried no header, or a later one carried one.
    #[error("snapshot chunks out of order")]
    OutOfOrder,
    /// The header could not be read.
    #[error("bad snapshot header: {0}")]
    BadHeader(String),
    /// The chunks add up to more than the receiver accepts.
    #[error("snapshot larger than {max} bytes")]
    TooLarge {
        /// The cap.
        max: usize,
    },
    /// The stream ended before any chunk.
    #[error("empty snapshot stream")]
    Empty,
}

/// A snapshot being received, chunk by chunk, within a total of `max` bytes.
#[derive(Debug)]
pub struct SnapshotAssembly {
    header: Option<SnapshotHeader>,
    data: Vec<u8>,
    max: usize,
}

impl SnapshotAssembly {
    /// An empty assembly accepting at most `max` bytes of data.
    pub fn new(max: usize) -> SnapshotAssembly {
        SnapshotAssembly {
            header: None,
            data: Vec::new(),
            max,
        }
    }

    /// Adds the next chunk.
    pub fn push(&mut self, chunk: SnapshotChunk) -> Result<(), SnapshotRefused> {
        match (&self.header, chunk.header.is_empty()) {
            (None, true) | (Some(_), false) => return Err(SnapshotRefused::OutOfOrder),
            (None, false) => {
                self.header = Some(
                    decode(&chunk.header).map_err(|e| SnapshotRefused::BadHeader(e.to_string()))?,
                );
            }
            (Some(_), true) => {}
        }
        if self.data.len().saturating_add(chunk.data.len()) > self.max {
            return Err(SnapshotRefused::TooLarge { max: self.max });
        }
        self.data.extend_from_slice(&chunk.data);
        Ok(())
    }

    /// The leader that sent the snapshot, once the header is in.
    pub fn leader(&self) -> Option<NodeId> {
        self.header.as_ref().map(|h| h.vote.leader_id().node_id)
    }

    /// The header and the data, once every chunk is in.
    pub fn finish(self) -> Result<(SnapshotHeader, SnapshotData), SnapshotRefused> {
        let header = self.header.ok_or(SnapshotRefused::Empty)?;
        Ok((header, self.data))
    }
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

/// A plain-TCP client of one node's internal service (a pool without TLS material: loopback, or
/// `--insecure-internal`; the test harness's status reader).
pub fn client(addr: &str) -> Result<ClusterClient<Channel>, tonic::transport::Error> {
    Dialer::default().client(addr, Expect::AnyMember)
}

/// How this node reaches its peers' internal service: over mutual TLS with its material, or plain
/// TCP when it has none.
#[derive(Debug, Clone, Default)]
pub struct Dialer {
    tls: Option<Arc<InternalTls>>,
}

impl Dialer {
    /// Over mutual TLS with `material` when given, else plain TCP.
    pub fn new(material: Option<Arc<InternalTls>>) -> Dialer {
        Dialer { tls: material }
    }

    /// Whether connections are made over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// A lazily connected client of the internal service at `addr`, whose server certificate (with
    /// TLS) must be as `expect` says.
    pub fn client(
        &self,
        addr: &str,
        expect: Expect,
    ) -> Result<ClusterClient<Channel>, tonic::transport::Error> {
        let addr = resolve_override(addr);
        // A TLS connection needs its handshake too (one more round trip, signatures to check).
        let connect = if self.tls.is_some() { 1500 } else { 500 };
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_millis(connect))
            .local_address(SOURCE.get().copied())
            .tcp_nodelay(true);
        let channel = match &self.tls {
            None => endpoint.connect_lazy(),
            Some(material) => endpoint.connect_with_connector_lazy(TlsConnector {
                material: material.clone(),
                expect,
            }),
        };
        Ok(ClusterClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }
}

/// Makes one TLS connection to a peer (from this node's source address), with the material current
/// when it connects (so a renewed certificate is used by the next connection).
#[derive(Clone)]
struct TlsConnector {
    material: Arc<InternalTls>,
    expect: Expect,
}

type Connecting<T> = Pin<Box<dyn Future<Output = Result<T, std::io::Error>> + Send>>;

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.material.client_config(self.expect);
        let name = match self.expect {
            Expect::Node(id) => node_name(id),
            // Only the pool CA is checked; the name is what the client sends in SNI.
            Expect::AnyMember => "medpool.internal".to_owned(),
        };
        Box::pin(async move {
            let host = uri
                .host()
                .ok_or_else(|| std::io::Error::other("no host"))?
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned();
            let port = uri.port_u16().unwrap_or(80);
            let tcp = connect_tcp(&host, port).await?;
            let name = ServerName::try_from(name).map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

async fn connect_tcp(host: &str, port: u16) -> std::io::Result<TcpStream> {
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::other(format!("{host}: no address")))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = SOURCE.get()
        && src.is_ipv4() == addr.is_ipv4()
    {
        socket.bind(SocketAddr::new(*src, 0))?;
    }
    let s = socket.connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Builds connections to peers for openraft.
#[derive(Debug, Clone, Default)]
pub struct GrpcNetwork {
    dialer: Dialer,
}

impl GrpcNetwork {
    /// Connections made by `dialer`.
    pub fn new(dialer: Dialer) -> GrpcNetwork {
        GrpcNetwork { dialer }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = GrpcConnection;

    async fn new_client(&mut self, target: NodeId, node: &NodeAddrs) -> GrpcConnection {
        GrpcConnection {
            target,
            addr: node.raft_addr.clone(),
            dialer: self.dialer.clone(),
            client: None,
        }
    }
}

/// One peer.
#[derive(Debug)]
pub struct GrpcConnection {
    target: NodeId,
    addr: String,
    dialer: Dialer,
    client: Option<ClusterClient<Channel>>,
}

fn unreachable(e: impl std::fmt::Display) -> Unreachable<TypeConfig> {
    Unreachable::from_string(e.to_string())
}

impl GrpcConnection {
    fn client(&mut self) -> Result<&mut ClusterClient<Channel>, Unreachable<TypeConfig>> {
        if self.client.is_none() {
            self.client = Some(
                self.dialer
                    .client(&self.addr, Expect::Node(self.target))
                    .map_err(unreachable)?,
            );
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
        STATS.rpc(
            match which {
                Rpc::Append => stats::Rpc::AppendEntries,
                Rpc::Vote => stats::Rpc::Vote,
                Rpc::TransferLeader => stats::Rpc::Other,
            },
            true,
        );
        let fut = async {
            match which {
                Rpc::Append => client.append_entries(RaftPayload { data }).await,
                Rpc::Vote => client.vote(RaftPayload { data }).await,
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
    TransferLeader,
}

impl RaftNetworkV2<TypeConfig> for GrpcConnection {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcError> {
        let started = tokio::time::Instant::now();
        let entries = rpc.entries.len() as u64;
        let r = self.call(&rpc, option.hard_ttl(), Rpc::Append).await;
        STATS.replicate.since(entries, 0, started);
        r
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
        let ttl = option.hard_ttl().max(Duration::from_secs(30));
        let target = self.target;
        let network = |e: String| StreamingError::Network(NetworkError::from_string(e));
        let chunks = snapshot_chunks(vote, snapshot.meta, snapshot.snapshot, SNAPSHOT_CHUNK)
            .map_err(|e| network(e.to_string()))?;
        let client = self.client().map_err(StreamingError::Unreachable)?;
        STATS.rpc(stats::Rpc::InstallSnapshot, true);
        let fut = client.install_snapshot(futures_util::stream::iter(chunks));
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(StreamingError::Unreachable(unreachable(format!(
                    "node {target}: snapshot timed out"
                ))));
            }
            Ok(Err(status)) => {
                self.client = None;
                return Err(StreamingError::Unreachable(unreachable(format!(
                    "node {target}: {status}"
                ))));
            }
            Ok(Ok(r)) => r.into_inner(),
        };
        let result: Result<SnapshotResponse<TypeConfig>, RaftError> =
            decode(&reply.data).map_err(|e| network(e.to_string()))?;
        result.map_err(|e| network(format!("node {target}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn header() -> (Vote, SnapshotMeta) {
        let vote = Vote::new(3, 1);
        let meta = SnapshotMeta {
            last_log_id: None,
            last_membership: Default::default(),
        };
        (vote, meta)
    }

    #[test]
    fn a_snapshot_larger_than_one_chunk_arrives_whole() {
        let (vote, meta) = header();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let chunks: Vec<_> = snapshot_chunks(vote, meta, data.clone(), 4096)
            .unwrap()
            .collect();
        assert_eq!(chunks.len(), 3);
        assert!(chunks[1].header.is_empty() && chunks[2].header.is_empty());
        let mut a = SnapshotAssembly::new(1 << 20);
        for c in chunks {
            a.push(c).unwrap();
        }
        let (h, got) = a.finish().unwrap();
        assert_eq!(got, data);
        assert_eq!(h.vote, vote);
        assert_eq!(h.meta, header().1);
        // An empty snapshot is one chunk, its header.
        let (vote, meta) = header();
        let mut empty = SnapshotAssembly::new(10);
        for c in snapshot_chunks(vote, meta, Vec::new(), 4096).unwrap() {
            empty.push(c).unwrap();
        }
        assert_eq!(empty.finish().unwrap().1, Vec::<u8>::new());
    }

    #[test]
    fn a_snapshot_beyond_the_receivers_cap_or_out_of_order_is_refused() {
        let (vote, meta) = header();
        let chunks: Vec<_> = snapshot_chunks(vote, meta, vec![7u8; 3000], 1000)
            .unwrap()
            .collect();
        let mut a = SnapshotAssembly::new(2500);
        let mut results = chunks.clone().into_iter().map(|c| a.push(c));
        assert!(results.by_ref().take(2).all(|r| r.is_ok()));
        assert_eq!(
            results.next(),
            Some(Err(SnapshotRefused::TooLarge { max: 2500 }))
        );
        // A stream that starts without its header.
        let mut b = SnapshotAssembly::new(1 << 20);
        assert_eq!(b.push(chunks[1].clone()), Err(SnapshotRefused::OutOfOrder));
        assert_eq!(
            SnapshotAssembly::new(10).finish().err(),
            Some(SnapshotRefused::Empty)
        );
    }
}
