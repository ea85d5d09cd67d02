//! One linphone (Debian's `linphone-cli`, liblinphone 5.1) driven as `linphone-daemon`: the test
//! writes a linphonerc, starts the daemon with its commands on stdin (`call`, `answer`,
//! `call-pause`, `call-resume`, `call-transfer`, `dtmf`, `terminate`) and reads its stdout, where
//! each command is answered with a `Status: Ok|Error` block and call state changes come as
//! `Event: LinphoneCall…` blocks.
//!
//! What it takes to script it here (found by trying): IPv6 off (`ipv6 disable`, else the SDP
//! names the machine's IPv6 address), `[rtp] bind_address` (else the SDP names the address of the
//! default route, not loopback), the UDP port set again after start (`port sip 5060 udp`, else no
//! listening point matches), HOME set to the test folder (its database). There is no sound card:
//! liblinphone then sends no audio of its own until a file is played into the call ([`Linphone::play`],
//! `incall-player-start`). `call-stats` crashed this build once in a trial: not used.

use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::common::ChildGuard;

/// How long a command may take to be answered.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// A sample sound of linphone-common (a dependency of linphone-cli), 8 kHz mono.
pub const HELLO_WAV: &str = "/usr/share/sounds/linphone/hello8000.wav";
/// What the daemon prints when it waits for a command.
const PROMPT: &str = "daemon-linphone>";
/// The most output lines kept.
const MAX_LINES: usize = 100_000;

/// True when `linphone-daemon` is installed.
pub fn installed() -> bool {
    Command::new("linphone-daemon")
        .arg("--help")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains("--auto-answer")
                || String::from_utf8_lossy(&o.stderr).contains("--auto-answer")
        })
        .unwrap_or(false)
}

/// Fails the test with a clear message when linphone-daemon is not installed.
pub fn require() {
    assert!(
        installed(),
        "linphone-daemon is not installed. The real user agent tests need it: install Debian's \
         linphone-cli (`apt-get install -y linphone-cli`), as scripts/test.sh does, and run them \
         again."
    );
}

/// What a linphone is.
#[derive(Clone, Debug)]
pub struct LinphoneSpec {
    pub name: String,
    /// Its SIP (5060) and media address.
    pub ip: String,
    /// The user part of its identity.
    pub user: String,
    /// Its RTP port.
    pub rtp_port: u16,
    /// Answer incoming calls by itself.
    pub auto_answer: bool,
    /// Lines appended to the linphonerc.
    pub extra_config: String,
}

impl LinphoneSpec {
    pub fn new(name: &str, ip: &str, user: &str, rtp_port: u16) -> Self {
        Self {
            name: name.to_owned(),
            ip: ip.to_owned(),
            user: user.to_owned(),
            rtp_port,
            auto_answer: true,
            extra_config: String::new(),
        }
    }

    fn rc(&self) -> String {
        let Self {
            ip,
            user,
            rtp_port,
            name,
            ..
        } = self;
        format!(
            "# written by medpool's tests/ua/linphone.rs\n\
             [sip]\nsip_port=5060\nsip_tcp_port=-1\nsip_tls_port=-1\nbind_address={ip}\n\
             contact=\"{name}\" <sip:{user}@{ip}>\nguess_hostname=0\nuse_ipv6=0\n\
             register_only_when_network_is_up=0\ninc_timeout=60\n\
             [rtp]\naudio_rtp_port={rtp_port}\nbind_address={ip}\naudio_jitt_comp=60\n\
             [net]\nfirewall_policy=0\n\
             [sound]\nechocancellation=0\n\
             [video]\nenabled=0\nautomatically_initiate=0\nautomatically_accept=0\ndisplay=0\ncapture=0\n\
             [misc]\nhistory_max_size=0\n\
             {}\n",
            self.extra_config
        )
    }
}

/// What stdout has said, line by line.
#[derive(Default)]
struct Output {
    lines: Vec<String>,
    closed: bool,
}

/// A running linphone-daemon (stopped by PID on drop: SIGTERM, SIGKILL after 2 s).
pub struct Linphone {
    pub spec: LinphoneSpec,
    guard: ChildGuard,
    stdin: Mutex<ChildStdin>,
    out: Arc<(Mutex<Output>, Condvar)>,
    reader: Option<JoinHandle<()>>,
    log: PathBuf,
}

impl Linphone {
    /// Writes the linphonerc under `dir`, starts the daemon and sets it up for loopback.
    pub fn start(dir: &Path, spec: LinphoneSpec) -> Self {
        require();
        let home = dir.join(format!("linphone-{}", spec.name));
        std::fs::create_dir_all(home.join(".local/share/linphone")).unwrap();
        let rc = home.join("linphonerc");
        std::fs::write(&rc, spec.rc()).unwrap();
        let log = dir.join(format!("linphone-{}.log", spec.name));
        let stderr =
            std::fs::File::create(dir.join(format!("linphone-{}.stderr", spec.name))).unwrap();
        let mut cmd = Command::new("linphone-daemon");
        cmd.arg("--config").arg(&rc).arg("--log").arg(&log);
        if spec.auto_answer {
            cmd.arg("--auto-answer");
        }
        let mut child = cmd
            .env("HOME", &home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start linphone-daemon ({e})"));
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let guard = ChildGuard::new(
            child,
            &format!("linphone {}", spec.name),
            "TERM",
            Duration::from_secs(2),
        );
        let out = Arc::new((Mutex::new(Output::default()), Condvar::new()));
        let reader = {
            let out = Arc::clone(&out);
            std::thread::spawn(move || {
                // Read by chunks, not lines: the prompt that ends an answer has no line break
                // after it (the daemon waits for the next command on that line).
                let mut r = BufReader::new(stdout);
                let mut pending = String::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match r.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    pending.push_str(&String::from_utf8_lossy(&chunk[..n]));
                    let mut lines = Vec::new();
                    while let Some(i) = pending.find('\n') {
                        lines.push(pending[..i].to_owned());
                        pending.drain(..=i);
                    }
                    if pending == PROMPT {
                        lines.push(std::mem::take(&mut pending));
                    }
                    let (lock, cv) = &*out;
                    let mut o = lock.lock().unwrap();
                    for line in lines {
                        if o.lines.len() < MAX_LINES {
                            o.lines.push(line);
                        }
                    }
                    cv.notify_all();
                }
                let (lock, cv) = &*out;
                lock.lock().unwrap().closed = true;
                cv.notify_all();
            })
        };
        let me = Self {
            spec,
            guard,
            stdin: Mutex::new(stdin),
            out,
            reader: Some(reader),
            log,
        };
        me.run("ipv6 disable");
        me.run("port sip 5060 udp");
        me
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// Everything stdout said so far.
    pub fn output(&self) -> Vec<String> {
        self.out.0.lock().unwrap().lines.clone()
    }

    /// Sends `line` and waits for its `Status:` line; `Ok` with the lines of the answer.
    pub fn command(&self, line: &str) -> Result<Vec<String>, String> {
        let (lock, cv) = &*self.out;
        let before = status_lines(&lock.lock().unwrap().lines);
        {
            let mut stdin = self.stdin.lock().unwrap();
            writeln!(stdin, "{line}")
                .and_then(|()| stdin.flush())
                .map_err(|e| format!("linphone {}: cannot send {line:?}: {e}", self.spec.name))?;
        }
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut o = lock.lock().unwrap();
        loop {
            let statuses = status_positions(&o.lines);
            // The answer runs from its Status line to the next prompt (printed once the daemon
            // has written the whole answer and reads the next command).
            let complete = statuses.get(before).and_then(|&at| {
                o.lines[at + 1..]
                    .iter()
                    .position(|l| l.starts_with(PROMPT))
                    .map(|end| (at, at + 1 + end))
            });
            if let Some((at, end)) = complete {
                let answer: Vec<String> = o.lines[at..end]
                    .iter()
                    .map(|l| strip_prompt(l).trim().to_owned())
                    .filter(|l| !l.is_empty())
                    .collect();
                return if strip_prompt(&o.lines[at]).trim() == "Status: Ok" {
                    Ok(answer)
                } else {
                    Err(format!(
                        "linphone {}: {line:?} answered {answer:?}",
                        self.spec.name
                    ))
                };
            }
            let now = Instant::now();
            if o.closed || now >= deadline {
                return Err(format!(
                    "linphone {}: no answer to {line:?} within {COMMAND_TIMEOUT:?} (closed: {})",
                    self.spec.name, o.closed
                ));
            }
            o = cv.wait_timeout(o, deadline - now).unwrap().0;
        }
    }

    /// Runs a command that must succeed.
    pub fn run(&self, line: &str) -> Vec<String> {
        self.command(line)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.report()))
    }

    /// Plays `wav` into the current call (`incall-player-start`): linphone has no sound card
    /// here, so this is what makes it send audio.
    pub fn play(&self, wav: &str) {
        self.run(&format!("incall-player-start {wav}"));
    }

    /// The call states so far (`LinphoneCallConnected`, …), in order.
    pub fn call_states(&self) -> Vec<String> {
        self.output()
            .iter()
            .filter_map(|l| strip_prompt(l).trim().strip_prefix("Event: "))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until call state `state` has been reported `count` times.
    pub fn expect_state(&self, state: &str, count: usize, timeout: Duration) {
        let (lock, cv) = &*self.out;
        let deadline = Instant::now() + timeout;
        let mut o = lock.lock().unwrap();
        loop {
            let seen = o
                .lines
                .iter()
                .filter(|l| strip_prompt(l).trim() == format!("Event: {state}"))
                .count();
            if seen >= count {
                return;
            }
            let now = Instant::now();
            if now >= deadline || o.closed {
                drop(o);
                panic!(
                    "linphone {}: {count} × {state} expected within {timeout:?}; states: {:?}\n{}",
                    self.spec.name,
                    self.call_states(),
                    self.report()
                );
            }
            o = cv.wait_timeout(o, deadline - now).unwrap().0;
        }
    }

    /// Stdout and the end of liblinphone's log, for failure messages.
    pub fn report(&self) -> String {
        let log = std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let log: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("ortp-") && !l.contains("mediastreamer-"))
            .collect();
        let tail = log[log.len().saturating_sub(80)..].join("\n");
        format!(
            "--- linphone {} stdout ---\n{}\n--- linphone {} log (end; {}) ---\n{tail}",
            self.spec.name,
            self.output().join("\n"),
            self.spec.name,
            self.log.display()
        )
    }

    /// Stops the process now.
    pub fn stop(&mut self) {
        if let Ok(mut s) = self.stdin.lock() {
            let _ = writeln!(s, "quit");
            let _ = s.flush();
        }
        self.guard.wait_timeout(Duration::from_secs(2));
        self.guard.stop();
    }
}

impl Drop for Linphone {
    fn drop(&mut self) {
        self.stop();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.report());
        }
    }
}

/// A line without the daemon's prompt (it prints `daemon-linphone>` before reading a command).
fn strip_prompt(line: &str) -> &str {
    let mut l = line;
    while let Some(rest) = l.strip_prefix(PROMPT) {
        l = rest;
    }
    l
}

fn status_positions(lines: &[String]) -> Vec<usize> {
    lines
        .iter()
        .enumerate()
        .filter(|(_, l)| strip_prompt(l).trim_start().starts_with("Status: "))
        .map(|(i, _)| i)
        .collect()
}

fn status_lines(lines: &[String]) -> usize {
    status_positions(lines).len()
}
