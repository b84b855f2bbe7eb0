//! A Delta Chat compatible echo bot for a chatmail relay, without Delta Chat core.
//!
//! This crate holds the bot's core: its key and account ([`key`]), Autocrypt headers
//! ([`autocrypt`]), OpenPGP ([`pgp`]), message parsing and building ([`message`]),
//! SecureJoin as inviter ([`securejoin`]) and the invite link and QR code ([`invite`]).
//! None of these modules does network I/O.

#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::indexing_slicing, clippy::string_slice))]

pub mod autocrypt;
pub mod error;
pub mod key;
pub mod message;
pub mod pgp;
pub mod state;

pub use error::{Error, Result};

use std::path::Path;

/// Starts the bot: loads or creates its account and key in `state_dir`.
///
/// The IMAP/SMTP service loop does not exist yet; this returns an error after the
/// start-up so that nobody mistakes the binary for a working bot.
pub fn run(config: &chatmail_config::Config, state_dir: &Path) -> anyhow::Result<()> {
    let credentials = key::Credentials::load_or_generate(state_dir, config)?;
    let key = key::BotKey::load_or_generate(state_dir, &credentials.addr)?;
    tracing::info!("account {} key {}", credentials.addr, key.fingerprint());
    anyhow::bail!("the IMAP/SMTP service loop is not implemented yet")
}
