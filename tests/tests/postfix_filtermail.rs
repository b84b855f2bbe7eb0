//! The real Debian Postfix with our filtermail as its `smtpd_proxy_filter`, as a chatmail
//! relay's master.cf wires them, delivering into Dovecot over LMTP: what a mail client or
//! a remote MTA sees at Postfix's ports, and what reaches the mailbox.

use std::time::{Duration, Instant};

use chatmail_e2e::{MailRelay, Sent, readdress};

const PASSWORD: &str = "correct-horse-9";
/// How long a message accepted by Postfix may take to reach the maildir.
const DELIVERY: Duration = Duration::from_secs(30);

/// A fixture filtermail accepts in both directions (real GnuPG output, two PKESKs, signed
/// inside the SEIPD).
const ENCRYPTED: &str =
    include_str!("../../crates/filtermail/tests/fixtures/gpg-two-recipients-signed.eml");

/// `filtermail_*` and `postfix_reinject*` ports are added by `MailRelay::start`.
const INI: &str = "";
/// Postfix's `message_size_limit` in the tests that do not test sizes: above filtermail's
/// default `max_message_size` (30 MiB).
const NO_POSTFIX_LIMIT: u64 = 64 * 1024 * 1024;

/// The one message `addr` receives.
fn delivered_one(mail: &MailRelay, addr: &str) -> String {
    mail.delivered(addr, 1, DELIVERY)
        .into_iter()
        .next()
        .expect("one message")
}

fn encrypted(from: &str, to: &str) -> String {
    readdress(ENCRYPTED, from, to)
}

fn plain(from: &str, to: &str) -> String {
    format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: hello\r\nMessage-ID: <plain@localhost>\r\n\
         \r\nThis is not encrypted.\r\n.leading dot line\r\n"
    )
}

/// Submits one message as a mail client does: a new connection to the submission service,
/// `AUTH PLAIN` as `from`, one transaction.
fn submit(mail: &MailRelay, from: &str, to: &str, message: &str) -> Sent {
    let mut smtp = mail.submit_as(from, PASSWORD);
    let sent = smtp
        .send(from, &[to], message)
        .unwrap_or_else(|err| panic!("submission: {err}\n{}", mail.logs()));
    smtp.quit();
    sent
}

/// Delivers one message as a remote MTA does: a new connection to the port-25 service.
fn receive(mail: &MailRelay, from: &str, to: &str, message: &str) -> Sent {
    let mut smtp = mail.connect(mail.smtp_addr());
    let sent = smtp
        .send(from, &[to], message)
        .unwrap_or_else(|err| panic!("port 25: {err}\n{}", mail.logs()));
    smtp.quit();
    sent
}

/// Asserts that `sent` was refused at `step` with `code` and a reply containing `text`.
fn assert_refused(mail: &MailRelay, sent: &Sent, step: &str, code: u16, text: &str) {
    assert_eq!(sent.step, step, "{sent}\n{}", mail.logs());
    assert_eq!(sent.reply.code, code, "{sent}\n{}", mail.logs());
    assert!(sent.reply.text.contains(text), "{sent}\n{}", mail.logs());
}

#[test]
fn encrypted_submission_reaches_the_mailbox() {
    let Some(mail) = MailRelay::start(INI, NO_POSTFIX_LIMIT) else {
        return;
    };
    let alice = mail.create_account("alice0001", PASSWORD);
    let bob = mail.create_account("bob000001", PASSWORD);

    let sent = submit(&mail, &alice, &bob, &encrypted(&alice, &bob));
    assert!(sent.is_accepted(), "{sent}\n{}", mail.logs());

    let message = delivered_one(&mail, &bob);
    assert!(message.contains(&format!("From: <{alice}>")), "{message}");
    assert!(message.contains(&format!("To: <{bob}>")), "{message}");
    assert!(message.contains("-----BEGIN PGP MESSAGE-----"), "{message}");
    // The PGP payload arrives unchanged (Dovecot stores LF line endings).
    let armor = ENCRYPTED
        .split_once("-----BEGIN PGP MESSAGE-----")
        .and_then(|(_, rest)| rest.split_once("-----END PGP MESSAGE-----"))
        .map(|(armor, _)| armor)
        .expect("the fixture is armored");
    assert!(message.contains(&armor.replace("\r\n", "\n")), "{message}");
    assert!(mail.messages(&alice).is_empty());
    assert!(
        mail.filtermail_log()
            .contains("Outgoing: Filtering encrypted mail."),
        "{}",
        mail.logs()
    );
}

#[test]
fn plain_submission_is_refused_with_523() {
    let Some(mail) = MailRelay::start(INI, NO_POSTFIX_LIMIT) else {
        return;
    };
    let alice = mail.create_account("alice0002", PASSWORD);
    let bob = mail.create_account("bob000002", PASSWORD);

    let sent = submit(&mail, &alice, &bob, &plain(&alice, &bob));
    assert_refused(
        &mail,
        &sent,
        ".",
        523,
        "Encryption Needed: Invalid Unencrypted Mail",
    );
    assert!(
        mail.filtermail_log()
            .contains(&format!("Rejected unencrypted mail from: {alice}")),
        "{}",
        mail.logs()
    );

    // An encrypted message sent afterwards arrives alone: the refused one was never queued.
    let sent = submit(&mail, &alice, &bob, &encrypted(&alice, &bob));
    assert!(sent.is_accepted(), "{sent}\n{}", mail.logs());
    let message = delivered_one(&mail, &bob);
    assert!(message.contains("-----BEGIN PGP MESSAGE-----"), "{message}");
    assert!(!message.contains("This is not encrypted."), "{message}");
}

#[test]
fn rate_limit_answers_450_after_the_burst() {
    let Some(mail) = MailRelay::start(
        "max_user_send_per_minute = 60\nmax_user_send_burst_size = 3\n",
        NO_POSTFIX_LIMIT,
    ) else {
        return;
    };
    let alice = mail.create_account("alice0003", PASSWORD);
    let bob = mail.create_account("bob000003", PASSWORD);
    let message = encrypted(&alice, &bob);

    // 60 per minute refills one message a second: after the burst of 3, a message is
    // refused as soon as the client sends faster than that. One connection, as a client
    // sending several messages would.
    let started = Instant::now();
    let mut smtp = mail.submit_as(&alice, PASSWORD);
    let mut accepted = 0u64;
    let refused = loop {
        let sent = smtp
            .send(&alice, &[&bob], &message)
            .unwrap_or_else(|err| panic!("SMTP: {err}\n{}", mail.logs()));
        if !sent.is_accepted() {
            break sent;
        }
        accepted += 1;
        assert!(accepted <= 10, "never rate-limited\n{}", mail.logs());
    };
    let elapsed = started.elapsed().as_secs();
    assert!(
        accepted >= 3,
        "refused within the burst: {refused}\n{}",
        mail.logs()
    );
    // At most the burst plus one refill per second passed.
    assert!(
        accepted <= 3 + elapsed + 1,
        "{accepted} accepted in {elapsed} s\n{}",
        mail.logs()
    );
    // Postfix opens the proxy connection at the first RCPT, so filtermail's reply to
    // MAIL FROM reaches the client as the reply to RCPT.
    let too_much = format!("4.7.1: Too much mail from {alice}");
    assert_refused(&mail, &refused, "RCPT", 450, &too_much);
    eprintln!("rate limit: {accepted} accepted, then {refused}");

    // The refusal is temporary: a second later one message passes again, on the same
    // client connection.
    std::thread::sleep(Duration::from_millis(1500));
    let again = smtp
        .send(&alice, &[&bob], &message)
        .unwrap_or_else(|err| panic!("SMTP: {err}\n{}", mail.logs()));
    assert!(again.is_accepted(), "{again}\n{}", mail.logs());
    accepted += 1;
    smtp.quit();

    let count = usize::try_from(accepted).expect("small");
    mail.delivered(&bob, count, DELIVERY);
}

#[test]
fn oversize_message_gets_552() {
    // filtermail's limit is 20000 bytes, Postfix's four times that: a message in between
    // is refused by filtermail (and relayed by Postfix), a bigger one by Postfix itself.
    let Some(mail) = MailRelay::start("max_message_size = 20000\n", 80_000) else {
        return;
    };
    let alice = mail.create_account("alice0004", PASSWORD);
    let bob = mail.create_account("bob000004", PASSWORD);

    // An encrypted message padded with header lines, so only its size can refuse it.
    let padded = |bytes: usize| {
        let message = encrypted(&alice, &bob);
        let line = format!("X-Padding: {}\r\n", "x".repeat(60));
        let padding = line.repeat(bytes / line.len() + 1);
        format!("{padding}{message}")
    };

    let sent = submit(&mail, &alice, &bob, &padded(30_000));
    // filtermail's text, relayed by Postfix as it is; Postfix's own has `5.3.4`.
    assert_refused(&mail, &sent, ".", 552, "Message exceeds maximum size");

    let sent = submit(&mail, &alice, &bob, &padded(100_000));
    assert_eq!(sent.reply.code, 552, "{sent}\n{}", mail.logs());
    // Postfix's own proxy answer once the stream outgrows message_size_limit (filtermail
    // only sees the message cut off).
    assert!(
        sent.reply.text.starts_with("5.3.4 ") && sent.reply.text.contains("too big"),
        "not Postfix's 552: {sent}\n{}",
        mail.logs()
    );

    // Below both limits the same message passes.
    let sent = submit(&mail, &alice, &bob, &padded(10_000));
    assert!(sent.is_accepted(), "{sent}\n{}", mail.logs());
    delivered_one(&mail, &bob);
}

#[test]
fn incoming_encrypted_arrives_and_plain_is_refused_with_523() {
    let Some(mail) = MailRelay::start(INI, NO_POSTFIX_LIMIT) else {
        return;
    };
    let bob = mail.create_account("bob000005", PASSWORD);
    assert!(
        mail.enforces_e2ee_incoming(&bob),
        "doveauth did not create enforceE2EEincoming"
    );
    let remote = "carol@example.org";

    let sent = receive(&mail, remote, &bob, &plain(remote, &bob));
    assert_refused(
        &mail,
        &sent,
        ".",
        523,
        "Encryption Needed: Invalid Unencrypted Mail",
    );

    let sent = receive(&mail, remote, &bob, &encrypted(remote, &bob));
    assert!(sent.is_accepted(), "{sent}\n{}", mail.logs());
    let message = delivered_one(&mail, &bob);
    assert!(message.contains(&format!("From: <{remote}>")), "{message}");
    assert!(message.contains("-----BEGIN PGP MESSAGE-----"), "{message}");
    assert!(
        mail.filtermail_incoming_log()
            .contains("Incoming: Filtering encrypted mail."),
        "{}",
        mail.logs()
    );
    // The test relay's mail from example.org cannot be signed with a published key.
    assert!(
        mail.filtermail_incoming_log()
            .contains("DKIM verification DISABLED! This should not be used in production."),
        "{}",
        mail.logs()
    );
}

#[test]
fn incoming_without_dkim_signature_is_refused_with_554() {
    let Some(mail) = MailRelay::start_verifying_dkim(INI, NO_POSTFIX_LIMIT) else {
        return;
    };
    let bob = mail.create_account("bob000009", PASSWORD);
    let remote = "carol@example.org";
    // Encrypted, so only the origin check can refuse it.
    let sent = receive(&mail, remote, &bob, &encrypted(remote, &bob));
    assert_refused(&mail, &sent, ".", 554, "No DKIM signature found");
    // A domain-literal sender is not checked.
    let literal = "carol@[192.0.2.1]";
    let sent = receive(&mail, literal, &bob, &encrypted(literal, &bob));
    assert!(sent.is_accepted(), "{sent}\n{}", mail.logs());
    let message = delivered_one(&mail, &bob);
    assert!(message.contains(literal), "{message}");
    let log = mail.filtermail_incoming_log();
    assert!(!log.contains("DKIM verification DISABLED"), "{log}");
}

#[test]
fn submission_requires_login_as_the_sender() {
    let Some(mail) = MailRelay::start(INI, NO_POSTFIX_LIMIT) else {
        return;
    };
    let alice = mail.create_account("alice0006", PASSWORD);
    let bob = mail.create_account("bob000006", PASSWORD);

    // Without AUTH: Postfix refuses at RCPT, filtermail never sees the transaction.
    let mut smtp = mail.connect(mail.submission_addr());
    let sent = smtp
        .send(&alice, &[&bob], &encrypted(&alice, &bob))
        .unwrap_or_else(|err| panic!("submission: {err}\n{}", mail.logs()));
    smtp.quit();
    assert_eq!(sent.step, "RCPT", "{sent}\n{}", mail.logs());
    assert_eq!(sent.reply.code, 554, "{sent}\n{}", mail.logs());

    // A wrong password.
    let mut smtp = mail.connect(mail.submission_addr());
    let reply = smtp.auth_plain(&alice, "wrong-password-9").unwrap();
    assert_eq!(reply.code, 535, "{reply}\n{}", mail.logs());
    smtp.quit();

    // Logged in as bob, sending as alice: reject_sender_login_mismatch.
    let mut smtp = mail.submit_as(&bob, PASSWORD);
    let sent = smtp
        .send(&alice, &[&bob], &encrypted(&alice, &bob))
        .unwrap_or_else(|err| panic!("submission: {err}\n{}", mail.logs()));
    smtp.quit();
    assert_refused(&mail, &sent, "RCPT", 553, "not owned by user");

    assert!(
        !mail.filtermail_log().contains("Filtering"),
        "{}",
        mail.logs()
    );
    mail.delivered(&bob, 0, DELIVERY);
}
