//! The notifier against a local HTTPS gateway that answers 200, 410, 500 or hangs, with a
//! manual clock for upstream's retry schedule (0, 8, 64, 512, 4096 s; 5-hour deadline).

#![allow(clippy::indexing_slicing)]

mod common;

use std::fs;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use chatmail_mailbox::Mailboxes;
use chatmail_metadata::{Clock, ManualClock, Notifier, NotifierOptions, TokenStore};
use common::{Gateway, Relay};
use hyper::Version;

const T: i64 = 1_800_000_000;
const USER: &str = "user@example.org";

struct Setup {
    relay: Relay,
    gateway: Gateway,
    clock: Arc<ManualClock>,
    tokens: TokenStore,
}

impl Setup {
    async fn new() -> Setup {
        let relay = Relay::new("");
        relay.maildir(USER);
        fs::create_dir(relay.queue_dir()).unwrap();
        let gateway = Gateway::start().await;
        let clock = Arc::new(ManualClock::new(T));
        let tokens = TokenStore::new(Mailboxes::new(relay.mail()));
        Setup {
            relay,
            gateway,
            clock,
            tokens,
        }
    }

    fn options(&self) -> NotifierOptions {
        NotifierOptions {
            url: self.gateway.url.clone(),
            ca_file: Some(self.gateway.ca_file.clone()),
            request_timeout: Duration::from_secs(30),
            max_in_flight: 16,
        }
    }

    fn start_with(&self, options: NotifierOptions) -> Notifier {
        Notifier::start(
            self.relay.queue_dir(),
            self.tokens.clone(),
            options,
            self.clock.clone(),
        )
        .unwrap()
    }

    fn start(&self) -> Notifier {
        self.start_with(self.options())
    }

    fn add_tokens(&self, tokens: &[&str]) {
        for token in tokens {
            self.tokens.add_token(USER, token, T).unwrap();
        }
    }

    fn file_tokens(&self) -> Vec<String> {
        self.tokens.valid_tokens(USER, self.clock.now()).unwrap()
    }
}

/// Lets the notifier run for a moment, for "nothing else happens" assertions.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn ok_is_delivered_once_over_one_http2_connection() {
    let s = Setup::new().await;
    s.add_tokens(&["ok-a"]);
    let notifier = s.start();
    assert_eq!(notifier.new_message_for_addr(USER.into()).await.unwrap(), 1);
    s.gateway.state.wait_answered(1).await;
    // Once the HTTP/2 connection is up, concurrent requests share it.
    s.add_tokens(&["ok-b", "ok-c"]);
    for _ in 0..3 {
        assert_eq!(notifier.new_message_for_addr(USER.into()).await.unwrap(), 3);
    }
    s.gateway.state.wait_answered(10).await;
    settle().await;
    let received = s.gateway.state.received.lock().unwrap().clone();
    assert_eq!(received.len(), 10);
    assert!(
        received
            .iter()
            .all(|(_, version)| *version == Version::HTTP_2)
    );
    assert_eq!(
        s.gateway.state.connections.load(Ordering::SeqCst),
        1,
        "reused"
    );
    common::wait_until(|| s.relay.queued().is_empty(), "queue to empty").await;
    assert_eq!(s.file_tokens(), ["ok-a", "ok-b", "ok-c"]);
}

#[tokio::test]
async fn gone_removes_the_token_and_the_item() {
    let s = Setup::new().await;
    s.add_tokens(&["ok-keep", "gone-x", "ok-last"]);
    let notifier = s.start();
    notifier.new_message_for_addr(USER.into()).await.unwrap();
    s.gateway.state.wait_answered(3).await;
    common::wait_until(|| s.relay.queued().is_empty(), "queue to empty").await;
    common::wait_until(|| s.file_tokens().len() == 2, "token removal").await;
    assert_eq!(s.file_tokens(), ["ok-keep", "ok-last"]);
    settle().await;
    assert_eq!(
        s.gateway.state.received.lock().unwrap().len(),
        3,
        "no retry"
    );
}

/// Attempts at T, T+8, T+72, T+584, T+4680; then the item is dropped (level 5).
#[tokio::test]
async fn server_error_is_retried_on_upstreams_schedule_then_dropped() {
    let s = Setup::new().await;
    s.add_tokens(&["fail-1"]);
    let notifier = s.start();
    notifier.new_message_for_addr(USER.into()).await.unwrap();
    s.gateway.state.wait_answered(1).await;
    let mut attempt_at = T;
    for (attempt, delay) in [(2, 8), (3, 64), (4, 512), (5, 4096)] {
        let due = attempt_at + delay;
        s.clock.sleeper_at(due).await;
        assert_eq!(
            s.relay.queued().len(),
            1,
            "still queued before attempt {attempt}"
        );
        s.clock.advance(delay - 1);
        settle().await;
        assert_eq!(
            s.gateway.state.received.lock().unwrap().len(),
            attempt - 1,
            "attempt {attempt} not before {due}"
        );
        s.clock.advance(1);
        s.gateway.state.wait_answered(attempt).await;
        attempt_at = due;
    }
    common::wait_until(|| s.relay.queued().is_empty(), "drop after 5 attempts").await;
    s.clock.advance(100_000);
    settle().await;
    assert_eq!(s.gateway.state.received.lock().unwrap().len(), 5);
    assert_eq!(s.file_tokens(), ["fail-1"], "a failing token is kept");
}

/// An item written by upstream 4:59:55 ago: one attempt now, and the next (8 s later)
/// would pass the 5-hour deadline, so it is dropped.
#[tokio::test]
async fn deadline_counts_from_the_first_attempt_across_restarts() {
    let s = Setup::new().await;
    let start = T - 18_000 + 5;
    fs::write(
        s.relay.queue_dir().join("0123456789abcdef0123456789abcdef"),
        format!("{USER}\n{start}\nfail-old"),
    )
    .unwrap();
    let _notifier = s.start();
    s.gateway.state.wait_answered(1).await;
    common::wait_until(|| s.relay.queued().is_empty(), "drop at the deadline").await;
    s.clock.advance(100);
    settle().await;
    assert_eq!(s.gateway.state.received_tokens(), ["fail-old"]);
}

/// A gateway that never answers costs one attempt (the request timeout), then retries.
#[tokio::test]
async fn hanging_gateway_times_out_and_is_retried() {
    let s = Setup::new().await;
    s.add_tokens(&["hang-1"]);
    let mut options = s.options();
    options.request_timeout = Duration::from_millis(300);
    let notifier = s.start_with(options);
    notifier.new_message_for_addr(USER.into()).await.unwrap();
    s.gateway.state.wait_received(1).await;
    tokio::time::timeout(Duration::from_secs(10), s.clock.sleeper_at(T + 8))
        .await
        .expect("retry scheduled after the timeout");
    assert_eq!(s.relay.queued().len(), 1);
    s.clock.advance(8);
    s.gateway.state.wait_received(2).await;
}

/// Upstream's files are requeued at start; `.tmp` and unreadable items are removed.
#[tokio::test]
async fn items_on_disk_are_requeued_and_debris_removed() {
    let s = Setup::new().await;
    let q = s.relay.queue_dir();
    fs::write(
        q.join("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        format!("{USER}\n{T}\nok-1"),
    )
    .unwrap();
    fs::write(
        q.join("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"),
        format!("{USER}\n{T}\nok-2"),
    )
    .unwrap();
    fs::write(
        q.join("cccccccccccccccccccccccccccccccc.tmp"),
        format!("{USER}\n{T}\nok-3"),
    )
    .unwrap();
    fs::write(q.join("dddddddddddddddddddddddddddddddd"), "not an item").unwrap();
    fs::write(q.join("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"), b"a@b\n1\n\xff").unwrap();
    let _notifier = s.start();
    s.gateway.state.wait_answered(2).await;
    common::wait_until(|| s.relay.queued().is_empty(), "queue to empty").await;
    settle().await;
    let mut tokens = s.gateway.state.received_tokens();
    tokens.sort();
    assert_eq!(tokens, ["ok-1", "ok-2"]);
}

/// Without the test CA the gateway's certificate is refused (system roots only): a
/// failed attempt, retried later, never a delivery.
#[tokio::test]
async fn certificate_is_verified() {
    let s = Setup::new().await;
    s.add_tokens(&["ok-1"]);
    let mut options = s.options();
    options.ca_file = None;
    let notifier = s.start_with(options);
    notifier.new_message_for_addr(USER.into()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), s.clock.sleeper_at(T + 8))
        .await
        .expect("retry scheduled after the TLS failure");
    assert!(s.gateway.state.received_tokens().is_empty());
    assert_eq!(s.relay.queued().len(), 1);
}

#[tokio::test]
async fn requests_in_flight_are_bounded() {
    let s = Setup::new().await;
    s.add_tokens(&["hang-1", "hang-2", "hang-3", "hang-4", "hang-5"]);
    let mut options = s.options();
    options.max_in_flight = 2;
    let notifier = s.start_with(options);
    notifier.new_message_for_addr(USER.into()).await.unwrap();
    s.gateway.state.wait_received(2).await;
    settle().await;
    assert_eq!(s.gateway.state.received.lock().unwrap().len(), 2);
    assert_eq!(s.relay.queued().len(), 5);
}

#[tokio::test]
async fn bad_ca_file_is_a_start_error() {
    let s = Setup::new().await;
    let mut options = s.options();
    let bad = s.relay.path("bad.pem");
    fs::write(
        &bad,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    options.ca_file = Some(bad);
    assert!(
        Notifier::start(
            s.relay.queue_dir(),
            s.tokens.clone(),
            options.clone(),
            s.clock.clone()
        )
        .is_err()
    );
    options.ca_file = Some(s.relay.path("missing.pem"));
    let err = Notifier::start(
        s.relay.queue_dir(),
        s.tokens.clone(),
        options,
        s.clock.clone(),
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("missing.pem"), "{err}");
}
