//! The one error type of this crate.

use std::path::{Path, PathBuf};

use crate::ini::ParseError;
use crate::values::one_line;

/// Why a `chatmail.ini` cannot be used.
///
/// Every message is one line that starts with the file's path, so a daemon can log it
/// verbatim and exit: `<path>: key 'max_user_send_per_minute' has value 'abc', expected an
/// integer`. Underlying errors are part of the message rather than a `source()`, so that
/// printing the error chain does not repeat them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file cannot be read (missing, unreadable, not UTF-8).
    #[error("{}: cannot read: {error}", shown(.path))]
    Read {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The file is not valid INI.
    #[error("{}: {error}", shown(.path))]
    Syntax {
        /// The file.
        path: PathBuf,
        /// Line and kind of the syntax error.
        error: ParseError,
    },
    /// The file has no `[params]` section.
    #[error("{}: missing section [params]", shown(.path))]
    MissingSection {
        /// The file.
        path: PathBuf,
    },
    /// A key without default is absent.
    #[error("{}: missing required key '{key}' in [params]", shown(.path))]
    MissingKey {
        /// The file.
        path: PathBuf,
        /// The absent key.
        key: &'static str,
    },
    /// A value does not have the form its key needs.
    #[error(
        "{}: key '{key}' has value '{}', expected {expected}",
        shown(.path),
        one_line(.value)
    )]
    InvalidValue {
        /// The file.
        path: PathBuf,
        /// The key in `[params]`.
        key: &'static str,
        /// The value as written (stripped).
        value: String,
        /// The form the value should have, e.g. "an integer".
        expected: String,
    },
    /// A value is well-formed but cannot be used, for a reason given in words.
    #[error("{}: key '{key}' has value '{}': {message}", shown(.path), one_line(.value))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The key in `[params]`.
        key: &'static str,
        /// The value as written (stripped).
        value: String,
        /// What is wrong with it.
        message: String,
    },
}

impl ConfigError {
    /// The configuration file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. }
            | ConfigError::Syntax { path, .. }
            | ConfigError::MissingSection { path }
            | ConfigError::MissingKey { path, .. }
            | ConfigError::InvalidValue { path, .. }
            | ConfigError::Invalid { path, .. } => path,
        }
    }

    /// The `[params]` key the error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::MissingKey { key, .. }
            | ConfigError::InvalidValue { key, .. }
            | ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. }
            | ConfigError::Syntax { .. }
            | ConfigError::MissingSection { .. } => None,
        }
    }
}

/// A path as one line of text.
pub(crate) fn shown(path: &Path) -> String {
    one_line(&path.to_string_lossy())
}
