//! The driver's timer wheel: every running transaction timer by deadline, and each transaction's
//! slots in it, so a timer is restarted or stopped without a search. Pure data on `tokio::time`
//! instants; the driver's timer task sleeps until [`Wheel::next_deadline`].

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::key::TransactionKey;
use super::timers::TimerId;

/// The running timers of one transaction: where each sits in the [`Wheel`].
#[derive(Default)]
pub(super) struct TimerSlots(pub(super) [Option<(Instant, u64)>; TimerId::ALL.len()]);

/// All running timers of the driver, by deadline; the sequence number keeps equal deadlines in the
/// order they were set and makes every entry unique.
#[derive(Default)]
pub(super) struct Wheel {
    pub(super) entries: BTreeMap<(Instant, u64), (TransactionKey, TimerId)>,
    next_seq: u64,
}

impl Wheel {
    /// (Re)start timer `id` of `key` at `at`; returns whether it is now the earliest timer (the timer
    /// task must be woken).
    pub(super) fn start(
        &mut self,
        slots: &mut TimerSlots,
        key: &TransactionKey,
        id: TimerId,
        at: Instant,
    ) -> bool {
        self.stop(slots, id);
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert((at, seq), (key.clone(), id));
        slots.0[id.index()] = Some((at, seq));
        self.entries.first_key_value().map(|(k, _)| k.1) == Some(seq)
    }

    pub(super) fn stop(&mut self, slots: &mut TimerSlots, id: TimerId) {
        if let Some(at) = slots.0[id.index()].take() {
            self.entries.remove(&at);
        }
    }

    pub(super) fn stop_all(&mut self, slots: &mut TimerSlots) {
        for id in TimerId::ALL {
            self.stop(slots, id);
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.entries.first_key_value().map(|((at, _), _)| *at)
    }
}
