//! accept() failing (EMFILE) must not stop the server (it crashed upstream's 0.2.0).
//! Alone in its test binary: it lowers the process's file limit.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatmail_filtermail::reinject::ReinjectTarget;
use chatmail_filtermail::server::{Limits, serve};
use chatmail_filtermail::{Direction, Filter};
use chatmail_mailbox::Mailboxes;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// The descriptor number the next socket gets (the kernel hands out the lowest free one).
fn lowest_free_fd() -> u64 {
    use std::os::fd::AsRawFd;
    let probe = std::fs::File::open("/dev/null").unwrap();
    u64::try_from(probe.as_raw_fd()).unwrap()
}

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn accept_error_is_retried_not_fatal() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .without_time()
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
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
    tokio::spawn(serve(listener, Arc::new(filter), std::future::pending()));
    let mut greeting = [0u8; 21];
    let starved =
        tokio::time::timeout(Duration::from_millis(500), client.read_exact(&mut greeting)).await;
    assert!(starved.is_err(), "accept() should have failed with EMFILE");
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).unwrap();
    tokio::time::timeout(Duration::from_secs(15), client.read_exact(&mut greeting))
        .await
        .expect("served after the limit was raised")
        .unwrap();
    assert_eq!(&greeting, b"220 filtermail SMTP\r\n");
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("Error accepting connection: Too many open files"),
        "{logs}"
    );
}
