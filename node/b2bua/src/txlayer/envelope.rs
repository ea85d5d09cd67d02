//! The message the transaction layer carries ([`Envelope`]: a parsed message with its peer and
//! transport), the responses server transactions keep ([`Reply`]: bytes and where they go, never
//! parsed back) and the transaction keys read from messages.

use std::net::SocketAddr;

use bytes::Bytes;
use medpool_sip::SipMessage;
use medpool_sip::transaction::{ClientKey, RequestParts, ServerKey};
use medpool_sip::transport::{Transport, response_target};

/// A message with the peer it came from or goes to.
#[derive(Clone, Debug)]
pub struct Envelope {
    /// The message.
    pub msg: SipMessage,
    /// Source (received) or destination (sent).
    pub peer: SocketAddr,
    /// Transport.
    pub transport: Transport,
    /// The pool node that received the message from the network (when another node forwarded it to
    /// us); answers to it are sent through that node.
    pub via: Option<u64>,
    /// W3C trace context the message arrived with (set on forwarded messages).
    pub traceparent: Option<String>,
    /// A new-call INVITE the pool node that received it from the network answered 100 Trying
    /// itself (when it forwarded it here, or took it back from an owner that could not take it):
    /// its call sends none.
    pub trying_sent: bool,
}

impl Envelope {
    /// Wraps bytes we built (parsed back so the transaction layer and ACK building can read them).
    pub fn outgoing(bytes: Bytes, peer: SocketAddr, transport: Transport) -> Option<Envelope> {
        match SipMessage::parse(bytes) {
            // Our own messages are kept (by their transactions, the ACK of a 2xx by its call):
            // without the index's spare room.
            Ok(mut msg) => Some(Envelope {
                msg: {
                    msg.shrink_to_fit();
                    msg
                },
                peer,
                transport,
                via: None,
                traceparent: None,
                trying_sent: false,
            }),
            Err(e) => {
                tracing::error!(error = %e, "built an unparseable message");
                None
            }
        }
    }

    /// An answer to this (received) request, for its server transaction: to its reply address,
    /// through the node it came in on. Not parsed back: nothing reads a response we send, and a
    /// server transaction only ever sends it (again).
    pub fn reply(&self, bytes: Bytes) -> Reply {
        Reply {
            bytes,
            peer: self.reply_peer(),
            transport: self.transport,
            via: self.via,
        }
    }

    /// Where responses to this (received) request go (RFC 3261 §18.2.2).
    pub fn reply_peer(&self) -> SocketAddr {
        match self.transport {
            Transport::Tcp | Transport::Tls => self.peer,
            Transport::Udp => match self.msg.top_via() {
                Some(Ok(v)) => response_target(&v, self.peer),
                _ => self.peer,
            },
        }
    }
}

/// A response we send through a server transaction, in its wire form: what a transaction keeps to
/// answer a retransmitted request (a BYE's 200 for 64*T1 after it was sent) and a call keeps to
/// resend its 2xx until the caller's ACK. Its bytes are the message as built, never parsed back.
#[derive(Clone, Debug)]
pub struct Reply {
    /// The message.
    pub bytes: Bytes,
    /// Where it goes (the request's reply address).
    pub peer: SocketAddr,
    /// Transport.
    pub transport: Transport,
    /// The pool node the request came in on, when another node forwarded it to us: the answer
    /// goes out through it.
    pub via: Option<u64>,
}

/// The server-transaction key of a received request.
pub fn server_key(msg: &SipMessage) -> Option<ServerKey> {
    let via = msg.top_via()?.ok()?;
    let cseq = msg.cseq()?.ok()?;
    let sent_by_owned;
    let sent_by: &[u8] = match via.port {
        Some(p) => {
            sent_by_owned = [via.host, b":", p.to_string().as_bytes()].concat();
            &sent_by_owned
        }
        None => via.host,
    };
    Some(ServerKey::from_request(&RequestParts {
        method: msg.method_bytes()?,
        branch: via.branch(),
        sent_by,
        request_uri: msg.request_uri_bytes()?,
        call_id: msg.call_id()?.ok()?,
        from_tag: msg.from_tag(),
        to_tag: msg.to_tag(),
        cseq: cseq.seq,
    }))
}

/// The client-transaction key of a received response (top Via branch + CSeq method).
pub fn client_key(msg: &SipMessage) -> Option<ClientKey> {
    let branch = msg.top_branch()?;
    let cseq = msg.cseq()?.ok()?;
    Some(ClientKey::new(branch, cseq.method_bytes))
}

/// The client-transaction key of a request we are about to send (our top Via branch + method).
pub fn client_key_of_request(msg: &SipMessage) -> Option<ClientKey> {
    let branch = msg.top_branch()?;
    Some(ClientKey::new(branch, msg.method_bytes()?))
}
