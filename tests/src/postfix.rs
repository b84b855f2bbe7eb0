//! A test relay with the real Debian Postfix in front: a private Postfix instance from the
//! relay's temp dir, wired to our filtermail as a chatmail relay's master.cf wires it, and
//! delivering into the relay's Dovecot over LMTP.
//!
//! ```text
//! client ─AUTH─▶ "submission" 127.0.0.1:P1 ─smtpd_proxy_filter─▶ filtermail outgoing
//!              ─▶ reinject 127.0.0.1:postfix_reinject_port ─▶ queue ─▶ Dovecot LMTP
//! MTA    ─▶ "smtp" (25) 127.0.0.1:P2 ─smtpd_proxy_filter─▶ filtermail incoming
//!              ─▶ reinject 127.0.0.1:postfix_reinject_port_incoming ─▶ queue ─▶ Dovecot LMTP
//! ```
//!
//! Left out from the relay's Postfix configuration, as they do not involve filtermail:
//! TLS (no certificate on 127.0.0.1; SASL PLAIN is offered in the clear instead), the
//! `authclean` header cleanup, OpenDKIM, and remote delivery (`default_transport` is
//! `error:`). Every service runs unchrooted, so absolute paths in the temp dir work.
//!
//! What a private instance needs from Debian's package: the `postfix` user and `postdrop`
//! group it creates, `/etc/postfix/postfix-files` (for `postfix -c DIR check`, which
//! creates the queue subdirectories with Postfix's owners and modes), a `data_directory`
//! owned by `postfix` (else the master cannot create `master.lock` and exits 1 without a
//! word), and `maillog_file` with `maillog_file_prefixes` covering it plus the `postlog`
//! service (there is no syslog here). The master runs in the foreground (`master -c DIR`,
//! no `-w`), so the test owns it as a child process; SIGTERM stops it and its children.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::unistd::User;

use crate::binaries::binaries;
use crate::host::{POSTFIX, POSTFIX_MASTER, require_postfix};
use crate::relay::{DOMAIN, Relay, read_lossy, set_mode, stop};
use crate::smtp::Smtp;

/// How long Postfix and filtermail may take to listen after start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The ports of one relay, all on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Postfix's submission-like smtpd (587 on a relay), proxy-filtered by filtermail
    /// outgoing.
    pub submission: u16,
    /// Postfix's port-25-like smtpd, proxy-filtered by filtermail incoming.
    pub smtp: u16,
    /// `filtermail_smtp_port` (10080).
    pub filtermail: u16,
    /// `filtermail_smtp_port_incoming` (10081).
    pub filtermail_incoming: u16,
    /// `postfix_reinject_port` (10025).
    pub reinject: u16,
    /// `postfix_reinject_port_incoming` (10026).
    pub reinject_incoming: u16,
}

impl Ports {
    /// Six distinct ports that were free a moment ago (all bound at once, then released).
    fn free() -> Ports {
        let listeners: [TcpListener; 6] = std::array::from_fn(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("cannot bind a port")
        });
        let [
            submission,
            smtp,
            filtermail,
            filtermail_incoming,
            reinject,
            reinject_incoming,
        ] = listeners.map(|listener| listener.local_addr().expect("local address").port());
        Ports {
            submission,
            smtp,
            filtermail,
            filtermail_incoming,
            reinject,
            reinject_incoming,
        }
    }
}

/// A [`Relay`] (Dovecot, doveauth, lastlogin, chatmail-metadata) plus Postfix and both
/// filtermail instances; dropping it stops Postfix and filtermail, then the relay.
pub struct MailRelay {
    ports: Ports,
    /// Postfix's `config_directory` (main.cf, master.cf).
    postfix_config: PathBuf,
    /// Postfix's `maillog_file`.
    postfix_log: PathBuf,
    /// stdout/stderr of `postfix check` and the master process.
    postfix_stderr: PathBuf,
    filtermail_log: PathBuf,
    filtermail_incoming_log: PathBuf,
    /// The Postfix master process (`master -c DIR`, in the foreground), stopped first.
    master: Option<Child>,
    filtermail: Option<Child>,
    filtermail_incoming: Option<Child>,
    /// Declared last: dropped after the processes above are stopped.
    relay: Relay,
}

impl MailRelay {
    /// Starts the relay with `extra_ini` appended to chatmail.ini (after the four filtermail
    /// and reinjection ports this function chooses), then filtermail outgoing and incoming
    /// as vmail, then Postfix with `message_size_limit` (bytes).
    ///
    /// `None` (after printing why) when this machine cannot run Postfix and Dovecot outside
    /// CI; in CI that panics instead (see [`require_postfix`]). Panics with every log if a
    /// component fails to start.
    pub fn start(extra_ini: &str, message_size_limit: u64) -> Option<MailRelay> {
        require_postfix()?;
        let ports = Ports::free();
        let ini = format!(
            "filtermail_smtp_port = {}\n\
             filtermail_smtp_port_incoming = {}\n\
             postfix_reinject_port = {}\n\
             postfix_reinject_port_incoming = {}\n\
             {extra_ini}",
            ports.filtermail, ports.filtermail_incoming, ports.reinject, ports.reinject_incoming,
        );
        let relay = Relay::start_with_ini(&ini)?;
        let mut mail = MailRelay {
            ports,
            postfix_config: relay.path("postfix-etc"),
            postfix_log: relay.path("postfix.log"),
            postfix_stderr: relay.path("postfix.stderr"),
            filtermail_log: relay.path("filtermail.log"),
            filtermail_incoming_log: relay.path("filtermail-incoming.log"),
            master: None,
            filtermail: None,
            filtermail_incoming: None,
            relay,
        };
        mail.filtermail = Some(mail.start_filtermail("outgoing", ports.filtermail));
        mail.filtermail_incoming =
            Some(mail.start_filtermail("incoming", ports.filtermail_incoming));
        mail.start_postfix(message_size_limit);
        Some(mail)
    }

    /// The relay under Postfix: paths, accounts, IMAP, Dovecot's logs.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// The chosen ports.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// Where the submission-like service listens (filtermail outgoing behind it).
    pub fn submission_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.submission))
    }

    /// Where the port-25-like service listens (filtermail incoming behind it).
    pub fn smtp_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.smtp))
    }

    /// A new SMTP connection to `addr` after EHLO; panics with the logs on failure.
    pub fn connect(&self, addr: SocketAddr) -> Smtp {
        let mut smtp = Smtp::connect(addr)
            .unwrap_or_else(|err| panic!("SMTP connect to {addr}: {err}\n{}", self.logs()));
        smtp.ehlo("client.localhost")
            .unwrap_or_else(|err| panic!("EHLO at {addr}: {err}\n{}", self.logs()));
        smtp
    }

    /// A new connection to the submission service after EHLO and `AUTH PLAIN` as `user`;
    /// panics with the logs if the login is refused.
    pub fn submit_as(&self, user: &str, password: &str) -> Smtp {
        let mut smtp = self.connect(self.submission_addr());
        let reply = smtp
            .auth_plain(user, password)
            .unwrap_or_else(|err| panic!("AUTH: {err}\n{}", self.logs()));
        assert_eq!(reply.code, 235, "AUTH as {user}: {reply}\n{}", self.logs());
        smtp
    }

    /// Creates an account by its first IMAP login (doveauth creates the maildir, the
    /// password file and `enforceE2EEincoming`); panics with the logs if refused.
    pub fn create_account(&self, localpart: &str, password: &str) -> String {
        let addr = self.relay.addr(localpart);
        let reply = self.relay.login(&addr, password);
        assert!(reply.is_ok(), "login of {addr}: {reply:?}\n{}", self.logs());
        addr
    }

    /// The messages delivered to `addr`'s INBOX (maildir `new/` and `cur/`), as text,
    /// ordered by file name (Dovecot's names start with the delivery time).
    pub fn messages(&self, addr: &str) -> Vec<String> {
        let maildir = self.relay.maildir(addr);
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = fs::read_dir(maildir.join(sub)) {
                files.extend(entries.flatten().map(|entry| entry.path()));
            }
        }
        files.sort_by_key(|path| path.file_name().map(|name| name.to_owned()));
        files.iter().map(|path| read_lossy(path)).collect()
    }

    /// Waits up to `timeout` until `addr` has at least `count` messages and returns them;
    /// panics with the logs if they do not arrive.
    pub fn wait_for_messages(&self, addr: &str, count: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let messages = self.messages(addr);
            if messages.len() >= count {
                return messages;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{addr} has {} message(s) after {timeout:?}, expected {count}\n{}",
                    messages.len(),
                    self.logs()
                );
            }
            sleep(POLL_INTERVAL);
        }
    }

    /// Postfix's log so far.
    pub fn postfix_log(&self) -> String {
        read_lossy(&self.postfix_log)
    }

    /// filtermail outgoing's stderr so far.
    pub fn filtermail_log(&self) -> String {
        read_lossy(&self.filtermail_log)
    }

    /// filtermail incoming's stderr so far.
    pub fn filtermail_incoming_log(&self) -> String {
        read_lossy(&self.filtermail_incoming_log)
    }

    /// Every log (relay, filtermail, Postfix), for failure messages.
    pub fn logs(&self) -> String {
        let mut all = self.relay.logs();
        for (name, path) in [
            ("filtermail outgoing stderr", &self.filtermail_log),
            ("filtermail incoming stderr", &self.filtermail_incoming_log),
            ("postfix stderr", &self.postfix_stderr),
            ("postfix log", &self.postfix_log),
        ] {
            all.push_str(&format!("----- {name} ({}) -----\n", path.display()));
            all.push_str(&read_lossy(path));
            if !all.ends_with('\n') {
                all.push('\n');
            }
        }
        all
    }

    /// Starts `filtermail INI MODE` as vmail and waits for `entering serving loop` and the
    /// port; panics with the logs if it exits or does not listen in time.
    fn start_filtermail(&self, mode: &str, port: u16) -> Child {
        let log_path = if mode == "outgoing" {
            &self.filtermail_log
        } else {
            &self.filtermail_incoming_log
        };
        let log = File::create(log_path).expect("cannot create a filtermail log");
        let vmail = self.relay.vmail();
        let mut child = Command::new(&binaries().filtermail)
            .arg(self.relay.path("chatmail.ini"))
            .arg(mode)
            .uid(vmail.uid.as_raw())
            .gid(vmail.gid.as_raw())
            .current_dir(self.relay.path(""))
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cannot clone a filtermail log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start filtermail {mode}: {err}"));
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            // Logged right after binding; a probing connection would only add an error
            // line to its log.
            if read_lossy(log_path).contains("entering serving loop") {
                return child;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("filtermail {mode} exited with {status}\n{}", self.logs());
            }
            sleep(POLL_INTERVAL);
        }
        stop(&mut child);
        panic!(
            "filtermail {mode} does not listen on {addr}\n{}",
            self.logs()
        );
    }

    /// Writes main.cf and master.cf, lets `postfix check` create the queue directories
    /// with the owners and modes Postfix wants, and starts the master in the foreground.
    fn start_postfix(&mut self, message_size_limit: u64) {
        let root = self.relay.path("");
        let config = &self.postfix_config;
        fs::create_dir(config).expect("cannot create the postfix config dir");
        let queue = self.relay.path("postfix-spool");
        let data = self.relay.path("postfix-data");
        fs::create_dir(&queue).expect("cannot create the postfix queue dir");
        fs::create_dir(&data).expect("cannot create the postfix data dir");
        set_mode(&queue, 0o755);
        // `postfix check` creates the queue's subdirectories, but only warns about the data
        // directory, where the master then cannot create its lock file.
        let postfix = User::from_name("postfix")
            .ok()
            .flatten()
            .expect("the postfix user exists (require_postfix)");
        chown(
            &data,
            Some(postfix.uid.as_raw()),
            Some(postfix.gid.as_raw()),
        )
        .expect("cannot chown the postfix data dir");
        set_mode(&data, 0o700);
        let main_cf = render_main_cf(&MainCf {
            queue_directory: &queue,
            data_directory: &data,
            maillog_file: &self.postfix_log,
            maillog_prefix: &root,
            lmtp_socket: &self.relay.path("lmtp.socket"),
            login_map: &config.join("login_map"),
            message_size_limit,
        });
        write_file(&config.join("main.cf"), &main_cf);
        write_file(
            &config.join("master.cf"),
            &render_master_cf(&self.ports, &self.relay.path("sasl.socket")),
        );
        // MAIL FROM must be the login, as on a relay.
        write_file(&config.join("login_map"), "/^(.*)$/ ${1}\n");

        let stderr = File::create(&self.postfix_stderr).expect("cannot create postfix.stderr");
        let check = Command::new(POSTFIX)
            .arg("-c")
            .arg(config)
            .arg("check")
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("cannot clone postfix.stderr"))
            .stderr(stderr.try_clone().expect("cannot clone postfix.stderr"))
            .status()
            .expect("cannot run postfix check");
        assert!(check.success(), "postfix check: {check}\n{}", self.logs());

        let mut master = Command::new(POSTFIX_MASTER)
            .arg("-c")
            .arg(config)
            .env("MAIL_CONFIG", config)
            .stdin(Stdio::null())
            .stdout(stderr.try_clone().expect("cannot clone postfix.stderr"))
            .stderr(stderr)
            .spawn()
            .expect("cannot start the postfix master");
        let addrs = [
            self.ports.submission,
            self.ports.smtp,
            self.ports.reinject,
            self.ports.reinject_incoming,
        ]
        .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = master.try_wait() {
                panic!("postfix master exited with {status}\n{}", self.logs());
            }
            // The master binds every inet listener before it logs "daemon started".
            if self.postfix_log().contains("daemon started")
                && addrs.iter().all(|addr| TcpStream::connect(addr).is_ok())
            {
                self.master = Some(master);
                return;
            }
            sleep(POLL_INTERVAL);
        }
        stop(&mut master);
        panic!("postfix does not listen on {addrs:?}\n{}", self.logs());
    }
}

impl Drop for MailRelay {
    fn drop(&mut self) {
        // Postfix first (its SIGTERM handler stops every Postfix child), then filtermail;
        // the relay's own Drop runs afterwards.
        for child in [
            &mut self.master,
            &mut self.filtermail,
            &mut self.filtermail_incoming,
        ] {
            if let Some(mut child) = child.take() {
                stop(&mut child);
            }
        }
    }
}

/// What differs between two test Postfix instances' main.cf.
struct MainCf<'a> {
    queue_directory: &'a Path,
    data_directory: &'a Path,
    maillog_file: &'a Path,
    /// A prefix of `maillog_file` for `maillog_file_prefixes`.
    maillog_prefix: &'a Path,
    lmtp_socket: &'a Path,
    /// The regexp map that makes every address its own login.
    login_map: &'a Path,
    message_size_limit: u64,
}

/// main.cf: the relay's local delivery (`mydestination` = mail domain, `local_transport`
/// = Dovecot LMTP, no local recipient check) and limits, with every path in the temp dir.
fn render_main_cf(p: &MainCf<'_>) -> String {
    format!(
        r#"# Generated by chatmail-e2e for one test relay.
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
maillog_file = {log}
maillog_file_prefixes = {prefix}
myhostname = mx.localhost
mydomain = localhost
myorigin = {DOMAIN}
mydestination = {DOMAIN}
local_transport = lmtp:unix:{lmtp}
local_recipient_maps =
alias_maps =
alias_database =
relayhost =
default_transport = error:the test relay delivers nothing remotely
relay_transport = error:the test relay delivers nothing remotely
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = reject
smtpd_peername_lookup = no
mailbox_size_limit = 0
message_size_limit = {size}
disable_mime_input_processing = yes
biff = no
append_dot_mydomain = no
# Submission: SASL login required, MAIL FROM must be the login (no TLS here, so AUTH is
# offered in the clear on 127.0.0.1).
smtpd_tls_auth_only = no
mua_client_restrictions = permit_sasl_authenticated, reject
mua_sender_restrictions = reject_sender_login_mismatch, permit_sasl_authenticated, reject
mua_helo_restrictions = permit_mynetworks, permit
smtpd_sender_login_maps = regexp:{login_map}
"#,
        queue = p.queue_directory.display(),
        data = p.data_directory.display(),
        log = p.maillog_file.display(),
        prefix = p.maillog_prefix.display(),
        lmtp = p.lmtp_socket.display(),
        login_map = p.login_map.display(),
        size = p.message_size_limit,
    )
}

/// master.cf: the relay's four smtpd services with filtermail as `smtpd_proxy_filter` on
/// the two public ones, and Postfix's internal services, all unchrooted.
fn render_master_cf(ports: &Ports, sasl_socket: &Path) -> String {
    format!(
        r#"# Generated by chatmail-e2e for one test relay.
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{smtp} inet n - n - - smtpd
  -o syslog_name=postfix/smtp
  -o smtpd_proxy_filter=127.0.0.1:{filtermail_incoming}
  -o smtpd_relay_restrictions=reject_unauth_destination
127.0.0.1:{submission} inet n - n - - smtpd
  -o syslog_name=postfix/submission
  -o smtpd_sasl_auth_enable=yes
  -o smtpd_sasl_type=dovecot
  -o smtpd_sasl_path={sasl_socket}
  -o smtpd_reject_unlisted_recipient=no
  -o smtpd_client_restrictions=$mua_client_restrictions
  -o smtpd_helo_restrictions=$mua_helo_restrictions
  -o smtpd_sender_restrictions=$mua_sender_restrictions
  -o smtpd_recipient_restrictions=
  -o smtpd_relay_restrictions=permit_sasl_authenticated,reject
  -o smtpd_proxy_filter=127.0.0.1:{filtermail}
127.0.0.1:{reinject} inet n - n - 100 smtpd
  -o syslog_name=postfix/reinject
  -o smtpd_relay_restrictions=permit_mynetworks,reject
127.0.0.1:{reinject_incoming} inet n - n - 100 smtpd
  -o syslog_name=postfix/reinject_incoming
  -o smtpd_relay_restrictions=reject_unauth_destination
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"#,
        smtp = ports.smtp,
        submission = ports.submission,
        filtermail = ports.filtermail,
        filtermail_incoming = ports.filtermail_incoming,
        reinject = ports.reinject,
        reinject_incoming = ports.reinject_incoming,
        sasl_socket = sasl_socket.display(),
    )
}

/// A root-owned configuration file everyone may read.
fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents)
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    set_mode(path, 0o644);
}
