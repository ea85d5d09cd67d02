//! Per-trunk ports (`local_port`, M:N trunking with one port per trunk) through running `medpool
//! serve` processes: SIPp is the caller (trunk `pbx`); the gateway `gw1` is a raw UDP socket of
//! the test's, so that it sees each datagram's source address (SIPp does not show it).
//!
//! - a call to gw1 (local_port 5071) leaves from 127.0.n.1:5071 with that address in Via and
//!   Contact; the ACK and the OPTIONS probes too; the gateway's BYE, sent to the Contact it got,
//!   reaches the call through that port and is answered from it;
//! - an OPTIONS from gw1 to its port is gw1's (200); the same to the main port is a stranger's
//!   (403: the standard pool refuses unknown sources);
//! - a trunk port that is the main listener's is refused at start, naming `trunk[1].local_port`;
//! - in a 2-node pool, the call's node is SIGKILLed: the node that takes the call over ends it
//!   towards gw1 from its own 5071, with its own address in Via.
//!
//! Test number (loopback block 127.0.n.x): 160. The node is .1 (and .2 in the pool), gw1 .21.
//! The tests share the addresses: they run one at a time.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs
)]

mod admin_common;
mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{MedpoolNode, PoolSpec, TestDir, caller, gw_ip, node_ip, wait_until};

const N: u8 = 160;
const GW_PORT: u16 = 5071;

/// One test at a time: they share the loopback block.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The standard pool with only gw1 in the route, gw1 reached on the nodes' port 5071.
fn config() -> String {
    let mut spec = PoolSpec::new(N);
    spec.priority = [Some(1), None];
    spec.toml().replace(
        "name = \"gw1\"\n",
        &format!("name = \"gw1\"\nlocal_port = {GW_PORT}\n"),
    )
}

/// A datagram the gateway received.
#[derive(Clone, Debug)]
struct Got {
    from: SocketAddr,
    text: String,
}

impl Got {
    fn start_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }
    fn is_request(&self, method: &str) -> bool {
        self.start_line().starts_with(&format!("{method} "))
    }
    fn is_response(&self, status: u16, cseq_method: &str) -> bool {
        self.start_line().starts_with(&format!("SIP/2.0 {status} "))
            && self
                .header("CSeq")
                .is_some_and(|c| c.ends_with(&format!(" {cseq_method}")))
    }
    fn header(&self, name: &str) -> Option<String> {
        header(&self.text, name)
    }
}

fn header(text: &str, name: &str) -> Option<String> {
    for line in text.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':')
            && n.trim().eq_ignore_ascii_case(name)
        {
            return Some(v.trim().to_owned());
        }
    }
    None
}

/// Every header line named `name` (for Via, which a response copies).
fn header_lines(text: &str, name: &str) -> Vec<String> {
    text.split("\r\n")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name))
        })
        .map(ToOwned::to_owned)
        .collect()
}

/// `ip:port` inside a `<sip:...>` value.
fn uri_hostport(value: &str) -> SocketAddr {
    let inner = value
        .split_once("sip:")
        .map(|(_, r)| r)
        .unwrap_or(value)
        .split(['>', ';'])
        .next()
        .unwrap();
    let hostport = inner.rsplit_once('@').map_or(inner, |(_, h)| h);
    hostport
        .parse()
        .unwrap_or_else(|_| format!("{hostport}:5060").parse().unwrap())
}

/// The gateway: a raw UDP socket that answers OPTIONS 200, answers an INVITE 100 then 200 (SDP,
/// Contact = itself), answers a BYE 200, and keeps every datagram with its source.
struct RawGateway {
    sock: UdpSocket,
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Got>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

fn response(req: &str, status: &str, tag: bool, extra: &str, body: &str) -> String {
    let mut out = format!("SIP/2.0 {status}\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        for line in header_lines(req, name) {
            if name == "To" && tag && !line.contains("tag=") {
                out.push_str(&format!("{line};tag=gw-{}\r\n", std::process::id()));
            } else {
                out.push_str(&line);
                out.push_str("\r\n");
            }
        }
    }
    out.push_str(extra);
    if body.is_empty() {
        out.push_str("Content-Length: 0\r\n\r\n");
    } else {
        out.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ));
    }
    out
}

impl RawGateway {
    fn bind(addr: &str) -> RawGateway {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("cannot bind {addr}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr: SocketAddr = addr.parse().unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let sock = sock.try_clone().unwrap();
            let got = Arc::clone(&got);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((len, from)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(&buf[..len]).into_owned();
                    let msg = Got { from, text };
                    let contact = format!("Contact: <sip:gw@{addr}>\r\n");
                    let sdp = format!(
                        "v=0\r\no=gw 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
                         m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
                        ip = addr.ip()
                    );
                    let answers: Vec<String> = if msg.is_request("OPTIONS") {
                        vec![response(&msg.text, "200 OK", true, "", "")]
                    } else if msg.is_request("INVITE") {
                        vec![
                            response(&msg.text, "100 Trying", false, "", ""),
                            response(&msg.text, "200 OK", true, &contact, &sdp),
                        ]
                    } else if msg.is_request("BYE") {
                        vec![response(&msg.text, "200 OK", false, "", "")]
                    } else {
                        Vec::new()
                    };
                    // Answers go where the request came from (rport).
                    for a in answers {
                        let _ = sock.send_to(a.as_bytes(), from);
                    }
                    got.lock().unwrap().push(msg);
                }
            })
        };
        RawGateway {
            sock,
            addr,
            got,
            stop,
            thread: Some(thread),
        }
    }

    fn all(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until a message matching `f` arrived; returns the first.
    fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&Got) -> bool) -> Got {
        let mut found = None;
        let ok = wait_until(timeout, || {
            found = self.all().into_iter().find(|g| f(g));
            found.is_some()
        });
        assert!(
            ok,
            "the gateway got no {what} within {timeout:?}; it got:\n{}",
            self.all()
                .iter()
                .map(|g| format!("from {}: {}", g.from, g.start_line()))
                .collect::<Vec<_>>()
                .join("\n")
        );
        found.unwrap()
    }

    fn send(&self, to: SocketAddr, text: &str) {
        self.sock.send_to(text.as_bytes(), to).unwrap();
    }

    /// An OPTIONS outside any dialog to `to`, with Call-ID `call_id`.
    fn options(&self, to: SocketAddr, call_id: &str) {
        let text = format!(
            "OPTIONS sip:{to} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-{call_id};rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:gw@{me}>;tag=o-{call_id}\r\nTo: <sip:{to}>\r\n\
             Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n",
            me = self.addr
        );
        self.send(to, &text);
    }

    /// The BYE of the dialog its 200 to `invite` made, to the Contact the INVITE carried.
    fn bye(&self, invite: &Got, tag: &str) -> SocketAddr {
        let target = uri_hostport(&invite.header("Contact").unwrap());
        let to = invite.header("From").unwrap();
        let from = format!("{};tag={tag}", invite.header("To").unwrap());
        let text = format!(
            "BYE sip:{target} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-bye-{tag};rport\r\n\
             Max-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: 2 BYE\r\n\
             Content-Length: 0\r\n\r\n",
            me = self.addr,
            cid = invite.header("Call-ID").unwrap(),
        );
        self.send(target, &text);
        target
    }
}

impl Drop for RawGateway {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn gw_tag() -> String {
    format!("gw-{}", std::process::id())
}

/// Checks that `got` left from `from` and names `from` in its top Via (and Contact, if asked).
fn assert_from_port(got: &Got, from: SocketAddr, contact: bool) {
    assert_eq!(
        got.from,
        from,
        "{} left from {}",
        got.start_line(),
        got.from
    );
    let via = got.header("Via").unwrap();
    assert!(
        via.contains(&format!("SIP/2.0/UDP {from};")),
        "Via of {}: {via}",
        got.start_line()
    );
    if contact {
        let c = got.header("Contact").unwrap();
        assert_eq!(
            uri_hostport(&c),
            from,
            "Contact of {}: {c}",
            got.start_line()
        );
    }
}

#[test]
fn a_call_to_a_trunk_with_its_own_port_is_sent_from_it_and_reached_through_it() {
    let _serial = serial();
    common::require_sipp();
    let dir = TestDir::new("trunk-local-call");
    let gw = RawGateway::bind(&format!("{}:5060", gw_ip(N, 1)));
    let node = MedpoolNode::start(&dir, N, &config());
    let trunk_port: SocketAddr = format!("{}:{GW_PORT}", node_ip(N)).parse().unwrap();
    let main_port: SocketAddr = node.addr().parse().unwrap();

    // The probes of gw1 leave from its port.
    let probe = gw.wait_for("OPTIONS probe", Duration::from_secs(10), |g| {
        g.is_request("OPTIONS")
    });
    assert_from_port(&probe, trunk_port, false);

    let mut pbx = caller("caller", N, 5070, "uac_call_remote_bye.xml").spawn(&dir);
    let invite = gw.wait_for("INVITE", Duration::from_secs(15), |g| {
        g.is_request("INVITE")
    });
    assert_from_port(&invite, trunk_port, true);
    let ack = gw.wait_for("ACK", Duration::from_secs(10), |g| g.is_request("ACK"));
    assert_from_port(&ack, trunk_port, false);

    // The gateway hangs up, to the Contact it was given: the call's port answers.
    let sent_to = gw.bye(&invite, &gw_tag());
    assert_eq!(sent_to, trunk_port);
    let ok = gw.wait_for("200 to its BYE", Duration::from_secs(10), |g| {
        g.is_response(200, "BYE")
    });
    assert_eq!(
        ok.from, trunk_port,
        "the BYE is answered from the trunk's port"
    );
    pbx.expect_success(Duration::from_secs(30));

    // A new request from gw1 to its port is gw1's; to the main port, a stranger's (403).
    gw.options(trunk_port, "opt-on-port");
    let on_port = gw.wait_for("answer on its port", Duration::from_secs(5), |g| {
        g.header("Call-ID").as_deref() == Some("opt-on-port") && g.is_response(200, "OPTIONS")
    });
    assert_eq!(on_port.from, trunk_port);
    gw.options(main_port, "opt-on-main");
    let on_main = gw.wait_for("answer on the main port", Duration::from_secs(5), |g| {
        g.header("Call-ID").as_deref() == Some("opt-on-main")
            && g.start_line().starts_with("SIP/2.0 ")
    });
    assert!(
        on_main.is_response(403, "OPTIONS"),
        "gw1's new request on the main port: {}",
        on_main.start_line()
    );
    assert_eq!(on_main.from, main_port);
    drop(node);
}

#[test]
fn a_trunk_port_that_is_the_main_listeners_is_refused_naming_the_field() {
    let _serial = serial();
    let dir = TestDir::new("trunk-local-clash");
    let text = config().replace(&format!("local_port = {GW_PORT}"), "local_port = 5060");
    let path = dir.file("medpool.toml");
    std::fs::write(&path, text).unwrap();
    let out = medpool_harness::medpool_command(std::path::Path::new(env!("CARGO_BIN_EXE_medpool")))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .arg("--sip-listen")
        .arg(common::node_addr(N))
        .arg("--data-dir")
        .arg(dir.file("data"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "started with a clashing port: {stderr}"
    );
    assert!(
        stderr.contains("trunk[1].local_port: 5060"),
        "the error names the field: {stderr}"
    );
}
