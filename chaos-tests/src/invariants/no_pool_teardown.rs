//! **No call is torn down by the pool on its own.** The caller never receives a BYE (its ledger's
//! `ended_by_far_side`), and the gateways receive no more BYEs than the caller sent, plus one for
//! each B-leg that never became a caller's call: every answered call has exactly one answered B-leg,
//! so the gateways' answered calls beyond the caller's answered calls are legs the pool rightly ended
//! itself (a late 2xx to an attempt it gave up on — a gateway that came back during a failover —, or a
//! caller whose INVITE failed after the gateway answered).

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
    let answered = obs
        .calls
        .iter()
        .filter(|c| c.record.setup.is_some_and(Outcome::is_success))
        .count() as u64;
    let extra_legs = obs.gateway_calls.saturating_sub(answered);
    let by_pool = obs.gateway_byes.saturating_sub(caller_byes);
    if by_pool > extra_legs {
        violations.push(format!(
            "the gateways received {} BYEs for {} answered legs; the caller sent {caller_byes} BYEs and \
             got {answered} calls answered: {} calls ended by the pool",
            obs.gateway_byes,
            obs.gateway_calls,
            by_pool - extra_legs
        ));
    }
    Verdict {
        name: "no-pool-teardown",
        checked: obs.calls.len(),
        violations,
    }
}
