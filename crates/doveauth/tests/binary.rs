//! The `doveauth` binary as systemd runs it: command line, umask, readiness, SIGTERM,
//! configuration errors, start-up migration, log lines, and the creation lock shared with
//! upstream's Python doveauth.

#![allow(clippy::indexing_slicing, clippy::string_slice)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const DOMAIN: &str = "chat.example.org";

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    /// A chatmail.ini with permissive system limits; `overrides` replace or add keys.
    fn new(overrides: &[(&str, &str)]) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).display().to_string();
        let mut keys = vec![
            ("mail_domain", DOMAIN.to_owned()),
            ("mailboxes_dir", path("mail")),
            ("passdb_path", path("passdb.sqlite")),
            ("nocreate_file", path("nocreate")),
            ("max_load_1m", "100000".to_owned()),
            ("min_available_memory", "0M".to_owned()),
            ("min_free_disk_space", "0M".to_owned()),
        ];
        for (key, value) in overrides {
            keys.retain(|(k, _)| k != key);
            keys.push((key, (*value).to_owned()));
        }
        let mut ini = String::from("[params]\n");
        for (key, value) in keys {
            ini.push_str(&format!("{key} = {value}\n"));
        }
        fs::write(dir.path().join("chatmail.ini"), ini).unwrap();
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts doveauth under `umask 077`, as the systemd unit does, with NOTIFY_SOCKET set,
    /// and waits for READY=1.
    fn start(&self) -> Running {
        self.start_in_shell("umask 077")
    }

    /// Like [`Setup::start`], with `shell` run before the daemon is exec'd.
    fn start_in_shell(&self, shell: &str) -> Running {
        let notify = UnixDatagram::bind(self.path("notify")).unwrap();
        notify
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(format!("{shell}; exec \"$0\" \"$@\""))
            .arg(env!("CARGO_BIN_EXE_doveauth"))
            .arg(self.path("doveauth.socket"))
            .arg(self.path("chatmail.ini"))
            .env("NOTIFY_SOCKET", self.path("notify"))
            .env_remove("JOURNAL_STREAM")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut buf = [0u8; 256];
        let Ok(n) = notify.recv(&mut buf) else {
            let _ = child.kill();
            panic!("no READY=1 within 20 s");
        };
        assert_eq!(buf[..n].trim_ascii(), b"READY=1");
        Running {
            child,
            notify,
            socket: self.path("doveauth.socket"),
        }
    }
}

struct Running {
    child: Child,
    notify: UnixDatagram,
    socket: PathBuf,
}

impl Running {
    fn request(&self, line: &str) -> String {
        let mut stream = UnixStream::connect(&self.socket).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream.write_all(line.as_bytes()).unwrap();
        let mut reply = String::new();
        BufReader::new(stream).read_line(&mut reply).unwrap();
        reply
    }

    /// SIGTERM, then the exit status and everything written to stderr.
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "doveauth did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut buf = [0u8; 256];
        let n = self.notify.recv(&mut buf).expect("STOPPING=1");
        assert_eq!(buf[..n].trim_ascii(), b"STOPPING=1");
        let mut stderr = String::new();
        self.child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        (status, stderr)
    }
}

impl Drop for Running {
    /// A failed assertion must not leave a daemon behind holding the test's output pipes.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn serves_with_owner_only_files_and_stops_cleanly_on_sigterm() {
    let setup = Setup::new(&[]);
    let running = setup.start();
    assert_eq!(
        mode(&setup.path("doveauth.socket")) & 0o077,
        0,
        "socket follows UMask=0077: owner only"
    );
    let reply = running.request(&format!(
        "H3\t2\t0\t\tauth\nLshared/passdb/password123\"abcdefghi@{DOMAIN}\tabcdefghi@{DOMAIN}\n"
    ));
    assert!(reply.starts_with("O{\"addr\": \"abcdefghi@"), "{reply}");
    let maildir = setup.path("mail").join(format!("abcdefghi@{DOMAIN}"));
    assert_eq!(mode(&maildir), 0o700);
    assert_eq!(mode(&maildir.join("password")), 0o600);
    assert_eq!(mode(&maildir.join("enforceE2EEincoming")), 0o600);

    let (status, stderr) = running.stop();
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(
        !setup.path("doveauth.socket").exists(),
        "socket removed at exit"
    );
    // The line mtail counts, bare, on a line of its own.
    assert!(
        stderr
            .lines()
            .any(|l| l == format!("Created address: abcdefghi@{DOMAIN}")),
        "{stderr}"
    );
}

#[test]
fn refusals_log_upstreams_lines() {
    let setup = Setup::new(&[("max_load_1m", "-1")]);
    let running = setup.start();
    let reply = running.request(&format!(
        "Lshared/passdb/password123\"abcdefghi@{DOMAIN}\tabcdefghi@{DOMAIN}\n"
    ));
    assert_eq!(reply, "N\n");
    let reply = running.request(&format!(
        "Lshared/passdb/short\"abcdefghi@{DOMAIN}\tabcdefghi@{DOMAIN}\n"
    ));
    assert_eq!(reply, "N\n");
    let (_, stderr) = running.stop();
    assert!(
        stderr.lines().any(
            |l| l.starts_with("WARNING: registration rejected: load avg ")
                && l.ends_with(" > -1.00")
        ),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l == "WARNING: Password needs to be at least 9 characters long"),
        "{stderr}"
    );
}

#[test]
fn invalid_config_exits_with_one_line_naming_file_and_key() {
    let setup = Setup::new(&[("username_min_length", "nine")]);
    let output = Command::new(env!("CARGO_BIN_EXE_doveauth"))
        .arg(setup.path("doveauth.socket"))
        .arg(setup.path("chatmail.ini"))
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("chatmail.ini"), "{stderr}");
    assert!(stderr.contains("username_min_length"), "{stderr}");
    assert!(stderr.contains("nine"), "{stderr}");
    assert!(!setup.path("doveauth.socket").exists());

    let missing = Command::new(env!("CARGO_BIN_EXE_doveauth"))
        .arg(setup.path("doveauth.socket"))
        .arg(setup.path("absent.ini"))
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("absent.ini"));

    let usage = Command::new(env!("CARGO_BIN_EXE_doveauth"))
        .arg("only-one-argument")
        .output()
        .unwrap();
    assert!(!usage.status.success());
}

#[test]
fn legacy_sqlite_passdb_is_migrated_at_start() {
    let setup = Setup::new(&[]);
    let db = setup.path("passdb.sqlite");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE users (addr TEXT PRIMARY KEY, password TEXT, last_login INTEGER);
         INSERT INTO users VALUES ('legacy000@chat.example.org', '{SHA512-CRYPT}$6$old$hash', 172800);",
    )
    .unwrap();
    drop(conn);
    let running = setup.start();
    let reply = running.request(&format!(
        "Lshared/userdb/legacy000@{DOMAIN}\tlegacy000@{DOMAIN}\n"
    ));
    assert!(
        reply.contains("\"password\": \"{SHA512-CRYPT}$6$old$hash\""),
        "{reply}"
    );
    let password = setup
        .path("mail")
        .join(format!("legacy000@{DOMAIN}/password"));
    assert_eq!(
        std::os::unix::fs::MetadataExt::mtime(&fs::metadata(password).unwrap()),
        172_800
    );
    assert!(!db.exists());
    assert!(setup.path("passdb.sqlite.old").exists());
    running.stop();
}

/// Upstream's Python doveauth (HEAD) locks `<maildir>/password.lock` with `filelock`,
/// which is `fcntl.flock(LOCK_EX)`. Here Python holds that lock, creates the account and
/// releases it; doveauth must wait and then return Python's hash, not write its own.
#[test]
fn creation_waits_for_the_lock_python_doveauth_takes() {
    let Some(python) = python3() else {
        return;
    };
    let setup = Setup::new(&[]);
    let running = setup.start();
    let maildir = setup.path("mail").join(format!("racer0000@{DOMAIN}"));
    fs::create_dir_all(&maildir).unwrap();
    let script = r#"
import fcntl, os, sys, time
maildir = sys.argv[1]
fd = os.open(os.path.join(maildir, "password.lock"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
print("locked", flush=True)
time.sleep(1.0)
with open(os.path.join(maildir, "password.tmp-1"), "wb") as f:
    f.write(b"{SHA512-CRYPT}$6$python$hash")
os.rename(os.path.join(maildir, "password.tmp-1"), os.path.join(maildir, "password"))
fcntl.flock(fd, fcntl.LOCK_UN)
os.close(fd)
"#;
    let mut holder = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(&maildir)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(holder.stdout.as_mut().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(first.trim(), "locked");
    let reply = running.request(&format!(
        "Lshared/passdb/password123\"racer0000@{DOMAIN}\tracer0000@{DOMAIN}\n"
    ));
    assert!(holder.wait().unwrap().success());
    assert!(
        reply.contains("\"password\": \"{SHA512-CRYPT}$6$python$hash\""),
        "doveauth waited for the lock and kept Python's account: {reply}"
    );
    let (_, stderr) = running.stop();
    assert!(!stderr.contains("Created address"), "{stderr}");
}

/// python3 for the interoperability test: required in CI, optional elsewhere.
fn python3() -> Option<&'static str> {
    let found = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("python3");
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "python3 is required in CI for the lock interoperability test"
    );
    eprintln!("SKIPPED: python3 not found; the lock interoperability test needs it");
    None
}

/// A full disk (here: a file size limit of 0, so every write of data fails): the creation
/// answers F, leaves neither a password file nor a temporary file, and the daemon serves on.
#[test]
fn failed_password_write_loses_nothing_and_keeps_serving() {
    let setup = Setup::new(&[]);
    // SIGXFSZ ignored: the write fails with EFBIG instead of killing the daemon.
    let running = setup.start_in_shell("umask 077; trap '' XFSZ; ulimit -f 0");
    let existing = setup.path("mail").join(format!("existing0@{DOMAIN}"));
    fs::create_dir_all(&existing).unwrap();
    fs::write(existing.join("password"), "{SHA512-CRYPT}$6$salt$hash").unwrap();

    let reply = running.request(&format!(
        "Lshared/passdb/password123\"newuser00@{DOMAIN}\tnewuser00@{DOMAIN}\n"
    ));
    assert_eq!(reply, "F\n", "Dovecot reports a temporary failure");
    let maildir = setup.path("mail").join(format!("newuser00@{DOMAIN}"));
    let debris: Vec<_> = fs::read_dir(&maildir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.starts_with("password") && name != "password.lock")
        .collect();
    assert!(debris.is_empty(), "no password, no temp file: {debris:?}");

    let reply = running.request(&format!(
        "Lshared/passdb/whatever\"existing0@{DOMAIN}\texisting0@{DOMAIN}\n"
    ));
    assert!(reply.contains("$6$salt$hash"), "{reply}");
    let (status, stderr) = running.stop();
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("lookup failed"), "{stderr}");
}

/// Under systemd (JOURNAL_STREAM set) lines carry a `<N>` priority that journald strips, so
/// the journal shows upstream's bare text, e.g. `doveauth[1]: Created address: ...`.
#[test]
fn journald_lines_carry_syslog_priorities() {
    let setup = Setup::new(&[]);
    let running = setup.start_in_shell("umask 077; export JOURNAL_STREAM=8:8");
    running.request(&format!(
        "Lshared/passdb/password123\"journal00@{DOMAIN}\tjournal00@{DOMAIN}\n"
    ));
    running.request(&format!(
        "Lshared/passdb/short\"journal11@{DOMAIN}\tjournal11@{DOMAIN}\n"
    ));
    let (_, stderr) = running.stop();
    assert!(
        stderr
            .lines()
            .any(|l| l == format!("<6>Created address: journal00@{DOMAIN}")),
        "{stderr}"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l == "<4>Password needs to be at least 9 characters long"),
        "{stderr}"
    );
}
