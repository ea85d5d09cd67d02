//! Tests of the DNS trunk directory: answers, targets in RFC 2782 order, binding, health through
//! targets, and the sources a resolved trunk adds to the source gate.

use std::sync::atomic::Ordering;

use medpool_sip::transport::gate::{SourceClass, UnknownPolicy};

use super::*;
use crate::fixtures::{load, mutual_tls_trunk_named_by_dns, trunk};

/// `pbx` and `gw` (IPs), `sbc` and `any` (named by DNS; `any` from any port), and a route over `sbc`
/// and `gw`.
fn config_text() -> String {
    [
        trunk("pbx", "10.0.0.1", "internal", &[]),
        trunk("sbc", "sbc.example.net", "gateway", &[]),
        trunk(
            "any",
            "any.example.net",
            "gateway",
            &["match_any_port = true"],
        ),
        trunk("gw", "10.0.1.1", "gateway", &[]),
        "\n[[route]]\nname = \"out\"\npattern = \".*\"\ntrunks = [\"sbc\", \"gw\"]\n".to_owned(),
    ]
    .concat()
}

fn target(ip: &str, port: u16, priority: u16) -> Target {
    Target {
        host: format!("h{priority}.example.net"),
        addr: SocketAddr::new(ip.parse().unwrap(), port),
        transport: Transport::Udp,
        priority,
        weight: 10,
    }
}

/// A directory where `sbc` resolved to `targets` (and `any` to 10.0.9.9:5060).
fn directory(config: &PoolConfig, targets: Vec<Target>) -> Directory {
    let dir = Directory::new(Err("no resolver in unit tests".into()));
    for (name, answer) in [("sbc", targets), ("any", vec![target("10.0.9.9", 5060, 1)])] {
        dir.set_answer(config.trunk(name).unwrap(), answer);
    }
    dir
}

fn candidate(trunk: &str, priority: u32) -> Candidate {
    Candidate {
        trunk: trunk.into(),
        priority,
        up: true,
        resolved: None,
    }
}

fn config() -> PoolConfig {
    load(&config_text())
}

#[test]
fn a_trunk_named_by_dns_becomes_its_targets_in_srv_order_up_first() {
    let config = config();
    let dir = directory(
        &config,
        vec![
            target("10.0.2.2", 5070, 20),
            target("10.0.2.1", 5070, 10),
            target("10.0.2.3", 5070, 30),
        ],
    );
    let plan = vec![candidate("sbc", 1), candidate("gw", 2)];
    let addrs = |plan: &[Candidate]| -> Vec<String> {
        plan.iter()
            .map(|c| match c.resolved {
                Some(r) => r.addr.to_string(),
                None => c.trunk.clone(),
            })
            .collect()
    };
    assert_eq!(
        addrs(&dir.expand(plan.clone(), 1, 10)),
        ["10.0.2.1:5070", "10.0.2.2:5070", "10.0.2.3:5070", "gw"]
    );
    assert_eq!(
        addrs(&dir.expand(plan.clone(), 1, 2)),
        ["10.0.2.1:5070", "10.0.2.2:5070"],
        "each target is one of max_tries"
    );
    // The first target goes down: it is tried last among the trunk's targets.
    let first = dir
        .view("sbc")
        .unwrap()
        .targets
        .into_iter()
        .find(|t| t.target.priority == 10)
        .unwrap()
        .health;
    assert_eq!(
        first.name, "sbc@10.0.2.1:5070",
        "a prober's name says trunk and target"
    );
    first.up.store(false, Ordering::Relaxed);
    let expanded = dir.expand(plan, 1, 10);
    assert_eq!(
        addrs(&expanded),
        ["10.0.2.2:5070", "10.0.2.3:5070", "10.0.2.1:5070", "gw"]
    );
    assert!(!expanded[2].up);
    // The trunk is up while any target is.
    let health = WithTargets {
        gateways: &crate::gateways::Gateways::default(),
        dns: &dir,
    };
    assert!(health.view("sbc").up);
}

#[test]
fn an_attempt_is_bound_to_its_target_or_says_why_not() {
    let config = config();
    let dir = directory(&config, vec![target("10.0.2.1", 5070, 10)]);
    let sbc = config.trunk("sbc").unwrap();
    let expanded = dir.expand(vec![candidate("sbc", 1)], 7, 5);
    let bound = dir.bind(sbc, &expanded[0]).unwrap();
    assert_eq!(bound.address, PeerAddress::Ip("10.0.2.1".parse().unwrap()));
    assert_eq!((bound.port, bound.transport), (5070, Transport::Udp));
    assert_eq!(bound.name, "sbc", "capacity and history stay the trunk's");
    let gw = config.trunk("gw").unwrap();
    assert_eq!(dir.bind(gw, &candidate("gw", 2)).unwrap(), *gw);
    // The name stops resolving: the trunk stays in the plan without an address, and binding
    // it says why.
    let gone = LookupError::NotFound {
        name: "sbc.example.net".into(),
    };
    dir.publish(sbc, Outcome::Failed(gone.clone()), Instant::now());
    let expanded = dir.expand(vec![candidate("sbc", 1)], 7, 5);
    assert_eq!(expanded, [candidate("sbc", 1)]);
    assert_eq!(dir.bind(sbc, &expanded[0]), Err(Unbound::Unresolved(gone)));
    assert!(dir.view("sbc").unwrap().targets.is_empty());
    assert!(
        dir.bind(sbc, &expanded[0])
            .unwrap_err()
            .to_string()
            .starts_with("DNS name unresolved: sbc.example.net"),
    );
}

#[test]
fn a_refresh_keeps_the_health_of_targets_that_stay_and_drops_the_others() {
    let config = config();
    let dir = directory(
        &config,
        vec![target("10.0.2.1", 5070, 10), target("10.0.2.2", 5070, 20)],
    );
    let before = dir.view("sbc").unwrap().targets;
    let mut changes = dir.subscribe();
    changes.borrow_and_update();
    dir.publish(
        config.trunk("sbc").unwrap(),
        Outcome::Answer {
            value: vec![target("10.0.2.2", 5070, 20), target("10.0.2.3", 5070, 30)],
            ttl: Duration::from_secs(60),
        },
        Instant::now(),
    );
    assert!(changes.has_changed().unwrap(), "a new answer is announced");
    let after = dir.view("sbc").unwrap().targets;
    assert_eq!(after.len(), 2);
    assert!(
        Arc::ptr_eq(&before[1].health, &after[0].health),
        "10.0.2.2 kept"
    );
    assert_eq!(after[1].target.addr.to_string(), "10.0.2.3:5070");
    assert!(dir.ips().iter().all(|ip| ip.to_string() != "10.0.2.1"));
}

#[tokio::test]
async fn changed_probing_settings_give_the_targets_new_probers_and_the_same_answer() {
    let config = config();
    let dir = Arc::new(Directory::new(Err("no resolver in unit tests".into())));
    dir.reconcile(&config);
    let sbc = config.trunk("sbc").unwrap();
    dir.set_answer(sbc, vec![target("10.0.2.1", 5070, 10)]);
    let before = dir.view("sbc").unwrap().targets[0].health.clone();
    dir.reconcile(&config);
    let same = dir.view("sbc").unwrap().targets[0].health.clone();
    assert!(Arc::ptr_eq(&before, &same), "nothing changed: same prober");
    let text = config_text().replace(
        "name = \"sbc\"\naddress = \"sbc.example.net\"\n",
        "name = \"sbc\"\naddress = \"sbc.example.net\"\noptions_interval_ms = 700\n",
    );
    let changed = load(&text);
    assert_ne!(changed.trunk("sbc"), config.trunk("sbc"));
    dir.reconcile(&changed);
    let view = dir.view("sbc").unwrap();
    assert_eq!(view.targets.len(), 1, "the answer is kept");
    assert!(
        !Arc::ptr_eq(&before, &view.targets[0].health),
        "a new handle"
    );
    // A trunk that now has an IP literal is forgotten.
    let literal = load(&config_text().replace("\"sbc.example.net\"", "\"10.0.3.3\""));
    dir.reconcile(&literal);
    assert!(dir.view("sbc").is_none());
    dir.stop();
}

#[test]
fn every_resolved_address_is_the_trunks_source() {
    let config = config();
    let dir = directory(
        &config,
        vec![target("10.0.2.1", 5070, 10), target("10.0.2.2", 5080, 20)],
    );
    let src = |s: &str| {
        let a: SocketAddr = s.parse().unwrap();
        dir.trunk_for_source(&config, a.ip(), a.port())
            .map(|t| t.name.as_str())
    };
    assert_eq!(src("10.0.2.2:5080"), Some("sbc"), "the second target");
    assert_eq!(src("10.0.2.1:5070"), Some("sbc"));
    assert_eq!(
        src("10.0.2.1:5071"),
        None,
        "a gateway only from its own port"
    );
    assert_eq!(src("10.0.9.9:40000"), Some("any"), "match_any_port");
    assert_eq!(
        src("10.0.0.1:40000"),
        Some("pbx"),
        "literal trunks as before"
    );
    assert_eq!(
        dir.trunk_of_ip(&config, "10.0.2.2".parse().unwrap()),
        Some("sbc")
    );
    let mut policy = crate::sources::source_policy(&config, &[]);
    dir.add_sources(&config, &mut policy);
    let class = |s: &str| policy.classify(s.parse().unwrap());
    assert!(matches!(class("10.0.2.2:5080"), SourceClass::Known(_)));
    assert!(matches!(class("10.0.9.9:1234"), SourceClass::Known(_)));
    assert_eq!(
        class("10.0.2.2:5081"),
        SourceClass::Unknown(UnknownPolicy::Reject)
    );
}

/// A trunk named by DNS that requires a client certificate: its resolved addresses are no
/// known source (served only over mutual TLS, checked by the TLS door), while its trunk is
/// still found for a request that passed that door.
#[test]
fn a_mutual_tls_trunk_named_by_dns_is_no_source_by_address() {
    let config = load(&mutual_tls_trunk_named_by_dns(&["match_any_port = true"]));
    let dir = Directory::new(Err("no resolver in unit tests".into()));
    dir.set_answer(
        config.trunk("fe-pool").unwrap(),
        vec![target("10.0.7.1", 5061, 10)],
    );
    let mut policy = crate::sources::source_policy(&config, &[]);
    dir.add_sources(&config, &mut policy);
    assert!(
        !matches!(
            policy.classify("10.0.7.1:5061".parse().unwrap()),
            SourceClass::Known(_)
        ),
        "its address alone is not enough"
    );
    assert_eq!(
        dir.trunk_for_source(&config, "10.0.7.1".parse().unwrap(), 40000)
            .map(|t| t.name.as_str()),
        Some("fe-pool")
    );
    assert_eq!(dir.resolved_sources(&config).len(), 1);
}
