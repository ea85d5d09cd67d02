//! A simulated PSTN gateway: a UDP UAS that answers every call.
//!
//! OPTIONS → 200; a new INVITE → 100, 180, 200 with SDP at once (or, with
//! [`GatewayConfig::ring`], the 200 that long after the 180: a CANCEL meanwhile gets 200 and the
//! INVITE 487); a re-INVITE
//! or UPDATE in a known dialog (Call-ID and its To-tag) → 200 with SDP; BYE in a known dialog → 200; ACK → nothing (it stops
//! the 2xx retransmissions); an in-dialog request for a dialog it does not know → 481; anything else
//! → 200. A retransmitted request gets the answer already sent. It counts what it did.
//!
//! With [`GatewayConfig::rtp`] on, each call gets an RTP leg of its own (a [`Role::Reflector`],
//! see [`crate::rtp`]): the SDP answer names the leg's socket, chooses the offer's first G.711
//! payload type and mirrors its direction; a re-INVITE or UPDATE with an offer (a new anchor after
//! a failover, hold, resume, a codec change) moves the leg; an offer in an ACK (late offer)
//! completes it. A BYE ends the leg; its counts are kept in [`Gateway::rtp_stats`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use medpool_media::srtp::{CryptoAttribute, Suite};
use medpool_sip::message::builder::{reason_phrase, response_to};
use medpool_sip::{HeaderName, Method, SipMessage};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::SimpeerError;
use crate::rtp::{LegStats, Negotiated, Role, RtpLeg, read_crypto, read_sdp};
use crate::sdp;
use crate::uas::{ResponseRouting, Uas};
use crate::wire::{TlsOptions, Wire};

/// Dialogs (answered or ringing) a gateway holds at most; beyond that new calls get 503.
const MAX_DIALOGS: usize = 100_000;
/// CSeq disorders a gateway describes at most ([`Gateway::cseq_disorders`]); later ones are only
/// counted.
const MAX_DISORDERS: usize = 32;

/// How to run a gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Where it listens (the trunk's configured address and port).
    pub bind: SocketAddr,
    /// Where its answers go.
    pub routing: ResponseRouting,
    /// Each call gets an RTP leg that echoes the caller's stream (see the module documentation).
    pub rtp: bool,
    /// Speak SIP over TLS: listen for TLS connections on `bind` (see [`crate::wire`]); `None`: UDP.
    pub tls: Option<TlsOptions>,
    /// The legs speak SRTP when the offer carries a supported `a=crypto` line: the answer mirrors
    /// the offer's profile with a fresh key of the gateway's (an MKI of the same length when the
    /// offer has one), and the echo is checked and sent protected. A late offer of the gateway's
    /// own is `RTP/SAVP` with a key. Without it the gateway answers plain RTP.
    pub srtp: bool,
    /// How long a new call rings (100 and 180 at once, the 200 this long after): calls stay in
    /// set-up that long. Zero answers at once.
    pub ring: Duration,
}

impl GatewayConfig {
    /// A gateway on `bind` that answers at once, to the request's source (RFC 3261/3581).
    pub fn new(bind: SocketAddr) -> GatewayConfig {
        GatewayConfig {
            bind,
            routing: ResponseRouting::Source,
            rtp: false,
            tls: None,
            srtp: false,
            ring: Duration::ZERO,
        }
    }
}

/// What a gateway did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayCounts {
    /// Calls answered 200.
    pub calls: u64,
    /// Calls answered and not yet ended by a BYE.
    pub active: u64,
    /// re-INVITEs answered 200.
    pub reinvites: u64,
    /// UPDATEs answered 200.
    pub updates: u64,
    /// BYEs answered 200.
    pub byes: u64,
    /// OPTIONS answered.
    pub options: u64,
    /// In-dialog requests for an unknown dialog (answered 481).
    pub unknown_dialog: u64,
    /// New in-dialog requests whose CSeq number was not above the dialog's last one (answered 500,
    /// RFC 3261 §12.2.2). Two nodes acting for one call each send their own next request: this
    /// counts the second.
    pub cseq_out_of_order: u64,
    /// Datagrams dropped while the gateway was silenced (a dead or flapping gateway).
    pub dropped_silent: u64,
}

/// One in-dialog request whose CSeq number was not above the dialog's last one (counted in
/// [`GatewayCounts::cseq_out_of_order`]): which call, and the two requests, each with the address
/// it came from (each pool node sends from its own socket, so the two addresses name the two
/// nodes when two nodes acted for the call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CseqDisorder {
    /// The dialog's Call-ID (the gateway leg's).
    pub call_id: String,
    /// The earlier request: CSeq number, method and source.
    pub last: (u32, String, SocketAddr),
    /// The request answered 500: CSeq number, method and source.
    pub got: (u32, String, SocketAddr),
}

impl std::fmt::Display for CseqDisorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Call-ID {}: {} CSeq {} from {} after {} CSeq {} from {}",
            self.call_id, self.got.1, self.got.0, self.got.2, self.last.1, self.last.0, self.last.2
        )
    }
}

#[derive(Debug, Default)]
struct Stats {
    active_ids: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The most calls up at once (answered, not yet ended by a BYE).
    peak: AtomicU64,
    calls: AtomicU64,
    byes: AtomicU64,
    reinvites: AtomicU64,
    updates: AtomicU64,
    options: AtomicU64,
    unknown_dialog: AtomicU64,
    cseq_out_of_order: AtomicU64,
    /// The first [`MAX_DISORDERS`] CSeq disorders, described.
    disorders: std::sync::Mutex<Vec<CseqDisorder>>,
    dropped_silent: AtomicU64,
    silent: std::sync::atomic::AtomicBool,
    /// The RTP legs of the calls up, by Call-ID.
    legs: std::sync::Mutex<HashMap<Vec<u8>, RtpLeg>>,
    /// The counts of the legs that ended.
    legs_done: std::sync::Mutex<LegStats>,
}

/// A running gateway. Dropping it stops it.
#[derive(Debug)]
pub struct Gateway {
    local: SocketAddr,
    stats: Arc<Stats>,
    task: JoinHandle<()>,
}

struct Dialog {
    to_tag: String,
    sdp_version: u32,
    session: u64,
    /// The CSeq number of the last in-dialog request from the pool (the INVITE's at first), its
    /// method and where it came from.
    last_cseq: u32,
    last_method: String,
    last_from: SocketAddr,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct State {
    sock: Arc<Wire>,
    local: SocketAddr,
    uas: Uas,
    stats: Arc<Stats>,
    dialogs: HashMap<Vec<u8>, Dialog>,
    next_tag: u64,
    rtp: bool,
    srtp: bool,
    ring: Duration,
    /// Calls ringing (answered 180, their 200 not sent yet), by Call-ID.
    ringing: HashMap<Vec<u8>, Ringing>,
    /// Ringing calls whose time to answer has come (Call-IDs, from their timers).
    due_tx: mpsc::Sender<Vec<u8>>,
}

/// A call ringing: what its 200 needs.
struct Ringing {
    invite: SipMessage,
    from: SocketAddr,
    tag: String,
    session: u64,
    last_cseq: u32,
    ok: Bytes,
}

impl Gateway {
    /// Binds and starts answering.
    pub async fn start(cfg: GatewayConfig) -> Result<Gateway, SimpeerError> {
        let sock = Arc::new(match &cfg.tls {
            None => Wire::udp(cfg.bind).await?,
            Some(opts) => Wire::tls(cfg.bind, opts, None).await?,
        });
        let local = sock.local_addr()?;
        let stats = Arc::new(Stats::default());
        // At most one entry per ringing call, and calls are bounded by MAX_DIALOGS.
        let (due_tx, due_rx) = mpsc::channel(MAX_DIALOGS);
        let state = State {
            uas: Uas::new(Arc::clone(&sock), cfg.routing),
            sock,
            local,
            stats: Arc::clone(&stats),
            dialogs: HashMap::new(),
            next_tag: 0,
            rtp: cfg.rtp,
            srtp: cfg.srtp,
            ring: cfg.ring,
            ringing: HashMap::new(),
            due_tx,
        };
        let task = tokio::spawn(state.run(due_rx));
        Ok(Gateway { local, stats, task })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What it did so far.
    pub fn counts(&self) -> GatewayCounts {
        let s = &self.stats;
        let calls = s.calls.load(Ordering::Relaxed);
        let byes = s.byes.load(Ordering::Relaxed);
        GatewayCounts {
            calls,
            active: calls.saturating_sub(byes),
            reinvites: s.reinvites.load(Ordering::Relaxed),
            updates: s.updates.load(Ordering::Relaxed),
            byes,
            options: s.options.load(Ordering::Relaxed),
            unknown_dialog: s.unknown_dialog.load(Ordering::Relaxed),
            cseq_out_of_order: s.cseq_out_of_order.load(Ordering::Relaxed),
            dropped_silent: s.dropped_silent.load(Ordering::Relaxed),
        }
    }

    /// The Call-IDs of the calls answered and not yet ended by a BYE (for a failure message).
    pub fn active_calls(&self) -> Vec<String> {
        self.stats
            .active_ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// The first CSeq disorders this gateway saw (at most 32), described: which call, the two
    /// requests and where each came from.
    pub fn cseq_disorders(&self) -> Vec<CseqDisorder> {
        lock(&self.stats.disorders).clone()
    }

    /// The RTP counts of every call so far (ended and up), summed.
    pub fn rtp_stats(&self) -> LegStats {
        let mut total = lock(&self.stats.legs_done).clone();
        for leg in lock(&self.stats.legs).values() {
            total.add(&leg.stats());
        }
        total
    }

    /// The RTP counts of each call up, by Call-ID.
    pub fn rtp_legs(&self) -> Vec<(String, LegStats)> {
        lock(&self.stats.legs)
            .iter()
            .map(|(id, leg)| (String::from_utf8_lossy(id).into_owned(), leg.stats()))
            .collect()
    }

    /// The most calls it held at once (answered 200, not yet ended by a BYE) since it started or
    /// since [`Gateway::reset_peak`].
    pub fn peak_active(&self) -> u64 {
        self.stats.peak.load(Ordering::Relaxed)
    }

    /// Starts counting the peak again from the calls held now.
    pub fn reset_peak(&self) {
        let now = self
            .stats
            .active_ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len() as u64;
        self.stats.peak.store(now, Ordering::Relaxed);
    }

    /// Silences the gateway (`true`: every datagram is dropped unanswered, as by a dead box) or
    /// brings it back (`false`) with its calls intact: a gateway that dies and flaps.
    pub fn set_silent(&self, silent: bool) {
        self.stats.silent.store(silent, Ordering::Relaxed);
    }

    /// Stops answering (the socket closes; the counts stay readable).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl State {
    async fn run(mut self, mut due: mpsc::Receiver<Vec<u8>>) {
        let mut buf = vec![0u8; 65_535];
        loop {
            let received = tokio::select! {
                r = self.sock.recv_from(&mut buf) => r,
                Some(call_id) = due.recv() => {
                    self.answer_ringing(&call_id).await;
                    continue;
                }
            };
            let Ok((n, from)) = received else {
                continue;
            };
            if self.stats.silent.load(Ordering::Relaxed) {
                self.stats.dropped_silent.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let Ok(msg) = SipMessage::parse(Bytes::copy_from_slice(&buf[..n])) else {
                tracing::debug!(%from, "gateway: unparseable datagram dropped");
                continue;
            };
            if msg.is_request() && msg.defect().is_none() {
                self.on_request(msg, from).await;
            }
        }
    }

    fn answer_bytes(
        &self,
        req: &SipMessage,
        status: u16,
        to_tag: Option<&str>,
        source: SocketAddr,
        body: Option<Bytes>,
    ) -> Bytes {
        let mut b = response_to(
            req,
            status,
            reason_phrase(status).as_bytes(),
            to_tag,
            Some(source),
        );
        if req.method() == Some(Method::Invite) && (101..300).contains(&status) {
            b.header_fmt(
                HeaderName::Contact,
                format_args!("<{}>", self.sock.uri("gw", self.local)),
            );
        }
        if let Some(body) = body {
            b.body(sdp::CONTENT_TYPE, body);
        }
        b.build()
    }

    async fn on_request(&mut self, req: SipMessage, from: SocketAddr) {
        if self.uas.replay(&req).await {
            return;
        }
        let Some(method) = req.method() else { return };
        let call_id = match req.call_id() {
            Some(Ok(c)) => c.to_vec(),
            _ => return,
        };
        let in_dialog = req.to_tag().is_some();
        if in_dialog
            && !matches!(method, Method::Ack)
            && let Some(disorder) = self.cseq_disorder(&req, &call_id, from)
        {
            self.stats.cseq_out_of_order.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%disorder, "gateway: in-dialog request out of CSeq order (answered 500)");
            {
                let mut kept = lock(&self.stats.disorders);
                if kept.len() < MAX_DISORDERS {
                    kept.push(disorder);
                }
            }
            let a = self.answer_bytes(&req, 500, None, from, None);
            self.uas.answer(&req, from, a).await;
            return;
        }
        match method {
            Method::Ack => {
                self.uas.ack(&req);
                if !req.body().is_empty() {
                    self.media_answered(&call_id, req.body());
                }
            }
            Method::Options => {
                self.stats.options.fetch_add(1, Ordering::Relaxed);
                let a = self.answer_bytes(&req, 200, Some("gwopt"), from, None);
                self.uas.answer(&req, from, a).await;
            }
            Method::Invite if !in_dialog => self.new_call(req, call_id, from).await,
            Method::Invite | Method::Update => {
                let local_ip = self.local.ip();
                let Some(d) = self
                    .dialogs
                    .get_mut(&call_id)
                    .filter(|d| req.to_tag() == Some(d.to_tag.as_bytes()))
                else {
                    return self.unknown_dialog(&req, from).await;
                };
                d.sdp_version += 1;
                let (session, version) = (d.session, d.sdp_version);
                let body = self.media_offered(&call_id, req.body(), session, version, local_ip);
                let counter = if method == Method::Invite {
                    &self.stats.reinvites
                } else {
                    &self.stats.updates
                };
                counter.fetch_add(1, Ordering::Relaxed);
                let a = self.answer_bytes(&req, 200, None, from, Some(body));
                self.uas.answer(&req, from, a).await;
            }
            Method::Bye => {
                let known = self
                    .dialogs
                    .get(&call_id)
                    .is_some_and(|d| req.to_tag() == Some(d.to_tag.as_bytes()));
                if !known {
                    return self.unknown_dialog(&req, from).await;
                }
                self.dialogs.remove(&call_id);
                self.set_active(&call_id, false);
                if let Some(leg) = lock(&self.stats.legs).remove(&call_id) {
                    let mut done = lock(&self.stats.legs_done);
                    done.add(&leg.stats());
                }
                self.stats.byes.fetch_add(1, Ordering::Relaxed);
                let a = self.answer_bytes(&req, 200, None, from, None);
                self.uas.answer(&req, from, a).await;
            }
            Method::Cancel if self.ringing.contains_key(&call_id) => {
                self.cancel_ringing(&req, &call_id, from).await;
            }
            _ => {
                let a = self.answer_bytes(&req, 200, Some("gwx"), from, None);
                self.uas.answer(&req, from, a).await;
            }
        }
    }

    /// A CANCEL for a call still ringing: 200 to it, 487 to the INVITE; the call is not answered.
    async fn cancel_ringing(&mut self, cancel: &SipMessage, call_id: &[u8], from: SocketAddr) {
        let Some(r) = self.ringing.remove(call_id) else {
            return;
        };
        let ok = self.answer_bytes(cancel, 200, Some(&r.tag), from, None);
        self.uas.answer(cancel, from, ok).await;
        let terminated = self.answer_bytes(&r.invite, 487, Some(&r.tag), r.from, None);
        self.uas.answer(&r.invite, r.from, terminated).await;
        if let Some(leg) = lock(&self.stats.legs).remove(call_id) {
            lock(&self.stats.legs_done).add(&leg.stats());
        }
    }

    /// A ringing call's time has come: its 200 (unless it was cancelled meanwhile).
    async fn answer_ringing(&mut self, call_id: &[u8]) {
        let Some(r) = self.ringing.remove(call_id) else {
            return;
        };
        self.dialogs.insert(
            call_id.to_vec(),
            Dialog {
                to_tag: r.tag,
                sdp_version: 1,
                session: r.session,
                last_cseq: r.last_cseq,
                last_method: "INVITE".to_owned(),
                last_from: r.from,
            },
        );
        self.set_active(call_id, true);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.uas.answer(&r.invite, r.from, r.ok).await;
    }

    /// A new in-dialog request whose CSeq number is not above the dialog's last one, described;
    /// `None` when it is above (then it becomes the last one) or outside a known dialog (it gets
    /// 481 later).
    fn cseq_disorder(
        &mut self,
        req: &SipMessage,
        call_id: &[u8],
        from: SocketAddr,
    ) -> Option<CseqDisorder> {
        let Some(Ok(seq)) = req.cseq().map(|c| c.map(|c| c.seq)) else {
            return None;
        };
        let method = req
            .method()
            .map_or_else(|| "?".to_owned(), |m| m.as_str().to_owned());
        let d = self
            .dialogs
            .get_mut(call_id)
            .filter(|d| req.to_tag() == Some(d.to_tag.as_bytes()))?;
        if seq <= d.last_cseq {
            return Some(CseqDisorder {
                call_id: String::from_utf8_lossy(call_id).into_owned(),
                last: (d.last_cseq, d.last_method.clone(), d.last_from),
                got: (seq, method, from),
            });
        }
        d.last_cseq = seq;
        d.last_method = method;
        d.last_from = from;
        None
    }

    fn set_active(&self, call_id: &[u8], active: bool) {
        let id = String::from_utf8_lossy(call_id).into_owned();
        let mut ids = self
            .stats
            .active_ids
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if active {
            ids.insert(id);
            self.stats
                .peak
                .fetch_max(ids.len() as u64, Ordering::Relaxed);
        } else {
            ids.remove(&id);
        }
    }

    async fn unknown_dialog(&self, req: &SipMessage, from: SocketAddr) {
        self.stats.unknown_dialog.fetch_add(1, Ordering::Relaxed);
        let a = self.answer_bytes(req, 481, None, from, None);
        self.uas.answer(req, from, a).await;
    }

    async fn new_call(&mut self, req: SipMessage, call_id: Vec<u8>, from: SocketAddr) {
        if self.dialogs.len() + self.ringing.len() >= MAX_DIALOGS {
            let a = self.answer_bytes(&req, 503, Some("gwfull"), from, None);
            self.uas.answer(&req, from, a).await;
            return;
        }
        self.next_tag += 1;
        let tag = format!("gw{}t{}", self.local.port(), self.next_tag);
        let session = self.next_tag;
        let last_cseq = req.cseq().and_then(Result::ok).map_or(0, |c| c.seq);
        let trying = self.answer_bytes(&req, 100, None, from, None);
        let ringing = self.answer_bytes(&req, 180, Some(&tag), from, None);
        if self.rtp {
            match RtpLeg::start(self.local.ip(), Role::Reflector, None).await {
                Ok(leg) => {
                    lock(&self.stats.legs).insert(call_id.clone(), leg);
                }
                Err(e) => tracing::warn!("gateway: no RTP leg: {e}"),
            }
        }
        let body = self.media_offered(&call_id, req.body(), session, 1, self.local.ip());
        let ok = self.answer_bytes(&req, 200, Some(&tag), from, Some(body));
        if !self.ring.is_zero() {
            self.uas.answer(&req, from, trying).await;
            self.uas.answer(&req, from, ringing).await;
            let due = self.due_tx.clone();
            let (id, ring) = (call_id.clone(), self.ring);
            self.ringing.insert(
                call_id,
                Ringing {
                    invite: req,
                    from,
                    tag,
                    session,
                    last_cseq,
                    ok,
                },
            );
            tokio::spawn(async move {
                tokio::time::sleep(ring).await;
                let _ = due.send(id).await;
            });
            return;
        }
        self.dialogs.insert(
            call_id.clone(),
            Dialog {
                to_tag: tag,
                sdp_version: 1,
                session,
                last_cseq,
                last_method: "INVITE".to_owned(),
                last_from: from,
            },
        );
        self.uas.answer(&req, from, trying).await;
        self.uas.answer(&req, from, ringing).await;
        self.set_active(&call_id, true);
        self.stats.calls.fetch_add(1, Ordering::Relaxed);
        self.uas.answer(&req, from, ok).await;
    }
}

impl State {
    /// The SDP of an answer to `offer` (or of an offer, when the request had none), moving the
    /// call's RTP leg to what the offer says. Without a leg: PCMU on a fixed port.
    fn media_offered(
        &self,
        call_id: &[u8],
        offer: &[u8],
        session: u64,
        version: u32,
        ip: std::net::IpAddr,
    ) -> Bytes {
        let legs = lock(&self.stats.legs);
        let Some(leg) = legs.get(call_id) else {
            return sdp::audio(session, version, ip, 20_000);
        };
        let port = leg.local_addr().port();
        let Some((remote, dir, pts)) = read_sdp(offer) else {
            // No offer: ours goes in the answer; the ACK brings the far side's.
            let neg = leg.negotiated();
            let key = if self.srtp {
                leg.local_key().or_else(|| {
                    let k = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80, None).ok();
                    leg.set_local_key(k.clone());
                    k
                })
            } else {
                None
            };
            let body = sdp::audio_with(session, version, ip, port, neg.payload_type, neg.direction);
            return sdp::secured(body, key.as_ref(), true);
        };
        let pt = pts.into_iter().find(|p| *p == 0 || *p == 8).unwrap_or(0);
        let direction = dir.reversed();
        leg.negotiate(Negotiated {
            remote: Some(remote),
            direction,
            payload_type: pt,
        });
        let (offered, savp) = read_crypto(offer);
        let offered = offered.filter(|_| self.srtp);
        // The gateway's own key when it still fits the offered line, else a fresh one.
        let ours = offered.as_ref().and_then(|o| {
            leg.local_key()
                .filter(|k| {
                    k.tag == o.tag
                        && k.suite == o.suite
                        && k.key.mki.map(|m| m.len()) == o.key.mki.map(|m| m.len())
                })
                .or_else(|| medpool_media::srtp::answer(o).ok())
        });
        leg.set_local_key(ours.clone());
        leg.set_remote_key(offered.as_ref());
        let body = sdp::audio_with(session, version, ip, port, pt, direction);
        sdp::secured(body, ours.as_ref(), savp)
    }

    /// An answer to our offer arrived (in an ACK): the leg follows it.
    fn media_answered(&self, call_id: &[u8], answer: &[u8]) {
        let legs = lock(&self.stats.legs);
        let (Some(leg), Some((remote, dir, pts))) = (legs.get(call_id), read_sdp(answer)) else {
            return;
        };
        leg.set_remote_key(read_crypto(answer).0.as_ref());
        let neg = leg.negotiated();
        leg.negotiate(Negotiated {
            remote: Some(remote),
            direction: crate::rtp::combine(neg.direction, dir),
            payload_type: pts.first().copied().unwrap_or(neg.payload_type),
        });
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("local", &self.local)
            .field("dialogs", &self.dialogs.len())
            .finish()
    }
}
