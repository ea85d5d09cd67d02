//! The driver's timer task: it sleeps until the earliest deadline over all shards (or until woken
//! by a timer started earlier), then visits the shards one at a time and fires what is due, at
//! most [`SWEEP_BATCH`] timers per hold of a shard's lock, and counts how long its sweeps hold a
//! shard ([`SweepStats`]). [`TaskGuard`] aborts the task when the last driver clone goes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::super::machine::{ClientEvent, ServerEvent};
use super::super::wheel::WheelKey;
use super::api::TransactionIo;
use super::apply::{Output, apply_client, apply_server};
use super::shared::{SWEEPING, Shared};

/// A timer sweep that holds a shard of the table at least this long counts as slow
/// ([`Driver::sweeps`](crate::transaction::Driver::sweeps)).
pub const SLOW_SWEEP: std::time::Duration = std::time::Duration::from_millis(1);

/// The most timers the timer task fires per hold of a shard's lock; it carries their effects out
/// and takes the lock again for the rest.
pub const SWEEP_BATCH: usize = 64;

/// How the timer task's sweeps went ([`Driver::sweeps`](crate::transaction::Driver::sweeps)).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Sweeps run: holds of a shard's lock by the timer task that fired at least one timer (each
    /// fires up to [`SWEEP_BATCH`]).
    pub sweeps: u64,
    /// Sweeps that held their shard at least [`SLOW_SWEEP`].
    pub slow: u64,
    /// The longest a sweep held its shard.
    pub longest: std::time::Duration,
}

/// Aborts the timer task when the last [`Driver`](crate::transaction::Driver) clone goes.
pub(super) struct TaskGuard(pub(super) AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<M, R, Io> Shared<M, R, Io>
where
    M: Clone + Send + 'static,
    R: Clone + Send + 'static,
    Io: TransactionIo<M, R>,
{
    /// Counts a sweep that held its shard `held` (by `tokio::time`, so paused in tests).
    fn count_sweep(&self, held: std::time::Duration) {
        let c = &self.sweeps;
        c.sweeps.fetch_add(1, Ordering::Relaxed);
        if held >= SLOW_SWEEP {
            c.slow.fetch_add(1, Ordering::Relaxed);
        }
        c.longest_us.fetch_max(
            held.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Fire up to [`SWEEP_BATCH`] timers of shard `index` due at `now`; returns their effects, whether
    /// more are due, and the shard's next deadline.
    fn fire_due(&self, index: usize, now: Instant) -> (Output<M, R>, bool, Option<Instant>) {
        let mut out = Output::default();
        let mut table = self.tables.lock_at(index);
        let locked = Instant::now();
        let mut fired = 0;
        while fired < SWEEP_BATCH {
            let Some((at, key, id)) = table.wheel.pop_due(now) else {
                break;
            };
            fired += 1;
            match key {
                WheelKey::Client(key) => {
                    let Some(entry) = table.clients.get_mut(&*key) else {
                        continue;
                    };
                    if !entry.timers.take_fired(id, at) {
                        continue;
                    }
                    let actions = entry.machine.on_event(ClientEvent::Timer(id));
                    apply_client(&mut table, &self.io, &key, &actions, None, now, &mut out);
                }
                WheelKey::Server(key) => {
                    let Some(entry) = table.servers.get_mut(&*key) else {
                        continue;
                    };
                    if !entry.timers.take_fired(id, at) {
                        continue;
                    }
                    let actions = entry.machine.on_event(ServerEvent::Timer(id));
                    apply_server(&mut table, &key, &actions, None, now, &mut out);
                }
            }
        }
        table.compact();
        let next = table.wheel.next_deadline();
        let more = next.is_some_and(|at| at <= now);
        drop(table);
        if fired > 0 {
            self.count_sweep(Instant::now().saturating_duration_since(locked));
        }
        let resent = out.effects.iter().filter(|e| e.is_send()).count();
        self.retransmissions
            .fetch_add(resent as u64, Ordering::Relaxed);
        (out, more, next)
    }

    /// One round of the timer task: every shard in turn, every timer due at `now` fired (a shard's
    /// lock held for at most [`SWEEP_BATCH`] of them at a time); returns the next deadline.
    fn sweep(&self, now: Instant) -> Option<Instant> {
        // From here until the next deadline is published, every timer started wakes the task
        // again: one started in a shard already visited would otherwise be missed.
        self.sleeping_until.store(SWEEPING, Ordering::Release);
        let mut next: Option<Instant> = None;
        for index in 0..self.tables.count() {
            loop {
                let (out, more, shard_next) = self.fire_due(index, now);
                // The shard is unlocked here; a timer started meanwhile leaves a permit in `wake`.
                self.finish(out);
                if !more {
                    if let Some(at) = shard_next
                        && next.is_none_or(|n| at < n)
                    {
                        next = Some(at);
                    }
                    break;
                }
            }
        }
        let until = next.map_or(u64::MAX, |at| self.ns(at));
        self.sleeping_until.store(until, Ordering::Release);
        next
    }
}

/// The timer task: fire what is due, then sleep until the next deadline or until woken.
pub(super) async fn run_timers<M, R, Io>(shared: Arc<Shared<M, R, Io>>)
where
    M: Clone + Send + 'static,
    R: Clone + Send + 'static,
    Io: TransactionIo<M, R>,
{
    loop {
        match shared.sweep(Instant::now()) {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = shared.wake.notified() => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}
