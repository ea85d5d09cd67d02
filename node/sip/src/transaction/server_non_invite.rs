//! The non-INVITE server transaction (RFC 3261 17.2.2, Figure 8): a pure state machine with no I/O,
//! clock or message inside. A received CANCEL has one of these (RFC 3261 9.2).
//!
//! ```text
//!   start: pass request to TU
//!   Trying ──1xx from TU: send──► Proceeding   (Trying: retransmissions absorbed;
//!                                               Proceeding: retransmission resends last provisional)
//!   Trying/Proceeding ──200-699 from TU: send, Timer J──► Completed
//!        Completed: retransmission resends the final; Timer J──► Terminated
//! ```
//!
//! On a reliable transport Timer J is zero, so the transaction terminates as soon as the final response
//! has been sent.

use super::machine::{Action, Actions, Outcome, ServerEvent, State, StatusClass, actions};
use super::timers::{PackedConfig, TimerConfig, TimerId};

/// A non-INVITE server transaction.
#[derive(Clone, Debug)]
pub struct ServerNonInvite {
    config: PackedConfig,
    reliable: bool,
    state: State,
}

impl ServerNonInvite {
    /// Start the transaction for a newly received request: the returned action passes it to the TU. The
    /// machine is in [`State::Trying`].
    pub fn new(config: TimerConfig, reliable: bool) -> (Self, Actions) {
        let machine = Self {
            config: PackedConfig::new(config),
            reliable,
            state: State::Trying,
        };
        (machine, actions![Action::PassToTu])
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == State::Terminated
    }

    /// Feed one event; returns what the driver must do. A response from the TU after the final
    /// produces no action: it is not sent.
    pub fn on_event(&mut self, event: ServerEvent) -> Actions {
        match (self.state, event) {
            (State::Terminated, _) => actions![],
            // An ACK never belongs to a non-INVITE transaction; ignore it.
            (_, ServerEvent::Request { is_ack: true }) => actions![],
            (State::Trying, ServerEvent::Request { is_ack: false }) => actions![],
            (State::Proceeding | State::Completed, ServerEvent::Request { is_ack: false }) => {
                actions![Action::TransmitResponse]
            }
            (State::Trying | State::Proceeding, ServerEvent::TuResponse { status }) => {
                match StatusClass::of(status) {
                    None => actions![],
                    Some(StatusClass::Provisional) => {
                        self.state = State::Proceeding;
                        actions![Action::TransmitResponse]
                    }
                    Some(StatusClass::Success | StatusClass::Failure) => {
                        let mut actions = actions![Action::TransmitResponse];
                        let j = self.config.get().timer_j(self.reliable);
                        if j.is_zero() {
                            self.terminate(actions, Outcome::Completed)
                        } else {
                            self.state = State::Completed;
                            actions.push(Action::StartTimer(TimerId::J, j));
                            actions
                        }
                    }
                }
            }
            (State::Completed, ServerEvent::Timer(TimerId::J)) => {
                self.terminate(actions![], Outcome::Completed)
            }
            (_, ServerEvent::TransportError) => self.terminate(actions![], Outcome::TransportError),
            // A response after the final, stale timers, states a non-INVITE server never enters.
            _ => actions![],
        }
    }

    fn terminate(&mut self, mut actions: Actions, outcome: Outcome) -> Actions {
        self.state = State::Terminated;
        actions.push(Action::Terminated(outcome));
        actions
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use Action::*;
    use ServerEvent::*;

    const RETRANSMISSION: ServerEvent = Request { is_ack: false };

    fn udp() -> ServerNonInvite {
        let (m, a) = ServerNonInvite::new(TimerConfig::default(), false);
        assert_eq!(&*a, [PassToTu]);
        assert_eq!(m.state(), State::Trying);
        m
    }

    #[test]
    fn retransmission_in_trying_is_absorbed_silently() {
        let mut m = udp();
        assert!(m.on_event(RETRANSMISSION).is_empty());
        assert_eq!(m.state(), State::Trying);
    }

    #[test]
    fn retransmission_resends_last_provisional_then_final() {
        let mut m = udp();
        assert_eq!(&*m.on_event(TuResponse { status: 100 }), [TransmitResponse]);
        assert_eq!(m.state(), State::Proceeding);
        assert_eq!(&*m.on_event(RETRANSMISSION), [TransmitResponse]);
        assert_eq!(
            &*m.on_event(TuResponse { status: 200 }),
            [
                TransmitResponse,
                StartTimer(TimerId::J, Duration::from_secs(32))
            ]
        );
        assert_eq!(m.state(), State::Completed);
        assert_eq!(&*m.on_event(RETRANSMISSION), [TransmitResponse]);
        assert!(m.on_event(TuResponse { status: 500 }).is_empty());
        assert_eq!(
            &*m.on_event(Timer(TimerId::J)),
            [Terminated(Outcome::Completed)]
        );
    }

    #[test]
    fn reliable_transport_timer_j_is_zero() {
        let (mut m, _) = ServerNonInvite::new(TimerConfig::default(), true);
        assert_eq!(
            &*m.on_event(TuResponse { status: 200 }),
            [TransmitResponse, Terminated(Outcome::Completed)]
        );
        assert!(m.is_terminated());
    }

    #[test]
    fn transport_error_terminates() {
        let mut m = udp();
        m.on_event(TuResponse { status: 200 });
        assert_eq!(
            &*m.on_event(TransportError),
            [Terminated(Outcome::TransportError)]
        );
    }
}
