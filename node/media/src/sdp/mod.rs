//! SDP (RFC 8866, formerly RFC 4566) as a light view over the received bytes, and a rewriter that
//! touches only the lines a media anchor must change.
//!
//! [`Sdp::parse`] indexes the body line by line (each line keeps its own ending: CRLF, LF, or none
//! for a last line without one) and reads only what the media plane needs: the `o=` version, the
//! session and per-media `c=`, each `m=` (port, profile, format list) and its `a=rtpmap`, `a=fmtp`,
//! `a=ptime`, `a=rtcp`, `a=rtcp-mux`, direction attributes and `a=crypto` lines (kept opaque). Every
//! other line is only checked to be `<letter>=...` (or empty) and is never copied into the view.
//!
//! [`Rewrite`] (see [`rewrite`]) changes the connection address, the `m=` port and profile,
//! `a=rtcp`, `a=rtcp-mux`, the direction, the payload list (filtering and renumbering the
//! payload-type-scoped `a=rtpmap`/`a=fmtp`/`a=rtcp-fb` lines with it), `a=ptime`, `a=crypto` and
//! the `o=` version; every line it does not touch comes out byte for byte, in its place, with its
//! own line ending.
//!
//! Malformed input is a typed [`SdpError`] naming the 1-based line, never a panic. Bounds: a body
//! of at most [`MAX_SDP_BYTES`], [`MAX_LINES`] lines, [`MAX_MEDIA`] `m=` sections and
//! [`MAX_FORMATS`] formats per `m=` line.
//!
//! Layers: `rewrite` uses the view built by `parse`; `parse` uses only the types here.

mod parse;
pub mod rewrite;

use std::net::IpAddr;
use std::ops::Range;

pub use rewrite::{MediaRewrite, Rewrite, RewriteError};

/// Largest SDP body accepted (bytes).
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// Most lines accepted in one body.
pub const MAX_LINES: usize = 2048;
/// Most `m=` sections accepted in one body.
pub const MAX_MEDIA: usize = 64;
/// Most formats accepted on one `m=` line.
pub const MAX_FORMATS: usize = 128;

/// A malformed or oversized SDP body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("SDP line {line}: {kind}")]
pub struct SdpError {
    /// 1-based line number; 0 when the error concerns the whole body.
    pub line: usize,
    /// What is wrong.
    pub kind: SdpErrorKind,
}

/// What is wrong with an SDP body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SdpErrorKind {
    /// The body is larger than [`MAX_SDP_BYTES`].
    #[error("body larger than {MAX_SDP_BYTES} bytes")]
    TooLarge,
    /// The body has more than [`MAX_LINES`] lines.
    #[error("more than {MAX_LINES} lines")]
    TooManyLines,
    /// The body has more than [`MAX_MEDIA`] `m=` sections.
    #[error("more than {MAX_MEDIA} m= sections")]
    TooManyMedia,
    /// An `m=` line lists more than [`MAX_FORMATS`] formats.
    #[error("more than {MAX_FORMATS} formats on one m= line")]
    TooManyFormats,
    /// The first non-empty line is not `v=0`.
    #[error("the first line is not v=0")]
    BadVersion,
    /// A line is neither empty nor `<lowercase letter>=<value>`.
    #[error("not a <type>=<value> line")]
    NotTypeValue,
    /// A line the parser interprets is not UTF-8.
    #[error("a line the parser reads is not UTF-8")]
    NotUtf8,
    /// No `o=` line.
    #[error("no o= line")]
    MissingOrigin,
    /// A malformed `o=` line.
    #[error("malformed o= line")]
    BadOrigin,
    /// A malformed `c=` line.
    #[error("malformed c= line")]
    BadConnection,
    /// A malformed `m=` line.
    #[error("malformed m= line")]
    BadMedia,
    /// A malformed `a=rtpmap` line.
    #[error("malformed a=rtpmap")]
    BadRtpmap,
    /// A malformed `a=fmtp` line.
    #[error("malformed a=fmtp")]
    BadFmtp,
    /// A malformed `a=ptime` line.
    #[error("malformed a=ptime")]
    BadPtime,
    /// A malformed `a=rtcp` line.
    #[error("malformed a=rtcp")]
    BadRtcp,
    /// A field that may appear once per section appears twice.
    #[error("{0:?} appears twice in one section")]
    Duplicate(Field),
}

/// The once-per-section fields the parser reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `o=`
    Origin,
    /// `c=`
    Connection,
    /// `a=ptime`
    Ptime,
    /// `a=rtcp`
    Rtcp,
    /// `a=rtcp-mux`
    RtcpMux,
    /// `a=sendrecv|sendonly|recvonly|inactive`
    Direction,
}

/// The media direction attribute (RFC 3264 §5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `a=sendrecv` (also the default when no direction is given).
    SendRecv,
    /// `a=sendonly`
    SendOnly,
    /// `a=recvonly`
    RecvOnly,
    /// `a=inactive`
    Inactive,
}

impl Direction {
    /// The attribute name (`sendrecv`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction seen from the other end (`sendonly` ↔ `recvonly`).
    pub fn reversed(self) -> Direction {
        match self {
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            d => d,
        }
    }

    /// Whether the side that wrote this attribute sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the side that wrote this attribute receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    pub(crate) fn from_name(name: &[u8]) -> Option<Direction> {
        let d = if name.eq_ignore_ascii_case(b"sendrecv") {
            Direction::SendRecv
        } else if name.eq_ignore_ascii_case(b"sendonly") {
            Direction::SendOnly
        } else if name.eq_ignore_ascii_case(b"recvonly") {
            Direction::RecvOnly
        } else if name.eq_ignore_ascii_case(b"inactive") {
            Direction::Inactive
        } else {
            return None;
        };
        Some(d)
    }
}

/// One line of the body: `raw[start..content_end]` is the text, `raw[content_end..end]` its ending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Line {
    pub(crate) start: usize,
    pub(crate) content_end: usize,
    pub(crate) end: usize,
}

/// The `o=` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin<'a> {
    /// `<username>`
    pub username: &'a str,
    /// `<sess-id>`, kept as text (some peers exceed 64 bits).
    pub session_id: &'a str,
    /// `<sess-version>`
    pub version: u64,
    /// `<nettype>` (`IN`)
    pub nettype: &'a str,
    /// `<addrtype>` (`IP4`, `IP6`)
    pub addrtype: &'a str,
    /// `<unicast-address>`
    pub address: &'a str,
    pub(crate) line: usize,
    /// Byte range of the version token in the body.
    pub(crate) version_range: Range<usize>,
}

/// A `c=` line (or the address part of `a=rtcp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection<'a> {
    /// `<nettype>` (`IN`)
    pub nettype: &'a str,
    /// `<addrtype>` (`IP4`, `IP6`)
    pub addrtype: &'a str,
    /// `<connection-address>`, with any `/ttl` or `/count` suffix.
    pub address: &'a str,
    pub(crate) line: usize,
}

impl Connection<'_> {
    /// The address as an IP address, if it is one (an FQDN or a malformed address gives `None`).
    pub fn ip(&self) -> Option<IpAddr> {
        let host = self.address.split('/').next().unwrap_or("");
        host.parse().ok()
    }
}

/// An `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap<'a> {
    /// The payload type (0..=127).
    pub payload_type: u8,
    /// The encoding name as written (`PCMU`, `telephone-event`, ...); compare case-insensitively.
    pub encoding: &'a str,
    /// The clock rate; `None` when the line omits it (RFC 4475's bodies do).
    pub clock_rate: Option<u32>,
    /// The encoding parameters (channels for audio), when given.
    pub channels: Option<u16>,
}

/// An `a=fmtp:<format> <parameters>` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fmtp<'a> {
    /// The format it applies to (a payload type for RTP media).
    pub format: &'a str,
    /// The parameters, as written.
    pub params: &'a str,
}

/// An `a=rtcp:<port> [<nettype> <addrtype> <address>]` line (RFC 3605).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rtcp<'a> {
    /// The RTCP port.
    pub port: u16,
    /// The RTCP address, when given.
    pub connection: Option<Connection<'a>>,
}

/// The line numbers (0-based indices into the body's lines) the rewriter needs for one `m=` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MediaLines {
    /// The `m=` line.
    pub(crate) m: usize,
    /// One past the last line of the section.
    pub(crate) end: usize,
    pub(crate) connection: Option<usize>,
    pub(crate) ptime: Option<usize>,
    pub(crate) rtcp: Option<usize>,
    pub(crate) rtcp_mux: Option<usize>,
    pub(crate) direction: Option<usize>,
    pub(crate) crypto: Vec<usize>,
    /// `a=rtpmap`, `a=fmtp` and `a=rtcp-fb` lines: (line, byte offset of the format in the line
    /// content, byte length of the format).
    pub(crate) format_scoped: Vec<(usize, usize, usize)>,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Media<'a> {
    /// `<media>` (`audio`, `video`, `image`, ...).
    pub kind: &'a str,
    /// `<port>`
    pub port: u16,
    /// The `/<number of ports>` suffix, when given.
    pub port_count: Option<u16>,
    /// `<proto>` (`RTP/AVP`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, `udptl`, ...).
    pub proto: &'a str,
    /// The `<fmt>` list, in order.
    pub formats: Vec<&'a str>,
    /// The section's own `c=`, if any.
    pub connection: Option<Connection<'a>>,
    /// The `a=rtpmap` lines, in order.
    pub rtpmaps: Vec<RtpMap<'a>>,
    /// The `a=fmtp` lines, in order.
    pub fmtps: Vec<Fmtp<'a>>,
    /// `a=ptime`, in milliseconds (a fractional part is dropped).
    pub ptime: Option<u32>,
    /// `a=rtcp`
    pub rtcp: Option<Rtcp<'a>>,
    /// Whether `a=rtcp-mux` is present.
    pub rtcp_mux: bool,
    /// The section's own direction attribute, if any.
    pub direction: Option<Direction>,
    /// The values of the `a=crypto:` lines (after the colon), opaque.
    pub crypto: Vec<&'a [u8]>,
    pub(crate) lines: MediaLines,
}

impl Media<'_> {
    /// Whether the profile carries RTP (`RTP/AVP`, `RTP/SAVP`, `UDP/TLS/RTP/SAVPF`, ...), so the
    /// formats are payload types.
    pub fn is_rtp(&self) -> bool {
        self.proto.split('/').any(|p| p.eq_ignore_ascii_case("RTP"))
    }

    /// The payload types of an RTP section, in order; `None` if a format is not a number 0..=127
    /// or the section is not RTP.
    pub fn payload_types(&self) -> Option<Vec<u8>> {
        if !self.is_rtp() {
            return None;
        }
        self.formats.iter().map(|f| parse_payload_type(f)).collect()
    }

    /// The `a=rtpmap` of a payload type.
    pub fn rtpmap(&self, payload_type: u8) -> Option<&RtpMap<'_>> {
        self.rtpmaps.iter().find(|r| r.payload_type == payload_type)
    }

    /// The encoding name of a payload type: from its `a=rtpmap`, or the RFC 3551 static name for
    /// the static payload types a relay meets (0 PCMU, 8 PCMA, 9 G722, 13 CN, 18 G729).
    pub fn encoding_of(&self, payload_type: u8) -> Option<&str> {
        if let Some(r) = self.rtpmap(payload_type) {
            return Some(r.encoding);
        }
        static_encoding(payload_type)
    }

    /// The payload type of an encoding at a clock rate (encoding compared case-insensitively),
    /// among the payload types the `m=` line lists.
    pub fn payload_type_of(&self, encoding: &str, clock_rate: u32) -> Option<u8> {
        self.payload_types()?
            .into_iter()
            .find(|&pt| match self.rtpmap(pt) {
                Some(r) => {
                    r.encoding.eq_ignore_ascii_case(encoding)
                        && r.clock_rate.unwrap_or(8000) == clock_rate
                }
                None => static_encoding(pt)
                    .is_some_and(|e| e.eq_ignore_ascii_case(encoding) && clock_rate == 8000),
            })
    }

    /// The section's `c=` or else the session's.
    pub fn effective_connection<'s>(&'s self, sdp: &'s Sdp<'_>) -> Option<&'s Connection<'s>> {
        self.connection.as_ref().or(sdp.connection.as_ref())
    }

    /// The section's direction, or else the session's, or else `sendrecv`.
    pub fn effective_direction(&self, sdp: &Sdp<'_>) -> Direction {
        self.direction
            .or(sdp.direction)
            .unwrap_or(Direction::SendRecv)
    }
}

/// RFC 3551 static payload types a relay meets, by number.
pub fn static_encoding(payload_type: u8) -> Option<&'static str> {
    match payload_type {
        0 => Some("PCMU"),
        8 => Some("PCMA"),
        9 => Some("G722"),
        13 => Some("CN"),
        18 => Some("G729"),
        _ => None,
    }
}

pub(crate) fn parse_payload_type(s: &str) -> Option<u8> {
    if s.is_empty() || s.len() > 3 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u8>().ok().filter(|&pt| pt <= 127)
}

/// A parsed SDP body: a view over the caller's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdp<'a> {
    pub(crate) raw: &'a [u8],
    pub(crate) lines: Vec<Line>,
    /// The `o=` line.
    pub origin: Origin<'a>,
    /// The session-level `c=`, if any.
    pub connection: Option<Connection<'a>>,
    /// The session-level direction attribute, if any.
    pub direction: Option<Direction>,
    /// The `m=` sections, in order.
    pub media: Vec<Media<'a>>,
    /// One past the last session-level line (the first `m=` line, or the line count).
    pub(crate) session_end: usize,
    pub(crate) session_connection_line: Option<usize>,
    pub(crate) session_direction_line: Option<usize>,
}

impl<'a> Sdp<'a> {
    /// Parses a body. See the module documentation for what is read and what is bounded.
    pub fn parse(raw: &'a [u8]) -> Result<Sdp<'a>, SdpError> {
        parse::parse(raw)
    }

    /// The body this view was parsed from.
    pub fn raw(&self) -> &'a [u8] {
        self.raw
    }

    /// The number of lines (a last line without an ending counts; an empty tail does not).
    pub fn line_count(&self) -> usize {
        self.lines.len()
    }

    /// The text of a line (0-based), without its ending.
    pub fn line(&self, index: usize) -> Option<&'a [u8]> {
        let raw = self.raw;
        self.lines.get(index).map(|l| &raw[l.start..l.content_end])
    }

    /// Starts a rewrite of this body; nothing changes until [`Rewrite::finish`].
    pub fn rewrite(&self) -> Rewrite<'_, 'a> {
        Rewrite::new(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const AC: &[u8] = b"v=0\r\no=AudiocodesGW 17 41 IN IP4 198.51.100.20\r\ns=Phone-Call\r\nc=IN IP4 198.51.100.20\r\nt=0 0\r\nm=audio 6010 RTP/AVP 8 18 96\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:18 G729/8000\r\na=fmtp:18 annexb=no\r\na=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\na=ptime:20\r\na=sendrecv\r\na=rtcp:6011 IN IP4 198.51.100.20\r\n";

    #[test]
    fn the_view_reads_the_media_fields() {
        let sdp = Sdp::parse(AC).unwrap();
        assert_eq!(sdp.origin.version, 41);
        assert_eq!(sdp.origin.session_id, "17");
        assert_eq!(
            sdp.connection.as_ref().unwrap().ip(),
            Some("198.51.100.20".parse().unwrap())
        );
        let m = &sdp.media[0];
        assert_eq!((m.kind, m.port, m.proto), ("audio", 6010, "RTP/AVP"));
        assert_eq!(m.payload_types(), Some(vec![8, 18, 96]));
        assert_eq!(m.payload_type_of("telephone-event", 8000), Some(96));
        assert_eq!(m.payload_type_of("pcma", 8000), Some(8));
        assert_eq!(m.rtpmap(18).unwrap().clock_rate, Some(8000));
        assert_eq!(
            m.fmtps[0],
            Fmtp {
                format: "18",
                params: "annexb=no"
            }
        );
        assert_eq!(m.ptime, Some(20));
        assert_eq!(m.direction, Some(Direction::SendRecv));
        let rtcp = m.rtcp.as_ref().unwrap();
        assert_eq!(rtcp.port, 6011);
        assert_eq!(rtcp.connection.as_ref().unwrap().address, "198.51.100.20");
        assert!(!m.rtcp_mux);
        assert_eq!(m.effective_direction(&sdp), Direction::SendRecv);
    }

    #[test]
    fn retype_offers_the_other_g711_law_in_place_of_the_first() {
        let sdp = Sdp::parse(AC).unwrap();
        let mut rw = sdp.rewrite();
        rw.media(0)
            .unwrap()
            .payloads(&[(8, 0), (96, 96)])
            .unwrap()
            .retype(8, 0, "PCMU/8000")
            .unwrap();
        let out = String::from_utf8(rw.finish()).unwrap();
        assert!(out.contains("m=audio 6010 RTP/AVP 0 96\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:96 telephone-event/8000\r\na=fmtp:96 0-15\r\n"), "{out}");
        // A static payload type without an a=rtpmap line gets one.
        let bare = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8\r\na=sendrecv\r\n";
        let sdp = Sdp::parse(bare).unwrap();
        let mut rw = sdp.rewrite();
        rw.media(0)
            .unwrap()
            .payloads(&[(8, 0)])
            .unwrap()
            .retype(8, 0, "PCMU/8000")
            .unwrap();
        let out = String::from_utf8(rw.finish()).unwrap();
        assert!(
            out.ends_with("m=audio 4000 RTP/AVP 0\r\na=sendrecv\r\na=rtpmap:0 PCMU/8000\r\n"),
            "{out}"
        );
        let mut rw = sdp.rewrite();
        assert_eq!(
            rw.media(0).unwrap().retype(9, 0, "PCMU/8000").err(),
            Some(RewriteError::UnknownPayload(9))
        );
    }

    #[test]
    fn a_relay_rewrite_gives_exactly_the_expected_body() {
        let sdp = Sdp::parse(AC).unwrap();
        let mut rw = sdp.rewrite();
        rw.bump_origin_version()
            .connection(Ipv4Addr::new(127, 0, 155, 1).into());
        rw.media(0)
            .unwrap()
            .port(20000)
            .payloads(&[(8, 0), (96, 101)])
            .unwrap()
            .rtcp(Some((20001, None)))
            .direction(Direction::SendOnly)
            .rtcp_mux(true);
        let out = rw.finish();
        let want: &[u8] = b"v=0\r\no=AudiocodesGW 17 42 IN IP4 198.51.100.20\r\ns=Phone-Call\r\nc=IN IP4 127.0.155.1\r\nt=0 0\r\nm=audio 20000 RTP/AVP 0 101\r\na=rtpmap:0 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\na=ptime:20\r\na=sendonly\r\na=rtcp:20001\r\na=rtcp-mux\r\n";
        assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(want));
    }

    #[test]
    fn lines_added_after_a_last_line_without_ending_keep_the_body_shape() {
        let body = b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\nm=audio 4000 RTP/AVP 0";
        let sdp = Sdp::parse(body).unwrap();
        let mut rw = sdp.rewrite();
        // Attributes first, then the connection: c= still goes before them.
        rw.media(0).unwrap().ptime(Some(20)).rtcp_mux(true);
        rw.connection(Ipv4Addr::new(127, 0, 155, 2).into());
        let out = rw.finish();
        assert_eq!(
            out,
            b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\nm=audio 4000 RTP/AVP 0\nc=IN IP4 127.0.155.2\na=ptime:20\na=rtcp-mux"
        );
    }

    #[test]
    fn removing_attributes_deletes_only_their_lines() {
        let sdp = Sdp::parse(AC).unwrap();
        let mut rw = sdp.rewrite();
        rw.media(0).unwrap().ptime(None).rtcp(None).rtcp_mux(false);
        let out = rw.finish();
        let want: Vec<u8> = AC
            .split_inclusive(|&b| b == b'\n')
            .filter(|l| !l.starts_with(b"a=ptime") && !l.starts_with(b"a=rtcp"))
            .flatten()
            .copied()
            .collect();
        assert_eq!(out, want);
    }

    #[test]
    fn payload_map_errors_are_typed() {
        let sdp = Sdp::parse(AC).unwrap();
        let mut rw = sdp.rewrite();
        let mut m = rw.media(0).unwrap();
        assert_eq!(
            m.payloads(&[(0, 0)]).unwrap_err(),
            RewriteError::UnknownPayload(0)
        );
        assert_eq!(
            m.payloads(&[(8, 9), (18, 9)]).unwrap_err(),
            RewriteError::DuplicatePayload(9)
        );
        assert_eq!(
            m.payloads(&[(8, 128)]).unwrap_err(),
            RewriteError::PayloadOutOfRange(128)
        );
        assert_eq!(m.proto("RTP AVP").unwrap_err(), RewriteError::BadValue);
        assert_eq!(
            m.crypto(&[b"1 x\r\nm=evil"]).unwrap_err(),
            RewriteError::BadValue
        );
        assert_eq!(rw.media(1).unwrap_err(), RewriteError::NoSuchMedia(1));
        let t38 = Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=image 4000 udptl t38\r\n").unwrap();
        let mut rw = t38.rewrite();
        assert_eq!(
            rw.media(0).unwrap().payloads(&[]).unwrap_err(),
            RewriteError::NotRtp
        );
    }

    fn kind_of(body: &[u8]) -> (usize, SdpErrorKind) {
        let e = Sdp::parse(body).unwrap_err();
        (e.line, e.kind)
    }

    #[test]
    fn malformed_bodies_are_typed_errors_naming_the_line() {
        let head = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n";
        let with = |tail: &str| format!("{head}{tail}").into_bytes();
        use SdpErrorKind as K;
        assert_eq!(kind_of(b""), (0, K::BadVersion));
        assert_eq!(kind_of(b"v=1\r\n"), (1, K::BadVersion));
        assert_eq!(kind_of(b"v=0\r\ns=-\r\n"), (0, K::MissingOrigin));
        assert_eq!(kind_of(b"v=0\r\no=- 1 x IN IP4 a\r\n"), (2, K::BadOrigin));
        assert_eq!(kind_of(b"v=0\r\no=- 1 1 IN IP4\r\n"), (2, K::BadOrigin));
        assert_eq!(
            kind_of(&with("m =audio 1 RTP/AVP 0\r\n")),
            (6, K::NotTypeValue)
        );
        assert_eq!(
            kind_of(&with("m=audio 70000 RTP/AVP 0\r\n")),
            (6, K::BadMedia)
        );
        assert_eq!(kind_of(&with("m=audio 1\r\n")), (6, K::BadMedia));
        assert_eq!(kind_of(&with("c=IN IP4\r\n")), (6, K::BadConnection));
        assert_eq!(
            kind_of(&with("c=IN IP4 192.0.2.2\r\n")),
            (6, K::Duplicate(Field::Connection))
        );
        let m = "m=audio 1 RTP/AVP 0\r\n";
        assert_eq!(
            kind_of(&with(&format!("{m}a=rtpmap:200 X/8000\r\n"))),
            (7, K::BadRtpmap)
        );
        assert_eq!(
            kind_of(&with(&format!("{m}a=rtpmap:0 PCMU/x\r\n"))),
            (7, K::BadRtpmap)
        );
        assert_eq!(
            kind_of(&with(&format!("{m}a=rtpmap:0\r\n"))),
            (7, K::BadRtpmap)
        );
        assert_eq!(kind_of(&with(&format!("{m}a=fmtp:\r\n"))), (7, K::BadFmtp));
        assert_eq!(
            kind_of(&with(&format!("{m}a=ptime:x\r\n"))),
            (7, K::BadPtime)
        );
        assert_eq!(
            kind_of(&with(&format!("{m}a=rtcp:99999\r\n"))),
            (7, K::BadRtcp)
        );
        assert_eq!(
            kind_of(&with(&format!("{m}a=rtcp:9 IN\r\n"))),
            (7, K::BadRtcp)
        );
        assert_eq!(
            kind_of(&with(&format!("{m}a=sendonly\r\na=inactive\r\n"))),
            (8, K::Duplicate(Field::Direction))
        );
        assert_eq!(
            kind_of(&[with(m), b"a=rtpmap:0 \xff/8000\r\n".to_vec()].concat()),
            (7, K::NotUtf8)
        );
        assert_eq!(kind_of(&vec![b'x'; MAX_SDP_BYTES + 1]), (0, K::TooLarge));
        assert_eq!(
            kind_of(&"v=0\n".repeat(MAX_LINES + 1).into_bytes()),
            (0, K::TooManyLines)
        );
        let many_m = format!("{head}{}", "m=audio 1 RTP/AVP 0\r\n".repeat(MAX_MEDIA + 1));
        assert_eq!(kind_of(many_m.as_bytes()).1, K::TooManyMedia);
        let many_f = format!(
            "{head}m=audio 1 RTP/AVP{}\r\n",
            " 0".repeat(MAX_FORMATS + 1)
        );
        assert_eq!(kind_of(many_f.as_bytes()), (6, K::TooManyFormats));
    }

    #[test]
    fn lenient_where_real_peers_are_sloppy() {
        // RFC 4475's rtpmap without a clock rate, fractional ptime, upper-case attribute names,
        // blank lines, LF endings.
        let body = b"v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\n\nm=audio 1 RTP/AVP 31\na=RTPMAP:31 LPC\na=ptime:20.0\na=SendOnly\n\n";
        let sdp = Sdp::parse(body).unwrap();
        let m = &sdp.media[0];
        assert_eq!(m.rtpmap(31).unwrap().clock_rate, None);
        assert_eq!(m.ptime, Some(20));
        assert_eq!(m.direction, Some(Direction::SendOnly));
        assert_eq!(sdp.rewrite().finish(), body);
    }

    #[test]
    fn direction_helpers() {
        assert_eq!(Direction::SendOnly.reversed(), Direction::RecvOnly);
        assert_eq!(Direction::Inactive.reversed(), Direction::Inactive);
        assert!(Direction::SendOnly.sends() && !Direction::SendOnly.receives());
        let sdp = Sdp::parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\na=inactive\r\nm=audio 1 RTP/AVP 0\r\n").unwrap();
        assert_eq!(sdp.media[0].effective_direction(&sdp), Direction::Inactive);
    }
}
