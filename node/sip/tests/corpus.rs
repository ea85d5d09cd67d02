//! The door corpus (`tests/corpus/*.dat`): messages the security tests and real scanners send. Each
//! is parsed as a datagram and judged as the front door must judge it: a scanner's probe is a
//! well-formed request (the node decides by its source, not by its looks), a truncated datagram is
//! defective (400, never routed), junk is refused outright. Every file is also a seed of the
//! mutation test (`tests/mutation.rs`) and of the cargo-fuzz target.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use bytes::Bytes;
use medpool_sip::{Limits, SipMessage};

/// (file name prefix, what the parser must make of it)
#[derive(Debug, PartialEq)]
enum Judged {
    /// Parses with no defect.
    Clean,
    /// Parses, with a defect a request is answered 400 for.
    Defective400,
    /// Does not parse at all.
    Refused,
}

fn judge(data: &[u8]) -> Judged {
    match SipMessage::parse_datagram(Bytes::copy_from_slice(data), &Limits::default()) {
        Ok(m) => match m.defect() {
            None => Judged::Clean,
            Some(d) if d.status() == 400 => Judged::Defective400,
            Some(d) => panic!("unexpected defect {d:?}"),
        },
        Err(_) => Judged::Refused,
    }
}

#[test]
fn the_door_corpus_is_judged_as_the_front_door_needs() {
    let expect = [
        ("sipvicious-", Judged::Clean),
        ("truncated-", Judged::Defective400),
        ("forwarded-", Judged::Clean),
        ("forged-", Judged::Clean),
        ("flood-junk-", Judged::Refused),
        ("flood-invite-no-via", Judged::Clean), // the transaction layer refuses it (no Via)
        ("flood-content-length-beyond", Judged::Defective400),
    ];
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut seen = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if !name.ends_with(".dat") {
            continue;
        }
        let Some((_, want)) = expect.iter().find(|(prefix, _)| name.starts_with(prefix)) else {
            panic!("{name}: no expectation in this test; add one");
        };
        assert_eq!(&judge(&std::fs::read(&p).unwrap()), want, "{name}");
        seen += 1;
    }
    assert!(seen >= 12, "only {seen} corpus files read");
}
