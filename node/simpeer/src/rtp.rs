//! RTP for the simulated peers: one UDP socket per call leg, a 20 ms G.711 stream, and a check of
//! every packet that arrives.
//!
//! A caller's leg is a *source*: every 20 ms it sends a packet (sequence +1, timestamp +160, its own
//! SSRC) whose 160-byte payload carries the call's token (8 bytes), the send time (8 bytes, µs since
//! the Unix epoch), the sequence number (2 bytes) and a pattern derived from it. A gateway's leg is a
//! *reflector*: it answers each packet with one of its own (its own SSRC, sequence and timestamp,
//! the payload type it negotiated) carrying the same payload, to the address its SDP names. So a
//! caller that hears its echoes knows the media flows both ways; and each end checks the stream it
//! receives on its own:
//!
//! - sequence: a gap is loss, a number seen again is a duplicate, one behind the highest is
//!   reordering (a 64-packet window);
//! - timestamp: it must move by 160 per sequence step (checked on in-order packets);
//! - payload: the token must be the call's own (a packet of another call is *wrong-call*; the
//!   reflector learns the token from the first packet) and the pattern must be intact;
//! - time: the gaps between packets, the largest and each one longer than [`GAP_REPORTED`].
//!
//! A leg may speak SRTP (RFC 3711, keys by SDES): with its own key (what it puts in its SDP) and
//! the far end's (from the far end's SDP) it protects every packet it sends and unprotects every
//! packet it receives before any of the checks above, which therefore run on the decrypted
//! packets; a packet that does not authenticate is counted ([`LegStats::srtp_failed`]) and
//! dropped.
//!
//! The token check assumes the payload is carried untouched (no G.711 translation on the path).
//! Direction follows SDP: a leg sends only while its direction allows (`sendonly`/`inactive` for
//! hold). A leg stops when dropped.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use medpool_media::rtp::RtpPacket;
pub use medpool_media::sdp::Direction;
use medpool_media::sdp::Sdp;
use medpool_media::srtp::{CryptoAttribute, ReplayWindow, Srtp, choose_offer};
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

use crate::error::{SimpeerError, bind_udp};

/// The packet interval (20 ms G.711).
pub const PTIME: Duration = Duration::from_millis(20);
/// Payload bytes per packet (20 ms at 8 kHz).
pub const PAYLOAD_LEN: usize = 160;
/// A gap between two received packets at least this long is reported one by one.
pub const GAP_REPORTED: Duration = Duration::from_millis(200);
/// Gaps kept per leg, the latest (the largest is always kept in [`LegStats::max_gap_us`]).
pub const MAX_GAPS: usize = 32;
const HEADER_LEN: usize = 12;

/// What a leg does with the packets it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sends its own stream every 20 ms (a caller).
    Source,
    /// Answers each packet with one of its own (a gateway).
    Reflector,
}

/// One gap between two received packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// When the packet before the gap arrived (µs since the Unix epoch).
    pub from_us: u64,
    /// The gap's length (µs).
    pub len_us: u64,
}

/// What a leg saw and did so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegStats {
    /// Packets sent.
    pub sent: u64,
    /// RTP packets received (from any source).
    pub received: u64,
    /// Sequence numbers skipped (packets that never came).
    pub lost: u64,
    /// Packets whose sequence number had been seen.
    pub duplicates: u64,
    /// Packets that came after a later one.
    pub reordered: u64,
    /// In-order packets whose timestamp did not move by 160 per sequence step.
    pub timestamp_errors: u64,
    /// Packets carrying another call's token.
    pub wrong_call: u64,
    /// Packets whose payload was not the pattern (or too short to carry it).
    pub corrupt: u64,
    /// Datagrams that were not RTP.
    pub not_rtp: u64,
    /// Packets from an address other than the one SDP names (counted, still checked).
    pub other_source: u64,
    /// The payload type of the last packet.
    pub last_payload_type: Option<u8>,
    /// When the first and the last packet arrived (µs since the Unix epoch).
    pub first_rx_us: Option<u64>,
    /// See `first_rx_us`.
    pub last_rx_us: Option<u64>,
    /// The largest gap between two received packets (µs).
    pub max_gap_us: u64,
    /// The latest gaps of at least [`GAP_REPORTED`], in order (at most [`MAX_GAPS`]).
    pub gaps: Vec<Gap>,
    /// The last round trip a source measured from an echo (µs).
    pub last_rtt_us: Option<u64>,
    /// When the leg was stopped (its call ended; µs since the Unix epoch).
    pub stopped_us: Option<u64>,
    /// SRTP packets received that authenticated and were decrypted (counted in `received` too).
    pub srtp_received: u64,
    /// SRTP packets sent (protected with the leg's own key; counted in `sent` too).
    pub srtp_sent: u64,
    /// Datagrams that did not authenticate (or were replays) on an SRTP leg, dropped.
    pub srtp_failed: u64,
}

impl LegStats {
    /// Adds another leg's counts (gaps and times are not merged: the largest gap is kept).
    pub fn add(&mut self, o: &LegStats) {
        self.sent += o.sent;
        self.received += o.received;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.reordered += o.reordered;
        self.timestamp_errors += o.timestamp_errors;
        self.wrong_call += o.wrong_call;
        self.corrupt += o.corrupt;
        self.not_rtp += o.not_rtp;
        self.other_source += o.other_source;
        self.srtp_received += o.srtp_received;
        self.srtp_sent += o.srtp_sent;
        self.srtp_failed += o.srtp_failed;
        self.max_gap_us = self.max_gap_us.max(o.max_gap_us);
    }

    /// Packets that arrived damaged in some way a loopback path must never cause: duplicates,
    /// reordering, bad timestamps, another call's packets, corrupt payloads.
    pub fn defects(&self) -> u64 {
        self.duplicates + self.reordered + self.timestamp_errors + self.wrong_call + self.corrupt
    }
}

/// What SDP negotiated for a leg, seen from the leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Negotiated {
    /// Where packets go (`None`: nowhere yet).
    pub remote: Option<SocketAddr>,
    /// The leg's own direction.
    pub direction: Direction,
    /// The payload type it sends.
    pub payload_type: u8,
}

#[derive(Debug)]
struct Shared {
    neg: Negotiated,
    token: Option<u64>,
    stats: LegStats,
    /// Highest sequence seen (extended), and a bitmap of the 64 below it.
    highest: Option<(u64, u32)>,
    window: u64,
    /// The leg's own SRTP key (what its SDP carries), if it speaks SRTP.
    ours: Option<CryptoAttribute>,
    /// The contexts, once the far end's key is known too.
    srtp: Option<Contexts>,
}

/// A leg's SRTP contexts: the far end's key unprotects what arrives, the leg's own protects what
/// it sends.
struct Contexts {
    theirs: CryptoAttribute,
    ours: CryptoAttribute,
    rx: Srtp,
    tx: Srtp,
}

impl std::fmt::Debug for Contexts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Contexts")
            .field("tx", &self.tx)
            .finish_non_exhaustive()
    }
}

/// One call leg's RTP socket and its task.
#[derive(Debug)]
pub struct RtpLeg {
    local: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The pattern byte at payload offset `i` of the packet the source sent with sequence `seq`.
fn pattern(seq: u16, i: usize) -> u8 {
    (seq as usize).wrapping_mul(31).wrapping_add(i) as u8
}

/// Whether a payload's pattern matches the source sequence number it carries.
fn pattern_intact(payload: &[u8]) -> bool {
    let seq = u16::from_be_bytes([payload[16], payload[17]]);
    payload
        .iter()
        .enumerate()
        .skip(18)
        .all(|(i, &b)| b == pattern(seq, i))
}

impl RtpLeg {
    /// Binds a socket on `ip` (any port) and starts the leg. A source sends under `token`; a
    /// reflector learns the token from the first packet it receives.
    pub async fn start(ip: IpAddr, role: Role, token: Option<u64>) -> Result<RtpLeg, SimpeerError> {
        let sock = Arc::new(bind_udp(SocketAddr::new(ip, 0)).await?);
        let local = sock.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared {
            neg: Negotiated {
                remote: None,
                direction: Direction::SendRecv,
                payload_type: 0,
            },
            token,
            stats: LegStats::default(),
            highest: None,
            window: 0,
            ours: None,
            srtp: None,
        }));
        let ssrc = (u32::from(local.port()) << 16) ^ 0x1d2c_5a5a;
        let task = tokio::spawn(run(sock, Arc::clone(&shared), role, ssrc));
        Ok(RtpLeg {
            local,
            shared,
            task,
        })
    }

    /// The leg's address (the one its SDP names).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// What is negotiated now.
    pub fn negotiated(&self) -> Negotiated {
        lock(&self.shared).neg
    }

    /// Applies a new negotiation (a new offer or answer took effect).
    pub fn negotiate(&self, neg: Negotiated) {
        lock(&self.shared).neg = neg;
    }

    /// The leg's own SRTP key (what its SDP offers or answers), if it speaks SRTP.
    pub fn local_key(&self) -> Option<CryptoAttribute> {
        lock(&self.shared).ours.clone()
    }

    /// Sets the leg's own SRTP key (`None`: plain RTP); the contexts follow at
    /// [`RtpLeg::set_remote_key`].
    pub fn set_local_key(&self, ours: Option<CryptoAttribute>) {
        let mut s = lock(&self.shared);
        if ours.is_none() {
            s.srtp = None;
        }
        s.ours = ours;
    }

    /// The far end's SRTP key took effect (from its SDP): with the leg's own key, the leg speaks
    /// SRTP from now on (contexts kept when both keys are unchanged); `None` (or no key of its
    /// own): plain RTP.
    pub fn set_remote_key(&self, theirs: Option<&CryptoAttribute>) {
        let mut s = lock(&self.shared);
        let (Some(theirs), Some(ours)) = (theirs, s.ours.clone()) else {
            s.srtp = None;
            return;
        };
        if s.srtp
            .as_ref()
            .is_some_and(|c| c.theirs == *theirs && c.ours == ours)
        {
            return;
        }
        s.srtp = Some(Contexts {
            rx: Srtp::from_attribute(theirs, ReplayWindow::W128),
            tx: Srtp::from_attribute(&ours, ReplayWindow::W128),
            theirs: theirs.clone(),
            ours,
        });
    }

    /// Whether the leg speaks SRTP now (both keys known).
    pub fn is_secure(&self) -> bool {
        lock(&self.shared).srtp.is_some()
    }

    /// Stops sending (the call ended) and notes when; the counts stay readable.
    pub fn stop(&self) {
        let mut s = lock(&self.shared);
        s.neg.remote = None;
        s.stats.stopped_us.get_or_insert(now_us());
    }

    /// What it saw so far.
    pub fn stats(&self) -> LegStats {
        lock(&self.shared).stats.clone()
    }
}

impl Drop for RtpLeg {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(sock: Arc<UdpSocket>, shared: Arc<Mutex<Shared>>, role: Role, ssrc: u32) {
    let mut buf = vec![0u8; 2048];
    let mut out = vec![0u8; HEADER_LEN + PAYLOAD_LEN];
    // What goes on the wire: the packet, protected when the leg speaks SRTP.
    let mut wire = vec![0u8; 2048];
    let mut seq: u16 = (ssrc >> 3) as u16;
    let mut ts: u32 = ssrc.rotate_left(7);
    let mut ticker = tokio::time::interval(PTIME);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick(), if role == Role::Source => {
                let (dest, pt, token) = {
                    let s = lock(&shared);
                    (s.neg.remote.filter(|_| s.neg.direction.sends()), s.neg.payload_type, s.token)
                };
                let (Some(dest), Some(token)) = (dest, token) else { continue };
                seq = seq.wrapping_add(1);
                ts = ts.wrapping_add(PAYLOAD_LEN as u32);
                write_packet(&mut out, pt, seq, ts, ssrc, token, now_us(), None);
                let Some((n, protected)) = seal(&shared, &out, &mut wire) else { continue };
                if sock.send_to(&wire[..n], dest).await.is_ok() {
                    count_sent(&shared, protected);
                }
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                let Some((n, decrypted)) = open(&shared, &mut buf[..n]) else { continue };
                let echo = on_packet(&shared, &buf[..n], from, role, decrypted);
                if let Some((dest, pt, payload_ok)) = echo
                    && payload_ok
                {
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(PAYLOAD_LEN as u32);
                    let payload = RtpPacket::parse(&buf[..n]).map(|p| p.payload().to_vec()).unwrap_or_default();
                    write_packet(&mut out, pt, seq, ts, ssrc, 0, 0, Some(&payload));
                    let Some((n, protected)) = seal(&shared, &out, &mut wire) else { continue };
                    if sock.send_to(&wire[..n], dest).await.is_ok() {
                        count_sent(&shared, protected);
                    }
                }
            }
        }
    }
}

/// `packet` as it goes on the wire, in `wire`: protected when the leg speaks SRTP. Its length and
/// whether it was protected; `None` when it cannot be protected (not sent).
fn seal(shared: &Mutex<Shared>, packet: &[u8], wire: &mut [u8]) -> Option<(usize, bool)> {
    wire.get_mut(..packet.len())?.copy_from_slice(packet);
    let mut s = lock(shared);
    let Some(c) = s.srtp.as_mut() else {
        return Some((packet.len(), false));
    };
    let n = c.tx.protect_rtp(wire, packet.len()).ok()?;
    Some((n, true))
}

/// Counts a packet that left (both counters at once, so a reader never sees one without the other).
fn count_sent(shared: &Mutex<Shared>, protected: bool) {
    let mut s = lock(shared);
    s.stats.sent += 1;
    if protected {
        s.stats.srtp_sent += 1;
    }
}

/// A received datagram as the checks see it: unprotected in place when the leg speaks SRTP (its
/// plain length and `true`), or dropped (`None`, counted) when it does not authenticate. A
/// decrypted packet is counted by [`on_packet`], together with `received`, so that a reader of
/// the stats never sees one counter ahead of the other.
fn open(shared: &Mutex<Shared>, data: &mut [u8]) -> Option<(usize, bool)> {
    let mut s = lock(shared);
    let Some(c) = s.srtp.as_mut() else {
        return Some((data.len(), false));
    };
    match c.rx.unprotect_rtp(data) {
        Ok(n) => Some((n, true)),
        Err(_) => {
            s.stats.srtp_failed += 1;
            None
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn write_packet(
    out: &mut [u8],
    pt: u8,
    seq: u16,
    ts: u32,
    ssrc: u32,
    token: u64,
    sent_us: u64,
    copy: Option<&[u8]>,
) {
    out[0] = 0x80;
    out[1] = pt & 0x7f;
    out[2..4].copy_from_slice(&seq.to_be_bytes());
    out[4..8].copy_from_slice(&ts.to_be_bytes());
    out[8..12].copy_from_slice(&ssrc.to_be_bytes());
    let payload = &mut out[HEADER_LEN..];
    match copy {
        Some(p) => {
            let n = p.len().min(payload.len());
            payload[..n].copy_from_slice(&p[..n]);
            payload[n..].fill(0);
        }
        None => {
            payload[..8].copy_from_slice(&token.to_be_bytes());
            payload[8..16].copy_from_slice(&sent_us.to_be_bytes());
            payload[16..18].copy_from_slice(&seq.to_be_bytes());
            for (i, b) in payload.iter_mut().enumerate().skip(18) {
                *b = pattern(seq, i);
            }
        }
    }
}

/// Checks one received datagram; for a reflector whose direction sends, returns where its answer
/// goes, with which payload type, and whether the packet may be echoed.
fn on_packet(
    shared: &Mutex<Shared>,
    data: &[u8],
    from: SocketAddr,
    role: Role,
    decrypted: bool,
) -> Option<(SocketAddr, u8, bool)> {
    let mut s = lock(shared);
    let Ok(p) = RtpPacket::parse(data) else {
        s.stats.not_rtp += 1;
        return None;
    };
    let now = now_us();
    let st = &mut s.stats;
    st.received += 1;
    if decrypted {
        st.srtp_received += 1;
    }
    st.last_payload_type = Some(p.payload_type());
    if let Some(last) = st.last_rx_us {
        let gap = now.saturating_sub(last);
        st.max_gap_us = st.max_gap_us.max(gap);
        if gap >= GAP_REPORTED.as_micros() as u64 {
            if st.gaps.len() == MAX_GAPS {
                st.gaps.remove(0);
            }
            st.gaps.push(Gap {
                from_us: last,
                len_us: gap,
            });
        }
    }
    st.first_rx_us.get_or_insert(now);
    st.last_rx_us = Some(now);
    if s.neg.remote.is_some_and(|r| r != from) {
        s.stats.other_source += 1;
    }
    let payload = p.payload();
    // The payload: token, send time, pattern (a source's echoes carry its own payload back).
    let mut intact = payload.len() == PAYLOAD_LEN;
    if intact {
        let token = u64::from_be_bytes(payload[..8].try_into().unwrap_or([0; 8]));
        match s.token {
            None if role == Role::Reflector => s.token = Some(token),
            Some(ours) if ours != token => {
                s.stats.wrong_call += 1;
                intact = false;
            }
            _ => {}
        }
    } else {
        s.stats.corrupt += 1;
    }
    if intact && !pattern_intact(payload) {
        s.stats.corrupt += 1;
        intact = false;
    }
    if role == Role::Source && intact {
        let sent = u64::from_be_bytes(payload[8..16].try_into().unwrap_or([0; 8]));
        s.stats.last_rtt_us = Some(now.saturating_sub(sent));
    }
    sequence(&mut s, p.sequence(), p.timestamp());
    let echo = (role == Role::Reflector && s.neg.direction.sends())
        .then_some(s.neg.remote)
        .flatten()?;
    Some((echo, s.neg.payload_type, intact))
}

/// Sequence and timestamp bookkeeping for one received packet.
fn sequence(s: &mut Shared, seq: u16, ts: u32) {
    let Some((highest, last_ts)) = s.highest else {
        s.highest = Some((u64::from(seq) + (1 << 16), ts));
        s.window = 1;
        return;
    };
    // Extend the 16-bit number to the one closest to the highest seen.
    let base = highest & !0xffff;
    let ext = [base.wrapping_sub(1 << 16), base, base + (1 << 16)]
        .into_iter()
        .map(|b| b + u64::from(seq))
        .min_by_key(|&c| c.abs_diff(highest))
        .unwrap_or(highest);
    if ext > highest {
        let step = ext - highest;
        s.stats.lost += step - 1;
        let expect = last_ts.wrapping_add((step as u32).wrapping_mul(PAYLOAD_LEN as u32));
        if step < 1000 && ts != expect {
            s.stats.timestamp_errors += 1;
        }
        s.window = if step >= 64 {
            1
        } else {
            (s.window << step) | 1
        };
        s.highest = Some((ext, ts));
        return;
    }
    let back = highest - ext;
    if back >= 64 {
        s.stats.reordered += 1;
        return;
    }
    let bit = 1u64 << back;
    if s.window & bit != 0 {
        s.stats.duplicates += 1;
    } else {
        s.window |= bit;
        s.stats.reordered += 1;
        s.stats.lost = s.stats.lost.saturating_sub(1);
    }
}

/// The audio stream of an SDP body: where it goes, its direction and its first G.711 payload type
/// (0 or 8); `None` if the body has no audio stream with an address.
pub fn read_sdp(body: &[u8]) -> Option<(SocketAddr, Direction, Vec<u8>)> {
    let sdp = Sdp::parse(body).ok()?;
    let m = sdp.media.iter().find(|m| m.kind == "audio" && m.is_rtp())?;
    let ip = m.effective_connection(&sdp)?.ip()?;
    let pts = m.payload_types()?;
    Some((
        SocketAddr::new(ip, m.port),
        m.effective_direction(&sdp),
        pts,
    ))
}

/// The SRTP key an SDP body's audio stream carries (the first `a=crypto` line this
/// implementation supports) and whether its profile is `RTP/SAVP`.
pub fn read_crypto(body: &[u8]) -> (Option<CryptoAttribute>, bool) {
    let Ok(sdp) = Sdp::parse(body) else {
        return (None, false);
    };
    let Some(m) = sdp.media.iter().find(|m| m.kind == "audio" && m.is_rtp()) else {
        return (None, false);
    };
    let savp = m.proto.eq_ignore_ascii_case("RTP/SAVP");
    (choose_offer(m.crypto.iter().copied()), savp)
}

/// The direction a leg takes when it wants `ours` and the other end said `theirs`: it sends only if
/// both allow it, and receives likewise.
pub fn combine(ours: Direction, theirs: Direction) -> Direction {
    match (
        ours.sends() && theirs.receives(),
        ours.receives() && theirs.sends(),
    ) {
        (true, true) => Direction::SendRecv,
        (true, false) => Direction::SendOnly,
        (false, true) => Direction::RecvOnly,
        (false, false) => Direction::Inactive,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn shared() -> Shared {
        Shared {
            neg: Negotiated {
                remote: None,
                direction: Direction::SendRecv,
                payload_type: 0,
            },
            token: Some(7),
            stats: LegStats::default(),
            highest: None,
            window: 0,
            ours: None,
            srtp: None,
        }
    }

    #[test]
    fn sequence_counts_loss_duplicates_reordering_and_timestamps() {
        let mut s = shared();
        for (seq, ts) in [(65_534u16, 0u32), (65_535, 160), (0, 320), (2, 640)] {
            sequence(&mut s, seq, ts);
        }
        assert_eq!(s.stats.lost, 1, "1 is missing (across the wrap)");
        sequence(&mut s, 1, 480);
        assert_eq!((s.stats.lost, s.stats.reordered), (0, 1), "1 came late");
        sequence(&mut s, 1, 480);
        assert_eq!(s.stats.duplicates, 1);
        sequence(&mut s, 3, 999);
        assert_eq!(s.stats.timestamp_errors, 1);
        assert_eq!(s.stats.defects(), 3);
    }

    #[test]
    fn a_packet_of_another_call_is_counted_and_not_echoed() {
        let m = Mutex::new(shared());
        lock(&m).neg.remote = Some("127.0.0.1:9".parse().unwrap());
        let mut pkt = vec![0u8; HEADER_LEN + PAYLOAD_LEN];
        write_packet(&mut pkt, 0, 5, 800, 1, 8, 1, None);
        let from = "127.0.0.1:9".parse().unwrap();
        let r = on_packet(&m, &pkt, from, Role::Reflector, false);
        assert_eq!(r.map(|r| r.2), Some(false));
        assert_eq!(lock(&m).stats.wrong_call, 1);
        write_packet(&mut pkt, 0, 6, 960, 1, 7, 1, None);
        let r = on_packet(&m, &pkt, from, Role::Reflector, false);
        assert_eq!(
            r.map(|r| r.2),
            Some(true),
            "its own call's packet is echoed"
        );
        pkt[100] ^= 1;
        let r = on_packet(&m, &pkt, from, Role::Reflector, false);
        assert_eq!(r.map(|r| r.2), Some(false));
        assert_eq!(lock(&m).stats.corrupt, 1);
    }

    #[tokio::test]
    async fn a_source_hears_its_echoes_through_a_reflector() {
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let src = RtpLeg::start(ip, Role::Source, Some(42)).await.unwrap();
        let refl = RtpLeg::start(ip, Role::Reflector, None).await.unwrap();
        let neg = |remote| Negotiated {
            remote: Some(remote),
            direction: Direction::SendRecv,
            payload_type: 8,
        };
        src.negotiate(neg(refl.local_addr()));
        refl.negotiate(neg(src.local_addr()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (a, b) = (src.stats(), refl.stats());
        assert!(a.sent >= 10 && b.received >= 10, "{a:?} {b:?}");
        assert!(
            a.received + 2 >= b.received,
            "echoes come back: {a:?} {b:?}"
        );
        assert_eq!((a.defects(), b.defects(), a.lost, b.lost), (0, 0, 0, 0));
        assert_eq!(a.last_payload_type, Some(8));
        // Hold: the source stops, the reflector hears nothing more.
        src.negotiate(Negotiated {
            direction: Direction::Inactive,
            ..neg(refl.local_addr())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let held = refl.stats().received;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(refl.stats().received, held);
    }

    #[tokio::test]
    async fn an_srtp_source_and_reflector_check_the_decrypted_stream() {
        use medpool_media::srtp::{Mki, Suite};
        let ip: IpAddr = "127.0.162.40".parse().unwrap();
        let src = RtpLeg::start(ip, Role::Source, Some(42)).await.unwrap();
        let refl = RtpLeg::start(ip, Role::Reflector, None).await.unwrap();
        let mki = Some(Mki::new(1, 1).unwrap());
        let a = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80, mki).unwrap();
        let b = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80, mki).unwrap();
        src.set_local_key(Some(a.clone()));
        refl.set_local_key(Some(b.clone()));
        src.set_remote_key(Some(&b));
        refl.set_remote_key(Some(&a));
        assert!(src.is_secure() && refl.is_secure());
        let neg = |remote| Negotiated {
            remote: Some(remote),
            direction: Direction::SendRecv,
            payload_type: 0,
        };
        src.negotiate(neg(refl.local_addr()));
        refl.negotiate(neg(src.local_addr()));
        tokio::time::sleep(Duration::from_millis(400)).await;
        let (x, y) = (src.stats(), refl.stats());
        assert!(y.srtp_received >= 5 && x.srtp_received >= 5, "{x:?} {y:?}");
        assert_eq!(
            (x.defects(), y.defects(), x.srtp_failed, y.srtp_failed),
            (0, 0, 0, 0)
        );
        // The reflector forgets the source's key: nothing it receives authenticates any more.
        let wrong = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80, mki).unwrap();
        refl.set_remote_key(Some(&wrong));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(refl.stats().srtp_failed > 0);
    }
}
