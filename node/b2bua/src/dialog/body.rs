//! Message bodies as the call sees them: the SDP of a body that is `application/sdp` (or untyped), or
//! the SDP part of a `multipart/mixed` body (RFC 5621; how RFC 6442 location conveyance carries a
//! PIDF-LO next to the offer for E911), and the same body with rewritten SDP put back in place of
//! that part, every other part kept byte for byte. Pure: no state, no I/O.

use medpool_sip::{HeaderName, SipMessage};

/// Parts of a multipart body looked at, at most (a body is bounded by the message size anyway).
const MAX_PARTS: usize = 16;

/// The SDP of a message: its body when it is `application/sdp` (or untyped), else the first
/// `application/sdp` part of a `multipart/mixed` body; none otherwise.
pub(super) fn sdp_of(msg: &SipMessage) -> Option<&[u8]> {
    let body = msg.body();
    if body.is_empty() {
        return None;
    }
    let Some(ct) = msg.header(HeaderName::ContentType) else {
        return Some(body);
    };
    if media_type_is(ct, b"application/sdp") {
        return Some(body);
    }
    let boundary = multipart_boundary(ct)?;
    let (start, end) = sdp_part(body, &boundary)?;
    Some(&body[start..end])
}

/// `msg`'s body with `sdp` in place of its SDP part when the body is multipart with one; none when
/// it is not (the caller then uses `sdp` as the whole body).
pub(super) fn with_sdp(msg: &SipMessage, sdp: &[u8]) -> Option<Vec<u8>> {
    let ct = msg.header(HeaderName::ContentType)?;
    let boundary = multipart_boundary(ct)?;
    let body = msg.body();
    let (start, end) = sdp_part(body, &boundary)?;
    let mut out = Vec::with_capacity(body.len() + sdp.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(sdp);
    out.extend_from_slice(&body[end..]);
    Some(out)
}

/// Whether a Content-Type value names `media_type` (parameters ignored, case-insensitive).
fn media_type_is(ct: &[u8], media_type: &[u8]) -> bool {
    ct.split(|&b| b == b';')
        .next()
        .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(media_type))
}

/// The boundary of a `multipart/mixed` Content-Type (quotes removed).
fn multipart_boundary(ct: &[u8]) -> Option<Vec<u8>> {
    if !media_type_is(ct, b"multipart/mixed") {
        return None;
    }
    ct.split(|&b| b == b';').skip(1).find_map(|p| {
        let p = p.trim_ascii();
        let eq = p.iter().position(|&b| b == b'=')?;
        if !p[..eq].trim_ascii().eq_ignore_ascii_case(b"boundary") {
            return None;
        }
        let v = p[eq + 1..].trim_ascii();
        let v = v
            .strip_prefix(b"\"")
            .and_then(|v| v.strip_suffix(b"\""))
            .unwrap_or(v);
        (!v.is_empty()).then(|| v.to_vec())
    })
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Where the content of the first `application/sdp` part lies in a multipart body (start, end).
fn sdp_part(body: &[u8], boundary: &[u8]) -> Option<(usize, usize)> {
    let mut delim = b"--".to_vec();
    delim.extend_from_slice(boundary);
    // The first delimiter; each part runs to the CRLF before the next one.
    let mut at = find(body, &delim, 0)?;
    for _ in 0..MAX_PARTS {
        let line_end = find(body, b"\r\n", at)?;
        if body[at + delim.len()..].starts_with(b"--") {
            return None; // the closing delimiter
        }
        let part_start = line_end + 2;
        let mut next_delim = b"\r\n".to_vec();
        next_delim.extend_from_slice(&delim);
        let part_end = find(body, &next_delim, part_start)?;
        let part = &body[part_start..part_end];
        let (headers, content) = match find(part, b"\r\n\r\n", 0) {
            Some(i) => (&part[..i], i + 4),
            None if part.starts_with(b"\r\n") => (&part[..0], 2),
            None => return None,
        };
        let is_sdp = headers.split(|&b| b == b'\n').any(|line| {
            let line = line.trim_ascii();
            line.iter().position(|&b| b == b':').is_some_and(|c| {
                line[..c].trim_ascii().eq_ignore_ascii_case(b"content-type")
                    && media_type_is(&line[c + 1..], b"application/sdp")
            })
        });
        if is_sdp {
            return Some((part_start + content, part_end));
        }
        at = part_end + 2;
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const BODY: &str = "--b1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\nc=IN IP4 10.0.0.1\r\n\r\n--b1\r\n\
Content-Type: application/pidf+xml\r\nContent-ID: <loc@pbx>\r\n\r\n<presence/>\r\n--b1--\r\n";

    fn message(ct: &str, body: &str) -> SipMessage {
        let text = format!(
            "INVITE sip:x@h SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\n\
             To: <sip:x@h>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n\
             Content-Type: {ct}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        SipMessage::parse(text.into_bytes()).unwrap()
    }

    #[test]
    fn the_sdp_part_of_a_multipart_body_is_found_and_replaced_alone() {
        let m = message("multipart/mixed; boundary=\"b1\"", BODY);
        assert_eq!(sdp_of(&m), Some(&b"v=0\r\nc=IN IP4 10.0.0.1\r\n"[..]));
        let out = with_sdp(&m, b"v=0\r\nc=IN IP4 192.0.2.9\r\n").unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            BODY.replace("10.0.0.1", "192.0.2.9"),
            "every other byte kept"
        );
    }

    #[test]
    fn plain_sdp_and_other_bodies() {
        let m = message("application/sdp", "v=0\r\n");
        assert_eq!(sdp_of(&m), Some(&b"v=0\r\n"[..]));
        assert_eq!(with_sdp(&m, b"v=1\r\n"), None);
        let m = message("application/pidf+xml", "<presence/>");
        assert_eq!(sdp_of(&m), None);
        // Multipart without an SDP part, or malformed: no SDP.
        let only_pidf =
            "--b1\r\nContent-Type: application/pidf+xml\r\n\r\n<presence/>\r\n--b1--\r\n";
        assert_eq!(
            sdp_of(&message("multipart/mixed;boundary=b1", only_pidf)),
            None
        );
        assert_eq!(sdp_of(&message("multipart/mixed;boundary=b2", BODY)), None);
        assert_eq!(sdp_of(&message("multipart/mixed", BODY)), None);
        assert_eq!(
            sdp_of(&message("multipart/mixed;boundary=b1", "--b1\r\nno end")),
            None
        );
    }
}
