//! What went over the wire: a raw IPv4 socket (`SOCK_RAW`, protocol UDP) that receives a copy of
//! every UDP datagram delivered on this machine, narrowed in the kernel by a classic BPF filter to
//! one loopback block (source or destination in `net/prefix`), so other tests' traffic never
//! reaches it. Each datagram is seen once (at delivery), with its addresses, and is read back as
//! SIP ([`SipMsg`]) or RTP ([`RtpPacket`]).
//!
//! A raw socket needs root (CAP_NET_RAW): without it [`Capture::start`] says so, and the tests
//! fail with that message (never skip silently). At most [`MAX_PACKETS`] datagrams are kept.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockFilter, Socket, Type};

/// The most datagrams one capture keeps (a 90 s call with two relayed RTP streams each way is
/// about 18 000); later ones are counted in [`Capture::dropped`] but not kept.
pub const MAX_PACKETS: usize = 200_000;

/// One UDP datagram.
#[derive(Clone, Debug)]
pub struct Packet {
    /// Since the capture started.
    pub at: Duration,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub payload: Vec<u8>,
}

/// A running capture (stopped on drop).
pub struct Capture {
    stop: Arc<AtomicBool>,
    packets: Arc<Mutex<Vec<Packet>>>,
    dropped: Arc<Mutex<u64>>,
    thread: Option<JoinHandle<()>>,
}

// Classic BPF opcodes (linux/filter.h).
const LD_W_ABS: u16 = 0x20;
const ALU_AND_K: u16 = 0x54;
const JMP_JEQ_K: u16 = 0x15;
const RET_K: u16 = 0x06;

impl Capture {
    /// Starts capturing UDP datagrams from or to `net/prefix` (e.g. 127.0.154.16/28).
    pub fn start(net: Ipv4Addr, prefix: u8) -> Result<Self, String> {
        let mask: u32 = if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(prefix))
        };
        let net = u32::from(net) & mask;
        let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::UDP)).map_err(|e| {
            format!(
                "cannot open a raw socket to capture SIP and RTP on the wire ({e}): these tests \
                 must run as root (CAP_NET_RAW), as CI and scripts/test.sh do"
            )
        })?;
        // Accept when the source (IP header offset 12) or the destination (16) is in the block.
        let filter = [
            SockFilter::new(LD_W_ABS, 0, 0, 12),
            SockFilter::new(ALU_AND_K, 0, 0, mask),
            SockFilter::new(JMP_JEQ_K, 3, 0, net),
            SockFilter::new(LD_W_ABS, 0, 0, 16),
            SockFilter::new(ALU_AND_K, 0, 0, mask),
            SockFilter::new(JMP_JEQ_K, 0, 1, net),
            SockFilter::new(RET_K, 0, 0, 0xffff),
            SockFilter::new(RET_K, 0, 0, 0),
        ];
        sock.attach_filter(&filter)
            .map_err(|e| format!("cannot attach the capture filter: {e}"))?;
        let _ = sock.set_recv_buffer_size(8 << 20);
        let sock: UdpSocket = sock.into();
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(|e| e.to_string())?;
        // A datagram already queued before the filter was attached may be outside the block.
        let in_block = move |ip: Ipv4Addr| u32::from(ip) & mask == net;
        let stop = Arc::new(AtomicBool::new(false));
        let packets = Arc::new(Mutex::new(Vec::new()));
        let dropped = Arc::new(Mutex::new(0));
        let thread = {
            let (stop, packets, dropped) = (
                Arc::clone(&stop),
                Arc::clone(&packets),
                Arc::clone(&dropped),
            );
            std::thread::spawn(move || {
                let start = Instant::now();
                let mut buf = vec![0u8; 65_536];
                while !stop.load(Ordering::Relaxed) {
                    let Ok(len) = sock.recv(&mut buf) else {
                        continue;
                    };
                    let Some(p) = parse_ipv4_udp(&buf[..len], start.elapsed()) else {
                        continue;
                    };
                    if !in_block(*p.src.ip()) && !in_block(*p.dst.ip()) {
                        continue;
                    }
                    let mut kept = packets.lock().unwrap();
                    if kept.len() < MAX_PACKETS {
                        kept.push(p);
                    } else {
                        *dropped.lock().unwrap() += 1;
                    }
                }
            })
        };
        Ok(Self {
            stop,
            packets,
            dropped,
            thread: Some(thread),
        })
    }

    /// Every datagram so far.
    pub fn packets(&self) -> Vec<Packet> {
        self.packets.lock().unwrap().clone()
    }

    /// Datagrams not kept (over [`MAX_PACKETS`]).
    pub fn dropped(&self) -> u64 {
        *self.dropped.lock().unwrap()
    }

    /// Every SIP message so far, in order.
    pub fn sip(&self) -> Vec<SipMsg> {
        self.packets
            .lock()
            .unwrap()
            .iter()
            .filter_map(SipMsg::parse)
            .collect()
    }

    /// Every RTP packet so far (RTCP left out), in order.
    pub fn rtp(&self) -> Vec<RtpPacket> {
        self.packets
            .lock()
            .unwrap()
            .iter()
            .filter_map(RtpPacket::parse)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An IPv4 packet carrying UDP → a [`Packet`].
fn parse_ipv4_udp(b: &[u8], at: Duration) -> Option<Packet> {
    if b.len() < 20 || b[0] >> 4 != 4 || b[9] != 17 {
        return None;
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    let udp = b.get(ihl..)?;
    if udp.len() < 8 {
        return None;
    }
    let ip = |o: usize| Ipv4Addr::new(b[o], b[o + 1], b[o + 2], b[o + 3]);
    let port = |o: usize| u16::from_be_bytes([udp[o], udp[o + 1]]);
    let udp_len = usize::from(port(4)).clamp(8, udp.len());
    Some(Packet {
        at,
        src: SocketAddrV4::new(ip(12), port(0)),
        dst: SocketAddrV4::new(ip(16), port(2)),
        payload: udp[8..udp_len].to_vec(),
    })
}

/// One SIP message seen on the wire.
#[derive(Clone, Debug)]
pub struct SipMsg {
    pub at: Duration,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    /// The start line.
    pub first_line: String,
    /// The whole message as text.
    pub text: String,
}

impl SipMsg {
    fn parse(p: &Packet) -> Option<Self> {
        let text = std::str::from_utf8(&p.payload).ok()?;
        let first = text.split("\r\n").next()?;
        let is_sip = first.starts_with("SIP/2.0 ") || first.ends_with(" SIP/2.0");
        if !is_sip {
            return None;
        }
        Some(Self {
            at: p.at,
            src: p.src,
            dst: p.dst,
            first_line: first.to_owned(),
            text: text.to_owned(),
        })
    }

    /// The method of a request; `None` for a response.
    pub fn method(&self) -> Option<&str> {
        if self.first_line.starts_with("SIP/2.0") {
            None
        } else {
            self.first_line.split(' ').next()
        }
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        self.first_line
            .strip_prefix("SIP/2.0 ")
            .and_then(|r| r.get(..3))
            .and_then(|c| c.parse().ok())
    }

    /// The first value of header `name` (or its compact form).
    pub fn header(&self, name: &str, compact: Option<&str>) -> Option<&str> {
        for line in self.text.split("\r\n").skip(1) {
            if line.is_empty() {
                break;
            }
            let Some((n, v)) = line.split_once(':') else {
                continue;
            };
            let n = n.trim();
            if n.eq_ignore_ascii_case(name) || compact.is_some_and(|c| n.eq_ignore_ascii_case(c)) {
                return Some(v.trim());
            }
        }
        None
    }

    pub fn call_id(&self) -> &str {
        self.header("Call-ID", Some("i")).unwrap_or("")
    }

    /// The method named in CSeq.
    pub fn cseq_method(&self) -> &str {
        self.header("CSeq", None)
            .and_then(|c| c.split_whitespace().nth(1))
            .unwrap_or("")
    }

    /// The body (after the blank line).
    pub fn body(&self) -> &str {
        self.text.split_once("\r\n\r\n").map_or("", |(_, b)| b)
    }

    /// The SDP direction attribute of the first audio stream (`sendrecv` when none is given).
    pub fn sdp_direction(&self) -> Option<&'static str> {
        let body = self.body();
        if !body.contains("m=audio") {
            return None;
        }
        for d in ["sendonly", "recvonly", "inactive", "sendrecv"] {
            if body.lines().any(|l| l.trim() == format!("a={d}")) {
                return Some(d);
            }
        }
        Some("sendrecv")
    }

    /// (c= address, m=audio port) of the SDP body.
    pub fn sdp_media(&self) -> Option<(Ipv4Addr, u16)> {
        let body = self.body();
        let c = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))?
            .trim()
            .parse()
            .ok()?;
        let port = body
            .lines()
            .find_map(|l| l.trim().strip_prefix("m=audio "))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some((c, port))
    }

    /// The payload type the SDP maps to `telephone-event/8000`.
    pub fn telephone_event_pt(&self) -> Option<u8> {
        self.body().lines().find_map(|l| {
            let rest = l.trim().strip_prefix("a=rtpmap:")?;
            let (pt, enc) = rest.split_once(' ')?;
            enc.eq_ignore_ascii_case("telephone-event/8000")
                .then(|| pt.parse().ok())
                .flatten()
        })
    }

    /// "METHOD" for a request, "STATUS METHOD" (e.g. "200 INVITE") for a response.
    pub fn label(&self) -> String {
        match (self.method(), self.status()) {
            (Some(m), _) => m.to_owned(),
            (None, Some(s)) => format!("{s} {}", self.cseq_method()),
            _ => self.first_line.clone(),
        }
    }
}

/// One RTP packet seen on the wire.
#[derive(Clone, Debug)]
pub struct RtpPacket {
    pub at: Duration,
    pub src: SocketAddrV4,
    pub dst: SocketAddrV4,
    pub pt: u8,
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    /// The payload (after the header, CSRCs and extension).
    pub payload: Vec<u8>,
}

impl RtpPacket {
    fn parse(p: &Packet) -> Option<Self> {
        let b = &p.payload;
        if b.len() < 12 || b[0] >> 6 != 2 || (192..=223).contains(&b[1]) {
            return None;
        }
        // SIP and STUN never start with version bits 2 followed by this; SIP text starts with a
        // letter (0x41..0x7a: version bits 1), so a text datagram is never taken for RTP.
        let cc = usize::from(b[0] & 0x0f);
        let mut off = 12 + 4 * cc;
        if b[0] & 0x10 != 0 {
            let ext = b.get(off + 2..off + 4)?;
            off += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
        }
        let payload = b.get(off..)?.to_vec();
        Some(Self {
            at: p.at,
            src: p.src,
            dst: p.dst,
            pt: b[1] & 0x7f,
            marker: b[1] & 0x80 != 0,
            seq: u16::from_be_bytes([b[2], b[3]]),
            timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
            payload,
        })
    }

    /// The RFC 4733 event (digit 0-9 = 0-9, `*` = 10, `#` = 11) and end bit, when this packet
    /// carries a telephone-event of payload type `pt`.
    pub fn dtmf(&self, pt: u8) -> Option<(u8, bool)> {
        (self.pt == pt && self.payload.len() >= 4)
            .then(|| (self.payload[0], self.payload[1] & 0x80 != 0))
    }
}

/// The RFC 4733 event code of a DTMF digit.
pub fn dtmf_event(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => Some(digit as u8 - b'0'),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        _ => None,
    }
}
