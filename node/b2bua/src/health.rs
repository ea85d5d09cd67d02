//! Gateway health, pure: the up/down hysteresis fed by OPTIONS probes and INVITE outcomes,
//! the CPS token bucket, and [`GatewayView`], the per-trunk snapshot that routing reads.
//!
//! No clock, socket or timer lives here: the GatewayActor sends the probes, measures time and
//! feeds the outcomes in ([`on_probe`], [`on_invite`], [`TokenBucket::try_take`] with the
//! time passed as a `Duration` since any fixed start), then publishes [`GatewayView`]s.

use std::collections::BTreeMap;
use std::time::Duration;

/// What routing needs to know about one trunk, as the GatewayActor last published it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayView {
    /// The health state: false once the peer failed `down_after` times in a row.
    pub up: bool,
    /// False when an operator disabled the trunk: no new calls are sent to it.
    pub enabled: bool,
    /// Calls this node currently has through the trunk.
    pub active_calls: u32,
    /// The trunk's capacity is used up (max_calls reached, or no CPS token left).
    pub at_capacity: bool,
}

impl Default for GatewayView {
    /// A trunk nobody has reported on: up, enabled, idle (matches [`HealthState::default`]).
    fn default() -> Self {
        Self {
            up: true,
            enabled: true,
            active_calls: 0,
            at_capacity: false,
        }
    }
}

/// Where routing reads gateway views from. A trunk missing from the view counts as
/// [`GatewayView::default`] (up, enabled, idle).
pub trait HealthView {
    /// The view of the trunk with this name.
    fn view(&self, trunk: &str) -> GatewayView;
}

impl HealthView for BTreeMap<String, GatewayView> {
    fn view(&self, trunk: &str) -> GatewayView {
        self.get(trunk).copied().unwrap_or_default()
    }
}

/// No information about any trunk: every trunk is up, enabled and idle.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllUp;

impl HealthView for AllUp {
    fn view(&self, _trunk: &str) -> GatewayView {
        GatewayView::default()
    }
}

/// The answer (or lack of one) to an OPTIONS probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// A final response with this status. Any status proves the peer alive (even 404 or 405,
    /// which only say it does not like OPTIONS) except 503, which says it takes no work.
    Answered(u16),
    /// No final response in time (Timer F).
    Timeout,
    /// The request could not be sent (ICMP unreachable, connection refused or reset).
    TransportError,
}

impl ProbeOutcome {
    /// Whether this outcome counts as a success for the hysteresis.
    pub fn is_success(self) -> bool {
        matches!(self, ProbeOutcome::Answered(status) if status != 503)
    }
}

/// How an INVITE sent to a trunk ended, for passive health.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InviteOutcome {
    /// A final response (or a provisional one: any answer proves life). 503 counts as a
    /// failure, everything else (486 busy, 404, 200…) as a success.
    Answered(u16),
    /// No answer in time (Timer B, or the fast-failover timer without any provisional).
    Timeout,
    /// The request could not be sent.
    TransportError,
}

impl InviteOutcome {
    /// Whether this outcome counts as a success for the hysteresis.
    pub fn is_success(self) -> bool {
        matches!(self, InviteOutcome::Answered(status) if status != 503)
    }
}

/// A change of the up/down state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The peer failed `down_after` times in a row.
    WentDown,
    /// The down peer succeeded `up_after` times in a row.
    WentUp,
}

/// The hysteresis state of one gateway.
///
/// It starts **up** (optimistic): a node that just started, or a gateway just added to the
/// configuration, must carry calls at once rather than refuse them for `up_after` probe
/// intervals — in a pool under rolling restart a pessimistic start would turn every restart
/// into an outage. A gateway that is in fact dead is found by the first failed INVITEs (with
/// failover to the next gateway, so no call is lost) or within `down_after` probe intervals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthState {
    /// Up or down.
    pub up: bool,
    /// Failures in a row since the last success (counted while up).
    pub consecutive_failures: u32,
    /// Successes in a row since the last failure (counted while down).
    pub consecutive_successes: u32,
}

impl Default for HealthState {
    fn default() -> Self {
        Self {
            up: true,
            consecutive_failures: 0,
            consecutive_successes: 0,
        }
    }
}

/// Feeds one success or failure into the hysteresis: an up peer goes down after `down_after`
/// failures in a row, a down peer comes up after `up_after` successes in a row. Thresholds
/// below 1 are treated as 1.
pub fn on_result(
    state: HealthState,
    success: bool,
    down_after: u32,
    up_after: u32,
) -> (HealthState, Option<Transition>) {
    let mut next = state;
    if success {
        next.consecutive_failures = 0;
        next.consecutive_successes = next.consecutive_successes.saturating_add(1);
        if !next.up && next.consecutive_successes >= up_after.max(1) {
            next.up = true;
            next.consecutive_successes = 0;
            return (next, Some(Transition::WentUp));
        }
    } else {
        next.consecutive_successes = 0;
        next.consecutive_failures = next.consecutive_failures.saturating_add(1);
        if next.up && next.consecutive_failures >= down_after.max(1) {
            next.up = false;
            next.consecutive_failures = 0;
            return (next, Some(Transition::WentDown));
        }
    }
    (next, None)
}

/// Feeds an OPTIONS probe outcome into the hysteresis (see [`on_result`]).
pub fn on_probe(
    state: HealthState,
    outcome: ProbeOutcome,
    down_after: u32,
    up_after: u32,
) -> (HealthState, Option<Transition>) {
    on_result(state, outcome.is_success(), down_after, up_after)
}

/// Feeds an INVITE outcome into the hysteresis (passive health, see [`on_result`]).
pub fn on_invite(
    state: HealthState,
    outcome: InviteOutcome,
    down_after: u32,
    up_after: u32,
) -> (HealthState, Option<Transition>) {
    on_result(state, outcome.is_success(), down_after, up_after)
}

/// Millionths of a token: the bucket counts in these so that refill is exact enough without
/// floating point.
const MICRO: u64 = 1_000_000;

/// A token bucket limiting calls per second, with the time passed in.
///
/// It holds at most `burst` tokens, gains `rate` tokens a second, and each allowed call takes
/// one. It starts full. Time is any monotonic `Duration` since a fixed start (e.g.
/// `tokio::time::Instant::now() - start`); time going backwards adds nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenBucket {
    rate: u32,
    burst: u32,
    micro_tokens: u64,
    last: Duration,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` a second (both at least 1).
    pub fn new(rate: u32, burst: u32) -> Self {
        let burst = burst.max(1);
        Self {
            rate: rate.max(1),
            burst,
            micro_tokens: u64::from(burst) * MICRO,
            last: Duration::ZERO,
        }
    }

    /// The bucket for a trunk's `max_cps`: `max_cps` a second, bursts of up to one second's
    /// worth.
    pub fn for_cps(max_cps: u32) -> Self {
        Self::new(max_cps, max_cps)
    }

    fn refill(&mut self, now: Duration) {
        let Some(elapsed) = now.checked_sub(self.last) else {
            return;
        };
        self.last = now;
        // rate tokens per second = rate * 10^6 micro-tokens per 10^9 ns.
        let gained = elapsed.as_nanos() * u128::from(self.rate) / 1_000;
        let cap = u64::from(self.burst) * MICRO;
        let total = u128::from(self.micro_tokens) + gained;
        self.micro_tokens = u64::try_from(total.min(u128::from(cap))).unwrap_or(cap);
    }

    /// Takes a token if one is there at time `now`; false means the call is over the rate.
    pub fn try_take(&mut self, now: Duration) -> bool {
        self.refill(now);
        if self.micro_tokens >= MICRO {
            self.micro_tokens -= MICRO;
            true
        } else {
            false
        }
    }

    /// Whether a token is there at time `now`, without taking it (for [`GatewayView::at_capacity`]).
    pub fn has_token(&self, now: Duration) -> bool {
        let mut probe = *self;
        probe.refill(now);
        probe.micro_tokens >= MICRO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(
        mut s: HealthState,
        results: &[bool],
        down: u32,
        up: u32,
    ) -> (HealthState, Vec<Transition>) {
        let mut transitions = Vec::new();
        for &r in results {
            let (next, t) = on_result(s, r, down, up);
            s = next;
            transitions.extend(t);
        }
        (s, transitions)
    }

    #[test]
    fn starts_up() {
        assert!(HealthState::default().up);
        assert_eq!(GatewayView::default().up, HealthState::default().up);
    }

    #[test]
    fn goes_down_after_n_consecutive_failures_only() {
        let (s, t) = feed(HealthState::default(), &[false, false], 3, 2);
        assert!(s.up);
        assert!(t.is_empty());
        // A success in between resets the count.
        let (s, t) = feed(s, &[true, false, false], 3, 2);
        assert!(s.up && t.is_empty());
        let (s, t) = feed(s, &[false], 3, 2);
        assert!(!s.up);
        assert_eq!(t, vec![Transition::WentDown]);
        // Further failures do not repeat the transition.
        let (s, t) = feed(s, &[false, false, false], 3, 2);
        assert!(!s.up && t.is_empty());
    }

    #[test]
    fn comes_up_after_m_consecutive_successes_only() {
        let (down, _) = feed(HealthState::default(), &[false, false], 2, 2);
        assert!(!down.up);
        let (s, t) = feed(down, &[true, false, true], 2, 2);
        assert!(!s.up && t.is_empty());
        let (s, t) = feed(s, &[true], 2, 2);
        assert!(s.up);
        assert_eq!(t, vec![Transition::WentUp]);
        assert_eq!(s.consecutive_failures, 0);
        assert_eq!(s.consecutive_successes, 0);
    }

    #[test]
    fn threshold_of_one_flips_immediately_and_zero_is_one() {
        let (s, t) = on_result(HealthState::default(), false, 1, 1);
        assert_eq!((s.up, t), (false, Some(Transition::WentDown)));
        let (s, t) = on_result(s, true, 0, 0);
        assert_eq!((s.up, t), (true, Some(Transition::WentUp)));
    }

    #[test]
    fn probe_outcomes_classified() {
        for status in [200, 404, 405, 486, 500, 408] {
            assert!(ProbeOutcome::Answered(status).is_success(), "{status}");
        }
        assert!(!ProbeOutcome::Answered(503).is_success());
        assert!(!ProbeOutcome::Timeout.is_success());
        assert!(!ProbeOutcome::TransportError.is_success());
        let (s, t) = on_probe(HealthState::default(), ProbeOutcome::Answered(503), 1, 1);
        assert_eq!((s.up, t), (false, Some(Transition::WentDown)));
        let (s, t) = on_probe(s, ProbeOutcome::Answered(405), 1, 1);
        assert_eq!((s.up, t), (true, Some(Transition::WentUp)));
    }

    #[test]
    fn invite_outcomes_classified() {
        assert!(InviteOutcome::Answered(486).is_success());
        assert!(InviteOutcome::Answered(200).is_success());
        assert!(!InviteOutcome::Answered(503).is_success());
        assert!(!InviteOutcome::Timeout.is_success());
        assert!(!InviteOutcome::TransportError.is_success());
        let mut s = HealthState::default();
        let mut last = None;
        for outcome in [
            InviteOutcome::Timeout,
            InviteOutcome::TransportError,
            InviteOutcome::Answered(503),
        ] {
            (s, last) = on_invite(s, outcome, 3, 2);
        }
        assert_eq!((s.up, last), (false, Some(Transition::WentDown)));
    }

    #[test]
    fn health_view_defaults_for_unknown_trunks() {
        let mut map = BTreeMap::new();
        let busy = GatewayView {
            up: false,
            enabled: true,
            active_calls: 7,
            at_capacity: true,
        };
        map.insert("gw1".to_owned(), busy);
        assert_eq!(map.view("gw1"), busy);
        assert_eq!(map.view("gw2"), GatewayView::default());
        assert_eq!(AllUp.view("x"), GatewayView::default());
    }

    #[test]
    fn token_bucket_allows_burst_then_rate() {
        let mut b = TokenBucket::new(10, 3);
        let t0 = Duration::from_secs(100);
        // Full at start: a burst of 3.
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0));
        // 10/s: one token per 100 ms.
        assert!(!b.try_take(t0 + Duration::from_millis(99)));
        assert!(b.try_take(t0 + Duration::from_millis(100)));
        assert!(!b.try_take(t0 + Duration::from_millis(150)));
        assert!(!b.has_token(t0 + Duration::from_millis(199)));
        assert!(b.has_token(t0 + Duration::from_millis(200)));
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..5).filter(|_| b.try_take(later)).count(), 3);
    }

    #[test]
    fn token_bucket_counts_a_second_at_rate() {
        let mut b = TokenBucket::for_cps(50);
        let start = Duration::from_secs(1);
        // Drain the initial burst.
        assert_eq!((0..100).filter(|_| b.try_take(start)).count(), 50);
        // Then attempts every 1 ms for one second: 50 allowed.
        let allowed = (1..=1000)
            .filter(|ms| b.try_take(start + Duration::from_millis(*ms)))
            .count();
        assert_eq!(allowed, 50);
    }

    #[test]
    fn token_bucket_ignores_time_going_backwards() {
        let mut b = TokenBucket::new(1, 1);
        assert!(b.try_take(Duration::from_secs(10)));
        assert!(!b.try_take(Duration::from_secs(5)));
        assert!(!b.try_take(Duration::from_millis(10_500)));
        assert!(b.try_take(Duration::from_secs(11)));
    }
}
