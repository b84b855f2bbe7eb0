//! The `filtermail` binary: command line, exit texts, start-up line, one message through.

#![allow(clippy::indexing_slicing)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_filtermail");

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn usage_and_mode_errors() {
    let (code, stderr) = run(&["only-one"]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        format!("Usage: {BIN} <config_file> <mode>\n  mode: incoming, outgoing or transport\n")
    );
    let (code, stderr) = run(&["x.ini", "sideways"]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "Error: mode must be 'incoming', 'outgoing' or 'transport'\n"
    );
    let (code, stderr) = run(&["x.ini", "Transport"]);
    assert_eq!(code, 1);
    assert_eq!(
        stderr,
        "Error: mode must be 'incoming', 'outgoing' or 'transport'\n"
    );
    let (code, stderr) = run(&["/nonexistent/chatmail.ini", "outgoing"]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with("Failed to read config: "), "{stderr}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `filtermail INI incoming` with `FILTERMAIL_SKIP_DKIM` set to `skip_dkim` (or
/// unset), sends one unsigned cleartext message; returns the first `log_lines` stderr lines
/// and the SMTP replies.
fn serve_one_incoming(skip_dkim: Option<&str>, log_lines: usize) -> (Vec<String>, String) {
    let (lines, replies, _) = serve_one_incoming_at("127.0.0.1", "", skip_dkim, log_lines);
    (lines, replies)
}

/// As [`serve_one_incoming`], with filtermail listening on `host` and `extra` lines in the
/// ini; also returns the EHLO line the reinjection sent (if it got that far).
fn serve_one_incoming_at(
    host: &str,
    extra: &str,
    skip_dkim: Option<&str>,
    log_lines: usize,
) -> (Vec<String>, String, Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let http_port = free_port();
    // Postfix stand-in that refuses everything after EHLO, so the reply proves
    // reinjection happened.
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    let (ehlo_tx, ehlo_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in sink.incoming() {
            let mut stream = stream.unwrap();
            stream.write_all(b"220 sink\r\n").unwrap();
            let mut ehlo = String::new();
            let _ = BufReader::new(&stream).read_line(&mut ehlo);
            let _ = ehlo_tx.send(ehlo);
            let _ = stream.write_all(b"554 5.3.0 sink closed\r\n");
        }
    });
    let ini = dir.path().join("chatmail.ini");
    std::fs::write(
        &ini,
        format!(
            "[params]\nmail_domain = example.org\nfiltermail_smtp_port_incoming = {port}\n\
             filtermail_http_port_incoming = {http_port}\n\
             postfix_reinject_port_incoming = {sink_port}\nmailboxes_dir = {}\n\
             passthrough_recipients = echo@example.org\n{extra}",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut command = Command::new(BIN);
    command
        .arg(&ini)
        .arg("incoming")
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .env_remove("FILTERMAIL_SKIP_DKIM")
        .stderr(Stdio::piped());
    if let Some(value) = skip_dkim {
        command.env("FILTERMAIL_SKIP_DKIM", value);
    }
    let mut child = command.spawn().unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let daemon = Daemon(child);
    let mut lines = Vec::new();
    for _ in 0..log_lines {
        let mut line = String::new();
        stderr.read_line(&mut line).unwrap();
        lines.push(line);
    }

    let ip: std::net::IpAddr = host.parse().unwrap();
    let mut smtp = TcpStream::connect((ip, port)).unwrap();
    smtp.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    smtp.write_all(
        b"EHLO x\r\nMAIL FROM:<a@remote.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n\
          From: a@remote.org\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    )
    .unwrap();
    let mut replies = String::new();
    smtp.read_to_string(&mut replies).unwrap();
    drop(daemon);
    (lines, replies, ehlo_rx.try_recv().ok())
}

#[test]
fn listens_on_filtermail_host_and_says_it_in_ehlo() {
    let (lines, replies, ehlo) = serve_one_incoming_at(
        "::1",
        "filtermail_host = ::1\npostfix_host = 127.0.0.1\n",
        Some("1"),
        2,
    );
    assert_eq!(lines[1], "entering serving loop\n");
    assert_eq!(replies, replies_ending("554 5.3.0 sink closed"));
    assert_eq!(ehlo.as_deref(), Some("EHLO [IPv6:::1]\r\n"));
    // By default 127.0.0.1, as upstream.
    let (_, replies, ehlo) = serve_one_incoming_at("127.0.0.1", "", Some("1"), 2);
    assert_eq!(replies, replies_ending("554 5.3.0 sink closed"));
    assert_eq!(ehlo.as_deref(), Some("EHLO [127.0.0.1]\r\n"));
}

fn replies_ending(last: &str) -> String {
    format!(
        "220 filtermail SMTP\r\n250-filtermail\r\n250-8BITMIME\r\n250 OK\r\n250 OK\r\n250 OK\r\n\
         354 End data with <CR><LF>.<CR><LF>\r\n{last}\r\n221 OK\r\n"
    )
}

#[test]
fn serves_on_the_configured_port_after_the_loop_line() {
    // Cleartext is allowed for b@ (no marker), but the message has no DKIM signature.
    let (lines, replies) = serve_one_incoming(None, 2);
    assert_eq!(lines[0], "entering serving loop\n");
    assert!(
        lines[1].starts_with("WARNING: passthrough_recipients is ignored"),
        "{}",
        lines[1]
    );
    assert_eq!(replies, replies_ending("554 5.7.1 No DKIM signature found"));
}

#[test]
fn skip_dkim_warns_first_and_reinjects_unsigned_mail() {
    for value in ["1", "true", "TRUE"] {
        let (lines, replies) = serve_one_incoming(Some(value), 3);
        assert_eq!(
            lines[0],
            "WARNING: DKIM verification DISABLED! This should not be used in production.\n"
        );
        assert_eq!(lines[1], "entering serving loop\n");
        assert!(
            lines[2].starts_with("WARNING: passthrough_recipients"),
            "{}",
            lines[2]
        );
        assert_eq!(replies, replies_ending("554 5.3.0 sink closed"), "{value}");
    }
    // Any other value keeps the check on.
    let (lines, replies) = serve_one_incoming(Some("yes"), 1);
    assert_eq!(lines[0], "entering serving loop\n");
    assert_eq!(replies, replies_ending("554 5.7.1 No DKIM signature found"));
}

#[test]
fn port_in_use_is_a_server_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let ini = dir.path().join("chatmail.ini");
    std::fs::write(
        &ini,
        format!("[params]\nmail_domain = example.org\nfiltermail_smtp_port = {port}\n"),
    )
    .unwrap();
    let (code, stderr) = run(&[ini.to_str().unwrap(), "outgoing"]);
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with(&format!("Server error: binding 127.0.0.1:{port}: ")),
        "{stderr}"
    );
}

/// `filtermail INI transport` serves LMTP on `filtermail_lmtp_port_transport`: one final
/// reply line per accepted recipient, 553 for an address without a destination.
#[test]
fn transport_serves_lmtp_on_its_port() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ini = dir.path().join("chatmail.ini");
    std::fs::write(
        &ini,
        format!("[params]\nmail_domain = example.org\nfiltermail_lmtp_port_transport = {port}\n"),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg(&ini)
        .arg("transport")
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let daemon = Daemon(child);
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert_eq!(line, "entering serving loop\n");

    let mut lmtp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    lmtp.set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    // Two recipients of one destination and one address without a destination.
    lmtp.write_all(
        b"LHLO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@a.invalid>\r\n\
          RCPT TO:<x@y@z>\r\nRCPT TO:<c@a.invalid>\r\nDATA\r\n\
          Subject: hi\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    )
    .unwrap();
    let mut replies = String::new();
    lmtp.read_to_string(&mut replies).unwrap();
    drop(daemon);
    let lines: Vec<&str> = replies.split_terminator("\r\n").collect();
    assert_eq!(
        lines[..8],
        [
            "220 filtermail SMTP",
            "250-filtermail",
            "250-8BITMIME",
            "250 OK",
            "250 OK",
            "250 OK",
            "553 Invalid email address: x@y@z",
            "250 OK",
        ],
        "{replies}"
    );
    assert_eq!(lines[8], "354 End data with <CR><LF>.<CR><LF>", "{replies}");
    // One line per accepted recipient, the same for both (one group), then QUIT's.
    assert_eq!(lines.len(), 12, "{replies}");
    assert_eq!(lines[9], lines[10], "{replies}");
    let code = lines[9].get(..4).unwrap_or("");
    assert!(
        ["250 ", "421 ", "451 ", "512 "].contains(&code),
        "{replies}"
    );
    assert_eq!(lines[11], "221 OK");
}
