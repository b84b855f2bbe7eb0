//! Where a recipient's mail goes: the domain part of its address.

use std::fmt;
use std::net::IpAddr;

use thiserror::Error;

/// The destination of a recipient: a domain name (looked up in DNS) or an address literal
/// (`user@[192.0.2.1]`, `user@[IPv6:2001:db8::1]`) used as is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Destination {
    /// A domain name, ASCII lower-cased, without a trailing dot.
    Name(String),
    /// An address literal.
    Literal(IpAddr),
}

/// A recipient address whose destination cannot be determined.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("Invalid email address: {0}")]
pub struct InvalidAddress(pub String);

impl InvalidAddress {
    /// The reply to RCPT TO (upstream's text).
    pub fn reply(&self) -> String {
        format!("553 {self}")
    }
}

/// Longest domain name (RFC 1035 §2.3.4, without the trailing dot).
const MAX_NAME: usize = 253;
/// Longest label of a name.
const MAX_LABEL: usize = 63;

impl Destination {
    /// The destination of `address`: exactly one `@`, then a bracketed IP literal or a
    /// domain name of letters, digits, `-` and `_` labels (names starting with `_` are
    /// test relays). Anything else is refused, so no hostile string reaches DNS or a log
    /// line unchecked.
    pub fn of_recipient(address: &str) -> Result<Destination, InvalidAddress> {
        let invalid = || InvalidAddress(address.to_owned());
        let mut parts = address.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid());
        };
        if local.is_empty() || domain.is_empty() {
            return Err(invalid());
        }
        if let Some(literal) = domain.strip_prefix('[') {
            let literal = literal.strip_suffix(']').ok_or_else(invalid)?;
            let lower = literal.to_ascii_lowercase();
            let ip = match lower.strip_prefix("ipv6:") {
                Some(v6) => v6.parse::<std::net::Ipv6Addr>().map(IpAddr::V6),
                None => lower.parse::<std::net::Ipv4Addr>().map(IpAddr::V4),
            };
            return ip.map(Destination::Literal).map_err(|_| invalid());
        }
        let name = domain
            .strip_suffix('.')
            .unwrap_or(domain)
            .to_ascii_lowercase();
        let valid_label = |label: &str| {
            !label.is_empty()
                && label.len() <= MAX_LABEL
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.len() > MAX_NAME || !name.split('.').all(valid_label) {
            return Err(invalid());
        }
        Ok(Destination::Name(name))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Name(name) => f.write_str(name),
            Destination::Literal(IpAddr::V4(ip)) => write!(f, "[{ip}]"),
            Destination::Literal(IpAddr::V6(ip)) => write!(f, "[IPv6:{ip}]"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_lower_cased_without_trailing_dot() {
        assert_eq!(
            Destination::of_recipient("Bob@Example.ORG."),
            Ok(Destination::Name("example.org".into()))
        );
        assert_eq!(
            Destination::of_recipient("x@_test.localhost"),
            Ok(Destination::Name("_test.localhost".into()))
        );
    }

    #[test]
    fn literals_parse_to_addresses() {
        assert_eq!(
            Destination::of_recipient("a@[192.0.2.1]"),
            Ok(Destination::Literal("192.0.2.1".parse().unwrap()))
        );
        assert_eq!(
            Destination::of_recipient("a@[IPv6:2001:DB8::1]"),
            Ok(Destination::Literal("2001:db8::1".parse().unwrap()))
        );
        assert_eq!(
            Destination::of_recipient("a@[IPv6:2001:db8::1]")
                .unwrap()
                .to_string(),
            "[IPv6:2001:db8::1]"
        );
    }

    #[test]
    fn hostile_or_malformed_addresses_are_refused() {
        for address in [
            "no-at",
            "two@@example.org",
            "a@b@example.org",
            "@example.org",
            "a@",
            "a@[192.0.2.1",
            "a@[not-an-ip]",
            "a@[2001:db8::1]",
            "a@../etc",
            "a@exa/mple.org",
            "a@exa\0mple.org",
            "a@exa mple.org",
            "a@example..org",
            "a@b\u{e4}r.example",
        ] {
            assert_eq!(
                Destination::of_recipient(address),
                Err(InvalidAddress(address.to_owned())),
                "{address:?}"
            );
        }
        let long = format!("a@{}.org", "x".repeat(64));
        assert!(Destination::of_recipient(&long).is_err());
        assert_eq!(
            InvalidAddress("x".into()).reply(),
            "553 Invalid email address: x"
        );
    }
}
