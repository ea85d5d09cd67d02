//! The process's memory allocator: mimalloc (the `mimalloc` feature, on by default), chosen because
//! it gives a burst's memory back more completely than jemalloc did. glibc's malloc keeps what a
//! burst of calls took (freed chunks stay in its arenas, fragmented among the few that live on), so
//! a node that once ran thousands of calls per second held gigabytes long after (BENCHMARKS.md,
//! "Memory"). jemalloc returned the pages, but not its own bookkeeping: its extent descriptors and
//! radix tree grow with the peak and are never freed (8.7 MB of metadata 60 s after a 2,000-CPS
//! burst), so a node stayed 1.22 × its idle RSS after a 2,000-CPS burst and 1.28–1.37 × after a
//! 5,000-CPS one. mimalloc keeps a page's bookkeeping inside the page, and a page goes back whole:
//! 1.16–1.17 × after the same 2,000-CPS bursts, run in turns with jemalloc, at no cost in CPU per
//! call (BENCHMARKS.md, "Issue 17: the allocator").
//!
//! Two settings make it return memory: built without transparent huge pages (the crate's `no_thp`:
//! mimalloc otherwise asks for huge pages on its 1 GiB arenas, and an idle node held 31 MB instead
//! of 20), and the runtime's workers collect their own free pages when they fall idle
//! ([`medpool::reclaim`]: mimalloc frees a page another thread emptied only when the page's own
//! thread collects, which an idle worker never does).
//!
//! Other builds, for comparison: `--features jemalloc` (jemalloc, set up as below, wins over
//! mimalloc when both features are on); `--no-default-features` (the system allocator).

#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

// jemalloc, set up to give memory back: its background thread returns pages that stayed unused
// for `dirty_decay_ms` (10 s) with `MADV_DONTNEED` (`muzzy_decay_ms:0`: no lazy `MADV_FREE`
// stage, whose pages would still count as resident), whether or not the node is busy.
#[cfg(feature = "jemalloc")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's settings, read by jemalloc itself when it starts (its `malloc_conf` symbol; the
/// `_RJEM_MALLOC_CONF` environment variable still overrides them).
#[cfg(feature = "jemalloc")]
#[allow(unsafe_code, non_upper_case_globals)]
// SAFETY: jemalloc reads this symbol as a `const char *` to a NUL-terminated string: a reference to
// a byte array is that pointer, and the bytes end with NUL.
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 61] =
    b"background_thread:true,dirty_decay_ms:10000,muzzy_decay_ms:0\0";
