//! The process's memory allocator: jemalloc (the `jemalloc` feature, on by default), set up to give
//! memory back to the system. glibc's malloc keeps what a burst of calls took — freed chunks stay
//! in its arenas, fragmented among the few that live on — so a node that once ran thousands of
//! calls per second held gigabytes long after (BENCHMARKS.md, "Memory"). jemalloc packs small
//! objects in size classes without per-object headers, and its background thread returns pages
//! that stayed unused for `dirty_decay_ms` (10 s) with `MADV_DONTNEED` (`muzzy_decay_ms:0`: no lazy
//! `MADV_FREE` stage, whose pages would still count as resident), whether or not the node is busy.
//!
//! `cargo build --no-default-features -p medpool` builds the binary with the system allocator
//! (for comparison).

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
