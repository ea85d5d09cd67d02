//! Zero-copy RTP (RFC 3550 §5.1) and RTCP (RFC 3550 §6.4) header views over received datagrams.
//!
//! [`RtpPacket`] reads a `&[u8]` in place (fixed header, CSRC list, header extension, padding),
//! [`RtpPacketMut`] also sets the payload type, marker, sequence number, timestamp and SSRC in place
//! and exposes the payload for in-place translation. [`RtcpCompound`] walks the packets of a
//! compound RTCP datagram. [`is_rtcp`] tells RTCP from RTP on a multiplexed port (RFC 5761 §4).
//! Nothing here allocates; short or inconsistent packets are a typed [`RtpError`].

use std::ops::Range;

/// Fixed RTP header length.
pub const RTP_HEADER_LEN: usize = 12;
/// Fixed RTCP header length.
pub const RTCP_HEADER_LEN: usize = 4;

/// A datagram that is not a well-formed RTP or RTCP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RtpError {
    /// Shorter than the header it claims.
    #[error("packet too short: {needed} bytes needed, {got} present")]
    TooShort {
        /// Bytes the header says are needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The version field is not 2.
    #[error("RTP version {0}, not 2")]
    BadVersion(u8),
    /// The padding count is zero or larger than the payload.
    #[error("bad padding length {0}")]
    BadPadding(u8),
    /// A compound RTCP packet does not start with an SR or RR (RFC 3550 §6.1).
    #[error("compound RTCP starts with packet type {0}, not SR or RR")]
    NotReportFirst(u8),
    /// An RTCP packet's length field runs past the datagram.
    #[error("RTCP length runs past the datagram")]
    BadRtcpLength,
}

fn check_version(buf: &[u8]) -> Result<(), RtpError> {
    let v = buf[0] >> 6;
    if v != 2 {
        return Err(RtpError::BadVersion(v));
    }
    Ok(())
}

/// Header length and payload range of an RTP packet (validated).
fn layout(buf: &[u8]) -> Result<(usize, Range<usize>), RtpError> {
    if buf.len() < RTP_HEADER_LEN {
        return Err(RtpError::TooShort {
            needed: RTP_HEADER_LEN,
            got: buf.len(),
        });
    }
    check_version(buf)?;
    let cc = usize::from(buf[0] & 0x0f);
    let mut header = RTP_HEADER_LEN + 4 * cc;
    if buf[0] & 0x10 != 0 {
        // Header extension: 16-bit profile id, 16-bit length in 32-bit words.
        let need = header + 4;
        if buf.len() < need {
            return Err(RtpError::TooShort {
                needed: need,
                got: buf.len(),
            });
        }
        let words = usize::from(u16::from_be_bytes([buf[header + 2], buf[header + 3]]));
        header = need + 4 * words;
    }
    if buf.len() < header {
        return Err(RtpError::TooShort {
            needed: header,
            got: buf.len(),
        });
    }
    let mut end = buf.len();
    if buf[0] & 0x20 != 0 {
        let pad = buf[end - 1];
        if pad == 0 || usize::from(pad) > end - header {
            return Err(RtpError::BadPadding(pad));
        }
        end -= usize::from(pad);
    }
    Ok((header, header..end))
}

/// A read-only view of an RTP packet.
#[derive(Debug, Clone, Copy)]
pub struct RtpPacket<'a> {
    buf: &'a [u8],
    header_len: usize,
    payload_end: usize,
}

impl<'a> RtpPacket<'a> {
    /// Validates the header (version 2, CSRC list, extension and padding inside the datagram).
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        let (header_len, payload) = layout(buf)?;
        Ok(RtpPacket {
            buf,
            header_len,
            payload_end: payload.end,
        })
    }

    /// The version (always 2 once parsed).
    pub fn version(&self) -> u8 {
        self.buf[0] >> 6
    }
    /// The P bit.
    pub fn padding(&self) -> bool {
        self.buf[0] & 0x20 != 0
    }
    /// The X bit.
    pub fn extension(&self) -> bool {
        self.buf[0] & 0x10 != 0
    }
    /// The CSRC count.
    pub fn csrc_count(&self) -> u8 {
        self.buf[0] & 0x0f
    }
    /// The M bit.
    pub fn marker(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }
    /// The payload type.
    pub fn payload_type(&self) -> u8 {
        self.buf[1] & 0x7f
    }
    /// The sequence number.
    pub fn sequence(&self) -> u16 {
        u16::from_be_bytes([self.buf[2], self.buf[3]])
    }
    /// The timestamp.
    pub fn timestamp(&self) -> u32 {
        u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]])
    }
    /// The SSRC.
    pub fn ssrc(&self) -> u32 {
        u32::from_be_bytes([self.buf[8], self.buf[9], self.buf[10], self.buf[11]])
    }
    /// The CSRC identifiers.
    pub fn csrcs(&self) -> impl Iterator<Item = u32> + 'a {
        let n = usize::from(self.csrc_count());
        self.buf[RTP_HEADER_LEN..RTP_HEADER_LEN + 4 * n]
            .chunks_exact(4)
            .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
    }
    /// The header length (fixed header, CSRCs, extension).
    pub fn header_len(&self) -> usize {
        self.header_len
    }
    /// The payload's byte range in the datagram (padding excluded).
    pub fn payload_range(&self) -> Range<usize> {
        self.header_len..self.payload_end
    }
    /// The payload (padding excluded).
    pub fn payload(&self) -> &'a [u8] {
        &self.buf[self.header_len..self.payload_end]
    }
    /// The whole datagram.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
}

/// A mutable view of an RTP packet: setters write the header in place.
#[derive(Debug)]
pub struct RtpPacketMut<'a> {
    buf: &'a mut [u8],
    header_len: usize,
    payload_end: usize,
}

impl<'a> RtpPacketMut<'a> {
    /// Validates as [`RtpPacket::parse`] does.
    pub fn parse(buf: &'a mut [u8]) -> Result<Self, RtpError> {
        let (header_len, payload) = layout(buf)?;
        Ok(RtpPacketMut {
            buf,
            header_len,
            payload_end: payload.end,
        })
    }

    /// A read-only view of the same packet.
    pub fn view(&self) -> RtpPacket<'_> {
        RtpPacket {
            buf: self.buf,
            header_len: self.header_len,
            payload_end: self.payload_end,
        }
    }
    /// Sets the payload type (0..=127; higher bits are ignored), keeping the marker.
    pub fn set_payload_type(&mut self, pt: u8) {
        self.buf[1] = (self.buf[1] & 0x80) | (pt & 0x7f);
    }
    /// Sets the M bit.
    pub fn set_marker(&mut self, marker: bool) {
        self.buf[1] = (self.buf[1] & 0x7f) | if marker { 0x80 } else { 0 };
    }
    /// Sets the sequence number.
    pub fn set_sequence(&mut self, seq: u16) {
        self.buf[2..4].copy_from_slice(&seq.to_be_bytes());
    }
    /// Sets the timestamp.
    pub fn set_timestamp(&mut self, ts: u32) {
        self.buf[4..8].copy_from_slice(&ts.to_be_bytes());
    }
    /// Sets the SSRC.
    pub fn set_ssrc(&mut self, ssrc: u32) {
        self.buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    }
    /// The payload, writable in place (padding excluded).
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.header_len..self.payload_end]
    }
}

/// Whether a datagram on a multiplexed RTP/RTCP port is RTCP: RFC 5761 §4 — the second byte
/// (marker + payload type for RTP, packet type for RTCP) is 192..=223.
pub fn is_rtcp(buf: &[u8]) -> bool {
    buf.len() >= 2 && (192..=223).contains(&buf[1])
}

/// RTCP packet types (RFC 3550, RFC 4585).
pub mod rtcp_type {
    /// Sender report.
    pub const SR: u8 = 200;
    /// Receiver report.
    pub const RR: u8 = 201;
    /// Source description.
    pub const SDES: u8 = 202;
    /// Goodbye.
    pub const BYE: u8 = 203;
    /// Application-defined.
    pub const APP: u8 = 204;
    /// Transport-layer feedback.
    pub const RTPFB: u8 = 205;
    /// Payload-specific feedback.
    pub const PSFB: u8 = 206;
}

/// One RTCP packet's header view.
#[derive(Debug, Clone, Copy)]
pub struct RtcpPacket<'a> {
    buf: &'a [u8],
}

impl<'a> RtcpPacket<'a> {
    /// Validates one RTCP packet at the start of `buf` (version 2, length inside `buf`); the view
    /// covers exactly that packet.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        if buf.len() < RTCP_HEADER_LEN {
            return Err(RtpError::TooShort {
                needed: RTCP_HEADER_LEN,
                got: buf.len(),
            });
        }
        check_version(buf)?;
        let len = 4 * (usize::from(u16::from_be_bytes([buf[2], buf[3]])) + 1);
        if len > buf.len() {
            return Err(RtpError::BadRtcpLength);
        }
        Ok(RtcpPacket { buf: &buf[..len] })
    }
    /// The P bit.
    pub fn padding(&self) -> bool {
        self.buf[0] & 0x20 != 0
    }
    /// The count field (reception report count, SDES chunk count, feedback format, ...).
    pub fn count(&self) -> u8 {
        self.buf[0] & 0x1f
    }
    /// The packet type (see [`rtcp_type`]).
    pub fn packet_type(&self) -> u8 {
        self.buf[1]
    }
    /// The length field: the packet's length in 32-bit words minus one.
    pub fn length_words(&self) -> u16 {
        u16::from_be_bytes([self.buf[2], self.buf[3]])
    }
    /// The packet's length in bytes.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Never true for a parsed packet (the header is 4 bytes); for API symmetry with `len`.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// The sender SSRC (the first word after the header), when the packet has one.
    pub fn sender_ssrc(&self) -> Option<u32> {
        let b = self.buf.get(4..8)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// The packet's bytes.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.buf
    }
}

/// Walks a compound RTCP datagram; stops after the first error.
#[derive(Debug, Clone)]
pub struct RtcpCompound<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> RtcpCompound<'a> {
    /// A walk over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        RtcpCompound {
            rest: buf,
            failed: false,
        }
    }

    /// Checks the whole datagram: every packet well-formed and, as RFC 3550 §6.1 requires of a
    /// compound packet, the first one an SR or RR. Returns the number of packets.
    pub fn validate(buf: &'a [u8]) -> Result<usize, RtpError> {
        let mut n = 0;
        for p in RtcpCompound::new(buf) {
            let p = p?;
            if n == 0 && !matches!(p.packet_type(), rtcp_type::SR | rtcp_type::RR) {
                return Err(RtpError::NotReportFirst(p.packet_type()));
            }
            n += 1;
        }
        if n == 0 {
            return Err(RtpError::TooShort {
                needed: RTCP_HEADER_LEN,
                got: 0,
            });
        }
        Ok(n)
    }
}

impl<'a> Iterator for RtcpCompound<'a> {
    type Item = Result<RtcpPacket<'a>, RtpError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        match RtcpPacket::parse(self.rest) {
            Ok(p) => {
                self.rest = &self.rest[p.len()..];
                Some(Ok(p))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// V=2, P, X, CC=2, M, PT=8, seq 0xBEEF, ts 0x01020304, SSRC 0xCAFEBABE, 2 CSRCs, a one-word
    /// extension, 4 payload bytes, 4 bytes of padding.
    fn full_packet() -> Vec<u8> {
        let mut p = vec![
            0x80 | 0x20 | 0x10 | 2,
            0x80 | 8,
            0xBE,
            0xEF,
            1,
            2,
            3,
            4,
            0xCA,
            0xFE,
            0xBA,
            0xBE,
        ];
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]);
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 9, 9, 9, 9]);
        p.extend_from_slice(&[0xD5, 0xD5, 0x55, 0x2A]);
        p.extend_from_slice(&[0, 0, 0, 4]);
        p
    }

    #[test]
    fn reads_every_header_field() {
        let buf = full_packet();
        let p = RtpPacket::parse(&buf).unwrap();
        assert_eq!(p.version(), 2);
        assert!(p.padding() && p.extension() && p.marker());
        assert_eq!(p.csrc_count(), 2);
        assert_eq!(p.payload_type(), 8);
        assert_eq!(p.sequence(), 0xBEEF);
        assert_eq!(p.timestamp(), 0x0102_0304);
        assert_eq!(p.ssrc(), 0xCAFE_BABE);
        assert_eq!(p.csrcs().collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(p.header_len(), 28);
        assert_eq!(p.payload_range(), 28..32);
        assert_eq!(p.payload(), &[0xD5, 0xD5, 0x55, 0x2A]);
    }

    #[test]
    fn setters_write_in_place_and_touch_nothing_else() {
        let mut buf = full_packet();
        let orig = buf.clone();
        let mut p = RtpPacketMut::parse(&mut buf).unwrap();
        p.set_payload_type(0);
        p.set_sequence(1);
        p.set_timestamp(0xFFFF_FFFF);
        p.set_ssrc(7);
        p.payload_mut().copy_from_slice(&[1, 2, 3, 4]);
        let v = p.view();
        assert!(v.marker(), "the marker survives a PT change");
        assert_eq!(
            (v.payload_type(), v.sequence(), v.timestamp(), v.ssrc()),
            (0, 1, 0xFFFF_FFFF, 7)
        );
        p.set_marker(false);
        assert!(!p.view().marker());
        assert_eq!(p.view().payload_type(), 0);
        assert_eq!(buf[12..28], orig[12..28], "CSRCs and extension untouched");
        assert_eq!(buf[32..], orig[32..], "padding untouched");
        assert_eq!(&buf[28..32], &[1, 2, 3, 4]);
    }

    #[test]
    fn short_and_inconsistent_packets_are_typed_errors() {
        assert_eq!(
            RtpPacket::parse(&[0x80; 11]).unwrap_err(),
            RtpError::TooShort {
                needed: 12,
                got: 11
            }
        );
        let mut v1 = full_packet();
        v1[0] = (v1[0] & 0x3f) | 0x40;
        assert_eq!(RtpPacket::parse(&v1).unwrap_err(), RtpError::BadVersion(1));
        let mut cc = vec![0x8F, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            RtpPacket::parse(&cc).unwrap_err(),
            RtpError::TooShort {
                needed: 72,
                got: 12
            }
        );
        cc[0] = 0x90;
        assert_eq!(
            RtpPacket::parse(&cc).unwrap_err(),
            RtpError::TooShort {
                needed: 16,
                got: 12
            }
        );
        cc.extend_from_slice(&[0, 0, 0, 3]);
        assert_eq!(
            RtpPacket::parse(&cc).unwrap_err(),
            RtpError::TooShort {
                needed: 28,
                got: 16
            }
        );
        let mut pad = full_packet();
        *pad.last_mut().unwrap() = 0;
        assert_eq!(RtpPacket::parse(&pad).unwrap_err(), RtpError::BadPadding(0));
        *pad.last_mut().unwrap() = 9;
        assert_eq!(RtpPacket::parse(&pad).unwrap_err(), RtpError::BadPadding(9));
        // Padding may swallow the whole payload.
        *pad.last_mut().unwrap() = 8;
        assert_eq!(RtpPacket::parse(&pad).unwrap().payload(), &[] as &[u8]);
    }

    #[test]
    fn no_input_panics() {
        // Every prefix and every single-byte corruption of a packet parses or is an error.
        let buf = full_packet();
        for n in 0..=buf.len() {
            let _ = RtpPacket::parse(&buf[..n]);
            let _ = RtcpPacket::parse(&buf[..n]);
            let _ = RtcpCompound::validate(&buf[..n]);
        }
        for i in 0..buf.len() {
            for b in [0u8, 0x0f, 0x3f, 0x80, 0xbf, 0xff] {
                let mut m = buf.clone();
                m[i] = b;
                if let Ok(p) = RtpPacket::parse(&m) {
                    assert!(p.payload_range().end <= m.len());
                }
                let _ = RtcpCompound::new(&m).count();
            }
        }
    }

    fn rr(ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, rtcp_type::RR, 0, 1];
        p.extend_from_slice(&ssrc.to_be_bytes());
        p
    }

    #[test]
    fn walks_a_compound_rtcp_packet() {
        let mut c = rr(0x1122_3344);
        c.extend_from_slice(&[
            0x81,
            rtcp_type::SDES,
            0,
            3,
            0x11,
            0x22,
            0x33,
            0x44,
            1,
            2,
            b'a',
            b'b',
            0,
            0,
            0,
            0,
        ]);
        c.extend_from_slice(&[0x81, rtcp_type::BYE, 0, 1, 0x11, 0x22, 0x33, 0x44]);
        let pkts: Vec<_> = RtcpCompound::new(&c).map(Result::unwrap).collect();
        let types: Vec<u8> = pkts.iter().map(|p| p.packet_type()).collect();
        assert_eq!(types, vec![rtcp_type::RR, rtcp_type::SDES, rtcp_type::BYE]);
        assert_eq!(pkts[1].length_words(), 3);
        assert_eq!(pkts[1].len(), 16);
        assert_eq!(pkts[1].count(), 1);
        assert_eq!(pkts[0].sender_ssrc(), Some(0x1122_3344));
        assert_eq!(RtcpCompound::validate(&c), Ok(3));

        let mut cut = c.clone();
        cut.truncate(c.len() - 2);
        let res: Vec<_> = RtcpCompound::new(&cut).collect();
        assert_eq!(res.len(), 3);
        assert_eq!(res[2].as_ref().unwrap_err(), &RtpError::BadRtcpLength);
        assert_eq!(RtcpCompound::validate(&cut), Err(RtpError::BadRtcpLength));
        assert_eq!(
            RtcpCompound::validate(&c[8..]),
            Err(RtpError::NotReportFirst(rtcp_type::SDES))
        );
        assert!(RtcpCompound::validate(&[]).is_err());
    }

    #[test]
    fn tells_rtcp_from_rtp_on_a_muxed_port() {
        assert!(is_rtcp(&rr(1)));
        assert!(is_rtcp(&[0x80, rtcp_type::SR]));
        assert!(!is_rtcp(&full_packet()));
        assert!(!is_rtcp(&[0x80, 0x80 | 101]));
        assert!(!is_rtcp(&[0x80]));
    }
}
