//! Who may hold a TCP connection: the counts and caps checked when a connection is accepted or
//! opened, as a pure table (no sockets, no clock) so the rules are tested directly.
//!
//! Three budgets, kept apart so that one cannot starve another:
//! - **inbound, unlisted peers**: at most [`TcpLimits::max_inbound`] together and
//!   [`TcpLimits::max_inbound_per_ip`] from one address (one /64 for IPv6, which a single host
//!   usually holds whole);
//! - **inbound, listed peers** (the addresses the user names, e.g. its trunks'; see
//!   [`Admission::set_listed`]): [`TcpLimits::max_inbound_per_listed_ip`] each, outside the
//!   unlisted total, so a flood from many addresses never locks a trunk out;
//! - **outbound**: [`TcpLimits::max_outbound`] connections this node opens, so no inbound flood can
//!   stop it from reaching its gateways.
//!
//! Bounds: the per-address table has one entry per address with an open inbound connection (entries
//! leave at zero), so at most `max_inbound` + (listed addresses × their cap) entries; the listed set
//! is as large as the user makes it.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

/// The TCP limits of a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// Inbound connections from unlisted peers, all together.
    pub max_inbound: usize,
    /// Inbound connections from one unlisted address (an IPv6 /64).
    pub max_inbound_per_ip: usize,
    /// Inbound connections from one listed address (outside `max_inbound`).
    pub max_inbound_per_listed_ip: usize,
    /// Connections this node opens.
    pub max_outbound: usize,
    /// Time a message may take to arrive whole, from its first byte.
    pub message_timeout: Duration,
    /// A connection with no complete message for this long is closed (bytes of an unfinished
    /// message do not count).
    pub idle_timeout: Duration,
    /// Time one write may take; a peer that does not read for this long loses its connection.
    pub write_timeout: Duration,
    /// Time to open an outgoing connection.
    pub connect_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            max_inbound: 4096,
            max_inbound_per_ip: 64,
            max_inbound_per_listed_ip: 1024,
            max_outbound: 1024,
            message_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            write_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Unlisted peers hold `max_inbound` connections.
    #[error("inbound connection limit reached")]
    InboundFull,
    /// This address holds its per-address cap.
    #[error("per-address connection limit reached")]
    PerIpFull,
    /// This node holds `max_outbound` connections it opened.
    #[error("outbound connection limit reached")]
    OutboundFull,
}

/// A place in one of the budgets, given back with [`Admission::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// An accepted connection (`listed`: counted outside the unlisted total).
    Inbound {
        /// The per-address key.
        key: IpAddr,
        /// Whether the peer was listed when admitted.
        listed: bool,
    },
    /// A connection this node opened.
    Outbound,
}

/// The counts of open connections against the limits.
#[derive(Debug, Default)]
pub struct Admission {
    unlisted: usize,
    listed_open: usize,
    outbound: usize,
    per_ip: HashMap<IpAddr, usize>,
    listed: HashSet<IpAddr>,
}

/// The address connections are counted under: the IPv4 address (also when written as IPv4-mapped
/// IPv6), or the /64 of an IPv6 address.
pub fn ip_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl Admission {
    /// Replaces the listed addresses. Connections open now keep the budget they were admitted in.
    pub fn set_listed(&mut self, ips: impl IntoIterator<Item = IpAddr>) {
        self.listed = ips.into_iter().map(ip_key).collect();
    }

    /// Admits a connection accepted from `ip`, or says why not.
    pub fn admit_inbound(&mut self, ip: IpAddr, limits: &TcpLimits) -> Result<Slot, Refusal> {
        let key = ip_key(ip);
        let listed = self.listed.contains(&key);
        let held = self.per_ip.get(&key).copied().unwrap_or(0);
        let cap = if listed {
            limits.max_inbound_per_listed_ip
        } else {
            limits.max_inbound_per_ip
        };
        if held >= cap {
            return Err(Refusal::PerIpFull);
        }
        if !listed && self.unlisted >= limits.max_inbound {
            return Err(Refusal::InboundFull);
        }
        *self.per_ip.entry(key).or_insert(0) += 1;
        if listed {
            self.listed_open += 1;
        } else {
            self.unlisted += 1;
        }
        Ok(Slot::Inbound { key, listed })
    }

    /// Admits a connection this node is about to open, or says why not.
    pub fn admit_outbound(&mut self, limits: &TcpLimits) -> Result<Slot, Refusal> {
        if self.outbound >= limits.max_outbound {
            return Err(Refusal::OutboundFull);
        }
        self.outbound += 1;
        Ok(Slot::Outbound)
    }

    /// Gives a slot back (its connection closed, or its connect failed).
    pub fn release(&mut self, slot: Slot) {
        match slot {
            Slot::Outbound => self.outbound = self.outbound.saturating_sub(1),
            Slot::Inbound { key, listed } => {
                if listed {
                    self.listed_open = self.listed_open.saturating_sub(1);
                } else {
                    self.unlisted = self.unlisted.saturating_sub(1);
                }
                if let Some(n) = self.per_ip.get_mut(&key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_ip.remove(&key);
                    }
                }
            }
        }
    }

    /// Inbound connections open (listed and unlisted peers).
    pub fn inbound(&self) -> usize {
        self.unlisted + self.listed_open
    }

    /// Outbound connections open (or being opened).
    pub fn outbound(&self) -> usize {
        self.outbound
    }

    /// Addresses with an open inbound connection.
    pub fn addresses(&self) -> usize {
        self.per_ip.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn limits() -> TcpLimits {
        TcpLimits {
            max_inbound: 4,
            max_inbound_per_ip: 2,
            max_inbound_per_listed_ip: 3,
            max_outbound: 2,
            ..TcpLimits::default()
        }
    }

    #[test]
    fn one_address_gets_its_cap_and_no_more() {
        let mut a = Admission::default();
        let l = limits();
        let s1 = a.admit_inbound(ip("10.0.0.1"), &l).unwrap();
        a.admit_inbound(ip("10.0.0.1"), &l).unwrap();
        assert_eq!(a.admit_inbound(ip("10.0.0.1"), &l), Err(Refusal::PerIpFull));
        // Another address still gets in.
        a.admit_inbound(ip("10.0.0.2"), &l).unwrap();
        a.release(s1);
        a.admit_inbound(ip("10.0.0.1"), &l).unwrap();
        assert_eq!(a.inbound(), 3);
    }

    #[test]
    fn unlisted_peers_share_a_total_that_listed_peers_are_outside_of() {
        let mut a = Admission::default();
        let l = limits();
        a.set_listed([ip("10.0.0.9")]);
        for host in ["10.0.0.1", "10.0.0.2"] {
            for _ in 0..2 {
                a.admit_inbound(ip(host), &l).unwrap();
            }
        }
        assert_eq!(
            a.admit_inbound(ip("10.0.0.3"), &l),
            Err(Refusal::InboundFull)
        );
        for _ in 0..3 {
            a.admit_inbound(ip("10.0.0.9"), &l).unwrap();
        }
        assert_eq!(a.admit_inbound(ip("10.0.0.9"), &l), Err(Refusal::PerIpFull));
        assert_eq!(a.inbound(), 7);
    }

    #[test]
    fn outbound_has_its_own_budget() {
        let mut a = Admission::default();
        let l = limits();
        for i in 1..=4 {
            a.admit_inbound(ip(&format!("10.0.0.{i}")), &l).unwrap();
        }
        let o = a.admit_outbound(&l).unwrap();
        a.admit_outbound(&l).unwrap();
        assert_eq!(a.admit_outbound(&l), Err(Refusal::OutboundFull));
        a.release(o);
        assert_eq!(a.admit_outbound(&l), Ok(Slot::Outbound));
    }

    #[test]
    fn a_slot_goes_back_to_the_budget_it_came_from() {
        let mut a = Admission::default();
        let l = limits();
        let before = a.admit_inbound(ip("10.0.0.9"), &l).unwrap();
        a.set_listed([ip("10.0.0.9")]);
        let after = a.admit_inbound(ip("10.0.0.9"), &l).unwrap();
        assert_eq!(
            (before, after),
            (
                Slot::Inbound {
                    key: ip("10.0.0.9"),
                    listed: false
                },
                Slot::Inbound {
                    key: ip("10.0.0.9"),
                    listed: true
                }
            )
        );
        a.release(before);
        a.release(after);
        assert_eq!((a.inbound(), a.addresses()), (0, 0), "the table empties");
    }

    #[test]
    fn ipv6_is_counted_by_its_64() {
        assert_eq!(ip_key(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(ip_key(ip("::ffff:10.0.0.1")), ip("10.0.0.1"));
        let mut a = Admission::default();
        let l = limits();
        a.admit_inbound(ip("2001:db8::1"), &l).unwrap();
        a.admit_inbound(ip("2001:db8::2"), &l).unwrap();
        assert_eq!(
            a.admit_inbound(ip("2001:db8::3"), &l),
            Err(Refusal::PerIpFull)
        );
    }
}
