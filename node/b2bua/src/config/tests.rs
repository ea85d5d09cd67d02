//! Tests of loading and validation: every error names file, line and field.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::*;
use crate::fixtures::trunk;

/// A minimal valid file; tests append to it (its last line is line 11).
const BASE: &str = r#"[[trunk]]
name = "pbx"
address = "10.0.0.1"
side = "internal"

[[trunk]]
name = "gw1"
address = "10.0.1.1"
side = "gateway"

# end of base
"#;

const ROUTE: &str = r#"
[[route]]
name = "all"
pattern = ".*"
trunks = ["gw1"]
"#;

fn load(text: &str) -> Result<PoolConfig, ConfigError> {
    PoolConfig::from_toml_str(text, "test.toml")
}

/// The error message of `BASE + extra + ROUTE`.
fn error_of(extra: &str) -> String {
    let text = format!("{BASE}{extra}{ROUTE}");
    match load(&text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn problem_of(text: &str) -> Problem {
    load(text).unwrap_err().problem().cloned().unwrap()
}

#[test]
fn minimal_file_gets_defaults() {
    let c = load(&format!("{BASE}{ROUTE}")).unwrap();
    assert_eq!(c.node, NodeSettings::default());
    assert_eq!(c.node.max_calls, 20_000);
    assert_eq!(c.node.max_tries, 3);
    assert_eq!(c.node.unknown_source, UnknownSource::Reject);
    assert_eq!(c.node.retry_after, 5);
    assert_eq!(c.node.advertised_address, None);
    let pbx = c.trunk("pbx").unwrap();
    let gw1 = c.trunk("gw1").unwrap();
    assert_eq!(pbx.port, 5060);
    assert_eq!(pbx.transport, Transport::Udp);
    assert!(pbx.match_any_port);
    assert!(!gw1.match_any_port);
    assert_eq!(gw1.failover_codes, [408, 503, 504]);
    assert_eq!(
        gw1.fast_failover(),
        Some(std::time::Duration::from_secs(10))
    );
    assert_eq!(gw1.refer, ReferPolicy::Refuse);
    assert_eq!(gw1.session_expires, None);
    assert_eq!(gw1.min_se, 90);
    assert!(gw1.forward_pai && gw1.forward_history_info);
    assert_eq!(
        gw1.options_interval(),
        Some(std::time::Duration::from_secs(5))
    );
    assert_eq!(pbx.options_interval(), None);
    assert_eq!((gw1.down_after, gw1.up_after, gw1.weight), (3, 2, 1));
    assert_eq!(gw1.max_calls, None);
    assert_eq!(gw1.max_cps, None);
    assert_eq!(
        (gw1.rate, gw1.burst),
        (Trunk::DEFAULT_RATE, Trunk::DEFAULT_RATE)
    );
    assert!(gw1.usages.is_none());
    assert!(gw1.is_failover_code(503) && !gw1.is_failover_code(486));
    assert_eq!(
        c.routes[0].targets,
        [RouteTarget {
            trunk: "gw1".into(),
            priority: 1
        }]
    );
}

#[test]
fn every_key_is_read() {
    let text = r#"
[node]
max_calls = 100
max_tries = 2
unknown_source = "drop"
retry_after = 30
advertised_address = "[2001:db8::1]:5070"
local_calls = false

[[trunk]]
name = "gw"
address = "gw.example.net"
port = 5080
transport = "tcp"
side = "gateway"
match_any_port = true
max_calls = 10
max_cps = 5
rate = 40
failover_codes = [503]
fast_failover_ms = 0
refer = "pass"
session_expires = 1800
min_se = 120
forward_pai = false
forward_history_info = false
options_interval_ms = 0
down_after = 5
up_after = 4
weight = 7
usages = ["intl"]
normalize = [{ pattern = "^00", replace = "+" }]
called_out = [{ pattern = '^\+(\d+)', replace = "${1}" }]
calling_out = [{ pattern = '^\+49(?P<rest>\d+)', replace = "0${rest}" }]
response_map = [{ from = 486, to = 480 }]

[[route]]
name = "intl"
pattern = '^\+'
except = ['^\+1900', '^\+881']
usage = "intl"
trunks = [{ trunk = "gw", priority = 4 }]
"#;
    let c = load(text).unwrap();
    assert_eq!(
        c.node,
        NodeSettings {
            max_calls: 100,
            max_tries: 2,
            unknown_source: UnknownSource::Drop,
            retry_after: 30,
            advertised_address: Some(HostPort {
                host: PeerAddress::Ip(IpAddr::V6("2001:db8::1".parse().unwrap())),
                port: 5070
            }),
            dns_stale_max: NodeSettings::DEFAULT_DNS_STALE_MAX,
            local_calls: false,
        }
    );
    assert_eq!(
        c.node.advertised_address.as_ref().unwrap().to_string(),
        "[2001:db8::1]:5070"
    );
    let gw = &c.trunks[0];
    assert_eq!(gw.address, PeerAddress::Host("gw.example.net".into()));
    assert_eq!(
        (gw.port, gw.transport, gw.side),
        (5080, Transport::Tcp, Side::Gateway)
    );
    assert!(gw.match_any_port);
    assert_eq!((gw.max_calls, gw.max_cps), (Some(10), Some(5)));
    assert_eq!((gw.rate, gw.burst), (40, 40), "burst defaults to rate");
    assert_eq!(gw.failover_codes, [503]);
    assert_eq!(gw.fast_failover(), None);
    assert_eq!(gw.refer, ReferPolicy::Pass);
    assert_eq!((gw.session_expires, gw.min_se), (Some(1800), 120));
    assert!(!gw.forward_pai && !gw.forward_history_info);
    assert_eq!(gw.options_interval(), None);
    assert_eq!((gw.down_after, gw.up_after, gw.weight), (5, 4, 7));
    assert_eq!(gw.usages.as_deref(), Some(&["intl".to_owned()][..]));
    assert_eq!(gw.normalize_number("0049"), "+49");
    assert_eq!(gw.called_out_number("+4930"), "4930");
    assert_eq!(gw.calling_out_number("+4930"), "030");
    assert_eq!(gw.map_response(486), 480);
    let r = &c.routes[0];
    assert_eq!(r.usage.as_deref(), Some("intl"));
    assert!(r.matches("+4930") && !r.matches("+1900123") && !r.matches("4930"));
    assert_eq!(r.targets[0].priority, 4);
}

#[test]
fn model_round_trips_through_serde_and_clone() {
    let c = PoolConfig::load(example_path()).unwrap();
    let text = toml::to_string(&c).unwrap();
    let back: PoolConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, c);
    assert_eq!(c.clone(), c);
}

fn example_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/medpool.toml")
}

#[test]
fn example_file_loads() {
    let c = PoolConfig::load(example_path()).unwrap();
    let names: Vec<&str> = c.trunks.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["pbx", "gw1", "gw2"]);
    let gw1 = c.trunk("gw1").unwrap();
    assert_eq!(
        gw1.address,
        PeerAddress::Ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 21)))
    );
    assert_eq!((gw1.port, gw1.transport), (5060, Transport::Udp));
    assert_eq!(
        (gw1.options_interval_ms, gw1.down_after, gw1.up_after),
        (1000, 2, 2)
    );
    assert_eq!(gw1.fast_failover_ms, 4000);
    assert_eq!(
        c.trunk("gw2").unwrap().address.ip(),
        Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 22)))
    );

    // SIPp's uac comes from 127.0.0.1 on some port (the example's routes: `routing` tests).
    let pbx = c
        .trunk_for_source(IpAddr::V4(Ipv4Addr::LOCALHOST), 40123)
        .unwrap();
    assert_eq!(pbx.name, "pbx");
    // The translation rules: the PBX dials 00…, routes see +…, the gateway gets digits only.
    let called = pbx.normalize_number("0044201234");
    assert_eq!(called, "+44201234");
    assert_eq!(gw1.called_out_number(&called), "44201234");

    // The gateway from another port is nobody.
    assert!(
        c.trunk_for_source(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 21)), 5061)
            .is_none()
    );
}

#[test]
fn default_embedded_is_empty() {
    let c = PoolConfig::default_embedded();
    assert!(c.trunks.is_empty() && c.routes.is_empty());
    assert_eq!(c.node, NodeSettings::default());
    assert!(
        c.trunk_for_source(IpAddr::V4(Ipv4Addr::LOCALHOST), 5060)
            .is_none()
    );
    assert_eq!(load("").unwrap(), c);
}

#[test]
fn source_identification() {
    let text = [
        trunk("pbx", "10.0.0.1", "internal", &[]),
        trunk("sbc", "10.0.0.1", "gateway", &["port = 5080"]),
        trunk("gw", "10.0.0.2", "gateway", &[]),
        trunk("named", "gw.example.net", "gateway", &[]),
        trunk("v6", "2001:db8::5", "internal", &[]),
    ]
    .concat();
    let c = load(&text).unwrap();
    let at = |ip: &str, port| {
        c.trunk_for_source(ip.parse().unwrap(), port)
            .map(|t| t.name.as_str())
    };
    // Exact address and port beats "any port" on the same address.
    assert_eq!(at("10.0.0.1", 5080), Some("sbc"));
    assert_eq!(at("10.0.0.1", 5060), Some("pbx"));
    assert_eq!(at("10.0.0.1", 33333), Some("pbx"));
    // Gateways only from their port.
    assert_eq!(at("10.0.0.2", 5060), Some("gw"));
    assert_eq!(at("10.0.0.2", 5061), None);
    // IPv4-mapped IPv6 sources match IPv4 trunks.
    assert_eq!(at("::ffff:10.0.0.2", 5060), Some("gw"));
    assert_eq!(at("2001:db8::5", 1), Some("v6"));
    assert_eq!(
        c.trunk_for_source(IpAddr::V6(Ipv6Addr::LOCALHOST), 5060),
        None
    );
    assert_eq!(at("10.9.9.9", 5060), None);
    assert_eq!(
        c.trunk("named").unwrap().address,
        PeerAddress::Host("gw.example.net".into())
    );
}

// ---- errors: every one names file, line and field ------------------------------------------

#[test]
fn syntax_error_names_file_and_line() {
    let e = load("[[trunk]]\nname = \"a\"\nport = = 5\n").unwrap_err();
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert_eq!(e.location().unwrap().line, 3);
    assert!(e.to_string().starts_with("test.toml:3: "), "{e}");
}

#[test]
fn unknown_key_is_named() {
    let e = error_of(
        "[[trunk]]\nname = \"gw2\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\nwieght = 2\n",
    );
    assert!(
        e.starts_with("test.toml:16: trunk[2].wieght: unknown field `wieght`"),
        "{e}"
    );
    let e = load("[node]\nmax_call = 5\n").unwrap_err().to_string();
    assert!(
        e.starts_with("test.toml:2: node.max_call: unknown field `max_call`"),
        "{e}"
    );
    let e = load("[nodes]\n").unwrap_err().to_string();
    assert!(
        e.starts_with("test.toml:1: nodes: unknown field `nodes`"),
        "{e}"
    );
    let e = error_of(
        "[[trunk]]\nname = \"x\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\nnormalize = [{ pattern = \"a\", replace = \"b\", flags = \"i\" }]\n",
    );
    assert!(
        e.starts_with("test.toml:16: trunk[2].normalize[0].flags: unknown field `flags`"),
        "{e}"
    );
}

#[test]
fn missing_key_and_wrong_type_are_located() {
    let e = error_of("[[trunk]]\nname = \"gw2\"\naddress = \"10.0.1.2\"\n");
    assert!(
        e.starts_with("test.toml:12: trunk[2]: missing field `side`"),
        "{e}"
    );
    let e = error_of("[[trunk]]\nname = \"gw2\"\naddress = \"10.0.1.2\"\nside = \"outside\"\n");
    assert!(
        e.starts_with("test.toml:15: trunk[2].side: unknown variant `outside`"),
        "{e}"
    );
    let e = error_of(
        "[[trunk]]\nname = \"gw2\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\nport = \"5060\"\n",
    );
    assert!(
        e.starts_with("test.toml:16: trunk[2].port: invalid type"),
        "{e}"
    );
    let e = load("[node]\nunknown_source = \"ignore\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("test.toml:2: node.unknown_source: unknown variant `ignore`"),
        "{e}"
    );
}

#[test]
fn duplicate_trunk_name() {
    let e = error_of("[[trunk]]\nname = \"gw1\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\n");
    assert_eq!(
        e,
        r#"test.toml:13: trunk[2].name: duplicate trunk name "gw1" (first defined on line 7)"#
    );
}

#[test]
fn duplicate_route_name() {
    let e = error_of("[[route]]\nname = \"all\"\npattern = \"x\"\ntrunks = [\"gw1\"]\n");
    assert_eq!(
        e,
        r#"test.toml:18: route[1].name: duplicate route name "all" (first defined on line 13)"#
    );
}

#[test]
fn unknown_trunk_in_route() {
    let text = format!(
        "{BASE}{ROUTE}\n[[route]]\nname = \"second\"\npattern = \"^9\"\ntrunks = [\n  \"gw9\",\n]\n"
    );
    let e = load(&text).unwrap_err();
    assert_eq!(
        e.to_string(),
        r#"test.toml:22: route[1].trunks[0]: unknown trunk "gw9""#
    );
    assert_eq!(e.problem(), Some(&Problem::UnknownTrunk("gw9".into())));
    let loc = e.location().unwrap();
    assert_eq!(
        (loc.file.as_str(), loc.line, loc.field.as_str()),
        ("test.toml", 22, "route[1].trunks[0]")
    );
    let text = format!(
        "{BASE}[[route]]\nname = \"r\"\npattern = \"^9\"\ntrunks = [{{ trunk = \"gw1\" }}, {{ trunk = \"nope\", priority = 2 }}]\n"
    );
    assert_eq!(
        load(&text).unwrap_err().to_string(),
        r#"test.toml:15: route[0].trunks[1]: unknown trunk "nope""#
    );
}

#[test]
fn route_target_shape_errors() {
    let text =
        format!("{BASE}[[route]]\nname = \"r\"\npattern = \"^9\"\ntrunks = [\"gw1\", \"gw1\"]\n");
    assert_eq!(
        load(&text).unwrap_err().to_string(),
        r#"test.toml:15: route[0].trunks[1]: trunk "gw1" is listed twice in this route"#
    );
    let text = format!("{BASE}[[route]]\nname = \"r\"\npattern = \"^9\"\ntrunks = []\n");
    assert_eq!(
        load(&text).unwrap_err().to_string(),
        "test.toml:15: route[0].trunks: a route needs at least one trunk"
    );
    let text = format!(
        "{BASE}[[route]]\nname = \"r\"\npattern = \"^9\"\ntrunks = [{{ trunk = \"gw1\", priority = 0 }}]\n"
    );
    assert_eq!(
        load(&text).unwrap_err().to_string(),
        "test.toml:15: route[0].trunks[0].priority: 0 out of range 1-1000000"
    );
    let text = format!(
        "{BASE}[[route]]\nname = \"r\"\npattern = \"^9\"\ntrunks = [{{ trunk = \"gw1\", weight = 2 }}]\n"
    );
    let e = load(&text).unwrap_err().to_string();
    assert!(
        e.starts_with("test.toml:15: route[0].trunks[0].weight: unknown field `weight`"),
        "{e}"
    );
    let text = format!("{BASE}[[route]]\nname = \"r\"\npattern = \"^9\"\ntrunks = [5]\n");
    let e = load(&text).unwrap_err().to_string();
    assert!(
        e.starts_with(
            "test.toml:15: route[0].trunks[0]: invalid type: integer `5`, expected a trunk name"
        ),
        "{e}"
    );
}

#[test]
fn invalid_regex_names_the_field() {
    let text = format!("{BASE}[[route]]\nname = \"r\"\npattern = \"(\"\ntrunks = [\"gw1\"]\n");
    let e = load(&text).unwrap_err();
    assert!(
        e.to_string()
            .starts_with(r#"test.toml:14: route[0].pattern: invalid regex "(": "#),
        "{e}"
    );
    assert!(matches!(e.problem(), Some(Problem::BadRegex { pattern, .. }) if pattern == "("));

    let text = format!(
        "{BASE}[[route]]\nname = \"r\"\npattern = \"1\"\nexcept = [\"a\", \"[z-a]\"]\ntrunks = [\"gw1\"]\n"
    );
    let e = load(&text).unwrap_err().to_string();
    assert!(
        e.starts_with(r#"test.toml:15: route[0].except[1]: invalid regex "[z-a]""#),
        "{e}"
    );

    let e = error_of(
        "[[trunk]]\nname = \"x\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\ncalled_out = [\n  { pattern = \"^0\", replace = \"\" },\n  { pattern = \"+\", replace = \"\" },\n]\n",
    );
    assert!(
        e.starts_with(r#"test.toml:18: trunk[2].called_out[1].pattern: invalid regex "+""#),
        "{e}"
    );
}

#[test]
fn replacement_referring_to_missing_group() {
    let e = error_of(
        "[[trunk]]\nname = \"x\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\nnormalize = [{ pattern = '^0(\\d+)', replace = '+49$2' }]\n",
    );
    assert_eq!(
        e,
        r#"test.toml:16: trunk[2].normalize[0].replace: replacement "+49$2" refers to group $2, which the pattern does not have"#
    );
    // `$1x` is group "1x" in regex syntax: caught too.
    let e = error_of(
        "[[trunk]]\nname = \"x\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\ncalling_out = [{ pattern = '^0(\\d+)', replace = '$1x' }]\n",
    );
    assert!(
        e.contains("calling_out[0].replace") && e.contains("group $1x"),
        "{e}"
    );
    // Named groups, braces and `$$` are fine.
    let ok = "[[trunk]]\nname = \"x\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\nnormalize = [{ pattern = '^0(?P<n>\\d+)', replace = '$$${n}${1}$0' }]\n";
    load(&format!("{BASE}{ok}{ROUTE}")).unwrap();
}

#[test]
fn ports_out_of_range() {
    let trunk = |port: &str| {
        error_of(&format!(
            "[[trunk]]\nname = \"x\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\nport = {port}\n"
        ))
    };
    assert_eq!(
        trunk("0"),
        "test.toml:16: trunk[2].port: port 0 out of range 1-65535"
    );
    assert_eq!(
        trunk("65536"),
        "test.toml:16: trunk[2].port: port 65536 out of range 1-65535"
    );
    assert_eq!(
        trunk("-1"),
        "test.toml:16: trunk[2].port: port -1 out of range 1-65535"
    );
    let e = load("[node]\nadvertised_address = \"pool.example:70000\"\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "test.toml:2: node.advertised_address: port 70000 out of range 1-65535"
    );
    let e = load("[node]\nadvertised_address = \"pool.example\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(r#"test.toml:2: node.advertised_address: invalid address "pool.example""#),
        "{e}"
    );
    let e = load("[node]\nadvertised_address = \"::1:5060\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("test.toml:2: node.advertised_address: invalid address"),
        "{e}"
    );
}

#[test]
fn failover_and_response_codes_out_of_range() {
    let trunk = |line: &str| {
        error_of(&format!(
            "[[trunk]]\nname = \"x\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\n{line}\n"
        ))
    };
    assert_eq!(
        trunk("failover_codes = [503, 200]"),
        "test.toml:16: trunk[2].failover_codes[1]: response code 200 out of range 300-699"
    );
    assert_eq!(
        trunk("failover_codes = [\n  503,\n  700,\n]"),
        "test.toml:18: trunk[2].failover_codes[1]: response code 700 out of range 300-699"
    );
    assert_eq!(
        trunk("response_map = [{ from = 486, to = 180 }]"),
        "test.toml:16: trunk[2].response_map[0].to: response code 180 out of range 300-699"
    );
    assert_eq!(
        trunk("response_map = [{ from = 486, to = 480 }, { from = 486, to = 404 }]"),
        "test.toml:16: trunk[2].response_map[1].from: response code 486 is mapped twice"
    );
}

#[test]
fn tls_trunks_and_their_fields() {
    let tls = "[[trunk]]\nname = \"fe\"\naddress = \"10.0.1.2\"\nside = \"internal\"\ntransport = \"tls\"\n";
    let config = load(&format!(
        "{BASE}{tls}tls_client_names = [\"fe.example.com\"]\ntls_ca = \"/etc/ca.pem\"\n{ROUTE}"
    ))
    .unwrap();
    let fe = config.trunks.iter().find(|t| t.name == "fe").unwrap();
    assert_eq!((fe.transport, fe.port), (Transport::Tls, 5061));
    assert!(fe.tls.requires_client_cert());
    assert_eq!(fe.tls.ca.as_deref(), Some("/etc/ca.pem"));
    let e = error_of(
        "[[trunk]]\nname = \"x\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\ntls_ca = \"/x.pem\"\n",
    );
    assert_eq!(
        e,
        r#"test.toml:16: trunk[2].tls_ca: only for a trunk with transport = "tls""#
    );
    let e = error_of(
        "[[trunk]]\nname = \"x\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\ntransport = \"sctp\"\n",
    );
    assert!(
        e.starts_with("test.toml:16: trunk[2].transport: unknown variant `sctp`"),
        "{e}"
    );
}

#[test]
fn numeric_ranges() {
    let trunk = |line: &str| {
        error_of(&format!(
            "[[trunk]]\nname = \"x\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\n{line}\n"
        ))
    };
    assert_eq!(
        trunk("weight = 0"),
        "test.toml:16: trunk[2].weight: 0 out of range 1-1000000"
    );
    assert_eq!(
        trunk("down_after = 0"),
        "test.toml:16: trunk[2].down_after: 0 out of range 1-1000"
    );
    assert_eq!(
        trunk("up_after = -2"),
        "test.toml:16: trunk[2].up_after: -2 out of range 1-1000"
    );
    assert_eq!(
        trunk("max_calls = 0"),
        "test.toml:16: trunk[2].max_calls: 0 out of range 1-10000000"
    );
    assert_eq!(
        trunk("max_cps = 0"),
        "test.toml:16: trunk[2].max_cps: 0 out of range 1-1000000"
    );
    assert_eq!(
        trunk("rate = 0"),
        "test.toml:16: trunk[2].rate: 0 out of range 1-1000000"
    );
    assert_eq!(
        trunk("burst = 2000000"),
        "test.toml:16: trunk[2].burst: 2000000 out of range 1-1000000"
    );
    assert_eq!(
        trunk("min_se = 30"),
        "test.toml:16: trunk[2].min_se: 30 out of range 90-86400"
    );
    assert_eq!(
        trunk("fast_failover_ms = 700000"),
        "test.toml:16: trunk[2].fast_failover_ms: 700000 out of range 0-600000"
    );
    assert_eq!(
        trunk("options_interval_ms = -1"),
        "test.toml:16: trunk[2].options_interval_ms: -1 out of range 0-3600000"
    );
    assert_eq!(
        trunk("session_expires = 100\nmin_se = 120"),
        "test.toml:16: trunk[2].session_expires: session_expires 100 is below min_se 120"
    );
    let e = load("[node]\nmax_tries = 0\n").unwrap_err().to_string();
    assert_eq!(e, "test.toml:2: node.max_tries: 0 out of range 1-32");
    let e = load("\n[node]\nretry_after = 0\n").unwrap_err().to_string();
    assert_eq!(e, "test.toml:3: node.retry_after: 0 out of range 1-86400");
    let e = load("[node]\nmax_calls = 99999999999\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "test.toml:2: node.max_calls: 99999999999 out of range 1-10000000"
    );
}

#[test]
fn priority_on_a_trunk_is_explained() {
    let e = error_of(
        "[[trunk]]\nname = \"x\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\npriority = 1\n",
    );
    assert!(
        e.starts_with("test.toml:16: trunk[2].priority: priority is set per route"),
        "{e}"
    );
}

#[test]
fn addresses_and_names() {
    let trunk = |addr: &str| {
        error_of(&format!(
            "[[trunk]]\nname = \"x\"\naddress = \"{addr}\"\nside = \"gateway\"\n"
        ))
    };
    assert_eq!(
        trunk("10.0.0.300"),
        r#"test.toml:14: trunk[2].address: invalid address "10.0.0.300": expected an IP address or a host name"#
    );
    assert!(trunk("bad host").contains("invalid address"));
    assert!(trunk("").contains("trunk[2].address: invalid address"));
    let e = error_of("[[trunk]]\nname = \"\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\n");
    assert_eq!(e, "test.toml:13: trunk[2].name: must not be empty");
    // Bracketed IPv6 and a trailing-dot FQDN are fine.
    for addr in [
        "[2001:db8::1]",
        "2001:db8::2",
        "gw-1.example.net.",
        "localhost",
    ] {
        let extra = format!("[[trunk]]\nname = \"x\"\naddress = \"{addr}\"\nside = \"gateway\"\n");
        load(&format!("{BASE}{extra}{ROUTE}")).unwrap();
    }
}

#[test]
fn ambiguous_sources_are_refused() {
    // A second trunk on the pbx's address with any port.
    let e = error_of(
        "[[trunk]]\nname = \"pbx2\"\naddress = \"10.0.0.1\"\nport = 5070\nside = \"internal\"\n",
    );
    assert_eq!(
        e,
        r#"test.toml:14: trunk[2].address: trunk "pbx" already matches requests from 10.0.0.1 (any port)"#
    );
    // Same address and port as gw1.
    let e = error_of(
        "[[trunk]]\nname = \"gw1b\"\naddress = \"10.0.1.1\"\nside = \"gateway\"\ntransport = \"tcp\"\n",
    );
    assert_eq!(
        e,
        r#"test.toml:14: trunk[2].address: trunk "gw1" already matches requests from 10.0.1.1:5060"#
    );
    // Same address, other port, not any-port: fine.
    let extra =
        "[[trunk]]\nname = \"gw1b\"\naddress = \"10.0.1.1\"\nport = 5070\nside = \"gateway\"\n";
    load(&format!("{BASE}{extra}{ROUTE}")).unwrap();
}

#[test]
fn usages_must_exist() {
    let e = error_of(
        "[[trunk]]\nname = \"x\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\nusages = [\"local\", \"intl\"]\n",
    );
    assert_eq!(
        e,
        r#"test.toml:16: trunk[2].usages[0]: usage "local" is not the usage of any route"#
    );
    assert_eq!(
        problem_of(&format!(
            "{BASE}[[route]]\nname = \"r\"\npattern = \"x\"\nusage = \"\"\ntrunks = [\"gw1\"]\n"
        )),
        Problem::Empty
    );
}

#[test]
fn read_error_names_the_file() {
    let e = PoolConfig::load("/nonexistent/medpool.toml").unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }));
    assert!(
        e.to_string()
            .starts_with("/nonexistent/medpool.toml: cannot read: "),
        "{e}"
    );
    assert!(e.location().is_none());
}

#[test]
fn media_keys_default_to_relay_the_offers_codecs_and_60_s() {
    let c = load(&format!("{BASE}{ROUTE}")).unwrap();
    let gw1 = c.trunk("gw1").unwrap();
    assert_eq!(gw1.media, MediaMode::Relay);
    assert!(gw1.codecs.is_empty());
    assert_eq!(
        gw1.media_timeout(),
        Some(std::time::Duration::from_secs(60))
    );
    let c = load(&format!(
        "{BASE}[[trunk]]\nname = \"gw2\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\nmedia = \"bypass\"\ncodecs = [\"PCMU\", \"pcma\"]\nmedia_timeout = 0\n{ROUTE}"
    ))
    .unwrap();
    let gw2 = c.trunk("gw2").unwrap();
    assert_eq!(gw2.media, MediaMode::Bypass);
    assert_eq!(gw2.codecs, ["PCMU", "pcma"]);
    assert_eq!(gw2.media_timeout(), None);
    assert_eq!(gw1.encryption, crate::config::Encryption::None);
    for (text, want) in [
        ("required", crate::config::Encryption::Required),
        ("optional", crate::config::Encryption::Optional),
        ("none", crate::config::Encryption::None),
    ] {
        let c = load(&format!(
            "{BASE}[[trunk]]\nname = \"gw2\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\nencryption = \"{text}\"\n{ROUTE}"
        ))
        .unwrap();
        assert_eq!(c.trunk("gw2").unwrap().encryption, want);
    }
}

#[test]
fn bad_media_keys_are_named() {
    let trunk = "[[trunk]]\nname = \"gw2\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\n";
    let e = error_of(&format!("{trunk}media = \"anchor\"\n"));
    assert!(e.starts_with("test.toml:16: trunk[2].media: "), "{e}");
    let e = error_of(&format!("{trunk}codecs = [\"PCMU\", \"PCMU/8000\"]\n"));
    assert!(
        e.starts_with("test.toml:16: trunk[2].codecs[1]: invalid codec \"PCMU/8000\""),
        "{e}"
    );
    let e = error_of(&format!("{trunk}codecs = [\"PCMU\", \"pcmu\"]\n"));
    assert!(
        e.starts_with("test.toml:16: trunk[2].codecs[1]: codec \"pcmu\" is listed twice"),
        "{e}"
    );
    let e = error_of(&format!("{trunk}codecs = [\"\"]\n"));
    assert!(e.starts_with("test.toml:16: trunk[2].codecs[0]: "), "{e}");
    let e = error_of(&format!("{trunk}encryption = \"srtp\"\n"));
    assert!(e.starts_with("test.toml:16: trunk[2].encryption: "), "{e}");
    let e = error_of(&format!("{trunk}media_timeout = -1\n"));
    assert!(
        e.starts_with("test.toml:16: trunk[2].media_timeout: -1 out of range 0-86400"),
        "{e}"
    );
}

#[test]
fn a_host_name_is_looked_up_as_much_as_the_trunk_leaves_open() {
    let lookup = |extra: &str| {
        let text = format!(
            "{BASE}[[trunk]]\nname = \"x\"\naddress = \"sbc.example.net\"\nside = \"gateway\"\n{extra}\n{ROUTE}"
        );
        load(&text).unwrap().trunk("x").unwrap().lookup
    };
    assert_eq!(lookup(""), Lookup::Naptr, "no port, no transport: NAPTR");
    assert_eq!(lookup("transport = \"tcp\""), Lookup::Srv);
    assert_eq!(lookup("port = 5080"), Lookup::Address, "RFC 3263 §4.2");
    assert_eq!(lookup("port = 5080\ntransport = \"tcp\""), Lookup::Address);
    let c = load(&format!("{BASE}{ROUTE}")).unwrap();
    assert_eq!(c.trunk("gw1").unwrap().lookup, Lookup::Literal);
    assert_eq!(
        c.node.dns_stale_max,
        NodeSettings::DEFAULT_DNS_STALE_MAX,
        "one hour unless set"
    );
}

#[test]
fn local_calls_is_on_unless_set_and_a_record_without_it_reads_as_on() {
    assert!(load("").unwrap().node.local_calls);
    assert!(
        !load("[node]\nlocal_calls = false\n")
            .unwrap()
            .node
            .local_calls
    );
    let e = load("[node]\nlocal_calls = 1\n").unwrap_err().to_string();
    assert!(e.starts_with("test.toml:2: node.local_calls:"), "{e}");
    // The replicated copy a node of the previous version wrote has no such key.
    let mut v = serde_json::to_value(NodeSettings::default()).unwrap();
    v.as_object_mut().unwrap().remove("local_calls");
    let old: NodeSettings = serde_json::from_value(v).unwrap();
    assert!(old.local_calls);
}

#[test]
fn dns_stale_max_is_bounded_and_named() {
    let c = load("[node]\ndns_stale_max = 0\n").unwrap();
    assert_eq!(c.node.dns_stale_max, 0);
    let e = load("[node]\ndns_stale_max = 700000\n")
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "test.toml:2: node.dns_stale_max: 700000 out of range 0-604800"
    );
}

#[test]
fn a_trunk_port_is_read_and_defaults_to_none() {
    let extra = "[[trunk]]\nname = \"gw2\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\n\
                 local_port = 5071\nlocal_address = \"192.0.2.5\"\n";
    let config = load(&format!("{BASE}{extra}{ROUTE}")).unwrap();
    let gw2 = config.trunk("gw2").unwrap();
    assert_eq!(gw2.local_port, Some(5071));
    assert_eq!(gw2.local_address, Some("192.0.2.5".parse().unwrap()));
    let gw1 = config.trunk("gw1").unwrap();
    assert_eq!((gw1.local_port, gw1.local_address), (None, None));
}

#[test]
fn bad_trunk_ports_are_named() {
    let trunk = |keys: &str| {
        format!("[[trunk]]\nname = \"gw2\"\naddress = \"10.0.1.2\"\nside = \"gateway\"\n{keys}\n")
    };
    let e = error_of(&trunk("local_port = 0"));
    assert!(e.contains("trunk[2].local_port: "), "{e}");
    let e = error_of(&trunk("local_port = 70000"));
    assert!(e.contains("trunk[2].local_port: "), "{e}");
    let e = error_of(&trunk("local_address = \"192.0.2.5\""));
    assert!(
        e.ends_with("trunk[2].local_address: local_address needs a local_port"),
        "{e}"
    );
    for bad in ["0.0.0.0", "sbc.example.net", "224.0.0.1"] {
        let e = error_of(&trunk(&format!(
            "local_port = 5071\nlocal_address = \"{bad}\""
        )));
        assert!(e.contains("trunk[2].local_address: "), "{bad}: {e}");
    }
    // One port per trunk.
    let two = format!(
        "{}[[trunk]]\nname = \"gw3\"\naddress = \"10.0.1.3\"\nside = \"gateway\"\nlocal_port = 5071\n",
        trunk("local_port = 5071")
    );
    let e = error_of(&two);
    assert!(
        e.ends_with(
            r#"trunk[3].local_port: local port 5071 is already trunk "gw2"'s (one port per trunk)"#
        ),
        "{e}"
    );
}
