//! filtermail incoming's `/mxdeliv` HTTP endpoint (what nginx forwards other relays'
//! HTTPS deliveries to) in front of the real Postfix: accepted mail goes through Postfix's
//! incoming reinjection port into the Dovecot mailbox, refusals come back as HTTP 400 with
//! the SMTP reply.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use chatmail_e2e::{MailRelay, readdress};

const PASSWORD: &str = "correct-horse-9";
/// How long a message accepted by Postfix may take to reach the maildir.
const DELIVERY: Duration = Duration::from_secs(30);
/// Postfix's `message_size_limit`: above filtermail's default `max_message_size`.
const NO_POSTFIX_LIMIT: u64 = 64 * 1024 * 1024;
/// A fixture filtermail accepts (real GnuPG output).
const ENCRYPTED: &str =
    include_str!("../../crates/filtermail/tests/fixtures/gpg-two-recipients-signed.eml");
const REMOTE: &str = "carol@example.org";

/// SMTP's data form of `message` (CRLF lines): leading dots doubled, no terminator.
fn data_form(message: &str) -> String {
    assert!(message.ends_with("\r\n"));
    message
        .split_inclusive("\r\n")
        .map(|line| {
            if line.starts_with('.') {
                format!(".{line}")
            } else {
                line.to_owned()
            }
        })
        .collect()
}

/// POSTs `message` to `/mxdeliv` as a sending relay does (through nginx, which speaks
/// HTTP/1.x to filtermail); returns the status code and the body.
fn post(mail: &MailRelay, from: &str, to: &[&str], message: &str) -> (u16, String) {
    let body = data_form(message);
    let mut request = format!(
        "POST /mxdeliv HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         X-MAIL-FROM: {from}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for rcpt in to {
        request.push_str(&format!("X-MAIL-TO: {rcpt}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let mut stream = TcpStream::connect(mail.mxdeliv_addr())
        .unwrap_or_else(|err| panic!("connecting to /mxdeliv: {err}\n{}", mail.logs()));
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .unwrap_or_else(|err| panic!("reading the response: {err}\n{}", mail.logs()));
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {response:?}\n{}", mail.logs()));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head:?}"));
    (status, body.to_owned())
}

#[test]
fn encrypted_mail_reaches_the_mailbox_through_the_reinjection_port() {
    let Some(mail) = MailRelay::start("", NO_POSTFIX_LIMIT) else {
        return;
    };
    let bob = mail.create_account("bob000031", PASSWORD);
    // A line starting with a dot (after the MIME epilogue) crosses stuffed, once.
    let message = format!("{}.dot line\r\n", readdress(ENCRYPTED, REMOTE, &bob));
    let (status, body) = post(&mail, REMOTE, &[&bob], &message);
    assert_eq!((status, body.as_str()), (200, "250 OK"), "{}", mail.logs());
    let messages = mail.delivered(&bob, 1, DELIVERY);
    let [delivered] = messages.as_slice() else {
        panic!("{} messages\n{}", messages.len(), mail.logs());
    };
    assert!(
        delivered.contains(&format!("From: <{REMOTE}>")),
        "{delivered}"
    );
    assert!(
        delivered.contains("-----BEGIN PGP MESSAGE-----"),
        "{delivered}"
    );
    assert!(delivered.contains("\n.dot line"), "{delivered}");
    assert!(!delivered.contains("..dot line"), "{delivered}");
    assert!(
        mail.filtermail_incoming_log()
            .contains("Incoming: Filtering encrypted mail."),
        "{}",
        mail.logs()
    );
    // Postfix received it on filtermail incoming's reinjection service.
    let postfix = mail.postfix_log();
    assert!(
        postfix.contains("postfix/reinject_incoming") && postfix.contains(&format!("<{bob}>")),
        "{}",
        mail.logs()
    );
}

#[test]
fn cleartext_for_an_account_enforcing_encryption_gets_400_523() {
    let Some(mail) = MailRelay::start("", NO_POSTFIX_LIMIT) else {
        return;
    };
    let bob = mail.create_account("bob000032", PASSWORD);
    assert!(
        mail.enforces_e2ee_incoming(&bob),
        "doveauth did not create enforceE2EEincoming"
    );
    let message = format!(
        "From: <{REMOTE}>\r\nTo: <{bob}>\r\nSubject: hello\r\nMessage-ID: <plain@localhost>\r\n\
         \r\nThis is not encrypted.\r\n"
    );
    let (status, body) = post(&mail, REMOTE, &[&bob], &message);
    assert_eq!(
        (status, body.as_str()),
        (400, "523 Encryption Needed: Invalid Unencrypted Mail"),
        "{}",
        mail.logs()
    );
    mail.delivered(&bob, 0, DELIVERY);
}

#[test]
fn recipient_of_another_domain_gets_postfixs_refusal() {
    let Some(mail) = MailRelay::start("", NO_POSTFIX_LIMIT) else {
        return;
    };
    let elsewhere = "dora@elsewhere.example";
    let message = readdress(ENCRYPTED, REMOTE, elsewhere);
    let (status, body) = post(&mail, REMOTE, &[elsewhere], &message);
    assert_eq!(status, 400, "{body}\n{}", mail.logs());
    // reject_unauth_destination on the incoming reinjection port.
    assert!(
        body.starts_with("554 5.7.1 ") && body.contains("Relay access denied"),
        "{body}\n{}",
        mail.logs()
    );
}
