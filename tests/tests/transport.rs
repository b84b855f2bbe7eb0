//! Delivery to other relays as relay 1.12 wires it: the real Debian Postfix with
//! `default_transport = lmtp-filtermail:inet:[127.0.0.1]:PORT`, our `filtermail INI
//! transport` behind it, and another relay on `[::1]` (the test's own HTTPS `/mxdeliv`
//! endpoint and SMTP server with STARTTLS, see `chatmail_e2e::remote`).
//!
//! What is checked is what Postfix makes of the transport's LMTP replies (sent, bounced,
//! deferred, as its log and the sender's mailbox show) and what arrives at the other relay.

use std::net::{Ipv6Addr, TcpListener};
use std::time::Duration;

use chatmail_e2e::postfix::TransportTarget;
use chatmail_e2e::remote::{Arrival, RemoteRelay, Script};
use chatmail_e2e::{MailRelay, Sent, poll_until, readdress};

const PASSWORD: &str = "correct-horse-9";
/// How long Postfix may take from accepting a message to logging its delivery.
const DELIVERY: Duration = Duration::from_secs(60);

/// A fixture filtermail outgoing accepts (real GnuPG output).
const ENCRYPTED: &str =
    include_str!("../../crates/filtermail/tests/fixtures/gpg-two-recipients-signed.eml");

/// A recipient on the other relay. Postfix listens on 127.0.0.1 only, so an `[::1]`
/// literal is not its own and goes to `default_transport`.
const REMOTE_RCPT: &str = "bob@[IPv6:::1]";

const NO_POSTFIX_LIMIT: u64 = 64 * 1024 * 1024;

fn target(remote: &RemoteRelay) -> TransportTarget {
    TransportTarget {
        smtp_port: remote.smtp_port(),
        https_port: remote.https_port(),
    }
}

/// Two ports of `[::1]` nobody listens on (bound, then released).
fn unreachable_target() -> TransportTarget {
    let [smtp, https] = [0, 1].map(|_| {
        TcpListener::bind((Ipv6Addr::LOCALHOST, 0))
            .expect("cannot bind [::1]")
            .local_addr()
            .expect("address")
            .port()
    });
    TransportTarget {
        smtp_port: smtp,
        https_port: https,
    }
}

fn submit(mail: &MailRelay, from: &str, to: &[&str], message: &str) -> Sent {
    let mut smtp = mail.submit_as(from, PASSWORD);
    let sent = smtp
        .send(from, to, message)
        .unwrap_or_else(|err| panic!("submission: {err}\n{}", mail.logs()));
    smtp.quit();
    sent
}

/// Starts the relay with filtermail transport delivering to `target`, creates alice and
/// submits the encrypted fixture from her to [`REMOTE_RCPT`], which Postfix accepts.
/// Returns the relay, alice's address and the message; `None` where the relay cannot run.
fn submitted_to_remote(target: TransportTarget) -> Option<(MailRelay, String, String)> {
    let mail = MailRelay::start_with_transport("", NO_POSTFIX_LIMIT, target)?;
    let alice = mail.create_account("alice0001", PASSWORD);
    let message = readdress(ENCRYPTED, &alice, REMOTE_RCPT);
    let sent = submit(&mail, &alice, &[REMOTE_RCPT], &message);
    assert!(sent.is_accepted(), "{sent}\n{}", mail.logs());
    Some((mail, alice, message))
}

/// Waits until Postfix's log has a line containing every one of `needles`; returns it.
fn postfix_logged(mail: &MailRelay, needles: &[&str]) -> String {
    let find = || {
        mail.postfix_log()
            .lines()
            .find(|line| needles.iter().all(|needle| line.contains(needle)))
            .map(str::to_string)
    };
    poll_until(DELIVERY, || find().is_some());
    find().unwrap_or_else(|| panic!("no Postfix log line with {needles:?}\n{}", mail.logs()))
}

/// Waits until the other relay has `count` arrivals.
fn arrivals(remote: &RemoteRelay, mail: &MailRelay, count: usize) -> Vec<Arrival> {
    poll_until(DELIVERY, || remote.arrivals().len() >= count);
    let arrivals = remote.arrivals();
    assert!(
        arrivals.len() >= count,
        "{} arrival(s) at the other relay, expected {count}: {arrivals:?}\n{}",
        arrivals.len(),
        mail.logs()
    );
    arrivals
}

/// Waits for the one arrival at the other relay.
fn one_arrival(remote: &RemoteRelay, mail: &MailRelay) -> Arrival {
    let arrivals = arrivals(remote, mail, 1);
    let [arrival] = arrivals.as_slice() else {
        panic!("one arrival expected: {arrivals:?}");
    };
    arrival.clone()
}

/// The message body (after the first blank line) with CRLF line ends.
fn body(message: &str) -> &str {
    message
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// The wire form (dot-stuffed) as text, unstuffed.
fn unstuffed(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    text.split_inclusive("\r\n")
        .map(|line| line.strip_prefix('.').unwrap_or(line))
        .collect()
}

#[test]
fn encrypted_mail_to_another_relay_goes_over_https() {
    let remote = RemoteRelay::start(Script::default());
    let Some((mail, alice, message)) = submitted_to_remote(target(&remote)) else {
        return;
    };

    let line = postfix_logged(&mail, &["status=sent", "250 OK (HTTPS)"]);
    // filtermail outgoing lower-cases the envelope it reinjects, as upstream does.
    assert!(line.contains("to=<bob@[ipv6:::1]>"), "{line}");
    let arrival = one_arrival(&remote, &mail);
    assert_eq!(arrival.channel, "https");
    assert_eq!(arrival.sender, alice);
    let [recipient] = arrival.recipients.as_slice() else {
        panic!("one recipient expected: {arrival:?}");
    };
    assert!(recipient.eq_ignore_ascii_case(REMOTE_RCPT), "{arrival:?}");
    let delivered = unstuffed(&arrival.data);
    assert!(
        delivered.ends_with(body(&message)),
        "the other relay got a different body:\n{delivered}"
    );
    assert!(
        delivered.contains(&format!("From: <{alice}>")),
        "{delivered}"
    );
}

#[test]
fn refused_https_falls_back_to_smtp_with_starttls() {
    let remote = RemoteRelay::start(Script {
        https_status: 500,
        ..Script::default()
    });
    let Some((mail, alice, message)) = submitted_to_remote(target(&remote)) else {
        return;
    };

    postfix_logged(&mail, &["status=sent", "250 OK (SMTP)"]);
    let arrival = one_arrival(&remote, &mail);
    assert_eq!(arrival.channel, "smtp");
    assert!(arrival.tls, "the data crossed without TLS");
    assert_eq!(arrival.sender, alice);
    assert!(unstuffed(&arrival.data).ends_with(body(&message)));
}

#[test]
fn recipient_refused_by_the_other_relay_bounces_to_the_sender() {
    let remote = RemoteRelay::start(Script {
        https_status: 500,
        rcpt_reply: "550 5.1.1 No such user here".into(),
    });
    let Some((mail, alice, _message)) = submitted_to_remote(target(&remote)) else {
        return;
    };

    let line = postfix_logged(&mail, &["status=bounced", "No such user here"]);
    assert!(line.contains("550"), "{line}");
    // Postfix's bounce reaches the sender's own mailbox, naming the remote's refusal.
    let bounces = mail.wait_for_messages(&alice, 1, DELIVERY);
    assert!(
        bounces.iter().any(|m| m.contains("No such user here")),
        "{bounces:?}"
    );
    assert!(remote.arrivals().is_empty(), "{:?}", remote.arrivals());
}

#[test]
fn unreachable_relay_defers_and_postfix_keeps_the_message() {
    let Some((mail, _alice, _message)) = submitted_to_remote(unreachable_target()) else {
        return;
    };

    let line = postfix_logged(&mail, &["status=deferred", "Failed to connect"]);
    assert!(line.contains("421"), "{line}");
    assert!(
        !mail.postfix_log().contains("status=bounced"),
        "{}",
        mail.postfix_log()
    );
}

#[test]
fn local_and_remote_recipients_of_one_message_each_get_it() {
    let remote = RemoteRelay::start(Script::default());
    let Some(mail) = MailRelay::start_with_transport("", NO_POSTFIX_LIMIT, target(&remote)) else {
        return;
    };
    let alice = mail.create_account("alice0001", PASSWORD);
    let carol = mail.create_account("carol0001", PASSWORD);
    let message = readdress(ENCRYPTED, &alice, &carol);
    let sent = submit(&mail, &alice, &[&carol, REMOTE_RCPT], &message);
    assert!(sent.is_accepted(), "{sent}\n{}", mail.logs());

    postfix_logged(&mail, &["status=sent", "250 OK (HTTPS)"]);
    let arrivals = arrivals(&remote, &mail, 1);
    assert_eq!(arrivals.len(), 1, "{arrivals:?}");
    let local = mail.wait_for_messages(&carol, 1, DELIVERY);
    assert!(
        local
            .iter()
            .any(|m| m.contains("-----BEGIN PGP MESSAGE-----")),
        "{local:?}"
    );
}
