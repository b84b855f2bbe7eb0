//! Where file work runs: in the calling task while the file system is fast, on the
//! blocking pool while it is slow.
//!
//! In the task, a token write costs a few system calls and no thread switch; on tmpfs or a
//! journaled ext4 that is tens of microseconds, less than the two switches of a hop to
//! the blocking pool and back. But where creating a file takes milliseconds (an ext4
//! without a journal skipping recently freed inodes, a disk under load), a write in the
//! task holds one of the runtime's few threads for that long, and lookups on other
//! connections wait behind it. So each write done in the task is timed, and when most of
//! the last [`WINDOW`] took longer than [`SLOW`] (one alone may just have been preempted
//! on a busy machine), the writes of the next [`SLOW_FOR`] go to the blocking pool, where
//! several wait at once and the runtime's threads stay free. After that, the next write
//! is tried in the task again.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A write in the task slower than this counts as slow: about ten times what a hop to the
/// blocking pool costs.
pub const SLOW: Duration = Duration::from_micros(250);
/// How many of the latest writes in the task are looked at.
pub const WINDOW: u32 = 8;
/// How many of them must have been slow to send writes to the pool.
pub const SLOW_OF_WINDOW: u32 = 5;
/// How long writes go to the blocking pool once the file system is found slow.
pub const SLOW_FOR: Duration = Duration::from_secs(1);

/// The recent speed of the file system, shared by everything that writes.
#[derive(Debug, Default)]
pub struct Pace {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// One bit per recent write in the task, newest lowest: 1 = slow.
    recent: u8,
    /// Until when writes go to the blocking pool.
    slow_until: Option<Instant>,
}

impl Pace {
    pub fn new() -> Self {
        Pace::default()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a write starting at `now` should run in the calling task.
    pub fn in_task(&self, now: Instant) -> bool {
        self.state().slow_until.is_none_or(|until| now >= until)
    }

    /// Records a write done in the task that ran from `start` to `end`.
    pub fn record(&self, start: Instant, end: Instant) {
        let slow = end.saturating_duration_since(start) > SLOW;
        let mut state = self.state();
        state.recent = (state.recent << 1) | u8::from(slow);
        if slow && state.recent.count_ones() >= SLOW_OF_WINDOW {
            state.slow_until = Some(end + SLOW_FOR);
        }
    }

    /// Runs `work` in the task, timed, if the file system has been fast; `None` if the
    /// work belongs on the blocking pool.
    pub fn run_in_task<T>(&self, work: impl FnOnce() -> T) -> Option<T> {
        let start = Instant::now();
        if !self.in_task(start) {
            return None;
        }
        let result = work();
        self.record(start, Instant::now());
        Some(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mostly_slow_writes_send_the_next_second_to_the_pool() {
        let pace = Pace::new();
        let mut t = Instant::now();
        let slow = SLOW + Duration::from_micros(1);
        let fast = Duration::from_micros(20);
        fn write(pace: &Pace, t: &mut Instant, took: Duration) -> Instant {
            pace.record(*t, *t + took);
            *t += took;
            *t
        }
        // Four slow writes among fast ones (a preempted thread, say): still in the task.
        for took in [fast, slow, fast, slow, SLOW, slow, fast, slow] {
            let end = write(&pace, &mut t, took);
            assert!(pace.in_task(end), "exactly SLOW is still fast");
        }
        // The fifth of the last eight.
        let end = write(&pace, &mut t, slow);
        assert!(!pace.in_task(end));
        assert!(!pace.in_task(end + SLOW_FOR - Duration::from_millis(1)));
        assert!(pace.in_task(end + SLOW_FOR));
        // Still mostly slow: one more slow write in the task is another second on the pool.
        t = end + SLOW_FOR;
        let end = write(&pace, &mut t, slow);
        assert!(!pace.in_task(end));
        // Fast again: a fast write never sends anything to the pool.
        t = end + SLOW_FOR;
        for _ in 0..WINDOW {
            let end = write(&pace, &mut t, fast);
            assert!(pace.in_task(end));
        }
    }

    #[test]
    fn run_in_task_runs_only_while_fast() {
        let pace = Pace::new();
        assert_eq!(pace.run_in_task(|| 1), Some(1));
        // Slow writes that (by these instants) end in an hour: slow until then and a second.
        let now = Instant::now();
        for _ in 0..SLOW_OF_WINDOW {
            pace.record(now, now + Duration::from_secs(3600));
        }
        let mut ran = false;
        assert_eq!(pace.run_in_task(|| ran = true), None, "the pool's turn");
        assert!(!ran);
    }
}
