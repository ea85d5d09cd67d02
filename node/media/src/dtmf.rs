//! RFC 4733 telephone-event: the payload view (event, end bit, volume, duration) and where each
//! leg's SDP puts it.
//!
//! The payload type of telephone-event is dynamic: each leg says which one it uses with
//! `a=rtpmap:<pt> telephone-event/<rate>`. Nothing here assumes 101; [`telephone_event_pt`] reads
//! it from the leg's `m=` section, and [`crate::pt_map`] maps one leg's number to the other's.

use crate::sdp::Media;

/// Length of one event block (RFC 4733 §2.3).
pub const EVENT_LEN: usize = 4;

/// A telephone-event payload that is not one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DtmfError {
    /// Shorter than one event block.
    #[error("telephone-event payload of {0} bytes, at least 4 needed")]
    TooShort(usize),
}

/// A view of a telephone-event payload (its first event block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent<'a> {
    buf: &'a [u8],
}

impl<'a> TelephoneEvent<'a> {
    /// Views an RTP payload as telephone-event.
    pub fn parse(payload: &'a [u8]) -> Result<Self, DtmfError> {
        if payload.len() < EVENT_LEN {
            return Err(DtmfError::TooShort(payload.len()));
        }
        Ok(TelephoneEvent { buf: payload })
    }

    /// The event code (0–9, 10 `*`, 11 `#`, 12–15 A–D, 16 flash, ...).
    pub fn event(&self) -> u8 {
        self.buf[0]
    }
    /// The E bit: this packet ends the event.
    pub fn end(&self) -> bool {
        self.buf[1] & 0x80 != 0
    }
    /// The volume, in −dBm0 (0..=63).
    pub fn volume(&self) -> u8 {
        self.buf[1] & 0x3f
    }
    /// The duration so far, in timestamp units.
    pub fn duration(&self) -> u16 {
        u16::from_be_bytes([self.buf[2], self.buf[3]])
    }
    /// The DTMF character of the event, when it is one (RFC 4733 §3.2).
    pub fn digit(&self) -> Option<char> {
        digit(self.event())
    }
}

/// The DTMF character of an event code.
pub fn digit(event: u8) -> Option<char> {
    Some(match event {
        0..=9 => char::from(b'0' + event),
        10 => '*',
        11 => '#',
        12..=15 => char::from(b'A' + (event - 12)),
        _ => return None,
    })
}

/// Writes one event block (for tests and generators).
pub fn encode(event: u8, end: bool, volume: u8, duration: u16) -> [u8; EVENT_LEN] {
    let d = duration.to_be_bytes();
    [
        event,
        (if end { 0x80 } else { 0 }) | (volume & 0x3f),
        d[0],
        d[1],
    ]
}

/// The payload type a leg uses for telephone-event at `clock_rate`, from its `a=rtpmap` lines
/// (among the payload types its `m=` line lists).
pub fn telephone_event_pt(media: &Media<'_>, clock_rate: u32) -> Option<u8> {
    media.payload_type_of("telephone-event", clock_rate)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::Sdp;

    #[test]
    fn reads_the_event_fields() {
        let b = encode(11, true, 10, 1280);
        let e = TelephoneEvent::parse(&b).unwrap();
        assert_eq!(
            (e.event(), e.end(), e.volume(), e.duration()),
            (11, true, 10, 1280)
        );
        assert_eq!(e.digit(), Some('#'));
        let b = [5, 0x40 | 7, 0, 160];
        let e = TelephoneEvent::parse(&b).unwrap();
        assert!(!e.end(), "the R bit is not the E bit");
        assert_eq!(e.volume(), 7);
        assert_eq!(
            TelephoneEvent::parse(&[1, 2, 3]).unwrap_err(),
            DtmfError::TooShort(3)
        );
        assert_eq!(digit(10), Some('*'));
        assert_eq!(digit(15), Some('D'));
        assert_eq!(digit(16), None);
    }

    #[test]
    fn the_payload_type_comes_from_the_sdp_never_101_by_default() {
        let sdp = |m: &str| {
            format!("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n{m}")
        };
        let a = sdp("m=audio 1 RTP/AVP 0 96\r\na=rtpmap:96 telephone-event/8000\r\n");
        let a = Sdp::parse(a.as_bytes()).unwrap();
        assert_eq!(telephone_event_pt(&a.media[0], 8000), Some(96));
        let none = sdp("m=audio 1 RTP/AVP 0 101\r\n");
        let none = Sdp::parse(none.as_bytes()).unwrap();
        assert_eq!(
            telephone_event_pt(&none.media[0], 8000),
            None,
            "101 without rtpmap is not DTMF"
        );
        let wide = sdp(
            "m=audio 1 RTP/AVP 111 110 126\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:110 telephone-event/48000\r\na=rtpmap:126 TELEPHONE-EVENT/8000\r\n",
        );
        let wide = Sdp::parse(wide.as_bytes()).unwrap();
        assert_eq!(telephone_event_pt(&wide.media[0], 8000), Some(126));
        assert_eq!(telephone_event_pt(&wide.media[0], 48000), Some(110));
        let unlisted = sdp("m=audio 1 RTP/AVP 0\r\na=rtpmap:101 telephone-event/8000\r\n");
        let unlisted = Sdp::parse(unlisted.as_bytes()).unwrap();
        assert_eq!(
            telephone_event_pt(&unlisted.media[0], 8000),
            None,
            "rtpmap of an unlisted PT"
        );
    }
}
