//! Shared by the integration tests.

pub mod client;
pub mod listener;
pub mod logs;
pub mod pgp;
pub mod sink;

/// Waits until `cond` holds, polling every 10 ms for at most 10 s; panics naming `what`.
#[allow(dead_code)]
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}
