//! One `medpool serve` process of a pool on loopback: started with its flags ([`NodeSpec`]) in the
//! environment of [`crate::env`], its stderr captured line by line (kept in memory for waits and
//! written to a log file), stopped by PID: SIGKILL for a fault, SIGTERM (then SIGKILL after a grace)
//! when its guard is dropped, also while a test panics. A panicking test prints the end of every
//! node's log.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::HarnessError;
use crate::env::medpool_command;

/// How long a node gets to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Log lines printed when a test panics.
const TAIL_ON_PANIC: usize = 60;

/// Everything `medpool serve` needs for one node of a local pool.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Node id (0 bootstraps).
    pub id: u64,
    /// SIP address.
    pub sip: SocketAddr,
    /// Internal (Raft) address.
    pub raft: SocketAddr,
    /// Members to join through (empty: bootstrap).
    pub join: Vec<SocketAddr>,
    /// Data folder.
    pub data_dir: PathBuf,
    /// Pool configuration file.
    pub config: PathBuf,
    /// The Service address advertised in Via/Contact.
    pub advertise: SocketAddr,
    /// The forwarder's IP.
    pub trusted_forwarder: IpAddr,
    /// Where its stderr is written.
    pub log_file: PathBuf,
    /// More `serve` flags (e.g. `--audit-file`).
    pub extra: Vec<String>,
}

/// The `--log` filter of a node: `MEDPOOL_TEST_LOG` of the caller's environment, else `info`.
pub fn log_filter() -> String {
    std::env::var("MEDPOOL_TEST_LOG").unwrap_or_else(|_| "info".to_owned())
}

impl NodeSpec {
    /// The `medpool serve` arguments.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "serve".to_owned(),
            "--config".to_owned(),
            self.config.display().to_string(),
            "--sip-listen".to_owned(),
            self.sip.to_string(),
            "--raft-listen".to_owned(),
            self.raft.to_string(),
            "--node-id".to_owned(),
            self.id.to_string(),
            "--data-dir".to_owned(),
            self.data_dir.display().to_string(),
            "--advertise".to_owned(),
            self.advertise.to_string(),
            "--trusted-forwarders".to_owned(),
            self.trusted_forwarder.to_string(),
            "--shutdown-grace".to_owned(),
            "2".to_owned(),
            "--log-format".to_owned(),
            "human".to_owned(),
            "--log".to_owned(),
            log_filter(),
        ];
        a.extend(self.extra.iter().cloned());
        if !self.join.is_empty() {
            a.push("--join".to_owned());
            a.push(
                self.join
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            );
        }
        a
    }
}

/// A node's captured stderr.
#[derive(Debug)]
pub struct Log {
    lines: Mutex<Vec<String>>,
    count: watch::Sender<usize>,
}

impl Log {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many lines so far.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether nothing was logged yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Lines from number `from` on that contain `pattern`.
    pub fn matching(&self, from: usize, pattern: &str) -> Vec<String> {
        self.lock()
            .iter()
            .skip(from)
            .filter(|l| l.contains(pattern))
            .cloned()
            .collect()
    }

    /// The number of the first line from `from` on that contains `pattern`.
    pub fn position(&self, from: usize, pattern: &str) -> Option<usize> {
        self.lock()
            .iter()
            .skip(from)
            .position(|l| l.contains(pattern))
            .map(|p| p + from)
    }

    /// The number of the last line that contains `pattern`.
    pub fn position_last(&self, pattern: &str) -> Option<usize> {
        self.lock().iter().rposition(|l| l.contains(pattern))
    }

    /// The last `n` lines.
    pub fn tail(&self, n: usize) -> String {
        let lines = self.lock();
        let from = lines.len().saturating_sub(n);
        lines[from..].join("\n")
    }

    /// The last `n` lines written by medpool itself (openraft's chatter left out).
    pub fn medpool_tail(&self, n: usize) -> String {
        let lines = self.lock();
        let ours: Vec<&str> = lines
            .iter()
            .filter(|l| !l.contains(" openraft::") && !l.contains(" call{"))
            .map(String::as_str)
            .collect();
        let from = ours.len().saturating_sub(n);
        ours[from..].join("\n")
    }
}

/// A running (or killed) node process. Dropping it stops the process.
#[derive(Debug)]
pub struct NodeProcess {
    /// Its flags.
    pub spec: NodeSpec,
    name: String,
    child: Option<Child>,
    log: Arc<Log>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl NodeProcess {
    /// Starts `bin serve ...` for `spec`.
    pub fn spawn(bin: &Path, spec: NodeSpec) -> Result<NodeProcess, HarnessError> {
        let name = format!("medpool node {} ({})", spec.id, spec.sip);
        let mut child = medpool_command(bin)
            .args(spec.args())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                what: name.clone(),
                source,
            })?;
        let (count, _) = watch::channel(0);
        let log = Arc::new(Log {
            lines: Mutex::new(Vec::new()),
            count,
        });
        // Appended: a node restarted several times in a soak keeps every run's log in one file.
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&spec.log_file)
            .ok();
        let reader = child.stderr.take().map(|stderr| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Some(f) = file.as_mut() {
                        let _ = writeln!(f, "{line}");
                    }
                    let n = {
                        let mut lines = log.lock();
                        lines.push(line);
                        lines.len()
                    };
                    log.count.send_replace(n);
                }
            })
        });
        Ok(NodeProcess {
            spec,
            name,
            child: Some(child),
            log,
            reader,
        })
    }

    /// The process id (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Its captured stderr.
    pub fn log(&self) -> &Log {
        &self.log
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits until a line from number `from` on contains `pattern`; fails at once if the process
    /// exits, or after `within`.
    pub async fn wait_for_line(
        &mut self,
        from: usize,
        pattern: &str,
        within: Duration,
    ) -> Result<String, HarnessError> {
        let deadline = Instant::now() + within;
        let mut changes = self.log.count.subscribe();
        loop {
            if let Some(line) = self.log.matching(from, pattern).into_iter().next() {
                return Ok(line);
            }
            if let Some(status) = self.exited() {
                return Err(HarnessError::Exited {
                    node: self.name.clone(),
                    status: status.to_string(),
                    tail: self.log.tail(30),
                });
            }
            if Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("{:?} in the log of {}", pattern, self.name),
                    after: within,
                });
            }
            // Wake on a new line, or every 200 ms to notice an exit.
            let wake = deadline.min(Instant::now() + Duration::from_millis(200));
            let _ = tokio::time::timeout_at(wake, changes.changed()).await;
        }
    }

    /// Sends `signal` (a name `kill` knows: STOP, CONT, TERM, ...) to the process.
    pub fn signal(&self, signal: &str) -> Result<(), HarnessError> {
        let Some(c) = self.child.as_ref() else {
            return Ok(());
        };
        let status = Command::new("kill")
            .args([format!("-{signal}"), c.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|source| HarnessError::Spawn {
                what: format!("kill -{signal} {}", c.id()),
                source,
            })?;
        if status.success() {
            Ok(())
        } else {
            Err(HarnessError::Spawn {
                what: format!("kill -{signal} {}", c.id()),
                source: std::io::Error::other(status.to_string()),
            })
        }
    }

    /// SIGKILL (the fault): the process dies at once, without any cleanup.
    pub fn kill9(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // `Child::kill` sends SIGKILL on Unix.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after a grace; returns how it ended. Blocking (it runs in `Drop`).
    #[allow(
        clippy::disallowed_methods,
        reason = "waiting for a real process to exit, outside any runtime: real time, not tokio time"
    )]
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let status = match child.try_wait() {
            Ok(Some(s)) => Some(s),
            _ => {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
                let step = Duration::from_millis(20);
                let mut waited = Duration::ZERO;
                loop {
                    if let Ok(Some(s)) = child.try_wait() {
                        break Some(s);
                    }
                    if waited >= STOP_GRACE {
                        eprintln!("{} did not stop within {STOP_GRACE:?}: SIGKILL", self.name);
                        let _ = child.kill();
                        break child.wait().ok();
                    }
                    std::thread::sleep(step);
                    waited += step;
                }
            }
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- {} (log {}), last {TAIL_ON_PANIC} lines but openraft's ---\n{}\n--- end of {} ---",
                self.name,
                self.spec.log_file.display(),
                self.log.medpool_tail(TAIL_ON_PANIC),
                self.name
            );
        }
    }
}
