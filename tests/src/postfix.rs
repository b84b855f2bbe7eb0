//! A relay with the real Debian Postfix in front: a private Postfix instance from the
//! relay's state dir, configured from the templates in `packaging/conf/postfix/` (wired to
//! our filtermail as a chatmail relay's master.cf wires it), delivering into the relay's
//! Dovecot over LMTP.
//!
//! ```text
//! client ─AUTH─▶ submission (587) / submissions (465, TLS) ─smtpd_proxy_filter─▶
//!          filtermail outgoing ─▶ reinject 127.0.0.1:postfix_reinject_port ─▶ authclean
//!          ─▶ queue ─▶ Dovecot LMTP
//! MTA    ─▶ smtp (25) ─smtpd_proxy_filter─▶ filtermail incoming
//!          ─▶ reinject 127.0.0.1:postfix_reinject_port_incoming ─▶ queue ─▶ Dovecot LMTP
//! ```
//!
//! The test relays use free ports and require TLS only on the submissions port: on 25 and
//! 587 the tests speak plaintext SMTP (TLS `may`, AUTH offered without TLS); the loopback
//! relay, and test relays started with [`Options::require_tls`], require TLS there as a
//! relay does. Left out, as on a relay without DKIM: OpenDKIM.
//! Remote delivery is disabled (`default_transport` is `error:`) unless the relay is
//! started with [`MailRelay::start_with_transport`] or is the loopback relay: then Postfix
//! hands mail for other domains to `filtermail INI transport` over LMTP, as relay 1.12
//! does. Every service runs
//! unchrooted, so absolute paths in the state dir work.
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
use crate::host::{POSTFIX, POSTFIX_MASTER, filtermail_user, require_postfix};
use crate::relay::{DOMAIN, Options, Relay, Started, read_lossy, read_message, set_mode, stop};
use crate::smtp::Smtp;
use crate::templates::render_template;

/// How long Postfix and filtermail may take to listen after start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// After the last expected message arrived, how long [`MailRelay::delivered`] waits to be
/// sure nothing else follows.
const SETTLE: Duration = Duration::from_millis(500);

/// The ports of one relay, all on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Postfix's submission smtpd (587 on a relay, STARTTLS), proxy-filtered by
    /// filtermail outgoing.
    pub submission: u16,
    /// Postfix's submissions smtpd (465 on a relay, TLS from the first byte), the same.
    pub submissions: u16,
    /// Postfix's port-25-like smtpd, proxy-filtered by filtermail incoming.
    pub smtp: u16,
    /// `filtermail_smtp_port` (10080).
    pub filtermail: u16,
    /// `filtermail_smtp_port_incoming` (10081).
    pub filtermail_incoming: u16,
    /// `filtermail_http_port_incoming` (10082): filtermail incoming's `/mxdeliv`.
    pub filtermail_http_incoming: u16,
    /// `filtermail_lmtp_port_transport` (10083): filtermail transport, Postfix's
    /// `default_transport`; used only by a relay started with a transport.
    pub filtermail_transport: u16,
    /// `postfix_reinject_port` (10025).
    pub reinject: u16,
    /// `postfix_reinject_port_incoming` (10026).
    pub reinject_incoming: u16,
}

impl Ports {
    /// A relay's ports: 587, 465, 25, and chatmail.ini's defaults for the others.
    pub const STANDARD: Ports = Ports {
        submission: 587,
        submissions: 465,
        smtp: 25,
        filtermail: 10080,
        filtermail_incoming: 10081,
        filtermail_http_incoming: 10082,
        filtermail_transport: 10083,
        reinject: 10025,
        reinject_incoming: 10026,
    };

    /// Nine distinct ports that were free a moment ago (all bound at once, then released).
    pub fn free() -> Ports {
        let listeners: [TcpListener; 9] = std::array::from_fn(|_| {
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("cannot bind a port")
        });
        let [
            submission,
            submissions,
            smtp,
            filtermail,
            filtermail_incoming,
            filtermail_http_incoming,
            filtermail_transport,
            reinject,
            reinject_incoming,
        ] = listeners.map(|listener| listener.local_addr().expect("local address").port());
        Ports {
            submission,
            submissions,
            smtp,
            filtermail,
            filtermail_incoming,
            filtermail_http_incoming,
            filtermail_transport,
            reinject,
            reinject_incoming,
        }
    }
}

/// A [`Relay`] (Dovecot, doveauth, lastlogin, chatmail-metadata) plus Postfix and
/// filtermail outgoing, incoming and, with a transport, transport; dropping it stops
/// Postfix and filtermail, then the relay.
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
    filtermail_transport_log: PathBuf,
    /// Where Postfix's `default_transport` goes: `filtermail INI transport`'s LMTP port,
    /// or `None` for a relay that delivers nothing to other relays.
    transport_port: Option<u16>,
    /// The Postfix master process (`master -c DIR`, in the foreground), stopped first.
    master: Option<Child>,
    filtermail: Option<Child>,
    filtermail_incoming: Option<Child>,
    filtermail_transport: Option<Child>,
    /// Detached: Drop stops nothing.
    detached: bool,
    /// Whether filtermail incoming verifies DKIM (otherwise `FILTERMAIL_SKIP_DKIM=1`).
    verify_dkim: bool,
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
        MailRelay::start_with(extra_ini, message_size_limit, &Options::default(), None)
    }

    /// Like [`MailRelay::start`], with the relay set up as `options` say and Postfix's and
    /// filtermail's ports fixed (`None`: free ports). The loopback relay
    /// ([`Options::loopback`]) is complete: it also runs filtermail's transport mode as
    /// `default_transport`, towards other relays' standard ports 25 and 443.
    pub fn start_with(
        extra_ini: &str,
        message_size_limit: u64,
        options: &Options,
        ports: Option<Ports>,
    ) -> Option<MailRelay> {
        let transport = options.loopback.then_some(TransportTarget::STANDARD);
        MailRelay::start_full(
            extra_ini,
            message_size_limit,
            options,
            ports,
            false,
            transport,
        )
    }

    /// Like [`MailRelay::start`], plus filtermail's transport mode as Postfix's
    /// `default_transport` (`lmtp-filtermail:inet:[127.0.0.1]:PORT`, as relay 1.12 wires
    /// it), delivering to other relays on `target`'s ports.
    pub fn start_with_transport(
        extra_ini: &str,
        message_size_limit: u64,
        target: TransportTarget,
    ) -> Option<MailRelay> {
        MailRelay::start_full(
            extra_ini,
            message_size_limit,
            &Options::default(),
            None,
            false,
            Some(target),
        )
    }

    /// Like [`MailRelay::start`], but filtermail incoming verifies DKIM as in production.
    /// Every other start sets `FILTERMAIL_SKIP_DKIM=1` for it, as upstream's tests do:
    /// test mail from `example.org` cannot carry a signature whose key DNS publishes.
    pub fn start_verifying_dkim(extra_ini: &str, message_size_limit: u64) -> Option<MailRelay> {
        MailRelay::start_full(
            extra_ini,
            message_size_limit,
            &Options::default(),
            None,
            true,
            None,
        )
    }

    fn start_full(
        extra_ini: &str,
        message_size_limit: u64,
        options: &Options,
        ports: Option<Ports>,
        verify_dkim: bool,
        transport: Option<TransportTarget>,
    ) -> Option<MailRelay> {
        require_postfix()?;
        // Free ports are only free until someone binds them: when tests start relays in
        // parallel, another may take one before Postfix or filtermail does, which then
        // exits. Such a start is retried on fresh ports, a bounded number of times.
        const ATTEMPTS: u32 = 3;
        for attempt in 1..=ATTEMPTS {
            let chosen = ports.unwrap_or_else(Ports::free);
            let transport_port = transport.map(|_| chosen.filtermail_transport);
            let transport_ini = match (transport, transport_port) {
                (Some(target), Some(port)) => format!(
                    "filtermail_lmtp_port_transport = {port}\n\
                     filtermail_transport_smtp_port = {}\n\
                     filtermail_transport_https_port = {}\n",
                    target.smtp_port, target.https_port
                ),
                _ => String::new(),
            };
            let ini = format!(
                "filtermail_smtp_port = {}\n\
                 filtermail_smtp_port_incoming = {}\n\
                 filtermail_http_port_incoming = {}\n\
                 postfix_reinject_port = {}\n\
                 postfix_reinject_port_incoming = {}\n\
                 {transport_ini}{extra_ini}",
                chosen.filtermail,
                chosen.filtermail_incoming,
                chosen.filtermail_http_incoming,
                chosen.reinject,
                chosen.reinject_incoming,
            );
            let relay = Relay::start_with(&ini, options)?;
            let mut mail = MailRelay {
                ports: chosen,
                postfix_config: relay.path("postfix-etc"),
                postfix_log: relay.path("postfix.log"),
                postfix_stderr: relay.path("postfix.stderr"),
                filtermail_log: relay.path("filtermail.log"),
                filtermail_incoming_log: relay.path("filtermail-incoming.log"),
                filtermail_transport_log: relay.path("filtermail-transport.log"),
                transport_port,
                master: None,
                filtermail: None,
                filtermail_incoming: None,
                filtermail_transport: None,
                verify_dkim,
                detached: false,
                relay,
            };
            match mail.start_services(message_size_limit) {
                Ok(()) => return Some(mail),
                Err(exited) if ports.is_none() && attempt < ATTEMPTS => {
                    eprintln!("{exited}; starting again on other free ports");
                }
                Err(exited) => panic!("{exited}\n{}", mail.logs()),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// Starts the filtermail instances, then Postfix; `Err` when one of them exits before
    /// it listens (a port taken meanwhile). What started is stopped by Drop.
    fn start_services(&mut self, message_size_limit: u64) -> Result<(), String> {
        let ports = self.ports;
        self.filtermail = Some(self.start_filtermail("outgoing", ports.filtermail)?);
        self.filtermail_incoming =
            Some(self.start_filtermail("incoming", ports.filtermail_incoming)?);
        if let Some(port) = self.transport_port {
            self.filtermail_transport = Some(self.start_filtermail("transport", port)?);
        }
        self.start_postfix(message_size_limit)
    }

    /// The relay under Postfix: paths, accounts, IMAP, Dovecot's logs.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// The chosen ports.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// Where the submission service listens (filtermail outgoing behind it).
    pub fn submission_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.submission))
    }

    /// Where the submissions service (implicit TLS) listens (filtermail outgoing behind it).
    pub fn submissions_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.submissions))
    }

    /// The processes this relay started, in the order to stop them: Postfix (which stops
    /// its own children), filtermail, then the relay's (see [`Relay::pids`]).
    pub fn pids(&self) -> Vec<Started> {
        let mut started: Vec<Started> = [
            ("postfix", &self.master),
            ("filtermail outgoing", &self.filtermail),
            ("filtermail incoming", &self.filtermail_incoming),
            ("filtermail transport", &self.filtermail_transport),
        ]
        .into_iter()
        .filter_map(|(name, child)| {
            child.as_ref().map(|child| Started {
                name: name.to_string(),
                pid: child.id(),
            })
        })
        .collect();
        started.extend(self.relay.pids());
        started
    }

    /// Lets every process outlive this value (see [`Relay::detach`]).
    pub fn detach(mut self) {
        self.detached = true;
        self.relay.set_detached();
    }

    /// Where filtermail incoming's HTTP listener (`/mxdeliv`, behind nginx on a relay)
    /// listens.
    pub fn mxdeliv_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.ports.filtermail_http_incoming))
    }

    /// Where the port-25 service listens (filtermail incoming behind it).
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

    /// The messages delivered to `addr`'s INBOX (maildir `new/` and `cur/`), as text
    /// (uncompressed: Dovecot's zlib plugin stores them gzipped), ordered by file name (Dovecot's names start with the delivery time).
    pub fn messages(&self, addr: &str) -> Vec<String> {
        let maildir = self.relay.maildir(addr);
        let mut files = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(entries) = fs::read_dir(maildir.join(sub)) {
                files.extend(entries.flatten().map(|entry| entry.path()));
            }
        }
        files.sort_by_key(|path| path.file_name().map(|name| name.to_owned()));
        files.iter().map(|path| read_message(path)).collect()
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

    /// Waits up to `timeout` until `addr` has `count` messages, then a little longer, and
    /// asserts that no more arrived (a refused message that was queued after all would show
    /// up here); returns them.
    pub fn delivered(&self, addr: &str, count: usize, timeout: Duration) -> Vec<String> {
        self.wait_for_messages(addr, count, timeout);
        sleep(SETTLE);
        let messages = self.messages(addr);
        assert_eq!(messages.len(), count, "{addr}\n{}", self.logs());
        messages
    }

    /// Whether `addr` has the `enforceE2EEincoming` marker doveauth creates with a new
    /// account (filtermail incoming then refuses cleartext mail to it).
    pub fn enforces_e2ee_incoming(&self, addr: &str) -> bool {
        self.relay
            .maildir(addr)
            .join("enforceE2EEincoming")
            .exists()
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

    /// filtermail transport's stderr so far (empty without a transport).
    pub fn filtermail_transport_log(&self) -> String {
        read_lossy(&self.filtermail_transport_log)
    }

    /// Every log (relay, filtermail, Postfix), for failure messages.
    pub fn logs(&self) -> String {
        let mut all = self.relay.logs();
        for (name, path) in [
            ("filtermail outgoing stderr", &self.filtermail_log),
            ("filtermail incoming stderr", &self.filtermail_incoming_log),
            (
                "filtermail transport stderr",
                &self.filtermail_transport_log,
            ),
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

    /// Starts `filtermail INI MODE` and waits for `entering serving loop`; `Err` with its
    /// log if it exits first (a port taken), panics with every log if it does not listen
    /// in time.
    ///
    /// Incoming runs as vmail: it looks for the recipients' `enforceE2EEincoming` markers
    /// inside their owner-only maildirs. Outgoing and transport touch no mailbox and run as
    /// the `filtermail` user of their own.
    fn start_filtermail(&self, mode: &str, port: u16) -> Result<Child, String> {
        let log_path = match mode {
            "outgoing" => &self.filtermail_log,
            "incoming" => &self.filtermail_incoming_log,
            _ => &self.filtermail_transport_log,
        };
        let log = File::create(log_path).expect("cannot create a filtermail log");
        let (uid, gid) = if mode == "incoming" {
            let vmail = self.relay.vmail();
            (vmail.uid, vmail.gid)
        } else {
            filtermail_user()
        };
        let mut command = Command::new(&binaries().filtermail);
        self.relay.own_group(&mut command);
        command
            .arg(self.relay.path("chatmail.ini"))
            .arg(mode)
            .uid(uid.as_raw())
            .gid(gid.as_raw())
            .current_dir(self.relay.path(""))
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .env_remove("FILTERMAIL_SKIP_DKIM");
        if mode == "incoming" && !self.verify_dkim {
            command.env("FILTERMAIL_SKIP_DKIM", "1");
        }
        let mut child = command
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
                return Ok(child);
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = read_lossy(log_path);
                return Err(format!("filtermail {mode} exited with {status}: {log}"));
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
    /// Starts Postfix's master; `Err` when it exits before listening (a port taken).
    fn start_postfix(&mut self, message_size_limit: u64) -> Result<(), String> {
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
        let path = |path: &Path| path.display().to_string();
        let main_cf = render_template(
            "postfix/main.cf",
            &[
                ("queue_directory", path(&queue)),
                ("data_directory", path(&data)),
                ("maillog_file", path(&self.postfix_log)),
                ("maillog_file_prefixes", path(&root)),
                ("mail_domain", DOMAIN.to_string()),
                ("myhostname", "localhost".to_string()),
                ("tls_cert", path(&self.relay.tls_cert())),
                ("tls_key", path(&self.relay.tls_key())),
                ("config_directory", path(config)),
                ("lmtp_socket", path(&self.relay.path("lmtp.socket"))),
                (
                    "default_transport",
                    match self.transport_port {
                        Some(port) => format!("lmtp-filtermail:inet:[127.0.0.1]:{port}"),
                        None => "error:this relay delivers nothing to other relays".to_string(),
                    },
                ),
                ("inet_interfaces", "127.0.0.1".to_string()),
                ("inet_protocols", "ipv4".to_string()),
                ("mynetworks", "127.0.0.0/8".to_string()),
                ("max_message_size", message_size_limit.to_string()),
            ],
        );
        write_file(&config.join("main.cf"), &main_cf);
        let ports = &self.ports;
        let listen = |port: u16| format!("127.0.0.1:{port}");
        // Most tests speak plaintext SMTP on 25 and 587; the loopback relay requires TLS.
        let options = self.relay.options();
        let (tls_level, tls_auth_only) = if options.loopback || options.require_tls {
            ("encrypt", "yes")
        } else {
            ("may", "no")
        };
        let ini = self.relay.path("chatmail.ini");
        let ini = chatmail_config::Config::load(&ini)
            .unwrap_or_else(|err| panic!("the relay's chatmail.ini does not load: {err}"));
        let max_smtp_connections = ini.max_smtp_connections;
        let master_cf = render_template(
            "postfix/master.cf",
            &[
                ("smtp_listen", listen(ports.smtp)),
                ("smtp_tls_level", tls_level.to_string()),
                (
                    "filtermail_smtp_port_incoming",
                    ports.filtermail_incoming.to_string(),
                ),
                ("submission_listen", listen(ports.submission)),
                ("max_smtp_connections", max_smtp_connections.to_string()),
                ("submission_tls_level", tls_level.to_string()),
                ("sasl_socket", path(&self.relay.path("sasl.socket"))),
                ("submission_tls_auth_only", tls_auth_only.to_string()),
                (
                    "smtp_connections_per_client",
                    (max_smtp_connections / 5).to_string(),
                ),
                ("filtermail_smtp_port", ports.filtermail.to_string()),
                ("submissions_listen", listen(ports.submissions)),
                ("postfix_reinject_port", ports.reinject.to_string()),
                (
                    "postfix_reinject_port_incoming",
                    ports.reinject_incoming.to_string(),
                ),
                ("config_directory", path(config)),
            ],
        );
        write_file(&config.join("master.cf"), &master_cf);
        for table in [
            "login_map",
            "lmtp_header_cleanup",
            "submission_header_cleanup",
            "smtp_tls_policy_map",
        ] {
            let text = render_template(&format!("postfix/{table}"), &[]);
            write_file(&config.join(table), &text);
        }

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

        // No own_group here: the master calls setsid() itself, which fails (and the master
        // exits 1 without a word) in a process that already leads its process group.
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
            self.ports.submissions,
            self.ports.smtp,
            self.ports.reinject,
            self.ports.reinject_incoming,
        ]
        .map(|port| SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = master.try_wait() {
                return Err(format!("postfix master exited with {status}"));
            }
            // The master binds every inet listener before it logs "daemon started".
            if self.postfix_log().contains("daemon started")
                && addrs.iter().all(|addr| TcpStream::connect(addr).is_ok())
            {
                self.master = Some(master);
                return Ok(());
            }
            sleep(POLL_INTERVAL);
        }
        stop(&mut master);
        panic!("postfix does not listen on {addrs:?}\n{}", self.logs());
    }
}

impl Drop for MailRelay {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        // Postfix first (its SIGTERM handler stops every Postfix child), then filtermail;
        // the relay's own Drop runs afterwards.
        for child in [
            &mut self.master,
            &mut self.filtermail,
            &mut self.filtermail_incoming,
            &mut self.filtermail_transport,
        ] {
            if let Some(mut child) = child.take() {
                stop(&mut child);
            }
        }
    }
}

/// The other relays' ports for filtermail's transport mode
/// (`filtermail_transport_smtp_port`, `filtermail_transport_https_port`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransportTarget {
    pub smtp_port: u16,
    pub https_port: u16,
}

impl TransportTarget {
    /// A relay's: SMTP on 25, HTTPS on 443.
    pub const STANDARD: TransportTarget = TransportTarget {
        smtp_port: 25,
        https_port: 443,
    };
}

/// A root-owned configuration file everyone may read.
fn write_file(path: &Path, contents: &str) {
    fs::write(path, contents)
        .unwrap_or_else(|err| panic!("cannot write {}: {err}", path.display()));
    set_mode(path, 0o644);
}
