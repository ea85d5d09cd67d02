//! The log's most recent entries, kept in memory as they were appended, so that the reads that
//! follow each append — the leader's replication to every follower, and the apply of committed
//! entries on every node — are served without a blocking-pool hop, a redb read transaction and a
//! decode per entry. The redb log stays the truth: this is a copy of its tail, changed with it
//! (append, truncate, purge), bounded by [`MAX_ENTRIES`] and [`MAX_BYTES`], and a read it cannot
//! serve whole goes to redb.

use std::collections::VecDeque;

use openraft::entry::RaftEntry;

use crate::typ::Entry;

/// Most entries kept.
pub const MAX_ENTRIES: usize = 1024;
/// Most bytes kept (their encoded size in the log).
pub const MAX_BYTES: usize = 16 * 1024 * 1024;

/// A contiguous run of the log's last entries (by index), with each one's encoded size.
#[derive(Debug, Default)]
pub struct Recent {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Recent {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.index())
    }
    fn last(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.index())
    }

    /// Entries just written to the log, in index order, with their encoded sizes. A run that does
    /// not continue the kept one replaces it.
    pub fn appended(&mut self, entries: impl IntoIterator<Item = (Entry, usize)>) {
        for (entry, size) in entries {
            if self
                .last()
                .is_some_and(|l| l.checked_add(1) != Some(entry.index()))
            {
                self.entries.clear();
                self.bytes = 0;
            }
            self.bytes += size;
            self.entries.push_back((entry, size));
        }
        while self.entries.len() > MAX_ENTRIES || (self.bytes > MAX_BYTES && self.entries.len() > 1)
        {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    /// The log was truncated: entries from `from` on are gone.
    pub fn truncated(&mut self, from: u64) {
        while self.last().is_some_and(|l| l >= from) {
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// The log was purged: entries up to `upto` are gone.
    pub fn purged(&mut self, upto: u64) {
        while self.first().is_some_and(|f| f <= upto) {
            if let Some((_, size)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    /// The entries of `[lo, hi)` (`hi == None`: to the end of the log), if every one of them is
    /// kept here; `None` when the log must be read. The kept run always ends at the log's last
    /// entry, so a range past it is empty, as it is in the log.
    pub fn get(&self, lo: u64, hi: Option<u64>) -> Option<Vec<Entry>> {
        let first = self.first()?;
        let last = self.last()?;
        if lo < first {
            return None;
        }
        let end = hi.map_or(last, |h| h.saturating_sub(1).min(last));
        if end < lo {
            return Some(Vec::new());
        }
        let skip = usize::try_from(lo - first).ok()?;
        let take = usize::try_from(end - lo + 1).ok()?;
        Some(
            self.entries
                .iter()
                .skip(skip)
                .take(take)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Command;
    use crate::typ::TypeConfig;
    use openraft::testing::log_id;

    fn entry(i: u64) -> (Entry, usize) {
        (
            Entry::new_normal(log_id::<TypeConfig>(1, 1, i), Command::Noop),
            100,
        )
    }
    fn indexes(v: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(RaftEntry::index).collect())
    }

    #[test]
    fn serves_only_ranges_it_holds_whole() {
        let mut r = Recent::default();
        assert_eq!(indexes(r.get(0, None)), None);
        r.appended((5..10).map(entry));
        assert_eq!(indexes(r.get(5, Some(10))), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(r.get(7, None)), Some(vec![7, 8, 9]));
        assert_eq!(indexes(r.get(6, Some(8))), Some(vec![6, 7]));
        assert_eq!(indexes(r.get(4, Some(8))), None, "entry 4 is not kept");
        assert_eq!(indexes(r.get(10, None)), Some(vec![]), "past the log's end");
        assert_eq!(indexes(r.get(8, Some(20))), Some(vec![8, 9]));
    }

    #[test]
    fn follows_truncation_purge_and_a_run_that_does_not_continue() {
        let mut r = Recent::default();
        r.appended((1..=6).map(entry));
        r.truncated(5);
        assert_eq!(indexes(r.get(1, None)), Some(vec![1, 2, 3, 4]));
        r.appended((5..=5).map(entry));
        assert_eq!(indexes(r.get(1, None)), Some(vec![1, 2, 3, 4, 5]));
        r.purged(2);
        assert_eq!(indexes(r.get(2, None)), None);
        assert_eq!(indexes(r.get(3, None)), Some(vec![3, 4, 5]));
        // A gap (a snapshot installed, the log starts again further on): the old run is dropped.
        r.appended((9..=10).map(entry));
        assert_eq!(indexes(r.get(3, None)), None);
        assert_eq!(indexes(r.get(9, None)), Some(vec![9, 10]));
    }

    #[test]
    fn keeps_at_most_its_bounds() {
        let mut r = Recent::default();
        r.appended((0..(MAX_ENTRIES as u64 + 10)).map(entry));
        assert_eq!(r.entries.len(), MAX_ENTRIES);
        assert_eq!(r.first(), Some(10));
        let mut r = Recent::default();
        r.appended((0..3u64).map(|i| (entry(i).0, MAX_BYTES / 2)));
        assert_eq!(indexes(r.get(0, None)), None);
        assert_eq!(indexes(r.get(1, None)), Some(vec![1, 2]));
    }
}
