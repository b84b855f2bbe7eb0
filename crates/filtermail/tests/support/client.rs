//! A client for the filter's SMTP and LMTP listener: it sends raw bytes and reads whole
//! replies, every read bounded.
//!
//! Used by `tests/smtp.rs` and `tests/transport.rs` (as `mod support`), which add their
//! transactions to it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long one read may wait.
const PATIENCE: Duration = Duration::from_secs(10);

pub struct Client {
    pub stream: BufReader<TcpStream>,
}

impl Client {
    /// Connects and expects the filter's greeting.
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut client = Client {
            stream: BufReader::new(TcpStream::connect(addr).await.unwrap()),
        };
        assert_eq!(client.reply().await, "220 filtermail SMTP");
        client
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.unwrap();
    }

    /// One reply line, without its CRLF.
    pub async fn line(&mut self) -> String {
        self.line_after(&[]).await
    }

    /// One reply, continuation lines joined with `\n`.
    pub async fn reply(&mut self) -> String {
        let mut lines = Vec::new();
        loop {
            let line = self.line_after(&lines).await;
            let more = line.as_bytes().get(3) == Some(&b'-');
            lines.push(line);
            if !more {
                return lines.join("\n");
            }
        }
    }

    pub async fn command(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.reply().await
    }

    /// Asserts that the server closes the connection without sending anything more.
    pub async fn assert_closed(&mut self) {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(PATIENCE, self.stream.read_to_end(&mut rest))
            .await
            .expect("closed in time")
            .unwrap();
        assert_eq!(
            n,
            0,
            "unexpected bytes: {:?}",
            String::from_utf8_lossy(&rest)
        );
    }

    /// One line; `so_far` (the reply's earlier lines) only for the message if there is none.
    async fn line_after(&mut self, so_far: &[String]) -> String {
        let mut line = String::new();
        let n = tokio::time::timeout(PATIENCE, self.stream.read_line(&mut line))
            .await
            .expect("reply in time")
            .unwrap();
        assert!(n > 0, "connection closed; got so far: {so_far:?}");
        assert!(line.ends_with("\r\n"), "{line:?}");
        line.trim_end_matches(['\r', '\n']).to_owned()
    }
}
