//! The thin tokio driver around the four pure transaction machines: it owns the table of live
//! transactions, runs their timers on `tokio::time`, and turns the machines' [`Action`]s into calls on a
//! [`TransactionIo`] (send a message, build an ACK, tell the TU).
//!
//! It never parses, serialises or routes a message: the message type `M` is opaque (typically a parsed
//! message plus its destination and transport), and every message-aware step is the caller's:
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

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use thiserror::Error;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::client_invite::ClientInvite;
use super::client_non_invite::ClientNonInvite;
use super::key::{ClientKey, KeyMethod, ServerKey, TransactionKey};
use super::machine::{Action, Actions, ClientEvent, Outcome, ServerEvent, State};
use super::server_invite::ServerInvite;
use super::server_non_invite::ServerNonInvite;
use super::shards::Shards;
use super::timers::TimerConfig;
use super::wheel::{TimerSlots, Wheel};

/// What the driver needs from the outside world. `M` is the caller's message type.
pub trait TransactionIo<M>: Send + Sync + 'static {
    /// Send `message`, a request, response or ACK of transaction `key`, to wherever `M` says. Called
    /// without locks held. An `Err` counts as a transport error for the transaction (RFC 3261 17.1.4,
    /// 17.2.4); failures found later (a TCP write that fails after queueing) are reported with
    /// [`Driver::transport_error`].
    fn transmit(&self, key: &TransactionKey, message: &M) -> Result<(), TransmitError>;

    /// Build the ACK for the non-2xx final `response` to the INVITE `request` (RFC 3261 17.1.1.3:
    /// Request-URI, Call-ID, From, CSeq number, top Via and Route of the request, To of the response,
    /// CSeq method ACK). Called once per transaction, with the driver's table locked: it must be a pure
    /// function of its arguments and must not call the driver.
    fn build_ack(&self, request: &M, response: &M) -> M;

    /// Hand an event to the transaction user. Called without locks held; may call the driver.
    fn deliver(&self, event: TuEvent<M>);
}

impl<M, T> TransactionIo<M> for Arc<T>
where
    T: TransactionIo<M> + ?Sized,
{
    fn transmit(&self, key: &TransactionKey, message: &M) -> Result<(), TransmitError> {
        (**self).transmit(key, message)
    }

    fn build_ack(&self, request: &M, response: &M) -> M {
        (**self).build_ack(request, response)
    }

    fn deliver(&self, event: TuEvent<M>) {
        (**self).deliver(event)
    }
}

/// The transport could not send a message (returned by [`TransactionIo::transmit`]).
#[derive(Clone, Copy, Debug, Default, Error, PartialEq, Eq)]
#[error("the transport could not send the message")]
pub struct TransmitError;

/// What the transaction layer tells the TU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TuEvent<M> {
    /// A new request created server transaction `key`. Answer it with [`Driver::respond`]. For a CANCEL,
    /// [`ServerKey::invite_key_for_cancel`] names the INVITE transaction it targets.
    Request {
        /// The new server transaction.
        key: ServerKey,
        /// The request.
        request: M,
    },
    /// An ACK the transaction layer does not absorb: one that matched an INVITE server transaction in
    /// Accepted (RFC 6026), or one that matched no transaction (the usual ACK for a 2xx, which has a
    /// branch of its own). Either way it belongs to the dialog.
    Ack {
        /// The ACK's key (the INVITE transaction's key if it matched one).
        key: ServerKey,
        /// The ACK.
        ack: M,
    },
    /// A response for client transaction `key`: provisional, final, or (INVITE, RFC 6026 Accepted) a
    /// further 2xx, which the TU must ACK itself. A non-2xx final to an INVITE has already been ACKed.
    Response {
        /// The client transaction.
        key: ClientKey,
        /// Its status code.
        status: u16,
        /// The response.
        response: M,
    },
    /// A response that matched no client transaction (RFC 3261 18.1.2: passed to the core), e.g. a 2xx
    /// retransmitted after Timer M. The TU ACKs it again if it is a 2xx to an INVITE of a dialog it
    /// knows, and drops it otherwise.
    StrayResponse {
        /// The key built from the response.
        key: ClientKey,
        /// Its status code.
        status: u16,
        /// The response.
        response: M,
    },
    /// Transaction `key` is over and forgotten: normally ([`Outcome::Completed`]), after Timer B, F or
    /// H ([`Outcome::Timeout`]) or after a transport failure ([`Outcome::TransportError`]).
    Terminated {
        /// The transaction.
        key: TransactionKey,
        /// How it ended.
        outcome: Outcome,
    },
}

/// Why the driver refused a call.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum DriverError {
    /// The table already holds the maximum number of live transactions: answer 503 or retry later.
    #[error("too many live transactions (limit {limit})")]
    Overloaded {
        /// The configured limit.
        limit: usize,
    },
    /// A client transaction with this key is already live (branches must be unique).
    #[error("a transaction with this key is already live")]
    Duplicate,
    /// No live transaction has this key.
    #[error("no live transaction has this key")]
    NoSuchTransaction,
    /// An ACK is not sent through a client transaction (an ACK for a 2xx is the core's; one for a
    /// non-2xx is the INVITE transaction's).
    #[error("an ACK has no client transaction")]
    AckHasNoTransaction,
    /// The server transaction's state does not allow this response (a second final response, a
    /// provisional after the final, a non-2xx after a 2xx): it was not sent.
    #[error("the transaction's state does not allow this response")]
    ResponseNotAllowed,
}

/// What [`Driver::on_request`] did with a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestDisposition {
    /// A new server transaction was created and the request passed to the TU.
    Created,
    /// A retransmission (or an ACK for a non-2xx) was absorbed by its transaction, which resent its last
    /// response if the state calls for it.
    Absorbed,
    /// An ACK matched an INVITE transaction in Accepted and was passed to the TU (RFC 6026).
    AckToTu,
    /// An ACK matched no transaction and was passed to the TU.
    StrayAck,
}

/// What [`Driver::on_response`] did with a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseDisposition {
    /// It matched a live client transaction.
    Matched,
    /// It matched none and was passed to the TU as [`TuEvent::StrayResponse`].
    Stray,
}

/// The driver's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriverConfig {
    /// T1, T2, T4.
    pub timers: TimerConfig,
    /// The most transactions (client and server together) alive at once.
    pub max_transactions: usize,
}

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            timers: TimerConfig::default(),
            max_transactions: 10_000,
        }
    }
}

/// Runs transactions: see the module documentation. Cheap to clone; the timer task stops when the last
/// clone is dropped.
pub struct Driver<M, Io> {
    shared: Arc<Shared<M, Io>>,
    _task: Arc<TaskGuard>,
}

impl<M, Io> Clone for Driver<M, Io> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _task: Arc::clone(&self._task),
        }
    }
}

impl<M, Io> std::fmt::Debug for Driver<M, Io> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// Aborts the timer task when the last [`Driver`] clone goes.
struct TaskGuard(AbortHandle);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<M, Io> Driver<M, Io>
where
    M: Clone + Send + 'static,
    Io: TransactionIo<M>,
{
    /// A driver with no transaction, and its timer task.
    ///
    /// # Panics
    /// If called outside a Tokio runtime (it spawns the timer task).
    pub fn new(config: DriverConfig, io: Io) -> Self {
        let shared = Arc::new(Shared {
            config,
            io,
            tables: Shards::new(TABLE_SHARDS, || Table {
                clients: HashMap::new(),
                servers: HashMap::new(),
                wheel: Wheel::default(),
            }),
            live: AtomicUsize::new(0),
            epoch: Instant::now(),
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
        if *key.method() == KeyMethod::Ack {
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
                key.clone(),
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
                    let resent = out
                        .effects
                        .iter()
                        .filter(|e| matches!(e, Effect::Transmit(..)))
                        .count();
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
                    key.clone(),
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
    /// and kept for retransmissions (Timer G, retransmitted requests). In Accepted (after a 2xx), the
    /// core's own retransmissions of the 2xx go through here too (RFC 6026).
    pub fn respond(&self, key: &ServerKey, status: u16, response: M) -> Result<(), DriverError> {
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
    /// returned. The transaction terminates with [`Outcome::TransportError`]. Returns whether `key` named
    /// a live transaction.
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

/// A timer sweep that holds a shard of the table at least this long counts as slow
/// ([`Driver::sweeps`]).
pub const SLOW_SWEEP: std::time::Duration = std::time::Duration::from_millis(1);

/// How many shards the transaction table is split into (see the module documentation): enough that
/// tasks on many cores rarely meet on one lock and that one shard's maps stay small (at 5,000 calls
/// per second about 500,000 transactions live, lingering 32 s: ~8,000 per shard).
pub const TABLE_SHARDS: usize = 64;

/// The most timers the timer task fires per hold of a shard's lock; it carries their effects out
/// and takes the lock again for the rest.
pub const SWEEP_BATCH: usize = 64;

/// `sleeping_until` while the timer task is sweeping: every timer started then wakes it again.
const SWEEPING: u64 = 0;

/// How the timer task's sweeps went ([`Driver::sweeps`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepStats {
    /// Sweeps run: holds of a shard's lock by the timer task that fired at least one timer (each
    /// fires up to [`SWEEP_BATCH`]).
    pub sweeps: u64,
    /// Sweeps that held their shard at least [`SLOW_SWEEP`].
    pub slow: u64,
    /// The longest a sweep held its shard.
    pub longest: std::time::Duration,
}

#[derive(Default)]
struct SweepCounters {
    sweeps: AtomicU64,
    slow: AtomicU64,
    longest_us: AtomicU64,
}

/// What the driver and its timer task share.
struct Shared<M, Io> {
    config: DriverConfig,
    io: Io,
    tables: Shards<Table<M>>,
    /// Transactions live over all shards (what [`DriverConfig::max_transactions`] bounds).
    live: AtomicUsize,
    /// The origin of `sleeping_until`.
    epoch: Instant,
    /// When the timer task wakes next, in ns after `epoch` (`u64::MAX`: no timer), or
    /// [`SWEEPING`]: a timer started earlier than this must wake it.
    sleeping_until: AtomicU64,
    /// Wakes the timer task when a timer earlier than its wake-up is started.
    wake: Notify,
    /// Messages sent again: timer retransmissions and answers to retransmitted requests.
    retransmissions: AtomicU64,
    /// Wakes whoever waits for transactions to finish ([`Driver::progress`]) after every step,
    /// once somebody has asked to be woken (`progress_watched`): no cost on the hot path before.
    progress: Notify,
    progress_watched: AtomicBool,
    /// How long the timer task's sweeps hold a shard.
    sweeps: SweepCounters,
}

/// One shard of the table: its transactions and their timers. The entries are boxed (~600 bytes
/// each, most of it the timer slots and the kept messages): a map that grows moves a pointer per
/// transaction, not the transaction.
struct Table<M> {
    clients: HashMap<ClientKey, Box<ClientEntry<M>>>,
    servers: HashMap<ServerKey, Box<ServerEntry<M>>>,
    wheel: Wheel,
}

/// Below this many slots a table is never shrunk.
const COMPACT_FLOOR: usize = 512;

impl<M> Table<M> {
    /// Gives back the slots of a table that emptied out (after a burst): a hash map keeps the
    /// capacity of its largest moment, entries inline, for as long as it lives. Shrinks a table to
    /// twice its entries once it holds fewer than an eighth of its capacity, so the rehash (with
    /// the table locked) is rare and paid for by the entries that left.
    fn compact(&mut self) {
        fn shrink<K: std::hash::Hash + Eq, V>(map: &mut HashMap<K, V>) {
            if map.capacity() > COMPACT_FLOOR && map.len() < map.capacity() / 8 {
                map.shrink_to((map.len() * 2).max(COMPACT_FLOOR / 2));
            }
        }
        shrink(&mut self.clients);
        shrink(&mut self.servers);
    }
}

// The messages are boxed: a table slot holds an entry inline, and most of an entry's life (the
// linger after the final answer, up to 64*T1) is spent with no message or one.
struct ClientEntry<M> {
    machine: ClientMachine,
    /// The request, while it may still be sent (again): dropped once a final response arrived,
    /// so a transaction lingering to absorb retransmissions (Timer D, K, M: up to 64*T1) does not
    /// hold the whole request.
    request: Option<Box<M>>,
    /// The ACK for the non-2xx final, built once and resent for its retransmissions.
    ack: Option<Box<M>>,
    timers: TimerSlots,
}

struct ServerEntry<M> {
    machine: ServerMachine,
    /// The last response, while a retransmitted request may have to be answered with it again:
    /// dropped in Accepted (RFC 6026: the core retransmits a 2xx, not the transaction) and in
    /// Confirmed (only ACKs are absorbed there).
    last_response: Option<Box<M>>,
    timers: TimerSlots,
}

enum ClientMachine {
    Invite(ClientInvite),
    NonInvite(ClientNonInvite),
}

impl ClientMachine {
    fn on_event(&mut self, event: ClientEvent) -> Actions {
        match self {
            Self::Invite(m) => m.on_event(event),
            Self::NonInvite(m) => m.on_event(event),
        }
    }

    fn state(&self) -> State {
        match self {
            Self::Invite(m) => m.state(),
            Self::NonInvite(m) => m.state(),
        }
    }
}

enum ServerMachine {
    Invite(ServerInvite),
    NonInvite(ServerNonInvite),
}

impl ServerMachine {
    fn on_event(&mut self, event: ServerEvent) -> Actions {
        match self {
            Self::Invite(m) => m.on_event(event),
            Self::NonInvite(m) => m.on_event(event),
        }
    }

    fn state(&self) -> State {
        match self {
            Self::Invite(m) => m.state(),
            Self::NonInvite(m) => m.state(),
        }
    }
}

/// Side effects collected with the table locked and carried out after it is unlocked.
enum Effect<M> {
    Transmit(TransactionKey, M),
    Deliver(TuEvent<M>),
}

struct Output<M> {
    effects: Vec<Effect<M>>,
    /// The earliest timer started that is the first of its shard (the timer task may have to wake
    /// up earlier for it).
    earliest: Option<Instant>,
    /// Transactions that ended (removed from their shard).
    ended: usize,
}

impl<M> Default for Output<M> {
    fn default() -> Self {
        Self {
            effects: Vec::new(),
            earliest: None,
            ended: 0,
        }
    }
}

impl<M> Output<M> {
    /// Notes a timer started at `at`; `first` when it is now the first of its shard.
    fn started(&mut self, first: bool, at: Instant) {
        if first && self.earliest.is_none_or(|e| at < e) {
            self.earliest = Some(at);
        }
    }
}

/// A request received for a server transaction, for [`Action::PassToTu`].
struct Incoming<M> {
    message: M,
    is_ack: bool,
}

/// Carry out a client machine's actions on its table entry, collecting effects in `out`.
fn apply_client<M: Clone, Io: TransactionIo<M>>(
    table: &mut Table<M>,
    io: &Io,
    key: &ClientKey,
    actions: &Actions,
    mut response: Option<(u16, M)>,
    now: Instant,
    out: &mut Output<M>,
) {
    let Table { clients, wheel, .. } = table;
    let Some(entry) = clients.get_mut(key) else {
        return;
    };
    let tkey = TransactionKey::Client(key.clone());
    let mut terminated = None;
    for action in actions {
        match *action {
            Action::TransmitRequest => {
                if let Some(request) = &entry.request {
                    out.effects
                        .push(Effect::Transmit(tkey.clone(), M::clone(request)));
                }
            }
            Action::SendAck => {
                if entry.ack.is_none()
                    && let Some((_, response)) = &response
                    && let Some(request) = &entry.request
                {
                    entry.ack = Some(Box::new(io.build_ack(request, response)));
                }
                if let Some(ack) = &entry.ack {
                    out.effects
                        .push(Effect::Transmit(tkey.clone(), M::clone(ack)));
                }
            }
            Action::PassToTu => {
                if let Some((status, response)) = response.take() {
                    out.effects.push(Effect::Deliver(TuEvent::Response {
                        key: key.clone(),
                        status,
                        response,
                    }));
                }
            }
            // Client machines never send responses.
            Action::TransmitResponse => {}
            Action::StartTimer(id, after) => {
                let at = now + after;
                out.started(wheel.start(&mut entry.timers, &tkey, id, at), at);
            }
            Action::StopTimer(id) => wheel.stop(&mut entry.timers, id),
            Action::Terminated(outcome) => terminated = Some(outcome),
        }
    }
    if matches!(
        entry.machine.state(),
        State::Completed | State::Accepted | State::Terminated
    ) {
        // Past the final response: the request is never sent again (the ACK for a non-2xx was
        // built above, from it).
        entry.request = None;
    }
    if let Some(outcome) = terminated {
        if let Some(mut entry) = clients.remove(key) {
            wheel.stop_all(&mut entry.timers);
            out.ended += 1;
        }
        tracing::debug!(key = %tkey, ?outcome, "transaction terminated");
        out.effects
            .push(Effect::Deliver(TuEvent::Terminated { key: tkey, outcome }));
    }
}

/// Carry out a server machine's actions on its table entry, collecting effects in `out`.
fn apply_server<M: Clone>(
    table: &mut Table<M>,
    key: &ServerKey,
    actions: &Actions,
    mut incoming: Option<Incoming<M>>,
    now: Instant,
    out: &mut Output<M>,
) {
    let Table { servers, wheel, .. } = table;
    let Some(entry) = servers.get_mut(key) else {
        return;
    };
    let tkey = TransactionKey::Server(key.clone());
    let mut terminated = None;
    for action in actions {
        match *action {
            Action::TransmitResponse => {
                if let Some(response) = &entry.last_response {
                    out.effects
                        .push(Effect::Transmit(tkey.clone(), M::clone(response)));
                }
            }
            Action::PassToTu => {
                if let Some(Incoming { message, is_ack }) = incoming.take() {
                    let event = if is_ack {
                        TuEvent::Ack {
                            key: key.clone(),
                            ack: message,
                        }
                    } else {
                        TuEvent::Request {
                            key: key.clone(),
                            request: message,
                        }
                    };
                    out.effects.push(Effect::Deliver(event));
                }
            }
            // Server machines never send requests or ACKs.
            Action::TransmitRequest | Action::SendAck => {}
            Action::StartTimer(id, after) => {
                let at = now + after;
                out.started(wheel.start(&mut entry.timers, &tkey, id, at), at);
            }
            Action::StopTimer(id) => wheel.stop(&mut entry.timers, id),
            Action::Terminated(outcome) => terminated = Some(outcome),
        }
    }
    if matches!(entry.machine.state(), State::Accepted | State::Confirmed) {
        // Sent (it is in `out`): never sent again by the transaction itself.
        entry.last_response = None;
    }
    if let Some(outcome) = terminated {
        if let Some(mut entry) = servers.remove(key) {
            wheel.stop_all(&mut entry.timers);
            out.ended += 1;
        }
        tracing::debug!(key = %tkey, ?outcome, "transaction terminated");
        out.effects
            .push(Effect::Deliver(TuEvent::Terminated { key: tkey, outcome }));
    }
}

impl<M, Io> Shared<M, Io>
where
    M: Clone + Send + 'static,
    Io: TransactionIo<M>,
{
    /// Counts a new transaction against [`DriverConfig::max_transactions`], or refuses it. Taken
    /// before the transaction is inserted, so the bound holds however many tasks create at once.
    fn take_slot(&self) -> Result<(), DriverError> {
        let limit = self.config.max_transactions;
        if self.live.fetch_add(1, Ordering::Relaxed) >= limit {
            self.live.fetch_sub(1, Ordering::Relaxed);
            tracing::debug!(limit, "transaction table full");
            return Err(DriverError::Overloaded { limit });
        }
        Ok(())
    }

    /// `at` as ns after `epoch`, never [`SWEEPING`].
    fn ns(&self, at: Instant) -> u64 {
        let ns = at.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(ns).unwrap_or(u64::MAX).max(SWEEPING + 1)
    }

    /// Carry out collected effects with the shard unlocked. A failed transmit is a transport error for
    /// its transaction.
    fn finish(&self, out: Output<M>) {
        if out.ended > 0 {
            self.live.fetch_sub(out.ended, Ordering::Relaxed);
        }
        if let Some(at) = out.earliest {
            let until = self.sleeping_until.load(Ordering::Acquire);
            if until == SWEEPING || self.ns(at) < until {
                self.wake.notify_one();
            }
        }
        let mut failed: Vec<TransactionKey> = Vec::new();
        for effect in out.effects {
            match effect {
                Effect::Transmit(key, message) => {
                    if self.io.transmit(&key, &message).is_err() {
                        failed.push(key);
                    }
                }
                Effect::Deliver(event) => self.io.deliver(event),
            }
        }
        for key in failed {
            self.transport_error(&key);
        }
        if self.progress_watched.load(Ordering::Relaxed) {
            self.progress.notify_waiters();
        }
    }

    fn transport_error(&self, key: &TransactionKey) -> bool {
        let now = Instant::now();
        let mut out = Output::default();
        let found = match key {
            TransactionKey::Client(key) => {
                let mut table = self.tables.lock_for(key);
                match table.clients.get_mut(key) {
                    Some(entry) => {
                        let actions = entry.machine.on_event(ClientEvent::TransportError);
                        apply_client(&mut table, &self.io, key, &actions, None, now, &mut out);
                        true
                    }
                    None => false,
                }
            }
            TransactionKey::Server(key) => {
                let mut table = self.tables.lock_for(key);
                match table.servers.get_mut(key) {
                    Some(entry) => {
                        let actions = entry.machine.on_event(ServerEvent::TransportError);
                        apply_server(&mut table, key, &actions, None, now, &mut out);
                        true
                    }
                    None => false,
                }
            }
        };
        self.finish(out);
        found
    }

    /// Counts a sweep that held its shard `held` (by `tokio::time`, so paused in tests).
    fn count_sweep(&self, held: std::time::Duration) {
        let c = &self.sweeps;
        c.sweeps.fetch_add(1, Ordering::Relaxed);
        if held >= SLOW_SWEEP {
            c.slow.fetch_add(1, Ordering::Relaxed);
        }
        c.longest_us.fetch_max(
            held.as_micros().min(u128::from(u64::MAX)) as u64,
            Ordering::Relaxed,
        );
    }

    /// Fire up to [`SWEEP_BATCH`] timers of shard `index` due at `now`; returns their effects, whether
    /// more are due, and the shard's next deadline.
    fn fire_due(&self, index: usize, now: Instant) -> (Output<M>, bool, Option<Instant>) {
        let mut out = Output::default();
        let mut table = self.tables.lock_at(index);
        let locked = Instant::now();
        let mut fired = 0;
        while let Some(first) = table.wheel.entries.first_entry() {
            if first.key().0 > now || fired == SWEEP_BATCH {
                break;
            }
            fired += 1;
            let (at, (key, id)) = first.remove_entry();
            match key {
                TransactionKey::Client(key) => {
                    let Some(entry) = table.clients.get_mut(&key) else {
                        continue;
                    };
                    if !entry.timers.take_fired(id, at) {
                        continue;
                    }
                    let actions = entry.machine.on_event(ClientEvent::Timer(id));
                    apply_client(&mut table, &self.io, &key, &actions, None, now, &mut out);
                }
                TransactionKey::Server(key) => {
                    let Some(entry) = table.servers.get_mut(&key) else {
                        continue;
                    };
                    if !entry.timers.take_fired(id, at) {
                        continue;
                    }
                    let actions = entry.machine.on_event(ServerEvent::Timer(id));
                    apply_server(&mut table, &key, &actions, None, now, &mut out);
                }
            }
        }
        table.compact();
        let next = table.wheel.next_deadline();
        let more = next.is_some_and(|at| at <= now);
        drop(table);
        if fired > 0 {
            self.count_sweep(Instant::now().saturating_duration_since(locked));
        }
        let resent = out
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::Transmit(..)))
            .count();
        self.retransmissions
            .fetch_add(resent as u64, Ordering::Relaxed);
        (out, more, next)
    }

    /// One round of the timer task: every shard in turn, every timer due at `now` fired (a shard's
    /// lock held for at most [`SWEEP_BATCH`] of them at a time); returns the next deadline.
    fn sweep(&self, now: Instant) -> Option<Instant> {
        // From here until the next deadline is published, every timer started wakes the task
        // again: one started in a shard already visited would otherwise be missed.
        self.sleeping_until.store(SWEEPING, Ordering::Release);
        let mut next: Option<Instant> = None;
        for index in 0..self.tables.count() {
            loop {
                let (out, more, shard_next) = self.fire_due(index, now);
                // The shard is unlocked here; a timer started meanwhile leaves a permit in `wake`.
                self.finish(out);
                if !more {
                    if let Some(at) = shard_next
                        && next.is_none_or(|n| at < n)
                    {
                        next = Some(at);
                    }
                    break;
                }
            }
        }
        let until = next.map_or(u64::MAX, |at| self.ns(at));
        self.sleeping_until.store(until, Ordering::Release);
        next
    }
}

/// The timer task: fire what is due, then sleep until the next deadline or until woken.
async fn run_timers<M, Io>(shared: Arc<Shared<M, Io>>)
where
    M: Clone + Send + 'static,
    Io: TransactionIo<M>,
{
    loop {
        match shared.sweep(Instant::now()) {
            Some(at) => {
                tokio::select! {
                    () = tokio::time::sleep_until(at) => {}
                    () = shared.wake.notified() => {}
                }
            }
            None => shared.wake.notified().await,
        }
    }
}

#[cfg(test)]
mod table_tests {
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

    #[test]
    fn a_table_that_emptied_out_gives_its_slots_back_and_a_busy_one_keeps_them() {
        let mut t: Table<()> = Table {
            clients: HashMap::new(),
            servers: HashMap::new(),
            wheel: Wheel::default(),
        };
        let key = |i: usize| ClientKey::new(format!("z9hG4bK-{i}").as_bytes(), b"BYE");
        for i in 0..100_000 {
            t.clients.insert(key(i), Box::new(entry()));
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
    }
}
