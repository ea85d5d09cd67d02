//! Transaction timers of RFC 3261 §17 (and Timers L and M of RFC 6026): the names, the base values
//! T1, T2 and T4, and the rule that gives each timer its duration.
//!
//! This module owns no clock. The state machines ask it for durations and hand them to their driver in
//! `StartTimer` actions; the driver runs them on `tokio::time`.
//!
//! | timer | duration                                   | started by                                  |
//! |-------|--------------------------------------------|---------------------------------------------|
//! | A     | T1, doubling each time it fires (no cap)   | INVITE client, unreliable: retransmit       |
//! | B     | 64·T1                                      | INVITE client: give up waiting (Calling)    |
//! | D     | max(32 s, 64·T1) unreliable, 0 reliable    | INVITE client: absorb final retransmissions |
//! | E     | T1, doubling, capped at T2; T2 once Proceeding | non-INVITE client, unreliable: retransmit |
//! | F     | 64·T1                                      | non-INVITE client: give up                  |
//! | G     | T1, doubling, capped at T2                 | INVITE server, unreliable: resend non-2xx   |
//! | H     | 64·T1                                      | INVITE server: give up waiting for ACK      |
//! | I     | T4 unreliable, 0 reliable                  | INVITE server: absorb ACK retransmissions   |
//! | J     | 64·T1 unreliable, 0 reliable               | non-INVITE server: absorb request retransmissions |
//! | K     | T4 unreliable, 0 reliable                  | non-INVITE client: absorb final retransmissions |
//! | L     | 64·T1                                      | INVITE server after 2xx (RFC 6026 Accepted) |
//! | M     | 64·T1                                      | INVITE client after 2xx (RFC 6026 Accepted) |
//!
//! Timer C (proxy INVITE guard) is not used by a user agent and is left out.

use std::time::Duration;

/// The base timer values of RFC 3261 (Table 4). The defaults are the RFC's recommended values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate: initial retransmission interval (default 500 ms).
    pub t1: Duration,
    /// Maximum retransmission interval for non-INVITE requests and INVITE responses (default 4 s).
    pub t2: Duration,
    /// Maximum time a message stays in the network (default 5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

/// The name of a transaction timer (RFC 3261 Table 4, plus L and M from RFC 6026).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimerId {
    /// INVITE client: request retransmission (unreliable transports only).
    A,
    /// INVITE client: transaction timeout while Calling.
    B,
    /// INVITE client: wait time for response retransmissions while Completed.
    D,
    /// Non-INVITE client: request retransmission (unreliable transports only).
    E,
    /// Non-INVITE client: transaction timeout.
    F,
    /// INVITE server: final non-2xx response retransmission (unreliable transports only).
    G,
    /// INVITE server: wait time for the ACK.
    H,
    /// INVITE server: wait time for ACK retransmissions while Confirmed.
    I,
    /// Non-INVITE server: wait time for request retransmissions while Completed.
    J,
    /// Non-INVITE client: wait time for response retransmissions while Completed.
    K,
    /// INVITE server: wait time in Accepted for INVITE retransmissions and ACKs (RFC 6026).
    L,
    /// INVITE client: wait time in Accepted for 2xx retransmissions (RFC 6026).
    M,
}

impl TimerId {
    /// Whether the timer only ends a transaction's linger: nothing is sent when it fires, and
    /// firing a little late keeps the transaction a little longer, never breaks the protocol.
    pub const fn ends_linger(self) -> bool {
        matches!(
            self,
            TimerId::D | TimerId::I | TimerId::J | TimerId::K | TimerId::L | TimerId::M
        )
    }

    /// Every timer, in declaration order.
    pub const ALL: [TimerId; 12] = [
        TimerId::A,
        TimerId::B,
        TimerId::D,
        TimerId::E,
        TimerId::F,
        TimerId::G,
        TimerId::H,
        TimerId::I,
        TimerId::J,
        TimerId::K,
        TimerId::L,
        TimerId::M,
    ];
}

/// A [`TimerConfig`] as a machine keeps it: whole nanoseconds (24 bytes, not 48). Every transaction
/// holds its machine until it ends, up to 64*T1 after its final answer (hundreds of thousands at
/// once after a burst), so its size counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct PackedConfig {
    t1: Interval,
    t2: Interval,
    t4: Interval,
}

impl PackedConfig {
    pub(super) fn new(config: TimerConfig) -> Self {
        Self {
            t1: Interval::of(config.t1),
            t2: Interval::of(config.t2),
            t4: Interval::of(config.t4),
        }
    }

    pub(super) fn get(self) -> TimerConfig {
        TimerConfig {
            t1: self.t1.get(),
            t2: self.t2.get(),
            t4: self.t4.get(),
        }
    }
}

/// A timer interval as a machine keeps it: whole nanoseconds (8 bytes; a `Duration` takes 16).
/// Saturates at ~584 years, far beyond any timer a transaction lives to start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Interval(u64);

impl Interval {
    pub(super) fn of(d: Duration) -> Self {
        Self(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    pub(super) fn get(self) -> Duration {
        Duration::from_nanos(self.0)
    }
}

/// RFC 3261 17.1.1.2: Timer D is "at least 32 seconds" on unreliable transports.
const TIMER_D_MIN: Duration = Duration::from_secs(32);

impl TimerConfig {
    /// 64·T1, the common transaction timeout (B, F, H, J, L, M).
    pub fn t1_x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer A's first interval: T1.
    pub fn timer_a_initial(&self) -> Duration {
        self.t1
    }

    /// Timer A's next interval after one of `current` fired: doubled, without cap.
    pub fn timer_a_next(&self, current: Duration) -> Duration {
        current.saturating_mul(2)
    }

    /// Timer B: 64·T1.
    pub fn timer_b(&self) -> Duration {
        self.t1_x64()
    }

    /// Timer D: zero on a reliable transport, else max(32 s, 64·T1) so that every retransmission
    /// of the final response the server may send (for up to Timer H = 64·T1) is still absorbed.
    pub fn timer_d(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            TIMER_D_MIN.max(self.t1_x64())
        }
    }

    /// Timer E's first interval: T1.
    pub fn timer_e_initial(&self) -> Duration {
        self.t1
    }

    /// Timer E's next interval in Trying after one of `current` fired: doubled, capped at T2.
    /// (In Proceeding the interval is always T2: see [`TimerConfig::t2`].)
    pub fn timer_e_next(&self, current: Duration) -> Duration {
        current.saturating_mul(2).min(self.t2)
    }

    /// Timer F: 64·T1.
    pub fn timer_f(&self) -> Duration {
        self.t1_x64()
    }

    /// Timer G's first interval: T1.
    pub fn timer_g_initial(&self) -> Duration {
        self.t1
    }

    /// Timer G's next interval after one of `current` fired: doubled, capped at T2.
    pub fn timer_g_next(&self, current: Duration) -> Duration {
        current.saturating_mul(2).min(self.t2)
    }

    /// Timer H: 64·T1.
    pub fn timer_h(&self) -> Duration {
        self.t1_x64()
    }

    /// Timer I: T4 on an unreliable transport, zero on a reliable one.
    pub fn timer_i(&self, reliable: bool) -> Duration {
        if reliable { Duration::ZERO } else { self.t4 }
    }

    /// Timer J: 64·T1 on an unreliable transport, zero on a reliable one (RFC 3261 17.2.2).
    pub fn timer_j(&self, reliable: bool) -> Duration {
        if reliable {
            Duration::ZERO
        } else {
            self.t1_x64()
        }
    }

    /// Timer K: T4 on an unreliable transport, zero on a reliable one.
    pub fn timer_k(&self, reliable: bool) -> Duration {
        if reliable { Duration::ZERO } else { self.t4 }
    }

    /// Timer L: 64·T1 (RFC 6026).
    pub fn timer_l(&self) -> Duration {
        self.t1_x64()
    }

    /// Timer M: 64·T1 (RFC 6026).
    pub fn timer_m(&self) -> Duration {
        self.t1_x64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn defaults_are_rfc_values() {
        let c = TimerConfig::default();
        assert_eq!((c.t1, c.t2, c.t4), (ms(500), ms(4000), ms(5000)));
        for d in [
            c.timer_b(),
            c.timer_f(),
            c.timer_h(),
            c.timer_l(),
            c.timer_m(),
        ] {
            assert_eq!(d, ms(32_000));
        }
        assert_eq!(c.timer_j(false), ms(32_000));
        assert_eq!(c.timer_d(false), ms(32_000));
        assert_eq!(c.timer_i(false), ms(5000));
        assert_eq!(c.timer_k(false), ms(5000));
    }

    #[test]
    fn reliable_transports_zero_d_i_j_k() {
        let c = TimerConfig::default();
        assert_eq!(c.timer_d(true), Duration::ZERO);
        assert_eq!(c.timer_i(true), Duration::ZERO);
        assert_eq!(c.timer_j(true), Duration::ZERO);
        assert_eq!(c.timer_k(true), Duration::ZERO);
    }

    #[test]
    fn a_doubles_without_cap_e_and_g_cap_at_t2() {
        let c = TimerConfig::default();
        let mut a = vec![c.timer_a_initial()];
        let mut e = vec![c.timer_e_initial()];
        let mut g = vec![c.timer_g_initial()];
        for _ in 0..5 {
            a.push(c.timer_a_next(*a.last().unwrap()));
            e.push(c.timer_e_next(*e.last().unwrap()));
            g.push(c.timer_g_next(*g.last().unwrap()));
        }
        assert_eq!(
            a,
            [ms(500), ms(1000), ms(2000), ms(4000), ms(8000), ms(16000)]
        );
        assert_eq!(
            e,
            [ms(500), ms(1000), ms(2000), ms(4000), ms(4000), ms(4000)]
        );
        assert_eq!(e, g);
    }

    #[test]
    fn timer_d_grows_with_a_large_t1() {
        let c = TimerConfig {
            t1: ms(1000),
            ..TimerConfig::default()
        };
        assert_eq!(c.timer_d(false), ms(64_000));
    }
}
