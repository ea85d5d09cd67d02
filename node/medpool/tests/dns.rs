//! Trunks named by DNS (RFC 3263) through a running `medpool serve` and a real DNS server: Debian's
//! `dnsmasq`, started by each test on its own address with the NAPTR, SRV and A records the test
//! writes, and named to medpool with `--dns-server`. SIPp plays the gateways and the callers.
//!
//! Addresses: `127.0.151.0/24` below `.200` (internal_tls.rs uses `.201` and up). Each test has a
//! slice of its own, so they run in parallel:
//!
//! | test                    | node      | dnsmasq       | others                                   |
//! |-------------------------|-----------|---------------|------------------------------------------|
//! | priority and failover   | .11:5060  | .12:5353      | caller .11:5070; targets .21, .22         |
//! | records change          | .41:5060  | .42:5353      | caller .41:5070; targets .51, .52         |
//! | stale answer, unresolved| .81:5060  | .82:5353      | caller .81:5070; target .91; backup .92   |
//! | second address is trunk | .61:5060  | .62:5353      | pbx .63; targets .71, .72; stranger .73   |
//! | NAPTR picks TCP         | .101:5060 | .102:5353     | caller .101:5070; TCP target .111         |
//!
//! Every process is stopped by PID (its guard's `Drop`), also when a test fails.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    missing_docs
)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{ChildGuard, MedpoolNode, Sipp, TestDir, wait_until};

const CALL_TIMEOUT: Duration = Duration::from_secs(40);
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// The dnsmasq program (in /usr/sbin, which a non-root PATH may lack).
fn dnsmasq() -> Command {
    let sbin = std::path::Path::new("/usr/sbin/dnsmasq");
    Command::new(if sbin.exists() {
        sbin.as_os_str()
    } else {
        std::ffi::OsStr::new("dnsmasq")
    })
}

/// Fails with a clear message when dnsmasq is missing (the README's test command installs it).
fn require_dnsmasq() {
    let ok = dnsmasq()
        .arg("--version")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("Dnsmasq"))
        .unwrap_or(false);
    assert!(
        ok,
        "dnsmasq is not installed. These tests need a real DNS server: install Debian's dnsmasq \
         (`apt-get install -y dnsmasq-base`), as scripts/test.sh does, and run them again."
    );
}

/// A dnsmasq serving only the records it is given (authoritative for `medpool.test`: any other
/// name there is NXDOMAIN, nothing is forwarded), on `ip:5353`, records' TTL `ttl` seconds.
struct Dnsmasq {
    guard: ChildGuard,
    ip: String,
}

impl Dnsmasq {
    fn start(dir: &TestDir, name: &str, ip: &str, ttl: u32, records: &[String]) -> Dnsmasq {
        require_dnsmasq();
        let conf = dir.file(&format!("{name}.conf"));
        let mut text = format!(
            "no-resolv\nno-hosts\nport=5353\nlisten-address={ip}\nbind-interfaces\npid-file=\n\
             local=/medpool.test/\nlocal-ttl={ttl}\nlog-queries\n"
        );
        for r in records {
            text.push_str(r);
            text.push('\n');
        }
        std::fs::write(&conf, &text).unwrap();
        let log = std::fs::File::create(dir.file(&format!("{name}.log"))).unwrap();
        let child = dnsmasq()
            .arg("--no-daemon")
            .arg(format!("--conf-file={}", conf.display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start dnsmasq ({e})"));
        let mut guard = ChildGuard::new(child, name, "TERM", Duration::from_secs(3));
        // Up when it answers on its port (a query for a record of ours).
        let up = wait_until(Duration::from_secs(10), || {
            guard.try_wait().is_none() && answers(ip)
        });
        assert!(up, "dnsmasq did not start on {ip}:5353:\n{text}");
        Dnsmasq {
            guard,
            ip: ip.to_owned(),
        }
    }

    fn stop(&mut self) {
        self.guard.stop();
    }
}

/// Whether a DNS server answers on `ip:5353` (a query for `medpool.test`'s SOA-less root: any
/// answer at all, even NXDOMAIN).
fn answers(ip: &str) -> bool {
    let Ok(s) = std::net::UdpSocket::bind(format!("{ip}:0")) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in ["probe", "medpool", "test"] {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    if s.send_to(&q, format!("{ip}:5353")).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    matches!(s.recv_from(&mut buf), Ok((n, _)) if n >= 12 && buf[0] == 0x12)
}

fn srv(name: &str, target: &str, port: u16, priority: u16, weight: u16) -> String {
    format!("srv-host={name},{target},{port},{priority},{weight}")
}

fn host(name: &str, ip: &str) -> String {
    format!("host-record={name},{ip}")
}

fn naptr(name: &str, order: u16, service: &str, replacement: &str) -> String {
    format!("naptr-record={name},{order},10,S,{service},,{replacement}")
}

/// `medpool ctl --server <ip>:7001 ARGS` (the admin API's default port on the node's IP): stdout.
fn ctl(node_ip: &str, args: &[&str]) -> String {
    let out = medpool_harness::medpool_command(std::path::Path::new(env!("CARGO_BIN_EXE_medpool")))
        .arg("ctl")
        .arg("--server")
        .arg(format!("{node_ip}:7001"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "medpool ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ctl gateways ls <trunk>` until it contains every one of `want` (or `timeout`): the last output.
fn wait_for_gateway(node_ip: &str, trunk: &str, want: &[&str], timeout: Duration) -> String {
    let mut last = String::new();
    let ok = wait_until(timeout, || {
        last = ctl(node_ip, &["gateways", "ls", trunk]);
        want.iter().all(|w| last.contains(w))
    });
    assert!(
        ok,
        "`ctl gateways ls {trunk}` never showed {want:?}:\n{last}"
    );
    last
}

/// The pool of a test: trunk `pbx` (internal, the caller's IP, any port), the gateway trunk
/// `sbc` named by DNS (`sbc_keys` says how), optional extra trunks, and the route `out` from the
/// pbx to `route_targets`.
fn config(caller_ip: &str, sbc_keys: &str, extra: &str, route_targets: &str) -> String {
    format!(
        r#"
[node]
max_tries = 4

[[trunk]]
name = "pbx"
address = "{caller_ip}"
port = 5070
side = "internal"
match_any_port = true

[[trunk]]
name = "sbc"
address = "sbc.medpool.test"
side = "gateway"
options_interval_ms = 500
down_after = 2
up_after = 2
fast_failover_ms = 2000
{sbc_keys}
{extra}

[[route]]
name = "out"
pattern = ".*"
trunks = [{route_targets}]
"#
    )
}

fn start_node(dir: &TestDir, sip: &str, dns_ip: &str, toml: &str) -> MedpoolNode {
    MedpoolNode::start_at(
        dir,
        151,
        sip,
        toml,
        &[
            "--shutdown-grace",
            "3",
            "--dns-server",
            &format!("{dns_ip}:5353"),
        ],
        &[],
    )
}

/// NAPTR (UDP) → SRV: gw-a (.21, priority 10) and gw-b (.22, priority 20). Calls go to gw-a, the
/// lowest priority; both targets are probed as gateways. gw-a dies: calls move to gw-b and none
/// fails (the first one after the death waits for the fast-failover timer, the next ones go
/// straight to gw-b once gw-a's probes failed).
#[test]
fn calls_go_to_the_lowest_priority_srv_target_and_fail_over_when_it_dies() {
    let dir = TestDir::new("dns-srv-priority");
    let dns = Dnsmasq::start(
        &dir,
        "dnsmasq",
        "127.0.151.12",
        2,
        &[
            naptr(
                "sbc.medpool.test",
                10,
                "SIP+D2U",
                "_sip._udp.sbc.medpool.test",
            ),
            srv(
                "_sip._udp.sbc.medpool.test",
                "gw-a.medpool.test",
                5060,
                10,
                50,
            ),
            srv(
                "_sip._udp.sbc.medpool.test",
                "gw-b.medpool.test",
                5060,
                20,
                50,
            ),
            host("gw-a.medpool.test", "127.0.151.21"),
            host("gw-b.medpool.test", "127.0.151.22"),
        ],
    );
    let mut gw_a = Sipp::uas("gw-a", "uas_answer.xml", "127.0.151.21").spawn(&dir);
    let gw_b = Sipp::uas("gw-b", "uas_answer.xml", "127.0.151.22").spawn(&dir);
    let toml = config("127.0.151.11", "", "", "\"sbc\"");
    let node = start_node(&dir, "127.0.151.11:5060", &dns.ip, &toml);
    gw_a.wait_for_probes(2, PROBE_TIMEOUT);
    gw_b.wait_for_probes(2, PROBE_TIMEOUT);
    let shown = wait_for_gateway(
        "127.0.151.11",
        "sbc",
        &[
            "resolved",
            "127.0.151.21:5060/udp up",
            "127.0.151.22:5060/udp up",
        ],
        PROBE_TIMEOUT,
    );
    eprintln!("--- ctl gateways ls sbc ---\n{shown}");

    let mut pbx = Sipp::uac(
        "caller1",
        "uac_call.xml",
        "127.0.151.11",
        5070,
        "127.0.151.11:5060",
    )
    .calls(3)
    .rate(5)
    .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);
    assert_eq!(gw_a.calls_received().len(), 3, "priority 10 takes them all");
    assert!(
        gw_a.message_log()
            .contains("INVITE sip:service@sbc.medpool.test SIP/2.0"),
        "the Request-URI keeps the trunk's name (RFC 3263)"
    );
    assert_eq!(
        gw_b.calls_received().len(),
        0,
        "priority 20 only on failure"
    );

    // gw-a dies.
    gw_a.stop();
    let mut pbx = Sipp::uac(
        "caller2",
        "uac_call.xml",
        "127.0.151.11",
        5071,
        "127.0.151.11:5060",
    )
    .calls(4)
    .rate(1)
    .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);
    assert_eq!(
        pbx.responses_received(200, "INVITE"),
        4,
        "every call answered: none failed when its first target died"
    );
    assert_eq!(gw_b.calls_received().len(), 4, "all went to gw-b");
    wait_for_gateway(
        "127.0.151.11",
        "sbc",
        &["127.0.151.21:5060/udp down", "127.0.151.22:5060/udp up"],
        PROBE_TIMEOUT,
    );
    drop(node);
}

/// SRV for the trunk's fixed transport (no NAPTR asked): target gw-x (.51). The records change
/// (dnsmasq restarted with gw-y, .52, instead): within the records' TTL (1 s) plus a retry, the
/// node follows — new calls go to gw-y, and gw-x is no longer a target.
#[test]
fn a_change_of_the_records_is_followed_after_their_ttl() {
    let dir = TestDir::new("dns-ttl");
    let records = |ip: &str| {
        vec![
            srv(
                "_sip._udp.sbc.medpool.test",
                "gw.medpool.test",
                5060,
                10,
                10,
            ),
            host("gw.medpool.test", ip),
        ]
    };
    let mut dns = Dnsmasq::start(
        &dir,
        "dnsmasq1",
        "127.0.151.42",
        1,
        &records("127.0.151.51"),
    );
    let gw_x = Sipp::uas("gw-x", "uas_answer.xml", "127.0.151.51").spawn(&dir);
    let gw_y = Sipp::uas("gw-y", "uas_answer.xml", "127.0.151.52").spawn(&dir);
    let toml = config("127.0.151.41", "transport = \"udp\"", "", "\"sbc\"");
    let _node = start_node(&dir, "127.0.151.41:5060", &dns.ip, &toml);
    wait_for_gateway(
        "127.0.151.41",
        "sbc",
        &["resolved", "127.0.151.51:5060/udp up"],
        PROBE_TIMEOUT,
    );
    let mut pbx = Sipp::uac(
        "caller1",
        "uac_call.xml",
        "127.0.151.41",
        5070,
        "127.0.151.41:5060",
    )
    .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);
    assert_eq!(gw_x.calls_received().len(), 1);

    dns.stop();
    let dns = Dnsmasq::start(
        &dir,
        "dnsmasq2",
        "127.0.151.42",
        1,
        &records("127.0.151.52"),
    );
    let shown = wait_for_gateway(
        "127.0.151.41",
        "sbc",
        &["resolved", "127.0.151.52:5060/udp up"],
        Duration::from_secs(30),
    );
    assert!(
        !shown.contains("127.0.151.51"),
        "the old target is gone: {shown}"
    );
    let mut pbx = Sipp::uac(
        "caller2",
        "uac_call.xml",
        "127.0.151.41",
        5071,
        "127.0.151.41:5060",
    )
    .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);
    assert_eq!(
        gw_y.calls_received().len(),
        1,
        "the new target got the call"
    );
    assert_eq!(gw_x.calls_received().len(), 1, "the old one nothing more");
    drop(dns);
}

/// A trunk with a port is looked up A/AAAA only (RFC 3263 §4.2). The DNS server dies: the
/// trunk keeps its expired answer, stale, and says so (`ctl gateways`, the log), and calls still
/// go to it; `dns_stale_max` (20 s) after the answer expired it is unresolved, and a call skips it — with an attempt in
/// the call's history saying why — for the backup gateway (an IP literal).
#[test]
fn a_dead_dns_server_keeps_the_answer_for_dns_stale_max_then_calls_skip_the_trunk() {
    let dir = TestDir::new("dns-stale");
    let mut dns = Dnsmasq::start(
        &dir,
        "dnsmasq",
        "127.0.151.82",
        1,
        &[host("sbc.medpool.test", "127.0.151.91")],
    );
    let gw = Sipp::uas("gw", "uas_answer.xml", "127.0.151.91").spawn(&dir);
    let backup = Sipp::uas("backup", "uas_answer.xml", "127.0.151.92").spawn(&dir);
    let toml = config(
        "127.0.151.81",
        "port = 5060",
        "\n[[trunk]]\nname = \"backup\"\naddress = \"127.0.151.92\"\nside = \"gateway\"\noptions_interval_ms = 500\n",
        "{ trunk = \"sbc\", priority = 1 }, { trunk = \"backup\", priority = 2 }",
    )
    .replace("[node]\n", "[node]\ndns_stale_max = 20\n");
    let node = start_node(&dir, "127.0.151.81:5060", &dns.ip, &toml);
    wait_for_gateway(
        "127.0.151.81",
        "sbc",
        &["resolved", "127.0.151.91:5060/udp up"],
        PROBE_TIMEOUT,
    );

    dns.stop();
    let shown = wait_for_gateway(
        "127.0.151.81",
        "sbc",
        &["stale", "127.0.151.91:5060/udp"],
        Duration::from_secs(20),
    );
    eprintln!("--- ctl gateways ls sbc (DNS dead) ---\n{shown}");
    let mut pbx = Sipp::uac(
        "caller1",
        "uac_call.xml",
        "127.0.151.81",
        5070,
        "127.0.151.81:5060",
    )
    .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);
    assert_eq!(gw.calls_received().len(), 1, "the stale answer is used");
    assert!(
        node.log().contains("keeping the trunk's expired answer"),
        "the node says it uses a stale answer"
    );

    let shown = wait_for_gateway(
        "127.0.151.81",
        "sbc",
        &["unresolved"],
        Duration::from_secs(60),
    );
    assert!(!shown.contains("127.0.151.91"), "no target left: {shown}");
    // A call held for 4 s, long enough to read its history.
    let mut pbx = Sipp::uac(
        "caller2",
        "uac_call.xml",
        "127.0.151.81",
        5071,
        "127.0.151.81:5060",
    )
    .hold_ms(4000)
    .spawn(&dir);
    let mut show = String::new();
    let seen = wait_until(Duration::from_secs(20), || {
        let list = ctl("127.0.151.81", &["-o", "json", "calls", "list"]);
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&list) else {
            return false;
        };
        let id = v
            .pointer("/calls/0/call_id")
            .or_else(|| v.pointer("/0/call_id"))
            .and_then(|v| v.as_str())
            .map(str::to_owned);
        let Some(id) = id else {
            return false;
        };
        show = ctl("127.0.151.81", &["-o", "json", "calls", "show", &id]);
        show.contains("backup")
    });
    assert!(seen, "the call never showed on the backup: {show}");
    pbx.expect_success(CALL_TIMEOUT);
    eprintln!("--- ctl calls show ---\n{show}");
    let v: serde_json::Value = serde_json::from_str(&show).unwrap();
    let text = v.to_string();
    assert!(
        text.contains("\"gateway\":\"sbc\"") && text.contains("DNS name unresolved"),
        "the skipped trunk is an attempt of the call, with the reason: {text}"
    );
    assert_eq!(backup.calls_received().len(), 1, "the backup took the call");
    assert_eq!(
        gw.calls_received().len(),
        1,
        "the unresolved trunk got nothing more"
    );
}

/// A trunk named by DNS with two SRV targets (.71, .72): a call from the second one's address is
/// recognised as the trunk and served (routed to the pbx), while a stranger (.73) gets 403.
#[test]
fn a_request_from_the_trunks_second_resolved_address_is_the_trunks() {
    let dir = TestDir::new("dns-source");
    let dns = Dnsmasq::start(
        &dir,
        "dnsmasq",
        "127.0.151.62",
        2,
        &[
            srv("_sip._udp.sbc.medpool.test", "a.medpool.test", 5060, 10, 10),
            srv("_sip._udp.sbc.medpool.test", "b.medpool.test", 5060, 10, 10),
            host("a.medpool.test", "127.0.151.71"),
            host("b.medpool.test", "127.0.151.72"),
        ],
    );
    let pbx = Sipp::uas("pbx", "uas_answer.xml", "127.0.151.63").spawn(&dir);
    // Calls from the sbc go to the pbx; the sbc is not probed (the caller at .72 is SIPp's UAC).
    let toml = r#"
[[trunk]]
name = "pbx"
address = "127.0.151.63"
side = "internal"

[[trunk]]
name = "sbc"
address = "sbc.medpool.test"
side = "gateway"
options_interval_ms = 0

[[route]]
name = "in"
pattern = ".*"
trunks = ["pbx"]
"#;
    let _node = start_node(&dir, "127.0.151.61:5060", &dns.ip, toml);
    wait_for_gateway(
        "127.0.151.61",
        "sbc",
        &["resolved", "127.0.151.71:5060/udp", "127.0.151.72:5060/udp"],
        PROBE_TIMEOUT,
    );
    let mut from_b = Sipp::uac(
        "sbc-b",
        "uac_call.xml",
        "127.0.151.72",
        5060,
        "127.0.151.61:5060",
    )
    .spawn(&dir);
    from_b.expect_success(CALL_TIMEOUT);
    assert_eq!(
        from_b.responses_received(403, "INVITE"),
        0,
        "not refused as an unknown source"
    );
    assert_eq!(pbx.calls_received().len(), 1, "routed on to the pbx");

    let mut stranger = Sipp::uac(
        "stranger",
        "uac_expect_403.xml",
        "127.0.151.73",
        5060,
        "127.0.151.61:5060",
    )
    .spawn(&dir);
    stranger.expect_success(CALL_TIMEOUT);
    assert_eq!(pbx.calls_received().len(), 1, "the stranger got nowhere");
}

/// Without `port` and `transport`, NAPTR chooses the transport (RFC 3263 §4.1): `SIP+D2T` comes
/// first by order, so the trunk's target is its TCP SRV target, probed and called over TCP, though
/// a UDP SRV name exists too.
#[test]
fn naptr_chooses_the_transport() {
    let dir = TestDir::new("dns-naptr-tcp");
    let dns = Dnsmasq::start(
        &dir,
        "dnsmasq",
        "127.0.151.102",
        2,
        &[
            naptr(
                "sbc.medpool.test",
                10,
                "SIP+D2T",
                "_sip._tcp.sbc.medpool.test",
            ),
            naptr(
                "sbc.medpool.test",
                20,
                "SIP+D2U",
                "_sip._udp.sbc.medpool.test",
            ),
            srv(
                "_sip._tcp.sbc.medpool.test",
                "tcp.medpool.test",
                5060,
                10,
                10,
            ),
            srv(
                "_sip._udp.sbc.medpool.test",
                "udp.medpool.test",
                5060,
                10,
                10,
            ),
            host("tcp.medpool.test", "127.0.151.111"),
            host("udp.medpool.test", "127.0.151.112"),
        ],
    );
    let gw = Sipp::uas("gw-tcp", "uas_answer.xml", "127.0.151.111")
        .tcp()
        .spawn(&dir);
    let toml = config("127.0.151.101", "", "", "\"sbc\"");
    let _node = start_node(&dir, "127.0.151.101:5060", &dns.ip, &toml);
    let shown = wait_for_gateway(
        "127.0.151.101",
        "sbc",
        &["resolved", "127.0.151.111:5060/tcp"],
        PROBE_TIMEOUT,
    );
    assert!(
        !shown.contains("127.0.151.112"),
        "the UDP name is not used: {shown}"
    );
    gw.wait_for_probes(2, PROBE_TIMEOUT);
    let mut pbx = Sipp::uac(
        "caller",
        "uac_call.xml",
        "127.0.151.101",
        5070,
        "127.0.151.101:5060",
    )
    .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);
    assert_eq!(gw.calls_received().len(), 1, "the call went over TCP");
    assert!(
        gw.message_log().contains("SIP/2.0/TCP"),
        "the INVITE's Via says TCP"
    );
}
