//! Calls in set-up across a planned shard move (ARCHITECTURE.md, "The pool": hand-over of calls in
//! set-up). Two tables, one per side of the move:
//!
//! - [`SetUps`], on every node: the calls this node is setting up (started here, record not yet
//!   written), by their Call-IDs (leg A's and each attempt's leg B). When their shard moves away
//!   they *linger*: they finish here (for at most [`SETUP_LINGER`]) and hand their record over
//!   when confirmed. A request with one of these Call-IDs is handled here even when this node no
//!   longer acts for its shard, and the node reports the lingering ones to the shard's new owner
//!   (its hand-over fence asks for them).
//! - [`Elsewhere`], on the new owner: the calls the old owner reported lingering, with the node
//!   that holds them, until [`SETUP_LINGER`] (plus a margin) after the report. A message of one of
//!   them (a retransmitted INVITE, the ACK, a CANCEL) and an answer no transaction here knows on
//!   such a shard go to that node: the new owner never acts on a call the old owner still holds.
//!
//! Both are bounded: [`SetUps`] by the node's calls (`max_calls`), [`Elsewhere`] by
//! [`MAX_ELSEWHERE`] Call-IDs (beyond it, reports are ignored: those calls' messages are then
//! handled as today — at worst a retransmitted INVITE starts a second call).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// How long a call in set-up whose shard moved away may go on finishing on its old node (64·T1
/// with the default T1: as long as an unanswered INVITE transaction may run). After it, a call
/// still unanswered is ended as before (503 + Retry-After to the caller, CANCEL to the gateway).
pub const SETUP_LINGER: Duration = Duration::from_secs(32);

/// How long after a report the new owner keeps routing a lingering call's messages to its holder
/// (the linger bound plus a margin for the record's write).
pub const ELSEWHERE_FOR: Duration = Duration::from_secs(35);

/// Most Call-IDs the new owner keeps of calls lingering elsewhere.
pub const MAX_ELSEWHERE: usize = 100_000;

/// The calls this node is setting up (see the module doc).
#[derive(Debug, Default)]
pub struct SetUps {
    inner: Mutex<SetUpMaps>,
}

#[derive(Debug, Default)]
struct SetUpMaps {
    /// Call (an opaque key, the actor's id) → its shard and Call-IDs.
    calls: HashMap<u64, (u16, Vec<Bytes>)>,
    /// Call-ID → call.
    by_call_id: HashMap<Bytes, u64>,
}

impl SetUps {
    fn with<R>(&self, f: impl FnOnce(&mut SetUpMaps) -> R) -> R {
        match self.inner.lock() {
            Ok(mut m) => f(&mut m),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
    /// Call `call` of `shard` starts its set-up with leg A's Call-ID.
    pub fn begin(&self, call: u64, shard: u16, call_id: Bytes) {
        self.with(|m| {
            m.by_call_id.insert(call_id.clone(), call);
            m.calls.insert(call, (shard, vec![call_id]));
        });
    }
    /// Call `call` started an attempt with leg-B Call-ID `call_id`.
    pub fn leg(&self, call: u64, call_id: Bytes) {
        self.with(|m| {
            if let Some((_, ids)) = m.calls.get_mut(&call) {
                ids.push(call_id.clone());
                m.by_call_id.insert(call_id, call);
            }
        });
    }
    /// Call `call` is written down (the pool knows it) or ended: no longer in set-up here.
    pub fn end(&self, call: u64) {
        self.with(|m| {
            if let Some((_, ids)) = m.calls.remove(&call) {
                for id in ids {
                    if m.by_call_id.get(&id) == Some(&call) {
                        m.by_call_id.remove(&id);
                    }
                }
            }
        });
    }
    /// Whether a call in set-up here has this Call-ID.
    pub fn holds(&self, call_id: &[u8]) -> bool {
        self.with(|m| m.by_call_id.contains_key(call_id))
    }
    /// How many calls are in set-up here.
    pub fn len(&self) -> usize {
        self.with(|m| m.calls.len())
    }
    /// Whether no call is in set-up here.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The Call-IDs of the calls in set-up whose shard passes `lingering` (this node no longer
    /// acts for it), by shard.
    pub fn lingering(&self, lingering: impl Fn(u16) -> bool) -> Vec<(u16, Vec<String>)> {
        let mut by_shard: std::collections::BTreeMap<u16, Vec<String>> = Default::default();
        self.with(|m| {
            for (shard, ids) in m.calls.values() {
                if lingering(*shard) {
                    by_shard
                        .entry(*shard)
                        .or_default()
                        .extend(ids.iter().map(|i| String::from_utf8_lossy(i).into_owned()));
                }
            }
        });
        by_shard.into_iter().collect()
    }
}

/// Calls lingering on another node, as its report named them (see the module doc).
#[derive(Debug, Default)]
pub struct Elsewhere {
    inner: Mutex<ElsewhereMaps>,
    /// Whether any report may still be current: every message of the node checks it, without a
    /// lock, before it looks anything up.
    any: AtomicBool,
}

#[derive(Debug, Default)]
struct ElsewhereMaps {
    /// Call-ID → (holder, until).
    calls: HashMap<Bytes, (u64, Instant)>,
    /// Shard → (holder, until): answers no transaction here knows go to the holder.
    shards: HashMap<u16, (u64, Instant)>,
    /// The latest `until` of all entries.
    last: Option<Instant>,
}

impl Elsewhere {
    fn with<R>(&self, f: impl FnOnce(&mut ElsewhereMaps) -> R) -> R {
        match self.inner.lock() {
            Ok(mut m) => f(&mut m),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
    /// Looks up in the maps while a report may be current; forgets them all once none is.
    fn current<R>(&self, now: Instant, f: impl FnOnce(&ElsewhereMaps) -> Option<R>) -> Option<R> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        self.with(|m| {
            if m.last.is_none_or(|l| l <= now) {
                m.calls.clear();
                m.shards.clear();
                m.last = None;
                self.any.store(false, Ordering::Release);
                return None;
            }
            f(m)
        })
    }
    /// Node `holder` reports `calls` (by shard) lingering there, at `now`. Returns how many
    /// Call-IDs were taken.
    pub fn report(&self, holder: u64, calls: Vec<(u16, Vec<String>)>, now: Instant) -> usize {
        let until = now + ELSEWHERE_FOR;
        self.with(|m| {
            m.calls.retain(|_, (_, u)| *u > now);
            m.shards.retain(|_, (_, u)| *u > now);
            let mut taken = 0;
            if !calls.is_empty() {
                m.last = Some(until);
                self.any.store(true, Ordering::Release);
            }
            for (shard, ids) in calls {
                m.shards.insert(shard, (holder, until));
                for id in ids {
                    if m.calls.len() >= MAX_ELSEWHERE {
                        break;
                    }
                    m.calls.insert(Bytes::from(id), (holder, until));
                    taken += 1;
                }
            }
            taken
        })
    }
    /// The node holding the call with this Call-ID, if one reported it lingering (and the report
    /// is still current).
    pub fn holder_of_call(&self, call_id: &[u8], now: Instant) -> Option<u64> {
        self.current(now, |m| {
            m.calls
                .get(call_id)
                .filter(|(_, u)| *u > now)
                .map(|(h, _)| *h)
        })
    }
    /// The node finishing set-ups of `shard`, if one reported some (and the report is current).
    pub fn holder_of_shard(&self, shard: u16, now: Instant) -> Option<u64> {
        self.current(now, |m| {
            m.shards
                .get(&shard)
                .filter(|(_, u)| *u > now)
                .map(|(h, _)| *h)
        })
    }
}

/// Where a message that reached the node acting for its shard goes, when a call of that shard may
/// still be finishing its set-up on the shard's previous owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Handled here as usual.
    Here,
    /// To the node holding the call (it is lingering there).
    Holder(u64),
}

/// What the node knows of a message when it checks for a lingering call.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// A request (else a response).
    pub is_request: bool,
    /// Its Call-ID.
    pub call_id: &'a [u8],
    /// Its shard.
    pub shard: u16,
    /// A call here knows it already (a request of a call here, or an answer to a transaction here).
    pub known_here: bool,
    /// This node.
    pub me: u64,
}

/// Where a message goes: a request with the Call-ID of a call lingering elsewhere, or an answer
/// nothing here knows on a shard whose previous owner still finishes set-ups, goes to that node.
pub fn route(elsewhere: &Elsewhere, facts: &Facts<'_>, now: Instant) -> Route {
    if facts.known_here {
        return Route::Here;
    }
    let holder = if facts.is_request {
        elsewhere.holder_of_call(facts.call_id, now)
    } else {
        elsewhere.holder_of_shard(facts.shard, now)
    };
    match holder {
        Some(h) if h != facts.me => Route::Holder(h),
        _ => Route::Here,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn set_ups_are_reported_only_for_shards_this_node_left() {
        let s = SetUps::default();
        s.begin(1, 7, Bytes::from_static(b"a1"));
        s.leg(1, Bytes::from_static(b"b1"));
        s.begin(2, 8, Bytes::from_static(b"a2"));
        assert!(s.holds(b"a1") && s.holds(b"b1") && s.holds(b"a2"));
        assert_eq!(
            s.lingering(|sh| sh == 7),
            vec![(7, vec!["a1".to_owned(), "b1".to_owned()])]
        );
        s.end(1);
        assert!(!s.holds(b"a1") && !s.holds(b"b1"));
        assert!(s.lingering(|sh| sh == 7).is_empty());
        assert_eq!(s.len(), 1);
        // A leg of a call that already ended is not added.
        s.leg(1, Bytes::from_static(b"b9"));
        assert!(!s.holds(b"b9"));
    }

    #[tokio::test(start_paused = true)]
    async fn messages_of_a_lingering_call_go_to_its_holder_until_the_report_expires() {
        let e = Elsewhere::default();
        let now = Instant::now();
        assert_eq!(
            e.report(2, vec![(7, vec!["a1".into(), "b1".into()])], now),
            2
        );
        let facts = |is_request, call_id: &'static [u8], shard, known_here| Facts {
            is_request,
            call_id,
            shard,
            known_here,
            me: 1,
        };
        // A retransmitted INVITE or the ACK of the lingering call.
        assert_eq!(
            route(&e, &facts(true, b"a1", 7, false), now),
            Route::Holder(2)
        );
        // A request of another call of the shard: handled here (a new call for the new owner).
        assert_eq!(route(&e, &facts(true, b"zz", 7, false), now), Route::Here);
        // Once a call here knows it (its record arrived, the call was rebuilt here): here.
        assert_eq!(route(&e, &facts(true, b"a1", 7, true), now), Route::Here);
        // An answer nothing here knows, on the shard: to the holder; on another shard: here.
        assert_eq!(
            route(&e, &facts(false, b"b7", 7, false), now),
            Route::Holder(2)
        );
        assert_eq!(route(&e, &facts(false, b"b7", 8, false), now), Route::Here);
        // After the window: here.
        let later = now + ELSEWHERE_FOR + Duration::from_millis(1);
        assert_eq!(route(&e, &facts(true, b"a1", 7, false), later), Route::Here);
        assert_eq!(
            route(&e, &facts(false, b"b7", 7, false), later),
            Route::Here
        );
        // A report naming this node itself changes nothing.
        e.report(1, vec![(9, vec!["c1".into()])], later);
        assert_eq!(route(&e, &facts(true, b"c1", 9, false), later), Route::Here);
    }
}
