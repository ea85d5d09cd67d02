//! The bottom of the codec: what every other message module shares and none of them owns.
//! RFC 3261 §25's basic rules as the parser and the typed views need them — `token` characters,
//! linear whitespace (folded line breaks included), quoted strings, `;name=value` parameter lists —
//! and the error types the layers above return: [`ParseError`] and [`Defect`] from indexing a
//! message, [`HeaderError`] from reading a header value or a URI.
//!
//! It imports nothing from the rest of the crate, so `uri`, `headers`, the message index and `parse`
//! can all use it without importing each other.

/// Why a message could not be parsed at all (it is dropped; no answer can be built).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Nothing but whitespace.
    #[error("empty message")]
    Empty,
    /// The first line is neither a Request-Line nor a Status-Line.
    #[error("not a SIP message")]
    NotSip,
    /// A Status-Line with a bad version or a status code outside 100..=699.
    #[error("malformed Status-Line")]
    BadStatusLine,
    /// A stream's header section exceeded the size limit before it ended.
    #[error("header section larger than {0} bytes")]
    HeaderSectionTooLarge(usize),
    /// A stream's Content-Length is missing, malformed or duplicated: the stream cannot be framed.
    #[error("stream framing lost: {0}")]
    Framing(&'static str),
}

/// A fault in an otherwise indexed message. Requests with a defect are answered with
/// [`Defect::status`]; responses with a defect are dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Defect {
    /// The Request-Line is not `Method SP Request-URI SP SIP/2.0` with single spaces.
    #[error("malformed Request-Line")]
    RequestLine,
    /// The SIP version is not 2.0.
    #[error("SIP version not supported")]
    Version,
    /// A header line without a colon or with a name that is not a token.
    #[error("malformed header line")]
    HeaderLine,
    /// Content-Length is not a decimal number.
    #[error("malformed Content-Length")]
    ContentLength,
    /// Content-Length appears more than once.
    #[error("more than one Content-Length")]
    MultipleContentLength,
    /// Content-Length announces more bytes than the datagram holds.
    #[error("Content-Length larger than the message")]
    BodyTruncated,
    /// A message on a stream without Content-Length (RFC 3261 §18.3).
    #[error("Content-Length required on stream transports")]
    MissingContentLength,
    /// A datagram whose header section ends without the empty line (a truncated message).
    #[error("header section not ended by an empty line")]
    Unterminated,
    /// The message, a line or the header count exceeds a [`crate::Limits`] value.
    #[error("message too large")]
    TooLarge,
}

impl Defect {
    /// The status code a request with this defect is answered with.
    pub fn status(self) -> u16 {
        match self {
            Defect::Version => 505,
            Defect::TooLarge => 513,
            _ => 400,
        }
    }
}

/// Why a header value is malformed. Any of these in a request is answered 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// An empty value where one is required.
    #[error("empty value")]
    Empty,
    /// A malformed Via sent-protocol.
    #[error("malformed Via sent-protocol")]
    ViaProtocol,
    /// A malformed host.
    #[error("malformed host")]
    Host,
    /// A malformed or out-of-range port.
    #[error("malformed port")]
    Port,
    /// A malformed URI.
    #[error("malformed URI")]
    Uri,
    /// An unterminated quoted string.
    #[error("unbalanced quotes")]
    Quote,
    /// A malformed `<addr-spec>` (spaces inside the brackets, missing `>`, or `?`/`,` outside brackets).
    #[error("malformed name-addr")]
    AddrSpec,
    /// A display name with characters that need quoting.
    #[error("display name must be quoted")]
    DisplayName,
    /// A malformed parameter list (`;;`, a trailing `;`, a parameter name that is not a token).
    #[error("malformed parameters")]
    Params,
    /// A malformed or out-of-range number.
    #[error("malformed or out-of-range number")]
    Number,
    /// A malformed method token.
    #[error("malformed method")]
    Method,
    /// Whitespace inside a Call-ID.
    #[error("malformed Call-ID")]
    CallId,
}

/// RFC 3261 `token` characters, as a lookup table (the parser's hottest test).
static TOKEN: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    t
};

#[inline]
pub(crate) fn is_token_char(b: u8) -> bool {
    TOKEN[b as usize]
}

#[inline]
pub(crate) fn is_lws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

/// Trims linear whitespace (including folded line breaks) at both ends.
pub fn trim_lws(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_lws(b)).unwrap_or(s.len());
    let end = s.iter().rposition(|&b| !is_lws(b)).map_or(start, |e| e + 1);
    &s[start..end]
}

pub(crate) fn trim_start_lws(s: &[u8]) -> &[u8] {
    &s[s.iter().position(|&b| !is_lws(b)).unwrap_or(s.len())..]
}

/// Index of the `"` that closes a quoted string starting at `s[0] == '"'`, honouring `\` escapes.
pub(crate) fn closing_quote(s: &[u8]) -> Option<usize> {
    let mut i = 1;
    while i < s.len() {
        match s[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// A parameter list as received: `;name=value;flag...` (whitespace allowed around `;` and `=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Params<'a>(pub &'a [u8]);

impl<'a> Params<'a> {
    /// Iterates `(name, value)` pairs; values keep their quotes.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        ParamSplit { rest: self.0 }.filter_map(|p| {
            let p = trim_lws(p);
            if p.is_empty() {
                return None;
            }
            Some(match memchr::memchr(b'=', p) {
                Some(eq) => (trim_lws(&p[..eq]), Some(trim_lws(&p[eq + 1..]))),
                None => (p, None),
            })
        })
    }

    /// The value of a parameter: `Some(None)` when present without a value. Names compare case-insensitively.
    pub fn get(&self, name: &str) -> Option<Option<&'a [u8]>> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// Checks the grammar: every parameter a token name, values tokens, hosts or quoted strings.
    pub fn validate(&self) -> Result<(), HeaderError> {
        let s = trim_lws(self.0);
        if s.is_empty() {
            return Ok(());
        }
        if s[0] != b';' {
            return Err(HeaderError::Params);
        }
        for p in (ParamSplit { rest: s }) {
            let p = trim_lws(p);
            let (name, value) = match memchr::memchr(b'=', p) {
                Some(eq) => (trim_lws(&p[..eq]), Some(trim_lws(&p[eq + 1..]))),
                None => (p, None),
            };
            if name.is_empty() || !name.iter().all(|&b| is_token_char(b)) {
                return Err(HeaderError::Params);
            }
            if let Some(v) = value {
                let ok = if v.first() == Some(&b'"') {
                    closing_quote(v) == Some(v.len() - 1)
                } else if v.first() == Some(&b'[') {
                    v.last() == Some(&b']')
                        && v[1..v.len() - 1]
                            .iter()
                            .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
                } else {
                    !v.is_empty() && v.iter().all(|&b| is_token_char(b) || b == b':')
                };
                if !ok {
                    return Err(HeaderError::Params);
                }
            }
        }
        Ok(())
    }
}

/// Splits `;a;b=c` into `a`, `b=c` (skipping the leading `;`), honouring quoted strings.
struct ParamSplit<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for ParamSplit<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let s = trim_start_lws(self.rest);
        let s = s.strip_prefix(b";")?;
        let mut i = 0;
        while i < s.len() {
            match s[i] {
                b'"' => match closing_quote(&s[i..]) {
                    Some(c) => i += c,
                    None => i = s.len() - 1,
                },
                b';' => break,
                _ => {}
            }
            i += 1;
        }
        let i = i.min(s.len());
        self.rest = &s[i..];
        Some(&s[..i])
    }
}
