//! The internal port over mutual TLS (ARCHITECTURE.md, "Internal port"): a pool of real `Pool`s in
//! one process, each with a certificate of a test pool CA naming `node-<id>.medpool.internal`,
//! forms, elects and takes in a node that catches up through a chunked snapshot. A real tonic client
//! holding no certificate, one from another CA, or a valid one naming another node id has every
//! internal RPC refused, and the pool's state does not change.
//!
//! Certificates are made here with rcgen. Loopback addresses 127.0.151.0/24 only.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use medpool_cluster::network::{encode, snapshot_chunks};
use medpool_cluster::pool::{ConfigValidator, Pool, PoolInfo, PoolOptions, PoolSink};
use medpool_cluster::tls::{InternalTls, TlsFiles, node_name};
use medpool_cluster::typ::{SnapshotMeta, TypeConfig, Vote};
use medpool_cluster::{Command, NodeAddrs, NodeState};
use medpool_cluster::{Rejection, WriteError};
use medpool_proto::cluster::cluster_client::ClusterClient;
use medpool_proto::cluster::{
    InfoRequest, JoinRequest, LeaseRequest, RaftPayload, SipForward, SnapshotChunk,
};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

const NET: &str = "127.0.151";

/// A CA made for the test, able to issue node certificates.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate and key (PEM) for `names`.
    fn issue(&self, names: &[String]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.to_vec()).unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// Writes a node's files into `dir` and returns them.
    fn files(&self, dir: &Path, tag: &str, names: &[String]) -> TlsFiles {
        let (cert, key) = self.issue(names);
        let f = TlsFiles {
            cert: dir.join(format!("{tag}.crt")),
            key: dir.join(format!("{tag}.key")),
            ca: dir.join(format!("{tag}-ca.crt")),
        };
        std::fs::write(&f.cert, cert).unwrap();
        std::fs::write(&f.key, key).unwrap();
        std::fs::write(&f.ca, &self.pem).unwrap();
        f
    }
}

struct Quiet;

impl PoolSink for Quiet {
    fn deliver(&self, _msg: SipForward) -> bool {
        true
    }
    fn adopted(&self, _shards: Vec<u16>) {}
    fn late_records(&self, _shards: Vec<u16>) {}
    fn released(&self, _shards: Vec<u16>) {}
}

/// Node `id`'s internal address; the pools of the tests here are apart by `base`.
fn addr_in(base: u64, id: u64) -> String {
    format!("{NET}.{}:7000", base + id + 1)
}

fn raft_addr(id: u64) -> String {
    addr_in(0, id)
}

async fn member(ca: &TestCa, dir: &Path, id: u64, join: bool) -> Arc<Pool> {
    member_in(ca, dir, 0, id, join, None).await
}

async fn member_in(
    ca: &TestCa,
    dir: &Path,
    base: u64,
    id: u64,
    join: bool,
    validator: Option<Arc<dyn ConfigValidator>>,
) -> Arc<Pool> {
    let data = dir.join(format!("node{id}"));
    let files = ca.files(dir, &format!("node{id}"), &[node_name(id)]);
    let mut opts = PoolOptions::new(
        id,
        NodeAddrs {
            raft_addr: addr_in(base, id),
            sip_addr: format!("{NET}.{}:5060", base + id + 1),
            admin_addr: String::new(),
        },
        addr_in(base, id).parse().unwrap(),
        data,
        if join { vec![addr_in(base, 0)] } else { vec![] },
    );
    opts.config_validator = validator;
    opts.lease = Duration::from_millis(500);
    opts.margin = Duration::from_millis(250);
    opts.shard_count = 16;
    opts.snapshot_logs = 20;
    opts.tls = Some(InternalTls::load(files).unwrap());
    let pool = Pool::start(opts).await.unwrap();
    pool.attach(Arc::new(Quiet));
    pool
}

async fn until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A client that trusts the pool CA for the server and presents `identity` (or nothing).
#[derive(Clone)]
struct Attacker {
    config: Arc<rustls::ClientConfig>,
}

impl Attacker {
    fn new(pool_ca: &str, identity: Option<(String, String)>) -> Attacker {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(pool_ca.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Attacker {
            config: Arc::new(config),
        }
    }

    fn client(&self, target: u64) -> ClusterClient<Channel> {
        let ep = Endpoint::from_shared(format!("http://{}", raft_addr(target)))
            .unwrap()
            .connect_timeout(Duration::from_secs(2));
        ClusterClient::new(ep.connect_with_connector_lazy(AttackConnector {
            config: self.config.clone(),
            target,
        }))
    }
}

#[derive(Clone)]
struct AttackConnector {
    config: Arc<rustls::ClientConfig>,
    target: u64,
}

type Connecting<T> = Pin<Box<dyn Future<Output = Result<T, std::io::Error>> + Send>>;

impl tower_service::Service<Uri> for AttackConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let config = self.config.clone();
        let target = self.target;
        Box::pin(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(format!("{NET}.100:0").parse().unwrap())?;
            let tcp = socket.connect(raft_addr(target).parse().unwrap()).await?;
            let name = ServerName::try_from(node_name(target)).map_err(std::io::Error::other)?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Every internal RPC an attacker would send, each naming node `victim` (a member) where the RPC
/// names a node; `Err` with the status of each refusal, `Ok` names an RPC that went through.
async fn attack(c: &mut ClusterClient<Channel>, victim: u64) -> Vec<(&'static str, tonic::Code)> {
    let term = 1000;
    let vote = Vote::new(term, victim);
    let payload = |v: Vec<u8>| RaftPayload { data: v };
    let write = |cmd: Command| payload(encode(&cmd).unwrap());
    let evil = NodeAddrs {
        raft_addr: format!("{NET}.100:7000"),
        sip_addr: format!("{NET}.100:5060"),
        admin_addr: format!("{NET}.100:7001"),
    };
    let mut out = Vec::new();
    let mut record = |name: &'static str, r: Result<(), tonic::Status>| match r {
        Ok(()) => panic!("{name} went through"),
        Err(s) => out.push((name, s.code())),
    };
    record(
        "join",
        c.join(JoinRequest {
            node_id: victim,
            raft_addr: evil.raft_addr.clone(),
            sip_addr: evil.sip_addr.clone(),
            admin_addr: evil.admin_addr.clone(),
        })
        .await
        .map(drop),
    );
    record(
        "lease",
        c.lease(LeaseRequest {
            node_id: victim,
            sent_at_ms: 0,
            map_epoch: u64::MAX,
            ..LeaseRequest::default()
        })
        .await
        .map(drop),
    );
    record(
        "forward (send)",
        c.forward(SipForward {
            message: b"OPTIONS sip:x SIP/2.0\r\n\r\n".to_vec(),
            peer: format!("{NET}.100:5060"),
            transport: "udp".into(),
            shard: 0,
            via_node: victim,
            traceparent: String::new(),
            send: true,
            ..SipForward::default()
        })
        .await
        .map(drop),
    );
    let streamed = SipForward {
        message: b"OPTIONS sip:x SIP/2.0\r\n\r\n".to_vec(),
        peer: format!("{NET}.100:5060"),
        transport: "udp".into(),
        shard: 0,
        via_node: victim,
        traceparent: String::new(),
        send: true,
        ..SipForward::default()
    };
    record(
        "forward stream (send)",
        c.forward_stream(futures_util::stream::iter(vec![streamed]))
            .await
            .map(drop),
    );
    for (name, cmd) in [
        (
            "write AddNode",
            Command::AddNode {
                id: victim,
                addresses: evil.clone(),
                voter: true,
            },
        ),
        (
            "write SetNodeState(Down)",
            Command::SetNodeState {
                id: victim,
                state: NodeState::Down,
            },
        ),
        (
            "write MoveShards",
            Command::MoveShards {
                moves: vec![(0, victim)],
            },
        ),
        (
            "write OwnerDialogBatch",
            Command::OwnerDialogBatch {
                writer: victim,
                upserts: vec![(0, "evil".into(), vec![0; 16])],
                removes: vec![],
                replace_only: vec![],
            },
        ),
    ] {
        record(name, c.client_write(write(cmd)).await.map(drop));
    }
    let vote_req: VoteRequest<TypeConfig> = VoteRequest::new(vote, None);
    record(
        "vote",
        c.vote(payload(encode(&vote_req).unwrap())).await.map(drop),
    );
    let append: AppendEntriesRequest<TypeConfig> = AppendEntriesRequest {
        vote,
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    };
    record(
        "append",
        c.append_entries(payload(encode(&append).unwrap()))
            .await
            .map(drop),
    );
    let transfer: TransferLeaderRequest<TypeConfig> = TransferLeaderRequest::new(vote, 0, None);
    record(
        "transfer-leader",
        c.transfer_leader(payload(encode(&transfer).unwrap()))
            .await
            .map(drop),
    );
    let meta = SnapshotMeta {
        last_log_id: None,
        last_membership: Default::default(),
    };
    let chunks: Vec<SnapshotChunk> = snapshot_chunks(vote, meta, vec![b'{'; 4000], 1000)
        .unwrap()
        .collect();
    record(
        "install-snapshot",
        c.install_snapshot(futures_util::stream::iter(chunks))
            .await
            .map(drop),
    );
    out
}

/// What must not change under attack.
fn fingerprint(i: &PoolInfo) -> String {
    format!(
        "leader={:?} term={} applied={:?} config={:?} dialogs={} nodes={:?}",
        i.leader, i.term, i.applied, i.config_version, i.dialogs, i.nodes
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_speak_on_the_internal_port_each_for_itself() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("medpool test pool CA");
    let n0 = member(&ca, dir.path(), 0, false).await;
    let n1 = member(&ca, dir.path(), 1, true).await;
    until(
        "two members over mTLS, with a leader",
        Duration::from_secs(20),
        || {
            let i = n0.info();
            i.leader.is_some() && i.nodes.len() == 2 && n1.info().nodes.len() == 2
        },
    )
    .await;
    assert!(n0.pool_secret().is_some(), "a new pool has its secret");
    assert_eq!(n0.pool_secret(), n1.pool_secret());

    // A state larger than one snapshot chunk (1 MiB), and enough entries to purge the log: a node
    // that joins now catches up through the chunked InstallSnapshot.
    let leader = if n0.info().leader == Some(0) {
        &n0
    } else {
        &n1
    };
    let big = vec![b'#'; 1_500_000];
    leader
        .write(Command::SetConfig {
            expected_version: None,
            body: big,
        })
        .await
        .unwrap();
    for _ in 0..60 {
        leader.write(Command::Noop).await.unwrap();
    }
    let n2 = member(&ca, dir.path(), 2, true).await;
    until(
        "the third member joins and has the configuration",
        Duration::from_secs(30),
        || {
            let i = n2.info();
            i.nodes.len() == 3
                && i.config_version == Some(1)
                && n0.info().nodes.iter().all(|n| n.state == "Active")
        },
    )
    .await;
    assert_eq!(n2.pool_secret(), n0.pool_secret());
    use openraft::async_runtime::watch::WatchReceiver;
    let via_snapshot = n2
        .raft()
        .metrics()
        .borrow_watched()
        .snapshot
        .is_some_and(|s| s.index > 0);
    assert!(
        via_snapshot,
        "the third member caught up through a snapshot"
    );

    until(
        "the shards spread over the three",
        Duration::from_secs(20),
        || {
            let i = n0.info();
            i.unowned == 0 && i.nodes.iter().all(|n| n.shards > 0)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before: Vec<String> = [&n0, &n1, &n2]
        .iter()
        .map(|n| fingerprint(&n.info()))
        .collect();

    let stranger = TestCa::new("someone else's CA");
    let attackers = [
        ("no certificate", Attacker::new(&ca.pem, None)),
        (
            "a certificate of another CA naming node 1",
            Attacker::new(&ca.pem, Some(stranger.issue(&[node_name(1)]))),
        ),
        (
            "a pool certificate naming node 7",
            Attacker::new(&ca.pem, Some(ca.issue(&[node_name(7)]))),
        ),
    ];
    for (who, a) in &attackers {
        for target in [0u64, 1, 2] {
            let victim = (target + 1) % 3;
            let mut c = a.client(target);
            let refused = attack(&mut c, victim).await;
            assert_eq!(refused.len(), 12, "{who}: {refused:?}");
            for (rpc, code) in &refused {
                if who.starts_with("a pool certificate") {
                    // The handshake succeeds; each request is refused for the node it names.
                    assert_eq!(
                        *code,
                        tonic::Code::PermissionDenied,
                        "{who} → node {target}: {rpc}"
                    );
                } else {
                    // No TLS session at all.
                    assert_ne!(*code, tonic::Code::Ok, "{who} → node {target}: {rpc}");
                }
            }
            if !who.starts_with("a pool certificate") {
                let info = a.client(target).info(InfoRequest {}).await;
                assert!(info.is_err(), "{who} read Info from node {target}");
            }
            println!("{who} → node {target}: refused {refused:?}");
        }
    }
    // Oversized requests end before they are decoded (the cap of each RPC), whoever sends them.
    let mut c = attackers[2].1.client(0);
    let big_vote = c
        .vote(RaftPayload {
            data: vec![b' '; 5 << 20],
        })
        .await;
    assert!(big_vote.is_err(), "a 5 MiB vote was taken");
    let big_write = c
        .client_write(RaftPayload {
            data: vec![b' '; 9 << 20],
        })
        .await;
    assert!(big_write.is_err(), "a 9 MiB write was taken");
    println!(
        "oversized: vote {:?}, write {:?}",
        big_vote.err().map(|s| s.code()),
        big_write.err().map(|s| s.code())
    );
    // A certificate of the pool naming no member still reads what names no node.
    assert!(attackers[2].1.client(0).info(InfoRequest {}).await.is_ok());

    // Nothing changed: no new entry, no new term, no node moved, no record written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after: Vec<String> = [&n0, &n1, &n2]
        .iter()
        .map(|n| fingerprint(&n.info()))
        .collect();
    assert_eq!(before, after);
    assert!(n0.dialogs_of(0).is_empty());

    // The members still work together: a write through a follower reaches the leader.
    let follower = [&n0, &n1, &n2]
        .into_iter()
        .find(|n| n.info().leader != Some(n.node_id()))
        .unwrap();
    follower.write(Command::Noop).await.unwrap();
    for n in [n0, n1, n2] {
        n.shutdown().await;
    }
}

/// Refuses any configuration that mentions "toll-fraud".
#[derive(Debug)]
struct NoFraud;

impl ConfigValidator for NoFraud {
    fn validate(&self, body: &[u8]) -> Result<(), String> {
        if body.windows(10).any(|w| w == b"toll-fraud") {
            return Err("route \"toll-fraud\" is not allowed".into());
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_is_proposed_only_after_the_leaders_own_validation() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("medpool test pool CA");
    let (base, v) = (20, || Some(Arc::new(NoFraud) as Arc<dyn ConfigValidator>));
    let n0 = member_in(&ca, dir.path(), base, 0, false, v()).await;
    let n1 = member_in(&ca, dir.path(), base, 1, true, v()).await;
    until("two members with a leader", Duration::from_secs(20), || {
        n0.info().leader.is_some() && n1.info().nodes.len() == 2 && n0.info().nodes.len() == 2
    })
    .await;
    let follower = if n0.info().leader == Some(0) {
        &n1
    } else {
        &n0
    };
    // Sent by a follower: the leader validates it and refuses it, typed.
    let bad = follower
        .write(Command::SetConfig {
            expected_version: None,
            body: b"[[route]]\nname = \"toll-fraud\"\n".to_vec(),
        })
        .await;
    assert!(
        matches!(
            bad,
            Err(WriteError::Refused(Rejection::InvalidConfig { .. }))
        ),
        "{bad:?}"
    );
    assert_eq!(n0.info().config_version, None);
    let good = follower
        .write(Command::SetConfig {
            expected_version: None,
            body: b"# fine\n".to_vec(),
        })
        .await;
    assert!(good.is_ok(), "{good:?}");
    for n in [n0, n1] {
        n.shutdown().await;
    }
}

#[tokio::test]
async fn changed_material_is_used_by_new_connections_and_a_bad_file_keeps_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new("medpool test pool CA");
    let files = ca.files(dir.path(), "n", &[node_name(4)]);
    let tls = InternalTls::load(files.clone()).unwrap();
    assert!(tls.names_node(4) && !tls.names_node(5));
    // A renewed certificate for another name (mtime moves on: wait out a coarse clock).
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (cert, key) = ca.issue(&[node_name(5)]);
    std::fs::write(&files.cert, cert).unwrap();
    std::fs::write(&files.key, key).unwrap();
    bump(&files.cert);
    assert!(tls.names_node(5), "the renewed certificate is used");
    // A broken file: the previous material stays.
    std::fs::write(&files.cert, "not a certificate").unwrap();
    bump(&files.cert);
    assert!(tls.names_node(5), "a bad file keeps the material in use");
}

/// Moves a file's modification time forward (a filesystem with a coarse clock may not see two
/// writes in a row as a change).
fn bump(path: &Path) {
    let f = std::fs::File::options().write(true).open(path).unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(1);
    f.set_modified(later).unwrap();
}
