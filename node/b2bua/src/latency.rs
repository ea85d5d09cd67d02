//! Where a node's time goes on the way of a message and of a new call: lock-free histograms of
//! each stage (fixed buckets from 50 µs to 1 s, counted with one atomic add), which the binary
//! exports as metrics. They answer "which stage holds the tail" without a profiler:
//!
//! ```text
//!  datagram ─► receive task(s) ─► queue ─► dispatcher ─► transaction layer ─► core event ─► call start
//!                                  │ queue_depth      │ dispatch (one message and what it raised)
//!                                  ▼                  ▼
//!                                                 call_start (spawn, not awaited) ─► invite_out
//!                                                                     (actor started → leg-B INVITE sent)
//!  scheduler_lag: how late a 5 ms tick wakes up (a stalled worker thread shows here first)
//! ```
//!
//! It knows nothing of SIP or actors: the node, the calls and the binary only call
//! [`StageHistogram::observe`] and read [`StageHistogram::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the stage histograms' buckets.
pub const STAGE_BUCKETS: [f64; 13] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Upper bounds of the queue-depth histogram's buckets (messages waiting).
pub const DEPTH_BUCKETS: [f64; 9] = [0.0, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0];

/// A lock-free histogram over fixed bucket bounds.
#[derive(Debug)]
pub struct StageHistogram {
    bounds: &'static [f64],
    /// Count per bucket (not cumulative), plus one overflow bucket.
    buckets: Box<[AtomicU64]>,
    /// Sum of observations, in millionths of the unit (µs for durations).
    sum_micro: AtomicU64,
    count: AtomicU64,
}

/// What a histogram held at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Sum of observations (seconds, or messages for a depth).
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
    /// (upper bound, count in that bucket alone) per bucket, in order; the last bound is `+Inf`
    /// (the Prometheus encoder makes them cumulative).
    pub buckets: Vec<(f64, u64)>,
}

impl StageHistogram {
    /// A histogram of durations ([`STAGE_BUCKETS`]).
    pub fn durations() -> Self {
        Self::with_bounds(&STAGE_BUCKETS)
    }

    /// A histogram of queue depths ([`DEPTH_BUCKETS`]).
    pub fn depths() -> Self {
        Self::with_bounds(&DEPTH_BUCKETS)
    }

    fn with_bounds(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micro: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        self.record(
            d.as_secs_f64(),
            d.as_micros().min(u128::from(u64::MAX)) as u64,
        );
    }

    /// Records one count (a queue depth).
    pub fn observe_count(&self, n: usize) {
        self.record(n as f64, (n as u64).saturating_mul(1_000_000));
    }

    fn record(&self, value: f64, micro: u64) {
        let i = self
            .bounds
            .iter()
            .position(|b| value <= *b)
            .unwrap_or(self.bounds.len());
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micro.fetch_add(micro, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now, for a Prometheus histogram.
    pub fn snapshot(&self) -> Snapshot {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, b)| {
                let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
                (bound, b.load(Ordering::Relaxed))
            })
            .collect();
        Snapshot {
            sum: self.sum_micro.load(Ordering::Relaxed) as f64 / 1e6,
            count: self.count.load(Ordering::Relaxed),
            buckets,
        }
    }
}

/// The node's stage histograms (see the module drawing).
#[derive(Debug)]
pub struct Stages {
    /// Messages waiting in the inbound queue when the dispatcher takes one.
    pub queue_depth: StageHistogram,
    /// One inbound message through the dispatcher: its ingress decision, the transaction layer,
    /// and the core events it raised (a new call's start among them). Every message behind it in
    /// the queue waits this long.
    pub dispatch: StageHistogram,
    /// A new call's actor spawn as the dispatcher does it (spawn and registration; the dispatcher
    /// does not wait for the actor's `pre_start`).
    pub call_start: StageHistogram,
    /// A new call's actor started → its first leg-B INVITE handed to the transport (routing,
    /// building the INVITE, starting its client transaction).
    pub invite_out: StageHistogram,
    /// How late a 5 ms tick of the runtime wakes up: what any ready task waits for a worker.
    pub scheduler_lag: StageHistogram,
}

impl Default for Stages {
    fn default() -> Self {
        Self {
            queue_depth: StageHistogram::depths(),
            dispatch: StageHistogram::durations(),
            call_start: StageHistogram::durations(),
            invite_out: StageHistogram::durations(),
            scheduler_lag: StageHistogram::durations(),
        }
    }
}

/// The tick [`watch_scheduler`] sleeps between measurements.
pub const TICK: Duration = Duration::from_millis(5);

/// Measures, until `stop` turns true, how late the runtime wakes a task that slept [`TICK`] (each
/// lateness handed to `lag`): a worker thread held by blocking work, a long lock or a long poll
/// shows up here.
pub async fn watch_scheduler(
    lag: impl Fn(Duration) + Send,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            due = ticks.tick() => {
                lag(tokio::time::Instant::now().saturating_duration_since(due));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_that_holds_them() {
        let h = StageHistogram::durations();
        h.observe(Duration::from_micros(40)); // ≤ 50 µs
        h.observe(Duration::from_micros(700)); // ≤ 1 ms
        h.observe(Duration::from_millis(30)); // ≤ 50 ms
        h.observe(Duration::from_secs(3)); // +Inf
        let s = h.snapshot();
        assert_eq!(s.count, 4);
        let at = |bound: f64| {
            s.buckets
                .iter()
                .find(|(b, _)| (*b - bound).abs() < 1e-12)
                .map(|(_, c)| *c)
        };
        assert_eq!(at(0.000_05), Some(1));
        assert_eq!(at(0.000_5), Some(0));
        assert_eq!(at(0.001), Some(1));
        assert_eq!(at(0.025), Some(0));
        assert_eq!(at(0.05), Some(1));
        assert_eq!(at(1.0), Some(0));
        assert_eq!(s.buckets.last(), Some(&(f64::INFINITY, 1)));
        assert!((s.sum - 3.030_74).abs() < 1e-9, "sum {}", s.sum);
    }

    #[test]
    fn depths_count_messages() {
        let h = StageHistogram::depths();
        for n in [0, 0, 3, 5000] {
            h.observe_count(n);
        }
        let s = h.snapshot();
        assert_eq!(s.buckets[0], (0.0, 2));
        assert_eq!(s.buckets[2], (4.0, 1));
        assert_eq!(s.buckets[7], (4096.0, 0));
        assert_eq!(s.buckets[8], (16384.0, 1));
        assert_eq!(s.sum, 5003.0);
    }
}
