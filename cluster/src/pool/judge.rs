//! The failure detector's judgement, as a pure function: from the nodes the applied state lists,
//! until when each of them may hold a lease this leader granted, and what time it is now, which
//! nodes to declare down or back, and which count as alive for the rebalancer. No clock, no I/O:
//! the leader task (`detector.rs`) reads the time and the state and carries the commands out.
//!
//! The rules (ARCHITECTURE.md, "The pool": failover, has the argument):
//! - a node is *alive* while a lease this leader granted it may still run: until the lease's end
//!   plus the margin (the leader is always alive to itself);
//! - a new leader has granted nothing yet, and leases an earlier leader granted may still run: until
//!   it has heard every node that is not down, or until `settle` (L + margin: every earlier lease is
//!   over by then) has passed since it became leader, it decides nothing (it is not *settled*);
//! - once settled: an active or draining node not alive is declared down, a down node alive again
//!   is declared active, and the alive nodes are the rebalancer's.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::command::Command;
use crate::state::NodeState;
use crate::typ::NodeId;

/// What the leader knows in one pass of its failure detector.
#[derive(Debug, Clone)]
pub struct Observation<'a> {
    /// The leader itself.
    pub me: NodeId,
    /// Every node of the applied state, with its state.
    pub nodes: &'a BTreeMap<NodeId, NodeState>,
    /// Until when each node's last lease from this leader may run, on this leader's clock (nodes
    /// granted none in this term are absent).
    pub leases: &'a BTreeMap<NodeId, Instant>,
    /// When this node became leader (of the current term).
    pub leading_since: Instant,
    /// Now.
    pub now: Instant,
    /// Slack after a lease's end before its node counts as gone: clock drift and the gap between
    /// a node's lease check and what it does.
    pub margin: Duration,
    /// How long a new leader waits before it judges nodes it has not heard (L + margin).
    pub settle: Duration,
}

/// What the leader keeps between its lease grants and its failure detector (one lock, so that a
/// grant and a judgement never cross: a node the detector is declaring down gets no lease).
#[derive(Debug, Default)]
pub struct Hearing {
    /// Until when each node's last lease from this leader may run (see [`Observation::leases`]).
    pub leases: BTreeMap<NodeId, Instant>,
    /// Nodes this leader has decided to declare down, whose decision is not yet applied here: no
    /// lease for them meanwhile (a lease granted against the map before the move would let them
    /// act for the shards being handed over).
    pub condemned: BTreeSet<NodeId>,
}

/// What the failure detector decided.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Judgement {
    /// Whether the leader knows enough to decide (see the module doc). When false, the other
    /// fields are empty.
    pub settled: bool,
    /// [`Command::SetNodeState`] to propose, in node order: nodes down, nodes back.
    pub commands: Vec<Command>,
    /// The nodes that may hold a lease from this leader (the leader included): the rebalancer's
    /// alive set.
    pub alive: BTreeSet<NodeId>,
}

impl Judgement {
    /// The nodes this judgement declares down.
    pub fn down(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.commands.iter().filter_map(|c| match c {
            Command::SetNodeState {
                id,
                state: NodeState::Down,
            } => Some(*id),
            _ => None,
        })
    }
}

/// Judges one pass (see the module doc).
pub fn judge(o: &Observation<'_>) -> Judgement {
    let alive = |id: NodeId| {
        id == o.me
            || o.leases
                .get(&id)
                .is_some_and(|until| o.now < *until + o.margin)
    };
    let settled = o.now.saturating_duration_since(o.leading_since) >= o.settle
        || o.nodes
            .iter()
            .all(|(id, state)| *state == NodeState::Down || alive(*id));
    if !settled {
        return Judgement::default();
    }
    let mut judgement = Judgement {
        settled,
        ..Judgement::default()
    };
    for (&id, &state) in o.nodes {
        let alive = alive(id);
        let new_state = match state {
            NodeState::Active | NodeState::Draining if !alive => Some(NodeState::Down),
            NodeState::Down if alive => Some(NodeState::Active),
            _ => None,
        };
        if let Some(state) = new_state {
            judgement.commands.push(Command::SetNodeState { id, state });
        }
        if alive {
            judgement.alive.insert(id);
        }
    }
    judgement
}

#[cfg(test)]
mod tests {
    use super::*;

    const MARGIN: Duration = Duration::from_millis(100);
    const SETTLE: Duration = Duration::from_millis(900);

    struct Case {
        name: &'static str,
        /// `(node, state, its lease from this leader ends this many ms from now)`; `None`: no lease
        /// granted in this term.
        nodes: &'static [(NodeId, NodeState, Option<i64>)],
        /// How long ago this node (node 1) became leader, in ms.
        leading_for_ms: u64,
        settled: bool,
        down: &'static [NodeId],
        back: &'static [NodeId],
        alive: &'static [NodeId],
    }

    use NodeState::{Active, Down, Draining};

    const CASES: &[Case] = &[
        Case {
            name: "every lease runs: nothing to do",
            nodes: &[
                (1, Active, None),
                (2, Active, Some(700)),
                (3, Active, Some(10)),
            ],
            leading_for_ms: 10_000,
            settled: true,
            down: &[],
            back: &[],
            alive: &[1, 2, 3],
        },
        Case {
            name: "a lease over by less than the margin: still alive",
            nodes: &[(1, Active, None), (2, Active, Some(-99))],
            leading_for_ms: 10_000,
            settled: true,
            down: &[],
            back: &[],
            alive: &[1, 2],
        },
        Case {
            name: "a lease over by the margin: down",
            nodes: &[
                (1, Active, None),
                (2, Active, Some(500)),
                (3, Active, Some(-100)),
            ],
            leading_for_ms: 10_000,
            settled: true,
            down: &[3],
            back: &[],
            alive: &[1, 2],
        },
        Case {
            name: "a draining node whose lease ran out is declared down too",
            nodes: &[(1, Active, None), (2, Draining, Some(-5000))],
            leading_for_ms: 10_000,
            settled: true,
            down: &[2],
            back: &[],
            alive: &[1],
        },
        Case {
            name: "a down node granted a lease again comes back",
            nodes: &[(1, Active, None), (2, Down, Some(600)), (3, Down, None)],
            leading_for_ms: 10_000,
            settled: true,
            down: &[],
            back: &[2],
            alive: &[1, 2],
        },
        Case {
            name: "a new leader that has not heard everyone waits",
            nodes: &[(1, Active, None), (2, Active, Some(700)), (3, Active, None)],
            leading_for_ms: 899,
            settled: false,
            down: &[],
            back: &[],
            alive: &[],
        },
        Case {
            name: "a new leader that has heard every live node decides at once",
            nodes: &[(1, Active, None), (2, Active, Some(700)), (3, Down, None)],
            leading_for_ms: 0,
            settled: true,
            down: &[],
            back: &[],
            alive: &[1, 2],
        },
        Case {
            name: "a new leader counts a lease it granted that ran out as not heard",
            nodes: &[
                (1, Active, None),
                (2, Active, Some(-300)),
                (3, Active, Some(700)),
            ],
            leading_for_ms: 800,
            settled: false,
            down: &[],
            back: &[],
            alive: &[],
        },
        Case {
            name: "after L + margin as leader, a node never granted a lease is down",
            nodes: &[(1, Active, None), (2, Active, Some(700)), (3, Active, None)],
            leading_for_ms: 900,
            settled: true,
            down: &[3],
            back: &[],
            alive: &[1, 2],
        },
        Case {
            name: "the leader never judges itself down",
            nodes: &[(1, Down, None), (2, Active, Some(10))],
            leading_for_ms: 10_000,
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
            let leases: BTreeMap<NodeId, Instant> = c
                .nodes
                .iter()
                .filter_map(|(id, _, ends)| {
                    let ends = (*ends)?;
                    let by = Duration::from_millis(ends.unsigned_abs());
                    Some((*id, if ends >= 0 { now + by } else { now - by }))
                })
                .collect();
            let j = judge(&Observation {
                me: 1,
                nodes: &nodes,
                leases: &leases,
                leading_since: now - Duration::from_millis(c.leading_for_ms),
                now,
                margin: MARGIN,
                settle: SETTLE,
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
            assert_eq!(j.down().collect::<Vec<_>>(), c.down, "{}", c.name);
            assert_eq!(
                j.alive,
                c.alive.iter().copied().collect::<BTreeSet<_>>(),
                "{}",
                c.name
            );
        }
    }
}
