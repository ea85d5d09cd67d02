//! The non-INVITE client transaction (RFC 3261 17.1.2, Figure 6): a pure state machine with no I/O,
//! clock or message inside. A CANCEL is sent through one of these too (RFC 3261 9.1).
//!
//! ```text
//!   start: send request, Timer E (unreliable), Timer F
//!   Trying ──1xx: to TU──► Proceeding ──1xx: to TU
//!   Trying/Proceeding ──200-699: to TU, Timer K──► Completed ──Timer K──► Terminated
//!   Timer E: resend; interval doubles up to T2 in Trying, is T2 in Proceeding
//!   Timer F: Timeout
//! ```
//!
//! On a reliable transport Timer E is not started and Timer K is zero, so the transaction terminates as
//! soon as the final response has been passed up.

use super::machine::{Action, Actions, ClientEvent, Outcome, State, StatusClass, actions};
use super::timers::{Interval, PackedConfig, TimerConfig, TimerId};

/// A non-INVITE client transaction.
#[derive(Clone, Debug)]
pub struct ClientNonInvite {
    config: PackedConfig,
    reliable: bool,
    state: State,
    /// The interval Timer E is currently running with.
    timer_e: Interval,
}

impl ClientNonInvite {
    /// Start the transaction: the returned actions send the request and start Timers E (unreliable
    /// transports only) and F. The machine is in [`State::Trying`].
    pub fn new(config: TimerConfig, reliable: bool) -> (Self, Actions) {
        let machine = Self {
            config: PackedConfig::new(config),
            reliable,
            state: State::Trying,
            timer_e: Interval::of(config.timer_e_initial()),
        };
        let mut actions = actions![Action::TransmitRequest];
        if !reliable {
            actions.push(Action::StartTimer(TimerId::E, machine.timer_e.get()));
        }
        actions.push(Action::StartTimer(TimerId::F, config.timer_f()));
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
    /// produce no action.
    pub fn on_event(&mut self, event: ClientEvent) -> Actions {
        match (self.state, event) {
            (State::Terminated, _) => actions![],
            (State::Trying | State::Proceeding, ClientEvent::Timer(TimerId::E)) => {
                self.timer_e = if self.state == State::Trying {
                    Interval::of(self.config.get().timer_e_next(self.timer_e.get()))
                } else {
                    Interval::of(self.config.get().t2)
                };
                actions![
                    Action::TransmitRequest,
                    Action::StartTimer(TimerId::E, self.timer_e.get()),
                ]
            }
            (State::Trying | State::Proceeding, ClientEvent::Timer(TimerId::F)) => {
                self.terminate(actions![], Outcome::Timeout)
            }
            (State::Trying | State::Proceeding, ClientEvent::Response { status }) => {
                match StatusClass::of(status) {
                    None => actions![],
                    Some(StatusClass::Provisional) => {
                        // Timer E keeps running; once it fires in Proceeding it restarts with T2.
                        self.state = State::Proceeding;
                        actions![Action::PassToTu]
                    }
                    Some(StatusClass::Success | StatusClass::Failure) => {
                        let mut actions = actions![
                            Action::StopTimer(TimerId::E),
                            Action::StopTimer(TimerId::F),
                            Action::PassToTu,
                        ];
                        let k = self.config.get().timer_k(self.reliable);
                        if k.is_zero() {
                            self.terminate(actions, Outcome::Completed)
                        } else {
                            self.state = State::Completed;
                            actions.push(Action::StartTimer(TimerId::K, k));
                            actions
                        }
                    }
                }
            }
            // Completed: retransmitted responses are absorbed.
            (State::Completed, ClientEvent::Response { .. }) => actions![],
            (State::Completed, ClientEvent::Timer(TimerId::K)) => {
                self.terminate(actions![], Outcome::Completed)
            }
            (_, ClientEvent::TransportError) => self.terminate(actions![], Outcome::TransportError),
            // Stale timers, and states a non-INVITE client never enters.
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
    use ClientEvent::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn udp() -> ClientNonInvite {
        let (m, a) = ClientNonInvite::new(TimerConfig::default(), false);
        assert_eq!(
            &*a,
            [
                TransmitRequest,
                StartTimer(TimerId::E, ms(500)),
                StartTimer(TimerId::F, ms(32_000))
            ]
        );
        m
    }

    #[test]
    fn timer_e_doubles_capped_at_t2_then_timer_f() {
        let mut m = udp();
        for next in [1000, 2000, 4000, 4000, 4000] {
            assert_eq!(
                &*m.on_event(Timer(TimerId::E)),
                [TransmitRequest, StartTimer(TimerId::E, ms(next))]
            );
        }
        assert_eq!(
            &*m.on_event(Timer(TimerId::F)),
            [Terminated(Outcome::Timeout)]
        );
        assert!(m.is_terminated());
    }

    #[test]
    fn proceeding_retransmits_every_t2() {
        let mut m = udp();
        assert_eq!(&*m.on_event(Response { status: 100 }), [PassToTu]);
        assert_eq!(m.state(), State::Proceeding);
        assert_eq!(
            &*m.on_event(Timer(TimerId::E)),
            [TransmitRequest, StartTimer(TimerId::E, ms(4000))]
        );
        assert_eq!(&*m.on_event(Response { status: 100 }), [PassToTu]);
        assert_eq!(
            &*m.on_event(Timer(TimerId::F)),
            [Terminated(Outcome::Timeout)]
        );
    }

    #[test]
    fn final_response_then_timer_k() {
        let mut m = udp();
        assert_eq!(
            &*m.on_event(Response { status: 404 }),
            [
                StopTimer(TimerId::E),
                StopTimer(TimerId::F),
                PassToTu,
                StartTimer(TimerId::K, ms(5000))
            ]
        );
        assert_eq!(m.state(), State::Completed);
        assert!(m.on_event(Response { status: 404 }).is_empty());
        assert!(m.on_event(Timer(TimerId::E)).is_empty());
        assert_eq!(
            &*m.on_event(Timer(TimerId::K)),
            [Terminated(Outcome::Completed)]
        );
    }

    #[test]
    fn reliable_transport_never_retransmits_and_timer_k_is_zero() {
        let (mut m, a) = ClientNonInvite::new(TimerConfig::default(), true);
        assert_eq!(&*a, [TransmitRequest, StartTimer(TimerId::F, ms(32_000))]);
        assert_eq!(
            &*m.on_event(Response { status: 200 }),
            [
                StopTimer(TimerId::E),
                StopTimer(TimerId::F),
                PassToTu,
                Terminated(Outcome::Completed)
            ]
        );
    }

    #[test]
    fn transport_error_terminates() {
        let mut m = udp();
        assert_eq!(
            &*m.on_event(TransportError),
            [Terminated(Outcome::TransportError)]
        );
    }
}
