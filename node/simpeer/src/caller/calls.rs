//! A caller's calls, each a sequence of transactions: the first INVITE (its outcome recorded, the
//! dialog its 2xx creates kept), and a re-INVITE or BYE in the dialog (a re-INVITE that meets glare
//! sent again).

use std::sync::Arc;
use std::time::Duration;

use medpool_sip::message::builder::MessageBuilder;
use medpool_sip::{HeaderName, Method};

use super::state::{Dialog, Inner, TimedOut, lock};
use crate::ledger::Outcome;
use crate::rtp::{Role, RtpLeg};
use crate::sdp;

impl Inner {
    /// Sends the first INVITE of call `index` and records the outcome.
    pub(super) async fn setup(self: Arc<Self>, index: usize) -> bool {
        let (call_id, from_tag) = {
            let mut calls = lock(&self.calls);
            let Some(c) = calls.list.get_mut(index) else {
                return false;
            };
            c.cseq = 1;
            c.sdp_version = 1;
            (c.record.call_id.clone(), c.from_tag.clone())
        };
        if self.cfg.rtp {
            let token = self.cfg.seed.rotate_left(17)
                ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                | 1;
            match RtpLeg::start(self.local.ip(), Role::Source, Some(token)).await {
                Ok(leg) => {
                    if let Some(c) = lock(&self.calls).list.get_mut(index) {
                        c.rtp = Some(Arc::new(leg));
                    }
                }
                Err(e) => tracing::warn!("caller: no RTP leg for call {index}: {e}"),
            }
        }
        let target = self.cfg.target;
        let ruri = self.sock.uri(&self.cfg.called, target);
        let branch = self.branch(index, 1, "i");
        let mut b = MessageBuilder::request_method(Method::Invite, ruri.as_bytes());
        b.header(HeaderName::Via, &self.via(&branch))
            .header(HeaderName::MaxForwards, b"70")
            .header(HeaderName::From, &self.our_from(&from_tag))
            .header_fmt(HeaderName::To, format_args!("<{ruri}>"))
            .header(HeaderName::CallId, call_id.as_bytes())
            .header(HeaderName::CSeq, b"1 INVITE")
            .header(HeaderName::Contact, &self.contact())
            .body(sdp::CONTENT_TYPE, self.offer(index, 1));
        let outcome = self.transact(&branch, b.build(), target, true).await;
        let mut answered_by = None;
        let (result, ack) = match outcome {
            Ok((resp, from)) => {
                let retry_after = resp
                    .header(HeaderName::RetryAfter)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|v| v.parse().ok());
                answered_by = Some((from, retry_after));
                let status = resp.status().unwrap_or(0);
                if (200..300).contains(&status) {
                    self.media_answered(index, resp.body());
                    let dialog = Dialog::from_2xx(&resp, target);
                    let ack = self.ack_2xx(&call_id, &from_tag, &dialog, 1, index);
                    let far_tag = resp
                        .to_tag()
                        .map(|t| String::from_utf8_lossy(t).into_owned());
                    let mut calls = lock(&self.calls);
                    if let Some(c) = calls.list.get_mut(index) {
                        c.dialog = Some(dialog);
                        c.record.far_tag = far_tag;
                    }
                    (Outcome::Final(status), Some(ack))
                } else {
                    let ack = self.ack_non_2xx(&resp, ruri.as_bytes(), &branch, 1, target);
                    (Outcome::Final(status), Some(ack))
                }
            }
            Err(TimedOut) => (Outcome::Unknown, None),
        };
        if let Some((bytes, dest)) = &ack {
            let _ = self.sock.send_to(bytes, *dest).await;
        }
        let mut calls = lock(&self.calls);
        if let Some(c) = calls.list.get_mut(index) {
            c.record.setup = Some(result);
            c.record.setup_answered_by = answered_by;
            c.last_ack = ack.map(|(b, d)| (1, b, d));
        }
        result.is_success()
    }

    /// Sends a re-INVITE or a BYE in call `index`'s dialog and records the outcome. A re-INVITE
    /// answered 491 (glare: the far side's own re-INVITE crossed it, e.g. a new anchor's after a
    /// failover) is sent again, as RFC 3261 §14.1 says for the Call-ID's owner, after 2.1-4 s,
    /// twice at most.
    pub(super) async fn in_dialog(self: Arc<Self>, index: usize, method: Method) -> bool {
        let mut tries: u64 = 0;
        loop {
            let (ok, status) = Arc::clone(&self).in_dialog_once(index, method).await;
            if method != Method::Invite || status != Some(491) || tries >= 2 {
                return ok;
            }
            tries += 1;
            let spread =
                (self.cfg.seed ^ (index as u64) << 8 ^ tries).wrapping_mul(0x9e37_79b9) % 1900;
            tokio::time::sleep(Duration::from_millis(2100 + spread)).await;
        }
    }

    /// One in-dialog transaction; returns whether it got a 2xx and the final status.
    async fn in_dialog_once(self: Arc<Self>, index: usize, method: Method) -> (bool, Option<u16>) {
        let (call_id, from_tag, dialog, cseq, version) = {
            let mut calls = lock(&self.calls);
            let Some(c) = calls.list.get_mut(index) else {
                return (false, None);
            };
            let Some(d) = c.dialog.clone() else {
                return (false, None);
            };
            c.cseq += 1;
            if method == Method::Invite {
                c.sdp_version += 1;
            }
            (
                c.record.call_id.clone(),
                c.from_tag.clone(),
                d,
                c.cseq,
                c.sdp_version,
            )
        };
        if method == Method::Bye {
            // A UA stops its media when it hangs up.
            self.media_ended(index);
        }
        let kind = if method == Method::Invite { "r" } else { "b" };
        let branch = self.branch(index, cseq, kind);
        let mut b = self.dialog_request(method, &dialog, &branch, &call_id, &from_tag, cseq);
        if method == Method::Invite {
            b.header(HeaderName::Contact, &self.contact())
                .body(sdp::CONTENT_TYPE, self.offer(index, version));
        }
        let outcome = self
            .transact(&branch, b.build(), dialog.dest, method == Method::Invite)
            .await;
        let mut ack = None;
        let result = match outcome {
            Ok((resp, _)) => {
                let status = resp.status().unwrap_or(0);
                if method == Method::Invite && (200..300).contains(&status) {
                    self.media_answered(index, resp.body());
                }
                if method == Method::Invite {
                    ack = Some(if (200..300).contains(&status) {
                        self.ack_2xx(&call_id, &from_tag, &dialog, cseq, index)
                    } else {
                        self.ack_non_2xx(&resp, &dialog.remote_target, &branch, cseq, dialog.dest)
                    });
                }
                Outcome::Final(status)
            }
            Err(TimedOut) => Outcome::Unknown,
        };
        if let Some((bytes, dest)) = &ack {
            let _ = self.sock.send_to(bytes, *dest).await;
        }
        let mut calls = lock(&self.calls);
        if let Some(c) = calls.list.get_mut(index) {
            if method == Method::Invite {
                c.record.reinvite = Some(result);
                if let Some((b, d)) = ack {
                    c.last_ack = Some((cseq, b, d));
                }
            } else {
                c.record.bye = Some(result);
            }
        }
        let status = match result {
            Outcome::Final(s) => Some(s),
            Outcome::Unknown => None,
        };
        (result.is_success(), status)
    }
}
