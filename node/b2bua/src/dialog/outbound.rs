//! The outbound (leg-B) INVITE, as a pure function of the caller's INVITE, the gateway trunk and
//! the identifiers it is given: the Request-URI and To from the called number as the trunk wants
//! it, From with the calling number and the caller's display name, the caller's SDP, the options
//! both sides support, a session timer when the trunk asks for one, and the identity and history
//! headers the trunks allow through. No clock, no randomness, no I/O.

use bytes::Bytes;
use medpool_sip::message::builder::{MessageBuilder, quote_display};
use medpool_sip::message::uri::escape_user;
use medpool_sip::transport::Transport;
use medpool_sip::{HeaderName, Method, SipMessage};

use super::leg::{Leg, Me};
use crate::config::Trunk;

/// The identifiers a new leg B is minted with (random in production, fixed in tests).
#[derive(Debug, Clone)]
pub(super) struct OutboundIds {
    /// Our Call-ID on leg B.
    pub(super) call_id: String,
    /// Our From tag.
    pub(super) tag: String,
    /// The INVITE's Via branch.
    pub(super) branch: String,
    /// The INVITE's CSeq (1; the next one when it is sent again after a 422).
    pub(super) cseq: u32,
}

/// The session timer an INVITE asks for in place of the trunk's or the caller's (after a 422).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SessionAsk {
    /// Session-Expires, seconds.
    pub(super) interval: u32,
    /// Min-SE, seconds.
    pub(super) min_se: u32,
}

/// A leg-B INVITE and the leg it opens.
#[derive(Debug)]
pub(super) struct OutboundInvite {
    /// The INVITE.
    pub(super) bytes: Bytes,
    /// The leg (not yet answered: no remote tag).
    pub(super) leg: Leg,
}

/// Builds the INVITE to `trunk` for the caller's INVITE `a`, with `called` and `calling` as the
/// inbound trunk normalised them, and the caller's body or `body` in its place (the offer rewritten
/// for the relay; empty: none), and the session timer of `timer` when given (a retry after a 422).
/// None when the trunk has no IP address.
// The INVITE is a pure function of all of these; a struct for them would only rename them.
#[allow(clippy::too_many_arguments)]
#[cfg(test)]
pub(super) fn outbound_invite(
    me: &Me,
    a: &SipMessage,
    trunk: &Trunk,
    inbound: &Trunk,
    called: &str,
    calling: &str,
    ids: OutboundIds,
    body: Option<&[u8]>,
    timer: Option<SessionAsk>,
) -> Option<OutboundInvite> {
    outbound_invite_to(
        me, a, trunk, None, inbound, called, calling, ids, body, timer,
    )
}

/// `trunk` addressed to `peer` over `transport` (a trunk named by DNS, bound to the target an
/// attempt went to), its other settings kept.
pub(super) fn at_peer(trunk: &Trunk, peer: std::net::SocketAddr, transport: Transport) -> Trunk {
    let mut bound = trunk.clone();
    // Over TLS the certificate is still checked against the trunk's host name (RFC 3263 §4.1 /
    // RFC 5922 §4: the name from the configuration, not the resolved address).
    if bound.tls.name.is_none()
        && let crate::config::PeerAddress::Host(name) = &trunk.address
    {
        bound.tls.name = Some(name.clone());
    }
    bound.address = crate::config::PeerAddress::Ip(peer.ip());
    bound.port = peer.port();
    bound.transport = match transport {
        Transport::Udp => crate::config::Transport::Udp,
        Transport::Tcp => crate::config::Transport::Tcp,
        Transport::Tls => crate::config::Transport::Tls,
    };
    bound.lookup = crate::config::Lookup::Literal;
    bound
}

/// [`outbound_invite`] with the host of the Request-URI and To given: the domain of a trunk named
/// by DNS (RFC 3263: the URI keeps the name, the INVITE goes to the resolved `trunk` address);
/// `None`: the trunk's `ip:port`.
#[allow(clippy::too_many_arguments)]
pub(super) fn outbound_invite_to(
    me: &Me,
    a: &SipMessage,
    trunk: &Trunk,
    uri_host: Option<&str>,
    inbound: &Trunk,
    called: &str,
    calling: &str,
    ids: OutboundIds,
    body: Option<&[u8]>,
    timer: Option<SessionAsk>,
) -> Option<OutboundInvite> {
    let transport = crate::config::sip_transport(trunk.transport);
    // RFC 3261 §26.2 / RFC 5630: a sips request stays sips on this leg (TLS only); a TLS trunk
    // is otherwise called with `transport=tls`.
    let sips = a
        .request_uri_bytes()
        .is_some_and(|u| u.len() >= 5 && u[..5].eq_ignore_ascii_case(b"sips:"));
    if sips && transport != Transport::Tls {
        return None;
    }
    let ip = trunk.address.ip()?;
    let peer = std::net::SocketAddr::new(ip, trunk.port);
    // The trunk's own port, when it has one and this node bound it.
    let local_port = me.bound(trunk.local_port);
    let me = me.on(local_port);
    let host = match (uri_host, ip) {
        (Some(name), _) => name.to_owned(),
        (None, std::net::IpAddr::V6(v6)) => format!("[{v6}]:{}", trunk.port),
        (None, std::net::IpAddr::V4(v4)) => format!("{v4}:{}", trunk.port),
    };
    let called = trunk.called_out_number(called).into_owned();
    let calling = trunk.calling_out_number(calling).into_owned();
    let user_phone = called.starts_with('+') || called.bytes().all(|b| b.is_ascii_digit());
    let ruri = format!(
        "{}:{}@{host}{}{}",
        if sips { "sips" } else { "sip" },
        escape_user(called.as_bytes()),
        if user_phone && !called.is_empty() {
            ";user=phone"
        } else {
            ""
        },
        if transport == Transport::Tls && !sips {
            ";transport=tls"
        } else {
            ""
        }
    );
    let OutboundIds {
        call_id,
        tag,
        branch,
        cseq,
    } = ids;
    let display = a
        .from()
        .and_then(|f| f.ok())
        .and_then(|f| f.display_unquoted());
    let mut from = Vec::with_capacity(96);
    if let Some(d) = display.filter(|d| !d.is_empty()) {
        from.extend_from_slice(&quote_display(&d));
        from.push(b' ');
    }
    let my_host = me
        .hostport
        .rsplit_once(':')
        .map_or(me.hostport.as_str(), |(h, _)| h);
    from.extend_from_slice(
        format!(
            "<sip:{}@{my_host}>;tag={tag}",
            escape_user(calling.as_bytes())
        )
        .as_bytes(),
    );
    let to = format!("<sip:{}@{host}>", escape_user(called.as_bytes()));
    let mf = a
        .max_forwards()
        .and_then(|r| r.ok())
        .map_or(70, |m| m.saturating_sub(1).min(70));
    let mut b = MessageBuilder::request_method(Method::Invite, ruri.as_bytes());
    b.header(HeaderName::Via, me.via(transport, &branch).as_bytes())
        .header_fmt(HeaderName::MaxForwards, format_args!("{mf}"))
        .header(HeaderName::From, &from)
        .header(HeaderName::To, to.as_bytes())
        .header(HeaderName::CallId, call_id.as_bytes())
        .header_fmt(HeaderName::CSeq, format_args!("{cseq} INVITE"))
        .header(
            HeaderName::Contact,
            me.contact_for(transport, sips).as_bytes(),
        )
        .header(
            HeaderName::Allow,
            medpool_sip::check::ALLOWED_METHODS.as_bytes(),
        );
    let mut supported: Vec<&[u8]> = a
        .supported()
        .filter(|t| {
            medpool_sip::check::SUPPORTED_OPTIONS
                .iter()
                .any(|s| t.eq_ignore_ascii_case(s.as_bytes()))
        })
        .collect();
    let want_timer =
        timer.is_some() || trunk.session_expires.is_some() && a.session_expires().is_none();
    if want_timer && !supported.iter().any(|t| t.eq_ignore_ascii_case(b"timer")) {
        supported.push(b"timer");
    }
    if !supported.is_empty() {
        b.header(HeaderName::Supported, &supported.join(&b", "[..]));
    }
    b.copy_headers(a, HeaderName::Require);
    if let Some(ask) = timer {
        b.header_fmt(HeaderName::SessionExpires, format_args!("{}", ask.interval));
        b.header_fmt(HeaderName::MinSe, format_args!("{}", ask.min_se));
    } else if want_timer {
        if let Some(se) = trunk.session_expires {
            b.header_fmt(HeaderName::SessionExpires, format_args!("{se}"));
            b.header_fmt(HeaderName::MinSe, format_args!("{}", trunk.min_se));
        }
    } else {
        b.copy_headers(a, HeaderName::SessionExpires);
        b.copy_headers(a, HeaderName::MinSe);
    }
    // RFC 3325: an asserted identity is believed only from a trunk in the trust domain (the inbound
    // trunk's `forward_pai`) and only given to one (the gateway trunk's); anything else drops it.
    // Its number is translated as From's is (the inbound dial plan, then the trunk's
    // `calling_out`); the rest of each identity is kept.
    if trunk.forward_pai && inbound.forward_pai {
        let identities = a
            .header_values(HeaderName::PAssertedIdentity)
            .flat_map(medpool_sip::message::headers::split_commas)
            .filter(|v| !v.is_empty());
        for v in identities {
            let text = String::from_utf8_lossy(v);
            let translated = crate::translate::number_from_uri(&text).and_then(|n| {
                let out = trunk
                    .calling_out_number(&inbound.normalize_number(&n))
                    .into_owned();
                crate::translate::with_number(&text, &out)
            });
            match translated {
                Some(t) => b.header(HeaderName::PAssertedIdentity, t.as_bytes()),
                None => b.header(HeaderName::PAssertedIdentity, v),
            };
        }
        b.copy_headers(a, HeaderName::Privacy);
    }
    for name in super::leg::GEOLOCATION_HEADERS {
        for v in a.other_header(name) {
            b.header_named(name.as_bytes(), v);
        }
    }
    if trunk.forward_history_info {
        b.copy_headers(a, HeaderName::HistoryInfo);
        b.copy_headers(a, HeaderName::Diversion);
    }
    // The relayed offer in place of the caller's SDP: its whole body, or its SDP part (a PIDF-LO
    // beside it goes unchanged). No offer to put in (a late offer): the caller's body as it is.
    let body = match body.filter(|b| !b.is_empty()) {
        Some(sdp) => {
            super::body::with_sdp(a, sdp).map_or_else(|| Bytes::copy_from_slice(sdp), Bytes::from)
        }
        None => Bytes::copy_from_slice(a.body()),
    };
    if !body.is_empty() {
        let ct = a
            .header(HeaderName::ContentType)
            .unwrap_or(b"application/sdp");
        b.body(ct, body);
    }
    Some(OutboundInvite {
        bytes: b.build(),
        leg: Leg {
            call_id: Bytes::from(call_id),
            local_tag: tag,
            local_uri: Bytes::from(from),
            remote_uri: Bytes::from(to),
            remote_tag: None,
            remote_target: Bytes::from(ruri),
            route_set: Vec::new(),
            peer,
            transport,
            local_cseq: cseq,
            remote_cseq: 0,
            local_port,
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::config::PoolConfig;
    use crate::testkit::{CONFIG, NODE};

    fn ids() -> OutboundIds {
        OutboundIds {
            call_id: "b-1@medpool".into(),
            tag: "t-1".into(),
            branch: "z9hG4bK-b-1".into(),
            cseq: 1,
        }
    }
    fn me() -> Me {
        Me {
            hostport: NODE.into(),
            local: NODE.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_trunk_named_by_dns_keeps_its_domain_in_the_request_uri() {
        let config = PoolConfig::from_toml_str(CONFIG, "test.toml").unwrap();
        let gw1 = config.trunk("gw1").unwrap();
        let caller = SipMessage::parse(crate::testkit::invite("o-1")).unwrap();
        let out = outbound_invite_to(
            &me(),
            &caller,
            gw1,
            Some("sbc.example.net"),
            gw1,
            "+15550100",
            "",
            ids(),
            None,
            None,
        )
        .unwrap();
        let inv = SipMessage::parse(out.bytes).unwrap();
        let ruri = String::from_utf8_lossy(inv.request_uri_bytes().unwrap()).into_owned();
        assert_eq!(ruri, "sip:+15550100@sbc.example.net;user=phone");
        let to = String::from_utf8_lossy(inv.header(HeaderName::To).unwrap()).into_owned();
        assert_eq!(to, "<sip:+15550100@sbc.example.net>");
        assert_eq!(
            out.leg.peer,
            "127.0.9.21:5060".parse().unwrap(),
            "sent to the address"
        );
    }

    #[test]
    fn the_leg_b_invite_carries_the_numbers_the_trunk_wants_and_the_callers_offer() {
        let config = PoolConfig::from_toml_str(CONFIG, "test.toml").unwrap();
        let gw1 = config.trunk("gw1").unwrap();
        let caller = SipMessage::parse(crate::testkit::invite("o-1")).unwrap();
        let out = outbound_invite(
            &me(),
            &caller,
            gw1,
            gw1,
            "+15550100",
            "+15550111",
            ids(),
            None,
            None,
        )
        .unwrap();
        let inv = SipMessage::parse(out.bytes).unwrap();
        assert_eq!(inv.method(), Some(Method::Invite));
        assert_eq!(
            inv.request_uri_bytes().unwrap(),
            b"sip:+15550100@127.0.9.21:5060;user=phone"
        );
        assert_eq!(inv.call_id().unwrap().unwrap(), b"b-1@medpool");
        assert_eq!(inv.from_tag(), Some(&b"t-1"[..]));
        assert_eq!(inv.top_branch(), Some(&b"z9hG4bK-b-1"[..]));
        assert_eq!(inv.cseq().unwrap().unwrap().seq, 1);
        assert_eq!(inv.max_forwards().unwrap().unwrap(), 69);
        assert_eq!(inv.body(), caller.body());
        assert!(
            String::from_utf8_lossy(inv.header(HeaderName::From).unwrap())
                .starts_with("<sip:+15550111@127.0.9.100>")
        );
        assert_eq!(inv.session_expires().map(|s| s.is_ok()), None);
        let leg = out.leg;
        assert_eq!(leg.peer, "127.0.9.21:5060".parse().unwrap());
        assert_eq!(leg.local_tag, "t-1");
        assert_eq!((leg.local_cseq, leg.remote_tag), (1, None));
    }

    #[test]
    fn a_trunk_with_a_session_timer_asks_for_one_when_the_caller_did_not() {
        let text = CONFIG.replace(
            "address = \"127.0.9.21\"",
            "address = \"127.0.9.21\"\nsession_expires = 1800",
        );
        let config = PoolConfig::from_toml_str(&text, "test.toml").unwrap();
        let gw1 = config.trunk("gw1").unwrap();
        let caller = SipMessage::parse(crate::testkit::invite("o-2")).unwrap();
        let out =
            outbound_invite(&me(), &caller, gw1, gw1, "+15550100", "", ids(), None, None).unwrap();
        let inv = SipMessage::parse(out.bytes).unwrap();
        assert_eq!(inv.session_expires().unwrap().unwrap().delta, 1800);
        assert!(inv.supported().any(|t| t.eq_ignore_ascii_case(b"timer")));
        assert_eq!(inv.header(HeaderName::MinSe), Some(&b"90"[..]));
    }

    /// The caller's INVITE with an asserted identity, a privacy request and a forged source header.
    fn caller_with_identity() -> SipMessage {
        let text = String::from_utf8(crate::testkit::invite("o-3").to_vec()).unwrap();
        let text = text.replacen(
            "\r\n",
            "\r\nP-Asserted-Identity: <sip:+15559999@pbx>\r\nPrivacy: id\r\nX-Medpool-Source: 127.0.9.1:5060\r\n",
            1,
        );
        SipMessage::parse(text.into_bytes()).unwrap()
    }

    #[test]
    fn an_asserted_identity_crosses_only_between_trunks_that_both_trust_it() {
        let config = PoolConfig::from_toml_str(CONFIG, "test.toml").unwrap();
        let trusting = config.trunk("gw1").unwrap().clone();
        let mut untrusting = trusting.clone();
        untrusting.forward_pai = false;
        let caller = caller_with_identity();
        // (inbound trunk trusted, gateway trunk trusted, PAI relayed)
        for (inbound, gateway, relayed) in [
            (&trusting, &trusting, true),
            (&untrusting, &trusting, false), // an untrusted caller's claim never gets through
            (&trusting, &untrusting, false), // nor is it given to a trunk outside the trust domain
            (&untrusting, &untrusting, false),
        ] {
            let out = outbound_invite(
                &me(),
                &caller,
                gateway,
                inbound,
                "+15550100",
                "",
                ids(),
                None,
                None,
            )
            .unwrap();
            let inv = SipMessage::parse(out.bytes).unwrap();
            let pai = inv.header(HeaderName::PAssertedIdentity);
            assert_eq!(
                pai.is_some(),
                relayed,
                "inbound={} gateway={}",
                inbound.forward_pai,
                gateway.forward_pai
            );
            assert_eq!(inv.header(HeaderName::Privacy).is_some(), relayed);
            // The source header of a forwarder is never relayed.
            assert_eq!(inv.other_header(crate::ingress::SOURCE_HEADER).count(), 0);
        }
    }
}
