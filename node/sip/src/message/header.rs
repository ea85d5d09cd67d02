//! Header names: the headers a B2BUA reads, their compact forms (RFC 3261 §7.3.3, RFC 4028, RFC 3515, ...),
//! and a fast, case-insensitive classifier. Every header not listed here is [`HeaderName::Other`] and is
//! carried byte for byte.

/// A header name the codec knows. `Other` is any extension header, kept as received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    Contact,
    Route,
    RecordRoute,
    ContentLength,
    ContentType,
    ContentEncoding,
    Require,
    Supported,
    ProxyRequire,
    Unsupported,
    Allow,
    Accept,
    SessionExpires,
    MinSe,
    RSeq,
    RAck,
    Reason,
    Subject,
    Event,
    ReferTo,
    ReferredBy,
    AllowEvents,
    RetryAfter,
    Expires,
    Date,
    PAssertedIdentity,
    PPreferredIdentity,
    Privacy,
    HistoryInfo,
    Diversion,
    UserAgent,
    Server,
    Warning,
    Other,
}

impl HeaderName {
    /// Classifies a received header name (any case, compact or long form).
    #[inline]
    pub fn classify(name: &[u8]) -> HeaderName {
        if name.len() == 1 {
            return match name[0].to_ascii_lowercase() {
                b'v' => HeaderName::Via,
                b'f' => HeaderName::From,
                b't' => HeaderName::To,
                b'i' => HeaderName::CallId,
                b'm' => HeaderName::Contact,
                b'l' => HeaderName::ContentLength,
                b'c' => HeaderName::ContentType,
                b'e' => HeaderName::ContentEncoding,
                b'k' => HeaderName::Supported,
                b'x' => HeaderName::SessionExpires,
                b's' => HeaderName::Subject,
                b'o' => HeaderName::Event,
                b'r' => HeaderName::ReferTo,
                b'b' => HeaderName::ReferredBy,
                b'u' => HeaderName::AllowEvents,
                _ => HeaderName::Other,
            };
        }
        // Switch on length and first letter, then compare: at most one or two comparisons per header.
        let eq = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
        match (name.len(), name[0].to_ascii_lowercase()) {
            (2, b't') if eq("To") => HeaderName::To,
            (3, b'v') if eq("Via") => HeaderName::Via,
            (4, b'f') if eq("From") => HeaderName::From,
            (4, b'c') if eq("CSeq") => HeaderName::CSeq,
            (4, b'r') if eq("RSeq") => HeaderName::RSeq,
            (4, b'r') if eq("RAck") => HeaderName::RAck,
            (4, b'd') if eq("Date") => HeaderName::Date,
            (5, b'r') if eq("Route") => HeaderName::Route,
            (5, b'a') if eq("Allow") => HeaderName::Allow,
            (5, b'e') if eq("Event") => HeaderName::Event,
            (6, b'r') if eq("Reason") => HeaderName::Reason,
            (6, b'a') if eq("Accept") => HeaderName::Accept,
            (6, b'm') if eq("Min-SE") => HeaderName::MinSe,
            (6, b's') if eq("Server") => HeaderName::Server,
            (7, b'c') if eq("Call-ID") => HeaderName::CallId,
            (7, b'c') if eq("Contact") => HeaderName::Contact,
            (7, b'r') if eq("Require") => HeaderName::Require,
            (7, b's') if eq("Subject") => HeaderName::Subject,
            (7, b'e') if eq("Expires") => HeaderName::Expires,
            (7, b'p') if eq("Privacy") => HeaderName::Privacy,
            (7, b'w') if eq("Warning") => HeaderName::Warning,
            (8, b'r') if eq("Refer-To") => HeaderName::ReferTo,
            (9, b's') if eq("Supported") => HeaderName::Supported,
            (9, b'd') if eq("Diversion") => HeaderName::Diversion,
            (10, b'u') if eq("User-Agent") => HeaderName::UserAgent,
            (11, b'u') if eq("Unsupported") => HeaderName::Unsupported,
            (11, b'r') if eq("Referred-By") => HeaderName::ReferredBy,
            (11, b'r') if eq("Retry-After") => HeaderName::RetryAfter,
            (12, b'm') if eq("Max-Forwards") => HeaderName::MaxForwards,
            (12, b'r') if eq("Record-Route") => HeaderName::RecordRoute,
            (12, b'c') if eq("Content-Type") => HeaderName::ContentType,
            (12, b'a') if eq("Allow-Events") => HeaderName::AllowEvents,
            (12, b'h') if eq("History-Info") => HeaderName::HistoryInfo,
            (13, b'p') if eq("Proxy-Require") => HeaderName::ProxyRequire,
            (14, b'c') if eq("Content-Length") => HeaderName::ContentLength,
            (15, b's') if eq("Session-Expires") => HeaderName::SessionExpires,
            (16, b'c') if eq("Content-Encoding") => HeaderName::ContentEncoding,
            (19, b'p') if eq("P-Asserted-Identity") => HeaderName::PAssertedIdentity,
            (20, b'p') if eq("P-Preferred-Identity") => HeaderName::PPreferredIdentity,
            _ => HeaderName::Other,
        }
    }

    /// The canonical long form, as the builder writes it. `Other` has none (its received name is used).
    pub fn canonical(self) -> &'static str {
        match self {
            HeaderName::Via => "Via",
            HeaderName::From => "From",
            HeaderName::To => "To",
            HeaderName::CallId => "Call-ID",
            HeaderName::CSeq => "CSeq",
            HeaderName::MaxForwards => "Max-Forwards",
            HeaderName::Contact => "Contact",
            HeaderName::Route => "Route",
            HeaderName::RecordRoute => "Record-Route",
            HeaderName::ContentLength => "Content-Length",
            HeaderName::ContentType => "Content-Type",
            HeaderName::ContentEncoding => "Content-Encoding",
            HeaderName::Require => "Require",
            HeaderName::Supported => "Supported",
            HeaderName::ProxyRequire => "Proxy-Require",
            HeaderName::Unsupported => "Unsupported",
            HeaderName::Allow => "Allow",
            HeaderName::Accept => "Accept",
            HeaderName::SessionExpires => "Session-Expires",
            HeaderName::MinSe => "Min-SE",
            HeaderName::RSeq => "RSeq",
            HeaderName::RAck => "RAck",
            HeaderName::Reason => "Reason",
            HeaderName::Subject => "Subject",
            HeaderName::Event => "Event",
            HeaderName::ReferTo => "Refer-To",
            HeaderName::ReferredBy => "Referred-By",
            HeaderName::AllowEvents => "Allow-Events",
            HeaderName::RetryAfter => "Retry-After",
            HeaderName::Expires => "Expires",
            HeaderName::Date => "Date",
            HeaderName::PAssertedIdentity => "P-Asserted-Identity",
            HeaderName::PPreferredIdentity => "P-Preferred-Identity",
            HeaderName::Privacy => "Privacy",
            HeaderName::HistoryInfo => "History-Info",
            HeaderName::Diversion => "Diversion",
            HeaderName::UserAgent => "User-Agent",
            HeaderName::Server => "Server",
            HeaderName::Warning => "Warning",
            HeaderName::Other => "",
        }
    }

    /// Headers that may appear at most once in a valid message (RFC 3261 §7.3.1 and §20).
    pub fn single_valued(self) -> bool {
        matches!(
            self,
            HeaderName::From
                | HeaderName::To
                | HeaderName::CallId
                | HeaderName::CSeq
                | HeaderName::MaxForwards
                | HeaderName::ContentLength
                | HeaderName::ContentType
                | HeaderName::SessionExpires
                | HeaderName::MinSe
                | HeaderName::RSeq
                | HeaderName::RAck
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_and_long_forms_in_any_case() {
        for (n, h) in [
            ("v", HeaderName::Via),
            ("VIA", HeaderName::Via),
            ("i", HeaderName::CallId),
            ("call-id", HeaderName::CallId),
            ("l", HeaderName::ContentLength),
            ("CONTENT-length", HeaderName::ContentLength),
            ("MaX-fOrWaRdS", HeaderName::MaxForwards),
            ("x", HeaderName::SessionExpires),
            ("k", HeaderName::Supported),
            ("C%6Fntact", HeaderName::Other),
            ("P-Asserted-Identity", HeaderName::PAssertedIdentity),
        ] {
            assert_eq!(HeaderName::classify(n.as_bytes()), h, "{n}");
        }
    }
}
