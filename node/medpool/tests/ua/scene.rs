//! One case of the real-UA tests: its addresses, medpool's configuration, the running node, the
//! wire capture, and the admin API's view of the calls (`medpool ctl calls`).
//!
//! Addresses: the tests own 127.0.154.0/24; case `k` (1..=15) owns the block 127.0.154.16k/28
//! (another test file names its own /24 in [`SceneSpec::block`] and its RTP ports in
//! [`SceneSpec::rtp_base`]):
//!
//! | host | who                                                                          |
//! |------|------------------------------------------------------------------------------|
//! | .+1  | the medpool node: SIP 5060, admin API 7001, relay ports 20000-29999           |
//! | .+2  | "alice", on the internal trunk `pbx` (any port)                               |
//! | .+3  | "bob", gateway trunk `gw1` (5060): number 200 is routed to it                 |
//! | .+4  | "carol", gateway trunk `gw2` (5060): number 300 is routed to it               |
//!
//! Both gateway trunks and `pbx` relay media (`media = "relay"`) and pass REFER (`refer =
//! "pass"`). Calls from the gateways to 300 go to carol (a transferee behind gw1 calls her),
//! every other gateway call to the pbx (route `from-pstn`).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::wire::{Capture, SipMsg};
use crate::common::{MedpoolNode, TestDir, wait_until};

/// Host numbers inside a case's block.
pub const NODE: u8 = 1;
pub const ALICE: u8 = 2;
pub const BOB: u8 = 3;
pub const CAROL: u8 = 4;

/// The number routed to bob (gw1) and to carol (gw2).
pub const BOB_NUMBER: &str = "200";
pub const CAROL_NUMBER: &str = "300";

/// What differs between cases.
#[derive(Clone, Debug)]
pub struct SceneSpec {
    /// The case number, 1..=15 (its address block).
    pub case: u8,
    /// Extra keys for every trunk (e.g. TLS or SRTP settings).
    pub trunk_keys: String,
    /// Extra keys of one trunk ("pbx", "gw1", "gw2"), after `trunk_keys`.
    pub trunk_keys_of: Vec<(&'static str, String)>,
    /// The port of the `pbx` trunk (alice's; 5061 when she speaks TLS).
    pub pbx_port: u16,
    /// The address of the `pbx` trunk when it is not alice's IP (baresip's TLS connections
    /// come from 127.0.0.1: it does not bind them to its listening address).
    pub pbx_address: Option<String>,
    /// The third octet of the tests' /24 (127.0.<block>.0/24).
    pub block: u8,
    /// The first of the RTP ports of the tests' UAs (each case takes 128 from here).
    pub rtp_base: u16,
    /// Extra arguments of `medpool serve` (e.g. the TLS listener and its certificate).
    pub node_args: Vec<String>,
}

impl SceneSpec {
    pub fn new(case: u8) -> Self {
        assert!((1..=15).contains(&case), "case {case} has no address block");
        Self {
            case,
            trunk_keys: String::new(),
            trunk_keys_of: Vec::new(),
            pbx_port: 5060,
            pbx_address: None,
            block: 154,
            rtp_base: 46_000,
            node_args: Vec::new(),
        }
    }

    /// The IP of `host` in this case's block.
    pub fn ip(&self, host: u8) -> String {
        format!("127.0.{}.{}", self.block, 16 * self.case + host)
    }

    /// An RTP port range for `host`, apart from every other case's and host's (UAs bind the
    /// wildcard address, so ranges must not overlap across parallel tests): 16 ports.
    pub fn rtp_ports(&self, host: u8) -> (u16, u16) {
        let lo = self.rtp_base + u16::from(self.case) * 128 + u16::from(host) * 16;
        (lo, lo + 15)
    }

    /// medpool's configuration.
    pub fn toml(&self) -> String {
        let keys = &self.trunk_keys;
        let trunk = |name: &str, host: u8, side: &str, extra: &str| {
            let own: String = self
                .trunk_keys_of
                .iter()
                .filter(|(n, _)| *n == name)
                .map(|(_, k)| format!("{k}\n"))
                .collect();
            let (address, port) = match (name, &self.pbx_address) {
                ("pbx", Some(a)) => (a.clone(), self.pbx_port),
                ("pbx", None) => (self.ip(host), self.pbx_port),
                _ => (self.ip(host), 5060),
            };
            format!(
                "[[trunk]]\nname = \"{name}\"\naddress = \"{address}\"\nport = {port}\nside = \"{side}\"\n\
                 media = \"relay\"\nrefer = \"pass\"\n{extra}{keys}{own}\n"
            )
        };
        let gw =
            "options_interval_ms = 500\ndown_after = 3\nup_after = 1\nusages = [\"inbound\"]\n";
        format!(
            "# real user agents, case {case} (written by tests/ua/scene.rs)\n\
             [node]\nmax_calls = 10\nunknown_source = \"reject\"\n\n{}{}{}\
             [[route]]\nname = \"carol-from-gateways\"\npattern = '^{CAROL_NUMBER}$'\nusage = \"inbound\"\ntrunks = [\"gw2\"]\n\n\
             [[route]]\nname = \"from-pstn\"\npattern = '.*'\nusage = \"inbound\"\ntrunks = [\"pbx\"]\n\n\
             [[route]]\nname = \"to-bob\"\npattern = '^{BOB_NUMBER}$'\nusage = \"outbound\"\ntrunks = [\"gw1\"]\n\n\
             [[route]]\nname = \"to-carol\"\npattern = '^{CAROL_NUMBER}$'\nusage = \"outbound\"\ntrunks = [\"gw2\"]\n",
            trunk(
                "pbx",
                ALICE,
                "internal",
                "match_any_port = true\nusages = [\"outbound\"]\n"
            ),
            trunk("gw1", BOB, "gateway", gw),
            trunk("gw2", CAROL, "gateway", gw),
            case = self.case,
        )
    }
}

/// A running case: the capture (started first, so it sees everything), and the node.
pub struct Scene {
    pub spec: SceneSpec,
    pub dir: TestDir,
    pub capture: Capture,
    pub node: MedpoolNode,
}

impl Scene {
    /// Starts the capture and the node.
    pub fn start(name: &str, spec: SceneSpec) -> Self {
        let dir = TestDir::new(&format!("real-ua-{name}"));
        let net: Ipv4Addr = spec.ip(0).parse().unwrap();
        let capture = Capture::start(net, 28).unwrap_or_else(|e| panic!("{e}"));
        let node_ip = spec.ip(NODE);
        let mut args = vec!["--shutdown-grace", "2"];
        args.extend(spec.node_args.iter().map(String::as_str));
        let node = MedpoolNode::start_at(
            &dir,
            spec.block,
            &format!("{node_ip}:5060"),
            &spec.toml(),
            &args,
            &[],
        );
        Self {
            spec,
            dir,
            capture,
            node,
        }
    }

    pub fn ip(&self, host: u8) -> String {
        self.spec.ip(host)
    }

    /// `sip:<number>@<node>` — what a caller dials.
    pub fn dial_uri(&self, number: &str) -> String {
        format!("sip:{number}@{}:5060", self.ip(NODE))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Waits until the gateway UA at `host` (bob: gw1, carol: gw2) has answered one of medpool's
    /// OPTIONS probes and `ctl gateways ls` shows its gateway up after that answer, so that calls
    /// are routed to it. Any answer will do: medpool counts a response as alive, and baresip
    /// answers a probe without a user part (`sip:<ip>:5060`) 404.
    pub fn wait_gateway_up(&self, host: u8) {
        let gateway = match host {
            BOB => "gw1",
            CAROL => "gw2",
            _ => panic!("host {host} is no gateway"),
        };
        let mut last = Value::Null;
        let up = wait_until(Duration::from_secs(10), || {
            let ls = self.ctl_json(&["gateways", "ls"]);
            let Some(g) = ls["gateways"]
                .as_array()
                .and_then(|gs| gs.iter().find(|g| g["name"] == gateway))
                .cloned()
            else {
                return false;
            };
            last = g;
            last["up"] == true && last["last_options_status"].as_u64().unwrap_or(0) != 0
        });
        assert!(
            up,
            "gateway {gateway} (the UA at {}) is not up after an answered probe within 10 s: \
             {last}\n{}",
            self.ip(host),
            self.sip_ladder()
        );
    }

    /// SIP messages between `host` and the node (both directions), OPTIONS probes left out.
    pub fn leg(&self, host: u8) -> Vec<SipMsg> {
        let ip = self.ip(host);
        let node = self.ip(NODE);
        self.capture
            .sip()
            .into_iter()
            .filter(|m| m.cseq_method() != "OPTIONS")
            .filter(|m| {
                let (s, d) = (m.src.ip().to_string(), m.dst.ip().to_string());
                (s == ip && d == node) || (s == node && d == ip)
            })
            .collect()
    }

    /// The leg to `host` as "→ INVITE" (towards the UA) / "← 200 INVITE" (from it) labels.
    pub fn leg_labels(&self, host: u8) -> Vec<String> {
        let ip = self.ip(host);
        self.leg(host)
            .iter()
            .map(|m| {
                let arrow = if m.dst.ip().to_string() == ip {
                    "→"
                } else {
                    "←"
                };
                format!("{arrow} {}", m.label())
            })
            .collect()
    }

    /// Every SIP message of the case, one line each (for failure messages).
    pub fn sip_ladder(&self) -> String {
        let mut s = String::new();
        for m in self.capture.sip() {
            if m.cseq_method() == "OPTIONS" {
                continue;
            }
            s.push_str(&format!(
                "{:>8.3}s {:>21} → {:<21} {} [{}]\n",
                m.at.as_secs_f64(),
                m.src.to_string(),
                m.dst.to_string(),
                m.first_line,
                m.call_id()
            ));
        }
        s
    }

    /// Waits until the leg to `host` has carried `count` messages matching `pred`; panics with
    /// the ladder after `timeout`.
    pub fn expect_on_leg(
        &self,
        host: u8,
        what: &str,
        count: usize,
        timeout: Duration,
        pred: impl Fn(&SipMsg) -> bool,
    ) -> Vec<SipMsg> {
        let mut found = Vec::new();
        let ok = wait_until(timeout, || {
            found = self.leg(host).into_iter().filter(|m| pred(m)).collect();
            found.len() >= count
        });
        assert!(
            ok,
            "expected {count} × {what} on the leg to {} within {timeout:?}, saw {}\n--- SIP on the wire ---\n{}",
            self.ip(host),
            found.len(),
            self.sip_ladder()
        );
        found
    }

    /// `medpool ctl --server <node>:7001 -o json ARGS`.
    pub fn ctl_json(&self, args: &[&str]) -> Value {
        crate::common::ctl_json(&format!("{}:7001", self.ip(NODE)), args)
    }

    /// The Call-IDs `ctl calls list` shows.
    pub fn calls_listed(&self) -> Vec<String> {
        let list = self.ctl_json(&["calls", "list"]);
        let calls = list
            .get("calls")
            .and_then(Value::as_array)
            .or_else(|| list.as_array())
            .cloned()
            .unwrap_or_default();
        calls
            .iter()
            .filter_map(|c| c["call_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// `ctl calls show` of the call whose leg A has Call-ID `call_id`.
    pub fn call_show(&self, call_id: &str) -> Value {
        self.ctl_json(&["calls", "show", call_id])
    }

    /// `ctl calls show` of the only call listed; panics if there is not exactly one.
    pub fn show_the_call(&self) -> Value {
        let ids = self.calls_listed();
        assert_eq!(
            ids.len(),
            1,
            "one call expected in `calls list`: {ids:?}\n{}",
            self.sip_ladder()
        );
        self.call_show(&ids[0])
    }

    /// Waits until `ctl calls list` shows no call.
    pub fn expect_no_calls(&self, timeout: Duration) {
        let mut ids = Vec::new();
        let ok = wait_until(timeout, || {
            ids = self.calls_listed();
            ids.is_empty()
        });
        assert!(
            ok,
            "calls still listed after {timeout:?}: {ids:?}\n{}",
            self.sip_ladder()
        );
    }
}
