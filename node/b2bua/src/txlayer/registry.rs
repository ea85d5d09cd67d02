//! The routing maps from SIP identifiers to the owners of transactions and dialogs: a client
//! transaction → its call or gateway probe; an INVITE server transaction, a leg A (Call-ID + caller
//! tag) or a leg B (our Call-ID) → its call; a shard → its calls. Every map is split into
//! independently locked shards by a hash of its key ([`Shards`]); every operation is a hash lookup in
//! one shard. Two of the maps grow with the transactions (a client transaction and an INVITE stay
//! 32 s after their answer): with one lock over all of them, a map growing past a power of two held
//! every message of every call while it moved hundreds of thousands of entries.

use medpool_sip::SipMessage;
use medpool_sip::transaction::{ClientKey, FastMap, ServerKey, Shards};
use ractor::ActorId;

use super::events::{CallRef, ClientOwner, Owner, Side};

/// How many shards each map is split into.
const MAP_SHARDS: usize = 64;

/// Routing maps from SIP identifiers to owners.
#[derive(Debug)]
pub struct Registry {
    clients: Shards<FastMap<ClientKey, ClientOwner>>,
    invites: Shards<FastMap<ServerKey, CallRef>>,
    leg_a: Shards<FastMap<Vec<u8>, CallRef>>,
    leg_b: Shards<FastMap<Vec<u8>, CallRef>>,
    by_shard: Shards<FastMap<u16, FastMap<ActorId, CallRef>>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self {
            clients: Shards::new(MAP_SHARDS, FastMap::default),
            invites: Shards::new(MAP_SHARDS, FastMap::default),
            leg_a: Shards::new(MAP_SHARDS, FastMap::default),
            leg_b: Shards::new(MAP_SHARDS, FastMap::default),
            by_shard: Shards::new(MAP_SHARDS, FastMap::default),
        }
    }
}

/// Below this many slots a map that holds entries is never shrunk.
const COMPACT_FLOOR: usize = 512;

/// Gives back the slots of a map that emptied out (after a burst: a hash map otherwise keeps the
/// capacity of its largest moment): shrunk to twice its entries once it holds fewer than an
/// eighth of its capacity, so the rehash is rare and paid for by the entries that left; a map
/// with no entry left gives back all its room (a free, no rehash), floor or not — after a burst,
/// 64 shards of five maps each kept their floor otherwise.
fn compact<K: std::hash::Hash + Eq, V>(map: &mut FastMap<K, V>) {
    if map.is_empty() {
        if map.capacity() > 0 {
            *map = FastMap::default();
        }
    } else if map.capacity() > COMPACT_FLOOR && map.len() < map.capacity() / 8 {
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

/// Removes every value of every shard of `map` that `dead` says is gone; returns how many.
fn retain_all<K, V>(map: &Shards<FastMap<K, V>>, dead: impl Fn(&V) -> bool) -> usize {
    (0..map.count())
        .map(|i| {
            let mut m = map.lock_at(i);
            let before = m.len();
            m.retain(|_, v| !dead(v));
            before - m.len()
        })
        .sum()
}

impl Registry {
    /// Routes responses of client transaction `key` to `owner`.
    pub fn add_client(&self, key: ClientKey, owner: ClientOwner) {
        self.clients.lock_for(&key).insert(key, owner);
    }
    /// Forgets a client transaction; its owner if that is still alive (a call that ended is not).
    pub fn remove_client(&self, key: &ClientKey) -> Option<Owner> {
        let owner = {
            let mut m = self.clients.lock_for(key);
            let owner = m.remove(key);
            compact(&mut m);
            owner
        };
        self.resolve(owner?)
    }
    /// Forgets the client transactions of a call that stopped, though they may still linger in the
    /// transaction layer (an INVITE's for 64*T1 after its 2xx, Timer M): their events have no live
    /// owner to reach any more, and what comes for them is handled as for a transaction that
    /// names a stopped call — a 2xx to one of our INVITEs goes to the node
    /// ([`super::CoreEvent::OrphanAnswer`]: ACKed, and the leg hung up), anything else is dropped.
    /// Only their answers no longer count as this node's own (see [`Registry::has_client`]): in a
    /// pool, one that arrives after the call's shard moved goes to the shard's owner, which ACKs
    /// it in the same way (or the call itself, when it was handed over there alive).
    pub fn forget_clients<'a>(&self, keys: impl IntoIterator<Item = &'a ClientKey>) {
        for key in keys {
            let mut m = self.clients.lock_for(key);
            m.remove(key);
            compact(&mut m);
        }
    }
    /// Who owns client transaction `key`, if it is still alive (a call that ended is not).
    pub(super) fn client_owner(&self, key: &ClientKey) -> Option<Owner> {
        let owner = self.clients.lock_for(key).get(key).cloned();
        self.resolve(owner?)
    }
    /// The live owner a client transaction names: a call through the live calls of its shard
    /// (never with a lock of the client map held).
    fn resolve(&self, owner: ClientOwner) -> Option<Owner> {
        match owner {
            ClientOwner::Dialog { shard, actor } => self
                .by_shard
                .lock_for(&shard)
                .get(&shard)
                .and_then(|calls| calls.get(&actor))
                .cloned()
                .map(Owner::Dialog),
            ClientOwner::Gateway(g) => Some(Owner::Gateway(g)),
        }
    }
    /// Whether client transaction `key` is one of this node's gateway probes (OPTIONS): their
    /// answers belong to this node, whatever shard their branch names.
    pub fn is_probe(&self, key: &ClientKey) -> bool {
        matches!(
            self.clients.lock_for(key).get(key),
            Some(ClientOwner::Gateway(_))
        )
    }
    /// Whether client transaction `key` is this node's (a probe or a call's request).
    pub fn has_client(&self, key: &ClientKey) -> bool {
        self.clients.lock_for(key).contains_key(key)
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
        self.by_shard
            .lock_for(&shard)
            .entry(shard)
            .or_default()
            .insert(call.get_id(), call.clone());
        let leg_a = leg_a_key(call_id, remote_tag);
        self.leg_a.lock_for(&leg_a).insert(leg_a, call.clone());
        // Last: what a CANCEL looks up.
        self.invites.lock_for(&invite).insert(invite, call);
    }
    /// The call whose INVITE server transaction is `key`.
    pub(super) fn invite_owner(&self, key: &ServerKey) -> Option<CallRef> {
        self.invites.lock_for(key).get(key).cloned()
    }
    /// Forgets an INVITE server transaction (it ended).
    pub(super) fn remove_invite(&self, key: &ServerKey) {
        let mut m = self.invites.lock_for(key);
        m.remove(key);
        compact(&mut m);
    }
    /// Whether a call with this leg-A Call-ID and caller tag is here.
    pub fn has_call(&self, call_id: &[u8], remote_tag: &[u8]) -> bool {
        let k = leg_a_key(call_id, remote_tag);
        self.leg_a.lock_for(&k).contains_key(&k)
    }
    /// The calls of a shard.
    pub fn calls_of(&self, shard: u16) -> Vec<CallRef> {
        self.by_shard
            .lock_for(&shard)
            .get(&shard)
            .map(|c| c.values().cloned().collect())
            .unwrap_or_default()
    }
    /// Routes leg B (our Call-ID) to `call`.
    pub fn add_leg_b(&self, call_id: &[u8], call: CallRef) {
        self.leg_b.lock_for(call_id).insert(call_id.to_vec(), call);
    }
    /// Forgets a leg B.
    pub fn remove_leg_b(&self, call_id: &[u8]) {
        let mut m = self.leg_b.lock_for(call_id);
        m.remove(call_id);
        compact(&mut m);
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
        {
            let mut m = self.invites.lock_for(invite);
            m.remove(invite);
            compact(&mut m);
        }
        let k = leg_a_key(call_id, remote_tag);
        {
            let mut m = self.leg_a.lock_for(&k);
            m.remove(&k);
            compact(&mut m);
        }
        let mut by_shard = self.by_shard.lock_for(&shard);
        if let Some(c) = by_shard.get_mut(&shard) {
            c.remove(&actor);
            if c.is_empty() {
                by_shard.remove(&shard);
            } else {
                compact(c);
            }
        }
    }
    /// Forgets every entry that routes to `actor` (a dead actor's leftovers: a sweep of every map,
    /// for the rare actor that died without cleaning up after itself). Returns how many there were.
    pub fn forget_actor(&self, actor: ActorId) -> usize {
        let clients = retain_all(&self.clients, |o| o.actor() == actor);
        let invites = retain_all(&self.invites, |c| c.get_id() == actor);
        let leg_a = retain_all(&self.leg_a, |c| c.get_id() == actor);
        let leg_b = retain_all(&self.leg_b, |c| c.get_id() == actor);
        let by_shard: usize = (0..self.by_shard.count())
            .map(|i| {
                let mut m = self.by_shard.lock_at(i);
                let mut n = 0;
                m.retain(|_, calls| {
                    n += usize::from(calls.remove(&actor).is_some());
                    !calls.is_empty()
                });
                n
            })
            .sum();
        clients + invites + leg_a + leg_b + by_shard
    }
    /// Whether `call_id` is one of our own leg-B Call-IDs (a call looping back to us).
    pub fn is_our_leg_b(&self, call_id: &[u8]) -> bool {
        self.leg_b.lock_for(call_id).contains_key(call_id)
    }
    /// How many calls are registered.
    pub fn calls(&self) -> usize {
        self.leg_a.fold(0, |n, m| n + m.len())
    }
    /// The room the maps hold, in entries (their capacity, live or not), over every map and shard.
    pub fn slots(&self) -> usize {
        fn room<K, V>(map: &Shards<FastMap<K, V>>) -> usize {
            map.fold(0, |n, m| n + m.capacity())
        }
        room(&self.clients)
            + room(&self.invites)
            + room(&self.leg_a)
            + room(&self.leg_b)
            + self.by_shard.fold(0, |n, m| {
                n + m.capacity() + m.values().map(FastMap::capacity).sum::<usize>()
            })
    }
    /// Every call (for shutdown and admin), once each.
    pub fn all_calls(&self) -> Vec<CallRef> {
        let mut seen = std::collections::HashSet::new();
        let mut all = Vec::new();
        let mut add = |c: &CallRef| {
            if seen.insert(c.get_id()) {
                all.push(c.clone());
            }
        };
        for i in 0..self.invites.count() {
            self.invites.lock_at(i).values().for_each(&mut add);
        }
        for i in 0..self.leg_a.count() {
            self.leg_a.lock_at(i).values().for_each(&mut add);
        }
        all
    }
    /// The call a message belongs to, and on which leg.
    pub(super) fn dialog_for(&self, msg: &SipMessage) -> Option<(CallRef, Side)> {
        let call_id = msg.call_id()?.ok()?;
        if let Some(a) = self.leg_b.lock_for(call_id).get(call_id) {
            return Some((a.clone(), Side::B));
        }
        let tag = if msg.is_request() {
            msg.from_tag()
        } else {
            msg.to_tag()
        }?;
        let k = leg_a_key(call_id, tag);
        self.leg_a
            .lock_for(&k)
            .get(&k)
            .map(|a| (a.clone(), Side::A))
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
                ClientOwner::Dialog {
                    shard: 7,
                    actor: actor.get_id(),
                },
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
    async fn a_client_transaction_outliving_its_call_finds_no_owner() {
        let (a, _) = Actor::spawn(None, Sink, ()).await.unwrap();
        let reg = Registry::default();
        let call: CallRef = a.get_derived();
        let invite = invite_key("z9hG4bK-1");
        reg.add_call(invite.clone(), b"a-1", b"tag", 7, call);
        let key = ClientKey::new(b"z9hG4bK-c1", b"INVITE");
        reg.add_client(
            key.clone(),
            ClientOwner::Dialog {
                shard: 7,
                actor: a.get_id(),
            },
        );
        assert!(
            matches!(reg.client_owner(&key), Some(Owner::Dialog(c)) if c.get_id() == a.get_id())
        );

        // The call ends; its INVITE client transaction lingers (Timer M).
        reg.remove_call(&invite, b"a-1", b"tag", 7, a.get_id());
        assert!(reg.has_client(&key), "the transaction is still routed");
        assert!(reg.client_owner(&key).is_none(), "but to no live owner");
        // Its end (Timer M) tells nobody.
        assert!(reg.remove_client(&key).is_none());
        assert!(!reg.has_client(&key));
        a.stop(None);
    }

    #[tokio::test]
    async fn many_calls_over_the_shards_are_each_found_by_every_identifier() {
        let (a, _) = Actor::spawn(None, Sink, ()).await.unwrap();
        let reg = Registry::default();
        let call: CallRef = a.get_derived();
        let n = MAP_SHARDS * 8;
        for i in 0..n {
            reg.add_call(
                invite_key(&format!("z9hG4bK-many{i}")),
                format!("a-{i}").as_bytes(),
                b"tag",
                (i % 5) as u16,
                call.clone(),
            );
            reg.add_leg_b(format!("b-{i}").as_bytes(), call.clone());
        }
        assert_eq!(reg.calls(), n);
        // One actor behind every entry: listed once.
        assert_eq!(reg.all_calls().len(), 1);
        // Each shard of the pool lists the (one) actor of its calls.
        assert!((0..5).all(|s| reg.calls_of(s).len() == 1));
        for i in 0..n {
            assert!(reg.has_call(format!("a-{i}").as_bytes(), b"tag"));
            assert!(reg.is_our_leg_b(format!("b-{i}").as_bytes()));
            assert!(
                reg.invite_owner(&invite_key(&format!("z9hG4bK-many{i}")))
                    .is_some()
            );
        }
        for i in 0..n {
            reg.remove_call(
                &invite_key(&format!("z9hG4bK-many{i}")),
                format!("a-{i}").as_bytes(),
                b"tag",
                (i % 5) as u16,
                a.get_id(),
            );
            reg.remove_leg_b(format!("b-{i}").as_bytes());
        }
        assert_eq!(reg.calls(), 0);
        assert!(reg.all_calls().is_empty());
        assert!((0..5).all(|s| reg.calls_of(s).is_empty()));
        a.stop(None);
    }

    #[tokio::test]
    async fn a_map_that_emptied_out_after_a_burst_gives_its_slots_back() {
        let (a, _) = Actor::spawn(None, Sink, ()).await.unwrap();
        let call: CallRef = a.get_derived();
        let reg = Registry::default();
        let capacity = |reg: &Registry| -> usize {
            (0..reg.leg_b.count())
                .map(|i| reg.leg_b.lock_at(i).capacity())
                .sum()
        };
        let id = |i: usize| format!("b-{i}").into_bytes();
        // Enough entries that every shard grows past the floor below which maps are not shrunk.
        let n = MAP_SHARDS * COMPACT_FLOOR * 2;
        for i in 0..n {
            reg.add_leg_b(&id(i), call.clone());
        }
        let full = capacity(&reg);
        for i in 0..n * 4 / 5 {
            reg.remove_leg_b(&id(i));
        }
        // Still a fifth full: never shrunk on the way (`capacity` counts the entries plus the
        // room left before a growth, so removals alone lower it; a shrink makes it far smaller).
        let busy = capacity(&reg);
        assert!(
            (n / 5..=full).contains(&busy),
            "a fifth left: kept ({busy} of {full})"
        );
        for i in n * 4 / 5..n - 100 {
            reg.remove_leg_b(&id(i));
        }
        let after = capacity(&reg);
        // Each of the 64 shards keeps at least its floor.
        assert!(after < full / 4, "100 left: {after} of {full} slots kept");
        assert!((n - 100..n).all(|i| reg.is_our_leg_b(&id(i))));
        // The last ones go: no shard keeps its floor.
        for i in n - 100..n {
            reg.remove_leg_b(&id(i));
        }
        assert_eq!(capacity(&reg), 0, "empty maps keep no room");
        assert_eq!(reg.slots(), 0, "no map of the registry keeps room");
        a.stop(None);
    }
}
