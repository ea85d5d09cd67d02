//! A set of keys remembered for a while: at least [`Recent::new`]'s `keep`, at most a third
//! longer, and at most `max` of them. What the node remembers per call after the call is gone
//! (the legs B it hung up, whose gateway may still resend a 2xx for 64*T1) lives here, so that
//! such memory ends with its reason instead of growing until a limit is hit.
//!
//! The keys are held in [`GENERATIONS`] generations, each a hash set of its own: new keys go into
//! the newest, and a generation older than `keep / (GENERATIONS - 1)` makes way for a new one;
//! the oldest is then dropped whole (its allocation goes back to the allocator, where a single
//! set, emptied by removals or `retain`, would keep the capacity of its fullest moment). Dropping
//! a generation is O(1) for the set and never a scan of every key.
//!
//! The generations advance when a key is added, and with [`Recent::expire`] (called by a timer),
//! so that keys also go when nothing is added any more (after a burst of calls). Pure data: the
//! caller passes the time and holds the lock.

use std::collections::HashSet;
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// How many generations the keys are spread over: a key is remembered between `keep` and
/// `keep * GENERATIONS / (GENERATIONS - 1)`.
pub const GENERATIONS: usize = 4;

/// Keys remembered for a while; see the module documentation.
#[derive(Debug)]
pub struct Recent<K> {
    /// Oldest first; never empty.
    generations: Vec<HashSet<K>>,
    /// When the newest generation was started.
    newest_since: Instant,
    /// How long one generation takes new keys.
    span: Duration,
    /// The most keys one generation takes (`max / GENERATIONS`).
    per_generation: usize,
}

/// What [`Recent`] let go of: dropped by the caller after it released its lock (freeing tens of
/// thousands of keys is not done with the lock held).
#[must_use = "drop it after the lock is released"]
pub struct Expired<K>(Vec<HashSet<K>>);

impl<K> Expired<K> {
    /// How many keys were let go of.
    pub fn len(&self) -> usize {
        self.0.iter().map(HashSet::len).sum()
    }
    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq> Recent<K> {
    /// Remembers each key at least `keep` (unless more than `max` keys come within that time: then
    /// the oldest go earlier), starting at `now`.
    pub fn new(keep: Duration, max: usize, now: Instant) -> Self {
        let gens = u32::try_from(GENERATIONS - 1).unwrap_or(u32::MAX);
        Self {
            generations: (0..GENERATIONS).map(|_| HashSet::new()).collect(),
            newest_since: now,
            span: keep / gens,
            per_generation: (max / GENERATIONS).max(1),
        }
    }

    /// Adds `key` at `now`; true when it was not remembered yet.
    pub fn insert(&mut self, key: K, now: Instant) -> (bool, Expired<K>) {
        let mut expired = self.expire(now);
        if self.contains(&key) {
            return (false, expired);
        }
        if self.newest().len() >= self.per_generation {
            expired.0.extend(self.advance(now));
        }
        let newest = self.generations.len() - 1;
        self.generations[newest].insert(key);
        (true, expired)
    }

    /// Whether `key` is remembered.
    pub fn contains(&self, key: &K) -> bool {
        self.generations.iter().rev().any(|g| g.contains(key))
    }

    /// How many keys are remembered.
    pub fn len(&self) -> usize {
        self.generations.iter().map(HashSet::len).sum()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.generations.iter().all(HashSet::is_empty)
    }

    /// The room the generations hold (their capacity, in keys).
    pub fn capacity(&self) -> usize {
        self.generations.iter().map(HashSet::capacity).sum()
    }

    /// Lets go of the generations that are too old at `now`.
    pub fn expire(&mut self, now: Instant) -> Expired<K> {
        let mut out = Vec::new();
        // Each missed span starts a generation (at most GENERATIONS: then every key is too old).
        for _ in 0..GENERATIONS {
            if now.saturating_duration_since(self.newest_since) < self.span {
                break;
            }
            let at = self.newest_since + self.span;
            out.extend(self.advance(at));
        }
        if now.saturating_duration_since(self.newest_since) >= self.span {
            self.newest_since = now;
        }
        Expired(out)
    }

    fn newest(&self) -> &HashSet<K> {
        &self.generations[self.generations.len() - 1]
    }

    /// Starts a new generation at `at` and lets go of the oldest (unless it is empty: an empty
    /// set holds no allocation once its capacity is 0, and one that grew is dropped anyway).
    fn advance(&mut self, at: Instant) -> Option<HashSet<K>> {
        let oldest = self.generations.remove(0);
        self.generations.push(HashSet::new());
        self.newest_since = at;
        (oldest.capacity() > 0).then_some(oldest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Duration = Duration::from_secs(30);

    #[test]
    fn a_key_is_remembered_at_least_keep_and_at_most_a_third_longer() {
        let t0 = Instant::now();
        let mut r = Recent::new(KEEP, 1_000, t0);
        let (fresh, _) = r.insert("leg", t0);
        assert!(fresh);
        let (again, _) = r.insert("leg", t0 + Duration::from_secs(1));
        assert!(!again, "a key remembered is not new");
        // Time passes with other keys coming in, and with only the timer.
        for s in 1..=30 {
            let _ = r.insert("other", t0 + Duration::from_secs(s));
            assert!(r.contains(&"leg"), "forgotten after {s} s < keep");
        }
        let expired = r.expire(t0 + KEEP * 4 / 3 + Duration::from_millis(1));
        assert!(!r.contains(&"leg"), "still there after keep * 4/3");
        assert!(!expired.is_empty());
    }

    #[test]
    fn keys_go_with_the_timer_alone_and_their_room_with_them() {
        let t0 = Instant::now();
        let mut r = Recent::new(KEEP, 1_000_000, t0);
        let mut dropped = 0;
        // A burst: 100,000 keys within 20 s, then nothing is added any more.
        for i in 0..100_000u64 {
            let at = t0 + Duration::from_micros(i * 200);
            let (fresh, expired) = r.insert(i, at);
            assert!(fresh);
            dropped += expired.len();
        }
        assert_eq!(r.len() + dropped, 100_000);
        assert!(r.capacity() >= r.len());
        // Only the timer from now on: every key and every generation's room go.
        let end = t0 + Duration::from_secs(20);
        let mut s = 0;
        while !r.is_empty() {
            s += 1;
            assert!(s <= 60, "keys still there 60 s after the burst");
            dropped += r.expire(end + Duration::from_secs(s)).len();
        }
        assert_eq!(dropped, 100_000);
        assert_eq!(r.capacity(), 0, "the sets' room is given back, not kept");
        assert!(
            Duration::from_secs(s) >= KEEP,
            "the last keys went too early"
        );
    }

    #[test]
    fn at_most_max_keys_are_held() {
        let t0 = Instant::now();
        let mut r = Recent::new(KEEP, 4_000, t0);
        for i in 0..50_000u32 {
            let _ = r.insert(i, t0);
            assert!(r.len() <= 4_000, "{} keys held", r.len());
        }
        // The newest are the ones kept.
        assert!(r.contains(&49_999));
        assert!(!r.contains(&0));
    }

    #[test]
    fn a_long_silence_expires_everything_at_once() {
        let t0 = Instant::now();
        let mut r = Recent::new(KEEP, 1_000, t0);
        for i in 0..100u32 {
            let _ = r.insert(i, t0 + Duration::from_secs(u64::from(i % 25)));
        }
        let expired = r.expire(t0 + Duration::from_secs(3_600));
        assert_eq!(expired.len(), 100);
        assert!(r.is_empty());
        // And it works on afterwards.
        let (fresh, _) = r.insert(7, t0 + Duration::from_secs(3_601));
        assert!(fresh);
        assert!(r.contains(&7));
    }
}
