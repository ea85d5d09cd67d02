//! The inbound queue split into lanes: one bounded queue per consumer task, a message's lane chosen
//! by a hash of its Call-ID ([`lane_of`]). Every message of one call leg takes the same lane, so
//! the consumer of that lane sees them in the order they arrived (a CANCEL never overtakes its
//! INVITE), while the legs of different calls are taken by several tasks at once, on several
//! cores. With one lane it is the single queue it replaces.

use tokio::sync::mpsc;

use super::Inbound;
use crate::SipMessage;

/// The most lanes a listener may have.
pub const MAX_LANES: usize = 64;

/// The lane of `msg` among `lanes`: FNV-1a of its Call-ID (lane 0 without one, or with one lane).
/// The B2BUA routes the events its transaction layer raises for a message with the same function,
/// so they stay with the task that took the message.
pub fn lane_of(msg: &SipMessage, lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let Some(Ok(call_id)) = msg.call_id() else {
        return 0;
    };
    lane_of_call_id(call_id, lanes)
}

/// The lane of a Call-ID among `lanes` (see [`lane_of`]).
pub fn lane_of_call_id(call_id: &[u8], lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in call_id {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV leaves the high bits of short, similar keys alike: a finaliser (MurmurHash3's) mixes
    // every bit into every other, then multiply-shift spreads them over `lanes` without a division.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    ((u128::from(h) * lanes as u128) >> 64) as usize
}

/// The sending side of the lanes (cheap to clone: every listener holds one).
#[derive(Clone, Debug)]
pub struct InboundTx {
    lanes: std::sync::Arc<[mpsc::Sender<Inbound>]>,
}

/// `lanes` queues (at least 1, at most [`MAX_LANES`]) of `capacity` messages each.
pub fn channel(lanes: usize, capacity: usize) -> (InboundTx, Vec<mpsc::Receiver<Inbound>>) {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..lanes.clamp(1, MAX_LANES))
        .map(|_| mpsc::channel(capacity.max(1)))
        .unzip();
    (InboundTx { lanes: txs.into() }, rxs)
}

impl InboundTx {
    /// How many lanes there are.
    pub fn lanes(&self) -> usize {
        self.lanes.len()
    }

    /// The queue `msg` goes to.
    pub fn lane_for(&self, msg: &SipMessage) -> &mpsc::Sender<Inbound> {
        &self.lanes[lane_of(msg, self.lanes.len())]
    }

    /// The capacity of one lane.
    pub fn max_capacity(&self) -> usize {
        self.lanes[0].max_capacity()
    }

    /// Whether some lane is more than half full (the listener is under load).
    pub fn loaded(&self) -> bool {
        self.lanes
            .iter()
            .any(|l| l.capacity() < l.max_capacity() / 2)
    }

    /// Queues `inbound` on its lane, if there is room; the error gives the message back, as
    /// `mpsc::Sender::try_send` does (so the caller can answer 503 from it).
    #[allow(clippy::result_large_err)]
    pub fn try_send(&self, inbound: Inbound) -> Result<(), mpsc::error::TrySendError<Inbound>> {
        self.lane_for(&inbound.msg).try_send(inbound)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::Transport;

    fn invite(call_id: &str) -> Inbound {
        let m = format!(
            "INVITE sip:1@h SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK{call_id}\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\n\r\n"
        );
        Inbound {
            msg: SipMessage::parse(m.into_bytes()).unwrap(),
            source: "10.0.0.1:5060".parse().unwrap(),
            transport: Transport::Udp,
            tls: None,
        }
    }

    #[test]
    fn one_call_one_lane_in_order_and_calls_spread_over_all_lanes() {
        let (tx, mut rxs) = channel(4, 1024);
        assert_eq!(tx.lanes(), 4);
        for i in 0..400 {
            tx.try_send(invite(&format!("call-{i}"))).unwrap();
            // A second message of the same call lands behind the first, on the same lane.
            tx.try_send(invite(&format!("call-{i}"))).unwrap();
        }
        let mut per_lane = Vec::new();
        for rx in &mut rxs {
            let mut got = Vec::new();
            while let Ok(m) = rx.try_recv() {
                got.push(m.msg.call_id().unwrap().unwrap().to_vec());
            }
            for pair in got.chunks(2) {
                assert_eq!(
                    pair[0], pair[1],
                    "a call's messages were split or reordered"
                );
            }
            for call in &got {
                assert_eq!(lane_of_call_id(call, 4), per_lane.len());
            }
            per_lane.push(got.len());
        }
        assert_eq!(per_lane.iter().sum::<usize>(), 800);
        assert!(
            per_lane.iter().all(|&n| n >= 100),
            "lanes badly spread: {per_lane:?}"
        );
    }

    #[test]
    fn a_full_lane_refuses_and_the_others_still_take() {
        let (tx, _rxs) = channel(2, 2);
        let a = invite("a");
        let lane_a = lane_of(&a.msg, 2);
        assert!(!tx.loaded());
        tx.try_send(a).unwrap();
        tx.try_send(invite("a")).unwrap();
        assert!(tx.loaded());
        // Find a call on the other lane, and one on the same.
        let other = (0..)
            .map(|i| invite(&format!("x{i}")))
            .find(|m| lane_of(&m.msg, 2) != lane_a)
            .unwrap();
        let same = (0..)
            .map(|i| invite(&format!("y{i}")))
            .find(|m| lane_of(&m.msg, 2) == lane_a)
            .unwrap();
        assert!(matches!(
            tx.try_send(same),
            Err(mpsc::error::TrySendError::Full(_))
        ));
        tx.try_send(other).unwrap();
    }

    #[test]
    fn one_lane_is_the_single_queue() {
        assert_eq!(lane_of_call_id(b"anything", 1), 0);
        let (tx, rxs) = channel(0, 8);
        assert_eq!((tx.lanes(), rxs.len(), tx.max_capacity()), (1, 1, 8));
    }
}
