//! SDES key material (RFC 4568): the crypto suites offered, a leg's master key and salt, and the
//! `a=crypto` attribute value `<tag> <suite> inline:<base64 key||salt>[|<lifetime>][|<MKI>:<len>]
//! [session params]` parsed and formatted. Master keys come from the OS's secure random source;
//! they are zeroed on drop and never shown by `Debug`.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroize;

use super::error::SrtpError;

/// Bytes of the AES-128 master key.
pub const MASTER_KEY_LEN: usize = 16;
/// Bytes of the master salt.
pub const MASTER_SALT_LEN: usize = 14;

/// An SRTP crypto suite (RFC 4568 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// AES-128 counter mode, HMAC-SHA1 tag of 80 bits (SRTP and SRTCP).
    AesCm128HmacSha1_80,
    /// AES-128 counter mode, HMAC-SHA1 tag of 32 bits for SRTP (80 bits for SRTCP).
    AesCm128HmacSha1_32,
}

impl Suite {
    /// The suite's name as SDP spells it.
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// Parses an SDP suite name (exact, as RFC 4568 registers it).
    pub fn from_name(name: &str) -> Result<Suite, SrtpError> {
        match name {
            "AES_CM_128_HMAC_SHA1_80" => Ok(Suite::AesCm128HmacSha1_80),
            "AES_CM_128_HMAC_SHA1_32" => Ok(Suite::AesCm128HmacSha1_32),
            _ => Err(SrtpError::UnsupportedSuite),
        }
    }

    /// Bytes of the SRTP authentication tag.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }

    /// Bytes of the SRTCP authentication tag (80 bits for both suites, RFC 4568 §6.2).
    pub fn rtcp_tag_len(self) -> usize {
        10
    }
}

/// A leg's master key and master salt. Zeroed on drop; `Debug` prints `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    key: [u8; MASTER_KEY_LEN],
    salt: [u8; MASTER_SALT_LEN],
}

impl MasterKey {
    /// A master key and salt from their bytes.
    pub fn new(key: [u8; MASTER_KEY_LEN], salt: [u8; MASTER_SALT_LEN]) -> MasterKey {
        MasterKey { key, salt }
    }

    /// A fresh master key and salt from the OS's secure random source.
    pub fn generate() -> Result<MasterKey, SrtpError> {
        let mut m = MasterKey::new([0; MASTER_KEY_LEN], [0; MASTER_SALT_LEN]);
        getrandom::fill(&mut m.key).map_err(|_| SrtpError::Random)?;
        getrandom::fill(&mut m.salt).map_err(|_| SrtpError::Random)?;
        Ok(m)
    }

    /// The master key.
    pub fn key(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.key
    }

    /// The master salt.
    pub fn salt(&self) -> &[u8; MASTER_SALT_LEN] {
        &self.salt
    }

    /// From the 30 bytes of an `inline:` key (key then salt).
    fn from_concat(bytes: &[u8]) -> Result<MasterKey, SrtpError> {
        if bytes.len() != MASTER_KEY_LEN + MASTER_SALT_LEN {
            return Err(SrtpError::BadKeyParams);
        }
        let mut m = MasterKey::new([0; MASTER_KEY_LEN], [0; MASTER_SALT_LEN]);
        m.key.copy_from_slice(&bytes[..MASTER_KEY_LEN]);
        m.salt.copy_from_slice(&bytes[MASTER_KEY_LEN..]);
        Ok(m)
    }

    /// Base64 of key||salt, as `inline:` carries it.
    fn to_base64(&self) -> String {
        let mut both = [0u8; MASTER_KEY_LEN + MASTER_SALT_LEN];
        both[..MASTER_KEY_LEN].copy_from_slice(&self.key);
        both[MASTER_KEY_LEN..].copy_from_slice(&self.salt);
        let s = STANDARD.encode(both);
        both.zeroize();
        s
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        self.key.zeroize();
        self.salt.zeroize();
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// A Master Key Identifier: its value and its length in bytes on the wire (1 to 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mki {
    value: u32,
    len: u8,
}

impl Mki {
    /// An MKI of `len` bytes (1..=4) carrying `value` (which must fit).
    pub fn new(value: u32, len: u8) -> Result<Mki, SrtpError> {
        let fits = match len {
            1..=3 => value < (1u32 << (8 * u32::from(len))),
            4 => true,
            _ => false,
        };
        if fits {
            Ok(Mki { value, len })
        } else {
            Err(SrtpError::BadMki)
        }
    }

    /// The MKI's value.
    pub fn value(self) -> u32 {
        self.value
    }

    /// Bytes the MKI takes in each packet.
    pub fn len(self) -> usize {
        usize::from(self.len)
    }

    /// Never true: an MKI has 1 to 4 bytes.
    pub fn is_empty(self) -> bool {
        false
    }

    /// Writes the MKI big-endian into `out` (exactly [`Mki::len`] bytes).
    pub(crate) fn write(self, out: &mut [u8]) {
        let be = self.value.to_be_bytes();
        out.copy_from_slice(&be[4 - self.len()..]);
    }

    /// Whether `bytes` (exactly [`Mki::len`] bytes) carry this MKI.
    pub(crate) fn matches(self, bytes: &[u8]) -> bool {
        let be = self.value.to_be_bytes();
        bytes == &be[4 - self.len()..]
    }
}

/// One key-params entry: the master key, its lifetime in packets (if stated) and its MKI (if
/// used). `Debug` never shows the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyParams {
    /// The master key and salt.
    pub master: MasterKey,
    /// The key's lifetime in packets, if the line states one.
    pub lifetime: Option<u64>,
    /// The MKI, if the line states one.
    pub mki: Option<Mki>,
}

impl KeyParams {
    /// Parses `inline:<base64>[|<lifetime>][|<MKI>:<len>]`.
    pub fn parse(s: &str) -> Result<KeyParams, SrtpError> {
        let rest = s.strip_prefix("inline:").ok_or(SrtpError::BadKeyParams)?;
        let mut parts = rest.split('|');
        let b64 = parts.next().ok_or(SrtpError::BadKeyParams)?;
        let mut raw = STANDARD.decode(b64).map_err(|_| SrtpError::BadKeyParams)?;
        let master = MasterKey::from_concat(&raw);
        raw.zeroize();
        let master = master?;
        let (mut lifetime, mut mki) = (None, None);
        for part in parts {
            if let Some((value, len)) = part.split_once(':') {
                if mki.is_some() {
                    return Err(SrtpError::BadMki);
                }
                let value = parse_decimal(value).ok_or(SrtpError::BadMki)?;
                let len = parse_decimal(len).ok_or(SrtpError::BadMki)?;
                let value = u32::try_from(value).map_err(|_| SrtpError::BadMki)?;
                let len = u8::try_from(len).map_err(|_| SrtpError::BadMki)?;
                mki = Some(Mki::new(value, len)?);
            } else {
                // The lifetime comes before the MKI, and only once.
                if lifetime.is_some() || mki.is_some() {
                    return Err(SrtpError::BadLifetime);
                }
                lifetime = Some(parse_lifetime(part)?);
            }
        }
        Ok(KeyParams {
            master,
            lifetime,
            mki,
        })
    }
}

impl fmt::Display for KeyParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "inline:{}", self.master.to_base64())?;
        if let Some(l) = self.lifetime {
            if l.is_power_of_two() {
                write!(f, "|2^{}", l.trailing_zeros())?;
            } else {
                write!(f, "|{l}")?;
            }
        }
        if let Some(m) = self.mki {
            write!(f, "|{}:{}", m.value, m.len)?;
        }
        Ok(())
    }
}

/// One `a=crypto` attribute value (RFC 4568 §9.1) with a single key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CryptoAttribute {
    /// The tag that the answer echoes (up to 9 digits).
    pub tag: u32,
    /// The crypto suite.
    pub suite: Suite,
    /// The key.
    pub key: KeyParams,
    /// Session parameters this implementation accepts and ignores (for example `WSH=64`).
    pub session_params: Vec<String>,
}

impl CryptoAttribute {
    /// A new leg's attribute: a fresh master key from the OS's secure random source, no
    /// lifetime, the MKI if given.
    pub fn generate(tag: u32, suite: Suite, mki: Option<Mki>) -> Result<Self, SrtpError> {
        Ok(CryptoAttribute {
            tag,
            suite,
            key: KeyParams {
                master: MasterKey::generate()?,
                lifetime: None,
                mki,
            },
            session_params: Vec::new(),
        })
    }

    /// Parses the text after `a=crypto:`. One key only (several `;`-separated keys are refused
    /// as bad key parameters); unencrypted/unauthenticated SRTP and a non-zero key derivation
    /// rate are refused as unsupported session parameters.
    pub fn parse(s: &str) -> Result<Self, SrtpError> {
        let mut fields = s.split([' ', '\t']).filter(|f| !f.is_empty());
        let tag = fields.next().ok_or(SrtpError::BadTag)?;
        if tag.len() > 9 {
            return Err(SrtpError::BadTag);
        }
        let tag = parse_decimal(tag).ok_or(SrtpError::BadTag)?;
        let tag = u32::try_from(tag).map_err(|_| SrtpError::BadTag)?;
        let suite = Suite::from_name(fields.next().ok_or(SrtpError::UnsupportedSuite)?)?;
        let key = fields.next().ok_or(SrtpError::BadKeyParams)?;
        if key.contains(';') {
            return Err(SrtpError::BadKeyParams);
        }
        let key = KeyParams::parse(key)?;
        let mut session_params = Vec::new();
        for p in fields {
            match p {
                "UNENCRYPTED_SRTP" | "UNENCRYPTED_SRTCP" | "UNAUTHENTICATED_SRTP" => {
                    return Err(SrtpError::UnsupportedSessionParam);
                }
                _ if p.starts_with("KDR=") && p != "KDR=0" => {
                    return Err(SrtpError::UnsupportedSessionParam);
                }
                _ => session_params.push(p.to_owned()),
            }
        }
        Ok(CryptoAttribute {
            tag,
            suite,
            key,
            session_params,
        })
    }
}

impl fmt::Display for CryptoAttribute {
    /// The attribute value (after `a=crypto:`). This prints the key: write it only into SDP.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.tag, self.suite.name(), self.key)?;
        for p in &self.session_params {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}

/// A decimal number of ASCII digits only (no sign, no spaces), at most 19 digits.
fn parse_decimal(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `2^n` (n ≤ 48, the SRTP index space) or a decimal number; never zero.
fn parse_lifetime(s: &str) -> Result<u64, SrtpError> {
    let n = if let Some(exp) = s.strip_prefix("2^") {
        let exp = parse_decimal(exp).ok_or(SrtpError::BadLifetime)?;
        if exp > 48 {
            return Err(SrtpError::BadLifetime);
        }
        1u64 << exp
    } else {
        parse_decimal(s).ok_or(SrtpError::BadLifetime)?
    };
    if n == 0 {
        return Err(SrtpError::BadLifetime);
    }
    Ok(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Hex (upper or lower case, spaces ignored) to bytes; test vectors only.
    pub(crate) fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    fn master(n: u8) -> MasterKey {
        let mut key = [0u8; 16];
        let mut salt = [0u8; 14];
        key.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = n.wrapping_add(i as u8));
        salt.iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b = n ^ (i as u8));
        MasterKey::new(key, salt)
    }

    #[test]
    fn lync_style_line_parses_and_formats_back() {
        let b64 = STANDARD.encode([&master(7).key[..], &master(7).salt[..]].concat());
        let line = format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^31|1:1");
        let a = CryptoAttribute::parse(&line).unwrap();
        assert_eq!(a.tag, 1);
        assert_eq!(a.suite, Suite::AesCm128HmacSha1_80);
        assert_eq!(a.key.master, master(7));
        assert_eq!(a.key.lifetime, Some(1 << 31));
        assert_eq!(a.key.mki, Some(Mki::new(1, 1).unwrap()));
        assert_eq!(a.to_string(), line);
    }

    #[test]
    fn plain_line_and_session_params() {
        let b64 = STANDARD.encode([&master(1).key[..], &master(1).salt[..]].concat());
        let line = format!("2 AES_CM_128_HMAC_SHA1_32 inline:{b64} KDR=0 WSH=128");
        let a = CryptoAttribute::parse(&line).unwrap();
        assert_eq!(a.suite, Suite::AesCm128HmacSha1_32);
        assert_eq!((a.key.lifetime, a.key.mki), (None, None));
        assert_eq!(a.session_params, ["KDR=0", "WSH=128"]);
        assert_eq!(a.to_string(), line);
        // Decimal lifetime and a 4-byte MKI.
        let k = KeyParams::parse(&format!("inline:{b64}|1000|4294967295:4")).unwrap();
        assert_eq!(k.lifetime, Some(1000));
        assert_eq!(k.mki.map(|m| (m.value(), m.len())), Some((u32::MAX, 4)));
        assert_eq!(k.to_string(), format!("inline:{b64}|1000|4294967295:4"));
    }

    #[test]
    fn malformed_lines_are_refused_with_typed_errors() {
        let b64 = STANDARD.encode([&master(1).key[..], &master(1).salt[..]].concat());
        let short = STANDARD.encode([0u8; 29]);
        let cases: Vec<(String, SrtpError)> = vec![
            (String::new(), SrtpError::BadTag),
            (
                format!("x AES_CM_128_HMAC_SHA1_80 inline:{b64}"),
                SrtpError::BadTag,
            ),
            (
                format!("-1 AES_CM_128_HMAC_SHA1_80 inline:{b64}"),
                SrtpError::BadTag,
            ),
            (
                format!("1234567890 AES_CM_128_HMAC_SHA1_80 inline:{b64}"),
                SrtpError::BadTag,
            ),
            ("1".to_owned(), SrtpError::UnsupportedSuite),
            (
                format!("1 AEAD_AES_128_GCM inline:{b64}"),
                SrtpError::UnsupportedSuite,
            ),
            (
                format!("1 F8_128_HMAC_SHA1_80 inline:{b64}"),
                SrtpError::UnsupportedSuite,
            ),
            (
                "1 AES_CM_128_HMAC_SHA1_80".to_owned(),
                SrtpError::BadKeyParams,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 {b64}"),
                SrtpError::BadKeyParams,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{short}"),
                SrtpError::BadKeyParams,
            ),
            (
                "1 AES_CM_128_HMAC_SHA1_80 inline:!!!!".to_owned(),
                SrtpError::BadKeyParams,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64};inline:{b64}"),
                SrtpError::BadKeyParams,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^"),
                SrtpError::BadLifetime,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^49"),
                SrtpError::BadLifetime,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|0"),
                SrtpError::BadLifetime,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|1:1|2^31"),
                SrtpError::BadLifetime,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|2^31|2^20"),
                SrtpError::BadLifetime,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|256:1"),
                SrtpError::BadMki,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|1:0"),
                SrtpError::BadMki,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|1:5"),
                SrtpError::BadMki,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|1:"),
                SrtpError::BadMki,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64}|1:1|2:1"),
                SrtpError::BadMki,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64} UNENCRYPTED_SRTP"),
                SrtpError::UnsupportedSessionParam,
            ),
            (
                format!("1 AES_CM_128_HMAC_SHA1_80 inline:{b64} KDR=24"),
                SrtpError::UnsupportedSessionParam,
            ),
        ];
        for (line, want) in cases {
            assert_eq!(CryptoAttribute::parse(&line), Err(want), "{line:?}");
        }
    }

    #[test]
    fn generated_keys_are_fresh_and_never_debug_printed() {
        let a = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80, None).unwrap();
        let b = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80, None).unwrap();
        assert_ne!(a.key.master, b.key.master);
        let line = a.to_string();
        assert!(
            line.starts_with("1 AES_CM_128_HMAC_SHA1_80 inline:"),
            "{line}"
        );
        assert_eq!(CryptoAttribute::parse(&line).unwrap(), a);
        let debug = format!("{a:?}");
        assert!(debug.contains("<redacted>"), "{debug}");
        let b64 = a.key.master.to_base64();
        assert!(!debug.contains(&b64), "{debug}");
        assert!(
            !debug.contains(&format!("{:?}", a.key.master.key())),
            "{debug}"
        );
    }
}
