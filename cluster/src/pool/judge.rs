//! The failure detector's judgement, as pure functions: from the nodes the applied state lists,
//! when the leader last granted each of them a lease in its term, what the voters reported of
//! earlier terms and what time it is now, which nodes to declare down or back, and which count as
//! alive for the rebalancer. No clock, no I/O: the leader task (`detector.rs`) reads the time and
//! the state and carries the commands out.
//!
//! Terms: L the lease, F the grant freshness (a leader grants only with a quorum acknowledgement
//! younger than F, `lease.rs`), m the margin, G the grace a new leader gives live nodes to reach it.
//!
//! [`prior_leases_end`] bounds when every lease granted by a leader of an *earlier* term has ended:
//! - a leader that grants at g has a quorum acknowledgement of an RPC it *sent* at q > g - F, and
//!   the lease runs from the heartbeat's send time (≤ g) for L: it ends before q + F + L;
//! - blind: every earlier leader's last quorum acknowledgement was sent before this leader was
//!   elected (some voter of that quorum voted for this term afterwards), so all such leases end by
//!   `leading_since + F + L`;
//! - informed: each voter reports when it last received an RPC from a leader of an earlier term
//!   (R, an upper bound on the send time of any acknowledgement it gave one) and when it last
//!   granted a lease itself as leader of an earlier term (its start counts as one). When the voters
//!   that reported leave out fewer than a majority of every voter set, every earlier quorum
//!   holds a reporter other than its leader, or its leader reported: all earlier leases end by
//!   max(R + F + L, own grant + L) over the reporters. A membership change less than F + L ago
//!   could leave an earlier quorum outside today's voter sets: the bound is then no earlier than
//!   the change + F + L. The informed bound is used when it is earlier than the blind one.
//!
//! [`judge`]'s rules:
//! - a node is *heard* when this leader granted it a lease less than L + m ago in this term (the
//!   leader always hears itself);
//! - a node may be declared down only once every earlier term's lease has ended (the bound above,
//!   plus m), and only once this leader's last grant to it has ended (+ m); a node this leader has
//!   never granted may be declared down only G after the leader took office (time for a live node
//!   to send it a heartbeat: they send one as soon as they learn of a new leader, and every L/4);
//! - false positives: nobody is declared down while the leader itself cannot grant (its quorum
//!   acknowledgement is older than F: the silence may be its own), nor a node whose heartbeat
//!   reached the leader within L + m although it was refused (a starved quorum, a map being caught
//!   up), unless its last grant is more than [`REFUSED_LIMIT`] windows old;
//! - a new leader decides nothing until it is *settled*: it has heard every node that is not down,
//!   or both waits above are over;
//! - once settled: an active or draining node not heard is declared down, a down node heard is
//!   declared active again, and the heard nodes are the alive set;
//! - a leader that was itself stalled (its detector pass came more than m late: a process stopped,
//!   starved of CPU, or a paused VM) cannot tell the others' silence from its own: every node it
//!   had heard when it went quiet counts as granted when it resumed ([`forgive_own_stall`]), so it
//!   gets a whole window to reach the leader again before it is judged. Without this, a leader back
//!   from a 2 s stall found every other node's last grant too old, and moved all their shards to
//!   itself, and back a moment later (`moves=682 down=0`): calls being set up on them were lost
//!   (chaos soak, 2026-12-07, seed 0x1cfc2daf4d88bd99 round 75). Pretending a later grant only
//!   delays a declaration, never hastens one: no safety bound rests on it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::command::Command;
use crate::state::NodeState;
use crate::typ::NodeId;

/// What a voter reported (or the leader knows of itself) about earlier terms, in the leader's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PriorReport {
    /// When it last received an RPC from a leader of an earlier term (`None`: it cannot tell).
    pub heard: Option<Instant>,
    /// When it last granted a lease as leader of an earlier term (`None`: it cannot tell).
    pub granted: Option<Instant>,
}

/// What a new leader knows to bound the leases of earlier terms.
#[derive(Debug, Clone)]
pub struct PriorView<'a> {
    /// The voter sets of the membership in effect (two during a joint change).
    pub voter_sets: &'a [BTreeSet<NodeId>],
    /// Reports for this leader's term, by voter (the leader's own included).
    pub reports: &'a BTreeMap<NodeId, PriorReport>,
    /// When this node became leader of its term.
    pub leading_since: Instant,
    /// When this node last saw its membership change (or started).
    pub membership_since: Instant,
    /// L.
    pub lease: Duration,
    /// F.
    pub fresh: Duration,
}

/// When every lease granted by a leader of an earlier term has ended, at the latest (see the
/// module doc).
pub fn prior_leases_end(v: &PriorView<'_>) -> Instant {
    let blind = v.leading_since + v.fresh + v.lease;
    let complete = |r: &PriorReport| r.heard.is_some() && r.granted.is_some();
    let reporters: BTreeSet<NodeId> = v
        .reports
        .iter()
        .filter(|(_, r)| complete(r))
        .map(|(id, _)| *id)
        .collect();
    let covered = !v.voter_sets.is_empty()
        && v.voter_sets.iter().all(|set| {
            let missing = set.difference(&reporters).count();
            missing < set.len() / 2 + 1
        });
    if !covered {
        return blind;
    }
    let informed = v
        .reports
        .values()
        .filter(|r| complete(r))
        .flat_map(|r| {
            [
                r.heard.map(|h| h + v.fresh + v.lease),
                r.granted.map(|g| g + v.lease),
            ]
        })
        .flatten()
        .fold(v.membership_since + v.fresh + v.lease, Instant::max);
    informed.min(blind)
}

/// How many windows (L + m) a node that keeps sending heartbeats but is refused every grant stays
/// up before it is declared down all the same (a node that cannot catch up must not hold the pool).
pub const REFUSED_LIMIT: u32 = 3;

/// What the leader knows in one pass of its failure detector.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The leader itself.
    pub me: NodeId,
    /// Every node of the applied state, with its state.
    pub nodes: &'a BTreeMap<NodeId, NodeState>,
    /// When this leader last granted each node a lease in its current term (nodes it never granted
    /// in this term are absent).
    pub heard: &'a BTreeMap<NodeId, Instant>,
    /// When each node's last heartbeat reached this leader in its current term, granted or not.
    pub seen: &'a BTreeMap<NodeId, Instant>,
    /// Whether this leader can grant leases now (its quorum acknowledgement is younger than F).
    pub can_grant: bool,
    /// When this node became leader (of the current term).
    pub leading_since: Instant,
    /// When every lease granted in an earlier term has ended ([`prior_leases_end`]).
    pub prior_end: Instant,
    /// Now.
    pub now: Instant,
    /// L.
    pub lease: Duration,
    /// m.
    pub margin: Duration,
    /// G.
    pub grace: Duration,
}

/// What the failure detector decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Judgement {
    /// Whether the leader knows enough to decide (see the module doc). When false, the other
    /// fields are empty.
    pub settled: bool,
    /// [`Command::SetNodeState`] to propose, in node order: nodes down, nodes back.
    pub commands: Vec<Command>,
    /// The nodes heard recently (the leader included): the rebalancer's alive set.
    pub alive: BTreeSet<NodeId>,
}

/// A leader's own stall, forgiven (see the module doc): every node whose last grant was still
/// within `window` (L + m) when the leader went quiet counts as granted at `resumed`. Nodes already
/// silent for a window before the stall keep their last grant.
pub fn forgive_own_stall(
    heard: &mut BTreeMap<NodeId, Instant>,
    went_quiet: Instant,
    resumed: Instant,
    window: Duration,
) {
    for granted in heard.values_mut() {
        if *granted + window > went_quiet && *granted < resumed {
            *granted = resumed;
        }
    }
}

/// Judges one pass (see the module doc).
pub fn judge(o: &Observation<'_>) -> Judgement {
    let window = o.lease + o.margin;
    let heard_recently = |id: NodeId| {
        id == o.me
            || o.heard
                .get(&id)
                .is_some_and(|t| o.now.saturating_duration_since(*t) < window)
    };
    let waited = o.now >= o.prior_end + o.margin && o.now >= o.leading_since + o.grace;
    let seen_recently = |id: NodeId| {
        o.seen
            .get(&id)
            .is_some_and(|t| o.now.saturating_duration_since(*t) < window)
    };
    let refused_too_long = |id: NodeId| {
        let granted = o.heard.get(&id).copied().unwrap_or(o.leading_since);
        o.now.saturating_duration_since(granted) >= window * REFUSED_LIMIT
    };
    let may_declare = |id: NodeId| o.can_grant && (!seen_recently(id) || refused_too_long(id));
    let settled = waited
        || o.nodes
            .iter()
            .all(|(id, state)| *state == NodeState::Down || heard_recently(*id));
    if !settled {
        return Judgement::default();
    }
    let mut judgement = Judgement {
        settled,
        ..Judgement::default()
    };
    for (&id, &state) in o.nodes {
        let recent = heard_recently(id);
        let new_state = match state {
            NodeState::Active | NodeState::Draining if !recent && waited && may_declare(id) => {
                Some(NodeState::Down)
            }
            NodeState::Down if recent => Some(NodeState::Active),
            _ => None,
        };
        if let Some(state) = new_state {
            judgement.commands.push(Command::SetNodeState { id, state });
        }
        if recent {
            judgement.alive.insert(id);
        }
    }
    judgement
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_millis(1000);
    const FRESH: Duration = Duration::from_millis(250);
    const MARGIN: Duration = Duration::from_millis(200);
    const GRACE: Duration = Duration::from_millis(450);

    struct Case {
        name: &'static str,
        /// `(node, state, granted this long ago in this term)`; `None`: never granted.
        nodes: &'static [(NodeId, NodeState, Option<u64>)],
        /// `(node, its last heartbeat reached the leader this long ago)`, granted or not.
        seen: &'static [(NodeId, u64)],
        /// Whether the leader's quorum acknowledgement is fresh.
        can_grant: bool,
        /// How long ago this node (node 1) became leader, in ms.
        leading_for_ms: u64,
        /// How long ago every earlier term's lease ended, in ms (negative: in the future).
        prior_ended_ms: i64,
        settled: bool,
        down: &'static [NodeId],
        back: &'static [NodeId],
        alive: &'static [NodeId],
    }

    use NodeState::{Active, Down, Draining};

    const CASES: &[Case] = &[
        Case {
            name: "everyone heard: nothing to do",
            nodes: &[
                (1, Active, None),
                (2, Active, Some(100)),
                (3, Active, Some(1100)),
            ],
            seen: &[],
            can_grant: true,
            leading_for_ms: 10_000,
            prior_ended_ms: 8_000,
            settled: true,
            down: &[],
            back: &[],
            alive: &[1, 2, 3],
        },
        Case {
            name: "a node whose last lease ended a margin ago (L + m after the grant) is declared down",
            nodes: &[
                (1, Active, None),
                (2, Active, Some(100)),
                (3, Active, Some(1200)),
            ],
            seen: &[],
            can_grant: true,
            leading_for_ms: 10_000,
            prior_ended_ms: 8_000,
            settled: true,
            down: &[3],
            back: &[],
            alive: &[1, 2],
        },
        Case {
            name: "a draining node that falls silent is declared down too",
            nodes: &[(1, Active, None), (2, Draining, Some(5000))],
            seen: &[],
            can_grant: true,
            leading_for_ms: 10_000,
            prior_ended_ms: 8_000,
            settled: true,
            down: &[2],
            back: &[],
            alive: &[1],
        },
        Case {
            name: "a down node heard again comes back",
            nodes: &[(1, Active, None), (2, Down, Some(200)), (3, Down, None)],
            seen: &[],
            can_grant: true,
            leading_for_ms: 10_000,
            prior_ended_ms: 8_000,
            settled: true,
            down: &[],
            back: &[2],
            alive: &[1, 2],
        },
        Case {
            name: "a new leader that has not heard everyone waits out the grace",
            nodes: &[(1, Active, None), (2, Active, Some(100)), (3, Active, None)],
            seen: &[],
            can_grant: true,
            leading_for_ms: 449,
            prior_ended_ms: 1000,
            settled: false,
            down: &[],
            back: &[],
            alive: &[],
        },
        Case {
            name: "a new leader waits until earlier terms' leases have ended, plus the margin",
            nodes: &[(1, Active, None), (2, Active, Some(100)), (3, Active, None)],
            seen: &[],
            can_grant: true,
            leading_for_ms: 1000,
            prior_ended_ms: 199,
            settled: false,
            down: &[],
            back: &[],
            alive: &[],
        },
        Case {
            name: "earlier leases still running: nobody is declared down",
            nodes: &[(1, Active, None), (2, Active, Some(100)), (3, Active, None)],
            seen: &[],
            can_grant: true,
            leading_for_ms: 1000,
            prior_ended_ms: -300,
            settled: false,
            down: &[],
            back: &[],
            alive: &[],
        },
        Case {
            name: "a new leader that has heard every live node decides at once",
            nodes: &[(1, Active, None), (2, Active, Some(100)), (3, Down, None)],
            seen: &[],
            can_grant: true,
            leading_for_ms: 0,
            prior_ended_ms: -1000,
            settled: true,
            down: &[],
            back: &[],
            alive: &[1, 2],
        },
        Case {
            name: "earlier leases over and the grace passed: a node never heard is down",
            nodes: &[(1, Active, None), (2, Active, Some(100)), (3, Active, None)],
            seen: &[],
            can_grant: true,
            leading_for_ms: 450,
            prior_ended_ms: 200,
            settled: true,
            down: &[3],
            back: &[],
            alive: &[1, 2],
        },
        Case {
            name: "this leader's own grant still running: not down although earlier leases ended",
            nodes: &[
                (1, Active, None),
                (2, Active, Some(1199)),
                (3, Active, None),
            ],
            seen: &[],
            can_grant: true,
            leading_for_ms: 2000,
            prior_ended_ms: 700,
            settled: true,
            down: &[3],
            back: &[],
            alive: &[1, 2],
        },
        Case {
            name: "a leader that cannot grant (stale quorum) declares nobody down",
            nodes: &[
                (1, Active, None),
                (2, Active, Some(100)),
                (3, Active, Some(1500)),
            ],
            seen: &[],
            can_grant: false,
            leading_for_ms: 10_000,
            prior_ended_ms: 8_000,
            settled: true,
            down: &[],
            back: &[],
            alive: &[1, 2],
        },
        Case {
            name: "a node refused but still sending is not declared down",
            nodes: &[
                (1, Active, None),
                (2, Active, Some(100)),
                (3, Active, Some(1500)),
            ],
            seen: &[(3, 100)],
            can_grant: true,
            leading_for_ms: 10_000,
            prior_ended_ms: 8_000,
            settled: true,
            down: &[],
            back: &[],
            alive: &[1, 2],
        },
        Case {
            name: "... unless it has been refused for REFUSED_LIMIT windows",
            nodes: &[
                (1, Active, None),
                (2, Active, Some(100)),
                (3, Active, Some(3600)),
            ],
            seen: &[(3, 100)],
            can_grant: true,
            leading_for_ms: 10_000,
            prior_ended_ms: 8_000,
            settled: true,
            down: &[3],
            back: &[],
            alive: &[1, 2],
        },
        Case {
            name: "the leader never judges itself down",
            nodes: &[(1, Down, None), (2, Active, Some(10))],
            seen: &[],
            can_grant: true,
            leading_for_ms: 10_000,
            prior_ended_ms: 8_000,
            settled: true,
            down: &[],
            back: &[1],
            alive: &[1, 2],
        },
    ];

    #[test]
    fn judgements_follow_the_table() {
        let now = Instant::now() + Duration::from_secs(60);
        for c in CASES {
            let nodes: BTreeMap<NodeId, NodeState> =
                c.nodes.iter().map(|(id, s, _)| (*id, *s)).collect();
            let heard: BTreeMap<NodeId, Instant> = c
                .nodes
                .iter()
                .filter_map(|(id, _, ago)| Some((*id, now - Duration::from_millis((*ago)?))))
                .collect();
            let prior_end = if c.prior_ended_ms >= 0 {
                now - Duration::from_millis(c.prior_ended_ms.unsigned_abs())
            } else {
                now + Duration::from_millis(c.prior_ended_ms.unsigned_abs())
            };
            let seen: BTreeMap<NodeId, Instant> = c
                .seen
                .iter()
                .map(|(id, ago)| (*id, now - Duration::from_millis(*ago)))
                .collect();
            let j = judge(&Observation {
                me: 1,
                nodes: &nodes,
                heard: &heard,
                seen: &seen,
                can_grant: c.can_grant,
                leading_since: now - Duration::from_millis(c.leading_for_ms),
                prior_end,
                now,
                lease: LEASE,
                margin: MARGIN,
                grace: GRACE,
            });
            let mut expected: Vec<Command> = Vec::new();
            for &(id, _, _) in c.nodes {
                if c.down.contains(&id) {
                    expected.push(Command::SetNodeState { id, state: Down });
                }
                if c.back.contains(&id) {
                    expected.push(Command::SetNodeState { id, state: Active });
                }
            }
            assert_eq!(j.settled, c.settled, "{}", c.name);
            assert_eq!(j.commands, expected, "{}", c.name);
            assert_eq!(
                j.alive,
                c.alive.iter().copied().collect::<BTreeSet<_>>(),
                "{}",
                c.name
            );
        }
    }

    struct PriorCase {
        name: &'static str,
        voter_sets: &'static [&'static [NodeId]],
        /// `(voter, heard an earlier leader at, granted in an earlier term at)`, in ms relative to
        /// taking office (negative: before); `None`: cannot tell.
        reports: &'static [(NodeId, Option<i64>, Option<i64>)],
        /// When the membership last changed, relative to taking office.
        membership_ms: i64,
        /// The expected bound, relative to taking office.
        end_ms: i64,
    }

    /// Blind: taking office + F + L.
    const BLIND: i64 = 1250;

    const PRIOR: &[PriorCase] = &[
        PriorCase {
            name: "no reports: blind wait",
            voter_sets: &[&[1, 2, 3]],
            reports: &[],
            membership_ms: -60_000,
            end_ms: BLIND,
        },
        PriorCase {
            name: "leader kill: both survivors last heard the old leader ~0.9 s before taking office",
            voter_sets: &[&[1, 2, 3]],
            reports: &[(1, Some(-900), Some(-5000)), (2, Some(-950), Some(-9000))],
            membership_ms: -60_000,
            end_ms: -900 + 1250,
        },
        PriorCase {
            name: "only the leader reported: a quorum {2, 3} of an earlier term may be unseen",
            voter_sets: &[&[1, 2, 3]],
            reports: &[(1, Some(-900), Some(-5000))],
            membership_ms: -60_000,
            end_ms: BLIND,
        },
        PriorCase {
            name: "a reporter that led an earlier term: its own last grant + L counts",
            voter_sets: &[&[1, 2, 3]],
            reports: &[(1, Some(-900), Some(-5000)), (2, Some(-950), Some(-100))],
            membership_ms: -60_000,
            end_ms: -100 + 1000,
        },
        PriorCase {
            name: "a report that cannot tell its own grants does not count",
            voter_sets: &[&[1, 2, 3]],
            reports: &[(1, Some(-900), Some(-5000)), (2, Some(-950), None)],
            membership_ms: -60_000,
            end_ms: BLIND,
        },
        PriorCase {
            name: "a membership change less than F + L ago holds the bound back",
            voter_sets: &[&[1, 2, 3]],
            reports: &[(1, Some(-900), Some(-5000)), (2, Some(-950), Some(-5000))],
            membership_ms: -200,
            end_ms: -200 + 1250,
        },
        PriorCase {
            name: "never later than the blind bound (an old leader still sending after the election)",
            voter_sets: &[&[1, 2, 3]],
            reports: &[(1, Some(-900), Some(-5000)), (2, Some(100), Some(-5000))],
            membership_ms: -60_000,
            end_ms: BLIND,
        },
        PriorCase {
            name: "five voters, two silent: three reports cover every earlier quorum",
            voter_sets: &[&[1, 2, 3, 4, 5]],
            reports: &[
                (1, Some(-700), Some(-5000)),
                (2, Some(-800), Some(-5000)),
                (3, Some(-600), Some(-5000)),
            ],
            membership_ms: -60_000,
            end_ms: -600 + 1250,
        },
        PriorCase {
            name: "five voters, three silent: blind",
            voter_sets: &[&[1, 2, 3, 4, 5]],
            reports: &[(1, Some(-700), Some(-5000)), (2, Some(-800), Some(-5000))],
            membership_ms: -60_000,
            end_ms: BLIND,
        },
        PriorCase {
            name: "joint membership: every voter set must be covered",
            voter_sets: &[&[1, 2, 3], &[1, 2, 4, 5]],
            reports: &[(1, Some(-700), Some(-5000)), (3, Some(-800), Some(-5000))],
            membership_ms: -60_000,
            end_ms: BLIND,
        },
        PriorCase {
            name: "joint membership covered in both sets",
            voter_sets: &[&[1, 2, 3], &[1, 2, 4, 5]],
            reports: &[
                (1, Some(-700), Some(-5000)),
                (2, Some(-800), Some(-5000)),
                (4, Some(-750), Some(-5000)),
            ],
            membership_ms: -60_000,
            end_ms: -700 + 1250,
        },
        PriorCase {
            name: "no voter sets known: blind",
            voter_sets: &[],
            reports: &[(1, Some(-900), Some(-5000))],
            membership_ms: -60_000,
            end_ms: BLIND,
        },
    ];

    #[test]
    fn earlier_leases_end_as_the_table_says() {
        let office = Instant::now() + Duration::from_secs(120);
        let at = |ms: i64| {
            if ms >= 0 {
                office + Duration::from_millis(ms.unsigned_abs())
            } else {
                office - Duration::from_millis(ms.unsigned_abs())
            }
        };
        for c in PRIOR {
            let voter_sets: Vec<BTreeSet<NodeId>> = c
                .voter_sets
                .iter()
                .map(|s| s.iter().copied().collect())
                .collect();
            let reports: BTreeMap<NodeId, PriorReport> = c
                .reports
                .iter()
                .map(|(id, h, g)| {
                    (
                        *id,
                        PriorReport {
                            heard: h.map(at),
                            granted: g.map(at),
                        },
                    )
                })
                .collect();
            let end = prior_leases_end(&PriorView {
                voter_sets: &voter_sets,
                reports: &reports,
                leading_since: office,
                membership_since: at(c.membership_ms),
                lease: LEASE,
                fresh: FRESH,
            });
            assert_eq!(end, at(c.end_ms), "{}", c.name);
        }
    }

    /// The soak's round 75: the leader stalled 2 s; nodes 2 and 3 were granted 100 and 300 ms
    /// before it went quiet, node 4 has been silent for 5 s (dead). Forgiven, 2 and 3 are alive
    /// at the first pass after the stall and keep their shards (nothing is planned away from
    /// them); node 4 is still not. Fails without the forgiveness (alive = {1}).
    #[test]
    fn a_leader_back_from_its_own_stall_keeps_the_nodes_it_had_heard() {
        let window = LEASE + MARGIN;
        let t0 = Instant::now();
        let went_quiet = t0 + Duration::from_secs(10);
        let resumed = went_quiet + Duration::from_secs(2);
        let mut heard: BTreeMap<NodeId, Instant> = [
            (2, went_quiet - Duration::from_millis(100)),
            (3, went_quiet - Duration::from_millis(300)),
            (4, went_quiet - Duration::from_secs(5)),
        ]
        .into();
        let nodes: BTreeMap<NodeId, NodeState> =
            [(1, Active), (2, Active), (3, Active), (4, Active)].into();
        let observe = |heard: &BTreeMap<NodeId, Instant>| {
            judge(&Observation {
                me: 1,
                nodes: &nodes,
                heard,
                seen: &BTreeMap::new(),
                can_grant: true,
                leading_since: t0,
                prior_end: t0,
                now: resumed + Duration::from_millis(1),
                lease: LEASE,
                margin: MARGIN,
                grace: GRACE,
            })
        };
        assert_eq!(
            observe(&heard).alive,
            BTreeSet::from([1]),
            "unforgiven, the stall looks like everyone's silence"
        );
        forgive_own_stall(&mut heard, went_quiet, resumed, window);
        let judged = observe(&heard);
        assert_eq!(judged.alive, BTreeSet::from([1, 2, 3]));
        assert_eq!(
            judged.commands,
            vec![Command::SetNodeState { id: 4, state: Down }],
            "the node silent before the stall is still judged"
        );
        // A grant after the resume is kept as it is.
        let later = resumed + Duration::from_millis(50);
        let mut fresh: BTreeMap<NodeId, Instant> = [(2, later)].into();
        forgive_own_stall(&mut fresh, went_quiet, resumed, window);
        assert_eq!(fresh[&2], later);
    }
}
