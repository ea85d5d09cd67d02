//! AES-128 in counter mode as RFC 3711 §4.1.1 uses it: a 128-bit IV whose low 16 bits count
//! blocks, XORed over a caller's buffer in place. The key schedule is built once per session key
//! and reused for every packet.

use aes::Aes128;
use aes::cipher::{InnerIvInit, StreamCipher, StreamCipherCoreWrapper};

/// AES-128 counter mode, big-endian 128-bit counter (the low 16 bits never overflow for an
/// SRTP packet: 2^16 blocks is 1 MiB). It borrows the key schedule: nothing is copied per packet.
type AesCtrCore<'a> = ctr::CtrCore<&'a Aes128, ctr::flavors::Ctr128BE>;

/// XORs the AES-CM keystream that starts at counter block `iv` over `data`.
pub(crate) fn xor_keystream(cipher: &Aes128, iv: &[u8; 16], data: &mut [u8]) {
    let core = AesCtrCore::inner_iv_init(cipher, iv.into());
    let mut ctr = StreamCipherCoreWrapper::from_core(core);
    ctr.apply_keystream(data);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::srtp::keys::tests::hex;
    use aes::cipher::KeyInit;

    /// RFC 3711 Appendix B.2: session key and salt, SSRC 0, index 0; the keystream blocks at
    /// counters 0, 1, 2 and at 0xFEFF, 0xFF00, 0xFF01 (the last of the 65282-block segment).
    #[test]
    fn rfc3711_b2_keystream() {
        let key = hex("2B7E151628AED2A6ABF7158809CF4F3C");
        let cipher = Aes128::new_from_slice(&key).unwrap();
        let iv: [u8; 16] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000").try_into().unwrap();
        let mut ks = vec![0u8; 0xFF02 * 16];
        xor_keystream(&cipher, &iv, &mut ks);
        let block = |n: usize| &ks[n * 16..n * 16 + 16];
        assert_eq!(block(0), hex("E03EAD0935C95E80E166B16DD92B4EB4"));
        assert_eq!(block(1), hex("D23513162B02D0F72A43A2FE4A5F97AB"));
        assert_eq!(block(2), hex("41E95B3BB0A2E8DD477901E4FCA894C0"));
        assert_eq!(block(0xFEFF), hex("EC8CDF7398607CB0F2D21675EA9EA1E4"));
        assert_eq!(block(0xFF00), hex("362B7C3C6773516318A077D7FC5073AE"));
        assert_eq!(block(0xFF01), hex("6A2CC3787889374FBEB4C81B17BA6C44"));
    }
}
