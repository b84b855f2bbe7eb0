//! Reinjection over pooled connections, against the SMTP sink as Postfix: reuse, the cap,
//! the idle limit, and that a message is delivered exactly once or refused with the
//! reply the sender must get, whatever the pooled connection does.

#![allow(clippy::indexing_slicing)]

mod support;

use std::time::Duration;

use chatmail_filtermail::reinject::{PoolLimits, ReinjectError, ReinjectTarget, reinject};

use support::eventually;
use support::sink::{Sink, SinkMode};

const TIMEOUT: Duration = Duration::from_secs(5);

fn message(n: usize) -> Vec<u8> {
    format!("From: alice@example.org\r\nSubject: {n}\r\n\r\n.dot line {n}\r\nbody\r\n").into_bytes()
}

/// Reinjects message `n` from alice to bob.
async fn send(target: &ReinjectTarget, n: usize) -> Result<(), ReinjectError> {
    reinject(
        target,
        "alice@example.org",
        &["bob@example.org".to_owned()],
        &message(n),
    )
    .await
}

/// The subjects the sink accepted, in order: each message once.
fn delivered(sink: &Sink) -> Vec<Vec<u8>> {
    sink.received().into_iter().map(|r| r.data).collect()
}

#[tokio::test]
async fn messages_in_a_row_share_one_connection() {
    let sink = Sink::start(SinkMode::Accept).await;
    let target = ReinjectTarget::new(sink.addr, TIMEOUT);
    for n in 0..3 {
        send(&target, n).await.unwrap();
    }
    assert_eq!(sink.connections(), 1);
    assert_eq!(target.idle_connections(), 1);
    // Each transaction has its own envelope: nothing carried over.
    let received = sink.received();
    assert_eq!(received.len(), 3);
    for (n, r) in received.iter().enumerate() {
        assert_eq!(r.mail_from, "<alice@example.org>");
        assert_eq!(r.rcpt_to, vec!["<bob@example.org>".to_owned()]);
        assert_eq!(r.data, message(n));
    }
}

#[tokio::test]
async fn connection_closed_while_idle_is_replaced() {
    let sink = Sink::start(SinkMode::Accept).await;
    let target = ReinjectTarget::new(sink.addr, TIMEOUT);
    send(&target, 0).await.unwrap();
    sink.close_idle_connections();
    eventually("the sink closed its connection", || sink.open() == 0).await;
    send(&target, 1).await.unwrap();
    assert_eq!(delivered(&sink), vec![message(0), message(1)]);
    assert_eq!(sink.connections(), 2);
}

#[tokio::test]
async fn connection_closing_at_its_next_mail_is_retried_once_on_a_fresh_one() {
    // The close arrives only when the next transaction has begun: the race the check at
    // take-out cannot see.
    let sink = Sink::start(SinkMode::CloseReusedAtMail).await;
    let target = ReinjectTarget::new(sink.addr, TIMEOUT);
    send(&target, 0).await.unwrap();
    send(&target, 1).await.unwrap();
    assert_eq!(sink.connections(), 2);
    send(&target, 2).await.unwrap();
    assert_eq!(sink.connections(), 3);
    assert_eq!(delivered(&sink), vec![message(0), message(1), message(2)]);
}

#[tokio::test]
async fn connection_lost_after_its_first_reply_is_not_retried() {
    let sink = Sink::start(SinkMode::CloseReusedAtRcpt).await;
    let target = ReinjectTarget::new(sink.addr, TIMEOUT);
    send(&target, 0).await.unwrap();
    let err = send(&target, 1).await.unwrap_err();
    assert!(
        err.reply().starts_with("451 4.4.1 Reinjection failed: "),
        "{}",
        err.reply()
    );
    assert_eq!(sink.connections(), 1, "retried");
    assert_eq!(target.idle_connections(), 0);
    send(&target, 2).await.unwrap();
    assert_eq!(sink.connections(), 2);
    assert_eq!(delivered(&sink), vec![message(0), message(2)]);
}

#[tokio::test]
async fn refusal_on_a_pooled_connection_is_relayed_and_the_connection_dropped() {
    let sink = Sink::start(SinkMode::Accept).await;
    let target = ReinjectTarget::new(sink.addr, TIMEOUT);
    let mut connections = 1;
    send(&target, 0).await.unwrap();
    for refusal in [
        "452-4.3.1 first line\r\n452 4.3.1 Insufficient system storage",
        "554 5.7.1 Message refused",
    ] {
        assert_eq!(target.idle_connections(), 1);
        sink.reply_next_dot(refusal);
        let err = send(&target, 1).await.unwrap_err();
        assert_eq!(err.reply(), refusal);
        assert_eq!(target.idle_connections(), 0);
        // Told QUIT, and closed.
        eventually("the refusing connection closed", || sink.open() == 0).await;
        send(&target, 2).await.unwrap();
        connections += 1;
        assert_eq!(sink.connections(), connections);
    }
    assert_eq!(delivered(&sink), vec![message(0), message(2), message(2)]);
}

#[tokio::test]
async fn the_pool_never_holds_more_than_its_cap() {
    let sink = Sink::start(SinkMode::Accept).await;
    let limits = PoolLimits {
        max_idle: 2,
        idle_timeout: Duration::from_secs(60),
    };
    let target = ReinjectTarget::with_pool(sink.addr, TIMEOUT, limits);
    // On this single-threaded runtime all five take from the pool before any finishes:
    // five connections at once.
    let five = || {
        futures_join5(
            send(&target, 0),
            send(&target, 1),
            send(&target, 2),
            send(&target, 3),
            send(&target, 4),
        )
    };
    for result in five().await {
        result.unwrap();
    }
    assert_eq!(sink.connections(), 5);
    assert_eq!(target.idle_connections(), 2);
    eventually("three connections closed", || sink.open() == 2).await;
    assert_eq!(sink.quits(), 3);
    for result in five().await {
        result.unwrap();
    }
    // Two reused, three new, and again only two kept.
    assert_eq!(sink.connections(), 8);
    assert_eq!(target.idle_connections(), 2);
    eventually("six connections closed", || sink.open() == 2).await;
    assert_eq!(delivered(&sink).len(), 10);
}

async fn futures_join5<T>(
    a: impl Future<Output = T>,
    b: impl Future<Output = T>,
    c: impl Future<Output = T>,
    d: impl Future<Output = T>,
    e: impl Future<Output = T>,
) -> [T; 5] {
    let (a, b, c, d, e) = tokio::join!(a, b, c, d, e);
    [a, b, c, d, e]
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_limit() {
    let sink = Sink::start(SinkMode::Accept).await;
    let limits = PoolLimits {
        max_idle: 4,
        idle_timeout: Duration::from_millis(200),
    };
    let target = ReinjectTarget::with_pool(sink.addr, TIMEOUT, limits);
    send(&target, 0).await.unwrap();
    eventually("the idle connection closed", || sink.open() == 0).await;
    assert_eq!(sink.quits(), 1, "closed without QUIT");
    assert_eq!(target.idle_connections(), 0);
    send(&target, 1).await.unwrap();
    assert_eq!(sink.connections(), 2);
    // The reaper runs again for the new idle connection.
    eventually("the second idle connection closed", || sink.open() == 0).await;
    assert_eq!(sink.quits(), 2);
}

#[tokio::test]
async fn no_reuse_with_a_cap_of_zero() {
    let sink = Sink::start(SinkMode::Accept).await;
    let limits = PoolLimits {
        max_idle: 0,
        idle_timeout: Duration::from_secs(60),
    };
    let target = ReinjectTarget::with_pool(sink.addr, TIMEOUT, limits);
    send(&target, 0).await.unwrap();
    send(&target, 1).await.unwrap();
    assert_eq!(sink.connections(), 2);
    eventually("both connections closed after QUIT", || {
        sink.open() == 0 && sink.quits() == 2
    })
    .await;
}
