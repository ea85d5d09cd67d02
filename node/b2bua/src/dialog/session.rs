//! The call's RFC 4028 session timer: what an answer negotiated, who refreshes, when a refresh is
//! due and when an unrefreshed session is torn down. The rules are plain functions (no clock, no
//! message); the handlers below only apply them to the call and schedule its timer messages.
//!
//! ```text
//! leg-B 2xx with Session-Expires ─► SessionTimer { interval, we_refresh }   (kept in the record)
//!   we_refresh (the caller asked for no timer, the gateway did not take the duty):
//!     every interval/2 ─► UPDATE(Session-Expires) on leg B ─┬─ 2xx ─► refreshed
//!                                                             ├─ 422 Min-SE ─► interval raised, again at once
//!                                                             └─ 408 / 481 / no answer ─► BYE both legs (§10)
//!   always: a 2xx to a relayed re-INVITE / UPDATE, or to our refresh, refreshes the session;
//!   none by interval − min(32 s, interval/3) ─► BYE both legs (§10)
//! ```
//! A call rebuilt on another node keeps its timer (its record) and, when it refreshes, refreshes
//! at once: the old owner's last refresh is unknown.

use std::time::Duration;

use medpool_sip::message::headers::{Refresher, SessionExpires};
use medpool_sip::transaction::{ClientKey, Outcome};
use medpool_sip::{HeaderName, SipMessage, ids};
use ractor::ActorRef;
use tokio::time::Instant;

use super::call::{Call, SessionTimer};
use super::msg::{DialogMsg, Phase};
use crate::cluster::SessionTimerRecord;
use crate::txlayer::{Envelope, Side};

/// The floor of a session interval the node acts on: a peer's smaller value is taken as this
/// (RFC 4028 §4 puts the floor of Min-SE at 90 s; a gateway may still answer less, and the node
/// follows the peers' choice down to here rather than refresh in a storm).
pub(super) const MIN_INTERVAL: u32 = 2;

impl From<SessionTimerRecord> for SessionTimer {
    fn from(r: SessionTimerRecord) -> Self {
        SessionTimer {
            interval: r.interval.max(MIN_INTERVAL),
            we_refresh: r.we_refresh,
        }
    }
}

impl From<SessionTimer> for SessionTimerRecord {
    fn from(t: SessionTimer) -> Self {
        SessionTimerRecord {
            interval: t.interval,
            we_refresh: t.we_refresh,
        }
    }
}

/// The timer a leg-B 2xx sets up. `caller_asked`: the caller's INVITE carried Session-Expires (the
/// timer is end to end: the peers refresh through the call). Without Session-Expires in the answer
/// there is no timer (RFC 4028 §7.2). Otherwise the node refreshes unless the caller asked or the
/// gateway took the duty (`refresher=uas`; a missing refresher leaves it with us, the UAC).
pub(super) fn negotiated(
    caller_asked: bool,
    answer: Option<SessionExpires>,
) -> Option<SessionTimer> {
    let se = answer?;
    Some(SessionTimer {
        interval: se.delta.max(MIN_INTERVAL),
        we_refresh: !caller_asked && se.refresher != Some(Refresher::Uas),
    })
}

/// How often the refresher refreshes: half the interval (RFC 4028 §10).
pub(super) fn refresh_every(interval: u32) -> Duration {
    Duration::from_secs(u64::from(interval.max(MIN_INTERVAL) / 2))
}

/// How long after a refresh the session is torn down when no other came: the interval minus the
/// smaller of 32 s and a third of it (RFC 4028 §10).
pub(super) fn expires_after(interval: u32) -> Duration {
    let interval = u64::from(interval.max(MIN_INTERVAL));
    Duration::from_secs(interval - (interval / 3).min(32))
}

/// The interval to ask for again after a 422 whose Min-SE is `min_se`, when the refused request
/// asked for `asked`: the larger of the two. None when the 422 asks for nothing larger (retrying
/// would only be refused again).
pub(super) fn raised(asked: u32, min_se: u32) -> Option<u32> {
    (min_se > asked).then_some(min_se)
}

impl Call {
    /// The leg-B answer set the call's timer up (or none): the session counts from now.
    pub(super) fn session_answered(&mut self, answer: &SipMessage) {
        let caller_asked = self
            .a_invite
            .as_ref()
            .is_some_and(|a| a.msg.session_expires().is_some());
        self.session = negotiated(caller_asked, answer.session_expires().and_then(Result::ok));
        if let Some(t) = self.session {
            self.session_deadline = Some(Instant::now() + expires_after(t.interval));
        }
    }

    /// The call is confirmed (or rebuilt here): the refreshes and the expiry watch start.
    /// `at_once`: refresh now (a rebuilt call, whose last refresh is unknown), else at half the
    /// interval.
    pub(super) fn start_session_timer(&mut self, myself: &ActorRef<DialogMsg>, at_once: bool) {
        let Some(t) = self.session else { return };
        if self.session_deadline.is_none() {
            self.session_deadline = Some(Instant::now() + expires_after(t.interval));
        }
        if t.we_refresh {
            let first = if at_once {
                Duration::ZERO
            } else {
                refresh_every(t.interval)
            };
            self.after(myself, first, || DialogMsg::SessionRefresh);
        }
        self.arm_session_check(myself);
    }

    fn arm_session_check(&mut self, myself: &ActorRef<DialogMsg>) {
        if self.session_check_armed {
            return;
        }
        if let Some(deadline) = self.session_deadline {
            self.session_check_armed = true;
            let wait = deadline.saturating_duration_since(Instant::now());
            self.after(myself, wait, || DialogMsg::SessionCheck);
        }
    }

    /// A refresh succeeded (a 2xx to a relayed re-INVITE or UPDATE, or to our own refresh): the
    /// session counts from now, with the interval the 2xx names, if any.
    pub(super) fn session_refreshed(&mut self, answer: &SipMessage) {
        let Some(mut t) = self.session else { return };
        if let Some(Ok(se)) = answer.session_expires() {
            let interval = se.delta.max(MIN_INTERVAL);
            if interval != t.interval {
                t.interval = interval;
                self.session = Some(t);
                self.record_changed();
            }
        }
        self.session_deadline = Some(Instant::now() + expires_after(t.interval));
    }

    /// Sends our refresh on leg B: an UPDATE with Session-Expires naming us (the UAC of it) as
    /// refresher.
    fn send_refresh(&mut self) {
        let Some(t) = self.session else { return };
        let Some(b) = self.confirmed_b() else { return };
        let mut leg = b.leg.clone();
        leg.local_cseq += 1;
        let cseq = leg.local_cseq;
        let branch = ids::new_branch(self.shard);
        let mut req = leg.request(&self.ctx.me, b"UPDATE", cseq, &branch);
        req.header(
            HeaderName::Contact,
            self.ctx
                .me
                .on(leg.local_port)
                .contact(leg.transport)
                .as_bytes(),
        );
        req.header_fmt(
            HeaderName::SessionExpires,
            format_args!("{};refresher=uac", t.interval),
        );
        req.header_fmt(
            HeaderName::MinSe,
            format_args!("{}", self.session_min_se.min(t.interval)),
        );
        req.header(HeaderName::Supported, b"timer");
        if let Some(cur) = self.leg_mut(Side::B) {
            cur.local_cseq = cseq;
        }
        self.session_refresh_key = self.send_request(Side::B, req.build());
    }
}

/// The refresh is due: we refresh leg B, and the next one is scheduled.
pub(super) fn on_session_refresh(st: &mut Call, myself: &ActorRef<DialogMsg>) {
    if st.phase != Phase::Confirmed {
        return;
    }
    let Some(t) = st.session.filter(|t| t.we_refresh) else {
        return;
    };
    st.send_refresh();
    st.after(myself, refresh_every(t.interval), || {
        DialogMsg::SessionRefresh
    });
}

/// The expiry watch fired: a session not refreshed in time is torn down (BYE on both legs);
/// otherwise the watch waits for the new deadline.
pub(super) fn on_session_check(st: &mut Call, myself: &ActorRef<DialogMsg>) {
    st.session_check_armed = false;
    if !matches!(st.phase, Phase::Confirmed | Phase::Answered) || st.session.is_none() {
        return;
    }
    match st.session_deadline {
        Some(deadline) if Instant::now() >= deadline => {
            tracing::debug!(parent: &st.span, "session expired without a refresh: hanging up");
            st.history
                .push(("session timer".into(), "expired without refresh".into()));
            st.bye_all(myself, None);
        }
        _ => st.arm_session_check(myself),
    }
}

/// An answer to our refresh (true when `key` is one): a 2xx refreshes; a 422 raises the interval
/// to its Min-SE and refreshes again at once; 408 or 481 ends the call (RFC 4028 §10); anything
/// else leaves it to the expiry watch.
pub(super) fn on_refresh_response(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    key: &ClientKey,
    status: u16,
    env: &Envelope,
) -> bool {
    if st.session_refresh_key.as_ref() != Some(key) {
        return false;
    }
    if status < 200 {
        return true;
    }
    st.session_refresh_key = None;
    match status {
        200..=299 => st.session_refreshed(&env.msg),
        422 => {
            let min_se = env.msg.min_se().and_then(Result::ok);
            if let (Some(mut t), Some(min_se)) = (st.session, min_se)
                && let Some(interval) = raised(t.interval, min_se)
            {
                t.interval = interval;
                st.session = Some(t);
                st.session_min_se = st.session_min_se.max(min_se);
                st.record_changed();
                st.send_refresh();
            }
        }
        408 | 481 => refresh_failed(st, myself, status),
        _ => {}
    }
    true
}

/// Our refresh's transaction ended without an answer (true when `key` is one): the call ends.
pub(super) fn on_refresh_ended(
    st: &mut Call,
    myself: &ActorRef<DialogMsg>,
    key: &ClientKey,
    outcome: Outcome,
) -> bool {
    if st.session_refresh_key.as_ref() != Some(key) {
        return false;
    }
    st.session_refresh_key = None;
    if outcome != Outcome::Completed {
        refresh_failed(st, myself, 408);
    }
    true
}

fn refresh_failed(st: &mut Call, myself: &ActorRef<DialogMsg>, status: u16) {
    if st.phase == Phase::Ending {
        return;
    }
    st.history
        .push(("session timer".into(), format!("refresh failed ({status})")));
    st.bye_all(myself, None);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn se(delta: u32, refresher: Option<Refresher>) -> Option<SessionExpires> {
        Some(SessionExpires { delta, refresher })
    }

    #[test]
    fn we_refresh_only_a_timer_the_caller_did_not_ask_for_and_the_gateway_did_not_take() {
        let us = |interval| {
            Some(SessionTimer {
                interval,
                we_refresh: true,
            })
        };
        let peer = |interval| {
            Some(SessionTimer {
                interval,
                we_refresh: false,
            })
        };
        assert_eq!(negotiated(false, se(1800, Some(Refresher::Uac))), us(1800));
        assert_eq!(negotiated(false, se(1800, None)), us(1800));
        assert_eq!(
            negotiated(false, se(1800, Some(Refresher::Uas))),
            peer(1800)
        );
        assert_eq!(negotiated(true, se(1800, Some(Refresher::Uac))), peer(1800));
        assert_eq!(negotiated(true, se(90, Some(Refresher::Uas))), peer(90));
        assert_eq!(
            negotiated(false, None),
            None,
            "no Session-Expires: no timer"
        );
        assert_eq!(negotiated(false, se(0, None)), us(MIN_INTERVAL));
    }

    #[test]
    fn the_session_ends_at_the_interval_minus_the_smaller_of_32_s_and_a_third() {
        assert_eq!(expires_after(1800), Duration::from_secs(1768));
        assert_eq!(expires_after(90), Duration::from_secs(60));
        assert_eq!(expires_after(6), Duration::from_secs(4));
        assert_eq!(refresh_every(1800), Duration::from_secs(900));
        assert_eq!(refresh_every(90), Duration::from_secs(45));
        // Always refreshed before it would be torn down.
        for i in MIN_INTERVAL..4000 {
            assert!(refresh_every(i) < expires_after(i), "interval {i}");
        }
    }

    #[test]
    fn a_422_raises_the_interval_only_when_it_asks_for_more() {
        assert_eq!(raised(90, 180), Some(180));
        assert_eq!(raised(180, 180), None);
        assert_eq!(raised(1800, 90), None);
    }
}
