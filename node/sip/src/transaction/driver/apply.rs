//! Turns a machine's [`Action`]s into changes to its table entry (timers started and stopped, the
//! entry dropped when it ends, an ACK built once) and into [`Effect`]s — messages to send, events
//! for the TU — collected in an [`Output`] while the shard is locked and carried out once it is
//! unlocked.

use std::sync::Arc;

use tokio::time::Instant;

use super::super::key::{ClientKey, ServerKey, TransactionKey};
use super::super::machine::{Action, Actions, State};
use super::super::wheel::WheelKey;
use super::api::{TransactionIo, TuEvent};
use super::table::Table;

/// Side effects collected with the table locked and carried out after it is unlocked.
pub(super) enum Effect<M, R> {
    /// A request or ACK of a client transaction.
    Transmit(ClientKey, M),
    /// A response of a server transaction.
    Respond(ServerKey, R),
    Deliver(TuEvent<M>),
}

impl<M, R> Effect<M, R> {
    /// Whether this sends a message (a request, an ACK or a response).
    pub(super) fn is_send(&self) -> bool {
        matches!(self, Self::Transmit(..) | Self::Respond(..))
    }
}

pub(super) struct Output<M, R> {
    pub(super) effects: Vec<Effect<M, R>>,
    /// The earliest timer started that is the first of its shard (the timer task may have to wake
    /// up earlier for it).
    pub(super) earliest: Option<Instant>,
    /// Transactions that ended (removed from their shard).
    pub(super) ended: usize,
}

impl<M, R> Default for Output<M, R> {
    fn default() -> Self {
        Self {
            effects: Vec::new(),
            earliest: None,
            ended: 0,
        }
    }
}

impl<M, R> Output<M, R> {
    /// Notes a timer started: `first` is its deadline when it is now the first of its shard.
    fn started(&mut self, first: Option<Instant>) {
        if let Some(at) = first
            && self.earliest.is_none_or(|e| at < e)
        {
            self.earliest = Some(at);
        }
    }
}

/// A request received for a server transaction, for [`Action::PassToTu`].
pub(super) struct Incoming<M> {
    pub(super) message: M,
    pub(super) is_ack: bool,
}

/// Carry out a client machine's actions on its table entry, collecting effects in `out`.
pub(super) fn apply_client<M: Clone, R, Io: TransactionIo<M, R>>(
    table: &mut Table<M, R>,
    io: &Io,
    key: &ClientKey,
    actions: &Actions,
    mut response: Option<(u16, M)>,
    now: Instant,
    out: &mut Output<M, R>,
) {
    let Table { clients, wheel, .. } = table;
    // The key as the table holds it, shared with the wheel for the timers started here.
    let Some(shared) = clients
        .get_key_value(key)
        .map(|(k, _)| WheelKey::Client(Arc::clone(k)))
    else {
        return;
    };
    let Some(entry) = clients.get_mut(key) else {
        return;
    };
    let mut terminated = None;
    for action in actions {
        match *action {
            Action::TransmitRequest => {
                if let Some(request) = &entry.request {
                    out.effects
                        .push(Effect::Transmit(key.clone(), M::clone(request)));
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
                        .push(Effect::Transmit(key.clone(), M::clone(ack)));
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
                out.started(wheel.start(&mut entry.timers, &shared, id, now + after));
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
        let tkey = TransactionKey::Client(key.clone());
        tracing::debug!(key = %tkey, ?outcome, "transaction terminated");
        out.effects
            .push(Effect::Deliver(TuEvent::Terminated { key: tkey, outcome }));
    }
}

/// Carry out a server machine's actions on its table entry, collecting effects in `out`.
pub(super) fn apply_server<M, R: Clone>(
    table: &mut Table<M, R>,
    key: &ServerKey,
    actions: &Actions,
    mut incoming: Option<Incoming<M>>,
    now: Instant,
    out: &mut Output<M, R>,
) {
    let Table { servers, wheel, .. } = table;
    let Some(shared) = servers
        .get_key_value(key)
        .map(|(k, _)| WheelKey::Server(Arc::clone(k)))
    else {
        return;
    };
    let Some(entry) = servers.get_mut(key) else {
        return;
    };
    // In Accepted (after a 2xx: RFC 6026, the core resends it, not the transaction) and in
    // Confirmed (only ACKs are absorbed there) the response is sent and not kept.
    let keep = !matches!(entry.machine.state(), State::Accepted | State::Confirmed);
    let mut terminated = None;
    for action in actions {
        match *action {
            Action::TransmitResponse => {
                let response = if keep {
                    entry.last_response.as_deref().cloned()
                } else {
                    entry.last_response.take().map(|r| *r)
                };
                if let Some(response) = response {
                    out.effects.push(Effect::Respond(key.clone(), response));
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
                out.started(wheel.start(&mut entry.timers, &shared, id, now + after));
            }
            Action::StopTimer(id) => wheel.stop(&mut entry.timers, id),
            Action::Terminated(outcome) => terminated = Some(outcome),
        }
    }
    if !keep {
        entry.last_response = None;
    }
    if let Some(outcome) = terminated {
        if let Some(mut entry) = servers.remove(key) {
            wheel.stop_all(&mut entry.timers);
            out.ended += 1;
        }
        let tkey = TransactionKey::Server(key.clone());
        tracing::debug!(key = %tkey, ?outcome, "transaction terminated");
        out.effects
            .push(Effect::Deliver(TuEvent::Terminated { key: tkey, outcome }));
    }
}
