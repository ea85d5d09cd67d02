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
//!
//! A Call-ID we mint also ends in a MAC of the rest (SipHash-2-4 under the pool's key, 8 characters):
//! [`is_minted_call_id`] tells our Call-IDs from forged look-alikes, so a 2xx that no call knows is
//! acted on (ACK and BYE) only when it answers an INVITE this pool really sent. The key is the
//! pool's ([`set_mac_key`]); until one is set, a random key of this process.

use std::hash::Hasher;
use std::sync::{PoisonError, RwLock};

use rand::Rng;
use siphasher::sip::SipHasher24;

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

/// Characters of a Call-ID's MAC.
const MAC_LEN: usize = 8;

/// The MAC key now (k0, k1) and the one before it (accepted while calls minted under it may live).
static MAC_KEYS: std::sync::OnceLock<RwLock<[(u64, u64); 2]>> = std::sync::OnceLock::new();

fn key_cell() -> &'static RwLock<[(u64, u64); 2]> {
    MAC_KEYS.get_or_init(|| {
        let mut rng = rand::rng();
        let k = (rng.random(), rng.random());
        RwLock::new([k, k])
    })
}

fn keys() -> [(u64, u64); 2] {
    *key_cell().read().unwrap_or_else(PoisonError::into_inner)
}

/// Makes `key` the MAC key of the Call-IDs minted from now on (the pool's shared secret, so that any
/// node recognises the Call-IDs of every other); the previous key stays accepted.
pub fn set_mac_key(key: [u8; 16]) {
    let mut k = [0u8; 8];
    k.copy_from_slice(&key[..8]);
    let k0 = u64::from_le_bytes(k);
    k.copy_from_slice(&key[8..]);
    let new = (k0, u64::from_le_bytes(k));
    let mut keys = key_cell().write().unwrap_or_else(PoisonError::into_inner);
    if keys[0] != new {
        *keys = [new, keys[0]];
    }
}

fn mac(key: (u64, u64), data: &[u8]) -> [u8; MAC_LEN] {
    let mut h = SipHasher24::new_with_keys(key.0, key.1);
    h.write(data);
    let mut v = h.finish();
    let mut out = [0u8; MAC_LEN];
    for c in &mut out {
        *c = ALPHABET[(v % ALPHABET.len() as u64) as usize];
        v /= ALPHABET.len() as u64;
    }
    out
}

/// A new Call-ID in `shard`, ending in its MAC.
pub fn new_call_id(shard: u16) -> String {
    let mut id = minted("", shard, 16, &mut rand::rng());
    let tag = mac(keys()[0], id.as_bytes());
    id.extend(tag.iter().map(|&b| b as char));
    id
}

/// Whether `id` is a Call-ID this pool minted (its MAC holds under the current or previous key),
/// not merely one that looks like it.
pub fn is_minted_call_id(id: &[u8]) -> bool {
    if shard_in(id).is_none() || id.len() < PREFIX.len() + 4 + MAC_LEN {
        return false;
    }
    let (body, tag) = id.split_at(id.len() - MAC_LEN);
    keys().iter().any(|&k| mac(k, body) == tag)
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
    fn a_minted_call_id_is_told_from_a_look_alike() {
        let id = new_call_id(42);
        assert!(is_minted_call_id(id.as_bytes()));
        assert_eq!(shard_in(id.as_bytes()), Some(42));
        // Same shape, another MAC; one character changed; too short; not ours at all.
        let mut forged = id.clone().into_bytes();
        let last = forged.len() - 1;
        forged[last] = if forged[last] == b'a' { b'b' } else { b'a' };
        assert!(!is_minted_call_id(&forged));
        let mut body = id.clone().into_bytes();
        body[8] = if body[8] == b'x' { b'y' } else { b'x' };
        assert!(!is_minted_call_id(&body));
        assert!(!is_minted_call_id(b"mp002a"));
        assert!(!is_minted_call_id(b"c1@example.com"));
        // A new pool key: new Call-IDs use it, and those minted under the old one are still ours.
        set_mac_key(*b"0123456789abcdef");
        let after = new_call_id(42);
        assert!(is_minted_call_id(after.as_bytes()));
        assert!(is_minted_call_id(id.as_bytes()));
        assert_ne!(&after[after.len() - MAC_LEN..], &id[id.len() - MAC_LEN..]);
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
