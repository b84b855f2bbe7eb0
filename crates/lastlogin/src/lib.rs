//! lastlogin: Dovecot's `last_login` plugin dict for a chatmail relay.
//!
//! After every IMAP login Dovecot commits `shared/last-login/<user>` = Unix seconds.
//! We keep only the day: the password file's mtime becomes 00:00 UTC of that day, written
//! at most once a day per user, so the exact login time is never stored. `chatmail-expire`
//! reads the mtime to delete accounts unused for `delete_inactive_users_after` days.

#![cfg_attr(test, allow(clippy::indexing_slicing))]

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use chatmail_config::Config;
use chatmail_dict::{Handler, HandlerError, Limits, Transaction};
use chatmail_mailbox::Mailboxes;
use thiserror::Error;
use tokio::net::UnixListener;

/// What a SET key and value mean to lastlogin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastLoginSet {
    /// `shared/last-login/<addr>` with a decimal timestamp.
    Login { addr: String, timestamp: i64 },
    /// Any other key: "not handled", the commit answers `F`.
    NotOurs,
}

/// A SET that is ours but cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SetError {
    #[error("last-login key {0:?} has no address")]
    NoAddress(String),
    #[error("last-login value {0:?} is not a decimal timestamp")]
    BadTimestamp(String),
}

/// Parses a SET (pure). The address is the key's third `/` component, not the
/// transaction's user, as upstream does.
pub fn parse_set(key: &str, value: &str) -> Result<LastLoginSet, SetError> {
    let mut components = key.split('/');
    if components.next() != Some("shared") || components.next() != Some("last-login") {
        return Ok(LastLoginSet::NotOurs);
    }
    let addr = components
        .next()
        .filter(|addr| !addr.is_empty())
        .ok_or_else(|| SetError::NoAddress(key.to_owned()))?;
    if components.next().is_some() {
        // An address cannot contain '/': such a key names no mailbox.
        return Err(SetError::NoAddress(key.to_owned()));
    }
    let timestamp = value
        .trim()
        .parse()
        .map_err(|_| SetError::BadTimestamp(value.to_owned()))?;
    Ok(LastLoginSet::Login {
        addr: addr.to_owned(),
        timestamp,
    })
}

/// Records a login in `mailboxes`. Blocking (one stat, maybe one utime).
pub fn record_login(mailboxes: &Mailboxes, addr: &str, timestamp: i64) -> Result<(), HandlerError> {
    let user = mailboxes
        .user(addr)
        .map_err(|err| HandlerError::new(format!("last-login for invalid address: {err}")))?;
    match user.set_last_login(timestamp) {
        Ok(_) => Ok(()),
        Err(err) if err.is_not_found() => {
            // Upstream logs this and still answers O: a login of an account whose files
            // are gone is not Dovecot's failure.
            tracing::error!("Can not get last login timestamp for {addr}");
            Ok(())
        }
        Err(err) => Err(HandlerError::new(err.to_string())),
    }
}

/// The dict handler: SETs of `shared/last-login/<addr>`; lookups answer `N`, iterations
/// are empty (the protocol defaults).
#[derive(Debug, Clone)]
pub struct LastLoginHandler {
    mailboxes: Arc<Mailboxes>,
}

impl LastLoginHandler {
    pub fn new(mailboxes: Mailboxes) -> Self {
        LastLoginHandler {
            mailboxes: Arc::new(mailboxes),
        }
    }
}

impl Handler for LastLoginHandler {
    async fn set(
        &self,
        _transaction: &Transaction,
        key: String,
        value: String,
    ) -> Result<bool, HandlerError> {
        let (addr, timestamp) = match parse_set(&key, &value) {
            Ok(LastLoginSet::Login { addr, timestamp }) => (addr, timestamp),
            Ok(LastLoginSet::NotOurs) => return Ok(false),
            Err(err) => return Err(HandlerError::new(err.to_string())),
        };
        let mailboxes = self.mailboxes.clone();
        tokio::task::spawn_blocking(move || record_login(&mailboxes, &addr, timestamp))
            .await
            .map_err(|err| HandlerError::new(format!("last-login task failed: {err}")))??;
        Ok(true)
    }
}

/// Runs lastlogin as `lastlogin SOCKET INI` does: listen, report readiness, serve until
/// SIGTERM.
pub fn run_daemon(socket: &Path, config: &Config) -> Result<(), chatmail_dict::StartError> {
    let handler = LastLoginHandler::new(Mailboxes::new(config.mailboxes_dir.clone()));
    chatmail_dict::run_daemon("lastlogin", socket, handler, Limits::default(), 32)
}

/// Serves the last-login dict on `listener` until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    mailboxes: Mailboxes,
    shutdown: impl Future<Output = ()>,
) {
    let handler = Arc::new(LastLoginHandler::new(mailboxes));
    chatmail_dict::serve(listener, handler, Limits::default(), shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_keys() {
        assert_eq!(
            parse_set("shared/last-login/a@x.org", "100000"),
            Ok(LastLoginSet::Login {
                addr: "a@x.org".into(),
                timestamp: 100_000
            })
        );
        assert_eq!(
            parse_set("shared/other/a@x.org", "1"),
            Ok(LastLoginSet::NotOurs)
        );
        assert_eq!(
            parse_set("priv/last-login/a@x.org", "1"),
            Ok(LastLoginSet::NotOurs)
        );
        assert!(matches!(
            parse_set("shared/last-login", "1"),
            Err(SetError::NoAddress(_))
        ));
        assert!(matches!(
            parse_set("shared/last-login/", "1"),
            Err(SetError::NoAddress(_))
        ));
        assert!(matches!(
            parse_set("shared/last-login/../../etc@x", "1"),
            Err(SetError::NoAddress(_))
        ));
        assert!(matches!(
            parse_set("shared/last-login/a@x.org", "soon"),
            Err(SetError::BadTimestamp(_))
        ));
    }

    #[test]
    fn record_login_sets_the_day_and_tolerates_missing_accounts() {
        let dir = tempfile::tempdir().unwrap();
        let boxes = Mailboxes::new(dir.path());
        record_login(&boxes, "gone@x.org", 100_000).unwrap();
        assert!(!dir.path().join("gone@x.org").exists(), "nothing created");
        let user = boxes.user("a@x.org").unwrap();
        user.set_password("{PLAIN}x").unwrap();
        record_login(&boxes, "a@x.org", 200_000).unwrap();
        assert_eq!(user.last_login().unwrap(), Some(172_800));
        assert!(record_login(&boxes, "a\0b@x.org", 1).is_err());
    }
}
