//! What the Delta Chat tests share (`tests/deltachat.rs`, `tests/echobot.rs`): the venv
//! with the real client, a relay as those scenarios need it, their accounts as `dclogin:`
//! URLs, the JSON of their parameters, and running a Python scenario with its output
//! streamed to the test's stderr.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, sleep};
use std::time::{Duration, Instant};

use crate::binaries::workspace_root;
use crate::dclogin::{DcLogin, Security, Server};
use crate::relay::Options;
use crate::{DOMAIN, MailRelay};

/// The venv scripts/install-deps creates, relative to the workspace root.
pub const VENV: &str = ".venv-e2e";
/// Postfix's `message_size_limit`: above filtermail's default `max_message_size`.
pub const NO_POSTFIX_LIMIT: u64 = 64 * 1024 * 1024;

/// The venv's Python with deltachat-rpc-client and the rpc server next to it, or `None`
/// (after printing why) outside CI; in CI a missing venv panics, as a missing Dovecot does.
pub fn require_deltachat() -> Option<PathBuf> {
    let venv = workspace_root().join(VENV);
    let python = venv.join("bin/python");
    let server = venv.join("bin/deltachat-rpc-server");
    let importable = python.exists()
        && Command::new(&python)
            .args(["-c", "import deltachat_rpc_client"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success());
    if importable && server.exists() {
        return Some(python);
    }
    let why = format!(
        "{} lacks deltachat-rpc-client or deltachat-rpc-server (run scripts/install-deps)",
        venv.display()
    );
    if std::env::var_os("CI").is_some_and(|value| !value.is_empty()) {
        panic!("the Delta Chat venv is required in CI: {why}");
    }
    let test = std::thread::current().name().unwrap_or("test").to_string();
    eprintln!("skipping {test}: {why}");
    None
}

/// The venv's deltachat-rpc-server.
pub fn rpc_server() -> PathBuf {
    workspace_root().join(VENV).join("bin/deltachat-rpc-server")
}

/// The venv's Python and a relay with `ini` for a Delta Chat scenario (TLS required on
/// every SMTP port, no Postfix size limit), or `None` when the machine cannot run them.
pub fn start(ini: &str) -> Option<(PathBuf, MailRelay)> {
    let python = require_deltachat()?;
    let options = Options {
        require_tls: true,
        ..Options::default()
    };
    let mail = MailRelay::start_with(ini, NO_POSTFIX_LIMIT, &options, None)?;
    Some((python, mail))
}

/// Where the client reaches the relay: IMAPS and submissions (SMTP over TLS), both with
/// the relay's self-signed certificate, as a chatmail relay on an underscore domain has.
pub fn servers(mail: &MailRelay) -> (Server, Server) {
    let imap = Server {
        host: "127.0.0.1".to_string(),
        port: mail.relay().imaps_addr().port(),
        security: Security::Tls,
    };
    let smtp = Server {
        host: "127.0.0.1".to_string(),
        port: mail.submissions_addr().port(),
        security: Security::Tls,
    };
    (imap, smtp)
}

/// One account a scenario configures in Delta Chat from its `dclogin:` URL.
pub struct Account {
    pub addr: String,
    pub password: String,
    pub dclogin: String,
}

impl Account {
    /// `localpart@DOMAIN` with `password`, at the relay's [`servers`].
    pub fn new(mail: &MailRelay, localpart: &str, password: &str) -> Account {
        let addr = format!("{localpart}@{DOMAIN}");
        let (imap, smtp) = servers(mail);
        let dclogin = DcLogin {
            addr: addr.clone(),
            password: password.to_string(),
            imap,
            smtp,
            // The relay's certificate is self-signed.
            accept_invalid_certs: true,
        }
        .url();
        Account {
            addr,
            password: password.to_string(),
            dclogin,
        }
    }

    /// The account as the scenarios read it: `{"addr", "password", "dclogin"}`.
    pub fn json(&self) -> String {
        format!(
            "{{\"addr\": {}, \"password\": {}, \"dclogin\": {}}}",
            json_str(&self.addr),
            json_str(&self.password),
            json_str(&self.dclogin)
        )
    }
}

/// A JSON string literal.
pub fn json_str(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A path as a JSON string literal.
pub fn json_path(path: &Path) -> String {
    json_str(&path.display().to_string())
}

/// Starts `python script params` in `dir`, unbuffered, with stdout and stderr piped.
///
/// # Panics
///
/// When Python cannot be started.
pub fn spawn_scenario(python: &Path, script: &Path, params: &Path, dir: &Path) -> Child {
    Command::new(python)
        .arg(script)
        .arg(params)
        .current_dir(dir)
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", python.display()))
}

/// Forwards `pipe` line by line to stderr (captured per test by the harness), prefixed
/// with `[prefix]`, and to `all`; hands every line to `on_line` too.
pub fn stream<R: Read + Send + 'static>(
    pipe: Option<R>,
    prefix: &str,
    all: &Arc<Mutex<String>>,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> JoinHandle<()> {
    let prefix = prefix.to_string();
    let all = all.clone();
    std::thread::spawn(move || {
        let Some(pipe) = pipe else {
            return;
        };
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else {
                return;
            };
            eprintln!("[{prefix}] {line}");
            if let Ok(mut all) = all.lock() {
                all.push_str(&line);
                all.push('\n');
            }
            on_line(&line);
        }
    })
}

/// Waits for `child` up to `timeout`; kills it (only it) and returns `None` after that.
pub fn wait(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}
