//! The TLS door of the SIP transports, against real sockets on loopback (addresses 127.0.161.0/24)
//! with certificates from a CA the test makes: a request and its answer over TLS with what each
//! side learns of the other (version, subject); a stranger that opens a connection and never
//! finishes the handshake loses its slot; a certificate replaced on disk is used by the next
//! connection while the open one stays up; a server whose certificate does not carry the name asked
//! for is not talked to; a trunk's client rule admits only certificates of its CA and names; and a
//! TLS 1.1 client (openssl s_client) is refused.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use medpool_sip::transport::tcp::TcpLimits;
use medpool_sip::transport::tls::{
    ClientCheck, ClientRule, ClientVerdict, HandshakeResult, TlsFiles, TlsMaterial, TlsPeer,
    UNKNOWN_LABEL,
};
use medpool_sip::transport::{
    self, Running, TlsListen, Transport, TransportConfig, TransportError,
};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: PathBuf,
}

fn ca(dir: &Path, name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{name} CA"));
    let cert = params.self_signed(&key).unwrap();
    let pem = dir.join(format!("{name}-ca.pem"));
    std::fs::write(&pem, cert.pem()).unwrap();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// Writes `<file>.pem`/`.key` for `names` (the first is the CN), replacing them by rename.
fn issue(ca: &Ca, dir: &Path, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    let (c, k) = (
        dir.join(format!("{file}.pem")),
        dir.join(format!("{file}.key")),
    );
    let tmp = dir.join("tmp");
    std::fs::write(&tmp, key.serialize_pem()).unwrap();
    std::fs::rename(&tmp, &k).unwrap();
    std::fs::write(&tmp, cert.pem()).unwrap();
    std::fs::rename(&tmp, &c).unwrap();
    (c, k)
}

async fn start(
    ip: &str,
    files: TlsFiles,
    listen: bool,
    tcp: TcpLimits,
) -> (Running, watch::Sender<bool>) {
    let (stop, rx) = watch::channel(false);
    let material = TlsMaterial::load(files).unwrap();
    let config = TransportConfig {
        listen: format!("{ip}:0").parse().unwrap(),
        tcp,
        tls: Some(TlsListen {
            listen: listen.then(|| format!("{ip}:0").parse().unwrap()),
            material,
        }),
        ..TransportConfig::default()
    };
    (transport::start(config, rx).await.unwrap(), stop)
}

fn options(from: SocketAddr, branch: &str) -> Bytes {
    Bytes::from(format!(
        "OPTIONS sips:node@127.0.161.1 SIP/2.0\r\nVia: SIP/2.0/TLS {from};branch=z9hG4bK{branch};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sips:t@{from}>;tag=1\r\nTo: <sips:node@127.0.161.1>\r\n\
         Call-ID: {branch}@test\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ))
}

async fn recv(r: &mut Running) -> transport::Inbound {
    tokio::time::timeout(Duration::from_secs(5), r.inbound.recv())
        .await
        .expect("a message within 5 s")
        .unwrap()
}

async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

fn name(n: &str) -> ServerName<'static> {
    ServerName::try_from(n.to_owned()).unwrap()
}

struct Pair {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ca: Ca,
    node: Running,
    node_files: TlsFiles,
    _stops: Vec<watch::Sender<bool>>,
}

/// A node (127.0.161.1, certificate for `node.test`) and the CA.
async fn node(tcp: TcpLimits) -> Pair {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let ca = ca(&dir, "pool");
    let (cert, key) = issue(&ca, &dir, "node", &["node.test"]);
    let node_files = TlsFiles {
        cert,
        key,
        ca: Some(ca.pem.clone()),
    };
    let (node, stop) = start("127.0.161.1", node_files.clone(), true, tcp).await;
    Pair {
        _dir: tmp,
        dir,
        ca,
        node,
        node_files,
        _stops: vec![stop],
    }
}

impl Pair {
    /// A client (no listener) with a certificate for `names`, that verifies the node as `node.test`.
    async fn client(&mut self, ip: &str, file: &str, names: &[&str]) -> Running {
        let (cert, key) = issue(&self.ca, &self.dir, file, names);
        let (c, stop) = start(
            ip,
            TlsFiles {
                cert,
                key,
                ca: Some(self.ca.pem.clone()),
            },
            false,
            TcpLimits::default(),
        )
        .await;
        self._stops.push(stop);
        let at = self.node.transports.tls_local().unwrap();
        c.transports.tls().unwrap().tls().unwrap().set_peers(
            [(
                at,
                TlsPeer {
                    name: name("node.test"),
                    ca: None,
                    label: "node".into(),
                },
            )],
            [],
        );
        c
    }
}

#[tokio::test]
async fn a_request_and_its_answer_over_tls_carry_what_each_side_learnt() {
    let mut p = node(TcpLimits::default()).await;
    let mut client = p.client("127.0.161.2", "pbx", &["pbx.test"]).await;
    let at = p.node.transports.tls_local().unwrap();
    let from = SocketAddr::from(([127, 0, 161, 2], 5061));
    client
        .transports
        .send(Transport::Tls, at, options(from, "a1"))
        .await
        .unwrap();
    let req = recv(&mut p.node).await;
    assert_eq!(req.transport, Transport::Tls);
    let tls = req.tls.clone().expect("a TLS request carries its peer");
    assert_eq!(tls.version, "TLSv1.3");
    assert_eq!(tls.subject.as_deref(), Some("CN=pbx.test"));
    // The trunk rule: this CA and this name admit it; another name or another CA does not.
    let rule = ClientRule::new(p.ca.pem.clone(), vec!["pbx.test".into()]).unwrap();
    assert!(rule.admits(&tls));
    let other_name = ClientRule::new(p.ca.pem.clone(), vec!["fe.test".into()]).unwrap();
    assert!(!other_name.admits(&tls));
    let stranger = ca(&p.dir, "stranger");
    let other_ca = ClientRule::new(stranger.pem.clone(), vec![]).unwrap();
    assert!(!other_ca.admits(&tls));
    // A connection keeps its verdict until the rules change (then the chain is verified again).
    let side = p.node.transports.tls().unwrap().tls().unwrap().clone();
    let ip = from.ip();
    let mut cached = ClientVerdict::default();
    side.set_client_rules([(ip, std::sync::Arc::new(rule))]);
    assert_eq!(
        side.check_client_cached(ip, Some(&tls), &mut cached),
        ClientCheck::Admitted
    );
    assert_eq!(
        side.check_client_cached(ip, Some(&tls), &mut cached),
        ClientCheck::Admitted
    );
    let refused_before = side.refused_requests();
    side.set_client_rules([(ip, std::sync::Arc::new(other_name))]);
    assert_eq!(
        side.check_client_cached(ip, Some(&tls), &mut cached),
        ClientCheck::Refused
    );
    assert_eq!(
        side.check_client_cached(ip, Some(&tls), &mut cached),
        ClientCheck::Refused
    );
    assert_eq!(
        side.refused_requests(),
        refused_before + 2,
        "each refused request counts"
    );
    side.set_client_rules([]);
    assert_eq!(
        side.check_client_cached(ip, Some(&tls), &mut cached),
        ClientCheck::NoRule
    );
    // The answer goes back on the same connection.
    let answer =
        medpool_sip::message::builder::response_to(&req.msg, 200, b"OK", Some("n1"), None).build();
    p.node.transports.send_response(&req, answer).await.unwrap();
    let resp = recv(&mut client).await;
    assert_eq!(resp.msg.status(), Some(200));
    assert_eq!(resp.source, at);
    assert_eq!(
        resp.tls.unwrap().subject.as_deref(),
        Some("CN=node.test"),
        "the client saw the node's certificate"
    );
    let tls = p.node.transports.tls().unwrap();
    assert_eq!(tls.open_inbound(), 1);
    assert_eq!(p.node.transports.tcp().open_connections(), 0);
    assert!(tls.tls().unwrap().handshakes().contains(&(
        UNKNOWN_LABEL.to_owned(),
        true,
        HandshakeResult::Ok,
        1
    )));
}

#[tokio::test]
async fn a_stranger_that_never_finishes_the_handshake_loses_its_slot() {
    let limits = TcpLimits {
        message_timeout: Duration::from_millis(300),
        ..TcpLimits::default()
    };
    let p = node(limits).await;
    let at = p.node.transports.tls_local().unwrap();
    let tls = p.node.transports.tls().unwrap().clone();
    let mut silent = TcpStream::connect(at).await.unwrap();
    assert!(eventually(Duration::from_secs(2), || tls.open_inbound() == 1).await);
    // It holds a slot while the handshake may still come, then loses it.
    let mut b = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut b)).await;
    assert!(
        matches!(read, Ok(Ok(0) | Err(_))),
        "closed by the node: {read:?}"
    );
    assert!(eventually(Duration::from_secs(2), || tls.open_inbound() == 0).await);
    assert!(tls.tls().unwrap().handshakes().contains(&(
        UNKNOWN_LABEL.to_owned(),
        true,
        HandshakeResult::Timeout,
        1
    )));
}

#[tokio::test]
async fn a_certificate_replaced_on_disk_serves_the_next_connection_and_the_open_one_stays() {
    let mut p = node(TcpLimits::default()).await;
    let at = p.node.transports.tls_local().unwrap();
    let mut first = p.client("127.0.161.3", "c1", &["c1.test"]).await;
    let from = SocketAddr::from(([127, 0, 161, 3], 5061));
    first
        .transports
        .send(Transport::Tls, at, options(from, "r1"))
        .await
        .unwrap();
    let req = recv(&mut p.node).await;
    // Replace the node's certificate (same name, a new key) with a different subject.
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(vec!["node.test".to_owned()]).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "node.test");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "renewed");
    let cert = params.signed_by(&key, &p.ca.issuer).unwrap();
    // mtime granularity: make sure the stamp differs.
    tokio::time::sleep(Duration::from_millis(20)).await;
    std::fs::write(p.dir.join("k.tmp"), key.serialize_pem()).unwrap();
    std::fs::rename(p.dir.join("k.tmp"), &p.node_files.key).unwrap();
    std::fs::write(p.dir.join("c.tmp"), cert.pem()).unwrap();
    std::fs::rename(p.dir.join("c.tmp"), &p.node_files.cert).unwrap();
    // A new connection sees the new certificate.
    let mut second = p.client("127.0.161.4", "c2", &["c2.test"]).await;
    let from2 = SocketAddr::from(([127, 0, 161, 4], 5061));
    second
        .transports
        .send(Transport::Tls, at, options(from2, "r2"))
        .await
        .unwrap();
    let req2 = recv(&mut p.node).await;
    let ok = |r: &transport::Inbound| {
        medpool_sip::message::builder::response_to(&r.msg, 200, b"OK", Some("n"), None).build()
    };
    p.node
        .transports
        .send_response(&req2, ok(&req2))
        .await
        .unwrap();
    let resp2 = recv(&mut second).await;
    assert_eq!(
        resp2.tls.unwrap().subject.as_deref(),
        Some("CN=node.test, O=renewed")
    );
    // The first connection is still open and still the old certificate's.
    p.node
        .transports
        .send_response(&req, ok(&req))
        .await
        .unwrap();
    let resp1 = recv(&mut first).await;
    assert_eq!(resp1.tls.unwrap().subject.as_deref(), Some("CN=node.test"));
    assert_eq!(p.node.transports.tls().unwrap().open_inbound(), 2);
}

#[tokio::test]
async fn a_server_whose_certificate_lacks_the_name_is_not_talked_to() {
    let mut p = node(TcpLimits::default()).await;
    let at = p.node.transports.tls_local().unwrap();
    let client = p.client("127.0.161.5", "c5", &["c5.test"]).await;
    let side = client.transports.tls().unwrap().tls().unwrap().clone();
    side.set_peers(
        [(
            at,
            TlsPeer {
                name: name("elsewhere.test"),
                ca: None,
                label: "wrong".into(),
            },
        )],
        [],
    );
    let from = SocketAddr::from(([127, 0, 161, 5], 5061));
    let sent = client
        .transports
        .send(Transport::Tls, at, options(from, "w1"))
        .await;
    assert_eq!(sent, Err(TransportError::Tls));
    assert!(
        side.handshakes()
            .contains(&("wrong".to_owned(), false, HandshakeResult::Failed, 1))
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), p.node.inbound.recv())
            .await
            .is_err(),
        "nothing reached the node"
    );
}

#[tokio::test]
async fn a_tls_1_1_client_is_refused() {
    let p = node(TcpLimits::default()).await;
    let at = p.node.transports.tls_local().unwrap();
    // tokio's Command: the node's tasks run on this test's thread while openssl talks to them.
    let Ok(out) = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &at.to_string(),
            "-tls1_1",
            "-cipher",
            "DEFAULT@SECLEVEL=0",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
    else {
        panic!(
            "openssl is needed for this test (Debian package openssl; scripts/test.sh installs it)"
        );
    };
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "openssl s_client -tls1_1 connected: {text}"
    );
    let side = p.node.transports.tls().unwrap().tls().unwrap().clone();
    assert!(
        eventually(Duration::from_secs(2), || side.handshakes().contains(&(
            UNKNOWN_LABEL.to_owned(),
            true,
            HandshakeResult::Failed,
            1
        )))
        .await,
        "the node counted a failed handshake; openssl said: {text}"
    );
}
