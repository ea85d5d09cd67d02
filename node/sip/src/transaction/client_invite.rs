//! The INVITE client transaction (RFC 3261 17.1.1, Figure 5, as updated by RFC 6026 §7.2): a pure state
//! machine with no I/O, clock or message inside.
//!
//! ```text
//!   start: send INVITE, Timer A (unreliable), Timer B
//!   Calling ──1xx──────────────► Proceeding ──1xx: to TU
//!   Calling/Proceeding ──2xx───► Accepted   (to TU, Timer M; later 2xx: to TU — the core ACKs them)
//!   Calling/Proceeding ──300-699► Completed (ACK, to TU, Timer D; retransmitted finals: ACK again)
//!   Calling ──Timer A: resend, A doubles;  Timer B: Timeout
//!   Completed ──Timer D──► Terminated;  Accepted ──Timer M──► Terminated
//! ```
//!
//! On a reliable transport Timer A is not started and Timer D is zero, so the transaction terminates as
//! soon as it has sent the ACK.

use super::machine::{Action, Actions, ClientEvent, Outcome, State, StatusClass, actions};
use super::timers::{Interval, PackedConfig, TimerConfig, TimerId};

/// An INVITE client transaction.
#[derive(Clone, Debug)]
pub struct ClientInvite {
    config: PackedConfig,
    reliable: bool,
    state: State,
    /// The interval Timer A is currently running with.
    timer_a: Interval,
}

impl ClientInvite {
    /// Start the transaction: the returned actions send the INVITE and start Timers A (unreliable
    /// transports only) and B. The machine is in [`State::Calling`].
    pub fn new(config: TimerConfig, reliable: bool) -> (Self, Actions) {
        let machine = Self {
            config: PackedConfig::new(config),
            reliable,
            state: State::Calling,
            timer_a: Interval::of(config.timer_a_initial()),
        };
        let mut actions = actions![Action::TransmitRequest];
        if !reliable {
            actions.push(Action::StartTimer(TimerId::A, machine.timer_a.get()));
        }
        actions.push(Action::StartTimer(TimerId::B, config.timer_b()));
        (machine, actions)
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Whether the transaction is over.
    pub fn is_terminated(&self) -> bool {
        self.state == State::Terminated
    }

    /// Feed one event; returns what the driver must do. Events that do not apply to the current state
    /// (a stale timer, a provisional after the final) produce no action.
    pub fn on_event(&mut self, event: ClientEvent) -> Actions {
        match (self.state, event) {
            (State::Terminated, _) => actions![],
            (State::Calling, ClientEvent::Timer(TimerId::A)) => {
                self.timer_a = Interval::of(self.config.get().timer_a_next(self.timer_a.get()));
                actions![
                    Action::TransmitRequest,
                    Action::StartTimer(TimerId::A, self.timer_a.get()),
                ]
            }
            (State::Calling, ClientEvent::Timer(TimerId::B)) => {
                self.terminate(actions![], Outcome::Timeout)
            }
            (State::Calling | State::Proceeding, ClientEvent::Response { status }) => {
                self.on_response(status)
            }
            (State::Completed, ClientEvent::Response { status }) => {
                // 17.1.1.2: a retransmitted final is ACKed again and not passed up.
                match StatusClass::of(status) {
                    Some(StatusClass::Failure) => actions![Action::SendAck],
                    _ => actions![],
                }
            }
            (State::Accepted, ClientEvent::Response { status }) => {
                // RFC 6026 7.2: every 2xx goes to the TU, which ACKs it; anything else is dropped.
                match StatusClass::of(status) {
                    Some(StatusClass::Success) => actions![Action::PassToTu],
                    _ => actions![],
                }
            }
            (State::Completed, ClientEvent::Timer(TimerId::D))
            | (State::Accepted, ClientEvent::Timer(TimerId::M)) => {
                self.terminate(actions![], Outcome::Completed)
            }
            (_, ClientEvent::TransportError) => self.terminate(actions![], Outcome::TransportError),
            // Stale timers, and states an INVITE client never enters.
            _ => actions![],
        }
    }

    /// A response while Calling or Proceeding.
    fn on_response(&mut self, status: u16) -> Actions {
        let Some(class) = StatusClass::of(status) else {
            return actions![];
        };
        let mut actions = actions![];
        if self.state == State::Calling {
            // No more retransmissions once anything arrived; Timer B only guards Calling.
            actions.push(Action::StopTimer(TimerId::A));
            actions.push(Action::StopTimer(TimerId::B));
        }
        match class {
            StatusClass::Provisional => {
                self.state = State::Proceeding;
                actions.push(Action::PassToTu);
                actions
            }
            StatusClass::Success => {
                self.state = State::Accepted;
                actions.push(Action::PassToTu);
                actions.push(Action::StartTimer(TimerId::M, self.config.get().timer_m()));
                actions
            }
            StatusClass::Failure => {
                actions.push(Action::SendAck);
                actions.push(Action::PassToTu);
                let d = self.config.get().timer_d(self.reliable);
                if d.is_zero() {
                    self.terminate(actions, Outcome::Completed)
                } else {
                    self.state = State::Completed;
                    actions.push(Action::StartTimer(TimerId::D, d));
                    actions
                }
            }
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
    use ClientEvent::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn udp() -> ClientInvite {
        let (m, a) = ClientInvite::new(TimerConfig::default(), false);
        assert_eq!(
            &*a,
            [
                TransmitRequest,
                StartTimer(TimerId::A, ms(500)),
                StartTimer(TimerId::B, ms(32_000))
            ]
        );
        assert_eq!(m.state(), State::Calling);
        m
    }

    #[test]
    fn timer_a_doubles_until_timer_b() {
        let mut m = udp();
        for next in [1000, 2000, 4000, 8000, 16000, 32000] {
            let a = m.on_event(Timer(TimerId::A));
            assert_eq!(&*a, [TransmitRequest, StartTimer(TimerId::A, ms(next))]);
        }
        let a = m.on_event(Timer(TimerId::B));
        assert_eq!(&*a, [Terminated(Outcome::Timeout)]);
        assert!(m.is_terminated());
        assert!(m.on_event(Timer(TimerId::A)).is_empty());
    }

    #[test]
    fn provisional_stops_retransmissions_and_timer_b() {
        let mut m = udp();
        let a = m.on_event(Response { status: 180 });
        assert_eq!(
            &*a,
            [StopTimer(TimerId::A), StopTimer(TimerId::B), PassToTu]
        );
        assert_eq!(m.state(), State::Proceeding);
        assert_eq!(&*m.on_event(Response { status: 183 }), [PassToTu]);
        // A stale Timer A or B is ignored in Proceeding.
        assert!(m.on_event(Timer(TimerId::A)).is_empty());
        assert!(m.on_event(Timer(TimerId::B)).is_empty());
        assert_eq!(m.state(), State::Proceeding);
    }

    #[test]
    fn non_2xx_is_acked_by_the_transaction_and_retransmissions_reacked() {
        let mut m = udp();
        let a = m.on_event(Response { status: 486 });
        assert_eq!(
            &*a,
            [
                StopTimer(TimerId::A),
                StopTimer(TimerId::B),
                SendAck,
                PassToTu,
                StartTimer(TimerId::D, ms(32_000))
            ]
        );
        assert_eq!(m.state(), State::Completed);
        assert_eq!(&*m.on_event(Response { status: 486 }), [SendAck]);
        assert!(m.on_event(Response { status: 180 }).is_empty());
        assert_eq!(
            &*m.on_event(Timer(TimerId::D)),
            [Terminated(Outcome::Completed)]
        );
    }

    #[test]
    fn two_xx_goes_to_accepted_and_retransmissions_pass_up() {
        let mut m = udp();
        m.on_event(Response { status: 100 });
        let a = m.on_event(Response { status: 200 });
        assert_eq!(&*a, [PassToTu, StartTimer(TimerId::M, ms(32_000))]);
        assert_eq!(m.state(), State::Accepted);
        // Retransmitted (or forked) 2xx: to the TU, never ACKed by the transaction.
        assert_eq!(&*m.on_event(Response { status: 200 }), [PassToTu]);
        assert!(m.on_event(Response { status: 486 }).is_empty());
        assert!(m.on_event(Response { status: 180 }).is_empty());
        assert_eq!(
            &*m.on_event(Timer(TimerId::M)),
            [Terminated(Outcome::Completed)]
        );
    }

    #[test]
    fn two_xx_while_calling_stops_a_and_b() {
        let mut m = udp();
        let a = m.on_event(Response { status: 200 });
        assert_eq!(
            &*a,
            [
                StopTimer(TimerId::A),
                StopTimer(TimerId::B),
                PassToTu,
                StartTimer(TimerId::M, ms(32_000))
            ]
        );
    }

    #[test]
    fn reliable_transport_never_retransmits_and_timer_d_is_zero() {
        let (mut m, a) = ClientInvite::new(TimerConfig::default(), true);
        assert_eq!(&*a, [TransmitRequest, StartTimer(TimerId::B, ms(32_000))]);
        let a = m.on_event(Response { status: 503 });
        assert_eq!(
            &*a,
            [
                StopTimer(TimerId::A),
                StopTimer(TimerId::B),
                SendAck,
                PassToTu,
                Terminated(Outcome::Completed)
            ]
        );
        assert!(m.is_terminated());
    }

    #[test]
    fn transport_error_terminates() {
        let mut m = udp();
        let a = m.on_event(TransportError);
        assert_eq!(&*a, [Terminated(Outcome::TransportError)]);
        assert!(m.is_terminated());
    }

    #[test]
    fn invalid_status_is_ignored() {
        let mut m = udp();
        assert!(m.on_event(Response { status: 99 }).is_empty());
        assert!(m.on_event(Response { status: 700 }).is_empty());
        assert_eq!(m.state(), State::Calling);
    }
}
