//! The origin check of incoming mail: DKIM verification with strict alignment
//! (filtermail-latest.md §6.2).
//!
//! A message passes iff at least one `DKIM-Signature` verifies and its `d=` equals the
//! `From:` domain (ASCII case-insensitive). Signatures of other domains are ignored; a
//! domain-literal sender (`user@[192.0.2.1]`) is not checked at all. The cryptography and
//! canonicalization are `mail-auth`'s; key records come from a [`KeyResolver`], so tests
//! supply them without a network and the crate itself never queries DNS.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mail_auth::common::crypto::Algorithm;
use mail_auth::common::parse::TxtRecordParser;
use mail_auth::common::verify::DomainKey;
use mail_auth::hickory_resolver::TokioResolver;
use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::proto::rr::RData;
use mail_auth::{
    AuthenticatedMessage, DkimResult, DnsError, Error, MessageAuthenticator, Parameters,
    ResolverCache, Txt,
};
use thiserror::Error;

/// How long one key lookup may take (upstream raised viadkim's 10 s to this).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Signatures looked at per message; more are refused (each one may cost a pass over the
/// body, so a message with thousands would be a cheap denial of service).
pub const MAX_SIGNATURES: usize = 10;

/// TXT records used per key name.
const MAX_RECORDS: usize = 3;

/// Clock skew allowed for a signature's `t=` in the future.
const FUTURE_TOLERANCE: u64 = 300;

/// Why a message failed the origin check; [`DkimRejection::reply`] is the SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DkimRejection {
    /// The message is not UTF-8.
    NonUtf8,
    /// No empty line between header and body.
    MalformedData,
    /// The header block does not parse.
    MalformedHeader,
    /// No `DKIM-Signature` header at all.
    NoSignature,
    /// Signatures, but none that verifies for the `From:` domain.
    NoValidSignature,
}

impl DkimRejection {
    /// The reply line, verbatim as upstream (relay's tests match the 554 5.7.1 texts).
    pub fn reply(&self) -> &'static str {
        match self {
            DkimRejection::NonUtf8 => "554 Non-UTF-8 message",
            DkimRejection::MalformedData => "554 Malformed data",
            DkimRejection::MalformedHeader => "554 Malformed header",
            DkimRejection::NoSignature => "554 5.7.1 No DKIM signature found",
            DkimRejection::NoValidSignature => "554 5.7.1 No valid DKIM signature found",
        }
    }
}

/// A failed TXT lookup.
#[derive(Debug, Clone, Error)]
#[error("{0}")]
pub struct LookupError(pub String);

/// The future a [`KeyResolver`] returns.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = Result<Vec<Vec<u8>>, LookupError>> + Send + 'a>>;

/// Where DKIM key records come from.
pub trait KeyResolver: Send + Sync {
    /// The TXT records at `name` (fully qualified, with the trailing dot), each as its
    /// character strings concatenated, in answer order; CNAMEs in the answer skipped.
    fn txt<'a>(&'a self, name: &'a str) -> Lookup<'a>;
}

/// The system's resolver (`/etc/resolv.conf`), through hickory.
pub struct SystemResolver(TokioResolver);

impl SystemResolver {
    /// Reads `/etc/resolv.conf`; negative answers are not cached (a key published after a
    /// failed lookup counts at once).
    pub fn new() -> Result<SystemResolver, LookupError> {
        let (config, mut options) = mail_auth::hickory_resolver::system_conf::read_system_conf()
            .map_err(|err| LookupError(err.to_string()))?;
        options.negative_max_ttl = Some(Duration::ZERO);
        options.timeout = options.timeout.min(LOOKUP_TIMEOUT);
        Ok(SystemResolver(build_resolver(config, options)?))
    }
}

impl SystemResolver {
    /// One name server over UDP instead of `/etc/resolv.conf` (a local stub in tests).
    pub fn with_nameserver(server: std::net::SocketAddr) -> Result<SystemResolver, LookupError> {
        let mut name_server = NameServerConfig::udp(server.ip());
        for connection in &mut name_server.connections {
            connection.port = server.port();
        }
        let config = ResolverConfig::from_parts(None, Vec::new(), vec![name_server]);
        let mut options = ResolverOpts::default();
        options.negative_max_ttl = Some(Duration::ZERO);
        Ok(SystemResolver(build_resolver(config, options)?))
    }
}

fn build_resolver(
    config: ResolverConfig,
    options: ResolverOpts,
) -> Result<TokioResolver, LookupError> {
    TokioResolver::builder_with_config(
        config,
        mail_auth::hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
    )
    .with_options(options)
    .build()
    .map_err(|err| LookupError(err.to_string()))
}

impl KeyResolver for SystemResolver {
    fn txt<'a>(&'a self, name: &'a str) -> Lookup<'a> {
        Box::pin(async move {
            let lookup = self
                .0
                .txt_lookup(name)
                .await
                .map_err(|err| LookupError(err.to_string()))?;
            Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    RData::TXT(txt) => Some(txt.txt_data.concat()),
                    _ => None,
                })
                .collect())
        })
    }
}

/// Fixed records, for tests and tools: name (any case, with or without the trailing dot)
/// → TXT record texts. Unknown names are NXDOMAIN.
#[derive(Debug, Clone, Default)]
pub struct StaticResolver(HashMap<String, Vec<String>>);

impl StaticResolver {
    pub fn new() -> StaticResolver {
        StaticResolver::default()
    }

    /// Adds a TXT record at `name`.
    pub fn insert(&mut self, name: &str, record: &str) {
        self.0
            .entry(fqdn(name))
            .or_default()
            .push(record.to_owned());
    }
}

impl KeyResolver for StaticResolver {
    fn txt<'a>(&'a self, name: &'a str) -> Lookup<'a> {
        let found = self.0.get(&fqdn(name)).cloned();
        Box::pin(async move {
            match found {
                Some(records) => Ok(records.into_iter().map(String::into_bytes).collect()),
                None => Err(LookupError(format!("no record found for {name}"))),
            }
        })
    }
}

fn fqdn(name: &str) -> String {
    let mut name = name.to_ascii_lowercase();
    if !name.ends_with('.') {
        name.push('.');
    }
    name
}

/// Removes spaces, tabs, CR, LF and `"` (records published over several lines or with
/// escaped quotes), as upstream.
pub fn clean_record(record: &[u8]) -> Vec<u8> {
    record
        .iter()
        .copied()
        .filter(|b| !matches!(b, b' ' | b'\t' | b'\r' | b'\n' | b'"'))
        .collect()
}

/// The key records of one message, handed to `mail-auth` as its cache: every name it asks
/// for is answered from here, so the crate never queries DNS itself.
struct Keys(HashMap<Box<str>, Txt>);

impl ResolverCache<Box<str>, Txt> for Keys {
    fn get<Q>(&self, name: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        Some(
            self.0
                .get(name)
                .cloned()
                .unwrap_or(Txt::Error(Error::Dns(DnsError::InvalidRecordType))),
        )
    }

    fn remove<Q>(&self, _: &Q) -> Option<Txt>
    where
        Box<str>: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        None
    }

    fn insert(&self, _: Box<str>, _: Txt, _: std::time::Instant) {}
}

/// The DKIM verifier of the incoming filter.
pub struct DkimVerifier {
    resolver: Arc<dyn KeyResolver>,
    /// Only for its verification code; its own resolver is never asked (see [`Keys`]).
    authenticator: MessageAuthenticator,
    lookup_timeout: Duration,
}

impl DkimVerifier {
    /// A verifier that takes key records from `resolver`.
    pub fn new(resolver: Arc<dyn KeyResolver>) -> Result<DkimVerifier, LookupError> {
        // No name servers: nothing could be asked even by mistake.
        let authenticator = MessageAuthenticator(build_resolver(
            ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
            ResolverOpts::default(),
        )?);
        Ok(DkimVerifier {
            resolver,
            authenticator,
            lookup_timeout: LOOKUP_TIMEOUT,
        })
    }

    /// Changes the key lookup timeout ([`LOOKUP_TIMEOUT`] by default).
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> DkimVerifier {
        self.lookup_timeout = timeout;
        self
    }

    /// Checks that `message` (CRLF line ends, not dot-stuffed) comes from the domain of
    /// `from` (the `From:` address). Domain literals pass unchecked.
    pub async fn verify(&self, message: &[u8], from: &str) -> Result<(), DkimRejection> {
        let Some((_, domain)) = from.rsplit_once('@') else {
            return Err(DkimRejection::NoValidSignature);
        };
        if domain.starts_with('[') {
            return Ok(());
        }
        if std::str::from_utf8(message).is_err() {
            return Err(DkimRejection::NonUtf8);
        }
        let Some(header_end) = memchr::memmem::find(message, b"\r\n\r\n") else {
            return Err(DkimRejection::MalformedData);
        };
        let header_block = message.get(..header_end + 2).unwrap_or(message);
        let signature_fields = count_fields(header_block, b"dkim-signature");
        if signature_fields == 0 {
            return Err(DkimRejection::NoSignature);
        }
        if signature_fields > MAX_SIGNATURES {
            return Err(DkimRejection::NoValidSignature);
        }
        let from_fields = count_fields(header_block, b"from");
        // Strict parsing: signatures with `l=` do not count (upstream accepts them; content
        // appended after the signed length would pass as signed).
        let Some(parsed) = AuthenticatedMessage::parse(message) else {
            return Err(DkimRejection::MalformedHeader);
        };
        // Keys only for signatures that could count: aligned, not SHA-1.
        let mut names: Vec<String> = Vec::new();
        for header in &parsed.dkim_headers {
            let signature = &header.header;
            if signature.d.eq_ignore_ascii_case(domain) && signature.a != Algorithm::RsaSha1 {
                let name = fqdn(&format!("{}._domainkey.{}", signature.s, signature.d));
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        if names.is_empty() {
            return Err(DkimRejection::NoValidSignature);
        }
        let mut keys = HashMap::new();
        for name in names {
            let record =
                match tokio::time::timeout(self.lookup_timeout, self.resolver.txt(&name)).await {
                    Ok(Ok(records)) => parse_key(&records),
                    Ok(Err(err)) => Txt::Error(Error::Dns(DnsError::Resolver(err.0))),
                    Err(_) => Txt::Error(Error::Dns(DnsError::Resolver("timeout".to_owned()))),
                };
            keys.insert(name.into_boxed_str(), record);
        }
        let keys = Keys(keys);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let outputs = self
            .authenticator
            .verify_dkim(Parameters::new(&parsed).with_txt_cache(&keys))
            .await;
        let valid = outputs.iter().any(|output| {
            output.result() == &DkimResult::Pass
                && output.signature().is_some_and(|signature| {
                    signature.d.eq_ignore_ascii_case(domain)
                        && signature.a != Algorithm::RsaSha1
                        && signature.t <= now + FUTURE_TOLERANCE
                        && signature
                            .h
                            .iter()
                            .filter(|h| h.eq_ignore_ascii_case("from"))
                            .count()
                            >= from_fields
                })
        });
        if valid {
            Ok(())
        } else {
            Err(DkimRejection::NoValidSignature)
        }
    }
}

/// The first of the first three TXT records that parses as a DKIM key, after cleaning.
fn parse_key(records: &[Vec<u8>]) -> Txt {
    let mut result = Err(Error::Dns(DnsError::InvalidRecordType));
    for record in records.iter().take(MAX_RECORDS) {
        result = DomainKey::parse(&clean_record(record));
        if result.is_ok() {
            break;
        }
    }
    match result {
        Ok(key) => Txt::DomainKey(Arc::new(key)),
        Err(err) => Txt::Error(err),
    }
}

/// How many header fields named `name` (lower-case) the header block holds.
fn count_fields(header_block: &[u8], name: &[u8]) -> usize {
    header_block
        .split(|&b| b == b'\n')
        .filter(|line| {
            line.len() > name.len()
                && line
                    .get(..name.len())
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
                && line
                    .get(name.len()..)
                    .is_some_and(|rest| rest.trim_ascii_start().starts_with(b":"))
        })
        .count()
}

/// `FILTERMAIL_SKIP_DKIM`: `1` or `true` (any case) turns the check off.
pub fn skip_requested(value: Option<&std::ffi::OsStr>) -> bool {
    value
        .and_then(|v| v.to_str())
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleans_records() {
        assert_eq!(
            clean_record(b"v=DKIM1; k=rsa;\r\n\t p=\"AB CD\""),
            b"v=DKIM1;k=rsa;p=ABCD"
        );
    }

    #[test]
    fn counts_fields() {
        let block = b"From: a@b\r\nfrom : c@d\r\nX-From: e\r\nSubject: from: x\r\n \tfrom: y\r\n";
        assert_eq!(count_fields(block, b"from"), 2);
    }

    #[test]
    fn skip_values() {
        use std::ffi::OsStr;
        for yes in ["1", "true", "TRUE", "True"] {
            assert!(skip_requested(Some(OsStr::new(yes))), "{yes}");
        }
        for no in ["0", "yes", "", "false", " 1"] {
            assert!(!skip_requested(Some(OsStr::new(no))), "{no}");
        }
        assert!(!skip_requested(None));
    }
}
