//! The HTTPS channel (filtermail-latest.md §7.4 step 1): `POST /mxdeliv` with the
//! envelope in `X-MAIL-FROM` / `X-MAIL-TO` headers and the dot-stuffed message as body.

use std::net::IpAddr;
use std::time::Duration;

use crate::error::DeliveryError;
use crate::wire::one_line;

/// How much of a refusal's body goes into the debug line.
const BODY_EXCERPT: usize = 200;

/// The URL of `host`'s endpoint: IPv6 literals in brackets, the port only when not 443.
pub(crate) fn mxdeliv_url(host: &Host<'_>, port: u16) -> String {
    let authority = match host {
        Host::Name(name) => (*name).to_owned(),
        Host::Ip(IpAddr::V4(ip)) => ip.to_string(),
        Host::Ip(IpAddr::V6(ip)) => format!("[{ip}]"),
    };
    if port == 443 {
        format!("https://{authority}/mxdeliv")
    } else {
        format!("https://{authority}:{port}/mxdeliv")
    }
}

/// An MX host: a name from DNS (or the domain itself) or an address literal.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Host<'a> {
    /// A host name, looked up in DNS.
    Name(&'a str),
    /// An address literal's IP.
    Ip(IpAddr),
}

/// As in log lines and replies: the name, or the address (IPv6 without brackets).
impl std::fmt::Display for Host<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// One POST; `Ok` for any 2xx status. `limit` bounds the time until the response head.
pub(crate) async fn post(
    client: &reqwest::Client,
    url: &str,
    sender: &str,
    recipients: &[String],
    body: Vec<u8>,
    limit: Duration,
) -> Result<(), DeliveryError> {
    let mut request = client.post(url).body(body);
    if !sender.is_empty() {
        request = request.header("X-MAIL-FROM", sender);
    }
    for recipient in recipients {
        request = request.header("X-MAIL-TO", recipient.as_str());
    }
    let response = tokio::time::timeout(limit, request.send())
        .await
        .map_err(|_elapsed| DeliveryError::Http("no response within the time limit".to_owned()))?
        .map_err(|err| DeliveryError::Http(error_chain(&err)))?;
    let status = response.status();
    // The body is short ("250 OK" or the refusal); reading it lets the connection go
    // back to the pool. Bounded like the head.
    let body = tokio::time::timeout(limit, excerpt(response))
        .await
        .unwrap_or_default();
    if status.is_success() {
        Ok(())
    } else {
        Err(DeliveryError::HttpStatus {
            status: status.as_u16(),
            body,
        })
    }
}

/// The first [`BODY_EXCERPT`] bytes of the body, on one line.
async fn excerpt(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= BODY_EXCERPT {
            body.truncate(BODY_EXCERPT);
            break;
        }
    }
    one_line(&String::from_utf8_lossy(&body))
}

/// reqwest's error with its sources, which say what actually failed (connect, TLS, ...).
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    one_line(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_bracket_ipv6_and_omit_the_default_port() {
        assert_eq!(
            mxdeliv_url(&Host::Name("mx.example.org"), 443),
            "https://mx.example.org/mxdeliv"
        );
        assert_eq!(
            mxdeliv_url(&Host::Ip("192.0.2.1".parse().unwrap()), 8443),
            "https://192.0.2.1:8443/mxdeliv"
        );
        assert_eq!(
            mxdeliv_url(&Host::Ip("2001:db8::1".parse().unwrap()), 443),
            "https://[2001:db8::1]/mxdeliv"
        );
    }
}
