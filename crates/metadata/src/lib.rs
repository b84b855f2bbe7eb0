//! chatmail-metadata: the IMAP METADATA dict of a chatmail relay.
//!
//! Dovecot stores IMAP METADATA through this dict: Delta Chat sets `/private/devicetoken`,
//! the lua push script sets `/private/messagenew` on every delivery, and clients read the
//! server-wide `/shared/vendor/deltachat/*` keys (iroh relay, TURN credentials, SMTP
//! recipient limit, app versions). On `messagenew` every valid token of the recipient gets
//! a push notification through the notification gateway, queued on disk so that none is
//! lost across restarts.
//!
//! Everything on disk is shared with upstream's Python daemon: `metadata.json` (format,
//! lock, atomic rename) and the queue in `pending_notifications/`.

#![cfg_attr(test, allow(clippy::indexing_slicing, clippy::string_slice))]

pub mod appversions;
pub mod clock;
pub mod handler;
pub mod json;
pub mod keys;
pub mod notifier;
pub mod pace;
pub mod queue;
pub mod tokens;
pub mod turn;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chatmail_config::Config;
use chatmail_dict::Limits;
use chatmail_mailbox::{AddressError, Mailboxes};
use thiserror::Error;
use tokio::net::UnixListener;

pub use appversions::AppVersions;
pub use clock::{Clock, ManualClock, SystemClock};
pub use handler::{MetadataHandler, Settings};
pub use notifier::{Notifier, NotifierOptions};
pub use tokens::TokenStore;

/// Everything that can go wrong in this crate.
#[derive(Debug, Error)]
pub enum MetadataError {
    #[error("vmail dir does not exist: '{}'", .0.display())]
    NoMailboxesDir(PathBuf),
    #[error("{path}: {source}", path = path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Address(#[from] AddressError),
    #[error("{path}: not PEM certificates: {source}", path = path.display())]
    CaFile {
        path: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(#[source] reqwest::Error),
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("cannot listen on {path}: {source}", path = path.display())]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The parts of a running metadata daemon that [`serve`] needs.
pub struct Daemon {
    /// The dict handler.
    pub handler: Arc<MetadataHandler>,
    /// The notifier (tests enqueue and inspect through it).
    pub notifier: Notifier,
}

/// Upstream's start-up, steps 2 to 4: the mailboxes directory must exist; the queue
/// directory is created (not recursively) and its items requeued; the notifier starts.
/// Must be called inside a tokio runtime.
pub fn start(
    config: &Config,
    settings: Settings,
    options: NotifierOptions,
    clock: Arc<dyn Clock>,
    appversions: AppVersions,
) -> Result<Daemon, MetadataError> {
    let root = &config.mailboxes_dir;
    if !root.is_dir() {
        return Err(MetadataError::NoMailboxesDir(root.clone()));
    }
    let queue_dir = root.join(queue::QUEUE_DIR);
    match std::fs::create_dir(&queue_dir) {
        Ok(()) => {}
        Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(MetadataError::Io {
                path: queue_dir,
                source,
            });
        }
    }
    let tokens = TokenStore::new(Mailboxes::new(root.clone()));
    let notifier = Notifier::start(queue_dir, tokens.clone(), options, clock.clone())?;
    let handler = MetadataHandler::new(settings, tokens, notifier.clone(), clock, appversions);
    Ok(Daemon {
        handler: Arc::new(handler),
        notifier,
    })
}

/// The operator's app versions file: `appversions` if given, else `appversions.json`
/// beside chatmail.ini.
pub fn appversions_path(config: &Config, appversions: Option<&Path>) -> PathBuf {
    match appversions {
        Some(path) => path.to_path_buf(),
        None => config
            .path
            .parent()
            .unwrap_or(Path::new("."))
            .join(appversions::FILE_NAME),
    }
}

/// Runs the daemon as `chatmail-metadata SOCKET INI` does: start, listen, report
/// readiness, serve until SIGTERM.
pub fn run_daemon(
    socket: &Path,
    config: &Config,
    appversions: Option<&Path>,
) -> Result<(), MetadataError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(32)
        .thread_name("chatmail-metadata")
        .build()
        .map_err(MetadataError::Runtime)?;
    let appversions = AppVersions::new(Some(appversions_path(config, appversions)));
    runtime.block_on(async {
        let shutdown = chatmail_daemon::shutdown_signal().map_err(MetadataError::Runtime)?;
        let daemon = start(
            config,
            Settings::from_config(config),
            NotifierOptions::from_config(config),
            Arc::new(SystemClock),
            appversions,
        )?;
        let listener = chatmail_dict::bind(socket).map_err(|source| MetadataError::Bind {
            path: socket.to_path_buf(),
            source,
        })?;
        tracing::info!("chatmail-metadata listening on {}", socket.display());
        chatmail_daemon::notify_ready();
        serve(listener, daemon.handler, shutdown).await;
        chatmail_daemon::notify_stopping();
        let _ = std::fs::remove_file(socket);
        Ok(())
    })
}

/// Serves the metadata dict on `listener` until `shutdown` completes. Queued notifications
/// stay on disk for the next start.
pub async fn serve(
    listener: UnixListener,
    handler: Arc<MetadataHandler>,
    shutdown: impl Future<Output = ()>,
) {
    chatmail_dict::serve(listener, handler, Limits::default(), shutdown).await;
}
