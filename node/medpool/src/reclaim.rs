//! Giving memory back from idle runtime workers (with the `mimalloc` allocator; a no-op with
//! jemalloc or the system allocator). mimalloc keeps free pages per thread: a page whose blocks
//! other threads freed (a call's actor moves between workers) goes back to the system only when
//! its own thread next collects, and an idle worker never does by itself — after a burst, a node
//! without this hook still held 87 MB 60 s later against 24 MB with jemalloc (BENCHMARKS.md,
//! "the allocator"). [`on_worker_park`] is the runtime's `on_thread_park` hook: when a worker runs
//! out of work it collects that thread's pages, at most once every [`COLLECT_EVERY`] (a worker
//! parks many times a second under load; the collect itself is cheap, but not free).

use std::cell::Cell;
use std::time::Duration;
use tokio::time::Instant;

/// How often a parking worker collects its pages, at most.
pub const COLLECT_EVERY: Duration = Duration::from_secs(1);

thread_local! {
    static LAST_COLLECT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The runtime's `on_thread_park` hook: collects this thread's free pages when its last collect
/// was [`COLLECT_EVERY`] ago or longer (or never happened).
pub fn on_worker_park() {
    let now = Instant::now();
    if LAST_COLLECT.with(|last| take_turn(last, now)) {
        collect();
    }
}

/// Whether a collect is due at `now`; when it is, `now` becomes the last collect.
fn take_turn(last: &Cell<Option<Instant>>, now: Instant) -> bool {
    match last.get() {
        Some(t) if now.saturating_duration_since(t) < COLLECT_EVERY => false,
        _ => {
            last.set(Some(now));
            true
        }
    }
}

// Links mimalloc's library wherever this module is (the library's tests and tools too, not only
// the binary whose allocator it is): `mi_collect` below is resolved in it.
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
extern crate mimalloc as _;

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
fn collect() {
    #[allow(unsafe_code)]
    unsafe extern "C" {
        // mimalloc's `void mi_collect(bool force)` (mimalloc.h), linked by the `mimalloc` crate.
        fn mi_collect(force: bool);
    }
    #[allow(unsafe_code)]
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time; it
    // touches the calling thread's heap and the shared arenas (under their own locks). Not forced:
    // pages freed less than mimalloc's purge delay ago stay for the next round.
    unsafe {
        mi_collect(false);
    }
}

#[cfg(not(all(feature = "mimalloc", not(feature = "jemalloc"))))]
fn collect() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_collects_at_most_once_a_period() {
        let last = Cell::new(None);
        let t0 = Instant::now();
        assert!(take_turn(&last, t0), "the first park collects");
        assert!(!take_turn(&last, t0 + COLLECT_EVERY / 2), "too soon");
        assert!(take_turn(&last, t0 + COLLECT_EVERY), "a period later");
        assert!(
            !take_turn(&last, t0),
            "a clock read before the last collect waits"
        );
    }

    #[test]
    fn the_hook_runs_outside_a_runtime_too() {
        on_worker_park();
        on_worker_park();
        LAST_COLLECT.with(|last| assert!(last.get().is_some()));
    }
}
