//! MX and address lookups (filtermail-latest.md §7.3) through hickory.
//!
//! DNSSEC: nothing is validated here. Like the DKIM check, this code trusts the relay's
//! resolver (`/etc/resolv.conf`; chatmail relays run a validating Unbound on 127.0.0.1),
//! which answers SERVFAIL for bogus data; that surfaces as a DNS failure (4xx).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;

use crate::error::DeliveryError;

/// The outcome of the MX lookup of a domain.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MxHosts {
    /// Hosts to try, in order.
    Hosts(Vec<String>),
    /// No host to try: the reply for every recipient.
    Reply(String),
}

/// A resolver reading `/etc/resolv.conf`; negative answers are not cached (upstream
/// disabled that too: a domain set up after a failed attempt counts at the next retry).
pub(crate) fn system_resolver() -> Result<TokioResolver, DeliveryError> {
    let (config, options) = hickory_resolver::system_conf::read_system_conf()
        .map_err(|err| DeliveryError::ResolverConfig(err.to_string()))?;
    build(config, options)
}

/// A resolver asking only the name server at `server` over UDP, without the hosts file
/// (tests point it at a local stub).
pub fn resolver_at(server: SocketAddr) -> Result<TokioResolver, DeliveryError> {
    let mut name_server = NameServerConfig::udp(server.ip());
    for connection in &mut name_server.connections {
        connection.port = server.port();
    }
    let config = ResolverConfig::from_parts(None, Vec::new(), vec![name_server]);
    let mut options = ResolverOpts::default();
    options.use_hosts_file = ResolveHosts::Never;
    build(config, options)
}

fn build(
    config: ResolverConfig,
    mut options: ResolverOpts,
) -> Result<TokioResolver, DeliveryError> {
    options.negative_max_ttl = Some(Duration::ZERO);
    TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
        .with_options(options)
        .build()
        .map_err(|err| DeliveryError::ResolverConfig(err.to_string()))
}

/// The MX hosts of `domain` (lower case, no trailing dot), sorted by (preference, name);
/// the domain itself when it has no MX record; a reply for null MX, NXDOMAIN and
/// failures. `limit` bounds the whole lookup.
pub(crate) async fn mx_hosts(resolver: &TokioResolver, domain: &str, limit: Duration) -> MxHosts {
    let failed = || MxHosts::Reply(format!("421 DNS resolution failed for {domain}"));
    let lookup = match tokio::time::timeout(limit, resolver.mx_lookup(format!("{domain}."))).await {
        Err(_elapsed) => {
            tracing::debug!("MX lookup for {domain} timed out");
            return failed();
        }
        Ok(Ok(lookup)) => lookup,
        Ok(Err(err)) if err.is_nx_domain() => {
            return MxHosts::Reply(format!("512 Domain {domain} does not exist"));
        }
        Ok(Err(err)) if err.is_no_records_found() => {
            return MxHosts::Hosts(vec![domain.to_owned()]);
        }
        Ok(Err(err)) => {
            tracing::debug!("MX lookup for {domain} failed: {err}");
            return failed();
        }
    };
    let mut hosts = Vec::new();
    for record in lookup.answers() {
        let RData::MX(mx) = &record.data else {
            continue;
        };
        if mx.exchange.is_root() {
            return MxHosts::Reply(
                "556 5.1.10 Permanent failure: Recipient address has null MX".to_owned(),
            );
        }
        let name = mx.exchange.to_ascii().to_ascii_lowercase();
        let name = name.strip_suffix('.').unwrap_or(&name).to_owned();
        hosts.push((mx.preference, name));
    }
    if hosts.is_empty() {
        return MxHosts::Hosts(vec![domain.to_owned()]);
    }
    hosts.sort();
    hosts.dedup();
    MxHosts::Hosts(hosts.into_iter().map(|(_, name)| name).collect())
}

/// The IPv4 and IPv6 addresses of `host` (a name without trailing dot), both families
/// asked at once; an error only when neither gives an address. `limit` bounds the lookup.
pub(crate) async fn addresses(
    resolver: &TokioResolver,
    host: &str,
    limit: Duration,
) -> Result<Vec<IpAddr>, DeliveryError> {
    let name = format!("{host}.");
    let (v4, v6) = tokio::join!(
        tokio::time::timeout(limit, resolver.ipv4_lookup(name.clone())),
        tokio::time::timeout(limit, resolver.ipv6_lookup(name.clone())),
    );
    let mut found = Vec::new();
    let mut errors = Vec::new();
    for result in [v4, v6] {
        match result {
            Ok(Ok(lookup)) => {
                found.extend(
                    lookup
                        .answers()
                        .iter()
                        .filter_map(|record| match &record.data {
                            RData::A(a) => Some(IpAddr::V4(a.0)),
                            RData::AAAA(aaaa) => Some(IpAddr::V6(aaaa.0)),
                            _ => None,
                        }),
                )
            }
            Ok(Err(err)) => errors.push(err.to_string()),
            Err(_elapsed) => errors.push("timed out".to_owned()),
        }
    }
    if found.is_empty() {
        errors.push("no address".to_owned());
        return Err(DeliveryError::Resolver(format!(
            "{host}: {}",
            errors.join("; ")
        )));
    }
    Ok(found)
}

/// reqwest's name resolution through our resolver, so that the HTTPS channel connects to
/// the addresses the SMTP channel would use.
pub(crate) struct HttpsResolver {
    /// Shared with the SMTP channel.
    pub resolver: TokioResolver,
    /// Bound of one lookup.
    pub limit: Duration,
}

impl reqwest::dns::Resolve for HttpsResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let resolver = self.resolver.clone();
        let limit = self.limit;
        let host = name.as_str().trim_end_matches('.').to_owned();
        Box::pin(async move {
            let found = addresses(&resolver, &host, limit).await?;
            let addrs: reqwest::dns::Addrs =
                Box::new(found.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// For [`HttpsResolver`]: reqwest wants an `Arc`.
pub(crate) fn https_resolver(resolver: TokioResolver, limit: Duration) -> Arc<HttpsResolver> {
    Arc::new(HttpsResolver { resolver, limit })
}
