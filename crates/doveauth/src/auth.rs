//! The account logic behind the passdb and userdb lookups. Synchronous and blocking (file
//! reads, a lock, hashing): the dict handler runs it on tokio's blocking pool, and tests
//! call it directly.

use std::path::PathBuf;
use std::time::Duration;

use chatmail_config::Config;
use chatmail_mailbox::{MailboxError, Mailboxes, UserRecord};
use thiserror::Error;

use crate::hash::hash_password;
use crate::rules::CreationRules;
use crate::syslimits::{self, CachedReadings, SystemLimits};

/// How long a first login waits for a concurrent creation of the same address (upstream:
/// 5 seconds).
pub const CREATION_LOCK_TIMEOUT: Duration = Duration::from_secs(5);

/// Everything doveauth needs from chatmail.ini, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Addresses must end in `@` + this (the `[1.2.3.4]` form for IPv4 relays).
    pub mail_domain: String,
    pub mailboxes_dir: PathBuf,
    pub rules: CreationRules,
    pub limits: SystemLimits,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            mail_domain: config.mail_domain.clone(),
            mailboxes_dir: config.mailboxes_dir.clone(),
            rules: CreationRules {
                nocreate_file: config.nocreate_file.clone(),
                password_min_length: config.password_min_length,
                username_min_length: config.username_min_length,
                username_max_length: config.username_max_length,
            },
            limits: SystemLimits {
                max_load_1m: config.max_load_1m,
                min_available_memory_mb: config.min_available_memory_mb,
                min_free_disk_space_mb: config.min_free_disk_space_mb,
            },
        }
    }
}

/// A failure that is neither "found" nor "not found": Dovecot gets `F` (temporary failure).
#[derive(Debug, Error)]
pub enum AuthError {
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
}

/// Looks up and creates accounts.
#[derive(Debug)]
pub struct Authenticator {
    settings: Settings,
    mailboxes: Mailboxes,
    domain_suffix: String,
    /// System-limit readings, shared by creations within one second.
    readings: CachedReadings,
}

/// How long one reading of the system limits serves further creations.
const READINGS_MAX_AGE: Duration = Duration::from_secs(1);

impl Authenticator {
    pub fn new(settings: Settings) -> Authenticator {
        Authenticator {
            mailboxes: Mailboxes::new(settings.mailboxes_dir.clone()),
            domain_suffix: format!("@{}", settings.mail_domain),
            readings: CachedReadings::new(settings.mailboxes_dir.clone(), READINGS_MAX_AGE),
            settings,
        }
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    pub fn mailboxes(&self) -> &Mailboxes {
        &self.mailboxes
    }

    /// True for addresses of this relay's domain (a case-sensitive suffix test, as
    /// upstream's; Dovecot lower-cases user names before it asks).
    pub fn is_local(&self, addr: &str) -> bool {
        addr.ends_with(&self.domain_suffix)
    }

    /// The record of an existing local account; `None` for anything else (unknown, other
    /// domain, invalid address), without logging: the full lookup decides about those.
    pub fn existing(&self, addr: &str) -> Result<Option<UserRecord>, AuthError> {
        if !self.is_local(addr) {
            return Ok(None);
        }
        match self.mailboxes.user(addr) {
            Ok(user) => Ok(user.record()?),
            Err(_) => Ok(None),
        }
    }

    /// The userdb record of an existing account.
    pub fn userdb(&self, addr: &str) -> Result<Option<UserRecord>, AuthError> {
        if !self.is_local(addr) {
            return Ok(None);
        }
        let user = match self.mailboxes.user(addr) {
            Ok(user) => user,
            Err(err) => {
                tracing::warn!("userdb lookup refused: {err}");
                return Ok(None);
            }
        };
        Ok(user.record()?)
    }

    /// The passdb record: the stored hash of an existing account (Dovecot compares the
    /// password itself), or a new account if `addr` and `password` pass every creation
    /// rule. A wrong password for an existing account never changes its hash.
    pub fn passdb(&self, addr: &str, password: &str) -> Result<Option<UserRecord>, AuthError> {
        if !self.is_local(addr) {
            return Ok(None);
        }
        let user = match self.mailboxes.user(addr) {
            Ok(user) => user,
            Err(err) => {
                tracing::warn!("passdb lookup refused: {err}");
                return Ok(None);
            }
        };
        if let Some(record) = user.record()? {
            return Ok(Some(record));
        }
        if let Err(refusal) = self.settings.rules.check(addr, password) {
            tracing::warn!("{refusal}");
            return Ok(None);
        }
        if password.contains('\0') {
            tracing::warn!("password of {addr} contains NUL; not creating the account");
            return Ok(None);
        }
        let readings = self.readings.get();
        if let Err(refusal) = syslimits::check(&self.settings.limits, &readings) {
            tracing::warn!("registration rejected: {refusal}");
            return Ok(None);
        }
        let _lock = user.lock_for_creation(CREATION_LOCK_TIMEOUT)?;
        if let Some(record) = user.record()? {
            // Another connection, or another doveauth process, created it meanwhile.
            return Ok(Some(record));
        }
        user.set_password(&hash_password(password))?;
        tracing::info!("Created address: {addr}");
        Ok(user.record()?)
    }
}
