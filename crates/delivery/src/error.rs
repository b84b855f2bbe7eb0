//! The crate's one error type and its mapping to SMTP replies (filtermail-latest.md §8).

use std::fmt;
use std::net::SocketAddr;

use thiserror::Error;

use crate::wire::one_line;

/// A reply read from a remote SMTP server: its code and the text of each line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code, the same on every line.
    pub code: u16,
    /// The text after the code on each line, without the separator and CRLF.
    pub lines: Vec<String>,
}

impl Reply {
    /// A 2xx reply.
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// Code and text on one line, continuation lines joined with a space.
    pub fn one_line(&self) -> String {
        one_line(&format!("{} {}", self.code, self.lines.join(" ")))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.one_line())
    }
}

/// Everything that can go wrong, from building a [`crate::RemoteDelivery`] to one
/// delivery attempt. [`DeliveryError::reply`] is the SMTP reply of an attempt's error.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// The resolver could not be set up (`/etc/resolv.conf` unreadable, ...).
    #[error("resolver configuration: {0}")]
    ResolverConfig(String),
    /// No usable root certificate in the system's store.
    #[error("no system root certificates: {0}")]
    Roots(String),
    /// The HTTPS client could not be built.
    #[error("HTTPS client: {0}")]
    HttpClient(String),
    /// A host's address lookup failed or found nothing.
    #[error("resolver error: {0}")]
    Resolver(String),
    /// No TCP connection to any of the host's addresses.
    #[error("Failed to connect to any of the following addresses: {0:?}")]
    Connect(Vec<SocketAddr>),
    /// Reading or writing the connection failed or timed out.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The TLS handshake failed (including an unacceptable certificate).
    #[error("TLS error: {0}")]
    Tls(String),
    /// TLS is required but the server's EHLO reply does not offer STARTTLS.
    #[error("STARTTLS is required but not offered")]
    NoStartTls,
    /// The server sent something that is not an SMTP reply.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The HTTPS request failed or timed out before a response head arrived.
    #[error("HTTP error: {0}")]
    Http(String),
    /// The HTTPS server answered with a non-2xx status.
    #[error("status {status}: {body}")]
    HttpStatus {
        /// The status code.
        status: u16,
        /// The start of the response body, on one line.
        body: String,
    },
    /// The SMTP server answered a command with an unexpected reply.
    #[error("{reply} (forwarded from {peer})")]
    Rejected {
        /// The server's reply.
        reply: Reply,
        /// `name[ip:port]` or `ip:port` of the server.
        peer: String,
    },
}

impl DeliveryError {
    /// Whether the next MX host is worth trying: the failure concerns the connection to
    /// this host (connect, I/O, TLS, STARTTLS missing, garbled replies, no address), not
    /// the message.
    pub fn is_connection_class(&self) -> bool {
        matches!(
            self,
            DeliveryError::Resolver(_)
                | DeliveryError::Connect(_)
                | DeliveryError::Io(_)
                | DeliveryError::Tls(_)
                | DeliveryError::NoStartTls
                | DeliveryError::Protocol(_)
        )
    }

    /// The SMTP reply line for this error. A forwarded remote reply keeps the remote's
    /// code when it is 4xx or 5xx; anything else is reported as a temporary failure so
    /// that Postfix never reads a success that did not happen.
    pub fn reply(&self) -> String {
        let line = match self {
            DeliveryError::Rejected { reply, peer } => {
                if (400..600).contains(&reply.code) {
                    format!("{} (forwarded from {peer})", reply.one_line())
                } else {
                    format!(
                        "451 Unexpected reply {} (forwarded from {peer})",
                        reply.one_line()
                    )
                }
            }
            DeliveryError::Connect(addrs) => {
                let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                format!("450 Failed to connect to any of the following addresses: {addrs:?}")
            }
            DeliveryError::Io(_) => "451 I/O error".to_owned(),
            DeliveryError::Tls(_) => "451 TLS error".to_owned(),
            DeliveryError::NoStartTls => {
                "451 4.7.4 TLS is required, but was not offered by the mail server".to_owned()
            }
            DeliveryError::Resolver(_) => "451 Resolver error".to_owned(),
            DeliveryError::Http(_) | DeliveryError::HttpStatus { .. } => {
                "451 HTTP error".to_owned()
            }
            DeliveryError::ResolverConfig(_)
            | DeliveryError::Roots(_)
            | DeliveryError::HttpClient(_) => {
                "451 Filtermail misconfigured; contact admin".to_owned()
            }
            DeliveryError::Protocol(_) => "451 Local error".to_owned(),
        };
        one_line(&line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, lines: &[&str]) -> Reply {
        Reply {
            code,
            lines: lines.iter().map(|l| (*l).to_owned()).collect(),
        }
    }

    #[test]
    fn forwarded_replies_are_one_line_with_the_peer() {
        let err = DeliveryError::Rejected {
            reply: reply(550, &["5.1.1 no such user", "see https://example.org"]),
            peer: "mx.example.org[192.0.2.1:25]".to_owned(),
        };
        assert_eq!(
            err.reply(),
            "550 5.1.1 no such user see https://example.org (forwarded from mx.example.org[192.0.2.1:25])"
        );
        assert!(!err.is_connection_class());
    }

    #[test]
    fn unexpected_positive_codes_become_temporary_failures() {
        let err = DeliveryError::Rejected {
            reply: reply(250, &["mx.example.org", "PIPELINING"]),
            peer: "192.0.2.1:25".to_owned(),
        };
        assert_eq!(
            err.reply(),
            "451 Unexpected reply 250 mx.example.org PIPELINING (forwarded from 192.0.2.1:25)"
        );
    }

    #[test]
    fn local_errors_map_to_upstreams_replies() {
        let connect = DeliveryError::Connect(vec!["127.0.0.1:25".parse().unwrap()]);
        assert_eq!(
            connect.reply(),
            r#"450 Failed to connect to any of the following addresses: ["127.0.0.1:25"]"#
        );
        assert!(connect.is_connection_class());
        assert_eq!(
            DeliveryError::Io(std::io::ErrorKind::TimedOut.into()).reply(),
            "451 I/O error"
        );
        assert_eq!(DeliveryError::Tls("x".into()).reply(), "451 TLS error");
        assert!(DeliveryError::NoStartTls.reply().starts_with("451 "));
    }
}
