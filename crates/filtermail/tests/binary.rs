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
        format!("Usage: {BIN} <config_file> <mode>\n  mode: incoming or outgoing\n")
    );
    let (code, stderr) = run(&["x.ini", "sideways"]);
    assert_eq!(code, 1);
    assert_eq!(stderr, "Error: mode must be 'incoming' or 'outgoing'\n");
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

#[test]
fn serves_on_the_configured_port_after_the_loop_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    // Postfix stand-in that refuses everything, so the reply proves reinjection happened.
    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_port = sink.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in sink.incoming() {
            let mut stream = stream.unwrap();
            stream.write_all(b"554 5.3.0 sink closed\r\n").unwrap();
        }
    });
    let ini = dir.path().join("chatmail.ini");
    std::fs::write(
        &ini,
        format!(
            "[params]\nmail_domain = example.org\nfiltermail_smtp_port_incoming = {port}\n\
             postfix_reinject_port_incoming = {sink_port}\nmailboxes_dir = {}\n\
             passthrough_recipients = echo@example.org\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg(&ini)
        .arg("incoming")
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let daemon = Daemon(child);
    let mut first = String::new();
    stderr.read_line(&mut first).unwrap();
    assert_eq!(first, "entering serving loop\n");
    let mut second = String::new();
    stderr.read_line(&mut second).unwrap();
    assert!(
        second.starts_with("WARNING: passthrough_recipients is ignored"),
        "{second}"
    );

    let mut smtp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    smtp.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    smtp.write_all(
        b"EHLO x\r\nMAIL FROM:<a@remote.org>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n\
          From: a@remote.org\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    )
    .unwrap();
    let mut replies = String::new();
    smtp.read_to_string(&mut replies).unwrap();
    assert_eq!(
        replies,
        "220 filtermail SMTP\r\n250-filtermail\r\n250-8BITMIME\r\n250 OK\r\n250 OK\r\n250 OK\r\n\
         354 End data with <CR><LF>.<CR><LF>\r\n554 5.3.0 sink closed\r\n221 OK\r\n"
    );
    drop(daemon);
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
