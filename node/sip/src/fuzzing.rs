//! One function that drives every parsing path of this crate over arbitrary bytes — datagram parsing,
//! every typed accessor, the front-door checks, answer building, shard lookup and stream framing. The
//! cargo-fuzz target (`fuzz/fuzz_targets/parse.rs`) and the bounded mutation test in the normal test run
//! both call it; any panic inside is a bug.

use std::net::SocketAddr;

use bytes::Bytes;

use crate::framing::{Frame, StreamFramer};
use crate::{HeaderName, Limits, SipMessage};

/// Exercises everything on `data`; returns how many messages parsed (so callers can check coverage).
pub fn exercise(data: &[u8]) -> usize {
    let limits = Limits::default();
    let src: SocketAddr = SocketAddr::from(([127, 0, 0, 9], 5099));
    let mut parsed = 0;
    if let Ok(m) = SipMessage::parse_datagram(Bytes::copy_from_slice(data), &limits) {
        parsed += 1;
        touch(&m);
        let screened = crate::transport::screen(Ok(m.clone()), src);
        match screened {
            crate::transport::Screened::Answer(b) => {
                // Our own answers must always parse back.
                let back = SipMessage::parse(b);
                assert!(back.is_ok(), "an answer we built does not parse");
            }
            crate::transport::Screened::Pass(checked) => same_views(&checked, &m),
            crate::transport::Screened::Drop(_) => {}
        }
        let _ = crate::transport::overload_answer(&m, src, 5);
    }
    // The same bytes as a stream, in two chunks.
    let mut f = StreamFramer::new(limits);
    let cut = data.len() / 2;
    for chunk in [&data[..cut], &data[cut..]] {
        f.buffer().extend_from_slice(chunk);
        while let Ok(Some(frame)) = f.next_frame() {
            match frame {
                Frame::Message(m) | Frame::Fatal(m) => {
                    parsed += 1;
                    touch(&m);
                }
                Frame::Ping => {}
            }
        }
    }
    parsed
}

/// A message through the door's checks gives the same views of its top Via, From and To (taken
/// without re-checking their grammar) as the same bytes parsed afresh.
fn same_views(checked: &SipMessage, fresh: &SipMessage) {
    assert!(checked.is_checked() && !fresh.is_checked());
    assert_eq!(
        checked.top_via(),
        fresh.top_via(),
        "top Via of a checked message"
    );
    assert_eq!(checked.from(), fresh.from(), "From of a checked message");
    assert_eq!(checked.to(), fresh.to(), "To of a checked message");
    assert_eq!(checked.to_tag(), fresh.to_tag());
    assert_eq!(checked.from_tag(), fresh.from_tag());
    assert_eq!(checked.top_branch(), fresh.top_branch());
}

fn touch(m: &SipMessage) {
    let _ = m
        .request_uri()
        .map(|u| u.map(|u| (u.user_unescaped(), u.param("transport"))));
    for v in m.vias().flatten() {
        let _ = (v.branch(), v.received(), v.rport(), v.is_rfc3261());
        let _ =
            crate::message::builder::via_with_received(v.raw, SocketAddr::from(([10, 0, 0, 1], 1)));
    }
    for na in [m.from(), m.to()].into_iter().flatten().flatten() {
        let _ = (na.tag(), na.display_unquoted(), na.parsed_uri());
    }
    for na in m
        .contacts()
        .chain(m.routes())
        .chain(m.record_routes())
        .flatten()
    {
        let _ = (na.tag(), na.parsed_uri());
    }
    let _ = (
        m.call_id(),
        m.cseq(),
        m.max_forwards(),
        m.content_length(),
        m.content_type(),
    );
    let _ = (m.session_expires(), m.min_se(), m.rseq(), m.rack());
    let _ = (
        m.require().count(),
        m.supported().count(),
        m.allow().count(),
        m.reasons().count(),
    );
    let _ = m.has_option(HeaderName::Supported, "100rel");
    let _ = crate::ids::shard_of(m, 1024);
    let _ = crate::check::check_request(m);
    let _ = crate::check::check_response(m);
}
