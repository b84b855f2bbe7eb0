//! A minimal IMAP client over a plain TCP connection: greeting, LOGIN, SELECT, LOGOUT.
//!
//! It understands only what Dovecot answers to these commands (lines, no literals), which is
//! all the tests need to drive authentication through Dovecot.

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::tls::Stream;

/// How long any single read or write may block before the test fails instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// The status of a tagged reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The command succeeded.
    Ok,
    /// The command failed (e.g. wrong credentials).
    No,
    /// The server did not understand the command.
    Bad,
}

/// A tagged reply with the untagged lines that came before it.
#[derive(Debug, Clone)]
pub struct Reply {
    /// OK, NO or BAD.
    pub status: Status,
    /// The rest of the tagged line, e.g. `[AUTHENTICATIONFAILED] Authentication failed.`
    pub text: String,
    /// Untagged (`* ...`) lines received while waiting for the tagged reply.
    pub untagged: Vec<String>,
}

impl Reply {
    /// Whether the command succeeded.
    pub fn is_ok(&self) -> bool {
        self.status == Status::Ok
    }

    /// A failed LOGIN because the credentials were refused, as opposed to a temporary
    /// failure (`[UNAVAILABLE]`, e.g. when a dict daemon closed the connection).
    pub fn is_auth_failed(&self) -> bool {
        self.status == Status::No && self.text.starts_with("[AUTHENTICATIONFAILED]")
    }
}

/// Quotes a string as an IMAP quoted string (RFC 3501): `"` and `\` are escaped.
pub fn quote(s: &str) -> String {
    let mut quoted = String::with_capacity(s.len() + 2);
    quoted.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            quoted.push('\\');
        }
        quoted.push(c);
    }
    quoted.push('"');
    quoted
}

/// One IMAP connection.
pub struct Imap {
    /// Buffered reading side, for line-based replies.
    /// The connection (plain TCP or TLS); writes go through `get_mut`.
    reader: BufReader<Box<dyn Stream>>,
    /// Number used for the next command tag (`a1`, `a2`, ...).
    next_tag: u32,
    /// The server greeting, e.g. `* OK [CAPABILITY ...] Dovecot ready.`
    pub greeting: String,
}

impl Imap {
    /// Connects and reads the greeting, which must be `* OK`.
    pub fn connect(addr: SocketAddr) -> io::Result<Imap> {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Imap::greet(Box::new(stream))
    }

    /// Connects to an IMAPS port (TLS from the first byte, any certificate accepted) and
    /// reads the greeting.
    pub fn connect_tls(addr: SocketAddr, server_name: &str) -> io::Result<Imap> {
        Imap::greet(Box::new(crate::tls::connect(addr, server_name)?))
    }

    /// Connects to an IMAP port, reads the greeting, sends STARTTLS and completes the TLS
    /// handshake (any certificate accepted).
    pub fn connect_starttls(addr: SocketAddr, server_name: &str) -> io::Result<Imap> {
        let tcp = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        tcp.set_read_timeout(Some(IO_TIMEOUT))?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))?;
        // The plain dialogue on a clone of the socket; after its tagged OK to STARTTLS the
        // server sends nothing until the handshake.
        let mut plain = Imap::greet(Box::new(tcp.try_clone()?))?;
        let reply = plain.command("STARTTLS")?;
        if !reply.is_ok() {
            return Err(io::Error::other(format!("STARTTLS refused: {reply:?}")));
        }
        let tls = crate::tls::wrap(tcp, server_name)?;
        Ok(Imap {
            reader: BufReader::new(Box::new(tls)),
            next_tag: plain.next_tag,
            greeting: plain.greeting,
        })
    }

    fn greet(stream: Box<dyn Stream>) -> io::Result<Imap> {
        let mut imap = Imap {
            reader: BufReader::new(stream),
            next_tag: 1,
            greeting: String::new(),
        };
        let greeting = imap.read_line()?;
        if !greeting.starts_with("* OK") {
            return Err(io::Error::other(format!("unexpected greeting: {greeting}")));
        }
        imap.greeting = greeting;
        Ok(imap)
    }

    /// `LOGIN user password`, both sent as quoted strings.
    pub fn login(&mut self, user: &str, password: &str) -> io::Result<Reply> {
        self.command(&format!("LOGIN {} {}", quote(user), quote(password)))
    }

    /// `SELECT mailbox`.
    pub fn select(&mut self, mailbox: &str) -> io::Result<Reply> {
        self.command(&format!("SELECT {}", quote(mailbox)))
    }

    /// `LOGOUT`; the server answers `* BYE` and then the tagged OK.
    pub fn logout(&mut self) -> io::Result<Reply> {
        self.command("LOGOUT")
    }

    /// Sends one command line and reads until its tagged reply.
    pub fn command(&mut self, command: &str) -> io::Result<Reply> {
        let tag = format!("a{}", self.next_tag);
        self.next_tag += 1;
        self.reader
            .get_mut()
            .write_all(format!("{tag} {command}\r\n").as_bytes())?;
        self.reader.get_mut().flush()?;
        let mut untagged = Vec::new();
        loop {
            let line = self.read_line()?;
            let Some(rest) = line.strip_prefix(&tag).and_then(|r| r.strip_prefix(' ')) else {
                untagged.push(line);
                continue;
            };
            let (word, text) = rest.split_once(' ').unwrap_or((rest, ""));
            let status = match word {
                "OK" => Status::Ok,
                "NO" => Status::No,
                "BAD" => Status::Bad,
                _ => {
                    return Err(io::Error::other(format!("unexpected tagged reply: {line}")));
                }
            };
            return Ok(Reply {
                status,
                text: text.to_string(),
                untagged,
            });
        }
    }

    /// Reads one CRLF-terminated line, without the line ending; EOF is an error.
    fn read_line(&mut self) -> io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "server closed the connection",
            ));
        }
        let trimmed = line.trim_end_matches(['\r', '\n']).len();
        line.truncate(trimmed);
        Ok(line)
    }
}

#[cfg(test)]
mod tests {
    use super::quote;

    #[test]
    fn quote_escapes_quotes_and_backslashes() {
        assert_eq!(quote("abc"), r#""abc""#);
        assert_eq!(quote(r#"a"b\c'd"#), r#""a\"b\\c'd""#);
        assert_eq!(quote(""), r#""""#);
    }
}
