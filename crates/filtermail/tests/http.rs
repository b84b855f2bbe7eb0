//! The incoming `/mxdeliv` HTTP endpoint over real HTTP/1.1 and h2c on 127.0.0.1, with a
//! local SMTP sink as Postfix's reinjection port; and the binary's second listener.

#![allow(clippy::indexing_slicing)]

mod support;

use std::io::{BufRead, BufReader as StdBufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use chatmail_filtermail::dkim::{DkimVerifier, StaticResolver};
use chatmail_filtermail::http::{HttpLimits, serve};
use chatmail_filtermail::reinject::{ReinjectTarget, dot_stuff};
use chatmail_filtermail::server::Limits;
use chatmail_filtermail::{Direction, Filter};
use chatmail_mailbox::Mailboxes;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::logs;
use support::pgp;
use support::sink::{Sink, SinkMode};

const ENCRYPTED_SIZE: usize = 5 * 1024;
const ENFORCING: &str = "bob@example.org";

// ---------------------------------------------------------------- the endpoint under test

struct Setup {
    addr: SocketAddr,
    mailboxes: tempfile::TempDir,
}

struct Options {
    reinject: SocketAddr,
    max_message_size: u64,
    limits: HttpLimits,
    dkim: Option<Arc<DkimVerifier>>,
}

impl Options {
    fn new(reinject: SocketAddr) -> Options {
        Options {
            reinject,
            max_message_size: 1_000_000,
            limits: HttpLimits::default(),
            dkim: None,
        }
    }
}

/// The incoming filter's HTTP listener; `bob@example.org` has `enforceE2EEincoming`.
async fn start(options: Options) -> Setup {
    let mailboxes = tempfile::tempdir().unwrap();
    let maildir = mailboxes.path().join(ENFORCING);
    std::fs::create_dir_all(&maildir).unwrap();
    std::fs::write(maildir.join("enforceE2EEincoming"), "").unwrap();
    let filter = Filter {
        direction: Direction::Incoming,
        mailboxes: Mailboxes::new(mailboxes.path()),
        limiter: None,
        max_message_size: options.max_message_size,
        reinject: ReinjectTarget::new(options.reinject, Duration::from_secs(5)),
        limits: Limits::default(),
        dkim: options.dkim,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        Arc::new(filter),
        options.limits,
        std::future::pending(),
    ));
    Setup { addr, mailboxes }
}

/// The paths under the mailboxes directory, sorted.
fn tree(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(next).unwrap() {
            let path = entry.unwrap().path();
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

// ---------------------------------------------------------------- clients

/// One request: method, envelope headers, body.
struct Post<'a> {
    method: &'a str,
    from: Option<&'a str>,
    to: Vec<&'a str>,
    body: Vec<u8>,
}

impl<'a> Post<'a> {
    fn new(from: &'a str, to: &[&'a str], message: &[u8]) -> Post<'a> {
        Post {
            method: "POST",
            from: Some(from),
            to: to.to_vec(),
            body: wire(message),
        }
    }

    fn request(&self, uri: &str) -> Request<Full<Bytes>> {
        let mut request = Request::builder().method(self.method).uri(uri);
        if let Some(from) = self.from {
            request = request.header("X-MAIL-FROM", from);
        }
        for to in &self.to {
            request = request.header("x-mail-to", *to);
        }
        request
            .body(Full::new(Bytes::from(self.body.clone())))
            .unwrap()
    }
}

async fn read_response(response: hyper::Response<hyper::body::Incoming>) -> (StatusCode, String) {
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends each request over one HTTP/1.1 connection.
async fn http1(addr: SocketAddr, posts: &[Post<'_>]) -> Vec<(StatusCode, String)> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut answers = Vec::new();
    for post in posts {
        let response = tokio::time::timeout(
            Duration::from_secs(20),
            sender.send_request(post.request("/mxdeliv")),
        )
        .await
        .expect("answer in time")
        .unwrap();
        answers.push(read_response(response).await);
    }
    answers
}

/// Sends one request over HTTP/1.1.
async fn post(addr: SocketAddr, post: Post<'_>) -> (StatusCode, String) {
    http1(addr, &[post]).await.remove(0)
}

/// Sends the requests at once over one h2c connection (prior knowledge, no upgrade).
async fn http2(addr: SocketAddr, posts: &[Post<'_>]) -> Vec<(StatusCode, String)> {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let uri = format!("http://{addr}/mxdeliv");
    let requests = posts.iter().map(|post| {
        let mut sender = sender.clone();
        let request = post.request(&uri);
        async move {
            let response = sender.send_request(request).await.unwrap();
            read_response(response).await
        }
    });
    let all = async {
        let mut answers = Vec::new();
        let handles: Vec<_> = requests.map(tokio::spawn).collect();
        for handle in handles {
            answers.push(handle.await.unwrap());
        }
        answers
    };
    tokio::time::timeout(Duration::from_secs(20), all)
        .await
        .expect("answers in time")
}

/// Writes `head` and then reads until the peer closes; for requests a well-behaved
/// client library refuses to send. Returns what came back.
async fn raw(addr: SocketAddr, head: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer))
        .await
        .expect("answer in time")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

// ---------------------------------------------------------------- messages

/// The body of a request: the message in SMTP's data form (dot-stuffed, CRLF, no
/// terminator).
fn wire(message: &[u8]) -> Vec<u8> {
    let stuffed = dot_stuff(message);
    let body = stuffed.strip_suffix(b".\r\n").expect("terminator");
    assert!(body.is_empty() || body.ends_with(b"\r\n"));
    body.to_vec()
}

/// A Sequoia-made PGP/MIME message from alice@example.org to bob@example.org.
fn encrypted() -> Vec<u8> {
    pgp::encrypted_mail_of_size(ENCRYPTED_SIZE)
}

fn cleartext(from: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n").into_bytes()
}

const OK: (StatusCode, &str) = (StatusCode::OK, "250 OK");
const ENCRYPTION_NEEDED: &str = "523 Encryption Needed: Invalid Unencrypted Mail";

fn answer(pair: &(StatusCode, String)) -> (StatusCode, &str) {
    (pair.0, pair.1.as_str())
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn encrypted_mail_is_reinjected_with_its_envelope() {
    let (logs, _guard) = logs::capture(tracing::Level::DEBUG);
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start(Options::new(sink.addr)).await;
    let message = encrypted();
    let request = Post::new(
        "Alice@Example.org",
        &["Bob@Example.org", "carol@example.org"],
        &message,
    );
    assert_eq!(answer(&post(setup.addr, request).await), OK);
    let received = sink.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].mail_from, "<alice@example.org>");
    assert_eq!(
        received[0].rcpt_to,
        ["<bob@example.org>", "<carol@example.org>"]
    );
    assert_eq!(received[0].data, message);
    for line in [
        "DEBUG (HTTP) MAIL FROM:<alice@example.org>",
        "DEBUG (HTTP) RCPT TO:<bob@example.org>",
        "DEBUG (HTTP) RCPT TO:<carol@example.org>",
        "INFO Incoming: Filtering encrypted mail.",
    ] {
        assert!(logs.contains(line), "{line}\n{}", logs.text());
    }
}

#[tokio::test]
async fn h2c_requests_share_one_connection() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start(Options::new(sink.addr)).await;
    let message = encrypted();
    let clear = cleartext("dora@remote.org");
    let posts = [
        Post::new("alice@example.org", &["carol@example.org"], &message),
        Post::new("dora@remote.org", &["carol@example.org"], &clear),
        Post::new("dora@remote.org", &[ENFORCING], &clear),
        Post {
            method: "GET",
            ..Post::new("dora@remote.org", &[ENFORCING], &clear)
        },
    ];
    let answers = http2(setup.addr, &posts).await;
    let answers: Vec<_> = answers.iter().map(answer).collect();
    assert_eq!(
        answers,
        [
            OK,
            OK,
            (StatusCode::BAD_REQUEST, ENCRYPTION_NEEDED),
            (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
        ]
    );
    let mut data: Vec<Vec<u8>> = sink.received().into_iter().map(|r| r.data).collect();
    data.sort();
    let mut expected = vec![message, clear];
    expected.sort();
    assert_eq!(data, expected);
}

#[tokio::test]
async fn cleartext_to_a_recipient_enforcing_encryption_gets_523() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start(Options::new(sink.addr)).await;
    let clear = cleartext("dora@remote.org");
    let answers = http1(
        setup.addr,
        &[
            Post::new("dora@remote.org", &[ENFORCING], &clear),
            // The marker is found whatever the spelling: X-MAIL-TO is lower-cased.
            Post::new("dora@remote.org", &["BOB@Example.ORG"], &clear),
            // One enforcing recipient among others is enough.
            Post::new("dora@remote.org", &["carol@example.org", ENFORCING], &clear),
        ],
    )
    .await;
    for got in &answers {
        assert_eq!(answer(got), (StatusCode::BAD_REQUEST, ENCRYPTION_NEEDED));
    }
    assert!(sink.received().is_empty());
    assert!(
        logs.contains("WARN Rejected unencrypted mail from: dora@remote.org"),
        "{}",
        logs.text()
    );
}

#[tokio::test]
async fn other_methods_get_405() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start(Options::new(sink.addr)).await;
    for method in ["GET", "PUT", "DELETE", "OPTIONS"] {
        let request = Post {
            method,
            ..Post::new("alice@example.org", &["carol@example.org"], &encrypted())
        };
        assert_eq!(
            answer(&post(setup.addr, request).await),
            (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed"),
            "{method}"
        );
    }
    // The path is not looked at (nginx routes /mxdeliv here).
    let reply = raw(
        setup.addr,
        b"GET /anything HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 405 "), "{reply}");
    assert!(
        reply.to_ascii_lowercase().contains("\r\nallow: post\r\n"),
        "{reply}"
    );
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn body_size_limit_is_exact() {
    let sink = Sink::start(SinkMode::Accept).await;
    let message = encrypted();
    let size = wire(&message).len() as u64;
    let at_limit = start(Options {
        max_message_size: size,
        ..Options::new(sink.addr)
    })
    .await;
    let request = Post::new("alice@example.org", &["carol@example.org"], &message);
    assert_eq!(answer(&post(at_limit.addr, request).await), OK);
    let below = start(Options {
        max_message_size: size - 1,
        ..Options::new(sink.addr)
    })
    .await;
    let request = Post::new("alice@example.org", &["carol@example.org"], &message);
    assert_eq!(
        answer(&post(below.addr, request).await),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            "552 Message exceeds maximum size"
        )
    );
    assert_eq!(sink.received().len(), 1);
}

/// Streams a `total`-byte body (as `Content-Length` or chunked) and returns the response
/// head with how many body bytes the client had written when it arrived.
async fn stream_oversize(addr: SocketAddr, chunked: bool, total: usize) -> (String, usize) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {total}")
    };
    let head = format!(
        "POST /mxdeliv HTTP/1.1\r\nHost: x\r\nX-MAIL-FROM: a@remote.org\r\n\
         X-MAIL-TO: carol@example.org\r\n{framing}\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await.unwrap();
    let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = sent.clone();
    let feeder = tokio::spawn(async move {
        let chunk = vec![b'a'; 64 * 1024];
        let mut framed = Vec::new();
        if chunked {
            framed.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        }
        framed.extend_from_slice(&chunk);
        if chunked {
            framed.extend_from_slice(b"\r\n");
        }
        while counter.load(std::sync::atomic::Ordering::SeqCst) < total {
            if writer.write_all(&framed).await.is_err() {
                return;
            }
            counter.fetch_add(chunk.len(), std::sync::atomic::Ordering::SeqCst);
        }
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read_head = async {
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = reader.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed without a response");
            answer.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_head)
        .await
        .expect("response in time");
    let at_response = sent.load(std::sync::atomic::Ordering::SeqCst);
    // The server closes the connection instead of reading the rest (the client keeps
    // sending meanwhile).
    let closed = async {
        while let Ok(n) = reader.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), closed)
        .await
        .expect("closed after the answer");
    feeder.abort();
    let at_close = sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(at_close < total, "the whole body was read");
    (String::from_utf8_lossy(&answer).into_owned(), at_response)
}

#[tokio::test]
async fn oversize_body_gets_413_before_it_is_sent() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start(Options {
        max_message_size: 100_000,
        ..Options::new(sink.addr)
    })
    .await;
    // 1 GiB: the client could not finish before the answer unless the server read it all.
    const TOTAL: usize = 1 << 30;
    for chunked in [false, true] {
        let (head, sent) = stream_oversize(setup.addr, chunked, TOTAL).await;
        assert!(
            head.starts_with("HTTP/1.1 413 "),
            "chunked {chunked}: {head}"
        );
        // What the client wrote before the answer is the limit plus socket buffers, not
        // the body: the server stopped reading at the limit.
        assert!(
            sent < 64 << 20,
            "chunked {chunked}: {sent} bytes sent first"
        );
    }
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn invalid_data_forms_get_500_invalid_data() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start(Options::new(sink.addr)).await;
    let good = wire(&cleartext("dora@remote.org"));
    let with = |tail: &[u8]| [good.as_slice(), tail].concat();
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("no final CRLF", good[..good.len() - 2].to_vec()),
        ("bare LF", with(b"more\n")),
        ("bare LF line ends only", b"From: a@b\n\nhi\n".to_vec()),
        ("bare CR", with(b"a\rb\r\n")),
        ("unescaped end of data", with(b".\r\nafter\r\n")),
        ("ends with the terminator", with(b".\r\n")),
        (
            "starts with a lone dot",
            [b".\r\n".as_slice(), &good].concat(),
        ),
    ];
    for (what, body) in bodies {
        let request = Post {
            body,
            ..Post::new("dora@remote.org", &["carol@example.org"], b"")
        };
        assert_eq!(
            answer(&post(setup.addr, request).await),
            (StatusCode::BAD_REQUEST, "500 Invalid DATA"),
            "{what}"
        );
    }
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn stuffed_lines_are_unstuffed_once_and_restuffed_on_reinjection() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start(Options::new(sink.addr)).await;
    let mut message = encrypted();
    message.extend_from_slice(b".leading dot\r\n..two dots\r\n.\r\n");
    let body = wire(&message);
    assert!(body.ends_with(b"\r\n..leading dot\r\n...two dots\r\n..\r\n"));
    let request = Post {
        body,
        ..Post::new("alice@example.org", &["carol@example.org"], b"")
    };
    assert_eq!(answer(&post(setup.addr, request).await), OK);
    let received = sink.received();
    assert_eq!(received[0].data, message);
    assert!(
        received[0]
            .wire
            .ends_with(b"\r\n..leading dot\r\n...two dots\r\n..\r\n.\r\n"),
        "{}",
        String::from_utf8_lossy(&received[0].wire)
    );
}

#[tokio::test]
async fn no_recipient_is_accepted_and_dropped_after_the_checks() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start(Options::new(sink.addr)).await;
    let request = Post::new("alice@example.org", &[], &encrypted());
    assert_eq!(answer(&post(setup.addr, request).await), OK);
    assert!(
        logs.contains("INFO Dropping mail from alice@example.org; no recipients (X-MAIL-TO)"),
        "{}",
        logs.text()
    );
    // The checks still run first.
    let request = Post {
        body: b"no CRLF".to_vec(),
        ..Post::new("alice@example.org", &[], b"")
    };
    assert_eq!(
        answer(&post(setup.addr, request).await),
        (StatusCode::BAD_REQUEST, "500 Invalid DATA")
    );
    let request = Post::new("alice@example.org", &[], b"no header\r\n");
    let (status, body) = post(setup.addr, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.starts_with("500 Invalid FROM header"), "{body}");
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn reinjection_refusals_are_answered_400() {
    let sink = Sink::start(SinkMode::RejectData("550-5.7.1 Spam\r\n550 5.7.1 go away")).await;
    let setup = start(Options::new(sink.addr)).await;
    let request = Post::new("alice@example.org", &["carol@example.org"], &encrypted());
    assert_eq!(
        answer(&post(setup.addr, request).await),
        (
            StatusCode::BAD_REQUEST,
            "550-5.7.1 Spam\r\n550 5.7.1 go away"
        )
    );
    // Nobody listening: a temporary failure, still 400.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = closed.local_addr().unwrap();
    drop(closed);
    let setup = start(Options::new(down)).await;
    let request = Post::new("alice@example.org", &["carol@example.org"], &encrypted());
    let (status, body) = post(setup.addr, request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.starts_with("451 4.4.1 Reinjection failed"), "{body}");
}

#[tokio::test]
async fn unsigned_mail_is_refused_when_dkim_is_checked() {
    let sink = Sink::start(SinkMode::Accept).await;
    // No published keys: nothing can verify.
    let verifier = DkimVerifier::new(Arc::new(StaticResolver::new())).unwrap();
    let setup = start(Options {
        dkim: Some(Arc::new(verifier)),
        ..Options::new(sink.addr)
    })
    .await;
    let request = Post::new("alice@example.org", &["carol@example.org"], &encrypted());
    assert_eq!(
        answer(&post(setup.addr, request).await),
        (StatusCode::BAD_REQUEST, "554 5.7.1 No DKIM signature found")
    );
    // Encryption is checked first.
    let clear = cleartext("dora@remote.org");
    let request = Post::new("dora@remote.org", &[ENFORCING], &clear);
    assert_eq!(
        answer(&post(setup.addr, request).await),
        (StatusCode::BAD_REQUEST, ENCRYPTION_NEEDED)
    );
    // Domain-literal senders have no origin check.
    let literal = cleartext("dora@[192.0.2.1]");
    let request = Post::new("dora@[192.0.2.1]", &["carol@example.org"], &literal);
    assert_eq!(answer(&post(setup.addr, request).await), OK);
    assert_eq!(sink.received().len(), 1);
}

#[tokio::test]
async fn hostile_envelope_headers_reach_neither_postfix_nor_the_file_system() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start(Options::new(sink.addr)).await;
    let before = tree(setup.mailboxes.path());
    let message = cleartext("dora@remote.org");
    let long = format!("{}@example.org", "a".repeat(300));
    for to in [
        "carol@example.org>NOTIFY=NEVER",
        "<carol@example.org>",
        "carol@example.org carol@example.org",
        "carol",
        "",
        long.as_str(),
    ] {
        let request = Post::new("dora@remote.org", &["carol@example.org", to], &message);
        assert_eq!(
            answer(&post(setup.addr, request).await),
            (
                StatusCode::BAD_REQUEST,
                "553 5.1.3 Invalid recipient address in X-MAIL-TO"
            ),
            "{to:?}"
        );
    }
    // Bytes no client library sends: 8-bit (obs-text, which HTTP parsers pass on)
    // reaches the endpoint and is refused there; NUL is refused by the HTTP parser.
    for value in [&b"b\xc3\xb6b@example.org"[..], b"bob\0@example.org"] {
        let mut head = b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
            X-MAIL-FROM: dora@remote.org\r\nX-MAIL-TO: "
            .to_vec();
        head.extend_from_slice(value);
        head.extend_from_slice(format!("\r\nContent-Length: {}\r\n\r\n", message.len()).as_bytes());
        head.extend_from_slice(&message);
        let reply = raw(setup.addr, &head).await;
        assert!(reply.starts_with("HTTP/1.1 400 "), "{value:?}: {reply}");
    }
    // Paths that look like addresses pass the syntax check; the marker lookup refuses to
    // touch them and counts them as wanting encryption (fail closed): cleartext is refused.
    for to in ["../bob@example.org", "x/../../bob@example.org", "/etc@x"] {
        let request = Post::new("dora@remote.org", &[to], &message);
        assert_eq!(
            answer(&post(setup.addr, request).await),
            (StatusCode::BAD_REQUEST, ENCRYPTION_NEEDED),
            "{to}"
        );
    }
    // A sender that is no plain address becomes the null sender.
    for from in ["dora@remote.org>SIZE=1", "dora"] {
        let request = Post::new(from, &["carol@example.org"], &message);
        assert_eq!(answer(&post(setup.addr, request).await), OK, "{from}");
    }
    let request = Post {
        from: None,
        ..Post::new("", &["carol@example.org"], &message)
    };
    assert_eq!(answer(&post(setup.addr, request).await), OK);
    let senders: Vec<String> = sink.received().into_iter().map(|r| r.mail_from).collect();
    assert_eq!(senders, ["<>", "<>", "<>"]);
    assert_eq!(tree(setup.mailboxes.path()), before);
}

#[tokio::test]
async fn idle_and_stalled_connections_are_closed() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start(Options {
        limits: HttpLimits {
            inactivity: Duration::from_millis(200),
            ..HttpLimits::default()
        },
        ..Options::new(sink.addr)
    })
    .await;
    // Silent from the start, and stalled within a body.
    let heads: [&[u8]; 2] = [
        b"",
        b"POST / HTTP/1.1\r\nHost: x\r\nX-MAIL-TO: carol@example.org\r\n\
          Content-Length: 1000\r\n\r\nFrom: ",
    ];
    for head in heads {
        let mut stream = TcpStream::connect(setup.addr).await.unwrap();
        stream.write_all(head).await.unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .unwrap();
    }
    assert!(sink.received().is_empty());
}

#[tokio::test]
async fn connections_beyond_the_cap_wait() {
    let sink = Sink::start(SinkMode::Accept).await;
    let setup = start(Options {
        limits: HttpLimits {
            max_connections: 1,
            ..HttpLimits::default()
        },
        ..Options::new(sink.addr)
    })
    .await;
    let first = TcpStream::connect(setup.addr).await.unwrap();
    let message = encrypted();
    let second = post(
        setup.addr,
        Post::new("alice@example.org", &["carol@example.org"], &message),
    );
    tokio::pin!(second);
    let early = tokio::time::timeout(Duration::from_millis(300), &mut second).await;
    assert!(early.is_err(), "served beyond the cap");
    drop(first);
    let got = tokio::time::timeout(Duration::from_secs(20), second)
        .await
        .expect("served once the first left");
    assert_eq!(answer(&got), OK);
}

// ---------------------------------------------------------------- the binary

const BIN: &str = env!("CARGO_BIN_EXE_filtermail");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_ini(dir: &std::path::Path, smtp: u16, http: u16, reinject: u16) -> std::path::PathBuf {
    let ini = dir.join("chatmail.ini");
    std::fs::write(
        &ini,
        format!(
            "[params]\nmail_domain = example.org\nfiltermail_smtp_port_incoming = {smtp}\n\
             filtermail_http_port_incoming = {http}\npostfix_reinject_port_incoming = {reinject}\n\
             mailboxes_dir = {}\n",
            dir.display()
        ),
    )
    .unwrap();
    ini
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn binary_serves_mxdeliv_beside_smtp_and_stops_both_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (smtp, http) = (free_port(), free_port());
    // A Postfix stand-in that refuses at once: its reply proves reinjection was tried.
    let sink = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in sink.incoming() {
            let _ = stream.unwrap().write_all(b"554 5.3.0 sink closed\r\n");
        }
    });
    let ini = write_ini(dir.path(), smtp, http, sink_port);
    let mut child = Command::new(BIN)
        .arg(&ini)
        .arg("incoming")
        .env("RUST_LOG", "info")
        .env("FILTERMAIL_SKIP_DKIM", "1")
        .env_remove("JOURNAL_STREAM")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = StdBufReader::new(child.stderr.take().unwrap());
    let mut daemon = Daemon(child);
    let mut lines = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        lines.push(line);
    }
    assert_eq!(
        lines,
        [
            "WARNING: DKIM verification DISABLED! This should not be used in production.\n",
            "entering serving loop\n",
        ]
    );
    // Both ports are bound before that line.
    let message = cleartext("dora@remote.org");
    let mut request = format!(
        "POST /mxdeliv HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-MAIL-FROM: dora@remote.org\r\n\
         X-MAIL-TO: carol@example.org\r\nContent-Length: {}\r\n\r\n",
        message.len()
    )
    .into_bytes();
    request.extend_from_slice(&message);
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", http)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.write_all(&request).unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
    assert!(reply.ends_with("\r\n\r\n554 5.3.0 sink closed"), "{reply}");
    std::net::TcpStream::connect(("127.0.0.1", smtp)).unwrap();
    // One SIGTERM ends both listeners and the process.
    let pid = nix::unistd::Pid::from_raw(daemon.0.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut status = None;
    for _ in 0..200 {
        status = daemon.0.try_wait().unwrap();
        if status.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(status.expect("exited after SIGTERM").success());
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(!rest.contains("loop"), "a second serving-loop line: {rest}");
}

#[test]
fn http_port_in_use_fails_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let http = taken.local_addr().unwrap().port();
    let ini = write_ini(dir.path(), free_port(), http, free_port());
    let out = Command::new(BIN)
        .arg(&ini)
        .arg("incoming")
        .env("FILTERMAIL_SKIP_DKIM", "1")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("Server error: binding 127.0.0.1:{http}: ")),
        "{stderr}"
    );
    assert!(!stderr.contains("entering serving loop"), "{stderr}");
}
