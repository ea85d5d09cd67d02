//! Where a message that reached this node goes, as a pure decision: handled here, forwarded to the
//! owner of its shard, held while this node takes the shard over, refused (403 to an unknown
//! source, 503 to a new call nobody can take now) or dropped for its sender to retransmit. The node
//! gathers the facts ([`Arrival`], [`Ownership`]) and acts on the answer ([`Ingress`]).

use std::net::{IpAddr, SocketAddr};

use medpool_sip::SipMessage;

use crate::config::UnknownSource;

/// The header a trusted forwarder (an L7 SIP load balancer) uses to name a message's real source.
pub const SOURCE_HEADER: &str = "X-Medpool-Source";

/// The source a message is judged by: where it came from, or — when that is one of the `trusted`
/// forwarders — the source the forwarder names in [`SOURCE_HEADER`]. A forwarder appends its copy,
/// so only the **last** one counts (the last line, and the last item of a comma-joined line); a
/// copy the sender wrote itself comes earlier and is ignored. A forwarded message whose last copy
/// cannot be read keeps the forwarder's own address, which is no trunk's, so it is refused. From
/// any other source the header means nothing. No copy is ever relayed: the other leg's messages are
/// built from a list of relayed headers that does not name it.
pub fn real_source(msg: &SipMessage, source: SocketAddr, trusted: &[IpAddr]) -> SocketAddr {
    if !trusted.contains(&source.ip()) {
        return source;
    }
    msg.other_header(SOURCE_HEADER)
        .last()
        .and_then(|line| line.rsplit(|&b| b == b',').next())
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse::<SocketAddr>().ok())
        .unwrap_or(source)
}

/// What the node knows of a message when it decides where it goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Arrival {
    /// A request (else a response).
    pub is_request: bool,
    /// An ACK.
    pub is_ack: bool,
    /// An INVITE without a To tag: a new call.
    pub new_call: bool,
    /// Over TCP (nothing is retransmitted).
    pub reliable: bool,
    /// Another pool node forwarded it (its source was checked there).
    pub forwarded: bool,
    /// Its source is one of the configured trunks.
    pub known_source: bool,
    /// A response to one of this node's own client transactions (a gateway probe, or a request of
    /// a call still here): node-local, whatever shard its branch names.
    pub own_answer: bool,
}

/// The message's shard as this node sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ownership {
    /// This node may act for the shard now (owns it, under a valid lease).
    pub may_act: bool,
    /// The shard's owner in this node's shard map.
    pub owner: Option<u64>,
    /// This node.
    pub me: u64,
    /// This node owns the shard but waits behind its hand-over fence.
    pub taking_over: bool,
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ingress {
    /// Into this node's transaction layer.
    HandleHere,
    /// To the owner of its shard (if that fails: [`unowned`]).
    ForwardTo(u64),
    /// Unanswered: this node is taking the shard over, and the caller's retransmission will find
    /// it acting.
    HoldForHandOver,
    /// A new call nobody can take now: 503 with Retry-After.
    Refuse503,
    /// A request from an unknown source, refused (403).
    Refuse403,
    /// Dropped: its sender retransmits (or it is from nobody we talk to).
    Drop,
}

/// Where `arrival` goes, given the unknown-source policy and the shard's ownership.
pub fn ingress(arrival: &Arrival, unknown: UnknownSource, own: &Ownership) -> Ingress {
    if !arrival.forwarded && !arrival.known_source {
        // A response from nobody we talk to is dropped too; an ACK is never answered.
        return if arrival.is_request && !arrival.is_ack && unknown == UnknownSource::Reject {
            Ingress::Refuse403
        } else {
            Ingress::Drop
        };
    }
    if arrival.own_answer || own.may_act {
        return Ingress::HandleHere;
    }
    match own.owner {
        // A forwarded message is never forwarded again.
        Some(owner) if owner != own.me && !arrival.forwarded => Ingress::ForwardTo(owner),
        // The shard moved on while the message was on its way here (a hand-over in flight): a new
        // call over UDP is left to its retransmission, which the first node forwards to the new
        // owner; over TCP nothing is resent, so it is told to come back (below).
        Some(owner) if owner != own.me && arrival.new_call && !arrival.reliable => Ingress::Drop,
        _ => unowned(arrival, own),
    }
}

/// Nobody can take the message now (no owner, lease lapsed, owner unreachable): a new call is told
/// to come back, or held while this node takes the shard over (over UDP only: over TCP nothing is
/// resent); anything else is dropped and its sender retransmits.
pub fn unowned(arrival: &Arrival, own: &Ownership) -> Ingress {
    if !arrival.new_call {
        Ingress::Drop
    } else if !arrival.reliable && own.taking_over {
        Ingress::HoldForHandOver
    } else {
        Ingress::Refuse503
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: u64 = 1;
    const PEER: u64 = 2;

    fn options_with(sources: &[&str]) -> SipMessage {
        let mut m = String::from(
            "OPTIONS sip:n SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.9;branch=z9hG4bK1\r\nCall-ID: c\r\n",
        );
        for s in sources {
            m.push_str(&format!("{SOURCE_HEADER}: {s}\r\n"));
        }
        m.push_str("\r\n");
        SipMessage::parse(m.into_bytes()).unwrap()
    }

    #[test]
    fn only_a_trusted_forwarders_last_copy_names_the_source() {
        let lb: SocketAddr = "10.0.0.9:5060".parse().unwrap();
        let trusted = [lb.ip()];
        let real: SocketAddr = "192.0.2.7:5070".parse().unwrap();
        let forged = "198.51.100.1:5060";
        // (copies in order, from a trusted forwarder?, the source judged)
        let table: &[(&[&str], bool, SocketAddr)] = &[
            (&["192.0.2.7:5070"], true, real),
            // The caller's own copy first, the balancer's appended: the balancer's wins.
            (&[forged, "192.0.2.7:5070"], true, real),
            // One line joined by the balancer: its item is the last.
            (&["198.51.100.1:5060, 192.0.2.7:5070"], true, real),
            // A copy from anyone else is ignored.
            (&["192.0.2.7:5070"], false, lb),
            // The balancer's copy unreadable: its own address (no trunk's) is kept.
            (&[forged, "not-an-address"], true, lb),
            (&[], true, lb),
        ];
        for (copies, from_trusted, want) in table {
            let t: &[IpAddr] = if *from_trusted { &trusted } else { &[] };
            assert_eq!(
                real_source(&options_with(copies), lb, t),
                *want,
                "{copies:?} trusted={from_trusted}"
            );
        }
    }

    fn new_call() -> Arrival {
        Arrival {
            is_request: true,
            new_call: true,
            known_source: true,
            ..Arrival::default()
        }
    }
    fn in_dialog() -> Arrival {
        Arrival {
            is_request: true,
            known_source: true,
            ..Arrival::default()
        }
    }
    fn response() -> Arrival {
        Arrival {
            known_source: true,
            ..Arrival::default()
        }
    }
    fn acting() -> Ownership {
        Ownership {
            may_act: true,
            owner: Some(ME),
            me: ME,
            taking_over: false,
        }
    }
    fn owned_by(owner: Option<u64>) -> Ownership {
        Ownership {
            may_act: false,
            owner,
            me: ME,
            taking_over: false,
        }
    }
    fn fenced() -> Ownership {
        Ownership {
            taking_over: true,
            ..owned_by(Some(ME))
        }
    }

    #[test]
    fn where_each_message_goes() {
        use Ingress::*;
        use UnknownSource::{Drop as SilentDrop, Reject};
        let unknown = |a: Arrival| Arrival {
            known_source: false,
            ..a
        };
        let forwarded = |a: Arrival| Arrival {
            forwarded: true,
            known_source: false,
            ..a
        };
        let tcp = |a: Arrival| Arrival {
            reliable: true,
            ..a
        };
        let ack = Arrival {
            is_ack: true,
            ..in_dialog()
        };
        let own_answer = Arrival {
            own_answer: true,
            ..response()
        };
        #[rustfmt::skip]
        let table: &[(&str, Arrival, UnknownSource, Ownership, Ingress)] = &[
            ("a new call on a shard we act for", new_call(), Reject, acting(), HandleHere),
            ("a response on a shard we act for", response(), Reject, acting(), HandleHere),
            ("a request from an unknown source, policy reject", unknown(new_call()), Reject, acting(), Refuse403),
            ("a request from an unknown source, policy drop", unknown(new_call()), SilentDrop, acting(), Drop),
            ("an ACK from an unknown source is never answered", unknown(ack), Reject, acting(), Drop),
            ("a response from an unknown source", unknown(response()), Reject, acting(), Drop),
            ("a forwarded message's source was checked by its first node", forwarded(new_call()), Reject, acting(), HandleHere),
            ("a new call for another node's shard", new_call(), Reject, owned_by(Some(PEER)), ForwardTo(PEER)),
            ("an in-dialog request for another node's shard", in_dialog(), Reject, owned_by(Some(PEER)), ForwardTo(PEER)),
            ("a response for another node's shard", response(), Reject, owned_by(Some(PEER)), ForwardTo(PEER)),
            ("an answer to our own client transaction stays here", own_answer, Reject, owned_by(Some(PEER)), HandleHere),
            ("a forwarded UDP new call whose shard moved on: left to its retransmission", forwarded(new_call()), Reject, owned_by(Some(PEER)), Drop),
            ("a forwarded TCP new call whose shard moved on is never forwarded again", forwarded(tcp(new_call())), Reject, owned_by(Some(PEER)), Refuse503),
            ("a forwarded in-dialog request is never forwarded again", forwarded(in_dialog()), Reject, owned_by(Some(PEER)), Drop),
            ("a new call on a shard with no owner", new_call(), Reject, owned_by(None), Refuse503),
            ("a new call on our shard with a lapsed lease", new_call(), Reject, owned_by(Some(ME)), Refuse503),
            ("an in-dialog request nobody can take", in_dialog(), Reject, owned_by(None), Drop),
            ("a response nobody can take", response(), Reject, owned_by(None), Drop),
            ("a UDP new call behind our hand-over fence", new_call(), Reject, fenced(), HoldForHandOver),
            ("a TCP new call behind our hand-over fence", tcp(new_call()), Reject, fenced(), Refuse503),
            ("an in-dialog request behind our hand-over fence", in_dialog(), Reject, fenced(), Drop),
        ];
        for (case, arrival, policy, own, want) in table {
            assert_eq!(ingress(arrival, *policy, own), *want, "{case}");
        }
    }

    #[test]
    fn when_forwarding_fails_a_new_call_is_refused_or_held_and_the_rest_dropped() {
        let peer = owned_by(Some(PEER));
        assert_eq!(unowned(&new_call(), &peer), Ingress::Refuse503);
        assert_eq!(unowned(&in_dialog(), &peer), Ingress::Drop);
        assert_eq!(unowned(&response(), &peer), Ingress::Drop);
        let fenced_peer = Ownership {
            taking_over: true,
            ..peer
        };
        assert_eq!(unowned(&new_call(), &fenced_peer), Ingress::HoldForHandOver);
    }
}
