//! The routing maps from SIP identifiers to the owners of transactions and dialogs: a client
//! transaction → its call or gateway probe; an INVITE server transaction, a leg A (Call-ID + caller
//! tag) or a leg B (our Call-ID) → its call. One mutex; every operation is a hash lookup.

use std::collections::HashMap;
use std::sync::Mutex;

use medpool_sip::SipMessage;
use medpool_sip::transaction::{ClientKey, ServerKey};
use ractor::ActorId;

use super::events::{CallRef, Owner, Side};

/// Routing maps from SIP identifiers to owners.
#[derive(Debug, Default)]
pub struct Registry {
    maps: Mutex<Maps>,
}

#[derive(Debug, Default)]
pub(super) struct Maps {
    pub(super) clients: HashMap<ClientKey, Owner>,
    pub(super) invites: HashMap<ServerKey, CallRef>,
    leg_a: HashMap<Vec<u8>, CallRef>,
    leg_b: HashMap<Vec<u8>, CallRef>,
    by_shard: HashMap<u16, HashMap<ActorId, CallRef>>,
}

/// Below this many slots a map is never shrunk.
const COMPACT_FLOOR: usize = 4096;

/// Gives back the slots of a map that emptied out (after a burst: a hash map otherwise keeps the
/// capacity of its largest moment): shrunk to twice its entries once it holds fewer than an
/// eighth of its capacity, so the rehash is rare and paid for by the entries that left.
fn compact<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > COMPACT_FLOOR && map.len() < map.capacity() / 8 {
        map.shrink_to((map.len() * 2).max(COMPACT_FLOOR / 2));
    }
}

fn leg_a_key(call_id: &[u8], remote_tag: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(call_id.len() + remote_tag.len() + 1);
    k.extend_from_slice(call_id);
    k.push(0);
    k.extend_from_slice(remote_tag);
    k
}

impl Registry {
    pub(super) fn with<R>(&self, f: impl FnOnce(&mut Maps) -> R) -> R {
        match self.maps.lock() {
            Ok(mut m) => f(&mut m),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }
    /// Routes responses of client transaction `key` to `owner`.
    pub fn add_client(&self, key: ClientKey, owner: Owner) {
        self.with(|m| m.clients.insert(key, owner));
    }
    /// Forgets a client transaction.
    pub fn remove_client(&self, key: &ClientKey) -> Option<Owner> {
        self.with(|m| {
            let owner = m.clients.remove(key);
            compact(&mut m.clients);
            owner
        })
    }
    /// Whether client transaction `key` is one of this node's gateway probes (OPTIONS): their
    /// answers belong to this node, whatever shard their branch names.
    pub fn is_probe(&self, key: &ClientKey) -> bool {
        self.with(|m| matches!(m.clients.get(key), Some(Owner::Gateway(_))))
    }
    /// Whether client transaction `key` is this node's (a probe or a call's request).
    pub fn has_client(&self, key: &ClientKey) -> bool {
        self.with(|m| m.clients.contains_key(key))
    }
    /// Routes CANCELs of this INVITE server transaction, and requests of leg A, to `call`.
    pub fn add_call(
        &self,
        invite: ServerKey,
        call_id: &[u8],
        remote_tag: &[u8],
        shard: u16,
        call: CallRef,
    ) {
        self.with(|m| {
            m.invites.insert(invite, call.clone());
            m.by_shard
                .entry(shard)
                .or_default()
                .insert(call.get_id(), call.clone());
            m.leg_a.insert(leg_a_key(call_id, remote_tag), call);
        });
    }
    /// Whether a call with this leg-A Call-ID and caller tag is here.
    pub fn has_call(&self, call_id: &[u8], remote_tag: &[u8]) -> bool {
        self.with(|m| m.leg_a.contains_key(&leg_a_key(call_id, remote_tag)))
    }
    /// The calls of a shard.
    pub fn calls_of(&self, shard: u16) -> Vec<CallRef> {
        self.with(|m| {
            m.by_shard
                .get(&shard)
                .map(|c| c.values().cloned().collect())
                .unwrap_or_default()
        })
    }
    /// Routes leg B (our Call-ID) to `call`.
    pub fn add_leg_b(&self, call_id: &[u8], call: CallRef) {
        self.with(|m| m.leg_b.insert(call_id.to_vec(), call));
    }
    /// Forgets a leg B.
    pub fn remove_leg_b(&self, call_id: &[u8]) {
        self.with(|m| {
            m.leg_b.remove(call_id);
            compact(&mut m.leg_b);
        });
    }
    /// Forgets a call's leg A and INVITE.
    pub fn remove_call(
        &self,
        invite: &ServerKey,
        call_id: &[u8],
        remote_tag: &[u8],
        shard: u16,
        actor: ActorId,
    ) {
        self.with(|m| {
            m.invites.remove(invite);
            m.leg_a.remove(&leg_a_key(call_id, remote_tag));
            if let Some(c) = m.by_shard.get_mut(&shard) {
                c.remove(&actor);
                if c.is_empty() {
                    m.by_shard.remove(&shard);
                } else {
                    compact(c);
                }
            }
            compact(&mut m.invites);
            compact(&mut m.leg_a);
        });
    }
    /// Forgets every entry that routes to `actor` (a dead actor's leftovers: a sweep of every map,
    /// for the rare actor that died without cleaning up after itself). Returns how many there were.
    pub fn forget_actor(&self, actor: ActorId) -> usize {
        self.with(|m| {
            let before = m.clients.len()
                + m.invites.len()
                + m.leg_a.len()
                + m.leg_b.len()
                + m.by_shard.values().map(HashMap::len).sum::<usize>();
            m.clients.retain(|_, o| match o {
                Owner::Dialog(c) => c.get_id() != actor,
                Owner::Gateway(g) => g.get_id() != actor,
            });
            m.invites.retain(|_, c| c.get_id() != actor);
            m.leg_a.retain(|_, c| c.get_id() != actor);
            m.leg_b.retain(|_, c| c.get_id() != actor);
            m.by_shard.retain(|_, calls| {
                calls.remove(&actor);
                !calls.is_empty()
            });
            let after = m.clients.len()
                + m.invites.len()
                + m.leg_a.len()
                + m.leg_b.len()
                + m.by_shard.values().map(HashMap::len).sum::<usize>();
            before - after
        })
    }
    /// Whether `call_id` is one of our own leg-B Call-IDs (a call looping back to us).
    pub fn is_our_leg_b(&self, call_id: &[u8]) -> bool {
        self.with(|m| m.leg_b.contains_key(call_id))
    }
    /// How many calls are registered.
    pub fn calls(&self) -> usize {
        self.with(|m| m.leg_a.len())
    }
    /// Every call (for shutdown and admin), once each.
    pub fn all_calls(&self) -> Vec<CallRef> {
        self.with(|m| m.invites.values().cloned().collect::<Vec<_>>())
            .into_iter()
            .chain(self.with(|m| m.leg_a.values().cloned().collect::<Vec<_>>()))
            .fold(Vec::new(), |mut v, a| {
                if !v.iter().any(|x: &CallRef| x.get_id() == a.get_id()) {
                    v.push(a);
                }
                v
            })
    }
    /// The call a message belongs to, and on which leg.
    pub(super) fn dialog_for(&self, msg: &SipMessage) -> Option<(CallRef, Side)> {
        let call_id = msg.call_id()?.ok()?;
        self.with(|m| {
            if let Some(a) = m.leg_b.get(call_id) {
                return Some((a.clone(), Side::B));
            }
            let tag = if msg.is_request() {
                msg.from_tag()
            } else {
                msg.to_tag()
            }?;
            m.leg_a
                .get(&leg_a_key(call_id, tag))
                .map(|a| (a.clone(), Side::A))
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use medpool_sip::transaction::{ClientKey, ServerKey};
    use ractor::{Actor, ActorProcessingErr, ActorRef};

    use super::*;
    use crate::txlayer::CallEvent;

    /// An actor that takes call events and does nothing with them.
    struct Sink;
    impl Actor for Sink {
        type Msg = CallEvent;
        type State = ();
        type Arguments = ();
        async fn pre_start(&self, _: ActorRef<CallEvent>, _: ()) -> Result<(), ActorProcessingErr> {
            Ok(())
        }
    }

    fn invite_key(branch: &str) -> ServerKey {
        ServerKey::from_parts(branch.as_bytes(), b"127.0.0.1:5060", b"INVITE").unwrap()
    }

    #[tokio::test]
    async fn forgetting_a_dead_actor_removes_every_entry_that_routes_to_it_and_no_other() {
        let (a, _) = Actor::spawn(None, Sink, ()).await.unwrap();
        let (b, _) = Actor::spawn(None, Sink, ()).await.unwrap();
        let reg = Registry::default();
        for (actor, n) in [(&a, "1"), (&b, "2")] {
            let call: CallRef = actor.get_derived();
            reg.add_call(
                invite_key(&format!("z9hG4bK-{n}")),
                format!("a-{n}").as_bytes(),
                b"tag",
                7,
                call.clone(),
            );
            reg.add_leg_b(format!("b-{n}").as_bytes(), call.clone());
            reg.add_client(
                ClientKey::new(format!("z9hG4bK-c{n}").as_bytes(), b"INVITE"),
                Owner::Dialog(call),
            );
        }
        assert_eq!((reg.calls(), reg.calls_of(7).len()), (2, 2));

        // Leg A, the INVITE, leg B, the client transaction and the shard entry.
        assert_eq!(reg.forget_actor(a.get_id()), 5);
        assert_eq!((reg.calls(), reg.calls_of(7).len()), (1, 1));
        assert!(!reg.has_call(b"a-1", b"tag") && reg.has_call(b"a-2", b"tag"));
        assert!(!reg.is_our_leg_b(b"b-1") && reg.is_our_leg_b(b"b-2"));
        assert!(!reg.has_client(&ClientKey::new(b"z9hG4bK-c1", b"INVITE")));
        assert!(reg.has_client(&ClientKey::new(b"z9hG4bK-c2", b"INVITE")));
        assert_eq!(reg.forget_actor(a.get_id()), 0, "nothing left of it");
        a.stop(None);
        b.stop(None);
    }

    #[tokio::test]
    async fn a_map_that_emptied_out_after_a_burst_gives_its_slots_back() {
        let (a, _) = Actor::spawn(None, Sink, ()).await.unwrap();
        let call: CallRef = a.get_derived();
        let reg = Registry::default();
        let id = |i: usize| format!("b-{i}").into_bytes();
        for i in 0..50_000 {
            reg.add_leg_b(&id(i), call.clone());
        }
        let full = reg.with(|m| m.leg_b.capacity());
        for i in 0..40_000 {
            reg.remove_leg_b(&id(i));
        }
        // Still a fifth full: never shrunk on the way (`capacity` counts the entries plus the
        // room left before a growth, so removals alone lower it; a shrink makes it far smaller).
        let busy = reg.with(|m| m.leg_b.capacity());
        assert!(
            (10_000..=full).contains(&busy),
            "a fifth left: kept ({busy} of {full})"
        );
        for i in 40_000..49_900 {
            reg.remove_leg_b(&id(i));
        }
        let after = reg.with(|m| m.leg_b.capacity());
        assert!(after < full / 8, "100 left: {after} of {full} slots kept");
        assert!((49_900..50_000).all(|i| reg.is_our_leg_b(&id(i))));
        a.stop(None);
    }
}
