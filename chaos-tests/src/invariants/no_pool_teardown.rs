//! **No call is torn down by the pool on its own.** The caller never receives a BYE (its ledger's
//! `ended_by_far_side`), and the gateways receive no more BYEs than the caller sent, plus one for
//! each call whose set-up did not complete for the caller (the pool may end a B-leg whose A-leg
//! failed: that is cleanup, not a teardown).

use medpool_simpeer::Outcome;

use super::{Observations, Verdict};

/// Checks the invariant.
pub fn check(obs: &Observations) -> Verdict {
    let mut violations: Vec<String> = obs
        .calls
        .iter()
        .filter(|c| c.record.ended_by_far_side)
        .map(|c| {
            format!(
                "[{}] call {} ({}) hung up by the pool",
                c.scenario, c.record.index, c.record.call_id
            )
        })
        .collect();
    let caller_byes = obs.calls.iter().filter(|c| c.record.bye.is_some()).count() as u64;
    let unfinished_setups = obs
        .calls
        .iter()
        .filter(|c| !c.record.setup.is_some_and(Outcome::is_success))
        .count() as u64;
    if obs.gateway_byes > caller_byes + unfinished_setups {
        violations.push(format!(
            "the gateways received {} BYEs; the caller sent {caller_byes} and {unfinished_setups} \
             set-ups did not complete: {} calls ended by the pool",
            obs.gateway_byes,
            obs.gateway_byes - caller_byes - unfinished_setups
        ));
    }
    Verdict {
        name: "no-pool-teardown",
        checked: obs.calls.len(),
        violations,
    }
}
