//! `tls-load`: SIP calls over TLS at a fixed rate, the load generator of `bench/tls.sh` (Debian's
//! SIPp is built without TLS). It plays a PBX on a TLS trunk: each call is INVITE (with a small
//! G.711 offer) → final answer → ACK → `--hold-ms` → BYE → 200, every message on one TLS
//! connection to the front (`--target`), verified against `--ca` for `--server-name`, with a
//! client certificate (`--cert`/`--key`) for fronts that require one (mutual TLS).
//!
//! Connections: `--conns 0` opens a new TCP+TLS connection for every call and closes it after the
//! BYE's 200 (one full handshake per call; session resumption is off unless `--resume`), so the
//! front's CPU per call includes a handshake; `--conns N` spreads the calls over N connections
//! opened first and kept (no handshake per call). The difference of the two runs' CPU per call at
//! the same rate is the cost of a TLS handshake on the front.
//!
//! Prints one line of key=value pairs: calls, ok, failed (and why: connect, handshake, rejected
//! with a non-2xx, timeout, bye), achieved_cps (calls started / time taken to start them),
//! handshake and INVITE→200 times (p50/p99), and this process's CPU seconds. Exit code 0 when
//! every call succeeded, 1 otherwise, 2 for bad arguments.
//!
//! ```text
//!   main ─ args ─ pacing loop ─ call (one per task) ─ Conn (reader/writer tasks on one TLS stream)
//!                                                       └─ framing: SIP messages out of a byte stream
//! ```

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

/// The most messages queued for one connection's writer, and per call from its reader.
const QUEUE: usize = 1024;
/// The largest SIP message accepted from the front.
const MAX_MESSAGE: usize = 64 * 1024;

/// What the command line says.
#[derive(Debug, Clone)]
struct Args {
    target: SocketAddr,
    server_name: String,
    ca: PathBuf,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    rate: u32,
    calls: u64,
    hold: Duration,
    conns: usize,
    timeout: Duration,
    prefix: u64,
    resume: bool,
}

const USAGE: &str = "usage: tls-load --target IP:PORT --server-name NAME --ca CA.pem \
    [--cert CERT.pem --key KEY.pem] [--rate CPS=100] [--calls N=1000] [--hold-ms MS=1000] \
    [--conns N=0 (0: a new connection per call)] [--timeout-ms MS=10000] [--prefix N=5000000] [--resume]";

fn parse_args() -> Result<Args, String> {
    let mut kv: HashMap<String, String> = HashMap::new();
    let mut resume = false;
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        if a == "--resume" {
            resume = true;
            continue;
        }
        let Some(name) = a.strip_prefix("--") else {
            return Err(format!("unexpected argument {a:?}"));
        };
        let v = it.next().ok_or(format!("--{name} needs a value"))?;
        kv.insert(name.to_owned(), v);
    }
    let get = |k: &str| kv.get(k).cloned();
    let num = |k: &str, d: u64| -> Result<u64, String> {
        get(k).map_or(Ok(d), |v| {
            v.parse().map_err(|e| format!("--{k} {v:?}: {e}"))
        })
    };
    Ok(Args {
        target: get("target")
            .ok_or("--target is required")?
            .parse()
            .map_err(|e| format!("--target: {e}"))?,
        server_name: get("server-name").ok_or("--server-name is required")?,
        ca: get("ca").ok_or("--ca is required")?.into(),
        cert: get("cert").map(PathBuf::from),
        key: get("key").map(PathBuf::from),
        rate: u32::try_from(num("rate", 100)?).map_err(|e| format!("--rate: {e}"))?,
        calls: num("calls", 1000)?,
        hold: Duration::from_millis(num("hold-ms", 1000)?),
        conns: usize::try_from(num("conns", 0)?).map_err(|e| format!("--conns: {e}"))?,
        timeout: Duration::from_millis(num("timeout-ms", 10_000)?),
        prefix: num("prefix", 5_000_000)?,
        resume,
    })
}

/// The TLS client configuration: roots from `--ca`, the client certificate if given.
fn tls_config(a: &Args) -> Result<Arc<rustls::ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&a.ca).map_err(|e| format!("{}: {e}", a.ca.display()))? {
        roots
            .add(c.map_err(|e| format!("{}: {e}", a.ca.display()))?)
            .map_err(|e| format!("{}: {e}", a.ca.display()))?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let mut cfg = match (&a.cert, &a.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .map_err(|e| format!("{}: {e}", cert.display()))?
                .collect::<Result<_, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key =
                PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| e.to_string())?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("--cert and --key go together".to_owned()),
    };
    if !a.resume {
        cfg.resumption = rustls::client::Resumption::disabled();
    }
    Ok(Arc::new(cfg))
}

/// One SIP message read from the front: its start line and headers (names lower-cased).
#[derive(Debug, Clone)]
struct Msg {
    first: String,
    headers: Vec<(String, String)>,
}

impl Msg {
    fn parse(head: &str) -> Msg {
        let mut lines = head.split("\r\n");
        let first = lines.next().unwrap_or_default().to_owned();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| {
                let n = n.trim().to_ascii_lowercase();
                let n = match n.as_str() {
                    "i" => "call-id".to_owned(),
                    "m" => "contact".to_owned(),
                    "v" => "via".to_owned(),
                    "f" => "from".to_owned(),
                    "t" => "to".to_owned(),
                    _ => n,
                };
                (n, v.trim().to_owned())
            })
            .collect();
        Msg { first, headers }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The status of a response.
    fn status(&self) -> Option<u16> {
        self.first.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
    }

    fn cseq_method(&self) -> &str {
        self.header("cseq")
            .and_then(|c| c.split_whitespace().nth(1))
            .unwrap_or_default()
    }
}

/// Takes one whole message off the front of `buf` (CRLF keep-alives skipped); `Err` when a
/// message is too large or has no usable Content-Length.
fn next_message(buf: &mut Vec<u8>) -> Result<Option<Msg>, String> {
    while buf.starts_with(b"\r\n") {
        buf.drain(..2);
    }
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_MESSAGE {
            return Err("header over 64 KiB".to_owned());
        }
        return Ok(None);
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let msg = Msg::parse(&head);
    let len: usize = msg
        .header("content-length")
        .or(msg.header("l"))
        .unwrap_or("0")
        .parse()
        .map_err(|_| "bad Content-Length".to_owned())?;
    if len > MAX_MESSAGE {
        return Err("body over 64 KiB".to_owned());
    }
    if buf.len() < end + 4 + len {
        return Ok(None);
    }
    buf.drain(..end + 4 + len);
    Ok(Some(msg))
}

/// A 200 to a request from the front (a BYE or OPTIONS it sends this way).
fn ok_to(req: &Msg) -> Vec<u8> {
    let mut s = String::from("SIP/2.0 200 OK\r\n");
    for v in req.all("via") {
        s.push_str(&format!("Via: {v}\r\n"));
    }
    for h in ["from", "to", "call-id", "cseq"] {
        if let Some(v) = req.header(h) {
            s.push_str(&format!("{h}: {v}\r\n"));
        }
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s.into_bytes()
}

/// Why a connection could not be opened.
#[derive(Debug)]
enum ConnectError {
    Tcp,
    Handshake,
}

/// One TLS connection: a writer task fed by `tx`, a reader task handing each response to the
/// call whose Call-ID it carries (and answering the front's requests 200).
struct Conn {
    tx: mpsc::Sender<Vec<u8>>,
    calls: Arc<Mutex<HashMap<String, mpsc::Sender<Msg>>>>,
    local: SocketAddr,
}

impl Conn {
    async fn open(
        target: SocketAddr,
        name: ServerName<'static>,
        tls: TlsConnector,
    ) -> Result<(Conn, Duration), ConnectError> {
        let tcp = TcpStream::connect(target)
            .await
            .map_err(|_| ConnectError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map_err(|_| ConnectError::Tcp)?;
        let t0 = Instant::now();
        let stream = tls
            .connect(name, tcp)
            .await
            .map_err(|_| ConnectError::Handshake)?;
        let took = t0.elapsed();
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
        let calls: Arc<Mutex<HashMap<String, mpsc::Sender<Msg>>>> = Arc::default();
        tokio::spawn(async move {
            while let Some(b) = rx.recv().await {
                if wr.write_all(&b).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let (calls_r, tx_r) = (Arc::clone(&calls), tx.downgrade());
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(8192);
            let mut chunk = vec![0u8; 16384];
            loop {
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    let msg = match next_message(&mut buf) {
                        Ok(Some(m)) => m,
                        Ok(None) => break,
                        Err(_) => return,
                    };
                    if msg.status().is_none() {
                        if let Some(tx) = tx_r.upgrade() {
                            let _ = tx.try_send(ok_to(&msg));
                        }
                        continue;
                    }
                    let id = msg.header("call-id").unwrap_or_default().to_owned();
                    let to = calls_r
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .get(&id)
                        .cloned();
                    if let Some(to) = to {
                        let _ = to.try_send(msg);
                    }
                }
            }
            // The connection is gone: every call waiting on it learns so (its sender drops).
            calls_r
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        });
        Ok((Conn { tx, calls, local }, took))
    }
}

/// Counts and times of the run.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    connect_fail: AtomicU64,
    handshake_fail: AtomicU64,
    rejected: AtomicU64,
    timeout: AtomicU64,
    bye_fail: AtomicU64,
    handshake_us: Mutex<Vec<u64>>,
    setup_us: Mutex<Vec<u64>>,
    first_error: Mutex<Option<String>>,
}

impl Tally {
    fn note(&self, what: String) {
        let mut e = self
            .first_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if e.is_none() {
            *e = Some(what);
        }
    }
}

/// How one call ended.
enum Outcome {
    Ok,
    Rejected,
    Timeout(&'static str),
    ByeFailed,
}

/// Places call `i` on `conn`: INVITE, ACK, hold, BYE.
async fn call(conn: &Conn, a: &Args, run: &str, i: u64, tally: &Tally) -> Outcome {
    let number = a.prefix + i;
    let call_id = format!("tl-{run}-{i}@{}", conn.local.ip());
    let (tx, mut rx) = mpsc::channel(QUEUE);
    conn.calls
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(call_id.clone(), tx);
    let out = dialog(conn, a, run, i, number, &call_id, &mut rx, tally).await;
    conn.calls
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(&call_id);
    out
}

#[allow(clippy::too_many_arguments)]
async fn dialog(
    conn: &Conn,
    a: &Args,
    run: &str,
    i: u64,
    number: u64,
    call_id: &str,
    rx: &mut mpsc::Receiver<Msg>,
    tally: &Tally,
) -> Outcome {
    let local = conn.local;
    let host = a.target;
    let sdp = format!(
        "v=0\r\no=pbx {i} 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio 6000 RTP/AVP 8\r\na=rtpmap:8 PCMA/8000\r\na=ptime:20\r\n",
        ip = local.ip()
    );
    let from = format!("<sip:pbx@{}>;tag=f{i}", local.ip());
    let invite = format!(
        "INVITE sip:{number}@{host};transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS {local};branch=z9hG4bK-{run}-{i};rport\r\n\
         Max-Forwards: 70\r\nFrom: {from}\r\nTo: <sip:{number}@{host}>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:pbx@{local};transport=tls>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    let t0 = Instant::now();
    if conn.tx.send(invite.into_bytes()).await.is_err() {
        return Outcome::Timeout("connection closed");
    }
    let deadline = tokio::time::Instant::now() + a.timeout;
    let answer = loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Outcome::Timeout("no final answer to INVITE"),
            Ok(None) => return Outcome::Timeout("connection closed before the answer"),
            Ok(Some(m)) if m.cseq_method() == "INVITE" && m.status().is_some_and(|s| s >= 200) => {
                break m;
            }
            Ok(Some(_)) => {}
        }
    };
    let status = answer.status().unwrap_or(0);
    let to = answer.header("to").unwrap_or_default().to_owned();
    if status >= 300 {
        // A non-2xx is acknowledged in its transaction: the INVITE's branch and Request-URI.
        let ack = format!(
            "ACK sip:{number}@{host};transport=tls SIP/2.0\r\n\
             Via: SIP/2.0/TLS {local};branch=z9hG4bK-{run}-{i};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
             CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = conn.tx.send(ack.into_bytes()).await;
        tally.note(format!("INVITE answered {}", answer.first));
        return Outcome::Rejected;
    }
    tally
        .setup_us
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
    // In-dialog requests: to the 200's Contact, through its Record-Route reversed.
    let target = answer
        .header("contact")
        .and_then(|c| c.split('<').nth(1))
        .and_then(|c| c.split('>').next())
        .map_or_else(
            || format!("sip:{number}@{host};transport=tls"),
            str::to_owned,
        );
    let mut routes: Vec<&str> = answer.all("record-route");
    routes.reverse();
    let route: String = routes.iter().map(|r| format!("Route: {r}\r\n")).collect();
    let in_dialog = |method: &str, cseq: u32, suffix: &str| {
        format!(
            "{method} {target} SIP/2.0\r\n\
             Via: SIP/2.0/TLS {local};branch=z9hG4bK-{run}-{i}-{suffix};rport\r\n\
             Max-Forwards: 70\r\n{route}From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\n\
             CSeq: {cseq} {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    if conn
        .tx
        .send(in_dialog("ACK", 1, "ack").into_bytes())
        .await
        .is_err()
    {
        return Outcome::ByeFailed;
    }
    tokio::time::sleep(a.hold).await;
    if conn
        .tx
        .send(in_dialog("BYE", 2, "bye").into_bytes())
        .await
        .is_err()
    {
        return Outcome::ByeFailed;
    }
    let deadline = tokio::time::Instant::now() + a.timeout;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) | Ok(None) => {
                tally.note("no answer to BYE".to_owned());
                return Outcome::ByeFailed;
            }
            Ok(Some(m)) if m.cseq_method() == "BYE" && m.status().is_some_and(|s| s >= 200) => {
                return if m.status() == Some(200) {
                    Outcome::Ok
                } else {
                    tally.note(format!("BYE answered {}", m.first));
                    Outcome::ByeFailed
                };
            }
            Ok(Some(_)) => {}
        }
    }
}

/// This process's CPU seconds (user + system), from /proc/self/stat.
fn own_cpu_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return -1.0;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return -1.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // after ')': field 3 is f[0]; utime is field 14, stime 15
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn pct(v: &mut [u64], q: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let rank = ((q / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

#[tokio::main]
async fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tls-load: {e}\n{USAGE}");
            std::process::exit(2);
        }
    };
    let cfg = match tls_config(&a) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tls-load: {e}");
            std::process::exit(2);
        }
    };
    let Ok(name) = ServerName::try_from(a.server_name.clone()) else {
        eprintln!(
            "tls-load: --server-name {:?} is no DNS name or IP",
            a.server_name
        );
        std::process::exit(2);
    };
    let tls = TlsConnector::from(cfg);
    let a = Arc::new(a);
    let tally = Arc::new(Tally::default());
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let run = format!("{:x}", std::process::id() ^ nanos);
    // Kept connections (--conns N), opened before the clock starts.
    let mut pool: Vec<Arc<Conn>> = Vec::new();
    for _ in 0..a.conns {
        match Conn::open(a.target, name.clone(), tls.clone()).await {
            Ok((c, _)) => pool.push(Arc::new(c)),
            Err(e) => {
                eprintln!(
                    "tls-load: cannot open a kept connection to {}: {e:?}",
                    a.target
                );
                std::process::exit(1);
            }
        }
    }
    let cpu0 = own_cpu_s();
    let t0 = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(a.rate.max(1))));
    let mut tasks = tokio::task::JoinSet::new();
    let mut started_all = t0;
    for i in 0..a.calls {
        tick.tick().await;
        if i + 1 == a.calls {
            started_all = Instant::now();
        }
        let (a, tally, run, tls, name) = (
            Arc::clone(&a),
            Arc::clone(&tally),
            run.clone(),
            tls.clone(),
            name.clone(),
        );
        let kept = (!pool.is_empty()).then(|| Arc::clone(&pool[(i as usize) % pool.len()]));
        tasks.spawn(async move {
            let conn = match kept {
                Some(c) => c,
                None => match Conn::open(a.target, name, tls).await {
                    Ok((c, took)) => {
                        tally
                            .handshake_us
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                        Arc::new(c)
                    }
                    Err(ConnectError::Tcp) => {
                        tally.connect_fail.fetch_add(1, Ordering::Relaxed);
                        tally.note("TCP connect failed".to_owned());
                        return;
                    }
                    Err(ConnectError::Handshake) => {
                        tally.handshake_fail.fetch_add(1, Ordering::Relaxed);
                        tally.note("TLS handshake failed".to_owned());
                        return;
                    }
                },
            };
            match call(&conn, &a, &run, i, &tally).await {
                Outcome::Ok => tally.ok.fetch_add(1, Ordering::Relaxed),
                Outcome::Rejected => tally.rejected.fetch_add(1, Ordering::Relaxed),
                Outcome::Timeout(why) => {
                    tally.note(why.to_owned());
                    tally.timeout.fetch_add(1, Ordering::Relaxed)
                }
                Outcome::ByeFailed => tally.bye_fail.fetch_add(1, Ordering::Relaxed),
            };
        });
        // Reap finished calls as we go (bounded memory over long runs).
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let wall = t0.elapsed().as_secs_f64();
    let start_span = started_all.duration_since(t0).as_secs_f64();
    let cpu = own_cpu_s() - cpu0;
    let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let ok = g(&tally.ok);
    let failed = a.calls - ok;
    let mut hs = std::mem::take(
        &mut *tally
            .handshake_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let mut su = std::mem::take(
        &mut *tally
            .setup_us
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    let achieved = if start_span > 0.0 && a.calls > 1 {
        (a.calls - 1) as f64 / start_span
    } else {
        0.0
    };
    let first_error = tally
        .first_error
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
        .unwrap_or_default()
        .replace(' ', "_");
    println!(
        "calls={} ok={ok} failed={failed} connect_fail={} handshake_fail={} rejected={} timeout={} bye_fail={} \
         conns={} handshakes={} achieved_cps={achieved:.1} wall_s={wall:.2} hs_p50_us={} hs_p99_us={} \
         setup_p50_us={} setup_p99_us={} gen_cpu_s={cpu:.2} first_error={first_error}",
        a.calls,
        g(&tally.connect_fail),
        g(&tally.handshake_fail),
        g(&tally.rejected),
        g(&tally.timeout),
        g(&tally.bye_fail),
        a.conns,
        hs.len() + a.conns,
        pct(&mut hs, 50.0),
        pct(&mut hs, 99.0),
        pct(&mut su, 50.0),
        pct(&mut su, 99.0),
    );
    std::process::exit(i32::from(failed > 0));
}
