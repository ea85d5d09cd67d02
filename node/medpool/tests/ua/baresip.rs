//! One baresip (Debian's `baresip`, 1.0) driven over its `ctrl_tcp` module: the test writes a
//! config folder (`-f DIR`: `config`, `accounts`, `contacts`), starts the process, connects to its
//! control port and sends JSON commands in netstrings (`{"command":"dial","params":"sip:…"}`);
//! baresip answers each with a response carrying the same token and reports call events
//! (`CALL_ESTABLISHED`, `CALL_DTMF_START`, `TRANSFER`, `CALL_CLOSED`, …), which are kept in order.
//!
//! Audio: `ausine` (a 440 Hz tone; 48 kHz stereo, resampled by baresip to the codec) as the
//! source, `aubridge` as the player (a sink nothing reads), so no sound card is needed. Codecs:
//! G.711 (`g711`); DTMF as RFC 4733 telephone-events.
//!
//! [`BaresipSpec::extra_config`] and [`BaresipSpec::account_params`] let a later test add modules
//! and account settings (e.g. `module srtp.so` and `;mediaenc=srtp-mand` for SRTP, or
//! `sip_transports`/TLS certificates for SIP over TLS) without touching this file.

use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::ChildGuard;

/// How long a command may take to be answered.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The most events kept per process (a call yields a few dozen, RTCP reports included).
const MAX_EVENTS: usize = 10_000;

/// Fails the test with a clear message when baresip is not installed.
pub fn require() {
    let ok = Command::new("baresip")
        .arg("-h")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout).contains("baresip")
                || String::from_utf8_lossy(&o.stderr).contains("baresip")
        })
        .unwrap_or(false);
    assert!(
        ok,
        "baresip is not installed (no `baresip` in PATH). The real user agent tests need it: \
         install Debian's baresip (`apt-get install -y baresip`), as scripts/test.sh does, and \
         run them again."
    );
}

/// What a baresip is: its SIP address, its account and its RTP ports.
#[derive(Clone, Debug)]
pub struct BaresipSpec {
    /// Name in messages and file names.
    pub name: String,
    /// The IP it listens on for SIP (port 5060) and its control port (4444).
    pub ip: String,
    /// The account's user part: calls to `sip:<user>@…` reach it.
    pub user: String,
    /// RTP port range (baresip binds the wildcard address: keep ranges of parallel tests apart).
    pub rtp_ports: (u16, u16),
    /// Parameters appended to the account line (after `;answermode=auto;regint=0`).
    pub account_params: String,
    /// Lines appended to `config`.
    pub extra_config: String,
}

impl BaresipSpec {
    pub fn new(name: &str, ip: &str, user: &str, rtp_ports: (u16, u16)) -> Self {
        Self {
            name: name.to_owned(),
            ip: ip.to_owned(),
            user: user.to_owned(),
            rtp_ports,
            account_params: String::new(),
            extra_config: String::new(),
        }
    }

    /// The `config` file.
    fn config(&self) -> String {
        let Self { ip, name, .. } = self;
        let (lo, hi) = self.rtp_ports;
        format!(
            "# written by medpool's tests/ua/baresip.rs\n\
             poll_method epoll\n\
             sip_listen {ip}:5060\n\
             sip_trans_def udp\n\
             net_interface {ip}\n\
             ctrl_tcp_listen {ip}:4444\n\
             module_path /usr/lib/baresip/modules\n\
             module g711.so\n\
             module ausine.so\n\
             module aubridge.so\n\
             module_app account.so\n\
             module_app menu.so\n\
             module_app ctrl_tcp.so\n\
             audio_player aubridge,play-{name}\n\
             audio_source ausine,440\n\
             audio_alert aubridge,alert-{name}\n\
             ausrc_srate 48000\n\
             auplay_srate 48000\n\
             ausrc_channels 2\n\
             auplay_channels 1\n\
             rtp_ports {lo}-{hi}\n\
             rtp_stats yes\n\
             {}\n",
            self.extra_config
        )
    }

    /// The `accounts` file: auto-answer, no registration.
    fn accounts(&self) -> String {
        format!(
            "<sip:{}@{}>;answermode=auto;regint=0{}\n",
            self.user, self.ip, self.account_params
        )
    }
}

/// What the control connection has received.
#[derive(Default)]
struct Inbox {
    events: Vec<Value>,
    responses: Vec<Value>,
    closed: bool,
}

/// A running baresip (stopped by PID on drop: SIGTERM, SIGKILL after 2 s).
pub struct Baresip {
    pub spec: BaresipSpec,
    guard: ChildGuard,
    ctrl: Mutex<TcpStream>,
    inbox: Arc<(Mutex<Inbox>, Condvar)>,
    reader: Option<JoinHandle<()>>,
    log: PathBuf,
    next_token: Mutex<u64>,
}

impl Baresip {
    /// Writes the config folder under `dir`, starts baresip and connects to its control port.
    pub fn start(dir: &Path, spec: BaresipSpec) -> Self {
        require();
        let home = dir.join(format!("baresip-{}", spec.name));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(home.join("config"), spec.config()).unwrap();
        std::fs::write(home.join("accounts"), spec.accounts()).unwrap();
        std::fs::write(home.join("contacts"), "").unwrap();
        let log = dir.join(format!("baresip-{}.log", spec.name));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new("baresip")
            .arg("-f")
            .arg(&home)
            .arg("-s") // SIP trace in the log, for failure messages
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start baresip ({e})"));
        let mut guard = ChildGuard::new(
            child,
            &format!("baresip {}", spec.name),
            "TERM",
            Duration::from_secs(2),
        );
        let addr = format!("{}:4444", spec.ip);
        let start = Instant::now();
        let stream = loop {
            if let Ok(s) = TcpStream::connect(&addr) {
                break s;
            }
            if let Some(status) = guard.try_wait() {
                panic!(
                    "baresip {} exited ({status}) before opening its control port\n{}",
                    spec.name,
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "baresip {} did not open its control port {addr} within 10 s\n{}",
                spec.name,
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let inbox = Arc::new((Mutex::new(Inbox::default()), Condvar::new()));
        let reader = {
            let stream = stream.try_clone().unwrap();
            let inbox = Arc::clone(&inbox);
            std::thread::spawn(move || read_netstrings(stream, &inbox))
        };
        Self {
            spec,
            guard,
            ctrl: Mutex::new(stream),
            inbox,
            reader: Some(reader),
            log,
            next_token: Mutex::new(0),
        }
    }

    pub fn pid(&self) -> u32 {
        self.guard.pid()
    }

    /// `sip:<user>@<ip>:5060`.
    pub fn uri(&self) -> String {
        format!("sip:{}@{}:5060", self.spec.user, self.spec.ip)
    }

    /// Sends a command and waits for its response; `Err` with baresip's answer when it failed.
    pub fn command(&self, command: &str, params: &str) -> Result<String, String> {
        let token = {
            let mut t = self.next_token.lock().unwrap();
            *t += 1;
            t.to_string()
        };
        let body = json!({"command": command, "params": params, "token": token}).to_string();
        let frame = format!("{}:{body},", body.len());
        self.ctrl
            .lock()
            .unwrap()
            .write_all(frame.as_bytes())
            .map_err(|e| format!("baresip {}: cannot send {command}: {e}", self.spec.name))?;
        let (lock, cv) = &*self.inbox;
        let deadline = Instant::now() + COMMAND_TIMEOUT;
        let mut inbox = lock.lock().unwrap();
        loop {
            if let Some(r) = inbox
                .responses
                .iter()
                .find(|r| r["token"].as_str() == Some(token.as_str()))
            {
                let data = r["data"].as_str().unwrap_or_default().to_owned();
                return if r["ok"].as_bool() == Some(true) {
                    Ok(data)
                } else {
                    Err(format!(
                        "baresip {}: {command} {params:?} failed: {data}",
                        self.spec.name
                    ))
                };
            }
            let now = Instant::now();
            if inbox.closed || now >= deadline {
                return Err(format!(
                    "baresip {}: no answer to {command} {params:?} within {COMMAND_TIMEOUT:?}",
                    self.spec.name
                ));
            }
            inbox = cv.wait_timeout(inbox, deadline - now).unwrap().0;
        }
    }

    /// Runs a command that must succeed.
    pub fn run(&self, command: &str, params: &str) -> String {
        self.command(command, params)
            .unwrap_or_else(|e| panic!("{e}\n{}", self.log_tail(4000)))
    }

    pub fn dial(&self, uri: &str) {
        self.run("dial", uri);
    }

    /// Hangs up the current call.
    pub fn hangup(&self) {
        self.run("hangup", "");
    }

    /// Puts the current call on hold (re-INVITE with `a=sendonly`).
    pub fn hold(&self) {
        self.run("hold", "");
    }

    pub fn resume(&self) {
        self.run("resume", "");
    }

    /// Blind transfer of the current call to `uri` (REFER).
    pub fn transfer(&self, uri: &str) {
        self.run("transfer", uri);
    }

    /// Sends one DTMF digit on the current call (RFC 4733 telephone-event).
    pub fn send_digit(&self, digit: char) {
        self.run("sndcode", &digit.to_string());
    }

    /// Events so far, in order.
    pub fn events(&self) -> Vec<Value> {
        self.inbox.0.lock().unwrap().events.clone()
    }

    /// Event types so far, RTCP reports and SDP notices left out.
    pub fn event_types(&self) -> Vec<String> {
        self.events()
            .iter()
            .filter_map(|e| e["type"].as_str().map(str::to_owned))
            .filter(|t| {
                !matches!(
                    t.as_str(),
                    "CALL_RTCP" | "CALL_LOCAL_SDP" | "CALL_REMOTE_SDP"
                )
            })
            .collect()
    }

    /// Events of `kind` so far.
    pub fn events_of(&self, kind: &str) -> Vec<Value> {
        self.events()
            .into_iter()
            .filter(|e| e["type"].as_str() == Some(kind))
            .collect()
    }

    /// Waits until `count` events of `kind` have come; returns the last, or panics after
    /// `timeout` with the events and the log.
    pub fn expect_event(&self, kind: &str, count: usize, timeout: Duration) -> Value {
        let (lock, cv) = &*self.inbox;
        let deadline = Instant::now() + timeout;
        let mut inbox = lock.lock().unwrap();
        loop {
            let seen: Vec<&Value> = inbox
                .events
                .iter()
                .filter(|e| e["type"].as_str() == Some(kind))
                .collect();
            if seen.len() >= count {
                return seen[count - 1].clone();
            }
            let now = Instant::now();
            if now >= deadline {
                let types: Vec<String> = inbox
                    .events
                    .iter()
                    .filter_map(|e| e["type"].as_str().map(str::to_owned))
                    .collect();
                drop(inbox);
                panic!(
                    "baresip {}: {count} × {kind} expected within {timeout:?}; events: {types:?}\n{}",
                    self.spec.name,
                    self.log_tail(6000)
                );
            }
            inbox = cv.wait_timeout(inbox, deadline - now).unwrap().0;
        }
    }

    /// baresip's whole output so far (its SIP trace included: with TLS, the only place the
    /// signalling can be read).
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The end of baresip's own output (SIP trace included).
    pub fn log_tail(&self, chars: usize) -> String {
        let text = std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).replace('\r', "\n"))
            .unwrap_or_default();
        let text: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("[0:"))
            .collect::<Vec<_>>()
            .join("\n");
        let skip = text.chars().count().saturating_sub(chars);
        format!(
            "--- baresip {} log (end; {}) ---\n{}",
            self.spec.name,
            self.log.display(),
            text.chars().skip(skip).collect::<String>()
        )
    }

    /// Stops the process now.
    pub fn stop(&mut self) {
        self.guard.stop();
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        self.guard.stop();
        if let Ok(s) = self.ctrl.lock() {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(8000));
        }
    }
}

/// Reads netstrings (`<len>:<json>,`) until the connection closes, filing responses and events.
fn read_netstrings(stream: TcpStream, inbox: &(Mutex<Inbox>, Condvar)) {
    let mut r = BufReader::new(stream);
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let n = match r.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(colon) = buf.iter().position(|&c| c == b':') {
            let Some(len) = std::str::from_utf8(&buf[..colon])
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
            else {
                buf.clear();
                break;
            };
            if buf.len() < colon + 1 + len + 1 {
                break;
            }
            let value: Option<Value> =
                serde_json::from_slice(&buf[colon + 1..colon + 1 + len]).ok();
            buf.drain(..colon + 1 + len + 1);
            let Some(value) = value else { continue };
            let (lock, cv) = inbox;
            let mut inbox = lock.lock().unwrap();
            if value["response"].as_bool() == Some(true) {
                inbox.responses.push(value);
            } else if inbox.events.len() < MAX_EVENTS {
                inbox.events.push(value);
            }
            cv.notify_all();
        }
    }
    let (lock, cv) = inbox;
    lock.lock().unwrap().closed = true;
    cv.notify_all();
}
