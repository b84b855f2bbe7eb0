//! The loopback relay: the whole relay ([`MailRelay`]: Postfix, filtermail outgoing,
//! incoming and transport, Dovecot, doveauth, lastlogin, chatmail-metadata) on 127.0.0.1
//! with a relay's standard ports, left running in the background until [`stop`].
//!
//! [`start`] creates the state dir, starts everything, waits until each service answers,
//! creates an example account, records every process it started in `STATE/pids` (name,
//! pid, and the kernel's start time, so a recycled pid is never mistaken for ours) and the
//! ports in `STATE/ports`, and returns. [`stop`] stops exactly those processes and removes
//! the state dir.

use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::dclogin::Security;
use crate::imap::Imap;
use crate::postfix::{MailRelay, Ports};
use crate::relay::{DOMAIN, MAX_MESSAGE_SIZE, Options, Started, free_port};
use crate::smtp::Smtp;

/// Where the loopback relay keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/tmp/chatmail-loopback-relay";

/// The relay's IMAP (STARTTLS) and IMAPS ports.
pub const STANDARD_IMAP_PORTS: (u16, u16) = (143, 993);

/// How long a stopped process may take to exit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// What `start` was asked for.
#[derive(Debug, Clone)]
pub struct StartOptions {
    /// The state dir (must not exist yet).
    pub state_dir: PathBuf,
    /// Free ephemeral ports instead of the standard ones (for tests next to other relays).
    pub free_ports: bool,
}

/// Every port of a running loopback relay, as recorded in `STATE/ports`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayPorts {
    pub imap: u16,
    pub imaps: u16,
    pub postfix: Ports,
}

impl RelayPorts {
    /// `name=port` lines, as in `STATE/ports`.
    pub fn to_lines(&self) -> String {
        self.named()
            .iter()
            .map(|(name, port)| format!("{name}={port}\n"))
            .collect()
    }

    /// Parses `STATE/ports`.
    pub fn parse(text: &str) -> Result<RelayPorts, String> {
        let get = |key: &str| -> Result<u16, String> {
            text.lines()
                .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                .ok_or_else(|| format!("no {key}= line"))?
                .trim()
                .parse()
                .map_err(|err| format!("{key}: {err}"))
        };
        Ok(RelayPorts {
            imap: get("imap")?,
            imaps: get("imaps")?,
            postfix: Ports {
                smtp: get("smtp")?,
                submission: get("submission")?,
                submissions: get("submissions")?,
                filtermail: get("filtermail")?,
                filtermail_incoming: get("filtermail_incoming")?,
                filtermail_http_incoming: get("filtermail_http_incoming")?,
                filtermail_transport: get("filtermail_transport")?,
                reinject: get("reinject")?,
                reinject_incoming: get("reinject_incoming")?,
            },
        })
    }

    /// Every port with its name.
    pub fn named(&self) -> [(&'static str, u16); 11] {
        let p = &self.postfix;
        [
            ("imap", self.imap),
            ("imaps", self.imaps),
            ("smtp", p.smtp),
            ("submission", p.submission),
            ("submissions", p.submissions),
            ("filtermail", p.filtermail),
            ("filtermail_incoming", p.filtermail_incoming),
            ("filtermail_http_incoming", p.filtermail_http_incoming),
            ("filtermail_transport", p.filtermail_transport),
            ("reinject", p.reinject),
            ("reinject_incoming", p.reinject_incoming),
        ]
    }
}

/// A process recorded in `STATE/pids`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub name: String,
    pub pid: u32,
    /// Field 22 of `/proc/PID/stat` (clock ticks after boot).
    pub start_time: u64,
}

impl Recorded {
    /// Whether this very process (same pid and start time) still exists and is not a
    /// zombie.
    pub fn is_alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, start)) if state != 'Z' && start == self.start_time)
    }
}

/// Reads every recorded process from `STATE/pids` (`name<TAB>pid<TAB>start time` lines).
pub fn read_pids(state_dir: &Path) -> io::Result<Vec<Recorded>> {
    let text = fs::read_to_string(state_dir.join("pids"))?;
    text.lines()
        .filter(|line| !line.is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            let bad = || io::Error::other(format!("bad line in pids: {line:?}"));
            let name = fields.next().ok_or_else(bad)?.to_string();
            let pid = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
            let start_time = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
            Ok(Recorded {
                name,
                pid,
                start_time,
            })
        })
        .collect()
}

/// What a started relay tells its user.
#[derive(Debug, Clone)]
pub struct Running {
    pub state_dir: PathBuf,
    pub ports: RelayPorts,
    pub processes: Vec<Recorded>,
    /// The example account, created by a first login.
    pub addr: String,
    pub password: String,
}

/// Starts the loopback relay and leaves it running. On failure, everything started so far
/// is stopped and the state dir removed.
pub fn start(options: &StartOptions) -> Result<Running, String> {
    let state_dir = &options.state_dir;
    if state_dir.exists() {
        return Err(format!(
            "{} exists: a loopback relay runs (or did not stop cleanly); stop it first",
            state_dir.display()
        ));
    }
    let ports = if options.free_ports {
        RelayPorts {
            imap: free_port(),
            imaps: free_port(),
            postfix: Ports::free(),
        }
    } else {
        RelayPorts {
            imap: STANDARD_IMAP_PORTS.0,
            imaps: STANDARD_IMAP_PORTS.1,
            postfix: Ports::STANDARD,
        }
    };
    for (name, port) in ports.named() {
        if let Err(err) = TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
            return Err(format!(
                "127.0.0.1:{port} ({name}) is not free: {err}; is another mail server running?"
            ));
        }
    }
    let relay_options = Options {
        state_dir: Some(state_dir.clone()),
        imap_ports: Some((ports.imap, ports.imaps)),
        loopback: true,
        require_tls: true,
        before_daemons: None,
    };
    let mail = MailRelay::start_with("", MAX_MESSAGE_SIZE, &relay_options, Some(ports.postfix))
        .ok_or("this machine cannot run the relay (see above)")?;
    // From here on, dropping `mail` (also by a panic) stops everything again.
    probe(&ports).map_err(|err| format!("{err}\n{}", mail.logs()))?;
    let (addr, password) = example_account();
    let mut imap = Imap::connect_tls(SocketAddr::from((Ipv4Addr::LOCALHOST, ports.imaps)), DOMAIN)
        .map_err(|err| format!("IMAPS: {err}\n{}", mail.logs()))?;
    let reply = imap
        .login(&addr, &password)
        .map_err(|err| format!("IMAPS LOGIN: {err}\n{}", mail.logs()))?;
    if !reply.is_ok() {
        return Err(format!(
            "the example account's login failed: {reply:?}\n{}",
            mail.logs()
        ));
    }
    let _ = imap.logout();

    write_atomic(&state_dir.join("ports"), &ports.to_lines())
        .map_err(|err| format!("cannot write the ports file: {err}"))?;
    // Recorded before detaching: a failure here still stops everything through Drop.
    let pids = mail.pids();
    let processes = record(&pids).map_err(|err| format!("{err}\n{}", mail.logs()))?;
    let lines: String = processes
        .iter()
        .map(|p| format!("{}\t{}\t{}\n", p.name, p.pid, p.start_time))
        .collect();
    write_atomic(&state_dir.join("pids"), &lines)
        .map_err(|err| format!("cannot write the pids file: {err}"))?;
    mail.detach();
    Ok(Running {
        state_dir: state_dir.clone(),
        ports,
        processes,
        addr,
        password,
    })
}

/// Stops every process recorded in `STATE/pids` (SIGTERM, then SIGKILL after 15 s) and
/// removes the state dir. Returns what was stopped; an error if no relay runs there.
pub fn stop(state_dir: &Path) -> Result<Vec<Recorded>, String> {
    if !state_dir.exists() {
        return Err(format!(
            "no loopback relay runs: {} does not exist",
            state_dir.display()
        ));
    }
    let processes = match read_pids(state_dir) {
        Ok(processes) => processes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(err) => return Err(format!("cannot read {}/pids: {err}", state_dir.display())),
    };
    // Postfix first (it stops its own children and stops taking mail), then filtermail,
    // then Dovecot, then the dict daemons Dovecot talks to: the order of the file.
    for process in &processes {
        if !process.is_alive() {
            continue;
        }
        if let Ok(pid) = i32::try_from(process.pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        let deadline = Instant::now() + STOP_GRACE;
        while process.is_alive() && Instant::now() < deadline {
            sleep(POLL_INTERVAL);
        }
        if process.is_alive() {
            if let Ok(pid) = i32::try_from(process.pid) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    let still: Vec<String> = processes
        .iter()
        .filter(|p| p.is_alive())
        .map(|p| format!("{} ({})", p.name, p.pid))
        .collect();
    if !still.is_empty() {
        return Err(format!("still running: {}", still.join(", ")));
    }
    fs::remove_dir_all(state_dir)
        .map_err(|err| format!("cannot remove {}: {err}", state_dir.display()))?;
    Ok(processes)
}

/// Waits until every service answers as a client would see it: the IMAP greetings (plain
/// and TLS), the SMTP banners (plain, TLS, and the reinjection ports) and filtermail's
/// ports (outgoing, incoming with `/mxdeliv`, transport).
fn probe(ports: &RelayPorts) -> Result<(), String> {
    let addr = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let p = &ports.postfix;
    Imap::connect(addr(ports.imap)).map_err(|err| format!("IMAP {}: {err}", ports.imap))?;
    Imap::connect_tls(addr(ports.imaps), DOMAIN)
        .map_err(|err| format!("IMAPS {}: {err}", ports.imaps))?;
    for port in [p.smtp, p.submission, p.reinject, p.reinject_incoming] {
        Smtp::connect(addr(port))
            .map_err(|err| format!("SMTP {port}: {err}"))?
            .quit();
    }
    Smtp::connect_tls(addr(p.submissions), DOMAIN)
        .map_err(|err| format!("SMTPS {}: {err}", p.submissions))?
        .quit();
    for port in [
        p.filtermail,
        p.filtermail_incoming,
        p.filtermail_http_incoming,
        p.filtermail_transport,
    ] {
        TcpStream::connect(addr(port)).map_err(|err| format!("filtermail {port}: {err}"))?;
    }
    Ok(())
}

/// A new address and password: 9 random lower-case letters and digits (doveauth's default
/// minimum length) and 20 for the password.
fn example_account() -> (String, String) {
    (format!("{}@{DOMAIN}", random_text(9)), random_text(20))
}

fn random_text(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = vec![0u8; len];
    let read = fs::File::open("/dev/urandom")
        .and_then(|mut file| io::Read::read_exact(&mut file, &mut bytes));
    read.expect("cannot read /dev/urandom");
    bytes
        .iter()
        .map(|byte| {
            let index = usize::from(*byte) % ALPHABET.len();
            char::from(ALPHABET.get(index).copied().unwrap_or(b'a'))
        })
        .collect()
}

/// Adds each process's start time from `/proc`.
fn record(started: &[Started]) -> Result<Vec<Recorded>, String> {
    started
        .iter()
        .map(|process| {
            let (_, start_time) = proc_stat(process.pid)
                .ok_or_else(|| format!("{} ({}) is not running", process.name, process.pid))?;
            Ok(Recorded {
                name: process.name.clone(),
                pid: process.pid,
                start_time,
            })
        })
        .collect()
}

/// The state (`R`, `S`, `Z`, ...) and start time of a process, from `/proc/PID/stat`.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may contain spaces; the fields after it do not.
    let (_, after) = stat.rsplit_once(") ")?;
    let mut fields = after.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // Field 3 is the state; the start time is field 22, 19 further on.
    let start_time = fields.nth(18)?.parse().ok()?;
    Some((state, start_time))
}

/// Writes a root-owned file readable by everyone, atomically (temp file and rename).
fn write_atomic(path: &Path, contents: &str) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, contents)?;
    fs::rename(&tmp, path)
}

/// The `dclogin:` URL Delta Chat scans or opens to log in to `addr` on the loopback relay:
/// IMAP and SMTP over TLS from the first byte on 127.0.0.1, the self-signed certificate
/// accepted.
pub fn dclogin_url(addr: &str, password: &str, ports: &RelayPorts) -> String {
    crate::dclogin::dclogin_url(
        addr,
        password,
        "127.0.0.1",
        ports.imaps,
        Security::Tls,
        "127.0.0.1",
        ports.postfix.submissions,
        Security::Tls,
        true,
    )
}

/// The URL as a QR code for the terminal, by `qrencode` (Debian package `qrencode`);
/// `None` if that is not installed or fails.
pub fn qr_code(text: &str) -> Option<String> {
    let output = Command::new("qrencode")
        .args(["-t", "ANSIUTF8", "-m", "2", "--"])
        .arg(text)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}
