//! The README's main command end to end: `scripts/loopback-relay start` (on free ports and
//! in a state dir of the test's, so it can run next to other tests and a running loopback
//! relay), then what Delta Chat would do with it over TLS, mail to another relay handed to
//! filtermail transport, then `scripts/loopback-relay stop`, which must leave no process
//! and no listener behind.

use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use chatmail_e2e::binaries::workspace_root;
use chatmail_e2e::loopback::{RelayPorts, read_pids};
use chatmail_e2e::{DOMAIN, Imap, Smtp, poll_until, readdress, require_postfix};

/// A fixture filtermail outgoing accepts (real GnuPG output).
const ENCRYPTED: &str =
    include_str!("../../crates/filtermail/tests/fixtures/gpg-two-recipients-signed.eml");

/// Runs `scripts/loopback-relay ARGS`.
fn script(args: &[&str]) -> Output {
    Command::new(workspace_root().join("scripts/loopback-relay"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run scripts/loopback-relay")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Stops the relay if the test fails before its own `stop`.
struct StopOnDrop(PathBuf);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if self.0.exists() {
            let dir = self.0.display().to_string();
            let _ = script(&["stop", "--state-dir", &dir]);
        }
    }
}

fn logs(state_dir: &Path) -> String {
    let mut all = String::new();
    for name in [
        "postfix.log",
        "dovecot.log",
        "filtermail.log",
        "filtermail-transport.log",
        "doveauth.log",
    ] {
        let body = fs::read_to_string(state_dir.join(name)).unwrap_or_default();
        all.push_str(&format!("----- {name}\n{body}"));
    }
    all
}

/// Logs in on `smtp` (after EHLO) as `addr` and sends a cleartext message to itself:
/// filtermail refuses it with 523 at the final dot.
fn cleartext_is_refused(mut smtp: Smtp, addr: &str, password: &str, state_dir: &Path) {
    let auth = smtp.auth_plain(addr, password).expect("AUTH");
    assert_eq!(auth.code, 235, "{auth}\n{}", logs(state_dir));
    let message = format!(
        "From: <{addr}>\r\nTo: <{addr}>\r\nSubject: hi\r\nMessage-ID: <plain@localhost>\r\n\
         \r\nThis is not encrypted.\r\n"
    );
    let sent = smtp
        .send(addr, &[addr], &message)
        .expect("SMTP transaction");
    assert_eq!(
        (sent.step, sent.reply.code),
        (".", 523),
        "{sent}\n{}",
        logs(state_dir)
    );
    smtp.quit();
}

/// The local addresses (`IP:port`) of every listening TCP socket and bound UDP socket held
/// by the processes `roots` or their descendants, from `/proc`.
fn listening_sockets(roots: &[u32]) -> Vec<String> {
    // Every process with its parent, then the descendants of the roots.
    let mut parents = Vec::new();
    for entry in fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|field| field.parse::<u32>().ok());
        if let Some(ppid) = ppid {
            parents.push((pid, ppid));
        }
    }
    let mut tree: Vec<u32> = roots.to_vec();
    let mut grown = true;
    while grown {
        grown = false;
        for (pid, ppid) in &parents {
            if tree.contains(ppid) && !tree.contains(pid) {
                tree.push(*pid);
                grown = true;
            }
        }
    }
    // Their socket inodes.
    let mut inodes = Vec::new();
    for pid in &tree {
        let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = fs::read_link(fd.path()) {
                let target = target.to_string_lossy().into_owned();
                if let Some(inode) = target
                    .strip_prefix("socket:[")
                    .and_then(|rest| rest.strip_suffix(']'))
                {
                    inodes.push(inode.to_string());
                }
            }
        }
    }
    // The kernel's socket tables: TCP in state 0A (LISTEN), UDP in any state.
    let mut found = Vec::new();
    for (table, listen_only) in [
        ("/proc/net/tcp", true),
        ("/proc/net/tcp6", true),
        ("/proc/net/udp", false),
        ("/proc/net/udp6", false),
    ] {
        let text = fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            if (listen_only && *state != "0A") || !inodes.iter().any(|i| i == inode) {
                continue;
            }
            found.push(decode_address(local));
        }
    }
    found
}

/// `0100007F:1F90` (IPv4, little-endian) as `127.0.0.1:8080`; IPv6 addresses are shown
/// as `[hex]:port`.
fn decode_address(hex: &str) -> String {
    let (ip, port) = hex.split_once(':').unwrap_or((hex, "0"));
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    match u32::from_str_radix(ip, 16) {
        Ok(raw) if ip.len() == 8 => format!("{}:{port}", Ipv4Addr::from(raw.swap_bytes())),
        _ => format!("[{ip}]:{port}"),
    }
}

#[test]
fn start_serves_tls_and_stop_leaves_nothing() {
    if require_postfix().is_none() {
        return;
    }
    let parent = tempfile::Builder::new()
        .prefix("chatmail-loopback-test-")
        .tempdir()
        .expect("cannot create a temp dir");
    // vmail and Dovecot's unprivileged processes traverse it to the state dir.
    fs::set_permissions(parent.path(), fs::Permissions::from_mode(0o755))
        .expect("cannot chmod the temp dir");
    let state_dir = parent.path().join("relay");
    let dir = state_dir.display().to_string();
    let _guard = StopOnDrop(state_dir.clone());

    let started = script(&["start", "--state-dir", &dir, "--free-ports"]);
    assert!(started.status.success(), "start failed\n{}", text(&started));
    let stdout = String::from_utf8_lossy(&started.stdout).into_owned();
    let ports = RelayPorts::parse(
        &fs::read_to_string(state_dir.join("ports")).expect("start writes STATE/ports"),
    )
    .expect("STATE/ports parses");
    let processes = read_pids(&state_dir).expect("start writes STATE/pids");
    let names: Vec<&str> = processes.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "postfix",
            "filtermail outgoing",
            "filtermail incoming",
            "filtermail transport",
            "dovecot",
            "doveauth",
            "lastlogin",
            "chatmail-metadata"
        ],
        "{stdout}"
    );
    assert!(processes.iter().all(|p| p.is_alive()), "{processes:?}");

    // The printed dclogin: URL names the example account and the TLS ports.
    let url = stdout
        .lines()
        .find(|line| line.starts_with("dclogin:"))
        .unwrap_or_else(|| panic!("no dclogin: URL printed\n{stdout}"));
    assert!(url.contains(&format!("@{DOMAIN}?p=")), "{url}");
    assert!(url.contains(&format!("&ip={}", ports.imaps)), "{url}");
    assert!(
        url.contains(&format!("&sp={}", ports.postfix.submissions)),
        "{url}"
    );
    assert!(url.contains("&is=ssl") && url.contains("&ss=ssl"), "{url}");
    // Accept the self-signed certificate.
    assert!(url.contains("&ic=2"), "{url}");

    // Nothing the relay started listens beyond 127.0.0.1.
    let roots: Vec<u32> = processes.iter().map(|p| p.pid).collect();
    let listening = listening_sockets(&roots);
    assert!(
        listening.len() >= ports.named().len(),
        "found only {listening:?}"
    );
    let beyond: Vec<&String> = listening
        .iter()
        .filter(|addr| !addr.starts_with("127.0.0.1:"))
        .collect();
    assert!(beyond.is_empty(), "listening beyond loopback: {beyond:?}");

    // IMAPS: the first login over TLS creates the account.
    let local = |port: u16| SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let addr = format!("tlslogin1@{DOMAIN}");
    let password = "correct-horse-battery";
    let mut imap = Imap::connect_tls(local(ports.imaps), DOMAIN)
        .unwrap_or_else(|err| panic!("IMAPS connect: {err}\n{}", logs(&state_dir)));
    let reply = imap.login(&addr, password).expect("IMAPS LOGIN");
    assert!(reply.is_ok(), "{reply:?}\n{}", logs(&state_dir));
    imap.logout().expect("IMAPS LOGOUT");
    let password_file = state_dir
        .join("mail")
        .join(DOMAIN)
        .join(&addr)
        .join("password");
    assert!(password_file.is_file(), "{}", logs(&state_dir));

    // Submissions (465): TLS, SASL through Dovecot, then filtermail refuses cleartext.
    let mut smtp = Smtp::connect_tls(local(ports.postfix.submissions), DOMAIN)
        .unwrap_or_else(|err| panic!("SMTPS connect: {err}\n{}", logs(&state_dir)));
    smtp.ehlo("client.localhost").expect("EHLO");
    cleartext_is_refused(smtp, &addr, password, &state_dir);

    // Submission (587) after STARTTLS: the same.
    let mut smtp = Smtp::connect_starttls(local(ports.postfix.submission), DOMAIN)
        .unwrap_or_else(|err| panic!("587 STARTTLS: {err}\n{}", logs(&state_dir)));
    let ehlo = smtp.ehlo("client.localhost").expect("EHLO after STARTTLS");
    assert!(ehlo.text.contains("AUTH"), "{ehlo}");
    cleartext_is_refused(smtp, &addr, password, &state_dir);

    // Mail to another relay: Postfix hands it to filtermail transport, its
    // default_transport. Postfix listens on 127.0.0.1 only, so an [::1] literal is not its
    // own; whether the transport then reaches [::1]'s ports 443 and 25 or defers the
    // message does not matter here, only that Postfix delivered it to the transport's port.
    let remote_rcpt = "bob@[IPv6:::1]";
    let mut smtp = Smtp::connect_tls(local(ports.postfix.submissions), DOMAIN)
        .unwrap_or_else(|err| panic!("SMTPS connect: {err}\n{}", logs(&state_dir)));
    smtp.ehlo("client.localhost").expect("EHLO");
    let auth = smtp.auth_plain(&addr, password).expect("AUTH");
    assert_eq!(auth.code, 235, "{auth}\n{}", logs(&state_dir));
    let sent = smtp
        .send(
            &addr,
            &[remote_rcpt],
            &readdress(ENCRYPTED, &addr, remote_rcpt),
        )
        .expect("SMTP transaction");
    assert!(sent.is_accepted(), "{sent}\n{}", logs(&state_dir));
    smtp.quit();
    // filtermail outgoing lower-cases the envelope it reinjects.
    let handed_over = [
        "to=<bob@[ipv6:::1]>".to_string(),
        format!(
            "relay=127.0.0.1[127.0.0.1]:{}",
            ports.postfix.filtermail_transport
        ),
    ];
    let logged = poll_until(Duration::from_secs(60), || {
        fs::read_to_string(state_dir.join("postfix.log"))
            .unwrap_or_default()
            .lines()
            .any(|line| handed_over.iter().all(|part| line.contains(part.as_str())))
    });
    assert!(
        logged,
        "Postfix did not hand the message to filtermail transport\n{}",
        logs(&state_dir)
    );

    // Port 25 after STARTTLS, as another relay delivers: filtermail incoming refuses
    // cleartext for a recipient whose account enforces encryption.
    let mut mx = Smtp::connect_starttls(local(ports.postfix.smtp), DOMAIN)
        .unwrap_or_else(|err| panic!("25 STARTTLS: {err}\n{}", logs(&state_dir)));
    mx.ehlo("relay.example.org").expect("EHLO after STARTTLS");
    let remote = "someone@relay.example.org";
    let incoming = format!(
        "From: <{remote}>\r\nTo: <{addr}>\r\nSubject: hi\r\nMessage-ID: <in@example.org>\r\n\
         \r\nThis is not encrypted either.\r\n"
    );
    let sent = mx
        .send(remote, &[&addr], &incoming)
        .expect("SMTP transaction on 25");
    assert_eq!(
        (sent.step, sent.reply.code),
        (".", 523),
        "{sent}\n{}",
        logs(&state_dir)
    );
    mx.quit();

    // IMAP (143) after STARTTLS logs in too.
    let mut imap = Imap::connect_starttls(local(ports.imap), DOMAIN)
        .unwrap_or_else(|err| panic!("143 STARTTLS: {err}\n{}", logs(&state_dir)));
    let reply = imap.login(&addr, password).expect("LOGIN after STARTTLS");
    assert!(reply.is_ok(), "{reply:?}\n{}", logs(&state_dir));
    imap.logout().expect("LOGOUT");

    // Without TLS, 587 does not offer AUTH: the loopback relay requires TLS as a relay does.
    let mut plain = Smtp::connect(local(ports.postfix.submission)).expect("587 connect");
    let ehlo = plain.ehlo("client.localhost").expect("EHLO on 587");
    assert!(ehlo.text.contains("STARTTLS"), "{ehlo}");
    assert!(!ehlo.text.contains("AUTH"), "{ehlo}");
    plain.quit();

    let stopped = script(&["stop", "--state-dir", &dir]);
    assert!(stopped.status.success(), "stop failed\n{}", text(&stopped));
    // Exited processes may stay zombies until init reaps them; is_alive ignores those.
    let gone = poll_until(Duration::from_secs(10), || {
        processes.iter().all(|p| !p.is_alive())
    });
    assert!(gone, "still running after stop: {processes:?}");
    for (name, port) in ports.named() {
        let closed = poll_until(Duration::from_secs(10), || {
            TcpStream::connect(local(port)).is_err()
        });
        assert!(
            closed,
            "{name} port {port} still accepts connections after stop"
        );
    }
    assert!(!state_dir.exists(), "stop leaves {dir} behind");

    let again = script(&["stop", "--state-dir", &dir]);
    assert!(
        !again.status.success(),
        "a second stop succeeded\n{}",
        text(&again)
    );
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("no loopback relay runs"),
        "{}",
        text(&again)
    );
}
