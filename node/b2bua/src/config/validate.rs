//! From the file as written ([`super::raw`]) to the typed model ([`super::model`]): fills in
//! defaults, checks ranges, names and references, compiles regexes, and reports the first
//! problem with its line and field path.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use super::error::{ConfigError, Problem};
use super::model::{
    HostPort, Lookup, MediaMode, NodeSettings, NumberRule, PeerAddress, PoolConfig, ReferPolicy,
    ResponseRule, Route, RouteTarget, Side, Transport, Trunk, TrunkTls, UnknownSource,
};
use super::pattern::Pattern;
use super::raw::{RawConfig, RawNode, RawResponseRule, RawRoute, RawRule, RawTransport, RawTrunk};
use super::span::{Doc, FieldPath};

/// Default failover codes: Request Timeout, Service Unavailable, Server Time-out.
pub(super) const DEFAULT_FAILOVER_CODES: [u16; 3] = [408, 503, 504];

type Result<T> = std::result::Result<T, ConfigError>;

/// Validates a whole file.
pub(super) fn validate(raw: RawConfig, doc: &Doc<'_>) -> Result<PoolConfig> {
    let v = Validator { doc };
    let node = v.node(&raw.node)?;
    let trunks = v.trunks(&raw.trunk)?;
    let routes = v.routes(&raw.route, &trunks)?;
    v.usages(&trunks, &routes)?;
    Ok(PoolConfig {
        node,
        trunks,
        routes,
    })
}

struct Validator<'d, 'a> {
    doc: &'d Doc<'a>,
}

impl Validator<'_, '_> {
    fn err(&self, path: &FieldPath, problem: Problem) -> ConfigError {
        ConfigError::Invalid {
            at: self.doc.locate(path),
            problem,
        }
    }

    fn line(&self, path: &FieldPath) -> usize {
        self.doc.locate(path).line
    }

    /// `value` (or `default`) within `min..=max`.
    fn range(
        &self,
        path: &FieldPath,
        value: Option<i64>,
        default: u32,
        min: u32,
        max: u32,
    ) -> Result<u32> {
        let Some(value) = value else {
            return Ok(default);
        };
        u32::try_from(value)
            .ok()
            .filter(|v| (min..=max).contains(v))
            .ok_or_else(|| {
                self.err(
                    path,
                    Problem::OutOfRange {
                        value,
                        min: i64::from(min),
                        max: i64::from(max),
                    },
                )
            })
    }

    fn opt_range(
        &self,
        path: &FieldPath,
        value: Option<i64>,
        min: u32,
        max: u32,
    ) -> Result<Option<u32>> {
        value
            .map(|v| self.range(path, Some(v), min, min, max))
            .transpose()
    }

    fn port(&self, path: &FieldPath, value: i64) -> Result<u16> {
        u16::try_from(value)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| self.err(path, Problem::PortOutOfRange(value)))
    }

    fn failure_code(&self, path: &FieldPath, value: i64) -> Result<u16> {
        u16::try_from(value)
            .ok()
            .filter(|c| (300..=699).contains(c))
            .ok_or_else(|| self.err(path, Problem::CodeOutOfRange(value)))
    }

    fn non_empty(&self, path: &FieldPath, value: &str) -> Result<()> {
        if value.trim().is_empty() {
            Err(self.err(path, Problem::Empty))
        } else {
            Ok(())
        }
    }

    fn pattern(&self, path: &FieldPath, source: &str) -> Result<Pattern> {
        Pattern::new(source).map_err(|e| {
            self.err(
                path,
                Problem::BadRegex {
                    pattern: source.to_owned(),
                    reason: e.to_string(),
                },
            )
        })
    }

    fn node(&self, raw: &RawNode) -> Result<NodeSettings> {
        let path = FieldPath::default().k("node");
        let defaults = NodeSettings::default();
        let advertised_address = match &raw.advertised_address {
            None => None,
            Some(text) => {
                let p = path.k("advertised_address");
                let bad = || self.err(&p, Problem::BadHostPort(text.clone()));
                let (host, port) = split_host_port(text).ok_or_else(bad)?;
                let host = peer_address(host).ok_or_else(bad)?;
                let port = port.parse::<i64>().map_err(|_| bad())?;
                Some(HostPort {
                    host,
                    port: self.port(&p, port)?,
                })
            }
        };
        Ok(NodeSettings {
            max_calls: self.range(
                &path.k("max_calls"),
                raw.max_calls,
                defaults.max_calls,
                1,
                10_000_000,
            )?,
            max_tries: self.range(
                &path.k("max_tries"),
                raw.max_tries,
                defaults.max_tries,
                1,
                32,
            )?,
            unknown_source: raw.unknown_source.unwrap_or(UnknownSource::Reject),
            retry_after: self.range(
                &path.k("retry_after"),
                raw.retry_after,
                defaults.retry_after,
                1,
                86_400,
            )?,
            advertised_address,
            dns_stale_max: self.range(
                &path.k("dns_stale_max"),
                raw.dns_stale_max,
                defaults.dns_stale_max,
                0,
                604_800,
            )?,
            local_calls: raw.local_calls.unwrap_or(defaults.local_calls),
        })
    }

    fn trunks(&self, raw: &[RawTrunk]) -> Result<Vec<Trunk>> {
        let mut trunks: Vec<Trunk> = Vec::with_capacity(raw.len());
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut exact: BTreeMap<(IpAddr, u16), usize> = BTreeMap::new();
        let mut any_port: BTreeMap<IpAddr, usize> = BTreeMap::new();
        let mut local_ports: BTreeMap<u16, usize> = BTreeMap::new();
        for (i, t) in raw.iter().enumerate() {
            let path = FieldPath::default().k("trunk").i(i);
            let name_path = path.k("name");
            self.non_empty(&name_path, &t.name)?;
            if let Some(&first) = names.get(t.name.as_str()) {
                return Err(self.err(
                    &name_path,
                    Problem::DuplicateTrunk {
                        name: t.name.clone(),
                        first_line: self.line(&FieldPath::default().k("trunk").i(first).k("name")),
                    },
                ));
            }
            names.insert(&t.name, i);
            let trunk = self.trunk(&path, t)?;
            if let Some(port) = trunk.local_port
                && let Some(other) = local_ports.insert(port, i)
            {
                return Err(self.err(
                    &path.k("local_port"),
                    Problem::LocalPortTaken {
                        other: trunks[other].name.clone(),
                        port,
                    },
                ));
            }
            if let Some(ip) = trunk.address.ip() {
                let ip = ip.to_canonical();
                let clash = exact.insert((ip, trunk.port), i).map(|other| {
                    (
                        other,
                        format!(
                            "{}",
                            HostPort {
                                host: trunk.address.clone(),
                                port: trunk.port
                            }
                        ),
                    )
                });
                let clash = clash.or_else(|| {
                    if trunk.match_any_port {
                        any_port
                            .insert(ip, i)
                            .map(|other| (other, format!("{ip} (any port)")))
                    } else {
                        None
                    }
                });
                if let Some((other, source_address)) = clash {
                    return Err(self.err(
                        &path.k("address"),
                        Problem::AmbiguousSource {
                            other: trunks[other].name.clone(),
                            source_address,
                        },
                    ));
                }
            }
            trunks.push(trunk);
        }
        Ok(trunks)
    }

    fn trunk(&self, path: &FieldPath, t: &RawTrunk) -> Result<Trunk> {
        if t.priority.is_some() {
            return Err(self.err(&path.k("priority"), Problem::PriorityIsPerRoute));
        }
        let address = peer_address(&t.address)
            .ok_or_else(|| self.err(&path.k("address"), Problem::BadAddress(t.address.clone())))?;
        let transport = match t.transport {
            None | Some(RawTransport::Udp) => Transport::Udp,
            Some(RawTransport::Tcp) => Transport::Tcp,
            Some(RawTransport::Tls) => Transport::Tls,
        };
        let port = match t.port {
            None if transport == Transport::Tls => 5061,
            None => 5060,
            Some(p) => self.port(&path.k("port"), p)?,
        };
        let tls = self.trunk_tls(path, t, transport)?;
        let lookup = match (&address, t.port, t.transport) {
            (PeerAddress::Ip(_), _, _) => Lookup::Literal,
            (PeerAddress::Host(_), Some(_), _) => Lookup::Address,
            (PeerAddress::Host(_), None, Some(_)) => Lookup::Srv,
            (PeerAddress::Host(_), None, None) => Lookup::Naptr,
        };
        let gateway = t.side == Side::Gateway;
        let rate = self.range(&path.k("rate"), t.rate, Trunk::DEFAULT_RATE, 1, 1_000_000)?;
        let failover_codes = match &t.failover_codes {
            None => DEFAULT_FAILOVER_CODES.to_vec(),
            Some(codes) => codes
                .iter()
                .enumerate()
                .map(|(j, c)| self.failure_code(&path.k("failover_codes").i(j), *c))
                .collect::<Result<Vec<_>>>()?,
        };
        let min_se = self.range(&path.k("min_se"), t.min_se, 90, 90, 86_400)?;
        let session_expires =
            self.opt_range(&path.k("session_expires"), t.session_expires, 90, 86_400)?;
        if let Some(se) = session_expires
            && se < min_se
        {
            return Err(self.err(
                &path.k("session_expires"),
                Problem::SessionExpiresBelowMinSe {
                    session_expires: se,
                    min_se,
                },
            ));
        }
        let usages = match &t.usages {
            None => None,
            Some(list) => {
                for (j, u) in list.iter().enumerate() {
                    self.non_empty(&path.k("usages").i(j), u)?;
                }
                Some(list.clone())
            }
        };
        let mut mapped = BTreeSet::new();
        let mut response_map = Vec::with_capacity(t.response_map.len());
        for (j, r) in t.response_map.iter().enumerate() {
            let rule = self.response_rule(&path.k("response_map").i(j), r)?;
            if !mapped.insert(rule.from) {
                return Err(self.err(
                    &path.k("response_map").i(j).k("from"),
                    Problem::DuplicateResponseMapping(rule.from),
                ));
            }
            response_map.push(rule);
        }
        let codecs = self.codecs(&path.k("codecs"), t.codecs.as_deref().unwrap_or_default())?;
        let (local_port, local_address) = self.local(path, t)?;
        Ok(Trunk {
            name: t.name.clone(),
            address,
            port,
            transport,
            tls,
            lookup,
            side: t.side,
            match_any_port: t.match_any_port.unwrap_or(!gateway),
            max_calls: self.opt_range(&path.k("max_calls"), t.max_calls, 1, 10_000_000)?,
            max_cps: self.opt_range(&path.k("max_cps"), t.max_cps, 1, 1_000_000)?,
            rate,
            burst: self.range(&path.k("burst"), t.burst, rate, 1, 1_000_000)?,
            failover_codes,
            fast_failover_ms: self.range(
                &path.k("fast_failover_ms"),
                t.fast_failover_ms,
                10_000,
                0,
                600_000,
            )?,
            refer: t.refer.unwrap_or(ReferPolicy::Refuse),
            session_expires,
            min_se,
            forward_pai: t.forward_pai.unwrap_or(true),
            forward_history_info: t.forward_history_info.unwrap_or(true),
            options_interval_ms: self.range(
                &path.k("options_interval_ms"),
                t.options_interval_ms,
                if gateway { 5_000 } else { 0 },
                0,
                3_600_000,
            )?,
            down_after: self.range(&path.k("down_after"), t.down_after, 3, 1, 1_000)?,
            up_after: self.range(&path.k("up_after"), t.up_after, 2, 1, 1_000)?,
            weight: self.range(&path.k("weight"), t.weight, 1, 1, 1_000_000)?,
            usages,
            normalize: self.rules(&path.k("normalize"), &t.normalize)?,
            called_out: self.rules(&path.k("called_out"), &t.called_out)?,
            calling_out: self.rules(&path.k("calling_out"), &t.calling_out)?,
            response_map,
            media: t.media.unwrap_or(MediaMode::Relay),
            encryption: t.encryption.unwrap_or_default(),
            codecs,
            media_timeout: self.range(
                &path.k("media_timeout"),
                t.media_timeout,
                Trunk::DEFAULT_MEDIA_TIMEOUT,
                0,
                86_400,
            )?,
            local_port,
            local_address,
        })
    }

    /// `local_port` (a port, 1-65535) and `local_address` (an IP peers can reach, only with a
    /// `local_port`).
    fn local(&self, path: &FieldPath, t: &RawTrunk) -> Result<(Option<u16>, Option<IpAddr>)> {
        let port = match t.local_port {
            None => None,
            Some(p) => Some(self.port(&path.k("local_port"), p)?),
        };
        let address = match &t.local_address {
            None => None,
            Some(text) => {
                let p = path.k("local_address");
                let ip = text
                    .parse::<IpAddr>()
                    .ok()
                    .filter(|ip| !ip.is_unspecified() && !ip.is_multicast())
                    .ok_or_else(|| self.err(&p, Problem::BadLocalAddress(text.clone())))?;
                if port.is_none() {
                    return Err(self.err(&p, Problem::LocalAddressWithoutPort));
                }
                Some(ip)
            }
        };
        Ok((port, address))
    }

    /// `tls_*`: only with `transport = "tls"`; names and paths not empty; names DNS names.
    fn trunk_tls(&self, path: &FieldPath, t: &RawTrunk, transport: Transport) -> Result<TrunkTls> {
        let set = [
            ("tls_name", t.tls_name.is_some()),
            ("tls_ca", t.tls_ca.is_some()),
            ("tls_client_ca", t.tls_client_ca.is_some()),
            ("tls_client_names", t.tls_client_names.is_some()),
        ];
        if transport != Transport::Tls
            && let Some((field, _)) = set.iter().find(|(_, s)| *s)
        {
            return Err(self.err(&path.k(field), Problem::TlsOnly));
        }
        let text = |field: &'static str, v: &Option<String>| -> Result<Option<String>> {
            match v {
                Some(s) if s.trim().is_empty() => Err(self.err(&path.k(field), Problem::Empty)),
                other => Ok(other.clone()),
            }
        };
        let names = t.tls_client_names.clone().unwrap_or_default();
        for (j, n) in names.iter().enumerate() {
            if rustls_name_ok(n).is_none() {
                return Err(self.err(
                    &path.k("tls_client_names").i(j),
                    Problem::BadAddress(n.clone()),
                ));
            }
        }
        if let Some(n) = &t.tls_name
            && rustls_name_ok(n).is_none()
        {
            return Err(self.err(&path.k("tls_name"), Problem::BadAddress(n.clone())));
        }
        Ok(TrunkTls {
            name: text("tls_name", &t.tls_name)?,
            ca: text("tls_ca", &t.tls_ca)?,
            client_ca: text("tls_client_ca", &t.tls_client_ca)?,
            client_names: names,
        })
    }

    /// `codecs`: encoding names (one SDP token each), none twice.
    fn codecs(&self, path: &FieldPath, raw: &[String]) -> Result<Vec<String>> {
        let mut seen = BTreeSet::new();
        for (j, c) in raw.iter().enumerate() {
            self.non_empty(&path.i(j), c)?;
            if c.bytes().any(|b| b.is_ascii_whitespace() || b == b'/') {
                return Err(self.err(&path.i(j), Problem::BadCodec(c.clone())));
            }
            if !seen.insert(c.to_ascii_uppercase()) {
                return Err(self.err(&path.i(j), Problem::DuplicateCodec(c.clone())));
            }
        }
        Ok(raw.to_vec())
    }

    fn rules(&self, path: &FieldPath, raw: &[RawRule]) -> Result<Vec<NumberRule>> {
        raw.iter()
            .enumerate()
            .map(|(j, r)| {
                let path = path.i(j);
                let pattern = self.pattern(&path.k("pattern"), &r.pattern)?;
                if let Some(group) = missing_group(&pattern, &r.replace) {
                    return Err(self.err(
                        &path.k("replace"),
                        Problem::UnknownGroup {
                            replace: r.replace.clone(),
                            group,
                        },
                    ));
                }
                Ok(NumberRule {
                    pattern,
                    replace: r.replace.clone(),
                })
            })
            .collect()
    }

    fn response_rule(&self, path: &FieldPath, r: &RawResponseRule) -> Result<ResponseRule> {
        Ok(ResponseRule {
            from: self.failure_code(&path.k("from"), r.from)?,
            to: self.failure_code(&path.k("to"), r.to)?,
        })
    }

    fn routes(&self, raw: &[RawRoute], trunks: &[Trunk]) -> Result<Vec<Route>> {
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        let mut routes = Vec::with_capacity(raw.len());
        for (i, r) in raw.iter().enumerate() {
            let path = FieldPath::default().k("route").i(i);
            let name_path = path.k("name");
            self.non_empty(&name_path, &r.name)?;
            if let Some(&first) = names.get(r.name.as_str()) {
                return Err(self.err(
                    &name_path,
                    Problem::DuplicateRoute {
                        name: r.name.clone(),
                        first_line: self.line(&FieldPath::default().k("route").i(first).k("name")),
                    },
                ));
            }
            names.insert(&r.name, i);
            let pattern = self.pattern(&path.k("pattern"), &r.pattern)?;
            let except = r
                .except
                .iter()
                .enumerate()
                .map(|(j, e)| self.pattern(&path.k("except").i(j), e))
                .collect::<Result<Vec<_>>>()?;
            if let Some(usage) = &r.usage {
                self.non_empty(&path.k("usage"), usage)?;
            }
            if r.trunks.is_empty() {
                return Err(self.err(&path.k("trunks"), Problem::NoTrunks));
            }
            let mut targets: Vec<RouteTarget> = Vec::with_capacity(r.trunks.len());
            let mut previous = 0u32;
            for (j, target) in r.trunks.iter().enumerate() {
                let tpath = path.k("trunks").i(j);
                if !trunks.iter().any(|t| t.name == target.trunk) {
                    return Err(self.err(&tpath, Problem::UnknownTrunk(target.trunk.clone())));
                }
                if targets.iter().any(|t| t.trunk == target.trunk) {
                    return Err(self.err(&tpath, Problem::TrunkListedTwice(target.trunk.clone())));
                }
                let priority = match target.priority {
                    Some(p) => self.range(&tpath.k("priority"), Some(p), 1, 1, 1_000_000)?,
                    None => previous.saturating_add(1),
                };
                previous = priority;
                targets.push(RouteTarget {
                    trunk: target.trunk.clone(),
                    priority,
                });
            }
            routes.push(Route {
                name: r.name.clone(),
                pattern,
                except,
                usage: r.usage.clone(),
                targets,
            });
        }
        Ok(routes)
    }

    /// Every usage a trunk lists must be some route's usage (catches typos).
    fn usages(&self, trunks: &[Trunk], routes: &[Route]) -> Result<()> {
        let known: BTreeSet<&str> = routes.iter().filter_map(|r| r.usage.as_deref()).collect();
        for (i, t) in trunks.iter().enumerate() {
            for (j, u) in t.usages.iter().flatten().enumerate() {
                if !known.contains(u.as_str()) {
                    return Err(self.err(
                        &FieldPath::default().k("trunk").i(i).k("usages").i(j),
                        Problem::UnknownUsage(u.clone()),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// An IP literal, or a syntactically valid host name.
fn peer_address(text: &str) -> Option<PeerAddress> {
    let text = text.trim();
    let unbracketed = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(ip) = unbracketed.parse::<IpAddr>() {
        return Some(PeerAddress::Ip(ip));
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.len() <= 63
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    let name = text.strip_suffix('.').unwrap_or(text);
    let all_numeric = name.chars().all(|c| c.is_ascii_digit() || c == '.');
    (!name.is_empty() && name.len() <= 253 && !all_numeric && name.split('.').all(valid_label))
        .then(|| PeerAddress::Host(text.to_owned()))
}

/// `host:port` or `[v6]:port` into its two halves.
fn split_host_port(text: &str) -> Option<(&str, &str)> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host, port));
    }
    let (host, port) = text.rsplit_once(':')?;
    (!host.contains(':')).then_some((host, port))
}

/// The first capture group `replace` refers to that `pattern` does not have (regex crate
/// replacement syntax: `$$` is a literal `$`, `$name` / `${name}`, all-digit names are
/// indices).
pub(super) fn missing_group(pattern: &Pattern, replace: &str) -> Option<String> {
    let regex = pattern.regex();
    let mut rest = replace;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        if let Some(after) = rest.strip_prefix('$') {
            rest = after;
            continue;
        }
        let name = if let Some(braced) = rest.strip_prefix('{') {
            match braced.find('}') {
                Some(end) => {
                    let name = &braced[..end];
                    rest = &braced[end + 1..];
                    name
                }
                None => continue,
            }
        } else {
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..end];
            rest = &rest[end..];
            name
        };
        if name.is_empty() {
            continue;
        }
        let known = match name.parse::<usize>() {
            Ok(index) => index < regex.captures_len(),
            Err(_) => regex.capture_names().flatten().any(|n| n == name),
        };
        if !known {
            return Some(name.to_owned());
        }
    }
    None
}

/// `Some(())` when `name` is a usable DNS name or IP address for a certificate check: ASCII
/// letters, digits, `-` and `.`, labels of 1-63 characters, or an IP literal.
fn rustls_name_ok(name: &str) -> Option<()> {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return Some(());
    }
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    ok.then_some(())
}
