//! One `medpool serve` process of a pool on loopback: started with its flags ([`NodeSpec`]) in the
//! environment of [`crate::env`], its stderr captured line by line (kept in memory for waits and
//! written to a log file), stopped by PID: SIGKILL for a fault, SIGTERM (then SIGKILL after a grace)
//! when its guard is dropped, also while a test panics. A panicking test prints the end of every
//! node's log.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
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

/// A node's captured stderr. Waiters are woken on each new line: async ones through a watch,
/// blocking ones (plain `#[test]`s) through a condition variable.
#[derive(Debug)]
pub struct Log {
    lines: Mutex<Vec<String>>,
    count: watch::Sender<usize>,
    grew: Condvar,
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

    /// Everything so far, one line each.
    pub fn text(&self) -> String {
        let lines = self.lock();
        let mut out = lines.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        out
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

/// A running (or killed) `medpool` child process: any subcommand and flags, in the environment
/// of [`crate::env`] plus the caller's own variables, stderr captured into a [`Log`] (and appended
/// to a file when one is given). Dropping it stops the process (SIGTERM, SIGKILL after its grace)
/// and, while a test panics, prints the end of its log.
#[derive(Debug)]
pub struct MedpoolProcess {
    name: String,
    child: Option<Child>,
    log: Arc<Log>,
    log_file: Option<PathBuf>,
    reader: Option<std::thread::JoinHandle<()>>,
    grace: Duration,
    tail_on_panic: usize,
}

impl MedpoolProcess {
    /// Starts `bin ARGS` with `envs` on top of the environment rule. `grace`: how long SIGTERM
    /// is given before SIGKILL when stopped.
    pub fn spawn(
        bin: &Path,
        name: &str,
        args: &[String],
        envs: &[(String, String)],
        log_file: Option<PathBuf>,
        grace: Duration,
    ) -> Result<MedpoolProcess, HarnessError> {
        let mut child = medpool_command(bin)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| HarnessError::Spawn {
                what: name.to_owned(),
                source,
            })?;
        let (count, _) = watch::channel(0);
        let log = Arc::new(Log {
            lines: Mutex::new(Vec::new()),
            count,
            grew: Condvar::new(),
        });
        // Appended: a node restarted several times in a soak keeps every run's log in one file.
        let mut file = log_file.as_ref().and_then(|f| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
                .ok()
        });
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
                    log.grew.notify_all();
                    log.count.send_replace(n);
                }
                // The end of the stream wakes blocking waiters too (they look for an exit).
                log.grew.notify_all();
            })
        });
        Ok(MedpoolProcess {
            name: name.to_owned(),
            child: Some(child),
            log,
            log_file,
            reader,
            grace,
            tail_on_panic: TAIL_ON_PANIC,
        })
    }

    /// Its name in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Lines of its log printed when a test panics while it is dropped (default 60).
    pub fn with_tail_on_panic(mut self, lines: usize) -> Self {
        self.tail_on_panic = lines;
        self
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

    fn exited_error(&mut self) -> Option<HarnessError> {
        self.exited().map(|status| HarnessError::Exited {
            node: self.name.clone(),
            status: status.to_string(),
            tail: self.log.tail(30),
        })
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
            if let Some(e) = self.exited_error() {
                return Err(e);
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

    /// [`MedpoolProcess::wait_for_line`] for a test without a runtime: blocks the thread.
    #[allow(
        clippy::disallowed_types,
        clippy::disallowed_methods,
        reason = "a blocking wait on a real process outside any runtime: real time, not tokio time"
    )]
    pub fn wait_for_line_blocking(
        &mut self,
        from: usize,
        pattern: &str,
        within: Duration,
    ) -> Result<String, HarnessError> {
        let deadline = std::time::Instant::now() + within;
        loop {
            {
                let lines = self.log.lock();
                if let Some(l) = lines.iter().skip(from).find(|l| l.contains(pattern)) {
                    return Ok(l.clone());
                }
                let now = std::time::Instant::now();
                if now < deadline {
                    // Woken by a new line or the end of the stream; at most 200 ms to notice an exit.
                    let wait = (deadline - now).min(Duration::from_millis(200));
                    let _ = self
                        .log
                        .grew
                        .wait_timeout(lines, wait)
                        .unwrap_or_else(PoisonError::into_inner);
                }
            }
            if let Some(l) = self.log.matching(from, pattern).into_iter().next() {
                return Ok(l);
            }
            if let Some(e) = self.exited_error() {
                return Err(e);
            }
            if std::time::Instant::now() >= deadline {
                return Err(HarnessError::Timeout {
                    what: format!("{:?} in the log of {}", pattern, self.name),
                    after: within,
                });
            }
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

    /// SIGTERM, then SIGKILL after the grace; returns how it ended. Blocking (it runs in `Drop`).
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
                    if waited >= self.grace {
                        eprintln!(
                            "{} did not stop within {:?}: SIGKILL",
                            self.name, self.grace
                        );
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

impl Drop for MedpoolProcess {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "--- {} (log {}), last {} lines but openraft's ---\n{}\n--- end of {} ---",
                self.name,
                self.log_file
                    .as_ref()
                    .map_or_else(|| "in memory".to_owned(), |f| f.display().to_string()),
                self.tail_on_panic,
                self.log.medpool_tail(self.tail_on_panic),
                self.name
            );
        }
    }
}

/// A running (or killed) pool node: a [`MedpoolProcess`] of `medpool serve` with the flags of its
/// [`NodeSpec`]. Dropping it stops the process.
#[derive(Debug)]
pub struct NodeProcess {
    /// Its flags.
    pub spec: NodeSpec,
    process: MedpoolProcess,
}

impl NodeProcess {
    /// Starts `bin serve ...` for `spec`.
    pub fn spawn(bin: &Path, spec: NodeSpec) -> Result<NodeProcess, HarnessError> {
        let name = format!("medpool node {} ({})", spec.id, spec.sip);
        let process = MedpoolProcess::spawn(
            bin,
            &name,
            &spec.args(),
            &[],
            Some(spec.log_file.clone()),
            STOP_GRACE,
        )?;
        Ok(NodeProcess { spec, process })
    }

    /// The process id (0 once reaped).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its captured stderr.
    pub fn log(&self) -> &Log {
        self.process.log()
    }

    /// How it ended, if it has.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.process.exited()
    }

    /// See [`MedpoolProcess::wait_for_line`].
    pub async fn wait_for_line(
        &mut self,
        from: usize,
        pattern: &str,
        within: Duration,
    ) -> Result<String, HarnessError> {
        self.process.wait_for_line(from, pattern, within).await
    }

    /// See [`MedpoolProcess::signal`].
    pub fn signal(&self, signal: &str) -> Result<(), HarnessError> {
        self.process.signal(signal)
    }

    /// SIGKILL (the fault).
    pub fn kill9(&mut self) {
        self.process.kill9();
    }

    /// SIGTERM, then SIGKILL after a grace; returns how it ended.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.process.stop()
    }
}
