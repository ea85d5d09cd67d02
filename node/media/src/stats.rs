//! Per-session, per-direction media counters: packets, bytes, loss by sequence gaps (with
//! wrap-around), duplicates and late (reordered) packets, stray sources, RTCP, last packet time.
//!
//! Two parts: [`SeqTracker`] is a pure state machine owned by the relay task (sequence number in,
//! [`SeqEvent`] out; no clock inside); [`DirectionCounters`] are plain relaxed atomics the relay
//! task writes and anyone (admin API, metrics) reads through [`DirectionCounters::snapshot`]
//! without locking the data path. Time comes in as milliseconds since the session started.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Width of the window of recent sequence numbers kept to tell a late packet from a duplicate.
pub const SEQ_WINDOW: u16 = 64;
/// A forward jump larger than this is a restart of the stream, not loss (RFC 3550 A.1's
/// MAX_DROPOUT).
pub const MAX_DROPOUT: u16 = 3000;

/// What one RTP packet's sequence number says, relative to what was seen before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEvent {
    /// The first packet of a stream (or of a new SSRC).
    First,
    /// Next in order after `lost` missing packets (0 when contiguous).
    InOrder {
        /// Packets skipped by this one.
        lost: u16,
    },
    /// An older packet not seen before: one counted lost has arrived late.
    Late,
    /// A packet already seen.
    Duplicate,
    /// A jump too large to be loss or reordering: the stream restarted there.
    Restart,
}

/// Tracks one direction's RTP sequence numbers (one SSRC at a time).
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    ssrc: Option<u32>,
    highest: u16,
    /// Bit i set: sequence number `highest - i` has been seen.
    seen: u64,
}

impl SeqTracker {
    /// A tracker that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Classifies a packet's sequence number and remembers it.
    pub fn observe(&mut self, ssrc: u32, seq: u16) -> SeqEvent {
        if self.ssrc != Some(ssrc) {
            self.ssrc = Some(ssrc);
            self.highest = seq;
            self.seen = 1;
            return SeqEvent::First;
        }
        let ahead = seq.wrapping_sub(self.highest);
        if ahead == 0 {
            return SeqEvent::Duplicate;
        }
        if ahead <= MAX_DROPOUT {
            self.seen = if ahead >= 64 { 0 } else { self.seen << ahead };
            self.seen |= 1;
            self.highest = seq;
            return SeqEvent::InOrder { lost: ahead - 1 };
        }
        let behind = self.highest.wrapping_sub(seq);
        if behind < SEQ_WINDOW {
            let bit = 1u64 << behind;
            if self.seen & bit != 0 {
                return SeqEvent::Duplicate;
            }
            self.seen |= bit;
            return SeqEvent::Late;
        }
        self.highest = seq;
        self.seen = 1;
        SeqEvent::Restart
    }
}

/// One direction's counters (packets arriving on one leg, forwarded to the other).
#[derive(Debug, Default)]
pub struct DirectionCounters {
    packets: AtomicU64,
    bytes: AtomicU64,
    lost: AtomicU64,
    duplicates: AtomicU64,
    late: AtomicU64,
    restarts: AtomicU64,
    stray: AtomicU64,
    malformed: AtomicU64,
    rtcp_packets: AtomicU64,
    rtcp_bytes: AtomicU64,
    translated: AtomicU64,
    latches: AtomicU64,
    unroutable: AtomicU64,
    send_failed: AtomicU64,
    srtp_auth_failed: AtomicU64,
    srtp_replayed: AtomicU64,
    /// Milliseconds since the session started at the last accepted packet, plus one (0 = never).
    last_packet: AtomicU64,
}

/// A copy of one direction's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirectionSnapshot {
    /// RTP packets accepted (from the latched source).
    pub packets: u64,
    /// Their bytes (whole datagrams).
    pub bytes: u64,
    /// Packets missing from the sequence (gaps, minus those that arrived late).
    pub lost: u64,
    /// Packets seen twice.
    pub duplicates: u64,
    /// Packets that arrived after a later one (reordered).
    pub late: u64,
    /// Sequence restarts (new SSRC or a jump too large to be loss).
    pub restarts: u64,
    /// Datagrams from a source other than the latched one, dropped.
    pub stray: u64,
    /// Datagrams that were neither RTP nor RTCP, dropped.
    pub malformed: u64,
    /// RTCP packets relayed.
    pub rtcp_packets: u64,
    /// Their bytes.
    pub rtcp_bytes: u64,
    /// RTP packets whose payload was translated (G.711).
    pub translated: u64,
    /// Times the leg latched onto a source address (the first packet, and after each re-plan).
    pub latches: u64,
    /// Accepted packets dropped because the other leg had no address to send to yet.
    pub unroutable: u64,
    /// Packets the socket refused to send (buffer full or an error), dropped.
    pub send_failed: u64,
    /// SRTP/SRTCP packets whose authentication tag (or MKI) did not match the leg's key, dropped.
    pub srtp_auth_failed: u64,
    /// SRTP/SRTCP packets replayed or behind the replay window, dropped.
    pub srtp_replayed: u64,
    /// Milliseconds since the session started at the last accepted packet (RTP or RTCP).
    pub last_packet_ms: Option<u64>,
}

impl DirectionCounters {
    /// Counts an accepted RTP packet of `len` bytes.
    pub fn record_rtp(&self, len: usize, event: SeqEvent, now_ms: u64) {
        self.packets.fetch_add(1, Relaxed);
        self.bytes.fetch_add(len as u64, Relaxed);
        match event {
            SeqEvent::First | SeqEvent::InOrder { lost: 0 } => {}
            SeqEvent::InOrder { lost } => {
                self.lost.fetch_add(u64::from(lost), Relaxed);
            }
            SeqEvent::Late => {
                self.late.fetch_add(1, Relaxed);
                // It was counted lost when the gap opened; never go below zero.
                let _ = self
                    .lost
                    .fetch_update(Relaxed, Relaxed, |l| Some(l.saturating_sub(1)));
            }
            SeqEvent::Duplicate => {
                self.duplicates.fetch_add(1, Relaxed);
            }
            SeqEvent::Restart => {
                self.restarts.fetch_add(1, Relaxed);
            }
        }
        self.touch(now_ms);
    }

    /// Counts an RTCP packet of `len` bytes.
    pub fn record_rtcp(&self, len: usize, now_ms: u64) {
        self.rtcp_packets.fetch_add(1, Relaxed);
        self.rtcp_bytes.fetch_add(len as u64, Relaxed);
        self.touch(now_ms);
    }

    /// Counts a datagram from a stray source.
    pub fn record_stray(&self) {
        self.stray.fetch_add(1, Relaxed);
    }

    /// Counts a malformed datagram.
    pub fn record_malformed(&self) {
        self.malformed.fetch_add(1, Relaxed);
    }

    /// Counts a translated packet.
    pub fn record_translated(&self) {
        self.translated.fetch_add(1, Relaxed);
    }

    /// Counts a latch onto a source address.
    pub fn record_latch(&self) {
        self.latches.fetch_add(1, Relaxed);
    }

    /// Counts a packet with nowhere to go.
    pub fn record_unroutable(&self) {
        self.unroutable.fetch_add(1, Relaxed);
    }

    /// Counts a packet the socket did not send.
    pub fn record_send_failed(&self) {
        self.send_failed.fetch_add(1, Relaxed);
    }

    /// Counts an SRTP/SRTCP packet that failed authentication.
    pub fn record_srtp_auth_failed(&self) {
        self.srtp_auth_failed.fetch_add(1, Relaxed);
    }

    /// Counts a replayed (or too old) SRTP/SRTCP packet.
    pub fn record_srtp_replayed(&self) {
        self.srtp_replayed.fetch_add(1, Relaxed);
    }

    fn touch(&self, now_ms: u64) {
        self.last_packet
            .fetch_max(now_ms.saturating_add(1), Relaxed);
    }

    /// Reads every counter (each one atomically; the set is not a single instant).
    pub fn snapshot(&self) -> DirectionSnapshot {
        let last = self.last_packet.load(Relaxed);
        DirectionSnapshot {
            packets: self.packets.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            lost: self.lost.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            late: self.late.load(Relaxed),
            restarts: self.restarts.load(Relaxed),
            stray: self.stray.load(Relaxed),
            malformed: self.malformed.load(Relaxed),
            rtcp_packets: self.rtcp_packets.load(Relaxed),
            rtcp_bytes: self.rtcp_bytes.load(Relaxed),
            translated: self.translated.load(Relaxed),
            latches: self.latches.load(Relaxed),
            unroutable: self.unroutable.load(Relaxed),
            send_failed: self.send_failed.load(Relaxed),
            srtp_auth_failed: self.srtp_auth_failed.load(Relaxed),
            srtp_replayed: self.srtp_replayed.load(Relaxed),
            last_packet_ms: last.checked_sub(1),
        }
    }
}

impl DirectionSnapshot {
    /// How long ago (ms) the last packet arrived, given the session's clock now; `None` if none.
    pub fn last_packet_age_ms(&self, now_ms: u64) -> Option<u64> {
        self.last_packet_ms.map(|t| now_ms.saturating_sub(t))
    }
}

/// Both directions of a session, named by the leg the packets arrive on.
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// Packets arriving on leg A (forwarded to B).
    pub from_a: DirectionCounters,
    /// Packets arriving on leg B (forwarded to A).
    pub from_b: DirectionCounters,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u16]) -> (Vec<SeqEvent>, DirectionSnapshot) {
        let mut t = SeqTracker::new();
        let c = DirectionCounters::default();
        let mut events = Vec::new();
        for (i, &s) in seqs.iter().enumerate() {
            let e = t.observe(7, s);
            c.record_rtp(172, e, i as u64 * 20);
            events.push(e);
        }
        (events, c.snapshot())
    }

    #[test]
    fn contiguous_stream_counts_no_loss() {
        let seqs: Vec<u16> = (0..1000).collect();
        let (_, s) = run(&seqs);
        assert_eq!(
            (s.packets, s.bytes, s.lost, s.duplicates, s.late),
            (1000, 172_000, 0, 0, 0)
        );
        assert_eq!(s.last_packet_ms, Some(999 * 20));
        assert_eq!(s.last_packet_age_ms(999 * 20 + 5), Some(5));
    }

    #[test]
    fn gaps_across_the_wrap_count_as_loss() {
        let (e, s) = run(&[65533, 65534, 1, 2, 5]);
        assert_eq!(e[0], SeqEvent::First);
        assert_eq!(e[2], SeqEvent::InOrder { lost: 2 }, "65535 and 0 missing");
        assert_eq!(e[4], SeqEvent::InOrder { lost: 2 });
        assert_eq!(s.lost, 4);
    }

    #[test]
    fn a_late_packet_undoes_its_loss_and_a_repeat_is_a_duplicate() {
        let (e, s) = run(&[10, 11, 13, 12, 12, 13, 14]);
        assert_eq!(e[3], SeqEvent::Late);
        assert_eq!(e[4], SeqEvent::Duplicate);
        assert_eq!(e[5], SeqEvent::Duplicate);
        assert_eq!((s.lost, s.late, s.duplicates, s.packets), (0, 1, 2, 7));
        // Reordering across the wrap.
        let (e, s) = run(&[65534, 0, 65535, 1]);
        assert_eq!(e[2], SeqEvent::Late);
        assert_eq!((s.lost, s.late), (0, 1));
    }

    #[test]
    fn a_huge_jump_or_a_new_ssrc_is_a_restart_not_loss() {
        let (e, s) = run(&[100, 101, 30000, 30001]);
        assert_eq!(e[2], SeqEvent::Restart);
        assert_eq!(e[3], SeqEvent::InOrder { lost: 0 });
        assert_eq!((s.lost, s.restarts), (0, 1));
        let mut t = SeqTracker::new();
        assert_eq!(t.observe(1, 5), SeqEvent::First);
        assert_eq!(t.observe(2, 900), SeqEvent::First);
        assert_eq!(t.observe(2, 901), SeqEvent::InOrder { lost: 0 });
        // Older than the window: cannot tell, so the stream restarts there.
        let (e, _) = run(&[1000, 1001, 1001 - SEQ_WINDOW - 5]);
        assert_eq!(e[2], SeqEvent::Restart);
    }

    #[test]
    fn a_big_gap_clears_the_window() {
        let (e, s) = run(&[1, 200, 150, 150]);
        assert_eq!(e[1], SeqEvent::InOrder { lost: 198 });
        assert_eq!(e[2], SeqEvent::Late);
        assert_eq!(e[3], SeqEvent::Duplicate);
        assert_eq!(s.lost, 197);
    }

    #[test]
    fn other_counters() {
        let c = DirectionCounters::default();
        assert_eq!(c.snapshot().last_packet_ms, None);
        c.record_stray();
        c.record_malformed();
        c.record_translated();
        c.record_rtcp(52, 0);
        c.record_latch();
        c.record_unroutable();
        c.record_send_failed();
        let s = c.snapshot();
        assert_eq!((s.latches, s.unroutable, s.send_failed), (1, 1, 1));
        assert_eq!(
            (
                s.stray,
                s.malformed,
                s.translated,
                s.rtcp_packets,
                s.rtcp_bytes
            ),
            (1, 1, 1, 1, 52)
        );
        assert_eq!(s.last_packet_ms, Some(0));
        assert_eq!(s.packets, 0);
    }
}
