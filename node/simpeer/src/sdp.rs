//! The SDP bodies the simulated peers offer and answer: one audio stream, PCMU, on the peer's IP.

use std::net::IpAddr;

use bytes::Bytes;

/// The content type of an SDP body.
pub const CONTENT_TYPE: &[u8] = b"application/sdp";

/// A session description with one PCMU audio stream at `ip:port`; `version` is the `o=` line's
/// session version (raise it for every new offer or answer of the same session).
pub fn audio(session: u64, version: u32, ip: IpAddr, port: u16) -> Bytes {
    let family = if ip.is_ipv4() { "IP4" } else { "IP6" };
    Bytes::from(format!(
        "v=0\r\no=simpeer {session} {version} IN {family} {ip}\r\ns=-\r\nc=IN {family} {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n"
    ))
}
