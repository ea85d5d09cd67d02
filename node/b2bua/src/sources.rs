//! The SIP front door's source policy from the pool configuration: every trunk written with an IP
//! literal is a known source (its exact `ip:port`, and its IP on any port when `match_any_port`),
//! with the trunk's `rate`/`burst` as the budget of new requests per source address; trusted
//! forwarders pass without a budget; everyone else gets `[node] unknown_source`. The transports
//! read it on the receive path ([`medpool_sip::transport::gate`]); this module only builds it.

use std::net::{IpAddr, SocketAddr};

use medpool_sip::transport::gate::{Budget, SourcePolicy, UnknownPolicy};

use crate::config::{PoolConfig, UnknownSource};

/// The source policy of `config`, with `trusted_forwarders` passing unlimited.
pub fn source_policy(config: &PoolConfig, trusted_forwarders: &[IpAddr]) -> SourcePolicy {
    let mut policy = SourcePolicy::closed(match config.node.unknown_source {
        UnknownSource::Drop => UnknownPolicy::Drop,
        UnknownSource::Reject => UnknownPolicy::Reject,
    });
    for t in &config.trunks {
        let Some(ip) = t.address.ip() else {
            continue;
        };
        let budget = Budget {
            rate: t.rate,
            burst: t.burst,
        };
        policy.add_exact(SocketAddr::new(ip, t.port), budget);
        if t.match_any_port {
            policy.add_any_port(ip, budget);
        }
    }
    for ip in trusted_forwarders {
        policy.add_unlimited(*ip);
    }
    policy
}

/// The addresses the SIP TCP door gives a connection cap of their own, outside the budget unknown
/// addresses share: the trunks' IPs (a trunk named by host name is not listed) and the trusted
/// forwarders (a balancer carries many callers' connections). The resolved addresses of trunks
/// named by DNS are added by the caller (`dns_sync`).
pub(crate) fn listed_ips(
    trunks: &[crate::config::Trunk],
    forwarders: &[std::net::IpAddr],
) -> Vec<std::net::IpAddr> {
    trunks
        .iter()
        .filter_map(|t| t.address.ip())
        .chain(forwarders.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use medpool_sip::transport::gate::SourceClass;

    use super::*;

    const CONFIG: &str = r#"
[node]
unknown_source = "drop"

[[trunk]]
name = "pbx"
address = "10.0.0.1"
port = 5070
side = "internal"
rate = 7
burst = 9

[[trunk]]
name = "gw1"
address = "10.0.0.21"
side = "gateway"

[[trunk]]
name = "named"
address = "gw.example.net"
side = "gateway"
"#;

    #[test]
    fn every_trunk_with_an_ip_is_a_known_source_with_its_budget() {
        let config = PoolConfig::from_toml_str(CONFIG, "t.toml").unwrap();
        let fwd: IpAddr = "10.0.0.9".parse().unwrap();
        let p = source_policy(&config, &[fwd]);
        let class = |s: &str| p.classify(s.parse().unwrap());
        let SourceClass::Known(pbx) = class("10.0.0.1:40000") else {
            panic!("the internal trunk matches any port");
        };
        assert_eq!(p.budget(pbx), Some(Budget { rate: 7, burst: 9 }));
        assert!(matches!(class("10.0.0.21:5060"), SourceClass::Known(_)));
        assert_eq!(
            class("10.0.0.21:5061"),
            SourceClass::Unknown(UnknownPolicy::Drop),
            "a gateway only from its own port"
        );
        assert_eq!(class("10.0.0.9:1234"), SourceClass::Unlimited);
        assert_eq!(
            class("192.0.2.1:5060"),
            SourceClass::Unknown(UnknownPolicy::Drop)
        );
    }
}
