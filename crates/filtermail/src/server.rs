//! The SMTP server side: accept loop and one task per connection.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::Filter;
use crate::check::{Envelope, LogLevel, Outcome, check};
use crate::command::{Command, parse_command};
use crate::data::{DataEnd, DataReader};
use crate::limiter::rate_limited_reply;
use crate::reinject::reinject;

/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512; ESMTP parameters make
/// Postfix's lines longer, never this long).
const MAX_COMMAND_LINE: usize = 4096;

/// Read buffer per connection.
const READ_BUFFER: usize = 64 * 1024;

/// Outgoing messages up to this size are judged on the runtime's thread.
const JUDGE_IN_PLACE: usize = 64 * 1024;

/// Limits that keep one peer from holding resources forever.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Waiting for a command (RFC 5321 §4.5.3.2.7 suggests 5 minutes).
    pub command_timeout: Duration,
    /// Waiting for each read of message data (RFC 5321 §4.5.3.2.6: 3 minutes per block).
    pub data_timeout: Duration,
    /// Connections served at once; further peers wait in the listen backlog.
    pub max_connections: usize,
    /// How long in-flight connections may finish after a shutdown signal.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            // Above Postfix's default process limit (100) per listener, far below fd limits.
            max_connections: 1000,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves `listener` until `shutdown` completes, then lets in-flight connections finish
/// for `shutdown_grace`.
pub async fn serve(listener: TcpListener, filter: Arc<Filter>, shutdown: impl Future<Output = ()>) {
    let max = filter.limits.max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let accept_loop = async {
        let mut backoff = Duration::from_millis(50);
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else {
                return;
            };
            match listener.accept().await {
                Ok((stream, _)) => {
                    backoff = Duration::from_millis(50);
                    let filter = filter.clone();
                    tokio::spawn(async move {
                        if let Err(err) = handle_connection(stream, &filter).await {
                            tracing::error!("Error handling connection: {err}");
                        }
                        drop(permit);
                    });
                }
                Err(err) => {
                    // EMFILE and friends are transient: a crash here took upstream's
                    // relay offline (fixed in 0.7.0), so back off and keep serving.
                    tracing::error!("Error accepting connection: {err}");
                    drop(permit);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    };
    tokio::select! {
        () = accept_loop => {}
        () = shutdown => {}
    }
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(filter.limits.shutdown_grace, permits.acquire_many(all)).await;
}

/// How reading one line ended.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line ended by CRLF; the buffer holds it without the CRLF.
    Complete,
    /// A line ended by a bare LF.
    BareLf,
    /// A line longer than allowed; consumed up to its LF and discarded.
    TooLong,
    /// End of stream; the buffer holds any partial line.
    Eof,
}

/// Reads one line into `buf` (cleared first), keeping at most `max` bytes of it.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(Line::Eof);
        }
        let (chunk, done) = match memchr::memchr(b'\n', available) {
            Some(pos) => (available.get(..=pos).unwrap_or(available), true),
            None => (available, false),
        };
        let used = chunk.len();
        if !too_long {
            if buf.len() + used > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        reader.consume(used);
        if done {
            if too_long {
                return Ok(Line::TooLong);
            }
            if buf.ends_with(b"\r\n") {
                buf.truncate(buf.len() - 2);
                return Ok(Line::Complete);
            }
            return Ok(Line::BareLf);
        }
    }
}

/// What a connection task does after a step.
enum Flow {
    /// Read the next command.
    Continue,
    /// The dialogue is over (QUIT, timeout, malformed input).
    Close,
}

/// State of one SMTP session.
struct Session<'a> {
    /// The listener's rules and limits.
    filter: &'a Filter,
    /// The peer; replies are written to the inner stream.
    reader: BufReader<TcpStream>,
    /// Sender of the current transaction, `None` before MAIL (empty for `<>`).
    sender: Option<String>,
    /// RCPT TO addresses of the current transaction, in order (reinjected in that order).
    recipients: Vec<String>,
    /// The current command line, reused to avoid an allocation per line.
    line: Vec<u8>,
}

async fn handle_connection(stream: TcpStream, filter: &Filter) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut session = Session {
        filter,
        // Megabyte messages arrive in 64 KiB reads rather than 8 KiB ones.
        reader: BufReader::with_capacity(READ_BUFFER, stream),
        sender: None,
        recipients: Vec::new(),
        line: Vec::new(),
    };
    session.reply("220 filtermail SMTP").await?;
    loop {
        let read = read_line(&mut session.reader, &mut session.line, MAX_COMMAND_LINE);
        let read = match tokio::time::timeout(filter.limits.command_timeout, read).await {
            Ok(read) => read?,
            Err(_) => {
                session
                    .reply("421 4.4.2 Timeout, closing connection")
                    .await?;
                return Ok(());
            }
        };
        match read {
            Line::Complete => {}
            Line::TooLong => {
                session.reply("500 5.5.2 Line too long").await?;
                continue;
            }
            Line::Eof if session.line.is_empty() => return Ok(()),
            Line::BareLf | Line::Eof => {
                tracing::warn!("Malformed command without CRLF ending! Closing connection.");
                return Ok(());
            }
        }
        let command = parse_command(&session.line);
        if let Flow::Close = session.command(command).await? {
            return Ok(());
        }
    }
}

impl Session<'_> {
    /// Sends one reply in one write: Postfix's proxy client closes right after its QUIT, and
    /// a reply split over two writes would hit the reset between them.
    async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(text.len() + 2);
        line.extend_from_slice(text.as_bytes());
        line.extend_from_slice(b"\r\n");
        let stream = self.reader.get_mut();
        stream.write_all(&line).await?;
        stream.flush().await
    }

    fn reset(&mut self) {
        self.sender = None;
        self.recipients.clear();
    }

    async fn command(&mut self, command: Command) -> std::io::Result<Flow> {
        match command {
            Command::Helo => self.reply("250-filtermail\r\n250 OK").await?,
            Command::Ehlo => {
                self.reply("250-filtermail\r\n250-8BITMIME\r\n250 OK")
                    .await?
            }
            Command::Mail(None) => {
                // Any MAIL ends the previous transaction, refused or not: a pipelining
                // client must not get its RCPT/DATA attached to an older sender.
                self.reset();
                let line = String::from_utf8_lossy(&self.line).into_owned();
                tracing::warn!(
                    "Invalid MAIL FROM command. Can't extract address. Received: {line}"
                );
                self.reply("500 Invalid address in MAIL FROM").await?;
            }
            Command::Mail(Some(sender)) => {
                self.reset();
                match self.filter.check_sender(&sender) {
                    Ok(()) => {
                        self.sender = Some(sender);
                        self.reply("250 OK").await?;
                    }
                    Err(reply) => self.reply(&reply).await?,
                }
            }
            Command::Rcpt(Some(rcpt)) => {
                if self.sender.is_none() {
                    self.reply("503 5.5.1 Need MAIL before RCPT").await?;
                } else {
                    self.recipients.push(rcpt);
                    self.reply("250 OK").await?;
                }
            }
            Command::Rcpt(None) => self.reply("500 Invalid address in RCPT TO").await?,
            Command::Data => return self.data().await,
            Command::Rset => {
                self.reset();
                self.reply("250 OK").await?;
            }
            Command::Noop => self.reply("250 OK").await?,
            Command::Quit => {
                // The client may close without reading the goodbye (Postfix's proxy client
                // does): a reset here ends a finished session, it is no error.
                if let Err(err) = self.reply("221 OK").await {
                    if !matches!(
                        err.kind(),
                        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                    ) {
                        return Err(err);
                    }
                }
                return Ok(Flow::Close);
            }
            Command::Unknown => self.reply("500 Command not recognized").await?,
        }
        Ok(Flow::Continue)
    }

    /// DATA: read the message, judge it, reinject it, answer.
    async fn data(&mut self) -> std::io::Result<Flow> {
        let Some(sender) = self.sender.clone() else {
            self.reply("503 5.5.1 Need MAIL before DATA").await?;
            return Ok(Flow::Continue);
        };
        if self.recipients.is_empty() {
            self.reply("554 5.5.1 No valid recipients").await?;
            return Ok(Flow::Continue);
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let max = usize::try_from(self.filter.max_message_size).unwrap_or(usize::MAX);
        let mut receiver = DataReader::new(max);
        let end = loop {
            // Only a read that waits for the peer has a timer (RFC 5321 §4.5.3.2.6: per
            // block); data already buffered is taken at once.
            let input = if self.reader.buffer().is_empty() {
                match tokio::time::timeout(self.filter.limits.data_timeout, self.reader.fill_buf())
                    .await
                {
                    Ok(read) => read?,
                    Err(_) => {
                        self.reply("421 4.4.2 Timeout, closing connection").await?;
                        return Ok(Flow::Close);
                    }
                }
            } else {
                self.reader.buffer()
            };
            if input.is_empty() {
                tracing::warn!("Unexpected EoF while receiving DATA! Closing connection.");
                return Ok(Flow::Close);
            }
            let (used, end) = receiver.feed(input);
            self.reader.consume(used);
            if let Some(end) = end {
                break end;
            }
        };
        if end == DataEnd::BareLf {
            tracing::warn!("Malformed DATA line without CRLF ending! Closing connection.");
            return Ok(Flow::Close);
        }
        let recipients = std::mem::take(&mut self.recipients);
        self.reset();
        let refusal = match end {
            DataEnd::Message(data) => Ok(data),
            DataEnd::Oversized => Err("552 Message exceeds maximum size"),
            DataEnd::BareCr | DataEnd::BareLf => Err("500 Invalid DATA"),
        };
        let data = match refusal {
            Ok(data) => data,
            Err(reply) => {
                self.reply(reply).await?;
                return Ok(Flow::Continue);
            }
        };
        let reply = self
            .filter
            .judge_and_reinject(sender, recipients, data)
            .await;
        self.reply(&reply).await?;
        Ok(Flow::Continue)
    }
}

impl Filter {
    /// The MAIL FROM hook: outgoing senders must be an address and within their rate.
    fn check_sender(&self, sender: &str) -> Result<(), String> {
        // The null sender is accepted as 0.7.4 does; outgoing it fails the From check.
        if sender.is_empty() || self.direction == crate::Direction::Incoming {
            return Ok(());
        }
        if sender.split('@').count() != 2 {
            return Err(format!("500 Invalid from address {sender}"));
        }
        match &self.limiter {
            Some(limiter) => limiter
                .check(sender)
                .map_err(|wait| rate_limited_reply(sender, wait)),
            None => Ok(()),
        }
    }

    /// After the final dot: the check, its log lines, and reinjection when accepted.
    /// Returns the reply to DATA.
    pub async fn judge_and_reinject(
        &self,
        sender: String,
        recipients: Vec<String>,
        data: Vec<u8>,
    ) -> String {
        let envelope = Envelope { sender, recipients };
        let direction = self.direction;
        let mailboxes = self.mailboxes.clone();
        let dkim = self.dkim.clone();
        let runtime = tokio::runtime::Handle::current();
        // Small outgoing messages are judged in place: no DKIM, no marker files, some
        // microseconds of parsing, less than the handoff to the blocking pool and back.
        let in_place = direction == crate::Direction::Outgoing
            && dkim.is_none()
            && data.len() <= JUDGE_IN_PLACE;
        let judge = move || {
            let verdict = check(&data, &envelope, direction, |rcpt| {
                mailboxes
                    .user(rcpt)
                    .map(|user| user.is_incoming_cleartext_ok())
                    .unwrap_or(false)
            });
            // The origin check comes after the encryption check (0.5.2): a cleartext
            // message to a recipient who wants encryption gets 523 whatever its DKIM.
            let origin = match (&verdict.outcome, &verdict.from, &dkim) {
                (Outcome::Accept(_), Some(from), Some(dkim)) => {
                    runtime.block_on(dkim.verify(&data, from))
                }
                _ => Ok(()),
            };
            (verdict, origin, envelope, data)
        };
        // Otherwise parsing and hashing tens of megabytes and stat()ing marker files must
        // not stall the runtime's other connections; the key lookups run on the runtime
        // meanwhile.
        let judged = if in_place {
            Ok(judge())
        } else {
            tokio::task::spawn_blocking(judge).await
        };
        let Ok((verdict, origin, envelope, data)) = judged else {
            return "451 4.3.0 Local error in processing".to_owned();
        };
        for line in verdict.log_lines(direction) {
            match line.level {
                LogLevel::Info => tracing::info!("{}", line.text),
                LogLevel::Warn => tracing::warn!("{}", line.text),
            }
        }
        if let Outcome::Reject(rejection) = &verdict.outcome {
            return rejection.reply();
        }
        if let Err(rejection) = origin {
            let from = verdict.from.as_deref().unwrap_or("");
            let reply = rejection.reply();
            tracing::warn!("Rejected mail from {from} failing the origin check: {reply}");
            return reply.to_owned();
        }
        let sender = if verdict.blank_sender {
            ""
        } else {
            envelope.sender.as_str()
        };
        match reinject(&self.reinject, sender, &envelope.recipients, &data).await {
            Ok(()) => "250 OK".to_owned(),
            Err(err) => {
                tracing::warn!("Failed to reinject mail: {err}");
                err.reply()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<(Line, Vec<u8>)> {
        let mut reader = input;
        let mut buf = Vec::new();
        let mut out = Vec::new();
        loop {
            let line = read_line(&mut reader, &mut buf, max).await.unwrap();
            let eof = line == Line::Eof;
            out.push((line, buf.clone()));
            if eof {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn line_reader_classifies_line_ends() {
        let got = lines(b"a\r\nb\nccccccccc\r\nd\r\ne", 5).await;
        assert_eq!(
            got,
            vec![
                (Line::Complete, b"a".to_vec()),
                (Line::BareLf, b"b\n".to_vec()),
                (Line::TooLong, vec![]),
                (Line::Complete, b"d".to_vec()),
                (Line::Eof, b"e".to_vec()),
            ]
        );
    }
}
