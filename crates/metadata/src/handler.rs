//! The dict handler: lookups and transactions of every key of the metadata dict.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chatmail_config::Config;
use chatmail_dict::{Handler, HandlerError, LookupReply, Transaction};

use crate::appversions::AppVersions;
use crate::clock::Clock;
use crate::keys::{self, LookupKey, SetKey};
use crate::notifier::Notifier;
use crate::tokens::TokenStore;
use crate::turn;

/// What the handler answers with, taken from chatmail.ini once at start.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Host part of the TURN reply: `mail_domain` as used in addresses (`[1.2.3.4]` on an
    /// IPv4 relay), as upstream does.
    pub turn_host: String,
    /// The chatmail-turn socket.
    pub turn_socket_path: PathBuf,
    /// How long a TURN lookup may take.
    pub turn_timeout: Duration,
    /// The iroh relay URL; empty means the lookup answers `N`.
    pub iroh_relay: String,
}

impl Settings {
    pub fn from_config(config: &Config) -> Self {
        Settings {
            turn_host: config.mail_domain.clone(),
            turn_socket_path: config.turn_socket_path.clone(),
            turn_timeout: turn::TURN_TIMEOUT,
            iroh_relay: config.iroh_relay.clone(),
        }
    }
}

/// The metadata dict.
pub struct MetadataHandler {
    /// Answers from chatmail.ini.
    settings: Settings,
    /// Device tokens on disk.
    tokens: TokenStore,
    /// Queues a push per token on `messagenew`.
    notifier: Notifier,
    /// Time of token SETs and expiry (the notifier's clock).
    clock: Arc<dyn Clock>,
    /// The `appversions` value.
    appversions: AppVersions,
}

impl MetadataHandler {
    pub fn new(
        settings: Settings,
        tokens: TokenStore,
        notifier: Notifier,
        clock: Arc<dyn Clock>,
        appversions: AppVersions,
    ) -> Self {
        MetadataHandler {
            settings,
            tokens,
            notifier,
            clock,
            appversions,
        }
    }

    async fn device_tokens(&self, addr: &str) -> Result<String, HandlerError> {
        let valid = self
            .tokens
            .valid(addr, self.clock.now())
            .await
            .map_err(|err| HandlerError::new(err.to_string()))?;
        Ok(valid.join(" "))
    }
}

impl Handler for MetadataHandler {
    async fn lookup(&self, key: String, user: Option<String>) -> Result<LookupReply, HandlerError> {
        let reply = match keys::parse_lookup(&key) {
            LookupKey::DeviceToken => {
                // Upstream closes the connection here; F fails just this lookup.
                let addr = user.ok_or_else(|| {
                    HandlerError::new(format!("lookup of {key:?} without a user"))
                })?;
                LookupReply::Found(self.device_tokens(&addr).await?)
            }
            LookupKey::IrohRelay if !self.settings.iroh_relay.is_empty() => {
                LookupReply::Found(self.settings.iroh_relay.clone())
            }
            LookupKey::Turn => {
                let path = &self.settings.turn_socket_path;
                match turn::credentials(path, self.settings.turn_timeout).await {
                    Ok(credentials) => {
                        LookupReply::Found(keys::turn_value(&self.settings.turn_host, &credentials))
                    }
                    Err(err) => {
                        tracing::error!("failed to get TURN credentials: {err}");
                        LookupReply::NotFound
                    }
                }
            }
            LookupKey::MaxSmtpRecipients => {
                LookupReply::Found(keys::MAX_SMTP_RECIPIENTS.to_owned())
            }
            LookupKey::AppVersions => match self.appversions.value().await {
                Some(value) => LookupReply::Found(value),
                None => LookupReply::NotFound,
            },
            LookupKey::IrohRelay | LookupKey::Other => {
                let mut parts = vec![key.as_str()];
                parts.extend(user.as_deref());
                tracing::warn!("lookup ignored: {}", keys::python_repr_list(&parts));
                LookupReply::NotFound
            }
        };
        Ok(reply)
    }

    async fn set(
        &self,
        transaction: &Transaction,
        key: String,
        value: String,
    ) -> Result<bool, HandlerError> {
        let set = keys::parse_set(&key);
        if set == SetKey::Other {
            return Ok(false);
        }
        let addr = transaction
            .user
            .clone()
            .ok_or_else(|| HandlerError::new(format!("set of {key:?} without a user")))?;
        match set {
            SetKey::DeviceToken => {
                self.tokens
                    .add(&addr, &value, self.clock.now())
                    .await
                    .map_err(|err| HandlerError::new(err.to_string()))?;
            }
            SetKey::MessageNew => {
                self.notifier
                    .new_message_for_addr(addr)
                    .await
                    .map_err(|err| HandlerError::new(err.to_string()))?;
            }
            SetKey::Other => return Ok(false),
        }
        Ok(true)
    }
}
