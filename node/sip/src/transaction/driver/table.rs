//! One shard of the driver's transaction table: its client and server entries (each a pure machine
//! plus the messages it may send again and its timer slots) and its timer wheel, and the
//! compaction that gives back the room of maps that emptied out after a burst. Pure data: no lock,
//! no I/O (the driver holds a shard's lock around it).

use std::sync::Arc;

use super::super::client_invite::ClientInvite;
use super::super::client_non_invite::ClientNonInvite;
use super::super::key::{ClientKey, ServerKey};
use super::super::machine::{Actions, ClientEvent, ServerEvent, State};
use super::super::server_invite::ServerInvite;
use super::super::server_non_invite::ServerNonInvite;
use super::super::shards::FastMap;
use super::super::wheel::{TimerSlots, Wheel};

/// How many shards the transaction table is split into (see the module documentation): enough that
/// tasks on many cores rarely meet on one lock and that one shard's maps stay small (at 5,000 calls
/// per second about 500,000 transactions live, lingering 32 s: ~8,000 per shard).
pub const TABLE_SHARDS: usize = 64;

/// One shard of the table: its transactions and their timers. The entries are boxed: a map that
/// grows moves a pointer per transaction, not the transaction. A key is held once, shared (`Arc`)
/// by its map slot and its timers in the wheel: a lingering transaction's timer no longer copies
/// the key's bytes, and a map slot is two pointers. `M` is the message type, `R` what a server
/// transaction keeps of its last response.
pub(super) struct Table<M, R> {
    pub(super) clients: FastMap<Arc<ClientKey>, Box<ClientEntry<M>>>,
    pub(super) servers: FastMap<Arc<ServerKey>, Box<ServerEntry<R>>>,
    pub(super) wheel: Wheel,
}

/// Below this many slots a table holding transactions is never shrunk.
const COMPACT_FLOOR: usize = 512;

impl<M, R> Table<M, R> {
    /// Gives back the slots of a table that emptied out (after a burst): a hash map keeps the
    /// capacity of its largest moment, entries inline, for as long as it lives. Shrinks a table to
    /// twice its entries once it holds fewer than an eighth of its capacity, so the rehash (with
    /// the table locked) is rare and paid for by the entries that left; a table with no entry
    /// left gives back all its room (no rehash: a free). Below the floor, a table that still
    /// holds transactions is kept as it is, so a quiet node does not shrink and regrow its tables.
    pub(super) fn compact(&mut self) {
        fn shrink<K: std::hash::Hash + Eq, V>(map: &mut FastMap<K, V>) {
            if map.is_empty() {
                if map.capacity() > 0 {
                    *map = FastMap::default();
                }
            } else if map.capacity() > COMPACT_FLOOR && map.len() < map.capacity() / 8 {
                map.shrink_to((map.len() * 2).max(COMPACT_FLOOR / 2));
            }
        }
        shrink(&mut self.clients);
        shrink(&mut self.servers);
    }
}

// The messages are boxed: a table slot holds an entry inline, and most of an entry's life (the
// linger after the final answer, up to 64*T1) is spent with no message or one.
pub(super) struct ClientEntry<M> {
    pub(super) machine: ClientMachine,
    /// The request, while it may still be sent (again): dropped once a final response arrived,
    /// so a transaction lingering to absorb retransmissions (Timer D, K, M: up to 64*T1) does not
    /// hold the whole request.
    pub(super) request: Option<Box<M>>,
    /// The ACK for the non-2xx final, built once and resent for its retransmissions.
    pub(super) ack: Option<Box<M>>,
    pub(super) timers: TimerSlots,
}

pub(super) struct ServerEntry<R> {
    pub(super) machine: ServerMachine,
    /// The last response, while a retransmitted request may have to be answered with it again:
    /// dropped in Accepted (RFC 6026: the core retransmits a 2xx, not the transaction) and in
    /// Confirmed (only ACKs are absorbed there). Only ever sent again: `R` is the caller's choice
    /// of what to keep (its wire form, for the node: no parsed copy).
    pub(super) last_response: Option<Box<R>>,
    pub(super) timers: TimerSlots,
}

pub(super) enum ClientMachine {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

impl ClientMachine {
    pub(super) fn on_event(&mut self, event: ClientEvent) -> Actions {
        match self {
            Self::Invite(m) => m.on_event(event),
            Self::NonInvite(m) => m.on_event(event),
        }
    }

    pub(super) fn state(&self) -> State {
        match self {
            Self::Invite(m) => m.state(),
            Self::NonInvite(m) => m.state(),
        }
    }
}

pub(super) enum ServerMachine {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

impl ServerMachine {
    pub(super) fn on_event(&mut self, event: ServerEvent) -> Actions {
        match self {
            Self::Invite(m) => m.on_event(event),
            Self::NonInvite(m) => m.on_event(event),
        }
    }

    pub(super) fn state(&self) -> State {
        match self {
            Self::Invite(m) => m.state(),
            Self::NonInvite(m) => m.state(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::timers::TimerConfig;
    use super::*;

    fn entry() -> ClientEntry<()> {
        let (m, _) = ClientNonInvite::new(TimerConfig::default(), false);
        ClientEntry {
            machine: ClientMachine::NonInvite(m),
            request: None,
            ack: None,
            timers: TimerSlots::default(),
        }
    }

    /// What a lingering transaction holds for up to 64*T1 after its final answer (three per
    /// call: ~300,000 at 5,000 calls a second): its entry, in the allocator's size class of
    /// 80 or 96 bytes (it was 176 and 192 with a `TimerConfig`, `Instant`s and a spare timer slot
    /// inline). Fails if a field pushes an entry into a larger class. (`()` as the message: a kept message is boxed,
    /// a pointer whatever its type.)
    #[test]
    fn an_entry_fits_a_small_allocation() {
        eprintln!(
            "client entry {} B, server entry {} B",
            std::mem::size_of::<ClientEntry<()>>(),
            std::mem::size_of::<ServerEntry<()>>()
        );
        assert!(std::mem::size_of::<ClientEntry<()>>() <= 96);
        assert!(std::mem::size_of::<ServerEntry<()>>() <= 80);
        // A map slot: the shared key and the boxed entry, two pointers.
        assert_eq!(
            std::mem::size_of::<(Arc<ServerKey>, Box<ServerEntry<()>>)>(),
            16
        );
    }

    #[test]
    fn a_table_that_emptied_out_gives_its_slots_back_and_a_busy_one_keeps_them() {
        let mut t: Table<(), ()> = Table {
            clients: FastMap::default(),
            servers: FastMap::default(),
            wheel: Wheel::default(),
        };
        let key = |i: usize| ClientKey::new(format!("z9hG4bK-{i}").as_bytes(), b"BYE");
        for i in 0..100_000 {
            t.clients.insert(Arc::new(key(i)), Box::new(entry()));
        }
        let full = t.clients.capacity();
        t.compact();
        assert_eq!(t.clients.capacity(), full, "a full table is left alone");
        for i in 0..80_000 {
            t.clients.remove(&key(i));
        }
        // (`capacity` counts entries plus the room left before a growth: removals lower it.)
        let busy = t.clients.capacity();
        t.compact();
        assert_eq!(t.clients.capacity(), busy, "a fifth left: not yet");
        for i in 80_000..99_000 {
            t.clients.remove(&key(i));
        }
        t.compact();
        assert!(
            t.clients.capacity() < full / 8,
            "1,000 left of {full} slots: shrunk to {}",
            t.clients.capacity()
        );
        assert_eq!(t.clients.len(), 1_000);
        assert!((99_000..100_000).all(|i| t.clients.contains_key(&key(i))));
        // The last ones go: nothing is kept, not even the floor (64 shards of it after a burst).
        for i in 99_000..100_000 {
            t.clients.remove(&key(i));
        }
        t.compact();
        assert_eq!(t.clients.capacity(), 0, "an empty table keeps no room");
        // A small table that still holds something is left alone (no shrink and regrow).
        for i in 0..100 {
            t.clients.insert(Arc::new(key(i)), Box::new(entry()));
        }
        let small = t.clients.capacity();
        for i in 0..90 {
            t.clients.remove(&key(i));
        }
        t.compact();
        assert!(t.clients.capacity() >= 10 && t.clients.capacity() <= small);
        assert_eq!(t.clients.len(), 10);
    }
}
