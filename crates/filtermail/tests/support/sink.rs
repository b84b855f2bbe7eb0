//! A Postfix stand-in for the reinjection port: an SMTP server on 127.0.0.1:0 that records
//! every envelope and message (unstuffed, and as it came on the wire) and answers DATA as
//! its mode says.
//!
//! Used by `tests/http.rs` and `tests/smtp.rs` (as `mod support`).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How the sink answers.
#[derive(Clone, Copy)]
pub enum SinkMode {
    Accept,
    /// Reply to the final dot with this (possibly multi-line, CRLF-separated) reply.
    RejectData(&'static str),
    /// Close the connection after the first data line.
    DieMidData,
}

/// One accepted transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    /// The MAIL FROM argument as sent, with its angle brackets.
    pub mail_from: String,
    /// The RCPT TO arguments as sent, in order.
    pub rcpt_to: Vec<String>,
    /// The message unstuffed, without the terminator.
    pub data: Vec<u8>,
    /// The data lines exactly as sent, the terminator included.
    pub wire: Vec<u8>,
}

pub struct Sink {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Sink {
    pub async fn start(mode: SinkMode) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let store = received.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let store = store.clone();
                tokio::spawn(async move {
                    let _ = session(stream, mode, store).await;
                });
            }
        });
        Sink { addr, received }
    }

    /// What was accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

async fn session(
    stream: TcpStream,
    mode: SinkMode,
    store: Arc<Mutex<Vec<Received>>>,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    stream.get_mut().write_all(b"220 sink ESMTP\r\n").await?;
    let mut current = Received {
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        data: Vec::new(),
        wire: Vec::new(),
    };
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let line = line.trim_end().to_owned();
        let reply: &str = if line.starts_with("EHLO") {
            "250-sink\r\n250-PIPELINING\r\n250 8BITMIME"
        } else if let Some(rest) = line.strip_prefix("MAIL FROM:") {
            current.mail_from = rest.to_owned();
            "250 2.1.0 Ok"
        } else if let Some(rest) = line.strip_prefix("RCPT TO:") {
            current.rcpt_to.push(rest.to_owned());
            "250 2.1.5 Ok"
        } else if line == "DATA" {
            stream.get_mut().write_all(b"354 go ahead\r\n").await?;
            loop {
                let mut data_line = Vec::new();
                if stream.read_until(b'\n', &mut data_line).await? == 0 {
                    return Ok(());
                }
                if let SinkMode::DieMidData = mode {
                    return Ok(());
                }
                current.wire.extend_from_slice(&data_line);
                if data_line == b".\r\n" {
                    break;
                }
                let content = data_line.strip_prefix(b".").unwrap_or(&data_line);
                current.data.extend_from_slice(content);
            }
            match mode {
                SinkMode::RejectData(reply) => reply,
                SinkMode::Accept | SinkMode::DieMidData => {
                    store.lock().unwrap().push(current.clone());
                    "250 2.0.0 Ok: queued as 1234"
                }
            }
        } else if line == "QUIT" {
            stream.get_mut().write_all(b"221 bye\r\n").await?;
            return Ok(());
        } else {
            "502 what"
        };
        stream
            .get_mut()
            .write_all(format!("{reply}\r\n").as_bytes())
            .await?;
    }
}
