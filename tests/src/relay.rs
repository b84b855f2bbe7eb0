//! One relay: doveauth, lastlogin and chatmail-metadata running as `vmail`, a local HTTPS
//! push gateway, and a Dovecot instance on 127.0.0.1 that uses them, configured from the
//! templates in `packaging/conf/dovecot/` with a self-signed certificate, all confined to
//! one state dir that is removed afterwards.
//!
//! The tests' relays live in a temp dir with free ports; the `loopback-relay` command uses
//! the same code with [`Options`] for a fixed dir and the standard ports, then
//! [`Relay::detach`]es the processes so that they outlive it.

use std::fs::{self, File};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, chown};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;

use nix::unistd::User;

use crate::binaries::binaries;
use crate::dovecot_conf::{DovecotParams, TEST_LOCAL_CONF, render_auth_conf, render_dovecot_conf};
use crate::gateway::Gateway;
use crate::host::{DOVEADM, DOVECOT, Vmail, require_dovecot};
use crate::imap::{Imap, Reply};
use crate::tls::self_signed;

/// The relay's `mail_domain`. The leading underscore marks a test relay in chatmail's own
/// conventions (self-signed TLS), `.localhost` is reserved (RFC 6761) so the name can never
/// be a real domain, and Dovecot's `auth_username_chars` admits every character of it.
pub const DOMAIN: &str = "_chat.localhost";

/// `max_message_size` (bytes) of chatmail.ini by default: upstream's default.
pub const MAX_MESSAGE_SIZE: u64 = 31_457_280;

/// How often and how long to poll for a daemon socket or the IMAP port: 200 × 50 ms = 10 s.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const POLL_ATTEMPTS: u32 = 200;

/// Set this variable to keep each relay's temp dir (configs, logs, maildirs) for inspection.
pub const KEEP_ENV: &str = "CHATMAIL_E2E_KEEP";

/// How long a process may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How to set a relay up; the default is a test relay.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The state dir to create (it must not exist); `None`: a new temp dir.
    pub state_dir: Option<PathBuf>,
    /// The IMAP (STARTTLS) and IMAPS ports; `None`: free ports.
    pub imap_ports: Option<(u16, u16)>,
    /// The loopback relay rather than a test relay: Dovecot without the tests' verbose
    /// logging, every process in a process group of its own (so that a Ctrl-C at the
    /// terminal that started it does not reach it), 10 waiting imap-login processes, and
    /// no push gateway (there is no process left to run it).
    pub loopback: bool,
    /// Postfix requires TLS on the port-25 and submission (STARTTLS) services and offers
    /// AUTH only after it, as on the loopback relay (which implies it), instead of the test
    /// relays' `may` for the tests that speak plaintext SMTP there.
    pub require_tls: bool,
    /// Called with `mailboxes_dir` (created, vmail's) before any daemon starts, to put
    /// files there that the daemons find at start (e.g. a push queue).
    pub before_daemons: Option<fn(&Path, Vmail)>,
}

/// Dovecot's limits from chatmail.ini.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// `max_mailbox_size` in MiB: `quota_rule`, and `quota_warning`'s target (70 %).
    max_mailbox_size_mb: u64,
    /// `max_message_size`: `quota_max_mail_size`.
    max_message_size: u64,
    /// `max_imap_connections`: imap's `process_limit`.
    max_imap_connections: u32,
}

/// A process this relay started, for [`Relay::detach`].
#[derive(Debug, Clone)]
pub struct Started {
    /// What it is, e.g. `dovecot`.
    pub name: String,
    /// Its process id.
    pub pid: u32,
}

/// A running relay; dropping it stops every process and removes the state dir.
pub struct Relay {
    /// How it was set up.
    options: Options,
    /// The `vmail` user that owns mailboxes and runs the daemons.
    vmail: Vmail,
    /// `mailboxes_dir` of chatmail.ini.
    mailboxes_dir: PathBuf,
    /// `nocreate_file` of chatmail.ini; absent unless a test creates it.
    nocreate_file: PathBuf,
    /// Dovecot's configuration file, for `doveadm -c`.
    dovecot_conf: PathBuf,
    /// Dovecot's `log_path`.
    dovecot_log: PathBuf,
    /// Dovecot master's own stdout/stderr (errors before logging is set up).
    dovecot_stderr: PathBuf,
    /// doveauth's stderr (its log lines, e.g. `Created address: ...`).
    doveauth_log: PathBuf,
    /// lastlogin's stderr.
    lastlogin_log: PathBuf,
    /// chatmail-metadata's stderr.
    metadata_log: PathBuf,
    /// Dovecot's LMTP socket, for delivering test messages.
    lmtp_socket: PathBuf,
    /// The push gateway chatmail-metadata's `notification_url` points at (test relays).
    gateway: Option<Gateway>,
    /// Where Dovecot's IMAP (STARTTLS) listener accepts connections.
    imap_addr: SocketAddr,
    /// Where Dovecot's IMAPS listener accepts connections.
    imaps_addr: SocketAddr,
    /// The Dovecot master process (`dovecot -F`), stopped first.
    dovecot: Option<Child>,
    /// The doveauth daemon.
    doveauth: Option<Child>,
    /// The lastlogin daemon.
    lastlogin: Option<Child>,
    /// The metadata daemon.
    metadata: Option<Child>,
    /// Detached: Drop neither stops the processes nor removes the state dir.
    detached: bool,
    /// The state dir holding everything above.
    root: PathBuf,
    /// The temp dir behind `root` for test relays; declared last so it is removed last.
    dir: Option<TempDir>,
}

impl Relay {
    /// Starts a relay, or returns `None` if this machine cannot run Dovecot (see
    /// [`require_dovecot`]). Panics with the logs if anything fails to start.
    pub fn start() -> Option<Relay> {
        Relay::start_with_ini("")
    }

    /// Like [`Relay::start`], with `extra_ini` (`key = value` lines) appended to the
    /// `[params]` section of chatmail.ini, e.g. filtermail's ports and limits.
    pub fn start_with_ini(extra_ini: &str) -> Option<Relay> {
        Relay::start_with(extra_ini, &Options::default())
    }

    /// Like [`Relay::start_with_ini`], set up as `options` say.
    pub fn start_with(extra_ini: &str, options: &Options) -> Option<Relay> {
        let vmail = require_dovecot()?;
        let binaries = binaries();
        let (dir, root) = match &options.state_dir {
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("chatmail-e2e-")
                    .tempdir()
                    .expect("cannot create a temp dir");
                let root = dir.path().to_path_buf();
                (Some(dir), root)
            }
            Some(path) => {
                fs::create_dir(path).unwrap_or_else(|err| {
                    panic!("cannot create the state dir {}: {err}", path.display())
                });
                (None, path.clone())
            }
        };
        // Dovecot's unprivileged processes and vmail must traverse it.
        set_mode(&root, 0o755);
        let root = root.as_path();
        let mut relay = Relay {
            options: options.clone(),
            vmail,
            mailboxes_dir: root.join("mail").join(DOMAIN),
            nocreate_file: root.join("nocreate"),
            dovecot_conf: root.join("dovecot.conf"),
            dovecot_log: root.join("dovecot.log"),
            dovecot_stderr: root.join("dovecot.stderr"),
            doveauth_log: root.join("doveauth.log"),
            lastlogin_log: root.join("lastlogin.log"),
            metadata_log: root.join("metadata.log"),
            lmtp_socket: root.join("lmtp.socket"),
            gateway: (!options.loopback).then(|| Gateway::start(&root.join("gateway-ca.pem"))),
            imap_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            imaps_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            dovecot: None,
            doveauth: None,
            lastlogin: None,
            metadata: None,
            detached: false,
            root: root.to_path_buf(),
            dir,
        };

        fs::create_dir_all(&relay.mailboxes_dir).expect("cannot create mailboxes_dir");
        relay.give_to_vmail(&relay.mailboxes_dir, 0o755);
        if let Some(prepare) = options.before_daemons {
            prepare(&relay.mailboxes_dir, vmail);
        }
        let sockets = relay.path("daemons");
        fs::create_dir(&sockets).expect("cannot create the daemons' socket dir");
        relay.give_to_vmail(&sockets, 0o755);
        let doveauth_socket = sockets.join("doveauth.socket");
        let lastlogin_socket = sockets.join("lastlogin.socket");

        let ini = relay.path("chatmail.ini");
        relay.write_public(&ini, &format!("{}{extra_ini}", relay.render_ini()));
        // Dovecot's limits come from chatmail.ini, as on a relay.
        let config = chatmail_config::Config::load(&ini)
            .unwrap_or_else(|err| panic!("the relay's chatmail.ini does not load: {err}"));
        let limits = Limits {
            max_mailbox_size_mb: u64::try_from(config.max_mailbox_size_mb)
                .unwrap_or_else(|_| panic!("max_mailbox_size {}", config.max_mailbox_size)),
            max_message_size: config.max_message_size,
            max_imap_connections: config.max_imap_connections,
        };
        let auth_conf = relay.path("auth.conf");
        relay.write_public(&auth_conf, &render_auth_conf(&doveauth_socket));

        let doveauth = &relay.doveauth_log;
        relay.doveauth =
            Some(relay.start_daemon(&binaries.doveauth, &doveauth_socket, &ini, doveauth));
        let lastlogin = &relay.lastlogin_log;
        relay.lastlogin =
            Some(relay.start_daemon(&binaries.lastlogin, &lastlogin_socket, &ini, lastlogin));

        let metadata_socket = sockets.join("metadata.socket");
        let metadata = &relay.metadata_log;
        relay.metadata =
            Some(relay.start_daemon(&binaries.metadata, &metadata_socket, &ini, metadata));

        self_signed(DOMAIN, &relay.tls_cert(), &relay.tls_key());
        if !options.loopback {
            relay.write_public(&relay.path("local.conf"), TEST_LOCAL_CONF);
        }
        relay.start_dovecot(&auth_conf, &lastlogin_socket, &metadata_socket, limits);
        Some(relay)
    }

    /// The self-signed certificate of IMAPS, SMTPS and STARTTLS.
    pub fn tls_cert(&self) -> PathBuf {
        self.path("tls-cert.pem")
    }

    /// The certificate's key (mode 0600, root's).
    pub fn tls_key(&self) -> PathBuf {
        self.path("tls-key.pem")
    }

    /// The options this relay was started with.
    pub fn options(&self) -> &Options {
        &self.options
    }

    /// The processes this relay started, in the order to stop them: Dovecot, then the
    /// daemons it talks to.
    pub fn pids(&self) -> Vec<Started> {
        [
            ("dovecot", &self.dovecot),
            ("doveauth", &self.doveauth),
            ("lastlogin", &self.lastlogin),
            ("chatmail-metadata", &self.metadata),
        ]
        .into_iter()
        .filter_map(|(name, child)| {
            child.as_ref().map(|child| Started {
                name: name.to_string(),
                pid: child.id(),
            })
        })
        .collect()
    }

    /// Lets the processes outlive this value: Drop will neither stop them nor remove the
    /// state dir. (Their [`Child`] handles are dropped, which leaves them running.)
    pub fn detach(mut self) {
        self.detached = true;
    }

    /// [`Relay::detach`] for a relay inside another value that is dropped later.
    pub(crate) fn set_detached(&mut self) {
        self.detached = true;
    }

    /// The chatmail.ini of this relay: its paths and system limits that never refuse.
    fn render_ini(&self) -> String {
        // The loopback relay has no gateway: pushes go to a closed port on 127.0.0.1 and
        // are retried and dropped as on any relay whose push server is unreachable.
        let notification = self.gateway.as_ref().map_or_else(
            || "notification_url = http://127.0.0.1:9/notify\n".to_string(),
            |gateway| {
                format!(
                    "notification_url = {}\nnotification_ca_file = {}\n",
                    gateway.url(),
                    gateway.ca_file().display()
                )
            },
        );
        format!(
            "[params]\n\
             mail_domain = {DOMAIN}\n\
             mailboxes_dir = {mailboxes}\n\
             passdb_path = {passdb}\n\
             nocreate_file = {nocreate}\n\
             max_load_1m = 1000\n\
             min_available_memory = 0M\n\
             min_free_disk_space = 0M\n\
             {notification}",
            mailboxes = self.mailboxes_dir.display(),
            passdb = self.path("passdb.sqlite").display(),
            nocreate = self.nocreate_file.display(),
        )
    }

    /// Starts `binary SOCKET INI` as vmail with umask 077 (as upstream's systemd units do),
    /// stdout and stderr to `log`, and waits until the socket accepts connections. Panics
    /// with the logs (after killing the daemon) if it exits or does not listen in time.
    fn start_daemon(&self, binary: &Path, socket: &Path, ini: &Path, log: &Path) -> Child {
        let log = File::create(log).expect("cannot create a daemon log");
        let mut command = Command::new("/bin/sh");
        command
            .args(["-c", r#"umask 077 && exec "$0" "$@""#])
            .arg(binary)
            .arg(socket)
            .arg(ini)
            .uid(self.vmail.uid.as_raw())
            .gid(self.vmail.gid.as_raw());
        self.own_group(&mut command);
        let mut child = command
            .current_dir(&self.root)
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot clone a daemon log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let name = binary.display();
        for _ in 0..POLL_ATTEMPTS {
            if UnixStream::connect(socket).is_ok() {
                return child;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{name} exited with {status} before listening\n{}",
                    self.logs()
                );
            }
            sleep(POLL_INTERVAL);
        }
        stop(&mut child);
        panic!(
            "{name} does not accept connections on {}\n{}",
            socket.display(),
            self.logs()
        );
    }

    /// In loopback mode, puts the command's process into a process group of its own.
    pub(crate) fn own_group(&self, command: &mut Command) {
        if self.options.loopback {
            command.process_group(0);
        }
    }

    /// Renders dovecot.conf with free ports (or the fixed ones of [`Options`]) and starts
    /// Dovecot, retrying with other free ports if someone else took the ones found free.
    fn start_dovecot(
        &mut self,
        auth_conf: &Path,
        lastlogin_socket: &Path,
        metadata_socket: &Path,
        limits: Limits,
    ) {
        let attempts = if self.options.imap_ports.is_some() {
            1
        } else {
            3
        };
        for _attempt in 0..attempts {
            let (imap_port, imaps_port) = self
                .options
                .imap_ports
                .unwrap_or_else(|| (free_port(), free_port()));
            self.imap_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, imap_port));
            self.imaps_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, imaps_port));
            // The sockets Postfix uses belong to postfix where it is installed.
            let postfix_user = if User::from_name("postfix").ok().flatten().is_some() {
                "postfix"
            } else {
                "root"
            };
            let params = DovecotParams {
                base_dir: self.path("dovecot-run"),
                state_dir: self.path("dovecot-state"),
                log_path: self.dovecot_log.clone(),
                imap_port,
                imaps_port,
                auth_conf: auth_conf.to_path_buf(),
                mailboxes_dir: self.mailboxes_dir.clone(),
                lastlogin_socket: lastlogin_socket.to_path_buf(),
                metadata_socket: metadata_socket.to_path_buf(),
                lmtp_socket: self.lmtp_socket.clone(),
                sasl_socket: self.path("sasl.socket"),
                postfix_user: postfix_user.to_string(),
                push_lua: crate::binaries::workspace_root()
                    .join("packaging/dovecot/push_notification.lua"),
                quota_expire: binaries().quota_expire.clone(),
                tls_cert: self.tls_cert(),
                tls_key: self.tls_key(),
                max_mailbox_size_mb: limits.max_mailbox_size_mb,
                max_message_size: limits.max_message_size,
                max_imap_connections: limits.max_imap_connections,
                imap_login_processes: if self.options.loopback { 10 } else { 1 },
                vmail_uid: self.vmail.uid.as_raw(),
                local_conf: self.path("local.conf"),
            };
            self.write_public(&self.dovecot_conf, &render_dovecot_conf(&params));
            // A fresh log per attempt, so only this attempt's failure decides about a retry.
            let _ = fs::remove_file(&self.dovecot_log);
            let stderr = File::create(&self.dovecot_stderr).expect("cannot create dovecot.stderr");
            let mut command = Command::new(DOVECOT);
            self.own_group(&mut command);
            let child = command
                .arg("-F")
                .arg("-c")
                .arg(&self.dovecot_conf)
                .stdin(Stdio::null())
                .stdout(stderr.try_clone().expect("cannot clone dovecot.stderr"))
                .stderr(stderr)
                .spawn()
                .expect("cannot start dovecot");
            self.dovecot = Some(child);
            for _ in 0..POLL_ATTEMPTS {
                // Dovecot logs "starting up" only once its listeners are bound, so a connect
                // that succeeds before that may have reached another process on this port.
                if self.dovecot_log().contains("starting up")
                    && TcpStream::connect(self.imap_addr).is_ok()
                    && TcpStream::connect(self.imaps_addr).is_ok()
                {
                    return;
                }
                let exited = self.dovecot.as_mut().map(Child::try_wait);
                if let Some(Ok(Some(status))) = exited {
                    self.dovecot = None;
                    if self.dovecot_log().contains("Address already in use") {
                        break;
                    }
                    panic!("dovecot exited with {status} at start\n{}", self.logs());
                }
                sleep(POLL_INTERVAL);
            }
            if self.dovecot.is_some() {
                panic!(
                    "dovecot does not listen on {} and {}\n{}",
                    self.imap_addr,
                    self.imaps_addr,
                    self.logs()
                );
            }
        }
        panic!("dovecot found no free port\n{}", self.logs());
    }

    /// A path inside the relay's temp dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The `vmail` user.
    pub fn vmail(&self) -> Vmail {
        self.vmail
    }

    /// `localpart@DOMAIN`.
    pub fn addr(&self, localpart: &str) -> String {
        format!("{localpart}@{DOMAIN}")
    }

    /// `mailboxes_dir` of chatmail.ini.
    pub fn mailboxes_dir(&self) -> &Path {
        &self.mailboxes_dir
    }

    /// The maildir of an address.
    pub fn maildir(&self, addr: &str) -> PathBuf {
        self.mailboxes_dir.join(addr)
    }

    /// The password file of an address.
    pub fn password_file(&self, addr: &str) -> PathBuf {
        self.maildir(addr).join("password")
    }

    /// The names in `mailboxes_dir` other than the push queue, sorted.
    pub fn mailbox_entries(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(&self.mailboxes_dir)
            .expect("cannot list mailboxes_dir")
            .map(|entry| {
                entry
                    .expect("cannot read mailboxes_dir")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            // chatmail-metadata's push queue, present from its start on.
            .filter(|name| name != "pending_notifications")
            .collect();
        names.sort();
        names
    }

    /// `nocreate_file` of chatmail.ini: while it exists, no account is created.
    pub fn nocreate_file(&self) -> &Path {
        &self.nocreate_file
    }

    /// Where Dovecot accepts IMAP connections (plaintext, or STARTTLS).
    pub fn imap_addr(&self) -> SocketAddr {
        self.imap_addr
    }

    /// Where Dovecot accepts IMAPS connections (TLS from the first byte).
    pub fn imaps_addr(&self) -> SocketAddr {
        self.imaps_addr
    }

    /// A new IMAP connection, past the greeting; panics with the logs on failure.
    pub fn imap(&self) -> Imap {
        Imap::connect(self.imap_addr)
            .unwrap_or_else(|err| panic!("IMAP connect failed: {err}\n{}", self.logs()))
    }

    /// Connects, logs in (logging out again after success) and returns LOGIN's reply;
    /// panics with the logs on I/O errors.
    pub fn login(&self, user: &str, password: &str) -> Reply {
        let mut imap = self.imap();
        let reply = imap
            .login(user, password)
            .unwrap_or_else(|err| panic!("IMAP LOGIN of {user} failed: {err}\n{}", self.logs()));
        if reply.is_ok() {
            imap.logout()
                .unwrap_or_else(|err| panic!("IMAP LOGOUT failed: {err}\n{}", self.logs()));
        }
        reply
    }

    /// Runs `doveadm -c <dovecot.conf> ARGS` and returns its output.
    pub fn doveadm(&self, args: &[&str]) -> Output {
        Command::new(DOVEADM)
            .arg("-c")
            .arg(&self.dovecot_conf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run doveadm")
    }

    /// Creates an account directory the way an older deployment left it: the maildir and
    /// the `password` file, owned by vmail, with owner-only modes.
    pub fn write_account(&self, addr: &str, password_file_content: &str) {
        let maildir = self.maildir(addr);
        fs::create_dir(&maildir).expect("cannot create maildir");
        self.give_to_vmail(&maildir, 0o700);
        let password = self.password_file(addr);
        fs::write(&password, password_file_content).expect("cannot write password file");
        self.give_to_vmail(&password, 0o600);
    }

    /// Dovecot's log file.
    pub fn dovecot_log(&self) -> String {
        read_lossy(&self.dovecot_log)
    }

    /// doveauth's stderr so far.
    pub fn doveauth_log(&self) -> String {
        read_lossy(&self.doveauth_log)
    }

    /// chatmail-metadata's stderr so far.
    pub fn metadata_log(&self) -> String {
        read_lossy(&self.metadata_log)
    }

    /// Bodies of the push notifications the gateway received so far (one token each).
    pub fn pushes(&self) -> Vec<String> {
        self.gateway
            .as_ref()
            .map(Gateway::bodies)
            .unwrap_or_default()
    }

    /// Delivers `message` (CRLF lines, without the final dot) from `from` to `to` through
    /// Dovecot's LMTP, as Postfix does on a relay. Returns LMTP's final reply line.
    pub fn deliver(&self, from: &str, to: &str, message: &str) -> String {
        crate::lmtp::deliver(&self.lmtp_socket, from, to, message)
            .unwrap_or_else(|err| panic!("LMTP delivery failed: {err}\n{}", self.logs()))
    }

    /// lastlogin's stderr so far.
    pub fn lastlogin_log(&self) -> String {
        read_lossy(&self.lastlogin_log)
    }

    /// All logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for (name, path) in [
            ("dovecot log", &self.dovecot_log),
            ("dovecot stderr", &self.dovecot_stderr),
            ("doveauth stderr", &self.doveauth_log),
            ("lastlogin stderr", &self.lastlogin_log),
            ("chatmail-metadata stderr", &self.metadata_log),
        ] {
            all.push_str(&format!("----- {name} ({}) -----\n", path.display()));
            all.push_str(&read_lossy(path));
            if !all.ends_with('\n') {
                all.push('\n');
            }
        }
        all
    }

    /// Writes a root-owned file everyone may read (Dovecot's unprivileged processes and vmail
    /// read the configuration).
    pub(crate) fn write_public(&self, path: &Path, contents: &str) {
        fs::write(path, contents)
            .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
        set_mode(path, 0o644);
    }

    /// Hands a file or directory to vmail with the given mode.
    pub(crate) fn give_to_vmail(&self, path: &Path, mode: u32) {
        chown(
            path,
            Some(self.vmail.uid.as_raw()),
            Some(self.vmail.gid.as_raw()),
        )
        .unwrap_or_else(|err| panic!("cannot chown {}: {err}", path.display()));
        set_mode(path, mode);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if self.detached {
            if let Some(dir) = &mut self.dir {
                dir.disable_cleanup(true);
            }
            return;
        }
        // Dovecot first: its processes hold connections to the daemons.
        for child in [
            &mut self.dovecot,
            &mut self.doveauth,
            &mut self.lastlogin,
            &mut self.metadata,
        ] {
            if let Some(mut child) = child.take() {
                stop(&mut child);
            }
        }
        if std::env::var_os(KEEP_ENV).is_some_and(|value| !value.is_empty()) {
            if let Some(dir) = &mut self.dir {
                dir.disable_cleanup(true);
            }
            eprintln!("{KEEP_ENV}: kept {}", self.root.display());
        } else if self.dir.is_none() {
            // A state dir given in the options: removed here, as a temp dir would be.
            let _ = fs::remove_dir_all(&self.root);
        }
    }
}

/// Sends SIGTERM, waits up to [`STOP_GRACE`], then kills.
pub(crate) fn stop(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + STOP_GRACE;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        sleep(POLL_INTERVAL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .expect("cannot bind 127.0.0.1:0")
        .port()
}

pub(crate) fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|err| panic!("cannot chmod {}: {err}", path.display()));
}

pub(crate) fn read_lossy(path: &Path) -> String {
    match fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(err) if err.kind() == io::ErrorKind::NotFound => "(no file)\n".to_string(),
        Err(err) => format!("(cannot read: {err})\n"),
    }
}

/// A message file of a maildir as text: Dovecot's zlib plugin (`zlib_save = gz`) stores
/// messages gzipped, so a gzip file is read through `gzip -dc`.
pub fn read_message(path: &Path) -> String {
    let bytes =
        fs::read(path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return String::from_utf8_lossy(&bytes).into_owned();
    }
    let output = Command::new("gzip")
        .arg("-dc")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run gzip: {err}"));
    assert!(
        output.status.success(),
        "gzip -dc {}: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn poll_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        sleep(POLL_INTERVAL);
    }
}
