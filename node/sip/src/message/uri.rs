//! URIs as SIP carries them: `sip:`/`sips:` (RFC 3261 §19.1, IPv6 hosts in brackets, parameters and
//! headers), `tel:` (RFC 3966) and any other absolute URI (kept opaque). Views borrow the received bytes;
//! %-escapes are kept exactly as received and decoded only on request.

use std::borrow::Cow;

use super::syntax::{HeaderError, Params};

/// The scheme of a URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `sip:`
    Sip,
    /// `sips:`
    Sips,
    /// `tel:`
    Tel,
    /// Any other scheme (its text is in [`Uri::scheme_bytes`]).
    Other,
}

/// A parsed URI. For `sip`/`sips`, `user`, `host`, `port`, `params` and `headers` are filled; for `tel`,
/// `user` is the number and `params` its parameters; other schemes only have `raw`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Uri<'a> {
    /// The whole URI as received.
    pub raw: &'a [u8],
    /// Which scheme.
    pub scheme: Scheme,
    /// The scheme's text, without the colon.
    pub scheme_bytes: &'a [u8],
    /// The user part (escaped, as received), or the number of a `tel:` URI.
    pub user: Option<&'a [u8]>,
    /// The password after `user:`, as received.
    pub password: Option<&'a [u8]>,
    /// The host; an IPv6 reference keeps its brackets.
    pub host: &'a [u8],
    /// The port, when given.
    pub port: Option<u16>,
    /// The parameters, starting with `;` (empty when none).
    pub params: &'a [u8],
    /// The headers after `?`, without the `?`.
    pub headers: Option<&'a [u8]>,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')'
        )
}

fn valid_escapes(s: &[u8], allowed: impl Fn(u8) -> bool) -> bool {
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            if !(s.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && s.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
            {
                return false;
            }
            i += 3;
            continue;
        }
        if !allowed(b) {
            return false;
        }
        i += 1;
    }
    true
}

fn user_char(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'&' | b'=' | b'+' | b'$' | b',' | b';' | b'?' | b'/')
}

fn password_char(b: u8) -> bool {
    is_unreserved(b) || matches!(b, b'&' | b'=' | b'+' | b'$' | b',')
}

fn param_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'[' | b']' | b'/' | b':' | b'&' | b'+' | b'$' | b';' | b'='
        )
}

fn header_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'[' | b']' | b'/' | b'?' | b':' | b'+' | b'$' | b'&' | b'='
        )
}

/// A host, its optional port, and the bytes after them.
pub(crate) type HostPortRest<'a> = (&'a [u8], Option<u16>, &'a [u8]);

/// Parses the host and optional port at the start of `s`.
pub(crate) fn parse_hostport(s: &[u8]) -> Result<HostPortRest<'_>, HeaderError> {
    let (host, rest) = if s.first() == Some(&b'[') {
        let close = memchr::memchr(b']', s).ok_or(HeaderError::Host)?;
        let inner = &s[1..close];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err(HeaderError::Host);
        }
        (&s[..=close], &s[close + 1..])
    } else {
        let end = s
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_'))
            .unwrap_or(s.len());
        (&s[..end], &s[end..])
    };
    if host.is_empty() {
        return Err(HeaderError::Host);
    }
    if let Some(r) = rest.strip_prefix(b":") {
        let end = r
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(r.len());
        if end == 0 || end > 5 {
            return Err(HeaderError::Port);
        }
        let port: u32 = std::str::from_utf8(&r[..end])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(HeaderError::Port)?;
        if port > 65535 {
            return Err(HeaderError::Port);
        }
        return Ok((host, Some(port as u16), &r[end..]));
    }
    Ok((host, None, rest))
}

impl<'a> Uri<'a> {
    /// Parses a URI. `sip`/`sips` URIs are checked strictly (characters, escapes, host, port);
    /// `tel` and other schemes must have a valid scheme and no whitespace or controls.
    pub fn parse(raw: &'a [u8]) -> Result<Uri<'a>, HeaderError> {
        let colon = memchr::memchr(b':', raw).ok_or(HeaderError::Uri)?;
        let scheme_bytes = &raw[..colon];
        if scheme_bytes.is_empty()
            || !scheme_bytes[0].is_ascii_alphabetic()
            || !scheme_bytes
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        {
            return Err(HeaderError::Uri);
        }
        if raw
            .iter()
            .any(|&b| b <= b' ' || b == 0x7f || b == b'<' || b == b'>' || b == b'"')
        {
            return Err(HeaderError::Uri);
        }
        let rest = &raw[colon + 1..];
        let scheme = if scheme_bytes.eq_ignore_ascii_case(b"sip") {
            Scheme::Sip
        } else if scheme_bytes.eq_ignore_ascii_case(b"sips") {
            Scheme::Sips
        } else if scheme_bytes.eq_ignore_ascii_case(b"tel") {
            Scheme::Tel
        } else {
            Scheme::Other
        };
        let mut uri = Uri {
            raw,
            scheme,
            scheme_bytes,
            user: None,
            password: None,
            host: b"",
            port: None,
            params: b"",
            headers: None,
        };
        match scheme {
            Scheme::Sip | Scheme::Sips => {
                // '@' never appears unescaped in params or headers, so the first one ends the userinfo.
                let hostpart = match memchr::memchr(b'@', rest) {
                    Some(at) => {
                        let userinfo = &rest[..at];
                        // The password follows the first ':' that is not part of the user (user chars exclude ':').
                        let (user, password) = match memchr::memchr(b':', userinfo) {
                            Some(c) => (&userinfo[..c], Some(&userinfo[c + 1..])),
                            None => (userinfo, None),
                        };
                        if user.is_empty() || !valid_escapes(user, user_char) {
                            return Err(HeaderError::Uri);
                        }
                        if let Some(pw) = password
                            && !valid_escapes(pw, password_char)
                        {
                            return Err(HeaderError::Uri);
                        }
                        uri.user = Some(user);
                        uri.password = password;
                        &rest[at + 1..]
                    }
                    None => rest,
                };
                let (host, port, tail) = parse_hostport(hostpart)?;
                uri.host = host;
                uri.port = port;
                let (params, headers) = match memchr::memchr(b'?', tail) {
                    Some(q) => (&tail[..q], Some(&tail[q + 1..])),
                    None => (tail, None),
                };
                if !params.is_empty() && (params[0] != b';' || !valid_escapes(params, param_char)) {
                    return Err(HeaderError::Uri);
                }
                if params.windows(2).any(|w| w == b";;") || params.ends_with(b";") {
                    return Err(HeaderError::Uri);
                }
                if let Some(h) = headers
                    && (h.is_empty() || !valid_escapes(h, header_char))
                {
                    return Err(HeaderError::Uri);
                }
                uri.params = params;
                uri.headers = headers;
            }
            Scheme::Tel => {
                let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
                if end == 0 {
                    return Err(HeaderError::Uri);
                }
                uri.user = Some(&rest[..end]);
                uri.params = &rest[end..];
            }
            Scheme::Other => {
                if rest.is_empty() {
                    return Err(HeaderError::Uri);
                }
            }
        }
        Ok(uri)
    }

    /// The user part with %-escapes decoded (borrowed when there are none).
    pub fn user_unescaped(&self) -> Option<Cow<'a, [u8]>> {
        self.user.map(unescape)
    }

    /// A URI parameter's value: `Some(None)` for a parameter without value (e.g. `lr`).
    pub fn param(&self, name: &str) -> Option<Option<&'a [u8]>> {
        Params(self.params).get(name)
    }
}

/// Decodes %HH escapes (invalid escapes are kept as they are).
pub fn unescape(s: &[u8]) -> Cow<'_, [u8]> {
    if !s.contains(&b'%') {
        return Cow::Borrowed(s);
    }
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%'
            && i + 2 < s.len()
            && let (Some(h), Some(l)) = (hex(s[i + 1]), hex(s[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
            continue;
        }
        out.push(s[i]);
        i += 1;
    }
    Cow::Owned(out)
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Escapes a user part for a `sip:` URI we build: every byte outside RFC 3261's user characters becomes
/// %HH, `%` included. Give it unescaped text exactly once; to copy a received user part, use its raw bytes.
pub fn escape_user(s: &[u8]) -> Cow<'_, str> {
    if s.iter().all(|&b| user_char(b)) {
        // user_char is a subset of ASCII, so this is valid UTF-8.
        return Cow::Borrowed(std::str::from_utf8(s).unwrap_or_default());
    }
    let mut out = String::with_capacity(s.len() + 8);
    for &b in s {
        if user_char(b) {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(
                char::from_digit((b >> 4) as u32, 16)
                    .unwrap_or('0')
                    .to_ascii_uppercase(),
            );
            out.push(
                char::from_digit((b & 15) as u32, 16)
                    .unwrap_or('0')
                    .to_ascii_uppercase(),
            );
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sip_uri_parts() {
        let u = Uri::parse(b"sip:user;par=u%40example.net@example.com").unwrap();
        assert_eq!(u.user, Some(&b"user;par=u%40example.net"[..]));
        assert_eq!(u.host, b"example.com");
        let u = Uri::parse(b"sips:alice:secret@[2001:db8::10]:5061;transport=tcp;lr?Subject=hi")
            .unwrap();
        assert_eq!(u.scheme, Scheme::Sips);
        assert_eq!(u.password, Some(&b"secret"[..]));
        assert_eq!(u.host, b"[2001:db8::10]");
        assert_eq!(u.port, Some(5061));
        assert_eq!(u.param("transport"), Some(Some(&b"tcp"[..])));
        assert_eq!(u.param("lr"), Some(None));
        assert_eq!(u.headers, Some(&b"Subject=hi"[..]));
        let u = Uri::parse(b"sip:example.com").unwrap();
        assert_eq!(u.user, None);
    }

    #[test]
    fn tel_and_other_schemes() {
        let u = Uri::parse(b"tel:+1-201-555-0123;phone-context=+1").unwrap();
        assert_eq!(u.scheme, Scheme::Tel);
        assert_eq!(u.user, Some(&b"+1-201-555-0123"[..]));
        let u = Uri::parse(b"soap.beep://192.0.2.103:3002").unwrap();
        assert_eq!(u.scheme, Scheme::Other);
        assert!(Uri::parse(b"1abc:x").is_err());
        assert!(Uri::parse(b"sip:a b@c").is_err());
    }

    #[test]
    fn escapes_kept_and_decoded() {
        let u = Uri::parse(b"sip:%2A67%23@example.com").unwrap();
        assert_eq!(u.user, Some(&b"%2A67%23"[..]));
        assert_eq!(u.user_unescaped().unwrap().as_ref(), b"*67#");
        assert!(Uri::parse(b"sip:%zz@example.com").is_err());
        assert_eq!(escape_user(b"*67#"), "*67%23");
        assert_eq!(escape_user(b"100%"), "100%25");
        assert_eq!(escape_user(b"+15551234"), "+15551234");
    }

    #[test]
    fn bad_hosts_and_ports() {
        assert!(Uri::parse(b"sip:a@").is_err());
        assert!(Uri::parse(b"sip:a@h:99999").is_err());
        assert!(Uri::parse(b"sip:a@[zz]").is_err());
        assert!(Uri::parse(b"sip:a@h;;lr").is_err());
    }
}
