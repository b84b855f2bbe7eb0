//! The SMTP/LMTP server side: accept loop and one task per connection. The dialogue is
//! the same in every mode; a [`Handler`] decides what MAIL, RCPT, DATA and the message
//! lead to ([`Filter`] for outgoing and incoming, [`crate::transport::Transport`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, ReadBuf,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::Filter;
use crate::buffers::MESSAGE_BUFFERS;
use crate::check::{Envelope, LogLevel, Outcome, check_indexed};
use crate::command::{Command, parse_command};
use crate::data::{DataEnd, DataReader};
use crate::index::{Indexed, MessageIndex};
use crate::limiter::rate_limited_reply;
use crate::reinject::reinject_indexed;

/// Longest command line accepted (RFC 5321 §4.5.3.1.4 says 512; ESMTP parameters make
/// Postfix's lines longer, never this long).
const MAX_COMMAND_LINE: usize = 4096;

/// Read buffer per connection.
const READ_BUFFER: usize = 64 * 1024;

/// Most bytes read at once straight into a message.
const DIRECT_READ: usize = 256 * 1024;

/// Outgoing messages with at most this many bytes that their index does not vouch for
/// are judged on the runtime's thread.
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

/// What one listener's mode decides. Hooks answer with the reply line to send on refusal;
/// the connection stays open after any of them.
pub trait Handler: Send + Sync + 'static {
    /// State of one transaction beyond its sender and recipients (transport: the queue
    /// slots); dropped at MAIL, RSET, the end of DATA and the end of the connection.
    type Transaction: Default + Send;

    /// Timeouts and the connection cap.
    fn limits(&self) -> &Limits;

    /// Larger messages get 552.
    fn max_message_size(&self) -> u64;

    /// MAIL FROM; `sender` is empty for the null sender `<>`.
    fn mail(&self, sender: &str) -> Result<(), String>;

    /// RCPT TO with an address; on `Err` the recipient is not added.
    fn rcpt(&self, transaction: &mut Self::Transaction, recipient: &str) -> Result<(), String>;

    /// The reply to an RCPT TO line without an address that can be extracted.
    fn unparsable_rcpt(&self, _line: &[u8]) -> String {
        "500 Invalid address in RCPT TO".to_owned()
    }

    /// DATA, before the 354: an `Err` refuses the message before it is sent.
    fn data_start(&self, _transaction: &Self::Transaction) -> Result<(), String> {
        Ok(())
    }

    /// LMTP: the answer after the final dot is one line per accepted recipient.
    fn reply_per_recipient(&self) -> bool {
        false
    }

    /// After the final dot: the reply, already one line per recipient (joined with CRLF)
    /// when [`Handler::reply_per_recipient`]. `data` is unstuffed, with CRLF line ends;
    /// `index` holds the facts of its pages, gathered as they arrived.
    fn message(
        &self,
        transaction: Self::Transaction,
        sender: String,
        recipients: Vec<String>,
        data: Vec<u8>,
        index: MessageIndex,
    ) -> impl Future<Output = String> + Send;
}

impl Handler for Filter {
    type Transaction = ();

    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn max_message_size(&self) -> u64 {
        self.max_message_size
    }

    fn mail(&self, sender: &str) -> Result<(), String> {
        self.check_sender(sender)
    }

    fn rcpt(&self, _transaction: &mut (), _recipient: &str) -> Result<(), String> {
        Ok(())
    }

    fn message(
        &self,
        _transaction: (),
        sender: String,
        recipients: Vec<String>,
        data: Vec<u8>,
        index: MessageIndex,
    ) -> impl Future<Output = String> + Send {
        self.judge_indexed_and_reinject(sender, recipients, data, index)
    }
}

/// Serves `listener` until `shutdown` completes, then lets in-flight connections finish
/// for `shutdown_grace`.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    shutdown: impl Future<Output = ()>,
) {
    let max = handler.limits().max_connections.max(1);
    let permits = Arc::new(Semaphore::new(max));
    let accept_loop = accept_connections(&listener, &permits, |stream, permit| {
        let handler = handler.clone();
        tokio::spawn(async move {
            if let Err(err) = handle_connection(stream, &*handler).await {
                tracing::error!("Error handling connection: {err}");
            }
            drop(permit);
        });
    });
    tokio::select! {
        () = accept_loop => {}
        () = shutdown => {}
    }
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    let grace = handler.limits().shutdown_grace;
    let _ = tokio::time::timeout(grace, permits.acquire_many(all)).await;
}

/// Accepts connections for as long as `permits` has one free (the connection cap), handing
/// each stream with its permit to `serve`; never returns unless the semaphore is closed.
/// Accept errors (EMFILE and friends) are transient: a crash here took upstream's relay
/// offline (fixed in 0.7.0), so they are logged and backed off, 50 ms doubling to 10 s.
pub(crate) async fn accept_connections(
    listener: &TcpListener,
    permits: &Arc<Semaphore>,
    mut serve: impl FnMut(TcpStream, OwnedSemaphorePermit),
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::from_millis(50);
                serve(stream, permit);
            }
            Err(err) => {
                tracing::error!("Error accepting connection: {err}");
                drop(permit);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
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

/// The client's side of the connection. A read straight into a message can bring the
/// commands that follow it (pipelined after the final dot); they are given back here and
/// read first.
struct ClientStream {
    stream: TcpStream,
    given_back: Vec<u8>,
}

impl ClientStream {
    /// Puts `bytes` before anything not yet read.
    fn give_back(&mut self, bytes: Vec<u8>) {
        self.given_back.splice(..0, bytes);
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.given_back.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.given_back.len().min(buf.remaining());
        buf.put_slice(this.given_back.get(..n).unwrap_or_default());
        this.given_back.drain(..n);
        Poll::Ready(Ok(()))
    }
}

/// What one step of receiving a message's data came to.
enum Received {
    /// The data goes on.
    More,
    /// The data ended.
    End(DataEnd),
    /// The peer sent nothing for the data timeout.
    TimedOut,
    /// The peer closed the connection.
    Eof,
}

/// What a connection task does after a step.
enum Flow {
    /// Read the next command.
    Continue,
    /// The dialogue is over (QUIT, timeout, malformed input).
    Close,
}

/// The size and time limits of a listener, the same for every mode.
struct Bounds {
    limits: Limits,
    max_message_size: u64,
}

/// State of one SMTP/LMTP session.
struct Session<'a, H: Handler> {
    /// The listener's size and time limits.
    filter: Bounds,
    /// The mode's hooks.
    handler: &'a H,
    /// The peer; replies are written to the inner stream.
    reader: BufReader<ClientStream>,
    /// Sender of the current transaction, `None` before MAIL (empty for `<>`).
    sender: Option<String>,
    /// RCPT TO addresses of the current transaction, in order (reinjected in that order).
    recipients: Vec<String>,
    /// The mode's state of the current transaction.
    transaction: H::Transaction,
    /// The current command line, reused to avoid an allocation per line.
    line: Vec<u8>,
}

async fn handle_connection<H: Handler>(stream: TcpStream, handler: &H) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut session = Session {
        filter: Bounds {
            limits: handler.limits().clone(),
            max_message_size: handler.max_message_size(),
        },
        handler,
        // Commands, and message data while bytes are buffered, in 64 KiB reads rather
        // than 8 KiB ones; most message data is read straight into the message.
        reader: BufReader::with_capacity(
            READ_BUFFER,
            ClientStream {
                stream,
                given_back: Vec::new(),
            },
        ),
        sender: None,
        recipients: Vec::new(),
        transaction: H::Transaction::default(),
        line: Vec::new(),
    };
    session.reply("220 filtermail SMTP").await?;
    loop {
        let read = read_line(&mut session.reader, &mut session.line, MAX_COMMAND_LINE);
        let timeout = session.filter.limits.command_timeout;
        let read = match tokio::time::timeout(timeout, read).await {
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

impl<H: Handler> Session<'_, H> {
    /// Sends one reply in one write: Postfix's proxy client closes right after its QUIT, and
    /// a reply split over two writes would hit the reset between them.
    async fn reply(&mut self, text: &str) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(text.len() + 2);
        line.extend_from_slice(text.as_bytes());
        line.extend_from_slice(b"\r\n");
        let stream = &mut self.reader.get_mut().stream;
        stream.write_all(&line).await?;
        stream.flush().await
    }

    fn reset(&mut self) {
        self.sender = None;
        self.recipients.clear();
        self.transaction = H::Transaction::default();
    }

    /// A reply after the final dot that is the same for every recipient: once per
    /// recipient in LMTP, once otherwise.
    async fn final_reply(&mut self, text: &str, recipients: usize) -> std::io::Result<()> {
        if self.handler.reply_per_recipient() {
            let lines = vec![text; recipients.max(1)].join("\r\n");
            self.reply(&lines).await
        } else {
            self.reply(text).await
        }
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
                match self.handler.mail(&sender) {
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
                    match self.handler.rcpt(&mut self.transaction, &rcpt) {
                        Ok(()) => {
                            self.recipients.push(rcpt);
                            self.reply("250 OK").await?;
                        }
                        Err(reply) => self.reply(&reply).await?,
                    }
                }
            }
            Command::Rcpt(None) => {
                let reply = self.handler.unparsable_rcpt(&self.line);
                self.reply(&reply).await?;
            }
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

    /// Gives `receiver` the next data: what the read buffer holds, or else the next read.
    /// Only a read that waits for the peer has a timer (RFC 5321 §4.5.3.2.6: per block).
    async fn receive(&mut self, receiver: &mut DataReader) -> std::io::Result<Received> {
        let limit = self.filter.limits.data_timeout;
        // Megabytes arrive straight into the message when the read buffer is empty; what
        // a read brings past the terminator is given back for the commands.
        if self.reader.buffer().is_empty()
            && let Some(mut target) = receiver.direct(DIRECT_READ)
        {
            let client = self.reader.get_mut();
            let Ok(read) = tokio::time::timeout(limit, client.read_buf(&mut target)).await else {
                return Ok(Received::TimedOut);
            };
            if read? == 0 {
                return Ok(Received::Eof);
            }
            return Ok(match receiver.settle() {
                Some((end, after)) => {
                    client.give_back(after);
                    Received::End(end)
                }
                None => Received::More,
            });
        }
        let input = if self.reader.buffer().is_empty() {
            let Ok(read) = tokio::time::timeout(limit, self.reader.fill_buf()).await else {
                return Ok(Received::TimedOut);
            };
            read?
        } else {
            self.reader.buffer()
        };
        if input.is_empty() {
            return Ok(Received::Eof);
        }
        let (used, end) = receiver.feed(input);
        self.reader.consume(used);
        Ok(end.map_or(Received::More, Received::End))
    }

    /// DATA: read the message, hand it to the mode, answer.
    async fn data(&mut self) -> std::io::Result<Flow> {
        let Some(sender) = self.sender.clone() else {
            self.reply("503 5.5.1 Need MAIL before DATA").await?;
            return Ok(Flow::Continue);
        };
        if self.recipients.is_empty() {
            self.reply("554 5.5.1 No valid recipients").await?;
            return Ok(Flow::Continue);
        }
        if let Err(reply) = self.handler.data_start(&self.transaction) {
            self.reply(&reply).await?;
            return Ok(Flow::Continue);
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let max = usize::try_from(self.filter.max_message_size).unwrap_or(usize::MAX);
        let mut receiver = DataReader::with_buffer(max, MESSAGE_BUFFERS.take());
        let end = loop {
            match self.receive(&mut receiver).await? {
                Received::More => {}
                Received::End(end) => break end,
                Received::TimedOut => {
                    self.reply("421 4.4.2 Timeout, closing connection").await?;
                    return Ok(Flow::Close);
                }
                Received::Eof => {
                    tracing::warn!("Unexpected EoF while receiving DATA! Closing connection.");
                    return Ok(Flow::Close);
                }
            }
        };
        if end == DataEnd::BareLf {
            tracing::warn!("Malformed DATA line without CRLF ending! Closing connection.");
            return Ok(Flow::Close);
        }
        let recipients = std::mem::take(&mut self.recipients);
        let transaction = std::mem::take(&mut self.transaction);
        self.reset();
        let data = match end {
            DataEnd::Message(data) => data,
            DataEnd::Oversized => {
                self.final_reply("552 Message exceeds maximum size", recipients.len())
                    .await?;
                return Ok(Flow::Continue);
            }
            DataEnd::BareCr | DataEnd::BareLf => {
                self.final_reply("500 Invalid DATA", recipients.len())
                    .await?;
                return Ok(Flow::Continue);
            }
        };
        let index = receiver.take_index();
        let reply = self
            .handler
            .message(transaction, sender, recipients, data, index)
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
        self.judge_indexed_and_reinject(sender, recipients, data, MessageIndex::default())
            .await
    }

    /// [`Filter::judge_and_reinject`] of a message with its [`MessageIndex`].
    pub async fn judge_indexed_and_reinject(
        &self,
        sender: String,
        recipients: Vec<String>,
        data: Vec<u8>,
        index: MessageIndex,
    ) -> String {
        let envelope = Envelope { sender, recipients };
        let direction = self.direction;
        let mailboxes = self.mailboxes.clone();
        let dkim = self.dkim.clone();
        let runtime = tokio::runtime::Handle::current();
        // Outgoing messages are judged in place when the check has little to read: small
        // ones, or big ones made of evenly lined base64 pages, whose checks take the
        // pages' facts. No DKIM, some microseconds of parsing and a `DISABLED` lookup per
        // address (the dentry cache answers): less than the handoff to the blocking pool
        // and back, two context switches per message.
        let in_place = direction == crate::Direction::Outgoing
            && dkim.is_none()
            && index.unvouched(data.len()) <= JUDGE_IN_PLACE;
        let judge = move || {
            let verdict = check_indexed(
                &data,
                &index,
                &envelope,
                direction,
                |rcpt| {
                    mailboxes
                        .user(rcpt)
                        .map(|user| user.is_incoming_cleartext_ok())
                        .unwrap_or(false)
                },
                |addr| {
                    mailboxes
                        .user(addr)
                        .map(|user| user.is_disabled())
                        .unwrap_or(false)
                },
            );
            // The origin check comes after the encryption check (0.5.2): a cleartext
            // message to a recipient who wants encryption gets 523 whatever its DKIM.
            let origin = match (&verdict.outcome, &verdict.from, &dkim) {
                (Outcome::Accept(_), Some(from), Some(dkim)) => {
                    runtime.block_on(dkim.verify(&data, from))
                }
                _ => Ok(()),
            };
            (verdict, origin, envelope, data, index)
        };
        // Otherwise parsing and hashing tens of megabytes and stat()ing marker files must
        // not stall the runtime's other connections; the key lookups run on the runtime
        // meanwhile.
        let judged = if in_place {
            Ok(judge())
        } else {
            tokio::task::spawn_blocking(judge).await
        };
        let Ok((verdict, origin, envelope, data, index)) = judged else {
            return "451 4.3.0 Local error in processing".to_owned();
        };
        let data = MESSAGE_BUFFERS.recycled(data);
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
        if let Some(dropped) = &verdict.dropped {
            tracing::warn!("{}", dropped.log_line());
            return "250 OK".to_owned();
        }
        if envelope.recipients.is_empty() {
            // Only /mxdeliv gets here (SMTP answers DATA without RCPT with 554): upstream
            // accepts such a request and drops the message.
            let from = verdict.from.as_deref().unwrap_or("");
            tracing::info!("Dropping mail from {from}; no recipients (X-MAIL-TO)");
            return "250 OK".to_owned();
        }
        let sender = if verdict.blank_sender {
            ""
        } else {
            envelope.sender.as_str()
        };
        let message = Indexed::new(&data.buffer, &index);
        match reinject_indexed(&self.reinject, sender, &verdict.recipients, message).await {
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
