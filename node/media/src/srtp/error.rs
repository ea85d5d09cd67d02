//! The typed errors of SRTP: key parameters that do not parse, and packets that are refused.

/// Why key material was refused or a packet was not protected / unprotected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SrtpError {
    /// The packet is shorter than its header, MKI and tag, or its header is not RTP/RTCP.
    #[error("packet too short or malformed")]
    TooShort,
    /// The caller's buffer has no room for the MKI and the tag.
    #[error("buffer has no room for the MKI and authentication tag")]
    NoRoom,
    /// The authentication tag does not match: tampered, or another key.
    #[error("authentication failed")]
    AuthFailed,
    /// This packet index was already received (or, when protecting, already sent).
    #[error("replayed packet")]
    Replayed,
    /// The packet index is behind the replay window.
    #[error("packet too old for the replay window")]
    TooOld,
    /// The packet carries an MKI this context does not know.
    #[error("unknown MKI")]
    UnknownMki,
    /// More SSRCs than the context keeps state for.
    #[error("too many SSRCs on one context")]
    TooManySsrcs,
    /// The master key's lifetime (packets, from its key parameters) is used up: re-key.
    #[error("master key lifetime reached; re-key")]
    KeyExpired,
    /// The SRTCP index (2^31 packets) is exhausted: the leg must be re-keyed.
    #[error("SRTCP index exhausted; re-key")]
    IndexExhausted,
    /// The `a=crypto` value has no (or a bad) tag.
    #[error("bad crypto attribute tag")]
    BadTag,
    /// The crypto suite is not one this implementation offers.
    #[error("unsupported crypto suite")]
    UnsupportedSuite,
    /// The key parameters are not `inline:<base64 of 30 bytes>[|lifetime][|MKI:length]`.
    #[error("bad key parameters")]
    BadKeyParams,
    /// The lifetime is not a number or `2^n`, or is zero.
    #[error("bad key lifetime")]
    BadLifetime,
    /// The MKI is not `value:length` with a length of 1 to 4 bytes and a value that fits.
    #[error("bad MKI")]
    BadMki,
    /// A session parameter this implementation does not honour (unencrypted or
    /// unauthenticated SRTP, a key derivation rate other than 0).
    #[error("unsupported session parameter")]
    UnsupportedSessionParam,
    /// The OS's secure random source failed.
    #[error("secure random source failed")]
    Random,
}
