//! The node's media port range and the allocator of RTP/RTCP port pairs over it.
//!
//! A pair is an even RTP port and the odd port after it for RTCP (RFC 3550 §11); a leg that uses
//! rtcp-mux still holds its pair, so the count of legs a range serves does not depend on the SDP.
//! The allocator is bounded by the range: when every pair is out, [`PortAllocator::allocate`]
//! says so with [`PortError::Exhausted`] (the caller refuses the new call; established calls keep
//! theirs). Released pairs go to the back of the queue, so a just-freed port is reused last and
//! late packets of an ended call rarely reach a new one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

/// Port range or allocation errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    /// The range is not `LOW-HIGH` with numbers.
    #[error("media port range is not LOW-HIGH")]
    Syntax,
    /// The range holds no even/odd pair (or LOW > HIGH, or LOW is 0).
    #[error("media port range {0}-{1} holds no RTP/RTCP pair")]
    Empty(u16, u16),
    /// Every pair is allocated.
    #[error("every media port pair is in use")]
    Exhausted,
}

/// An inclusive range of UDP ports for media.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    low: u16,
    high: u16,
}

impl PortRange {
    /// A range `low..=high`; the first pair starts at the first even port.
    pub fn new(low: u16, high: u16) -> Result<Self, PortError> {
        let r = PortRange { low, high };
        if low == 0 || low > high || r.pairs() == 0 {
            return Err(PortError::Empty(low, high));
        }
        Ok(r)
    }

    /// Parses `20000-29999`.
    pub fn parse(s: &str) -> Result<Self, PortError> {
        let (l, h) = s.trim().split_once('-').ok_or(PortError::Syntax)?;
        let l = l.trim().parse().map_err(|_| PortError::Syntax)?;
        let h = h.trim().parse().map_err(|_| PortError::Syntax)?;
        PortRange::new(l, h)
    }

    fn first_even(&self) -> u32 {
        u32::from(self.low) + u32::from(self.low % 2)
    }

    /// Number of RTP/RTCP pairs in the range.
    pub fn pairs(&self) -> usize {
        let first = self.first_even();
        let high = u32::from(self.high);
        if first + 1 > high {
            return 0;
        }
        (high - first).div_ceil(2) as usize
    }

    /// The lowest port.
    pub fn low(&self) -> u16 {
        self.low
    }

    /// The highest port.
    pub fn high(&self) -> u16 {
        self.high
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

/// An allocated pair; give it back with [`PortAllocator::release`] (or hold it in a
/// [`PortLease`], which does so on drop).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortPair {
    /// The even RTP port.
    pub rtp: u16,
}

impl PortPair {
    /// The RTCP port (`rtp + 1`).
    pub fn rtcp(&self) -> u16 {
        self.rtp + 1
    }
}

#[derive(Debug)]
struct State {
    free: VecDeque<u16>,
    total: usize,
}

/// Hands out port pairs from a range; cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct PortAllocator {
    range: PortRange,
    state: Arc<Mutex<State>>,
}

impl PortAllocator {
    /// Every pair of `range` free.
    pub fn new(range: PortRange) -> Self {
        let first = range.first_even();
        let free: VecDeque<u16> = (0..range.pairs())
            .map(|i| (first + 2 * i as u32) as u16)
            .collect();
        PortAllocator {
            range,
            state: Arc::new(Mutex::new(State {
                total: free.len(),
                free,
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (each operation is
        // one push or pop), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The range.
    pub fn range(&self) -> PortRange {
        self.range
    }

    /// Takes the free pair that has been free longest.
    pub fn allocate(&self) -> Result<PortPair, PortError> {
        self.lock()
            .free
            .pop_front()
            .map(|rtp| PortPair { rtp })
            .ok_or(PortError::Exhausted)
    }

    /// Takes a pair and returns it on drop.
    pub fn lease(&self) -> Result<PortLease, PortError> {
        Ok(PortLease {
            pair: self.allocate()?,
            allocator: self.clone(),
        })
    }

    /// Gives a pair back (to the back of the queue). A pair not from this range, or already free,
    /// is ignored.
    pub fn release(&self, pair: PortPair) {
        let mut st = self.lock();
        let first = self.range.first_even();
        let p = u32::from(pair.rtp);
        let in_range =
            p >= first && p < u32::from(self.range.high) && (p - first).is_multiple_of(2);
        if in_range && st.free.len() < st.total && !st.free.contains(&pair.rtp) {
            st.free.push_back(pair.rtp);
        }
    }

    /// Pairs free now.
    pub fn free_pairs(&self) -> usize {
        self.lock().free.len()
    }

    /// Pairs in use now.
    pub fn pairs_in_use(&self) -> usize {
        let st = self.lock();
        st.total - st.free.len()
    }
}

/// A pair that goes back to its allocator when dropped.
#[derive(Debug)]
pub struct PortLease {
    pair: PortPair,
    allocator: PortAllocator,
}

impl PortLease {
    /// The leased pair.
    pub fn pair(&self) -> PortPair {
        self.pair
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.allocator.release(self.pair);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_counts_pairs() {
        let r = PortRange::parse("20000-29999").unwrap();
        assert_eq!(r.pairs(), 5000);
        assert_eq!(r.to_string(), "20000-29999");
        assert_eq!(
            PortRange::parse(" 20001 - 20004 ").unwrap().pairs(),
            1,
            "20002/20003 only"
        );
        assert_eq!(PortRange::parse("20000-20001").unwrap().pairs(), 1);
        assert_eq!(
            PortRange::parse("20000-20000"),
            Err(PortError::Empty(20000, 20000))
        );
        assert_eq!(
            PortRange::parse("20001-20002"),
            Err(PortError::Empty(20001, 20002))
        );
        assert_eq!(
            PortRange::parse("30000-20000"),
            Err(PortError::Empty(30000, 20000))
        );
        assert_eq!(PortRange::parse("0-10"), Err(PortError::Empty(0, 10)));
        assert_eq!(PortRange::parse("20000"), Err(PortError::Syntax));
        assert_eq!(PortRange::parse("a-b"), Err(PortError::Syntax));
        assert_eq!(PortRange::parse("20000-70000"), Err(PortError::Syntax));
        assert_eq!(PortRange::new(65534, 65535).unwrap().pairs(), 1);
    }

    #[test]
    fn hands_out_even_odd_pairs_until_full_then_reuses_released_ones_last() {
        let a = PortAllocator::new(PortRange::new(20000, 20007).unwrap());
        let pairs: Vec<PortPair> = (0..4).map(|_| a.allocate().unwrap()).collect();
        assert_eq!(
            pairs.iter().map(|p| p.rtp).collect::<Vec<_>>(),
            vec![20000, 20002, 20004, 20006]
        );
        assert!(
            pairs
                .iter()
                .all(|p| p.rtp % 2 == 0 && p.rtcp() == p.rtp + 1)
        );
        assert_eq!(a.allocate(), Err(PortError::Exhausted));
        assert_eq!((a.free_pairs(), a.pairs_in_use()), (0, 4));
        a.release(pairs[1]);
        a.release(pairs[1]);
        a.release(PortPair { rtp: 20001 });
        a.release(PortPair { rtp: 40000 });
        assert_eq!(
            a.free_pairs(),
            1,
            "double, odd and foreign releases are ignored"
        );
        assert_eq!(a.allocate(), Ok(pairs[1]));
        a.release(pairs[0]);
        a.release(pairs[2]);
        assert_eq!(a.allocate(), Ok(pairs[0]), "oldest free first");
    }

    #[test]
    fn a_lease_gives_its_pair_back_on_drop() {
        let a = PortAllocator::new(PortRange::new(20000, 20001).unwrap());
        let l = a.lease().unwrap();
        assert_eq!(l.pair().rtp, 20000);
        assert_eq!(a.lease().unwrap_err(), PortError::Exhausted);
        drop(l);
        assert_eq!(a.lease().unwrap().pair().rtp, 20000);
        assert_eq!(a.free_pairs(), 1);
    }
}
