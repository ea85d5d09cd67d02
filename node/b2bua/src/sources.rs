//! The SIP front door's source policy from the pool configuration: every trunk written with an IP
//! literal is a known source (its exact `ip:port`, and its IP on any port when `match_any_port`),
//! with the trunk's `rate`/`burst` as the budget of new requests per source address; trusted
//! forwarders pass without a budget; everyone else gets `[node] unknown_source`. The transports
//! read it on the receive path ([`medpool_sip::transport::gate`]); this module only builds it.
//!
//! A trunk that requires a client certificate (mutual TLS, [`crate::config::TrunkTls`]) is no
//! known source by address: its IP is served only over TLS, and only when the connection's
//! certificate meets the trunk's rule ([`client_rules`]; checked by the TLS door). Its requests
//! over UDP or TCP are from an unknown source.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use medpool_sip::transport::tls::{ClientRule, TlsPeer};

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
        if t.tls.requires_client_cert() {
            continue;
        }
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

/// How the TLS door treats the trunks that speak TLS: (destination → how its server certificate
/// is verified), (IP → trunk name) as the label of handshakes, and (IP → client-certificate rule)
/// for those that require one — for the trunks written with an IP literal and, from `resolved`,
/// every address a trunk named by DNS resolved to (so a mutual-TLS trunk named by DNS is
/// recognised only with its certificate too, never by address alone). A rule whose CA file
/// cannot be read now is left out and logged: that trunk's address is then not served at all (it
/// is in no source policy either), failing closed.
pub fn tls_view(
    config: &PoolConfig,
    default_ca: Option<&std::path::Path>,
    resolved: &[(&crate::config::Trunk, SocketAddr)],
) -> TlsView {
    let mut view = TlsView::default();
    let literal = config
        .trunks
        .iter()
        .filter_map(|t| t.address.ip().map(|ip| (t, SocketAddr::new(ip, t.port))));
    for (t, addr) in literal.chain(resolved.iter().copied()) {
        if t.transport != crate::config::Transport::Tls {
            continue;
        }
        view.add(t, addr, default_ca);
    }
    view
}

impl TlsView {
    fn add(
        &mut self,
        t: &crate::config::Trunk,
        addr: SocketAddr,
        default_ca: Option<&std::path::Path>,
    ) {
        let ip = addr.ip();
        // The name its certificate must carry: `tls_name`, else the host name it is written with,
        // else its IP.
        let name = t.tls.name.clone().unwrap_or_else(|| t.address.to_string());
        match medpool_sip::transport::tls::ServerName::try_from(name) {
            Ok(name) => self.peers.push((
                addr,
                TlsPeer {
                    name,
                    ca: t.tls.ca.as_ref().map(std::path::PathBuf::from),
                    label: t.name.clone(),
                },
            )),
            Err(e) => tracing::error!(trunk = %t.name, error = %e, "tls_name is no usable name"),
        }
        self.labels.push((ip, t.name.clone()));
        if !t.tls.requires_client_cert() {
            return;
        }
        let ca = t
            .tls
            .client_ca
            .as_ref()
            .or(t.tls.ca.as_ref())
            .map(std::path::PathBuf::from)
            .or_else(|| default_ca.map(std::path::Path::to_path_buf));
        let Some(ca) = ca else {
            tracing::error!(trunk = %t.name, "no CA for its client certificates (tls_client_ca, tls_ca or --sip-tls-ca): nobody is served as this trunk");
            self.rules.push((ip, None));
            return;
        };
        match ClientRule::new(ca, t.tls.client_names.clone()) {
            Ok(r) => self.rules.push((ip, Some(Arc::new(r)))),
            Err(e) => {
                tracing::error!(trunk = %t.name, error = %e, "its client CA cannot be used: nobody is served as this trunk");
                self.rules.push((ip, None));
            }
        }
    }
}

/// What [`tls_view`] finds.
#[derive(Debug, Default)]
pub struct TlsView {
    /// How each TLS trunk's server certificate is verified, by its address.
    pub peers: Vec<(SocketAddr, TlsPeer)>,
    /// Trunk names by IP, the labels of handshakes.
    pub labels: Vec<(IpAddr, String)>,
    /// Client-certificate rules by IP (`None`: a rule that could not be built: nobody passes).
    pub rules: Vec<(IpAddr, Option<Arc<ClientRule>>)>,
}

impl TlsView {
    /// Hands it to the TLS door.
    pub fn apply(self, side: &medpool_sip::transport::tls::TlsSide) {
        side.set_peers(self.peers, self.labels);
        // A rule that could not be built still lists its IP, with a rule nobody meets.
        let unusable = Arc::new(ClientRule::nobody());
        side.set_client_rules(
            self.rules
                .into_iter()
                .map(|(ip, r)| (ip, r.unwrap_or_else(|| unusable.clone()))),
        );
    }
}

#[cfg(test)]
mod tests {
    use medpool_sip::transport::gate::SourceClass;

    use super::*;
    use crate::fixtures::{load, mutual_tls_trunk_named_by_dns, trunk};

    /// Unknown sources dropped; `pbx` (port 5070, rate 7, burst 9), `gw1`, and `named` (by DNS).
    fn config_text() -> String {
        [
            "[node]\nunknown_source = \"drop\"\n".to_owned(),
            trunk(
                "pbx",
                "10.0.0.1",
                "internal",
                &["port = 5070", "rate = 7", "burst = 9"],
            ),
            trunk("gw1", "10.0.0.21", "gateway", &[]),
            trunk("named", "gw.example.net", "gateway", &[]),
        ]
        .concat()
    }

    #[test]
    fn every_trunk_with_an_ip_is_a_known_source_with_its_budget() {
        let config = load(&config_text());
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

    #[test]
    fn a_mutual_tls_trunk_is_no_source_by_address_and_gets_a_client_rule() {
        let tls = "transport = \"tls\"";
        let config = load(
            &[
                "[node]\nunknown_source = \"reject\"\n".to_owned(),
                trunk(
                    "fe",
                    "10.0.0.5",
                    "internal",
                    &[tls, "tls_client_names = [\"fe.example.com\"]"],
                ),
                trunk(
                    "itsp",
                    "10.0.0.6",
                    "gateway",
                    &[tls, "tls_name = \"sbc.example.net\""],
                ),
            ]
            .concat(),
        );
        let p = source_policy(&config, &[]);
        assert_eq!(
            p.classify("10.0.0.5:5061".parse().unwrap()),
            SourceClass::Unknown(UnknownPolicy::Reject),
            "its address alone is not enough"
        );
        assert!(matches!(
            p.classify("10.0.0.6:5061".parse().unwrap()),
            SourceClass::Known(_)
        ));
        // No CA anywhere: the rule is there, and nobody meets it (fail closed).
        let view = tls_view(&config, None, &[]);
        assert_eq!(view.rules.len(), 1);
        assert!(view.rules[0].1.is_none());
        let (at, peer) = &view.peers[1];
        assert_eq!(*at, "10.0.0.6:5061".parse().unwrap());
        assert_eq!(peer.label, "itsp");
        assert_eq!(
            peer.name,
            medpool_sip::transport::tls::ServerName::try_from("sbc.example.net").unwrap()
        );
    }

    /// A mutual-TLS trunk named by DNS: every address it resolved to gets its client-certificate
    /// rule (never served by address alone), its label, and server verification against its host
    /// name.
    #[test]
    fn a_mutual_tls_trunk_named_by_dns_is_checked_on_every_resolved_address() {
        let config = load(&mutual_tls_trunk_named_by_dns(&[]));
        let fe = &config.trunks[0];
        let resolved: Vec<(&crate::config::Trunk, SocketAddr)> = vec![
            (fe, "10.0.7.1:5061".parse().unwrap()),
            (fe, "10.0.7.2:5061".parse().unwrap()),
        ];
        let view = tls_view(&config, None, &resolved);
        let ips: Vec<IpAddr> = view.rules.iter().map(|(ip, _)| *ip).collect();
        assert_eq!(
            ips,
            [
                "10.0.7.1".parse::<IpAddr>().unwrap(),
                "10.0.7.2".parse().unwrap()
            ]
        );
        assert!(view.labels.iter().all(|(_, l)| l == "fe-pool"));
        assert_eq!(
            view.peers[0].1.name,
            medpool_sip::transport::tls::ServerName::try_from("fepool.example.com").unwrap()
        );
    }
}
