//! accept() failing (EMFILE) must not stop the `/mxdeliv` listener either.
//! Alone in its test binary: it lowers the process's file limit.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chatmail_filtermail::http::{HttpLimits, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::listener::starved_listener;

#[tokio::test]
async fn accept_error_is_retried_not_fatal() {
    let (logs, _guard) = support::logs::capture(tracing::Level::INFO);
    // The client's socket took the last descriptor below the limit.
    let (listener, filter, mut client, limit) = starved_listener().await;
    tokio::spawn(serve(
        listener,
        Arc::new(filter),
        HttpLimits::default(),
        std::future::pending(),
    ));
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let starved =
        tokio::time::timeout(Duration::from_millis(500), client.read_to_end(&mut answer)).await;
    assert!(starved.is_err(), "accept() should have failed with EMFILE");
    limit.restore();
    tokio::time::timeout(Duration::from_secs(15), client.read_to_end(&mut answer))
        .await
        .expect("served after the limit was raised")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    assert!(
        logs.text()
            .contains("Error accepting connection: Too many open files"),
        "{}",
        logs.text()
    );
}
