//! doveauth: Dovecot's passdb and userdb for a chatmail relay, over the dict protocol.
//!
//! Dovecot asks `shared/passdb/<password>"<user>` at every login and `shared/userdb/<user>`
//! after it; doveauth answers with the account's stored hash, and creates the account on
//! its first login when the address and password pass the relay's rules. Accounts are
//! plain directories with a `password` file, shared on disk with upstream's Python
//! doveauth, so either can run on the same mailboxes.
//!
//! Layout: [`key`] parses lookup keys, [`rules`] and [`syslimits`] decide about creation,
//! [`hash`] makes password hashes, [`auth`] is the account logic, [`handler`] plugs it
//! into the dict server, [`migrate`] imports the legacy sqlite passdb.

#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod auth;
pub mod handler;
pub mod hash;
pub mod json;
pub mod key;
pub mod migrate;
pub mod rules;
pub mod syslimits;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use chatmail_config::Config;
use chatmail_dict::Limits;
use thiserror::Error;
use tokio::net::UnixListener;

pub use auth::{Authenticator, Settings};
pub use handler::AuthHandler;

/// Why the daemon could not start.
#[derive(Debug, Error)]
pub enum DoveauthError {
    #[error("sqlite migration failed: {0}")]
    Migrate(#[from] migrate::MigrateError),
    #[error(transparent)]
    Start(#[from] chatmail_dict::StartError),
}

/// Threads for file reads, locks and hashing; creations beyond this wait their turn.
const MAX_BLOCKING_THREADS: usize = 64;

/// Runs doveauth as the `doveauth SOCKET INI` command does: migrate a legacy sqlite passdb
/// if present, listen on `socket`, report readiness to systemd, serve until SIGTERM.
pub fn run_daemon(socket: &Path, config: &Config) -> Result<(), DoveauthError> {
    let auth = Arc::new(Authenticator::new(Settings::from_config(config)));
    migrate::migrate_if_present(&config.passdb_path, auth.mailboxes())?;
    chatmail_dict::run_daemon(
        "doveauth",
        socket,
        AuthHandler::new(auth),
        Limits::default(),
        MAX_BLOCKING_THREADS,
    )?;
    Ok(())
}

/// Serves doveauth's dict protocol on `listener` until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    auth: Arc<Authenticator>,
    shutdown: impl Future<Output = ()>,
) {
    let handler = Arc::new(AuthHandler::new(auth));
    chatmail_dict::serve(listener, handler, Limits::default(), shutdown).await;
}
