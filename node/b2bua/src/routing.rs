//! Route selection, pure: from a normalised called number, the trunk the call came in on, the
//! gateways' health and one random number, the ordered list of trunks to try.
//!
//! 1. **Route**: the first route (file order) whose pattern matches the number, none of whose
//!    `except` patterns does, and whose usage the inbound trunk may use ([`Trunk::may_use`]).
//! 2. **Candidates**: the route's trunks, without the inbound trunk itself (a call is never
//!    sent back where it came from), without trunks an operator disabled and without trunks at
//!    capacity (`at_capacity` in the health view, or `max_calls` reached).
//! 3. **Order**: trunks that are up first, by priority group ascending; then the trunks that
//!    are down, by priority again (*demote, not remove*: a down gateway is tried only after
//!    every up one of the route). Within a group: least active calls relative to weight
//!    (`active / weight` ascending); exact ties are ordered by weighted random draws from the
//!    caller's random value, so two calls with different values spread over equal gateways
//!    in proportion to their weights — never by hash-map order.
//! 4. The list is cut to the node's `max_tries`.
//!
//! The DialogActor tries the candidates in order, moving on per the trunk's failover rules.

use crate::config::{PoolConfig, Route, Trunk};
use crate::health::HealthView;

/// The trunks to try for one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoutePlan {
    /// The name of the route that took the call.
    pub route: String,
    /// The trunks to try, in order; never empty, at most `max_tries` long.
    pub candidates: Vec<Candidate>,
}

/// One trunk of a [`RoutePlan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The trunk's name (see [`PoolConfig::trunk`]).
    pub trunk: String,
    /// Its priority in the route.
    pub priority: u32,
    /// Whether it was up when the plan was made (false: tried only as a last resort).
    pub up: bool,
    /// For a trunk named by DNS: the resolved address this attempt goes to (one candidate per
    /// target, see `crate::dns`); `None` for a trunk with an IP literal, or one not resolved.
    pub resolved: Option<ResolvedAddr>,
}

/// One resolved address of a trunk named by DNS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolvedAddr {
    /// Where the INVITE goes.
    pub addr: std::net::SocketAddr,
    /// Over what.
    pub transport: crate::config::Transport,
}

/// Why no plan could be made.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NoRoute {
    /// No route takes this number from this trunk.
    #[error("no route for {called:?}")]
    NoMatchingRoute {
        /// The normalised called number.
        called: String,
        /// A route matched the number but the inbound trunk may not use its usage.
        denied_by_usage: bool,
    },
    /// A route took the call but all its trunks are disabled, at capacity, or the inbound
    /// trunk itself.
    #[error("route {route:?} has no trunk available")]
    NoTrunkAvailable {
        /// The route's name.
        route: String,
    },
}

impl NoRoute {
    /// The SIP status to answer the caller with: 403 when only usage restrictions stood in
    /// the way, 404 when no route matches, 503 when the route's trunks are all unavailable.
    pub fn status(&self) -> u16 {
        match self {
            NoRoute::NoMatchingRoute {
                denied_by_usage: true,
                ..
            } => 403,
            NoRoute::NoMatchingRoute { .. } => 404,
            NoRoute::NoTrunkAvailable { .. } => 503,
        }
    }
}

/// The first route that takes `called` from `inbound` (see the module documentation), or
/// the reason there is none.
pub fn find_route<'c>(
    config: &'c PoolConfig,
    called: &str,
    inbound: &Trunk,
) -> Result<&'c Route, NoRoute> {
    let mut denied_by_usage = false;
    for route in &config.routes {
        if !route.matches(called) {
            continue;
        }
        if inbound.may_use(route.usage.as_deref()) {
            return Ok(route);
        }
        denied_by_usage = true;
    }
    Err(NoRoute::NoMatchingRoute {
        called: called.to_owned(),
        denied_by_usage,
    })
}

/// Chooses the route for `called` (the number after the inbound trunk's normalisation) from
/// `inbound`, and orders its trunks by health, priority, load and weight. `random` is any
/// random `u64` (a fresh one per call); the result is a pure function of the arguments.
pub fn select(
    config: &PoolConfig,
    called: &str,
    inbound: &Trunk,
    health: &impl HealthView,
    random: u64,
) -> Result<RoutePlan, NoRoute> {
    let route = find_route(config, called, inbound)?;
    let mut candidates = order_trunks(config, route, &inbound.name, health, random);
    if candidates.is_empty() {
        return Err(NoRoute::NoTrunkAvailable {
            route: route.name.clone(),
        });
    }
    candidates.truncate(usize::try_from(config.node.max_tries.max(1)).unwrap_or(usize::MAX));
    Ok(RoutePlan {
        route: route.name.clone(),
        candidates,
    })
}

struct Entry<'c> {
    trunk: &'c str,
    priority: u32,
    up: bool,
    weight: u64,
    active: u64,
}

/// The usable trunks of `route` in the order to try them (all of them: not cut to
/// `max_tries`), leaving out `exclude` (the inbound trunk).
pub fn order_trunks(
    config: &PoolConfig,
    route: &Route,
    exclude: &str,
    health: &impl HealthView,
    random: u64,
) -> Vec<Candidate> {
    let mut entries: Vec<Entry<'_>> = route
        .targets
        .iter()
        .filter(|target| target.trunk != exclude)
        .filter_map(|target| {
            let trunk = config.trunk(&target.trunk)?;
            let view = health.view(&trunk.name);
            let full = trunk.max_calls.is_some_and(|max| view.active_calls >= max);
            (view.enabled && !view.at_capacity && !full).then(|| Entry {
                trunk: &trunk.name,
                priority: target.priority,
                up: view.up,
                weight: u64::from(trunk.weight.max(1)),
                active: u64::from(view.active_calls),
            })
        })
        .collect();
    // Up before down, then priority, then load relative to weight. Stable: file order is
    // kept among exact ties until the weighted draw below.
    entries.sort_by(|a, b| {
        (!a.up, a.priority)
            .cmp(&(!b.up, b.priority))
            .then_with(|| (a.active * b.weight).cmp(&(b.active * a.weight)))
    });
    let mut rng = SplitMix64(random);
    let mut start = 0;
    while start < entries.len() {
        let first = &entries[start];
        let end = start
            + entries[start..]
                .iter()
                .take_while(|e| {
                    e.up == first.up
                        && e.priority == first.priority
                        && e.active * first.weight == first.active * e.weight
                })
                .count();
        weighted_shuffle(&mut entries[start..end], &mut rng);
        start = end;
    }
    entries
        .into_iter()
        .map(|e| Candidate {
            trunk: e.trunk.to_owned(),
            priority: e.priority,
            up: e.up,
            resolved: None,
        })
        .collect()
}

/// Orders `entries` by successive weighted draws without replacement: each position is
/// filled by entry `i` with probability `weight_i / remaining weight`.
fn weighted_shuffle(entries: &mut [Entry<'_>], rng: &mut SplitMix64) {
    for pos in 0..entries.len().saturating_sub(1) {
        let total: u64 = entries[pos..].iter().map(|e| e.weight).sum();
        let mut draw = rng.next() % total.max(1);
        let mut chosen = pos;
        for (i, e) in entries.iter().enumerate().skip(pos) {
            if draw < e.weight {
                chosen = i;
                break;
            }
            draw -= e.weight;
        }
        entries[pos..=chosen].rotate_right(1);
    }
}

/// SplitMix64: a tiny deterministic generator that stretches the caller's one random value
/// into as many draws as the ordering needs (the DNS SRV order draws with it too).
pub(crate) struct SplitMix64(pub(crate) u64);

impl SplitMix64 {
    /// The next draw.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;
    use crate::health::{AllUp, GatewayView};

    const CONFIG: &str = r#"
[node]
max_tries = 10

[[trunk]]
name = "pbx"
address = "10.0.0.1"
side = "internal"

[[trunk]]
name = "branch"
address = "10.0.0.2"
side = "internal"
usages = ["local"]

[[trunk]]
name = "gw1"
address = "10.0.1.1"
side = "gateway"

[[trunk]]
name = "gw2"
address = "10.0.1.2"
side = "gateway"

[[trunk]]
name = "gw3"
address = "10.0.1.3"
side = "gateway"
weight = 3

[[trunk]]
name = "backup"
address = "10.0.1.9"
side = "gateway"
max_calls = 2

[[route]]
name = "premium-blocked"
pattern = '^\+1900'
usage = "premium"
trunks = ["gw1"]

[[route]]
name = "international"
pattern = '^\+'
except = ['^\+49']
usage = "international"
trunks = [{ trunk = "gw1", priority = 1 }, { trunk = "gw2", priority = 1 }, { trunk = "backup", priority = 2 }]

[[route]]
name = "local"
pattern = '^\+49'
usage = "local"
trunks = ["gw1", "gw2", "backup"]

[[route]]
name = "weighted"
pattern = '^w'
trunks = [{ trunk = "gw1", priority = 1 }, { trunk = "gw3", priority = 1 }]

[[route]]
name = "to-pbx"
pattern = '^4\d{3}$'
trunks = ["pbx"]
"#;

    fn config() -> PoolConfig {
        PoolConfig::from_toml_str(CONFIG, "test.toml").unwrap()
    }

    fn names(plan: &RoutePlan) -> Vec<&str> {
        plan.candidates.iter().map(|c| c.trunk.as_str()).collect()
    }

    fn view(up: bool, active_calls: u32) -> GatewayView {
        GatewayView {
            up,
            active_calls,
            ..GatewayView::default()
        }
    }

    fn health(entries: &[(&str, GatewayView)]) -> BTreeMap<String, GatewayView> {
        entries.iter().map(|(n, v)| ((*n).to_owned(), *v)).collect()
    }

    #[test]
    fn first_matching_route_with_exceptions() {
        let c = config();
        let pbx = c.trunk("pbx").unwrap();
        // +49 is excepted from "international" and falls through to "local".
        let plan = select(&c, "+4930123", pbx, &AllUp, 0).unwrap();
        assert_eq!(plan.route, "local");
        assert_eq!(names(&plan), ["gw1", "gw2", "backup"]);
        let plan = select(&c, "+4420", pbx, &AllUp, 0).unwrap();
        assert_eq!(plan.route, "international");
        assert_eq!(
            select(&c, "nothing", pbx, &AllUp, 0),
            Err(NoRoute::NoMatchingRoute {
                called: "nothing".into(),
                denied_by_usage: false
            })
        );
        assert_eq!(
            select(&c, "nothing", pbx, &AllUp, 0).unwrap_err().status(),
            404
        );
    }

    #[test]
    fn plain_trunk_lists_mean_increasing_priority() {
        let c = config();
        let route = c.route("local").unwrap();
        let priorities: Vec<u32> = route.targets.iter().map(|t| t.priority).collect();
        assert_eq!(priorities, [1, 2, 3]);
    }

    #[test]
    fn usages_restrict_routes() {
        let c = config();
        let branch = c.trunk("branch").unwrap();
        // "branch" may use "local" only.
        assert_eq!(
            select(&c, "+4930", branch, &AllUp, 0).unwrap().route,
            "local"
        );
        let err = select(&c, "+4420", branch, &AllUp, 0).unwrap_err();
        assert_eq!(err.status(), 403);
        // An internal trunk without usages may use every route, including "premium".
        let pbx = c.trunk("pbx").unwrap();
        assert_eq!(
            select(&c, "+1900555", pbx, &AllUp, 0).unwrap().route,
            "premium-blocked"
        );
        // A gateway without usages only routes without a usage: "to-pbx".
        let gw1 = c.trunk("gw1").unwrap();
        assert_eq!(
            select(&c, "+4420", gw1, &AllUp, 0).unwrap_err().status(),
            403
        );
        let plan = select(&c, "4711", gw1, &AllUp, 0).unwrap();
        assert_eq!((plan.route.as_str(), names(&plan)), ("to-pbx", vec!["pbx"]));
    }

    #[test]
    fn inbound_trunk_is_never_a_candidate() {
        let c = config();
        let pbx = c.trunk("pbx").unwrap();
        assert_eq!(
            select(&c, "4711", pbx, &AllUp, 0),
            Err(NoRoute::NoTrunkAvailable {
                route: "to-pbx".into()
            })
        );
    }

    #[test]
    fn least_active_calls_first_within_a_priority_group() {
        let c = config();
        let pbx = c.trunk("pbx").unwrap();
        let h = health(&[("gw1", view(true, 5)), ("gw2", view(true, 2))]);
        for random in 0..20 {
            let plan = select(&c, "+4420", pbx, &h, random).unwrap();
            assert_eq!(names(&plan), ["gw2", "gw1", "backup"]);
        }
        // Priority beats load: backup (priority 2) is idle but comes last.
        let h = health(&[("gw1", view(true, 50)), ("gw2", view(true, 70))]);
        let plan = select(&c, "+4420", pbx, &h, 1).unwrap();
        assert_eq!(names(&plan), ["gw1", "gw2", "backup"]);
    }

    #[test]
    fn load_is_relative_to_weight() {
        let c = config();
        let pbx = c.trunk("pbx").unwrap();
        // gw3 has weight 3: 5 calls on it (5/3) is less load than 2 on gw1 (2/1).
        let h = health(&[("gw1", view(true, 2)), ("gw3", view(true, 5))]);
        let plan = select(&c, "w", pbx, &h, 0).unwrap();
        assert_eq!(names(&plan), ["gw3", "gw1"]);
        // 7/3 > 2/1.
        let h = health(&[("gw1", view(true, 2)), ("gw3", view(true, 7))]);
        let plan = select(&c, "w", pbx, &h, 0).unwrap();
        assert_eq!(names(&plan), ["gw1", "gw3"]);
    }

    #[test]
    fn ties_are_broken_by_weighted_random() {
        let c = config();
        let pbx = c.trunk("pbx").unwrap();
        // Idle gw1 (weight 1) and gw3 (weight 3): gw3 first about 3 times in 4.
        let mut first_gw3 = 0;
        for random in 0..4000u64 {
            let plan = select(&c, "w", pbx, &AllUp, random).unwrap();
            if plan.candidates[0].trunk == "gw3" {
                first_gw3 += 1;
            }
        }
        assert!(
            (2800..3200).contains(&first_gw3),
            "gw3 first {first_gw3} of 4000"
        );
        // Equal weights: both orders happen; the same random value gives the same order.
        let orders: std::collections::BTreeSet<Vec<String>> = (0..64u64)
            .map(|r| {
                select(&c, "+4420", pbx, &AllUp, r)
                    .unwrap()
                    .candidates
                    .into_iter()
                    .map(|c| c.trunk)
                    .collect()
            })
            .collect();
        assert_eq!(orders.len(), 2);
        assert_eq!(
            select(&c, "+4420", pbx, &AllUp, 99),
            select(&c, "+4420", pbx, &AllUp, 99)
        );
    }

    #[test]
    fn down_gateways_are_demoted_behind_every_up_one() {
        let c = config();
        let pbx = c.trunk("pbx").unwrap();
        // gw1 (priority 1) down: the priority-2 backup comes before it.
        let h = health(&[("gw1", view(false, 0))]);
        let plan = select(&c, "+4420", pbx, &h, 5).unwrap();
        assert_eq!(names(&plan), ["gw2", "backup", "gw1"]);
        assert_eq!(
            plan.candidates.iter().map(|c| c.up).collect::<Vec<_>>(),
            [true, true, false]
        );
        // All down: still tried, in priority order (demote, not remove).
        let h = health(&[
            ("gw1", view(false, 1)),
            ("gw2", view(false, 0)),
            ("backup", view(false, 0)),
        ]);
        let plan = select(&c, "+4420", pbx, &h, 5).unwrap();
        assert_eq!(names(&plan), ["gw2", "gw1", "backup"]);
    }

    #[test]
    fn disabled_and_full_trunks_are_excluded() {
        let c = config();
        let pbx = c.trunk("pbx").unwrap();
        let disabled = GatewayView {
            enabled: false,
            ..GatewayView::default()
        };
        let cps_exhausted = GatewayView {
            at_capacity: true,
            ..GatewayView::default()
        };
        // backup has max_calls = 2.
        let h = health(&[
            ("gw1", disabled),
            ("gw2", cps_exhausted),
            ("backup", view(true, 2)),
        ]);
        assert_eq!(
            select(&c, "+4420", pbx, &h, 0).unwrap_err(),
            NoRoute::NoTrunkAvailable {
                route: "international".into()
            }
        );
        assert_eq!(select(&c, "+4420", pbx, &h, 0).unwrap_err().status(), 503);
        let h = health(&[
            ("gw1", disabled),
            ("gw2", cps_exhausted),
            ("backup", view(true, 1)),
        ]);
        assert_eq!(names(&select(&c, "+4420", pbx, &h, 0).unwrap()), ["backup"]);
    }

    #[test]
    fn plan_is_cut_to_max_tries() {
        let mut c = config();
        c.node.max_tries = 2;
        let pbx = c.trunk("pbx").unwrap().clone();
        let plan = select(&c, "+4930", &pbx, &AllUp, 0).unwrap();
        assert_eq!(names(&plan), ["gw1", "gw2"]);
    }

    #[test]
    fn the_example_file_routes_the_pbx_to_the_gateways_and_the_gateways_to_the_pbx() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/medpool.toml");
        let c = PoolConfig::load(path).unwrap();
        // SIPp's uac: from 127.0.0.1 on some port, calling "service".
        let pbx = c
            .trunk_for_source(IpAddr::V4(Ipv4Addr::LOCALHOST), 40123)
            .unwrap();
        let called = pbx.normalize_number("service");
        let plan = select(&c, &called, pbx, &AllUp, 7).unwrap();
        assert_eq!(plan.route, "to-gateways");
        let mut tried: Vec<&str> = plan.candidates.iter().map(|c| c.trunk.as_str()).collect();
        tried.sort_unstable();
        assert_eq!(tried, ["gw1", "gw2"]);
        assert!(plan.candidates.iter().all(|c| c.priority == 1));
        // A gateway's own calls go to the PBX.
        let from_gw = c
            .trunk_for_source(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 21)), 5060)
            .unwrap();
        let plan = select(&c, "+4930", from_gw, &AllUp, 7).unwrap();
        assert_eq!(plan.route, "from-pstn");
        assert_eq!(plan.candidates[0].trunk, "pbx");
    }
}
