//! The new-call INVITEs this node received from the network and forwarded to their shard's owner,
//! until their final answer comes back through it ([`RelayedInvites`]). Three things read them:
//! a shutdown waits for them (the owner's answers leave from this node); only the first copy of
//! one is answered 100 Trying here (a 100 for a retransmission could follow the owner's 180); and
//! one whose caller this node answered 100 (forwarded marked `trying_sent`) is kept whole until
//! the owner's first answer, so that it can be fed again when the stream to its owner broke
//! ([`RelayedInvites::lost_to`]): its caller, answered 100, does not retransmit it, so this node
//! does, as a stateful proxy that sent 100 owns the INVITE's next hop (RFC 3261 §16.6, §17.1.1).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use medpool_sip::transaction::FastMap;
use medpool_sip::transport::{Inbound, Transport, tls::PeerTls};
use medpool_sip::{Method, SipMessage};
use tokio::time::Instant;

/// How long a forwarded new-call INVITE is waited for at most (Timer B).
pub(crate) const RELAY_WAIT_MAX: Duration = Duration::from_secs(32);
/// How many forwarded INVITEs are tracked at most (beyond that, the older ones are not waited for).
const RELAY_TRACK_MAX: usize = 16_384;

/// A forwarded INVITE whose caller this node answered 100, kept until the owner's first answer.
#[derive(Debug, Clone)]
pub(crate) struct Kept {
    /// The node it was last forwarded to.
    pub owner: u64,
    /// Its bytes as received.
    pub bytes: Bytes,
    /// Where it came from, and how.
    pub source: SocketAddr,
    pub transport: Transport,
    pub tls: Option<Arc<PeerTls>>,
    /// It passed this node's door checks (medpool-sip's screen).
    pub checked: bool,
    /// How many times owners sent it back or it was fed again already.
    pub bounces: u32,
}

impl Kept {
    /// What `inb`, forwarded to `owner` after `bounces` returns, is kept as.
    pub(crate) fn of(inb: &Inbound, owner: u64, bounces: u32) -> Kept {
        Kept {
            owner,
            bytes: inb.msg.bytes(),
            source: inb.source,
            transport: inb.transport,
            tls: inb.tls.clone(),
            checked: inb.msg.is_checked(),
            bounces,
        }
    }
    /// The message again, as it came in (`None`: it no longer parses, which cannot be for bytes
    /// that parsed when they came in).
    pub(crate) fn inbound(&self) -> Option<Inbound> {
        let mut msg = SipMessage::parse(self.bytes.clone()).ok()?;
        if self.checked {
            msg.vouched_checked();
        }
        Some(Inbound {
            msg,
            source: self.source,
            transport: self.transport,
            tls: self.tls.clone(),
        })
    }
}

#[derive(Debug)]
struct Entry {
    at: Instant,
    kept: Option<Kept>,
}

/// The forwarded new-call INVITEs still waiting for their final answer (branch → entry).
#[derive(Debug, Default)]
pub(crate) struct RelayedInvites {
    inner: std::sync::Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    pending: FastMap<Vec<u8>, Entry>,
    /// Entries holding a [`Kept`] (a provisional answer is read only while some do).
    kept: usize,
}

impl Table {
    fn disarm(&mut self, branch: &[u8]) -> Option<Kept> {
        let kept = self.pending.get_mut(branch)?.kept.take();
        if kept.is_some() {
            self.kept = self.kept.saturating_sub(1);
        }
        kept
    }
    fn recount(&mut self) {
        self.kept = self.pending.values().filter(|e| e.kept.is_some()).count();
    }
}

impl RelayedInvites {
    /// Notes a message forwarded to its owner: a new-call INVITE is tracked (with `kept`, when its
    /// caller was answered 100 here). True when it is the first copy seen here (not a
    /// retransmission, or a copy fed again, of one still waiting for its final answer).
    pub(crate) fn note(&self, msg: &SipMessage, kept: impl FnOnce() -> Option<Kept>) -> bool {
        if msg.method() != Some(Method::Invite) || msg.to_tag().is_some() {
            return false;
        }
        let Some(branch) = msg.top_branch() else {
            return false;
        };
        let Ok(mut t) = self.inner.lock() else {
            return false;
        };
        if t.pending.len() >= RELAY_TRACK_MAX {
            t.pending.retain(|_, e| e.at.elapsed() < RELAY_WAIT_MAX);
            if t.pending.len() >= RELAY_TRACK_MAX / 2 {
                // That many calls in set-up through one node: stop tracking the older ones
                // rather than sweep the table on every new call.
                t.pending.clear();
            }
            t.recount();
        }
        let kept = kept();
        let added = usize::from(kept.is_some());
        match t.pending.get_mut(branch) {
            Some(e) => {
                let had = usize::from(e.kept.is_some());
                // A retransmission or a copy fed again: kept (again) for where it went now.
                if kept.is_some() {
                    e.kept = kept;
                }
                let has = usize::from(e.kept.is_some());
                t.kept = t.kept + has - had;
                false
            }
            None => {
                t.pending.insert(
                    branch.to_vec(),
                    Entry {
                        at: Instant::now(),
                        kept,
                    },
                );
                t.kept += added;
                true
            }
        }
    }

    /// Notes an answer the owner asked this node to send: a final answer ends the wait for its
    /// INVITE (true: one was waited for); any answer means the owner has the INVITE, which is no
    /// longer kept to be fed again.
    pub(crate) fn answered(&self, bytes: &Bytes) -> bool {
        // A provisional answer is told by its status line; it is parsed (for its branch) only
        // while some INVITE is kept, and never under the lock.
        let provisional = is_provisional(bytes);
        let nothing_to_learn = self.inner.lock().map_or(true, |t| {
            t.pending.is_empty() || (provisional && t.kept == 0)
        });
        if nothing_to_learn {
            return false;
        }
        let Ok(m) = SipMessage::parse(bytes.clone()) else {
            return false;
        };
        let (Some(status), Some(branch)) = (m.status(), m.top_branch()) else {
            return false;
        };
        let Ok(mut t) = self.inner.lock() else {
            return false;
        };
        t.disarm(branch);
        status >= 200 && t.pending.remove(branch).is_some()
    }

    /// Takes out the INVITEs kept whose last forward went to `peer` (the stream to it broke: they
    /// may be lost), to be fed again; each is kept again when it is forwarded again.
    pub(crate) fn lost_to(&self, peer: u64) -> Vec<Kept> {
        let Ok(mut t) = self.inner.lock() else {
            return Vec::new();
        };
        let mut lost = Vec::new();
        for e in t.pending.values_mut() {
            if e.kept.as_ref().is_some_and(|k| k.owner == peer) {
                lost.extend(e.kept.take());
            }
        }
        t.kept = t.kept.saturating_sub(lost.len());
        lost
    }

    /// Lets go of what is kept of `msg` (it came back to this node to be fed again: it is kept
    /// again when it is forwarded again).
    pub(crate) fn release(&self, msg: &SipMessage) {
        if let (Some(branch), Ok(mut t)) = (msg.top_branch(), self.inner.lock())
            && t.kept > 0
        {
            t.disarm(branch);
        }
    }

    /// Whether the INVITE `msg` (by its top branch) was forwarded from here and is still waited
    /// for: a retransmission of it follows its first copy to the same owner rather than start a
    /// second call here.
    pub(crate) fn holds(&self, msg: &SipMessage) -> bool {
        let Some(branch) = msg.top_branch() else {
            return false;
        };
        self.inner.lock().is_ok_and(|t| {
            t.pending
                .get(branch)
                .is_some_and(|e| e.at.elapsed() < RELAY_WAIT_MAX)
        })
    }

    /// How many are waited for (those older than Timer B are forgotten).
    pub(crate) fn pending(&self) -> usize {
        let Ok(mut t) = self.inner.lock() else {
            return 0;
        };
        t.pending.retain(|_, e| e.at.elapsed() < RELAY_WAIT_MAX);
        t.recount();
        t.pending.len()
    }

    /// When the oldest one waited for is forgotten.
    pub(crate) fn expiry(&self) -> Option<Instant> {
        let t = self.inner.lock().ok()?;
        t.pending
            .values()
            .map(|e| e.at)
            .min()
            .map(|at| at + RELAY_WAIT_MAX)
    }

    /// How many INVITEs are kept to be fed again (for tests and metrics).
    pub fn kept(&self) -> usize {
        self.inner.lock().map_or(0, |t| t.kept)
    }
}

/// Whether `bytes` is a SIP response with a 1xx status, read from its status line alone
/// (`SIP/2.0 1xx ...`); anything else (a final answer, a request, garbage) is not.
pub(crate) fn is_provisional(bytes: &[u8]) -> bool {
    bytes
        .strip_prefix(b"SIP/2.0 ")
        .and_then(|rest| rest.first())
        .is_some_and(|c| *c == b'1')
}

#[cfg(test)]
mod tests {
    use super::*;
    use medpool_sip::HeaderName;
    use medpool_sip::message::builder::MessageBuilder;

    fn invite(branch: &str) -> SipMessage {
        let mut b = MessageBuilder::request_method(Method::Invite, b"sip:+15550100@127.0.0.1");
        b.header(
            HeaderName::Via,
            format!("SIP/2.0/UDP 127.0.0.9:5060;branch=z9hG4bK{branch}").as_bytes(),
        )
        .header(HeaderName::From, b"<sip:a@x>;tag=f")
        .header(HeaderName::To, b"<sip:b@x>")
        .header(HeaderName::CallId, branch.as_bytes())
        .header(HeaderName::CSeq, b"1 INVITE");
        SipMessage::parse(b.build()).unwrap()
    }

    fn answer(status: u16, branch: &str) -> Bytes {
        Bytes::from(format!(
            "SIP/2.0 {status} X\r\nVia: SIP/2.0/UDP 127.0.0.9:5060;branch=z9hG4bK{branch}\r\n\
             From: <sip:a@x>;tag=f\r\nTo: <sip:b@x>;tag=t\r\nCall-ID: {branch}\r\n\
             CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    fn kept(msg: &SipMessage, owner: u64) -> Kept {
        let inb = Inbound {
            msg: msg.clone(),
            source: "127.0.0.9:5060".parse().unwrap(),
            transport: Transport::Udp,
            tls: None,
        };
        Kept::of(&inb, owner, 0)
    }

    #[tokio::test]
    async fn a_kept_invite_is_given_back_for_its_owner_until_the_owner_answers() {
        let r = RelayedInvites::default();
        let (a, b) = (invite("a"), invite("b"));
        assert!(r.note(&a, || Some(kept(&a, 2))));
        assert!(r.note(&b, || Some(kept(&b, 3))));
        assert!(
            !r.note(&a, || Some(kept(&a, 2))),
            "a retransmission is no first copy"
        );
        assert_eq!(r.kept(), 2);
        assert!(r.lost_to(1).is_empty(), "nothing was forwarded to node 1");
        let lost = r.lost_to(2);
        assert_eq!(lost.len(), 1);
        assert_eq!(
            lost[0].inbound().unwrap().msg.call_id().unwrap().unwrap(),
            b"a"
        );
        assert!(
            r.lost_to(2).is_empty(),
            "given back twice before it was forwarded again"
        );
        // Forwarded again (to node 2 still), then node 3's 180 comes back for b.
        assert!(!r.note(&a, || Some(kept(&a, 2))));
        assert!(
            !r.answered(&answer(180, "b")),
            "a provisional answer ends no wait"
        );
        assert!(
            r.lost_to(3).is_empty(),
            "an INVITE its owner answered is not fed again"
        );
        assert_eq!(r.kept(), 1);
        assert_eq!(r.pending(), 2, "both still wait for their final answer");
        assert!(r.answered(&answer(200, "a")));
        assert!(r.answered(&answer(486, "b")));
        assert_eq!((r.pending(), r.kept()), (0, 0));
    }

    #[tokio::test]
    async fn an_unmarked_invite_is_waited_for_but_not_kept() {
        let r = RelayedInvites::default();
        let a = invite("u");
        assert!(r.note(&a, || None));
        assert_eq!((r.pending(), r.kept()), (1, 0));
        assert!(r.lost_to(2).is_empty());
        assert!(!r.answered(&answer(100, "u")));
        assert!(r.answered(&answer(503, "u")));
    }

    #[test]
    fn only_a_1xx_status_line_is_provisional() {
        assert!(is_provisional(b"SIP/2.0 100 Trying\r\n\r\n"));
        assert!(is_provisional(b"SIP/2.0 180 Ringing\r\n\r\n"));
        assert!(!is_provisional(b"SIP/2.0 200 OK\r\n\r\n"));
        assert!(!is_provisional(b"SIP/2.0 486 Busy Here\r\n\r\n"));
        assert!(!is_provisional(b"INVITE sip:1@x SIP/2.0\r\n\r\n"));
        assert!(!is_provisional(b""));
    }
}
