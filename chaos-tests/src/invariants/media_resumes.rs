//! **Media resumes.** Every call relays RTP both ways (the caller's stream, echoed by the
//! gateway); after a fault, every surviving call's audio must flow again within its shard's
//! failover time + 1 s, and no packet may ever reach another call.
//!
//! A call's shard is the one its To tag names (the pool mints it in the call's shard: with
//! `local_calls` that is a shard of the node the call reached, not `call_id_shard(Call-ID)`,
//! which is the fallback for a tag that names none); its *outages* are the times no node could act for
//! it (the complement of the union of the nodes' acting spans from their audit reports, see
//! [`crate::audit::acting_spans`]). Each silence the caller heard (every gap of at least 200 ms
//! between two echoes, and the silence between the last echo and the caller's BYE) must end no
//! later than 1 s after the end of the last outage of the call's shard that overlapped it — or
//! within 1 s of its start when none did (a planned hand-over re-anchors make-before-break).
//! An answered call that never heard an echo breaks it too, as does any packet carrying another
//! call's token, at a caller or at a gateway.

use std::collections::BTreeMap;

use medpool_simpeer::rtp::{GAP_REPORTED, Gap};
use medpool_sip::ids::{call_id_shard, shard_in};

use crate::audit::{Span, acting_spans, union};

use super::{Observations, Verdict};

/// How long after its shard is acted for again a call's audio may stay silent.
pub const SLACK_US: u64 = 1_000_000;

/// The times no node could act for each shard, between `start` and `end`.
fn outages(obs: &Observations, start: u64) -> BTreeMap<u16, Vec<Span>> {
    let mut acting: BTreeMap<u16, Vec<Span>> = BTreeMap::new();
    for events in &obs.audit {
        for (shard, spans) in acting_spans(events, obs.end_us) {
            acting.entry(shard).or_default().extend(spans);
        }
    }
    acting
        .into_iter()
        .map(|(shard, spans)| {
            let mut out = Vec::new();
            let mut at = start;
            for (a, b) in union(spans) {
                if a > at {
                    out.push((at, a));
                }
                at = at.max(b);
            }
            if at < obs.end_us {
                out.push((at, obs.end_us));
            }
            (shard, out)
        })
        .collect()
}

/// Checks the invariant.
pub fn check(obs: &Observations) -> Verdict {
    let mut violations = Vec::new();
    let mut checked = 0;
    let start = obs
        .calls
        .iter()
        .filter_map(|c| c.media.as_ref().and_then(|m| m.first_rx_us))
        .min()
        .unwrap_or(0);
    let outages = outages(obs, start);
    let none = Vec::new();
    for c in &obs.calls {
        let (r, Some(m)) = (&c.record, &c.media) else {
            continue;
        };
        if !r.survived() {
            continue;
        }
        checked += 1;
        if m.wrong_call > 0 {
            violations.push(format!(
                "[{}] call {} ({}): {} packets of another call",
                c.scenario, r.index, r.call_id, m.wrong_call
            ));
        }
        let Some(last) = m.last_rx_us else {
            violations.push(format!(
                "[{}] call {} ({}): answered, but no RTP came back ({} packets sent)",
                c.scenario, r.index, r.call_id, m.sent
            ));
            continue;
        };
        let shards = obs.shards.max(1);
        let shard = r
            .far_tag
            .as_deref()
            .and_then(|t| shard_in(t.as_bytes()))
            .filter(|&s| s < shards)
            .unwrap_or_else(|| call_id_shard(r.call_id.as_bytes(), shards));
        let down = outages.get(&shard).unwrap_or(&none);
        let mut silences: Vec<Gap> = m.gaps.clone();
        if let Some(stop) = m.stopped_us
            && !r.ended_by_far_side
            && stop.saturating_sub(last) >= GAP_REPORTED.as_micros() as u64
        {
            silences.push(Gap {
                from_us: last,
                len_us: stop - last,
            });
        }
        for g in silences {
            let end = g.from_us + g.len_us;
            let resumed_by = down
                .iter()
                .filter(|(a, b)| *a < end && *b > g.from_us)
                .map(|(_, b)| *b)
                .max()
                .unwrap_or(g.from_us)
                .max(g.from_us)
                + SLACK_US;
            if end > resumed_by {
                violations.push(format!(
                    "[{}] call {} ({}, shard {shard}): silent {:.2} s from {} (Unix µs), {:.2} s \
                     longer than its shard's outage + 1 s",
                    c.scenario,
                    r.index,
                    r.call_id,
                    g.len_us as f64 / 1e6,
                    g.from_us,
                    (end - resumed_by) as f64 / 1e6
                ));
            }
        }
    }
    if obs.gateway_media.wrong_call > 0 {
        violations.push(format!(
            "the gateways received {} packets of another call",
            obs.gateway_media.wrong_call
        ));
    }
    if checked > 0 && obs.audit.iter().all(Vec::is_empty) {
        violations.push("no audit report was read: the shards' outages are unknown".to_owned());
    }
    Verdict {
        name: "media-resumes",
        checked,
        violations,
    }
}
