//! Stream framing (RFC 3261 §18.3): check, then parse. An incomplete message is "not yet", not an error.
//! Content-Length is required on streams; a missing, malformed or duplicated one, or a message larger
//! than the limit, loses the framing: the message is returned once as [`Frame::Fatal`] (so it can be
//! answered) and the connection must then be closed. A double CRLF between messages is an RFC 5626
//! keep-alive ping, answered with a single CRLF.

use bytes::{Buf, BytesMut};

use crate::limits::Limits;
use crate::message::SipMessage;
use crate::message::parse::{BodyLen, Defect, ParseError, index_head};

/// One item taken from a stream.
#[derive(Debug)]
pub enum Frame {
    /// A complete message.
    Message(SipMessage),
    /// An RFC 5626 keep-alive ping (CRLF CRLF): answer with [`PONG`].
    Ping,
    /// A message after which the stream cannot be framed: answer it if possible, then close.
    Fatal(SipMessage),
}

/// The keep-alive answer.
pub const PONG: &[u8] = b"\r\n";

/// Accumulates bytes of one connection and yields frames.
///
/// The search for the end of a header section resumes where the previous one stopped, and once a
/// header section is indexed its message length is kept: each byte received is looked at a bounded
/// number of times, however the peer splits its writes (a peer trickling one byte at a time costs
/// O(1) per byte, not a rescan of everything buffered).
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    limits: Limits,
    /// The search for CRLFCRLF resumes here: no earlier offset starts one.
    scanned: usize,
    /// The current message's whole length (head + body) once its head was indexed.
    need: Option<usize>,
}

impl StreamFramer {
    /// A framer with the given limits.
    pub fn new(limits: Limits) -> StreamFramer {
        StreamFramer {
            buf: BytesMut::with_capacity(4096),
            limits,
            scanned: 0,
            need: None,
        }
    }

    /// The buffer to read into.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Whether part of a message is buffered (more than the CRLFs of a keep-alive): the time a
    /// message may take to arrive whole runs while this holds.
    pub fn in_message(&self) -> bool {
        self.need.is_some() || self.buf.iter().take(4).any(|b| !matches!(b, b'\r' | b'\n'))
    }

    /// Takes the next frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ParseError> {
        let total = match self.need {
            Some(n) => n,
            None => {
                if let Some(ping) = self.skip_keepalives() {
                    return Ok(ping);
                }
                match self.find_head()? {
                    Head::Length(total) => total,
                    Head::Fatal(frame) => return Ok(Some(frame)),
                    Head::NotYet => return Ok(None),
                }
            }
        };
        if self.buf.len() < total {
            return Ok(None);
        }
        self.need = None;
        self.scanned = 0;
        let bytes = self.buf.split_to(total).freeze();
        SipMessage::parse_datagram(bytes, &self.limits).map(|m| Some(Frame::Message(m)))
    }

    /// Keep-alives and stray CRLFs between messages: `Some(frame)` when the caller returns that
    /// (a ping, or `None` = wait for more), `None` when a message starts at the buffer's head.
    fn skip_keepalives(&mut self) -> Option<Option<Frame>> {
        loop {
            if self.buf.starts_with(b"\r\n\r\n") {
                self.buf.advance(4);
                self.scanned = 0;
                return Some(Some(Frame::Ping));
            }
            if self.buf.starts_with(b"\r\n") && self.buf.len() > 2 && self.buf[2] != b'\r' {
                self.buf.advance(2); // a pong, or a CRLF before a start line (§7.5)
                self.scanned = 0;
                continue;
            }
            if self.buf.is_empty()
                || self.buf.as_ref() == b"\r\n"
                || self.buf.as_ref() == b"\r\n\r"
                || self.buf.as_ref() == b"\r"
            {
                return Some(None);
            }
            return None;
        }
    }

    /// Looks for the end of the header section from where the last look stopped.
    fn find_head(&mut self) -> Result<Head, ParseError> {
        let from = self.scanned.min(self.buf.len());
        let Some(at) = memchr::memmem::find(&self.buf[from..], b"\r\n\r\n") else {
            if self.buf.len() > self.limits.max_message_size {
                return Err(ParseError::HeaderSectionTooLarge(
                    self.limits.max_message_size,
                ));
            }
            // The last three bytes may begin a CRLFCRLF that the next read completes.
            self.scanned = self.buf.len().saturating_sub(3);
            return Ok(Head::NotYet);
        };
        let head_len = from + at + 4;
        let head = index_head(&self.buf[..head_len], &self.limits, false)?;
        let fatal = match head.body_len {
            BodyLen::Known(n) if head_len + n <= self.limits.max_message_size => {
                self.need = Some(head_len + n);
                return Ok(Head::Length(head_len + n));
            }
            BodyLen::Known(_) => Defect::TooLarge,
            BodyLen::Missing => Defect::MissingContentLength,
            BodyLen::Bad(d) => d,
        };
        let bytes = self.buf.split_to(head_len).freeze();
        self.buf.clear();
        self.scanned = 0;
        let mut msg = SipMessage::parse_datagram(bytes, &self.limits)?;
        msg.defect = Some(fatal);
        Ok(Head::Fatal(Frame::Fatal(msg)))
    }
}

/// What the look for a header section's end found.
enum Head {
    /// Not there yet.
    NotYet,
    /// The message's whole length (head and body).
    Length(usize),
    /// A message after which the stream cannot be framed (the buffer was emptied).
    Fatal(Frame),
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPT: &[u8] = b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nContent-Length: 4\r\n\r\nbody";

    #[test]
    fn frames_byte_by_byte_and_back_to_back() {
        let mut f = StreamFramer::new(Limits::default());
        let mut stream = Vec::new();
        stream.extend_from_slice(OPT);
        stream.extend_from_slice(b"\r\n\r\n");
        stream.extend_from_slice(OPT);
        let mut got = Vec::new();
        for b in stream {
            f.buffer().extend_from_slice(&[b]);
            while let Some(fr) = f.next_frame().unwrap() {
                got.push(fr);
            }
        }
        assert_eq!(got.len(), 3);
        assert!(matches!(&got[0], Frame::Message(m) if m.body() == b"body"));
        assert!(matches!(got[1], Frame::Ping));
        assert!(matches!(&got[2], Frame::Message(m) if m.body() == b"body"));
    }

    #[test]
    fn missing_or_bad_content_length_is_fatal() {
        for msg in [
            &b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n\r\n"[..],
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nl: -1\r\n\r\n",
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nl: 1\r\nl: 1\r\n\r\nx",
            b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\nl: 999999999\r\n\r\nx",
        ] {
            let mut f = StreamFramer::new(Limits::default());
            f.buffer().extend_from_slice(msg);
            assert!(matches!(f.next_frame().unwrap(), Some(Frame::Fatal(_))));
        }
    }

    #[test]
    fn endless_header_section_is_an_error() {
        let mut f = StreamFramer::new(Limits {
            max_message_size: 100,
            ..Limits::default()
        });
        f.buffer().extend_from_slice(b"OPTIONS sip:a@b SIP/2.0\r\n");
        assert!(f.next_frame().unwrap().is_none());
        f.buffer().extend_from_slice(&[b'X'; 200]);
        assert!(f.next_frame().is_err());
    }

    #[test]
    fn the_scan_resumes_where_it_stopped() {
        let mut f = StreamFramer::new(Limits::default());
        f.buffer()
            .extend_from_slice(b"OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/TCP h\r\n");
        assert!(f.next_frame().unwrap().is_none());
        let first = f.scanned;
        assert_eq!(first, f.buf.len() - 3, "the next look starts near the end");
        // A header trickled in byte by byte: every look starts at most three bytes back.
        for &b in b"X-Pad: 0123456789\r\n".iter() {
            f.buffer().extend_from_slice(&[b]);
            assert!(f.next_frame().unwrap().is_none());
            assert_eq!(f.scanned, f.buf.len() - 3);
        }
        assert!(f.in_message());
        // The end of the head split over two reads ("\r\n" + "\r\n"), then a body in pieces:
        // the head is indexed once and its length kept.
        f.buffer().extend_from_slice(b"l: 4\r\n\r");
        assert!(f.next_frame().unwrap().is_none());
        f.buffer().extend_from_slice(b"\nbo");
        assert!(f.next_frame().unwrap().is_none());
        let need = f.need.expect("the head was indexed");
        assert_eq!(need, f.buf.len() + 2);
        f.buffer().extend_from_slice(b"dy");
        assert!(matches!(f.next_frame().unwrap(), Some(Frame::Message(m)) if m.body() == b"body"));
        assert_eq!((f.scanned, f.need), (0, None));
        assert!(!f.in_message());
    }

    #[test]
    fn keepalive_crlfs_are_not_part_of_a_message() {
        let mut f = StreamFramer::new(Limits::default());
        f.buffer().extend_from_slice(b"\r\n");
        assert!(f.next_frame().unwrap().is_none());
        assert!(
            !f.in_message(),
            "a lone CRLF is a keep-alive, not a message begun"
        );
        f.buffer().extend_from_slice(b"\r\n");
        assert!(matches!(f.next_frame().unwrap(), Some(Frame::Ping)));
        f.buffer().extend_from_slice(b"O");
        assert!(f.next_frame().unwrap().is_none());
        assert!(f.in_message());
    }
}
