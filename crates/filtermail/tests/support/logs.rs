//! Log lines of the code under test, captured as `LEVEL text`.
//!
//! Used by `tests/http.rs`, `tests/smtp.rs`, `tests/transport.rs` and the accept-error
//! tests (as `mod support`).

#![allow(dead_code)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    pub fn lines(&self) -> Vec<String> {
        self.text()
            .lines()
            .map(|l| l.trim_start().to_owned())
            .collect()
    }

    /// Whether some line is exactly `line`.
    pub fn contains(&self, line: &str) -> bool {
        self.lines().iter().any(|l| l == line)
    }

    /// How many lines are exactly `line`.
    pub fn count(&self, line: &str) -> usize {
        self.lines().iter().filter(|l| *l == line).count()
    }

    /// Waits until `line` has been logged `times` times, at most `patience`.
    pub async fn wait_for(&self, line: &str, times: usize, patience: Duration) {
        let waited = tokio::time::timeout(patience, async {
            while self.count(line) < times {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "{line:?} not logged {times} times: {:#?}",
            self.lines()
        );
    }
}

/// Captures this thread's log lines up to `level` (tests run on a current-thread
/// runtime, so spawned tasks log here too).
pub fn capture(level: tracing::Level) -> (Logs, tracing::subscriber::DefaultGuard) {
    // A global subscriber that takes every event and drops it, so that no call site is
    // ever judged uninteresting: tracing caches a call site's interest when it is first
    // hit, and one first hit while no test's subscriber is alive (or racing with the
    // creation of one) would stay silent for every later test in this binary.
    static DISCARD_ELSEWHERE: std::sync::Once = std::sync::Once::new();
    DISCARD_ELSEWHERE.call_once(|| {
        let discard = tracing_subscriber::fmt()
            .with_writer(std::io::sink)
            .with_max_level(tracing::Level::TRACE)
            .finish();
        let _ = tracing::subscriber::set_global_default(discard);
    });
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_target(false)
        .without_time()
        .with_ansi(false)
        .with_max_level(level)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}
