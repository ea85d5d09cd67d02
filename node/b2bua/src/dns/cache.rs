//! The answer one trunk's name has, as a pure machine `(cache, lookup outcome, now) → next lookup`:
//! an answer is kept for its TTL and looked up again when it expires; when the DNS server then
//! fails, the last answer is kept *stale* for at most `stale_max` after its expiry (and said so:
//! [`Status::Stale`]), after which the trunk is unresolved. An authoritative "no such records"
//! drops the answer at once. Failed lookups are retried with a backoff of 1 s doubling to 30 s.
//! No clock inside: `now` is given.

use std::time::Duration;

use tokio::time::Instant;

use super::error::LookupError;

/// The shortest TTL honoured: a record with TTL 0 is looked up again after this, not in a loop.
pub const MIN_TTL: Duration = Duration::from_secs(1);
/// The longest TTL honoured: a changed record is seen within a day whatever its TTL says.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);
/// The longest wait between two lookups after failures.
pub const MAX_RETRY: Duration = Duration::from_secs(30);

/// What is known of one name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not looked up yet.
    Pending,
    /// The answer is within its TTL.
    Fresh,
    /// The answer expired and the DNS server failed since: it is still used, until `until`.
    Stale {
        /// The last failure.
        error: LookupError,
        /// When the stale answer is dropped (its expiry plus `stale_max`).
        until: Instant,
    },
    /// No answer to use: the name has no usable records, or the server failed with no answer
    /// kept (never answered, or failed beyond `stale_max`).
    Unresolved {
        /// Why.
        error: LookupError,
    },
}

/// The outcome of one lookup.
#[derive(Clone, Debug)]
pub enum Outcome<A> {
    /// An answer, valid for `ttl` (the smallest TTL of the records it was made of).
    Answer {
        /// The answer.
        value: A,
        /// How long it may be used.
        ttl: Duration,
    },
    /// No answer.
    Failed(LookupError),
}

/// One name's cached answer and status.
#[derive(Clone, Debug)]
pub struct Cache<A> {
    answer: Option<A>,
    valid_until: Option<Instant>,
    status: Status,
    failures: u32,
}

impl<A> Default for Cache<A> {
    fn default() -> Self {
        Self {
            answer: None,
            valid_until: None,
            status: Status::Pending,
            failures: 0,
        }
    }
}

impl<A> Cache<A> {
    /// The answer to use now, fresh or stale.
    pub fn answer(&self) -> Option<&A> {
        self.answer.as_ref()
    }

    /// The status.
    pub fn status(&self) -> &Status {
        &self.status
    }

    /// Folds in a lookup's outcome at `now`; returns when to look up next.
    pub fn on_lookup(&mut self, outcome: Outcome<A>, now: Instant, stale_max: Duration) -> Instant {
        match outcome {
            Outcome::Answer { value, ttl } => {
                let valid_until = now + ttl.clamp(MIN_TTL, MAX_TTL);
                self.answer = Some(value);
                self.valid_until = Some(valid_until);
                self.status = Status::Fresh;
                self.failures = 0;
                valid_until
            }
            Outcome::Failed(error) => {
                self.failures = self.failures.saturating_add(1);
                let retry = now + retry_after(self.failures);
                if matches!(error, LookupError::NotFound { .. }) {
                    self.drop_answer(error);
                    return retry;
                }
                match self.valid_until {
                    Some(valid_until) if self.answer.is_some() && now < valid_until => {
                        // Failed early (a refresh before expiry): the answer is still fresh.
                        retry.min(valid_until)
                    }
                    Some(valid_until) if self.answer.is_some() => {
                        let until = valid_until + stale_max;
                        if now < until {
                            self.status = Status::Stale { error, until };
                            retry.min(until)
                        } else {
                            self.drop_answer(error);
                            retry
                        }
                    }
                    _ => {
                        self.drop_answer(error);
                        retry
                    }
                }
            }
        }
    }

    fn drop_answer(&mut self, error: LookupError) {
        self.answer = None;
        self.valid_until = None;
        self.status = Status::Unresolved { error };
    }
}

/// The wait before the next lookup after `failures` failures in a row: 1 s, 2 s, 4 s, ... 30 s.
fn retry_after(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(5);
    (Duration::from_secs(1) * (1u32 << exp)).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server_failed() -> LookupError {
        LookupError::Server {
            name: "gw.example.net".into(),
            detail: "timed out".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_is_kept_for_its_ttl_and_looked_up_again_then() {
        let mut c = Cache::default();
        assert_eq!(c.status(), &Status::Pending);
        let t0 = Instant::now();
        let next = c.on_lookup(
            Outcome::Answer {
                value: "a",
                ttl: Duration::from_secs(60),
            },
            t0,
            Duration::from_secs(300),
        );
        assert_eq!(next, t0 + Duration::from_secs(60));
        assert_eq!(c.answer(), Some(&"a"));
        assert_eq!(c.status(), &Status::Fresh);
        // A TTL of 0 is not a busy loop.
        let next = c.on_lookup(
            Outcome::Answer {
                value: "b",
                ttl: Duration::ZERO,
            },
            t0,
            Duration::from_secs(300),
        );
        assert_eq!(next, t0 + MIN_TTL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_server_keeps_the_last_answer_stale_for_at_most_stale_max() {
        let stale_max = Duration::from_secs(100);
        let mut c = Cache::default();
        let t0 = Instant::now();
        let expiry = c.on_lookup(
            Outcome::Answer {
                value: "a",
                ttl: Duration::from_secs(10),
            },
            t0,
            stale_max,
        );
        // The refresh at expiry fails: the answer is kept, stale, until expiry + stale_max.
        let mut now = expiry;
        let mut next = c.on_lookup(Outcome::Failed(server_failed()), now, stale_max);
        let until = expiry + stale_max;
        assert_eq!(
            c.status(),
            &Status::Stale {
                error: server_failed(),
                until
            }
        );
        assert_eq!(c.answer(), Some(&"a"));
        assert_eq!(next, now + Duration::from_secs(1), "retried soon");
        // Keeps failing: retries back off but never past the stale bound.
        let mut waits = Vec::new();
        while now < until {
            waits.push(next - now);
            now = next;
            next = c.on_lookup(Outcome::Failed(server_failed()), now, stale_max);
            assert!(next <= until || now >= until, "a lookup at the bound");
        }
        assert_eq!(waits[..4], [1, 2, 4, 8].map(Duration::from_secs));
        assert!(waits.iter().all(|w| *w <= MAX_RETRY));
        assert_eq!(now, until, "the last retry is at the bound");
        assert_eq!(c.answer(), None, "dropped at the bound");
        assert_eq!(
            c.status(),
            &Status::Unresolved {
                error: server_failed()
            }
        );
        // The server answers again: fresh.
        c.on_lookup(
            Outcome::Answer {
                value: "b",
                ttl: Duration::from_secs(10),
            },
            now,
            stale_max,
        );
        assert_eq!((c.answer(), c.status()), (Some(&"b"), &Status::Fresh));
    }

    #[tokio::test(start_paused = true)]
    async fn no_such_records_drops_the_answer_at_once() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        let expiry = c.on_lookup(
            Outcome::Answer {
                value: "a",
                ttl: Duration::from_secs(10),
            },
            t0,
            Duration::from_secs(3600),
        );
        let gone = LookupError::NotFound {
            name: "gw.example.net".into(),
        };
        c.on_lookup(
            Outcome::Failed(gone.clone()),
            expiry,
            Duration::from_secs(3600),
        );
        assert_eq!(c.answer(), None);
        assert_eq!(c.status(), &Status::Unresolved { error: gone });
    }

    #[tokio::test(start_paused = true)]
    async fn stale_max_zero_keeps_nothing_and_no_answer_means_unresolved() {
        let mut c = Cache::default();
        let t0 = Instant::now();
        c.on_lookup(Outcome::Failed(server_failed()), t0, Duration::ZERO);
        assert!(matches!(c.status(), Status::Unresolved { .. }));
        let expiry = c.on_lookup(
            Outcome::Answer {
                value: "a",
                ttl: Duration::from_secs(5),
            },
            t0,
            Duration::ZERO,
        );
        c.on_lookup(Outcome::Failed(server_failed()), expiry, Duration::ZERO);
        assert_eq!(c.answer(), None);
    }
}
