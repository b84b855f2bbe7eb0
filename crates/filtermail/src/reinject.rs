//! Hands an accepted message back to Postfix over plain SMTP, reusing idle connections.
//!
//! Nothing is queued here: the sender gets Postfix's own answer to DATA, so a message is
//! either in Postfix's queue (250 to the sender) or still the sender's (4xx/5xx). The only
//! window for a duplicate is the one RFC 1047 describes (connection lost after Postfix
//! queued the message but before its 250 arrived); the sender then retries.
//!
//! Connections: after a transaction Postfix answered with 250, the connection goes back to
//! a small pool of idle connections ([`PoolLimits`]: at most `max_idle`, each closed with
//! QUIT once idle for `idle_timeout`), and the next message takes the most recently used
//! one instead of paying a connect, the greeting and EHLO again. A finished transaction
//! leaves the session ready for the next MAIL (RFC 5321 §4.1.4), so no RSET is sent. A
//! connection is never reused after an error, a timeout or any reply but the expected one.
//! A pooled connection that Postfix closed meanwhile (its `smtpd_timeout`, a reload) is
//! dropped when it is taken if the close already arrived; if it fails before its first
//! reply (the one to MAIL FROM, or a 421 as that reply), nothing was handed over and the
//! message goes once more over a fresh connection. Every later failure goes to the sender
//! as before: once the final dot is out, a missing reply is a 451, never a second try.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use chatmail_delivery::stuffed_pieces_at;
use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::index::Indexed;

/// Where and how patiently to reinject, and the idle connections kept for it.
#[derive(Debug, Clone)]
pub struct ReinjectTarget {
    /// Postfix's reinjection listener (127.0.0.1:10025 or :10026).
    pub addr: SocketAddr,
    /// Bound on each connect, read and write; Postfix answers in milliseconds, a hung
    /// Postfix must not hold the sender's connection forever.
    pub timeout: Duration,
    /// What filtermail says in EHLO: its listening address as an RFC 5321 address
    /// literal (`[127.0.0.1]`, `[IPv6:::1]`).
    pub ehlo_name: String,
    /// Idle connections, shared by the clones of this target.
    pool: Arc<Pool>,
}

/// How many idle connections are kept, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct PoolLimits {
    /// Idle connections kept at most; a connection finishing its message beyond that is
    /// closed. Each one holds a Postfix `smtpd` process (the reinjection services allow
    /// 100). 0 turns reuse off.
    pub max_idle: usize,
    /// An idle connection is closed (QUIT) after this long. Well below Postfix's
    /// `smtpd_timeout`, which is 300 s, or 10 s when Postfix is under stress.
    pub idle_timeout: Duration,
}

impl Default for PoolLimits {
    fn default() -> Self {
        PoolLimits {
            max_idle: 16,
            idle_timeout: Duration::from_secs(5),
        }
    }
}

impl ReinjectTarget {
    /// A target with the default [`PoolLimits`].
    pub fn new(addr: SocketAddr, timeout: Duration) -> ReinjectTarget {
        ReinjectTarget::with_pool(addr, timeout, PoolLimits::default())
    }

    /// A target keeping idle connections as `limits` says.
    pub fn with_pool(addr: SocketAddr, timeout: Duration, limits: PoolLimits) -> ReinjectTarget {
        ReinjectTarget {
            addr,
            timeout,
            ehlo_name: "[127.0.0.1]".to_owned(),
            pool: Arc::new(Pool {
                limits,
                state: Mutex::new(PoolState::default()),
            }),
        }
    }

    /// The same target, saying `ip` (filtermail's listening address) in EHLO.
    pub fn with_ehlo_address(mut self, ip: std::net::IpAddr) -> ReinjectTarget {
        self.ehlo_name = match ip {
            std::net::IpAddr::V4(v4) => format!("[{v4}]"),
            std::net::IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
        };
        self
    }

    /// Idle connections in the pool right now.
    pub fn idle_connections(&self) -> usize {
        self.pool.lock().idle.len()
    }
}

/// A reply from Postfix: code and text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub lines: Vec<String>,
}

impl Reply {
    /// The reply as it goes on the wire, continuation lines included, without the final
    /// CRLF.
    pub fn to_wire(&self) -> String {
        let last = self.lines.len().saturating_sub(1);
        self.lines
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let sep = if i == last { ' ' } else { '-' };
                format!("{}{sep}{text}", self.code)
            })
            .collect::<Vec<_>>()
            .join("\r\n")
    }
}

#[derive(Debug, Error)]
pub enum ReinjectError {
    /// Postfix refused; its reply goes to the sender unchanged.
    #[error("{}", .0.to_wire())]
    Refused(Reply),
    /// Postfix unreachable, slow, or gone mid-dialogue.
    #[error("{0}")]
    Connection(String),
}

impl ReinjectError {
    /// The reply to the sender's DATA: Postfix's own 4xx/5xx, or a 451 (try again later)
    /// for anything that is not Postfix's verdict.
    pub fn reply(&self) -> String {
        match self {
            ReinjectError::Refused(reply) if (400..600).contains(&reply.code) => reply.to_wire(),
            ReinjectError::Refused(reply) => {
                format!(
                    "451 4.3.0 Unexpected reply from Postfix: {}",
                    reply.lines.join(" ")
                )
            }
            ReinjectError::Connection(err) => format!("451 4.4.1 Reinjection failed: {err}"),
        }
    }
}

/// How one step of the dialogue failed.
#[derive(Debug)]
enum Fail {
    /// Write or read error, end of stream, malformed reply: the connection is unusable.
    Io(String),
    /// No progress within the target's timeout.
    Timeout(String),
    /// A reply other than the expected one.
    Reply(Reply),
}

impl From<Fail> for ReinjectError {
    fn from(fail: Fail) -> ReinjectError {
        match fail {
            Fail::Io(text) | Fail::Timeout(text) => ReinjectError::Connection(text),
            Fail::Reply(reply) => ReinjectError::Refused(reply),
        }
    }
}

/// Sends `data` (transparent form: unstuffed, CRLF lines) from `sender` to `recipients`,
/// over an idle connection of `target`'s pool if there is one.
pub async fn reinject(
    target: &ReinjectTarget,
    sender: &str,
    recipients: &[String],
    data: &[u8],
) -> Result<(), ReinjectError> {
    reinject_indexed(target, sender, recipients, Indexed::unindexed(data)).await
}

/// [`reinject`] of a message with its index: 8-bit data and line-start dots are looked
/// for outside its pure pages only.
pub async fn reinject_indexed(
    target: &ReinjectTarget,
    sender: &str,
    recipients: &[String],
    message: Indexed<'_>,
) -> Result<(), ReinjectError> {
    if let Some(client) = target.pool.take() {
        match transaction(client, sender, recipients, message, true).await {
            Ok(client) => {
                target.pool.put(client);
                return Ok(());
            }
            Err(Failed::Stale(err)) => {
                // Closed while idle: nothing was handed over, so a fresh connection may try.
                tracing::debug!("idle reinjection connection unusable ({err}), reconnecting");
            }
            Err(Failed::Final(err)) => return Err(err),
        }
    }
    let client = open(target).await?;
    match transaction(client, sender, recipients, message, false).await {
        Ok(client) => {
            target.pool.put(client);
            Ok(())
        }
        Err(Failed::Stale(err) | Failed::Final(err)) => Err(err),
    }
}

/// How a transaction failed.
enum Failed {
    /// A reused connection failed before its first reply: the message may go again.
    Stale(ReinjectError),
    /// Anything else: the sender gets it.
    Final(ReinjectError),
}

/// Connects, reads the greeting and says EHLO.
async fn open(target: &ReinjectTarget) -> Result<Client, ReinjectError> {
    let stream = connect(target).await?;
    let mut client = Client {
        stream: BufReader::new(stream),
        timeout: target.timeout,
        eight_bit_mime: false,
        pipelining: false,
    };
    client.expect(220).await?;
    client
        .send(format!("EHLO {}\r\n", target.ehlo_name).as_bytes())
        .await?;
    let ehlo = client.expect(250).await?;
    let offers = |extension: &str| ehlo.lines.iter().any(|l| l.eq_ignore_ascii_case(extension));
    client.eight_bit_mime = offers("8BITMIME");
    client.pipelining = offers("PIPELINING");
    Ok(client)
}

/// One message over `client`, which has said EHLO and has no transaction open; gives the
/// connection back when Postfix took the message.
async fn transaction(
    mut client: Client,
    sender: &str,
    recipients: &[String],
    message: Indexed<'_>,
    reused: bool,
) -> Result<Client, Failed> {
    let eight_bit = client.eight_bit_mime && !message.is_ascii(message.message());
    let body = if eight_bit { " BODY=8BITMIME" } else { "" };
    let mail = format!("MAIL FROM:<{sender}>{body}\r\n");
    let mut commands = Vec::with_capacity(1 + recipients.len() + 1);
    commands.push(mail);
    commands.extend(
        recipients
            .iter()
            .map(|rcpt| format!("RCPT TO:<{rcpt}>\r\n")),
    );
    commands.push("DATA\r\n".to_owned());
    // With PIPELINING (RFC 2920; Postfix offers it) MAIL, the RCPTs and DATA go in one
    // write and their replies come back together: two round trips per message instead
    // of three plus one per recipient. The data still waits for the 354.
    if client.pipelining
        && let Err(fail) = client.send(commands.concat().as_bytes()).await
    {
        return Err(client.abandon(fail, reused, true));
    }
    for (index, command) in commands.iter().enumerate() {
        // Before its first reply a reused connection may turn out stale.
        let stale_possible = reused && index == 0;
        if !client.pipelining
            && let Err(fail) = client.send(command.as_bytes()).await
        {
            return Err(client.abandon(fail, stale_possible, false));
        }
        let code = if index + 1 == commands.len() {
            354
        } else {
            250
        };
        if let Err(fail) = client.expect(code).await {
            let unanswered = if client.pipelining {
                commands.len() - index - 1
            } else {
                0
            };
            let in_data = match &fail {
                // A refusal on a live session: see where the pipelined rest left it.
                Fail::Reply(reply) if reply.code != 421 => client.drain(unanswered).await,
                _ => unanswered > 0,
            };
            return Err(client.abandon(fail, stale_possible, in_data));
        }
    }
    let rest = async {
        client.send_message(message).await?;
        client.expect(250).await.map(drop)
    };
    match rest.await {
        Ok(()) => Ok(client),
        Err(fail) => Err(client.abandon(fail, false, false)),
    }
}

/// The idle connections of one target.
#[derive(Debug)]
struct Pool {
    limits: PoolLimits,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    /// Oldest first; taken from the end.
    idle: Vec<Idle>,
    /// A task closing expired connections is running.
    reaper: bool,
}

#[derive(Debug)]
struct Idle {
    client: Client,
    since: Instant,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle connection that is neither expired nor closed.
    fn take(&self) -> Option<Client> {
        let mut state = self.lock();
        while let Some(idle) = state.idle.pop() {
            if idle.since.elapsed() < self.limits.idle_timeout && idle.client.looks_idle() {
                return Some(idle.client);
            }
            idle.client.quit();
        }
        None
    }

    /// Keeps `client` for the next message, or closes it when the pool is full.
    fn put(self: &Arc<Self>, client: Client) {
        let mut state = self.lock();
        if state.idle.len() >= self.limits.max_idle {
            drop(state);
            client.quit();
            return;
        }
        state.idle.push(Idle {
            client,
            since: Instant::now(),
        });
        if !state.reaper {
            state.reaper = true;
            tokio::spawn(reap(Arc::downgrade(self)));
        }
    }
}

/// Closes idle connections as they expire; ends when the pool is empty or gone.
async fn reap(pool: Weak<Pool>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else {
                return;
            };
            let limit = pool.limits.idle_timeout;
            let mut state = pool.lock();
            let now = Instant::now();
            let live = state
                .idle
                .iter()
                .position(|idle| now.duration_since(idle.since) < limit)
                .unwrap_or(state.idle.len());
            for idle in state.idle.drain(..live) {
                idle.client.quit();
            }
            match state.idle.first() {
                Some(oldest) => oldest.since + limit,
                None => {
                    state.reaper = false;
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

/// Writes all of `pieces`, in order, with as few `writev` calls as the socket allows.
async fn write_all_gathered(stream: &mut TcpStream, pieces: &[&[u8]]) -> std::io::Result<()> {
    let mut slices: Vec<IoSlice<'_>> = pieces
        .iter()
        .filter(|piece| !piece.is_empty())
        .map(|piece| IoSlice::new(piece))
        .collect();
    let mut rest = slices.as_mut_slice();
    while !rest.is_empty() {
        let written = stream.write_vectored(rest).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        IoSlice::advance_slices(&mut rest, written);
    }
    Ok(())
}

/// Connects to Postfix with Nagle's algorithm off. With it on, the last small segment of
/// the message data waits for the ACK of the previous one, which Postfix delays (it is
/// waiting for more data): about 40 ms per message, the stall upstream's filtermail has.
async fn connect(target: &ReinjectTarget) -> Result<TcpStream, ReinjectError> {
    let stream = tokio::time::timeout(target.timeout, TcpStream::connect(target.addr))
        .await
        .map_err(|_| ReinjectError::Connection(format!("connecting to {} timed out", target.addr)))?
        .map_err(|err| {
            ReinjectError::Connection(format!("connecting to {}: {err}", target.addr))
        })?;
    stream
        .set_nodelay(true)
        .map_err(|err| ReinjectError::Connection(format!("setting TCP_NODELAY: {err}")))?;
    Ok(stream)
}

/// The wire form of a message: leading dots doubled, a final CRLF if missing, and the
/// `.` terminator line.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let (pieces, end) = wire_pieces(Indexed::unindexed(data));
    let mut out = Vec::with_capacity(data.len() + pieces.len() + end.len());
    for piece in pieces {
        out.extend_from_slice(piece);
    }
    out.extend_from_slice(end);
    out
}

/// The wire form of `data` without copying it: slices of `data` whose concatenation is the
/// dot-stuffed message ([`stuffed_pieces_at`]), then the terminator (with the CRLF the data
/// may lack).
fn wire_pieces(message: Indexed<'_>) -> (Vec<&[u8]>, &'static [u8]) {
    let data = message.message();
    let end: &[u8] = if data.is_empty() || data.ends_with(b"\r\n") {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    };
    let lf_dots = message.find_all(data, b"\n.");
    (stuffed_pieces_at(data, lf_dots), end)
}

#[derive(Debug)]
struct Client {
    stream: BufReader<TcpStream>,
    timeout: Duration,
    /// Postfix offered 8BITMIME in its EHLO reply.
    eight_bit_mime: bool,
    /// Postfix offered PIPELINING in its EHLO reply.
    pipelining: bool,
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), Fail> {
        let write = async {
            self.stream.get_mut().write_all(bytes).await?;
            self.stream.get_mut().flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(Fail::Io(format!("sending to Postfix: {err}"))),
            Err(_) => Err(Fail::Timeout("sending to Postfix timed out".into())),
        }
    }

    /// Sends the message data in its wire form, written from where it lies (its slices
    /// and the terminator gathered by `writev`): a small message and its terminator are
    /// one write, and nothing is copied.
    async fn send_message(&mut self, message: Indexed<'_>) -> Result<(), Fail> {
        let (mut pieces, end) = wire_pieces(message);
        pieces.push(end);
        let write = write_all_gathered(self.stream.get_mut(), &pieces);
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(Fail::Io(format!("sending to Postfix: {err}"))),
            Err(_) => Err(Fail::Timeout("sending to Postfix timed out".into())),
        }
    }

    /// Reads one reply; a code other than `code` is Postfix's refusal.
    async fn expect(&mut self, code: u16) -> Result<Reply, Fail> {
        let reply = match tokio::time::timeout(self.timeout, self.read_reply()).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Fail::Timeout(
                    "waiting for Postfix's reply timed out".into(),
                ));
            }
        };
        if reply.code == code {
            Ok(reply)
        } else {
            Err(Fail::Reply(reply))
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, Fail> {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = (&mut self.stream)
                .take(4096)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|err| Fail::Io(format!("reading from Postfix: {err}")))?;
            if n == 0 || !line.ends_with(b"\n") {
                return Err(Fail::Io("Postfix closed the connection".into()));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let code = text.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code.filter(|c| (200..600).contains(c)) else {
                return Err(Fail::Io(format!("malformed reply from Postfix: {text:?}")));
            };
            let more = text.get(3..4) == Some("-");
            lines.push(text.get(4..).unwrap_or("").to_owned());
            if !more || lines.len() > 100 {
                return Ok(Reply { code, lines });
            }
        }
    }

    /// Whether an idle connection still looks usable: Postfix sent nothing since its last
    /// reply (a 421 before closing, or the close itself, would be readable now).
    fn looks_idle(&self) -> bool {
        if !self.stream.buffer().is_empty() {
            return false;
        }
        let mut byte = [0; 1];
        matches!(
            self.stream.get_ref().try_read(&mut byte),
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock
        )
    }

    /// Says QUIT without waiting (a few bytes always fit the socket buffer) and closes.
    fn quit(self) {
        let _ = self.stream.get_ref().try_write(b"QUIT\r\n");
    }

    /// Reads the replies to `unanswered` pipelined commands after a refusal; whether the
    /// session may be in the data phase now (DATA, the last of them, got 354, or the
    /// replies could not all be read).
    async fn drain(&mut self, unanswered: usize) -> bool {
        for left in (0..unanswered).rev() {
            // The last of them is DATA's.
            let code = if left == 0 { 354 } else { 250 };
            match self.expect(code).await {
                Ok(_) if left == 0 => return true,
                Ok(_) | Err(Fail::Reply(_)) => {}
                Err(_) => return true,
            }
        }
        false
    }

    /// Ends the connection after a failed step. `stale_possible`: nothing was handed over
    /// yet on a reused connection, so a connection error or a 421 means it went stale and
    /// the message may go again; otherwise the failure is the sender's. `in_data`: the
    /// session may be in the data phase (a pipelined DATA accepted), so the connection is
    /// closed without a word (a QUIT would be message data; Postfix drops a transaction
    /// whose connection is lost).
    fn abandon(self, fail: Fail, stale_possible: bool, in_data: bool) -> Failed {
        let stale = match &fail {
            Fail::Io(_) => true,
            Fail::Reply(reply) => reply.code == 421,
            Fail::Timeout(_) => false,
        };
        if stale_possible && stale {
            return Failed::Stale(fail.into());
        }
        if let Fail::Reply(_) = fail
            && !in_data
        {
            // Postfix is still listening: tell it the session is over.
            self.quit();
        }
        Failed::Final(fail.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stuffs_dots_and_terminates() {
        assert_eq!(
            dot_stuff(b".a\r\nb\r\n..c\r\n"),
            b"..a\r\nb\r\n...c\r\n.\r\n"
        );
        assert_eq!(dot_stuff(b"x"), b"x\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }

    /// The transparency rule written out byte by byte, to compare the slicing with.
    fn stuff_bytewise(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut at_line_start = true;
        for &b in data {
            if at_line_start && b == b'.' {
                out.push(b'.');
            }
            out.push(b);
            at_line_start = b == b'\n';
        }
        if !data.is_empty() && !data.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn stuffing_by_slices_matches_the_rule() {
        let cases: &[&[u8]] = &[
            b"",
            b".",
            b"..",
            b"\r\n.\r\n",
            b".\r\n.\r\n..\r\n",
            b"a.b\r\n.c\r\nd.\r\n",
            b"x\n.y",
            b"no final crlf.",
            b"\r\n\r\n",
            b".a\r\n\r\n.\r\n.",
        ];
        for &data in cases {
            assert_eq!(
                dot_stuff(data),
                stuff_bytewise(data),
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    /// Without TCP_NODELAY every message would wait for Postfix's delayed ACK before its
    /// last segment went out (40 ms per message on Linux).
    #[tokio::test]
    async fn reinjection_connection_disables_nagle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = ReinjectTarget::new(listener.local_addr().unwrap(), Duration::from_secs(10));
        let stream = connect(&target).await.unwrap();
        assert!(stream.nodelay().unwrap());
    }

    #[test]
    fn relays_postfix_replies_unchanged() {
        let reply = Reply {
            code: 550,
            lines: vec!["5.1.1 <x@y>: Recipient address rejected".into()],
        };
        assert_eq!(
            ReinjectError::Refused(reply).reply(),
            "550 5.1.1 <x@y>: Recipient address rejected"
        );
        let multi = Reply {
            code: 452,
            lines: vec!["first".into(), "second".into()],
        };
        assert_eq!(
            ReinjectError::Refused(multi).reply(),
            "452-first\r\n452 second"
        );
        let odd = Reply {
            code: 250,
            lines: vec!["OK".into()],
        };
        assert!(ReinjectError::Refused(odd).reply().starts_with("451 "));
    }
}
