//! Whole SMTP conversations against the filter, with a test SMTP sink as Postfix's
//! reinjection port, and the load-bearing log lines captured verbatim.

#![allow(clippy::indexing_slicing)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chatmail_filtermail::limiter::SendLimiter;
use chatmail_filtermail::reinject::ReinjectTarget;
use chatmail_filtermail::server::{Limits, serve};
use chatmail_filtermail::{Direction, Filter};
use chatmail_mailbox::Mailboxes;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use support::client::Client;
use support::listener::bare_filter;
use support::logs;
use support::sink::{Received, Sink, SinkMode};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

// ---------------------------------------------------------------- the filter under test

struct Setup {
    addr: SocketAddr,
    mailboxes: tempfile::TempDir,
}

struct Options {
    direction: Direction,
    reinject: SocketAddr,
    max_message_size: u64,
    burst: u32,
    limits: Limits,
    dkim: Option<Arc<chatmail_filtermail::dkim::DkimVerifier>>,
}

impl Options {
    fn new(direction: Direction, reinject: SocketAddr) -> Self {
        Options {
            direction,
            reinject,
            max_message_size: 1_000_000,
            burst: 10,
            limits: Limits::default(),
            dkim: None,
        }
    }
}

async fn start_filter(options: Options) -> Setup {
    let mailboxes = tempfile::tempdir().unwrap();
    let filter = Filter {
        direction: options.direction,
        mailboxes: Mailboxes::new(mailboxes.path()),
        limiter: (options.direction == Direction::Outgoing)
            .then(|| SendLimiter::new(60, options.burst)),
        max_message_size: options.max_message_size,
        reinject: ReinjectTarget::new(options.reinject, Duration::from_secs(5)),
        limits: options.limits,
        dkim: options.dkim,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, Arc::new(filter), std::future::pending()));
    Setup { addr, mailboxes }
}

/// The SMTP transaction of these tests.
impl Client {
    /// MAIL and RCPTs, each expected to get `250 OK`, then DATA, expected to get 354.
    async fn start_data(&mut self, from: &str, to: &[&str]) {
        assert_eq!(self.command(&format!("MAIL FROM:<{from}>")).await, "250 OK");
        for rcpt in to {
            assert_eq!(self.command(&format!("RCPT TO:<{rcpt}>")).await, "250 OK");
        }
        assert_eq!(
            self.command("DATA").await,
            "354 End data with <CR><LF>.<CR><LF>"
        );
    }

    /// MAIL, RCPTs, DATA and the stuffed message; returns the reply to the final dot.
    async fn mail(&mut self, from: &str, to: &[&str], message: &[u8]) -> String {
        self.start_data(from, to).await;
        self.send(&stuff(message)).await;
        self.reply().await
    }
}

fn stuff(message: &[u8]) -> Vec<u8> {
    chatmail_filtermail::reinject::dot_stuff(message)
}

/// The encrypted fixture with From and envelope matching `alice@example.org`.
fn encrypted() -> Vec<u8> {
    fixture("enc-new-format.eml")
}

fn plain(from: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n").into_bytes()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn dialogue_replies() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    assert_eq!(
        c.command("EHLO localhost").await,
        "250-filtermail\n250-8BITMIME\n250 OK"
    );
    assert_eq!(
        c.command("LHLO localhost").await,
        "250-filtermail\n250-8BITMIME\n250 OK"
    );
    assert_eq!(c.command("HELO localhost").await, "250-filtermail\n250 OK");
    assert_eq!(c.command("NOOP").await, "250 OK");
    assert_eq!(c.command("RSET").await, "250 OK");
    assert_eq!(c.command("STARTTLS").await, "500 Command not recognized");
    assert_eq!(
        c.command("XFORWARD ADDR=1.2.3.4").await,
        "500 Command not recognized"
    );
    assert_eq!(c.command("DATA").await, "503 5.5.1 Need MAIL before DATA");
    assert_eq!(
        c.command(&"X".repeat(5000)).await,
        "500 5.5.2 Line too long"
    );
    assert_eq!(c.command("QUIT").await, "221 OK");
    c.assert_closed().await;
}

/// Each reply leaves in one write, so it arrives in one read: a multi-line reply split
/// over writes would, without TCP_NODELAY, hold its last line until the peer's delayed ACK
/// (the 40 ms per message stall), and arrive in pieces here.
async fn one_read(stream: &mut TcpStream, buf: &mut [u8]) -> usize {
    tokio::time::timeout(Duration::from_secs(10), stream.read(buf))
        .await
        .expect("reply in time")
        .unwrap()
}

#[tokio::test]
async fn multi_line_replies_arrive_in_one_read() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let mut stream = TcpStream::connect(setup.addr).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = one_read(&mut stream, &mut buf).await;
    assert_eq!(&buf[..n], b"220 filtermail SMTP\r\n");
    for (command, reply) in [
        (
            &b"EHLO x\r\n"[..],
            &b"250-filtermail\r\n250-8BITMIME\r\n250 OK\r\n"[..],
        ),
        (b"HELO x\r\n", b"250-filtermail\r\n250 OK\r\n"),
    ] {
        stream.write_all(command).await.unwrap();
        let n = one_read(&mut stream, &mut buf).await;
        assert_eq!(
            String::from_utf8_lossy(&buf[..n]),
            String::from_utf8_lossy(reply)
        );
    }
}

#[tokio::test]
async fn encrypted_mail_is_reinjected_byte_identical() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    c.command("EHLO localhost").await;
    // Lines starting with a dot must survive transparency both ways (0.2.0 doubled them).
    let mut message = encrypted();
    message.extend_from_slice(b".leading dot\r\n..two dots\r\n.\r\n");
    let reply = c
        .mail(
            "Alice@Example.org",
            &["Bob@Example.org", "carol@example.org"],
            &message,
        )
        .await;
    assert_eq!(reply, "250 OK");
    let received = sink.received();
    assert_eq!(
        received,
        vec![Received {
            mail_from: "<alice@example.org>".into(),
            rcpt_to: vec!["<bob@example.org>".into(), "<carol@example.org>".into()],
            wire: stuff(&message),
            data: message,
        }]
    );
    assert!(
        logs.lines()
            .contains(&"INFO Outgoing: Filtering encrypted mail.".to_owned()),
        "{}",
        logs.text()
    );
    // The connection serves the next transaction.
    assert_eq!(c.command("NOOP").await, "250 OK");
}

#[tokio::test]
async fn pipelined_transaction() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    let mut batch =
        b"EHLO x\r\nMAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n"
            .to_vec();
    batch.extend_from_slice(&stuff(&encrypted()));
    batch.extend_from_slice(b"QUIT\r\n");
    c.send(&batch).await;
    assert_eq!(c.reply().await, "250-filtermail\n250-8BITMIME\n250 OK");
    assert_eq!(c.reply().await, "250 OK");
    assert_eq!(c.reply().await, "250 OK");
    assert_eq!(c.reply().await, "354 End data with <CR><LF>.<CR><LF>");
    assert_eq!(c.reply().await, "250 OK");
    assert_eq!(c.reply().await, "221 OK");
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn commands_in_the_same_write_as_the_data_are_answered() {
    // Commands that came after the terminator in the same reads are answered after the
    // message, also when the message is larger than the read buffer.
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    assert_eq!(
        c.command("EHLO x").await,
        "250-filtermail\n250-8BITMIME\n250 OK"
    );
    let mut padded = encrypted();
    let padding: Vec<u8> =
        b"X-Padding: 0123456789abcdef0123456789abcdef0123456789abcdef\r\n".repeat(1000);
    padded.splice(0..0, padding);
    for message in [encrypted(), padded] {
        assert_eq!(c.command("MAIL FROM:<alice@example.org>").await, "250 OK");
        assert_eq!(c.command("RCPT TO:<bob@example.org>").await, "250 OK");
        assert_eq!(
            c.command("DATA").await,
            "354 End data with <CR><LF>.<CR><LF>"
        );
        let mut batch = stuff(&message);
        batch.extend_from_slice(b"NOOP\r\nRSET\r\n");
        c.send(&batch).await;
        assert_eq!(c.reply().await, "250 OK");
        assert_eq!(c.reply().await, "250 OK");
        assert_eq!(c.reply().await, "250 OK");
    }
    let received = sink.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].data, encrypted());
    assert!(received[1].data.len() > 60_000);
    assert_eq!(c.command("QUIT").await, "221 OK");
    assert_eq!(logs.count("INFO Outgoing: Filtering encrypted mail."), 2);
}

#[tokio::test]
async fn unencrypted_outgoing_is_refused_with_log_lines() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    let reply = c
        .mail(
            "alice@example.org",
            &["bob@example.org"],
            &plain("alice@example.org"),
        )
        .await;
    assert_eq!(reply, "523 Encryption Needed: Invalid Unencrypted Mail");
    assert_eq!(
        logs.lines(),
        vec![
            "INFO Outgoing: Filtering unencrypted mail.",
            "WARN Rejected unencrypted mail from: alice@example.org",
        ]
    );
    // Forged From, even encrypted.
    let reply = c
        .mail("mallory@example.org", &["bob@example.org"], &encrypted())
        .await;
    assert_eq!(
        reply,
        "500 Invalid FROM alice@example.org for mallory@example.org"
    );
    // No From header.
    let reply = c
        .mail(
            "alice@example.org",
            &["bob@example.org"],
            b"Subject: x\r\n\r\nhi\r\n",
        )
        .await;
    assert_eq!(reply, "500 Invalid FROM header: ");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn rate_limit_keeps_the_connection_open() {
    let sink = Sink::start(SinkMode::Accept).await;
    let mut options = Options::new(Direction::Outgoing, sink.addr);
    options.burst = 2;
    let setup = start_filter(options).await;
    let mut c = Client::connect(setup.addr).await;
    assert_eq!(c.command("MAIL FROM:<rate@example.org>").await, "250 OK");
    assert_eq!(c.command("MAIL FROM:<RATE@example.org>").await, "250 OK");
    let refused = c.command("MAIL FROM:<rate@example.org>").await;
    assert!(
        refused.starts_with("450 4.7.1: Too much mail from rate@example.org, rate-limited until "),
        "{refused}"
    );
    assert!(refused.ends_with(" s from now"), "{refused}");
    assert_eq!(c.command("MAIL FROM:<other@example.org>").await, "250 OK");
    assert_eq!(
        c.command("MAIL FROM:<a@b@c>").await,
        "500 Invalid from address a@b@c"
    );
    assert_eq!(c.command("NOOP").await, "250 OK");
}

#[tokio::test]
async fn envelope_edge_cases() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Incoming, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    assert_eq!(
        c.command("MAIL FROM:<nobody>").await,
        "500 Invalid address in MAIL FROM"
    );
    assert!(
        logs.lines().contains(
            &"WARN Invalid MAIL FROM command. Can't extract address. Received: MAIL FROM:<nobody>"
                .to_owned()
        )
    );
    assert_eq!(
        c.command("RCPT TO:<x@example.org>").await,
        "503 5.5.1 Need MAIL before RCPT"
    );
    // Bounces: the null sender is accepted (0.7.4), and reinjected as such.
    assert_eq!(c.command("MAIL FROM:<>").await, "250 OK");
    // 0.2.0 did not answer at all here.
    assert_eq!(
        c.command("RCPT TO:<>").await,
        "500 Invalid address in RCPT TO"
    );
    assert_eq!(c.command("DATA").await, "554 5.5.1 No valid recipients");
}

#[tokio::test]
async fn disabled_marker_files_remove_recipients_and_drop_mail() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let disable = |addr: &str| {
        let maildir = setup.mailboxes.path().join(addr);
        std::fs::create_dir_all(&maildir).unwrap();
        std::fs::write(maildir.join("DISABLED"), "").unwrap();
    };
    disable("carol@example.org");
    let mut c = Client::connect(setup.addr).await;
    let reply = c
        .mail(
            "alice@example.org",
            &["bob@example.org", "carol@example.org"],
            &encrypted(),
        )
        .await;
    assert_eq!(reply, "250 OK");
    let received = sink.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].rcpt_to, ["<bob@example.org>"]);
    // Every recipient disabled: 250, nothing reinjected.
    let reply = c
        .mail("alice@example.org", &["carol@example.org"], &encrypted())
        .await;
    assert_eq!(reply, "250 OK");
    // A disabled sender: 250, nothing reinjected.
    disable("alice@example.org");
    let reply = c
        .mail("alice@example.org", &["bob@example.org"], &encrypted())
        .await;
    assert_eq!(reply, "250 OK");
    assert_eq!(sink.received().len(), 1);
    assert_eq!(
        logs.lines(),
        [
            "WARN Disabled recipient: carol@example.org; removing from RCPT TO",
            "INFO Outgoing: Filtering encrypted mail.",
            "WARN Disabled recipient: carol@example.org; removing from RCPT TO",
            "INFO Outgoing: Filtering encrypted mail.",
            "WARN Dropping mail; All recipients disabled.",
            "INFO Outgoing: Filtering encrypted mail.",
            "WARN Dropping mail; Sender alice@example.org is disabled.",
        ]
    );
}

#[tokio::test]
async fn incoming_marker_and_bounces() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Incoming, sink.addr)).await;
    let maildir = setup.mailboxes.path().join("bob@example.org");
    std::fs::create_dir_all(&maildir).unwrap();
    std::fs::write(maildir.join("enforceE2EEincoming"), "").unwrap();
    let mut c = Client::connect(setup.addr).await;
    let message = plain("alice@remote.org");
    let reply = c
        .mail("alice@remote.org", &["bob@example.org"], &message)
        .await;
    assert_eq!(reply, "523 Encryption Needed: Invalid Unencrypted Mail");
    std::fs::remove_file(maildir.join("enforceE2EEincoming")).unwrap();
    let reply = c
        .mail("alice@remote.org", &["bob@example.org"], &message)
        .await;
    assert_eq!(reply, "250 OK");
    // Forwarded mail: envelope sender differs from From ⇒ reinjected with the null sender.
    let reply = c
        .mail("srs0=x@fwd.org", &["bob@example.org"], &encrypted())
        .await;
    assert_eq!(reply, "250 OK");
    let bounce = b"From: Mail Delivery System <MAILER-DAEMON@remote.org>\r\nAuto-Submitted: auto-replied\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n--b\r\n\r\nfailed\r\n--b--\r\n";
    std::fs::write(maildir.join("enforceE2EEincoming"), "").unwrap();
    c.start_data("", &["bob@example.org"]).await;
    c.send(&stuff(bounce)).await;
    assert_eq!(c.reply().await, "250 OK");

    let received = sink.received();
    let senders: Vec<&str> = received.iter().map(|r| r.mail_from.as_str()).collect();
    assert_eq!(senders, ["<alice@remote.org>", "<>", "<>"]);
    assert_eq!(
        logs.lines(),
        vec![
            "INFO Incoming: Filtering unencrypted mail.",
            "WARN Rejected unencrypted mail from: alice@remote.org",
            "INFO Incoming: Filtering unencrypted mail.",
            "INFO Incoming: Filtering encrypted mail.",
            "INFO Incoming: Filtering mailer-daemon message from mailer-daemon@remote.org",
        ]
    );
}

#[tokio::test]
async fn oversized_message_gets_552_after_the_whole_body() {
    let sink = Sink::start(SinkMode::Accept).await;
    let mut options = Options::new(Direction::Outgoing, sink.addr);
    options.max_message_size = 2000;
    let setup = start_filter(options).await;
    let mut c = Client::connect(setup.addr).await;
    let mut message = encrypted();
    // Body lines that would read as commands if the filter stopped reading (0.7.4 did).
    message.extend_from_slice(&b"QUIT\r\n".repeat(100));
    message.extend_from_slice(&[b'x'; 10_000]);
    message.extend_from_slice(b"\r\n");
    let reply = c
        .mail("alice@example.org", &["bob@example.org"], &message)
        .await;
    assert_eq!(reply, "552 Message exceeds maximum size");
    assert_eq!(c.command("NOOP").await, "250 OK");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn bare_cr_in_data_is_invalid() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    let reply = c
        .mail(
            "alice@example.org",
            &["bob@example.org"],
            b"From: alice@example.org\r\n\r\na\rb\r\n",
        )
        .await;
    assert_eq!(reply, "500 Invalid DATA");
}

#[tokio::test]
async fn bare_lf_closes_without_reply() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    c.send(b"NOOP\n").await;
    c.assert_closed().await;
    let mut c = Client::connect(setup.addr).await;
    c.start_data("alice@example.org", &["bob@example.org"])
        .await;
    c.send(b"From: alice@example.org\n").await;
    c.assert_closed().await;
    let mut c = Client::connect(setup.addr).await;
    c.start_data("alice2@example.org", &["bob@example.org"])
        .await;
    c.send(b"From: alice@example.org\r\n").await;
    c.stream.get_mut().shutdown().await.unwrap();
    c.assert_closed().await;
    // Let the server tasks log.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        logs.lines(),
        vec![
            "WARN Malformed command without CRLF ending! Closing connection.",
            "WARN Malformed DATA line without CRLF ending! Closing connection.",
            "WARN Unexpected EoF while receiving DATA! Closing connection.",
        ]
    );
}

#[tokio::test]
async fn postfix_refusal_is_relayed_unchanged() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let sink = Sink::start(SinkMode::RejectData("550 5.7.1 Spam go away")).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    let reply = c
        .mail("alice@example.org", &["bob@example.org"], &encrypted())
        .await;
    assert_eq!(reply, "550 5.7.1 Spam go away");
    assert!(
        logs.lines()
            .contains(&"WARN Failed to reinject mail: 550 5.7.1 Spam go away".to_owned()),
        "{}",
        logs.text()
    );
}

/// Reinjection connections are reused across messages, sessions and client connections.
#[tokio::test]
async fn messages_in_a_row_reuse_one_reinjection_connection() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    for _ in 0..2 {
        let reply = c
            .mail("alice@example.org", &["bob@example.org"], &encrypted())
            .await;
        assert_eq!(reply, "250 OK");
    }
    assert_eq!(c.command("QUIT").await, "221 OK");
    let mut c = Client::connect(setup.addr).await;
    let reply = c
        .mail("alice@example.org", &["carol@example.org"], &encrypted())
        .await;
    assert_eq!(reply, "250 OK");
    assert_eq!(sink.connections(), 1);
    let received = sink.received();
    assert_eq!(received.len(), 3);
    assert_eq!(received[2].rcpt_to, vec!["<carol@example.org>".to_owned()]);
}

#[tokio::test]
async fn reinject_target_dying_mid_transfer_gives_4xx() {
    let sink = Sink::start(SinkMode::DieMidData).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    let reply = c
        .mail("alice@example.org", &["bob@example.org"], &encrypted())
        .await;
    assert!(reply.starts_with("451 "), "{reply}");
    assert_eq!(c.command("NOOP").await, "250 OK");
}

#[tokio::test]
async fn reinject_target_down_gives_451() {
    // A port nobody listens on: bind, note it, close.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let setup = start_filter(Options::new(Direction::Outgoing, dead)).await;
    let mut c = Client::connect(setup.addr).await;
    let reply = c
        .mail("alice@example.org", &["bob@example.org"], &encrypted())
        .await;
    assert!(
        reply.starts_with("451 4.4.1 Reinjection failed: connecting to "),
        "{reply}"
    );
}

#[tokio::test]
async fn eight_bit_data_is_judged_not_dropped() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    let mut message = b"From: alice@example.org\r\nSubject: \xff\xfe\r\n\r\n".to_vec();
    message.extend_from_slice(b"caf\xe9\r\n");
    let reply = c
        .mail("alice@example.org", &["bob@example.org"], &message)
        .await;
    assert_eq!(reply, "523 Encryption Needed: Invalid Unencrypted Mail");
}

#[tokio::test]
async fn idle_peers_are_timed_out() {
    let sink = Sink::start(SinkMode::Accept).await;
    let mut options = Options::new(Direction::Outgoing, sink.addr);
    options.limits.command_timeout = Duration::from_millis(200);
    options.limits.data_timeout = Duration::from_millis(200);
    let setup = start_filter(options).await;
    let mut c = Client::connect(setup.addr).await;
    assert_eq!(c.reply().await, "421 4.4.2 Timeout, closing connection");
    c.assert_closed().await;
    let mut c = Client::connect(setup.addr).await;
    c.start_data("alice@example.org", &["bob@example.org"])
        .await;
    c.send(b"From: alice@example.org\r\n").await;
    assert_eq!(c.reply().await, "421 4.4.2 Timeout, closing connection");
    c.assert_closed().await;
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn connections_beyond_the_cap_wait() {
    let sink = Sink::start(SinkMode::Accept).await;
    let mut options = Options::new(Direction::Outgoing, sink.addr);
    options.limits.max_connections = 1;
    let setup = start_filter(options).await;
    let mut first = Client::connect(setup.addr).await;
    // The second peer is accepted by the kernel but not served yet.
    let mut second = BufReader::new(TcpStream::connect(setup.addr).await.unwrap());
    let mut greeting = String::new();
    let early =
        tokio::time::timeout(Duration::from_millis(300), second.read_line(&mut greeting)).await;
    assert!(early.is_err(), "served beyond the cap: {greeting:?}");
    assert_eq!(first.command("QUIT").await, "221 OK");
    tokio::time::timeout(Duration::from_secs(5), second.read_line(&mut greeting))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(greeting, "220 filtermail SMTP\r\n");
}

#[tokio::test]
async fn shutdown_stops_accepting() {
    let sink = Sink::start(SinkMode::Accept).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let filter = bare_filter(sink.addr);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, Arc::new(filter), async {
        let _ = rx.await;
    }));
    let mut c = Client::connect(addr).await;
    tx.send(()).unwrap();
    // The connection in flight still finishes its dialogue.
    assert_eq!(c.command("NOOP").await, "250 OK");
    assert_eq!(c.command("QUIT").await, "221 OK");
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn empty_message_cannot_be_parsed() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Outgoing, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    let reply = c.mail("alice@example.org", &["bob@example.org"], b"").await;
    assert_eq!(reply, "500 Failed to parse message: empty message");
    // A bounce submitted by our own user has no authenticated sender to match From.
    let reply = c.mail("", &["bob@example.org"], &encrypted()).await;
    assert_eq!(reply, "500 Invalid FROM alice@example.org for ");
}

/// Replays every conversation in tests/conversations (format in its README.md).
#[tokio::test]
async fn conversations_replay() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/conversations");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let script = std::fs::read_to_string(&file).unwrap();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        replay(&name, &script).await;
    }
}

async fn replay(name: &str, script: &str) {
    let mut lines = script
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'));
    let direction = match lines.next() {
        Some("mode: outgoing") => Direction::Outgoing,
        Some("mode: incoming") => Direction::Incoming,
        other => panic!("{name}: first line must give the mode, not {other:?}"),
    };
    let sink = Sink::start(SinkMode::Accept).await;
    let mut options = Options::new(direction, sink.addr);
    let mut lines = lines.peekable();
    if let Some(burst) = lines.peek().and_then(|l| l.strip_prefix("burst: ")) {
        options.burst = burst.parse().unwrap();
        lines.next();
    }
    let setup = start_filter(options).await;
    let mut stream = BufReader::new(TcpStream::connect(setup.addr).await.unwrap());
    for (n, line) in lines.enumerate() {
        let at = format!("{name}, step {}: {line}", n + 1);
        if let Some(text) = line.strip_prefix("C: ") {
            stream
                .get_mut()
                .write_all(format!("{text}\r\n").as_bytes())
                .await
                .unwrap();
        } else if let Some(fixture_name) = line.strip_prefix("C= ") {
            stream
                .get_mut()
                .write_all(&stuff(&fixture(fixture_name)))
                .await
                .unwrap();
        } else if line == "closed" {
            let mut rest = Vec::new();
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest));
            read.await.expect(&at).unwrap();
            assert!(
                rest.is_empty(),
                "{at}: got {:?}",
                String::from_utf8_lossy(&rest)
            );
        } else {
            let mut got = String::new();
            let read = tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut got));
            read.await.expect(&at).unwrap();
            let got = got
                .strip_suffix("\r\n")
                .unwrap_or_else(|| panic!("{at}: {got:?}"));
            if let Some(expected) = line.strip_prefix("S: ") {
                assert_eq!(got, expected, "{at}");
            } else if let Some(prefix) = line.strip_prefix("S~ ") {
                assert!(got.starts_with(prefix), "{at}: got {got:?}");
            } else {
                panic!("{at}: unknown step");
            }
        }
    }
}

#[tokio::test]
async fn eight_bit_mail_is_reinjected_as_8bitmime() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start_filter(Options::new(Direction::Incoming, sink.addr)).await;
    let mut c = Client::connect(setup.addr).await;
    let message = "From: alice@remote.org\r\nSubject: Grüße\r\n\r\nHällo\r\n".as_bytes();
    let reply = c
        .mail("alice@remote.org", &["bob@example.org"], message)
        .await;
    assert_eq!(reply, "250 OK");
    let received = sink.received();
    assert_eq!(received[0].mail_from, "<alice@remote.org> BODY=8BITMIME");
    assert_eq!(received[0].data, message);
}
