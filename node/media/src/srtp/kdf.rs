//! RFC 3711 §4.3 key derivation: the session encryption key, authentication key and salt of SRTP
//! (labels 0, 1, 2) and SRTCP (labels 3, 4, 5) from a master key and salt, with the AES-CM PRF
//! (§4.3.3). The key derivation rate is 0 (RFC 4568's default; the only one SDES peers use), so
//! each session key is derived once, when the context is made.

use aes::Aes128;
use aes::cipher::KeyInit;
use zeroize::Zeroize;

use super::cm::xor_keystream;
use super::keys::{MASTER_SALT_LEN, MasterKey};

/// Bytes of the session encryption key (AES-128).
pub const SESSION_KEY_LEN: usize = 16;
/// Bytes of the session salt.
pub const SESSION_SALT_LEN: usize = 14;
/// Bytes of the session authentication key (HMAC-SHA1, RFC 3711 §4.2.1: 160 bits).
pub const AUTH_KEY_LEN: usize = 20;

/// The three labels of one direction of keys (§4.3.2).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Labels {
    /// SRTP: encryption 0x00, authentication 0x01, salt 0x02.
    Rtp,
    /// SRTCP: encryption 0x03, authentication 0x04, salt 0x05.
    Rtcp,
}

/// One protocol's session keys. Zeroed on drop; `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct SessionKeys {
    /// The AES-128 session key.
    pub cipher_key: [u8; SESSION_KEY_LEN],
    /// The session salt.
    pub salt: [u8; SESSION_SALT_LEN],
    /// The HMAC-SHA1 session authentication key.
    pub auth_key: [u8; AUTH_KEY_LEN],
}

impl Drop for SessionKeys {
    fn drop(&mut self) {
        self.cipher_key.zeroize();
        self.salt.zeroize();
        self.auth_key.zeroize();
    }
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(<redacted>)")
    }
}

impl SessionKeys {
    /// Derives SRTP's (`Labels::Rtp`) or SRTCP's session keys from `master`.
    pub(crate) fn derive(master: &MasterKey, labels: Labels) -> SessionKeys {
        let prf = Aes128::new(master.key().into());
        let base = match labels {
            Labels::Rtp => 0u8,
            Labels::Rtcp => 3u8,
        };
        let mut keys = SessionKeys {
            cipher_key: [0; SESSION_KEY_LEN],
            salt: [0; SESSION_SALT_LEN],
            auth_key: [0; AUTH_KEY_LEN],
        };
        derive_one(&prf, master.salt(), base, &mut keys.cipher_key);
        derive_one(&prf, master.salt(), base + 1, &mut keys.auth_key);
        derive_one(&prf, master.salt(), base + 2, &mut keys.salt);
        keys
    }
}

/// `PRF_n(k_master, x)` with `x = (label || index DIV kdr) XOR master_salt` and kdr 0: the
/// 56-bit key_id is the label followed by 48 zero bits, aligned to the salt's low end, so the
/// label lands in byte 7 of the 14-byte salt; the IV is x·2^16.
fn derive_one(prf: &Aes128, master_salt: &[u8; MASTER_SALT_LEN], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..MASTER_SALT_LEN].copy_from_slice(master_salt);
    iv[7] ^= label;
    out.fill(0);
    xor_keystream(prf, &iv, out);
    iv.zeroize();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::keys::tests::hex;

    fn rfc_master() -> MasterKey {
        let key = hex("E1F97A0D3E018BE0D64FA32C06DE4139").try_into().unwrap();
        let salt = hex("0EC675AD498AFEEBB6960B3AABE6").try_into().unwrap();
        MasterKey::new(key, salt)
    }

    /// RFC 3711 Appendix B.3: cipher key, cipher salt and the first 160 bits of the
    /// authentication key the RFC lists (it prints 94 bytes; HMAC-SHA1 uses 20).
    #[test]
    fn rfc3711_b3_key_derivation() {
        let k = SessionKeys::derive(&rfc_master(), Labels::Rtp);
        assert_eq!(
            k.cipher_key.to_vec(),
            hex("C61E7A93744F39EE10734AFE3FF7A087")
        );
        assert_eq!(k.salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        assert_eq!(
            k.auth_key.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A15 6D38BAA4")
        );
    }

    /// SRTCP labels 3, 4, 5 from the same master key. Not in the RFC: a known answer computed
    /// independently (Python `cryptography`, AES-ECB of the salt with the label XORed in byte 7,
    /// counter blocks 0 and 1, run by hand when this test was written).
    #[test]
    fn srtcp_labels_known_answer() {
        let k = SessionKeys::derive(&rfc_master(), Labels::Rtcp);
        assert_eq!(
            k.cipher_key.to_vec(),
            hex("4C1AA45A81F73D61C800BBB00FBB1EAA")
        );
        assert_eq!(
            k.auth_key.to_vec(),
            hex("8D54534FEB49AE8E7993A6BD0B844FC323A93DFD")
        );
        assert_eq!(k.salt.to_vec(), hex("9581C7AD87B3E530BF3E4454A8B3"));
        assert_eq!(format!("{k:?}"), "SessionKeys(<redacted>)");
    }
}
