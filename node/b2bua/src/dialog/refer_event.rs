//! REFER's implicit subscription across the two legs, pure. A NOTIFY names the REFER it reports
//! on with `Event: refer;id=<CSeq of that REFER>` (RFC 3515 §2.4.6) — a CSeq of the NOTIFY's own
//! leg. The B2BUA relays the REFER with the far leg's CSeq, so the NOTIFY coming back must name
//! the CSeq the REFER had on the leg it is relayed to; relayed unchanged, the REFER's sender finds
//! no such subscription and answers 481 (baresip does).
//!
//! The call keeps the last [`MAX_REFERS`] relayed REFERs as [`ReferIds`]; a NOTIFY whose id is
//! none of them (or that has no id: the first REFER of a dialog may be reported without one) is
//! relayed as it came.

use crate::txlayer::Side;

/// REFERs remembered per call (a call sees one or two; the oldest is forgotten first).
pub(crate) const MAX_REFERS: usize = 8;

/// One relayed REFER.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ReferIds {
    /// The side its NOTIFYs come from (the side the REFER was relayed to).
    pub(crate) notifier: Side,
    /// The REFER's CSeq on the notifier's leg (what its NOTIFYs name).
    pub(crate) there: u32,
    /// The REFER's CSeq on the other leg, where it came from (what its NOTIFYs must name there).
    pub(crate) here: u32,
}

/// Remembers a relayed REFER, forgetting the oldest beyond [`MAX_REFERS`].
pub(crate) fn remember(refers: &mut Vec<ReferIds>, ids: ReferIds) {
    refers.push(ids);
    if refers.len() > MAX_REFERS {
        refers.remove(0);
    }
}

/// The `id` of an `Event: refer;id=N` value; `None` for another package or without an id.
pub(crate) fn refer_id(event: &[u8]) -> Option<u32> {
    let text = std::str::from_utf8(event).ok()?;
    let mut parts = text.split(';');
    if !parts.next()?.trim().eq_ignore_ascii_case("refer") {
        return None;
    }
    parts.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("id")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// The Event value a NOTIFY from `from` carries on to the other leg, when it must change: its
/// `id` replaced by the REFER's CSeq on the other leg (other parameters kept in order).
pub(crate) fn renumbered(refers: &[ReferIds], from: Side, event: &[u8]) -> Option<Vec<u8>> {
    let id = refer_id(event)?;
    let ids = refers
        .iter()
        .rev()
        .find(|r| r.notifier == from && r.there == id)?;
    let text = std::str::from_utf8(event).ok()?;
    let parts: Vec<String> = text
        .split(';')
        .enumerate()
        .map(|(i, p)| match p.split_once('=') {
            Some((name, _)) if i > 0 && name.trim().eq_ignore_ascii_case("id") => {
                format!("{}={}", name.trim(), ids.here)
            }
            _ => p.trim().to_owned(),
        })
        .collect();
    Some(parts.join(";").into_bytes())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use medpool_sip::{HeaderName, Method, SipMessage};

    use super::*;
    use crate::testkit::{
        CONFIG, Expect, GW1, NODE, PBX, PeerDialog, TestNode, answer, in_dialog, invite,
    };

    /// `msg` (no body) with `extra` header lines added.
    fn with_headers(msg: Bytes, extra: &str) -> Bytes {
        let text = String::from_utf8(msg.to_vec()).unwrap();
        Bytes::from(text.replacen("\r\n\r\n", &format!("\r\n{extra}\r\n\r\n"), 1))
    }

    /// The gateway (bob, behind gw1) transfers the caller: its REFER (CSeq 40 on leg B) reaches
    /// the caller with leg A's CSeq; the caller's NOTIFY names that CSeq, and reaches the gateway
    /// naming 40 — found live with baresip, which answered the NOTIFY 481 when it named leg A's.
    #[tokio::test(start_paused = true)]
    async fn a_refers_notify_reaches_the_referrer_naming_its_own_cseq() {
        let config = CONFIG.replace("name = \"gw1\"\n", "name = \"gw1\"\nrefer = \"pass\"\n");
        let mut node = TestNode::with(&config, None).await;
        node.receive(invite("rf-1"), PBX).await;
        let inv_b = node.expect(GW1, Expect::Request(Method::Invite)).await;
        let ok_b = SipMessage::parse(answer(&inv_b, 200, "g1", GW1, &[])).unwrap();
        node.receive(ok_b.bytes().clone(), GW1).await;
        let ok = node.expect(PBX, Expect::Status(200)).await;
        let caller = PeerDialog {
            from: ok.header(HeaderName::From).unwrap(),
            to: ok.header(HeaderName::To).unwrap(),
            call_id: ok.call_id().unwrap().unwrap(),
        };
        node.receive(
            in_dialog(
                Method::Ack,
                &format!("sip:{NODE}"),
                PBX,
                "z9hG4bK-ack",
                &caller,
                1,
            ),
            PBX,
        )
        .await;
        node.expect(GW1, Expect::Request(Method::Ack)).await;

        let gateway = PeerDialog {
            from: ok_b.header(HeaderName::To).unwrap(),
            to: ok_b.header(HeaderName::From).unwrap(),
            call_id: ok_b.call_id().unwrap().unwrap(),
        };
        let refer = in_dialog(
            Method::Refer,
            &format!("sip:{NODE}"),
            GW1,
            "z9hG4bK-r",
            &gateway,
            40,
        );
        let refer = with_headers(refer, &format!("Refer-To: <sip:300@{NODE}>"));
        node.receive(refer, GW1).await;
        let refer_a = node.expect(PBX, Expect::Request(Method::Refer)).await;
        let a_seq = refer_a.cseq().unwrap().unwrap().seq;
        assert_ne!(a_seq, 40, "leg A's own CSeq");
        node.receive(answer(&refer_a, 202, "a-rf-1", PBX, &[]), PBX)
            .await;
        node.expect(GW1, Expect::Status(202)).await;

        let notify = in_dialog(
            Method::Notify,
            &format!("sip:{NODE}"),
            PBX,
            "z9hG4bK-n",
            &caller,
            2,
        );
        let notify = with_headers(
            notify,
            &format!("Event: refer;id={a_seq}\r\nSubscription-State: active;expires=60"),
        );
        node.receive(notify, PBX).await;
        let notify_b = node.expect(GW1, Expect::Request(Method::Notify)).await;
        assert_eq!(
            notify_b.header(HeaderName::Event),
            Some(&b"refer;id=40"[..]),
            "the NOTIFY names the REFER's CSeq on leg B"
        );
    }

    const REFER_FROM_B: ReferIds = ReferIds {
        notifier: Side::A,
        there: 1,
        here: 17471,
    };

    #[test]
    fn a_notify_names_the_refers_cseq_of_the_leg_it_is_relayed_to() {
        let refers = vec![REFER_FROM_B];
        assert_eq!(
            renumbered(&refers, Side::A, b"refer;id=1").as_deref(),
            Some(&b"refer;id=17471"[..])
        );
        assert_eq!(
            renumbered(&refers, Side::A, b"Refer ; ID = 1;x=y").as_deref(),
            Some(&b"Refer;ID=17471;x=y"[..])
        );
    }

    #[test]
    fn other_notifies_are_left_alone() {
        let refers = vec![REFER_FROM_B];
        assert_eq!(
            renumbered(&refers, Side::B, b"refer;id=1"),
            None,
            "other side"
        );
        assert_eq!(
            renumbered(&refers, Side::A, b"refer;id=2"),
            None,
            "other REFER"
        );
        assert_eq!(renumbered(&refers, Side::A, b"refer"), None, "no id");
        assert_eq!(
            renumbered(&refers, Side::A, b"dialog;id=1"),
            None,
            "other package"
        );
        assert_eq!(
            renumbered(&[], Side::A, b"refer;id=1"),
            None,
            "no REFER relayed"
        );
    }

    #[test]
    fn the_latest_refers_are_kept() {
        let mut refers = Vec::new();
        for k in 0..20 {
            remember(
                &mut refers,
                ReferIds {
                    notifier: Side::B,
                    there: k,
                    here: 100 + k,
                },
            );
        }
        assert_eq!(refers.len(), MAX_REFERS);
        assert_eq!(renumbered(&refers, Side::B, b"refer;id=3"), None);
        assert_eq!(
            renumbered(&refers, Side::B, b"refer;id=19").as_deref(),
            Some(&b"refer;id=119"[..])
        );
    }
}
