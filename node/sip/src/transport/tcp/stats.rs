//! What the TCP door refused or closed, by reason: the counters behind its metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Refusal;

/// What the TCP door refused or closed, and why (for metrics).
#[derive(Debug, Default)]
pub struct TcpStats {
    /// Connections reset at accept: unlisted peers held `max_inbound`.
    pub refused_inbound_full: AtomicU64,
    /// Connections reset at accept: the address held its cap.
    pub refused_per_ip: AtomicU64,
    /// Connections not opened: this node held `max_outbound`.
    pub refused_outbound_full: AtomicU64,
    /// Connections closed because a message did not arrive whole within `message_timeout`.
    pub closed_message_timeout: AtomicU64,
    /// Connections closed after `idle_timeout` without a complete message.
    pub closed_idle: AtomicU64,
    /// Connections reset because a write took longer than `write_timeout` (the peer did not read).
    pub closed_write_timeout: AtomicU64,
    /// Connections closed because the stream could not be framed.
    pub closed_framing: AtomicU64,
    /// Failed accepts (retried with backoff when not about one connection).
    pub accept_errors: AtomicU64,
}

impl TcpStats {
    /// Connections refused, by reason (labels for an exporter): `inbound_full`, `per_ip`,
    /// `outbound_full`.
    pub fn refused_by_reason(&self) -> [(&'static str, u64); 3] {
        [
            (
                "inbound_full",
                self.refused_inbound_full.load(Ordering::Relaxed),
            ),
            ("per_ip", self.refused_per_ip.load(Ordering::Relaxed)),
            (
                "outbound_full",
                self.refused_outbound_full.load(Ordering::Relaxed),
            ),
        ]
    }

    /// Connections the node closed, by reason (labels for an exporter): `message_timeout`, `idle`,
    /// `write_timeout`, `framing`.
    pub fn closed_by_reason(&self) -> [(&'static str, u64); 4] {
        [
            (
                "message_timeout",
                self.closed_message_timeout.load(Ordering::Relaxed),
            ),
            ("idle", self.closed_idle.load(Ordering::Relaxed)),
            (
                "write_timeout",
                self.closed_write_timeout.load(Ordering::Relaxed),
            ),
            ("framing", self.closed_framing.load(Ordering::Relaxed)),
        ]
    }

    pub(super) fn refused(&self, why: Refusal) {
        match why {
            Refusal::InboundFull => &self.refused_inbound_full,
            Refusal::PerIpFull => &self.refused_per_ip,
            Refusal::OutboundFull => &self.refused_outbound_full,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}
