//! doveauth's dict handler: maps passdb/userdb lookups and the userdb iteration onto the
//! [`Authenticator`], running its blocking work on tokio's blocking pool.

use std::sync::Arc;

use chatmail_dict::{Handler, HandlerError, IterateRequest, IterateRow, LookupReply};
use tokio::sync::mpsc;

use crate::auth::Authenticator;
use crate::json::user_record_json;
use crate::key::{AuthKey, parse_key};

/// The path Dovecot iterates for `doveadm user '*'` (`iterate_prefix = userdb/`).
pub const USERDB_ITERATE_PATH: &str = "shared/userdb/";

/// Rows buffered between the directory walk and the socket during an iteration.
const ITERATE_CHANNEL_ROWS: usize = 256;

#[derive(Debug, Clone)]
pub struct AuthHandler {
    auth: Arc<Authenticator>,
}

impl AuthHandler {
    pub fn new(auth: Arc<Authenticator>) -> Self {
        AuthHandler { auth }
    }

    /// Answers a lookup of an existing account without creating anything, or `None` when
    /// the full path ([`Self::lookup_blocking`]) must decide.
    pub fn lookup_existing(
        auth: &Authenticator,
        key: &str,
    ) -> Result<Option<LookupReply>, HandlerError> {
        let user = match parse_key(key) {
            Ok(AuthKey::Userdb { user } | AuthKey::Passdb { user, .. }) => user,
            _ => return Ok(None),
        };
        match auth.existing(&user) {
            Ok(Some(record)) => Ok(Some(LookupReply::Found(user_record_json(&record)))),
            Ok(None) => Ok(None),
            Err(err) => Err(HandlerError::new(err.to_string())),
        }
    }

    /// Answers one lookup key. Blocking.
    pub fn lookup_blocking(auth: &Authenticator, key: &str) -> Result<LookupReply, HandlerError> {
        let found = match parse_key(key) {
            Ok(AuthKey::Userdb { user }) => auth.userdb(&user),
            Ok(AuthKey::Passdb { password, user }) => auth.passdb(&user, &password),
            Ok(AuthKey::Unsupported) => return Ok(LookupReply::Failed(String::new())),
            Err(err) => {
                tracing::warn!("malformed auth key {:?}: {err}", printable_key(key));
                return Ok(LookupReply::Failed(String::new()));
            }
        };
        match found {
            Ok(Some(record)) => Ok(LookupReply::Found(user_record_json(&record))),
            Ok(None) => Ok(LookupReply::NotFound),
            Err(err) => Err(HandlerError::new(err.to_string())),
        }
    }
}

/// A key for the log without the password that passdb keys carry.
fn printable_key(key: &str) -> String {
    match key.strip_prefix("shared/passdb/") {
        Some(_) => "shared/passdb/<redacted>".to_owned(),
        None => key.chars().take(200).collect(),
    }
}

impl Handler for AuthHandler {
    async fn lookup(
        &self,
        key: String,
        _user: Option<String>,
    ) -> Result<LookupReply, HandlerError> {
        // Existing accounts, the case of nearly every lookup, are answered right here: one
        // open and read of a ~120-byte file that Dovecot's steady logins keep in the page
        // cache costs less than the hand-over to the blocking pool would. Everything that
        // may wait (the creation lock, hashing, the system limits) goes to that pool.
        if let Some(reply) = Self::lookup_existing(&self.auth, &key)? {
            return Ok(reply);
        }
        let auth = self.auth.clone();
        tokio::task::spawn_blocking(move || Self::lookup_blocking(&auth, &key))
            .await
            .map_err(|err| HandlerError::new(format!("lookup task failed: {err}")))?
    }

    async fn iterate(
        &self,
        request: IterateRequest,
    ) -> Result<Option<mpsc::Receiver<IterateRow>>, HandlerError> {
        if request.path != USERDB_ITERATE_PATH {
            tracing::warn!("iterate of unsupported path {:?}", request.path);
            return Ok(None);
        }
        let auth = self.auth.clone();
        let (tx, rx) = mpsc::channel(ITERATE_CHANNEL_ROWS);
        tokio::task::spawn_blocking(move || {
            let addresses = match auth.mailboxes().addresses() {
                Ok(addresses) => addresses,
                Err(err) => {
                    tracing::error!("cannot list accounts: {err}");
                    return;
                }
            };
            for addr in addresses {
                // A closed channel means the client went away or the limit was reached.
                if tx
                    .blocking_send((format!("{USERDB_ITERATE_PATH}{addr}"), String::new()))
                    .is_err()
                {
                    break;
                }
            }
        });
        Ok(Some(rx))
    }
}
