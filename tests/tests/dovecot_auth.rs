//! Dovecot 2.3 (Debian's dovecot-imapd) authenticating IMAP logins through doveauth and
//! recording them through lastlogin, as on a chatmail relay.
//!
//! Each test starts its own [`Relay`] (temp dir, free port), so they run in parallel. Without
//! Dovecot or root they are skipped, except in CI.

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatmail_e2e::{Relay, poll_until};

/// A password long enough for the default `password_min_length` of 9.
const PASSWORD: &str = "correct-horse-9";

/// How long to wait for lastlogin, which Dovecot calls after answering LOGIN.
const LASTLOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// 00:00 UTC of the current day, as lastlogin stores it.
fn today() -> i64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let secs = i64::try_from(now.as_secs()).expect("time fits i64");
    secs / 86400 * 86400
}

fn mtime(path: &std::path::Path) -> i64 {
    fs::metadata(path)
        .unwrap_or_else(|err| panic!("cannot stat {}: {err}", path.display()))
        .mtime()
}

/// Number of `Created address: <addr>` lines in doveauth's stderr: operators' mtail
/// counts this exact text, so it must appear verbatim on a line of its own.
fn created_lines(relay: &Relay, addr: &str) -> usize {
    let wanted = format!("Created address: {addr}");
    relay
        .doveauth_log()
        .lines()
        .filter(|line| *line == wanted)
        .count()
}

#[test]
fn first_login_creates_account() {
    let Some(relay) = Relay::start() else { return };
    let addr = relay.addr("abc123xyz");

    let mut imap = relay.imap();
    let login = imap.login(&addr, PASSWORD).expect("LOGIN");
    assert!(login.is_ok(), "LOGIN failed: {login:?}\n{}", relay.logs());

    let maildir = relay.maildir(&addr);
    let password = fs::read_to_string(relay.password_file(&addr))
        .unwrap_or_else(|err| panic!("no password file: {err}\n{}", relay.logs()));
    assert!(
        password.starts_with("{SHA512-CRYPT}$6$") && !password.ends_with('\n'),
        "password file content: {password:?}"
    );
    assert!(
        maildir.join("enforceE2EEincoming").is_file(),
        "{}",
        relay.logs()
    );
    assert_eq!(created_lines(&relay, &addr), 1, "{}", relay.logs());

    // Under umask 077 the daemon leaves the account owner-only, owned by vmail.
    for path in [maildir.clone(), relay.password_file(&addr)] {
        let meta = fs::metadata(&path).expect("stat");
        assert_eq!(meta.uid(), relay.vmail().uid.as_raw(), "{}", path.display());
        assert_eq!(meta.permissions().mode() & 0o077, 0, "{}", path.display());
    }

    // The userdb answer (home, uid vmail) lets the imap process open the maildir.
    let select = imap.select("INBOX").expect("SELECT");
    assert!(
        select.is_ok(),
        "SELECT INBOX failed: {select:?}\n{}",
        relay.logs()
    );
    let logout = imap.logout().expect("LOGOUT");
    assert!(logout.is_ok(), "{logout:?}");
    assert!(
        maildir.join("cur").is_dir(),
        "Dovecot did not create the maildir folders"
    );
}

#[test]
fn wrong_password_is_refused_and_keeps_the_hash() {
    let Some(relay) = Relay::start() else { return };
    let addr = relay.addr("wrongpw99");
    assert!(relay.login(&addr, PASSWORD).is_ok(), "{}", relay.logs());
    let before = fs::read(relay.password_file(&addr)).expect("password file");

    let reply = relay.login(&addr, "another-password-1");
    assert!(
        reply.is_auth_failed(),
        "wrong password: {reply:?}\n{}",
        relay.logs()
    );
    let after = fs::read(relay.password_file(&addr)).expect("password file");
    assert_eq!(before, after, "a wrong password changed the password file");

    let reply = relay.login(&addr, PASSWORD);
    assert!(
        reply.is_ok(),
        "right password again: {reply:?}\n{}",
        relay.logs()
    );
    assert_eq!(created_lines(&relay, &addr), 1, "{}", relay.logs());
}

#[test]
fn password_with_quotes_and_backslashes() {
    // Dovecot's %E escaping of `"`, `'` and `\` must round-trip through doveauth's key parser.
    let Some(relay) = Relay::start() else { return };
    let addr = relay.addr("quotes123");
    let password = r#"pa"ss\wo'rd/"1\"#;
    let reply = relay.login(&addr, password);
    assert!(reply.is_ok(), "{reply:?}\n{}", relay.logs());
    let reply = relay.login(&addr, r#"pa"ss\wo'rd/"1"#);
    assert!(reply.is_auth_failed(), "{reply:?}\n{}", relay.logs());
    let reply = relay.login(&addr, password);
    assert!(reply.is_ok(), "{reply:?}\n{}", relay.logs());
}

#[test]
fn login_sets_last_login_day() {
    let Some(relay) = Relay::start() else { return };
    let addr = relay.addr("lastlog42");
    let password_file = relay.password_file(&addr);

    // The first login creates the account, whose mtime is the creation time; lastlogin then
    // moves it to midnight. Wait for that, so it cannot overtake the reset below.
    assert!(relay.login(&addr, PASSWORD).is_ok(), "{}", relay.logs());
    let first = poll_until(LASTLOGIN_TIMEOUT, || {
        let m = mtime(&password_file);
        m == today() || m == today() - 86400
    });
    assert!(
        first,
        "mtime {} after first login\n{}",
        mtime(&password_file),
        relay.logs()
    );

    let old_day = SystemTime::UNIX_EPOCH + Duration::from_secs(86400);
    File::options()
        .write(true)
        .open(&password_file)
        .and_then(|f| f.set_times(FileTimes::new().set_modified(old_day).set_accessed(old_day)))
        .expect("cannot set the password file's times");
    assert_eq!(mtime(&password_file), 86400);

    let before = today();
    assert!(relay.login(&addr, PASSWORD).is_ok(), "{}", relay.logs());
    let changed = poll_until(LASTLOGIN_TIMEOUT, || mtime(&password_file) != 86400);
    let after = today();
    let meta = fs::metadata(&password_file).expect("stat");
    assert!(
        changed && (meta.mtime() == before || meta.mtime() == after),
        "mtime {} (expected {before}) after login\n{}",
        meta.mtime(),
        relay.logs()
    );
    assert_eq!(meta.atime(), meta.mtime(), "lastlogin sets atime too");
}

#[test]
fn doveadm_user_lists_accounts() {
    let Some(relay) = Relay::start() else { return };
    let mut addrs = vec![
        relay.addr("listed001"),
        relay.addr("listed002"),
        relay.addr("listed003"),
    ];
    for addr in &addrs {
        assert!(
            relay.login(addr, PASSWORD).is_ok(),
            "{addr}\n{}",
            relay.logs()
        );
    }
    // chatmail-metadata keeps its push queue here: a directory without '@', never an account.
    assert!(relay.mailboxes_dir().join("pending_notifications").is_dir());

    let output = relay.doveadm(&["user", "*"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "doveadm user '*' failed: {}\n{stdout}\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        relay.logs()
    );
    let mut listed: Vec<String> = stdout.lines().map(|l| l.trim().to_string()).collect();
    listed.retain(|l| !l.is_empty());
    listed.sort();
    addrs.sort();
    assert_eq!(listed, addrs, "{}", relay.logs());

    // A single user lookup goes through the userdb too.
    let first = addrs.first().expect("three addresses");
    let output = relay.doveadm(&["user", "-f", "home", first]);
    assert!(output.status.success(), "{output:?}\n{}", relay.logs());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        relay.maildir(first).display().to_string()
    );
}

#[test]
fn refused_logins_create_nothing() {
    let Some(relay) = Relay::start() else { return };
    let refused = [
        // localpart shorter than username_min_length (9)
        (relay.addr("short"), PASSWORD.to_string()),
        // password shorter than password_min_length (9)
        (relay.addr("shortpass"), "12345678".to_string()),
        // `+` is not in auth_username_chars: Dovecot refuses before asking doveauth
        (relay.addr("abc+12345"), PASSWORD.to_string()),
        // Dovecot lets `[` and `]` through, doveauth's localpart rule refuses them
        (relay.addr("ab[cdef]g"), PASSWORD.to_string()),
        // another domain
        ("otherdom1@example.org".to_string(), PASSWORD.to_string()),
    ];
    for (addr, password) in &refused {
        let reply = relay.login(addr, password);
        assert!(
            reply.is_auth_failed(),
            "{addr}: {reply:?}\n{}",
            relay.logs()
        );
    }
    assert_eq!(
        relay.mailbox_entries(),
        Vec::<String>::new(),
        "{}",
        relay.logs()
    );
    let log = relay.doveauth_log();
    assert!(
        log.contains("contains invalid characters"),
        "{}",
        relay.logs()
    );
    assert!(!log.contains("Created address"), "{}", relay.logs());

    let addr = relay.addr("nocreate1");
    File::create(relay.nocreate_file()).expect("cannot create the nocreate file");
    let reply = relay.login(&addr, PASSWORD);
    assert!(
        reply.is_auth_failed(),
        "nocreate: {reply:?}\n{}",
        relay.logs()
    );
    assert!(!relay.maildir(&addr).exists(), "{}", relay.logs());

    fs::remove_file(relay.nocreate_file()).expect("cannot remove the nocreate file");
    let reply = relay.login(&addr, PASSWORD);
    assert!(
        reply.is_ok(),
        "after removing nocreate: {reply:?}\n{}",
        relay.logs()
    );
    assert_eq!(created_lines(&relay, &addr), 1, "{}", relay.logs());
    assert_eq!(relay.mailbox_entries(), vec![addr], "{}", relay.logs());
}

#[test]
fn concurrent_first_logins_create_once() {
    let Some(relay) = Relay::start() else { return };
    let relay = Arc::new(relay);
    let addr = relay.addr("racer1234");
    let threads = 10;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (relay, barrier, addr) = (Arc::clone(&relay), Arc::clone(&barrier), addr.clone());
            thread::spawn(move || {
                let mut imap = relay.imap();
                barrier.wait();
                let reply = imap.login(&addr, PASSWORD).expect("LOGIN");
                if reply.is_ok() {
                    imap.logout().expect("LOGOUT");
                }
                reply
            })
        })
        .collect();
    for handle in handles {
        let reply = handle.join().expect("login thread panicked");
        assert!(
            reply.is_ok(),
            "concurrent LOGIN: {reply:?}\n{}",
            relay.logs()
        );
    }
    assert_eq!(created_lines(&relay, &addr), 1, "{}", relay.logs());
}

/// `{SHA512-CRYPT}` + `openssl passwd -6 -salt saltsaltsaltsalt upstream-pw-123`, checked
/// against Python's `crypt.crypt` when it was written down.
const UPSTREAM_PASSWORD: &str = "upstream-pw-123";
const UPSTREAM_HASH: &str = "$6$saltsaltsaltsalt$tSAtSRImfpIxM6.09yjv0ICSu2E2TP5sK/QUNEjvJvWOG.VFAZSnpZKoeTUr.MWpvDGNiMwojtoPH7Fu2xFMv0";

#[test]
fn upstream_password_file_logs_in() {
    let Some(relay) = Relay::start() else { return };
    // Where openssl exists, re-derive the hash so the constant cannot be wrong.
    if let Ok(output) = Command::new("openssl")
        .args([
            "passwd",
            "-6",
            "-salt",
            "saltsaltsaltsalt",
            UPSTREAM_PASSWORD,
        ])
        .output()
        && output.status.success()
    {
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            UPSTREAM_HASH
        );
    }
    let addr = relay.addr("legacy001");
    let content = format!("{{SHA512-CRYPT}}{UPSTREAM_HASH}");
    relay.write_account(&addr, &content);

    let reply = relay.login(&addr, "wrong-password-1");
    assert!(reply.is_auth_failed(), "{reply:?}\n{}", relay.logs());
    let reply = relay.login(&addr, UPSTREAM_PASSWORD);
    assert!(
        reply.is_ok(),
        "upstream account: {reply:?}\n{}",
        relay.logs()
    );
    assert_eq!(created_lines(&relay, &addr), 0, "{}", relay.logs());
    let stored = fs::read_to_string(relay.password_file(&addr)).expect("password file");
    assert_eq!(
        stored, content,
        "logging in must not rewrite the password file"
    );
    assert!(relay.mailbox_entries().contains(&addr));
}
