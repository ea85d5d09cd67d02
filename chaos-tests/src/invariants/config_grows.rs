//! **Configuration versions only grow on every node** — within a process and across its restarts
//! (the applied state is on disk): from the nodes' own reports (`config node=N version=V`, in file
//! order) and from the sampler's view of each node, in time order.

use std::collections::BTreeMap;

use crate::audit::Event;

use super::{Observations, Verdict};

/// Checks the invariant.
pub fn check(obs: &Observations) -> Verdict {
    let mut violations = Vec::new();
    let mut checked = 0;
    for (node, events) in obs.audit.iter().enumerate() {
        let mut last: Option<u64> = None;
        for e in events {
            if let Event::Config { version, at, .. } = e {
                checked += 1;
                if last.is_some_and(|l| *version < l) {
                    violations.push(format!(
                        "node {node} reported configuration version {version} at {at} after {}",
                        last.unwrap_or_default()
                    ));
                }
                last = Some(last.map_or(*version, |l| l.max(*version)));
            }
        }
    }
    let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
    let mut samples = obs.samples.clone();
    samples.sort_by_key(|s| s.at);
    for s in samples {
        let Some(v) = s.config_version else { continue };
        checked += 1;
        match seen.get(&s.node) {
            Some(&prev) if v < prev => violations.push(format!(
                "node {} showed configuration version {v} at {} after {prev}",
                s.node, s.at
            )),
            _ => {
                seen.insert(s.node, v);
            }
        }
    }
    Verdict {
        name: "config-versions-grow",
        checked,
        violations,
    }
}
