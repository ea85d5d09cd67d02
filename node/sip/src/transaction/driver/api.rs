//! The driver's vocabulary with its caller: the [`TransactionIo`] it calls (send a request or a
//! response, build an ACK, tell the TU), the [`TuEvent`]s it hands up, its settings
//! ([`DriverConfig`]), its refusals ([`DriverError`]) and what it did with an incoming message
//! ([`RequestDisposition`], [`ResponseDisposition`]). Types only: no table, no timer.

use std::sync::Arc;

use thiserror::Error;

use super::super::key::{ClientKey, ServerKey, TransactionKey};
use super::super::machine::Outcome;
use super::super::timers::TimerConfig;

/// What the driver needs from the outside world. `M` is the caller's message type: the requests
/// and ACKs client transactions send, and every message received. `R` is what a server transaction
/// keeps of a response the TU handed it ([`Driver::respond`](crate::transaction::Driver::respond)):
/// the transaction only ever sends it (again), so `R` can be the response's wire form — its bytes
/// and where they go — rather than a parsed message; it is `M` unless the caller says otherwise.
pub trait TransactionIo<M, R = M>: Send + Sync + 'static {
    /// Send `request`, a request or ACK of client transaction `key`, to wherever `M` says. Called
    /// without locks held. An `Err` counts as a transport error for the transaction (RFC 3261
    /// 17.1.4); failures found later (a TCP write that fails after queueing) are reported with
    /// [`Driver::transport_error`](crate::transaction::Driver::transport_error).
    fn transmit(&self, key: &ClientKey, request: &M) -> Result<(), TransmitError>;

    /// Send `response` of server transaction `key` (the first time, or again: Timer G, a
    /// retransmitted request), to wherever `R` says. Called without locks held. An `Err` counts as
    /// a transport error for the transaction (RFC 3261 17.2.4).
    fn transmit_response(&self, key: &ServerKey, response: &R) -> Result<(), TransmitError>;

    /// Build the ACK for the non-2xx final `response` to the INVITE `request` (RFC 3261 17.1.1.3:
    /// Request-URI, Call-ID, From, CSeq number, top Via and Route of the request, To of the response,
    /// CSeq method ACK). Called once per transaction, with the driver's table locked: it must be a pure
    /// function of its arguments and must not call the driver.
    fn build_ack(&self, request: &M, response: &M) -> M;

    /// Hand an event to the transaction user. Called without locks held; may call the driver.
    fn deliver(&self, event: TuEvent<M>);
}

impl<M, R, T> TransactionIo<M, R> for Arc<T>
where
    T: TransactionIo<M, R> + ?Sized,
{
    fn transmit(&self, key: &ClientKey, request: &M) -> Result<(), TransmitError> {
        (**self).transmit(key, request)
    }

    fn transmit_response(&self, key: &ServerKey, response: &R) -> Result<(), TransmitError> {
        (**self).transmit_response(key, response)
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
    /// A new request created server transaction `key`. Answer it with
    /// [`Driver::respond`](crate::transaction::Driver::respond). For a CANCEL,
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

/// What [`Driver::on_request`](crate::transaction::Driver::on_request) did with a request.
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

/// What [`Driver::on_response`](crate::transaction::Driver::on_response) did with a response.
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
    /// The grid the timers that only end a transaction's linger (D, I, J, K, L, M) are rounded up
    /// to, so that one wake-up of the timer task ends all that fall in one step
    /// ([`DEFAULT_LINGER_GRID`]); zero fires each at its exact deadline.
    pub linger_grid: std::time::Duration,
}

/// [`DriverConfig::linger_grid`]'s default: 16 ms, a few per cent of the shortest linger (T4 = 5 s
/// for Timer K over UDP).
pub const DEFAULT_LINGER_GRID: std::time::Duration = std::time::Duration::from_millis(16);

impl Default for DriverConfig {
    fn default() -> Self {
        Self {
            timers: TimerConfig::default(),
            max_transactions: 10_000,
            linger_grid: DEFAULT_LINGER_GRID,
        }
    }
}
