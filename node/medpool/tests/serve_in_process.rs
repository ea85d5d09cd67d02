//! `serve::run` in process: a node started on port 0 (SIP and admin API) inside the test's own
//! runtime, answering a SIP OPTIONS, then stopped through its shutdown future — no process, no
//! signal. What a test of the node as a library looks like.
//!
//! Its addresses are loopback addresses no other test uses: the node binds UDP on port 0 and then
//! TCP on the same port, which on 127.0.0.1 another test's TCP socket may already hold (seen once
//! as `AddrInUse` in a full run). On an address of its own the kernel's UDP pick is free for TCP.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::time::Duration;

use clap::Parser;
use medpool::cli::{Cli, Command};
use medpool::serve;
use tokio::net::{TcpStream, UdpSocket};

fn serve_args(data_dir: &std::path::Path, config: &std::path::Path) -> serve::ServeArgs {
    let cli = Cli::try_parse_from([
        "medpool",
        "serve",
        "--config",
        &config.display().to_string(),
        "--sip-listen",
        "127.0.93.1:0",
        "--admin-listen",
        "127.0.93.2:0",
        "--data-dir",
        &data_dir.display().to_string(),
        "--shutdown-grace",
        "2",
    ])
    .expect("serve flags");
    match cli.command {
        Command::Serve(args) => *args,
        other => panic!("not serve: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_in_process_and_stops_through_its_shutdown_future() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("medpool.toml");
    // The test's socket is a known peer (an unknown source is answered 403).
    std::fs::write(
        &config,
        "[[trunk]]\nname = \"test\"\naddress = \"127.0.93.3\"\nside = \"internal\"\n\
         match_any_port = true\n",
    )
    .unwrap();
    let args = serve_args(&dir.path().join("data"), &config);

    let listeners = serve::Listeners::bind(&args).await.expect("admin port");
    let node = serve::start(args, listeners).await.expect("node starts");
    let sip = node.sip_addr();
    let admin = node.admin_addr();
    assert_ne!(sip.port(), 0, "the bound SIP port is reported");
    assert_ne!(admin.port(), 0, "the bound admin port is reported");

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(node.until(async {
        let _ = stopped.await;
    }));

    // It serves: OPTIONS is answered 200 and the admin port accepts connections.
    let peer = UdpSocket::bind("127.0.93.3:0").await.unwrap();
    let me = peer.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-inproc-1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:test@{me}>;tag=t1\r\nTo: <sip:{sip}>\r\n\
         Call-ID: inproc-1@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    peer.send_to(options.as_bytes(), sip).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), peer.recv_from(&mut buf))
        .await
        .expect("an answer to OPTIONS")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("SIP/2.0 200"), "{answer}");
    TcpStream::connect(admin)
        .await
        .expect("admin API listening");

    // Stopped through the future: `until` returns Ok and the ports are closed.
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), serving)
        .await
        .expect("the node stops within its grace")
        .expect("the serving task did not panic")
        .expect("a clean stop");
    assert!(
        TcpStream::connect(admin).await.is_err(),
        "the admin API is closed after shutdown"
    );
}
