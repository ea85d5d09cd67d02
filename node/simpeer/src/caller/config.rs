//! How to run a simulated caller ([`CallerConfig`]): where it binds and calls, its seed, numbers,
//! rates, timers, and whether its calls carry RTP and SRTP or speak TLS.

use std::net::SocketAddr;
use std::time::Duration;

use crate::wire::TlsOptions;

/// How to run a caller.
#[derive(Debug, Clone)]
pub struct CallerConfig {
    /// Its socket (an address of the internal trunk; port 0 picks one).
    pub bind: SocketAddr,
    /// Where new calls go (the Service address).
    pub target: SocketAddr,
    /// Seed of every identifier.
    pub seed: u64,
    /// The called number (user part of the Request-URI and To).
    pub called: String,
    /// The calling user (user part of From and Contact).
    pub calling: String,
    /// New calls per second at most.
    pub cps: u32,
    /// In-dialog requests (re-INVITE, BYE) started per second at most.
    pub rps: u32,
    /// RFC 3261 T1.
    pub t1: Duration,
    /// How long a transaction waits for a final answer (64·T1 by default).
    pub timeout: Duration,
    /// Each call sends and checks RTP (see the module documentation).
    pub rtp: bool,
    /// Speak SIP over TLS to `target` (see [`crate::wire`]); `None`: UDP.
    pub tls: Option<TlsOptions>,
    /// The calls offer SRTP (`RTP/SAVP`, one `a=crypto` line AES_CM_128_HMAC_SHA1_80 with a fresh
    /// key per call) and their RTP legs protect and unprotect once the answer brings the far
    /// side's key. With [`CallerConfig::rtp`] only.
    pub srtp: bool,
    /// The SRTP key carries an MKI (`|1:1`), as Lync/Skype for Business offer.
    pub srtp_mki: bool,
}

impl CallerConfig {
    /// A caller on `bind` calling `target` with RFC 3261's timers.
    pub fn new(bind: SocketAddr, target: SocketAddr, seed: u64) -> CallerConfig {
        CallerConfig {
            bind,
            target,
            seed,
            called: "+15550100".to_owned(),
            calling: "alice".to_owned(),
            cps: 100,
            rps: 200,
            t1: crate::uas::T1,
            timeout: crate::uas::T1 * 64,
            rtp: false,
            tls: None,
            srtp: false,
            srtp_mki: false,
        }
    }
}
