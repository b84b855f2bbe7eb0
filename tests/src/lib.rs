//! End-to-end harness: runs the real Debian Dovecot on 127.0.0.1 against our doveauth and
//! lastlogin daemons, the way a chatmail relay wires them, inside one temp dir per test.
//!
//! A test asks for a [`Relay`]; `Relay::start()` returns `None` (after printing why) when the
//! machine cannot run Dovecot, so the tests skip on developer machines without it and fail
//! loudly in CI (`CI` set), where `.ci/run` installs `dovecot-imapd`.
//!
//! The filtermail tests ask for a [`MailRelay`] instead: the same relay with a private
//! Debian Postfix in front and filtermail as its `smtpd_proxy_filter`; it skips (or fails in
//! CI) the same way when Postfix is missing.
//!
//! Run with `cargo test -p chatmail-e2e` as root. Set `CHATMAIL_E2E_KEEP=1` to keep each
//! relay's temp dir (dovecot.conf, chatmail.ini, all logs, the maildirs) for inspection.
//!
//! * [`binaries`]: builds and locates the daemons under test.
//! * [`host`]: what the machine must provide (Dovecot, root, the `vmail` user).
//! * [`dovecot_conf`]: the Dovecot configuration rendered for one relay.
//! * [`relay`]: starts and stops one relay and gives tests its paths and logs.
//! * [`imap`]: a minimal IMAP client, enough to log in.
//! * [`lmtp`]: a minimal LMTP client, to deliver a message as Postfix would.
//! * [`postfix`]: a relay with the real Postfix in front, filtermail as its
//!   `smtpd_proxy_filter` (skipped like Dovecot when Postfix is missing).
//! * [`smtp`]: a minimal SMTP client, to submit mail as a client or a remote MTA would.
//! * [`remote`]: another relay on `[::1]` (HTTPS `/mxdeliv` and SMTP with STARTTLS) for
//!   filtermail's transport mode.
//! * [`gateway`]: a local HTTPS push notification gateway (with its own CA) that records
//!   what it receives.
//! * [`templates`]: renders the Postfix and Dovecot templates in `packaging/conf/`.
//! * [`tls`]: the relay's self-signed certificate and a TLS client that accepts it.
//! * [`loopback`]: the `loopback-relay` command's start and stop.
//! * [`dclogin`]: `dclogin:` account URLs for the Delta Chat scenarios.
//! * [`deltachat`]: the venv, relay, accounts and scenario runner of the Delta Chat tests.

pub mod binaries;
pub mod dclogin;
pub mod deltachat;
pub mod dovecot_conf;
pub mod gateway;
pub mod host;
pub mod imap;
pub mod lmtp;
pub mod loopback;
pub mod postfix;
pub mod relay;
pub mod remote;
pub mod smtp;
pub mod templates;
pub mod tls;

pub use host::{Vmail, require_dovecot, require_postfix};
pub use imap::{Imap, Reply, Status, quote};
pub use postfix::MailRelay;
pub use relay::{DOMAIN, Relay, poll_until};
pub use smtp::{Sent, Smtp, SmtpReply, readdress};
