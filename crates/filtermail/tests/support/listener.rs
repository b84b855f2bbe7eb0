//! For the tests of the listeners themselves: a filter that is never asked to judge or
//! reinject, and a file limit that leaves room for exactly one more descriptor (so the
//! server's next accept() fails with EMFILE).
//!
//! Used by `tests/smtp.rs` and the accept-error tests (as `mod support`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use chatmail_filtermail::reinject::ReinjectTarget;
use chatmail_filtermail::server::Limits;
use chatmail_filtermail::{Direction, Filter};
use chatmail_mailbox::Mailboxes;
use nix::sys::resource::{Resource, getrlimit, setrlimit};
use tokio::net::{TcpListener, TcpStream};

/// An incoming filter without mailboxes, limiter or DKIM that reinjects to `reinject`.
pub fn bare_filter(reinject: SocketAddr) -> Filter {
    Filter {
        direction: Direction::Incoming,
        mailboxes: Mailboxes::new("/nonexistent"),
        limiter: None,
        max_message_size: 1000,
        reinject: ReinjectTarget::new(reinject, Duration::from_secs(5)),
        limits: Limits::default(),
        dkim: None,
    }
}

/// A listener on 127.0.0.1:0, a [`bare_filter`] for it and a client already connected to
/// it, with the file limit lowered so that the client's socket took the last descriptor:
/// the server's accept() fails with EMFILE until the returned limit is restored.
pub async fn starved_listener() -> (TcpListener, Filter, TcpStream, FileLimit) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let filter = bare_filter(addr);
    let limit = FileLimit::leave_one();
    let client = TcpStream::connect(addr).await.unwrap();
    (listener, filter, client, limit)
}

/// The process's file limit as it was before [`FileLimit::leave_one`] lowered it.
pub struct FileLimit {
    soft: u64,
    hard: u64,
}

impl FileLimit {
    /// Lowers the soft limit so that exactly one more descriptor can be opened.
    pub fn leave_one() -> FileLimit {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        setrlimit(Resource::RLIMIT_NOFILE, lowest_free_fd() + 1, hard).unwrap();
        FileLimit { soft, hard }
    }

    /// Puts the limit back.
    pub fn restore(self) {
        setrlimit(Resource::RLIMIT_NOFILE, self.soft, self.hard).unwrap();
    }
}

/// The descriptor number the next socket gets (the kernel hands out the lowest free one).
fn lowest_free_fd() -> u64 {
    use std::os::fd::AsRawFd;
    let probe = std::fs::File::open("/dev/null").unwrap();
    u64::try_from(probe.as_raw_fd()).unwrap()
}
