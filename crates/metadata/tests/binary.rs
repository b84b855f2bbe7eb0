//! The `chatmail-metadata` binary as systemd runs it: readiness, SIGTERM, start-up errors,
//! and a kill -9 with notifications queued: after the restart each is delivered once.

#![allow(clippy::indexing_slicing)]

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{Client, Gateway, Relay};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

struct Running {
    child: Child,
    notify: UnixDatagram,
}

/// Starts the daemon with NOTIFY_SOCKET set and waits for READY=1.
fn start(relay: &Relay) -> Running {
    start_with_env(relay, &[])
}

fn start_with_env(relay: &Relay, env: &[(&str, &str)]) -> Running {
    let notify_path = relay.path("notify");
    let _ = fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut child = spawn_with_env(relay, &notify_path, env);
    let mut buf = [0u8; 256];
    let Ok(n) = notify.recv(&mut buf) else {
        let _ = child.kill();
        panic!("no READY=1 within 20 s");
    };
    assert_eq!(buf[..n].trim_ascii(), b"READY=1");
    Running { child, notify }
}

/// The proxy variables that the HTTP client honours, as upstream's `requests` does.
const PROXY_VARIABLES: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

fn spawn(relay: &Relay, notify: &Path) -> Child {
    spawn_with_env(relay, notify, &[])
}

/// Starts the daemon with a clean proxy environment plus `env`.
fn spawn_with_env(relay: &Relay, notify: &Path, env: &[(&str, &str)]) -> Child {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chatmail-metadata"));
    command
        .arg(relay.path("metadata.socket"))
        .arg(relay.ini())
        .env("NOTIFY_SOCKET", notify)
        .env_remove("JOURNAL_STREAM")
        .stderr(Stdio::piped());
    for name in PROXY_VARIABLES {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    command.spawn().unwrap()
}

fn wait_exit(child: &mut Child) -> (std::process::ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "did not exit within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status, stderr)
}

impl Running {
    fn stop(mut self) -> (std::process::ExitStatus, String) {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).unwrap();
        let result = wait_exit(&mut self.child);
        let mut buf = [0u8; 256];
        let n = self.notify.recv(&mut buf).expect("STOPPING=1");
        assert_eq!(buf[..n].trim_ascii(), b"STOPPING=1");
        result
    }

    /// SIGKILL: no chance to clean up anything.
    fn kill_9(mut self) {
        self.child.kill().unwrap();
        let _ = self.child.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn relay_for(gateway: &Gateway) -> Relay {
    Relay::new(&format!(
        "notification_url = {}\nnotification_ca_file = {}\n",
        gateway.url,
        gateway.ca_file.display()
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_and_stops_cleanly_on_sigterm() {
    let gateway = Gateway::start().await;
    let relay = relay_for(&gateway);
    let running = start(&relay);
    assert!(relay.queue_dir().is_dir(), "queue directory created");
    let mut client = Client::connect(&relay.path("metadata.socket")).await;
    assert_eq!(
        client
            .request("H\nLshared/0123/vendor/vendor.dovecot/pvt/server/vendor/deltachat/maxsmtprecipients\tuser@example.org\n")
            .await,
        "O1000\n"
    );
    assert_eq!(
        client
            .request("Lpriv/123/chatmail\tuser@example.org\n")
            .await,
        "N\n"
    );
    drop(client);
    let (status, stderr) = running.stop();
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(
        !relay.path("metadata.socket").exists(),
        "socket removed at exit"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.ends_with("lookup ignored: ['priv/123/chatmail', 'user@example.org']")),
        "{stderr}"
    );
}

#[test]
fn missing_mailboxes_dir_exits_with_status_1() {
    let relay = Relay::new("");
    fs::remove_dir(relay.mail()).unwrap();
    let mut child = spawn(&relay, &relay.path("notify"));
    let (status, stderr) = wait_exit(&mut child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    let expected = format!("vmail dir does not exist: '{}'", relay.mail().display());
    assert!(stderr.lines().any(|l| l.ends_with(&expected)), "{stderr}");
    assert!(!relay.mail().exists(), "nothing created");
}

/// Items queued (their requests hanging) when the daemon is killed with SIGKILL, plus one
/// written by upstream's daemon: after a restart every item is delivered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_items_queued_then_restart_delivers_each_once() {
    let gateway = Gateway::start().await;
    gateway.state.hang_all.store(true, Ordering::SeqCst);
    let relay = relay_for(&gateway);
    let users = [
        ("one@example.org", ["ok-1a", "ok-1b"]),
        ("two@example.org", ["ok-2a", "ok-2b"]),
    ];
    for (user, _) in &users {
        relay.maildir(user);
    }
    let running = start(&relay);
    let mut client = Client::connect(&relay.path("metadata.socket")).await;
    for (user, tokens) in &users {
        for token in tokens {
            let reply = client
                .request(&format!(
                    "B1\t{user}\nS1\tpriv/g/devicetoken\t{token}\nC1\n"
                ))
                .await;
            assert_eq!(reply, "O\n");
        }
        let reply = client
            .request(&format!("B2\t{user}\nS2\tpriv/g/messagenew\t\nC2\n"))
            .await;
        assert_eq!(reply, "O\n");
    }
    gateway.state.wait_received(4).await;
    assert_eq!(relay.queued().len(), 4);
    // Written by upstream's daemon into the same queue (its format, its naming).
    let start_ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    fs::write(
        relay.queue_dir().join("5f0c1f3c2a2b4e1f9d3b8c7a6e5d4c3b"),
        format!("two@example.org\n{start_ts}\nok-upstream"),
    )
    .unwrap();
    drop(client);
    running.kill_9();
    assert_eq!(relay.queued().len(), 5, "nothing lost, nothing delivered");
    assert!(gateway.state.answered().is_empty());

    gateway.state.hang_all.store(false, Ordering::SeqCst);
    let running = start(&relay);
    gateway.state.wait_answered(5).await;
    common::wait_until(|| relay.queued().is_empty(), "queue to empty").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let delivered = gateway.state.delivered();
    let mut tokens: Vec<(&str, usize)> = delivered.iter().map(|(t, n)| (t.as_str(), *n)).collect();
    tokens.sort();
    assert_eq!(
        tokens,
        [
            ("ok-1a", 1),
            ("ok-1b", 1),
            ("ok-2a", 1),
            ("ok-2b", 1),
            ("ok-upstream", 1)
        ]
    );
    assert_eq!(gateway.state.answered().len(), 5, "no duplicates");
    let (status, stderr) = running.stop();
    assert!(status.success(), "{stderr}");
}

/// Operators behind a proxy rely on `HTTPS_PROXY`; `NO_PROXY` exempts hosts. A proxy that
/// refuses connections makes the request fail with upstream's warning line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_environment_is_honoured() {
    let gateway = Gateway::start().await;
    let relay = relay_for(&gateway);
    relay.maildir("one@example.org");
    let dead_proxy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let proxy = format!("http://{}", dead_proxy.local_addr().unwrap());
    drop(dead_proxy);

    let running = start_with_env(&relay, &[("HTTPS_PROXY", proxy.as_str())]);
    let mut client = Client::connect(&relay.path("metadata.socket")).await;
    let reply = client
        .request("B1\tone@example.org\nS1\tpriv/g/devicetoken\tok-1\nC1\nB2\tone@example.org\nS2\tpriv/g/messagenew\t\nC2\n")
        .await;
    assert_eq!(reply, "O\n");
    assert_eq!(client.read_line().await, "O\n");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(client);
    let (_, stderr) = running.stop();
    assert!(
        gateway.state.received_tokens().is_empty(),
        "went through the proxy"
    );
    assert!(
        stderr
            .lines()
            .any(|l| l.contains("Notification request failed: ")),
        "{stderr}"
    );
    assert_eq!(relay.queued().len(), 1, "kept for a retry");

    let running = start_with_env(
        &relay,
        &[("HTTPS_PROXY", proxy.as_str()), ("NO_PROXY", "127.0.0.1")],
    );
    gateway.state.wait_answered(1).await;
    common::wait_until(|| relay.queued().is_empty(), "queue to empty").await;
    drop(running);
}

/// The log lines operators know from upstream, verbatim after the level prefix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstreams_log_lines() {
    let gateway = Gateway::start().await;
    let relay = relay_for(&gateway);
    let maildir = relay.maildir("one@example.org");
    fs::write(maildir.join("metadata.json"), "{corrupt").unwrap();
    fs::create_dir(relay.queue_dir()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let queue = relay.queue_dir();
    fs::write(queue.join("00000000000000000000000000000001.tmp"), "x").unwrap();
    fs::write(queue.join("00000000000000000000000000000002"), "garbage").unwrap();
    // First attempt now, and the next would be past the 5-hour deadline.
    fs::write(
        queue.join("00000000000000000000000000000003"),
        format!("one@example.org\n{}\nfail-late", now - 18_000 + 5),
    )
    .unwrap();

    let running = start(&relay);
    gateway.state.wait_answered(1).await;
    common::wait_until(|| relay.queued().is_empty(), "the late item to be dropped").await;
    let mut client = Client::connect(&relay.path("metadata.socket")).await;
    assert_eq!(
        client
            .request("Lpriv/g/devicetoken\tone@example.org\n")
            .await,
        "O\n"
    );
    assert_eq!(
        client
            .request("Lshared/0/vendor/vendor.dovecot/pvt/server/vendor/deltachat/turn\tone@example.org\n")
            .await,
        "N\n"
    );
    drop(client);
    let (_, stderr) = running.stop();
    let queue = queue.display();
    for expected in [
        format!(
            "WARNING: removing spurious queue item: {queue}/00000000000000000000000000000001.tmp"
        ),
        format!("WARNING: removing spurious queue item: {queue}/00000000000000000000000000000002"),
        "WARNING: Notification request failed: <Response [500]>".to_owned(),
        "ERROR: notification exceeded deadline: 'fail-late'".to_owned(),
        format!(
            "WARNING: corrupt serialization state at: '{}'",
            maildir.join("metadata.json").display()
        ),
    ] {
        assert!(
            stderr.lines().any(|l| l == expected),
            "{expected}\n{stderr}"
        );
    }
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("ERROR: failed to get TURN credentials: ")),
        "{stderr}"
    );
}
