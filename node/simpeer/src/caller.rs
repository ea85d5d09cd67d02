//! A simulated caller (an IP-PBX on the internal trunk): places many calls through one UDP socket,
//! holds them, re-INVITEs them and hangs them up, and keeps a [`crate::ledger`] entry per call.
//!
//! Client transactions follow RFC 3261 §17.1 over UDP: the request is retransmitted from T1
//! (500 ms), doubling (INVITE: until a provisional answer; other methods: up to T2, then every T2),
//! and the transaction gives up after 64·T1 (32 s) without a final answer: the outcome is *unknown*.
//! A 2xx to INVITE is ACKed (new branch, to the dialog's remote target) and the ACK is sent again for
//! each retransmitted 2xx; a non-2xx final is ACKed in its transaction.
//!
//! In-dialog requests use the dialog the 200 created: To-tag from the 200, Request-URI = its Contact,
//! Route = its Record-Route reversed, CSeq one above the last. Requests that arrive from the far side
//! in a dialog (BYE, re-INVITE, UPDATE, ...) are answered 200; a BYE marks the call ended by the far
//! side. Every identifier (Call-ID, tags, branches) derives from the seed and the call's number, so a
//! run can be replayed with the same seed.
//!
//! With [`CallerConfig::rtp`] on, each call gets an RTP leg of its own (a [`Role::Source`], see
//! [`crate::rtp`]) before its INVITE: the offer names the leg's socket, the answer tells it where
//! to send; a re-INVITE from the far side (a new anchor after a failover) moves it, and
//! [`Caller::reinvite_all_with`] holds, resumes or changes the codec. The legs' counts are read with
//! [`Caller::rtp_stats`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use medpool_sip::message::builder::{MessageBuilder, reason_phrase, response_to};
use medpool_sip::{HeaderName, Method, SipMessage};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::error::SimpeerError;
use crate::ledger::{CallRecord, Outcome};
use crate::rtp::{LegStats, Negotiated, Role, RtpLeg, combine, read_sdp};
use crate::sdp;
use crate::uas::{ResponseRouting, T2, Uas};
use crate::wire::{TlsOptions, Wire};
use medpool_media::sdp::Direction;

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
        }
    }
}

/// A running caller. Dropping it stops it (calls still up are left to the far side's timers).
#[derive(Debug)]
pub struct Caller {
    inner: Arc<Inner>,
    rx: JoinHandle<()>,
}

#[derive(Debug)]
struct Inner {
    cfg: CallerConfig,
    sock: Arc<Wire>,
    local: SocketAddr,
    uas: Uas,
    waiters: Mutex<HashMap<Vec<u8>, mpsc::Sender<Received>>>,
    calls: Mutex<Calls>,
}

#[derive(Debug, Default)]
struct Calls {
    list: Vec<Call>,
    by_id: HashMap<Vec<u8>, usize>,
}

#[derive(Debug)]
struct Call {
    record: CallRecord,
    from_tag: String,
    cseq: u32,
    sdp_version: u32,
    dialog: Option<Dialog>,
    /// The last ACK sent: its CSeq number, bytes and destination (sent again on a retransmitted final).
    last_ack: Option<(u32, Bytes, SocketAddr)>,
    /// The call's RTP leg (with [`CallerConfig::rtp`]).
    rtp: Option<Arc<RtpLeg>>,
    /// The direction and payload type the caller offers.
    want: (Direction, u8),
}

#[derive(Debug, Clone)]
struct Dialog {
    /// The To header value of the 2xx (the far tag included).
    to: Vec<u8>,
    /// The Contact URI of the 2xx.
    remote_target: Vec<u8>,
    /// Record-Route of the 2xx, reversed.
    routes: Vec<Vec<u8>>,
    /// Where in-dialog requests go.
    dest: SocketAddr,
}

/// One call's RTP leg as [`Caller::rtp_stats`] shows it.
#[derive(Debug, Clone)]
pub struct CallMedia {
    /// The call's number.
    pub index: usize,
    /// What SDP negotiated last (`remote`: the anchor the caller sends to).
    pub negotiated: Negotiated,
    /// What the leg saw.
    pub stats: LegStats,
}

/// A response and the address it came from.
type Received = (SipMessage, SocketAddr);

/// A transaction that saw no final answer in time.
#[derive(Debug, Clone, Copy)]
struct TimedOut;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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

impl Caller {
    /// Binds and starts listening.
    pub async fn start(cfg: CallerConfig) -> Result<Caller, SimpeerError> {
        let sock = Arc::new(match &cfg.tls {
            None => Wire::udp(cfg.bind).await?,
            Some(opts) => Wire::tls(cfg.bind, opts, Some(cfg.target)).await?,
        });
        let local = sock.local_addr()?;
        let inner = Arc::new(Inner {
            uas: Uas::new(Arc::clone(&sock), ResponseRouting::Source),
            sock,
            local,
            cfg,
            waiters: Mutex::new(HashMap::new()),
            calls: Mutex::new(Calls::default()),
        });
        let rx = tokio::spawn(Arc::clone(&inner).receive());
        Ok(Caller { inner, rx })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local
    }

    /// Places `n` new calls (at most `cps` per second) and waits until each is answered, refused or
    /// timed out. Returns how many were answered 2xx; answered calls are held up.
    pub async fn place(&self, n: usize) -> usize {
        let first = {
            let mut calls = lock(&self.inner.calls);
            let first = calls.list.len();
            for index in first..first + n {
                let call_id = format!("sp{:x}-{index}@simpeer", self.inner.cfg.seed);
                calls.by_id.insert(call_id.as_bytes().to_vec(), index);
                calls.list.push(Call {
                    record: CallRecord {
                        index,
                        call_id,
                        setup: None,
                        setup_answered_by: None,
                        reinvite: None,
                        bye: None,
                        ended_by_far_side: false,
                        far_requests: 0,
                    },
                    from_tag: format!("sp{:x}f{index}", self.inner.cfg.seed),
                    cseq: 0,
                    sdp_version: 0,
                    dialog: None,
                    last_ack: None,
                    rtp: None,
                    want: (Direction::SendRecv, 0),
                });
            }
            first
        };
        let answered = self
            .paced(
                first..first + n,
                self.inner.cfg.cps,
                |inner, i| async move { inner.setup(i).await },
            )
            .await;
        answered.into_iter().filter(|ok| *ok).count()
    }

    /// Sends a re-INVITE (new SDP version) in every answered call not ended by the far side, and
    /// waits for each outcome. Returns how many were answered 2xx.
    pub async fn reinvite_all(&self) -> usize {
        let targets = self.live_calls();
        let done = self
            .paced(
                targets.into_iter(),
                self.inner.cfg.rps,
                |inner, i| async move { inner.in_dialog(i, Method::Invite).await },
            )
            .await;
        done.into_iter().filter(|ok| *ok).count()
    }

    /// As [`Caller::reinvite_all`], offering `direction` (e.g. `sendonly` to hold, `sendrecv` to
    /// resume) and one G.711 payload type (0 PCMU, 8 PCMA) from now on.
    pub async fn reinvite_all_with(&self, direction: Direction, payload_type: u8) -> usize {
        {
            let mut calls = lock(&self.inner.calls);
            for c in &mut calls.list {
                c.want = (direction, payload_type);
            }
        }
        self.reinvite_all().await
    }

    /// The RTP leg of each call that had one: what is negotiated and what it saw, by call number.
    pub fn rtp_stats(&self) -> Vec<CallMedia> {
        lock(&self.inner.calls)
            .list
            .iter()
            .filter_map(|c| {
                c.rtp.as_ref().map(|l| CallMedia {
                    index: c.record.index,
                    negotiated: l.negotiated(),
                    stats: l.stats(),
                })
            })
            .collect()
    }

    /// Sends BYE in the calls of `indices` that are up, and waits for each outcome. Returns how
    /// many were answered 2xx.
    pub async fn hangup(&self, indices: &[usize]) -> usize {
        let live = self.live_calls();
        let targets: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|i| live.contains(i))
            .collect();
        let done = self
            .paced(
                targets.into_iter(),
                self.inner.cfg.rps,
                |inner, i| async move { inner.in_dialog(i, Method::Bye).await },
            )
            .await;
        done.into_iter().filter(|ok| *ok).count()
    }

    /// Sends BYE in every answered call not ended by the far side nor hung up yet, and waits for
    /// each outcome. Returns how many were answered 2xx.
    pub async fn hangup_all(&self) -> usize {
        let targets = self.live_calls();
        let done = self
            .paced(
                targets.into_iter(),
                self.inner.cfg.rps,
                |inner, i| async move { inner.in_dialog(i, Method::Bye).await },
            )
            .await;
        done.into_iter().filter(|ok| *ok).count()
    }

    /// Calls answered and still up (not hung up by either side).
    pub fn live_calls(&self) -> Vec<usize> {
        lock(&self.inner.calls)
            .list
            .iter()
            .filter(|c| c.dialog.is_some() && !c.record.ended_by_far_side && c.record.bye.is_none())
            .map(|c| c.record.index)
            .collect()
    }

    /// Every call's record, in order.
    pub fn ledger(&self) -> Vec<CallRecord> {
        lock(&self.inner.calls)
            .list
            .iter()
            .map(|c| c.record.clone())
            .collect()
    }

    /// Runs `op` for each call of `calls`, starting at most `per_second` a second, all concurrently.
    async fn paced<I, F, Fut>(&self, calls: I, per_second: u32, op: F) -> Vec<bool>
    where
        I: Iterator<Item = usize>,
        F: Fn(Arc<Inner>, usize) -> Fut,
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        let gap = Duration::from_secs(1) / per_second.max(1);
        let mut ticker = tokio::time::interval(gap);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut set = JoinSet::new();
        for i in calls {
            ticker.tick().await;
            set.spawn(op(Arc::clone(&self.inner), i));
        }
        let mut out = Vec::new();
        while let Some(r) = set.join_next().await {
            out.push(r.unwrap_or(false));
        }
        out
    }
}

impl Drop for Caller {
    fn drop(&mut self) {
        self.rx.abort();
    }
}

impl Inner {
    fn via(&self, branch: &str) -> Vec<u8> {
        self.sock.via(branch)
    }

    fn branch(&self, index: usize, cseq: u32, kind: &str) -> String {
        format!("z9hG4bKsp{:x}.{index}.{cseq}{kind}", self.cfg.seed)
    }

    fn our_from(&self, tag: &str) -> Vec<u8> {
        format!(
            "<{}>;tag={tag}",
            self.sock.uri(&self.cfg.calling, self.local)
        )
        .into_bytes()
    }

    fn contact(&self) -> Vec<u8> {
        format!("<{}>", self.sock.uri(&self.cfg.calling, self.local)).into_bytes()
    }

    /// Call `index`'s SDP (an offer, or an answer with `answering` = the far side's direction and
    /// payload types): its RTP leg's port, or a made-up one without a leg.
    fn offer(&self, index: usize, version: u32) -> Bytes {
        self.media_sdp(index, version, None)
    }

    fn media_sdp(
        &self,
        index: usize,
        version: u32,
        answering: Option<(SocketAddr, Direction, Vec<u8>)>,
    ) -> Bytes {
        let session = self.cfg.seed ^ index as u64;
        let ip = self.local.ip();
        let (leg, want) = {
            let calls = lock(&self.calls);
            match calls.list.get(index) {
                Some(c) => (c.rtp.clone(), c.want),
                None => (None, (Direction::SendRecv, 0)),
            }
        };
        let Some(leg) = leg else {
            let port = 10_000u16.wrapping_add((index as u16).wrapping_mul(2));
            return sdp::audio(session, version, ip, port);
        };
        let port = leg.local_addr().port();
        match answering {
            Some((remote, theirs, pts)) => {
                let pt = pts
                    .iter()
                    .copied()
                    .find(|p| *p == want.1)
                    .or(pts.first().copied())
                    .unwrap_or(0);
                let direction = combine(want.0, theirs);
                leg.negotiate(Negotiated {
                    remote: Some(remote),
                    direction,
                    payload_type: pt,
                });
                sdp::audio_with(session, version, ip, port, pt, direction)
            }
            None => sdp::audio_with(session, version, ip, port, want.1, want.0),
        }
    }

    /// The far side answered our offer in call `index`: its leg follows the answer.
    fn media_answered(&self, index: usize, answer: &[u8]) {
        let (leg, want) = {
            let calls = lock(&self.calls);
            match calls.list.get(index) {
                Some(c) => (c.rtp.clone(), c.want),
                None => return,
            }
        };
        if let (Some(leg), Some((remote, theirs, pts))) = (leg, read_sdp(answer)) {
            leg.negotiate(Negotiated {
                remote: Some(remote),
                direction: combine(want.0, theirs),
                payload_type: pts.first().copied().unwrap_or(want.1),
            });
        }
    }

    /// Stops call `index`'s RTP (the call ended); its counts stay readable.
    fn media_ended(&self, index: usize) {
        let leg = lock(&self.calls)
            .list
            .get(index)
            .and_then(|c| c.rtp.clone());
        if let Some(leg) = leg {
            leg.stop();
        }
    }

    /// Sends the first INVITE of call `index` and records the outcome.
    async fn setup(self: Arc<Self>, index: usize) -> bool {
        let (call_id, from_tag) = {
            let mut calls = lock(&self.calls);
            let Some(c) = calls.list.get_mut(index) else {
                return false;
            };
            c.cseq = 1;
            c.sdp_version = 1;
            (c.record.call_id.clone(), c.from_tag.clone())
        };
        if self.cfg.rtp {
            let token = self.cfg.seed.rotate_left(17)
                ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)
                | 1;
            match RtpLeg::start(self.local.ip(), Role::Source, Some(token)).await {
                Ok(leg) => {
                    if let Some(c) = lock(&self.calls).list.get_mut(index) {
                        c.rtp = Some(Arc::new(leg));
                    }
                }
                Err(e) => tracing::warn!("caller: no RTP leg for call {index}: {e}"),
            }
        }
        let target = self.cfg.target;
        let ruri = self.sock.uri(&self.cfg.called, target);
        let branch = self.branch(index, 1, "i");
        let mut b = MessageBuilder::request_method(Method::Invite, ruri.as_bytes());
        b.header(HeaderName::Via, &self.via(&branch))
            .header(HeaderName::MaxForwards, b"70")
            .header(HeaderName::From, &self.our_from(&from_tag))
            .header_fmt(HeaderName::To, format_args!("<{ruri}>"))
            .header(HeaderName::CallId, call_id.as_bytes())
            .header(HeaderName::CSeq, b"1 INVITE")
            .header(HeaderName::Contact, &self.contact())
            .body(sdp::CONTENT_TYPE, self.offer(index, 1));
        let outcome = self.transact(&branch, b.build(), target, true).await;
        let mut answered_by = None;
        let (result, ack) = match outcome {
            Ok((resp, from)) => {
                let retry_after = resp
                    .header(HeaderName::RetryAfter)
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|v| v.parse().ok());
                answered_by = Some((from, retry_after));
                let status = resp.status().unwrap_or(0);
                if (200..300).contains(&status) {
                    self.media_answered(index, resp.body());
                    let dialog = Dialog::from_2xx(&resp, target);
                    let ack = self.ack_2xx(&call_id, &from_tag, &dialog, 1, index);
                    let mut calls = lock(&self.calls);
                    if let Some(c) = calls.list.get_mut(index) {
                        c.dialog = Some(dialog);
                    }
                    (Outcome::Final(status), Some(ack))
                } else {
                    let ack = self.ack_non_2xx(&resp, ruri.as_bytes(), &branch, 1, target);
                    (Outcome::Final(status), Some(ack))
                }
            }
            Err(TimedOut) => (Outcome::Unknown, None),
        };
        if let Some((bytes, dest)) = &ack {
            let _ = self.sock.send_to(bytes, *dest).await;
        }
        let mut calls = lock(&self.calls);
        if let Some(c) = calls.list.get_mut(index) {
            c.record.setup = Some(result);
            c.record.setup_answered_by = answered_by;
            c.last_ack = ack.map(|(b, d)| (1, b, d));
        }
        result.is_success()
    }

    /// Sends a re-INVITE or a BYE in call `index`'s dialog and records the outcome. A re-INVITE
    /// answered 491 (glare: the far side's own re-INVITE crossed it, e.g. a new anchor's after a
    /// failover) is sent again, as RFC 3261 §14.1 says for the Call-ID's owner, after 2.1-4 s,
    /// twice at most.
    async fn in_dialog(self: Arc<Self>, index: usize, method: Method) -> bool {
        let mut tries: u64 = 0;
        loop {
            let (ok, status) = Arc::clone(&self).in_dialog_once(index, method).await;
            if method != Method::Invite || status != Some(491) || tries >= 2 {
                return ok;
            }
            tries += 1;
            let spread =
                (self.cfg.seed ^ (index as u64) << 8 ^ tries).wrapping_mul(0x9e37_79b9) % 1900;
            tokio::time::sleep(Duration::from_millis(2100 + spread)).await;
        }
    }

    /// One in-dialog transaction; returns whether it got a 2xx and the final status.
    async fn in_dialog_once(self: Arc<Self>, index: usize, method: Method) -> (bool, Option<u16>) {
        let (call_id, from_tag, dialog, cseq, version) = {
            let mut calls = lock(&self.calls);
            let Some(c) = calls.list.get_mut(index) else {
                return (false, None);
            };
            let Some(d) = c.dialog.clone() else {
                return (false, None);
            };
            c.cseq += 1;
            if method == Method::Invite {
                c.sdp_version += 1;
            }
            (
                c.record.call_id.clone(),
                c.from_tag.clone(),
                d,
                c.cseq,
                c.sdp_version,
            )
        };
        if method == Method::Bye {
            // A UA stops its media when it hangs up.
            self.media_ended(index);
        }
        let kind = if method == Method::Invite { "r" } else { "b" };
        let branch = self.branch(index, cseq, kind);
        let mut b = self.dialog_request(method, &dialog, &branch, &call_id, &from_tag, cseq);
        if method == Method::Invite {
            b.header(HeaderName::Contact, &self.contact())
                .body(sdp::CONTENT_TYPE, self.offer(index, version));
        }
        let outcome = self
            .transact(&branch, b.build(), dialog.dest, method == Method::Invite)
            .await;
        let mut ack = None;
        let result = match outcome {
            Ok((resp, _)) => {
                let status = resp.status().unwrap_or(0);
                if method == Method::Invite && (200..300).contains(&status) {
                    self.media_answered(index, resp.body());
                }
                if method == Method::Invite {
                    ack = Some(if (200..300).contains(&status) {
                        self.ack_2xx(&call_id, &from_tag, &dialog, cseq, index)
                    } else {
                        self.ack_non_2xx(&resp, &dialog.remote_target, &branch, cseq, dialog.dest)
                    });
                }
                Outcome::Final(status)
            }
            Err(TimedOut) => Outcome::Unknown,
        };
        if let Some((bytes, dest)) = &ack {
            let _ = self.sock.send_to(bytes, *dest).await;
        }
        let mut calls = lock(&self.calls);
        if let Some(c) = calls.list.get_mut(index) {
            if method == Method::Invite {
                c.record.reinvite = Some(result);
                if let Some((b, d)) = ack {
                    c.last_ack = Some((cseq, b, d));
                }
            } else {
                c.record.bye = Some(result);
            }
        }
        let status = match result {
            Outcome::Final(s) => Some(s),
            Outcome::Unknown => None,
        };
        (result.is_success(), status)
    }

    fn dialog_request(
        &self,
        method: Method,
        dialog: &Dialog,
        branch: &str,
        call_id: &str,
        from_tag: &str,
        cseq: u32,
    ) -> MessageBuilder {
        let mut b = MessageBuilder::request_method(method, &dialog.remote_target);
        b.header(HeaderName::Via, &self.via(branch))
            .header(HeaderName::MaxForwards, b"70");
        for r in &dialog.routes {
            b.header(HeaderName::Route, r);
        }
        b.header(HeaderName::From, &self.our_from(from_tag))
            .header(HeaderName::To, &dialog.to)
            .header(HeaderName::CallId, call_id.as_bytes())
            .header_fmt(HeaderName::CSeq, format_args!("{cseq} {}", method.as_str()));
        b
    }

    /// The ACK of a 2xx (RFC 3261 §13.2.2.4): a new transaction in the dialog.
    fn ack_2xx(
        &self,
        call_id: &str,
        from_tag: &str,
        dialog: &Dialog,
        cseq: u32,
        index: usize,
    ) -> (Bytes, SocketAddr) {
        let branch = self.branch(index, cseq, "a");
        let mut b = MessageBuilder::request_method(Method::Ack, &dialog.remote_target);
        b.header(HeaderName::Via, &self.via(&branch))
            .header(HeaderName::MaxForwards, b"70");
        for r in &dialog.routes {
            b.header(HeaderName::Route, r);
        }
        b.header(HeaderName::From, &self.our_from(from_tag))
            .header(HeaderName::To, &dialog.to)
            .header(HeaderName::CallId, call_id.as_bytes())
            .header_fmt(HeaderName::CSeq, format_args!("{cseq} ACK"));
        (b.build(), dialog.dest)
    }

    /// The ACK of a non-2xx final (RFC 3261 §17.1.1.3): same branch, To of the answer.
    fn ack_non_2xx(
        &self,
        resp: &SipMessage,
        ruri: &[u8],
        branch: &str,
        cseq: u32,
        dest: SocketAddr,
    ) -> (Bytes, SocketAddr) {
        let mut b = MessageBuilder::request_method(Method::Ack, ruri);
        b.header(HeaderName::Via, &self.via(branch))
            .header(HeaderName::MaxForwards, b"70")
            .copy_headers(resp, HeaderName::From)
            .copy_headers(resp, HeaderName::To)
            .copy_headers(resp, HeaderName::CallId)
            .header_fmt(HeaderName::CSeq, format_args!("{cseq} ACK"));
        (b.build(), dest)
    }

    /// One client transaction over UDP: send, retransmit, wait for the final answer.
    async fn transact(
        &self,
        branch: &str,
        bytes: Bytes,
        dest: SocketAddr,
        invite: bool,
    ) -> Result<(SipMessage, SocketAddr), TimedOut> {
        let (tx, mut rx) = mpsc::channel(16);
        lock(&self.waiters).insert(branch.as_bytes().to_vec(), tx);
        let deadline = Instant::now() + self.cfg.timeout;
        let mut interval = self.cfg.t1;
        let _ = self.sock.send_to(&bytes, dest).await;
        let mut next = Instant::now() + interval;
        let result = loop {
            match tokio::time::timeout_at(next.min(deadline), rx.recv()).await {
                Ok(Some((m, from))) => match m.status() {
                    Some(s) if s >= 200 => break Ok((m, from)),
                    _ if invite => next = deadline,
                    _ => {
                        interval = T2;
                        next = Instant::now() + interval;
                    }
                },
                Ok(None) => break Err(TimedOut),
                Err(_) if Instant::now() >= deadline => break Err(TimedOut),
                Err(_) => {
                    let _ = self.sock.send_to(&bytes, dest).await;
                    interval = if invite {
                        interval * 2
                    } else {
                        (interval * 2).min(T2)
                    };
                    next = Instant::now() + interval;
                }
            }
        };
        lock(&self.waiters).remove(branch.as_bytes());
        result
    }

    async fn receive(self: Arc<Self>) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let Ok((n, from)) = self.sock.recv_from(&mut buf).await else {
                continue;
            };
            let Ok(msg) = SipMessage::parse(Bytes::copy_from_slice(&buf[..n])) else {
                tracing::debug!(%from, "caller: unparseable datagram dropped");
                continue;
            };
            if msg.defect().is_some() {
                continue;
            }
            if msg.is_request() {
                self.on_request(msg, from).await;
            } else {
                self.on_response(msg, from).await;
            }
        }
    }

    async fn on_response(&self, msg: SipMessage, from: SocketAddr) {
        let waiter = msg
            .top_branch()
            .and_then(|b| lock(&self.waiters).get(b).cloned());
        if let Some(tx) = waiter {
            let _ = tx.try_send((msg, from));
            return;
        }
        // A final answer to an INVITE whose transaction is over: its ACK was lost; send it again.
        let Some(Ok(cseq)) = msg.cseq() else { return };
        if cseq.method != Method::Invite || msg.status().is_none_or(|s| s < 200) {
            return;
        }
        let Some(Ok(call_id)) = msg.call_id() else {
            return;
        };
        let ack = {
            let calls = lock(&self.calls);
            calls
                .by_id
                .get(call_id)
                .and_then(|i| calls.list.get(*i))
                .and_then(|c| c.last_ack.clone())
                .filter(|(seq, _, _)| *seq == cseq.seq)
        };
        if let Some((_, bytes, dest)) = ack {
            let _ = self.sock.send_to(&bytes, dest).await;
        }
    }

    async fn on_request(&self, req: SipMessage, from: SocketAddr) {
        if self.uas.replay(&req).await {
            return;
        }
        let Some(method) = req.method() else { return };
        let call = req
            .call_id()
            .and_then(Result::ok)
            .and_then(|id| lock(&self.calls).by_id.get(id).copied());
        if method == Method::Ack {
            self.uas.ack(&req);
            if let Some(i) = call
                && !req.body().is_empty()
            {
                self.media_answered(i, req.body());
            }
            return;
        }
        let in_dialog = req.to_tag().is_some();
        let status = match (method, call) {
            (Method::Options, _) => 200,
            (_, None) if in_dialog => 481,
            (Method::Bye, Some(i)) => {
                if let Some(c) = lock(&self.calls).list.get_mut(i) {
                    c.record.ended_by_far_side = true;
                }
                self.media_ended(i);
                200
            }
            (_, Some(i)) => {
                if let Some(c) = lock(&self.calls).list.get_mut(i) {
                    c.record.far_requests += 1;
                }
                200
            }
            (_, None) => 481,
        };
        let mut b = response_to(
            &req,
            status,
            reason_phrase(status).as_bytes(),
            Some("spx"),
            Some(from),
        );
        if method == Method::Invite && status == 200 {
            let (index, version) = {
                let mut calls = lock(&self.calls);
                match call.and_then(|i| calls.list.get_mut(i)) {
                    Some(c) => {
                        c.sdp_version += 1;
                        (c.record.index, c.sdp_version)
                    }
                    None => (0, 1),
                }
            };
            let body = match call {
                Some(_) => self.media_sdp(index, version, read_sdp(req.body())),
                None => sdp::audio(self.cfg.seed, version, self.local.ip(), 10_000),
            };
            b.header(HeaderName::Contact, &self.contact())
                .body(sdp::CONTENT_TYPE, body);
        }
        self.uas.answer(&req, from, b.build()).await;
    }
}

impl Dialog {
    /// The dialog a 2xx to our INVITE creates (RFC 3261 §12.1.2). In-dialog requests go to the first
    /// route, else to the remote target, else (a host name we cannot resolve) to `fallback`.
    fn from_2xx(resp: &SipMessage, fallback: SocketAddr) -> Dialog {
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
