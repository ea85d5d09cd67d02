//! What a caller's tasks share ([`Inner`]): its socket, the transactions waiting for answers, and
//! its calls (each with its dialog, last ACK and RTP leg); the identifiers every request carries
//! (Via, branch, From, Contact), and the dialog a 2xx creates.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use medpool_media::sdp::Direction;
use medpool_sip::{HeaderName, SipMessage};
use tokio::sync::mpsc;

use super::config::CallerConfig;
use crate::ledger::CallRecord;
use crate::rtp::RtpLeg;
use crate::uas::Uas;
use crate::wire::Wire;

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) cfg: CallerConfig,
    pub(super) sock: Arc<Wire>,
    pub(super) local: SocketAddr,
    pub(super) uas: Uas,
    pub(super) waiters: Mutex<HashMap<Vec<u8>, mpsc::Sender<Received>>>,
    pub(super) calls: Mutex<Calls>,
}

#[derive(Debug, Default)]
pub(super) struct Calls {
    pub(super) list: Vec<Call>,
    pub(super) by_id: HashMap<Vec<u8>, usize>,
}

#[derive(Debug)]
pub(super) struct Call {
    pub(super) record: CallRecord,
    pub(super) from_tag: String,
    pub(super) cseq: u32,
    pub(super) sdp_version: u32,
    pub(super) dialog: Option<Dialog>,
    /// The last ACK sent: its CSeq number, bytes and destination (sent again on a retransmitted final).
    pub(super) last_ack: Option<(u32, Bytes, SocketAddr)>,
    /// The call's RTP leg (with [`CallerConfig::rtp`]).
    pub(super) rtp: Option<Arc<RtpLeg>>,
    /// The direction and payload type the caller offers.
    pub(super) want: (Direction, u8),
}

#[derive(Debug, Clone)]
pub(super) struct Dialog {
    /// The To header value of the 2xx (the far tag included).
    pub(super) to: Vec<u8>,
    /// The Contact URI of the 2xx.
    pub(super) remote_target: Vec<u8>,
    /// Record-Route of the 2xx, reversed.
    pub(super) routes: Vec<Vec<u8>>,
    /// Where in-dialog requests go.
    pub(super) dest: SocketAddr,
}

/// A response and the address it came from.
pub(super) type Received = (SipMessage, SocketAddr);

/// A transaction that saw no final answer in time.
#[derive(Debug, Clone, Copy)]
pub(super) struct TimedOut;

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `host:port` of a SIP URI when the host is an IP literal.
fn uri_addr(uri: &[u8]) -> Option<SocketAddr> {
    let u = medpool_sip::message::Uri::parse(uri).ok()?;
    let host = std::str::from_utf8(u.host).ok()?;
    let ip: IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    Some(SocketAddr::new(ip, u.port.unwrap_or(5060)))
}

impl Inner {
    pub(super) fn via(&self, branch: &str) -> Vec<u8> {
        self.sock.via(branch)
    }

    pub(super) fn branch(&self, index: usize, cseq: u32, kind: &str) -> String {
        format!("z9hG4bKsp{:x}.{index}.{cseq}{kind}", self.cfg.seed)
    }

    pub(super) fn our_from(&self, tag: &str) -> Vec<u8> {
        format!(
            "<{}>;tag={tag}",
            self.sock.uri(&self.cfg.calling, self.local)
        )
        .into_bytes()
    }

    pub(super) fn contact(&self) -> Vec<u8> {
        format!("<{}>", self.sock.uri(&self.cfg.calling, self.local)).into_bytes()
    }
}

impl Dialog {
    /// The dialog a 2xx to our INVITE creates (RFC 3261 §12.1.2). In-dialog requests go to the first
    /// route, else to the remote target, else (a host name we cannot resolve) to `fallback`.
    pub(super) fn from_2xx(resp: &SipMessage, fallback: SocketAddr) -> Dialog {
        let to = resp.header(HeaderName::To).unwrap_or_default().to_vec();
        let remote_target = resp
            .contacts()
            .next()
            .and_then(Result::ok)
            .map(|c| c.uri.to_vec())
            .unwrap_or_else(|| format!("sip:{fallback}").into_bytes());
        let mut routes: Vec<Vec<u8>> = resp
            .record_routes()
            .filter_map(Result::ok)
            .map(|r| r.raw.to_vec())
            .collect();
        routes.reverse();
        let first_hop = resp
            .record_routes()
            .filter_map(Result::ok)
            .last()
            .map(|r| r.uri.to_vec())
            .unwrap_or_else(|| remote_target.clone());
        let dest = uri_addr(&first_hop).unwrap_or(fallback);
        Dialog {
            to,
            remote_target,
            routes,
            dest,
        }
    }
}
