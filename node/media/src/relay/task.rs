//! The relay task of one session: waits until one of its four sockets is readable, drains it
//! into one reused buffer, lets the [`Forwarder`] decide, and sends with a non-blocking
//! `try_send_to`. Plan updates arrive on a watch channel; the task ends when the session handle
//! is dropped or closed, and its sockets and port leases go with it.
//!
//! Per packet: no allocation, no lock, no await between receive and send.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::Instant;

use super::forward::{Forwarder, Leg, Port, SessionPlan};
use super::ports::PortLease;
use crate::stats::SessionCounters;

/// Largest datagram relayed; a datagram that fills the buffer may have been truncated and is
/// dropped as malformed.
pub const MAX_DATAGRAM: usize = 2048;
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
    pub(crate) rtp: UdpSocket,
    pub(crate) rtcp: UdpSocket,
    pub(crate) _lease: PortLease,
}

impl LegSockets {
    fn socket(&self, port: Port) -> &UdpSocket {
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

pub(crate) async fn run(
    legs: [LegSockets; 2],
    mut plan: watch::Receiver<SessionPlan>,
    shared: Arc<Shared>,
    start: Instant,
    running: Running,
) {
    let mut fwd = Forwarder::new(plan.borrow_and_update().clone());
    let mut buf = [0u8; MAX_DATAGRAM];
    loop {
        // Unbiased: a busy socket cannot starve the others (select picks among ready branches
        // at random).
        let ready = tokio::select! {
            // `changed` marks the new plan seen: take it here.
            changed = plan.changed() => {
                if changed.is_err() {
                    break;
                }
                fwd.update(plan.borrow_and_update().clone());
                publish_latched(&fwd, &shared);
                None
            }
            r = legs[0].rtp.readable() => Some((Leg::A, Port::Rtp, r)),
            r = legs[0].rtcp.readable() => Some((Leg::A, Port::Rtcp, r)),
            r = legs[1].rtp.readable() => Some((Leg::B, Port::Rtp, r)),
            r = legs[1].rtcp.readable() => Some((Leg::B, Port::Rtcp, r)),
        };
        let Some((leg, port, ready)) = ready else {
            continue;
        };
        if let Err(e) = ready {
            // Only when the I/O driver is gone (runtime shutting down).
            tracing::debug!(error = %e, "media socket readiness");
            break;
        }
        drain(
            &legs, leg, port, &mut plan, &mut fwd, &shared, start, &mut buf,
        );
    }
    // Sockets closed and ports back in the allocator before the session stops counting as
    // running, so `Relay::wait_idle` and `Session::close` see the ports free.
    drop(legs);
    drop(running);
}

fn publish_latched(fwd: &Forwarder, shared: &Shared) {
    let now = [fwd.latched(Leg::A), fwd.latched(Leg::B)];
    let mut l = shared.latched.lock().unwrap_or_else(|p| p.into_inner());
    *l = now;
}

#[allow(clippy::too_many_arguments)]
fn drain(
    legs: &[LegSockets; 2],
    leg: Leg,
    port: Port,
    plan: &mut watch::Receiver<SessionPlan>,
    fwd: &mut Forwarder,
    shared: &Shared,
    start: Instant,
    buf: &mut [u8; MAX_DATAGRAM],
) {
    let sock = legs[leg.index()].socket(port);
    for _ in 0..DRAIN_BATCH {
        let (len, src) = match sock.try_recv_from(buf) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                // E.g. ECONNREFUSED from an earlier ICMP error: skip it and read on.
                tracing::debug!(error = %e, "media socket receive");
                continue;
            }
        };
        // A plan published before this packet was received applies to it (checked after the
        // receive, so a peer that sent after the update is never handled by the old plan; one
        // atomic load when unchanged). A closed channel is noticed by the task's select.
        if plan.has_changed().unwrap_or(false) {
            fwd.update(plan.borrow_and_update().clone());
            publish_latched(fwd, shared);
        }
        let counters = &shared.counters;
        if len == MAX_DATAGRAM {
            match leg {
                Leg::A => counters.from_a.record_malformed(),
                Leg::B => counters.from_b.record_malformed(),
            }
            continue;
        }
        let now_ms = start.elapsed().as_millis() as u64;
        let before = fwd.latched(leg);
        let route = fwd.on_datagram(leg, port, src, &mut buf[..len], counters, now_ms);
        if fwd.latched(leg) != before {
            publish_latched(fwd, shared);
        } else if route.is_none() && tracing::enabled!(tracing::Level::DEBUG) {
            let c = match leg {
                Leg::A => &counters.from_a,
                Leg::B => &counters.from_b,
            };
            let stray = c.snapshot().stray;
            if stray.is_power_of_two() {
                tracing::debug!(?leg, %src, stray, "media packet dropped (stray source, malformed or unroutable)");
            }
        }
        let Some(route) = route else {
            continue;
        };
        let out = legs[route.leg.index()].socket(route.port);
        if let Err(e) = out.try_send_to(&buf[..len], route.dest) {
            let c = match leg {
                Leg::A => &counters.from_a,
                Leg::B => &counters.from_b,
            };
            c.record_send_failed();
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
        LegSockets {
            rtp: UdpSocket::bind((ip, 0)).await.unwrap(),
            rtcp: UdpSocket::bind((ip, 0)).await.unwrap(),
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
