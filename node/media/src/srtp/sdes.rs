//! SDES offer/answer (RFC 4568 §7): which offered `a=crypto` line to accept, the answer's line
//! (same tag and suite, a fresh key of our own), and an offer's lines. Each side's key protects
//! what that side sends: the relay unprotects a leg's packets with the key the leg put in its
//! SDP and protects what it sends to the leg with the key the relay put in its own.

use super::error::SrtpError;
use super::keys::{CryptoAttribute, Mki, Suite};

/// The first offered `a=crypto` value (the text after `a=crypto:`) this implementation
/// supports, parsed. Lines with another suite, bad keys or unsupported session parameters are
/// skipped, as RFC 4568 §7.1.2 lets the answerer do; `None` when none is acceptable (the
/// caller answers without SRTP, or refuses with 488 when SRTP is required).
pub fn choose_offer<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<CryptoAttribute> {
    values
        .into_iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .find_map(|v| CryptoAttribute::parse(v.trim()).ok())
}

/// The answer to an accepted offer line: its tag and suite, a fresh master key from the OS's
/// secure random source, and an MKI of the same length (value 1) when the offer carries one
/// (Lync/SfB offer `|1:1` and expect MKIs both ways).
pub fn answer(offer: &CryptoAttribute) -> Result<CryptoAttribute, SrtpError> {
    let mki = match offer.key.mki {
        Some(m) => Some(Mki::new(1, m.len() as u8)?),
        None => None,
    };
    CryptoAttribute::generate(offer.tag, offer.suite, mki)
}

/// An offer's lines: one per suite in the order given, tags 1, 2, …, each with a fresh key and
/// the MKI if given.
pub fn offer(suites: &[Suite], mki: Option<Mki>) -> Result<Vec<CryptoAttribute>, SrtpError> {
    (1u32..)
        .zip(suites)
        .map(|(tag, &suite)| CryptoAttribute::generate(tag, suite, mki))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_supported_line_is_chosen_and_answered_in_kind() {
        let ours = offer(
            &[Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32],
            Some(Mki::new(1, 1).unwrap()),
        )
        .unwrap();
        assert_eq!(ours.len(), 2);
        assert_eq!((ours[0].tag, ours[1].tag), (1, 2));
        assert_ne!(ours[0].key.master, ours[1].key.master);
        let second = ours[1].to_string();
        let lines: Vec<String> = vec![
            "1 AEAD_AES_256_GCM inline:AAAA".to_owned(),
            format!("{} UNENCRYPTED_SRTP", ours[0]),
            "x garbage".to_owned(),
            second.clone(),
        ];
        let mut values: Vec<&[u8]> = lines.iter().map(|l| l.as_bytes()).collect();
        values.insert(0, b"\xFF\xFE not utf-8");
        let chosen = choose_offer(values).unwrap();
        assert_eq!(chosen.to_string(), second);
        let ans = answer(&chosen).unwrap();
        assert_eq!((ans.tag, ans.suite), (2, Suite::AesCm128HmacSha1_32));
        assert_eq!(ans.key.mki, Some(Mki::new(1, 1).unwrap()));
        assert_ne!(ans.key.master, chosen.key.master);
        assert!(choose_offer([b"1 F8_128_HMAC_SHA1_80 inline:AAAA".as_slice()]).is_none());
        // No MKI offered: none answered.
        let plain = offer(&[Suite::AesCm128HmacSha1_80], None).unwrap();
        assert_eq!(answer(&plain[0]).unwrap().key.mki, None);
    }
}
