//! accept() failing (EMFILE) must not stop the server (it crashed upstream's 0.2.0).
//! Alone in its test binary: it lowers the process's file limit.

mod support;

use std::sync::Arc;
use std::time::Duration;

use chatmail_filtermail::server::serve;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use support::listener::{FileLimit, bare_filter};

#[tokio::test]
async fn accept_error_is_retried_not_fatal() {
    let (logs, _guard) = support::logs::capture(tracing::Level::INFO);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let filter = bare_filter(addr);
    // Room for exactly one more descriptor: the client's socket. The server's accept()
    // then finds no free descriptor below the limit.
    let limit = FileLimit::leave_one();
    let mut client = TcpStream::connect(addr).await.unwrap();
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
