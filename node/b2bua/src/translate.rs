//! Number translation, pure: taking the number out of a SIP or tel URI, applying a trunk's
//! dial-plan rules (inbound normalisation, outbound called/calling translation) and its
//! response code translation.
//!
//! The rules themselves ([`NumberRule`], [`ResponseRule`]) are part of the configuration
//! model; this module only applies them. Rule semantics: the first rule whose pattern matches
//! anywhere in the number wins, and its first match is replaced by the rule's `replace`
//! (`$1`, `${1}`, `${name}` refer to capture groups, `$$` is a literal `$`); when no rule
//! matches the number is unchanged.

use std::borrow::Cow;

use crate::config::{NumberRule, ResponseRule, Trunk};

/// Applies the first matching rule of `rules` to `number`; unchanged when none matches.
pub fn apply_rules<'n>(rules: &[NumberRule], number: &'n str) -> Cow<'n, str> {
    match rules.iter().find(|r| r.pattern.is_match(number)) {
        Some(rule) => rule.pattern.regex().replace(number, rule.replace.as_str()),
        None => Cow::Borrowed(number),
    }
}

/// The status to relay for a final response `status` received from a trunk, after the
/// trunk's response code translation (unchanged when no rule maps it).
pub fn translate_response(rules: &[ResponseRule], status: u16) -> u16 {
    rules
        .iter()
        .find(|r| r.from == status)
        .map_or(status, |r| r.to)
}

/// The numbers of a call after a trunk's rules.
impl Trunk {
    /// Inbound dial plan: a called or calling number of a request that arrived on this trunk.
    pub fn normalize_number<'n>(&self, number: &'n str) -> Cow<'n, str> {
        apply_rules(&self.normalize, number)
    }

    /// Outbound: the called number of a call sent out on this trunk.
    pub fn called_out_number<'n>(&self, number: &'n str) -> Cow<'n, str> {
        apply_rules(&self.called_out, number)
    }

    /// Outbound: the calling number of a call sent out on this trunk.
    pub fn calling_out_number<'n>(&self, number: &'n str) -> Cow<'n, str> {
        apply_rules(&self.calling_out, number)
    }

    /// The status to relay for a final response `status` from this trunk.
    pub fn map_response(&self, status: u16) -> u16 {
        translate_response(&self.response_map, status)
    }
}

/// RFC 3966 visual separators, dropped from telephone numbers.
fn is_visual_separator(c: char) -> bool {
    matches!(c, '-' | '.' | '(' | ')' | ' ')
}

/// Whether `text` (percent-decoded, without parameters) is a telephone number: an optional
/// leading `+`, then digits, `*`, `#` and visual separators, with at least one digit.
fn is_phone_number(text: &str) -> bool {
    let body = text.strip_prefix('+').unwrap_or(text);
    body.chars().any(|c| c.is_ascii_digit())
        && body
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '*' | '#') || is_visual_separator(c))
}

/// Decodes `%XX` escapes; invalid escapes are kept as written.
fn percent_decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).and_then(|b| hex(*b)),
                bytes.get(i + 2).and_then(|b| hex(*b)),
            )
        {
            // hi, lo < 16, so this fits a byte.
            out.push(u8::try_from(hi * 16 + lo).unwrap_or(b'?'));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// The number in a URI's user part (or a tel URI's subscriber): parameters (`;...`) cut off,
/// `%XX` decoded, and — when it is a telephone number — RFC 3966 visual separators
/// (`-.() `) removed, keeping a leading `+`. A user that is not a telephone number (e.g.
/// SIPp's `service`) is returned as is, so routes can still match it.
pub fn number_from_user(user: &str) -> String {
    let user = user.split(';').next().unwrap_or(user);
    let decoded = percent_decode(user);
    if is_phone_number(&decoded) {
        decoded
            .chars()
            .filter(|c| !is_visual_separator(*c))
            .collect()
    } else {
        decoded.into_owned()
    }
}

/// The number of a URI given as text: `sip:`/`sips:` user part (`None` when the URI has no
/// user), or `tel:` subscriber; angle brackets and a display name around it are tolerated.
/// `None` as well for other schemes.
///
/// ```
/// use medpool_b2bua::translate::number_from_uri;
/// assert_eq!(number_from_uri("sip:+1-555-0100@gw;user=phone").as_deref(), Some("+15550100"));
/// assert_eq!(number_from_uri("tel:+49(30)123.456;phone-context=x").as_deref(), Some("+4930123456"));
/// assert_eq!(number_from_uri("\"Svc\" <sip:service@127.0.0.1:5060>").as_deref(), Some("service"));
/// assert_eq!(number_from_uri("sip:127.0.0.1"), None);
/// ```
pub fn number_from_uri(uri: &str) -> Option<String> {
    let uri = match (uri.find('<'), uri.rfind('>')) {
        (Some(start), Some(end)) if start < end => &uri[start + 1..end],
        _ => uri,
    };
    let uri = uri.trim();
    let (scheme, rest) = uri.split_once(':')?;
    if scheme.eq_ignore_ascii_case("tel") {
        let subscriber = rest.split(';').next().unwrap_or(rest);
        return Some(number_from_user(subscriber));
    }
    if !(scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips")) {
        return None;
    }
    // The userinfo ends at the first '@' (an '@' inside it would be escaped).
    let at = rest.find('@')?;
    let userinfo = &rest[..at];
    // Drop a password (`user:password`).
    let user = userinfo.split(':').next().unwrap_or(userinfo);
    (!user.is_empty()).then(|| number_from_user(user))
}

/// A name-addr or addr-spec header value (P-Asserted-Identity, From, ...) with the number of its
/// `sip:`/`sips:` user part or `tel:` subscriber replaced by `number` (escaped for the URI); the
/// display name, host, URI parameters (`;user=phone`, `;phone-context=...`) and header
/// parameters are kept as written. `None` when the URI has no number to replace (no user part,
/// another scheme).
///
/// ```
/// use medpool_b2bua::translate::with_number;
/// assert_eq!(
///     with_number("\"Alice\" <sip:0301234;npdi@pbx;user=phone>", "+49301234").as_deref(),
///     Some("\"Alice\" <sip:+49301234;npdi@pbx;user=phone>")
/// );
/// assert_eq!(with_number("<tel:4711;phone-context=x>", "+4930 4711").as_deref(), Some("<tel:+4930%204711;phone-context=x>"));
/// assert_eq!(with_number("<sip:pbx.example>", "1"), None);
/// ```
pub fn with_number(value: &str, number: &str) -> Option<String> {
    // The URI: inside the angle brackets when there are some, else the whole value.
    let (start, end) = match (value.find('<'), value.rfind('>')) {
        (Some(s), Some(e)) if s < e => (s + 1, e),
        _ => (0, value.len()),
    };
    let uri = &value[start..end];
    let colon = uri.find(':')?;
    let scheme = uri[..colon].trim();
    let rest_at = start + colon + 1;
    let rest = &value[rest_at..end];
    let user_len = if scheme.eq_ignore_ascii_case("tel") {
        rest.find([';', '?']).unwrap_or(rest.len())
    } else if scheme.eq_ignore_ascii_case("sip") || scheme.eq_ignore_ascii_case("sips") {
        let at = rest.find('@')?;
        // The number ends at its parameters or a password.
        rest[..at].find([';', ':']).unwrap_or(at)
    } else {
        return None;
    };
    if user_len == 0 {
        return None;
    }
    let escaped = medpool_sip::message::uri::escape_user(number.as_bytes());
    let mut out = String::with_capacity(value.len() + number.len());
    out.push_str(&value[..rest_at]);
    out.push_str(&escaped);
    out.push_str(&value[rest_at + user_len..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Pattern;

    fn rule(pattern: &str, replace: &str) -> NumberRule {
        NumberRule {
            pattern: Pattern::new(pattern).unwrap(),
            replace: replace.to_owned(),
        }
    }

    #[test]
    fn first_matching_rule_wins() {
        let rules = vec![
            rule(r"^00(\d+)$", "+$1"),
            rule(r"^0(\d+)$", "+4930${1}"),
            rule(r"^(\d{4})$", "+4930123${1}"),
        ];
        assert_eq!(apply_rules(&rules, "0044207"), "+44207");
        assert_eq!(apply_rules(&rules, "030555"), "+493030555");
        assert_eq!(apply_rules(&rules, "4711"), "+49301234711");
        // None matches: unchanged (and not copied).
        assert!(matches!(
            apply_rules(&rules, "+1555"),
            Cow::Borrowed("+1555")
        ));
        assert!(matches!(apply_rules(&[], "x"), Cow::Borrowed("x")));
    }

    #[test]
    fn unanchored_pattern_replaces_only_the_match() {
        let rules = vec![rule("^00", "+")];
        assert_eq!(apply_rules(&rules, "0049301234"), "+49301234");
        let strip_plus = vec![rule(r"^\+", "")];
        assert_eq!(apply_rules(&strip_plus, "+49301234"), "49301234");
        let named = vec![rule(r"^\+(?P<cc>1)(?P<rest>\d+)$", "011${cc}${rest}")];
        assert_eq!(apply_rules(&named, "+15550100"), "01115550100");
        let dollar = vec![rule("^x$", "$$5")];
        assert_eq!(apply_rules(&dollar, "x"), "$5");
    }

    #[test]
    fn response_codes_translated() {
        let rules = vec![
            ResponseRule { from: 486, to: 480 },
            ResponseRule { from: 404, to: 604 },
        ];
        assert_eq!(translate_response(&rules, 486), 480);
        assert_eq!(translate_response(&rules, 404), 604);
        assert_eq!(translate_response(&rules, 503), 503);
        assert_eq!(translate_response(&[], 486), 486);
    }

    #[test]
    fn numbers_from_users() {
        assert_eq!(
            number_from_user("+1-555-(010).0 1"),
            "+15550100 1".replace(' ', "")
        );
        assert_eq!(number_from_user("+49%2030%20123"), "+4930123");
        assert_eq!(number_from_user("0301234;isub=12"), "0301234");
        assert_eq!(number_from_user("*67#"), "*67#");
        // Not telephone numbers: as written (dots kept).
        assert_eq!(number_from_user("service"), "service");
        assert_eq!(number_from_user("john.doe"), "john.doe");
        assert_eq!(number_from_user("-.-"), "-.-");
        assert_eq!(number_from_user("%zz1"), "%zz1");
    }

    #[test]
    fn numbers_from_uris() {
        assert_eq!(
            number_from_uri("sip:+1-555-0100@gw.example;user=phone").as_deref(),
            Some("+15550100")
        );
        assert_eq!(
            number_from_uri("SIP:0049301234@10.0.0.1:5060").as_deref(),
            Some("0049301234")
        );
        assert_eq!(
            number_from_uri("sips:alice:secret@example.com").as_deref(),
            Some("alice")
        );
        assert_eq!(
            number_from_uri("<sip:4711@pbx>;tag=abc").as_deref(),
            Some("4711")
        );
        assert_eq!(
            number_from_uri("sip:service@127.0.0.1:5060").as_deref(),
            Some("service")
        );
        assert_eq!(
            number_from_uri("tel:+1-201-555-0123").as_deref(),
            Some("+12015550123")
        );
        assert_eq!(
            number_from_uri("tel:7042;phone-context=example.com").as_deref(),
            Some("7042")
        );
        assert_eq!(number_from_uri("sip:example.com"), None);
        assert_eq!(number_from_uri("sip:@example.com"), None);
        assert_eq!(number_from_uri("mailto:a@b"), None);
        assert_eq!(number_from_uri("nonsense"), None);
    }

    #[test]
    fn numbers_replaced_in_identities() {
        assert_eq!(
            with_number("<sip:+15559999@pbx.example>", "0015559999").as_deref(),
            Some("<sip:0015559999@pbx.example>")
        );
        assert_eq!(
            with_number("sip:alice:pw@example.com", "4711").as_deref(),
            Some("sip:4711:pw@example.com")
        );
        assert_eq!(
            with_number("tel:+1-201-555-0123", "+12015550123").as_deref(),
            Some("tel:+12015550123")
        );
        assert_eq!(
            with_number("\"A\" <tel:7042;phone-context=example.com>;x=1", "+17042").as_deref(),
            Some("\"A\" <tel:+17042;phone-context=example.com>;x=1")
        );
        assert_eq!(with_number("sip:example.com", "1"), None);
        assert_eq!(with_number("<mailto:a@b>", "1"), None);
        assert_eq!(with_number("<sip:@example.com>", "1"), None);
        // The number taken out and put back: the same value.
        let v = "<sip:+15550100@gw;user=phone>";
        let n = number_from_uri(v).unwrap();
        assert_eq!(with_number(v, &n).as_deref(), Some(v));
    }
}
