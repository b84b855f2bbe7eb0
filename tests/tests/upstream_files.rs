//! The switch from upstream's Python daemons to ours, played on files an upstream relay
//! leaves behind (docs/relay.md): accounts with `{SHA512-CRYPT}` password files and
//! last-login mtimes, metadata.json in both its forms, a pending push queue item. Our
//! daemons must take them as they are, and leave them in upstream's formats so that
//! switching back loses nothing.

use std::fs::{self, File};
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatmail_e2e::relay::Options;
use chatmail_e2e::{DOMAIN, Relay, Vmail, poll_until};

const ALICE: &str = "alice0001";
const BOB: &str = "bob000001";
const PASSWORD: &str = "upstream-made-this";
/// The name of the queue item, as upstream names them (a UUID4 in lowercase hex).
const QUEUE_ITEM: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
const DAY: u64 = 86_400;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// `{SHA512-CRYPT}$6$salt$hash`, as upstream's doveauth writes it (no newline).
fn upstream_hash(password: &str) -> String {
    let output = Command::new("openssl")
        .args(["passwd", "-6", "-salt", "upstreamsalt0001", password])
        .output()
        .expect("cannot run openssl passwd");
    assert!(output.status.success(), "openssl passwd: {output:?}");
    format!(
        "{{SHA512-CRYPT}}{}",
        String::from_utf8_lossy(&output.stdout).trim()
    )
}

fn write_vmail(path: &Path, contents: &str, vmail: Vmail, mode: u32) {
    fs::write(path, contents).expect("cannot write a fixture");
    give(path, vmail, mode);
}

fn give(path: &Path, vmail: Vmail, mode: u32) {
    chown(path, Some(vmail.uid.as_raw()), Some(vmail.gid.as_raw())).expect("chown");
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

fn set_mtime(path: &Path, secs: u64) {
    File::options()
        .write(true)
        .open(path)
        .and_then(|file| file.set_modified(UNIX_EPOCH + Duration::from_secs(secs)))
        .expect("cannot set a fixture's mtime");
}

fn mtime(path: &Path) -> u64 {
    fs::metadata(path)
        .and_then(|meta| meta.modified())
        .expect("mtime")
        .duration_since(UNIX_EPOCH)
        .expect("mtime after 1970")
        .as_secs()
}

/// Ten days ago, midnight UTC: an upstream lastlogin's day-granular mtime.
fn ten_days_ago() -> u64 {
    let today = now() - now() % DAY;
    today - 10 * DAY
}

/// Writes what an upstream relay leaves in `mailboxes_dir`, before our daemons start.
fn upstream_tree(mailboxes: &Path, vmail: Vmail) {
    let hash = upstream_hash(PASSWORD);
    let token_time = now() - 3600;
    for (local, metadata) in [
        // Current form: token → time of its last SETMETADATA (Python json.dump layout).
        (
            ALICE,
            format!("{{\"devicetoken\": {{\"tok-alice\": {token_time}}}}}"),
        ),
        // Legacy form, still found on older relays: a list of tokens.
        (BOB, "{\"devicetoken\": [\"tok-bob\"]}".to_string()),
    ] {
        let maildir = mailboxes.join(format!("{local}@{DOMAIN}"));
        fs::create_dir(&maildir).expect("cannot create a fixture maildir");
        give(&maildir, vmail, 0o700);
        let password = maildir.join("password");
        write_vmail(&password, &hash, vmail, 0o600);
        set_mtime(&password, ten_days_ago());
        write_vmail(&maildir.join("enforceE2EEincoming"), "", vmail, 0o600);
        write_vmail(&maildir.join("metadata.json"), &metadata, vmail, 0o600);
    }
    let queue = mailboxes.join("pending_notifications");
    fs::create_dir(&queue).expect("cannot create the queue");
    give(&queue, vmail, 0o700);
    let item = format!("{ALICE}@{DOMAIN}\n{}\ntok-queued", now() - 5);
    write_vmail(&queue.join(QUEUE_ITEM), &item, vmail, 0o600);
}

#[test]
fn upstream_files_work_and_stay_in_upstream_formats() {
    let options = Options {
        before_daemons: Some(upstream_tree),
        ..Options::default()
    };
    let Some(relay) = Relay::start_with("", &options) else {
        return;
    };
    let alice = relay.addr(ALICE);
    let bob = relay.addr(BOB);
    let queue = relay.mailboxes_dir().join("pending_notifications");

    // The queued item from before the switch is sent and leaves the queue.
    assert!(
        poll_until(Duration::from_secs(20), || relay
            .pushes()
            .contains(&"tok-queued".to_string())),
        "the queued push was not sent\n{}",
        relay.logs()
    );
    assert!(
        poll_until(Duration::from_secs(10), || !queue.join(QUEUE_ITEM).exists()),
        "the sent item stays in the queue"
    );

    // Upstream's password hash logs in; the file keeps its content, and the login day
    // becomes today's midnight UTC, as upstream's lastlogin records it.
    let alice_password = relay.password_file(&alice);
    let hash_before = fs::read_to_string(&alice_password).expect("password file");
    let reply = relay.login(&alice, PASSWORD);
    assert!(reply.is_ok(), "{reply:?}\n{}", relay.logs());
    assert!(relay.login(&bob, "not-the-password").is_auth_failed());
    let today = now() - now() % DAY;
    assert!(
        poll_until(Duration::from_secs(10), || mtime(&alice_password) == today),
        "last login not recorded as today's midnight: mtime {}\n{}",
        mtime(&alice_password),
        relay.logs()
    );
    assert_eq!(fs::read_to_string(&alice_password).unwrap(), hash_before);
    assert_eq!(mtime(&relay.password_file(&bob)), ten_days_ago());

    // Deliveries ring the tokens of both metadata.json forms.
    let sender = format!("sender001@{DOMAIN}");
    for to in [&alice, &bob] {
        let message = format!("From: <{sender}>\r\nTo: <{to}>\r\nSubject: [...]\r\n\r\nhi");
        let reply = relay.deliver(&sender, to, &message);
        assert!(reply.starts_with("250"), "{reply}\n{}", relay.logs());
    }
    assert!(
        poll_until(Duration::from_secs(20), || relay.pushes().len() >= 3),
        "pushes: {:?}\n{}",
        relay.pushes(),
        relay.logs()
    );
    let mut pushes = relay.pushes();
    pushes.sort();
    assert_eq!(
        pushes,
        ["tok-alice", "tok-bob", "tok-queued"],
        "{}",
        relay.logs()
    );

    // Every file is still in upstream's format: the password hash with its prefix and no
    // newline; metadata.json in Python json.dump's layout (the legacy list converted to
    // the current form, as upstream converts it); an empty queue.
    let hash_shape = |text: &str| {
        text.strip_prefix("{SHA512-CRYPT}$6$upstreamsalt0001$")
            .is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/')
            })
    };
    for addr in [&alice, &bob] {
        let text = fs::read_to_string(relay.password_file(addr)).unwrap();
        assert!(hash_shape(&text), "{addr}: {text:?}");
    }
    let alice_metadata = fs::read_to_string(relay.maildir(&alice).join("metadata.json")).unwrap();
    let alice_shape = alice_metadata
        .strip_prefix("{\"devicetoken\": {\"tok-alice\": ")
        .and_then(|rest| rest.strip_suffix("}}"))
        .is_some_and(|time| time.parse::<u64>().is_ok());
    assert!(alice_shape, "{alice_metadata:?}");
    let bob_metadata = fs::read_to_string(relay.maildir(&bob).join("metadata.json")).unwrap();
    let bob_shape = bob_metadata
        .strip_prefix("{\"devicetoken\": {\"tok-bob\": ")
        .and_then(|rest| rest.strip_suffix("}}"))
        .is_some_and(|time| time.parse::<u64>().is_ok_and(|t| t + 60 >= today));
    assert!(bob_shape, "{bob_metadata:?}");
    assert!(
        poll_until(Duration::from_secs(10), || fs::read_dir(&queue)
            .map(|entries| entries.count() == 0)
            .unwrap_or(false)),
        "the queue is not empty: {:?}",
        fs::read_dir(&queue).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
}
