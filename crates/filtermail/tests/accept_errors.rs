//! accept() failing (EMFILE) must not stop the server (it crashed upstream's 0.2.0).
//! Alone in its test binary: it lowers the process's file limit.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chatmail_filtermail::server::serve;
use tokio::io::AsyncReadExt;

use support::listener::starved_listener;

#[tokio::test]
async fn accept_error_is_retried_not_fatal() {
    let (logs, _guard) = support::logs::capture(tracing::Level::INFO);
    // The client's socket took the last descriptor below the limit.
    let (listener, filter, mut client, limit) = starved_listener().await;
    tokio::spawn(serve(listener, Arc::new(filter), std::future::pending()));
    let mut greeting = [0u8; 21];
    let starved =
        tokio::time::timeout(Duration::from_millis(500), client.read_exact(&mut greeting)).await;
    assert!(starved.is_err(), "accept() should have failed with EMFILE");
    limit.restore();
    tokio::time::timeout(Duration::from_secs(15), client.read_exact(&mut greeting))
        .await
        .expect("served after the limit was raised")
        .unwrap();
    assert_eq!(&greeting, b"220 filtermail SMTP\r\n");
    assert!(
        logs.text()
            .contains("Error accepting connection: Too many open files"),
        "{}",
        logs.text()
    );
}
