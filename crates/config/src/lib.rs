//! `chatmail.ini`, the one configuration file shared by all chatmail relay daemons
//! (doveauth, metadata, lastlogin, expire, fsreport, newemail, ...).
//!
//! Every daemon loads the file with [`Config::load`] at start and then only reads the
//! fields of the validated [`Config`]: syntax errors, bad values and missing keys all
//! surface at that one point as a one-line [`ConfigError`] naming the file, so a daemon can
//! log it and exit non-zero. Keys, defaults and derived values follow upstream's Python
//! `chatmaild.config` (see `config.md` in the project's spec); [`Config::warnings`] lists
//! what is accepted but probably a mistake.
//!
//! The [`ini`] module is the file syntax on its own, [`size`] the `500M`/`2G` size strings.

mod config;
mod error;
pub mod ini;
pub mod size;
mod values;

pub use config::{
    Config, DEFAULT_CONFIG_PATH, DEFAULT_NOCREATE_FILE, DEFAULT_NOTIFICATION_URL, TlsCertMode,
};
pub use error::ConfigError;
pub use size::parse_size_mb;
