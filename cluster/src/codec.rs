//! The binary form of everything the pool stores and sends between its nodes (log entries, vote
//! and log metadata, snapshots, openraft's RPCs, writes to the leader): CBOR (RFC 8949, the
//! `ciborium` crate) behind a one-byte tag, [`TAG`].
//!
//! CBOR rather than a schema-less format (postcard, bincode) because it describes itself: openraft's
//! serde attributes (optional fields, defaults) and this crate's `#[serde(default)]` additions keep
//! working. Opaque bytes (dialog records, configuration bodies) are written as raw CBOR byte
//! strings, not base64 ([`crate::b64`] writes base64 only to human-readable formats), so a record
//! costs its own length plus a few bytes.
//!
//! Reading accepts both forms: bytes starting with [`TAG`] are CBOR, anything else is read as the
//! JSON earlier versions wrote (JSON text never starts with that byte). So a data directory written
//! by the previous version opens, and a node reads what an older peer sends; writing is always CBOR.
//!
//! Every encode and decode is counted in [`crate::stats`] (values, bytes, time).

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::stats::STATS;

/// The first byte of the binary form. Never the first byte of JSON text (JSON starts with
/// whitespace, `{`, `[`, `"`, a digit, `-`, `t`, `f` or `n`), nor valid UTF-8 as a first byte.
pub const TAG: u8 = 0xC3;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Serializing failed (a value serde cannot write).
    #[error("cannot encode: {0}")]
    Encode(String),
    /// The CBOR form could not be read.
    #[error("bad binary form: {0}")]
    Binary(String),
    /// The JSON form (older versions) could not be read.
    #[error("bad JSON form: {0}")]
    Json(#[from] serde_json::Error),
    /// Nothing to read.
    #[error("empty value")]
    Empty,
}

/// Encodes `v` in the binary form: [`TAG`], then CBOR.
pub fn to_vec<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, CodecError> {
    let t = tokio::time::Instant::now();
    let mut out = Vec::with_capacity(128);
    out.push(TAG);
    ciborium::into_writer(v, &mut out).map_err(|e| CodecError::Encode(e.to_string()))?;
    STATS.encode.since(1, out.len() as u64, t);
    Ok(out)
}

/// Decodes a value written by [`to_vec`], or the JSON form of older versions.
pub fn from_slice<T: DeserializeOwned>(b: &[u8]) -> Result<T, CodecError> {
    let t = tokio::time::Instant::now();
    let v = match b.split_first() {
        None => return Err(CodecError::Empty),
        Some((&TAG, body)) => {
            ciborium::from_reader(body).map_err(|e| CodecError::Binary(e.to_string()))?
        }
        Some(_) => serde_json::from_slice(b)?,
    };
    STATS.decode.since(1, b.len() as u64, t);
    Ok(v)
}

/// Whether `b` is in the binary form (else it is JSON from an older version, or garbage).
pub fn is_binary(b: &[u8]) -> bool {
    b.first() == Some(&TAG)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::command::Command;

    #[test]
    fn reads_its_own_form_and_the_json_of_older_versions() {
        let cmd = Command::OwnerDialogBatch {
            writer: 2,
            upserts: vec![(7, "call-1@h".into(), vec![0, 1, 2, 255])],
            removes: vec![(3, "gone@h".into())],
            replace_only: vec![(7, "call-1@h".into())],
        };
        let bin = to_vec(&cmd).unwrap();
        assert!(is_binary(&bin));
        assert_eq!(from_slice::<Command>(&bin).unwrap(), cmd);
        let json = serde_json::to_vec(&cmd).unwrap();
        assert!(!is_binary(&json));
        assert_eq!(from_slice::<Command>(&json).unwrap(), cmd);
        assert!(matches!(from_slice::<Command>(&[]), Err(CodecError::Empty)));
        assert!(matches!(
            from_slice::<Command>(&[TAG, 0xff, 0x00]),
            Err(CodecError::Binary(_))
        ));
        assert!(matches!(
            from_slice::<Command>(b"{nope"),
            Err(CodecError::Json(_))
        ));
    }

    /// `Command::OwnerDialogBatch` as nodes before `replace_only` declared it.
    #[derive(serde::Deserialize, serde::Serialize, Debug, PartialEq)]
    enum BeforeReplaceOnly {
        OwnerDialogBatch {
            writer: u64,
            #[serde(with = "crate::b64::keyed_records")]
            upserts: Vec<(u16, String, Vec<u8>)>,
            removes: Vec<(u16, String)>,
        },
    }

    #[test]
    fn a_batch_with_replace_only_keys_and_one_without_read_across_versions() {
        let upserts = vec![(7, "call-1@h".to_owned(), vec![1, 2])];
        // A node before the field reads a new batch, the replace-only keys aside (it applies
        // those upserts as plain upserts, as it always did).
        let new = Command::OwnerDialogBatch {
            writer: 2,
            upserts: upserts.clone(),
            removes: vec![],
            replace_only: vec![(7, "call-1@h".into())],
        };
        let old = BeforeReplaceOnly::OwnerDialogBatch {
            writer: 2,
            upserts: upserts.clone(),
            removes: vec![],
        };
        assert_eq!(
            from_slice::<BeforeReplaceOnly>(&to_vec(&new).unwrap()).unwrap(),
            old
        );
        // A new node reads an old node's batch as one without replace-only keys, and writes a
        // batch without them exactly as the old node did.
        let plain = Command::OwnerDialogBatch {
            writer: 2,
            upserts,
            removes: vec![],
            replace_only: vec![],
        };
        assert_eq!(
            from_slice::<Command>(&to_vec(&old).unwrap()).unwrap(),
            plain
        );
        assert_eq!(to_vec(&plain).unwrap(), to_vec(&old).unwrap());
    }

    #[test]
    fn records_travel_as_raw_bytes_not_base64() {
        let record = vec![0xABu8; 3000];
        let cmd = Command::DialogBatch {
            upserts: vec![(1, "c@h".into(), record.clone())],
            removes: vec![],
        };
        let bin = to_vec(&cmd).unwrap();
        let json = serde_json::to_vec(&cmd).unwrap();
        // Base64 alone makes the JSON 4/3 of the record.
        assert!(bin.len() < record.len() + 64, "{} bytes", bin.len());
        assert!(json.len() > record.len() * 4 / 3, "{} bytes", json.len());
    }

    #[test]
    fn large_strings_and_byte_strings_round_trip() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let cmd = Command::SetConfig {
            expected_version: Some(4),
            body,
        };
        assert_eq!(from_slice::<Command>(&to_vec(&cmd).unwrap()).unwrap(), cmd);
        let long_key = "k".repeat(10_000);
        let cmd = Command::DialogBatch {
            upserts: vec![(1, long_key.clone(), vec![1])],
            removes: vec![(2, long_key)],
        };
        assert_eq!(from_slice::<Command>(&to_vec(&cmd).unwrap()).unwrap(), cmd);
    }
}
