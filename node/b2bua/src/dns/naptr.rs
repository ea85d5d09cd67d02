//! RFC 3263 §4.1 transport selection, pure: which SRV names to ask for a trunk's host name, from
//! its NAPTR records or, without usable ones, from the transports we support.
//!
//! Only `SIP+D2U` (UDP) and `SIP+D2T` (TCP) are used: `SIPS+D2T` needs TLS, which trunks cannot use
//! yet, and records for other services are skipped. A NAPTR record must have the `s` flag (its
//! replacement is an SRV name); others are skipped too.

use crate::config::Transport;

/// One NAPTR record, as much of it as RFC 3263 reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Naptr {
    /// Processing order, lowest first.
    pub order: u16,
    /// Preference among equal orders, lowest first.
    pub preference: u16,
    /// The flags (`"S"` for an SRV replacement).
    pub flags: String,
    /// The service (`"SIP+D2U"`, ...).
    pub services: String,
    /// The SRV name to ask next.
    pub replacement: String,
}

/// The transport a NAPTR service field names, when we support it.
fn transport_of(services: &str) -> Option<Transport> {
    match services.to_ascii_uppercase().as_str() {
        "SIP+D2U" => Some(Transport::Udp),
        "SIP+D2T" => Some(Transport::Tcp),
        "SIPS+D2T" => Some(Transport::Tls),
        _ => None,
    }
}

/// The SRV names to ask, in order, from `records`: usable records (flag `s`, a service we
/// support, the `fixed` transport when the trunk names one) by order, then preference. Empty when
/// none is usable: the caller then asks [`default_srv_names`].
pub fn srv_names(records: &[Naptr], fixed: Option<Transport>) -> Vec<(String, Transport)> {
    let mut usable: Vec<(&Naptr, Transport)> = records
        .iter()
        .filter(|r| r.flags.eq_ignore_ascii_case("s"))
        .filter_map(|r| transport_of(&r.services).map(|t| (r, t)))
        .filter(|(_, t)| fixed.is_none_or(|f| f == *t))
        .filter(|(r, _)| !r.replacement.is_empty() && r.replacement != ".")
        .collect();
    usable.sort_by_key(|(r, _)| (r.order, r.preference));
    usable
        .into_iter()
        .map(|(r, t)| (r.replacement.clone(), t))
        .collect()
}

/// Without usable NAPTR records (RFC 3263 §4.1): the SRV names of UDP then TCP (or the `fixed`
/// transport's only; TLS, `_sips._tcp`, only when the trunk names it).
pub fn default_srv_names(host: &str, fixed: Option<Transport>) -> Vec<(String, Transport)> {
    let host = host.strip_suffix('.').unwrap_or(host);
    match fixed {
        Some(Transport::Tls) => vec![(format!("_sips._tcp.{host}."), Transport::Tls)],
        _ => [Transport::Udp, Transport::Tcp]
            .into_iter()
            .filter(|t| fixed.is_none_or(|f| f == *t))
            .map(|t| {
                let proto = if t == Transport::Udp { "udp" } else { "tcp" };
                (format!("_sip._{proto}.{host}."), t)
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naptr(order: u16, preference: u16, flags: &str, services: &str, to: &str) -> Naptr {
        Naptr {
            order,
            preference,
            flags: flags.into(),
            services: services.into(),
            replacement: to.into(),
        }
    }

    #[test]
    fn records_are_taken_by_order_then_preference_skipping_what_we_cannot_use() {
        let records = [
            naptr(20, 10, "s", "SIP+D2U", "_sip._udp.example.net."),
            naptr(10, 20, "s", "SIP+D2T", "_sip._tcp.example.net."),
            naptr(10, 10, "s", "SIPS+D2T", "_sips._tcp.example.net."),
            naptr(5, 10, "u", "SIP+D2U", "!^.*$!sip:x@y!"),
            naptr(5, 5, "s", "E2U+sip", "_x.example.net."),
        ];
        assert_eq!(
            srv_names(&records, None),
            [
                ("_sip._tcp.example.net.".to_owned(), Transport::Tcp),
                ("_sip._udp.example.net.".to_owned(), Transport::Udp),
            ]
        );
        assert_eq!(
            srv_names(&records, Some(Transport::Udp)),
            [("_sip._udp.example.net.".to_owned(), Transport::Udp)],
            "a trunk that fixes its transport uses only that one"
        );
        assert!(srv_names(&records[2..], None).is_empty());
    }

    #[test]
    fn without_naptr_udp_then_tcp() {
        assert_eq!(
            default_srv_names("gw.example.net", None),
            [
                ("_sip._udp.gw.example.net.".to_owned(), Transport::Udp),
                ("_sip._tcp.gw.example.net.".to_owned(), Transport::Tcp),
            ]
        );
        assert_eq!(
            default_srv_names("gw.example.net.", Some(Transport::Tcp)),
            [("_sip._tcp.gw.example.net.".to_owned(), Transport::Tcp)]
        );
    }
}
