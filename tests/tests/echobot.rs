//! The echo bot's binary against the loopback relay (Postfix with filtermail, Dovecot with
//! doveauth, lastlogin and chatmail-metadata), with the real Delta Chat client
//! (deltachat-rpc-server and deltachat-rpc-client from PyPI, in the venv
//! scripts/install-deps makes) on the other side.
//!
//! The test starts a relay as the Delta Chat scenarios do (TLS required on every SMTP
//! port), builds `echobot` and starts it with a state dir in the relay's temp dir, pointed
//! at the relay's IMAPS and submissions ports (`--imap-server`, `--smtp-server`; the bot
//! otherwise uses ports 993 and 465 of `mail_domain`), and waits for its login and
//! `invite-link.txt`. Then tests/deltachat/echobot.py joins the bot through that link with
//! a fresh account and checks the echoes. The scenario asks for the bot to be stopped and
//! started again by printing `@control N stop-bot` / `@control N start-bot`; this test
//! does it (SIGTERM, then the same command line) and answers by writing the file `N` in
//! the control directory (the invite link after a start), or fails the test.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

use chatmail_e2e::DOMAIN;
use chatmail_e2e::binaries::workspace_root;
use chatmail_e2e::deltachat::{
    Account, json_path, json_str, rpc_server, spawn_scenario, start, stream, wait,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The scenario, relative to the workspace root.
const SCENARIO: &str = "tests/deltachat/echobot.py";
/// How long the scenario may run before it is killed; each of its own waits is shorter.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(420);
/// How long the bot may take from its start to its first IMAP login.
const BOT_START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the bot may take to exit after SIGTERM.
const BOT_STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// What a line of the scenario starts with when it asks for something.
const CONTROL_PREFIX: &str = "@control ";
const PASSWORD: &str = "echo-horse-9";

/// Builds the bot (once per process) the way the harness builds the daemons, and returns
/// its executable; panics with cargo's output if the build fails.
fn echobot_binary() -> PathBuf {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let built = BINARY.get_or_init(|| {
        let root = workspace_root();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let output = Command::new(&cargo)
            .args(["build", "-p", "echobot", "--bin", "echobot"])
            .current_dir(&root)
            .output()
            .map_err(|err| format!("cannot run {cargo:?} build: {err}"))?;
        if !output.status.success() {
            return Err(format!(
                "cargo build -p echobot failed ({}):\n{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => root.join(dir),
            _ => root.join("target"),
        };
        let path = target.join("debug/echobot");
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "cargo built echobot but {} does not exist",
                path.display()
            ))
        }
    });
    match built {
        Ok(path) => path.clone(),
        Err(err) => panic!("{err}"),
    }
}

/// One run of the bot's binary; dropping it kills the process if it still runs.
struct BotProcess {
    child: Option<Child>,
    log: PathBuf,
}

/// How the bot is started, the same for every run.
struct BotCommand {
    binary: PathBuf,
    ini: PathBuf,
    state_dir: PathBuf,
    imap: String,
    smtp: String,
}

impl BotCommand {
    /// Starts the bot with its output in `log` and waits until it has logged in and
    /// written its invite link; returns the process and that link, or why not.
    fn start(&self, log: PathBuf) -> Result<(BotProcess, String), String> {
        let file = fs::File::create(&log).map_err(|err| format!("{}: {err}", log.display()))?;
        let stderr = file.try_clone().map_err(|err| err.to_string())?;
        let child = Command::new(&self.binary)
            .arg(&self.ini)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--imap-server")
            .arg(&self.imap)
            .arg("--smtp-server")
            .arg(&self.smtp)
            .env("RUST_LOG", "info")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(stderr)
            .spawn()
            .map_err(|err| format!("cannot start {}: {err}", self.binary.display()))?;
        let mut bot = BotProcess {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + BOT_START_TIMEOUT;
        loop {
            let log = bot.log_text();
            if log.contains("logged in as ") {
                break;
            }
            if let Some(Ok(Some(status))) = bot.child.as_mut().map(Child::try_wait) {
                return Err(format!("echobot exited with {status} at start:\n{log}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "echobot did not log in within {BOT_START_TIMEOUT:?}:\n{log}"
                ));
            }
            sleep(Duration::from_millis(100));
        }
        let path = self.state_dir.join("invite-link.txt");
        let link = fs::read_to_string(&path)
            .map_err(|err| format!("{}: {err}", path.display()))?
            .trim_end()
            .to_string();
        let logged = format!("invite link: {link}\n");
        if link.is_empty() || !bot.log_text().contains(&logged) {
            return Err(format!(
                "invite-link.txt ({link:?}) is not the link the bot logged:\n{}",
                bot.log_text()
            ));
        }
        Ok((bot, link))
    }
}

impl BotProcess {
    fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .unwrap_or_default()
    }

    /// SIGTERM, then waits for the exit; the bot must exit by itself, with success.
    fn stop(&mut self) -> Result<ExitStatus, String> {
        let Some(mut child) = self.child.take() else {
            return Err("the bot is not running".to_string());
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).map_err(|err| err.to_string())?);
        kill(pid, Signal::SIGTERM).map_err(|err| format!("cannot signal the bot: {err}"))?;
        let status = wait(&mut child, BOT_STOP_TIMEOUT).ok_or_else(|| {
            format!("the bot did not exit within {BOT_STOP_TIMEOUT:?} of SIGTERM")
        })?;
        if status.success() {
            Ok(status)
        } else {
            Err(format!("the bot exited with {status} on SIGTERM"))
        }
    }
}

impl Drop for BotProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes `content` to `path` atomically (the scenario polls for the file).
fn write_atomic(path: &Path, content: &str) {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, content).unwrap_or_else(|err| panic!("{}: {err}", tmp.display()));
    fs::rename(&tmp, path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
}

/// The bot's runs so far and what the scenario asked for.
struct Harness {
    command: BotCommand,
    running: Option<BotProcess>,
    /// Logs of every run, in order.
    logs: Vec<PathBuf>,
    control_dir: PathBuf,
    relay_dir: PathBuf,
}

impl Harness {
    fn start_bot(&mut self) -> Result<String, String> {
        let log = self
            .relay_dir
            .join(format!("echobot-{}.log", self.logs.len() + 1));
        self.logs.push(log.clone());
        let (bot, link) = self.command.start(log)?;
        self.running = Some(bot);
        Ok(link)
    }

    /// Carries out `request` (`N stop-bot` or `N start-bot`) and acknowledges it.
    fn control(&mut self, request: &str) -> Result<(), String> {
        let (number, what) = request
            .split_once(' ')
            .filter(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| format!("malformed control request {request:?}"))?;
        let answer = match what {
            "stop-bot" => {
                let mut bot = self
                    .running
                    .take()
                    .ok_or("stop-bot while the bot is not running")?;
                let status = bot.stop()?;
                format!("stopped {status}")
            }
            "start-bot" => {
                if self.running.is_some() {
                    return Err("start-bot while the bot runs".to_string());
                }
                self.start_bot()?
            }
            other => return Err(format!("unknown control request {other:?}")),
        };
        write_atomic(&self.control_dir.join(number), &answer);
        Ok(())
    }

    fn bot_logs(&self) -> String {
        let mut out = String::new();
        for log in &self.logs {
            let text = fs::read(log)
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default();
            let _ = write!(out, "----- {}\n{text}", log.display());
        }
        out
    }
}

#[test]
fn delta_chat_joins_the_bot_and_gets_text_and_file_back_across_a_restart() {
    let Some((python, mail)) = start("") else {
        return;
    };
    let relay = mail.relay();
    let imaps = mail.relay().imaps_addr();
    let submissions = mail.submissions_addr();

    let state_dir = relay.path("echobot-state");
    fs::create_dir(&state_dir).expect("cannot create the bot's state dir");
    fs::set_permissions(&state_dir, fs::Permissions::from_mode(0o700))
        .expect("cannot chmod the bot's state dir");
    let control_dir = relay.path("echobot-control");
    fs::create_dir(&control_dir).expect("cannot create the control dir");
    let mut harness = Harness {
        command: BotCommand {
            binary: echobot_binary(),
            ini: relay.path("chatmail.ini"),
            state_dir: state_dir.clone(),
            imap: imaps.to_string(),
            smtp: submissions.to_string(),
        },
        running: None,
        logs: Vec::new(),
        control_dir: control_dir.clone(),
        relay_dir: relay.path(""),
    };
    let link = harness
        .start_bot()
        .unwrap_or_else(|err| panic!("{err}\n{}", mail.logs()));
    eprintln!("bot invite link: {link}");

    // The first joins with SecureJoin v3, the second with the legacy start.
    let accounts: Vec<String> = ["echouser1", "echouser2"]
        .iter()
        .map(|localpart| Account::new(&mail, localpart, PASSWORD).json())
        .collect();
    let root = workspace_root();
    let params = format!(
        "{{\n\
         \"domain\": {domain},\n\
         \"host\": \"127.0.0.1\",\n\
         \"mailboxes_dir\": {mailboxes},\n\
         \"rpc_server\": {rpc_server},\n\
         \"accounts_dir\": {accounts_dir},\n\
         \"accounts\": [{accounts}],\n\
         \"invite_link\": {link},\n\
         \"control_dir\": {control}\n\
         }}\n",
        domain = json_str(DOMAIN),
        mailboxes = json_path(relay.mailboxes_dir()),
        rpc_server = json_path(&rpc_server()),
        accounts_dir = json_path(&relay.path("deltachat-accounts")),
        accounts = accounts.join(", "),
        link = json_str(&link),
        control = json_path(&control_dir),
    );
    let params_path = relay.path("echobot-params.json");
    fs::write(&params_path, params).expect("cannot write the scenario parameters");

    let mut child = spawn_scenario(&python, &root.join(SCENARIO), &params_path, &relay.path(""));
    let output = Arc::new(Mutex::new(String::new()));
    let (control_tx, control_rx): (Sender<String>, Receiver<String>) = mpsc::channel();
    let readers = [
        stream(child.stdout.take(), "echobot.py", &output, move |line| {
            if let Some(request) = line.strip_prefix(CONTROL_PREFIX) {
                let _ = control_tx.send(request.to_string());
            }
        }),
        stream(child.stderr.take(), "echobot.py", &output, |_| {}),
    ];
    let deadline = Instant::now() + SCENARIO_TIMEOUT;
    let outcome: Result<ExitStatus, String> = loop {
        match control_rx.recv_timeout(Duration::from_millis(100)) {
            Ok(request) => {
                eprintln!("control: {request}");
                if let Err(err) = harness.control(&request) {
                    break Err(format!("control request {request:?} failed: {err}"));
                }
                continue;
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {}
        }
        if let Ok(Some(status)) = child.try_wait() {
            // Requests printed just before the exit are answered by nobody: a failure.
            if let Ok(request) = control_rx.try_recv() {
                break Err(format!("the scenario exited after requesting {request:?}"));
            }
            break Ok(status);
        }
        if Instant::now() > deadline {
            break Err(format!(
                "the scenario did not end within {SCENARIO_TIMEOUT:?}"
            ));
        }
    };
    if outcome.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    for reader in readers {
        let _ = reader.join();
    }
    let output = output.lock().map(|o| o.clone()).unwrap_or_default();
    // The bot stops cleanly at the end too.
    let stopped = harness.running.take().map(|mut bot| bot.stop());
    let report = |what: &str| {
        format!(
            "{what}\n----- scenario output\n{output}\n{}\n{}",
            harness.bot_logs(),
            mail.logs()
        )
    };
    match &outcome {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("{}", report(&format!("the scenario failed ({status})"))),
        Err(err) => panic!("{}", report(err)),
    }

    assert!(
        matches!(stopped, Some(Ok(_))),
        "{}",
        report(&format!("stopping the bot at the end: {stopped:?}"))
    );
    // The scenario restarted the bot once; the second run kept account, key and link.
    let logs: Vec<String> = harness
        .logs
        .iter()
        .map(|log| String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).into_owned())
        .collect();
    let [first, second] = logs.as_slice() else {
        panic!("{}", report("expected two bot runs"));
    };
    // Before the restart: SecureJoin v3 (first account) and legacy (second), each step
    // answered once; the first account's text and file, /help, the second account's text
    // and large file. After it: the text sent while the bot was down and one more, and no
    // SecureJoin step.
    let expected = [
        (first, "SecureJoin, sent vc-pubkey", 1),
        (first, "SecureJoin, sent vc-auth-required", 1),
        (first, "SecureJoin, sent vc-contact-confirm", 2),
        (first, ": echoed", 4),
        (first, ": /help answered", 1),
        // The large file's pre-message, whose caption the post-message's echo carries.
        (first, ": ignored (PreMessage)", 1),
        (second, ": echoed", 2),
        (second, "SecureJoin, sent", 0),
        (second, ": /help answered", 0),
    ];
    for (log, line, times) in expected {
        let found = log.matches(line).count();
        assert_eq!(
            found,
            times,
            "{}",
            report(&format!("{line:?} {found} times in a bot log, not {times}"))
        );
    }
    for log in [first, second] {
        // Unreadable messages, refused or abandoned replies, reconnections; replies that
        // needed a second attempt.
        for bad in ["ERROR: ", "WARNING: ", ", attempt "] {
            assert!(
                !log.contains(bad),
                "{}",
                report(&format!("bot log has {bad:?}"))
            );
        }
    }
    // The bot's account was created by its first login, as any client's.
    let credentials = fs::read_to_string(state_dir.join("credentials")).unwrap_or_default();
    let bot_addr = credentials
        .lines()
        .find_map(|line| line.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no addr= in the bot's credentials"))
        .trim()
        .to_string();
    assert!(
        relay
            .doveauth_log()
            .contains(&format!("Created address: {bot_addr}")),
        "{}",
        report("doveauth did not create the bot's account")
    );
    assert!(
        mail.filtermail_log()
            .contains("Outgoing: Filtering encrypted mail."),
        "{}",
        report("filtermail saw no encrypted mail")
    );
}
