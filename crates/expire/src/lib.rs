//! `chatmail-expire`, `chatmail-quota-expire` and the mailbox scanner they share with
//! `chatmail-fsreport`.
//!
//! * [`scan`]: the bounded-parallel walk over `mailboxes_dir`, in upstream's order;
//! * [`expire`]: the daily expiry decisions as pure functions over a scan, and the
//!   deleter that carries them out (or only reports them in a dry run);
//! * [`quota`]: trimming a mailbox to a size target, oldest Dovecot-named messages first;
//! * [`clock`]: "now" and the date formats of upstream's output, in UTC.

pub mod clock;
pub mod expire;
pub mod quota;
pub mod scan;

use std::path::PathBuf;

use thiserror::Error;

/// Why a job could not run at all (per-file problems are reported and skipped instead).
#[derive(Debug, Error)]
pub enum Error {
    /// `mailboxes_dir` resolves to `/`: refusing, a typo must not expire the whole disk.
    #[error("refusing to expire mailboxes_dir {0}: it is the root directory")]
    UnsafeRoot(PathBuf),
    /// `mailboxes_dir` exists but is not a directory.
    #[error("mailboxes_dir {0} is not a directory")]
    NotADirectory(PathBuf),
    /// Listing or reading a path failed.
    #[error("{path}: {source}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The configuration is unusable for expiry.
    #[error(transparent)]
    Config(#[from] chatmail_config::ConfigError),
}
