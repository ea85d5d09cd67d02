//! Building a [`SipMessage`] index from bytes: the start line, header lines (folded lines joined, compact
//! forms classified, any case, whitespace around the colon), and the body by Content-Length.
//!
//! Two outcomes when something is wrong:
//! - a [`ParseError`] when nothing usable can be built (not SIP, a response with a bad status line, a
//!   stream whose header section never ends): the message is dropped;
//! - a [`Defect`] recorded on an otherwise indexed message (a malformed Request-Line, a bad or duplicate
//!   Content-Length, a header line without a colon, a limit exceeded): the index holds every header seen, so
//!   [`crate::check`] can still answer a request with the right status.

use bytes::Bytes;
use memchr::memchr;

use super::syntax::is_token_char;
pub use super::syntax::{Defect, ParseError};
use super::{HeaderEntry, HeaderName, Method, SipMessage, Span, StartLine};
use crate::limits::Limits;

/// What the parser learned about the body framing; the stream framer uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyLen {
    /// A valid, single Content-Length.
    Known(usize),
    /// No Content-Length header.
    Missing,
    /// Malformed, negative or duplicated.
    Bad(Defect),
}

/// The result of indexing a header section.
pub(crate) struct HeadIndex {
    pub start: StartLine,
    pub headers: Vec<HeaderEntry>,
    /// Offset of the first body byte (after the empty line), or the end of input when there is none.
    pub body_start: usize,
    pub body_len: BodyLen,
    pub defect: Option<Defect>,
}

#[inline]
fn is_ws(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ws(buf: &[u8], mut s: usize, mut e: usize) -> (usize, usize) {
    while s < e && is_ws(buf[s]) {
        s += 1;
    }
    while e > s && is_ws(buf[e - 1]) {
        e -= 1;
    }
    (s, e)
}

/// The end of a line's content (excluding CR LF or LF) given the position of its LF.
#[inline]
fn content_end(buf: &[u8], lf: usize, line_start: usize) -> usize {
    if lf > line_start && buf[lf - 1] == b'\r' {
        lf - 1
    } else {
        lf
    }
}

fn parse_start_line(
    buf: &[u8],
    s: usize,
    e: usize,
) -> Result<(StartLine, Option<Defect>), ParseError> {
    let line = &buf[s..e];
    if line.starts_with(b"SIP/") {
        return parse_status_line(buf, s, e).map(|sl| (sl, None));
    }
    // Request-Line: exactly "Method SP Request-URI SP SIP-Version", single spaces (RFC 3261 §7.1).
    let Some(sp1) = memchr(b' ', line) else {
        return Err(ParseError::NotSip);
    };
    let method_tok = &line[..sp1];
    if method_tok.is_empty() || !method_tok.iter().all(|&b| is_token_char(b)) {
        return Err(ParseError::NotSip);
    }
    let method = Method::classify(method_tok);
    let method_span = Span::new(s, s + sp1);
    let rest = &line[sp1 + 1..];
    let mut defect = None;
    let (uri_span, version) = match memchr::memrchr(b' ', rest) {
        Some(sp2) => (Span::new(s + sp1 + 1, s + sp1 + 1 + sp2), &rest[sp2 + 1..]),
        None => (Span::new(s + sp1 + 1, e), &b""[..]),
    };
    let uri = &buf[uri_span.start as usize..uri_span.end as usize];
    if uri.is_empty() || uri.iter().any(|&b| b <= b' ' || b == 0x7f) || version.is_empty() {
        defect = Some(Defect::RequestLine);
    } else if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        defect = Some(if looks_like_version(version) {
            Defect::Version
        } else {
            Defect::RequestLine
        });
    }
    Ok((
        StartLine::Request {
            method,
            method_span,
            uri: uri_span,
        },
        defect,
    ))
}

fn looks_like_version(v: &[u8]) -> bool {
    v.len() > 4
        && v[..4].eq_ignore_ascii_case(b"SIP/")
        && v[4..].iter().all(|&b| b.is_ascii_digit() || b == b'.')
        && v[4..].contains(&b'.')
}

fn parse_status_line(buf: &[u8], s: usize, e: usize) -> Result<StartLine, ParseError> {
    let line = &buf[s..e];
    if line.len() < 11 || !line[..8].eq_ignore_ascii_case(b"SIP/2.0 ") {
        return Err(ParseError::BadStatusLine);
    }
    let code = &line[8..11];
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(ParseError::BadStatusLine);
    }
    let status =
        (code[0] - b'0') as u16 * 100 + (code[1] - b'0') as u16 * 10 + (code[2] - b'0') as u16;
    if !(100..=699).contains(&status) {
        return Err(ParseError::BadStatusLine);
    }
    let reason = match line.get(11) {
        None => Span::new(e, e),
        Some(b' ') => Span::new(s + 12, e),
        Some(_) => return Err(ParseError::BadStatusLine), // e.g. a 4-digit code
    };
    Ok(StartLine::Response { status, reason })
}

/// Indexes the start line and header section of `buf`. `datagram` says whether the input is a whole UDP
/// datagram (a missing final empty line then ends the header section) or a stream buffer (then the
/// section is incomplete).
pub(crate) fn index_head(
    buf: &[u8],
    limits: &Limits,
    datagram: bool,
) -> Result<HeadIndex, ParseError> {
    // RFC 3261 §7.5: CRLFs before the start line are ignored.
    let mut pos = 0;
    while pos < buf.len() && (buf[pos] == b'\r' || buf[pos] == b'\n') {
        pos += 1;
    }
    if pos == buf.len() {
        return Err(ParseError::Empty);
    }
    let Some(lf) = memchr(b'\n', &buf[pos..]).map(|i| i + pos) else {
        if !datagram {
            return Err(ParseError::Framing("incomplete start line"));
        }
        return Err(ParseError::NotSip);
    };
    let line_end = content_end(buf, lf, pos);
    let (start, mut defect) = parse_start_line(buf, pos, line_end)?;
    if line_end - pos > limits.max_line_length {
        defect.get_or_insert(Defect::TooLarge);
    }
    pos = lf + 1;

    let mut headers: Vec<HeaderEntry> = Vec::with_capacity(24);
    let mut broken = false; // after a malformed line, keep scanning for the end but index no more
    let mut cl_count = 0u32;
    let mut body_len = BodyLen::Missing;
    let mut terminated = false; // the empty line that ends the header section was seen
    loop {
        if pos >= buf.len() {
            // Input ended without the empty line.
            break;
        }
        let (lf, next) = match memchr(b'\n', &buf[pos..]) {
            Some(i) => (pos + i, pos + i + 1),
            None => {
                if !datagram {
                    break;
                }
                (buf.len(), buf.len())
            }
        };
        let e = content_end(buf, lf, pos);
        if e == pos && lf < buf.len() {
            pos = next;
            terminated = true;
            break;
        }
        if e - pos > limits.max_line_length {
            defect.get_or_insert(Defect::TooLarge);
        }
        if broken {
            pos = next;
            continue;
        }
        if is_ws(buf[pos]) {
            // A continuation line (folding, RFC 3261 §7.3.1): extend the previous header's value.
            match headers.last_mut() {
                Some(h) => {
                    let (ts, te) = trim_ws(buf, pos, e);
                    if ts < te {
                        if h.value.is_empty() {
                            h.value = Span::new(ts, te);
                        } else {
                            h.value.end = te as u32;
                        }
                    }
                }
                None => {
                    defect.get_or_insert(Defect::HeaderLine);
                    broken = true;
                }
            }
            pos = next;
            continue;
        }
        let Some(colon) = memchr(b':', &buf[pos..e]).map(|i| i + pos) else {
            defect.get_or_insert(Defect::HeaderLine);
            broken = true;
            pos = next;
            continue;
        };
        let (ns, ne) = trim_ws(buf, pos, colon);
        let name_bytes = &buf[ns..ne];
        if name_bytes.is_empty() || !name_bytes.iter().all(|&b| is_token_char(b)) {
            defect.get_or_insert(Defect::HeaderLine);
            broken = true;
            pos = next;
            continue;
        }
        let name = HeaderName::classify(name_bytes);
        let (vs, ve) = trim_ws(buf, colon + 1, e);
        if headers.len() >= limits.max_headers {
            defect.get_or_insert(Defect::TooLarge);
            broken = true;
            pos = next;
            continue;
        }
        headers.push(HeaderEntry {
            name,
            name_span: Span::new(ns, ne),
            value: Span::new(vs, ve),
        });
        pos = next;
    }
    // Content-Length, read after folding is resolved.
    for h in headers
        .iter()
        .filter(|h| h.name == HeaderName::ContentLength)
    {
        cl_count += 1;
        body_len = match super::headers::parse_content_length(
            &buf[h.value.start as usize..h.value.end as usize],
        ) {
            Ok(n) => BodyLen::Known(n),
            Err(_) => BodyLen::Bad(Defect::ContentLength),
        };
    }
    if cl_count > 1 {
        body_len = BodyLen::Bad(Defect::MultipleContentLength);
    }
    if datagram && !terminated {
        // A datagram cut inside its header section (RFC 3261 §7: the empty line is mandatory): what
        // arrived cannot be told apart from a message whose later headers were lost.
        defect.get_or_insert(Defect::Unterminated);
    }
    Ok(HeadIndex {
        start,
        headers,
        body_start: pos,
        body_len,
        defect,
    })
}

impl SipMessage {
    /// Parses one UDP datagram (RFC 3261 §18.3: without Content-Length the body is the rest of the
    /// datagram; bytes after Content-Length are ignored; a Content-Length beyond the datagram is a defect).
    pub fn parse_datagram(raw: Bytes, limits: &Limits) -> Result<SipMessage, ParseError> {
        let head = index_head(&raw, limits, true)?;
        let mut defect = head.defect;
        if raw.len() > limits.max_message_size {
            defect.get_or_insert(Defect::TooLarge);
        }
        let avail = raw.len() - head.body_start.min(raw.len());
        let body_len = match head.body_len {
            BodyLen::Known(n) if n <= avail => n,
            BodyLen::Known(_) => {
                defect.get_or_insert(Defect::BodyTruncated);
                avail
            }
            BodyLen::Missing => avail,
            BodyLen::Bad(d) => {
                defect.get_or_insert(d);
                avail
            }
        };
        let end = head.body_start + body_len;
        Ok(SipMessage {
            start: head.start,
            headers: head.headers,
            body: Span::new(head.body_start, end),
            end: end as u32,
            defect,
            checked: false,
            raw,
        })
    }

    /// Parses a complete message from bytes (a datagram); a convenience for tests and tools.
    pub fn parse(raw: impl Into<Bytes>) -> Result<SipMessage, ParseError> {
        SipMessage::parse_datagram(raw.into(), &Limits::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> SipMessage {
        SipMessage::parse(s.as_bytes().to_vec()).expect("parses")
    }

    #[test]
    fn folded_header_value_spans_lines() {
        let m =
            p("OPTIONS sip:a@b SIP/2.0\r\nTO :\r\n sip:x@y ;tag=1\r\nSubject: a\r\n\tb\r\n\r\n");
        assert_eq!(m.header(HeaderName::To), Some(&b"sip:x@y ;tag=1"[..]));
        assert_eq!(m.header(HeaderName::Subject), Some(&b"a\r\n\tb"[..]));
        assert!(m.defect().is_none());
    }

    #[test]
    fn request_line_needs_single_spaces() {
        assert_eq!(
            p("INVITE  sip:a@b  SIP/2.0\r\n\r\n").defect(),
            Some(&Defect::RequestLine)
        );
        assert_eq!(
            p("INVITE sip:a@b SIP/2.0 \r\n\r\n").defect(),
            Some(&Defect::RequestLine)
        );
        assert_eq!(
            p("INVITE sip:a@b; lr SIP/2.0\r\n\r\n").defect(),
            Some(&Defect::RequestLine)
        );
        assert_eq!(
            p("INVITE sip:a@b SIP/7.0\r\n\r\n").defect(),
            Some(&Defect::Version)
        );
        assert!(p("INVITE sip:a@b SIP/2.0\r\n\r\n").defect().is_none());
    }

    #[test]
    fn a_datagram_cut_inside_its_headers_is_defective() {
        let whole =
            "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCall-ID: c\r\n\r\n";
        assert!(p(whole).defect().is_none());
        // Cut after a header line, inside one, and with a lone CR where the empty line should be.
        for cut in [
            "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n",
            "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCall-ID: c",
            "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nCall-ID: c\r\n\r",
        ] {
            let defect = p(cut).defect().copied();
            assert_eq!(defect.map(Defect::status), Some(400), "{cut:?}");
        }
        assert_eq!(
            p("OPTIONS sip:a@b SIP/2.0\r\nCall-ID: c\r\n").defect(),
            Some(&Defect::Unterminated)
        );
    }

    #[test]
    fn datagram_content_length_rules() {
        let m = p("MESSAGE sip:a@b SIP/2.0\r\nl: 3\r\n\r\nabcdef");
        assert_eq!(m.body(), b"abc");
        assert_eq!(m.as_bytes().len(), m.as_bytes().len());
        let m = p("MESSAGE sip:a@b SIP/2.0\r\n\r\nabcdef");
        assert_eq!(m.body(), b"abcdef");
        assert_eq!(
            p("MESSAGE sip:a@b SIP/2.0\r\nl: 30\r\n\r\nabc").defect(),
            Some(&Defect::BodyTruncated)
        );
        assert_eq!(
            p("MESSAGE sip:a@b SIP/2.0\r\nl: -3\r\n\r\nabc").defect(),
            Some(&Defect::ContentLength)
        );
        assert_eq!(
            p("MESSAGE sip:a@b SIP/2.0\r\nl: 3\r\nContent-Length: 3\r\n\r\nabc").defect(),
            Some(&Defect::MultipleContentLength)
        );
    }

    #[test]
    fn status_lines() {
        let m = p("SIP/2.0 100 \r\n\r\n");
        assert_eq!(m.status(), Some(100));
        assert_eq!(m.reason_phrase(), Some(&b""[..]));
        let m = p("SIP/2.0 180\r\n\r\n");
        assert_eq!(m.status(), Some(180));
        assert_eq!(
            SipMessage::parse(&b"SIP/2.0 4294967301 x\r\n\r\n"[..]).unwrap_err(),
            ParseError::BadStatusLine
        );
        assert_eq!(
            SipMessage::parse(&b"SIP/2.0 099 x\r\n\r\n"[..]).unwrap_err(),
            ParseError::BadStatusLine
        );
        let m = SipMessage::parse(&b"SIP/2.0 200 \xd0\xbe\xff ok\r\n\r\n"[..]).unwrap();
        assert_eq!(m.reason_phrase(), Some(&b"\xd0\xbe\xff ok"[..]));
    }

    #[test]
    fn garbage_is_not_sip() {
        assert_eq!(
            SipMessage::parse(&b"\r\n\r\n"[..]).unwrap_err(),
            ParseError::Empty
        );
        assert_eq!(
            SipMessage::parse(&b"hello"[..]).unwrap_err(),
            ParseError::NotSip
        );
        assert_eq!(
            SipMessage::parse(&b"\x00\x01 x y\r\n"[..]).unwrap_err(),
            ParseError::NotSip
        );
    }

    #[test]
    fn header_limit_is_a_defect() {
        let mut s = String::from("OPTIONS sip:a@b SIP/2.0\r\n");
        for i in 0..300 {
            s.push_str(&format!("X-H{i}: v\r\n"));
        }
        s.push_str("\r\n");
        assert_eq!(p(&s).defect(), Some(&Defect::TooLarge));
    }
}
