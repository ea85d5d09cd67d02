//! **At most one node acts for a shard at any instant.** Two views:
//! - from the nodes' own audit reports: for every shard, the intervals in which each node listed it
//!   as acting while holding a lease ([`crate::audit::acting_spans`]) never overlap between nodes;
//! - from the far side: the gateways never received a new in-dialog request whose CSeq was not above
//!   the dialog's last one (two nodes acting for one call each send their own "next" request).
//!
//! Refined for calls in set-up across a planned move (ARCHITECTURE.md, "Hand-over of calls in
//! set-up"): "acting for a shard" is the acting set, which the old owner leaves at the release, as
//! before; after it, the old owner still finishes the calls it was setting up (for at most the
//! linger bound), calls the new owner does not know until the old owner's last act for each — the
//! record it hands over — and whose messages the new owner sends it. Those are per-call, not
//! per-shard, actions, so they are not in the audit's acting intervals; the far-side check is what
//! would see two nodes acting for one such call.

use std::collections::BTreeMap;

use crate::audit::{Span, acting_spans};

use super::{Observations, Verdict};

/// Checks the invariant.
pub fn check(obs: &Observations) -> Verdict {
    let mut violations = Vec::new();
    let mut by_shard: BTreeMap<u16, Vec<(u64, Span)>> = BTreeMap::new();
    for (node, events) in obs.audit.iter().enumerate() {
        for (shard, spans) in acting_spans(events, obs.end_us) {
            let list = by_shard.entry(shard).or_default();
            list.extend(spans.into_iter().map(|s| (node as u64, s)));
        }
    }
    let mut checked = 0;
    for (shard, mut spans) in by_shard {
        spans.sort_by_key(|(_, s)| *s);
        checked += spans.len();
        // Sorted by start: each span is compared with the furthest-reaching earlier one of another node.
        let mut reach: Vec<(u64, u64)> = Vec::new(); // (node, end) of the spans seen so far
        for (node, (a, b)) in spans {
            if let Some(&(other, end)) = reach
                .iter()
                .filter(|(n, e)| *n != node && *e > a)
                .max_by_key(|(_, e)| *e)
            {
                violations.push(format!(
                    "shard {shard}: node {node} acted from {a} while node {other} could act until {end} \
                     (Unix µs; overlap {:.1} ms)",
                    (end.min(b) - a) as f64 / 1000.0
                ));
            }
            match reach.iter_mut().find(|(n, _)| *n == node) {
                Some(r) => r.1 = r.1.max(b),
                None => reach.push((node, b)),
            }
        }
    }
    if obs.audit.iter().all(Vec::is_empty) {
        violations
            .push("no audit report was read: the lease intervals were not checked".to_owned());
    }
    if obs.gateway_cseq_out_of_order > 0 {
        violations.push(format!(
            "the gateways received {} in-dialog requests out of CSeq order (two nodes acting for one call)",
            obs.gateway_cseq_out_of_order
        ));
        violations.extend(obs.gateway_cseq_disorders.iter().cloned());
    }
    Verdict {
        name: "single-actor-per-shard",
        checked,
        violations,
    }
}
