//! The validated configuration: every key of `[params]`, its default and derived values.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use crate::error::{ConfigError, shown};
use crate::ini::{Entry, Ini};
use crate::size::{EXPECTED_SIZE, parse_size_mb};
use crate::values::{one_line, py_bool, py_float, py_int, py_split, py_strip};

/// Where deployments install the file; `chatmail-expire` and `chatmail-fsreport` fall back
/// to it when no path is given on the command line.
pub const DEFAULT_CONFIG_PATH: &str = "/usr/local/lib/chatmaild/chatmail.ini";

/// Default of [`Config::nocreate_file`], the path upstream hard-codes.
pub const DEFAULT_NOCREATE_FILE: &str = "/etc/chatmail-nocreate";

/// Upstream's hard-coded push notification gateway, the default of `notification_url`.
pub const DEFAULT_NOTIFICATION_URL: &str = "https://notifications.delta.chat/notify";

/// Where the TLS certificate comes from; decides the certificate paths and whether
/// clients must be told to accept a self-signed certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TlsCertMode {
    /// Let's Encrypt via ACME, files under `/var/lib/acme/live/<mail_domain>/`.
    Acme,
    /// A self-signed certificate, for underscore test domains and IPv4 relays; newemail adds
    /// a `dclogin_url` so that clients accept it.
    SelfSigned,
    /// Certificate and key managed outside chatmail (`tls_external_cert_and_key`).
    External,
}

impl TlsCertMode {
    /// Upstream's name of the mode (`acme`, `self`, `external`), for logs and templates.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsCertMode::Acme => "acme",
            TlsCertMode::SelfSigned => "self",
            TlsCertMode::External => "external",
        }
    }
}

/// The `[params]` section of `chatmail.ini`, validated once at load.
///
/// Defaults are upstream's (HEAD), plus the keys only the `tmpfs-index` branch (SEED) knows.
/// Daemons read fields only; nothing is parsed lazily, except `delete_mails_after` and
/// `delete_large_after`, which stay strings as upstream (see their `*_days` methods).
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was read from, so that later messages can name it.
    pub path: PathBuf,

    /// The domain in addresses (`user@<mail_domain>`), checked by the userdb, used as TURN
    /// host and by newemail. For an IPv4 relay it is the bracketed literal `[1.2.3.4]`.
    /// Key `mail_domain`, required.
    pub mail_domain: String,
    /// `mail_domain` as written in the file (`1.2.3.4` without brackets for an IPv4
    /// relay); names the default mailboxes directory and the ACME certificate directory.
    pub mail_domain_bare: String,
    /// The relay's address when `mail_domain` is an IPv4 literal; such relays use
    /// self-signed certificates and `[IP]` addresses.
    pub ipv4_relay: Option<Ipv4Addr>,
    /// Postfix `myhostname`: `mail_domain`, or the reverse pointer
    /// (`7.3.3.1.in-addr.arpa`) for an IPv4 relay, as Postfix needs a host name.
    pub postfix_myhostname: String,

    /// Outgoing messages a user may send per minute (filtermail's rate limit).
    /// Key `max_user_send_per_minute`, default 60.
    pub max_user_send_per_minute: u32,
    /// How many messages above the rate a user may send in a burst (filtermail).
    /// Key `max_user_send_burst_size`, default 10.
    pub max_user_send_burst_size: u32,
    /// Mailbox quota as written, handed verbatim to Dovecot's `quota_rule`.
    /// Key `max_mailbox_size`, default `500M`.
    pub max_mailbox_size: String,
    /// `max_mailbox_size` in MiB, for expiry. Upstream only fails on a bad size when this
    /// is first used; we fail at load so that the operator learns at start, not at the
    /// first expiry run.
    pub max_mailbox_size_mb: i64,
    /// Largest accepted message in bytes (Postfix `message_size_limit`, Dovecot
    /// `quota_max_mail_size`, filtermail's DATA limit). Key `max_message_size`, default
    /// 31457280.
    pub max_message_size: u64,

    /// Days after which mails are deleted, kept as a string like upstream; convert with
    /// [`Config::delete_mails_after_days`]. Key `delete_mails_after`, default `20`.
    pub delete_mails_after: String,
    /// Days after which large mails are deleted, kept as a string like upstream; convert
    /// with [`Config::delete_large_after_days`]. Key `delete_large_after`, default `7`.
    pub delete_large_after: String,
    /// Days without login after which expiry removes an account.
    /// Key `delete_inactive_users_after`, default 90.
    pub delete_inactive_users_after: u32,
    /// Shortest local part doveauth creates an account for, in code points.
    /// Key `username_min_length`, default 9.
    pub username_min_length: usize,
    /// Longest local part doveauth accepts; newemail generates exactly this many characters.
    /// Key `username_max_length`, default 9.
    pub username_max_length: usize,
    /// Shortest password doveauth accepts, in code points; newemail generates 3 more.
    /// Key `password_min_length`, default 9.
    pub password_min_length: usize,

    /// Senders filtermail lets through without the encryption check (filtermail ≤ 0.6).
    /// Key `passthrough_senders`, blank-separated, default empty.
    pub passthrough_senders: Vec<String>,
    /// Recipients filtermail lets through unencrypted mail to; `@domain` items match a
    /// whole domain. Key `passthrough_recipients`, blank-separated, default empty
    /// (testrun.org relays: `privacy@testrun.org echo@<mail_domain>`).
    pub passthrough_recipients: Vec<String>,
    /// Whether Dovecot indexes live in `/dev/shm/<user>`, which expiry and fsreport must
    /// know. Key `tmpfs_index` (from SEED), default false (testrun.org relays: true).
    pub tmpfs_index: bool,
    /// Local folder of the web pages, used by deployment only.
    /// Key `www_folder`, default empty.
    pub www_folder: String,
    /// Port filtermail listens on for outgoing mail from Postfix.
    /// Key `filtermail_smtp_port`, default 10080.
    pub filtermail_smtp_port: u16,
    /// Port filtermail listens on for incoming mail from Postfix.
    /// Key `filtermail_smtp_port_incoming`, default 10081.
    pub filtermail_smtp_port_incoming: u16,
    /// Port of filtermail's HTTP `/mxdeliv` endpoint behind nginx.
    /// Key `filtermail_http_port_incoming`, default 10082.
    pub filtermail_http_port_incoming: u16,
    /// Port of filtermail's LMTP transport for Postfix.
    /// Key `filtermail_lmtp_port_transport`, default 10083.
    pub filtermail_lmtp_port_transport: u16,
    /// Remote port filtermail's transport mode delivers SMTP to. Ours only (upstream
    /// always uses 25), for test setups on loopback; a relay keeps the default.
    /// Key `filtermail_transport_smtp_port`, default 25.
    pub filtermail_transport_smtp_port: u16,
    /// Remote port of the other relays' HTTPS `/mxdeliv`. Ours only (upstream always
    /// uses 443), for test setups on loopback; a relay keeps the default.
    /// Key `filtermail_transport_https_port`, default 443.
    pub filtermail_transport_https_port: u16,
    /// Address every filtermail listener binds, and the name it gives in EHLO when
    /// reinjecting (`[<ip>]`). filtermail 0.6+ only; relay 1.12 does not set it.
    /// Key `filtermail_host`, an IP address, default 127.0.0.1.
    pub filtermail_host: IpAddr,
    /// Where filtermail reinjects (an IP address or a host name, resolved at start).
    /// filtermail 0.6+ only; relay 1.12 does not set it.
    /// Key `postfix_host`, default 127.0.0.1.
    pub postfix_host: String,
    /// Port where Postfix takes back filtered outgoing mail.
    /// Key `postfix_reinject_port`, default 10025.
    pub postfix_reinject_port: u16,
    /// Port where Postfix takes back filtered incoming mail.
    /// Key `postfix_reinject_port_incoming`, default 10026.
    pub postfix_reinject_port_incoming: u16,

    /// Address the mtail metrics exporter listens on, used by deployment only; `None`
    /// disables mtail. Key `mtail_address`, default absent.
    pub mtail_address: Option<String>,
    /// Whether the deployment leaves out IPv6 listeners. Key `disable_ipv6`, default false.
    pub disable_ipv6: bool,
    /// Contact address for the ACME account. Key `acme_email`, default empty.
    pub acme_email: String,
    /// Whether Dovecot writes IMAP raw logs (debugging). Key `imap_rawlog`, default false.
    pub imap_rawlog: bool,
    /// Whether Dovecot offers IMAP COMPRESS. Key `imap_compress`, default false.
    pub imap_compress: bool,
    /// Unix socket of the TURN credentials service, asked by the metadata daemon.
    /// Key `turn_socket_path`, default `/run/chatmail-turn/turn.socket`.
    pub turn_socket_path: PathBuf,

    /// The iroh relay URL the metadata daemon announces; empty means "announce none".
    /// Key `iroh_relay`, default `https://<mail_domain as written>`.
    pub iroh_relay: String,
    /// Whether the relay runs its own iroh relay: true exactly when `iroh_relay` is absent
    /// from the file (even an empty value means someone else's or none).
    pub enable_iroh_relay: bool,

    /// Our extension, not an upstream key: where the metadata daemon POSTs push
    /// notifications. Upstream hard-codes the URL; the key lets tests use a local server.
    /// Key `notification_url`, default `https://notifications.delta.chat/notify`.
    pub notification_url: String,
    /// Our extension, not an upstream key: a PEM file of the CA certificates that the
    /// notification server is verified against instead of the system roots; `None` means
    /// the system roots. Key `notification_ca_file`, default absent (an empty value too).
    pub notification_ca_file: Option<PathBuf>,

    /// Postal address for the privacy page (may span lines). Key `privacy_postal`, default
    /// absent.
    pub privacy_postal: Option<String>,
    /// Privacy contact e-mail address, also Dovecot's `mail_server_admin`.
    /// Key `privacy_mail`, default absent.
    pub privacy_mail: Option<String>,
    /// Data protection officer for the privacy page. Key `privacy_pdo`, default absent.
    pub privacy_pdo: Option<String>,
    /// Supervisory authority for the privacy page. Key `privacy_supervisor`, default absent.
    pub privacy_supervisor: Option<String>,

    /// doveauth refuses new accounts while the 1-minute load average is above this.
    /// Key `max_load_1m`, default 5.
    pub max_load_1m: f64,
    /// Minimum available memory for new accounts, as written. Key `min_available_memory`,
    /// default `200M`.
    pub min_available_memory: String,
    /// `min_available_memory` in MiB, what doveauth compares against.
    pub min_available_memory_mb: i64,
    /// Minimum free disk space for new accounts, as written. Key `min_free_disk_space`,
    /// default `1G`.
    pub min_free_disk_space: String,
    /// `min_free_disk_space` in MiB, what doveauth compares against.
    pub min_free_disk_space_mb: i64,
    /// Dovecot `service imap { process_limit }`. Key `max_imap_connections`, default 10000.
    pub max_imap_connections: u32,
    /// Postfix maxproc of submission/smtps (per client: a fifth of it).
    /// Key `max_smtp_connections`, default 1000.
    pub max_smtp_connections: u32,

    /// `CERT_PATH KEY_PATH` of an externally managed certificate, as written; empty means
    /// chatmail manages the certificate. Key `tls_external_cert_and_key`, default empty.
    pub tls_external_cert_and_key: String,
    /// Where the certificate comes from, derived from `tls_external_cert_and_key` and
    /// `mail_domain`.
    pub tls_cert_mode: TlsCertMode,
    /// The certificate chain file that Postfix, Dovecot and nginx use.
    pub tls_cert_path: PathBuf,
    /// The private key file that Postfix, Dovecot and nginx use.
    pub tls_key_path: PathBuf,

    /// Root of all maildirs (`<mailboxes_dir>/<addr>`). Deprecated upstream but honoured,
    /// tests point it at a temporary directory. Key `mailboxes_dir`, default
    /// `/home/vmail/mail/<mail_domain as written>`.
    pub mailboxes_dir: PathBuf,
    /// The old SQLite password database that doveauth migrates from once.
    /// Key `passdb_path`, default `/home/vmail/passdb.sqlite`.
    pub passdb_path: PathBuf,
    /// Our extension, not an upstream key: doveauth refuses to create accounts while this
    /// file exists. Upstream hard-codes the path; the key lets tests use a temporary path
    /// instead of `/etc`. Key `nocreate_file`, default `/etc/chatmail-nocreate`.
    pub nocreate_file: PathBuf,

    /// Keys of `[params]` that no setting uses, in file order; they have no effect and are
    /// reported by [`Config::warnings`].
    pub unknown_keys: Vec<String>,
}

impl Config {
    /// Reads and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        let config = Config::parse(&text, path)?;
        tracing::debug!(
            path = %path.display(),
            mail_domain = %config.mail_domain,
            "loaded chatmail config"
        );
        Ok(config)
    }

    /// Validates the text of a file; `path` is only used for messages and
    /// [`Config::path`].
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let ini = Ini::parse(text).map_err(|error| ConfigError::Syntax {
            path: path.to_owned(),
            error,
        })?;
        let section = ini
            .section("params")
            .ok_or_else(|| ConfigError::MissingSection {
                path: path.to_owned(),
            })?;
        let mut p = Params::new(path, &section.entries);

        let raw_domain = p.take("mail_domain").ok_or(ConfigError::MissingKey {
            path: path.to_owned(),
            key: "mail_domain",
        })?;
        check_mail_domain(raw_domain)
            .map_err(|expected| p.invalid("mail_domain", raw_domain, expected.to_owned()))?;
        let mail_domain_bare = raw_domain.to_owned();
        let ipv4_relay = raw_domain.parse::<Ipv4Addr>().ok();
        let (mail_domain, postfix_myhostname) = match ipv4_relay {
            Some(ip) => (format!("[{ip}]"), reverse_pointer(ip)),
            None => (raw_domain.to_owned(), raw_domain.to_owned()),
        };
        // SEED overlays `override-testrun.ini` on the defaults of testrun.org relays.
        let testrun = raw_domain.ends_with(".testrun.org");

        let (max_mailbox_size, max_mailbox_size_mb) = p.size("max_mailbox_size", "500M")?;
        let (min_available_memory, min_available_memory_mb) =
            p.size("min_available_memory", "200M")?;
        let (min_free_disk_space, min_free_disk_space_mb) = p.size("min_free_disk_space", "1G")?;

        let passthrough_recipients = match p.take("passthrough_recipients") {
            Some(value) => py_split(value),
            None if testrun => vec![
                "privacy@testrun.org".to_owned(),
                format!("echo@{mail_domain}"),
            ],
            None => Vec::new(),
        };

        let (iroh_relay, enable_iroh_relay) = match p.take("iroh_relay") {
            Some(value) => (py_strip(value).to_owned(), false),
            None => (format!("https://{raw_domain}"), true),
        };

        let tls_external_cert_and_key = p.string("tls_external_cert_and_key", "");
        let (tls_cert_mode, tls_cert_path, tls_key_path) =
            match py_strip(&tls_external_cert_and_key) {
                "" if raw_domain.starts_with('_') || ipv4_relay.is_some() => (
                    TlsCertMode::SelfSigned,
                    PathBuf::from("/etc/ssl/certs/mailserver.pem"),
                    PathBuf::from("/etc/ssl/private/mailserver.key"),
                ),
                "" => {
                    let dir = Path::new("/var/lib/acme/live").join(raw_domain);
                    (
                        TlsCertMode::Acme,
                        dir.join("fullchain"),
                        dir.join("privkey"),
                    )
                }
                external => match py_split(external).as_slice() {
                    [cert, key] => (
                        TlsCertMode::External,
                        PathBuf::from(cert),
                        PathBuf::from(key),
                    ),
                    _ => {
                        return Err(ConfigError::Invalid {
                            path: path.to_owned(),
                            key: "tls_external_cert_and_key",
                            value: tls_external_cert_and_key,
                            message: "tls_external_cert_and_key must have two space-separated \
                                  paths: CERT_PATH KEY_PATH"
                                .to_owned(),
                        });
                    }
                },
            };

        let config = Config {
            path: path.to_owned(),
            max_user_send_per_minute: p.uint("max_user_send_per_minute", 60)?,
            max_user_send_burst_size: p.uint("max_user_send_burst_size", 10)?,
            max_mailbox_size,
            max_mailbox_size_mb,
            max_message_size: p.uint("max_message_size", 31_457_280)?,
            delete_mails_after: p.string("delete_mails_after", "20"),
            delete_large_after: p.string("delete_large_after", "7"),
            delete_inactive_users_after: p.uint("delete_inactive_users_after", 90)?,
            username_min_length: p.uint("username_min_length", 9)?,
            username_max_length: p.uint("username_max_length", 9)?,
            password_min_length: p.uint("password_min_length", 9)?,
            passthrough_senders: p
                .take("passthrough_senders")
                .map(py_split)
                .unwrap_or_default(),
            passthrough_recipients,
            tmpfs_index: p.bool("tmpfs_index", testrun),
            www_folder: p.string("www_folder", ""),
            filtermail_smtp_port: p.uint("filtermail_smtp_port", 10080)?,
            filtermail_smtp_port_incoming: p.uint("filtermail_smtp_port_incoming", 10081)?,
            filtermail_http_port_incoming: p.uint("filtermail_http_port_incoming", 10082)?,
            filtermail_lmtp_port_transport: p.uint("filtermail_lmtp_port_transport", 10083)?,
            filtermail_transport_smtp_port: p.uint("filtermail_transport_smtp_port", 25)?,
            filtermail_transport_https_port: p.uint("filtermail_transport_https_port", 443)?,
            filtermail_host: p.ip("filtermail_host", IpAddr::V4(Ipv4Addr::LOCALHOST))?,
            postfix_host: p.host("postfix_host", "127.0.0.1")?,
            postfix_reinject_port: p.uint("postfix_reinject_port", 10025)?,
            postfix_reinject_port_incoming: p.uint("postfix_reinject_port_incoming", 10026)?,
            mtail_address: p.take("mtail_address").map(str::to_owned),
            disable_ipv6: p.bool("disable_ipv6", false),
            acme_email: p.string("acme_email", ""),
            imap_rawlog: p.bool("imap_rawlog", false),
            imap_compress: p.bool("imap_compress", false),
            turn_socket_path: p.path("turn_socket_path", "/run/chatmail-turn/turn.socket")?,
            iroh_relay,
            enable_iroh_relay,
            notification_url: p.url("notification_url", DEFAULT_NOTIFICATION_URL)?,
            notification_ca_file: p
                .take("notification_ca_file")
                .map(py_strip)
                .filter(|path| !path.is_empty())
                .map(PathBuf::from),
            privacy_postal: p.take("privacy_postal").map(str::to_owned),
            privacy_mail: p.take("privacy_mail").map(str::to_owned),
            privacy_pdo: p.take("privacy_pdo").map(str::to_owned),
            privacy_supervisor: p.take("privacy_supervisor").map(str::to_owned),
            max_load_1m: p.float("max_load_1m", 5.0)?,
            min_available_memory,
            min_available_memory_mb,
            min_free_disk_space,
            min_free_disk_space_mb,
            max_imap_connections: p.uint("max_imap_connections", 10_000)?,
            max_smtp_connections: p.uint("max_smtp_connections", 1000)?,
            tls_external_cert_and_key,
            tls_cert_mode,
            tls_cert_path,
            tls_key_path,
            mailboxes_dir: p.path(
                "mailboxes_dir",
                &format!("/home/vmail/mail/{mail_domain_bare}"),
            )?,
            passdb_path: p.path("passdb_path", "/home/vmail/passdb.sqlite")?,
            nocreate_file: p.path("nocreate_file", DEFAULT_NOCREATE_FILE)?,
            unknown_keys: p.unused(),
            mail_domain,
            mail_domain_bare,
            ipv4_relay,
            postfix_myhostname,
        };
        Ok(config)
    }

    /// `delete_mails_after` as a number of days; an error names the file, key and value.
    pub fn delete_mails_after_days(&self) -> Result<u32, ConfigError> {
        self.days("delete_mails_after", &self.delete_mails_after)
    }

    /// `delete_large_after` as a number of days; an error names the file, key and value.
    pub fn delete_large_after_days(&self) -> Result<u32, ConfigError> {
        self.days("delete_large_after", &self.delete_large_after)
    }

    fn days(&self, key: &'static str, value: &str) -> Result<u32, ConfigError> {
        parse_uint(value).map_err(|expected| ConfigError::InvalidValue {
            path: self.path.clone(),
            key,
            value: value.to_owned(),
            expected,
        })
    }

    /// One line per problem that does not stop the daemons but should be fixed: unknown keys
    /// (they have no effect), expiry day counts that expiry will reject, and username length
    /// limits that no name can satisfy.
    pub fn warnings(&self) -> Vec<String> {
        let file = shown(&self.path);
        let mut warnings: Vec<String> = self
            .unknown_keys
            .iter()
            .map(|key| {
                format!(
                    "{file}: unknown key '{}' in [params] has no effect",
                    one_line(key)
                )
            })
            .collect();
        for days in [
            self.delete_mails_after_days(),
            self.delete_large_after_days(),
        ] {
            if let Err(error) = days {
                warnings.push(format!("{error}; expiry will fail until this is fixed"));
            }
        }
        if self.username_min_length > self.username_max_length {
            warnings.push(format!(
                "{file}: username_min_length {} is larger than username_max_length {}, \
                 no account can be created",
                self.username_min_length, self.username_max_length
            ));
        }
        warnings
    }
}

/// `mail_domain` becomes a directory name and part of every address, so anything that
/// would escape `/home/vmail/mail/` or split an address is refused. Returns the expected
/// form on error.
fn check_mail_domain(domain: &str) -> Result<(), &'static str> {
    if domain.is_empty() {
        return Err("a non-empty domain name");
    }
    if domain == "." || domain == ".." {
        return Err("a domain name, not '.' or '..'");
    }
    if domain
        .chars()
        .any(|c| c == '/' || c == '@' || c.is_whitespace() || c.is_control())
    {
        return Err("a domain name or IPv4 address without '/', '@', blanks or control characters");
    }
    Ok(())
}

/// The PTR name of an address, e.g. `7.3.3.1.in-addr.arpa` for `1.3.3.7`.
fn reverse_pointer(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{d}.{c}.{b}.{a}.in-addr.arpa")
}

/// Unsigned field types, with their range for error messages.
trait Unsigned: Sized {
    const MAX_VALUE: i128;
    fn from_i128(n: i128) -> Option<Self>;
}

macro_rules! impl_unsigned {
    ($($t:ty),*) => {$(
        impl Unsigned for $t {
            const MAX_VALUE: i128 = <$t>::MAX as i128;
            fn from_i128(n: i128) -> Option<Self> {
                <$t>::try_from(n).ok()
            }
        }
    )*};
}

impl_unsigned!(u16, u32, u64, usize);

/// An unsigned value via Python's `int()` rules; on error the expected form.
fn parse_uint<T: Unsigned>(value: &str) -> Result<T, String> {
    let n = py_int(value).ok_or("an integer")?;
    if n < 0 {
        return Err("a non-negative integer".to_owned());
    }
    T::from_i128(n).ok_or_else(|| format!("an integer not larger than {}", T::MAX_VALUE))
}

/// The entries of `[params]`, remembering which ones a setting used so that the rest can be
/// reported as unknown.
struct Params<'a> {
    path: &'a Path,
    entries: &'a [Entry],
    used: Vec<bool>,
}

impl<'a> Params<'a> {
    fn new(path: &'a Path, entries: &'a [Entry]) -> Params<'a> {
        Params {
            path,
            entries,
            used: vec![false; entries.len()],
        }
    }

    fn take(&mut self, key: &str) -> Option<&'a str> {
        let entries: &'a [Entry] = self.entries;
        entries
            .iter()
            .zip(self.used.iter_mut())
            .find(|(entry, _)| entry.key == key)
            .map(|(entry, used)| {
                *used = true;
                entry.value.as_str()
            })
    }

    fn invalid(&self, key: &'static str, value: &str, expected: String) -> ConfigError {
        ConfigError::InvalidValue {
            path: self.path.to_owned(),
            key,
            value: value.to_owned(),
            expected,
        }
    }

    fn string(&mut self, key: &str, default: &str) -> String {
        self.take(key).unwrap_or(default).to_owned()
    }

    fn bool(&mut self, key: &str, default: bool) -> bool {
        self.take(key).map_or(default, py_bool)
    }

    fn uint<T: Unsigned>(&mut self, key: &'static str, default: T) -> Result<T, ConfigError> {
        match self.take(key) {
            None => Ok(default),
            Some(value) => parse_uint(value).map_err(|expected| self.invalid(key, value, expected)),
        }
    }

    fn float(&mut self, key: &'static str, default: f64) -> Result<f64, ConfigError> {
        match self.take(key) {
            None => Ok(default),
            Some(value) => py_float(value)
                .ok_or_else(|| self.invalid(key, value, "a finite number".to_owned())),
        }
    }

    /// The size as written and in MiB.
    fn size(&mut self, key: &'static str, default: &str) -> Result<(String, i64), ConfigError> {
        let value = self.take(key).unwrap_or(default);
        let mb =
            parse_size_mb(value).map_err(|_| self.invalid(key, value, EXPECTED_SIZE.to_owned()))?;
        Ok((value.to_owned(), mb))
    }

    fn ip(&mut self, key: &'static str, default: IpAddr) -> Result<IpAddr, ConfigError> {
        match self.take(key) {
            None => Ok(default),
            Some(value) => py_strip(value)
                .parse()
                .map_err(|_| self.invalid(key, value, "an IP address".to_owned())),
        }
    }

    /// A host to connect to: an IP address or a DNS name (letters, digits, `-`, `.`,
    /// `_`), so that a typo cannot smuggle a port or a path in.
    fn host(&mut self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let value = self.take(key).unwrap_or(default);
        let host = py_strip(value);
        let is_ip = host.parse::<IpAddr>().is_ok();
        let is_name = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if is_ip || is_name {
            Ok(host.to_owned())
        } else {
            Err(self.invalid(key, value, "an IP address or a host name".to_owned()))
        }
    }

    /// An empty path would silently mean "the current directory", so it is refused.
    fn path(&mut self, key: &'static str, default: &str) -> Result<PathBuf, ConfigError> {
        let value = self.take(key).unwrap_or(default);
        match py_strip(value) {
            "" => Err(self.invalid(key, value, "a non-empty path".to_owned())),
            stripped => Ok(PathBuf::from(stripped)),
        }
    }

    /// An `http://` or `https://` URL; anything else could never be posted to.
    fn url(&mut self, key: &'static str, default: &str) -> Result<String, ConfigError> {
        let value = self.take(key).unwrap_or(default);
        match py_strip(value) {
            url if url.len() > "https://".len()
                && (url.starts_with("https://") || url.starts_with("http://")) =>
            {
                Ok(url.to_owned())
            }
            _ => Err(self.invalid(key, value, "an https:// URL".to_owned())),
        }
    }

    fn unused(&self) -> Vec<String> {
        self.entries
            .iter()
            .zip(&self.used)
            .filter(|(_, used)| !**used)
            .map(|(entry, _)| entry.key.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests;
