//! Harness of the admin API and `medpool ctl` tests (tests/admin.rs, tests/ctl.rs): a pool of real
//! `medpool serve` processes on one test's loopback block, and `medpool ctl` runs against it.
//!
//! Addresses of test `n` (numbers 201-219 are these tests'):
//!
//! | address                 | who                                                    |
//! |-------------------------|--------------------------------------------------------|
//! | `127.0.n.i:5060`        | node `i` (1..=3): SIP (UDP and TCP)                    |
//! | `127.0.n.i:7000`        | node `i`: internal service (Raft); 2 and 3 join via 1  |
//! | `127.0.n.i:7001`        | node `i`: admin API                                    |
//! | `127.0.n.1:5070..`      | SIPp callers (trunk `pbx`, any port of 127.0.n.1)      |
//! | `127.0.n.21/.22:5060`   | gateways `gw1`, `gw2`                                  |
//!
//! Processes are owned by guards that stop them by PID on drop (also when a test panics, which
//! then prints every node's log).
#![allow(
    dead_code,
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used,
    clippy::panic,
    missing_docs
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use medpool_harness::process::MedpoolProcess;

use serde_json::Value;

use crate::common::{TestDir, wait_until};

/// The medpool binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_medpool")
}

/// One `medpool serve` process (medpool-harness's [`MedpoolProcess`]: the shared environment rule,
/// stderr captured, stopped by PID on drop, the end of its log printed when a test panics).
pub struct Node {
    pub id: u64,
    pub ip: String,
    process: MedpoolProcess,
}

impl Node {
    /// Starts a node with `args` after `serve`, waits for "medpool ready" (panics after 30 s).
    pub fn start(name: &str, id: u64, ip: &str, args: &[String], env: &[(&str, &str)]) -> Node {
        let mut argv = vec!["serve".to_owned()];
        argv.extend(args.iter().cloned());
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut process = MedpoolProcess::spawn(
            Path::new(bin()),
            name,
            &argv,
            &env,
            None,
            Duration::from_secs(8),
        )
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin()))
        .with_tail_on_panic(150);
        if let Err(e) = process.wait_for_line_blocking(0, "medpool ready", Duration::from_secs(30))
        {
            panic!(
                "{name} did not print \"medpool ready\" within 30 s: {e}\n{}",
                process.log().text()
            );
        }
        Node {
            id,
            ip: ip.to_owned(),
            process,
        }
    }

    pub fn admin(&self) -> String {
        format!("{}:7001", self.ip)
    }

    pub fn sip(&self) -> String {
        format!("{}:5060", self.ip)
    }

    pub fn log(&self) -> String {
        self.process.log().text()
    }

    /// SIGKILL now (a crash).
    pub fn kill(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) {
        self.process.stop();
    }
}

/// The outcome of one `medpool ctl` run.
#[derive(Debug)]
pub struct CtlRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CtlRun {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("ctl output is not JSON ({e}):\n{self:?}"))
    }

    /// Panics with the output unless the exit code is `code`.
    pub fn expect(self, code: i32) -> CtlRun {
        assert_eq!(self.code, code, "medpool ctl exit code\n{self:?}");
        self
    }
}

/// Runs `medpool ctl --server SERVER ARGS` with the token (if any) in the environment.
pub fn ctl(server: &str, token: Option<&str>, args: &[&str]) -> CtlRun {
    let mut cmd = medpool_harness::medpool_command(bin());
    cmd.arg("ctl").arg("--server").arg(server).args(args);
    if let Some(t) = token {
        cmd.env("MEDPOOL_ADMIN_TOKEN", t);
    }
    let out = cmd.output().unwrap();
    CtlRun {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A pool of `size` nodes on `127.0.n.1..=size`.
pub struct TestPool {
    pub n: u8,
    pub dir: TestDir,
    pub nodes: Vec<Node>,
    pub token: Option<String>,
    pub config: PathBuf,
    /// Extra `serve` arguments of every node.
    pub extra: Vec<String>,
}

impl TestPool {
    /// Writes the configuration, starts node 1 (bootstrap) then the others (join through node 1),
    /// and waits until every node is a member, a leader is known and every shard has an owner.
    pub fn start(name: &str, n: u8, size: u64, config_toml: &str, token: Option<&str>) -> TestPool {
        let dir = TestDir::new(name);
        let config = dir.file("pool.toml");
        std::fs::write(&config, config_toml).unwrap();
        let mut pool = TestPool {
            n,
            dir,
            nodes: Vec::new(),
            token: token.map(str::to_owned),
            config,
            extra: vec!["--shutdown-grace".into(), "3".into()],
        };
        for id in 1..=size {
            pool.start_node(id);
        }
        pool.wait_converged(size as usize);
        pool
    }

    pub fn ip(&self, id: u64) -> String {
        format!("127.0.{}.{id}", self.n)
    }

    /// Starts node `id` (joining through node 1 unless it is node 1).
    pub fn start_node(&mut self, id: u64) {
        let ip = self.ip(id);
        let mut args: Vec<String> = vec![
            "--config".into(),
            self.config.display().to_string(),
            "--sip-listen".into(),
            format!("{ip}:5060"),
            "--raft-listen".into(),
            format!("{ip}:7000"),
            "--admin-listen".into(),
            format!("{ip}:7001"),
            "--node-id".into(),
            id.to_string(),
            "--data-dir".into(),
            self.dir.file(&format!("data-{id}")).display().to_string(),
            "--log-format".into(),
            "human".into(),
            "--log".into(),
            std::env::var("MEDPOOL_TEST_LOG").unwrap_or_else(|_| "info".into()),
        ];
        if id != 1 {
            args.push("--join".into());
            args.push(format!("{}:7000", self.ip(1)));
        }
        args.extend(self.extra.iter().cloned());
        let env: Vec<(&str, &str)> = self
            .token
            .as_deref()
            .map(|t| vec![("MEDPOOL_ADMIN_TOKEN", t)])
            .unwrap_or_default();
        let node = Node::start(
            &format!("node {id} of pool {}", self.n),
            id,
            &ip,
            &args,
            &env,
        );
        self.nodes.push(node);
    }

    pub fn node(&self, id: u64) -> &Node {
        self.nodes.iter().find(|n| n.id == id).unwrap()
    }

    pub fn node_mut(&mut self, id: u64) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.id == id).unwrap()
    }

    /// `medpool ctl` against node `id`.
    pub fn ctl(&self, id: u64, args: &[&str]) -> CtlRun {
        ctl(&self.node(id).admin(), self.token.as_deref(), args)
    }

    /// The pool status (JSON) as node `id` answers it.
    pub fn status(&self, id: u64) -> Value {
        self.ctl(id, &["status", "-o", "json"]).expect(0).json()
    }

    /// Polls `ctl status` until `size` nodes are members and reachable, a leader is known, and
    /// no shard is without an owner.
    pub fn wait_converged(&self, size: usize) {
        let first = self.nodes[0].id;
        let mut last = String::new();
        let ok = wait_until(Duration::from_secs(40), || {
            let r = self.ctl(first, &["status", "-o", "json"]);
            if r.code != 0 {
                last = format!("{r:?}");
                return false;
            }
            let v = r.json();
            last = v.to_string();
            let nodes = v["nodes"].as_array().map_or(0, Vec::len);
            nodes == size
                && !v["leader"].is_null()
                && v["unowned_shards"] == 0
                && v["nodes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|n| n["reachable"] == true && n["holds_lease"] == true)
        });
        assert!(
            ok,
            "pool {} did not converge to {size} nodes with a leader; last status: {last}",
            self.n
        );
    }

    /// The leader's id.
    pub fn leader(&self, ask: u64) -> u64 {
        self.status(ask)["leader"].as_u64().unwrap()
    }
}
