//! Per-SSRC SRTP state: the packet index (ROC·2^16 + SEQ) estimated from a 16-bit sequence
//! number by RFC 3711 §3.3.1 (and Appendix A), and the replay window of §3.3.2 over that index.
//! The same state guards both directions: a receiver refuses replayed and too-old packets; a
//! sender refuses to encrypt an index twice (keystream reuse), as libsrtp does. Pure state: no
//! clock, no I/O, no allocation.

use super::error::SrtpError;

/// The replay window's width in packets (RFC 3711 §3.3.2 requires at least 64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReplayWindow {
    /// 64 packets.
    #[default]
    W64,
    /// 128 packets.
    W128,
}

impl ReplayWindow {
    fn width(self) -> u64 {
        match self {
            ReplayWindow::W64 => 64,
            ReplayWindow::W128 => 128,
        }
    }
}

/// The largest SRTP index (48 bits).
const MAX_INDEX: u64 = (1 << 48) - 1;

/// One SSRC's index and replay state, for SRTP (48-bit index estimated from SEQ) or SRTCP (the
/// explicit 31-bit index, see [`IndexState::check`]).
#[derive(Debug, Clone)]
pub(crate) struct IndexState {
    /// The highest index authenticated so far (`None` before the first packet).
    highest: Option<u64>,
    /// Bit n set: index `highest - n` was seen (bit 0 is `highest` itself).
    seen: u128,
    width: u64,
}

impl IndexState {
    pub(crate) fn new(window: ReplayWindow) -> IndexState {
        IndexState {
            highest: None,
            seen: 0,
            width: window.width(),
        }
    }

    /// RFC 3711 §3.3.1: the index of a packet with sequence number `seq`, guessing the ROC from
    /// the highest sequence number seen (s_l) and the current ROC. `TooOld` when the guess is
    /// ROC - 1 with ROC 0 (a packet from before the stream began), or past 2^48.
    pub(crate) fn estimate(&self, seq: u16) -> Result<u64, SrtpError> {
        let Some(highest) = self.highest else {
            return Ok(u64::from(seq));
        };
        let roc = highest >> 16;
        let s_l = (highest & 0xFFFF) as u16;
        let v = if s_l < 0x8000 {
            if seq > s_l && seq - s_l > 0x8000 {
                roc.checked_sub(1).ok_or(SrtpError::TooOld)?
            } else {
                roc
            }
        } else if s_l - 0x8000 > seq {
            roc + 1
        } else {
            roc
        };
        let index = (v << 16) | u64::from(seq);
        if index > MAX_INDEX {
            return Err(SrtpError::TooOld);
        }
        Ok(index)
    }

    /// The replay check of §3.3.2 (before authentication; nothing changes).
    pub(crate) fn check(&self, index: u64) -> Result<(), SrtpError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if index > highest {
            return Ok(());
        }
        let delta = highest - index;
        if delta >= self.width {
            return Err(SrtpError::TooOld);
        }
        if self.seen & (1u128 << delta) != 0 {
            return Err(SrtpError::Replayed);
        }
        Ok(())
    }

    /// Records `index` as received (after authentication) or sent; call only after
    /// [`IndexState::check`] accepted it.
    pub(crate) fn accept(&mut self, index: u64) {
        match self.highest {
            None => {
                self.highest = Some(index);
                self.seen = 1;
            }
            Some(highest) if index > highest => {
                let shift = index - highest;
                self.seen = if shift >= 128 { 0 } else { self.seen << shift };
                self.seen |= 1;
                self.highest = Some(index);
            }
            Some(highest) => self.seen |= 1u128 << (highest - index),
        }
    }

    /// The roll-over counter (the high 32 bits of the highest index).
    pub(crate) fn roc(&self) -> u32 {
        self.highest.map_or(0, |h| (h >> 16) as u32)
    }

    /// The highest index recorded.
    #[cfg(test)]
    pub(crate) fn highest(&self) -> Option<u64> {
        self.highest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut IndexState, seq: u16) -> Result<u64, SrtpError> {
        let i = s.estimate(seq)?;
        s.check(i)?;
        s.accept(i);
        Ok(i)
    }

    #[test]
    fn roc_follows_several_wraps_with_reordering_around_each() {
        let mut s = IndexState::new(ReplayWindow::W64);
        for expected in 65_000u64..65_000 + 3 * 65_536 + 1000 {
            assert_eq!(feed(&mut s, expected as u16), Ok(expected));
        }
        // 65000 + 3·65536 + 999 is past the fourth wrap.
        assert_eq!(s.roc(), 4);
        // Around the next wrap: 65534, 0, 65535 (late, from before the wrap), 1.
        let mut s = IndexState::new(ReplayWindow::W64);
        assert_eq!(feed(&mut s, 65_534), Ok(65_534));
        assert_eq!(feed(&mut s, 0), Ok(65_536));
        assert_eq!(s.roc(), 1);
        assert_eq!(feed(&mut s, 65_535), Ok(65_535), "late packet keeps ROC 0");
        assert_eq!(s.roc(), 1);
        assert_eq!(feed(&mut s, 1), Ok(65_537));
        // A replay of the late packet and of one after the wrap.
        assert_eq!(feed(&mut s, 65_535), Err(SrtpError::Replayed));
        assert_eq!(feed(&mut s, 0), Err(SrtpError::Replayed));
        assert_eq!(s.highest(), Some(65_537));
    }

    #[test]
    fn replay_and_too_old_in_both_window_widths() {
        for (window, width) in [(ReplayWindow::W64, 64u16), (ReplayWindow::W128, 128)] {
            let mut s = IndexState::new(window);
            for seq in 1000..1300 {
                if seq % 7 != 0 {
                    feed(&mut s, seq).unwrap();
                }
            }
            assert_eq!(feed(&mut s, 1299), Err(SrtpError::Replayed));
            assert_eq!(feed(&mut s, 1290), Err(SrtpError::Replayed));
            // Missed ones inside the window are still welcome, once.
            let inside = (1299 - width + 1).div_ceil(7) * 7;
            assert!(1299 - inside < width && inside % 7 == 0, "{inside}");
            assert_eq!(feed(&mut s, inside), Ok(u64::from(inside)));
            assert_eq!(feed(&mut s, inside), Err(SrtpError::Replayed));
            assert_eq!(feed(&mut s, 1299 - width), Err(SrtpError::TooOld));
            assert_eq!(feed(&mut s, 1000), Err(SrtpError::TooOld));
        }
    }

    #[test]
    fn packet_from_before_the_first_is_too_old_not_a_negative_roc() {
        let mut s = IndexState::new(ReplayWindow::W64);
        feed(&mut s, 10).unwrap();
        // 65000 is "behind" 10 across a wrap, which would need ROC -1.
        assert_eq!(s.estimate(65_000), Err(SrtpError::TooOld));
    }

    #[test]
    fn a_big_jump_clears_the_window() {
        let mut s = IndexState::new(ReplayWindow::W128);
        feed(&mut s, 5).unwrap();
        feed(&mut s, 5 + 20_000).unwrap();
        assert_eq!(feed(&mut s, 5 + 19_990), Ok(5 + 19_990));
        assert_eq!(feed(&mut s, 5), Err(SrtpError::TooOld));
    }
}
