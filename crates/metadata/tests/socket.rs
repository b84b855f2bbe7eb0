//! chatmail-metadata over its unix socket: the literal sessions of the spec and the
//! transactions Dovecot sends for IMAP METADATA and the lua push script.

#![allow(clippy::indexing_slicing, clippy::string_slice)]

mod common;

use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatmail_metadata::{AppVersions, Clock, ManualClock, NotifierOptions, Settings};
use common::{Client, DOMAIN, Gateway, Relay};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;
use tokio::sync::oneshot;

const USER: &str = "user@example.org";
const DELTACHAT: &str = "shared/0123/vendor/vendor.dovecot/pvt/server/vendor/deltachat";

fn real_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The daemon served in-process on a temporary socket, with a clock that stands still.
struct Running {
    socket: std::path::PathBuf,
    clock: Arc<ManualClock>,
    _stop: oneshot::Sender<()>,
}

impl Running {
    async fn client(&self) -> Client {
        Client::connect(&self.socket).await
    }
}

async fn start(relay: &Relay, gateway: &Gateway, turn_timeout: Duration) -> Running {
    let config = relay.config();
    let clock = Arc::new(ManualClock::new(real_now()));
    let mut settings = Settings::from_config(&config);
    settings.turn_timeout = turn_timeout;
    let options = NotifierOptions {
        url: gateway.url.clone(),
        ca_file: Some(gateway.ca_file.clone()),
        request_timeout: Duration::from_secs(30),
        max_in_flight: 16,
    };
    let daemon = chatmail_metadata::start(
        &config,
        settings,
        options,
        clock.clone(),
        AppVersions::new(Some(relay.path("appversions.json"))),
    )
    .unwrap();
    let socket = relay.path("metadata.socket");
    let listener = chatmail_dict::bind(&socket).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(chatmail_metadata::serve(listener, daemon.handler, async {
        let _ = stopped.await;
    }));
    Running {
        socket,
        clock,
        _stop: stop,
    }
}

async fn relay_and_daemon(extra: &str) -> (Relay, Gateway, Running) {
    let relay = Relay::new(extra);
    relay.maildir(USER);
    let gateway = Gateway::start().await;
    let running = start(&relay, &gateway, Duration::from_secs(5)).await;
    (relay, gateway, running)
}

/// spec §10, each session on its own connection as in upstream's tests.
#[tokio::test]
async fn spec_literal_sessions() {
    let (_relay, _gateway, running) = relay_and_daemon("iroh_relay = https://example.org/\n").await;
    let sessions: [(&str, &str); 7] = [
        (
            "HELLO\nBtx00\tuser@example.org\nStx00\tpriv/guid00/devicetoken\t01234\nCtx00\n",
            "O\n",
        ),
        (
            "HELLO\nLpriv/0123/devicetoken\tuser@example.org\n",
            "O01234\n",
        ),
        (
            "H\nLshared/0123/vendor/vendor.dovecot/pvt/server/vendor/deltachat/irohrelay\tuser@example.org\n",
            "Ohttps://example.org/\n",
        ),
        (
            "H\nLshared/0123/vendor/vendor.dovecot/pvt/server/vendor/deltachat/maxsmtprecipients\tuser@example.org\n",
            "O1000\n",
        ),
        (
            "H\nLshared/0123/vendor/vendor.dovecot/pvt/server/wrong/prefix/key\tuser@example.org\n",
            "N\n",
        ),
        (
            "H\nLshared/0123/vendor/vendor.dovecot/pvt/server/vendor/deltachat/unknown\tuser@example.org\n",
            "N\n",
        ),
        ("Lpriv/123/chatmail\tuser@example.org\n", "N\n"),
    ];
    for (request, reply) in sessions {
        let mut client = running.client().await;
        assert_eq!(client.request(request).await, reply, "{request:?}");
    }
}

/// The online test's expectation: 1111 then 2222 reads back as `1111 2222`.
#[tokio::test]
async fn device_tokens_accumulate_in_storage_order() {
    let (relay, _gateway, running) = relay_and_daemon("").await;
    let mut client = running.client().await;
    client.send("H2\t2\t0\tuser@example.org\tmetadata\n").await;
    assert_eq!(
        client
            .request(&format!("L{}\n", "priv/0123/devicetoken\tuser@example.org"))
            .await,
        "O\n",
        "no tokens: found, empty"
    );
    for (tx, token) in [(1, "1111"), (2, "2222"), (3, "1111")] {
        let reply = client
            .request(&format!(
                "B{tx}\t{USER}\nS{tx}\tpriv/5cbe730f146fea6535be0d003dd4fc98/devicetoken\t{token}\nC{tx}\n"
            ))
            .await;
        assert_eq!(reply, "O\n");
    }
    assert_eq!(
        client
            .request(&format!("Lpriv/x/devicetoken\t{USER}\n"))
            .await,
        "O1111 2222\n"
    );
    let now = running.clock.now();
    assert_eq!(
        fs::read_to_string(relay.mail().join(USER).join("metadata.json")).unwrap(),
        format!(r#"{{"devicetoken": {{"1111": {now}, "2222": {now}}}}}"#)
    );
}

/// Legacy format: an array of tokens, written by old upstream versions.
#[tokio::test]
async fn legacy_token_list_is_served_and_migrated() {
    let (relay, _gateway, running) = relay_and_daemon("").await;
    let file = relay.mail().join(USER).join("metadata.json");
    fs::write(
        &file,
        r#"{"devicetoken": ["aaa", "bbb"], "other": {"k": [1, 2.5]}}"#,
    )
    .unwrap();
    let mut client = running.client().await;
    assert_eq!(
        client
            .request(&format!("Lpriv/x/devicetoken\t{USER}\n"))
            .await,
        "Oaaa bbb\n"
    );
    let now = running.clock.now();
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        format!(r#"{{"devicetoken": {{"aaa": {now}, "bbb": {now}}}, "other": {{"k": [1, 2.5]}}}}"#)
    );
}

#[tokio::test]
async fn expired_tokens_are_neither_served_nor_notified() {
    let (relay, gateway, running) = relay_and_daemon("").await;
    let now = running.clock.now();
    let old = now - 90 * 24 * 3600;
    let file = relay.mail().join(USER).join("metadata.json");
    fs::write(
        &file,
        format!(r#"{{"devicetoken": {{"okold": {old}, "oknew": {now}}}}}"#),
    )
    .unwrap();
    let mut client = running.client().await;
    assert_eq!(
        client
            .request(&format!("Lpriv/x/devicetoken\t{USER}\n"))
            .await,
        "Ooknew\n"
    );
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        format!(r#"{{"devicetoken": {{"oknew": {now}}}}}"#)
    );
    let reply = client
        .request(&format!("B1\t{USER}\nS1\tpriv/g/messagenew\t\nC1\n"))
        .await;
    assert_eq!(reply, "O\n");
    gateway.state.wait_answered(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gateway.state.received_tokens(), ["oknew"]);
}

/// `SETMETADATA … NIL` cannot delete a token; other keys are not ours and fail the commit.
#[tokio::test]
async fn unset_is_ignored_and_foreign_sets_fail_the_commit() {
    let (_relay, _gateway, running) = relay_and_daemon("").await;
    let mut client = running.client().await;
    let reply = client
        .request(&format!("B1\t{USER}\nS1\tpriv/g/devicetoken\tt1\nC1\n"))
        .await;
    assert_eq!(reply, "O\n");
    let reply = client
        .request(&format!("B2\t{USER}\nU2\tpriv/g/devicetoken\nC2\n"))
        .await;
    assert_eq!(reply, "O\n");
    assert_eq!(
        client
            .request(&format!("Lpriv/g/devicetoken\t{USER}\n"))
            .await,
        "Ot1\n"
    );
    for key in [
        "priv/g/chatmail",
        "shared/g/devicetoken",
        "priv/g/devicetoken/x",
        "priv/devicetoken",
    ] {
        let reply = client
            .request(&format!("B3\t{USER}\nS3\t{key}\tv\nC3\n"))
            .await;
        assert_eq!(reply, "F\n", "{key}");
    }
    // The connection is still usable.
    assert_eq!(
        client
            .request(&format!("L{DELTACHAT}/maxsmtprecipients\t{USER}\n"))
            .await,
        "O1000\n"
    );
}

/// spec §8
#[tokio::test]
async fn iterate_is_empty() {
    let (_relay, _gateway, running) = relay_and_daemon("").await;
    let mut client = running.client().await;
    assert_eq!(
        client
            .request("I9\t0\tpriv/5cbe730f146fea6535be0d003dd4fc98/\tci-2dzsrs@nine.testrun.org\n")
            .await,
        "\n"
    );
}

#[tokio::test]
async fn iroh_relay_default_and_empty() {
    let (_relay, _gateway, running) = relay_and_daemon("").await;
    let mut client = running.client().await;
    assert_eq!(
        client
            .request(&format!("L{DELTACHAT}/irohrelay\t{USER}\n"))
            .await,
        format!("Ohttps://{DOMAIN}\n")
    );
    let (_relay, _gateway, running) = relay_and_daemon("iroh_relay =\n").await;
    let mut client = running.client().await;
    assert_eq!(
        client
            .request(&format!("L{DELTACHAT}/irohrelay\t{USER}\n"))
            .await,
        "N\n"
    );
}

/// A fake chatmail-turn: answers every connection with `reply`, or never when `None`.
fn fake_turn(path: &Path, reply: Option<&'static str>) {
    let listener = UnixListener::bind(path).unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            match reply {
                Some(reply) => {
                    let _ = stream.write_all(reply.as_bytes()).await;
                }
                None => held.push(stream),
            }
        }
    });
}

#[tokio::test]
async fn turn_credentials_from_the_turn_socket() {
    let (relay, _gateway, running) = relay_and_daemon("").await;
    fake_turn(&relay.path("turn.socket"), Some("  user:pass \nignored\n"));
    let mut client = running.client().await;
    assert_eq!(
        client
            .request(&format!("L{DELTACHAT}/turn\t{USER}\n"))
            .await,
        format!("O{DOMAIN}:3478:user:pass\n")
    );
}

#[tokio::test]
async fn turn_host_of_an_ipv4_relay_is_bracketed() {
    let relay = Relay::new("");
    let ini = fs::read_to_string(relay.ini())
        .unwrap()
        .replace(DOMAIN, "1.2.3.4");
    fs::write(relay.ini(), ini).unwrap();
    let gateway = Gateway::start().await;
    let running = start(&relay, &gateway, Duration::from_secs(5)).await;
    fake_turn(&relay.path("turn.socket"), Some("u:p\n"));
    let mut client = running.client().await;
    assert_eq!(
        client
            .request(&format!("L{DELTACHAT}/turn\t{USER}\n"))
            .await,
        "O[1.2.3.4]:3478:u:p\n"
    );
}

/// A missing or hung TURN service answers N within the timeout; the connection lives on.
#[tokio::test]
async fn failing_turn_service_answers_n_and_keeps_the_connection() {
    let relay = Relay::new("");
    let gateway = Gateway::start().await;
    let running = start(&relay, &gateway, Duration::from_millis(300)).await;
    let mut client = running.client().await;
    let turn = format!("L{DELTACHAT}/turn\t{USER}\n");
    assert_eq!(client.request(&turn).await, "N\n", "no TURN socket");
    fake_turn(&relay.path("turn.socket"), None);
    let started = std::time::Instant::now();
    assert_eq!(client.request(&turn).await, "N\n", "hung TURN service");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(
        client
            .request(&format!("L{DELTACHAT}/maxsmtprecipients\t{USER}\n"))
            .await,
        "O1000\n"
    );
}

/// spec §6: the shipped list, byte for byte; an operator's file replaces it without a
/// restart; an invalid file answers N.
#[tokio::test]
async fn appversions_shipped_and_replaced_without_restart() {
    let (relay, _gateway, running) = relay_and_daemon("").await;
    let mut client = running.client().await;
    let lookup = format!("L{DELTACHAT}/appversions\t{USER}\n");
    assert_eq!(
        client.request(&lookup).await,
        "O{\"clients\":[{\"clientId\":\"deltachat\",\"sources\":[{\"sourceId\":\"gplay\",\"versionInteger\":754,\"versionString\":\"2.57.0\",\"downloadUrl\":\"https://github.com/deltachat/deltachat-android/releases/download/v2.57.0/deltachat-gplay-release-2.57.0.apk\"}]}]}\n"
    );
    let file = relay.path("appversions.json");
    fs::write(&file, "{\n  \"clients\": [\"\u{fc}\\n\"]\n}\n").unwrap();
    assert_eq!(
        client.request(&lookup).await,
        "O{\"clients\":[\"\\u00fc\\n\"]}\n"
    );
    fs::write(&file, "{").unwrap();
    assert_eq!(client.request(&lookup).await, "N\n");
}

/// The lua script's transaction: one queue item per token, on disk before the `O`.
#[tokio::test]
async fn messagenew_queues_an_item_per_token_before_the_reply() {
    let (relay, gateway, running) = relay_and_daemon("").await;
    let mut client = running.client().await;
    for (tx, token) in [(1, "hang-1"), (2, "hang-2")] {
        let reply = client
            .request(&format!(
                "B{tx}\t{USER}\nS{tx}\tpriv/g/devicetoken\t{token}\nC{tx}\n"
            ))
            .await;
        assert_eq!(reply, "O\n");
    }
    let reply = client
        .request(&format!(
            "Btx9\t{USER}\nStx9\tpriv/guid/messagenew\t\nCtx9\n"
        ))
        .await;
    assert_eq!(reply, "O\n");
    let now = running.clock.now();
    assert_eq!(
        relay.queued_contents(),
        [
            format!("{USER}\n{now}\nhang-1"),
            format!("{USER}\n{now}\nhang-2")
        ]
    );
    for name in relay.queued() {
        assert!(name.len() == 32 && name.bytes().all(|b| b.is_ascii_hexdigit()));
    }
    gateway.state.wait_received(2).await;
    let mut received = gateway.state.received_tokens();
    received.sort();
    assert_eq!(received, ["hang-1", "hang-2"]);

    // A user without tokens: nothing queued, still O.
    relay.maildir("other@example.org");
    let reply = client
        .request("B1\tother@example.org\nS1\tpriv/g/messagenew\t\nC1\n")
        .await;
    assert_eq!(reply, "O\n");
    assert_eq!(relay.queued().len(), 2);
}

/// The whole path: token set over the socket, `messagenew`, a 200 from the gateway, the
/// item gone from the queue.
#[tokio::test]
async fn messagenew_is_delivered_and_dequeued() {
    let (relay, gateway, running) = relay_and_daemon("").await;
    let mut client = running.client().await;
    let reply = client
        .request(&format!("B1\t{USER}\nS1\tpriv/g/devicetoken\tok-token\nC1\nB2\t{USER}\nS2\tpriv/g/messagenew\t\nC2\n"))
        .await;
    assert_eq!(reply, "O\n");
    assert_eq!(client.read_line().await, "O\n");
    gateway.state.wait_answered(1).await;
    assert_eq!(gateway.state.answered(), [("ok-token".to_owned(), 200)]);
    common::wait_until(|| relay.queued().is_empty(), "the item to be deleted").await;
}

#[tokio::test]
async fn devicetoken_lookup_without_user_fails_only_that_lookup() {
    let (_relay, _gateway, running) = relay_and_daemon("").await;
    let mut client = running.client().await;
    assert!(
        client
            .request("Lpriv/g/devicetoken\n")
            .await
            .starts_with('F')
    );
    assert_eq!(
        client
            .request(&format!("Lpriv/g/devicetoken\t{USER}\n"))
            .await,
        "O\n"
    );
}

/// Token files are worked on in the connection's task while the lock is free; when another
/// process holds it, the SET waits off the runtime: other connections are still served
/// (this test's runtime has a single thread, so a SET blocked on it would stall them all),
/// and the commit answers once the lock is released, with the token in the file.
#[tokio::test]
async fn a_set_waiting_for_a_held_lock_does_not_stall_other_connections() {
    let (relay, _gateway, running) = relay_and_daemon("").await;
    const OTHER: &str = "other@example.org";
    relay.maildir(OTHER);
    let mut setup = running.client().await;
    for (user, token) in [(USER, "old"), (OTHER, "theirs")] {
        let set = format!("B1\t{user}\nS1\tpriv/g/devicetoken\t{token}\nC1\n");
        assert_eq!(setup.request(&set).await, "O\n");
    }

    // Another holder of the lock, on a thread of its own: it releases when told to, or
    // after 20 s, so a runtime blocked on the lock shows as lookups answered too late.
    let lock_path = relay.mail().join(USER).join("metadata.json.lock");
    let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let (locked, locked_rx) = std::sync::mpsc::channel::<()>();
    let holder = {
        let released = released.clone();
        std::thread::spawn(move || {
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(lock_path)
                .unwrap();
            let held = nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive).unwrap();
            locked.send(()).unwrap();
            let _ = release_rx.recv_timeout(Duration::from_secs(20));
            released.store(true, std::sync::atomic::Ordering::SeqCst);
            drop(held);
        })
    };
    locked_rx.recv().unwrap();

    let mut writer = running.client().await;
    writer
        .send(&format!("B2\t{USER}\nS2\tpriv/g/devicetoken\tnew\nC2\n"))
        .await;
    let commit = tokio::spawn(async move { writer.read_line().await });

    let mut reader = running.client().await;
    for (user, tokens) in [(OTHER, "theirs"), (USER, "old")] {
        let lookup = format!("Lpriv/g/devicetoken\t{user}\n");
        assert_eq!(reader.request(&lookup).await, format!("O{tokens}\n"));
        assert!(
            !released.load(std::sync::atomic::Ordering::SeqCst),
            "lookups are answered while another SET waits for its lock"
        );
    }
    assert!(!commit.is_finished(), "the commit waits for the lock");

    release.send(()).unwrap();
    holder.join().unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(10), commit)
        .await
        .expect("the commit answers once the lock is released")
        .unwrap();
    assert_eq!(reply, "O\n");
    let now = running.clock.now();
    assert_eq!(
        fs::read_to_string(relay.mail().join(USER).join("metadata.json")).unwrap(),
        format!(r#"{{"devicetoken": {{"old": {now}, "new": {now}}}}}"#)
    );
}

/// A SET that changes nothing (the same token in the same second) leaves the file alone;
/// one that changes it replaces the file (a new inode, by rename).
#[tokio::test]
async fn an_unchanged_set_writes_nothing() {
    use std::os::unix::fs::MetadataExt;
    let (relay, _gateway, running) = relay_and_daemon("").await;
    let file = relay.mail().join(USER).join("metadata.json");
    let mut client = running.client().await;
    let set = |token: &str| format!("B1\t{USER}\nS1\tpriv/g/devicetoken\t{token}\nC1\n");
    assert_eq!(client.request(&set("t1")).await, "O\n");
    let first = fs::metadata(&file).unwrap().ino();
    assert_eq!(client.request(&set("t1")).await, "O\n");
    assert_eq!(fs::metadata(&file).unwrap().ino(), first, "not rewritten");

    running.clock.advance(1);
    assert_eq!(client.request(&set("t1")).await, "O\n");
    let refreshed = fs::metadata(&file).unwrap().ino();
    assert_ne!(refreshed, first, "a refresh in a later second is written");
    let now = running.clock.now();
    assert_eq!(
        fs::read_to_string(&file).unwrap(),
        format!(r#"{{"devicetoken": {{"t1": {now}}}}}"#)
    );
    assert!(!relay.mail().join(USER).join("metadata.json.tmp").exists());
}

/// Another process (upstream's daemon) rewriting metadata.json its way (the lock,
/// `metadata.json.tmp`, rename) between our requests: the next lookup serves its content,
/// and the next SET builds on it.
#[tokio::test]
async fn a_file_rewritten_by_another_process_is_served_at_once() {
    let (relay, _gateway, running) = relay_and_daemon("").await;
    let maildir = relay.mail().join(USER);
    let mut client = running.client().await;
    let set = |token: &str| format!("B1\t{USER}\nS1\tpriv/g/devicetoken\t{token}\nC1\n");
    let lookup = format!("Lpriv/g/devicetoken\t{USER}\n");
    assert_eq!(client.request(&set("ours")).await, "O\n");
    assert_eq!(client.request(&lookup).await, "Oours\n");

    let now = running.clock.now();
    for round in 0..3 {
        let lock_file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(maildir.join("metadata.json.lock"))
            .unwrap();
        let held = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).unwrap();
        // Same length each round, written within the same second: only the content differs.
        let content = format!(r#"{{"devicetoken": {{"up{round}": {now}}}}}"#);
        fs::write(maildir.join("metadata.json.tmp"), &content).unwrap();
        fs::rename(
            maildir.join("metadata.json.tmp"),
            maildir.join("metadata.json"),
        )
        .unwrap();
        drop(held);
        assert_eq!(client.request(&lookup).await, format!("Oup{round}\n"));
    }
    assert_eq!(client.request(&set("ours")).await, "O\n");
    assert_eq!(client.request(&lookup).await, "Oup2 ours\n");
}
