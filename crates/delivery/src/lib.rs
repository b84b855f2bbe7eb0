//! Delivery of one message to one remote destination, as filtermail's transport mode does
//! it for Postfix: the destination's MX hosts in order, per host HTTPS `POST /mxdeliv`
//! first, then SMTP on port 25 with mandatory STARTTLS.
//!
//! The caller (filtermail's transport mode) groups recipients per [`Destination`] and asks
//! [`RemoteDelivery::deliver`] once per group; the answer is one SMTP reply line for all
//! recipients of the group. Nothing is queued or retried here: a temporary failure is a
//! 4xx reply and Postfix retries.
//!
//! Certificates are verified against the system's root store (rustls-native-certs), not
//! a compiled-in copy of Mozilla's: Debian's `ca-certificates` package keeps it current.

#![cfg_attr(test, allow(clippy::indexing_slicing))]

mod cache;
mod destination;
mod dns;
mod error;
mod https;
mod smtp;
mod tls;
mod wire;

pub use wire::{stuffed_pieces, stuffed_pieces_at};

use std::net::SocketAddr;
use std::time::Duration;

pub use destination::{Destination, InvalidAddress};
pub use dns::resolver_at;
pub use error::{DeliveryError, Reply};
pub use hickory_resolver::TokioResolver;

use crate::cache::HttpsUnsupported;
use crate::dns::MxHosts;
use crate::https::Host;
use crate::smtp::{Attempt, Security};
use crate::tls::TlsConfigs;

/// Everything delivery needs to know about the local relay and the timeouts.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Our name in EHLO: the relay's `mail_domain` (an IP address is sent as an address
    /// literal, `[192.0.2.1]`, as RFC 5321 §4.1.4 wants).
    pub ehlo_name: String,
    /// Port of the SMTP channel (25; tests use their own).
    pub smtp_port: u16,
    /// Port of the HTTPS channel (443; tests use their own).
    pub https_port: u16,
    /// Bound of each connect, each read and write of the SMTP dialogue, the TLS
    /// handshake and each DNS lookup.
    pub io_timeout: Duration,
    /// Bound of the HTTPS request until the response head arrives.
    pub https_timeout: Duration,
    /// How long a host that took a message over SMTP is not asked over HTTPS.
    pub https_unsupported_ttl: Duration,
    /// Destinations reached over SMTP without TLS, even if offered (lower case).
    pub plaintext_domains: Vec<String>,
}

impl DeliverySettings {
    /// Upstream's values: ports 25 and 443, 60 s timeouts, 30 min cache, `nauta.cu` in
    /// plain text.
    pub fn new(ehlo_name: &str) -> DeliverySettings {
        DeliverySettings {
            ehlo_name: ehlo_name.to_owned(),
            smtp_port: 25,
            https_port: 443,
            io_timeout: Duration::from_secs(60),
            https_timeout: Duration::from_secs(60),
            https_unsupported_ttl: Duration::from_secs(30 * 60),
            plaintext_domains: vec!["nauta.cu".to_owned()],
        }
    }
}

/// Delivers messages to remote relays. Cheap to share: one per process, used by every
/// destination's worker (the HTTPS connection pools and the cache are inside).
pub struct RemoteDelivery {
    /// Ports, timeouts, EHLO name, plaintext exceptions.
    settings: DeliverySettings,
    /// MX, A and AAAA lookups (also used by the HTTPS client).
    resolver: TokioResolver,
    /// HTTPS client verifying certificates against the system's roots.
    https_verified: reqwest::Client,
    /// HTTPS client accepting any certificate (literals, `_` domains).
    https_relaxed: reqwest::Client,
    /// STARTTLS configurations.
    tls: TlsConfigs,
    /// Hosts recently reached over SMTP: no HTTPS attempt for them.
    https_unsupported: HttpsUnsupported,
}

impl std::fmt::Debug for RemoteDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDelivery")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RemoteDelivery {
    /// The production set-up: the resolver of `/etc/resolv.conf`, the system's roots.
    pub fn system(settings: DeliverySettings) -> Result<RemoteDelivery, DeliveryError> {
        let resolver = dns::system_resolver()?;
        RemoteDelivery::with_resolver(settings, resolver)
    }

    /// With another resolver, e.g. [`resolver_at`] a local name server.
    pub fn with_resolver(
        settings: DeliverySettings,
        resolver: TokioResolver,
    ) -> Result<RemoteDelivery, DeliveryError> {
        let tls = TlsConfigs::system()?;
        let client = |config: rustls::ClientConfig| {
            reqwest::Client::builder()
                .use_preconfigured_tls(config)
                .dns_resolver(dns::https_resolver(resolver.clone(), settings.io_timeout))
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .https_only(true)
                .connect_timeout(settings.io_timeout)
                .tcp_nodelay(true)
                .build()
                .map_err(|err| DeliveryError::HttpClient(err.to_string()))
        };
        Ok(RemoteDelivery {
            https_verified: client(tls.https_verified.clone())?,
            https_relaxed: client(tls.https_relaxed.clone())?,
            https_unsupported: HttpsUnsupported::new(settings.https_unsupported_ttl),
            tls,
            resolver,
            settings,
        })
    }

    /// Delivers `data` from `sender` (empty: the null sender) to `recipients`, all of
    /// `destination`. `data` is the message with CRLF line ends and without dot-stuffing.
    /// Returns one reply line without CRLF, e.g. `250 OK (HTTPS)`, `250 OK (SMTP)`, or a
    /// 4xx/5xx reply that applies to every recipient of the group.
    pub async fn deliver(
        &self,
        destination: &Destination,
        sender: &str,
        recipients: &[String],
        data: &[u8],
    ) -> String {
        if let Some(bad) = std::iter::once(sender)
            .chain(recipients.iter().map(String::as_str))
            .find(|address| !valid_envelope_address(address))
        {
            return wire::one_line(&InvalidAddress(bad.to_owned()).reply());
        }
        if recipients.is_empty() {
            return "554 No valid recipients".to_owned();
        }
        let route = match self.route(destination).await {
            Ok(route) => route,
            Err(reply) => return reply,
        };
        let envelope = Envelope {
            sender,
            recipients,
            stuffed: wire::dot_stuffed(data),
        };
        let mut last_failure = None;
        for host in &route.hosts {
            let host = host.borrowed();
            let name = host.to_string();
            if !self.https_unsupported.contains(&name) {
                match self.https(host, route.relaxed, &envelope).await {
                    Ok(()) => return "250 OK (HTTPS)".to_owned(),
                    Err(err) => tracing::debug!("HTTPS delivery to {name} failed: {err}"),
                }
            }
            match self.smtp(host, &route, &envelope).await {
                Ok(()) => {
                    self.https_unsupported.insert(&name);
                    return "250 OK (SMTP)".to_owned();
                }
                Err(err) if err.is_connection_class() => {
                    self.https_unsupported.remove(&name);
                    tracing::warn!("Connection error relaying to mail server {name}: {err}");
                    last_failure = Some((name, err.reply()));
                }
                Err(err @ DeliveryError::Rejected { .. }) => {
                    tracing::warn!("Message rejected by mail server {name}: {err}");
                    return err.reply();
                }
                Err(err) => {
                    tracing::warn!(
                        "Unexpected error while delivering to mail server {name}: {err}"
                    );
                    return wire::one_line(&format!(
                        "{} (while attempting delivery to {name})",
                        err.reply()
                    ));
                }
            }
        }
        match last_failure {
            Some((name, reply)) => wire::one_line(&format!(
                "421 Failed to connect to any mail server; last attempt to {name}: {reply}"
            )),
            None => "451 Local error".to_owned(),
        }
    }

    /// The hosts of `destination` and its TLS policy, or the reply when there is no host.
    async fn route(&self, destination: &Destination) -> Result<Route, String> {
        match destination {
            Destination::Literal(ip) => Ok(Route {
                hosts: vec![OwnedHost::Ip(*ip)],
                relaxed: true,
                plaintext: false,
            }),
            Destination::Name(name) => {
                match dns::mx_hosts(&self.resolver, name, self.settings.io_timeout).await {
                    MxHosts::Reply(reply) => Err(reply),
                    MxHosts::Hosts(hosts) => Ok(Route {
                        hosts: hosts.into_iter().map(OwnedHost::Name).collect(),
                        relaxed: name.starts_with('_'),
                        plaintext: self
                            .settings
                            .plaintext_domains
                            .iter()
                            .any(|domain| domain.eq_ignore_ascii_case(name)),
                    }),
                }
            }
        }
    }

    async fn https(
        &self,
        host: Host<'_>,
        relaxed: bool,
        envelope: &Envelope<'_>,
    ) -> Result<(), DeliveryError> {
        let client = if relaxed {
            &self.https_relaxed
        } else {
            &self.https_verified
        };
        let url = https::mxdeliv_url(&host, self.settings.https_port);
        https::post(
            client,
            &url,
            envelope.sender,
            envelope.recipients,
            envelope.stuffed.clone(),
            self.settings.https_timeout,
        )
        .await
    }

    async fn smtp(
        &self,
        host: Host<'_>,
        route: &Route,
        envelope: &Envelope<'_>,
    ) -> Result<(), DeliveryError> {
        let ips = match host {
            Host::Ip(ip) => vec![ip],
            Host::Name(name) => {
                dns::addresses(&self.resolver, name, self.settings.io_timeout).await?
            }
        };
        let addrs: Vec<SocketAddr> = ips
            .into_iter()
            .map(|ip| SocketAddr::new(ip, self.settings.smtp_port))
            .collect();
        let security = if route.plaintext {
            Security::Plaintext
        } else {
            let config = if route.relaxed {
                self.tls.smtp_relaxed.clone()
            } else {
                self.tls.smtp_verified.clone()
            };
            Security::StartTls(config, server_name(host)?)
        };
        let name = host.to_string();
        smtp::deliver(
            Attempt {
                host: &name,
                host_is_name: matches!(host, Host::Name(_)),
                addrs: &addrs,
                ehlo_name: &ehlo_argument(&self.settings.ehlo_name),
                security,
                timeout: self.settings.io_timeout,
            },
            envelope.sender,
            envelope.recipients,
            &envelope.stuffed,
        )
        .await
    }
}

/// Where a destination's mail goes and how.
struct Route {
    /// MX hosts in order (or the literal's address).
    hosts: Vec<OwnedHost>,
    /// Any certificate accepted (literals, `_` domains); TLS still required.
    relaxed: bool,
    /// SMTP without TLS (the plaintext exception list).
    plaintext: bool,
}

/// A [`Host`] that owns its name.
enum OwnedHost {
    Name(String),
    Ip(std::net::IpAddr),
}

impl OwnedHost {
    fn borrowed(&self) -> Host<'_> {
        match self {
            OwnedHost::Name(name) => Host::Name(name),
            OwnedHost::Ip(ip) => Host::Ip(*ip),
        }
    }
}

/// One group's envelope and the data in wire form.
struct Envelope<'a> {
    sender: &'a str,
    recipients: &'a [String],
    /// The message dot-stuffed, ending in CRLF, without the final dot line.
    stuffed: Vec<u8>,
}

/// The TLS server name: the MX name, or the literal's address.
fn server_name(host: Host<'_>) -> Result<rustls::pki_types::ServerName<'static>, DeliveryError> {
    match host {
        Host::Ip(ip) => Ok(rustls::pki_types::ServerName::IpAddress(ip.into())),
        Host::Name(name) => rustls::pki_types::ServerName::try_from(name.to_owned())
            .map_err(|err| DeliveryError::Tls(format!("invalid server name {name:?}: {err}"))),
    }
}

/// The EHLO argument for `name`: a bare IP address (the `mail_domain` of an IP-only
/// relay) becomes an address literal; upstream sends it bare (spec §13 quirk 8).
fn ehlo_argument(name: &str) -> String {
    match name.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => format!("[{ip}]"),
        Ok(std::net::IpAddr::V6(ip)) => format!("[IPv6:{ip}]"),
        Err(_) => name.to_owned(),
    }
}

/// An envelope address we are willing to put on a command line or into a header:
/// printable ASCII without `<`, `>` and white space (empty: the null sender).
fn valid_envelope_address(address: &str) -> bool {
    address
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send<T: Send>(_: &T) {}

    /// Workers run deliveries on tokio's multi-threaded runtime: the delivery and its
    /// future must cross threads. Checked at compile time; never called.
    #[allow(dead_code)]
    fn delivery_crosses_threads(delivery: &RemoteDelivery, destination: &Destination) {
        assert_send_sync::<RemoteDelivery>();
        assert_send(&delivery.deliver(destination, "", &[], b""));
    }

    #[test]
    fn envelope_addresses_refuse_what_could_break_a_command_line() {
        assert!(valid_envelope_address(""));
        assert!(valid_envelope_address("a.b+c@example.org"));
        for bad in ["a b@x", "a\r\n@x", "<a@x>", "a@x\u{e4}", "a\0@x"] {
            assert!(!valid_envelope_address(bad), "{bad:?}");
        }
    }

    #[test]
    fn ehlo_sends_ip_addresses_as_literals() {
        assert_eq!(ehlo_argument("relay.example"), "relay.example");
        assert_eq!(ehlo_argument("192.0.2.1"), "[192.0.2.1]");
        assert_eq!(ehlo_argument("2001:db8::1"), "[IPv6:2001:db8::1]");
    }

    #[test]
    fn settings_default_to_upstreams_values() {
        let settings = DeliverySettings::new("relay.example");
        assert_eq!(settings.ehlo_name, "relay.example");
        assert_eq!((settings.smtp_port, settings.https_port), (25, 443));
        assert_eq!(settings.io_timeout, Duration::from_secs(60));
        assert_eq!(settings.https_timeout, Duration::from_secs(60));
        assert_eq!(settings.https_unsupported_ttl, Duration::from_secs(1800));
        assert_eq!(settings.plaintext_domains, vec!["nauta.cu".to_owned()]);
    }
}
