//! Per-sender GCRA rate limit of outgoing mail (filtermail.md §7).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use governor::clock::{Clock, MonotonicClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// One GCRA cell per MAIL FROM, keyed by the lower-cased sender; in memory only.
pub struct SendLimiter<C: Clock = MonotonicClock> {
    /// governor's keyed limiter; the clock is a parameter so tests can fake time.
    limiter: RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<C::Instant>>,
    /// Allowed checks since the last pruning: pruning walks every key, so it runs once
    /// per [`PRUNE_EVERY`] messages instead of on each one as upstream does.
    since_prune: AtomicU32,
}

/// See [`SendLimiter::since_prune`].
const PRUNE_EVERY: u32 = 1024;

impl SendLimiter<MonotonicClock> {
    /// `per_minute` messages a minute after a burst of `burst`. The std monotonic clock,
    /// not quanta's TSC clock, which jumped backwards across cores upstream (#166).
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self::with_clock(per_minute, burst, MonotonicClock)
    }
}

impl<C: Clock> SendLimiter<C> {
    /// As [`SendLimiter::new`] with a given clock. Zero values would mean "never", which
    /// no operator intends; they count as 1.
    pub fn with_clock(per_minute: u32, burst: u32, clock: C) -> Self {
        let per_minute = per_minute.max(1);
        let period = Duration::from_nanos(60_000_000_000 / u64::from(per_minute));
        let burst = NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN);
        // `with_period` only fails for a zero period, impossible for ≤ u32::MAX per minute.
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(burst);
        SendLimiter {
            limiter: RateLimiter::new(quota, DashMapStateStore::default(), clock),
            since_prune: AtomicU32::new(0),
        }
    }

    /// Takes one cell for `sender`; on refusal, how long until the next one is free.
    pub fn check(&self, sender: &str) -> Result<(), Duration> {
        let key = sender.to_lowercase();
        match self.limiter.check_key(&key) {
            Ok(()) => {
                // Senders that are fully replenished cost memory for nothing.
                if self.since_prune.fetch_add(1, Ordering::Relaxed) + 1 >= PRUNE_EVERY {
                    self.since_prune.store(0, Ordering::Relaxed);
                    self.limiter.retain_recent();
                }
                Ok(())
            }
            Err(not_until) => Err(not_until.wait_time_from(self.limiter.clock().now())),
        }
    }
}

/// The 450 reply: upstream's prefix (clients match `4.7.1: Too much mail from`) with a
/// retry time a person can read instead of governor's debug-printed instant.
pub fn rate_limited_reply(sender: &str, wait: Duration) -> String {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    format!("450 4.7.1: Too much mail from {sender}, rate-limited until {secs} s from now")
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn burst_then_one_per_interval() {
        let clock = FakeRelativeClock::default();
        let limiter = SendLimiter::with_clock(60, 10, clock.clone());
        for i in 0..10 {
            assert_eq!(limiter.check("a@x.org"), Ok(()), "message {i} of the burst");
        }
        // The burst edge: the 11th back-to-back message waits exactly one interval.
        assert_eq!(limiter.check("a@x.org"), Err(Duration::from_secs(1)));
        clock.advance(Duration::from_millis(999));
        assert_eq!(limiter.check("a@x.org"), Err(Duration::from_millis(1)));
        clock.advance(Duration::from_millis(1));
        assert_eq!(limiter.check("a@x.org"), Ok(()));
        assert!(limiter.check("a@x.org").is_err());
        // Another sender has its own bucket.
        assert_eq!(limiter.check("b@x.org"), Ok(()));
    }

    #[test]
    fn refusals_cost_nothing_and_the_bucket_refills() {
        let clock = FakeRelativeClock::default();
        let limiter = SendLimiter::with_clock(60, 10, clock.clone());
        for _ in 0..10 {
            limiter.check("a@x.org").unwrap();
        }
        for _ in 0..20 {
            assert!(limiter.check("a@x.org").is_err());
        }
        clock.advance(Duration::from_secs(10));
        for i in 0..10 {
            assert_eq!(limiter.check("a@x.org"), Ok(()), "refilled message {i}");
        }
        assert!(limiter.check("a@x.org").is_err());
    }

    #[test]
    fn key_is_case_insensitive() {
        let limiter = SendLimiter::with_clock(60, 1, FakeRelativeClock::default());
        assert_eq!(limiter.check("rate@x.org"), Ok(()));
        assert!(limiter.check("RATE@x.org").is_err());
    }

    #[test]
    fn odd_rates() {
        let clock = FakeRelativeClock::default();
        let limiter = SendLimiter::with_clock(7, 0, clock.clone());
        assert_eq!(limiter.check("a@x.org"), Ok(()));
        let wait = limiter.check("a@x.org").unwrap_err();
        assert_eq!(wait, Duration::from_nanos(60_000_000_000 / 7));
    }

    #[test]
    fn replenished_senders_are_forgotten() {
        let clock = FakeRelativeClock::default();
        let limiter = SendLimiter::with_clock(60, 10, clock.clone());
        for i in 0..PRUNE_EVERY - 1 {
            limiter.check(&format!("user{i}@x.org")).unwrap();
        }
        assert_eq!(
            limiter.limiter.len(),
            usize::try_from(PRUNE_EVERY - 1).unwrap()
        );
        clock.advance(Duration::from_secs(60));
        limiter.check("last@x.org").unwrap();
        assert_eq!(limiter.limiter.len(), 1);
    }

    #[test]
    fn reply_text() {
        assert_eq!(
            rate_limited_reply("a@x.org", Duration::from_millis(1500)),
            "450 4.7.1: Too much mail from a@x.org, rate-limited until 2 s from now"
        );
    }
}
