//! Per-term clocks of what a node knows about earlier Raft terms: when it last received an RPC from
//! a leader (any AppendEntries or snapshot, accepted or not), and when it last granted a lease as
//! leader. A new leader asks for "the latest such instant of a term before mine" (in the lease
//! heartbeats the voters send it) to bound when the leases earlier leaders granted have ended
//! (`judge::prior_leases_end`). Pure bookkeeping: the caller passes the instants.

use tokio::time::Instant;

/// The latest instant of an event per Raft term, kept as two values: the latest of the highest term
/// seen and the latest of every lower term (all a "before term T" question needs, since terms only
/// grow at a node). Starts with an event at the node's start instant in term 0: whatever happened
/// before a restart (a leader heard, a lease granted) happened before the process started, and the
/// answers must never claim an earlier time than the truth.
#[derive(Debug, Clone, Copy)]
pub(super) struct TermClock {
    /// The highest term an event was recorded for.
    term: u64,
    /// The latest event of `term`.
    last: Instant,
    /// The latest event of any term below `term`.
    below: Option<Instant>,
}

impl TermClock {
    /// A clock whose only event is the node's start (term 0).
    pub(super) fn new(started: Instant) -> TermClock {
        TermClock {
            term: 0,
            last: started,
            below: None,
        }
    }

    /// Records an event of `term` at `at`.
    pub(super) fn record(&mut self, term: u64, at: Instant) {
        if term > self.term {
            self.below = Some(self.below.map_or(self.last, |b| b.max(self.last)));
            self.term = term;
            self.last = at;
        } else if term == self.term {
            self.last = self.last.max(at);
        } else {
            self.below = Some(self.below.map_or(at, |b| b.max(at)));
        }
    }

    /// The latest event of a term below `term`; `None` when it cannot be answered: this clock
    /// has seen a term above `term` (its lower terms are merged), or `term` is 0.
    pub(super) fn before(&self, term: u64) -> Option<Instant> {
        match self.term.cmp(&term) {
            std::cmp::Ordering::Less => Some(self.below.map_or(self.last, |b| b.max(self.last))),
            std::cmp::Ordering::Equal => self.below,
            std::cmp::Ordering::Greater => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn the_start_counts_as_an_event_of_an_earlier_term() {
        let t0 = Instant::now();
        let c = TermClock::new(t0);
        assert_eq!(c.before(1), Some(t0));
        assert_eq!(c.before(7), Some(t0));
        assert_eq!(c.before(0), None);
    }

    #[test]
    fn answers_the_latest_event_of_a_lower_term() {
        let t0 = Instant::now();
        let mut c = TermClock::new(t0);
        c.record(3, at(t0, 100));
        c.record(3, at(t0, 200));
        assert_eq!(c.before(3), Some(t0), "only the start is below term 3");
        assert_eq!(c.before(4), Some(at(t0, 200)));
        c.record(4, at(t0, 300));
        assert_eq!(c.before(4), Some(at(t0, 200)));
        assert_eq!(c.before(5), Some(at(t0, 300)));
        // A late RPC of an old term (a deposed leader still sending): it counts for every later term.
        c.record(2, at(t0, 400));
        assert_eq!(c.before(4), Some(at(t0, 400)));
        assert_eq!(c.before(5), Some(at(t0, 400)));
        // A term above the question: the clock can no longer answer for that term.
        assert_eq!(c.before(3), None);
    }

    #[test]
    fn never_goes_back_in_time() {
        let t0 = Instant::now();
        let mut c = TermClock::new(t0);
        c.record(5, at(t0, 500));
        c.record(5, at(t0, 100));
        assert_eq!(c.before(6), Some(at(t0, 500)));
        c.record(6, at(t0, 50));
        assert_eq!(c.before(6), Some(at(t0, 500)));
    }
}
