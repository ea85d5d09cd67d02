//! A value split into a fixed number of independently locked shards, a key always in the same
//! one: what lets the transaction table be used from several tasks at once without one global
//! lock, and keeps every critical section (a hash-map insert that grows its table, a timer sweep)
//! down to one shard's share of the work.
//!
//! Pure data and `std::sync::Mutex`: it knows nothing of transactions (the B2BUA's routing registry
//! uses it too, for its maps that grow with the same transactions). The shard of a key is a
//! hash of it with hash keys fixed when the value is built ([`FastState`]), so it is stable for
//! the life of the value and not predictable from outside.
//!
//! [`FastMap`] is the hash map those shards hold: foldhash instead of std's SipHash-1-3, which
//! took ~2.7 % of a node's CPU at 1,500 calls per second hashing the same keys twice (shard, then
//! slot; BENCHMARKS.md). Its seed is drawn per process from the OS like std's, so the slot of a
//! key (a Call-ID, a branch: chosen by a peer) cannot be predicted from outside; foldhash is not a
//! cryptographic hash, and a flood aimed at one slot would also need the seed.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The hasher of [`Shards`] and [`FastMap`]: foldhash, seeded per process (module documentation).
pub type FastState = foldhash::fast::RandomState;

/// A hash map with [`FastState`]: for the maps on the hot path, keyed by what peers send.
pub type FastMap<K, V> = HashMap<K, V, FastState>;
/// `N` values of `T`, each behind its own lock; see the module documentation.
pub struct Shards<T> {
    shards: Box<[Mutex<T>]>,
    hasher: FastState,
}

impl<T> std::fmt::Debug for Shards<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("count", &self.shards.len())
            .finish_non_exhaustive()
    }
}

impl<T> Shards<T> {
    /// `n` shards (at least one), each built by `make`.
    pub fn new(n: usize, mut make: impl FnMut() -> T) -> Self {
        Self {
            shards: (0..n.max(1)).map(|_| Mutex::new(make())).collect(),
            hasher: FastState::default(),
        }
    }

    /// How many shards there are.
    pub fn count(&self) -> usize {
        self.shards.len()
    }

    /// The index of the shard `key` lives in.
    pub fn index_of<K: Hash + ?Sized>(&self, key: &K) -> usize {
        // The multiply-shift spreads a 64-bit hash over `count` without a division.
        let h = self.hasher.hash_one(key);
        ((u128::from(h) * self.shards.len() as u128) >> 64) as usize
    }

    /// Locks the shard `key` lives in.
    pub fn lock_for<K: Hash + ?Sized>(&self, key: &K) -> MutexGuard<'_, T> {
        self.lock_at(self.index_of(key))
    }

    /// Locks shard `index` (`< count()`).
    pub fn lock_at(&self, index: usize) -> MutexGuard<'_, T> {
        // A panic while a shard was locked leaves it consistent enough to go on (the caller's data
        // is built so that every step either completes or leaves state its timers still end).
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Folds `f` over every shard, one lock at a time (never two held at once).
    pub fn fold<A>(&self, init: A, mut f: impl FnMut(A, &T) -> A) -> A {
        (0..self.count()).fold(init, |acc, i| f(acc, &self.lock_at(i)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_always_lands_in_the_same_shard_and_keys_spread_over_all() {
        let shards: Shards<Vec<u32>> = Shards::new(16, Vec::new);
        assert_eq!(shards.count(), 16);
        for k in 0..4_000u32 {
            let i = shards.index_of(&k);
            assert!(i < 16);
            assert_eq!(shards.index_of(&k), i, "key {k} moved");
            shards.lock_for(&k).push(k);
        }
        let sizes: Vec<usize> = (0..16).map(|i| shards.lock_at(i).len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 4_000);
        // 250 expected per shard; a shard with less than half or more than twice that means the
        // hash does not spread (the chance of it with a good hash is negligible).
        assert!(
            sizes.iter().all(|&n| (125..=500).contains(&n)),
            "uneven shards: {sizes:?}"
        );
        for k in 0..4_000u32 {
            assert!(shards.lock_at(shards.index_of(&k)).contains(&k));
        }
        assert_eq!(shards.fold(0, |n, v| n + v.len()), 4_000);
    }

    #[test]
    fn zero_shards_means_one() {
        let shards: Shards<u8> = Shards::new(0, || 7);
        assert_eq!(shards.count(), 1);
        assert_eq!(shards.index_of("anything"), 0);
        assert_eq!(*shards.lock_for("anything"), 7);
    }

    #[test]
    fn a_poisoned_shard_is_still_usable_and_the_others_untouched() {
        let shards = std::sync::Arc::new(Shards::new(2, || 0u32));
        let s = shards.clone();
        let _ = std::thread::spawn(move || {
            let mut g = s.lock_at(0);
            *g = 5;
            panic!("poison shard 0");
        })
        .join();
        assert_eq!(*shards.lock_at(0), 5);
        *shards.lock_at(1) += 1;
        assert_eq!(*shards.lock_at(1), 1);
    }
}
