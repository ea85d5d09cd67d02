//! The audit report: what a node says about its own right to act, one line per event, appended to
//! the file given by `medpool serve --audit-file PATH` ([`PoolOptions::audit`](crate::pool::PoolOptions)).
//! A test harness reads every node's report and checks that at most one node acts for a shard at any
//! instant.
//!
//! # Format
//!
//! UTF-8 text, one record per line (`\n`), words separated by one space; the first word is the
//! record's kind, the others are `key=value` in the order shown. Every time is **Unix microseconds**
//! (`SystemTime::now()` read at the same moment as the `tokio::time::Instant` the node itself uses).
//! Every number is a decimal `u64`, except `pid` (`u32`).
//!
//! ```text
//! start  node=<id> at_us=<t> pid=<pid> lease_ms=<L>
//! lease  node=<id> from_us=<t> until_us=<t>
//! acting node=<id> at_us=<t> epoch=<e> add=<ranges>
//! acting node=<id> at_us=<t> epoch=<e> remove=<ranges>
//! leader node=<id> term=<term> at_us=<t>
//! config node=<id> version=<v> at_us=<t>
//! ```
//!
//! - `start`: once, when the pool runtime starts (a restarted node writes another `start`; the
//!   file is appended to, never truncated). `lease_ms` is the configured lease L.
//! - `lease`: a granted lease heartbeat (also the leader's grant to itself). The node holds its
//!   lease for every instant `t` with `from_us <= t < until_us`: `from_us` is when the heartbeat
//!   was **sent**, `until_us` the expiry the node stored (normally `from_us + L`). The line is
//!   written when the grant arrives, i.e. after `from_us`: lines are not in `from_us` order with
//!   the other records. A later grant extends the lease; leases never shrink.
//! - `acting`: the node's acting set changed. `add`: from `at_us` on the shards are in the set
//!   (the time is read before the bits are set); `remove`: they are out of it from `at_us` on (read
//!   after the bits are cleared). `epoch` is the map epoch (sum of the shard epochs) of the applied
//!   state the shard watcher was bringing the set to: the node's `acting_epoch` (in `PoolInfo`)
//!   right after a `remove`, already at an `add`. `<ranges>`: ascending shard numbers and inclusive
//!   ranges, comma-separated, e.g. `0-11,40,52-60`.
//! - `leader`: the node's leader task saw itself leader of a new term (checked every 200 ms, so
//!   up to 200 ms after the election).
//! - `config`: the applied pool configuration version differs from the last one reported (the
//!   first version seen after start is reported too; no line while the pool has none).
//!
//! Ordering the nodes guarantee: a lease heartbeat carries the sender's acting epoch, read before
//! `from_us`, and the leader grants it only when that epoch is as new as its own map; so a node's
//! `remove` for a move is reported before the `from_us` of any lease asked for with the moved map.
//! A shard handed over between two live nodes is `add`ed by the new owner only after the old owner
//! reported its `remove` (when it had added it), or after L + L/4 + margin when the old owner did not
//! answer.
//!
//! A node **may act** for shard `s` at instant `t` only if `t` is inside an `acting` interval for
//! `s` (from an `add` to the next `remove` of `s`, or to the node's next `start`/the end of the
//! report) **and** inside a `lease` interval. The report is conservative: the node's real gate
//! (`Pool::may_act`: owner in the applied map, acting bit, lease) is never open outside what the
//! report claims. Unknown kinds or keys may be added later: parsers should skip them.
//! [`Record`] parses and prints these lines.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::SystemTime;

use crate::ids::NodeId;

/// A change of the acting set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// These shards entered the set.
    Add(Vec<u16>),
    /// These shards left the set.
    Remove(Vec<u16>),
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The pool runtime started.
    Start {
        /// Node.
        node: NodeId,
        /// When.
        at_us: u64,
        /// Process id.
        pid: u32,
        /// Configured lease L, ms.
        lease_ms: u64,
    },
    /// A granted lease heartbeat.
    Lease {
        /// Node.
        node: NodeId,
        /// When the heartbeat was sent.
        from_us: u64,
        /// The stored expiry.
        until_us: u64,
    },
    /// The acting set changed.
    Acting {
        /// Node.
        node: NodeId,
        /// When (see the module doc for which side of the change).
        at_us: u64,
        /// The node's acting epoch.
        epoch: u64,
        /// What changed.
        change: Change,
    },
    /// Leader of a new term.
    Leader {
        /// Node.
        node: NodeId,
        /// Raft term.
        term: u64,
        /// When.
        at_us: u64,
    },
    /// Applied configuration version.
    Config {
        /// Node.
        node: NodeId,
        /// Version.
        version: u64,
        /// When.
        at_us: u64,
    },
}

/// A line that is not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Empty line or an unknown first word.
    #[error("unknown record kind {0:?}")]
    Kind(String),
    /// A key the record needs is missing.
    #[error("missing {0}")]
    Missing(&'static str),
    /// A value is not a number (or not a valid range list).
    #[error("bad value for {key}: {value:?}")]
    Value {
        /// Key.
        key: &'static str,
        /// What was there.
        value: String,
    },
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Record::Start {
                node,
                at_us,
                pid,
                lease_ms,
            } => write!(
                f,
                "start node={node} at_us={at_us} pid={pid} lease_ms={lease_ms}"
            ),
            Record::Lease {
                node,
                from_us,
                until_us,
            } => write!(f, "lease node={node} from_us={from_us} until_us={until_us}"),
            Record::Acting {
                node,
                at_us,
                epoch,
                change,
            } => {
                let (key, shards) = match change {
                    Change::Add(s) => ("add", s),
                    Change::Remove(s) => ("remove", s),
                };
                write!(
                    f,
                    "acting node={node} at_us={at_us} epoch={epoch} {key}={}",
                    format_ranges(shards)
                )
            }
            Record::Leader { node, term, at_us } => {
                write!(f, "leader node={node} term={term} at_us={at_us}")
            }
            Record::Config {
                node,
                version,
                at_us,
            } => write!(f, "config node={node} version={version} at_us={at_us}"),
        }
    }
}

impl FromStr for Record {
    type Err = ParseError;

    fn from_str(line: &str) -> Result<Record, ParseError> {
        let mut words = line.split_whitespace();
        let kind = words.next().unwrap_or_default();
        let pairs: Vec<(&str, &str)> = words.filter_map(|w| w.split_once('=')).collect();
        let raw = |key: &'static str| {
            pairs
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .ok_or(ParseError::Missing(key))
        };
        let num = |key: &'static str| {
            let v = raw(key)?;
            v.parse::<u64>().map_err(|_| ParseError::Value {
                key,
                value: v.to_owned(),
            })
        };
        let ranges = |key: &'static str, v: &str| {
            parse_ranges(v).ok_or_else(|| ParseError::Value {
                key,
                value: v.to_owned(),
            })
        };
        Ok(match kind {
            "start" => Record::Start {
                node: num("node")?,
                at_us: num("at_us")?,
                pid: {
                    let v = raw("pid")?;
                    v.parse().map_err(|_| ParseError::Value {
                        key: "pid",
                        value: v.to_owned(),
                    })?
                },
                lease_ms: num("lease_ms")?,
            },
            "lease" => Record::Lease {
                node: num("node")?,
                from_us: num("from_us")?,
                until_us: num("until_us")?,
            },
            "acting" => Record::Acting {
                node: num("node")?,
                at_us: num("at_us")?,
                epoch: num("epoch")?,
                change: match (raw("add"), raw("remove")) {
                    (Ok(v), _) => Change::Add(ranges("add", v)?),
                    (_, Ok(v)) => Change::Remove(ranges("remove", v)?),
                    _ => return Err(ParseError::Missing("add or remove")),
                },
            },
            "leader" => Record::Leader {
                node: num("node")?,
                term: num("term")?,
                at_us: num("at_us")?,
            },
            "config" => Record::Config {
                node: num("node")?,
                version: num("version")?,
                at_us: num("at_us")?,
            },
            other => return Err(ParseError::Kind(other.to_owned())),
        })
    }
}

/// `[0, 1, 2, 40, 52, 53]` → `0-2,40,52-53` (the input is sorted and deduplicated first).
pub fn format_ranges(shards: &[u16]) -> String {
    let mut v = shards.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out = String::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end.wrapping_add(1) {
            i += 1;
            end = v[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}-{end}"));
        }
        i += 1;
    }
    out
}

/// The inverse of [`format_ranges`]; `None` for anything malformed (an empty string is no shard).
pub fn parse_ranges(text: &str) -> Option<Vec<u16>> {
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
                if a > b {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

/// Unix microseconds of a wall-clock time (0 before 1970).
pub fn unix_us(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The report file: one `write` (and a flush) per line, in append mode. A failure to open or write
/// is logged once and otherwise ignored: the report never stops the node.
#[derive(Debug)]
pub struct AuditLog {
    out: Mutex<Writer>,
}

#[derive(Debug)]
struct Writer {
    path: PathBuf,
    file: Option<File>,
    warned: bool,
}

impl AuditLog {
    /// Opens (creates) `path` for appending.
    pub fn open(path: &Path) -> AuditLog {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path);
        let (file, warned) = match file {
            Ok(f) => (Some(f), false),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot open the audit file: no audit report");
                (None, true)
            }
        };
        AuditLog {
            out: Mutex::new(Writer {
                path: path.to_path_buf(),
                file,
                warned,
            }),
        }
    }

    /// Appends one record.
    pub fn write(&self, record: &Record) {
        let line = format!("{record}\n");
        let Ok(mut w) = self.out.lock() else { return };
        let Some(file) = w.file.as_mut() else { return };
        let r = file.write_all(line.as_bytes()).and_then(|()| file.flush());
        if let Err(e) = r
            && !w.warned
        {
            w.warned = true;
            tracing::warn!(path = %w.path.display(), error = %e, "cannot write the audit file (further failures are not logged)");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ranges_round_trip() {
        assert_eq!(format_ranges(&[]), "");
        assert_eq!(format_ranges(&[5]), "5");
        assert_eq!(
            format_ranges(&[
                52, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 40, 53, 54, 60, 55, 56, 57, 58, 59
            ]),
            "0-11,40,52-60"
        );
        assert_eq!(format_ranges(&[65534, 65535]), "65534-65535");
        let v = parse_ranges("0-11,40,52-60").unwrap();
        assert_eq!(format_ranges(&v), "0-11,40,52-60");
        assert_eq!(parse_ranges(""), Some(vec![]));
        assert_eq!(parse_ranges("3-1"), None);
        assert_eq!(parse_ranges("x"), None);
    }

    #[test]
    fn records_print_and_parse() {
        let lines = [
            "start node=2 at_us=1700000000000000 pid=4242 lease_ms=2000",
            "lease node=2 from_us=1700000000000100 until_us=1700000002000100",
            "acting node=2 at_us=1700000000000200 epoch=17 add=0-11,40,52-60",
            "acting node=2 at_us=1700000000000300 epoch=18 remove=40",
            "leader node=0 term=3 at_us=1700000000000400",
            "config node=1 version=4 at_us=1700000000000500",
        ];
        for line in lines {
            let r: Record = line.parse().unwrap();
            assert_eq!(r.to_string(), line);
        }
        assert_eq!(
            "acting node=1 at_us=5 epoch=2 remove=1-2".parse::<Record>(),
            Ok(Record::Acting {
                node: 1,
                at_us: 5,
                epoch: 2,
                change: Change::Remove(vec![1, 2])
            })
        );
        assert!("nonsense a=1".parse::<Record>().is_err());
        assert!(
            "lease node=1 from_us=x until_us=2"
                .parse::<Record>()
                .is_err()
        );
    }

    #[test]
    fn the_writer_appends_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.audit");
        let r = Record::Leader {
            node: 1,
            term: 2,
            at_us: 3,
        };
        AuditLog::open(&path).write(&r);
        AuditLog::open(&path).write(&r);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{r}\n{r}\n"));
        // A file that cannot be opened is not fatal.
        AuditLog::open(&dir.path().join("no/such/dir/x")).write(&r);
    }
}
