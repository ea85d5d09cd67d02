//! baresip's own SIP trace (`baresip -s`), read back as [`SipMsg`]s: over TLS the wire capture
//! sees no SIP, so a test reads a UA's signalling — its SDP and `a=crypto` keys included — from
//! what the UA printed. Each traced message is printed as
//!
//! ```text
//! #
//! TLS 127.0.0.1:49788 -> 127.0.163.17:5061
//! INVITE sip:200@127.0.163.17:5061;transport=tls SIP/2.0
//! ...
//! ```
//!
//! (inside a colour escape), sent and received alike: the addresses say which way it went.
//! baresip 1.0 does not bind its outgoing TCP/TLS connections to its listening address, so a
//! message it sent over a connection it opened comes from 127.0.0.1.

use std::net::SocketAddrV4;
use std::time::Duration;

use super::wire::SipMsg;

/// One traced message: its transport name ("UDP", "TCP", "TLS") and the message.
#[derive(Clone, Debug)]
pub struct Traced {
    pub transport: String,
    pub msg: SipMsg,
}

/// Every SIP message in a baresip log, in order.
pub fn parse(log: &str) -> Vec<Traced> {
    let text = log.replace("\x1b[36;1m", "").replace("\x1b[;m", "");
    let mut out = Vec::new();
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        if line.trim_end_matches('\r') != "#" {
            continue;
        }
        let Some(head) = lines.next() else { break };
        let Some((transport, src, dst)) = trace_head(head) else {
            continue;
        };
        // The message runs until the next "#" line or a line that is no part of it; its body
        // is sized by Content-Length, which is what the message itself says.
        let mut msg_lines: Vec<&str> = Vec::new();
        while let Some(l) = lines.peek() {
            if l.trim_end_matches('\r') == "#" {
                break;
            }
            msg_lines.push(lines.next().unwrap_or_default());
        }
        let raw = msg_lines
            .iter()
            .map(|l| l.trim_end_matches('\r'))
            .collect::<Vec<_>>()
            .join("\r\n");
        let Some((head_part, body)) = raw.split_once("\r\n\r\n") else {
            continue;
        };
        let len = head_part
            .split("\r\n")
            .find_map(|h| {
                let (n, v) = h.split_once(':')?;
                let n = n.trim();
                (n.eq_ignore_ascii_case("Content-Length") || n.eq_ignore_ascii_case("l"))
                    .then(|| v.trim().parse::<usize>().ok())
                    .flatten()
            })
            .unwrap_or(0);
        let body: String = body.chars().take(len).collect();
        let first = head_part
            .split("\r\n")
            .next()
            .unwrap_or_default()
            .to_owned();
        if !(first.starts_with("SIP/2.0 ") || first.ends_with(" SIP/2.0")) {
            continue;
        }
        out.push(Traced {
            transport,
            msg: SipMsg {
                at: Duration::ZERO,
                src,
                dst,
                first_line: first,
                text: format!("{head_part}\r\n\r\n{body}"),
            },
        });
    }
    out
}

/// "TLS 127.0.0.1:49788 -> 127.0.163.17:5061" → (transport, source, destination).
fn trace_head(line: &str) -> Option<(String, SocketAddrV4, SocketAddrV4)> {
    let line = line.trim_end_matches('\r').trim();
    let (transport, rest) = line.split_once(' ')?;
    let (src, dst) = rest.split_once(" -> ")?;
    Some((
        transport.to_owned(),
        src.trim().parse().ok()?,
        dst.trim().parse().ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_traced_invite_and_its_sdp() {
        let log = "call: connecting\n\x1b[36;1m#\nTLS 127.0.0.1:49788 -> 127.0.163.17:5061\n\
                   INVITE sip:200@127.0.163.17:5061;transport=tls SIP/2.0\r\nCall-ID: x\r\n\
                   Content-Length: 20\r\n\r\nm=audio 4 RTP/SAVP 0\x1b[;m\n\nother line\n";
        let t = parse(log);
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t[0].transport, "TLS");
        assert_eq!(t[0].msg.method(), Some("INVITE"));
        assert_eq!(t[0].msg.dst.port(), 5061);
        assert_eq!(t[0].msg.body(), "m=audio 4 RTP/SAVP 0");
    }
}
