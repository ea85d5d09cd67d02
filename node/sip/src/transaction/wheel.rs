//! The driver's timer wheel: every running transaction timer by deadline, and each transaction's
//! slots in it, so a timer is restarted or stopped without a search. Pure data on `tokio::time`
//! instants; the driver's timer task sleeps until [`Wheel::next_deadline`].
//!
//! Sized for the linger: a transaction keeps a timer running for up to 64*T1 after its final
//! answer, so at 5,000 calls a second ~300,000 timers are held at once. A timer in the wheel names
//! its transaction by the key the table holds (a shared [`WheelKey`], no copy of the key's bytes),
//! and its deadline and sequence number are two integers, in the wheel and in the transaction's
//! slot alike.
//!
//! The timers that only end a transaction's linger (D, I, J, K, L, M: nothing is sent when they
//! fire) are rounded up to a grid ([`DriverConfig::linger_grid`](super::DriverConfig), 16 ms by
//! default), the same for every shard of a table (their wheels share one epoch), so the timer
//! task wakes once per grid step for all of them instead of about once a millisecond: at 1,500
//! calls a second four such timers end per call. A transaction
//! lingers at most one grid step longer than its timer says, which the RFCs allow (those timers
//! are the least a transaction waits).

use std::collections::BTreeMap;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::key::{ClientKey, ServerKey};
use super::timers::TimerId;

/// The most timers one transaction runs at once. A machine runs at most two (A and B, E and F, G
/// and H; every other state one), and starts a timer only after stopping the one it replaces (a
/// timer that fired has left its slot already). No slot is kept as a margin: every transaction
/// holds its slots until it ends, up to 64*T1 after its final answer, and a third start would be
/// a machine's bug, caught by the debug assertion below in every transaction test.
const SLOTS: usize = 2;

/// Low bits of a timer's sequence number that name its [`TimerId`] (12 timers: 4 bits).
const ID_BITS: u32 = 4;
const ID_MASK: u64 = (1 << ID_BITS) - 1;

/// A transaction as the wheel names it: the key its table entry is stored under, shared (a
/// reference count, not a copy of the key's bytes).
#[derive(Clone, Debug)]
pub(super) enum WheelKey {
    Client(Arc<ClientKey>),
    Server(Arc<ServerKey>),
}

impl std::fmt::Display for WheelKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Client(k) => k.fmt(f),
            Self::Server(k) => k.fmt(f),
        }
    }
}

/// Where a timer sits in the wheel: its deadline in ns after the wheel's epoch, and its sequence
/// number (unique, never 0) with its [`TimerId`] in the low [`ID_BITS`] bits.
pub(super) type Due = (u64, NonZeroU64);

/// The running timers of one transaction: where each sits in the [`Wheel`]. A few slots named by
/// timer rather than one per [`TimerId`]: a lingering transaction (up to 64*T1 after its final
/// answer) keeps its slots for all that time, and most of them would be empty. 16 bytes a slot.
#[derive(Default)]
pub(super) struct TimerSlots([Option<Due>; SLOTS]);

fn id_of(seq: NonZeroU64) -> TimerId {
    // Only ever built from a TimerId's index (`Wheel::start`).
    TimerId::ALL[(seq.get() & ID_MASK) as usize]
}

impl TimerSlots {
    fn position(&self, id: TimerId) -> Option<usize> {
        self.0
            .iter()
            .position(|s| s.is_some_and(|(_, seq)| id_of(seq) == id))
    }

    /// Takes timer `id`'s slot when it was the one started at `at` (the timer fired): false when it
    /// was stopped or restarted since.
    pub(super) fn take_fired(&mut self, id: TimerId, at: Due) -> bool {
        match self.position(id) {
            Some(i) if self.0[i] == Some(at) => {
                self.0[i] = None;
                true
            }
            _ => false,
        }
    }
}

/// All running timers of the driver, by deadline; the sequence number keeps equal deadlines in the
/// order they were set and makes every entry unique.
pub(super) struct Wheel {
    /// The origin of the deadlines (ns after it).
    epoch: Instant,
    entries: BTreeMap<Due, WheelKey>,
    next_seq: u64,
    /// The linger grid in ns (module documentation); 0: none.
    grid: u64,
}

impl Default for Wheel {
    fn default() -> Self {
        Self::new(Instant::now(), Duration::ZERO)
    }
}

impl Wheel {
    /// An empty wheel whose deadlines (and linger `grid`) count from `epoch`: the same for every
    /// shard of a table.
    pub(super) fn new(epoch: Instant, grid: Duration) -> Self {
        Self {
            epoch,
            entries: BTreeMap::new(),
            next_seq: 1,
            grid: u64::try_from(grid.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Timer `id`'s deadline in ns after the epoch: `at`, or for a linger-ending timer the next
    /// point of the grid at or after it.
    fn deadline(&self, id: TimerId, at: Instant) -> u64 {
        let ns = self.ns(at);
        if self.grid == 0 || !id.ends_linger() {
            return ns;
        }
        ns.div_ceil(self.grid).saturating_mul(self.grid)
    }

    /// `at` in ns after the epoch (an instant before it counts as the epoch).
    fn ns(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// (Re)start timer `id` of `key` at `at` (a linger-ending timer: on the grid at or after it);
    /// returns its deadline when it is now the earliest timer (the timer task must be woken).
    pub(super) fn start(
        &mut self,
        slots: &mut TimerSlots,
        key: &WheelKey,
        id: TimerId,
        at: Instant,
    ) -> Option<Instant> {
        self.stop(slots, id);
        let free = slots.0.iter().position(Option::is_none);
        debug_assert!(free.is_some(), "more than {SLOTS} timers at once for {key}");
        let Some(free) = free else {
            // More timers at once than any machine runs: a bug in a machine. The timer is not
            // started (the transaction's other timers still end it).
            tracing::error!(%key, ?id, "more than {SLOTS} timers at once: timer not started");
            return None;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        let Some(tagged) = NonZeroU64::new((seq << ID_BITS) | id as u64) else {
            return None; // unreachable: seq starts at 1
        };
        let due = (self.deadline(id, at), tagged);
        self.entries.insert(due, key.clone());
        slots.0[free] = Some(due);
        let first = self.entries.first_key_value().map(|(k, _)| k.1) == Some(tagged);
        first.then(|| self.epoch + Duration::from_nanos(due.0))
    }

    pub(super) fn stop(&mut self, slots: &mut TimerSlots, id: TimerId) {
        if let Some(i) = slots.position(id)
            && let Some(due) = slots.0[i].take()
        {
            self.entries.remove(&due);
        }
    }

    pub(super) fn stop_all(&mut self, slots: &mut TimerSlots) {
        for slot in slots.0.iter_mut() {
            if let Some(due) = slot.take() {
                self.entries.remove(&due);
            }
        }
    }

    /// Takes the earliest timer if it is due at `now`: where it sat, its transaction and its id.
    pub(super) fn pop_due(&mut self, now: Instant) -> Option<(Due, WheelKey, TimerId)> {
        let now = self.ns(now);
        let first = self.entries.first_entry()?;
        if first.key().0 > now {
            return None;
        }
        let (due, key) = first.remove_entry();
        Some((due, key, id_of(due.1)))
    }

    pub(super) fn next_deadline(&self) -> Option<Instant> {
        self.entries
            .first_key_value()
            .map(|((at, _), _)| self.epoch + Duration::from_nanos(*at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The linger's memory is mostly its timers: 300,000 of them at 5,000 calls a second. A slot
    /// is two integers (the Option costs nothing: the sequence number is never 0), and a timer in
    /// the wheel's tree is its place and a shared key: fails if a full key or an `Instant` comes
    /// back into either.
    #[test]
    fn a_timer_is_held_in_few_bytes() {
        assert_eq!(std::mem::size_of::<TimerSlots>(), SLOTS * 16);
        assert_eq!(std::mem::size_of::<(Due, WheelKey)>(), 32);
        assert!(TimerId::ALL.len() <= 1 << ID_BITS);
    }

    #[tokio::test(start_paused = true)]
    async fn timers_fire_in_deadline_order_with_their_ids_and_a_restart_replaces_its_slot() {
        let mut wheel = Wheel::default();
        let t0 = Instant::now();
        let a = WheelKey::Client(Arc::new(ClientKey::new(b"z9hG4bK-a", b"INVITE")));
        let b = WheelKey::Server(Arc::new(
            ServerKey::from_parts(b"z9hG4bK-b", b"h:5060", b"BYE").expect("cookie"),
        ));
        let (mut sa, mut sb) = (TimerSlots::default(), TimerSlots::default());
        assert!(
            wheel
                .start(&mut sa, &a, TimerId::B, t0 + Duration::from_secs(32))
                .is_some()
        );
        assert!(
            wheel
                .start(&mut sa, &a, TimerId::A, t0 + Duration::from_millis(500))
                .is_some()
        );
        assert!(
            wheel
                .start(&mut sb, &b, TimerId::J, t0 + Duration::from_secs(32))
                .is_none()
        );
        // Restarting A moves it: one slot, one wheel entry.
        assert!(
            wheel
                .start(&mut sa, &a, TimerId::A, t0 + Duration::from_millis(400))
                .is_some()
        );
        assert_eq!(wheel.entries.len(), 3);
        assert_eq!(wheel.next_deadline(), Some(t0 + Duration::from_millis(400)));
        assert!(wheel.pop_due(t0 + Duration::from_millis(399)).is_none());
        let (due, key, id) = wheel.pop_due(t0 + Duration::from_millis(400)).expect("A");
        assert_eq!((key.to_string(), id), (a.to_string(), TimerId::A));
        assert!(sa.take_fired(TimerId::A, due));
        assert!(!sa.take_fired(TimerId::A, due), "taken once");
        // B and J at the same deadline: in the order they were started.
        let later = t0 + Duration::from_secs(32);
        let (due_b, _, id) = wheel.pop_due(later).expect("B");
        assert_eq!(id, TimerId::B);
        let (due_j, key, id) = wheel.pop_due(later).expect("J");
        assert_eq!((key.to_string(), id), (b.to_string(), TimerId::J));
        assert!(sa.take_fired(TimerId::B, due_b) && sb.take_fired(TimerId::J, due_j));
        assert!(wheel.pop_due(later).is_none() && wheel.next_deadline().is_none());
        // A stopped timer's old place no longer fires it.
        wheel.start(&mut sb, &b, TimerId::J, later);
        wheel.stop_all(&mut sb);
        assert!(wheel.entries.is_empty());
    }

    /// Linger-ending timers share the grid's points (one wake-up for all that end in one step);
    /// a retransmission timer keeps its exact deadline. Fails if either is rounded the other way.
    #[tokio::test(start_paused = true)]
    async fn linger_timers_are_rounded_up_to_the_grid_and_retransmission_timers_are_not() {
        let t0 = Instant::now();
        let grid = Duration::from_millis(16);
        let mut wheel = Wheel::new(t0, grid);
        let key = |i: u32| {
            WheelKey::Client(Arc::new(ClientKey::new(
                format!("z9hG4bK-{i}").as_bytes(),
                b"BYE",
            )))
        };
        let mut slots: Vec<TimerSlots> = (0..4).map(|_| TimerSlots::default()).collect();
        // Two K timers 1 ms after a grid point and 1 ms before the next: both at the next point.
        let first = wheel.start(
            &mut slots[0],
            &key(0),
            TimerId::K,
            t0 + grid * 10 + Duration::from_millis(1),
        );
        assert_eq!(
            first,
            Some(t0 + grid * 11),
            "rounded up, and the wake-up says so"
        );
        wheel.start(
            &mut slots[1],
            &key(1),
            TimerId::K,
            t0 + grid * 11 - Duration::from_millis(1),
        );
        // A timer E at the same instant as the first K: exact.
        let e_at = t0 + grid * 10 + Duration::from_millis(1);
        assert_eq!(
            wheel.start(&mut slots[2], &key(2), TimerId::E, e_at),
            Some(e_at)
        );
        // A K timer exactly on a grid point stays there.
        wheel.start(&mut slots[3], &key(3), TimerId::K, t0 + grid * 12);
        assert_eq!(wheel.next_deadline(), Some(e_at));
        assert_eq!(wheel.pop_due(e_at).map(|(_, _, id)| id), Some(TimerId::E));
        assert!(
            wheel
                .pop_due(t0 + grid * 11 - Duration::from_nanos(1))
                .is_none(),
            "never early"
        );
        let due: Vec<TimerId> = std::iter::from_fn(|| wheel.pop_due(t0 + grid * 11))
            .map(|(_, _, id)| id)
            .collect();
        assert_eq!(
            due,
            vec![TimerId::K, TimerId::K],
            "both K timers at one grid point"
        );
        assert_eq!(wheel.next_deadline(), Some(t0 + grid * 12));
        assert!(TimerId::ALL.iter().filter(|t| t.ends_linger()).count() == 6);
    }
}
