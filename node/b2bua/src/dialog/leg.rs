//! One leg of a B2BUA call and how requests and responses are written on it. A leg knows its dialog
//! identifiers (Call-ID, tags as header values), remote target, route set, peer and CSeq; it builds
//! in-dialog requests (RFC 3261 §12.2.1.1) and responses to requests received on it (§8.2.6).

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use medpool_sip::message::builder::{MessageBuilder, response_to};
use medpool_sip::message::headers::trim_lws;
use medpool_sip::transport::Transport;
use medpool_sip::{HeaderName, Method, SipMessage};

pub use crate::ctx::Me;
use crate::txlayer::Envelope;

/// Headers copied from a request or response on one leg to its counterpart on the other.
pub const RELAYED_HEADERS: &[HeaderName] = &[
    HeaderName::Require,
    HeaderName::Supported,
    HeaderName::Allow,
    HeaderName::SessionExpires,
    HeaderName::MinSe,
    HeaderName::Event,
    HeaderName::AllowEvents,
    HeaderName::Reason,
    HeaderName::RetryAfter,
    HeaderName::Unsupported,
    HeaderName::Warning,
    HeaderName::Accept,
    HeaderName::Subject,
    HeaderName::Privacy,
];

/// Extension headers relayed by name (`Subscription-State` for NOTIFY, `Info-Package` for INFO, ...).
pub const RELAYED_OTHER: &[&str] = &[
    "Subscription-State",
    "Info-Package",
    "Recv-Info",
    "Content-Disposition",
    "Geolocation",
    "Geolocation-Routing",
    "Geolocation-Error",
];

/// RFC 6442 location conveyance (E911): relayed unchanged on the leg-B INVITE, as on every
/// in-dialog request and response ([`RELAYED_OTHER`]); a PIDF-LO body travels with the body.
pub const GEOLOCATION_HEADERS: &[&str] =
    &["Geolocation", "Geolocation-Routing", "Geolocation-Error"];

/// One side of the call.
#[derive(Debug, Clone)]
pub struct Leg {
    /// Call-ID of this leg.
    pub call_id: Bytes,
    /// Our tag.
    pub local_tag: String,
    /// Our From/To header value on this leg (with our tag).
    pub local_uri: Bytes,
    /// The peer's header value (with its tag once known).
    pub remote_uri: Bytes,
    /// The peer's tag.
    pub remote_tag: Option<Bytes>,
    /// The peer's Contact URI.
    pub remote_target: Bytes,
    /// Route headers to put on requests (a UAS takes Record-Route in order, a UAC reversed).
    pub route_set: Vec<Bytes>,
    /// Where requests go.
    pub peer: SocketAddr,
    /// Transport.
    pub transport: Transport,
    /// The last CSeq we used on this leg.
    pub local_cseq: u32,
    /// The last CSeq the peer used.
    pub remote_cseq: u32,
    /// The node's trunk port this leg uses (its trunk's `local_port`, kept in the call's record so
    /// a new owner sends from the same port); `None`: the main listener.
    pub local_port: Option<u16>,
}

/// Where to send requests for a URI: its host when it is an IP literal, else `fallback`.
pub fn uri_target(uri: &[u8], fallback: SocketAddr) -> SocketAddr {
    let Ok(u) = medpool_sip::message::Uri::parse(uri) else {
        return fallback;
    };
    let host = u
        .host
        .strip_prefix(b"[")
        .and_then(|h| h.strip_suffix(b"]"))
        .unwrap_or(u.host);
    match std::str::from_utf8(host)
        .ok()
        .and_then(|h| h.parse::<IpAddr>().ok())
    {
        Some(ip) => SocketAddr::new(ip, u.port.unwrap_or(5060)),
        None => fallback,
    }
}

/// The URI inside a name-addr value (`<...>` stripped).
pub fn name_addr_uri(value: &[u8]) -> Bytes {
    match medpool_sip::message::NameAddr::parse(value) {
        Ok(n) => Bytes::copy_from_slice(n.uri),
        Err(_) => Bytes::copy_from_slice(trim_lws(value)),
    }
}

impl Leg {
    /// Starts a new request on this leg (in dialog): R-URI, Via, Max-Forwards, Route, From, To,
    /// Call-ID, CSeq. `cseq` is given by the caller (ACK and CANCEL reuse their INVITE's).
    pub fn request(&self, me: &Me, method: &[u8], cseq: u32, branch: &str) -> MessageBuilder {
        let mut b = MessageBuilder::request(method, &self.remote_target);
        let me = me.on(self.local_port);
        b.header(HeaderName::Via, me.via(self.transport, branch).as_bytes());
        b.header(HeaderName::MaxForwards, b"70");
        for r in &self.route_set {
            b.header(HeaderName::Route, r);
        }
        b.header(HeaderName::From, &self.local_uri);
        b.header(HeaderName::To, &self.remote_uri);
        b.header(HeaderName::CallId, &self.call_id);
        b.header_fmt(
            HeaderName::CSeq,
            format_args!("{cseq} {}", String::from_utf8_lossy(method)),
        );
        b
    }

    /// Where requests on this leg go: the first Route's host, else the remote target's, when they are
    /// IP literals; otherwise the peer we know.
    pub fn next_hop(&self) -> SocketAddr {
        match self.route_set.first() {
            Some(r) => uri_target(&name_addr_uri(r), self.peer),
            None => uri_target(&self.remote_target, self.peer),
        }
    }

    /// The leg a 2xx to one of our INVITEs establishes, from the answer alone: for an answer no call
    /// knows any more (see `CoreEvent::OrphanAnswer`), to ACK it and send a BYE.
    pub fn from_answer(answer: &SipMessage, peer: SocketAddr, transport: Transport) -> Option<Leg> {
        let call_id = answer.call_id()?.ok()?;
        let local_tag = String::from_utf8_lossy(answer.from_tag()?).into_owned();
        let local_uri = Bytes::copy_from_slice(answer.header(HeaderName::From)?);
        let local_cseq = answer.cseq()?.ok()?.seq;
        let mut leg = Leg {
            call_id: Bytes::copy_from_slice(call_id),
            local_tag,
            local_uri,
            remote_uri: Bytes::new(),
            remote_tag: None,
            remote_target: Bytes::new(),
            route_set: Vec::new(),
            peer,
            transport,
            local_cseq,
            remote_cseq: 0,
            // Our Via on it named the port the INVITE left from.
            local_port: answer.top_via().and_then(Result::ok).and_then(|v| v.port),
        };
        leg.learn_from_answer(answer);
        (!leg.remote_target.is_empty() && leg.remote_tag.is_some()).then_some(leg)
    }

    /// Takes the dialog as a 2xx to our INVITE establishes it (RFC 3261 §12.1.2): the peer's target
    /// and tag, its To value, and the route set (Record-Route reversed).
    /// The 2xx's To tag wins over any early dialog's (forking: RFC 3261 §13.2.2.4).
    pub fn learn_from_answer(&mut self, answer: &SipMessage) {
        match answer.to_tag() {
            Some(tag) => self.enter_dialog(answer, tag),
            None => {
                self.learn_remote(answer, None);
                self.route_set = uac_route_set(answer);
            }
        }
    }

    /// Takes the dialog (early or confirmed) a response to our INVITE with To tag `tag` sets up:
    /// the tag and the To value carrying it, the peer's target (its Contact, when it has one) and
    /// the route set (Record-Route reversed), in place of any other fork's.
    pub fn enter_dialog(&mut self, msg: &SipMessage, tag: &[u8]) {
        self.learn_remote(msg, None);
        self.remote_tag = Some(Bytes::copy_from_slice(tag));
        if let Some(to) = msg.header(HeaderName::To) {
            self.remote_uri = Bytes::copy_from_slice(to);
        }
        self.route_set = uac_route_set(msg);
    }

    /// Learns the peer's target (its Contact) from a message it sent, and — on the UAC side of a leg,
    /// from a response — its tag, with the To value that carries it (used on later requests).
    pub fn learn_remote(&mut self, msg: &SipMessage, tag: Option<&[u8]>) {
        if let Some(Ok(c)) = msg.contacts().next()
            && !c.is_star
        {
            self.remote_target = Bytes::copy_from_slice(c.uri);
        }
        if let Some(tag) = tag
            && self.remote_tag.is_none()
        {
            self.remote_tag = Some(Bytes::copy_from_slice(tag));
            if let Some(to) = msg.header(HeaderName::To) {
                self.remote_uri = Bytes::copy_from_slice(to);
            }
        }
    }
}

/// Builds a response on a leg to `request` (received on it), relaying what matters from `from`
/// (the other leg's response): body and content type, the relayed headers, Contact when it is a 1xx/2xx
/// to a dialog-forming or target-refreshing request, and the request's Record-Route on dialog creation.
/// `from` comes with the body to put in place of its own, if any (SDP rewritten for the relay).
pub fn relay_response(
    me: &Me,
    request: &Envelope,
    status: u16,
    reason: &[u8],
    to_tag: &str,
    from: Option<(&SipMessage, Option<&[u8]>)>,
    rseq: Option<u32>,
) -> Bytes {
    let req = &request.msg;
    let mut b = response_to(req, status, reason, Some(to_tag), Some(request.peer));
    let method = req.method().unwrap_or(Method::Other);
    let target_refresh = matches!(
        method,
        Method::Invite | Method::Update | Method::Subscribe | Method::Refer | Method::Notify
    );
    if target_refresh && (101..300).contains(&status) {
        if method == Method::Invite && req.to_tag().is_none() {
            b.copy_headers(req, HeaderName::RecordRoute);
        }
        b.header(
            HeaderName::Contact,
            me.contact_for(
                request.transport,
                req.request_uri_bytes()
                    .is_some_and(|u| u.len() >= 5 && u[..5].eq_ignore_ascii_case(b"sips:")),
            )
            .as_bytes(),
        );
    }
    if let Some(rseq) = rseq {
        b.header_fmt(HeaderName::RSeq, format_args!("{rseq}"));
    }
    if let Some((src, body)) = from {
        relay_request_parts(&mut b, src, &[], body);
    }
    b.build()
}

/// Copies the relayed headers and the body of `src` (or `body` in its place, with its content
/// type) onto a request or response being built.
pub fn relay_request_parts(
    b: &mut MessageBuilder,
    src: &SipMessage,
    skip: &[HeaderName],
    body: Option<&[u8]>,
) {
    for h in RELAYED_HEADERS.iter().filter(|h| !skip.contains(h)) {
        b.copy_headers(src, *h);
    }
    for name in RELAYED_OTHER {
        for v in src.other_header(name) {
            b.header_named(name.as_bytes(), v);
        }
    }
    // Rewritten SDP goes in place of the SDP part of a multipart body (the rest kept).
    let body = match body {
        Some(sdp) => {
            super::body::with_sdp(src, sdp).map_or_else(|| Bytes::copy_from_slice(sdp), Bytes::from)
        }
        None => Bytes::copy_from_slice(src.body()),
    };
    if !body.is_empty() {
        let ct = src
            .header(HeaderName::ContentType)
            .unwrap_or(b"application/sdp");
        b.body(ct, body);
    }
}

/// A plain response (no relay) to a request received on a leg.
pub fn local_response(
    request: &Envelope,
    status: u16,
    to_tag: Option<&str>,
    extra: &[(HeaderName, &[u8])],
) -> Bytes {
    let reason = medpool_sip::message::builder::reason_phrase(status);
    let mut b = response_to(
        &request.msg,
        status,
        reason.as_bytes(),
        to_tag,
        Some(request.peer),
    );
    for (h, v) in extra {
        b.header(*h, v);
    }
    b.build()
}

/// A UAC's route set from a 2xx/18x: the Record-Route values in reverse order (RFC 3261 §12.1.2).
pub fn uac_route_set(msg: &SipMessage) -> Vec<Bytes> {
    let mut v: Vec<Bytes> = msg
        .record_routes()
        .flatten()
        .map(|r| Bytes::copy_from_slice(r.raw))
        .collect();
    v.reverse();
    v
}
