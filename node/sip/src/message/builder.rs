//! Writing messages. The builder writes exactly what it is given: values copied from a received message
//! (URIs, tags, unknown headers) go out byte for byte, and text we compose is escaped once, where it is
//! composed ([`crate::message::uri::escape_user`], [`quote_display`]). Content-Length is always written.

use std::fmt::Write as _;
use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};

use super::{HeaderName, Method, SipMessage};

/// Builds one SIP message into a single buffer.
#[derive(Debug, Clone)]
pub struct MessageBuilder {
    head: BytesMut,
    body: Option<(Bytes, Bytes)>,
}

/// The standard reason phrase of a status code.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        421 => "Extension Required",
        422 => "Session Interval Too Small",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        505 => "Version Not Supported",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => match status / 100 {
            1 => "Progress",
            2 => "OK",
            3 => "Redirect",
            4 => "Client Error",
            5 => "Server Error",
            _ => "Global Failure",
        },
    }
}

/// Quotes a display name for a name-addr: wraps it in `"` and escapes `"` and `\` (once).
pub fn quote_display(name: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 2);
    out.push(b'"');
    for &b in name {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        // CR and LF cannot be carried in a quoted string; drop them rather than break the message.
        if b != b'\r' && b != b'\n' {
            out.push(b);
        }
    }
    out.push(b'"');
    out
}

/// Spare room a built message may keep in its buffer before [`MessageBuilder::build`] copies it out
/// at its exact size.
const SPARE_KEPT: usize = 128;

impl MessageBuilder {
    /// Starts a request: `METHOD uri SIP/2.0`.
    pub fn request(method: &[u8], uri: &[u8]) -> MessageBuilder {
        let mut head = BytesMut::with_capacity(1024);
        head.put_slice(method);
        head.put_u8(b' ');
        head.put_slice(uri);
        head.put_slice(b" SIP/2.0\r\n");
        MessageBuilder { head, body: None }
    }

    /// Starts a request for a known method.
    pub fn request_method(method: Method, uri: &[u8]) -> MessageBuilder {
        MessageBuilder::request(method.as_str().as_bytes(), uri)
    }

    /// Starts a response: `SIP/2.0 status reason`.
    pub fn response(status: u16, reason: &[u8]) -> MessageBuilder {
        let mut head = BytesMut::with_capacity(768);
        head.put_slice(b"SIP/2.0 ");
        let _ = write!(StrBuf(&mut head), "{status}");
        head.put_u8(b' ');
        head.put_slice(reason);
        head.put_slice(b"\r\n");
        MessageBuilder { head, body: None }
    }

    /// Adds a known header with its canonical name.
    pub fn header(&mut self, name: HeaderName, value: &[u8]) -> &mut Self {
        self.header_named(name.canonical().as_bytes(), value)
    }

    /// Adds a header by name (an extension header, or a received name copied as it was).
    pub fn header_named(&mut self, name: &[u8], value: &[u8]) -> &mut Self {
        self.head.put_slice(name);
        self.head.put_slice(b": ");
        self.head.put_slice(value);
        self.head.put_slice(b"\r\n");
        self
    }

    /// Adds a header whose value is formatted text.
    pub fn header_fmt(&mut self, name: HeaderName, args: std::fmt::Arguments<'_>) -> &mut Self {
        self.head.put_slice(name.canonical().as_bytes());
        self.head.put_slice(b": ");
        let _ = StrBuf(&mut self.head).write_fmt(args);
        self.head.put_slice(b"\r\n");
        self
    }

    /// Copies every line of a header from a received message, byte for byte (values as received).
    pub fn copy_headers(&mut self, from: &SipMessage, name: HeaderName) -> &mut Self {
        for h in from.headers().iter().filter(|h| h.name == name) {
            self.header(name, from.span_bytes(h.value));
        }
        self
    }

    /// Sets the body and its Content-Type.
    pub fn body(&mut self, content_type: &[u8], body: Bytes) -> &mut Self {
        self.body = Some((Bytes::copy_from_slice(content_type), body));
        self
    }

    /// Finishes the message: Content-Type (with a body), Content-Length, the empty line and the body.
    pub fn build(&mut self) -> Bytes {
        let mut out = std::mem::take(&mut self.head);
        match self.body.take() {
            Some((ct, body)) if !body.is_empty() => {
                out.put_slice(b"Content-Type: ");
                out.put_slice(&ct);
                out.put_slice(b"\r\n");
                let _ = write!(StrBuf(&mut out), "Content-Length: {}\r\n\r\n", body.len());
                out.put_slice(&body);
            }
            _ => out.put_slice(b"Content-Length: 0\r\n\r\n"),
        }
        // The buffer starts large enough for any usual message; a message that is kept (by its
        // transaction until 64*T1 after its final answer, by a call for its whole life: the ACK
        // of a 2xx) keeps only its own bytes, not the spare room.
        if out.capacity() > out.len() + SPARE_KEPT {
            return Bytes::copy_from_slice(&out);
        }
        out.freeze()
    }
}

struct StrBuf<'a>(&'a mut BytesMut);

impl std::fmt::Write for StrBuf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.put_slice(s.as_bytes());
        Ok(())
    }
}

/// The top Via of a request with `received` and `rport` filled as RFC 3261 §18.2.1 and RFC 3581 say:
/// `received` when the sent-by host differs from the source address; `rport=<port>` when the request
/// asked for it with an empty `rport`.
pub fn via_with_received(via_value: &[u8], source: SocketAddr) -> Vec<u8> {
    let Ok(via) = super::Via::parse(via_value) else {
        return via_value.to_vec();
    };
    let mut out = Vec::with_capacity(via.raw.len() + 40);
    let ip = source.ip().to_string();
    let host_is_source = {
        let h = via.host;
        let h = h
            .strip_prefix(b"[")
            .and_then(|h| h.strip_suffix(b"]"))
            .unwrap_or(h);
        h.eq_ignore_ascii_case(ip.as_bytes())
    };
    let wants_rport = via.rport() == Some(None);
    if !wants_rport && host_is_source {
        return via.raw.to_vec();
    }
    // Rewrite the parameter list: keep every parameter as received except rport/received, then add ours.
    let params_start = via.raw.len() - via.params.0.len();
    out.extend_from_slice(super::headers::trim_lws(&via.raw[..params_start]));
    for (name, value) in via.params.iter() {
        if name.eq_ignore_ascii_case(b"rport") && wants_rport
            || name.eq_ignore_ascii_case(b"received")
        {
            continue;
        }
        out.push(b';');
        out.extend_from_slice(name);
        if let Some(v) = value {
            out.push(b'=');
            out.extend_from_slice(v);
        }
    }
    if !host_is_source || wants_rport {
        out.extend_from_slice(b";received=");
        out.extend_from_slice(ip.as_bytes());
    }
    if wants_rport {
        let _ = write!(VecBuf(&mut out), ";rport={}", source.port());
    }
    out
}

struct VecBuf<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for VecBuf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Starts a response to `request` (RFC 3261 §8.2.6): the Vias (top one with `received`/`rport` from
/// `source`), From, To (with `to_tag` added when the request's To has none and the status is above 100),
/// Call-ID and CSeq, all copied as received. Headers the request lacks are left out.
pub fn response_to(
    request: &SipMessage,
    status: u16,
    reason: &[u8],
    to_tag: Option<&str>,
    source: Option<SocketAddr>,
) -> MessageBuilder {
    let mut b = MessageBuilder::response(status, reason);
    let mut first = true;
    for v in request.header_values(HeaderName::Via) {
        for part in super::headers::split_commas(v) {
            if first {
                first = false;
                match source {
                    Some(src) => {
                        let top = via_with_received(part, src);
                        b.header(HeaderName::Via, &top);
                    }
                    None => {
                        b.header(HeaderName::Via, part);
                    }
                }
            } else {
                b.header(HeaderName::Via, part);
            }
        }
    }
    b.copy_headers(request, HeaderName::From);
    if let Some(to) = request.header(HeaderName::To) {
        let has_tag = request.to_tag().is_some();
        match to_tag {
            Some(tag) if !has_tag && status > 100 => {
                let mut v = to.to_vec();
                v.extend_from_slice(b";tag=");
                v.extend_from_slice(tag.as_bytes());
                b.header(HeaderName::To, &v);
            }
            _ => {
                b.header(HeaderName::To, to);
            }
        }
    }
    b.copy_headers(request, HeaderName::CallId);
    b.copy_headers(request, HeaderName::CSeq);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_a_request_that_parses_back() {
        let mut b = MessageBuilder::request_method(Method::Invite, b"sip:%2A67%23@gw.example.com");
        b.header(
            HeaderName::Via,
            b"SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx",
        )
        .header(HeaderName::MaxForwards, b"70")
        .header(HeaderName::From, b"\"A\" <sip:a@b>;tag=1")
        .header(HeaderName::To, b"<sip:c@d>")
        .header(HeaderName::CallId, b"abc")
        .header(HeaderName::CSeq, b"1 INVITE")
        .body(b"application/sdp", Bytes::from_static(b"v=0\r\n"));
        let m = SipMessage::parse(b.build()).unwrap();
        assert!(m.defect().is_none());
        assert_eq!(
            m.request_uri_bytes(),
            Some(&b"sip:%2A67%23@gw.example.com"[..])
        );
        assert_eq!(m.body(), b"v=0\r\n");
        assert_eq!(m.content_length().unwrap(), Ok(5));
    }

    #[test]
    fn display_names_are_quoted_once() {
        assert_eq!(quote_display(b"Bell, \"Al\""), b"\"Bell, \\\"Al\\\"\"");
    }

    #[test]
    fn received_and_rport() {
        let src: SocketAddr = "192.0.2.7:6000".parse().unwrap();
        let v = via_with_received(b"SIP/2.0/UDP host.example.com;branch=z9hG4bK1;rport", src);
        assert_eq!(
            v,
            b"SIP/2.0/UDP host.example.com;branch=z9hG4bK1;received=192.0.2.7;rport=6000"
        );
        let v = via_with_received(b"SIP/2.0/UDP 192.0.2.7:6000;branch=z9hG4bK1", src);
        assert_eq!(v, b"SIP/2.0/UDP 192.0.2.7:6000;branch=z9hG4bK1");
    }
}
