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
