//! The UDP listener: one socket, one receive loop. Each datagram is parsed on its own; nothing a peer
//! sends can stop the loop.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::{
    FrontDoorStats, Inbound, Screened, Transport, TransportConfig, overload_answer, screen,
};
use crate::SipMessage;

/// Socket buffer size asked for (the kernel caps it at net.core.rmem_max / wmem_max): the default
/// ~200 KiB drops datagrams in bursts of a few thousand calls per second.
pub const SOCKET_BUFFER: usize = 8 * 1024 * 1024;

/// Binds the SIP UDP socket with large buffers (bursts of thousands of calls per second).
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let domain = if addr.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let sock = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    // Best effort: a smaller buffer than asked for is not an error.
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    sock.bind(&addr.into())?;
    sock.set_nonblocking(true)?;
    UdpSocket::from_std(sock.into())
}

/// Receives datagrams until `shutdown` turns true.
pub async fn receive_loop(
    socket: Arc<UdpSocket>,
    config: TransportConfig,
    tx: mpsc::Sender<Inbound>,
    stats: Arc<FrontDoorStats>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    // One buffer larger than any legal datagram; a datagram longer than the limit is still read whole so
    // it can be answered 513.
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, source) = tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP port-unreachable surfaces here on Linux as ConnectionRefused: not fatal.
                    tracing::debug!(error = %e, "udp receive error");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let data = &buf[..n];
        if data.iter().all(|&b| b == b'\r' || b == b'\n') {
            continue; // keep-alive
        }
        let parsed = SipMessage::parse_datagram(Bytes::copy_from_slice(data), &config.limits);
        if let Ok(m) = &parsed {
            stats.traffic.count_in(m);
        }
        match screen(parsed, source) {
            Screened::Pass(msg) => {
                let is_request = msg.is_request();
                let inbound = Inbound {
                    msg,
                    source,
                    transport: Transport::Udp,
                };
                if let Err(
                    mpsc::error::TrySendError::Full(inbound)
                    | mpsc::error::TrySendError::Closed(inbound),
                ) = tx.try_send(inbound)
                {
                    // Only a new call is refused with 503; a request in a dialog (BYE, re-INVITE, ACK)
                    // is dropped instead, so its sender retransmits it and the call is not hurt.
                    if is_request && super::is_new_call(&inbound.msg) {
                        stats.overloaded.fetch_add(1, Ordering::Relaxed);
                        if let Some(answer) =
                            overload_answer(&inbound.msg, source, config.retry_after_secs)
                        {
                            let _ = socket.try_send_to(&answer, reply_target(&inbound.msg, source));
                        }
                    } else {
                        stats.dropped_responses.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Screened::Answer(bytes) => {
                stats.rejected.fetch_add(1, Ordering::Relaxed);
                // The answer's top Via tells where it goes; recompute from the parsed answer.
                let dest = SipMessage::parse(bytes.clone())
                    .ok()
                    .and_then(|m| {
                        m.top_via()
                            .and_then(|v| v.ok())
                            .map(|v| super::response_target(&v, source))
                    })
                    .unwrap_or(source);
                let _ = socket.try_send_to(&bytes, dest);
            }
            Screened::Drop(why) => {
                stats.parse_errors.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%source, why, "dropped datagram");
            }
        }
    }
}

fn reply_target(msg: &SipMessage, source: SocketAddr) -> SocketAddr {
    match msg.top_via() {
        Some(Ok(v)) => super::response_target(&v, source),
        _ => source,
    }
}
