//! The service loop: IMAP login (the first one creates the account), fetch new mail by
//! UID, answer it over SMTP, mark it deleted and expunge, IDLE; reconnect with back-off.
//!
//! At most once: the UID of a message is persisted as handled before its reply is sent, so
//! that no restart answers a message twice (a crash between the two loses that reply).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Bot;
use crate::error::{Error, Result};
use crate::process::{Outcome, PendingCaptions, Reply, process};
use crate::smtp;
use crate::state::{read_optional, write_private};
use crate::tls;

/// File name of the IMAP position in the state dir.
pub const IMAP_STATE_FILE: &str = "imap-state";

/// IDLE is re-issued after this long (servers may drop IDLE after 30 minutes).
const IDLE_REISSUE: Duration = Duration::from_secs(25 * 60);
/// A session logs out and in again after this long, so that the relay's last-login
/// tracking sees the account in use.
const SESSION_MAX: Duration = Duration::from_secs(12 * 3600);
/// First and longest wait between reconnection attempts.
const BACKOFF_MIN: Duration = Duration::from_secs(2);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How often one reply is tried when the relay answers with a transient error.
const SEND_ATTEMPTS: u32 = 5;

/// One server of the relay: host name (or IP address) and port, reached with implicit TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or IP address (without brackets), also the TLS server name.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Endpoint {
    /// Parses `HOST:PORT`, `[IPV6]:PORT` included: the form of `--imap-server` and
    /// `--smtp-server`.
    pub fn parse(text: &str) -> std::result::Result<Endpoint, String> {
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("{text:?}: expected HOST:PORT"))?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner
                .strip_suffix(']')
                .filter(|inner| inner.parse::<std::net::Ipv6Addr>().is_ok())
                .ok_or_else(|| format!("{text:?}: expected [IPV6]:PORT"))?,
            None if host.contains(':') => {
                return Err(format!(
                    "{text:?}: an IPv6 address needs brackets: [IPV6]:PORT"
                ));
            }
            None => host,
        };
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(format!(
                "{text:?}: expected a host name or IP address before ':'"
            ));
        }
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|&port| port != 0)
            .ok_or_else(|| format!("{text:?}: the port must be a number from 1 to 65535"))?;
        Ok(Endpoint {
            host: host.to_owned(),
            port,
        })
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Where and how to reach the relay.
#[derive(Clone)]
pub struct Relay {
    /// The IMAP server (implicit TLS): `mail_domain` port 993 unless overridden.
    pub imap: Endpoint,
    /// The SMTP submission server (implicit TLS): `mail_domain` port 465 unless overridden.
    pub smtp: Endpoint,
    /// TLS configuration (self-signed relays accepted only where chatmail.ini says so).
    pub tls: Arc<ClientConfig>,
    /// The relay's sending rate limit, which the bot keeps to.
    pub send_per_minute: u32,
    /// The relay's burst size for sending.
    pub send_burst: u32,
}

impl Relay {
    /// The relay of `config`: `mail_domain`, ports 993 and 465, or the servers given
    /// instead (`--imap-server`, `--smtp-server`). The certificate check follows
    /// `tls_cert_mode` either way.
    pub fn from_config(
        config: &chatmail_config::Config,
        imap: Option<Endpoint>,
        smtp: Option<Endpoint>,
    ) -> Result<Self> {
        let self_signed = config.tls_cert_mode == chatmail_config::TlsCertMode::SelfSigned;
        let on_domain = |port| Endpoint {
            host: config.mail_domain_bare.clone(),
            port,
        };
        Ok(Relay {
            imap: imap.unwrap_or_else(|| on_domain(993)),
            smtp: smtp.unwrap_or_else(|| on_domain(465)),
            tls: tls::client_config(self_signed)?,
            send_per_minute: config.max_user_send_per_minute,
            send_burst: config.max_user_send_burst_size,
        })
    }
}

/// Where the bot is in the INBOX.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ImapState {
    /// UIDVALIDITY of the INBOX the UID belongs to.
    pub uid_validity: u32,
    /// The highest UID handled (its reply, if any, sent or given up).
    pub last_uid: u32,
}

impl ImapState {
    fn path(dir: &Path) -> PathBuf {
        dir.join(IMAP_STATE_FILE)
    }

    /// Reads the state, the default (nothing handled) if there is none.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = Self::path(dir);
        let Some(bytes) = read_optional(&path)? else {
            return Ok(ImapState::default());
        };
        let text = String::from_utf8_lossy(&bytes);
        let mut state = ImapState::default();
        let mut seen = 0;
        for line in text.lines() {
            let parsed = match line.split_once('=') {
                Some(("uidvalidity", v)) => v.trim().parse().map(|v| state.uid_validity = v),
                Some(("last_uid", v)) => v.trim().parse().map(|v| state.last_uid = v),
                _ => continue,
            };
            if parsed.is_err() {
                break;
            }
            seen += 1;
        }
        if seen != 2 {
            return Err(Error::BadStateFile {
                path,
                reason: "expected uidvalidity= and last_uid= lines".into(),
            });
        }
        Ok(state)
    }

    /// Persists the state atomically.
    pub fn save(&self, dir: &Path) -> Result<()> {
        write_private(
            &Self::path(dir),
            format!(
                "uidvalidity={}\nlast_uid={}\n",
                self.uid_validity, self.last_uid
            )
            .as_bytes(),
        )
    }
}

/// Keeps the bot's sending below the relay's limit (a token bucket like the relay's
/// GCRA, at 90 % of its rate so that clock differences never hit the limit).
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Sends allowed at once.
    burst: f64,
    /// Refill per second.
    rate: f64,
    /// Tokens available at `at`; negative when sends are reserved ahead.
    tokens: f64,
    /// When `tokens` was computed.
    at: Instant,
}

impl Pacer {
    /// A full bucket at `now`.
    pub fn new(per_minute: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Pacer {
            burst,
            rate: f64::from(per_minute.max(1)) * 0.9 / 60.0,
            tokens: burst,
            at: now,
        }
    }

    /// Reserves one send at `now`; returns how long to wait before it.
    pub fn reserve(&mut self, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

type ImapSession = async_imap::Session<TlsStream<TcpStream>>;

fn imap_err(what: &str) -> impl FnOnce(async_imap::error::Error) -> Error + '_ {
    move |err| Error::Imap(format!("{what}: {err}"))
}

/// Serves until `shutdown` completes; connection failures are retried with back-off.
pub async fn serve(
    bot: &Bot,
    relay: &Relay,
    state_dir: &Path,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let mut pacer = Pacer::new(relay.send_per_minute, relay.send_burst, Instant::now());
    let mut captions = PendingCaptions::default();
    let run = async {
        let mut backoff = BACKOFF_MIN;
        loop {
            let started = Instant::now();
            match session(bot, relay, state_dir, &mut pacer, &mut captions).await {
                Ok(()) => {
                    tracing::info!(
                        "logging in again (the relay expires accounts that never log in)"
                    );
                    backoff = BACKOFF_MIN;
                    continue;
                }
                Err(err) => {
                    if started.elapsed() > BACKOFF_MAX {
                        backoff = BACKOFF_MIN;
                    }
                    tracing::warn!("{err}; reconnecting in {} s", backoff.as_secs());
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    };
    tokio::select! {
        () = run => {}
        () = shutdown => {}
    }
}

/// One IMAP session. Ends with `Ok` after [`SESSION_MAX`] (to log in again), with the
/// error otherwise.
async fn session(
    bot: &Bot,
    relay: &Relay,
    state_dir: &Path,
    pacer: &mut Pacer,
    captions: &mut PendingCaptions,
) -> Result<()> {
    let started = Instant::now();
    let stream = tls::connect(&relay.tls, &relay.imap.host, relay.imap.port).await?;
    let mut client = async_imap::Client::new(stream);
    client
        .read_response()
        .await
        .ok_or_else(|| Error::Imap("no greeting".into()))?
        .map_err(|err| Error::Imap(format!("greeting: {err}")))?;
    let mut imap = client
        .login(&bot.credentials.addr, &bot.credentials.password)
        .await
        .map_err(|(err, _)| Error::Imap(format!("LOGIN: {err}")))?;
    let mailbox = imap.select("INBOX").await.map_err(imap_err("SELECT"))?;
    tracing::info!("logged in as {}", bot.credentials.addr);
    let mut state = ImapState::load(state_dir)?;
    let uid_validity = mailbox.uid_validity.unwrap_or(0);
    if state.uid_validity != uid_validity {
        if state.uid_validity != 0 {
            tracing::warn!("INBOX UIDVALIDITY changed; starting from its first message");
        }
        state = ImapState {
            uid_validity,
            last_uid: 0,
        };
        state.save(state_dir)?;
    }
    loop {
        handle_new_mail(
            &mut imap, bot, relay, state_dir, &mut state, pacer, captions,
        )
        .await?;
        if announced_new_mail(&imap) {
            // Mail arrived while the commands above ran; IDLE would not report it again.
            continue;
        }
        let mut idle = imap.idle();
        idle.init().await.map_err(imap_err("IDLE"))?;
        let (wait, _stop) = idle.wait_with_timeout(IDLE_REISSUE);
        wait.await.map_err(imap_err("IDLE"))?;
        imap = idle.done().await.map_err(imap_err("DONE"))?;
        if started.elapsed() > SESSION_MAX {
            let _ = imap.logout().await;
            return Ok(());
        }
    }
}

/// Drains what the server reported besides command results; true if it announced mail.
fn announced_new_mail(imap: &ImapSession) -> bool {
    let mut new = false;
    while let Ok(response) = imap.unsolicited_responses.try_recv() {
        // Not RECENT: Dovecot may report a changed count after our own EXPUNGE.
        if matches!(response, async_imap::types::UnsolicitedResponse::Exists(n) if n > 0) {
            new = true;
        }
    }
    new
}

async fn handle_new_mail(
    imap: &mut ImapSession,
    bot: &Bot,
    relay: &Relay,
    state_dir: &Path,
    state: &mut ImapState,
    pacer: &mut Pacer,
    captions: &mut PendingCaptions,
) -> Result<()> {
    let mut uids: Vec<u32> = imap
        .uid_search("ALL")
        .await
        .map_err(imap_err("UID SEARCH"))?
        .into_iter()
        .collect();
    uids.sort_unstable();
    let mut smtp_client = None;
    let mut any = false;
    for uid in uids {
        any = true;
        if uid <= state.last_uid {
            continue;
        }
        let raw = fetch_body(imap, uid).await?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // A reply that cannot be built is logged and the message counts as handled:
        // failing the session would fetch the same message again, forever.
        let (outcome, reply) = match raw.map(|raw| process(bot, &raw, now, captions)) {
            Some(Ok(result)) => result,
            Some(Err(err)) => (
                Outcome::Unreadable(format!("no reply could be built: {err}")),
                None,
            ),
            None => (Outcome::Unreadable("no body".into()), None),
        };
        log_outcome(uid, &outcome);
        state.last_uid = uid;
        state.save(state_dir)?;
        if let Some(reply) = reply {
            send_reply(&mut smtp_client, bot, relay, pacer, &reply).await;
        }
    }
    if let Some(client) = smtp_client {
        client.quit().await;
    }
    if any && state.last_uid > 0 {
        let mut stored = imap
            .uid_store(format!("1:{}", state.last_uid), "+FLAGS (\\Seen \\Deleted)")
            .await
            .map_err(imap_err("UID STORE"))?;
        while let Some(item) = stored.next().await {
            item.map_err(imap_err("UID STORE"))?;
        }
        drop(stored);
        let expunged = imap.expunge().await.map_err(imap_err("EXPUNGE"))?;
        let results: Vec<_> = expunged.collect().await;
        for result in results {
            result.map_err(imap_err("EXPUNGE"))?;
        }
    }
    Ok(())
}

async fn fetch_body(imap: &mut ImapSession, uid: u32) -> Result<Option<Vec<u8>>> {
    let mut fetches = imap
        .uid_fetch(uid.to_string(), "BODY.PEEK[]")
        .await
        .map_err(imap_err("UID FETCH"))?;
    let mut body = None;
    while let Some(fetch) = fetches.next().await {
        let fetch = fetch.map_err(imap_err("UID FETCH"))?;
        if fetch.uid == Some(uid) || body.is_none() {
            if let Some(bytes) = fetch.body() {
                body = Some(bytes.to_vec());
            }
        }
    }
    Ok(body)
}

fn log_outcome(uid: u32, outcome: &Outcome) {
    match outcome {
        Outcome::Echoed => tracing::info!("message {uid}: echoed"),
        Outcome::Helped => tracing::info!("message {uid}: /help answered"),
        Outcome::SecureJoin(step) => tracing::info!("message {uid}: SecureJoin, sent {step}"),
        Outcome::SecureJoinIgnored(why) => {
            tracing::info!("message {uid}: SecureJoin step ignored: {why}")
        }
        Outcome::Ignored(why) => tracing::info!("message {uid}: ignored ({why:?})"),
        Outcome::Unreadable(why) => tracing::warn!("message {uid}: unreadable: {why}"),
    }
}

/// Sends one reply, paced; transient refusals and broken connections are retried a few
/// times, then the reply is given up (logged).
async fn send_reply(
    client: &mut Option<smtp::Client<TlsStream<TcpStream>>>,
    bot: &Bot,
    relay: &Relay,
    pacer: &mut Pacer,
    reply: &Reply,
) {
    let wait = pacer.reserve(Instant::now());
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let mut delay = Duration::from_secs(5);
    for attempt in 1..=SEND_ATTEMPTS {
        let result = async {
            if client.is_none() {
                let stream = tls::connect(&relay.tls, &relay.smtp.host, relay.smtp.port).await?;
                *client = Some(
                    smtp::Client::login(stream, &bot.credentials.addr, &bot.credentials.password)
                        .await?,
                );
            }
            match client.as_mut() {
                Some(c) => {
                    c.send(&bot.credentials.addr, &reply.to, &reply.built.raw)
                        .await
                }
                None => Err(Error::Smtp("not connected".into())),
            }
        }
        .await;
        match result {
            Ok(Ok(())) => return,
            Ok(Err(refused)) if !refused.reply.is_transient() => {
                tracing::warn!(
                    "reply to {} refused at {}: {} {}",
                    reply.to,
                    refused.command,
                    refused.reply.code,
                    refused.reply.lines.join(" ")
                );
                return;
            }
            Ok(Err(refused)) => tracing::info!(
                "reply to {} deferred ({} {}), attempt {attempt}",
                reply.to,
                refused.reply.code,
                refused.reply.lines.join(" ")
            ),
            Err(err) => {
                *client = None;
                tracing::info!("reply to {}: {err}, attempt {attempt}", reply.to);
            }
        }
        tokio::time::sleep(delay).await;
        delay *= 2;
    }
    tracing::warn!(
        "reply to {} given up after {SEND_ATTEMPTS} attempts",
        reply.to
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pacer_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut pacer = Pacer::new(60, 10, start);
        for _ in 0..10 {
            assert_eq!(pacer.reserve(start), Duration::ZERO);
        }
        // 54 per minute: the 11th waits 1/0.9 s, the 12th twice that.
        let w11 = pacer.reserve(start).as_secs_f64();
        let w12 = pacer.reserve(start).as_secs_f64();
        assert!((w11 - 1.0 / 0.9).abs() < 1e-6, "{w11}");
        assert!((w12 - 2.0 / 0.9).abs() < 1e-6, "{w12}");
        // After a long pause the bucket is full again, not fuller.
        let later = start + Duration::from_secs(3600);
        for _ in 0..10 {
            assert_eq!(pacer.reserve(later), Duration::ZERO);
        }
        assert!(pacer.reserve(later) > Duration::ZERO);
    }

    #[test]
    fn endpoints_parse_host_port() {
        let parse = |text| Endpoint::parse(text).map(|e| (e.host, e.port));
        assert_eq!(parse("127.0.0.1:10993"), Ok(("127.0.0.1".into(), 10993)));
        assert_eq!(
            parse("imap.example.org:993"),
            Ok(("imap.example.org".into(), 993))
        );
        assert_eq!(parse("[::1]:465"), Ok(("::1".into(), 465)));
        assert_eq!(
            parse("_chat.localhost:1"),
            Ok(("_chat.localhost".into(), 1))
        );
        for bad in [
            "",
            "example.org",
            "example.org:",
            ":993",
            "example.org:0",
            "example.org:65536",
            "example.org:99x",
            "::1:465",
            "[::1:465",
            "[example.org]:465",
            "a b:465",
        ] {
            assert!(Endpoint::parse(bad).is_err(), "{bad:?} accepted");
        }
        for text in ["127.0.0.1:10993", "[::1]:465", "example.org:993"] {
            assert_eq!(Endpoint::parse(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn relay_defaults_to_the_mail_domain_on_993_and_465() {
        let config = chatmail_config::Config::parse(
            "[params]\nmail_domain = _chat.localhost\n",
            Path::new("chatmail.ini"),
        )
        .unwrap();
        let relay = Relay::from_config(&config, None, None).unwrap();
        assert_eq!(relay.imap.to_string(), "_chat.localhost:993");
        assert_eq!(relay.smtp.to_string(), "_chat.localhost:465");
        let imap = Endpoint::parse("127.0.0.1:10993").unwrap();
        let smtp = Endpoint::parse("[::1]:10465").unwrap();
        let relay = Relay::from_config(&config, Some(imap.clone()), Some(smtp.clone())).unwrap();
        assert_eq!((relay.imap, relay.smtp), (imap, smtp));
    }

    #[test]
    fn imap_state_round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ImapState::load(dir.path()).unwrap(), ImapState::default());
        let state = ImapState {
            uid_validity: 1_700_000_000,
            last_uid: 42,
        };
        state.save(dir.path()).unwrap();
        assert_eq!(ImapState::load(dir.path()).unwrap(), state);
        std::fs::write(dir.path().join(IMAP_STATE_FILE), "last_uid=x\n").unwrap();
        assert!(ImapState::load(dir.path()).is_err());
    }
}
