//! The vocabulary the four transaction state machines share: their states, the events they take, the
//! actions they return and how a transaction ended.
//!
//! A machine never sees a message. It is told what happened (a response with this status code arrived,
//! the TU wants to send a response with this status code, a request was retransmitted, a timer fired,
//! the transport failed) and answers with [`Actions`] for its driver to carry out, in order.

use std::fmt;
use std::ops::Deref;
use std::time::Duration;

use super::timers::TimerId;

/// The state of a transaction. Each kind of transaction uses a subset (RFC 3261 Figures 5–8, with the
/// Accepted state of RFC 6026 for both INVITE machines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// INVITE client: request sent, no response yet.
    Calling,
    /// Non-INVITE client: request sent, no response yet; non-INVITE server: request passed up, no
    /// response yet.
    Trying,
    /// A provisional response was received (client) or sent (server). The INVITE server starts here.
    Proceeding,
    /// A final response (non-2xx for INVITE) was received (client) or sent (server).
    Completed,
    /// INVITE server: the ACK for a non-2xx final response arrived.
    Confirmed,
    /// INVITE client or server after a 2xx (RFC 6026).
    Accepted,
    /// Finished; the driver forgets the transaction.
    Terminated,
}

/// How a transaction ended, reported with [`Action::Terminated`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Normal end: a final response was exchanged and the linger timer ran out.
    Completed,
    /// No answer in time: Timer B or F (client) or no ACK before Timer H (INVITE server).
    Timeout,
    /// The transport reported that it could not send one of the transaction's messages.
    TransportError,
}

/// What happens to a client transaction (INVITE or non-INVITE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// A response matching the transaction arrived (status 100–699; others are ignored).
    Response {
        /// Its status code.
        status: u16,
    },
    /// A timer the machine started has fired.
    Timer(TimerId),
    /// The transport could not send the request or the ACK.
    TransportError,
}

/// What happens to a server transaction (INVITE or non-INVITE).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerEvent {
    /// A request matching the transaction arrived: a retransmission of the request that created it, or
    /// (`is_ack`, INVITE only) the ACK.
    Request {
        /// Whether the request is an ACK.
        is_ack: bool,
    },
    /// The TU sends a response (status 100–699; others are ignored).
    TuResponse {
        /// Its status code.
        status: u16,
    },
    /// A timer the machine started has fired.
    Timer(TimerId),
    /// The transport could not send a response.
    TransportError,
}

/// One thing the driver must do for a machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Client: send (or resend) the request that created the transaction.
    TransmitRequest,
    /// Server: send the last response the TU gave (the one just passed in, or a retransmission of it).
    TransmitResponse,
    /// INVITE client: send the ACK for the non-2xx final response (RFC 3261 17.1.1.3); the ACK is built
    /// from the first such response and resent unchanged for its retransmissions.
    SendAck,
    /// Hand the message just received up to the TU (client: the response; server: the request that
    /// created the transaction, or an ACK received in Accepted).
    PassToTu,
    /// (Re)start a timer: if it is already running, it is replaced.
    StartTimer(TimerId, Duration),
    /// Stop a timer if it is running.
    StopTimer(TimerId),
    /// The transaction is over: the driver cancels all its timers, tells the TU how it ended and forgets
    /// it. Always the last action.
    Terminated(Outcome),
}

/// The most actions one event can produce (an INVITE client receiving a non-2xx final while Calling
/// produces five).
const CAPACITY: usize = 6;

/// The actions produced by one event, in the order the driver must carry them out. A small inline list:
/// no allocation per event.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Actions {
    items: [Action; CAPACITY],
    len: usize,
}

impl Actions {
    /// No action.
    pub const fn none() -> Self {
        Self {
            items: [Action::PassToTu; CAPACITY],
            len: 0,
        }
    }

    /// Append one action (internal: the machines never produce more than [`CAPACITY`]).
    pub(crate) fn push(&mut self, action: Action) {
        debug_assert!(self.len < CAPACITY, "too many transaction actions");
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = action;
            self.len += 1;
        }
    }

    /// The actions as a slice.
    pub fn as_slice(&self) -> &[Action] {
        &self.items[..self.len]
    }

    /// The outcome, if these actions terminate the transaction.
    pub fn terminated(&self) -> Option<Outcome> {
        self.as_slice().iter().find_map(|a| match a {
            Action::Terminated(outcome) => Some(*outcome),
            _ => None,
        })
    }
}

impl Default for Actions {
    fn default() -> Self {
        Self::none()
    }
}

impl Deref for Actions {
    type Target = [Action];

    fn deref(&self) -> &[Action] {
        self.as_slice()
    }
}

impl fmt::Debug for Actions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl<'a> IntoIterator for &'a Actions {
    type Item = &'a Action;
    type IntoIter = std::slice::Iter<'a, Action>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// The class of a status code, as the machines need it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusClass {
    /// 100–199.
    Provisional,
    /// 200–299.
    Success,
    /// 300–699.
    Failure,
}

impl StatusClass {
    /// The class of `status`, or `None` outside 100–699 (such codes are ignored by the machines).
    pub(crate) fn of(status: u16) -> Option<Self> {
        match status {
            100..=199 => Some(Self::Provisional),
            200..=299 => Some(Self::Success),
            300..=699 => Some(Self::Failure),
            _ => None,
        }
    }
}

/// Build an [`Actions`] from a list (internal shorthand for the machines).
macro_rules! actions {
    ($($a:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut actions = $crate::transaction::machine::Actions::none();
        $(actions.push($a);)*
        actions
    }};
}
pub(crate) use actions;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_keep_order_and_report_termination() {
        let a = actions![
            Action::TransmitRequest,
            Action::StopTimer(TimerId::A),
            Action::Terminated(Outcome::Timeout),
        ];
        assert_eq!(a.len(), 3);
        assert_eq!(a[0], Action::TransmitRequest);
        assert_eq!(a.terminated(), Some(Outcome::Timeout));
        assert_eq!(actions![].terminated(), None);
        assert!(actions![].is_empty());
    }

    #[test]
    fn status_classes() {
        assert_eq!(StatusClass::of(99), None);
        assert_eq!(StatusClass::of(100), Some(StatusClass::Provisional));
        assert_eq!(StatusClass::of(199), Some(StatusClass::Provisional));
        assert_eq!(StatusClass::of(200), Some(StatusClass::Success));
        assert_eq!(StatusClass::of(300), Some(StatusClass::Failure));
        assert_eq!(StatusClass::of(699), Some(StatusClass::Failure));
        assert_eq!(StatusClass::of(700), None);
    }
}
