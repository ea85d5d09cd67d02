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
#[derive(Debug)]
pub struct StreamFramer {
    buf: BytesMut,
    limits: Limits,
}

impl StreamFramer {
    /// A framer with the given limits.
    pub fn new(limits: Limits) -> StreamFramer {
        StreamFramer {
            buf: BytesMut::with_capacity(4096),
            limits,
        }
    }

    /// The buffer to read into.
    pub fn buffer(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Takes the next frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, ParseError> {
        // Keep-alives and stray CRLFs between messages.
        loop {
            if self.buf.starts_with(b"\r\n\r\n") {
                self.buf.advance(4);
                return Ok(Some(Frame::Ping));
            }
            if self.buf.starts_with(b"\r\n") && self.buf.len() > 2 && self.buf[2] != b'\r' {
                self.buf.advance(2); // a pong, or a CRLF before a start line (§7.5)
                continue;
            }
            if self.buf.is_empty()
                || self.buf.as_ref() == b"\r\n"
                || self.buf.as_ref() == b"\r\n\r"
                || self.buf.as_ref() == b"\r"
            {
                return Ok(None);
            }
            break;
        }
        let Some(head_end) = memchr::memmem::find(&self.buf, b"\r\n\r\n") else {
            if self.buf.len() > self.limits.max_message_size {
                return Err(ParseError::HeaderSectionTooLarge(
                    self.limits.max_message_size,
                ));
            }
            return Ok(None);
        };
        let head_len = head_end + 4;
        let head = index_head(&self.buf[..head_len], &self.limits, false)?;
        let fatal = match head.body_len {
            BodyLen::Known(n) if head_len + n <= self.limits.max_message_size => {
                if self.buf.len() < head_len + n {
                    return Ok(None);
                }
                let bytes = self.buf.split_to(head_len + n).freeze();
                return SipMessage::parse_datagram(bytes, &self.limits)
                    .map(|m| Some(Frame::Message(m)));
            }
            BodyLen::Known(_) => Defect::TooLarge,
            BodyLen::Missing => Defect::MissingContentLength,
            BodyLen::Bad(d) => d,
        };
        let bytes = self.buf.split_to(head_len).freeze();
        self.buf.clear();
        let mut msg = SipMessage::parse_datagram(bytes, &self.limits)?;
        msg.defect = Some(fatal);
        Ok(Some(Frame::Fatal(msg)))
    }
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
}
