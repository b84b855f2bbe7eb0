//! accept() failing (EMFILE) must not stop the `/mxdeliv` listener either.
//! Alone in its test binary: it lowers the process's file limit.

use std::time::Duration;

use chatmail_filtermail::http::{HttpLimits, serve};
use chatmail_filtermail::reinject::ReinjectTarget;
use chatmail_filtermail::server::Limits;
use chatmail_filtermail::{Direction, Filter};
use chatmail_mailbox::Mailboxes;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

mod support;

/// The descriptor number the next socket gets (the kernel hands out the lowest free one).
fn lowest_free_fd() -> u64 {
    use std::os::fd::AsRawFd;
    let probe = std::fs::File::open("/dev/null").unwrap();
    u64::try_from(probe.as_raw_fd()).unwrap()
}

#[tokio::test]
async fn accept_error_is_retried_not_fatal() {
    let (logs, _guard) = support::logs::capture(tracing::Level::INFO);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let filter = Filter {
        direction: Direction::Incoming,
        mailboxes: Mailboxes::new("/nonexistent"),
        limiter: None,
        max_message_size: 1000,
        reinject: ReinjectTarget {
            addr,
            timeout: Duration::from_secs(1),
        },
        limits: Limits::default(),
        dkim: None,
    };
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    // Room for exactly one more descriptor: the client's socket. The server's accept()
    // then finds no free descriptor below the limit.
    setrlimit(Resource::RLIMIT_NOFILE, lowest_free_fd() + 1, hard).unwrap();
    let mut client = TcpStream::connect(addr).await.unwrap();
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
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
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
