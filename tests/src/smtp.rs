//! A minimal SMTP client over a plain TCP connection: EHLO, MAIL, RCPT, DATA (with
//! dot-stuffing), RSET, QUIT; every reply is returned with its code and text, so tests can
//! assert on what a mail client would see.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::tls::Stream;

/// How long any single read or write may block before the test fails instead of hanging.
/// Longer than filtermail's and Postfix's own steps, so their timeouts show as replies.
const IO_TIMEOUT: Duration = Duration::from_secs(60);

/// One (possibly multi-line) SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpReply {
    /// The three-digit code of the last line.
    pub code: u16,
    /// The text of every line after the code and separator, joined with `\n`.
    pub text: String,
}

impl SmtpReply {
    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }
}

impl fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// The outcome of one mail transaction as a client sees it.
#[derive(Debug, Clone)]
pub struct Sent {
    /// The command whose reply ended the transaction: `MAIL`, `RCPT`, `DATA` (refused
    /// before the message was sent) or `.` (the reply to the message).
    pub step: &'static str,
    /// That reply.
    pub reply: SmtpReply,
}

impl Sent {
    /// The message was accepted (the final dot got 250).
    pub fn is_accepted(&self) -> bool {
        self.step == "." && self.reply.code == 250
    }
}

impl fmt::Display for Sent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.step, self.reply)
    }
}

/// One SMTP connection.
pub struct Smtp {
    /// The connection (plain TCP or TLS); writes go through `get_mut`.
    reader: BufReader<Box<dyn Stream>>,
    /// The server greeting.
    pub greeting: SmtpReply,
}

impl Smtp {
    /// Connects and reads the greeting, which must be 220.
    pub fn connect(addr: SocketAddr) -> io::Result<Smtp> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Smtp::greet(Box::new(stream))
    }

    /// Connects to a submissions port (TLS from the first byte, any certificate accepted)
    /// and reads the greeting, which must be 220.
    pub fn connect_tls(addr: SocketAddr, server_name: &str) -> io::Result<Smtp> {
        Smtp::greet(Box::new(crate::tls::connect(addr, server_name)?))
    }

    /// Connects, reads the greeting, sends EHLO `client.localhost` and STARTTLS, and
    /// completes the TLS handshake (any certificate accepted). As after any STARTTLS, the
    /// next command must be EHLO again.
    pub fn connect_starttls(addr: SocketAddr, server_name: &str) -> io::Result<Smtp> {
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        // The plain dialogue on a clone of the socket; the server sends nothing after its
        // 220 to STARTTLS until the handshake, so its buffer holds nothing to lose.
        let mut plain = Smtp::greet(Box::new(tcp.try_clone()?))?;
        plain.ehlo("client.localhost")?;
        let reply = plain.command("STARTTLS")?;
        if reply.code != 220 {
            return Err(io::Error::other(format!("STARTTLS refused: {reply}")));
        }
        let tls = crate::tls::wrap(tcp, server_name)?;
        Ok(Smtp {
            reader: BufReader::new(Box::new(tls)),
            greeting: plain.greeting,
        })
    }

    fn greet(stream: Box<dyn Stream>) -> io::Result<Smtp> {
        let mut smtp = Smtp {
            reader: BufReader::new(stream),
            greeting: SmtpReply {
                code: 0,
                text: String::new(),
            },
        };
        let greeting = smtp.read_reply()?;
        if greeting.code != 220 {
            return Err(io::Error::other(format!("unexpected greeting: {greeting}")));
        }
        smtp.greeting = greeting;
        Ok(smtp)
    }

    /// Sends one command line and reads its reply.
    pub fn command(&mut self, line: &str) -> io::Result<SmtpReply> {
        let writer = self.reader.get_mut();
        writer.write_all(format!("{line}\r\n").as_bytes())?;
        writer.flush()?;
        self.read_reply()
    }

    /// `EHLO name`, which must succeed.
    pub fn ehlo(&mut self, name: &str) -> io::Result<SmtpReply> {
        let reply = self.command(&format!("EHLO {name}"))?;
        if reply.code != 250 {
            return Err(io::Error::other(format!("EHLO refused: {reply}")));
        }
        Ok(reply)
    }

    /// `AUTH PLAIN` with the initial response; returns the reply (235 on success).
    pub fn auth_plain(&mut self, user: &str, password: &str) -> io::Result<SmtpReply> {
        let token = base64(format!("\0{user}\0{password}").as_bytes());
        self.command(&format!("AUTH PLAIN {token}"))
    }

    /// One whole transaction: MAIL, RCPT for each recipient, DATA, the message
    /// (CRLF-separated lines, dot-stuffed here) and the final dot. Stops at the first
    /// refused command (sending RSET so the connection stays usable).
    pub fn send(&mut self, from: &str, to: &[&str], message: &str) -> io::Result<Sent> {
        let mail = self.command(&format!("MAIL FROM:<{from}>"))?;
        if mail.code != 250 {
            self.command("RSET")?;
            return Ok(Sent {
                step: "MAIL",
                reply: mail,
            });
        }
        for rcpt in to {
            let reply = self.command(&format!("RCPT TO:<{rcpt}>"))?;
            if reply.code != 250 {
                self.command("RSET")?;
                return Ok(Sent {
                    step: "RCPT",
                    reply,
                });
            }
        }
        let data = self.command("DATA")?;
        if data.code != 354 {
            self.command("RSET")?;
            return Ok(Sent {
                step: "DATA",
                reply: data,
            });
        }
        let body = message.strip_suffix("\r\n").unwrap_or(message);
        let mut stuffed = Vec::with_capacity(body.len() + 64);
        for line in body.split("\r\n") {
            if line.starts_with('.') {
                stuffed.push(b'.');
            }
            stuffed.extend_from_slice(line.as_bytes());
            stuffed.extend_from_slice(b"\r\n");
        }
        stuffed.extend_from_slice(b".\r\n");
        let writer = self.reader.get_mut();
        writer.write_all(&stuffed)?;
        writer.flush()?;
        let reply = self.read_reply()?;
        Ok(Sent { step: ".", reply })
    }

    /// `QUIT`; the reply is not checked (the server may already have closed).
    pub fn quit(mut self) {
        let _ = self.command("QUIT");
    }

    /// Reads one reply: lines `NNN-text` until `NNN text`.
    fn read_reply(&mut self) -> io::Result<SmtpReply> {
        let mut texts = Vec::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("server closed the connection after {texts:?}"),
                ));
            }
            let line = line.trim_end_matches(['\r', '\n']);
            let code = line
                .get(..3)
                .and_then(|code| code.parse::<u16>().ok())
                .ok_or_else(|| io::Error::other(format!("malformed reply line: {line:?}")))?;
            texts.push(line.get(4..).unwrap_or("").to_string());
            if line.as_bytes().get(3) != Some(&b'-') {
                return Ok(SmtpReply {
                    code,
                    text: texts.join("\n"),
                });
            }
        }
    }
}

/// Standard base64 with padding (RFC 4648), for `AUTH PLAIN`.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let bytes = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(bytes[0]) << 16 | u32::from(bytes[1]) << 8 | u32::from(bytes[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                let index = usize::try_from((n >> shift) & 63).unwrap_or(0);
                out.push(char::from(ALPHABET.get(index).copied().unwrap_or(b'=')));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Replaces the first `From:` and `To:` header lines of a CRLF message with the given
/// addresses (the fixtures' headers are single-line); other lines are kept byte for byte.
pub fn readdress(message: &str, from: &str, to: &str) -> String {
    let (head, body) = message.split_once("\r\n\r\n").unwrap_or((message, ""));
    let mut seen_from = false;
    let mut seen_to = false;
    let head: Vec<String> = head
        .split("\r\n")
        .map(|line| {
            let lower = line.to_ascii_lowercase();
            if !seen_from && lower.starts_with("from:") {
                seen_from = true;
                format!("From: <{from}>")
            } else if !seen_to && lower.starts_with("to:") {
                seen_to = true;
                format!("To: <{to}>")
            } else {
                line.to_string()
            }
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n"))
}

#[cfg(test)]
mod tests {
    use super::{base64, readdress};

    #[test]
    fn base64_matches_rfc4648() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64(b"\0u\0p"), "AHUAcA==");
    }

    #[test]
    fn readdress_replaces_first_from_and_to() {
        let message = "From: a@x\r\nTo: b@x\r\nSubject: s\r\n\r\nFrom: body\r\n";
        assert_eq!(
            readdress(message, "c@y", "d@y"),
            "From: <c@y>\r\nTo: <d@y>\r\nSubject: s\r\n\r\nFrom: body\r\n"
        );
    }
}
