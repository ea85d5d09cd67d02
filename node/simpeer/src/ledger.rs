//! The caller's ledger: what happened to each call, and the summary table a test or the demo prints.
//!
//! A request whose transaction timed out (no final answer within 64·T1) is recorded as *unknown*,
//! not as a failure: the far side may or may not have acted on it.

use std::fmt;
use std::net::SocketAddr;

/// How one client transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A final answer with this status arrived.
    Final(u16),
    /// No final answer within the transaction timeout.
    Unknown,
}

impl Outcome {
    /// A 2xx final answer.
    pub fn is_success(self) -> bool {
        matches!(self, Outcome::Final(s) if (200..300).contains(&s))
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Final(s) => write!(f, "{s}"),
            Outcome::Unknown => f.write_str("unknown"),
        }
    }
}

/// One call as the caller saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallRecord {
    /// The call's number within the caller (0, 1, ...).
    pub index: usize,
    /// Its Call-ID.
    pub call_id: String,
    /// The INVITE that set it up (`None`: not placed).
    pub setup: Option<Outcome>,
    /// Where the INVITE's final answer came from (with a trusted forwarder: the node that received
    /// the INVITE), and its Retry-After when it had one.
    pub setup_answered_by: Option<(SocketAddr, Option<u32>)>,
    /// The far side's tag in the To header of the 2xx that answered the INVITE (`None`: not
    /// answered 2xx, or no tag).
    pub far_tag: Option<String>,
    /// The last in-dialog re-INVITE the caller sent (`None`: none sent).
    pub reinvite: Option<Outcome>,
    /// The caller's BYE (`None`: none sent).
    pub bye: Option<Outcome>,
    /// The far side (the pool) hung the call up with a BYE, answered 200.
    pub ended_by_far_side: bool,
    /// In-dialog requests other than BYE that arrived from the far side (answered 200).
    pub far_requests: u32,
}

impl CallRecord {
    /// Answered 200 and never failed afterwards: every in-dialog request the caller sent got a 2xx
    /// and the far side did not hang up.
    pub fn survived(&self) -> bool {
        self.setup.is_some_and(Outcome::is_success)
            && !self.ended_by_far_side
            && self.reinvite.is_none_or(Outcome::is_success)
            && self.bye.is_none_or(Outcome::is_success)
    }

    fn outcomes(&self) -> impl Iterator<Item = Outcome> {
        [self.setup, self.reinvite, self.bye].into_iter().flatten()
    }
}

/// Counts over a ledger.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Calls whose INVITE was sent.
    pub placed: usize,
    /// Calls answered 200.
    pub answered: usize,
    /// Calls that were re-INVITEd.
    pub reinvited: usize,
    /// re-INVITEs answered 2xx.
    pub reinvite_ok: usize,
    /// Calls the caller hung up.
    pub hung_up: usize,
    /// BYEs answered 2xx.
    pub bye_ok: usize,
    /// Calls the far side hung up.
    pub ended_by_far_side: usize,
    /// Calls with at least one non-2xx final answer.
    pub failed: usize,
    /// Calls with at least one transaction that timed out.
    pub unknown: usize,
    /// Calls that [`CallRecord::survived`].
    pub survived: usize,
}

impl Summary {
    /// Counts `records`.
    pub fn of(records: &[CallRecord]) -> Summary {
        let mut s = Summary::default();
        for r in records {
            s.placed += usize::from(r.setup.is_some());
            s.answered += usize::from(r.setup.is_some_and(Outcome::is_success));
            s.reinvited += usize::from(r.reinvite.is_some());
            s.reinvite_ok += usize::from(r.reinvite.is_some_and(Outcome::is_success));
            s.hung_up += usize::from(r.bye.is_some());
            s.bye_ok += usize::from(r.bye.is_some_and(Outcome::is_success));
            s.ended_by_far_side += usize::from(r.ended_by_far_side);
            s.failed += usize::from(
                r.outcomes()
                    .any(|o| matches!(o, Outcome::Final(_)) && !o.is_success()),
            );
            s.unknown += usize::from(r.outcomes().any(|o| o == Outcome::Unknown));
            s.survived += usize::from(r.survived());
        }
        s
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rows = [
            ("calls placed", self.placed),
            ("answered (200 to INVITE)", self.answered),
            ("re-INVITEd", self.reinvited),
            ("re-INVITE answered 2xx", self.reinvite_ok),
            ("hung up by the caller", self.hung_up),
            ("BYE answered 2xx", self.bye_ok),
            ("ended by the far side", self.ended_by_far_side),
            ("failed (a non-2xx final)", self.failed),
            ("unknown (timed out)", self.unknown),
            ("survived end to end", self.survived),
        ];
        writeln!(f, "+------------------------------+--------+")?;
        for (name, n) in rows {
            writeln!(f, "| {name:<28} | {n:>6} |")?;
        }
        write!(f, "+------------------------------+--------+")
    }
}

/// The calls that did not survive, one line each (for a failure message).
pub fn casualties(records: &[CallRecord]) -> String {
    let mut out = String::new();
    for r in records.iter().filter(|r| !r.survived()) {
        let show = |o: Option<Outcome>| o.map_or_else(|| "-".to_owned(), |o| o.to_string());
        let from = match r.setup_answered_by {
            Some((a, Some(ra))) => format!(" (from {a}, Retry-After {ra})"),
            Some((a, None)) => format!(" (from {a})"),
            None => String::new(),
        };
        out.push_str(&format!(
            "call {:>4} {}: INVITE {}{from} re-INVITE {} BYE {}{}\n",
            r.index,
            r.call_id,
            show(r.setup),
            show(r.reinvite),
            show(r.bye),
            if r.ended_by_far_side {
                " (ended by the far side)"
            } else {
                ""
            }
        ));
    }
    out
}
