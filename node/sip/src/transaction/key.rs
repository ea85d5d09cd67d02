//! Transaction matching keys: which transaction a received message belongs to (RFC 3261 17.1.3 for
//! responses, 17.2.3 for requests, 9.2 for CANCEL), with the RFC 2543 fallback for requests whose top Via
//! branch lacks the magic cookie `z9hG4bK`.
//!
//! The keys are plain values built from byte slices the message codec hands over; this module parses
//! nothing. Comparison rules:
//! - the branch, the method, the Call-ID, the tags and the Request-URI are compared byte for byte
//!   (case-sensitively: the RFC compares the branch, Call-ID and methods case-sensitively, and a caller
//!   wanting RFC 3261 19.1.4 URI equivalence passes a normalised Request-URI);
//! - the Via sent-by (`host[:port]`) is compared case-insensitively (hosts are case-insensitive; ports are
//!   digits). No default port is filled in: `host` and `host:5060` differ, as the bytes on the wire do.
//!
//! | message received                | key                                                      |
//! |---------------------------------|----------------------------------------------------------|
//! | response                        | [`ClientKey`]: top Via branch + CSeq method              |
//! | request, branch has the cookie  | [`ServerKey`]: branch + sent-by + method (ACK → INVITE)  |
//! | CANCEL                          | its own [`ServerKey`] (method CANCEL); [`ServerKey::invite_key_for_cancel`] finds the INVITE |
//! | request, RFC 2543 (no cookie)   | Request-URI, From tag, To tag, Call-ID, CSeq number, top Via, method (ACK → INVITE) |

use std::fmt;

use thiserror::Error;

/// The RFC 3261 magic cookie that starts every branch minted by an RFC 3261 element.
pub const MAGIC_COOKIE: &[u8] = b"z9hG4bK";

/// Whether `branch` was minted by an RFC 3261 element (starts with [`MAGIC_COOKIE`]), so that the branch
/// alone identifies the transaction.
pub fn is_rfc3261_branch(branch: &[u8]) -> bool {
    branch.starts_with(MAGIC_COOKIE)
}

/// Why a key could not be built.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum KeyError {
    /// [`ServerKey::from_parts`] needs an RFC 3261 branch; use [`ServerKey::from_request`] for the
    /// RFC 2543 fallback.
    #[error("the Via branch lacks the RFC 3261 magic cookie z9hG4bK")]
    NoMagicCookie,
}

/// The methods a key names with one byte, the first of its encoding (their index here); any other
/// method is spelled out after [`SPELLED`]. Methods are case-sensitive tokens (RFC 3261 7.1):
/// `invite` is not INVITE, and is spelled out.
const NAMED: [&[u8]; 14] = [
    b"INVITE",
    b"ACK",
    b"CANCEL",
    b"BYE",
    b"OPTIONS",
    b"UPDATE",
    b"PRACK",
    b"INFO",
    b"REFER",
    b"NOTIFY",
    b"MESSAGE",
    b"SUBSCRIBE",
    b"REGISTER",
    b"PUBLISH",
];
const INVITE: u8 = 0;
const ACK: u8 = 1;
const CANCEL: u8 = 2;
/// The code of a method that is not in [`NAMED`]: its length and bytes follow.
const SPELLED: u8 = u8::MAX;

/// Appends `n` as a LEB128 varint (one byte below 128).
fn put_len(out: &mut Vec<u8>, mut n: usize) {
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// Splits a [`put_len`] length and the `len` bytes after it off the front of `buf`. Only ever
/// given what [`put_len`] wrote (a key's own encoding): a short buffer yields what is there.
fn take_field(buf: &[u8]) -> (&[u8], &[u8]) {
    let mut len = 0usize;
    let mut shift = 0u32;
    let mut at = 0;
    while let Some(&b) = buf.get(at) {
        at += 1;
        // Only our own encodings are read here; a run of continuation bytes longer than a
        // length can be adds nothing instead of overflowing the shift.
        len |= usize::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
        shift = shift.saturating_add(7);
        if b & 0x80 == 0 {
            break;
        }
    }
    let rest = buf.get(at..).unwrap_or_default();
    let len = len.min(rest.len());
    rest.split_at(len)
}

/// Appends the encoding of `method`: its index in [`NAMED`], or [`SPELLED`], its length and bytes.
fn put_method(out: &mut Vec<u8>, method: &[u8]) {
    match NAMED.iter().position(|m| *m == method) {
        Some(i) => out.push(i as u8),
        None => {
            out.push(SPELLED);
            put_len(out, method.len());
            out.extend_from_slice(method);
        }
    }
}

/// Splits an encoded method off the front of `buf`: (method, rest).
fn take_method(buf: &[u8]) -> (&[u8], &[u8]) {
    match buf.split_first() {
        Some((&SPELLED, rest)) => take_field(rest),
        Some((&code, rest)) => (
            NAMED.get(usize::from(code)).copied().unwrap_or_default(),
            rest,
        ),
        None => (&[], &[]),
    }
}

/// ACK is matched against the INVITE that it acknowledges (RFC 3261 17.2.3).
fn for_server(method: &[u8]) -> &[u8] {
    if method == b"ACK" { b"INVITE" } else { method }
}

/// The key of a client transaction (RFC 3261 17.1.3): the branch of the top Via of the request we sent
/// and the method of the request. A response matches when its top Via branch and its CSeq method are
/// equal to these. (Our own branches always carry the magic cookie, so no fallback is needed.)
///
/// Held in one allocation, compared byte for byte: the method's code (or the method spelled out)
/// and the branch. A transaction lingers up to 64*T1 after its final answer, with its key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ClientKey(Box<[u8]>);

impl ClientKey {
    /// The key of a request we send with top Via branch `branch` and method `method`, or of a response
    /// received with top Via branch `branch` and CSeq method `method`.
    pub fn new(branch: &[u8], method: &[u8]) -> Self {
        let mut out = Vec::with_capacity(1 + branch.len());
        put_method(&mut out, method);
        out.extend_from_slice(branch);
        Self(out.into_boxed_slice())
    }

    /// The top Via branch.
    pub fn branch(&self) -> &[u8] {
        take_method(&self.0).1
    }

    /// The method of the request.
    pub fn method(&self) -> &[u8] {
        take_method(&self.0).0
    }

    /// Whether this is an INVITE transaction.
    pub fn is_invite(&self) -> bool {
        self.0.first() == Some(&INVITE)
    }

    /// Whether this is the key of an ACK (which has no transaction: see
    /// [`DriverError::AckHasNoTransaction`](super::DriverError::AckHasNoTransaction)).
    pub fn is_ack(&self) -> bool {
        self.0.first() == Some(&ACK)
    }

    /// The key of a CANCEL for the request of this transaction: same branch (RFC 3261 9.1), method
    /// CANCEL. The CANCEL is a transaction of its own, a non-INVITE client transaction.
    pub fn cancel_key(&self) -> ClientKey {
        Self::new(self.branch(), b"CANCEL")
    }
}

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}",
            String::from_utf8_lossy(self.branch()),
            String::from_utf8_lossy(self.method())
        )
    }
}

/// The parts of a received request that server transaction matching needs, borrowed from the message.
/// Used by [`ServerKey::from_request`], which picks the RFC 3261 rule or the RFC 2543 fallback.
#[derive(Clone, Copy, Debug)]
pub struct RequestParts<'a> {
    /// The method of the request line (`ACK` is matched to the INVITE transaction).
    pub method: &'a [u8],
    /// The `branch` parameter of the top Via, if any.
    pub branch: Option<&'a [u8]>,
    /// The sent-by of the top Via (`host[:port]`).
    pub sent_by: &'a [u8],
    /// The Request-URI (RFC 2543 fallback only).
    pub request_uri: &'a [u8],
    /// The Call-ID (RFC 2543 fallback only).
    pub call_id: &'a [u8],
    /// The From tag (RFC 2543 fallback only).
    pub from_tag: Option<&'a [u8]>,
    /// The To tag (RFC 2543 fallback only). For an ACK this is the tag of the response the server sent.
    pub to_tag: Option<&'a [u8]>,
    /// The CSeq sequence number (RFC 2543 fallback only).
    pub cseq: u32,
}

/// The key of a server transaction (RFC 3261 17.2.3).
///
/// With an RFC 3261 branch: branch + top Via sent-by + method, where an ACK takes the method INVITE (so
/// the ACK for a non-2xx final finds its INVITE transaction) and a CANCEL keeps CANCEL (it has its own
/// transaction; [`ServerKey::invite_key_for_cancel`] gives the key of the INVITE it cancels).
///
/// Without one (RFC 2543 peers): Request-URI, From tag, Call-ID, CSeq number, top Via and method, plus
/// the To tag for methods other than INVITE. For INVITE the To tag is left out, because the ACK for a
/// non-2xx carries the To tag of the server's response, which the initial INVITE did not have, and a
/// retransmitted INVITE carries the same To tag as the original anyway. Leaving it out matches both
/// rules of 17.2.3; two INVITEs that differ only in their To tag (same Call-ID, From tag, CSeq and Via)
/// cannot come from a conforming client.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerKey(ServerKeyInner);

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum ServerKeyInner {
    /// One allocation, compared byte for byte: the method's code (or the method spelled out), the
    /// sent-by (lower-cased) with its length before it, the branch.
    Rfc3261(Box<[u8]>),
    Rfc2543(Box<LegacyKey>),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct LegacyKey {
    request_uri: Box<[u8]>,
    call_id: Box<[u8]>,
    from_tag: Option<Box<[u8]>>,
    /// `None` for INVITE keys (see [`ServerKey`]).
    to_tag: Option<Box<[u8]>>,
    cseq: u32,
    sent_by: Box<[u8]>,
    /// An RFC 2543 Via may carry a cookie-less branch; it is part of the Via, so part of the key.
    branch: Option<Box<[u8]>>,
    method: Box<[u8]>,
}

fn normalise_host(sent_by: &[u8]) -> Box<[u8]> {
    sent_by.to_ascii_lowercase().into_boxed_slice()
}

/// The encoding of an RFC 3261 server key (see [`ServerKeyInner::Rfc3261`]).
fn rfc3261(branch: &[u8], sent_by: &[u8], method: &[u8]) -> ServerKeyInner {
    let mut out = Vec::with_capacity(2 + sent_by.len() + branch.len());
    put_method(&mut out, method);
    put_len(&mut out, sent_by.len());
    out.extend(sent_by.iter().map(u8::to_ascii_lowercase));
    out.extend_from_slice(branch);
    ServerKeyInner::Rfc3261(out.into_boxed_slice())
}

/// The parts of an RFC 3261 server key's encoding: (method, sent-by, branch).
fn rfc3261_parts(key: &[u8]) -> (&[u8], &[u8], &[u8]) {
    let (method, rest) = take_method(key);
    let (sent_by, branch) = take_field(rest);
    (method, sent_by, branch)
}

impl ServerKey {
    /// The RFC 3261 key of a request whose top Via has branch `branch` (which must start with
    /// [`MAGIC_COOKIE`]) and sent-by `sent_by`, with request method `method`.
    pub fn from_parts(branch: &[u8], sent_by: &[u8], method: &[u8]) -> Result<Self, KeyError> {
        if !is_rfc3261_branch(branch) {
            return Err(KeyError::NoMagicCookie);
        }
        Ok(Self(rfc3261(branch, sent_by, for_server(method))))
    }

    /// The key of a received request: the RFC 3261 key if its branch has the magic cookie, else the
    /// RFC 2543 fallback key.
    pub fn from_request(parts: &RequestParts<'_>) -> Self {
        let method = for_server(parts.method);
        match parts.branch {
            Some(branch) if is_rfc3261_branch(branch) => {
                Self(rfc3261(branch, parts.sent_by, method))
            }
            branch => {
                let to_tag = if method == b"INVITE" {
                    None
                } else {
                    parts.to_tag.map(Into::into)
                };
                Self(ServerKeyInner::Rfc2543(Box::new(LegacyKey {
                    request_uri: parts.request_uri.into(),
                    call_id: parts.call_id.into(),
                    from_tag: parts.from_tag.map(Into::into),
                    to_tag,
                    cseq: parts.cseq,
                    sent_by: normalise_host(parts.sent_by),
                    branch: branch.map(Into::into),
                    method: method.into(),
                })))
            }
        }
    }

    /// The method of the transaction (INVITE for an ACK's key).
    pub fn method(&self) -> &[u8] {
        match &self.0 {
            ServerKeyInner::Rfc3261(key) => take_method(key).0,
            ServerKeyInner::Rfc2543(legacy) => &legacy.method,
        }
    }

    /// Whether this is the key of an INVITE transaction (also true for the key of an ACK).
    pub fn is_invite(&self) -> bool {
        match &self.0 {
            ServerKeyInner::Rfc3261(key) => key.first() == Some(&INVITE),
            ServerKeyInner::Rfc2543(legacy) => &*legacy.method == b"INVITE",
        }
    }

    /// Whether this key uses the RFC 2543 fallback.
    pub fn is_rfc2543(&self) -> bool {
        matches!(self.0, ServerKeyInner::Rfc2543(_))
    }

    /// For the key of a CANCEL, the key of the INVITE server transaction it cancels (RFC 3261 9.2: match
    /// the CANCEL as if its method were INVITE). `None` if this is not a CANCEL's key.
    pub fn invite_key_for_cancel(&self) -> Option<ServerKey> {
        match &self.0 {
            ServerKeyInner::Rfc3261(key) if key.first() == Some(&CANCEL) => {
                let (_, sent_by, branch) = rfc3261_parts(key);
                Some(Self(rfc3261(branch, sent_by, b"INVITE")))
            }
            ServerKeyInner::Rfc2543(legacy) if &*legacy.method == b"CANCEL" => {
                let mut legacy = legacy.clone();
                legacy.method = b"INVITE".as_slice().into();
                legacy.to_tag = None;
                Some(Self(ServerKeyInner::Rfc2543(legacy)))
            }
            _ => None,
        }
    }
}

impl fmt::Display for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ServerKeyInner::Rfc3261(key) => {
                let (method, sent_by, branch) = rfc3261_parts(key);
                write!(
                    f,
                    "{} {} {}",
                    String::from_utf8_lossy(branch),
                    String::from_utf8_lossy(sent_by),
                    String::from_utf8_lossy(method)
                )
            }
            ServerKeyInner::Rfc2543(legacy) => write!(
                f,
                "rfc2543 {} {} {}",
                String::from_utf8_lossy(&legacy.call_id),
                legacy.cseq,
                String::from_utf8_lossy(&legacy.method)
            ),
        }
    }
}

/// Either kind of key: names a transaction to the transport and the TU.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TransactionKey {
    /// A client transaction (we sent the request).
    Client(ClientKey),
    /// A server transaction (we received the request).
    Server(ServerKey),
}

impl From<ClientKey> for TransactionKey {
    fn from(key: ClientKey) -> Self {
        Self::Client(key)
    }
}

impl From<ServerKey> for TransactionKey {
    fn from(key: ServerKey) -> Self {
        Self::Server(key)
    }
}

impl fmt::Display for TransactionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Client(key) => write!(f, "client {key}"),
            Self::Server(key) => write!(f, "server {key}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRANCH: &[u8] = b"z9hG4bK776asdhds";

    fn parts<'a>(method: &'a [u8], branch: Option<&'a [u8]>) -> RequestParts<'a> {
        RequestParts {
            method,
            branch,
            sent_by: b"pc33.atlanta.com:5060",
            request_uri: b"sip:bob@biloxi.com",
            call_id: b"a84b4c76e66710",
            from_tag: Some(b"1928301774"),
            to_tag: None,
            cseq: 314159,
        }
    }

    #[test]
    fn client_key_matches_branch_and_cseq_method() {
        let invite = ClientKey::new(BRANCH, b"INVITE");
        assert_eq!(invite, ClientKey::new(BRANCH, b"INVITE"));
        assert!(invite.is_invite());
        assert_ne!(invite, ClientKey::new(BRANCH, b"CANCEL"));
        assert_eq!(invite.cancel_key(), ClientKey::new(BRANCH, b"CANCEL"));
        assert!(!invite.cancel_key().is_invite());
        // Branch is case-sensitive.
        assert_ne!(invite, ClientKey::new(b"z9hG4bK776ASDHDS", b"INVITE"));
    }

    #[test]
    fn server_key_branch_case_sensitive_host_case_insensitive() {
        let a = ServerKey::from_parts(BRANCH, b"PC33.Atlanta.COM:5060", b"INVITE").unwrap();
        let b = ServerKey::from_parts(BRANCH, b"pc33.atlanta.com:5060", b"INVITE").unwrap();
        assert_eq!(a, b);
        let c = ServerKey::from_parts(b"z9hG4bK776ASDHDS", b"pc33.atlanta.com:5060", b"INVITE");
        assert_ne!(a, c.unwrap());
        let d = ServerKey::from_parts(BRANCH, b"pc33.atlanta.com:5061", b"INVITE").unwrap();
        assert_ne!(a, d);
        assert!(!a.is_rfc2543());
    }

    #[test]
    fn ack_matches_invite_cancel_has_its_own_key() {
        let invite = ServerKey::from_parts(BRANCH, b"h:5060", b"INVITE").unwrap();
        let ack = ServerKey::from_parts(BRANCH, b"h:5060", b"ACK").unwrap();
        let cancel = ServerKey::from_parts(BRANCH, b"h:5060", b"CANCEL").unwrap();
        assert_eq!(invite, ack);
        assert!(ack.is_invite());
        assert_ne!(invite, cancel);
        assert_eq!(cancel.method(), b"CANCEL");
        assert_eq!(ack.method(), b"INVITE", "an ACK's key names the INVITE");
        assert_eq!(cancel.invite_key_for_cancel(), Some(invite.clone()));
        assert_eq!(invite.invite_key_for_cancel(), None);
        // A non-INVITE with the same branch (a misbehaving client) is a different transaction.
        let options = ServerKey::from_parts(BRANCH, b"h:5060", b"OPTIONS").unwrap();
        assert_ne!(options, invite);
        assert!(!options.is_invite());
    }

    #[test]
    fn from_parts_requires_the_magic_cookie() {
        assert_eq!(
            ServerKey::from_parts(b"abc", b"h", b"INVITE"),
            Err(KeyError::NoMagicCookie)
        );
        assert_eq!(
            ServerKey::from_parts(b"Z9HG4BKabc", b"h", b"INVITE"),
            Err(KeyError::NoMagicCookie)
        );
    }

    #[test]
    fn from_request_uses_the_branch_when_it_has_the_cookie() {
        let by_parts = ServerKey::from_parts(BRANCH, b"pc33.atlanta.com:5060", b"INVITE").unwrap();
        assert_eq!(
            ServerKey::from_request(&parts(b"INVITE", Some(BRANCH))),
            by_parts
        );
    }

    #[test]
    fn rfc2543_invite_retransmission_and_ack_match() {
        let invite = ServerKey::from_request(&parts(b"INVITE", None));
        assert!(invite.is_rfc2543());
        assert_eq!(invite, ServerKey::from_request(&parts(b"INVITE", None)));
        // The ACK carries the To tag of our response; it matches the INVITE all the same.
        let ack = ServerKey::from_request(&RequestParts {
            to_tag: Some(b"a6c85cf"),
            ..parts(b"ACK", None)
        });
        assert_eq!(ack, invite);
        // A different CSeq number, Call-ID, From tag or Via is another transaction.
        let other = ServerKey::from_request(&RequestParts {
            cseq: 314160,
            ..parts(b"INVITE", None)
        });
        assert_ne!(other, invite);
        let other = ServerKey::from_request(&RequestParts {
            sent_by: b"pc34.atlanta.com",
            ..parts(b"INVITE", None)
        });
        assert_ne!(other, invite);
        // A cookie-less branch is part of the Via.
        let other = ServerKey::from_request(&parts(b"INVITE", Some(b"1234")));
        assert_ne!(other, invite);
        assert!(other.is_rfc2543());
    }

    #[test]
    fn rfc2543_non_invite_includes_to_tag_and_method() {
        let bye = |tag: &'static [u8]| {
            ServerKey::from_request(&RequestParts {
                to_tag: Some(tag),
                ..parts(b"BYE", None)
            })
        };
        assert_eq!(bye(b"x"), bye(b"x"));
        assert_ne!(bye(b"x"), bye(b"y"));
        let info = ServerKey::from_request(&RequestParts {
            to_tag: Some(b"x"),
            ..parts(b"INFO", None)
        });
        assert_ne!(info, bye(b"x"));
    }

    #[test]
    fn rfc2543_cancel_finds_its_invite() {
        let invite = ServerKey::from_request(&parts(b"INVITE", None));
        let cancel = ServerKey::from_request(&parts(b"CANCEL", None));
        assert_ne!(cancel, invite);
        assert_eq!(cancel.invite_key_for_cancel(), Some(invite));
    }

    #[test]
    fn methods_are_case_sensitive_and_any_method_is_kept_whole() {
        let invite = ClientKey::new(BRANCH, b"INVITE");
        let lower = ClientKey::new(BRANCH, b"invite");
        assert_ne!(invite, lower);
        assert!(invite.is_invite() && !lower.is_invite());
        assert_eq!(lower.method(), b"invite");
        assert_eq!(lower.branch(), BRANCH);
        let odd = ClientKey::new(BRANCH, b"X-CUSTOM-METHOD");
        assert_eq!(odd.method(), b"X-CUSTOM-METHOD");
        assert_eq!(odd.branch(), BRANCH);
        assert_ne!(odd, ClientKey::new(BRANCH, b"X-CUSTOM-METHODE"));
        assert_eq!(ClientKey::new(BRANCH, b"OPTIONS").method(), b"OPTIONS");
        assert!(ClientKey::new(BRANCH, b"ACK").is_ack());
        let s = ServerKey::from_parts(BRANCH, b"h", b"invite").unwrap();
        assert!(!s.is_invite());
        assert_eq!(s.method(), b"invite");
    }

    /// A key is one allocation compared byte for byte: its parts are told apart by their lengths,
    /// so two keys that would spell the same bytes end to end are still different keys.
    #[test]
    fn the_parts_of_a_key_never_run_into_each_other() {
        let a = ServerKey::from_parts(b"z9hG4bKx", b"ab", b"BYE").unwrap();
        let b = ServerKey::from_parts(b"z9hG4bKx", b"a", b"BYE").unwrap();
        assert_ne!(a, b);
        // A sent-by longer than 127 bytes takes two length bytes.
        let long = "h".repeat(300);
        let k = ServerKey::from_parts(BRANCH, long.as_bytes(), b"CANCEL").unwrap();
        assert_eq!(
            k.to_string(),
            format!("{} {long} CANCEL", String::from_utf8_lossy(BRANCH))
        );
        assert_eq!(
            k.invite_key_for_cancel(),
            Some(ServerKey::from_parts(BRANCH, long.to_uppercase().as_bytes(), b"INVITE").unwrap())
        );
        let spelled = ServerKey::from_parts(BRANCH, b"h:5060", b"X-M").unwrap();
        assert_eq!(spelled.to_string(), "z9hG4bK776asdhds h:5060 X-M");
        assert_ne!(
            spelled,
            ServerKey::from_parts(BRANCH, b"h:5060", b"X-MM").unwrap()
        );
    }

    /// Three keys per call live up to 64*T1 after it (each shared by its table slot and timers):
    /// a key is one pointer to one allocation of its bytes, for either kind of key.
    #[test]
    fn a_key_is_one_small_allocation() {
        assert_eq!(std::mem::size_of::<ClientKey>(), 16);
        assert_eq!(std::mem::size_of::<ServerKey>(), 16);
    }

    #[test]
    fn display_is_readable() {
        let key = ClientKey::new(BRANCH, b"INVITE");
        assert_eq!(
            TransactionKey::from(key).to_string(),
            "client z9hG4bK776asdhds INVITE"
        );
    }
}
