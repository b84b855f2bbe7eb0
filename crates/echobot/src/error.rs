//! The crate's one error type.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the bot's core: state files, key material, OpenPGP,
/// message parsing. Expected outcomes of processing a message (ignored, not for us) are
/// not errors; see [`crate::message::Verdict`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A state file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// What the operating system said.
        source: io::Error,
    },
    /// A state file exists but its content is not what the bot writes.
    #[error("{}: {reason}", path.display())]
    BadStateFile {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// OpenPGP: a key, a message or a signature could not be made or understood.
    #[error("OpenPGP: {0}")]
    Pgp(String),
    /// An `Autocrypt:` or `Autocrypt-Gossip:` header that does not follow the rules.
    #[error("Autocrypt header: {0}")]
    Autocrypt(String),
    /// A message that cannot be parsed as MIME or lacks what its kind requires.
    #[error("message: {0}")]
    Message(String),
    /// The relay could not be reached or the TLS handshake failed.
    #[error("connection: {0}")]
    Connection(String),
    /// The relay's IMAP server refused or failed a command.
    #[error("IMAP: {0}")]
    Imap(String),
    /// The relay's SMTP server answered with an error.
    #[error("SMTP: {0}")]
    Smtp(String),
    /// The invite QR code could not be rendered.
    #[error("QR code: {0}")]
    Qr(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn pgp(err: impl std::fmt::Display) -> Self {
        // Sequoia's errors carry their cause chain in the alternate form.
        Error::Pgp(format!("{err:#}"))
    }
}

/// Results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
