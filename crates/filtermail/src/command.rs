//! SMTP command lines (RFC 5321 §4.1) as Postfix's `smtpd_proxy_filter` client sends
//! them. Pure: one line without its CRLF in, one command out.

use crate::address::extract_address;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `HELO`: no extensions.
    Helo,
    /// `EHLO` or `LHLO`: the extension list.
    Ehlo,
    /// `MAIL FROM:` with its (lower-cased) address; `Some("")` for the null sender `<>`.
    Mail(Option<String>),
    /// `RCPT TO:` with its address, `None` when none can be extracted.
    Rcpt(Option<String>),
    Data,
    Rset,
    Noop,
    Quit,
    /// Anything else, including STARTTLS, AUTH, VRFY, BDAT, XFORWARD.
    Unknown,
}

/// Parses a command line. Verbs are matched by case-insensitive prefix, as upstream
/// (so `EHLOX` counts as EHLO); 8-bit bytes never match a verb.
pub fn parse_command(line: &[u8]) -> Command {
    let text = String::from_utf8_lossy(line);
    let upper = text.to_ascii_uppercase();
    if upper.starts_with("HELO") {
        Command::Helo
    } else if upper.starts_with("EHLO") || upper.starts_with("LHLO") {
        Command::Ehlo
    } else if let Some(rest) = upper.strip_prefix("MAIL FROM:") {
        if rest.trim_start().starts_with("<>") {
            Command::Mail(Some(String::new()))
        } else {
            Command::Mail(extract_address(&text))
        }
    } else if upper.starts_with("RCPT TO:") {
        Command::Rcpt(extract_address(&text))
    } else if upper.starts_with("DATA") {
        Command::Data
    } else if upper.starts_with("RSET") {
        Command::Rset
    } else if upper.starts_with("NOOP") {
        Command::Noop
    } else if upper.starts_with("QUIT") {
        Command::Quit
    } else {
        Command::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case(b"EHLO localhost", Command::Ehlo)]
    #[case(b"ehlox", Command::Ehlo)]
    #[case(b"LHLO x", Command::Ehlo)]
    #[case(b"HELO x", Command::Helo)]
    #[case(b"MAIL FROM:<A@Example.org> SIZE=10 BODY=8BITMIME", Command::Mail(Some("a@example.org".into())))]
    #[case(b"mail from:<>", Command::Mail(Some(String::new())))]
    #[case(b"MAIL FROM: <> SIZE=1", Command::Mail(Some(String::new())))]
    #[case(b"MAIL FROM:<nobody>", Command::Mail(None))]
    #[case(b"MAIL FROM :<a@b>", Command::Unknown)]
    #[case(b"RCPT TO:<b@example.org> NOTIFY=NEVER", Command::Rcpt(Some("b@example.org".into())))]
    #[case(b"RCPT TO:<>", Command::Rcpt(None))]
    #[case(b"DATA", Command::Data)]
    #[case(b"rset", Command::Rset)]
    #[case(b"NOOP hi", Command::Noop)]
    #[case(b"QUIT", Command::Quit)]
    #[case(b"STARTTLS", Command::Unknown)]
    #[case(b"XFORWARD ADDR=1.2.3.4", Command::Unknown)]
    #[case(b"\xff\xfe", Command::Unknown)]
    #[case(b"", Command::Unknown)]
    fn parses(#[case] line: &[u8], #[case] expected: Command) {
        assert_eq!(parse_command(line), expected);
    }
}
