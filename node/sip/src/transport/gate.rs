//! The source gate of the SIP front door: which sources are served, and how many new requests each
//! may start, decided on the receive path before anything is queued.
//!
//! This crate knows nothing of trunks. Its user (the B2BUA) describes the sources it talks to as a
//! [`SourcePolicy`] (exact `ip:port` sources and any-port IPs, each with a [`Budget`], and what an
//! unknown source gets) and publishes it through the shared [`SourceGate`]; the receive loop keeps
//! its own copy and looks at the gate's generation counter once per datagram (one atomic load; the
//! lock is taken only when the policy changed). The per-source token buckets live in the loop's
//! [`Door`], which nobody else touches: no lock on the receive path.
//!
//! [`Door`] is a pure core: every decision takes the time as a `Duration` since a fixed start.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How many new requests a source may start: `rate` a second, in bursts of up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Tokens gained a second (at least 1).
    pub rate: u32,
    /// Tokens held at most (at least 1).
    pub burst: u32,
}

/// What a request from a source nobody described gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnknownPolicy {
    /// Nothing: no parse, no answer (the node is invisible to a scanner).
    Drop,
    /// A 403, within a small global budget ([`FORBIDDEN_BUDGET`]), and none while the node is
    /// under load or flooded by unknown sources.
    Reject,
}

/// Who a source is, as the policy says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceClass {
    /// A described source: index of its entry in the policy (its budget).
    Known(usize),
    /// Anyone may send, without limit (a policy nobody set: see [`SourcePolicy::open`]).
    Unlimited,
    /// Nobody we talk to.
    Unknown(UnknownPolicy),
}

/// The sources a node talks to, with their budgets. Built by the user, read by the receive loops.
///
/// One map lookup per datagram: every described IP has one `IpEntry` (its exact ports, its
/// any-port entry, whether it is unlimited).
#[derive(Debug, Clone)]
pub struct SourcePolicy {
    ips: HashMap<IpAddr, IpEntry>,
    budgets: Vec<Budget>,
    unknown: UnknownPolicy,
    open: bool,
}

/// What the policy says about one IP.
#[derive(Debug, Clone, Default)]
struct IpEntry {
    /// Exact ports and their entries.
    ports: Vec<(u16, usize)>,
    /// Unlimited on any port (a trusted forwarder).
    unlimited: bool,
    /// The entry of any other port.
    any_port: Option<usize>,
}

impl SourcePolicy {
    /// Everyone is served without limit: what transports started without a policy use.
    pub fn open() -> Self {
        Self {
            open: true,
            ..Self::closed(UnknownPolicy::Reject)
        }
    }

    /// Nobody is served until added; unknown sources get `unknown`.
    pub fn closed(unknown: UnknownPolicy) -> Self {
        Self {
            ips: HashMap::new(),
            budgets: Vec::new(),
            unknown,
            open: false,
        }
    }

    /// Serves the source `addr` (exactly that IP and port) with `budget`. A second entry for the
    /// same address replaces the first.
    pub fn add_exact(&mut self, addr: SocketAddr, budget: Budget) {
        let i = self.push(budget);
        let e = self.ips.entry(addr.ip().to_canonical()).or_default();
        e.ports.retain(|(p, _)| *p != addr.port());
        e.ports.push((addr.port(), i));
    }

    /// Serves `ip` on any source port with `budget` (an exact entry for one of its ports wins).
    pub fn add_any_port(&mut self, ip: IpAddr, budget: Budget) {
        let i = self.push(budget);
        self.ips.entry(ip.to_canonical()).or_default().any_port = Some(i);
    }

    /// Serves `ip` on any port with no limit (a trusted forwarder in front of the node, which
    /// carries many callers' traffic).
    pub fn add_unlimited(&mut self, ip: IpAddr) {
        self.ips.entry(ip.to_canonical()).or_default().unlimited = true;
    }

    fn push(&mut self, budget: Budget) -> usize {
        self.budgets.push(Budget {
            rate: budget.rate.max(1),
            burst: budget.burst.max(1),
        });
        self.budgets.len() - 1
    }

    /// The budget of entry `i`.
    pub fn budget(&self, i: usize) -> Option<Budget> {
        self.budgets.get(i).copied()
    }

    /// What unknown sources get.
    pub fn unknown(&self) -> UnknownPolicy {
        self.unknown
    }

    /// Whether any source on `ip` may be served (an open policy, or an entry for the IP on some
    /// port): what a TCP accept can tell before it knows which requests come.
    pub fn knows_ip(&self, ip: IpAddr) -> bool {
        self.open || self.ips.contains_key(&ip.to_canonical())
    }

    /// Who `source` is.
    pub fn classify(&self, source: SocketAddr) -> SourceClass {
        let Some(e) = self.ips.get(&source.ip().to_canonical()) else {
            return if self.open {
                SourceClass::Unlimited
            } else {
                SourceClass::Unknown(self.unknown)
            };
        };
        if let Some((_, i)) = e.ports.iter().find(|(p, _)| *p == source.port()) {
            SourceClass::Known(*i)
        } else if e.unlimited {
            SourceClass::Unlimited
        } else if let Some(i) = e.any_port {
            SourceClass::Known(i)
        } else if self.open {
            SourceClass::Unlimited
        } else {
            SourceClass::Unknown(self.unknown)
        }
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

/// The policy shared between its writer (the user, on a configuration change) and the receive
/// loops, which notice a change by its generation.
#[derive(Debug)]
pub struct SourceGate {
    policy: RwLock<Arc<SourcePolicy>>,
    generation: AtomicU64,
}

impl Default for SourceGate {
    fn default() -> Self {
        Self::new(SourcePolicy::open())
    }
}

impl SourceGate {
    /// A gate with `policy`.
    pub fn new(policy: SourcePolicy) -> Self {
        Self {
            policy: RwLock::new(Arc::new(policy)),
            generation: AtomicU64::new(0),
        }
    }

    /// Replaces the policy; receive loops pick it up with their next datagram (their buckets
    /// start full again).
    pub fn set(&self, policy: SourcePolicy) {
        match self.policy.write() {
            Ok(mut p) => *p = Arc::new(policy),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(policy),
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The current policy.
    pub fn current(&self) -> Arc<SourcePolicy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Bumped on every [`SourceGate::set`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

const MICRO: u64 = 1_000_000;

/// A token bucket with the time passed in (any monotonic `Duration` since a fixed start); it
/// starts full, and time going backwards adds nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bucket {
    rate: u64,
    cap: u64,
    micro: u64,
    last: Duration,
}

impl Bucket {
    /// A full bucket of `budget.burst` tokens gaining `budget.rate` a second.
    pub fn new(budget: Budget, now: Duration) -> Self {
        let cap = u64::from(budget.burst.max(1)) * MICRO;
        Self {
            rate: u64::from(budget.rate.max(1)),
            cap,
            micro: cap,
            last: now,
        }
    }

    fn refill(&mut self, now: Duration) {
        let Some(elapsed) = now.checked_sub(self.last) else {
            return;
        };
        self.last = now;
        let gained = elapsed.as_nanos() * u128::from(self.rate) / 1_000;
        let total = u128::from(self.micro) + gained;
        self.micro = u64::try_from(total.min(u128::from(self.cap))).unwrap_or(self.cap);
    }

    /// Takes a token if one is there at `now`.
    pub fn try_take(&mut self, now: Duration) -> bool {
        self.refill(now);
        if self.micro >= MICRO {
            self.micro -= MICRO;
            true
        } else {
            false
        }
    }

    /// Whether a token is there at `now` (none is taken).
    pub fn has_token(&self, now: Duration) -> bool {
        let mut b = *self;
        b.refill(now);
        b.micro >= MICRO
    }

    /// Whether the bucket is full at `now` (then it is the same as a new one, and may be forgotten).
    pub fn is_full(&self, now: Duration) -> bool {
        let mut b = *self;
        b.refill(now);
        b.micro >= b.cap
    }
}

/// 403s all unknown sources together get at most: this many a second...
pub const FORBIDDEN_BUDGET: Budget = Budget {
    rate: 10,
    burst: 10,
};
/// ...and none at all in a second in which more than this many datagrams came from unknown sources
/// (a flood or a scan: it would only be reflected), or the one before.
pub const UNKNOWN_FLOOD: u32 = 100;
/// Error answers (400, 513, ...) to malformed requests from known sources, all together.
pub const ERROR_BUDGET: Budget = Budget {
    rate: 20,
    burst: 20,
};
/// 503s to new requests over their source's budget, all together (the rest are dropped).
pub const LIMITED_BUDGET: Budget = Budget {
    rate: 50,
    burst: 50,
};
/// Per-source buckets a door keeps at most; beyond that, new sources of an entry share one
/// overflow bucket of that entry (full buckets are forgotten first: they hold nothing).
pub const MAX_SOURCES: usize = 4096;

/// What the door says about a new request from a known source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewRequest {
    /// Within its budget.
    Admit,
    /// Over its budget: answer 503 with Retry-After.
    Refuse,
    /// Over its budget, and so many were refused that this one gets no answer.
    Drop,
}

/// Datagrams a second a source that is over its new-request budget may still have parsed (its
/// responses and in-dialog requests); beyond them its datagrams are dropped unparsed, so a flood
/// from a known address costs the node no more than one from an unknown one.
pub const OVER_BUDGET_PARSE: Budget = Budget {
    rate: 2_000,
    burst: 2_000,
};

/// What a door holds for one source: its entry, its new-request bucket, and its parse budget
/// while it is over that bucket.
#[derive(Debug, Clone, Copy)]
struct SourceState {
    entry: usize,
    new: Bucket,
    parse: Bucket,
}

/// One receive loop's view of the gate and its token buckets. Owned by the loop alone.
#[derive(Debug)]
pub struct Door {
    gate: Arc<SourceGate>,
    generation: u64,
    policy: Arc<SourcePolicy>,
    buckets: HashMap<SocketAddr, SourceState>,
    overflow: HashMap<usize, Bucket>,
    forbidden: Bucket,
    errors: Bucket,
    limited: Bucket,
    /// Start of the current second, datagrams from unknown sources in it and in the one before.
    window: (Duration, u32, u32),
}

impl Door {
    /// A door reading `gate`, at time `now`.
    pub fn new(gate: Arc<SourceGate>, now: Duration) -> Self {
        let generation = gate.generation();
        let policy = gate.current();
        Self {
            gate,
            generation,
            policy,
            buckets: HashMap::new(),
            overflow: HashMap::new(),
            forbidden: Bucket::new(FORBIDDEN_BUDGET, now),
            errors: Bucket::new(ERROR_BUDGET, now),
            limited: Bucket::new(LIMITED_BUDGET, now),
            window: (now, 0, 0),
        }
    }

    /// Who `source` is under the current policy (reloaded here when it changed).
    pub fn classify(&mut self, source: SocketAddr) -> SourceClass {
        let generation = self.gate.generation();
        if generation != self.generation {
            self.generation = generation;
            self.policy = self.gate.current();
            self.buckets.clear();
            self.overflow.clear();
        }
        self.policy.classify(source)
    }

    /// Counts a datagram from an unknown source at `now`; true when a 403 may be sent for it:
    /// within [`FORBIDDEN_BUDGET`], not during a flood of unknown sources ([`UNKNOWN_FLOOD`]), and
    /// not while the node is `loaded`.
    pub fn may_forbid(&mut self, now: Duration, loaded: bool) -> bool {
        let (start, count, before) = self.window;
        let since = now.saturating_sub(start);
        self.window = if since >= Duration::from_secs(2) {
            (now, 1, 0)
        } else if since >= Duration::from_secs(1) {
            (start + Duration::from_secs(1), 1, count)
        } else {
            (start, count.saturating_add(1), before)
        };
        let flooded = self.window.1 > UNKNOWN_FLOOD || self.window.2 > UNKNOWN_FLOOD;
        !loaded && !flooded && self.forbidden.try_take(now)
    }

    /// Whether an error answer (400, ...) to a malformed request may be sent now.
    pub fn may_answer_error(&mut self, now: Duration) -> bool {
        self.errors.try_take(now)
    }

    /// Takes a token for a new request (one that starts a transaction outside any dialog) from
    /// `source` of entry `entry`.
    pub fn new_request(&mut self, entry: usize, source: SocketAddr, now: Duration) -> NewRequest {
        let Some(budget) = self.policy.budget(entry) else {
            return NewRequest::Admit;
        };
        let source = canonical(source);
        let admitted = match self.buckets.get_mut(&source) {
            Some(st) if st.entry == entry => st.new.try_take(now),
            _ => {
                if self.buckets.len() >= MAX_SOURCES {
                    self.buckets.retain(|_, st| !st.new.is_full(now));
                }
                if self.buckets.len() < MAX_SOURCES {
                    let mut st = SourceState {
                        entry,
                        new: Bucket::new(budget, now),
                        parse: Bucket::new(OVER_BUDGET_PARSE, now),
                    };
                    let ok = st.new.try_take(now);
                    self.buckets.insert(source, st);
                    ok
                } else {
                    self.overflow
                        .entry(entry)
                        .or_insert_with(|| Bucket::new(budget, now))
                        .try_take(now)
                }
            }
        };
        if admitted {
            NewRequest::Admit
        } else if self.limited.try_take(now) {
            NewRequest::Refuse
        } else {
            NewRequest::Drop
        }
    }

    /// Whether a datagram from `source` (of entry `entry`) is worth parsing: always, unless the
    /// source is over its new-request budget; then within [`OVER_BUDGET_PARSE`].
    pub fn may_parse(&mut self, entry: usize, source: SocketAddr, now: Duration) -> bool {
        match self.buckets.get_mut(&canonical(source)) {
            Some(st) if st.entry == entry && !st.new.has_token(now) => st.parse.try_take(now),
            _ => true,
        }
    }

    /// Per-source buckets held now (at most [`MAX_SOURCES`]).
    pub fn sources(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }
    const MS: Duration = Duration::from_millis(1);
    const SEC: Duration = Duration::from_secs(1);

    fn policy() -> SourcePolicy {
        let mut p = SourcePolicy::closed(UnknownPolicy::Reject);
        p.add_exact(addr("10.0.0.21:5060"), Budget { rate: 5, burst: 2 });
        p.add_any_port("10.0.0.1".parse().unwrap(), Budget { rate: 10, burst: 3 });
        p.add_unlimited("10.0.0.9".parse().unwrap());
        p
    }

    #[test]
    fn sources_are_classified_exact_port_first_then_any_port() {
        let p = policy();
        assert_eq!(p.classify(addr("10.0.0.21:5060")), SourceClass::Known(0));
        assert_eq!(
            p.classify(addr("10.0.0.21:5061")),
            SourceClass::Unknown(UnknownPolicy::Reject),
            "a gateway is known on its own port only"
        );
        assert_eq!(p.classify(addr("10.0.0.1:40000")), SourceClass::Known(1));
        assert_eq!(
            p.classify(addr("[::ffff:10.0.0.1]:40000")),
            SourceClass::Known(1),
            "an IPv4-mapped source matches its IPv4 entry"
        );
        assert_eq!(p.classify(addr("10.0.0.9:1")), SourceClass::Unlimited);
        assert_eq!(
            SourcePolicy::closed(UnknownPolicy::Drop).classify(addr("10.0.0.1:1")),
            SourceClass::Unknown(UnknownPolicy::Drop)
        );
        assert_eq!(
            SourcePolicy::open().classify(addr("192.0.2.1:1")),
            SourceClass::Unlimited
        );
    }

    #[test]
    fn each_source_has_its_own_bucket_so_a_flood_from_one_port_spares_the_others() {
        let gate = Arc::new(SourceGate::new(policy()));
        let mut door = Door::new(gate, Duration::ZERO);
        let flooder = addr("10.0.0.1:6666");
        let caller = addr("10.0.0.1:5070");
        let t = Duration::ZERO;
        let outcomes: Vec<NewRequest> =
            (0..1000).map(|_| door.new_request(1, flooder, t)).collect();
        assert_eq!(
            outcomes.iter().filter(|o| **o == NewRequest::Admit).count(),
            3,
            "the burst, then nothing"
        );
        assert_eq!(
            outcomes
                .iter()
                .filter(|o| **o == NewRequest::Refuse)
                .count(),
            LIMITED_BUDGET.burst as usize,
            "a few 503s, the rest dropped"
        );
        for _ in 0..3 {
            assert_eq!(door.new_request(1, caller, t), NewRequest::Admit);
        }
        // The flooder's rate comes back at 10/s: one token per 100 ms.
        assert_ne!(door.new_request(1, flooder, t + 50 * MS), NewRequest::Admit);
        assert_eq!(
            door.new_request(1, flooder, t + 100 * MS),
            NewRequest::Admit
        );
    }

    #[test]
    fn a_source_over_its_budget_has_only_a_few_datagrams_a_second_parsed() {
        let gate = Arc::new(SourceGate::new(policy()));
        let mut door = Door::new(gate, Duration::ZERO);
        let flooder = addr("10.0.0.1:6666");
        let caller = addr("10.0.0.1:5070");
        assert!(door.may_parse(1, flooder, Duration::ZERO), "a new source");
        for _ in 0..3 {
            door.new_request(1, flooder, Duration::ZERO);
        }
        let parsed = (0..10_000)
            .filter(|_| door.may_parse(1, flooder, Duration::ZERO))
            .count();
        assert_eq!(parsed, OVER_BUDGET_PARSE.burst as usize);
        assert!(
            door.may_parse(1, caller, Duration::ZERO),
            "the other sources are not touched"
        );
        // Its next token (100 ms later at 10/s) makes it an ordinary source again.
        assert!(door.may_parse(1, flooder, 100 * MS));
    }

    #[test]
    fn the_bucket_map_is_bounded_and_forgets_full_buckets_first() {
        let gate = Arc::new(SourceGate::new(policy()));
        let mut door = Door::new(gate, Duration::ZERO);
        for port in 0..(MAX_SOURCES as u16 + 100) {
            let src = SocketAddr::new("10.0.0.1".parse().unwrap(), 1024 + port);
            door.new_request(1, src, Duration::ZERO);
        }
        assert_eq!(
            door.sources(),
            MAX_SOURCES,
            "beyond the bound: the overflow bucket"
        );
        // A second later every bucket is full again, so a new source finds room.
        door.new_request(1, addr("10.0.0.1:9"), SEC);
        assert_eq!(door.sources(), 1);
    }

    #[test]
    fn unknown_sources_get_a_few_403s_and_none_during_a_flood_or_under_load() {
        let gate = Arc::new(SourceGate::new(policy()));
        let mut door = Door::new(gate, Duration::ZERO);
        let sent = (0..50)
            .filter(|_| door.may_forbid(Duration::ZERO, false))
            .count();
        assert_eq!(sent, FORBIDDEN_BUDGET.burst as usize);
        assert!(
            !door.may_forbid(2 * SEC + 500 * MS, true),
            "none under load"
        );
        // A flood: 10,000 a second for 3 s; a 403 only within the first UNKNOWN_FLOOD datagrams.
        let mut forbidden = 0;
        for i in 0..30_000u32 {
            let now = 5 * SEC + Duration::from_micros(u64::from(i) * 100);
            forbidden += usize::from(door.may_forbid(now, false));
        }
        assert!(
            forbidden <= FORBIDDEN_BUDGET.burst as usize,
            "{forbidden} 403s in a flood"
        );
        // Quiet again: 403s come back after a calm second.
        assert!(
            !door.may_forbid(8 * SEC + 500 * MS, false),
            "the second after a flood"
        );
        assert!(door.may_forbid(10 * SEC, false));
    }

    #[test]
    fn a_new_policy_is_picked_up_by_the_next_datagram() {
        let gate = Arc::new(SourceGate::new(SourcePolicy::closed(UnknownPolicy::Drop)));
        let mut door = Door::new(gate.clone(), Duration::ZERO);
        let src = addr("10.0.0.21:5060");
        assert_eq!(
            door.classify(src),
            SourceClass::Unknown(UnknownPolicy::Drop)
        );
        gate.set(policy());
        assert_eq!(door.classify(src), SourceClass::Known(0));
    }

    #[test]
    fn error_answers_are_rate_limited() {
        let gate = Arc::new(SourceGate::default());
        let mut door = Door::new(gate, Duration::ZERO);
        let n = (0..1000)
            .filter(|_| door.may_answer_error(Duration::ZERO))
            .count();
        assert_eq!(n, ERROR_BUDGET.burst as usize);
        assert!(door.may_answer_error(SEC));
    }
}
