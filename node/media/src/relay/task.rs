//! The relay task of one session: waits (one waker, registered on its four sockets' read
//! readiness and on its plan) until a socket is readable, drains it in batches into its worker
//! thread's buffers (`recvmmsg`: a short batch says the queue is empty, so no receive fails
//! with `EAGAIN`), lets the [`Forwarder`] decide, and sends with a non-blocking `send_to`.
//! Plan updates arrive on a watch channel; the task ends when the session handle is dropped or
//! closed, and its sockets and port leases go with it.
//!
//! A leg with SRTP keys in the plan has its packets unprotected as they arrive (a packet that
//! fails authentication or is replayed is dropped, counted) and protected as they leave towards
//! it (see `secure`).
//!
//! Per packet: no allocation, no lock, no await between receive and send; one receive system
//! call per batch and one send per packet.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::Poll;

use tokio::io::Interest;
use tokio::sync::watch;
use tokio::time::Instant;

use super::forward::{Forwarder, Leg, Port, SessionPlan};
use super::mmsg::{BATCH, Datagram, RecvBatch, RelaySocket};
use super::secure::{Kind, Secure};

use super::ports::PortLease;
use crate::stats::SessionCounters;

/// Datagrams taken from one socket before the task looks at the others (fairness).
const DRAIN_BATCH: usize = 32;

/// What the session handle and the task share: counters, and the latched sources for the admin
/// view (written only when a leg latches).
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub(crate) counters: SessionCounters,
    pub(crate) latched: Mutex<[[Option<SocketAddr>; 2]; 2]>,
}

/// A leg's sockets and the port pair they hold.
#[derive(Debug)]
pub(crate) struct LegSockets {
    pub(crate) rtp: RelaySocket,
    pub(crate) rtcp: RelaySocket,
    pub(crate) _lease: PortLease,
}

impl LegSockets {
    fn socket(&self, port: Port) -> &RelaySocket {
        match port {
            Port::Rtp => &self.rtp,
            Port::Rtcp => &self.rtcp,
        }
    }
}

/// Counts a running session in the runtime's count; decrements it when the task ends, however
/// it ends.
#[derive(Debug)]
pub(crate) struct Running(Arc<watch::Sender<usize>>);

impl Running {
    pub(crate) fn new(count: Arc<watch::Sender<usize>>) -> Self {
        count.send_modify(|n| *n += 1);
        Running(count)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// The session's four sockets, in the order the task looks at them.
const SOCKETS: [(Leg, Port); 4] = [
    (Leg::A, Port::Rtp),
    (Leg::A, Port::Rtcp),
    (Leg::B, Port::Rtp),
    (Leg::B, Port::Rtcp),
];

thread_local! {
    /// The receive buffers of the sessions that run on this thread: a session's task never
    /// awaits while it holds them, so one set per worker thread serves every session (a session
    /// owns no datagram buffer).
    static BUFFERS: RefCell<RecvBatch> = RefCell::new(RecvBatch::default());
}

/// What woke the task.
enum Wake {
    /// The plan changed (the receiver back, to wait again), or the session handle is gone.
    Plan(watch::Receiver<SessionPlan>, bool),
    /// These of [`SOCKETS`] are readable.
    Readable([bool; 4]),
    /// The I/O driver is gone (the runtime is shutting down).
    Gone(io::Error),
}

/// Waits for the next plan change on its own receiver (the task's receiver is read per packet).
async fn next_change(mut rx: watch::Receiver<SessionPlan>) -> (watch::Receiver<SessionPlan>, bool) {
    let open = rx.changed().await.is_ok();
    (rx, open)
}

pub(crate) async fn run(
    legs: [LegSockets; 2],
    mut plan: watch::Receiver<SessionPlan>,
    shared: Arc<Shared>,
    start: Instant,
    running: Running,
) {
    let mut fwd = Forwarder::new(plan.borrow_and_update().clone());
    let mut secure = Secure::default();
    follow_keys(&mut secure, &plan.borrow());
    // Allocated again only when the plan changes.
    let mut change = Box::pin(next_change(plan.clone()));
    loop {
        // One waker for the task, registered on each socket's read readiness (no future per
        // socket and wait): the plan is looked at first, so a flood on the sockets cannot keep
        // the task from seeing its session closed.
        let wake = std::future::poll_fn(|cx| {
            if let Poll::Ready((rx, open)) = change.as_mut().poll(cx) {
                return Poll::Ready(Wake::Plan(rx, open));
            }
            let mut ready = [false; 4];
            for (i, (leg, port)) in SOCKETS.iter().enumerate() {
                // The guard is dropped without clearing: the drain clears the readiness when it
                // has seen the queue empty.
                match legs[leg.index()].socket(*port).poll_read_ready(cx) {
                    Poll::Ready(Ok(_)) => ready[i] = true,
                    Poll::Ready(Err(e)) => return Poll::Ready(Wake::Gone(e)),
                    Poll::Pending => {}
                }
            }
            if ready.contains(&true) {
                Poll::Ready(Wake::Readable(ready))
            } else {
                Poll::Pending
            }
        })
        .await;
        match wake {
            Wake::Plan(_, false) => break,
            Wake::Plan(rx, true) => {
                if plan.has_changed().unwrap_or(false) {
                    fwd.update(plan.borrow_and_update().clone());
                    follow_keys(&mut secure, &plan.borrow());
                    publish_latched(&fwd, &shared);
                }
                change = Box::pin(next_change(rx));
            }
            Wake::Gone(e) => {
                tracing::debug!(error = %e, "media socket readiness");
                break;
            }
            Wake::Readable(ready) => {
                let mut ctx = Ctx {
                    legs: &legs,
                    plan: &mut plan,
                    fwd: &mut fwd,
                    secure: &mut secure,
                    shared: &shared,
                    start,
                };
                BUFFERS.with(|b| match b.try_borrow_mut() {
                    Ok(mut batch) => ctx.drain_ready(ready, &mut batch),
                    // Not reachable (nothing re-enters a drain); a batch of its own then.
                    Err(_) => ctx.drain_ready(ready, &mut RecvBatch::default()),
                });
            }
        }
    }
    // Sockets closed and ports back in the allocator before the session stops counting as
    // running, so `Relay::wait_idle` and `Session::close` see the ports free.
    drop(legs);
    drop(running);
}

/// The SRTP contexts follow the plan's keys (kept while the keys stay the same).
fn follow_keys(secure: &mut Secure, plan: &SessionPlan) {
    secure.update(
        [plan.srtp(Leg::A), plan.srtp(Leg::B)],
        [plan.srtp_required(Leg::A), plan.srtp_required(Leg::B)],
    );
}

fn publish_latched(fwd: &Forwarder, shared: &Shared) {
    let now = [fwd.latched(Leg::A), fwd.latched(Leg::B)];
    let mut l = shared.latched.lock().unwrap_or_else(|p| p.into_inner());
    *l = now;
}

/// What draining a socket works with.
struct Ctx<'a> {
    legs: &'a [LegSockets; 2],
    plan: &'a mut watch::Receiver<SessionPlan>,
    fwd: &'a mut Forwarder,
    secure: &'a mut Secure,
    shared: &'a Shared,
    start: Instant,
}

impl Ctx<'_> {
    fn drain_ready(&mut self, ready: [bool; 4], batch: &mut RecvBatch) {
        for (i, (leg, port)) in SOCKETS.iter().enumerate() {
            if ready[i] {
                self.drain(*leg, *port, batch);
            }
        }
    }

    /// Receives what `leg`'s `port` holds, in batches, and forwards it; stops at a short batch
    /// (the queue is empty: its readiness is cleared) or after [`DRAIN_BATCH`] datagrams
    /// (fairness: the socket stays ready and is drained again on the next turn).
    fn drain(&mut self, leg: Leg, port: Port, batch: &mut RecvBatch) {
        let sock = self.legs[leg.index()].socket(port);
        for _ in 0..DRAIN_BATCH.div_ceil(BATCH) {
            let mut got = 0;
            let r = sock.try_io(Interest::READABLE, |s| {
                got = batch.recv(s)?;
                if got < BATCH {
                    // The queue was empty when the batch returned: clear the readiness now
                    // (a datagram that arrives later sets it again).
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            if let Err(e) = r
                && e.kind() != io::ErrorKind::WouldBlock
            {
                // E.g. ECONNREFUSED from an earlier ICMP error: skip it and read on.
                tracing::debug!(error = %e, "media socket receive");
                continue;
            }
            let now_ms = self.start.elapsed().as_millis() as u64;
            for i in 0..got {
                self.forward(leg, port, batch.get(i), now_ms);
            }
            if got < BATCH {
                return;
            }
        }
    }

    fn forward(&mut self, leg: Leg, port: Port, d: Datagram<'_>, now_ms: u64) {
        // A plan published before this packet was received applies to it (checked after the
        // receive, so a peer that sent after the update is never handled by the old plan; one
        // atomic load when unchanged). A closed channel is noticed by the task's wait.
        if self.plan.has_changed().unwrap_or(false) {
            self.fwd.update(self.plan.borrow_and_update().clone());
            follow_keys(self.secure, &self.plan.borrow());
            publish_latched(self.fwd, self.shared);
        }
        let counters = &self.shared.counters;
        let from = match leg {
            Leg::A => &counters.from_a,
            Leg::B => &counters.from_b,
        };
        let (Some(src), false) = (d.src, d.truncated) else {
            from.record_malformed();
            return;
        };
        let mut len = d.len;
        // RTCP by its port or, multiplexed, by its packet type (in the clear in SRTP and SRTCP).
        let kind = if port == Port::Rtcp || crate::rtp::is_rtcp(&d.buf[..len]) {
            Kind::Rtcp
        } else {
            Kind::Rtp
        };
        // A protected leg's packets are authenticated before anything else looks at them (a
        // forged packet neither latches nor counts as media).
        if let Some(s) = self.secure.leg(leg.index()) {
            match s.unprotect(kind, &mut d.buf[..len], from) {
                Some(n) => len = n,
                None => return,
            }
        } else if self.secure.awaits_keys(leg.index()) {
            // An SRTP leg whose keys are not there yet: nothing can be authenticated.
            from.record_srtp_auth_failed();
            return;
        }
        let before = self.fwd.latched(leg);
        let route = self
            .fwd
            .on_datagram(leg, port, src, &mut d.buf[..len], counters, now_ms);
        if self.fwd.latched(leg) != before {
            publish_latched(self.fwd, self.shared);
        } else if route.is_none() && tracing::enabled!(tracing::Level::DEBUG) {
            let stray = from.snapshot().stray;
            if stray.is_power_of_two() {
                tracing::debug!(?leg, %src, stray, "media packet dropped (stray source, malformed or unroutable)");
            }
        }
        let Some(route) = route else {
            return;
        };
        if let Some(s) = self.secure.leg(route.leg.index()) {
            match s.protect(kind, d.buf, len) {
                Ok(n) => len = n,
                Err(e) => {
                    from.record_send_failed();
                    tracing::debug!(error = %e, "media packet not protected");
                    return;
                }
            }
        } else if self.secure.awaits_keys(route.leg.index()) {
            // Never in the clear to a leg that must be SRTP.
            from.record_send_failed();
            return;
        }
        let out = self.legs[route.leg.index()].socket(route.port);
        // Non-blocking; not registered for write readiness (see `mmsg`): a full buffer drops it.
        if let Err(e) = out.get_ref().send_to(&d.buf[..len], route.dest) {
            from.record_send_failed();
            tracing::debug!(error = %e, dest = %route.dest, "media send");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::ports::{PortAllocator, PortRange};

    async fn leg(alloc: &PortAllocator) -> LegSockets {
        let ip = std::net::Ipv4Addr::new(127, 0, 155, 60);
        let bind = || {
            crate::relay::mmsg::register_readable(std::net::UdpSocket::bind((ip, 0)).unwrap())
                .unwrap()
        };
        LegSockets {
            rtp: bind(),
            rtcp: bind(),
            _lease: alloc.lease().unwrap(),
        }
    }

    /// Memory per relayed call (user space): the task's future (its buffer, forwarder, plan and
    /// sockets), the shared counters and the plan kept in the watch channel. The target
    /// is 16 KiB per call; this keeps well under half of it. (Kernel socket buffers are not
    /// counted.)
    #[tokio::test]
    async fn a_session_costs_a_few_kilobytes() {
        let alloc = PortAllocator::new(PortRange::new(21000, 21003).unwrap());
        let legs = [leg(&alloc).await, leg(&alloc).await];
        let (_tx, rx) = watch::channel(SessionPlan::default());
        let count = Arc::new(watch::Sender::new(0));
        let fut = run(
            legs,
            rx,
            Arc::new(Shared::default()),
            Instant::now(),
            Running::new(count),
        );
        let task = std::mem::size_of_val(&fut);
        let shared = std::mem::size_of::<Shared>();
        let plan = std::mem::size_of::<SessionPlan>();
        println!("per session: task future {task} B, shared {shared} B, plan {plan} B");
        assert!(
            task + shared + plan <= 8 * 1024,
            "{task} + {shared} + {plan} bytes"
        );
        drop(fut);
        assert_eq!(
            alloc.pairs_in_use(),
            0,
            "dropping the task releases its ports"
        );
    }
}
