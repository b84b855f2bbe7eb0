//! A Postfix stand-in for the reinjection port: an SMTP server on 127.0.0.1:0 that records
//! every envelope and message (unstuffed, and as it came on the wire) and answers DATA as
//! its mode says. It counts connections (accepted, still open) and can close its idle
//! ones, as Postfix's `smtpd_timeout` does.
//!
//! Used by `tests/http.rs`, `tests/smtp.rs` and `tests/reinject_pool.rs` (as `mod support`).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    /// Accept, but close a connection without a reply when MAIL FROM starts its second or
    /// later transaction (a connection Postfix closed while it was idle, the close racing
    /// the client's next command).
    CloseReusedAtMail,
    /// Accept, but close a connection without a reply at the first RCPT TO of its second
    /// or later transaction (after MAIL FROM was answered).
    CloseReusedAtRcpt,
    /// Accept, without offering PIPELINING: and answer nothing to a command that came
    /// with the next one already sent, which a client must not do then.
    NoPipelining,
    /// Accept, but refuse recipients containing `refused` with `550 5.1.1 No such user`
    /// (DATA then gets Postfix's `554 5.5.1 Error: no valid recipients` when no recipient
    /// was accepted, else 354).
    RefuseSomeRecipients,
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

/// Shared between the sink's handle and its sessions.
#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    /// Replies to the next final dots, before the mode's.
    dot_replies: Mutex<VecDeque<&'static str>>,
    /// Connections accepted so far.
    connections: AtomicUsize,
    /// Connections not yet closed.
    open: AtomicUsize,
    /// QUIT commands received.
    quits: AtomicUsize,
    /// MAIL FROM commands that arrived together with the next command (pipelined).
    pipelined_mails: AtomicUsize,
}

pub struct Sink {
    pub addr: SocketAddr,
    state: Arc<State>,
    /// Bumped to make every session waiting for a command close its connection.
    close_idle: tokio::sync::watch::Sender<u64>,
}

impl Sink {
    pub async fn start(mode: SinkMode) -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (close_idle, closing) = tokio::sync::watch::channel(0);
        let shared = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = shared.clone();
                let mut closing = closing.clone();
                closing.mark_unchanged();
                state.connections.fetch_add(1, Ordering::SeqCst);
                state.open.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let _ = session(stream, mode, &state, closing).await;
                    state.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Sink {
            addr,
            state,
            close_idle,
        }
    }

    /// What was accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Answer the next final dot with `reply` (CRLF-separated lines) instead of the mode's.
    pub fn reply_next_dot(&self, reply: &'static str) {
        self.state.dot_replies.lock().unwrap().push_back(reply);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// Connections still open.
    pub fn open(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// QUIT commands received so far.
    pub fn quits(&self) -> usize {
        self.state.quits.load(Ordering::SeqCst)
    }

    /// MAIL FROM commands that arrived together with the command after them.
    pub fn pipelined_mails(&self) -> usize {
        self.state.pipelined_mails.load(Ordering::SeqCst)
    }

    /// Closes every connection that is waiting for a command, without a word.
    pub fn close_idle_connections(&self) {
        self.close_idle.send_modify(|n| *n += 1);
    }
}

async fn session(
    stream: TcpStream,
    mode: SinkMode,
    state: &State,
    mut closing: tokio::sync::watch::Receiver<u64>,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    stream.get_mut().write_all(b"220 sink ESMTP\r\n").await?;
    let fresh = || Received {
        mail_from: String::new(),
        rcpt_to: Vec::new(),
        data: Vec::new(),
        wire: Vec::new(),
    };
    let mut current = fresh();
    // Transactions begun on this connection (MAIL FROM commands).
    let mut transactions = 0;
    loop {
        let mut line = String::new();
        tokio::select! {
            read = stream.read_line(&mut line) => {
                if read? == 0 {
                    return Ok(());
                }
            }
            Ok(()) = closing.changed() => return Ok(()),
        }
        let line = line.trim_end().to_owned();
        let next_already_sent = !stream.buffer().is_empty();
        if next_already_sent && matches!(mode, SinkMode::NoPipelining) {
            // Stay silent: a client that pipelines without the offer waits in vain.
            std::future::pending::<()>().await;
        }
        let reply: &str = if line.starts_with("EHLO") {
            if matches!(mode, SinkMode::NoPipelining) {
                "250-sink\r\n250 8BITMIME"
            } else {
                "250-sink\r\n250-PIPELINING\r\n250 8BITMIME"
            }
        } else if let Some(rest) = line.strip_prefix("MAIL FROM:") {
            if next_already_sent {
                state.pipelined_mails.fetch_add(1, Ordering::SeqCst);
            }
            transactions += 1;
            if transactions > 1 && matches!(mode, SinkMode::CloseReusedAtMail) {
                return Ok(());
            }
            current = fresh();
            current.mail_from = rest.to_owned();
            "250 2.1.0 Ok"
        } else if let Some(rest) = line.strip_prefix("RCPT TO:") {
            if transactions > 1
                && current.rcpt_to.is_empty()
                && matches!(mode, SinkMode::CloseReusedAtRcpt)
            {
                return Ok(());
            }
            if matches!(mode, SinkMode::RefuseSomeRecipients) && rest.contains("refused") {
                "550 5.1.1 No such user"
            } else {
                current.rcpt_to.push(rest.to_owned());
                "250 2.1.5 Ok"
            }
        } else if line == "DATA"
            && current.rcpt_to.is_empty()
            && matches!(mode, SinkMode::RefuseSomeRecipients)
        {
            "554 5.5.1 Error: no valid recipients"
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
            let scripted = state.dot_replies.lock().unwrap().pop_front();
            match (scripted, mode) {
                (Some(reply), _) | (None, SinkMode::RejectData(reply)) => reply,
                (None, _) => {
                    state.received.lock().unwrap().push(current.clone());
                    "250 2.0.0 Ok: queued as 1234"
                }
            }
        } else if line == "QUIT" {
            state.quits.fetch_add(1, Ordering::SeqCst);
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
