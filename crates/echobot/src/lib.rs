//! A Delta Chat compatible echo bot for a chatmail relay, without Delta Chat core.
//!
//! Pure parts, without I/O: the key and account ([`key`]), Autocrypt headers
//! ([`autocrypt`]), OpenPGP ([`pgp`], with AES-OCB in [`ocb`]), message parsing, the ignore
//! rules and building ([`message`]), SecureJoin as inviter ([`securejoin`]), what to answer
//! to one message ([`process`]) and the invite link and QR code ([`invite`]). On top:
//! the state files ([`state`]), TLS ([`tls`]), an SMTP client ([`smtp`]) and the IMAP
//! service loop ([`service`]).

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::indexing_slicing, clippy::string_slice))]

pub mod autocrypt;
pub mod error;
pub mod invite;
pub mod key;
pub mod message;
pub mod ocb;
pub mod pgp;
pub mod process;
pub mod securejoin;
pub mod service;
pub mod smtp;
pub mod state;
pub mod tls;

pub use error::{Error, Result};

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// Whether the invite link carries `v=3`, which makes current Delta Chat clients start
/// SecureJoin with the password-encrypted `vc-request-pubkey` instead of the unencrypted
/// `vc-request`; the `i=` parameter stays, so clients without v3 use the legacy start.
/// Both starts were run with Delta Chat core 2.65 against the loopback relay.
pub const ANNOUNCE_SECUREJOIN_V3: bool = true;

/// The bot's display name in invites.
pub const DISPLAY_NAME: &str = "Echo Bot";

/// Everything the bot loads or creates at start.
#[derive(Debug, Clone)]
pub struct Bot {
    /// Its account on the relay.
    pub credentials: key::Credentials,
    /// Its OpenPGP key.
    pub key: key::BotKey,
    /// Its SecureJoin tokens.
    pub tokens: securejoin::Tokens,
    /// The invite link, as written to `invite-link.txt`.
    pub invite_link: String,
}

/// Loads or creates the account, key and SecureJoin tokens in `state_dir`, and writes the
/// invite link and QR code there (atomically, at every start).
pub fn start(config: &chatmail_config::Config, state_dir: &Path) -> Result<Bot> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let credentials = key::Credentials::load_or_generate(state_dir, config)?;
    let key = key::BotKey::load_or_generate(state_dir, &credentials.addr)?;
    let tokens = securejoin::Tokens::load_or_generate(state_dir, now)?;
    let fingerprint = key.fingerprint();
    let auth = tokens
        .current_auth()
        .map(|a| a.token.clone())
        .unwrap_or_default();
    let invite_link = invite::Invite {
        fingerprint: &fingerprint,
        invitenumber: &tokens.invitenumber,
        auth: &auth,
        addr: &credentials.addr,
        name: DISPLAY_NAME,
        v3: ANNOUNCE_SECUREJOIN_V3,
    }
    .link();
    invite::write_invite(state_dir, &invite_link)?;
    Ok(Bot {
        credentials,
        key,
        tokens,
        invite_link,
    })
}

/// Runs the bot until SIGTERM or SIGINT: [`start`], log the invite, then the service
/// loop, which waits and retries while the relay is not reachable. `imap` and `smtp`
/// replace `mail_domain` ports 993 and 465 (both implicit TLS) when given.
pub fn run(
    config: &chatmail_config::Config,
    state_dir: &Path,
    imap: Option<service::Endpoint>,
    smtp: Option<service::Endpoint>,
) -> anyhow::Result<()> {
    let bot = start(config, state_dir)?;
    tracing::info!(
        "account {} key {}",
        bot.credentials.addr,
        bot.key.fingerprint()
    );
    tracing::info!("invite link: {}", bot.invite_link);
    let relay = service::Relay::from_config(config, imap, smtp)?;
    tracing::info!("IMAP {}, SMTP {}", relay.imap, relay.smtp);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = chatmail_daemon::shutdown_signal()?;
        service::serve(&bot, &relay, state_dir, shutdown).await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_reuses_account_key_and_invite() {
        let dir = tempfile::tempdir().unwrap();
        let config = chatmail_config::Config::parse(
            "[params]\nmail_domain = example.org\n",
            Path::new("chatmail.ini"),
        )
        .unwrap();
        let first = start(&config, dir.path()).unwrap();
        let second = start(&config, dir.path()).unwrap();
        assert_eq!(first.credentials, second.credentials);
        assert_eq!(first.key.fingerprint(), second.key.fingerprint());
        assert_eq!(first.invite_link, second.invite_link);
        let written = std::fs::read_to_string(dir.path().join(invite::LINK_FILE)).unwrap();
        assert_eq!(written.trim_end(), first.invite_link);
        assert!(written.contains(&first.key.fingerprint()));
        assert!(dir.path().join(invite::QR_FILE).exists());
    }
}
