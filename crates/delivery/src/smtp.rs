//! The SMTP channel (filtermail-latest.md §7.4 step 2 and §9): parallel dial, EHLO,
//! STARTTLS, EHLO, MAIL/RCPT/DATA (pipelined when offered), QUIT. Every read, write,
//! connect and handshake is bounded by the inactivity timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::error::{DeliveryError, Reply};

/// Longest reply line read (RFC 5321 allows 512 octets; some servers send more).
const MAX_LINE: u64 = 4096;
/// Most lines in one reply.
const MAX_LINES: usize = 100;
/// Bytes of message data written per bounded write.
const WRITE_CHUNK: usize = 64 * 1024;

/// How the channel is secured.
#[derive(Clone)]
pub(crate) enum Security {
    /// STARTTLS required; handshake with this configuration and server name.
    StartTls(Arc<ClientConfig>, ServerName<'static>),
    /// No TLS even if offered (the plaintext exception list).
    Plaintext,
}

/// One delivery's parameters.
pub(crate) struct Attempt<'a> {
    /// The host's name (or literal) for the forwarded-reply suffix.
    pub host: &'a str,
    /// Whether `host` is a name (shown as `name[ip:port]`) or a literal (`ip:port`).
    pub host_is_name: bool,
    /// The addresses dialled in parallel.
    pub addrs: &'a [SocketAddr],
    /// Our EHLO name.
    pub ehlo_name: &'a str,
    /// TLS policy.
    pub security: Security,
    /// Connect and inactivity timeout.
    pub timeout: Duration,
}

/// Something that is a connection, plain or TLS.
trait Connection: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Connection for T {}

/// An open SMTP connection.
struct Session {
    /// Buffered reads; writes go to the inner stream.
    stream: BufReader<Box<dyn Connection>>,
    /// For the forwarded-reply suffix.
    peer: String,
    /// Bound of every single read and write.
    timeout: Duration,
}

/// Delivers `stuffed` (the dot-stuffed data ending in CRLF) from `sender` to
/// `recipients`. Errors are classified by [`DeliveryError::is_connection_class`].
pub(crate) async fn deliver(
    attempt: Attempt<'_>,
    sender: &str,
    recipients: &[String],
    stuffed: &[u8],
) -> Result<(), DeliveryError> {
    let (tcp, addr) = dial(attempt.addrs, attempt.timeout).await?;
    let peer = if attempt.host_is_name {
        format!("{}[{addr}]", attempt.host)
    } else {
        addr.to_string()
    };
    let mut session = Session {
        stream: BufReader::new(Box::new(tcp)),
        peer,
        timeout: attempt.timeout,
    };
    let result = session
        .transaction(&attempt, sender, recipients, stuffed)
        .await;
    if !matches!(&result, Err(err) if err.is_connection_class()) {
        // Politeness only: the result is known, so QUIT runs on its own, bounded.
        tokio::spawn(async move { session.quit().await });
    }
    result
}

/// Connects to every address at once; the first TCP connection wins and the others are
/// dropped.
async fn dial(
    addrs: &[SocketAddr],
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), DeliveryError> {
    let mut attempts = JoinSet::new();
    for &addr in addrs {
        attempts.spawn(async move {
            match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
                Ok(Ok(stream)) => Ok((stream, addr)),
                Ok(Err(err)) => Err(format!("{addr}: {err}")),
                Err(_elapsed) => Err(format!("{addr}: connect timed out")),
            }
        });
    }
    while let Some(joined) = attempts.join_next().await {
        match joined {
            Ok(Ok((stream, addr))) => {
                let _ = stream.set_nodelay(true);
                return Ok((stream, addr));
            }
            Ok(Err(err)) => tracing::debug!("SMTP connect failed: {err}"),
            Err(err) => tracing::debug!("SMTP connect task failed: {err}"),
        }
    }
    Err(DeliveryError::Connect(addrs.to_vec()))
}

impl Session {
    async fn transaction(
        &mut self,
        attempt: &Attempt<'_>,
        sender: &str,
        recipients: &[String],
        stuffed: &[u8],
    ) -> Result<(), DeliveryError> {
        let greeting = self.read_reply().await?;
        self.expect(greeting, 220)?;
        let mut ehlo = self
            .command(&format!("EHLO {}", attempt.ehlo_name), 250)
            .await?;
        if let Security::StartTls(config, server_name) = &attempt.security {
            if !offers(&ehlo, "STARTTLS") {
                return Err(DeliveryError::NoStartTls);
            }
            self.command("STARTTLS", 220).await?;
            self.start_tls(config.clone(), server_name.clone()).await?;
            ehlo = self
                .command(&format!("EHLO {}", attempt.ehlo_name), 250)
                .await?;
        }
        if offers(&ehlo, "PIPELINING") {
            self.envelope_pipelined(sender, recipients).await?;
        } else {
            self.command(&format!("MAIL FROM:<{sender}>"), 250).await?;
            for recipient in recipients {
                self.command(&format!("RCPT TO:<{recipient}>"), 250).await?;
            }
            self.command("DATA", 354).await?;
        }
        for chunk in stuffed.chunks(WRITE_CHUNK) {
            self.write(chunk).await?;
        }
        self.write(b".\r\n").await?;
        let done = self.read_reply().await?;
        self.expect(done, 250).map(drop)
    }

    /// MAIL, every RCPT and DATA in one write, then their replies in order (RFC 2920).
    async fn envelope_pipelined(
        &mut self,
        sender: &str,
        recipients: &[String],
    ) -> Result<(), DeliveryError> {
        let mut batch = format!("MAIL FROM:<{sender}>\r\n");
        for recipient in recipients {
            batch.push_str(&format!("RCPT TO:<{recipient}>\r\n"));
        }
        batch.push_str("DATA\r\n");
        self.write(batch.as_bytes()).await?;
        let mut first_failure = None;
        for _ in 0..=recipients.len() {
            let reply = self.read_reply().await?;
            if first_failure.is_none() && !reply.is_positive() {
                first_failure = Some(reply);
            }
        }
        let data = self.read_reply().await?;
        match first_failure {
            None => self.expect(data, 354).map(drop),
            Some(failure) => {
                if data.code == 354 {
                    // DATA was accepted without recipients: send an empty message.
                    self.write(b".\r\n").await?;
                    let _ = self.read_reply().await?;
                }
                Err(self.rejected(failure))
            }
        }
    }

    async fn start_tls(
        &mut self,
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    ) -> Result<(), DeliveryError> {
        if !self.stream.buffer().is_empty() {
            // Data sent before the handshake (STARTTLS command injection) is never
            // carried over into the encrypted session.
            return Err(DeliveryError::Protocol(
                "data after the reply to STARTTLS".to_owned(),
            ));
        }
        let plain = std::mem::replace(
            &mut self.stream,
            // A placeholder for the moment of the handshake.
            BufReader::new(Box::new(tokio::io::duplex(1).0)),
        )
        .into_inner();
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = tokio::time::timeout(self.timeout, connector.connect(server_name, plain))
            .await
            .map_err(|_elapsed| DeliveryError::Tls("handshake timed out".to_owned()))?
            .map_err(|err| DeliveryError::Tls(err.to_string()))?;
        self.stream = BufReader::new(Box::new(tls));
        Ok(())
    }

    /// Sends `line` and reads its reply, which must have the code `expected`.
    async fn command(&mut self, line: &str, expected: u16) -> Result<Reply, DeliveryError> {
        self.write(format!("{line}\r\n").as_bytes()).await?;
        let reply = self.read_reply().await?;
        self.expect(reply, expected)
    }

    /// `reply` if its code is `expected` (for 250: any 2xx, e.g. 251 to RCPT), else the
    /// rejection.
    fn expect(&self, reply: Reply, expected: u16) -> Result<Reply, DeliveryError> {
        if reply.code == expected || (expected == 250 && reply.is_positive()) {
            Ok(reply)
        } else {
            Err(self.rejected(reply))
        }
    }

    fn rejected(&self, reply: Reply) -> DeliveryError {
        DeliveryError::Rejected {
            reply,
            peer: self.peer.clone(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), DeliveryError> {
        let stream = self.stream.get_mut();
        tokio::time::timeout(self.timeout, async {
            stream.write_all(bytes).await?;
            stream.flush().await
        })
        .await
        .map_err(|_elapsed| timed_out("write"))??;
        Ok(())
    }

    /// One reply: lines up to the one without `-` after the code.
    async fn read_reply(&mut self) -> Result<Reply, DeliveryError> {
        let mut reply = Reply {
            code: 0,
            lines: Vec::new(),
        };
        for _ in 0..MAX_LINES {
            let mut line = Vec::new();
            let read = tokio::time::timeout(
                self.timeout,
                (&mut self.stream)
                    .take(MAX_LINE)
                    .read_until(b'\n', &mut line),
            )
            .await
            .map_err(|_elapsed| timed_out("read"))??;
            if read == 0 {
                return Err(DeliveryError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "connection closed by the mail server",
                )));
            }
            let (code, last, text) = parse_line(&line)?;
            if reply.code != 0 && reply.code != code {
                return Err(DeliveryError::Protocol(format!(
                    "reply lines with codes {} and {code}",
                    reply.code
                )));
            }
            reply.code = code;
            reply.lines.push(text);
            if last {
                return Ok(reply);
            }
        }
        Err(DeliveryError::Protocol(format!(
            "reply of more than {MAX_LINES} lines"
        )))
    }

    async fn quit(&mut self) {
        if self.write(b"QUIT\r\n").await.is_ok() {
            let _ = self.read_reply().await;
        }
    }
}

fn timed_out(what: &str) -> DeliveryError {
    DeliveryError::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("{what} timed out"),
    ))
}

/// Whether the EHLO reply offers `keyword` (any line after the first, case-insensitive).
fn offers(ehlo: &Reply, keyword: &str) -> bool {
    ehlo.lines.iter().skip(1).any(|line| {
        line.split_ascii_whitespace()
            .next()
            .is_some_and(|word| word.eq_ignore_ascii_case(keyword))
    })
}

/// One reply line: its code, whether it is the last line, and its text.
fn parse_line(line: &[u8]) -> Result<(u16, bool, String), DeliveryError> {
    let invalid = || {
        DeliveryError::Protocol(format!(
            "invalid reply line {:?}",
            crate::wire::one_line(&String::from_utf8_lossy(line))
        ))
    };
    let line = line.strip_suffix(b"\n").ok_or_else(invalid)?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (digits, rest) = line.split_at_checked(3).ok_or_else(invalid)?;
    let code = std::str::from_utf8(digits)
        .ok()
        .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|d| d.parse::<u16>().ok())
        .filter(|code| (200..600).contains(code))
        .ok_or_else(invalid)?;
    let (last, text) = match rest.split_first() {
        None => (true, &[][..]),
        Some((b' ', text)) => (true, text),
        Some((b'-', text)) => (false, text),
        Some(_) => return Err(invalid()),
    };
    Ok((code, last, String::from_utf8_lossy(text).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines_parse() {
        assert_eq!(
            parse_line(b"250-mx.example\r\n").unwrap(),
            (250, false, "mx.example".to_owned())
        );
        assert_eq!(
            parse_line(b"550 5.1.1 no\r\n").unwrap(),
            (550, true, "5.1.1 no".to_owned())
        );
        assert_eq!(parse_line(b"354\r\n").unwrap(), (354, true, String::new()));
        assert_eq!(
            parse_line(b"250 ok\n").unwrap(),
            (250, true, "ok".to_owned())
        );
        for bad in [
            &b"25\r\n"[..],
            b"abc ok\r\n",
            b"250xok\r\n",
            b"250 no end",
            b"150 x\r\n",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn extensions_are_found_after_the_first_line_only() {
        let ehlo = Reply {
            code: 250,
            lines: vec!["STARTTLS".into(), "PIPELINING".into(), "starttls".into()],
        };
        assert!(offers(&ehlo, "STARTTLS"));
        assert!(offers(&ehlo, "pipelining"));
        let greeting_only = Reply {
            code: 250,
            lines: vec!["STARTTLS".into()],
        };
        assert!(!offers(&greeting_only, "STARTTLS"));
    }
}
