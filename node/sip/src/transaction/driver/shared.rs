//! What the driver and its timer task share — the settings, the IO, the sharded table, the count of
//! live transactions, the timer task's wake-up — and the steps both take on it: a new
//! transaction counted against the bound, collected effects carried out with the shard unlocked
//! (waking the timer task for an earlier timer), a transport error ending its transaction.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

use super::super::key::TransactionKey;
use super::super::machine::{ClientEvent, ServerEvent};
use super::super::shards::Shards;
use super::api::{DriverConfig, DriverError, TransactionIo};
use super::apply::{Effect, Output, apply_client, apply_server};
use super::table::Table;

/// `sleeping_until` while the timer task is sweeping: every timer started then wakes it again.
pub(super) const SWEEPING: u64 = 0;

#[derive(Default)]
pub(super) struct SweepCounters {
    pub(super) sweeps: AtomicU64,
    pub(super) slow: AtomicU64,
    pub(super) longest_us: AtomicU64,
}

/// What the driver and its timer task share.
pub(super) struct Shared<M, R, Io> {
    pub(super) config: DriverConfig,
    pub(super) io: Io,
    pub(super) tables: Shards<Table<M, R>>,
    /// Transactions live over all shards (what [`DriverConfig::max_transactions`] bounds).
    pub(super) live: AtomicUsize,
    /// The origin of `sleeping_until`.
    pub(super) epoch: Instant,
    /// When the timer task wakes next, in ns after `epoch` (`u64::MAX`: no timer), or
    /// [`SWEEPING`]: a timer started earlier than this must wake it.
    pub(super) sleeping_until: AtomicU64,
    /// Wakes the timer task when a timer earlier than its wake-up is started.
    pub(super) wake: Notify,
    /// Messages sent again: timer retransmissions and answers to retransmitted requests.
    pub(super) retransmissions: AtomicU64,
    /// Wakes whoever waits for transactions to finish
    /// ([`Driver::progress`](crate::transaction::Driver::progress)) after every step, once
    /// somebody has asked to be woken (`progress_watched`): no cost on the hot path before.
    pub(super) progress: Notify,
    pub(super) progress_watched: AtomicBool,
    /// How long the timer task's sweeps hold a shard.
    pub(super) sweeps: SweepCounters,
}

impl<M, R, Io> Shared<M, R, Io>
where
    M: Clone + Send + 'static,
    R: Clone + Send + 'static,
    Io: TransactionIo<M, R>,
{
    /// Counts a new transaction against [`DriverConfig::max_transactions`], or refuses it. Taken
    /// before the transaction is inserted, so the bound holds however many tasks create at once.
    pub(super) fn take_slot(&self) -> Result<(), DriverError> {
        let limit = self.config.max_transactions;
        if self.live.fetch_add(1, Ordering::Relaxed) >= limit {
            self.live.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(limit, "transaction table full");
            return Err(DriverError::Overloaded { limit });
        }
        Ok(())
    }

    /// `at` as ns after `epoch`, never [`SWEEPING`].
    pub(super) fn ns(&self, at: Instant) -> u64 {
        let ns = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(ns).unwrap_or(u64::MAX).max(SWEEPING + 1)
    }

    /// Carry out collected effects with the shard unlocked. A failed transmit is a transport error for
    /// its transaction.
    pub(super) fn finish(&self, out: Output<M, R>) {
        if out.ended > 0 {
            self.live.fetch_sub(out.ended, Ordering::Relaxed);
        }
        if let Some(at) = out.earliest {
            let until = self.sleeping_until.load(Ordering::Acquire);
            if until == SWEEPING || self.ns(at) < until {
                self.wake.notify_one();
            }
        }
        let mut failed: Vec<TransactionKey> = Vec::new();
        for effect in out.effects {
            match effect {
                Effect::Transmit(key, request) => {
                    if self.io.transmit(&key, &request).is_err() {
                        failed.push(TransactionKey::Client(key));
                    }
                }
                Effect::Respond(key, response) => {
                    if self.io.transmit_response(&key, &response).is_err() {
                        failed.push(TransactionKey::Server(key));
                    }
                }
                Effect::Deliver(event) => self.io.deliver(event),
            }
        }
        for key in failed {
            self.transport_error(&key);
        }
        if self.progress_watched.load(Ordering::Relaxed) {
            self.progress.notify_waiters();
        }
    }

    pub(super) fn transport_error(&self, key: &TransactionKey) -> bool {
        let now = Instant::now();
        let mut out = Output::default();
        let found = match key {
            TransactionKey::Client(key) => {
                let mut table = self.tables.lock_for(key);
                match table.clients.get_mut(key) {
                    Some(entry) => {
                        let actions = entry.machine.on_event(ClientEvent::TransportError);
                        apply_client(&mut table, &self.io, key, &actions, None, now, &mut out);
                        true
                    }
                    None => false,
                }
            }
            TransactionKey::Server(key) => {
                let mut table = self.tables.lock_for(key);
                match table.servers.get_mut(key) {
                    Some(entry) => {
                        let actions = entry.machine.on_event(ServerEvent::TransportError);
                        apply_server(&mut table, key, &actions, None, now, &mut out);
                        true
                    }
                    None => false,
                }
            }
        };
        self.finish(out);
        found
    }
}
