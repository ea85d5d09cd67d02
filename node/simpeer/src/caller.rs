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
//!
//! Inside: `caller.rs` is the API; `caller/calls.rs` a call's own requests, `caller/transactions.rs`
//! the transactions, ACKs and what arrives, `caller/media.rs` the SDP and SRTP of each call,
//! `caller/state.rs` what the caller's tasks share, `caller/config.rs` its settings.

mod calls;
mod config;
mod media;
mod state;
mod transactions;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medpool_sip::Method;
use tokio::task::{JoinHandle, JoinSet};

use crate::error::SimpeerError;
use crate::ledger::CallRecord;
use crate::rtp::{LegStats, Negotiated};
use crate::uas::{ResponseRouting, Uas};
use crate::wire::Wire;
use medpool_media::sdp::Direction;

pub use config::CallerConfig;
use state::{Call, Calls, Inner, lock};

/// A running caller. Dropping it stops it (calls still up are left to the far side's timers).
#[derive(Debug)]
pub struct Caller {
    inner: Arc<Inner>,
    rx: JoinHandle<()>,
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
                        far_tag: None,
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
