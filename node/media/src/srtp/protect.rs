//! One leg's SRTP context: protects (or unprotects) RTP and RTCP in place in the caller's
//! buffer — AES-128 counter mode (RFC 3711 §4.1.1), the HMAC-SHA1 tag (§4.2.1; 80 or 32 bits
//! for SRTP, 80 for SRTCP), the MKI when the key has one, and the SRTCP index with its E flag
//! (§3.4). A context serves one direction: the relay makes one to unprotect what a leg sends and
//! another to protect what it sends to that leg. Per-SSRC state is a list bounded by
//! [`MAX_SSRCS`], reserved when the context is made: no allocation per packet.

use aes::Aes128;
use aes::cipher::KeyInit;
use hmac::{Hmac, Mac};
use sha1::Sha1;

use super::cm::xor_keystream;
use super::context::{IndexState, ReplayWindow};
use super::error::SrtpError;
use super::kdf::{Labels, SESSION_SALT_LEN, SessionKeys};
use super::keys::{CryptoAttribute, KeyParams, Mki, Suite};

/// SSRCs one context keeps index and replay state for. A call's leg has one or two (audio,
/// perhaps a new one after a re-INVITE); a packet with one more is refused with
/// [`SrtpError::TooManySsrcs`] once it authenticates.
pub const MAX_SSRCS: usize = 16;

/// Bytes of the SRTCP E flag and index word.
const SRTCP_INDEX_LEN: usize = 4;
/// The largest SRTCP index (31 bits).
const MAX_SRTCP_INDEX: u32 = 0x7FFF_FFFF;

type HmacSha1 = Hmac<Sha1>;

/// One protocol's (SRTP's or SRTCP's) keyed primitives, derived once.
#[derive(Clone)]
struct Keyed {
    cipher: Aes128,
    salt: [u8; SESSION_SALT_LEN],
    mac: HmacSha1,
}

impl Keyed {
    fn new(keys: &SessionKeys) -> Keyed {
        Keyed {
            cipher: Aes128::new((&keys.cipher_key).into()),
            salt: keys.salt,
            mac: <HmacSha1 as Mac>::new_from_slice(&keys.auth_key)
                .expect("HMAC takes a key of any length"),
        }
    }

    /// The counter block of §4.1.1: (salt·2^16) XOR (SSRC·2^64) XOR (index·2^16).
    fn iv(&self, ssrc: u32, index: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..SESSION_SALT_LEN].copy_from_slice(&self.salt);
        for (d, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *d ^= s;
        }
        for (d, s) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *d ^= s;
        }
        iv
    }
}

impl Drop for Keyed {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.salt);
    }
}

/// One SSRC's state.
#[derive(Debug, Clone)]
struct Stream {
    ssrc: u32,
    rtp: IndexState,
    rtcp: IndexState,
    /// The next SRTCP index to send.
    rtcp_next: u32,
}

/// One leg's SRTP context for one direction. `Debug` shows the suite and MKI, never keys.
pub struct Srtp {
    suite: Suite,
    mki: Option<Mki>,
    /// The key's lifetime in packets, counted separately for SRTP and SRTCP.
    lifetime: u64,
    rtp_packets: u64,
    rtcp_packets: u64,
    window: ReplayWindow,
    rtp: Keyed,
    rtcp: Keyed,
    streams: Vec<Stream>,
}

impl std::fmt::Debug for Srtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Srtp")
            .field("suite", &self.suite)
            .field("mki", &self.mki)
            .field("window", &self.window)
            .field("ssrcs", &self.streams.len())
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// Length of an RTP header (fixed part, CSRCs, extension), checked against the packet.
fn rtp_header_len(p: &[u8]) -> Result<usize, SrtpError> {
    if p.len() < 12 || p[0] >> 6 != 2 {
        return Err(SrtpError::TooShort);
    }
    let mut n = 12 + 4 * usize::from(p[0] & 0x0F);
    if p[0] & 0x10 != 0 {
        let ext = p.get(n..n + 4).ok_or(SrtpError::TooShort)?;
        n += 4 + 4 * usize::from(u16::from_be_bytes([ext[2], ext[3]]));
    }
    if n > p.len() {
        return Err(SrtpError::TooShort);
    }
    Ok(n)
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

impl Srtp {
    /// A context for `suite` keyed by `key` (its MKI, if any, is sent and required).
    pub fn new(suite: Suite, key: &KeyParams, window: ReplayWindow) -> Srtp {
        let rtp = SessionKeys::derive(&key.master, Labels::Rtp);
        let rtcp = SessionKeys::derive(&key.master, Labels::Rtcp);
        Srtp {
            suite,
            mki: key.mki,
            lifetime: key.lifetime.unwrap_or(u64::MAX),
            rtp_packets: 0,
            rtcp_packets: 0,
            window,
            rtp: Keyed::new(&rtp),
            rtcp: Keyed::new(&rtcp),
            streams: Vec::with_capacity(MAX_SSRCS),
        }
    }

    /// A context from a parsed `a=crypto` attribute.
    pub fn from_attribute(attr: &CryptoAttribute, window: ReplayWindow) -> Srtp {
        Srtp::new(attr.suite, &attr.key, window)
    }

    /// The suite.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    /// The MKI, if packets carry one.
    pub fn mki(&self) -> Option<Mki> {
        self.mki
    }

    /// Bytes protection adds to an RTP packet (MKI and tag): the room the caller's buffer needs
    /// after the packet.
    pub fn rtp_overhead(&self) -> usize {
        self.mki_len() + self.suite.rtp_tag_len()
    }

    /// Bytes protection adds to an RTCP packet (E flag and index, MKI, tag).
    pub fn rtcp_overhead(&self) -> usize {
        SRTCP_INDEX_LEN + self.mki_len() + self.suite.rtcp_tag_len()
    }

    /// The roll-over counter of `ssrc`'s SRTP stream, if the context has seen it.
    pub fn roc(&self, ssrc: u32) -> Option<u32> {
        self.streams
            .iter()
            .find(|s| s.ssrc == ssrc)
            .map(|s| s.rtp.roc())
    }

    fn mki_len(&self) -> usize {
        self.mki.map_or(0, Mki::len)
    }

    fn find(&self, ssrc: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.ssrc == ssrc)
    }

    /// The slot for `ssrc`, added if new (bounded by [`MAX_SSRCS`]).
    fn slot(&mut self, ssrc: u32) -> Result<usize, SrtpError> {
        if let Some(i) = self.find(ssrc) {
            return Ok(i);
        }
        if self.streams.len() >= MAX_SSRCS {
            return Err(SrtpError::TooManySsrcs);
        }
        self.streams.push(Stream {
            ssrc,
            rtp: IndexState::new(self.window),
            rtcp: IndexState::new(self.window),
            rtcp_next: 0,
        });
        Ok(self.streams.len() - 1)
    }

    /// Protects the RTP packet in `buf[..len]` in place; `buf` must have
    /// [`Srtp::rtp_overhead`] bytes of room after it. Returns the SRTP packet's length.
    /// Refuses to encrypt an index twice ([`SrtpError::Replayed`]: the keystream would repeat).
    pub fn protect_rtp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let packet = buf.get(..len).ok_or(SrtpError::TooShort)?;
        let header = rtp_header_len(packet)?;
        let mki_len = self.mki_len();
        let tag_len = self.suite.rtp_tag_len();
        let out_len = len + mki_len + tag_len;
        if buf.len() < out_len {
            return Err(SrtpError::NoRoom);
        }
        if self.rtp_packets >= self.lifetime {
            return Err(SrtpError::KeyExpired);
        }
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = be_u32(&buf[8..12]);
        let slot = self.slot(ssrc)?;
        let state = &mut self.streams[slot].rtp;
        let index = state.estimate(seq)?;
        state.check(index)?;
        let iv = self.rtp.iv(ssrc, index);
        xor_keystream(&self.rtp.cipher, &iv, &mut buf[header..len]);
        let roc = (index >> 16) as u32;
        let mut mac = self.rtp.mac.clone();
        mac.update(&buf[..len]);
        mac.update(&roc.to_be_bytes());
        let full = mac.finalize().into_bytes();
        if let Some(mki) = self.mki {
            mki.write(&mut buf[len..len + mki_len]);
        }
        buf[len + mki_len..out_len].copy_from_slice(&full[..tag_len]);
        state.accept(index);
        self.rtp_packets += 1;
        Ok(out_len)
    }

    /// Authenticates and decrypts the SRTP packet that fills `buf`, in place. Returns the RTP
    /// packet's length (the MKI and tag are left behind it). Nothing changes unless the packet
    /// authenticates.
    pub fn unprotect_rtp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let mki_len = self.mki_len();
        let tag_len = self.suite.rtp_tag_len();
        let body = buf
            .len()
            .checked_sub(mki_len + tag_len)
            .ok_or(SrtpError::TooShort)?;
        let header = rtp_header_len(&buf[..body])?;
        if let Some(mki) = self.mki
            && !mki.matches(&buf[body..body + mki_len])
        {
            return Err(SrtpError::UnknownMki);
        }
        if self.rtp_packets >= self.lifetime {
            return Err(SrtpError::KeyExpired);
        }
        let seq = u16::from_be_bytes([buf[2], buf[3]]);
        let ssrc = be_u32(&buf[8..12]);
        let known = self.find(ssrc);
        let fresh;
        let state = match known {
            Some(i) => &self.streams[i].rtp,
            None => {
                fresh = IndexState::new(self.window);
                &fresh
            }
        };
        let index = state.estimate(seq)?;
        state.check(index)?;
        let roc = (index >> 16) as u32;
        let mut mac = self.rtp.mac.clone();
        mac.update(&buf[..body]);
        mac.update(&roc.to_be_bytes());
        mac.verify_truncated_left(&buf[body + mki_len..])
            .map_err(|_| SrtpError::AuthFailed)?;
        let slot = self.slot(ssrc)?;
        let iv = self.rtp.iv(ssrc, index);
        xor_keystream(&self.rtp.cipher, &iv, &mut buf[header..body]);
        self.streams[slot].rtp.accept(index);
        self.rtp_packets += 1;
        Ok(body)
    }

    /// Protects the RTCP compound packet in `buf[..len]` in place (encrypted, E flag set);
    /// `buf` must have [`Srtp::rtcp_overhead`] bytes of room after it. Returns the SRTCP
    /// packet's length.
    pub fn protect_rtcp(&mut self, buf: &mut [u8], len: usize) -> Result<usize, SrtpError> {
        let packet = buf.get(..len).ok_or(SrtpError::TooShort)?;
        if packet.len() < 8 || packet[0] >> 6 != 2 {
            return Err(SrtpError::TooShort);
        }
        let mki_len = self.mki_len();
        let tag_len = self.suite.rtcp_tag_len();
        let out_len = len + SRTCP_INDEX_LEN + mki_len + tag_len;
        if buf.len() < out_len {
            return Err(SrtpError::NoRoom);
        }
        if self.rtcp_packets >= self.lifetime {
            return Err(SrtpError::KeyExpired);
        }
        let ssrc = be_u32(&buf[4..8]);
        let slot = self.slot(ssrc)?;
        let index = self.streams[slot].rtcp_next;
        if index > MAX_SRTCP_INDEX {
            return Err(SrtpError::IndexExhausted);
        }
        let iv = self.rtcp.iv(ssrc, u64::from(index));
        xor_keystream(&self.rtcp.cipher, &iv, &mut buf[8..len]);
        let e_index = len + SRTCP_INDEX_LEN;
        buf[len..e_index].copy_from_slice(&(0x8000_0000 | index).to_be_bytes());
        let mut mac = self.rtcp.mac.clone();
        mac.update(&buf[..e_index]);
        let full = mac.finalize().into_bytes();
        if let Some(mki) = self.mki {
            mki.write(&mut buf[e_index..e_index + mki_len]);
        }
        buf[e_index + mki_len..out_len].copy_from_slice(&full[..tag_len]);
        self.streams[slot].rtcp_next = index + 1;
        self.rtcp_packets += 1;
        Ok(out_len)
    }

    /// Authenticates and (when its E flag is set) decrypts the SRTCP packet that fills `buf`,
    /// in place. Returns the RTCP packet's length.
    pub fn unprotect_rtcp(&mut self, buf: &mut [u8]) -> Result<usize, SrtpError> {
        let mki_len = self.mki_len();
        let tag_len = self.suite.rtcp_tag_len();
        let body = buf
            .len()
            .checked_sub(SRTCP_INDEX_LEN + mki_len + tag_len)
            .filter(|&b| b >= 8)
            .ok_or(SrtpError::TooShort)?;
        if buf[0] >> 6 != 2 {
            return Err(SrtpError::TooShort);
        }
        let e_index_end = body + SRTCP_INDEX_LEN;
        if let Some(mki) = self.mki
            && !mki.matches(&buf[e_index_end..e_index_end + mki_len])
        {
            return Err(SrtpError::UnknownMki);
        }
        if self.rtcp_packets >= self.lifetime {
            return Err(SrtpError::KeyExpired);
        }
        let e_index = be_u32(&buf[body..e_index_end]);
        let encrypted = e_index & 0x8000_0000 != 0;
        let index = u64::from(e_index & MAX_SRTCP_INDEX);
        let ssrc = be_u32(&buf[4..8]);
        if let Some(i) = self.find(ssrc) {
            self.streams[i].rtcp.check(index)?;
        }
        let mut mac = self.rtcp.mac.clone();
        mac.update(&buf[..e_index_end]);
        mac.verify_truncated_left(&buf[e_index_end + mki_len..])
            .map_err(|_| SrtpError::AuthFailed)?;
        let slot = self.slot(ssrc)?;
        if encrypted {
            let iv = self.rtcp.iv(ssrc, index);
            xor_keystream(&self.rtcp.cipher, &iv, &mut buf[8..body]);
        }
        self.streams[slot].rtcp.accept(index);
        self.rtcp_packets += 1;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::keys::MasterKey;
    use crate::srtp::keys::tests::hex;

    fn key(n: u8, mki: Option<Mki>) -> KeyParams {
        let mut k = [0u8; 16];
        let mut s = [0u8; 14];
        k.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = n.wrapping_mul(31).wrapping_add(i as u8));
        s.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = n ^ (0xA0 + i as u8));
        KeyParams {
            master: MasterKey::new(k, s),
            lifetime: None,
            mki,
        }
    }

    fn pair(suite: Suite, k: &KeyParams) -> (Srtp, Srtp) {
        (
            Srtp::new(suite, k, ReplayWindow::W64),
            Srtp::new(suite, k, ReplayWindow::W64),
        )
    }

    /// A 172-byte RTP packet (12-byte header, 160 bytes of G.711).
    fn rtp(seq: u16, ssrc: u32) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend((0..160).map(|i| (i as u8) ^ (seq as u8)));
        p
    }

    /// Protects `plain` with `tx` into a fresh buffer and returns the SRTP datagram.
    fn protect(tx: &mut Srtp, plain: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = plain.to_vec();
        buf.resize(plain.len() + tx.rtp_overhead(), 0);
        let n = tx.protect_rtp(&mut buf, plain.len())?;
        buf.truncate(n);
        Ok(buf)
    }

    fn unprotect(rx: &mut Srtp, srtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut buf = srtp.to_vec();
        let n = rx.unprotect_rtp(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }

    /// The packet libsrtp's test driver uses with the RFC 3711 B.3 master key and
    /// AES_CM_128_HMAC_SHA1_80 (SEQ 0x1234, SSRC 0xCAFEBABE, 16 bytes of 0xAB). The expected
    /// bytes were also computed independently (Python `cryptography` AES-CTR and `hmac`).
    #[test]
    fn known_answer_packet() {
        let k = KeyParams {
            master: MasterKey::new(
                hex("E1F97A0D3E018BE0D64FA32C06DE4139").try_into().unwrap(),
                hex("0EC675AD498AFEEBB6960B3AABE6").try_into().unwrap(),
            ),
            lifetime: None,
            mki: None,
        };
        let plain = hex("800f1234 decafbad cafebabe abababab abababab abababab abababab");
        let want = hex(
            "800f1234 decafbad cafebabe 4e55dc4c e79978d8 8ca4d215 949d2402 \
             b78d6acc 99ea179b 8dbb",
        );
        let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80, &k);
        let srtp = protect(&mut tx, &plain).unwrap();
        assert_eq!(srtp, want);
        assert_eq!(unprotect(&mut rx, &srtp).unwrap(), plain);
    }

    #[test]
    fn round_trip_is_byte_identical_across_several_sequence_wraps() {
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
            let k = key(1, None);
            let (mut tx, mut rx) = pair(suite, &k);
            let mut seq: u16 = 65_500;
            for n in 0..(3 * 65_536 + 100u32) {
                let plain = rtp(seq, 0x1111_2222);
                let srtp = protect(&mut tx, &plain).unwrap();
                assert_eq!(srtp.len(), plain.len() + suite.rtp_tag_len());
                if n % 4096 == 0 {
                    assert_ne!(srtp[12..172], plain[12..], "payload encrypted");
                }
                assert_eq!(unprotect(&mut rx, &srtp).unwrap(), plain, "seq {seq} n {n}");
                seq = seq.wrapping_add(1);
            }
            // 65500 + 3·65536 + 99: four wraps of 65535 → 0.
            assert_eq!(tx.roc(0x1111_2222), Some(4));
            assert_eq!(rx.roc(0x1111_2222), Some(4));
        }
    }

    #[test]
    fn late_and_replayed_packets_around_a_wrap() {
        let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80, &key(2, None));
        let sent: Vec<(u16, Vec<u8>)> = [65_533u16, 65_534, 65_535, 0, 1, 2]
            .iter()
            .map(|&s| (s, protect(&mut tx, &rtp(s, 7)).unwrap()))
            .collect();
        // Receive 65533, 0, 1 (65534 and 65535 delayed), then the late ones, then 2.
        for i in [0, 3, 4, 1, 2, 5] {
            let (s, p) = &sent[i];
            assert_eq!(unprotect(&mut rx, p).unwrap(), rtp(*s, 7), "seq {s}");
        }
        assert_eq!(rx.roc(7), Some(1));
        for (_, p) in &sent {
            assert_eq!(unprotect(&mut rx, p), Err(SrtpError::Replayed));
        }
        // The sender refuses to reuse an index (its keystream).
        assert_eq!(protect(&mut tx, &rtp(1, 7)), Err(SrtpError::Replayed));
    }

    #[test]
    fn too_old_and_replay_do_not_disturb_state() {
        let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80, &key(3, None));
        let old = protect(&mut tx, &rtp(100, 9)).unwrap();
        let mut last = Vec::new();
        for s in 101..300 {
            last = protect(&mut tx, &rtp(s, 9)).unwrap();
        }
        unprotect(&mut rx, &last).unwrap();
        assert_eq!(unprotect(&mut rx, &old), Err(SrtpError::TooOld));
        assert_eq!(unprotect(&mut rx, &last), Err(SrtpError::Replayed));
    }

    #[test]
    fn tampering_and_wrong_keys_fail_authentication() {
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
            let (mut tx, mut rx) = pair(suite, &key(4, None));
            let srtp = protect(&mut tx, &rtp(10, 5)).unwrap();
            for at in [1, 3, 7, 11, 12, 100, srtp.len() - 1] {
                let mut bad = srtp.clone();
                bad[at] ^= 0x01;
                assert_eq!(unprotect(&mut rx, &bad), Err(SrtpError::AuthFailed), "{at}");
            }
            let mut other = Srtp::new(suite, &key(5, None), ReplayWindow::W64);
            assert_eq!(unprotect(&mut other, &srtp), Err(SrtpError::AuthFailed));
            // A failed packet left no trace: the genuine one still passes.
            assert_eq!(unprotect(&mut rx, &srtp).unwrap(), rtp(10, 5));
        }
        // A 32-bit tag is not an 80-bit one.
        let (mut tx32, _) = pair(Suite::AesCm128HmacSha1_32, &key(6, None));
        let mut rx80 = Srtp::new(Suite::AesCm128HmacSha1_80, &key(6, None), ReplayWindow::W64);
        let srtp = protect(&mut tx32, &rtp(1, 1)).unwrap();
        assert_eq!(unprotect(&mut rx80, &srtp), Err(SrtpError::AuthFailed));
    }

    #[test]
    fn mki_present_absent_and_wrong() {
        let mki = Mki::new(1, 1).unwrap();
        let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80, &key(7, Some(mki)));
        let plain = rtp(50, 3);
        let srtp = protect(&mut tx, &plain).unwrap();
        assert_eq!(srtp.len(), plain.len() + 1 + 10);
        assert_eq!(srtp[plain.len()], 1, "MKI between payload and tag");
        assert_eq!(unprotect(&mut rx, &srtp).unwrap(), plain);
        // Wrong MKI.
        let mut wrong = protect(&mut tx, &rtp(51, 3)).unwrap();
        wrong[plain.len()] = 2;
        assert_eq!(unprotect(&mut rx, &wrong), Err(SrtpError::UnknownMki));
        // A peer that sends no MKI to a context that expects one, and the reverse.
        let mut no_mki_tx = Srtp::new(Suite::AesCm128HmacSha1_80, &key(7, None), ReplayWindow::W64);
        let bare = protect(&mut no_mki_tx, &rtp(52, 3)).unwrap();
        assert!(unprotect(&mut rx, &bare).is_err());
        let mut no_mki_rx = Srtp::new(Suite::AesCm128HmacSha1_80, &key(7, None), ReplayWindow::W64);
        let with = protect(&mut tx, &rtp(53, 3)).unwrap();
        assert_eq!(unprotect(&mut no_mki_rx, &with), Err(SrtpError::AuthFailed));
        // A 4-byte MKI.
        let mki4 = Mki::new(0xDEAD_BEEF, 4).unwrap();
        let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_32, &key(8, Some(mki4)));
        let srtp = protect(&mut tx, &plain).unwrap();
        assert_eq!(srtp[plain.len()..plain.len() + 4], [0xDE, 0xAD, 0xBE, 0xEF]);
        assert_eq!(srtp.len(), plain.len() + 4 + 4);
        assert_eq!(unprotect(&mut rx, &srtp).unwrap(), plain);
    }

    /// SRTP from leg 1 (key K1) unprotected, protected again with leg 2's key K2, unprotected by
    /// leg 2's receiver: byte-identical to the RTP leg 1 sent. Leg 1 uses a Lync-style MKI and
    /// the 80-bit tag; leg 2 no MKI and the 32-bit tag.
    #[test]
    fn bridging_two_legs_is_byte_identical() {
        let k1 = key(9, Some(Mki::new(1, 1).unwrap()));
        let k2 = key(10, None);
        let mut leg1_tx = Srtp::new(Suite::AesCm128HmacSha1_80, &k1, ReplayWindow::W128);
        let mut relay_rx1 = Srtp::new(Suite::AesCm128HmacSha1_80, &k1, ReplayWindow::W128);
        let mut relay_tx2 = Srtp::new(Suite::AesCm128HmacSha1_32, &k2, ReplayWindow::W64);
        let mut leg2_rx = Srtp::new(Suite::AesCm128HmacSha1_32, &k2, ReplayWindow::W64);
        let mut buf = [0u8; 1500];
        let mut seq = 65_000u16;
        for _ in 0..2000 {
            let plain = rtp(seq, 0xABCD_0001);
            let wire1 = protect(&mut leg1_tx, &plain).unwrap();
            // The relay: one buffer, in place both ways.
            buf[..wire1.len()].copy_from_slice(&wire1);
            let n = relay_rx1.unprotect_rtp(&mut buf[..wire1.len()]).unwrap();
            assert_eq!(buf[..n], plain[..]);
            let m = relay_tx2.protect_rtp(&mut buf, n).unwrap();
            assert_ne!(buf[12..n], plain[12..]);
            let back = unprotect(&mut leg2_rx, &buf[..m]).unwrap();
            assert_eq!(back, plain);
            seq = seq.wrapping_add(1);
        }
        // And from the plain side: RTP in, SRTP towards leg 1.
        let plain = rtp(5, 0x0BAD_F00D);
        let mut leg1_rx = Srtp::new(Suite::AesCm128HmacSha1_80, &k1, ReplayWindow::W64);
        let mut relay_tx1 = Srtp::new(Suite::AesCm128HmacSha1_80, &k1, ReplayWindow::W64);
        let wire = protect(&mut relay_tx1, &plain).unwrap();
        assert_eq!(unprotect(&mut leg1_rx, &wire).unwrap(), plain);
    }

    #[test]
    fn rtcp_round_trip_with_index_and_e_flag() {
        let mki = Mki::new(3, 2).unwrap();
        for suite in [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32] {
            let (mut tx, mut rx) = pair(suite, &key(11, Some(mki)));
            // A receiver report plus an SDES chunk, 28 bytes.
            let rr = hex("81c90007 12345678 87654321 00000001 00000002 00000003 00000004 00000005");
            for expected_index in 0u32..5 {
                let mut buf = rr.clone();
                buf.resize(rr.len() + tx.rtcp_overhead(), 0);
                let n = tx.protect_rtcp(&mut buf, rr.len()).unwrap();
                assert_eq!(n, rr.len() + 4 + 2 + 10, "tag is 80 bits for both suites");
                assert_eq!(buf[..8], rr[..8], "first header in the clear");
                assert_ne!(buf[8..rr.len()], rr[8..]);
                let e_index = be_u32(&buf[rr.len()..rr.len() + 4]);
                assert_eq!(e_index, 0x8000_0000 | expected_index);
                assert_eq!(buf[rr.len() + 4..rr.len() + 6], [0, 3]);
                let wire = buf[..n].to_vec();
                // Tampered and wrong-MKI copies first: refused, and they change nothing.
                let mut bad = wire.clone();
                bad[9] ^= 0x80;
                assert_eq!(rx.unprotect_rtcp(&mut bad), Err(SrtpError::AuthFailed));
                let mut bad_index = wire.clone();
                bad_index[rr.len() + 3] ^= 0x40;
                assert_eq!(
                    rx.unprotect_rtcp(&mut bad_index),
                    Err(SrtpError::AuthFailed)
                );
                let mut bad_mki = wire.clone();
                bad_mki[rr.len() + 5] = 4;
                assert_eq!(rx.unprotect_rtcp(&mut bad_mki), Err(SrtpError::UnknownMki));
                let mut rbuf = wire.clone();
                let m = rx.unprotect_rtcp(&mut rbuf).unwrap();
                assert_eq!(rbuf[..m], rr[..]);
                let mut again = wire;
                assert_eq!(rx.unprotect_rtcp(&mut again), Err(SrtpError::Replayed));
            }
        }
    }

    #[test]
    fn short_garbage_and_small_buffers_are_errors_not_panics() {
        let (mut tx, mut rx) = pair(
            Suite::AesCm128HmacSha1_80,
            &key(12, Some(Mki::new(1, 1).unwrap())),
        );
        let mut seed = 0x1234_5678u32;
        for len in 0..200usize {
            let mut p: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    seed as u8
                })
                .collect();
            if len > 0 {
                p[0] = 0x80 | (p[0] & 0x3F);
            }
            assert!(rx.unprotect_rtp(&mut p.clone()).is_err());
            assert!(rx.unprotect_rtcp(&mut p.clone()).is_err());
            let _ = tx.protect_rtp(&mut p.clone(), len);
            let _ = tx.protect_rtcp(&mut p.clone(), len);
            assert!(tx.protect_rtp(&mut p.clone(), len + 1).is_err());
        }
        // No room for MKI and tag.
        let mut b = rtp(1, 1);
        let len = b.len();
        assert_eq!(tx.protect_rtp(&mut b, len), Err(SrtpError::NoRoom));
        // Header extension longer than the packet.
        let mut b = rtp(1, 1);
        b[0] = 0x90;
        b[12..16].copy_from_slice(&[0xBE, 0xDE, 0xFF, 0xFF]);
        b.resize(len + 20, 0);
        assert_eq!(tx.protect_rtp(&mut b, len), Err(SrtpError::TooShort));
        let dbg = format!("{tx:?}");
        assert!(
            dbg.contains("<redacted>") && !dbg.contains("cipher"),
            "{dbg}"
        );
    }

    /// CSRCs and a header extension stay in the clear (authenticated, not encrypted); the
    /// payload after them is encrypted; the round trip is byte-identical.
    #[test]
    fn csrcs_and_header_extension_stay_in_the_clear() {
        let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_32, &key(15, None));
        let mut p = vec![0x92, 0x08, 0x00, 0x07, 0, 0, 0, 1, 0, 0, 0, 2];
        p.extend_from_slice(&[0xC1, 0xC1, 0xC1, 0xC1, 0xC2, 0xC2, 0xC2, 0xC2]);
        p.extend_from_slice(&[0xBE, 0xDE, 0x00, 0x01, 0x10, 0xAA, 0x00, 0x00]);
        let header = p.len();
        p.extend((0..40u8).map(|i| i.wrapping_mul(3)));
        let srtp = protect(&mut tx, &p).unwrap();
        assert_eq!(srtp[..header], p[..header]);
        assert_ne!(srtp[header..p.len()], p[header..]);
        assert_eq!(unprotect(&mut rx, &srtp).unwrap(), p);
        let mut bad = protect(&mut tx, &{
            let mut q = p.clone();
            q[3] = 8;
            q
        })
        .unwrap();
        bad[header - 3] ^= 0xFF;
        assert_eq!(unprotect(&mut rx, &bad), Err(SrtpError::AuthFailed));
    }

    #[test]
    fn key_lifetime_is_enforced() {
        let mut k = key(14, None);
        k.lifetime = Some(3);
        let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80, &k);
        let sent: Vec<Vec<u8>> = (1..=3)
            .map(|s| protect(&mut tx, &rtp(s, 1)).unwrap())
            .collect();
        assert_eq!(protect(&mut tx, &rtp(4, 1)), Err(SrtpError::KeyExpired));
        for p in &sent {
            unprotect(&mut rx, p).unwrap();
        }
        let mut fourth = Srtp::new(
            Suite::AesCm128HmacSha1_80,
            &key(14, None),
            ReplayWindow::W64,
        );
        let p = protect(&mut fourth, &rtp(4, 1)).unwrap();
        assert_eq!(unprotect(&mut rx, &p), Err(SrtpError::KeyExpired));
    }

    #[test]
    fn ssrcs_are_bounded() {
        let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80, &key(13, None));
        for ssrc in 0..MAX_SSRCS as u32 {
            let p = protect(&mut tx, &rtp(1, ssrc)).unwrap();
            unprotect(&mut rx, &p).unwrap();
        }
        assert_eq!(protect(&mut tx, &rtp(1, 999)), Err(SrtpError::TooManySsrcs));
    }
}
