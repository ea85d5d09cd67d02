//! The driver's timer wheel: every running transaction timer by deadline, and each transaction's
//! slots in it, so a timer is restarted or stopped without a search. Pure data on `tokio::time`
//! instants; the driver's timer task sleeps until [`Wheel::next_deadline`].

use std::collections::BTreeMap;

use tokio::time::Instant;

use super::key::TransactionKey;
use super::timers::TimerId;

/// The most timers one transaction runs at once. A machine runs at most two (A and B, E and F, G
/// and H; every other state one), and starts a timer only after stopping the one it replaces;
/// one slot more is kept as a margin.
const SLOTS: usize = 3;

/// The running timers of one transaction: where each sits in the [`Wheel`]. A few slots named by
/// timer rather than one per [`TimerId`]: a lingering transaction (up to 64*T1 after its final
/// answer) keeps its slots for all that time, and most of them would be empty.
#[derive(Default)]
pub(super) struct TimerSlots([Option<Slot>; SLOTS]);

#[derive(Clone, Copy, PartialEq, Eq)]
struct Slot {
    id: TimerId,
    at: (Instant, u64),
}

impl TimerSlots {
    fn position(&self, id: TimerId) -> Option<usize> {
        self.0.iter().position(|s| s.is_some_and(|s| s.id == id))
    }

    /// Takes timer `id`'s slot when it was the one started at `at` (the timer fired): false when it
    /// was stopped or restarted since.
    pub(super) fn take_fired(&mut self, id: TimerId, at: (Instant, u64)) -> bool {
        match self.position(id) {
            Some(i) if self.0[i].is_some_and(|s| s.at == at) => {
                self.0[i] = None;
                true
            }
            _ => false,
        }
    }
}

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
        let free = slots.0.iter().position(Option::is_none);
        debug_assert!(free.is_some(), "more than {SLOTS} timers at once for {key}");
        let Some(free) = free else {
            // More timers at once than any machine runs: a bug in a machine. The timer is not
            // started (the transaction's other timers still end it).
            tracing::error!(%key, ?id, "more than {SLOTS} timers at once: timer not started");
            return false;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.insert((at, seq), (key.clone(), id));
        slots.0[free] = Some(Slot { id, at: (at, seq) });
        self.entries.first_key_value().map(|(k, _)| k.1) == Some(seq)
    }

    pub(super) fn stop(&mut self, slots: &mut TimerSlots, id: TimerId) {
        if let Some(i) = slots.position(id)
            && let Some(slot) = slots.0[i].take()
        {
            self.entries.remove(&slot.at);
        }
    }

    pub(super) fn stop_all(&mut self, slots: &mut TimerSlots) {
        for slot in slots.0.iter_mut() {
            if let Some(slot) = slot.take() {
                self.entries.remove(&slot.at);
            }
        }
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.entries.first_key_value().map(|((at, _), _)| *at)
    }
}
