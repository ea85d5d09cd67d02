//! Harness for medpool's end-to-end tests: a real `medpool serve` process, real SIPp peers, and
//! a few raw UDP sockets where a test needs to see or send single datagrams.
//!
//! Addresses: test number `n` (unique across all test files, see the table below) owns the
//! loopback block `127.0.n.0/24`:
//!
//! | address              | who                                                          |
//! |----------------------|--------------------------------------------------------------|
//! | `127.0.n.1:5060`     | the medpool node (UDP and TCP)                               |
//! | `127.0.n.1:5070..`   | SIPp callers: the internal trunk `pbx` (any source port)      |
//! | `127.0.n.21:5060`    | gateway `gw1`                                                |
//! | `127.0.n.22:5060`    | gateway `gw2`                                                |
//! | `127.0.n.99:5070`    | a caller that is no configured trunk                         |
//!
//! Test numbers in use: calls.rs 11-22, failover.rs 31-34, rfc4475_udp.rs 41, flood.rs,
//! sipvicious.rs, session_timers.rs, forking.rs and rfc_relay.rs 152, tcp_door.rs and
//! gateway_limits.rs 153, real_ua.rs 154, media.rs 156, trunk_local.rs 160, dns.rs and internal_tls.rs 151
//! (addresses of their own, see each file), admin.rs 201-203 and ctl.rs 211 (3-node pools:
//! admin_common/mod.rs).
//!
//! Every process a test starts is owned by a guard whose `Drop` stops it by PID and waits for it,
//! also when the test panics; a panicking test prints medpool's log and each SIPp's errors.
//!
//! These tests drive real processes on the wall clock: there is no tokio timer to pause, so the
//! harness uses `std::time::Instant` and `std::thread::sleep`, which clippy.toml bans in timer
//! code (allowed here, and only here).
#![allow(
    dead_code,
    clippy::disallowed_types,
    clippy::disallowed_methods,
    clippy::unwrap_used,
    clippy::panic,
    missing_docs
)]

use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use medpool_harness::process::MedpoolProcess;

/// The SIPp scenarios of this crate (`tests/sipp/`).
pub fn scenario(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("sipp")
        .join(name);
    assert!(p.exists(), "no SIPp scenario {}", p.display());
    p
}

/// Sleeps on the wall clock (real processes, real time).
pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// A wall-clock stopwatch.
#[derive(Clone, Copy, Debug)]
pub struct Stopwatch(Instant);

impl Stopwatch {
    pub fn start() -> Self {
        Self(Instant::now())
    }
    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; true when it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if start.elapsed() >= timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------------
// Addresses

/// The node of test `n`.
pub fn node_ip(n: u8) -> String {
    format!("127.0.{n}.1")
}

/// The node's SIP address of test `n`.
pub fn node_addr(n: u8) -> String {
    format!("127.0.{n}.1:5060")
}

/// Gateway `k` (1 or 2) of test `n`.
pub fn gw_ip(n: u8, k: u8) -> String {
    format!("127.0.{n}.{}", 20 + k)
}

// ------------------------------------------------------------------------------------------
// Scratch folders

/// A fresh folder under the system temp dir, removed on drop unless the test failed (then its
/// path is printed so the traces can be read).
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("medpool-it-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

// ------------------------------------------------------------------------------------------
// Processes

/// A child process stopped by PID when dropped: `signal` first, then SIGKILL after `grace`.
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
    signal: &'static str,
    grace: Duration,
}

impl ChildGuard {
    pub fn new(child: Child, name: &str, signal: &'static str, grace: Duration) -> Self {
        Self {
            child: Some(child),
            name: name.to_owned(),
            signal,
            grace,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits up to `timeout` for the process to end by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait_until(timeout, || {
            status = self.try_wait();
            status.is_some()
        });
        status
    }

    /// Stops the process (signal, grace, SIGKILL) and returns how it ended.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .arg(format!("-{}", self.signal))
            .arg(child.id().to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let start = Instant::now();
        while start.elapsed() < self.grace {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "{} (pid {}) did not stop within {:?} of SIG{}: SIGKILL",
            self.name,
            child.id(),
            self.grace,
            self.signal
        );
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.stop();
    }
}

// ------------------------------------------------------------------------------------------
// medpool

/// Fails the test with a clear message when SIPp is not installed (an environment error, never
/// a silent pass: the README's test command installs Debian's `sip-tester`).
pub fn require_sipp() {
    let ok = Command::new("sipp")
        .arg("-v")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("SIPp"))
        .unwrap_or(false);
    assert!(
        ok,
        "SIPp is not installed (no `sipp` in PATH). These end-to-end tests need real SIP peers: \
         install Debian's sip-tester (`apt-get install -y sip-tester`), as the README's test \
         command does, and run them again."
    );
}

/// A running `medpool serve`: its own config file and data folder in a [`TestDir`], SIP on
/// `127.0.n.1:5060`, stderr kept in memory for failure messages. Dropping it sends SIGTERM and
/// waits (SIGKILL after a few seconds). The process is medpool-harness's [`MedpoolProcess`] (the
/// environment rule every harness shares: no inherited MEDPOOL_* or OTEL_* variable).
pub struct MedpoolNode {
    pub n: u8,
    process: MedpoolProcess,
}

impl MedpoolNode {
    /// Writes `config_toml` into `dir`, starts the node of test `n` and waits for "medpool
    /// ready". Shutdown grace is 3 s (calls a test leaves open must not slow the suite down).
    pub fn start(dir: &TestDir, n: u8, config_toml: &str) -> Self {
        Self::start_with(dir, n, config_toml, &["--shutdown-grace", "3"])
    }

    /// Like [`MedpoolNode::start`], with other extra command-line arguments.
    pub fn start_with(dir: &TestDir, n: u8, config_toml: &str, extra_args: &[&str]) -> Self {
        Self::start_env(dir, n, config_toml, extra_args, &[])
    }

    /// Like [`MedpoolNode::start_with`], with extra environment variables for the process.
    pub fn start_env(
        dir: &TestDir,
        n: u8,
        config_toml: &str,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        Self::start_at(dir, n, &node_addr(n), config_toml, extra_args, envs)
    }

    /// Like [`MedpoolNode::start_env`], listening for SIP on `sip` instead of the test's node address.
    pub fn start_at(
        dir: &TestDir,
        n: u8,
        sip: &str,
        config_toml: &str,
        extra_args: &[&str],
        envs: &[(&str, &str)],
    ) -> Self {
        require_sipp();
        let config = dir.file("medpool.toml");
        std::fs::write(&config, config_toml).unwrap();
        let data = dir.file("data");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--config".into(),
            config.display().to_string(),
            "--sip-listen".into(),
            sip.to_owned(),
            "--data-dir".into(),
            data.display().to_string(),
            "--log-format".into(),
            "human".into(),
            "--log".into(),
            medpool_harness::process::log_filter(),
        ];
        args.extend(extra_args.iter().map(|a| (*a).to_owned()));
        let envs: Vec<(String, String)> = envs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut process = MedpoolProcess::spawn(
            Path::new(env!("CARGO_BIN_EXE_medpool")),
            &format!("medpool node {n}"),
            &args,
            &envs,
            None,
            Duration::from_secs(8),
        )
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", env!("CARGO_BIN_EXE_medpool")))
        .with_tail_on_panic(300);
        if let Err(e) = process.wait_for_line_blocking(0, "medpool ready", Duration::from_secs(30))
        {
            panic!(
                "medpool node {n} did not print \"medpool ready\" within 30 s ({e})\n\
                 --- config ---\n{config_toml}\n--- stderr ---\n{}",
                process.log().text()
            );
        }
        Self { n, process }
    }

    /// The node's SIP address.
    pub fn addr(&self) -> String {
        node_addr(self.n)
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Everything the node wrote on stderr so far.
    pub fn log(&self) -> String {
        self.process.log().text()
    }

    /// Panics (with the log) if the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.process.exited() {
            panic!(
                "medpool node {} exited ({status}) while it should be serving\n--- stderr ---\n{}",
                self.n,
                self.log()
            );
        }
    }

    /// SIGTERM, then waits for the exit; returns how it ended.
    pub fn stop(mut self) -> Option<ExitStatus> {
        self.process.stop()
    }

    /// Like [`MedpoolNode::stop`], and everything the node wrote on stderr until it exited.
    pub fn stop_with_log(mut self) -> (Option<ExitStatus>, String) {
        let status = self.process.stop();
        (status, self.process.log().text())
    }
}

// ------------------------------------------------------------------------------------------
// Configuration

/// Settings of the standard test pool: trunk `pbx` (internal, 127.0.n.1 any port), gateways
/// `gw1` and `gw2` (127.0.n.21/.22:5060, UDP), a route `from-pstn` (gateways to the pbx) and a
/// route `to-gateways` (pbx to the gateways, by the priorities below).
#[derive(Clone, Debug)]
pub struct PoolSpec {
    pub n: u8,
    /// The internal trunk's address (default: 127.0.n.1, the node's own IP, any port).
    pub pbx_ip: String,
    pub node_max_calls: u32,
    pub max_tries: u32,
    pub retry_after: u32,
    pub pbx_max_calls: Option<u32>,
    pub gw_max_calls: [Option<u32>; 2],
    /// Priority of gw1 and gw2 in `to-gateways`; `None` leaves that gateway out of the route.
    pub priority: [Option<u32>; 2],
    pub options_interval_ms: u32,
    pub down_after: u32,
    pub up_after: u32,
    pub fast_failover_ms: u32,
    /// Pattern of the `to-gateways` route.
    pub pattern: String,
    /// Every trunk's `media`: "bypass" by default here — these tests' SIPp peers send no RTP and
    /// their scenarios expect no re-INVITE, which a relayed call moved to another node sends to
    /// re-anchor its media. The relay (medpool's default) is tested in media.rs, real_ua.rs and
    /// the chaos tests, whose peers send RTP.
    pub media: &'static str,
    /// `[node] local_calls` (default true: a new call is set up by the node it reaches). A test of
    /// forwarding between nodes turns it off, so that calls go to their Call-ID's owner.
    pub local_calls: bool,
}

impl PoolSpec {
    pub fn new(n: u8) -> Self {
        Self {
            n,
            pbx_ip: node_ip(n),
            node_max_calls: 100,
            max_tries: 3,
            retry_after: 7,
            pbx_max_calls: None,
            gw_max_calls: [None, None],
            priority: [Some(1), Some(1)],
            options_interval_ms: 500,
            down_after: 2,
            up_after: 2,
            fast_failover_ms: 2000,
            pattern: ".*".to_owned(),
            media: "bypass",
            local_calls: true,
        }
    }

    /// The same pool with `[node] local_calls = false`: every new call goes to the owner of its
    /// Call-ID's shard, through another node when that node does not own it.
    pub fn forwarding(mut self) -> Self {
        self.local_calls = false;
        self
    }

    pub fn toml(&self) -> String {
        let n = self.n;
        let mut s = String::new();
        writeln!(s, "# test pool {n} (written by tests/common/mod.rs)").unwrap();
        writeln!(s, "[node]").unwrap();
        writeln!(s, "max_calls = {}", self.node_max_calls).unwrap();
        writeln!(s, "max_tries = {}", self.max_tries).unwrap();
        writeln!(s, "unknown_source = \"reject\"").unwrap();
        writeln!(s, "retry_after = {}", self.retry_after).unwrap();
        writeln!(s, "local_calls = {}", self.local_calls).unwrap();
        writeln!(s).unwrap();
        writeln!(s, "[[trunk]]").unwrap();
        writeln!(s, "name = \"pbx\"").unwrap();
        writeln!(s, "address = \"{}\"", self.pbx_ip).unwrap();
        writeln!(s, "port = 5070").unwrap();
        writeln!(s, "side = \"internal\"").unwrap();
        writeln!(s, "match_any_port = true").unwrap();
        writeln!(s, "usages = [\"outbound\"]").unwrap();
        writeln!(s, "media = \"{}\"", self.media).unwrap();
        if let Some(m) = self.pbx_max_calls {
            writeln!(s, "max_calls = {m}").unwrap();
        }
        for k in 1..=2u8 {
            writeln!(s).unwrap();
            writeln!(s, "[[trunk]]").unwrap();
            writeln!(s, "name = \"gw{k}\"").unwrap();
            writeln!(s, "address = \"{}\"", gw_ip(n, k)).unwrap();
            writeln!(s, "port = 5060").unwrap();
            writeln!(s, "transport = \"udp\"").unwrap();
            writeln!(s, "side = \"gateway\"").unwrap();
            writeln!(s, "options_interval_ms = {}", self.options_interval_ms).unwrap();
            writeln!(s, "down_after = {}", self.down_after).unwrap();
            writeln!(s, "up_after = {}", self.up_after).unwrap();
            writeln!(s, "failover_codes = [408, 503, 504]").unwrap();
            writeln!(s, "fast_failover_ms = {}", self.fast_failover_ms).unwrap();
            writeln!(s, "usages = [\"inbound\"]").unwrap();
            writeln!(s, "media = \"{}\"", self.media).unwrap();
            if let Some(m) = self.gw_max_calls[usize::from(k - 1)] {
                writeln!(s, "max_calls = {m}").unwrap();
            }
        }
        writeln!(s).unwrap();
        writeln!(s, "[[route]]").unwrap();
        writeln!(s, "name = \"from-pstn\"").unwrap();
        writeln!(s, "pattern = '.*'").unwrap();
        writeln!(s, "usage = \"inbound\"").unwrap();
        writeln!(s, "trunks = [\"pbx\"]").unwrap();
        writeln!(s).unwrap();
        writeln!(s, "[[route]]").unwrap();
        writeln!(s, "name = \"to-gateways\"").unwrap();
        writeln!(s, "pattern = '{}'", self.pattern).unwrap();
        writeln!(s, "usage = \"outbound\"").unwrap();
        let targets: Vec<String> = (1..=2u8)
            .filter_map(|k| {
                self.priority[usize::from(k - 1)]
                    .map(|p| format!("{{ trunk = \"gw{k}\", priority = {p} }}"))
            })
            .collect();
        writeln!(s, "trunks = [{}]", targets.join(", ")).unwrap();
        s
    }
}

// ------------------------------------------------------------------------------------------
// SIPp

/// One message in a SIPp short-message trace (`-trace_shortmsg`).
#[derive(Clone, Debug)]
pub struct SippMsg {
    /// Seconds since the epoch.
    pub at: f64,
    /// True for a message SIPp received, false for one it sent.
    pub received: bool,
    pub call_id: String,
    /// E.g. "CSeq:1 INVITE".
    pub cseq: String,
    /// The start line.
    pub first_line: String,
}

impl SippMsg {
    /// The method of a request, or `None` for a response.
    pub fn method(&self) -> Option<&str> {
        if self.first_line.starts_with("SIP/2.0") {
            None
        } else {
            self.first_line.split(' ').next()
        }
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        if self.first_line.starts_with("SIP/2.0 ") {
            self.first_line.get(8..11).and_then(|c| c.parse().ok())
        } else {
            None
        }
    }

    /// The method named in CSeq.
    pub fn cseq_method(&self) -> &str {
        self.cseq.rsplit(' ').next().unwrap_or("")
    }
}

/// What a SIPp process is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Uac,
    Uas,
}

/// Builds a SIPp command line. Callers (`uac`) place `-m` calls and end by themselves; gateways
/// (`uas`) run until the test stops them and always auto-answer OPTIONS (`-aa`). Every process
/// writes its errors, a short trace and a full message trace into the test folder.
pub struct Sipp {
    role: Role,
    name: String,
    scenario: PathBuf,
    local_ip: String,
    local_port: u16,
    remote: Option<String>,
    calls: u32,
    rate: u32,
    hold_ms: u64,
    service: Option<String>,
    transport_tcp: bool,
    extra: Vec<String>,
}

impl Sipp {
    /// A caller: `scenario` from tests/sipp, sending to `remote`.
    pub fn uac(
        name: &str,
        scenario_file: &str,
        local_ip: &str,
        local_port: u16,
        remote: &str,
    ) -> Self {
        Self {
            role: Role::Uac,
            name: name.to_owned(),
            scenario: scenario(scenario_file),
            local_ip: local_ip.to_owned(),
            local_port,
            remote: Some(remote.to_owned()),
            calls: 1,
            rate: 10,
            hold_ms: 200,
            service: None,
            transport_tcp: false,
            extra: Vec::new(),
        }
    }

    /// A gateway: `scenario` from tests/sipp, listening on `local_ip:5060`.
    pub fn uas(name: &str, scenario_file: &str, local_ip: &str) -> Self {
        Self {
            role: Role::Uas,
            name: name.to_owned(),
            scenario: scenario(scenario_file),
            local_ip: local_ip.to_owned(),
            local_port: 5060,
            remote: None,
            calls: 0,
            rate: 0,
            hold_ms: 200,
            service: None,
            transport_tcp: false,
            extra: Vec::new(),
        }
    }

    /// Calls to place (`-m`).
    pub fn calls(mut self, m: u32) -> Self {
        self.calls = m;
        self
    }

    /// Calls per second (`-r`).
    pub fn rate(mut self, r: u32) -> Self {
        self.rate = r;
        self
    }

    /// Duration of the scenario's `<pause/>` (`-d`).
    pub fn hold_ms(mut self, d: u64) -> Self {
        self.hold_ms = d;
        self
    }

    /// The user part of the Request-URI (`-s`).
    pub fn service(mut self, s: &str) -> Self {
        self.service = Some(s.to_owned());
        self
    }

    /// SIP over TCP (`-t t1`) instead of UDP.
    pub fn tcp(mut self) -> Self {
        self.transport_tcp = true;
        self
    }

    /// A scenario file outside tests/sipp (e.g. one a test wrote into its folder).
    pub fn scenario_path(mut self, path: PathBuf) -> Self {
        self.scenario = path;
        self
    }

    /// Any other SIPp arguments.
    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.to_owned());
        self
    }

    /// Starts SIPp with its traces in `dir`.
    pub fn spawn(self, dir: &TestDir) -> SippProcess {
        let base = dir.file(&self.name);
        let trace = |ext: &str| PathBuf::from(format!("{}.{ext}", base.display()));
        let errors = trace("errors.log");
        let short = trace("short.log");
        let messages = trace("messages.log");
        let screen = trace("screen.log");
        let stdout = trace("stdout.log");
        let mut cmd = Command::new("sipp");
        if let Some(remote) = &self.remote {
            cmd.arg(remote);
        }
        cmd.arg("-sf")
            .arg(&self.scenario)
            .arg("-i")
            .arg(&self.local_ip)
            .arg("-p")
            .arg(self.local_port.to_string())
            .arg("-d")
            .arg(self.hold_ms.to_string())
            .arg("-nostdin")
            .arg("-trace_err")
            .arg("-error_file")
            .arg(&errors)
            .arg("-trace_shortmsg")
            .arg("-shortmessage_file")
            .arg(&short)
            .arg("-trace_msg")
            .arg("-message_file")
            .arg(&messages)
            .arg("-trace_screen")
            .arg("-screen_file")
            .arg(&screen);
        if self.transport_tcp {
            cmd.arg("-t").arg("t1");
        }
        match self.role {
            Role::Uac => {
                cmd.arg("-m")
                    .arg(self.calls.to_string())
                    .arg("-r")
                    .arg(self.rate.to_string())
                    .arg("-recv_timeout")
                    .arg("10000")
                    .arg("-timeout")
                    .arg("30s")
                    .arg("-timeout_error");
                if let Some(s) = &self.service {
                    cmd.arg("-s").arg(s);
                }
            }
            Role::Uas => {
                cmd.arg("-aa");
            }
        }
        cmd.args(&self.extra);
        let out = std::fs::File::create(&stdout).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start sipp ({e}); is sip-tester installed?"));
        let guard = ChildGuard::new(
            child,
            &format!("sipp {}", self.name),
            "KILL",
            Duration::from_secs(2),
        );
        SippProcess {
            name: self.name,
            addr: format!("{}:{}", self.local_ip, self.local_port),
            guard,
            errors,
            short,
            messages,
            screen,
            stdout,
        }
    }
}

/// Starts gateway `k` (1 or 2) of test `n` with `scenario_file` (named "gw1"/"gw2" in traces).
pub fn gateway(dir: &TestDir, n: u8, k: u8, scenario_file: &str) -> SippProcess {
    Sipp::uas(&format!("gw{k}"), scenario_file, &gw_ip(n, k)).spawn(dir)
}

/// A caller on the internal trunk of test `n` (127.0.n.1:`port`) sending to the node.
pub fn caller(name: &str, n: u8, port: u16, scenario_file: &str) -> Sipp {
    Sipp::uac(name, scenario_file, &node_ip(n), port, &node_addr(n))
}

/// A running SIPp (stopped by PID on drop).
pub struct SippProcess {
    pub name: String,
    /// Where it listens.
    pub addr: String,
    guard: ChildGuard,
    errors: PathBuf,
    short: PathBuf,
    messages: PathBuf,
    screen: PathBuf,
    stdout: PathBuf,
}

/// How a SIPp caller ended.
#[derive(Debug)]
pub struct SippOutcome {
    /// Exit code (0: every call succeeded; 1: some failed; 97/99/-1/-2: see `sipp -h`); `None`
    /// if it was killed because it ran too long.
    pub code: Option<i32>,
    /// A report: errors, final screen, stdout tail.
    pub report: String,
}

impl SippOutcome {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl SippProcess {
    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Waits for a caller to finish (kills it after `timeout`).
    pub fn wait(&mut self, timeout: Duration) -> SippOutcome {
        let status = self.guard.wait_timeout(timeout);
        let code = match status {
            Some(s) => s.code(),
            None => {
                self.guard.stop();
                None
            }
        };
        SippOutcome {
            code,
            report: self.report(),
        }
    }

    /// Waits for a caller and fails the test unless every call succeeded.
    pub fn expect_success(&mut self, timeout: Duration) {
        let o = self.wait(timeout);
        assert!(
            o.success(),
            "SIPp {} ended with {:?} (0 = every call succeeded)\n{}",
            self.name,
            o.code,
            o.report
        );
    }

    /// Stops a gateway now.
    pub fn stop(&mut self) {
        self.guard.stop();
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.guard.try_wait().is_none()
    }

    /// The full message trace so far (`-trace_msg`: every message with its body).
    pub fn message_log(&self) -> String {
        std::fs::read(&self.messages)
            .map(|t| String::from_utf8_lossy(&t).into_owned())
            .unwrap_or_default()
    }

    /// Every message in the short trace so far.
    pub fn messages(&self) -> Vec<SippMsg> {
        let Ok(text) = std::fs::read(&self.short) else {
            return Vec::new();
        };
        String::from_utf8_lossy(&text)
            .lines()
            .filter_map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                if f.len() < 7 {
                    return None;
                }
                Some(SippMsg {
                    at: f[2].parse().ok()?,
                    received: f[3] == "R",
                    call_id: f[4].to_owned(),
                    cseq: f[5].to_owned(),
                    first_line: f[6..].join("\t"),
                })
            })
            .collect()
    }

    /// Distinct Call-IDs of the initial INVITEs (CSeq method INVITE, no earlier message of that
    /// Call-ID) this process received, in order of arrival, with the time of the first copy.
    pub fn calls_received(&self) -> Vec<(String, f64)> {
        let mut seen: Vec<(String, f64)> = Vec::new();
        let mut any: Vec<String> = Vec::new();
        for m in self.messages() {
            if !any.contains(&m.call_id) {
                any.push(m.call_id.clone());
                if m.received && m.method() == Some("INVITE") {
                    seen.push((m.call_id.clone(), m.at));
                }
            }
        }
        seen
    }

    /// Received requests of `method` (retransmissions included).
    pub fn requests_received(&self, method: &str) -> usize {
        self.messages()
            .iter()
            .filter(|m| m.received && m.method() == Some(method))
            .count()
    }

    /// Distinct Call-IDs in which this process received a request of `method`.
    pub fn dialogs_with_request(&self, method: &str) -> usize {
        let mut ids: Vec<String> = self
            .messages()
            .into_iter()
            .filter(|m| m.received && m.method() == Some(method))
            .map(|m| m.call_id)
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    }

    /// Distinct (Call-ID, status) pairs this process sent, e.g. how many calls it answered 503.
    pub fn responses_sent(&self, status: u16, cseq_method: &str) -> usize {
        let mut ids: Vec<String> = self
            .messages()
            .into_iter()
            .filter(|m| !m.received && m.status() == Some(status) && m.cseq_method() == cseq_method)
            .map(|m| m.call_id)
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    }

    /// Distinct Call-IDs in which this process received a `status` answer to `cseq_method`.
    pub fn responses_received(&self, status: u16, cseq_method: &str) -> usize {
        let mut ids: Vec<String> = self
            .messages()
            .into_iter()
            .filter(|m| m.received && m.status() == Some(status) && m.cseq_method() == cseq_method)
            .map(|m| m.call_id)
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    }

    /// Call-IDs of the INVITEs this process sent (a caller's calls).
    pub fn calls_sent(&self) -> Vec<String> {
        let mut ids: Vec<String> = Vec::new();
        for m in self.messages() {
            if !m.received && m.method() == Some("INVITE") && !ids.contains(&m.call_id) {
                ids.push(m.call_id);
            }
        }
        ids
    }

    /// Checks of the scenario (`ereg ... check_it="true"`) that failed, as SIPp logged them.
    pub fn failed_checks(&self) -> Vec<String> {
        let text = std::fs::read(&self.errors)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        split_sipp_events(&text)
            .lines()
            .filter(|l| l.contains("Failed regexp match"))
            .map(str::to_owned)
            .collect()
    }

    /// OPTIONS this gateway answered (medpool's probes).
    pub fn options_answered(&self) -> usize {
        self.messages()
            .iter()
            .filter(|m| !m.received && m.status() == Some(200) && m.cseq_method() == "OPTIONS")
            .count()
    }

    /// Waits until this gateway has answered `count` OPTIONS probes (so medpool has seen it
    /// alive `count` times); fails the test after `timeout`.
    pub fn wait_for_probes(&self, count: usize, timeout: Duration) {
        assert!(
            wait_until(timeout, || self.options_answered() >= count),
            "gateway {} answered {} OPTIONS probes in {timeout:?}, expected {count}\n{}",
            self.name,
            self.options_answered(),
            self.report()
        );
    }

    /// Errors (minus -aa's notices), final screen and the end of stdout.
    pub fn report(&self) -> String {
        let read = |p: &Path| {
            std::fs::read(p)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        // SIPp writes its events without line breaks between them.
        let errors = split_sipp_events(&read(&self.errors));
        let errors: String = errors
            .lines()
            .filter(|l| !l.contains("Automatic response mode"))
            .collect::<Vec<_>>()
            .join("\n");
        let stdout = read(&self.stdout);
        let tail: String = stdout
            .chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        format!(
            "--- sipp {} errors ({}) ---\n{}\n--- sipp {} final screen ---\n{}\n--- sipp {} output (end) ---\n{}\n--- sipp {} messages: {} ---",
            self.name,
            self.errors.display(),
            errors.chars().take(6000).collect::<String>(),
            self.name,
            read(&self.screen),
            self.name,
            tail,
            self.name,
            self.messages.display()
        )
    }
}

/// Puts each event of a SIPp error file on its own line: events start with a date
/// (`YYYY-MM-DD<TAB>`) and follow each other without a line break.
fn split_sipp_events(text: &str) -> String {
    let b = text.as_bytes();
    let starts_event = |i: usize| {
        b.len() > i + 10
            && b[i..i + 4].iter().all(u8::is_ascii_digit)
            && b[i + 4] == b'-'
            && b[i + 5..i + 7].iter().all(u8::is_ascii_digit)
            && b[i + 7] == b'-'
            && b[i + 8..i + 10].iter().all(u8::is_ascii_digit)
            && b[i + 10] == b'\t'
    };
    let mut out = String::with_capacity(text.len() + 64);
    for (i, c) in text.char_indices() {
        if i > 0 && starts_event(i) && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push(c);
    }
    out
}

impl Drop for SippProcess {
    fn drop(&mut self) {
        self.guard.stop();
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

// ------------------------------------------------------------------------------------------
// Raw UDP

/// A UDP socket that receives and counts what arrives but never answers: a "dead" gateway at a
/// gateway's address (OPTIONS probes go unanswered) that still lets a test count the INVITEs
/// sent to it.
pub struct BlackHole {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(f64, String)>>>,
    thread: Option<JoinHandle<()>>,
}

impl BlackHole {
    pub fn bind(addr: &str) -> Self {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("cannot bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let stop = Arc::clone(&stop);
            let seen = Arc::clone(&seen);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((len, _)) = sock.recv_from(&mut buf) {
                        let first = String::from_utf8_lossy(&buf[..len])
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_owned();
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64());
                        seen.lock().unwrap().push((now, first));
                    }
                }
            })
        };
        Self {
            addr: addr.parse().unwrap(),
            stop,
            seen,
            thread: Some(thread),
        }
    }

    /// Requests of `method` received so far (retransmissions included).
    pub fn count(&self, method: &str) -> usize {
        let prefix = format!("{method} ");
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.starts_with(&prefix))
            .count()
    }

    /// Closes the socket (so that something else can bind the address).
    pub fn close(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BlackHole {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A parsed SIP response (just what the tests look at).
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub raw: String,
}

impl Response {
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        let raw = String::from_utf8_lossy(bytes).into_owned();
        let first = raw.lines().next()?;
        let rest = first.strip_prefix("SIP/2.0 ")?;
        let status = rest.get(..3)?.parse().ok()?;
        Some(Self { status, raw })
    }

    /// The first value of header `name` (or its compact form `compact`), trimmed.
    pub fn header(&self, name: &str, compact: Option<&str>) -> Option<String> {
        for line in self.raw.split("\r\n").skip(1) {
            if line.is_empty() {
                break;
            }
            let Some((n, v)) = line.split_once(':') else {
                continue;
            };
            let n = n.trim();
            if n.eq_ignore_ascii_case(name) || compact.is_some_and(|c| n.eq_ignore_ascii_case(c)) {
                return Some(v.trim().to_owned());
            }
        }
        None
    }
}

/// `medpool ctl --server SERVER -o json ARGS`, parsed; panics with ctl's stderr when it fails.
pub fn ctl_json(server: &str, args: &[&str]) -> serde_json::Value {
    let out = medpool_harness::medpool_command(Path::new(env!("CARGO_BIN_EXE_medpool")))
        .arg("ctl")
        .arg("--server")
        .arg(server)
        .arg("-o")
        .arg("json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "medpool ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `GET /metrics` from `addr` (the whole HTTP answer; empty when nothing listens).
pub fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return String::new();
    };
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}
