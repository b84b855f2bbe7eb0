//! filtermail: the before-queue SMTP filter of a chatmail relay, a drop-in for upstream's
//! filtermail (0.7.4 dialect, without transport mode).
//!
//! Postfix hands every submitted (`outgoing`) and every received (`incoming`) message to
//! this filter over SMTP (`smtpd_proxy_filter`). Cleartext is refused unless an exemption
//! applies, outgoing senders are rate-limited, incoming mail must carry a DKIM signature of
//! its `From:` domain, and accepted mail is reinjected into Postfix.
//!
//! Where things are: [`check`] (the policy, pure), [`dkim`] (the origin check), [`openpgp`] (armor and packet walk),
//! [`mime`] (the MIME walker), [`address`], [`command`] (SMTP command lines),
//! [`limiter`] (GCRA), [`server`] (sockets), [`reinject`] (SMTP client to Postfix).

#![cfg_attr(test, allow(clippy::indexing_slicing))]

pub mod address;
pub mod check;
pub mod command;
pub mod data;
pub mod dkim;
pub mod limiter;
pub mod mime;
pub mod openpgp;
pub mod reinject;
pub mod server;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use chatmail_config::Config;
use chatmail_mailbox::Mailboxes;
use dkim::{DkimVerifier, SystemResolver};
use thiserror::Error;
use tokio::net::TcpListener;

pub use check::Direction;
use limiter::SendLimiter;
use reinject::ReinjectTarget;
use server::Limits;

/// Failures that stop the daemon.
#[derive(Debug, Error)]
pub enum FiltermailError {
    #[error("binding 127.0.0.1:{port}: {source}")]
    Bind { port: u16, source: std::io::Error },
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
    #[error("setting up the DNS resolver: {0}")]
    Resolver(dkim::LookupError),
}

/// Everything a connection needs, shared by all connections of one listener.
pub struct Filter {
    /// Which rules apply.
    pub direction: Direction,
    /// Where the `enforceE2EEincoming` markers live.
    pub mailboxes: Mailboxes,
    /// Outgoing only: the per-sender send rate.
    pub limiter: Option<SendLimiter>,
    /// Larger messages get 552 (Postfix enforces the same limit earlier).
    pub max_message_size: u64,
    /// Postfix's reinjection port for this direction.
    pub reinject: ReinjectTarget,
    /// Timeouts and the connection cap.
    pub limits: Limits,
    /// Incoming only: the DKIM origin check; `None` skips it (`FILTERMAIL_SKIP_DKIM`, and
    /// always outgoing).
    pub dkim: Option<Arc<DkimVerifier>>,
}

impl Filter {
    /// The filter for `direction` as chatmail.ini configures it, without DKIM
    /// verification (the caller sets [`Filter::dkim`]).
    pub fn from_config(config: &Config, direction: Direction) -> Filter {
        let (limiter, reinject_port) = match direction {
            Direction::Outgoing => (
                Some(SendLimiter::new(
                    config.max_user_send_per_minute,
                    config.max_user_send_burst_size,
                )),
                config.postfix_reinject_port,
            ),
            Direction::Incoming => (None, config.postfix_reinject_port_incoming),
        };
        Filter {
            direction,
            mailboxes: Mailboxes::new(&config.mailboxes_dir),
            limiter,
            max_message_size: config.max_message_size,
            reinject: ReinjectTarget {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, reinject_port)),
                timeout: Duration::from_secs(60),
            },
            limits: Limits::default(),
            dkim: None,
        }
    }
}

/// The port chatmail.ini assigns to `direction`'s listener.
pub fn listen_port(config: &Config, direction: Direction) -> u16 {
    match direction {
        Direction::Outgoing => config.filtermail_smtp_port,
        Direction::Incoming => config.filtermail_smtp_port_incoming,
    }
}

/// The environment variable that turns DKIM verification off (tests only).
pub const SKIP_DKIM: &str = "FILTERMAIL_SKIP_DKIM";

/// Runs the daemon until SIGTERM/SIGINT: binds 127.0.0.1, logs `entering serving loop`,
/// notifies systemd, serves.
pub fn run_daemon(config: &Config, direction: Direction) -> Result<(), FiltermailError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(FiltermailError::Runtime)?;
    runtime.block_on(async {
        let shutdown = chatmail_daemon::shutdown_signal().map_err(FiltermailError::Signals)?;
        let dkim = match direction {
            Direction::Outgoing => None,
            Direction::Incoming if dkim::skip_requested(std::env::var_os(SKIP_DKIM).as_deref()) => {
                // Before the serving-loop line, as upstream (relay's blackbox test skips it).
                tracing::warn!(
                    "DKIM verification DISABLED! This should not be used in production."
                );
                None
            }
            Direction::Incoming => {
                let resolver = SystemResolver::new().map_err(FiltermailError::Resolver)?;
                let verifier =
                    DkimVerifier::new(Arc::new(resolver)).map_err(FiltermailError::Resolver)?;
                Some(Arc::new(verifier))
            }
        };
        let port = listen_port(config, direction);
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, port))
            .await
            .map_err(|source| FiltermailError::Bind { port, source })?;
        // Must be the first line after the optional DKIM warning: relay's blackbox test
        // waits for a line with "loop".
        tracing::info!("entering serving loop");
        // Config warnings come after it for the same reason.
        for warning in config
            .warnings()
            .into_iter()
            .chain(passthrough_warnings(config))
        {
            tracing::warn!("{warning}");
        }
        if nix::unistd::geteuid().is_root() {
            // Nothing here needs privileges; a parser bug should not be one as root.
            tracing::warn!(
                "running as root: filtermail needs no privileges, run it as an unprivileged \
                 user (systemd User=vmail)"
            );
        }
        chatmail_daemon::notify_ready();
        let filter = Arc::new(Filter {
            dkim,
            ..Filter::from_config(config, direction)
        });
        server::serve(listener, filter, shutdown).await;
        chatmail_daemon::notify_stopping();
        Ok(())
    })
}

/// filtermail 0.7 dropped the passthrough exemptions; an ini that still sets them gets
/// told so instead of silently losing them.
pub fn passthrough_warnings(config: &Config) -> Vec<String> {
    [
        ("passthrough_senders", &config.passthrough_senders),
        ("passthrough_recipients", &config.passthrough_recipients),
    ]
    .into_iter()
    .filter(|(_, list)| !list.is_empty())
    .map(|(key, _)| {
        format!("{key} is ignored: filtermail no longer exempts anyone from encryption")
    })
    .collect()
}
