//! A minimal LMTP client over a unix socket: one message to one recipient.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Delivers `message` (CRLF-separated lines, no final dot) and returns the reply to the
/// data, which for one recipient is the delivery's outcome (`250 2.0.0 <...> Saved`).
pub fn deliver(socket: &Path, from: &str, to: &str, message: &str) -> io::Result<String> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    expect(&mut reader, "220")?;
    writer.write_all(b"LHLO localhost\r\n")?;
    expect(&mut reader, "250")?;
    writer.write_all(format!("MAIL FROM:<{from}>\r\n").as_bytes())?;
    expect(&mut reader, "250")?;
    writer.write_all(format!("RCPT TO:<{to}>\r\n").as_bytes())?;
    expect(&mut reader, "250")?;
    writer.write_all(b"DATA\r\n")?;
    expect(&mut reader, "354")?;
    for line in message.split("\r\n") {
        if line.starts_with('.') {
            writer.write_all(b".")?;
        }
        writer.write_all(line.as_bytes())?;
        writer.write_all(b"\r\n")?;
    }
    writer.write_all(b".\r\n")?;
    let outcome = read_reply(&mut reader)?;
    writer.write_all(b"QUIT\r\n")?;
    Ok(outcome)
}

/// Reads a (possibly multi-line) reply and returns its last line.
fn read_reply(reader: &mut impl BufRead) -> io::Result<String> {
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "LMTP closed"));
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(line.trim_end().to_owned());
        }
    }
}

fn expect(reader: &mut impl BufRead, code: &str) -> io::Result<String> {
    let reply = read_reply(reader)?;
    if reply.starts_with(code) {
        Ok(reply)
    } else {
        Err(io::Error::other(format!("expected {code}, got {reply:?}")))
    }
}
