//! `dclogin:` account URLs, the way Delta Chat reads them (core's `src/qr/dclogin_scheme.rs`,
//! version 1): `dclogin:ADDR?p=PASSWORD&v=1&ih=..&ip=..&is=..&sh=..&sp=..&ss=..&ic=..`.
//!
//! Delta Chat takes the address up to the first `?` or `/` and percent-decodes it; it
//! parses the query as `application/x-www-form-urlencoded`, where `+` means a space. So
//! every byte outside RFC 3986's unreserved set is percent-encoded here, in the address
//! (except its `@`) as in every value: a password with `+`, `&`, `=`, `%` or a space reaches
//! the client unchanged.

use std::fmt::Write as _;

/// Socket security of one server (`is`/`ss`): the values core accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// TLS from the first byte (IMAPS 993, submissions 465): `ssl`.
    Tls,
    /// A plain connection upgraded with STARTTLS: `starttls`.
    Starttls,
    /// No TLS at all: `plain`.
    Plain,
    /// Let the client choose: `default`.
    Automatic,
}

impl Security {
    /// The parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Tls => "ssl",
            Security::Starttls => "starttls",
            Security::Plain => "plain",
            Security::Automatic => "default",
        }
    }
}

/// One server's address and socket security.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Server {
    /// Host name or IP address (`ih`/`sh`).
    pub host: String,
    /// Port (`ip`/`sp`).
    pub port: u16,
    /// Socket security (`is`/`ss`).
    pub security: Security,
}

/// Everything a `dclogin:` URL carries for one account on one relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcLogin {
    /// The e-mail address, which is also the IMAP and SMTP login.
    pub addr: String,
    /// The password for IMAP and SMTP (`p`).
    pub password: String,
    /// The IMAP server.
    pub imap: Server,
    /// The SMTP submission server.
    pub smtp: Server,
    /// Accept self-signed, expired or misnamed certificates (`ic=2`) instead of checking
    /// them strictly (`ic=1`).
    pub accept_invalid_certs: bool,
}

impl DcLogin {
    /// The URL, e.g.
    /// `dclogin:user@example.org?p=secret&v=1&ih=127.0.0.1&ip=143&is=plain&sh=127.0.0.1&sp=587&ss=plain&ic=1`.
    pub fn url(&self) -> String {
        let (local, domain) = match self.addr.rsplit_once('@') {
            Some((local, domain)) => (local, Some(domain)),
            None => (self.addr.as_str(), None),
        };
        let mut url = String::from("dclogin:");
        url.push_str(&encode(local));
        if let Some(domain) = domain {
            url.push('@');
            url.push_str(&encode(domain));
        }
        let checks = if self.accept_invalid_certs { "2" } else { "1" };
        let imap_port = self.imap.port.to_string();
        let smtp_port = self.smtp.port.to_string();
        let params: [(&str, &str); 9] = [
            ("p", &self.password),
            ("v", "1"),
            ("ih", &self.imap.host),
            ("ip", &imap_port),
            ("is", self.imap.security.as_str()),
            ("sh", &self.smtp.host),
            ("sp", &smtp_port),
            ("ss", self.smtp.security.as_str()),
            ("ic", checks),
        ];
        for (index, (key, value)) in params.iter().enumerate() {
            url.push(if index == 0 { '?' } else { '&' });
            url.push_str(key);
            url.push('=');
            url.push_str(&encode(value));
        }
        url
    }
}

/// The URL for `addr` with the same host for IMAP and SMTP, as the tests' relays have.
#[allow(clippy::too_many_arguments)]
pub fn dclogin_url(
    addr: &str,
    password: &str,
    imap_host: &str,
    imap_port: u16,
    imap_security: Security,
    smtp_host: &str,
    smtp_port: u16,
    smtp_security: Security,
    accept_invalid_certs: bool,
) -> String {
    DcLogin {
        addr: addr.to_string(),
        password: password.to_string(),
        imap: Server {
            host: imap_host.to_string(),
            port: imap_port,
            security: imap_security,
        },
        smtp: Server {
            host: smtp_host.to_string(),
            port: smtp_port,
            security: smtp_security,
        },
        accept_invalid_certs,
    }
    .url()
}

/// Percent-encodes every byte of `text`'s UTF-8 outside RFC 3986's unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`), with upper-case hex digits.
pub fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    /// Decodes as Delta Chat does: the address up to `?` or `/`, percent-decoded, and the
    /// query as form-urlencoded pairs (`+` is a space).
    fn decode(url: &str) -> (String, Vec<(String, String)>) {
        let rest = url.strip_prefix("dclogin:").expect("dclogin scheme");
        let addr = rest.split(['?', '/']).next().expect("an address");
        let query = rest.split_once('?').map(|(_, q)| q).unwrap_or("");
        let pairs = query
            .split('&')
            .map(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                (form_decode(key), form_decode(value))
            })
            .collect();
        (percent_decode(addr), pairs)
    }

    fn form_decode(text: &str) -> String {
        percent_decode(&text.replace('+', " "))
    }

    fn percent_decode(text: &str) -> String {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex digits");
                out.push(u8::from_str_radix(hex, 16).expect("hex digits"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("UTF-8")
    }

    fn login(addr: &str, password: &str) -> DcLogin {
        DcLogin {
            addr: addr.to_string(),
            password: password.to_string(),
            imap: Server {
                host: "127.0.0.1".to_string(),
                port: 993,
                security: Security::Tls,
            },
            smtp: Server {
                host: "127.0.0.1".to_string(),
                port: 465,
                security: Security::Tls,
            },
            accept_invalid_certs: true,
        }
    }

    #[test]
    fn every_parameter_with_core_names() {
        let url = dclogin_url(
            "alice0001@example.org",
            "secret-password",
            "imap.example.org",
            143,
            Security::Starttls,
            "smtp.example.org",
            587,
            Security::Plain,
            false,
        );
        assert_eq!(
            url,
            "dclogin:alice0001@example.org?p=secret-password&v=1&ih=imap.example.org&ip=143\
             &is=starttls&sh=smtp.example.org&sp=587&ss=plain&ic=1"
        );
    }

    #[test]
    fn security_values() {
        let mut l = login("a@b.c", "p");
        for (security, value) in [
            (Security::Tls, "is=ssl"),
            (Security::Starttls, "is=starttls"),
            (Security::Plain, "is=plain"),
            (Security::Automatic, "is=default"),
        ] {
            l.imap.security = security;
            assert!(l.url().contains(&format!("&{value}&")), "{}", l.url());
        }
        assert!(l.url().ends_with("&ss=ssl&ic=2"), "{}", l.url());
    }

    #[test]
    fn password_special_characters_survive_form_decoding() {
        let password = "a+b c&d=e%f/g?h#i\"j'k\\l@m;n:o,p[q]r{s}t ü€";
        let url = login("alice0001@_chat.localhost", password).url();
        assert!(
            !url.contains(' ') && !url.contains('+') && !url.contains('#'),
            "{url}"
        );
        assert!(url.contains("p=a%2Bb%20c%26d%3De%25f%2Fg%3Fh%23i"), "{url}");
        let (addr, pairs) = decode(&url);
        assert_eq!(addr, "alice0001@_chat.localhost");
        assert_eq!(pairs[0], ("p".to_string(), password.to_string()));
        let keys: Vec<&str> = pairs.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["p", "v", "ih", "ip", "is", "sh", "sp", "ss", "ic"]);
    }

    #[test]
    fn address_is_encoded_but_keeps_its_at() {
        // An IP-literal domain, as core's own test decodes it.
        let url = login("user@[127.0.0.1]", "p").url();
        assert!(
            url.starts_with("dclogin:user@%5B127.0.0.1%5D?p=p&v=1&"),
            "{url}"
        );
        // A `/` or `?` in the local part would end the address early.
        let url = login("we/ird?x@host", "p").url();
        assert!(url.starts_with("dclogin:we%2Fird%3Fx@host?"), "{url}");
        assert_eq!(decode(&url).0, "we/ird?x@host");
    }

    #[test]
    fn unreserved_characters_stay_literal() {
        assert_eq!(encode("AZaz09-._~"), "AZaz09-._~");
        assert_eq!(encode(""), "");
        assert_eq!(encode("ü"), "%C3%BC");
    }
}
