//! Wall-clock time for the notifier, behind a trait so tests can drive the retry schedule
//! (8 s .. 4096 s, a 5-hour deadline) without waiting for it.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A boxed sleep, so the clock can be a trait object shared by all tasks.
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Unix seconds and sleeping until one of them.
pub trait Clock: Send + Sync + 'static {
    /// Now, in whole Unix seconds (upstream floors `time.time()`).
    fn now(&self) -> i64;
    /// Completes once `now() >= when`.
    fn sleep_until(&self, when: i64) -> Sleep<'_>;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
    }

    fn sleep_until(&self, when: i64) -> Sleep<'_> {
        let wait = u64::try_from(when.saturating_sub(self.now())).unwrap_or(0);
        if wait == 0 {
            // tokio's timer fires a zero sleep only at its next millisecond tick: a level
            // that slept for every due item would send at most 1,000 items a second.
            return Box::pin(std::future::ready(()));
        }
        Box::pin(tokio::time::sleep(Duration::from_secs(wait)))
    }
}

/// A clock that moves only when told to: for tests of the retry schedule.
#[derive(Debug)]
pub struct ManualClock {
    /// The current time; sleepers watch it.
    now: watch::Sender<i64>,
    /// The times sleepers wait for, so a test can wait until the notifier has scheduled an
    /// item before moving the clock.
    sleepers: watch::Sender<Vec<i64>>,
}

impl ManualClock {
    pub fn new(now: i64) -> Self {
        ManualClock {
            now: watch::Sender::new(now),
            sleepers: watch::Sender::new(Vec::new()),
        }
    }

    /// Moves the clock forward by `secs` and wakes the sleepers that are due.
    pub fn advance(&self, secs: i64) {
        self.now.send_modify(|now| *now += secs);
    }

    /// Completes once some task sleeps until exactly `when` (and the clock has not reached it).
    pub async fn sleeper_at(&self, when: i64) {
        let mut sleepers = self.sleepers.subscribe();
        let _ = sleepers.wait_for(|s| s.contains(&when)).await;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> i64 {
        *self.now.borrow()
    }

    fn sleep_until(&self, when: i64) -> Sleep<'_> {
        let mut now = self.now.subscribe();
        Box::pin(async move {
            if *now.borrow() >= when {
                return;
            }
            self.sleepers.send_modify(|s| s.push(when));
            let _ = now.wait_for(|now| *now >= when).await;
            self.sleepers.send_modify(|s| {
                if let Some(i) = s.iter().position(|w| *w == when) {
                    s.swap_remove(i);
                }
            });
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::{Context, Poll, Waker};

    /// A due item must not wait for the timer's next tick: the notifier's throughput
    /// depends on it.
    #[test]
    fn sleeping_until_a_past_or_present_second_is_ready_at_once() {
        let clock = SystemClock;
        let mut cx = Context::from_waker(Waker::noop());
        for when in [0, clock.now() - 1, clock.now()] {
            let mut sleep = clock.sleep_until(when);
            assert_eq!(sleep.as_mut().poll(&mut cx), Poll::Ready(()));
        }
    }
}
