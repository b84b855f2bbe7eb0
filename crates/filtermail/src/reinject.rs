//! Hands an accepted message back to Postfix over plain SMTP, one connection per message.
//!
//! Nothing is queued here: the sender gets Postfix's own answer to DATA, so a message is
//! either in Postfix's queue (250 to the sender) or still the sender's (4xx/5xx). The only
//! window for a duplicate is the one RFC 1047 describes (connection lost after Postfix
//! queued the message but before its 250 arrived); the sender then retries.

use std::net::SocketAddr;
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Where and how patiently to reinject.
#[derive(Debug, Clone)]
pub struct ReinjectTarget {
    /// Postfix's reinjection listener (127.0.0.1:10025 or :10026).
    pub addr: SocketAddr,
    /// Bound on each connect, read and write; Postfix answers in milliseconds, a hung
    /// Postfix must not hold the sender's connection forever.
    pub timeout: Duration,
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

/// Sends `data` (transparent form: unstuffed, CRLF lines) from `sender` to `recipients`.
pub async fn reinject(
    target: &ReinjectTarget,
    sender: &str,
    recipients: &[String],
    data: &[u8],
) -> Result<(), ReinjectError> {
    let stream = connect(target).await?;
    let mut client = Client {
        stream: BufReader::new(stream),
        timeout: target.timeout,
    };
    client.expect(220).await?;
    client.send(b"EHLO [127.0.0.1]\r\n").await?;
    let ehlo = client.expect(250).await?;
    let eight_bit = !data.is_ascii()
        && ehlo
            .lines
            .iter()
            .any(|l| l.eq_ignore_ascii_case("8BITMIME"));
    let body = if eight_bit { " BODY=8BITMIME" } else { "" };
    client
        .send(format!("MAIL FROM:<{sender}>{body}\r\n").as_bytes())
        .await?;
    client.expect(250).await?;
    for rcpt in recipients {
        client
            .send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
            .await?;
        client.expect(250).await?;
    }
    client.send(b"DATA\r\n").await?;
    client.expect(354).await?;
    client.send_message(data).await?;
    client.expect(250).await?;
    // The message is Postfix's now; a failed QUIT changes nothing.
    let _ = client.send(b"QUIT\r\n").await;
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
    let (pieces, end) = wire_pieces(data);
    let mut out = Vec::with_capacity(data.len() + pieces.len() + end.len());
    for piece in pieces {
        out.extend_from_slice(piece);
    }
    out.extend_from_slice(end);
    out
}

/// The wire form of `data` without copying it: slices of `data` whose concatenation is the
/// dot-stuffed message (each line-start dot ends one slice and starts the next, so it goes
/// out twice), then the terminator (with the CRLF the data may lack).
fn wire_pieces(data: &[u8]) -> (Vec<&[u8]>, &'static [u8]) {
    let mut pieces = Vec::new();
    let mut start = 0;
    if data.first() == Some(&b'.') {
        pieces.push(data.get(..1).unwrap_or_default());
    }
    for newline in memchr::memmem::find_iter(data, b"\n.") {
        let dot = newline + 1;
        pieces.push(data.get(start..=dot).unwrap_or_default());
        start = dot;
    }
    pieces.push(data.get(start..).unwrap_or_default());
    let end: &[u8] = if data.is_empty() || data.ends_with(b"\r\n") {
        b".\r\n"
    } else {
        b"\r\n.\r\n"
    };
    (pieces, end)
}

struct Client {
    stream: BufReader<TcpStream>,
    timeout: Duration,
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) -> Result<(), ReinjectError> {
        let write = async {
            self.stream.get_mut().write_all(bytes).await?;
            self.stream.get_mut().flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(ReinjectError::Connection(format!(
                "sending to Postfix: {err}"
            ))),
            Err(_) => Err(ReinjectError::Connection(
                "sending to Postfix timed out".into(),
            )),
        }
    }

    /// Sends the message data in its wire form. The data is written from where it lies;
    /// only its last bytes are copied, to share one write with the terminator.
    async fn send_message(&mut self, data: &[u8]) -> Result<(), ReinjectError> {
        /// At most this much is copied to go out with the terminator.
        const TAIL: usize = 4096;
        let (mut pieces, end) = wire_pieces(data);
        let last = pieces.pop().unwrap_or_default();
        let (body, tail) = last.split_at(last.len().saturating_sub(TAIL));
        let mut finish = Vec::with_capacity(tail.len() + end.len());
        finish.extend_from_slice(tail);
        finish.extend_from_slice(end);
        let write = async {
            let stream = self.stream.get_mut();
            for piece in pieces.into_iter().chain([body]) {
                stream.write_all(piece).await?;
            }
            stream.write_all(&finish).await?;
            stream.flush().await
        };
        match tokio::time::timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(ReinjectError::Connection(format!(
                "sending to Postfix: {err}"
            ))),
            Err(_) => Err(ReinjectError::Connection(
                "sending to Postfix timed out".into(),
            )),
        }
    }

    /// Reads one reply; a code other than `code` is Postfix's refusal.
    async fn expect(&mut self, code: u16) -> Result<Reply, ReinjectError> {
        let reply = match tokio::time::timeout(self.timeout, self.read_reply()).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(ReinjectError::Connection(
                    "waiting for Postfix's reply timed out".into(),
                ));
            }
        };
        if reply.code == code {
            Ok(reply)
        } else {
            Err(ReinjectError::Refused(reply))
        }
    }

    async fn read_reply(&mut self) -> Result<Reply, ReinjectError> {
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            let n = (&mut self.stream)
                .take(4096)
                .read_until(b'\n', &mut line)
                .await
                .map_err(|err| ReinjectError::Connection(format!("reading from Postfix: {err}")))?;
            if n == 0 || !line.ends_with(b"\n") {
                return Err(ReinjectError::Connection(
                    "Postfix closed the connection".into(),
                ));
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            let code = text.get(..3).and_then(|c| c.parse::<u16>().ok());
            let Some(code) = code.filter(|c| (200..600).contains(c)) else {
                return Err(ReinjectError::Connection(format!(
                    "malformed reply from Postfix: {text:?}"
                )));
            };
            let more = text.get(3..4) == Some("-");
            lines.push(text.get(4..).unwrap_or("").to_owned());
            if !more || lines.len() > 100 {
                return Ok(Reply { code, lines });
            }
        }
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
        let target = ReinjectTarget {
            addr: listener.local_addr().unwrap(),
            timeout: Duration::from_secs(10),
        };
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
