//! What a test needs to prove media protection on the wire: the audio stream's profile and
//! `a=crypto` lines of an SDP, and the captured datagrams of one direction of a leg unprotected
//! with the key its sender announced (medpool's own SRTP code, `medpool_media::srtp`, whose RFC
//! 3711 test vectors and libsrtp known-answer packet are checked in its unit tests) — so a test
//! can say: these packets were SRTP, they authenticate with the sender's key, and what they carry
//! is byte for byte what the other leg carried in the clear.

use std::net::Ipv4Addr;

use medpool_media::srtp::{CryptoAttribute, ReplayWindow, Srtp};

use super::wire::{Packet, SipMsg};

/// The audio stream of an SDP: its transport profile and its `a=crypto` values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioSecurity {
    /// `RTP/AVP`, `RTP/SAVP`, ...
    pub profile: String,
    /// The text after each `a=crypto:` of the audio stream.
    pub crypto: Vec<String>,
}

impl AudioSecurity {
    /// The audio stream of `msg`'s SDP, or `None` without one.
    pub fn of(msg: &SipMsg) -> Option<AudioSecurity> {
        let mut profile = None;
        let mut crypto = Vec::new();
        for line in msg.body().lines().map(str::trim) {
            if let Some(m) = line.strip_prefix("m=") {
                if profile.is_some() {
                    break; // the next stream
                }
                if let Some(rest) = m.strip_prefix("audio ") {
                    profile = rest.split_whitespace().nth(1).map(str::to_owned);
                }
            } else if let Some(c) = line.strip_prefix("a=crypto:")
                && profile.is_some()
            {
                crypto.push(c.to_owned());
            }
        }
        Some(AudioSecurity {
            profile: profile?,
            crypto,
        })
    }

    /// The single crypto attribute, parsed; panics naming `who` otherwise.
    pub fn the_key(&self, who: &str) -> CryptoAttribute {
        assert_eq!(
            self.crypto.len(),
            1,
            "{who}: one a=crypto line expected: {self:?}"
        );
        CryptoAttribute::parse(&self.crypto[0])
            .unwrap_or_else(|e| panic!("{who}: a=crypto:{} does not parse: {e}", self.crypto[0]))
    }

    /// The base64 inline key of each crypto line (for "never shown" checks).
    pub fn inline_keys(&self) -> Vec<String> {
        self.crypto
            .iter()
            .filter_map(|c| c.split("inline:").nth(1))
            .map(|k| k.split(['|', ' ']).next().unwrap_or_default().to_owned())
            .collect()
    }
}

/// Whether a datagram is RTP (version 2, not an RTCP packet type).
pub fn is_rtp(b: &[u8]) -> bool {
    b.len() >= 12 && b[0] >> 6 == 2 && !(192..=223).contains(&b[1])
}

/// The RTP datagrams from `src` (ip, or any with port `src_port`) to `dst`, in capture order.
/// A side is named by an IP and/or a port: baresip sends RTP from a wildcard-bound socket, so
/// its packets leave from 127.0.0.1 and are told apart by port.
pub fn rtp_between(
    packets: &[Packet],
    src: (Option<Ipv4Addr>, Option<u16>),
    dst: (Option<Ipv4Addr>, Option<u16>),
) -> Vec<Packet> {
    let side = |a: &std::net::SocketAddrV4, s: (Option<Ipv4Addr>, Option<u16>)| {
        s.0.is_none_or(|ip| *a.ip() == ip) && s.1.is_none_or(|p| a.port() == p)
    };
    packets
        .iter()
        .filter(|p| side(&p.src, src) && side(&p.dst, dst) && is_rtp(&p.payload))
        .cloned()
        .collect()
}

/// The RTP payload (after header, CSRCs, extension) of a plain RTP datagram.
pub fn rtp_payload(b: &[u8]) -> Option<&[u8]> {
    if !is_rtp(b) {
        return None;
    }
    let mut off = 12 + 4 * usize::from(b[0] & 0x0f);
    if b[0] & 0x10 != 0 {
        let ext = b.get(off + 2..off + 4)?;
        off += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    b.get(off..)
}

/// The outcome of unprotecting one direction's datagrams.
#[derive(Debug, Default)]
pub struct Unprotected {
    /// The RTP packets that authenticated, decrypted (whole packets).
    pub plain: Vec<Vec<u8>>,
    /// How many failed (authentication, replay, ...), with the first error.
    pub failed: usize,
    pub first_error: Option<String>,
}

/// Unprotects `packets` (one direction, capture order) with the context `key` announces.
pub fn unprotect(packets: &[Packet], key: &CryptoAttribute) -> Unprotected {
    let mut ctx = Srtp::from_attribute(key, ReplayWindow::W128);
    let mut out = Unprotected::default();
    for p in packets {
        let mut buf = p.payload.clone();
        match ctx.unprotect_rtp(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                out.plain.push(buf);
            }
            Err(e) => {
                out.failed += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(format!("{e} ({} bytes)", p.payload.len()));
                }
            }
        }
    }
    out
}

/// How many of `payloads` occur among `among` (RTP payloads compared byte for byte).
pub fn found_among(payloads: &[Vec<u8>], among: &[Vec<u8>]) -> usize {
    let set: std::collections::HashSet<&[u8]> = among.iter().map(Vec::as_slice).collect();
    payloads
        .iter()
        .filter(|p| set.contains(p.as_slice()))
        .count()
}
