//! What a node answers to a request before any dialog logic sees it (RFC 3261 §8.2 and §16.3): a
//! malformed message gets 400 (505 for a bad version, 513 when too large), an unknown URI scheme 416, an
//! unknown method 501, an unsupported `Require` 420 with `Unsupported`, a body it cannot read 415 with
//! `Accept`, an INVITE whose `Accept` excludes SDP 406. Responses are never answered: a malformed one is
//! dropped. Whether an answer can be built at all is [`can_answer`].

use crate::message::headers::{HeaderError, media_type, split_commas};
use crate::message::uri::Scheme;
use crate::message::{HeaderName, Method, SipMessage, Uri};

/// Option tags (RFC 3261 §19.2) this node implements; anything else in `Require` gets 420.
pub const SUPPORTED_OPTIONS: &[&str] = &["100rel", "timer"];

/// Methods this node knows (extension methods get 501).
pub const ALLOWED_METHODS: &str =
    "INVITE, ACK, BYE, CANCEL, OPTIONS, PRACK, UPDATE, INFO, REFER, NOTIFY, MESSAGE";

/// Body types an INVITE, UPDATE, PRACK or ACK may carry (SDP, possibly inside multipart).
pub const ACCEPTED_SESSION_BODIES: &str = "application/sdp, multipart/mixed, multipart/alternative";

/// A request the node refuses, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The status code.
    pub status: u16,
    /// A short reason, used as the reason phrase (and for logs and metrics).
    pub reason: &'static str,
    /// Extra headers the answer must carry (`Unsupported`, `Accept`, `Allow`, ...).
    pub extra: Vec<(HeaderName, String)>,
}

impl Rejection {
    fn new(status: u16, reason: &'static str) -> Rejection {
        Rejection {
            status,
            reason,
            extra: Vec::new(),
        }
    }
    fn with(mut self, name: HeaderName, value: impl Into<String>) -> Rejection {
        self.extra.push((name, value.into()));
        self
    }
}

/// Why a response is dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DropReason {
    /// The response has a defect.
    #[error("malformed response: {0}")]
    Defect(crate::message::Defect),
    /// A header needed to match it to a transaction is missing or malformed.
    #[error("response without a usable {0}")]
    Header(&'static str),
}

/// Whether an answer to this request can be built and routed: a parseable top Via (where it goes) and a
/// CSeq line (copied as received, so a CSeq with an out-of-range number can still be answered 400).
pub fn can_answer(msg: &SipMessage) -> bool {
    msg.is_request()
        && matches!(msg.top_via(), Some(Ok(_)))
        && msg.header(HeaderName::CSeq).is_some()
}

fn bad(reason: &'static str) -> Rejection {
    Rejection::new(400, reason)
}

fn need<T>(
    v: Option<Result<T, HeaderError>>,
    missing: &'static str,
    malformed: &'static str,
) -> Result<T, Rejection> {
    match v {
        None => Err(bad(missing)),
        Some(Err(_)) => Err(bad(malformed)),
        Some(Ok(t)) => Ok(t),
    }
}

/// Checks a request. `Ok(())` means it may go on to the transaction layer and the B2BUA.
pub fn check_request(msg: &SipMessage) -> Result<(), Rejection> {
    let Some(method) = msg.method() else {
        return Err(bad("Not a request"));
    };
    if let Some(d) = msg.defect() {
        return Err(Rejection::new(
            d.status(),
            match d.status() {
                505 => "Version Not Supported",
                513 => "Message Too Large",
                _ => "Malformed Message",
            },
        ));
    }
    // Mandatory headers, each once, each well formed (RFC 3261 §8.1.1).
    if msg.header_count(HeaderName::Via) == 0 {
        return Err(bad("Missing Via"));
    }
    if msg.vias().any(|v| v.is_err()) {
        return Err(bad("Malformed Via"));
    }
    for h in [
        HeaderName::From,
        HeaderName::To,
        HeaderName::CallId,
        HeaderName::CSeq,
        HeaderName::MaxForwards,
        HeaderName::ContentType,
        HeaderName::SessionExpires,
        HeaderName::MinSe,
        HeaderName::RSeq,
        HeaderName::RAck,
    ] {
        if msg.header_count(h) > 1 {
            return Err(bad("Duplicate Header"));
        }
    }
    need(msg.from(), "Missing From", "Malformed From")?;
    need(msg.to(), "Missing To", "Malformed To")?;
    need(msg.call_id(), "Missing Call-ID", "Malformed Call-ID")?;
    let cseq = need(msg.cseq(), "Missing CSeq", "Malformed CSeq")?;
    if let Some(Err(_)) = msg.max_forwards() {
        return Err(bad("Malformed Max-Forwards"));
    }
    if msg.contacts().any(|c| c.is_err()) {
        return Err(bad("Malformed Contact"));
    }
    if msg.routes().any(|c| c.is_err()) || msg.record_routes().any(|c| c.is_err()) {
        return Err(bad("Malformed Route"));
    }
    if let Some(Err(_)) = msg.session_expires() {
        return Err(bad("Malformed Session-Expires"));
    }
    if let Some(Err(_)) = msg.min_se() {
        return Err(bad("Malformed Min-SE"));
    }
    if let Some(Err(_)) = msg.rack() {
        return Err(bad("Malformed RAck"));
    }
    if Some(cseq.method_bytes) != msg.method_bytes() {
        return Err(bad("CSeq Method Mismatch"));
    }
    // The Request-URI (RFC 3261 §8.2.2.1, §19.1.5: no headers in a Request-URI).
    match msg.request_uri() {
        Some(Ok(uri)) => check_request_uri(&uri)?,
        _ => return Err(bad("Malformed Request-URI")),
    }
    if method == Method::Other {
        return Err(Rejection::new(501, "Not Implemented").with(HeaderName::Allow, ALLOWED_METHODS));
    }
    // Require (RFC 3261 §8.2.2.3); never checked for ACK and CANCEL.
    if !matches!(method, Method::Ack | Method::Cancel) {
        let unsupported: Vec<String> = msg
            .require()
            .filter(|t| {
                !SUPPORTED_OPTIONS
                    .iter()
                    .any(|s| t.eq_ignore_ascii_case(s.as_bytes()))
            })
            .map(|t| String::from_utf8_lossy(t).into_owned())
            .collect();
        if !unsupported.is_empty() {
            return Err(Rejection::new(420, "Bad Extension")
                .with(HeaderName::Unsupported, unsupported.join(", ")));
        }
    }
    check_body(msg, method)?;
    Ok(())
}

fn check_request_uri(uri: &Uri<'_>) -> Result<(), Rejection> {
    match uri.scheme {
        Scheme::Other => Err(Rejection::new(416, "Unsupported URI Scheme")),
        Scheme::Sip | Scheme::Sips if uri.headers.is_some() => Err(bad("Headers In Request-URI")),
        _ => Ok(()),
    }
}

fn is_session_body(ct: &[u8]) -> bool {
    ct.eq_ignore_ascii_case(b"application/sdp")
        || ct.eq_ignore_ascii_case(b"multipart/mixed")
        || ct.eq_ignore_ascii_case(b"multipart/alternative")
}

fn check_body(msg: &SipMessage, method: Method) -> Result<(), Rejection> {
    let session = matches!(
        method,
        Method::Invite | Method::Update | Method::Prack | Method::Ack
    );
    if !msg.body().is_empty() {
        let Some(ct) = msg.content_type() else {
            return Err(bad("Missing Content-Type"));
        };
        if session && !is_session_body(ct) {
            return Err(Rejection::new(415, "Unsupported Media Type")
                .with(HeaderName::Accept, ACCEPTED_SESSION_BODIES));
        }
        if msg
            .token_list(HeaderName::ContentEncoding)
            .any(|e| !e.eq_ignore_ascii_case(b"identity"))
        {
            return Err(
                Rejection::new(415, "Unsupported Media Type").with(HeaderName::Other, "identity")
            );
        }
    }
    // An INVITE answered with SDP must accept SDP (RFC 3261 §21.4.7).
    if method == Method::Invite && msg.header_count(HeaderName::Accept) > 0 {
        let accepts_sdp = msg
            .header_values(HeaderName::Accept)
            .flat_map(split_commas)
            .any(|a| {
                let t = media_type(a);
                t.is_empty()
                    || t == b"*/*"
                    || t.eq_ignore_ascii_case(b"application/*")
                    || t.eq_ignore_ascii_case(b"application/sdp")
                    || t.eq_ignore_ascii_case(b"multipart/mixed")
            });
        if !accepts_sdp {
            return Err(
                Rejection::new(406, "Not Acceptable").with(HeaderName::Accept, "application/sdp")
            );
        }
    }
    Ok(())
}

/// Checks a response well enough to match it to a transaction (RFC 3261 §18.1.2).
pub fn check_response(msg: &SipMessage) -> Result<(), DropReason> {
    if let Some(d) = msg.defect() {
        return Err(DropReason::Defect(*d));
    }
    match msg.top_via() {
        Some(Ok(_)) => {}
        _ => return Err(DropReason::Header("Via")),
    }
    match msg.cseq() {
        Some(Ok(_)) => {}
        _ => return Err(DropReason::Header("CSeq")),
    }
    match msg.call_id() {
        Some(Ok(_)) => {}
        _ => return Err(DropReason::Header("Call-ID")),
    }
    if !matches!(msg.from(), Some(Ok(_))) {
        return Err(DropReason::Header("From"));
    }
    if !matches!(msg.to(), Some(Ok(_))) {
        return Err(DropReason::Header("To"));
    }
    Ok(())
}

/// Builds the answer to a rejected request, when one can be built ([`can_answer`]).
pub fn rejection_response(
    msg: &SipMessage,
    rejection: &Rejection,
    to_tag: Option<&str>,
    source: Option<std::net::SocketAddr>,
) -> Option<bytes::Bytes> {
    if !can_answer(msg) || msg.method() == Some(Method::Ack) {
        return None;
    }
    let mut b = crate::message::builder::response_to(
        msg,
        rejection.status,
        rejection.reason.as_bytes(),
        to_tag,
        source,
    );
    for (name, value) in &rejection.extra {
        match name {
            HeaderName::Other => b.header_named(b"Accept-Encoding", value.as_bytes()),
            n => b.header(*n, value.as_bytes()),
        };
    }
    Some(b.build())
}
