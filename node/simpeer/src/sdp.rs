//! The SDP bodies the simulated peers offer and answer: one audio stream, PCMU or PCMA, on the
//! peer's IP; with SRTP, `RTP/SAVP` (or `RTP/AVP`, best-effort) and one `a=crypto` line.

use std::net::IpAddr;

use bytes::Bytes;
use medpool_media::sdp::Direction;
use medpool_media::srtp::CryptoAttribute;

/// The content type of an SDP body.
pub const CONTENT_TYPE: &[u8] = b"application/sdp";

/// A session description with one PCMU audio stream at `ip:port`; `version` is the `o=` line's
/// session version (raise it for every new offer or answer of the same session).
pub fn audio(session: u64, version: u32, ip: IpAddr, port: u16) -> Bytes {
    audio_with(session, version, ip, port, 0, Direction::SendRecv)
}

/// As [`audio`], with one G.711 payload type (0 PCMU or 8 PCMA; anything else is written as PCMU)
/// and a direction.
pub fn audio_with(
    session: u64,
    version: u32,
    ip: IpAddr,
    port: u16,
    payload_type: u8,
    direction: Direction,
) -> Bytes {
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    let (pt, name) = if payload_type == 8 {
        (8, "PCMA")
    } else {
        (0, "PCMU")
    };
    let dir = direction.as_str();
    Bytes::from(format!(
        "v=0\r\no=simpeer {session} {version} IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP {pt}\r\na=rtpmap:{pt} {name}/8000\r\na={dir}\r\n"
    ))
}

/// `body` (from [`audio_with`]) speaking SRTP: its profile `RTP/SAVP` when `savp` (else it
/// stays `RTP/AVP`, best-effort SRTP) and the `a=crypto` line of `key`. `None` leaves it plain.
pub fn secured(body: Bytes, key: Option<&CryptoAttribute>, savp: bool) -> Bytes {
    let Some(key) = key else {
        return body;
    };
    let mut text = String::from_utf8_lossy(&body).into_owned();
    if savp {
        text = text.replace(" RTP/AVP ", " RTP/SAVP ");
    }
    text.push_str(&format!("a=crypto:{key}\r\n"));
    Bytes::from(text)
}
