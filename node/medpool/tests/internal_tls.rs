//! `medpool serve` refuses an internal port beyond loopback without TLS: the check runs before
//! anything is bound, so a non-loopback `--raft-listen` is refused without binding it, with a
//! message naming the flags that fix it. Addresses: 127.0.151.0/24 only (nothing binds here but the
//! admin port).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use clap::Parser;
use medpool::cli::{Cli, Command};
use medpool::serve::{self, ServeError};

fn serve_args(data_dir: &std::path::Path, extra: &[&str]) -> serve::ServeArgs {
    let data = data_dir.display().to_string();
    let mut argv = vec![
        "medpool",
        "serve",
        "--sip-listen",
        "127.0.151.201:0",
        "--admin-listen",
        "127.0.151.202:0",
        "--data-dir",
        &data,
    ];
    argv.extend_from_slice(extra);
    let cli = Cli::try_parse_from(argv).expect("serve flags");
    match cli.command {
        Command::Serve(args) => *args,
        other => panic!("not serve: {other:?}"),
    }
}

async fn refusal(extra: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let args = serve_args(&dir.path().join("data"), extra);
    let listeners = serve::Listeners::bind(&args).await.expect("admin port");
    match serve::start(args, listeners).await {
        Ok(_) => panic!("the node started with {extra:?}"),
        Err(e) => {
            let text = e.to_string();
            println!("{extra:?}: {text}");
            match e {
                ServeError::InsecureInternal { .. } | ServeError::InternalTlsIncomplete { .. } => {}
                other => panic!("another refusal: {other:?}"),
            }
            text
        }
    }
}

#[tokio::test]
async fn a_non_loopback_internal_port_without_tls_is_refused_naming_the_flags() {
    let text = refusal(&["--raft-listen", "0.0.0.0:0"]).await;
    assert!(text.contains("--insecure-internal"), "{text}");
    assert!(text.contains("--internal-tls-cert"), "{text}");
    assert!(text.contains("0.0.0.0:0"), "{text}");
}

#[tokio::test]
async fn part_of_the_tls_material_is_refused_naming_what_is_missing() {
    let text = refusal(&[
        "--raft-listen",
        "0.0.0.0:0",
        "--internal-tls-cert",
        "/nonexistent/node.crt",
        "--internal-tls-ca",
        "/nonexistent/ca.crt",
    ])
    .await;
    assert!(text.contains("--internal-tls-key"), "{text}");
}

/// `medpool ctl status` against `admin` (the binary, as an operator runs it).
fn ctl_status(admin: std::net::SocketAddr) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_medpool"))
        .args(["ctl", "--server", &admin.to_string(), "status"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_explicitly_insecure_internal_port_is_reported_by_ctl_status() {
    let dir = tempfile::tempdir().unwrap();
    let args = serve_args(
        &dir.path().join("data"),
        &["--raft-listen", "127.0.151.210:7000", "--insecure-internal"],
    );
    let listeners = serve::Listeners::bind(&args).await.expect("admin port");
    let node = serve::start(args, listeners).await.expect("node starts");
    let admin = node.admin_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(node.until(async {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut status = String::new();
    while tokio::time::Instant::now() < deadline {
        status = tokio::task::spawn_blocking(move || ctl_status(admin))
            .await
            .unwrap();
        if status.contains("insecure internal port") {
            break;
        }
        // The node bootstraps its pool first (its own record appears in status then).
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    println!("{status}");
    assert!(
        status.contains("warning: node 0: insecure internal port 127.0.151.210:7000"),
        "{status}"
    );
    let _ = stop.send(());
    serving.await.unwrap().unwrap();
}
