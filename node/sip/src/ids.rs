//! Identifiers that carry their shard (ARCHITECTURE.md, "The life of a message").
//!
//! Every tag, Call-ID and Via branch the pool mints starts with `mp` and four hex digits of the shard,
//! then random characters: `z9hG4bKmp03ff-…` (branch), `mp03ff…` (tag, Call-ID). [`shard_of`] finds the
//! shard of any message without state:
//! - a response → the shard in its top Via branch (our branch);
//! - a request with a To-tag (in dialog) → the shard in the To-tag (always ours);
//! - anything else (new INVITE, CANCEL, out-of-dialog OPTIONS) → `fnv1a64(Call-ID) mod S`, and leg A's
//!   tags are minted in that same shard so a CANCEL and every later request find the INVITE's shard.
//!
//! An identifier that merely looks like ours but names a shard ≥ S falls back to the Call-ID hash.

use rand::Rng;

use crate::message::SipMessage;
use crate::message::headers::MAGIC_COOKIE;

/// The prefix of every identifier the pool mints.
pub const PREFIX: &str = "mp";

/// The default number of shards of a pool (fixed for its life).
pub const DEFAULT_SHARDS: u16 = 1024;

const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";

fn push_random(out: &mut String, n: usize, rng: &mut impl Rng) {
    for _ in 0..n {
        out.push(ALPHABET[rng.random_range(0..ALPHABET.len())] as char);
    }
}

fn minted(prefix: &str, shard: u16, random: usize, rng: &mut impl Rng) -> String {
    let mut s = String::with_capacity(prefix.len() + 6 + random);
    s.push_str(prefix);
    s.push_str(PREFIX);
    s.push_str(&format!("{shard:04x}"));
    push_random(&mut s, random, rng);
    s
}

/// A new Via branch in `shard`.
pub fn new_branch(shard: u16) -> String {
    minted("z9hG4bK", shard, 16, &mut rand::rng())
}

/// A new dialog tag in `shard`.
pub fn new_tag(shard: u16) -> String {
    minted("", shard, 12, &mut rand::rng())
}

/// A new Call-ID in `shard`.
pub fn new_call_id(shard: u16) -> String {
    minted("", shard, 24, &mut rand::rng())
}

/// The shard carried by one of our identifiers (after any `z9hG4bK`), if it is one.
pub fn shard_in(id: &[u8]) -> Option<u16> {
    let id = id.strip_prefix(MAGIC_COOKIE).unwrap_or(id);
    let rest = id.strip_prefix(PREFIX.as_bytes())?;
    let hex = rest.get(..4)?;
    let s = std::str::from_utf8(hex).ok()?;
    if !s
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return None;
    }
    u16::from_str_radix(s, 16).ok()
}

/// FNV-1a (64 bit): stable across nodes, versions and platforms.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The shard of a Call-ID: `fnv1a64(Call-ID) mod shards`.
pub fn call_id_shard(call_id: &[u8], shards: u16) -> u16 {
    (fnv1a64(call_id) % shards.max(1) as u64) as u16
}

fn ours(id: Option<&[u8]>, shards: u16) -> Option<u16> {
    id.and_then(shard_in).filter(|&s| s < shards)
}

/// The shard a message belongs to (see the module docs). Messages without a usable Call-ID go to shard 0.
pub fn shard_of(msg: &SipMessage, shards: u16) -> u16 {
    let by_id = if msg.is_request() {
        ours(msg.to_tag(), shards)
    } else {
        ours(msg.top_branch(), shards)
    };
    by_id.unwrap_or_else(|| match msg.call_id() {
        Some(Ok(cid)) => call_id_shard(cid, shards),
        _ => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_carry_their_shard() {
        for shard in [0u16, 1, 77, 1023, 65535] {
            assert_eq!(shard_in(new_branch(shard).as_bytes()), Some(shard));
            assert_eq!(shard_in(new_tag(shard).as_bytes()), Some(shard));
            assert_eq!(shard_in(new_call_id(shard).as_bytes()), Some(shard));
        }
        assert!(new_branch(3).starts_with("z9hG4bKmp0003"));
        assert_ne!(new_tag(3), new_tag(3));
        assert_eq!(shard_in(b"z9hG4bK776asdhds"), None);
        assert_eq!(shard_in(b"mpXYZW"), None);
    }

    #[test]
    fn shard_of_follows_the_design() {
        let shards = 1024;
        let tag = new_tag(700);
        // In-dialog request: the To-tag decides.
        let req = SipMessage::parse(format!(
            "BYE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:x@y>;tag=theirs\r\nTo: <sip:a@b>;tag={tag}\r\nCall-ID: c1\r\nCSeq: 2 BYE\r\n\r\n"
        ).into_bytes()).unwrap();
        assert_eq!(shard_of(&req, shards), 700);
        // A new INVITE and its CANCEL: the Call-ID hash.
        let inv = SipMessage::parse(&b"INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:x@y>;tag=t\r\nTo: <sip:a@b>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n"[..]).unwrap();
        let cancel = SipMessage::parse(&b"CANCEL sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKx\r\nFrom: <sip:x@y>;tag=t\r\nTo: <sip:a@b>\r\nCall-ID: c1\r\nCSeq: 1 CANCEL\r\n\r\n"[..]).unwrap();
        assert_eq!(shard_of(&inv, shards), call_id_shard(b"c1", shards));
        assert_eq!(shard_of(&inv, shards), shard_of(&cancel, shards));
        // A response: the top Via branch decides.
        let branch = new_branch(5);
        let resp = SipMessage::parse(format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch={branch}\r\nFrom: <sip:x@y>;tag=t\r\nTo: <sip:a@b>;tag=u\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n"
        ).into_bytes()).unwrap();
        assert_eq!(shard_of(&resp, shards), 5);
        // A look-alike beyond the shard count falls back to the hash.
        let resp = SipMessage::parse(&b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKmpffffab\r\nFrom: <sip:x@y>;tag=t\r\nTo: <sip:a@b>;tag=u\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\n\r\n"[..]).unwrap();
        assert_eq!(shard_of(&resp, shards), call_id_shard(b"c1", shards));
    }
}
