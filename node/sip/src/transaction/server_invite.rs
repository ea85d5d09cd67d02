//! The INVITE server transaction (RFC 3261 17.2.1, Figure 7, as updated by RFC 6026 §7.1): a pure state
//! machine with no I/O, clock or message inside.
//!
//! ```text
//!   start: pass INVITE to TU
//!   Proceeding ──1xx from TU: send──► Proceeding   (retransmitted INVITE: resend last provisional)
//!   Proceeding ──2xx from TU: send, Timer L──► Accepted
//!        Accepted: INVITE absorbed; ACK to TU; 2xx from TU (the core's retransmission): send;
//!                  Timer L──► Terminated
//!   Proceeding ──300-699 from TU: send, Timer G (unreliable), Timer H──► Completed
//!        Completed: INVITE: resend final; Timer G: resend, G doubles up to T2;
//!                   Timer H: Timeout; ACK: Timer I──► Confirmed (absorbs ACKs) ──Timer I──► Terminated
//! ```
//!
//! **100 Trying.** RFC 3261 lets the transaction send a 100 itself if the TU has not answered within
//! 200 ms. This machine does not: medpool's B2BUA core sends 100 Trying at once for every INVITE, through
//! [`ServerEvent::TuResponse`] like any provisional, so no extra timer is needed here.
//!
//! On a reliable transport Timer G is not started and Timer I is zero, so the transaction terminates as
//! soon as the ACK for a non-2xx arrives.
//!
//! A transport error ends the transaction in any state, Accepted included, and the TU is told
//! ([`Outcome::TransportError`]): after it, a retransmitted INVITE would start a new transaction, but
//! over a failed connection none can arrive.

use super::machine::{Action, Actions, Outcome, ServerEvent, State, StatusClass, actions};
use super::timers::{Interval, PackedConfig, TimerConfig, TimerId};

/// An INVITE server transaction.
#[derive(Clone, Debug)]
pub struct ServerInvite {
    config: PackedConfig,
    reliable: bool,
    state: State,
    /// Whether the TU has sent a response yet (a retransmitted INVITE in Proceeding resends it).
    responded: bool,
    /// The interval Timer G is currently running with.
    timer_g: Interval,
}

impl ServerInvite {
    /// Start the transaction for a newly received INVITE: the returned action passes it to the TU. The
    /// machine is in [`State::Proceeding`].
    pub fn new(config: TimerConfig, reliable: bool) -> (Self, Actions) {
        let machine = Self {
            config: PackedConfig::new(config),
            reliable,
            state: State::Proceeding,
            responded: false,
            timer_g: Interval::of(config.timer_g_initial()),
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

    /// Feed one event; returns what the driver must do. A response from the TU that the state does not
    /// allow (a second final, a provisional after the final) produces no action: it is not sent.
    pub fn on_event(&mut self, event: ServerEvent) -> Actions {
        match (self.state, event) {
            (State::Terminated, _) => actions![],

            (State::Proceeding, ServerEvent::Request { is_ack: false }) => {
                if self.responded {
                    actions![Action::TransmitResponse]
                } else {
                    actions![]
                }
            }
            (State::Proceeding, ServerEvent::TuResponse { status }) => self.on_tu_response(status),

            (State::Completed, ServerEvent::Request { is_ack: false }) => {
                actions![Action::TransmitResponse]
            }
            (State::Completed, ServerEvent::Request { is_ack: true }) => {
                let mut actions =
                    actions![Action::StopTimer(TimerId::G), Action::StopTimer(TimerId::H)];
                let i = self.config.get().timer_i(self.reliable);
                if i.is_zero() {
                    self.terminate(actions, Outcome::Completed)
                } else {
                    self.state = State::Confirmed;
                    actions.push(Action::StartTimer(TimerId::I, i));
                    actions
                }
            }
            (State::Completed, ServerEvent::Timer(TimerId::G)) => {
                self.timer_g = Interval::of(self.config.get().timer_g_next(self.timer_g.get()));
                actions![
                    Action::TransmitResponse,
                    Action::StartTimer(TimerId::G, self.timer_g.get()),
                ]
            }
            (State::Completed, ServerEvent::Timer(TimerId::H)) => {
                self.terminate(actions![], Outcome::Timeout)
            }

            (State::Confirmed, ServerEvent::Timer(TimerId::I)) => {
                self.terminate(actions![], Outcome::Completed)
            }

            // RFC 6026 7.1: retransmitted INVITEs are absorbed, ACKs go to the TU, and the TU's own
            // retransmissions of the 2xx are sent.
            (State::Accepted, ServerEvent::Request { is_ack: false }) => actions![],
            (State::Accepted, ServerEvent::Request { is_ack: true }) => actions![Action::PassToTu],
            (State::Accepted, ServerEvent::TuResponse { status }) => {
                match StatusClass::of(status) {
                    Some(StatusClass::Success) => actions![Action::TransmitResponse],
                    _ => actions![],
                }
            }
            (State::Accepted, ServerEvent::Timer(TimerId::L)) => {
                self.terminate(actions![], Outcome::Completed)
            }

            (_, ServerEvent::TransportError) => self.terminate(actions![], Outcome::TransportError),
            // An ACK in Proceeding, a request in Confirmed, a second final in Completed, a stale
            // timer, states an INVITE server never enters: nothing to do.
            _ => actions![],
        }
    }

    /// A response from the TU while Proceeding.
    fn on_tu_response(&mut self, status: u16) -> Actions {
        match StatusClass::of(status) {
            None => actions![],
            Some(StatusClass::Provisional) => {
                self.responded = true;
                actions![Action::TransmitResponse]
            }
            Some(StatusClass::Success) => {
                self.responded = true;
                self.state = State::Accepted;
                actions![
                    Action::TransmitResponse,
                    Action::StartTimer(TimerId::L, self.config.get().timer_l()),
                ]
            }
            Some(StatusClass::Failure) => {
                self.responded = true;
                self.state = State::Completed;
                let mut actions = actions![Action::TransmitResponse];
                if !self.reliable {
                    actions.push(Action::StartTimer(TimerId::G, self.timer_g.get()));
                }
                actions.push(Action::StartTimer(TimerId::H, self.config.get().timer_h()));
                actions
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
    use ServerEvent::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn udp() -> ServerInvite {
        let (m, a) = ServerInvite::new(TimerConfig::default(), false);
        assert_eq!(&*a, [PassToTu]);
        assert_eq!(m.state(), State::Proceeding);
        m
    }

    const INVITE: ServerEvent = Request { is_ack: false };
    const ACK: ServerEvent = Request { is_ack: true };

    #[test]
    fn retransmitted_invite_before_any_response_is_absorbed() {
        let mut m = udp();
        assert!(m.on_event(INVITE).is_empty());
    }

    #[test]
    fn retransmitted_invite_resends_last_provisional() {
        let mut m = udp();
        assert_eq!(&*m.on_event(TuResponse { status: 100 }), [TransmitResponse]);
        assert_eq!(&*m.on_event(TuResponse { status: 180 }), [TransmitResponse]);
        assert_eq!(&*m.on_event(INVITE), [TransmitResponse]);
        assert_eq!(m.state(), State::Proceeding);
    }

    #[test]
    fn timer_g_retransmits_non_2xx_until_timer_h() {
        let mut m = udp();
        assert_eq!(
            &*m.on_event(TuResponse { status: 486 }),
            [
                TransmitResponse,
                StartTimer(TimerId::G, ms(500)),
                StartTimer(TimerId::H, ms(32_000))
            ]
        );
        assert_eq!(m.state(), State::Completed);
        for next in [1000, 2000, 4000, 4000] {
            assert_eq!(
                &*m.on_event(Timer(TimerId::G)),
                [TransmitResponse, StartTimer(TimerId::G, ms(next))]
            );
        }
        assert_eq!(&*m.on_event(INVITE), [TransmitResponse]);
        // A second final from the TU is refused.
        assert!(m.on_event(TuResponse { status: 500 }).is_empty());
        assert_eq!(
            &*m.on_event(Timer(TimerId::H)),
            [Terminated(Outcome::Timeout)]
        );
    }

    #[test]
    fn ack_confirms_and_is_absorbed_until_timer_i() {
        let mut m = udp();
        m.on_event(TuResponse { status: 404 });
        assert_eq!(
            &*m.on_event(ACK),
            [
                StopTimer(TimerId::G),
                StopTimer(TimerId::H),
                StartTimer(TimerId::I, ms(5000))
            ]
        );
        assert_eq!(m.state(), State::Confirmed);
        assert!(m.on_event(ACK).is_empty());
        assert!(m.on_event(INVITE).is_empty());
        assert!(m.on_event(Timer(TimerId::G)).is_empty());
        assert_eq!(
            &*m.on_event(Timer(TimerId::I)),
            [Terminated(Outcome::Completed)]
        );
    }

    #[test]
    fn accepted_absorbs_invites_passes_acks_and_sends_core_2xx() {
        let mut m = udp();
        assert_eq!(
            &*m.on_event(TuResponse { status: 200 }),
            [TransmitResponse, StartTimer(TimerId::L, ms(32_000))]
        );
        assert_eq!(m.state(), State::Accepted);
        assert!(m.on_event(INVITE).is_empty());
        assert_eq!(&*m.on_event(TuResponse { status: 200 }), [TransmitResponse]);
        assert!(m.on_event(TuResponse { status: 486 }).is_empty());
        assert_eq!(&*m.on_event(ACK), [PassToTu]);
        assert_eq!(&*m.on_event(ACK), [PassToTu]);
        assert_eq!(
            &*m.on_event(Timer(TimerId::L)),
            [Terminated(Outcome::Completed)]
        );
    }

    #[test]
    fn reliable_transport_no_timer_g_and_timer_i_zero() {
        let (mut m, _) = ServerInvite::new(TimerConfig::default(), true);
        assert_eq!(
            &*m.on_event(TuResponse { status: 487 }),
            [TransmitResponse, StartTimer(TimerId::H, ms(32_000))]
        );
        assert_eq!(
            &*m.on_event(ACK),
            [
                StopTimer(TimerId::G),
                StopTimer(TimerId::H),
                Terminated(Outcome::Completed)
            ]
        );
    }

    #[test]
    fn transport_error_terminates() {
        let mut m = udp();
        m.on_event(TuResponse { status: 180 });
        assert_eq!(
            &*m.on_event(TransportError),
            [Terminated(Outcome::TransportError)]
        );
        assert!(m.is_terminated());
    }

    #[test]
    fn ack_in_proceeding_is_ignored() {
        let mut m = udp();
        assert!(m.on_event(ACK).is_empty());
        assert_eq!(m.state(), State::Proceeding);
    }
}
