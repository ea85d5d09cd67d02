//! The nodes' own reports: each `medpool serve --audit-file F` appends one line per event to F
//! (format in medpool-cluster's `audit` module: `<kind> key=value ...`, times in Unix µs). This
//! module reads them back into [`Event`]s and derives what the invariants need: for every node the
//! intervals in which it could act for each shard (it listed the shard as acting *and* held a
//! lease), leaders per term and configuration versions in order.
//!
//! A node that was killed writes no `remove`: its acting intervals close at its next `start` line
//! (the old process was gone by then) or at the end of the run; its lease intervals bound them.

use std::collections::BTreeMap;
use std::path::Path;

/// One reported event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A node process started.
    Start {
        /// Node id.
        node: u64,
        /// When (Unix µs).
        at: u64,
    },
    /// A lease was granted: the node may act from `from` (heartbeat sent) until `until`.
    Lease {
        /// Node id.
        node: u64,
        /// Start (Unix µs).
        from: u64,
        /// Expiry (Unix µs).
        until: u64,
    },
    /// The node's acting set changed.
    Acting {
        /// Node id.
        node: u64,
        /// When (Unix µs).
        at: u64,
        /// Added (`true`) or removed.
        add: bool,
        /// The shards.
        shards: Vec<u16>,
    },
    /// The node became leader of a term.
    Leader {
        /// Node id.
        node: u64,
        /// The term.
        term: u64,
        /// When (Unix µs).
        at: u64,
    },
    /// The node applied a configuration version.
    Config {
        /// Node id.
        node: u64,
        /// The version.
        version: u64,
        /// When (Unix µs).
        at: u64,
    },
}

fn kv<'a>(words: &[&'a str], key: &str) -> Option<&'a str> {
    words
        .iter()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

fn num(words: &[&str], key: &str) -> Option<u64> {
    kv(words, key)?.parse().ok()
}

/// `0-11,40,52-60` → shard numbers.
pub fn parse_ranges(s: &str) -> Option<Vec<u16>> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// One line of an audit file (`None`: not an event this harness reads).
pub fn parse_line(line: &str) -> Option<Event> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let node = num(&words, "node")?;
    match *words.first()? {
        "start" => Some(Event::Start {
            node,
            at: num(&words, "at_us")?,
        }),
        "lease" => Some(Event::Lease {
            node,
            from: num(&words, "from_us")?,
            until: num(&words, "until_us")?,
        }),
        "acting" => {
            let at = num(&words, "at_us")?;
            let (add, shards) = match (kv(&words, "add"), kv(&words, "remove")) {
                (Some(r), _) => (true, parse_ranges(r)?),
                (None, Some(r)) => (false, parse_ranges(r)?),
                (None, None) => return None,
            };
            Some(Event::Acting {
                node,
                at,
                add,
                shards,
            })
        }
        "leader" => Some(Event::Leader {
            node,
            term: num(&words, "term")?,
            at: num(&words, "at_us")?,
        }),
        "config" => Some(Event::Config {
            node,
            version: num(&words, "version")?,
            at: num(&words, "at_us")?,
        }),
        _ => None,
    }
}

/// Every event of one audit file, in file order (a missing file: none).
pub fn read(path: &Path) -> Vec<Event> {
    std::fs::read_to_string(path)
        .map(|s| s.lines().filter_map(parse_line).collect())
        .unwrap_or_default()
}

/// A half-open interval of Unix µs.
pub type Span = (u64, u64);

/// Sorted, merged union of `spans`.
pub fn union(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort_unstable();
    let mut out: Vec<Span> = Vec::new();
    for (a, b) in spans {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// `a ∩ B` for one span and a merged union.
fn intersect(a: Span, b: &[Span]) -> impl Iterator<Item = Span> + '_ {
    b.iter()
        .map(move |&(x, y)| (a.0.max(x), a.1.min(y)))
        .filter(|(x, y)| x < y)
}

/// For each shard, the intervals in which `node` could act for it according to its own report:
/// listed as acting, under a lease. `events` are one node's, in file order; open intervals close at
/// `end`.
pub fn acting_spans(events: &[Event], end: u64) -> BTreeMap<u16, Vec<Span>> {
    let leases = union(
        events
            .iter()
            .filter_map(|e| match e {
                Event::Lease { from, until, .. } => Some((*from, *until)),
                _ => None,
            })
            .collect(),
    );
    let mut open: BTreeMap<u16, u64> = BTreeMap::new();
    let mut owned: BTreeMap<u16, Vec<Span>> = BTreeMap::new();
    let mut close = |open: &mut BTreeMap<u16, u64>, s: u16, at: u64| {
        if let Some(since) = open.remove(&s) {
            owned.entry(s).or_default().push((since, at.max(since)));
        }
    };
    for e in events {
        match e {
            Event::Start { at, .. } => {
                for s in open.keys().copied().collect::<Vec<_>>() {
                    close(&mut open, s, *at);
                }
            }
            Event::Acting {
                at, add, shards, ..
            } => {
                for &s in shards {
                    if *add {
                        open.entry(s).or_insert(*at);
                    } else {
                        close(&mut open, s, *at);
                    }
                }
            }
            _ => {}
        }
    }
    for s in open.keys().copied().collect::<Vec<_>>() {
        close(&mut open, s, end);
    }
    owned
        .into_iter()
        .map(|(s, spans)| {
            let acting: Vec<Span> = spans
                .into_iter()
                .flat_map(|sp| intersect(sp, &leases).collect::<Vec<_>>())
                .collect();
            (s, acting)
        })
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_into_events() {
        assert_eq!(
            parse_line("acting node=2 at_us=10 epoch=7 add=0-2,9"),
            Some(Event::Acting {
                node: 2,
                at: 10,
                add: true,
                shards: vec![0, 1, 2, 9]
            })
        );
        assert_eq!(
            parse_line("lease node=1 from_us=5 until_us=9"),
            Some(Event::Lease {
                node: 1,
                from: 5,
                until: 9
            })
        );
        assert_eq!(parse_line("garbage"), None);
    }

    #[test]
    fn acting_is_ownership_under_a_lease() {
        let ev = vec![
            Event::Start { node: 0, at: 0 },
            Event::Acting {
                node: 0,
                at: 10,
                add: true,
                shards: vec![3],
            },
            Event::Lease {
                node: 0,
                from: 5,
                until: 20,
            },
            Event::Lease {
                node: 0,
                from: 15,
                until: 30,
            },
            Event::Lease {
                node: 0,
                from: 50,
                until: 60,
            },
            Event::Acting {
                node: 0,
                at: 55,
                add: false,
                shards: vec![3],
            },
        ];
        let spans = acting_spans(&ev, 100);
        assert_eq!(spans.get(&3), Some(&vec![(10, 30), (50, 55)]));
    }

    #[test]
    fn a_restart_closes_what_the_dead_process_held() {
        let ev = vec![
            Event::Acting {
                node: 0,
                at: 0,
                add: true,
                shards: vec![1],
            },
            Event::Lease {
                node: 0,
                from: 0,
                until: 1_000,
            },
            Event::Start { node: 0, at: 40 },
        ];
        assert_eq!(acting_spans(&ev, 1_000).get(&1), Some(&vec![(0, 40)]));
    }
}
