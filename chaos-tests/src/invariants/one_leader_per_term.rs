//! **One leader per term.** The nodes' own reports (`leader node=N term=T`) and the sampler's view
//! (each node's current term and the leader it knows) never name two leaders for one term.

use std::collections::{BTreeMap, BTreeSet};

use crate::audit::Event;

use super::{Observations, Verdict};

/// Checks the invariant.
pub fn check(obs: &Observations) -> Verdict {
    let mut leaders: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for events in &obs.audit {
        for e in events {
            if let Event::Leader { node, term, .. } = e {
                leaders.entry(*term).or_default().insert(*node);
            }
        }
    }
    for s in &obs.samples {
        if let Some(l) = s.leader {
            leaders.entry(s.term).or_default().insert(l);
        }
    }
    let violations = leaders
        .iter()
        .filter(|(_, ls)| ls.len() > 1)
        .map(|(t, ls)| format!("term {t}: leaders {ls:?}"))
        .collect();
    let mut v = Verdict {
        name: "one-leader-per-term",
        checked: leaders.len(),
        violations,
    };
    if leaders.is_empty() {
        v.violations
            .push("no leader was ever observed: nothing was checked".to_owned());
    }
    v
}
