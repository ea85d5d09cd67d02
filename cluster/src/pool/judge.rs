//! The failure detector's judgement, as a pure function: from the nodes the applied state lists,
//! when the leader last heard each of them and what time it is now, which nodes to declare down or
//! back, and which count as alive for the rebalancer. No clock, no I/O: the leader task
//! (`detector.rs`) reads the time and the state and carries the commands out.
//!
//! The rules:
//! - a node is *heard* when its last lease heartbeat is less than L + margin old (the leader always
//!   hears itself);
//! - a new leader has heard nobody yet: until it has heard every node that is not down, or until
//!   L + margin has passed since it became leader, it decides nothing (it is not *settled*);
//! - once settled: an active or draining node not heard is declared down, a down node heard is
//!   declared active again, and the heard nodes are the alive set.

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
    /// When each node's last granted heartbeat arrived (nodes never heard are absent).
    pub heard: &'a BTreeMap<NodeId, Instant>,
    /// When this node became leader (of the current term).
    pub leading_since: Instant,
    /// Now.
    pub now: Instant,
    /// L + margin: how long a node may be silent before it is declared down.
    pub window: Duration,
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

/// Judges one pass (see the module doc).
pub fn judge(o: &Observation<'_>) -> Judgement {
    let heard_recently = |id: NodeId| {
        id == o.me
            || o.heard
                .get(&id)
                .is_some_and(|t| o.now.saturating_duration_since(*t) < o.window)
    };
    let settled = o.now.saturating_duration_since(o.leading_since) >= o.window
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
            NodeState::Active | NodeState::Draining if !recent => Some(NodeState::Down),
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

    const WINDOW: Duration = Duration::from_secs(3);

    struct Case {
        name: &'static str,
        /// `(node, state, heard this long ago)`; `None`: never heard.
        nodes: &'static [(NodeId, NodeState, Option<u64>)],
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
            name: "everyone heard: nothing to do",
            nodes: &[
                (1, Active, None),
                (2, Active, Some(100)),
                (3, Active, Some(2900)),
            ],
            leading_for_ms: 10_000,
            settled: true,
            down: &[],
            back: &[],
            alive: &[1, 2, 3],
        },
        Case {
            name: "a node silent for L + margin is declared down",
            nodes: &[
                (1, Active, None),
                (2, Active, Some(100)),
                (3, Active, Some(3000)),
            ],
            leading_for_ms: 10_000,
            settled: true,
            down: &[3],
            back: &[],
            alive: &[1, 2],
        },
        Case {
            name: "a draining node that falls silent is declared down too",
            nodes: &[(1, Active, None), (2, Draining, Some(5000))],
            leading_for_ms: 10_000,
            settled: true,
            down: &[2],
            back: &[],
            alive: &[1],
        },
        Case {
            name: "a down node heard again comes back",
            nodes: &[(1, Active, None), (2, Down, Some(200)), (3, Down, None)],
            leading_for_ms: 10_000,
            settled: true,
            down: &[],
            back: &[2],
            alive: &[1, 2],
        },
        Case {
            name: "a new leader that has not heard everyone waits",
            nodes: &[(1, Active, None), (2, Active, Some(100)), (3, Active, None)],
            leading_for_ms: 2999,
            settled: false,
            down: &[],
            back: &[],
            alive: &[],
        },
        Case {
            name: "a new leader that has heard every live node decides at once",
            nodes: &[(1, Active, None), (2, Active, Some(100)), (3, Down, None)],
            leading_for_ms: 0,
            settled: true,
            down: &[],
            back: &[],
            alive: &[1, 2],
        },
        Case {
            name: "after L + margin as leader, silence means down",
            nodes: &[(1, Active, None), (2, Active, Some(100)), (3, Active, None)],
            leading_for_ms: 3000,
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
            let heard: BTreeMap<NodeId, Instant> = c
                .nodes
                .iter()
                .filter_map(|(id, _, ago)| Some((*id, now - Duration::from_millis((*ago)?))))
                .collect();
            let j = judge(&Observation {
                me: 1,
                nodes: &nodes,
                heard: &heard,
                leading_since: now - Duration::from_millis(c.leading_for_ms),
                now,
                window: WINDOW,
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
}
