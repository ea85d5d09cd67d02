//! **After healing, the pool converges and serves new calls at its normal rate.** After every
//! scenario: every shard owned, every node active with shards and holding its lease, every node on
//! the same configuration version, and fresh calls offered at the normal rate (the rate the run
//! started with) all answered, re-INVITEd and hung up.

use super::{Observations, Verdict};

/// Checks the invariant.
pub fn check(obs: &Observations) -> Verdict {
    let mut violations = Vec::new();
    for c in &obs.convergence {
        if let Err(why) = &c.converged {
            violations.push(format!("[{}] did not converge: {why}", c.scenario));
            continue;
        }
        if c.completed < c.placed {
            violations.push(format!(
                "[{}] {} of {} fresh calls completed after healing",
                c.scenario, c.completed, c.placed
            ));
        }
        let versions: std::collections::BTreeSet<Option<u64>> =
            c.config_versions.iter().map(|(_, v)| *v).collect();
        if versions.len() > 1 {
            violations.push(format!(
                "[{}] nodes on different configuration versions: {:?}",
                c.scenario, c.config_versions
            ));
        }
    }
    if obs.convergence.is_empty() {
        violations.push("no scenario healed: nothing was checked".to_owned());
    }
    Verdict {
        name: "converges-after-healing",
        checked: obs.convergence.len(),
        violations,
    }
}
