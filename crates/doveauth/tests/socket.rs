//! doveauth over its unix socket, as Dovecot talks to it: the spec's literal exchanges,
//! account creation under concurrency, and hostile input.

#![allow(clippy::indexing_slicing, clippy::string_slice)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use doveauth::rules::CreationRules;
use doveauth::syslimits::SystemLimits;
use doveauth::{Authenticator, Settings};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

const DOMAIN: &str = "chat.example.org";

fn permissive_limits() -> SystemLimits {
    SystemLimits {
        max_load_1m: 1e9,
        min_available_memory_mb: 0,
        min_free_disk_space_mb: 0,
    }
}

struct Daemon {
    dir: tempfile::TempDir,
    socket: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Daemon {
    async fn start() -> Daemon {
        Self::start_with(|_| {}).await
    }

    async fn start_with(adjust: impl FnOnce(&mut Settings)) -> Daemon {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            mail_domain: DOMAIN.into(),
            mailboxes_dir: dir.path().join("mail").join(DOMAIN),
            rules: CreationRules {
                nocreate_file: dir.path().join("chatmail-nocreate"),
                password_min_length: 9,
                username_min_length: 9,
                username_max_length: 9,
            },
            limits: permissive_limits(),
        };
        adjust(&mut settings);
        let socket = dir.path().join("doveauth.socket");
        let listener = chatmail_dict::bind(&socket).unwrap();
        let auth = Arc::new(Authenticator::new(settings));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(doveauth::serve(listener, auth, async {
            let _ = stopped.await;
        }));
        Daemon {
            dir,
            socket,
            stop: Some(stop),
            task,
        }
    }

    fn mailboxes(&self) -> PathBuf {
        self.dir.path().join("mail").join(DOMAIN)
    }

    async fn client(&self) -> Client {
        let stream = UnixStream::connect(&self.socket).await.unwrap();
        let (read, writer) = stream.into_split();
        let mut client = Client {
            reader: BufReader::new(read),
            writer,
        };
        client.send("H3\t2\t0\t\tauth\n").await;
        client
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    async fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.unwrap();
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(10), self.reader.read_line(&mut line))
            .await
            .expect("reply within 10 s")
            .unwrap();
        line
    }

    async fn request(&mut self, text: &str) -> String {
        self.send(text).await;
        self.line().await
    }

    /// Dovecot's passdb lookup for `user` with `password` (escaped as `%E` does).
    async fn passdb(&mut self, password: &str, user: &str) -> String {
        let escaped = escape_e(password);
        self.request(&format!(
            "Lshared/passdb/{escaped}\"{}\t{user}\n",
            escape_e(user)
        ))
        .await
    }

    async fn userdb(&mut self, user: &str) -> String {
        self.request(&format!("Lshared/userdb/{}\t{user}\n", escape_e(user)))
            .await
    }

    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), self.reader.read_to_end(&mut rest)).await
        {
            Ok(Ok(_)) => rest.is_empty(),
            Ok(Err(_)) => true,
            Err(_) => false,
        }
    }
}

/// Dovecot's `%E` modifier: backslash before `"`, `'` and `\`.
fn escape_e(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if matches!(c, '"' | '\'' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn password_hash_of(reply: &str) -> String {
    let start = reply.find("\"password\": \"").expect("password field") + 13;
    let end = reply[start..].find('"').unwrap() + start;
    reply[start..end].to_owned()
}

fn tree(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            found.push(entry.path().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                found.extend(tree(&entry.path()));
            }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn spec_literal_exchange() {
    let daemon = Daemon::start().await;
    let mut client = daemon.client().await;
    assert_eq!(
        client
            .request("Lshared/userdb/foobar@chat.example.org\tfoobar@chat.example.org\n")
            .await,
        "N\n"
    );
    let reply = client
        .request(
            "Lshared/passdb/laksjd\\\\sjdlk\\\"12j\\'3l1/k2j3123\"some42123@chat.example.org\tsome42123@chat.example.org\n",
        )
        .await;
    let home = daemon.mailboxes().join("some42123@chat.example.org");
    let prefix = format!(
        "O{{\"addr\": \"some42123@chat.example.org\", \"home\": \"{}\", \"uid\": \"vmail\", \"gid\": \"vmail\", \"password\": \"{{SHA512-CRYPT}}$6$",
        home.display()
    );
    assert!(reply.starts_with(&prefix), "{reply}");
    assert!(reply.ends_with("\"}\n"), "{reply}");
    let hash = password_hash_of(&reply);
    let fields: Vec<&str> = hash.split('$').collect();
    assert_eq!(fields[2].len(), 16, "salt");
    assert_eq!(fields[3].len(), 86, "hash");
    // The stored hash is the one of the unescaped password.
    assert_eq!(
        doveauth::hash::crypt_sha512("laksjd\\sjdlk\"12j'3l1/k2j3123", fields[2]),
        hash.strip_prefix("{SHA512-CRYPT}").unwrap()
    );
    assert_eq!(fs::read_to_string(home.join("password")).unwrap(), hash);
    assert!(home.join("enforceE2EEincoming").exists());

    // userdb now finds it, with the same record.
    let userdb = client.userdb("some42123@chat.example.org").await;
    assert_eq!(userdb, reply);
    daemon.stop().await;
}

#[tokio::test]
async fn wrong_password_never_overwrites() {
    let daemon = Daemon::start().await;
    let mut client = daemon.client().await;
    let first = client
        .passdb("correct-horse", "abcdefghi@chat.example.org")
        .await;
    let again = client
        .passdb("wrong-password", "abcdefghi@chat.example.org")
        .await;
    assert_eq!(
        first, again,
        "the stored hash is returned; Dovecot rejects the password"
    );
    let hash = password_hash_of(&first);
    assert_eq!(
        fs::read_to_string(
            daemon
                .mailboxes()
                .join("abcdefghi@chat.example.org/password")
        )
        .unwrap(),
        hash
    );
    daemon.stop().await;
}

#[tokio::test]
async fn iterate_lists_address_directories() {
    let daemon = Daemon::start().await;
    let mut client = daemon.client().await;
    client.send("I0\t0\tshared/userdb/\n").await;
    assert_eq!(client.line().await, "\n", "no mailboxes_dir yet: empty");
    for name in ["asdf00000", "asdf11111"] {
        let reply = client
            .passdb("password123", &format!("{name}@{DOMAIN}"))
            .await;
        assert!(reply.starts_with('O'));
    }
    fs::create_dir_all(daemon.mailboxes().join("pending_notifications")).unwrap();
    client.send("I0\t0\tshared/userdb/\n").await;
    let mut rows = vec![client.line().await, client.line().await];
    rows.sort();
    assert_eq!(
        rows,
        [
            "Oshared/userdb/asdf00000@chat.example.org\t\n",
            "Oshared/userdb/asdf11111@chat.example.org\t\n"
        ]
    );
    assert_eq!(client.line().await, "\n");
    // Another path: upstream sends nothing and Dovecot hangs; we end the iteration.
    assert_eq!(client.request("I0\t0\tshared/passdb/\n").await, "\n");
    daemon.stop().await;
}

#[tokio::test]
async fn refused_creations_answer_n_and_write_nothing() {
    let daemon = Daemon::start().await;
    let mut client = daemon.client().await;
    for (password, user) in [
        ("password123", "a1234@chat.example.org"),      // too short
        ("password123", "abcdefghij@chat.example.org"), // too long
        ("short", "abcdefghi@chat.example.org"),        // password too short
        ("password123", "abcd+fghi@chat.example.org"),  // invalid character
        ("password123", "ABCDEFGHI@chat.example.org"),  // upper case
        ("password123", "abcdefghi@other.example.org"), // other domain
        ("password123", "abcdefghi@chat.example.org.evil"), // suffix test
        ("password123", "@chat.example.org"),           // empty localpart
    ] {
        assert_eq!(client.passdb(password, user).await, "N\n", "{user}");
    }
    assert_eq!(
        tree(daemon.dir.path()).len(),
        1,
        "only the socket: {:?}",
        tree(daemon.dir.path())
    );
    daemon.stop().await;
}

#[tokio::test]
async fn nocreate_file_blocks_creation_but_not_existing_accounts() {
    let daemon = Daemon::start().await;
    let mut client = daemon.client().await;
    let existing = client
        .passdb("password123", "exists000@chat.example.org")
        .await;
    assert!(existing.starts_with('O'));
    fs::write(daemon.dir.path().join("chatmail-nocreate"), "").unwrap();
    assert_eq!(
        client
            .passdb("password123", "newuser00@chat.example.org")
            .await,
        "N\n"
    );
    assert_eq!(
        client
            .passdb("password123", "exists000@chat.example.org")
            .await,
        existing
    );
    fs::remove_file(daemon.dir.path().join("chatmail-nocreate")).unwrap();
    assert!(
        client
            .passdb("password123", "newuser00@chat.example.org")
            .await
            .starts_with('O')
    );
    daemon.stop().await;
}

#[tokio::test]
async fn existing_accounts_work_when_resources_are_short() {
    let daemon = Daemon::start_with(|settings| {
        settings.limits.max_load_1m = -1.0;
        settings.limits.min_free_disk_space_mb = i64::MAX;
    })
    .await;
    let mut client = daemon.client().await;
    assert_eq!(
        client
            .passdb("password123", "newuser00@chat.example.org")
            .await,
        "N\n"
    );
    let user = daemon.mailboxes().join("olduser00@chat.example.org");
    fs::create_dir_all(&user).unwrap();
    fs::write(user.join("password"), "{SHA512-CRYPT}$6$salt$hash").unwrap();
    let reply = client
        .passdb("anything!", "olduser00@chat.example.org")
        .await;
    assert_eq!(password_hash_of(&reply), "{SHA512-CRYPT}$6$salt$hash");
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_concurrent_first_logins_get_the_same_hash() {
    let daemon = Arc::new(Daemon::start().await);
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let daemon = daemon.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = daemon.client().await;
            client
                .passdb("password123", "samesame0@chat.example.org")
                .await
        }));
    }
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.unwrap());
    }
    assert!(replies[0].starts_with('O'));
    assert!(replies.iter().all(|r| r == &replies[0]), "{replies:?}");
    let daemon = Arc::into_inner(daemon).unwrap();
    daemon.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connections_times_five_creations() {
    let daemon = Arc::new(Daemon::start().await);
    let mut tasks = Vec::new();
    for c in 0..50 {
        let daemon = daemon.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = daemon.client().await;
            for i in 0..5 {
                let addr = format!("user{c:02}x{i:02}@{DOMAIN}");
                let reply = client.passdb("password123", &addr).await;
                assert!(
                    reply.starts_with(&format!("O{{\"addr\": \"{addr}\"")),
                    "{reply}"
                );
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(fs::read_dir(daemon.mailboxes()).unwrap().count(), 250);
    let daemon = Arc::into_inner(daemon).unwrap();
    daemon.stop().await;
}

#[tokio::test]
async fn hostile_input_touches_nothing_outside_mailboxes_and_the_daemon_survives() {
    let daemon = Daemon::start_with(|settings| {
        settings.rules.username_min_length = 1;
        settings.rules.username_max_length = 100;
    })
    .await;
    let outside_before = tree(daemon.dir.path());
    let mut client = daemon.client().await;
    let hostile_users = [
        "../../../etc@chat.example.org",
        "a/b@chat.example.org",
        "..@chat.example.org",
        "x\x010y@chat.example.org", // tab-escaped NUL
        "x\x01ty@chat.example.org", // tab-escaped TAB
        "@chat.example.org",
    ];
    for user in hostile_users {
        let reply = client
            .request(&format!("Lshared/passdb/password123\"{user}\t{user}\n"))
            .await;
        assert_eq!(reply, "N\n", "{user:?}");
        assert_eq!(
            client
                .request(&format!("Lshared/userdb/{user}\t{user}\n"))
                .await,
            "N\n"
        );
    }
    // A 10 KB key is answered; only its address is refused.
    let long_user = format!("{}@chat.example.org", "a".repeat(10_000));
    assert_eq!(client.passdb("password123", &long_user).await, "N\n");
    // Malformed keys: F, connection kept.
    assert_eq!(client.request("Lshared\n").await, "F\n");
    assert_eq!(
        client.request("Lshared/passdb/no-separator\tx\n").await,
        "F\n"
    );
    assert_eq!(client.request("Lshared/userdb/trailing\\\n").await, "F\n");
    assert_eq!(client.request("Lprivate/passdb/a\"b\n").await, "F\n");
    assert_eq!(client.request("Lshared/other/x\n").await, "F\n");
    assert_eq!(
        tree(daemon.dir.path()),
        outside_before,
        "nothing was created anywhere"
    );

    // Non-UTF-8 and overlong lines close that connection only.
    let mut bad = daemon.client().await;
    bad.writer
        .write_all(b"Lshared/userdb/\xff\xfe@chat.example.org\n")
        .await
        .unwrap();
    assert!(bad.closed().await);
    let mut huge = daemon.client().await;
    let mut line = b"Lshared/userdb/".to_vec();
    line.extend(std::iter::repeat_n(b'a', 100_000));
    line.push(b'\n');
    let _ = huge.writer.write_all(&line).await;
    assert!(huge.closed().await);
    // A client that disconnects mid-transaction.
    let mut quitter = daemon.client().await;
    quitter
        .send("B1\tx@chat.example.org\nS1\tshared/passdb/x\ty\n")
        .await;
    drop(quitter);

    // Still serving, on the old connection and a new one.
    assert!(
        client
            .passdb("password123", "fine@chat.example.org")
            .await
            .starts_with('O')
    );
    let mut fresh = daemon.client().await;
    assert!(fresh.userdb("fine@chat.example.org").await.starts_with('O'));
    daemon.stop().await;
}

#[tokio::test]
async fn empty_password_file_can_be_reclaimed() {
    // Upstream quirk, kept: an empty password file counts as no account.
    let daemon = Daemon::start().await;
    let user = daemon.mailboxes().join("emptypass@chat.example.org");
    fs::create_dir_all(&user).unwrap();
    fs::write(user.join("password"), "").unwrap();
    let mut client = daemon.client().await;
    assert_eq!(client.userdb("emptypass@chat.example.org").await, "N\n");
    assert!(
        client
            .passdb("password123", "emptypass@chat.example.org")
            .await
            .starts_with('O')
    );
    assert!(
        fs::read_to_string(user.join("password"))
            .unwrap()
            .starts_with("{SHA512-CRYPT}$6$")
    );
    daemon.stop().await;
}

#[tokio::test]
async fn password_with_a_tab_is_hashed_as_typed() {
    // Dovecot tab-escapes fields; upstream hashed the escaped form, so such a user could
    // never log in again. We hash what the user typed.
    let daemon = Daemon::start().await;
    let mut client = daemon.client().await;
    let reply = client
        .request("Lshared/passdb/pass\x01tword1\"tabbed000@chat.example.org\ttabbed000@chat.example.org\n")
        .await;
    let hash = password_hash_of(&reply);
    let salt = hash.split('$').nth(2).unwrap();
    assert_eq!(
        doveauth::hash::crypt_sha512("pass\tword1", salt),
        hash.strip_prefix("{SHA512-CRYPT}").unwrap()
    );
    daemon.stop().await;
}
