//! The SIP message: the received bytes plus an index of where the start line, each header and the body
//! sit in them. Typed views (Via, From/To, CSeq, ...) are parsed lazily, on access, from those bytes, so a
//! message that is only routed costs one scan. Nothing received is rewritten: a header the B2BUA does not
//! understand can be copied out byte for byte, %-escapes and all.
//!
//! Flow: [`parse`] builds the index (framing, folding, compact forms, limits) → the typed accessors here
//! and in [`headers`]/[`uri`] read values → [`crate::check`] decides whether a request is acceptable →
//! [`builder`] writes new messages.
//!
//! Layers: each module imports only modules drawn below it.
//! ```text
//!   builder                  new messages and answers (reads SipMessage, headers, uri)
//!   parse                    bytes → SipMessage (its constructors); Content-Length via headers
//!   (this module)            SipMessage, Span, StartLine, HeaderEntry and the typed accessors
//!   headers                  typed header views (Via, name-addr, CSeq, RAck, Session-Expires, ...)
//!   uri                      sip:/sips:/tel:/other URIs
//!   syntax · header · method leaves: RFC 3261 §25 basic rules, Params and the error types (ParseError,
//!                            Defect, HeaderError); header names; methods
//! ```
//! `headers::{HeaderError, Params, trim_lws}` and `parse::{Defect, ParseError}` stay available under
//! those paths (re-exported from [`syntax`]).

pub mod builder;
pub mod header;
pub mod headers;
pub mod method;
pub mod parse;
pub mod syntax;
pub mod uri;

use bytes::Bytes;

pub use header::HeaderName;
pub use headers::{CSeq, NameAddr, Params, RAck, SessionExpires, Via};
pub use method::Method;
pub use syntax::{Defect, ParseError};
pub use uri::Uri;

/// A byte range inside a message's buffer. `u32` keeps the index small; messages are far below 4 GiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    /// First byte.
    pub start: u32,
    /// One past the last byte.
    pub end: u32,
}

impl Span {
    #[inline]
    pub(crate) fn new(start: usize, end: usize) -> Span {
        Span {
            start: start as u32,
            end: end as u32,
        }
    }
    /// Length in bytes.
    pub fn len(self) -> usize {
        (self.end - self.start) as usize
    }
    /// Whether the span is empty.
    pub fn is_empty(self) -> bool {
        self.end == self.start
    }
    #[inline]
    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// The first line of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartLine {
    /// `Method SP Request-URI SP SIP-Version`.
    Request {
        /// The classified method; `Other` for extensions (see [`SipMessage::method_bytes`]).
        method: Method,
        /// The method token as received.
        method_span: Span,
        /// The Request-URI as received.
        uri: Span,
    },
    /// `SIP-Version SP Status-Code SP Reason-Phrase`.
    Response {
        /// 100..=699.
        status: u16,
        /// The reason phrase as received (any bytes, possibly empty).
        reason: Span,
    },
}

/// One header line (possibly folded over several physical lines) in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderEntry {
    /// What the name means.
    pub name: HeaderName,
    /// The name as received (compact or long, any case).
    pub name_span: Span,
    /// The value, with leading and trailing whitespace trimmed; folded lines keep their CRLF + WS inside.
    pub value: Span,
}

/// A parsed SIP message. Cheap to clone (the bytes are shared).
#[derive(Debug, Clone)]
pub struct SipMessage {
    pub(crate) raw: Bytes,
    pub(crate) start: StartLine,
    pub(crate) headers: Vec<HeaderEntry>,
    pub(crate) body: Span,
    /// The end of the message within `raw` (a datagram may carry trailing bytes that are ignored).
    pub(crate) end: u32,
    pub(crate) defect: Option<Defect>,
    /// Whether the message passed the door's checks ([`crate::check`]: top Via, From, To, Call-ID and
    /// CSeq well formed), so their views are taken again without re-checking their grammar.
    pub(crate) checked: bool,
}

impl SipMessage {
    /// The message bytes as received (exactly this message; trailing datagram bytes excluded).
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw[..self.end as usize]
    }

    /// Gives back the spare room of the header index (sized for a large message when parsed), for
    /// a message that is kept for long.
    pub fn shrink_to_fit(&mut self) {
        self.headers.shrink_to_fit();
    }

    /// The shared buffer, for zero-copy forwarding.
    pub fn bytes(&self) -> Bytes {
        self.raw.slice(..self.end as usize)
    }

    #[inline]
    pub(crate) fn slice(&self, span: Span) -> &[u8] {
        &self.raw[span.range()]
    }

    /// The bytes of a span obtained from this message.
    pub fn span_bytes(&self, span: Span) -> &[u8] {
        self.slice(span)
    }

    /// The start line.
    pub fn start_line(&self) -> &StartLine {
        &self.start
    }

    /// Whether this is a request.
    pub fn is_request(&self) -> bool {
        matches!(self.start, StartLine::Request { .. })
    }

    /// The method of a request; `None` for a response (use [`SipMessage::cseq`] for its method).
    pub fn method(&self) -> Option<Method> {
        match self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The method token of a request as received.
    pub fn method_bytes(&self) -> Option<&[u8]> {
        match self.start {
            StartLine::Request { method_span, .. } => Some(self.slice(method_span)),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI of a request, as received.
    pub fn request_uri_bytes(&self) -> Option<&[u8]> {
        match self.start {
            StartLine::Request { uri, .. } => Some(self.slice(uri)),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI, parsed.
    pub fn request_uri(&self) -> Option<Result<Uri<'_>, headers::HeaderError>> {
        self.request_uri_bytes().map(Uri::parse)
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        match self.start {
            StartLine::Response { status, .. } => Some(status),
            StartLine::Request { .. } => None,
        }
    }

    /// The reason phrase of a response as received (may hold any bytes, UTF-8 or not).
    pub fn reason_phrase(&self) -> Option<&[u8]> {
        match self.start {
            StartLine::Response { reason, .. } => Some(self.slice(reason)),
            StartLine::Request { .. } => None,
        }
    }

    /// Every header line in order.
    pub fn headers(&self) -> &[HeaderEntry] {
        &self.headers
    }

    /// The value bytes of every line of a header, in order.
    pub fn header_values(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        self.headers
            .iter()
            .filter(move |h| h.name == name)
            .map(|h| self.slice(h.value))
    }

    /// The value of the first line of a header.
    pub fn header(&self, name: HeaderName) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| self.slice(h.value))
    }

    /// How many lines of a header there are.
    pub fn header_count(&self, name: HeaderName) -> usize {
        self.headers.iter().filter(|h| h.name == name).count()
    }

    /// The values of an extension header by name (case-insensitive).
    pub fn other_header(&self, name: &str) -> impl Iterator<Item = &[u8]> + '_ {
        let name = name.to_owned();
        self.headers
            .iter()
            .filter(move |h| {
                h.name == HeaderName::Other
                    && self
                        .slice(h.name_span)
                        .eq_ignore_ascii_case(name.as_bytes())
            })
            .map(|h| self.slice(h.value))
    }

    /// The body (exactly Content-Length bytes, or the rest of a datagram without Content-Length).
    pub fn body(&self) -> &[u8] {
        self.slice(self.body)
    }

    /// A fault found while indexing that still left a usable message (so an answer can be built), e.g. a
    /// malformed request line or a bad Content-Length. [`crate::check`] turns it into a status code.
    pub fn defect(&self) -> Option<&Defect> {
        self.defect.as_ref()
    }

    /// Every Via value, in order, splitting comma-separated values on one line.
    pub fn vias(&self) -> impl Iterator<Item = Result<Via<'_>, headers::HeaderError>> + '_ {
        self.header_values(HeaderName::Via)
            .flat_map(headers::split_commas)
            .map(Via::parse)
    }

    /// The topmost Via.
    pub fn top_via(&self) -> Option<Result<Via<'_>, headers::HeaderError>> {
        let first = self
            .header_values(HeaderName::Via)
            .flat_map(headers::split_commas)
            .next()?;
        Some(if self.checked {
            Via::parse_known_good(first)
        } else {
            Via::parse(first)
        })
    }

    /// The From header.
    pub fn from(&self) -> Option<Result<NameAddr<'_>, headers::HeaderError>> {
        self.header(HeaderName::From).map(|v| self.name_addr(v))
    }

    /// The To header.
    pub fn to(&self) -> Option<Result<NameAddr<'_>, headers::HeaderError>> {
        self.header(HeaderName::To).map(|v| self.name_addr(v))
    }

    /// From or To: checked once at the door, so parsed there and split here.
    fn name_addr<'a>(&self, v: &'a [u8]) -> Result<NameAddr<'a>, headers::HeaderError> {
        if self.checked {
            NameAddr::parse_known_good(v)
        } else {
            NameAddr::parse(v)
        }
    }

    /// Whether the message passed the door's checks (the transport's screen marks it): its top
    /// Via, From, To, Call-ID and CSeq are well formed, and their views are no longer re-checked
    /// each time they are taken (the same values, fewer steps).
    pub fn is_checked(&self) -> bool {
        self.checked
    }

    /// Marks the message as through the door's checks (only the screen, after they passed).
    pub(crate) fn mark_checked(&mut self) {
        self.checked = true;
    }

    /// Marks a message whose exact bytes another node of the pool received and passed through
    /// its own door's checks, as that node says (the `checked` flag of a forward between pool
    /// nodes): its views are not re-checked here either. Only for bytes a pool node vouches for;
    /// anything from the network goes through the screen.
    pub fn vouched_checked(&mut self) {
        self.checked = true;
    }

    /// The Call-ID (whitespace trimmed; must be non-empty and without inner whitespace).
    pub fn call_id(&self) -> Option<Result<&[u8], headers::HeaderError>> {
        self.header(HeaderName::CallId).map(headers::parse_call_id)
    }

    /// The CSeq header.
    pub fn cseq(&self) -> Option<Result<CSeq<'_>, headers::HeaderError>> {
        self.header(HeaderName::CSeq).map(CSeq::parse)
    }

    /// Max-Forwards (0..=255).
    pub fn max_forwards(&self) -> Option<Result<u8, headers::HeaderError>> {
        self.header(HeaderName::MaxForwards)
            .map(headers::parse_max_forwards)
    }

    /// Every Contact value (a `*` Contact is reported as an error-free `NameAddr` with `is_star`).
    pub fn contacts(
        &self,
    ) -> impl Iterator<Item = Result<NameAddr<'_>, headers::HeaderError>> + '_ {
        self.name_addr_list(HeaderName::Contact)
    }

    /// Every Route value, in order.
    pub fn routes(&self) -> impl Iterator<Item = Result<NameAddr<'_>, headers::HeaderError>> + '_ {
        self.name_addr_list(HeaderName::Route)
    }

    /// Every Record-Route value, in order.
    pub fn record_routes(
        &self,
    ) -> impl Iterator<Item = Result<NameAddr<'_>, headers::HeaderError>> + '_ {
        self.name_addr_list(HeaderName::RecordRoute)
    }

    /// Every P-Asserted-Identity value.
    pub fn p_asserted_identities(
        &self,
    ) -> impl Iterator<Item = Result<NameAddr<'_>, headers::HeaderError>> + '_ {
        self.name_addr_list(HeaderName::PAssertedIdentity)
    }

    fn name_addr_list(
        &self,
        name: HeaderName,
    ) -> impl Iterator<Item = Result<NameAddr<'_>, headers::HeaderError>> + '_ {
        self.header_values(name)
            .flat_map(headers::split_commas)
            .map(NameAddr::parse)
    }

    /// Content-Length as a number, when present and well formed.
    pub fn content_length(&self) -> Option<Result<usize, headers::HeaderError>> {
        self.header(HeaderName::ContentLength)
            .map(headers::parse_content_length)
    }

    /// Content-Type media type (`type/subtype`, parameters cut off, trimmed), as received.
    pub fn content_type(&self) -> Option<&[u8]> {
        self.header(HeaderName::ContentType)
            .map(headers::media_type)
    }

    /// The option tags of every Require line.
    pub fn require(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.token_list(HeaderName::Require)
    }

    /// The option tags of every Supported line.
    pub fn supported(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.token_list(HeaderName::Supported)
    }

    /// The option tags of every Proxy-Require line.
    pub fn proxy_require(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.token_list(HeaderName::ProxyRequire)
    }

    /// The option tags of every Unsupported line.
    pub fn unsupported(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.token_list(HeaderName::Unsupported)
    }

    /// The methods of every Allow line.
    pub fn allow(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.token_list(HeaderName::Allow)
    }

    /// Whether a comma-list header (Require, Supported, Allow, ...) names `tag` (case-insensitive).
    pub fn has_option(&self, name: HeaderName, tag: &str) -> bool {
        self.token_list(name)
            .any(|t| t.eq_ignore_ascii_case(tag.as_bytes()))
    }

    /// Elements of comma-separated lists, trimmed, empty elements skipped.
    pub fn token_list(&self, name: HeaderName) -> impl Iterator<Item = &[u8]> + '_ {
        self.header_values(name)
            .flat_map(headers::split_commas)
            .filter(|t| !t.is_empty())
    }

    /// Session-Expires (RFC 4028).
    pub fn session_expires(&self) -> Option<Result<SessionExpires, headers::HeaderError>> {
        self.header(HeaderName::SessionExpires)
            .map(SessionExpires::parse)
    }

    /// Min-SE in seconds (RFC 4028).
    pub fn min_se(&self) -> Option<Result<u32, headers::HeaderError>> {
        self.header(HeaderName::MinSe)
            .map(headers::parse_delta_seconds)
    }

    /// RSeq (RFC 3262).
    pub fn rseq(&self) -> Option<Result<u32, headers::HeaderError>> {
        self.header(HeaderName::RSeq)
            .map(headers::parse_u32_nonzero_value)
    }

    /// RAck (RFC 3262).
    pub fn rack(&self) -> Option<Result<RAck<'_>, headers::HeaderError>> {
        self.header(HeaderName::RAck).map(RAck::parse)
    }

    /// Every Reason value (RFC 3326), as received (`protocol ;cause=..;text=".."`).
    pub fn reasons(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.header_values(HeaderName::Reason)
            .flat_map(headers::split_commas)
    }

    /// The tag of the To header, when present and parseable.
    pub fn to_tag(&self) -> Option<&[u8]> {
        self.to().and_then(|r| r.ok()).and_then(|t| t.tag())
    }

    /// The tag of the From header, when present and parseable.
    pub fn from_tag(&self) -> Option<&[u8]> {
        self.from().and_then(|r| r.ok()).and_then(|t| t.tag())
    }

    /// The branch of the top Via, when present and parseable.
    pub fn top_branch(&self) -> Option<&[u8]> {
        self.top_via().and_then(|r| r.ok()).and_then(|v| v.branch())
    }
}
