//! Typed, borrowed views of the headers a B2BUA reads: Via, name-addr headers (From, To, Contact, Route,
//! Record-Route, P-Asserted-Identity), CSeq, RAck, Session-Expires and the small scalar headers. Each view
//! is parsed on access from the received bytes and validated as RFC 3261 §25 says, with linear whitespace
//! (including folded line breaks) allowed wherever the grammar allows it.

use super::method::Method;
pub use super::syntax::{HeaderError, Params, trim_lws};
use super::syntax::{closing_quote, is_lws, is_token_char, trim_start_lws};
use super::uri::{Scheme, Uri, parse_hostport};

/// Splits a header value at top-level commas (not inside quotes or `<...>`), trimming each element.
/// Empty elements are yielded too, so that `a,,b` can be recognised as malformed where it matters.
pub fn split_commas(value: &[u8]) -> CommaSplit<'_> {
    CommaSplit { rest: Some(value) }
}

/// Iterator returned by [`split_commas`].
#[derive(Debug, Clone)]
pub struct CommaSplit<'a> {
    rest: Option<&'a [u8]>,
}

impl<'a> Iterator for CommaSplit<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let s = self.rest?;
        let mut i = 0;
        let mut angle = false;
        while i < s.len() {
            match s[i] {
                b'"' if !angle => match closing_quote(&s[i..]) {
                    Some(c) => i += c,
                    None => break, // unbalanced: the rest is one element, and will fail to parse
                },
                b'<' => angle = true,
                b'>' => angle = false,
                b',' if !angle => {
                    self.rest = Some(&s[i + 1..]);
                    return Some(trim_lws(&s[..i]));
                }
                _ => {}
            }
            i += 1;
        }
        self.rest = None;
        Some(trim_lws(s))
    }
}

fn take_token(s: &[u8]) -> (&[u8], &[u8]) {
    let end = s.iter().position(|&b| !is_token_char(b)).unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// One Via value (RFC 3261 §20.42).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Via<'a> {
    /// The whole value as received.
    pub raw: &'a [u8],
    /// The protocol version, e.g. `2.0`.
    pub version: &'a [u8],
    /// The transport token, e.g. `UDP`.
    pub transport: &'a [u8],
    /// The sent-by host (IPv6 with brackets).
    pub host: &'a [u8],
    /// The sent-by port.
    pub port: Option<u16>,
    /// The parameters.
    pub params: Params<'a>,
}

/// RFC 3261's branch magic cookie.
pub const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

impl<'a> Via<'a> {
    /// Parses one Via value (one element of a comma-separated line).
    pub fn parse(v: &'a [u8]) -> Result<Via<'a>, HeaderError> {
        let via = Self::parse_known_good(v)?;
        via.params.validate()?;
        Ok(via)
    }

    /// [`Via::parse`] for a value it has already accepted once (a message through the door's checks,
    /// [`SipMessage::is_checked`](crate::SipMessage::is_checked)): the same fields, without checking
    /// the parameters' grammar again. On a value `parse` accepts, the result is the same.
    pub(crate) fn parse_known_good(v: &'a [u8]) -> Result<Via<'a>, HeaderError> {
        let raw = trim_lws(v);
        if raw.is_empty() {
            return Err(HeaderError::Empty);
        }
        let (name, rest) = take_token(raw);
        if !name.eq_ignore_ascii_case(b"SIP") {
            return Err(HeaderError::ViaProtocol);
        }
        let rest = trim_start_lws(rest)
            .strip_prefix(b"/")
            .ok_or(HeaderError::ViaProtocol)?;
        let (version, rest) = take_token(trim_start_lws(rest));
        let rest = trim_start_lws(rest)
            .strip_prefix(b"/")
            .ok_or(HeaderError::ViaProtocol)?;
        let (transport, rest) = take_token(trim_start_lws(rest));
        if version.is_empty() || transport.is_empty() || rest.first().is_none_or(|&b| !is_lws(b)) {
            return Err(HeaderError::ViaProtocol);
        }
        let (host, port, rest) = parse_hostport(trim_start_lws(rest))?;
        let params = Params(trim_lws(rest));
        Ok(Via {
            raw,
            version,
            transport,
            host,
            port,
            params,
        })
    }

    /// The branch parameter.
    pub fn branch(&self) -> Option<&'a [u8]> {
        self.params.get("branch").flatten()
    }

    /// The `received` parameter (RFC 3261 §18.2.1).
    pub fn received(&self) -> Option<&'a [u8]> {
        self.params.get("received").flatten()
    }

    /// The `rport` parameter (RFC 3581): `Some(None)` when present without a value.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params
            .get("rport")
            .map(|v| v.and_then(|p| std::str::from_utf8(p).ok()?.parse().ok()))
    }

    /// Whether the branch carries RFC 3261's magic cookie (otherwise RFC 2543 matching applies).
    /// A branch that is exactly the cookie is treated as RFC 2543 (RFC 4475 §3.2.1).
    pub fn is_rfc3261(&self) -> bool {
        self.branch()
            .is_some_and(|b| b.len() > MAGIC_COOKIE.len() && b.starts_with(MAGIC_COOKIE))
    }
}

/// A `name-addr` or `addr-spec` header value with parameters: From, To, Contact, Route, Record-Route,
/// P-Asserted-Identity, Refer-To.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameAddr<'a> {
    /// The whole value as received.
    pub raw: &'a [u8],
    /// The display name as received, quotes included when it was quoted.
    pub display: Option<&'a [u8]>,
    /// The URI as received (without the angle brackets).
    pub uri: &'a [u8],
    /// Whether the URI was enclosed in `<...>`.
    pub bracketed: bool,
    /// The header parameters (after the URI).
    pub params: Params<'a>,
    /// A `Contact: *`.
    pub is_star: bool,
}

impl<'a> NameAddr<'a> {
    /// Parses one value.
    pub fn parse(v: &'a [u8]) -> Result<NameAddr<'a>, HeaderError> {
        let na = Self::parse_known_good(v)?;
        if na.is_star {
            return Ok(na);
        }
        let parsed = Uri::parse(na.uri)?;
        if !na.bracketed
            && matches!(parsed.scheme, Scheme::Sip | Scheme::Sips)
            && !parsed.params.is_empty()
        {
            // Cannot happen (an addr-spec is cut at ';'), kept as a guard.
            return Err(HeaderError::AddrSpec);
        }
        na.params.validate()?;
        Ok(na)
    }

    /// [`NameAddr::parse`] for a value it has already accepted once (a message through the door's
    /// checks, [`SipMessage::is_checked`](crate::SipMessage::is_checked)): where the display name,
    /// URI and parameters are, without checking the URI's and the parameters' grammar again. On a
    /// value `parse` accepts, the result is the same.
    pub(crate) fn parse_known_good(v: &'a [u8]) -> Result<NameAddr<'a>, HeaderError> {
        let raw = trim_lws(v);
        if raw.is_empty() {
            return Err(HeaderError::Empty);
        }
        if raw == b"*" {
            return Ok(NameAddr {
                raw,
                display: None,
                uri: b"",
                bracketed: false,
                params: Params(b""),
                is_star: true,
            });
        }
        let (display, bracket_start) = if raw[0] == b'"' {
            let close = closing_quote(raw).ok_or(HeaderError::Quote)?;
            let after = trim_start_lws(&raw[close + 1..]);
            if after.first() != Some(&b'<') {
                return Err(HeaderError::AddrSpec);
            }
            (Some(&raw[..=close]), Some(raw.len() - after.len()))
        } else if let Some(lt) = memchr::memchr(b'<', raw) {
            let d = trim_lws(&raw[..lt]);
            if !d.iter().all(|&b| is_token_char(b) || is_lws(b)) {
                return Err(HeaderError::DisplayName);
            }
            (if d.is_empty() { None } else { Some(d) }, Some(lt))
        } else {
            (None, None)
        };
        let (uri, rest, bracketed) = match bracket_start {
            Some(lt) => {
                let inner = &raw[lt + 1..];
                let gt = memchr::memchr(b'>', inner).ok_or(HeaderError::AddrSpec)?;
                let uri = &inner[..gt];
                if uri.is_empty() || is_lws(uri[0]) || is_lws(uri[uri.len() - 1]) {
                    return Err(HeaderError::AddrSpec);
                }
                (uri, &inner[gt + 1..], true)
            }
            None => {
                // addr-spec: the URI ends at whitespace or ';' and may not hold '?' or ',' (RFC 3261 §20).
                let end = raw
                    .iter()
                    .position(|&b| b == b';' || is_lws(b))
                    .unwrap_or(raw.len());
                let uri = &raw[..end];
                if uri.contains(&b'?') || uri.contains(&b',') {
                    return Err(HeaderError::AddrSpec);
                }
                (uri, &raw[end..], false)
            }
        };
        Ok(NameAddr {
            raw,
            display,
            uri,
            bracketed,
            params: Params(trim_lws(rest)),
            is_star: false,
        })
    }

    /// The `tag` parameter.
    pub fn tag(&self) -> Option<&'a [u8]> {
        self.params.get("tag").flatten()
    }

    /// The URI, parsed.
    pub fn parsed_uri(&self) -> Result<Uri<'a>, HeaderError> {
        Uri::parse(self.uri)
    }

    /// The display name without quotes and with `\` escapes resolved (bytes as received otherwise;
    /// they may be UTF-8 or not).
    pub fn display_unquoted(&self) -> Option<Vec<u8>> {
        let d = self.display?;
        if d.first() != Some(&b'"') {
            return Some(d.to_vec());
        }
        let inner = &d[1..d.len() - 1];
        let mut out = Vec::with_capacity(inner.len());
        let mut i = 0;
        while i < inner.len() {
            if inner[i] == b'\\' && i + 1 < inner.len() {
                i += 1;
            }
            out.push(inner[i]);
            i += 1;
        }
        Some(out)
    }
}

fn parse_decimal(s: &[u8], max: u64) -> Result<u64, HeaderError> {
    if s.is_empty() || s.len() > 20 || !s.iter().all(u8::is_ascii_digit) {
        return Err(HeaderError::Number);
    }
    let mut n: u64 = 0;
    for &b in s {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add((b - b'0') as u64))
            .ok_or(HeaderError::Number)?;
    }
    if n > max {
        return Err(HeaderError::Number);
    }
    Ok(n)
}

/// CSeq (RFC 3261 §20.16): the number must be below 2^31.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CSeq<'a> {
    /// The sequence number.
    pub seq: u32,
    /// The method.
    pub method: Method,
    /// The method token as received.
    pub method_bytes: &'a [u8],
}

impl<'a> CSeq<'a> {
    /// Parses a CSeq value.
    pub fn parse(v: &'a [u8]) -> Result<CSeq<'a>, HeaderError> {
        let v = trim_lws(v);
        let end = v
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(v.len());
        let seq = parse_decimal(&v[..end], (1 << 31) - 1)? as u32;
        if v.get(end).is_none_or(|&b| !is_lws(b)) {
            return Err(HeaderError::Method);
        }
        let m = trim_lws(&v[end..]);
        if m.is_empty() || !m.iter().all(|&b| is_token_char(b)) {
            return Err(HeaderError::Method);
        }
        Ok(CSeq {
            seq,
            method: Method::classify(m),
            method_bytes: m,
        })
    }
}

/// RAck (RFC 3262 §7.2): `response-num CSeq-num Method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RAck<'a> {
    /// The RSeq of the reliable provisional being acknowledged.
    pub rseq: u32,
    /// The CSeq number of the INVITE.
    pub cseq: u32,
    /// The method token (INVITE).
    pub method_bytes: &'a [u8],
}

impl<'a> RAck<'a> {
    /// Parses an RAck value.
    pub fn parse(v: &'a [u8]) -> Result<RAck<'a>, HeaderError> {
        let mut it = trim_lws(v).split(|&b| is_lws(b)).filter(|s| !s.is_empty());
        let rseq = parse_decimal(it.next().ok_or(HeaderError::Number)?, u32::MAX as u64)? as u32;
        let cseq = parse_decimal(it.next().ok_or(HeaderError::Number)?, (1 << 31) - 1)? as u32;
        let m = it.next().ok_or(HeaderError::Method)?;
        if it.next().is_some() || !m.iter().all(|&b| is_token_char(b)) {
            return Err(HeaderError::Method);
        }
        Ok(RAck {
            rseq,
            cseq,
            method_bytes: m,
        })
    }
}

/// Who refreshes a session (RFC 4028).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    /// The caller.
    Uac,
    /// The callee.
    Uas,
}

/// Session-Expires (RFC 4028 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    /// Interval in seconds.
    pub delta: u32,
    /// The refresher, when named.
    pub refresher: Option<Refresher>,
}

impl SessionExpires {
    /// Parses a Session-Expires value.
    pub fn parse(v: &[u8]) -> Result<SessionExpires, HeaderError> {
        let v = trim_lws(v);
        let end = v
            .iter()
            .position(|&b| b == b';' || is_lws(b))
            .unwrap_or(v.len());
        let delta = parse_decimal(&v[..end], u32::MAX as u64)? as u32;
        let params = Params(trim_lws(&v[end..]));
        params.validate()?;
        let refresher = match params.get("refresher").flatten() {
            Some(r) if r.eq_ignore_ascii_case(b"uac") => Some(Refresher::Uac),
            Some(r) if r.eq_ignore_ascii_case(b"uas") => Some(Refresher::Uas),
            Some(_) => return Err(HeaderError::Params),
            None => None,
        };
        Ok(SessionExpires { delta, refresher })
    }
}

/// A Call-ID: non-empty, no whitespace inside.
pub fn parse_call_id(v: &[u8]) -> Result<&[u8], HeaderError> {
    let v = trim_lws(v);
    if v.is_empty() {
        return Err(HeaderError::Empty);
    }
    if v.iter().any(|&b| is_lws(b) || b < 0x21 || b == 0x7f) {
        return Err(HeaderError::CallId);
    }
    Ok(v)
}

/// Max-Forwards: 0..=255 (RFC 3261 §20.22 allows any digits; values above 255 are rejected as RFC 4475 asks).
pub fn parse_max_forwards(v: &[u8]) -> Result<u8, HeaderError> {
    parse_decimal(trim_lws(v), 255).map(|n| n as u8)
}

/// Content-Length: decimal digits only, at most 2^31 - 1.
pub fn parse_content_length(v: &[u8]) -> Result<usize, HeaderError> {
    parse_decimal(trim_lws(v), (1 << 31) - 1).map(|n| n as usize)
}

/// Delta-seconds (Min-SE, Expires): a 32-bit number.
pub fn parse_delta_seconds(v: &[u8]) -> Result<u32, HeaderError> {
    let v = trim_lws(v);
    let end = v
        .iter()
        .position(|&b| b == b';' || is_lws(b))
        .unwrap_or(v.len());
    parse_decimal(&v[..end], u32::MAX as u64).map(|n| n as u32)
}

/// RSeq: 1..=2^32-1.
pub fn parse_u32_nonzero_value(v: &[u8]) -> Result<u32, HeaderError> {
    match parse_decimal(trim_lws(v), u32::MAX as u64)? {
        0 => Err(HeaderError::Number),
        n => Ok(n as u32),
    }
}

/// The `type/subtype` of a Content-Type or Accept element (parameters cut off).
pub fn media_type(v: &[u8]) -> &[u8] {
    let v = trim_lws(v);
    trim_lws(&v[..memchr::memchr(b';', v).unwrap_or(v.len())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn via_with_lws_and_params() {
        let v = Via::parse(b"SIP  /   2.0\r\n /UDP\r\n    192.0.2.2;branch=390skdjuw").unwrap();
        assert_eq!(v.transport, b"UDP");
        assert_eq!(v.host, b"192.0.2.2");
        assert_eq!(v.branch(), Some(&b"390skdjuw"[..]));
        assert!(!v.is_rfc3261());
        let v =
            Via::parse(b"SIP/2.0/UDP [2001:db8::9]:5070;branch=z9hG4bKabc;rport;received=1.2.3.4")
                .unwrap();
        assert_eq!(v.host, b"[2001:db8::9]");
        assert_eq!(v.port, Some(5070));
        assert_eq!(v.rport(), Some(None));
        assert_eq!(v.received(), Some(&b"1.2.3.4"[..]));
        assert!(v.is_rfc3261());
        let v = Via::parse(
            b"SIP  / 2.0  / TCP     spindle.example.com   ;\r\n  branch  =   z9hG4bK9ikj8",
        )
        .unwrap();
        assert_eq!(v.branch(), Some(&b"z9hG4bK9ikj8"[..]));
    }

    #[test]
    fn comma_separated_vias_split_correctly() {
        let parts: Vec<_> = split_commas(
            b"SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP 10.0.0.5:5060;branch=z9hG4bK2",
        )
        .collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            Via::parse(parts[0]).unwrap().branch(),
            Some(&b"z9hG4bK1"[..])
        );
        assert_eq!(Via::parse(parts[1]).unwrap().port, Some(5060));
    }

    #[test]
    fn bad_vias() {
        for v in [
            &b"192.0.2.15;;"[..],
            b"SIP/2.0/UDP 192.0.2.15;;",
            b"SIP/2.0/UDP",
            b"SIP/2.0/UDP h;branch",
            b"",
        ] {
            if v == b"SIP/2.0/UDP h;branch" {
                assert!(Via::parse(v).is_ok(), "flag params are fine");
                continue;
            }
            assert!(Via::parse(v).is_err(), "{}", String::from_utf8_lossy(v));
        }
        assert!(split_commas(b"SIP/2.0/UDP 192.0.2.15;;,;,,").any(|p| Via::parse(p).is_err()));
    }

    #[test]
    fn name_addr_forms() {
        let n = NameAddr::parse(
            b"\"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8",
        )
        .unwrap();
        assert_eq!(n.tag(), Some(&b"98asjd8"[..]));
        assert_eq!(n.display_unquoted().unwrap(), b"J Rosenberg \\\"");
        let n =
            NameAddr::parse(b"sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n").unwrap();
        assert_eq!(n.uri, b"sip:vivekg@chair-dnrc.example.com");
        assert_eq!(n.tag(), Some(&b"1918181833n"[..]));
        let n = NameAddr::parse(b"caller<sip:caller@example.com>;tag=323").unwrap();
        assert_eq!(n.display, Some(&b"caller"[..]));
        let n = NameAddr::parse(b"\"\xc3\xa9\xff\" <tel:+15551234;phone-context=x>").unwrap();
        assert_eq!(n.display_unquoted().unwrap(), b"\xc3\xa9\xff");
        assert_eq!(n.parsed_uri().unwrap().scheme, Scheme::Tel);
        let n = NameAddr::parse(b"<sip:[2001:db8::1]:5060;lr>").unwrap();
        assert_eq!(n.parsed_uri().unwrap().param("lr"), Some(None));
    }

    #[test]
    fn bad_name_addrs() {
        assert_eq!(
            NameAddr::parse(b"\"Mr. J. User <sip:j.user@example.com>"),
            Err(HeaderError::Quote)
        );
        assert_eq!(
            NameAddr::parse(b"\"Watson, Thomas\" < sip:t.watson@example.org >"),
            Err(HeaderError::AddrSpec)
        );
        assert_eq!(
            NameAddr::parse(b"Bell, Alexander <sip:a.g.bell@example.com>;tag=43"),
            Err(HeaderError::DisplayName)
        );
        assert_eq!(
            NameAddr::parse(b"sip:user@example.com?Route=%3Csip:sip.example.com%3E"),
            Err(HeaderError::AddrSpec)
        );
        assert_eq!(
            NameAddr::parse(b"\"Joe\" <sip:joe@example.org>;;;;"),
            Err(HeaderError::Params)
        );
    }

    #[test]
    fn cseq_and_scalars() {
        let c = CSeq::parse(b"0009\r\n  INVITE").unwrap();
        assert_eq!((c.seq, c.method), (9, Method::Invite));
        assert!(CSeq::parse(b"36893488147419103232 REGISTER").is_err());
        assert!(CSeq::parse(b"2147483648 INVITE").is_err());
        assert!(CSeq::parse(b"1INVITE").is_err());
        assert_eq!(parse_max_forwards(b"0068"), Ok(68));
        assert!(parse_max_forwards(b"300").is_err());
        assert!(parse_content_length(b"-999").is_err());
        assert!(parse_content_length(b"99999999999999999999999999999999999999").is_err());
        let r = RAck::parse(b"776656 1 INVITE").unwrap();
        assert_eq!((r.rseq, r.cseq), (776656, 1));
        let s = SessionExpires::parse(b"1800;refresher=uac").unwrap();
        assert_eq!((s.delta, s.refresher), (1800, Some(Refresher::Uac)));
        assert_eq!(
            media_type(b" application/sdp ; charset=x"),
            b"application/sdp"
        );
        assert!(parse_call_id(b"a b").is_err());
    }
}
