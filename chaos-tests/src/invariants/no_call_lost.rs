//! **No established call is lost.** Every call answered 2xx — before a fault, or while one ran —
//! must get a 2xx to the re-INVITE and to the BYE the caller sends after the fault was healed, and
//! its B-leg must be gone from the gateways at the end. An in-dialog request without a final answer
//! in 64·T1 counts here: after healing, a call that cannot be reached is a lost call (the ledger
//! shows it as *unknown*, the summary counts it apart).

use medpool_simpeer::Outcome;

use super::{Observations, Verdict};

/// Checks the invariant.
pub fn check(obs: &Observations) -> Verdict {
    let mut violations = Vec::new();
    let mut checked = 0;
    for c in &obs.calls {
        let r = &c.record;
        if !r.setup.is_some_and(Outcome::is_success) {
            continue;
        }
        checked += 1;
        let reinvite = r.reinvite.is_some_and(Outcome::is_success);
        let bye = r.bye.is_some_and(Outcome::is_success) || r.ended_by_far_side;
        if !reinvite || !bye {
            let show =
                |o: Option<Outcome>| o.map_or_else(|| "not sent".to_owned(), |o| o.to_string());
            violations.push(format!(
                "[{}] call {} ({}): re-INVITE {}, BYE {}",
                c.scenario,
                r.index,
                r.call_id,
                show(r.reinvite),
                show(r.bye)
            ));
        }
    }
    if !obs.gateway_legs_left.is_empty() {
        violations.push(format!(
            "{} B-legs still up at the gateways after every call was hung up: {:?}",
            obs.gateway_legs_left.len(),
            obs.gateway_legs_left.iter().take(5).collect::<Vec<_>>()
        ));
    }
    Verdict {
        name: "no-call-lost",
        checked,
        violations,
    }
}
