//! Renders the Dovecot configuration of one relay from the templates in
//! `packaging/conf/dovecot/` (see docs/relay.md): every path in the relay's state dir, its
//! own IMAP and IMAPS ports on 127.0.0.1, and its self-signed certificate.
//!
//! Plaintext IMAP LOGIN on the IMAP (STARTTLS) port still works for the tests: Dovecot counts
//! a connection from 127.0.0.1 to 127.0.0.1 as secured, so `ssl = required` does not refuse it.

use std::path::{Path, PathBuf};

use crate::templates::render_template;

/// The test relays' `local.conf` (included last by dovecot.conf): every dict lookup in the
/// log, and refused logins answered at once so that refusal tests stay fast. The passdb
/// key carries the password, so this never belongs on a real relay.
pub const TEST_LOCAL_CONF: &str = "# The end-to-end tests' additions.
auth_failure_delay = 0
auth_verbose = yes
auth_debug = yes
";

/// Everything that differs between two relays.
#[derive(Debug, Clone)]
pub struct DovecotParams {
    /// Dovecot's runtime directory (sockets, pid file); Dovecot creates it.
    pub base_dir: PathBuf,
    /// Dovecot's state directory (instance registry).
    pub state_dir: PathBuf,
    /// The single log file (errors, info and debug lines).
    pub log_path: PathBuf,
    /// The port of the IMAP listener (STARTTLS) on 127.0.0.1 (143 on a relay).
    pub imap_port: u16,
    /// The port of the IMAPS listener on 127.0.0.1 (993 on a relay).
    pub imaps_port: u16,
    /// The dict settings file for passdb and userdb (see [`render_auth_conf`]).
    pub auth_conf: PathBuf,
    /// `mailboxes_dir` of chatmail.ini; one maildir per address below it.
    pub mailboxes_dir: PathBuf,
    /// lastlogin's unix socket.
    pub lastlogin_socket: PathBuf,
    /// chatmail-metadata's unix socket (IMAP METADATA and the push hook).
    pub metadata_socket: PathBuf,
    /// Where Dovecot's LMTP listens for Postfix.
    pub lmtp_socket: PathBuf,
    /// Where Dovecot's SASL server listens for Postfix (`smtpd_sasl_type = dovecot`).
    pub sasl_socket: PathBuf,
    /// The owner of the two sockets above: `postfix`, or `root` where Postfix is absent.
    pub postfix_user: String,
    /// The push_notification Lua script shipped in packaging/dovecot/.
    pub push_lua: PathBuf,
    /// The `chatmail-quota-expire` executable the quota-warning service runs.
    pub quota_expire: PathBuf,
    /// The certificate and key for IMAPS and STARTTLS.
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// `max_mailbox_size` of chatmail.ini in MiB (the quota).
    pub max_mailbox_size_mb: u64,
    /// `max_message_size` of chatmail.ini in bytes.
    pub max_message_size: u64,
    /// `max_imap_connections` of chatmail.ini.
    pub max_imap_connections: u32,
    /// How many imap-login processes wait for connections (10 on a relay).
    pub imap_login_processes: u32,
    /// The `vmail` uid: Dovecot refuses mail access below `first_valid_uid` (default 500),
    /// and a system user's uid may be lower than that (Debian counts them down from 999).
    pub vmail_uid: u32,
    /// The file dovecot.conf includes last (absent is fine).
    pub local_conf: PathBuf,
}

/// The contents of `dovecot.conf`.
pub fn render_dovecot_conf(p: &DovecotParams) -> String {
    let path = |path: &Path| path.display().to_string();
    render_template(
        "dovecot/dovecot.conf",
        &[
            ("dovecot_base_dir", path(&p.base_dir)),
            ("dovecot_state_dir", path(&p.state_dir)),
            ("dovecot_log_path", path(&p.log_path)),
            ("listen", "127.0.0.1".to_string()),
            ("max_imap_connections", p.max_imap_connections.to_string()),
            ("auth_conf", path(&p.auth_conf)),
            ("mailboxes_dir", path(&p.mailboxes_dir)),
            ("first_valid_uid", p.vmail_uid.to_string()),
            ("metadata_socket", path(&p.metadata_socket)),
            ("lastlogin_socket", path(&p.lastlogin_socket)),
            ("push_lua", path(&p.push_lua)),
            ("max_message_size", p.max_message_size.to_string()),
            ("max_mailbox_size_mb", p.max_mailbox_size_mb.to_string()),
            (
                "quota_target_mb",
                (p.max_mailbox_size_mb * 70 / 100).to_string(),
            ),
            ("quota_expire", path(&p.quota_expire)),
            ("lmtp_socket", path(&p.lmtp_socket)),
            ("sasl_socket", path(&p.sasl_socket)),
            ("postfix_user", p.postfix_user.clone()),
            ("imap_port", p.imap_port.to_string()),
            ("imaps_port", p.imaps_port.to_string()),
            ("imap_login_processes", p.imap_login_processes.to_string()),
            ("tls_cert", path(&p.tls_cert)),
            ("tls_key", path(&p.tls_key)),
            ("local_conf", path(&p.local_conf)),
        ],
    )
}

/// The contents of the dict settings file that passdb and userdb share.
pub fn render_auth_conf(doveauth_socket: &Path) -> String {
    render_template(
        "dovecot/auth.conf",
        &[("doveauth_socket", doveauth_socket.display().to_string())],
    )
}
