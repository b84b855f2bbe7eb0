//! A minimal SMTP submission client: implicit TLS, `AUTH PLAIN`, one message per
//! `MAIL FROM`/`RCPT TO`/`DATA`. The relay needs nothing more (spec B.2).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};

use crate::error::{Error, Result};

/// How long one reply may take.
const REPLY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// An SMTP reply: code and text lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of every line, without code and separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// 4xx: try again later (e.g. the relay's rate limit).
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }
}

/// One reply line: code, whether it is the last line (`250 ` vs `250-`), text.
pub fn parse_reply_line(line: &str) -> Option<(u16, bool, &str)> {
    let line = line.trim_end_matches(['\r', '\n']);
    let code = line.get(..3)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = code.parse().ok()?;
    match line.get(3..4) {
        None | Some(" ") => Some((code, true, line.get(4..).unwrap_or(""))),
        Some("-") => Some((code, false, line.get(4..).unwrap_or(""))),
        Some(_) => None,
    }
}

/// The message as DATA: CRLF line ends, lines starting with `.` doubled, then `.`.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut at_line_start = true;
    let mut previous = 0u8;
    for &byte in message {
        if byte == b'\n' && previous != b'\r' {
            out.push(b'\r');
        }
        if at_line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        at_line_start = byte == b'\n';
        previous = byte;
    }
    if !at_line_start {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// An authenticated SMTP session.
pub struct Client<S> {
    stream: BufReader<S>,
}

/// An SMTP error with the reply, so that callers can tell transient from permanent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The command that was refused.
    pub command: &'static str,
    /// The reply.
    pub reply: Reply,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    /// Reads the greeting, says EHLO and logs in with `AUTH PLAIN`.
    pub async fn login(stream: S, user: &str, password: &str) -> Result<Self> {
        let mut client = Client {
            stream: BufReader::new(stream),
        };
        client.expect("greeting", None, &[220]).await?;
        client
            .expect("EHLO", Some("EHLO localhost"), &[250])
            .await?;
        let token = STANDARD.encode(format!("\0{user}\0{password}"));
        // The error names the reply only, never the command with the secret.
        client
            .expect("AUTH", Some(&format!("AUTH PLAIN {token}")), &[235])
            .await?;
        Ok(client)
    }

    /// Sends one message from `from` to `to`. A refusal comes back as `Ok(Err(..))`
    /// with the reply; I/O failures are errors.
    pub async fn send(
        &mut self,
        from: &str,
        to: &str,
        message: &[u8],
    ) -> Result<std::result::Result<(), Refused>> {
        for (command, line, ok) in [
            ("MAIL FROM", format!("MAIL FROM:<{from}>"), &[250][..]),
            ("RCPT TO", format!("RCPT TO:<{to}>"), &[250, 251][..]),
            ("DATA", "DATA".to_owned(), &[354][..]),
        ] {
            let reply = self.command(Some(&line)).await?;
            if !ok.contains(&reply.code) {
                let _ = self.command(Some("RSET")).await;
                return Ok(Err(Refused { command, reply }));
            }
        }
        // Flushed: TLS keeps the tail of a large message buffered otherwise, and the
        // server would wait for it while we wait for its reply.
        let stream = self.stream.get_mut();
        stream
            .write_all(&dot_stuff(message))
            .await
            .map_err(|err| Error::Smtp(format!("writing DATA: {err}")))?;
        stream
            .flush()
            .await
            .map_err(|err| Error::Smtp(format!("writing DATA: {err}")))?;
        let reply = self.command(None).await?;
        if reply.code != 250 {
            return Ok(Err(Refused {
                command: "end of DATA",
                reply,
            }));
        }
        Ok(Ok(()))
    }

    /// Says QUIT; errors do not matter any more.
    pub async fn quit(mut self) {
        let _ = self.command(Some("QUIT")).await;
    }

    async fn expect(&mut self, what: &str, line: Option<&str>, ok: &[u16]) -> Result<Reply> {
        let reply = self.command(line).await?;
        if ok.contains(&reply.code) {
            Ok(reply)
        } else {
            Err(Error::Smtp(format!(
                "{what}: {} {}",
                reply.code,
                reply.lines.join(" ")
            )))
        }
    }

    async fn command(&mut self, line: Option<&str>) -> Result<Reply> {
        if let Some(line) = line {
            let stream = self.stream.get_mut();
            stream
                .write_all(format!("{line}\r\n").as_bytes())
                .await
                .map_err(|err| Error::Smtp(format!("writing: {err}")))?;
            stream
                .flush()
                .await
                .map_err(|err| Error::Smtp(format!("writing: {err}")))?;
        }
        match tokio::time::timeout(REPLY_TIMEOUT, self.read_reply()).await {
            Ok(reply) => reply,
            Err(_) => Err(Error::Smtp("no reply in time".into())),
        }
    }

    async fn read_reply(&mut self) -> Result<Reply> {
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = self
                .stream
                .read_line(&mut line)
                .await
                .map_err(|err| Error::Smtp(format!("reading: {err}")))?;
            if n == 0 {
                return Err(Error::Smtp("connection closed".into()));
            }
            let (code, last, text) = parse_reply_line(&line)
                .ok_or_else(|| Error::Smtp(format!("bad reply line {:?}", line.trim_end())))?;
            lines.push(text.to_owned());
            if last {
                return Ok(Reply { code, lines });
            }
            if lines.len() > 100 {
                return Err(Error::Smtp("reply too long".into()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        assert_eq!(
            parse_reply_line("250-PIPELINING\r\n"),
            Some((250, false, "PIPELINING"))
        );
        assert_eq!(parse_reply_line("250 OK\r\n"), Some((250, true, "OK")));
        assert_eq!(parse_reply_line("354\r\n"), Some((354, true, "")));
        assert_eq!(parse_reply_line("OK\r\n"), None);
        assert_eq!(parse_reply_line("25x OK"), None);
        assert_eq!(parse_reply_line("250_OK"), None);
        let reply = Reply {
            code: 450,
            lines: vec![],
        };
        assert!(reply.is_transient());
    }

    /// A server that answers each command line and, after DATA, waits for the final dot.
    async fn serve(stream: tokio::io::DuplexStream) -> Vec<u8> {
        let (read, mut write) = tokio::io::split(stream);
        let mut read = BufReader::new(read);
        write.write_all(b"220 hi\r\n").await.unwrap();
        let mut data = Vec::new();
        let mut in_data = false;
        loop {
            let mut line = Vec::new();
            if read.read_until(b'\n', &mut line).await.unwrap() == 0 {
                return data;
            }
            if in_data {
                if line == b".\r\n" {
                    in_data = false;
                    write.write_all(b"250 queued\r\n").await.unwrap();
                } else {
                    data.extend_from_slice(&line);
                }
                continue;
            }
            let reply: &[u8] = match line.get(..4) {
                Some(b"EHLO") => b"250 ok\r\n",
                Some(b"AUTH") => b"235 ok\r\n",
                Some(b"DATA") => {
                    in_data = true;
                    b"354 go\r\n"
                }
                Some(b"QUIT") => b"221 bye\r\n",
                _ => b"250 ok\r\n",
            };
            write.write_all(reply).await.unwrap();
        }
    }

    #[tokio::test]
    async fn data_is_flushed_before_waiting_for_the_reply() {
        // A stream that holds written bytes until flushed, as a TLS stream may.
        let (client_end, server_end) = tokio::io::duplex(1 << 20);
        let server = tokio::spawn(serve(server_end));
        let stream = tokio::io::BufWriter::with_capacity(1 << 20, client_end);
        let sent = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            let mut client = Client::login(stream, "bot@example.org", "secret").await?;
            let result = client
                .send(
                    "bot@example.org",
                    "peer@example.org",
                    b"Subject: x\r\n\r\nbody\r\n",
                )
                .await;
            client.quit().await;
            result
        })
        .await
        .expect("the message's end never reached the server");
        assert_eq!(sent.unwrap(), Ok(()));
        assert_eq!(server.await.unwrap(), b"Subject: x\r\n\r\nbody\r\n");
    }

    #[test]
    fn dot_stuffing() {
        assert_eq!(dot_stuff(b"a\r\n.b\r\n"), b"a\r\n..b\r\n.\r\n");
        assert_eq!(dot_stuff(b".\nx"), b"..\r\nx\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }
}
