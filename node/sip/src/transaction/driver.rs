//! The thin tokio driver around the four pure transaction machines: it owns the table of live
//! transactions, runs their timers on `tokio::time`, and turns the machines' [`Action`]s into calls on a
//! [`TransactionIo`] (send a message, build an ACK, tell the TU).
//!
//! It never parses, serialises or routes a message: the message type `M` is opaque (typically a parsed
//! message plus its destination and transport), and so is `R`, what a server transaction keeps of
//! the responses the TU hands it (it only ever sends them again: their wire form will do, and
//! stays in memory up to 64*T1 after a non-INVITE's final answer). Every message-aware step is the
//! caller's:
//! - the transport layer parses a message, builds its key ([`ClientKey`] for a response,
//!   [`ServerKey`] for a request) and calls [`Driver::on_response`] or [`Driver::on_request`];
//! - the TU (the B2BUA core) starts client transactions with [`Driver::start_client`], answers server
//!   transactions with [`Driver::respond`], and receives [`TuEvent`]s through [`TransactionIo::deliver`].
//!
//! **Sharded table.** The live transactions are split over [`TABLE_SHARDS`] shards by a hash of their
//! key (`shards.rs`), each with its own lock, its own maps and its own timer wheel (`wheel.rs`): a
//! message, a TU call and a timer touch one shard only, so tasks on different cores meet on the same
//! lock only when their transactions share a shard, and no critical section grows with the whole
//! table (a hash map that doubles moves one shard's entries, not every transaction's).
//!
//! **Timers.** One task per driver sleeps until the earliest deadline over all shards and is woken
//! through a [`Notify`] when a timer earlier than that is started. It then visits the shards one at
//! a time and fires what is due, at most [`SWEEP_BATCH`] timers per hold of a shard's lock, carrying
//! out their effects between holds: a burst of expiries (thousands of transactions started in the
//! same millisecond end together 32 s later) never holds a lock for long. All times come from
//! `tokio::time`, so tests run on paused time.
//!
//! **Bounds.** At most [`DriverConfig::max_transactions`] transactions live at once (one atomic count
//! over the shards, taken before a transaction is created); beyond that,
//! [`Driver::start_client`] and a new request in [`Driver::on_request`] return
//! [`DriverError::Overloaded`] and the caller answers 503 (statelessly) or gives up.
//!
//! **Locking.** A shard's `std::sync::Mutex` is never held across an `.await` nor while calling
//! [`TransactionIo::transmit`] or [`TransactionIo::deliver`], and never two at once; those run after the
//! shard is unlocked, so the TU may call back into the driver from `deliver`. Only
//! [`TransactionIo::build_ack`] runs with a shard locked.
//!
//! Inside, in layers (a file imports only those below it):
//! - `driver.rs`: [`Driver`], the dispatch of messages and TU calls to their transactions;
//! - `timer_task.rs`: the timer task, its sweeps and their counters;
//! - `shared.rs`: what the driver and the timer task share, the bound on live transactions, and
//!   effects carried out with the shard unlocked;
//! - `apply.rs`: a machine's actions carried out on its entry, effects collected for after the
//!   unlock;
//! - `table.rs`: one shard of the table (entries, machines, wheel) and its compaction;
//! - `api.rs`: the types exchanged with the caller.

mod api;
mod apply;
mod shared;
mod table;
mod timer_task;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::Notify;
use tokio::time::Instant;

pub use api::{
    DEFAULT_LINGER_GRID, DriverConfig, DriverError, RequestDisposition, ResponseDisposition,
    TransactionIo, TransmitError, TuEvent,
};
pub use table::TABLE_SHARDS;
pub use timer_task::{SLOW_SWEEP, SWEEP_BATCH, SweepStats};

use super::client_invite::ClientInvite;
use super::client_non_invite::ClientNonInvite;
use super::key::{ClientKey, ServerKey, TransactionKey};
use super::machine::{Action, ClientEvent, ServerEvent, State};
use super::server_invite::ServerInvite;
use super::server_non_invite::ServerNonInvite;
use super::shards::{FastMap, Shards};
use super::wheel::{TimerSlots, Wheel};
use apply::{Effect, Incoming, Output, apply_client, apply_server};
use shared::{SWEEPING, Shared, SweepCounters};
use table::{ClientEntry, ClientMachine, ServerEntry, ServerMachine, Table};
use timer_task::{TaskGuard, run_timers};

/// Runs transactions: see the module documentation. Cheap to clone; the timer task stops when the last
/// clone is dropped. `M` is the message type; `R` what a server transaction keeps of a response
/// the TU hands it ([`Driver::respond`]), `M` unless the caller has a leaner form (see
/// [`TransactionIo`]).
pub struct Driver<M, Io, R = M> {
    shared: Arc<Shared<M, R, Io>>,
    _task: Arc<TaskGuard>,
}

impl<M, Io, R> Clone for Driver<M, Io, R> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _task: Arc::clone(&self._task),
        }
    }
}

impl<M, Io, R> std::fmt::Debug for Driver<M, Io, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

impl<M, Io, R> Driver<M, Io, R>
where
    M: Clone + Send + 'static,
    R: Clone + Send + 'static,
    Io: TransactionIo<M, R>,
{
    /// A driver with no transaction, and its timer task.
    ///
    /// # Panics
    /// If called outside a Tokio runtime (it spawns the timer task).
    pub fn new(config: DriverConfig, io: Io) -> Self {
        let epoch = Instant::now();
        let grid = config.linger_grid;
        let shared = Arc::new(Shared {
            config,
            io,
            tables: Shards::new(TABLE_SHARDS, || Table {
                clients: FastMap::default(),
                servers: FastMap::default(),
                wheel: Wheel::new(epoch, grid),
            }),
            live: AtomicUsize::new(0),
            epoch,
            sleeping_until: AtomicU64::new(SWEEPING),
            wake: Notify::new(),
            retransmissions: AtomicU64::new(0),
            progress: Notify::new(),
            progress_watched: AtomicBool::new(false),
            sweeps: SweepCounters::default(),
        });
        let task = tokio::spawn(run_timers(Arc::clone(&shared)));
        Self {
            shared,
            _task: Arc::new(TaskGuard(task.abort_handle())),
        }
    }

    /// The IO the driver was built with.
    pub fn io(&self) -> &Io {
        &self.shared.io
    }

    /// Start a client transaction for `request` (INVITE or non-INVITE after `key`'s method; a CANCEL is
    /// a non-INVITE one, keyed with [`ClientKey::cancel_key`]): the request is sent at once and
    /// retransmitted on unreliable transports until a response or the timeout.
    pub fn start_client(
        &self,
        key: ClientKey,
        request: M,
        reliable: bool,
    ) -> Result<(), DriverError> {
        if key.is_ack() {
            return Err(DriverError::AckHasNoTransaction);
        }
        let now = Instant::now();
        let mut out = Output::default();
        {
            let mut table = self.shared.tables.lock_for(&key);
            if table.clients.contains_key(&key) {
                return Err(DriverError::Duplicate);
            }
            self.shared.take_slot()?;
            let timers = self.shared.config.timers;
            let (machine, actions) = if key.is_invite() {
                let (m, a) = ClientInvite::new(timers, reliable);
                (ClientMachine::Invite(m), a)
            } else {
                let (m, a) = ClientNonInvite::new(timers, reliable);
                (ClientMachine::NonInvite(m), a)
            };
            table.clients.insert(
                Arc::new(key.clone()),
                Box::new(ClientEntry {
                    machine,
                    request: Some(Box::new(request)),
                    ack: None,
                    timers: TimerSlots::default(),
                }),
            );
            apply_client(
                &mut table,
                &self.shared.io,
                &key,
                &actions,
                None,
                now,
                &mut out,
            );
        }
        self.shared.finish(out);
        Ok(())
    }

    /// A response arrived; `key` is built from its top Via branch and CSeq method. It goes to its client
    /// transaction, or to the TU as a [`TuEvent::StrayResponse`] if none matches.
    pub fn on_response(&self, key: ClientKey, status: u16, response: M) -> ResponseDisposition {
        let now = Instant::now();
        let mut out = Output::default();
        let disposition = {
            let mut table = self.shared.tables.lock_for(&key);
            match table.clients.get_mut(&key) {
                Some(entry) => {
                    let actions = entry.machine.on_event(ClientEvent::Response { status });
                    apply_client(
                        &mut table,
                        &self.shared.io,
                        &key,
                        &actions,
                        Some((status, response)),
                        now,
                        &mut out,
                    );
                    ResponseDisposition::Matched
                }
                None => {
                    out.effects.push(Effect::Deliver(TuEvent::StrayResponse {
                        key,
                        status,
                        response,
                    }));
                    ResponseDisposition::Stray
                }
            }
        };
        self.shared.finish(out);
        disposition
    }

    /// A request arrived over a transport that is `reliable` or not; `key` is built with
    /// [`ServerKey::from_request`] (or [`ServerKey::from_parts`]), `is_ack` says whether it is an ACK.
    ///
    /// A request matching a live server transaction is a retransmission (absorbed, maybe answered with
    /// the last response) or an ACK. An ACK matching nothing goes to the TU. Any other request creates a
    /// server transaction and goes to the TU as [`TuEvent::Request`], unless the table is full:
    /// [`DriverError::Overloaded`], and the caller answers 503 statelessly.
    pub fn on_request(
        &self,
        key: ServerKey,
        is_ack: bool,
        request: M,
        reliable: bool,
    ) -> Result<RequestDisposition, DriverError> {
        let now = Instant::now();
        let mut out = Output::default();
        let disposition = {
            let mut table = self.shared.tables.lock_for(&key);
            if let Some(entry) = table.servers.get_mut(&key) {
                let actions = entry.machine.on_event(ServerEvent::Request { is_ack });
                let passed = actions.contains(&Action::PassToTu);
                let incoming = Some(Incoming {
                    message: request,
                    is_ack,
                });
                apply_server(&mut table, &key, &actions, incoming, now, &mut out);
                if passed {
                    RequestDisposition::AckToTu
                } else {
                    let resent = out.effects.iter().filter(|e| e.is_send()).count();
                    self.shared
                        .retransmissions
                        .fetch_add(resent as u64, Ordering::Relaxed);
                    RequestDisposition::Absorbed
                }
            } else if is_ack {
                out.effects
                    .push(Effect::Deliver(TuEvent::Ack { key, ack: request }));
                RequestDisposition::StrayAck
            } else {
                self.shared.take_slot()?;
                let timers = self.shared.config.timers;
                let (machine, actions) = if key.is_invite() {
                    let (m, a) = ServerInvite::new(timers, reliable);
                    (ServerMachine::Invite(m), a)
                } else {
                    let (m, a) = ServerNonInvite::new(timers, reliable);
                    (ServerMachine::NonInvite(m), a)
                };
                table.servers.insert(
                    Arc::new(key.clone()),
                    Box::new(ServerEntry {
                        machine,
                        last_response: None,
                        timers: TimerSlots::default(),
                    }),
                );
                let incoming = Some(Incoming {
                    message: request,
                    is_ack: false,
                });
                apply_server(&mut table, &key, &actions, incoming, now, &mut out);
                RequestDisposition::Created
            }
        };
        self.shared.finish(out);
        Ok(disposition)
    }

    /// The TU answers server transaction `key` with `response` (status `status`). The response is sent
    /// and kept for retransmissions (Timer G, retransmitted requests), unless it is a 2xx to an
    /// INVITE. In Accepted (after a 2xx), the core's own retransmissions of the 2xx go through here
    /// too (RFC 6026).
    pub fn respond(&self, key: &ServerKey, status: u16, response: R) -> Result<(), DriverError> {
        let now = Instant::now();
        let mut out = Output::default();
        {
            let mut table = self.shared.tables.lock_for(key);
            let entry = table
                .servers
                .get_mut(key)
                .ok_or(DriverError::NoSuchTransaction)?;
            let actions = entry.machine.on_event(ServerEvent::TuResponse { status });
            if !actions.contains(&Action::TransmitResponse) {
                return Err(DriverError::ResponseNotAllowed);
            }
            entry.last_response = Some(Box::new(response));
            apply_server(&mut table, key, &actions, None, now, &mut out);
        }
        self.shared.finish(out);
        Ok(())
    }

    /// The transport failed to deliver a message of transaction `key` after [`TransactionIo::transmit`]
    /// returned. The transaction terminates with
    /// [`Outcome::TransportError`](super::Outcome::TransportError). Returns whether `key` named a
    /// live transaction.
    pub fn transport_error(&self, key: &TransactionKey) -> bool {
        self.shared.transport_error(key)
    }

    /// Ends server transaction `key` without an answer, so that the next retransmission of its
    /// request starts a new transaction (and reaches the TU again) instead of being absorbed. For a
    /// request the TU cannot answer *yet* (RFC 3261 leaves an unanswered UDP request to the client's
    /// retransmissions). Returns whether `key` named a live transaction.
    pub fn abandon(&self, key: &ServerKey) -> bool {
        // Terminating on a transport error is exactly "gone, nothing sent": the same transition.
        self.shared
            .transport_error(&TransactionKey::Server(key.clone()))
    }

    /// The state of client transaction `key`, if it is live.
    pub fn client_state(&self, key: &ClientKey) -> Option<State> {
        let table = self.shared.tables.lock_for(key);
        table.clients.get(key).map(|entry| entry.machine.state())
    }

    /// The state of server transaction `key`, if it is live. For a CANCEL, look up
    /// [`ServerKey::invite_key_for_cancel`]: [`State::Proceeding`] means the INVITE can still be
    /// answered 487.
    pub fn server_state(&self, key: &ServerKey) -> Option<State> {
        let table = self.shared.tables.lock_for(key);
        table.servers.get(key).map(|entry| entry.machine.state())
    }

    /// Whether a CANCEL may be sent for the INVITE client transaction `invite` now: only once a
    /// provisional response has arrived and before the final (RFC 3261 9.1). Before the provisional, the
    /// TU must wait for one (or for the transaction to end).
    pub fn may_cancel(&self, invite: &ClientKey) -> bool {
        invite.is_invite() && self.client_state(invite) == Some(State::Proceeding)
    }

    /// How many messages were sent again (timer retransmissions, answers to retransmitted requests).
    pub fn retransmissions(&self) -> u64 {
        self.shared.retransmissions.load(Ordering::Relaxed)
    }

    /// How the timer task's sweeps went: how many, how many held the table longer than
    /// [`SLOW_SWEEP`], and the longest (while a sweep holds the table, no message gets through the
    /// transaction layer).
    pub fn sweeps(&self) -> SweepStats {
        use Ordering::Relaxed;
        let c = &self.shared.sweeps;
        SweepStats {
            sweeps: c.sweeps.load(Relaxed),
            slow: c.slow.load(Relaxed),
            longest: std::time::Duration::from_micros(c.longest_us.load(Relaxed)),
        }
    }

    /// The number of live transactions.
    pub fn len(&self) -> usize {
        self.shared
            .tables
            .fold(0, |n, t| n + t.clients.len() + t.servers.len())
    }

    /// The room the transaction tables hold, in transactions (their hash maps' capacity): what
    /// stays allocated for them, live or not.
    pub fn slots(&self) -> usize {
        self.shared
            .tables
            .fold(0, |n, t| n + t.clients.capacity() + t.servers.capacity())
    }

    /// Transactions still waiting for their final answer (Calling, Trying, Proceeding), not those
    /// lingering after it to absorb retransmissions: what a graceful shutdown waits for.
    pub fn unfinished(&self) -> usize {
        let open = |s: State| matches!(s, State::Calling | State::Trying | State::Proceeding);
        self.shared.tables.fold(0, |n, table| {
            n + table
                .clients
                .values()
                .filter(|e| open(e.machine.state()))
                .count()
                + table
                    .servers
                    .values()
                    .filter(|e| open(e.machine.state()))
                    .count()
        })
    }

    /// A notification woken after every step of any transaction (a message in or out, a timer,
    /// a transport error), from the first call on: what a graceful shutdown awaits, with
    /// [`Driver::unfinished`] as its condition, instead of polling. Register the `notified()`
    /// future (`Notified::enable`) before checking the condition, so no step is missed.
    pub fn progress(&self) -> &Notify {
        self.shared.progress_watched.store(true, Ordering::Relaxed);
        &self.shared.progress
    }

    /// Whether no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
