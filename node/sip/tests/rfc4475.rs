//! RFC 4475 torture messages at the codec level: each file is parsed as one UDP datagram and put through
//! the node's front door (`transport::screen`); the outcome must match `EXPECTED.tsv`'s class and answer.
//! The corpus is RFC 4475's archive, byte for byte (see tests/rfc4475/README.md).

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::net::SocketAddr;

use medpool_sip::check::{check_request, check_response};
use medpool_sip::transport::{Screened, screen};
use medpool_sip::{HeaderName, Limits, SipMessage};

#[derive(Debug)]
enum Outcome {
    /// Passed on to the transaction layer / B2BUA.
    Pass { is_request: bool },
    /// Answered by the front door with this status.
    Answer(SipMessage),
    /// Dropped.
    Drop,
}

fn outcome(bytes: &[u8]) -> Outcome {
    let src: SocketAddr = "192.0.2.200:5060".parse().unwrap();
    let parsed = SipMessage::parse_datagram(bytes.to_vec().into(), &Limits::default());
    match screen(parsed, src) {
        Screened::Pass(m) => Outcome::Pass {
            is_request: m.is_request(),
        },
        Screened::Answer(b) => {
            Outcome::Answer(SipMessage::parse(b).expect("our own answer parses"))
        }
        Screened::Drop(_) => Outcome::Drop,
    }
}

fn status(o: &Outcome) -> Option<u16> {
    match o {
        Outcome::Answer(m) => m.status(),
        _ => None,
    }
}

#[test]
fn rfc4475_corpus_gives_the_expected_answers() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rfc4475");
    let table = std::fs::read_to_string(format!("{dir}/EXPECTED.tsv")).unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for line in table
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let cols: Vec<&str> = line.split('\t').collect();
        let (file, class, expected) = (cols[0], cols[2], cols[3]);
        let bytes = std::fs::read(format!("{dir}/{file}")).unwrap();
        let o = outcome(&bytes);
        let st = status(&o);
        let exp = expected.split(' ').next().unwrap();
        let ok = match exp {
            "any-but-400" => {
                matches!(o, Outcome::Pass { is_request: true }) || st.is_some_and(|s| s != 400)
            }
            "no-reply" => matches!(o, Outcome::Drop | Outcome::Pass { is_request: false }),
            "400|drop" => matches!(o, Outcome::Drop) || st == Some(400),
            "400|any-but-400" => !matches!(o, Outcome::Drop),
            "405|501" => matches!(st, Some(405 | 501)),
            code => st == Some(code.parse::<u16>().unwrap()),
        };
        // The class must agree too: valid messages are never rejected as malformed,
        // invalid ones never pass (except where the table allows tolerance).
        let class_ok = match class {
            "valid" => st != Some(400) && !matches!(o, Outcome::Drop),
            "invalid" => !matches!(o, Outcome::Pass { .. }) || exp == "400|any-but-400",
            _ => true,
        };
        // Specific answers carry the headers RFC 4475 asks for.
        let headers_ok = match (exp, &o) {
            ("420", Outcome::Answer(m)) => m.header(HeaderName::Unsupported).is_some_and(|u| {
                u.windows(b"nothingSupportsThis".len())
                    .any(|w| w == b"nothingSupportsThis")
            }),
            ("415", Outcome::Answer(m)) => m.header(HeaderName::Accept).is_some(),
            _ => true,
        };
        if !(ok && class_ok && headers_ok) {
            failures.push(format!("{file} ({class}, expected {expected}): got {o:?}"));
        }
        checked += 1;
    }
    assert_eq!(checked, 49, "EXPECTED.tsv lists 49 messages");
    assert!(
        failures.is_empty(),
        "{} of 49 wrong:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn dblreq_answers_only_the_first_message() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/rfc4475/dblreq.dat"
    ))
    .unwrap();
    let m = SipMessage::parse(bytes).unwrap();
    assert_eq!(m.method_bytes(), Some(&b"REGISTER"[..]));
    assert!(m.body().is_empty());
    assert!(!m.as_bytes().windows(6).any(|w| w == b"INVITE"));
    assert!(check_request(&m).is_ok());
}

#[test]
fn valid_torture_messages_expose_their_typed_headers() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/rfc4475");
    let read = |f: &str| SipMessage::parse(std::fs::read(format!("{dir}/{f}")).unwrap()).unwrap();
    // wsinv: folding, compact forms, whitespace around colons and slashes, comma-separated Vias.
    let m = read("wsinv.dat");
    let vias: Vec<_> = m.vias().map(|v| v.unwrap()).collect();
    assert_eq!(vias.len(), 3);
    assert_eq!(vias[1].branch(), Some(&b"z9hG4bK9ikj8"[..]));
    assert_eq!(vias[2].host, b"192.168.255.111");
    assert_eq!(m.to_tag(), Some(&b"1918181833n"[..]));
    assert_eq!(m.from_tag(), Some(&b"98asjd8"[..]));
    assert_eq!(m.max_forwards().unwrap(), Ok(68));
    assert_eq!(m.cseq().unwrap().unwrap().seq, 9);
    assert_eq!(m.contacts().count(), 1);
    // semiuri: the host survives a user part with ';' and an escaped '@'.
    let m = read("semiuri.dat");
    let uri = m.request_uri().unwrap().unwrap();
    assert_eq!(uri.host, b"example.com");
    assert_eq!(uri.user, Some(&b"user;par=u%40example.net"[..]));
    // esc01: escapes are kept as received.
    let m = read("esc01.dat");
    assert!(
        m.request_uri_bytes()
            .unwrap()
            .windows(3)
            .any(|w| w == b"%3A")
    );
    // unreason: a UTF-8 reason phrase is kept byte for byte.
    let m = read("unreason.dat");
    assert!(m.reason_phrase().unwrap().len() > 40);
    assert!(check_response(&m).is_ok());
}
