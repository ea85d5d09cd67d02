//! Opaque byte fields (dialog records, configuration bodies) in serde.
//!
//! serde's default for `Vec<u8>` is a sequence of numbers: in JSON that is 3–4 characters per
//! byte. These helpers write base64 text when the format is human-readable (JSON, our log and
//! snapshot codec) and plain bytes otherwise (postcard, bincode), and read either form back (plus
//! the number-sequence form, so older encodings still decode). The codec is the `base64` crate's
//! standard alphabet with padding.
//!
//! Use with `#[serde(with = "crate::b64::bytes")]` on a `Vec<u8>` field, or
//! `crate::b64::keyed_records` / `crate::b64::record_map` on the dialog containers.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Dialog upserts: `(shard, Call-ID, record)`.
type KeyedRecords = Vec<(u16, String, Vec<u8>)>;
/// The dialog table: `(shard, Call-ID) -> record`.
type RecordMap = BTreeMap<(u16, String), Vec<u8>>;

/// Standard base64 (RFC 4648 alphabet) with padding. Decoding requires the padding and, like the
/// codec this crate used before, ignores the unused low bits of the last character (stored data
/// written by either decodes).
const ENGINE: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// Standard base64 with padding.
pub(crate) fn encode(input: &[u8]) -> String {
    ENGINE.encode(input)
}

/// Decodes standard base64 with padding.
pub(crate) fn decode(input: &str) -> Result<Vec<u8>, base64::DecodeError> {
    ENGINE.decode(input)
}

/// Borrowed bytes that serialize as base64 text or raw bytes.
pub(crate) struct BytesRef<'a>(pub(crate) &'a [u8]);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.serialize_str(&encode(self.0))
        } else {
            serializer.serialize_bytes(self.0)
        }
    }
}

/// Owned bytes that deserialize from base64 text, raw bytes or a sequence of numbers.
pub(crate) struct ByteBuf(pub(crate) Vec<u8>);

impl<'de> Deserialize<'de> for ByteBuf {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ByteBuf;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("base64 text or bytes")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteBuf, E> {
                decode(v).map(ByteBuf).map_err(E::custom)
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v.to_vec()))
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<ByteBuf, E> {
                Ok(ByteBuf(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ByteBuf, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 16));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(ByteBuf(out))
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(V)
        } else {
            deserializer.deserialize_byte_buf(V)
        }
    }
}

/// `#[serde(with = "...")]` for a `Vec<u8>` field.
pub(crate) mod bytes {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::{ByteBuf, BytesRef};

    pub(crate) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        BytesRef(v).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        ByteBuf::deserialize(d).map(|b| b.0)
    }
}

/// `#[serde(with = "...")]` for `Vec<(u16, String, Vec<u8>)>` (dialog upserts).
pub(crate) mod keyed_records {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    use super::{ByteBuf, BytesRef, KeyedRecords, SerializeSeq, fmt};

    pub(crate) fn serialize<S: Serializer>(
        v: &[(u16, String, Vec<u8>)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for (shard, key, record) in v {
            seq.serialize_element(&(shard, key, BytesRef(record)))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<KeyedRecords, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyedRecords;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of [shard, key, record]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 12));
                while let Some((shard, key, ByteBuf(record))) =
                    seq.next_element::<(u16, String, ByteBuf)>()?
                {
                    out.push((shard, key, record));
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

/// `#[serde(with = "...")]` for `BTreeMap<(u16, String), Vec<u8>>` (the dialog table): written
/// as a sequence of `[shard, key, record]`, since JSON map keys must be strings.
pub(crate) mod record_map {
    use serde::de::{SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};

    use super::{BTreeMap, ByteBuf, BytesRef, RecordMap, SerializeSeq, fmt};

    pub(crate) fn serialize<S: Serializer>(
        v: &BTreeMap<(u16, String), Vec<u8>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for ((shard, key), record) in v {
            seq.serialize_element(&(shard, key, BytesRef(record)))?;
        }
        seq.end()
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<RecordMap, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RecordMap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a sequence of [shard, key, record]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((shard, key, ByteBuf(record))) =
                    seq.next_element::<(u16, String, ByteBuf)>()?
                {
                    out.insert((shard, key), record);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::{decode, encode};

    #[test]
    fn round_trips_every_length_and_byte() {
        let data: Vec<u8> = (0..=255u8).collect();
        for len in 0..data.len() {
            let slice = &data[..len];
            assert_eq!(decode(&encode(slice)).unwrap(), slice, "len {len}");
        }
    }

    #[test]
    fn known_vectors() {
        // RFC 4648 section 10.
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, coded) in cases {
            assert_eq!(encode(plain.as_bytes()), coded);
            assert_eq!(decode(coded).unwrap(), plain.as_bytes());
        }
    }

    #[test]
    fn rejects_bad_text() {
        assert!(decode("abc").is_err());
        assert!(decode("ab!d").is_err());
        assert!(decode("a===").is_err());
        assert!(decode("Zg==Zg==").is_err());
        assert!(decode("Zg").is_err(), "padding is required");
    }

    #[test]
    fn reads_what_the_hand_written_codec_accepted() {
        // Unused low bits in the last character were ignored.
        assert_eq!(decode("Zh==").unwrap(), b"f");
        assert_eq!(decode("Zm9=").unwrap(), b"fo");
    }
}
