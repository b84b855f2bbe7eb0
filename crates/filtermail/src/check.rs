//! The encryption and origin policy: message bytes + envelope + direction → verdict.
//!
//! Pure apart from the callbacks for the mailboxes' flag files (`enforceE2EEincoming`,
//! `DISABLED`), so every rule is testable and fuzzable without sockets or files. Follows
//! filtermail 0.7.4 (filtermail-latest.md §5, §6.1, §10) without DKIM.

use std::fmt;

use crate::address::extract_address;
use crate::index::{Indexed, MessageIndex};
use crate::mime::Part;
use crate::openpgp::check_armored_payload_indexed;

/// Which Postfix hop the filter sits on; some rules differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Submission from our own users (port 10080), reinjected to 10025.
    Outgoing,
    /// Mail from other servers (port 10081), reinjected to 10026.
    Incoming,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Outgoing => "Outgoing",
            Direction::Incoming => "Incoming",
        })
    }
}

/// The SMTP envelope as the filter received it (addresses already lower-cased).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    /// MAIL FROM; empty for the null reverse-path `<>`.
    pub sender: String,
    /// RCPT TO addresses in order.
    pub recipients: Vec<String>,
}

/// What the filter decided, with what it needs to log and reinject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    /// The `From:` header address (lower-cased), when there is one.
    pub from: Option<String>,
    /// Incoming only: the envelope sender differs from `From:`, so the message is
    /// reinjected with `MAIL FROM:<>` and no bounce can go to a forged return path.
    pub blank_sender: bool,
    /// Where an accepted message goes: the envelope's recipients without the disabled
    /// ones, in order.
    pub recipients: Vec<String>,
    /// The disabled recipients taken out (outgoing logs each; incoming is silent).
    pub disabled_recipients: Vec<String>,
    /// An accepted message that is answered 250 but not reinjected.
    pub dropped: Option<Dropped>,
}

/// Why an accepted message is dropped (filtermail-latest.md §4, §5 step 8, §6.1 step 9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// Outgoing: the sender's address is disabled.
    SenderDisabled(String),
    /// Every recipient of the envelope is disabled.
    AllRecipientsDisabled,
}

impl Dropped {
    /// The warning upstream logs, verbatim.
    pub fn log_line(&self) -> String {
        match self {
            Dropped::SenderDisabled(sender) => {
                format!("Dropping mail; Sender {sender} is disabled.")
            }
            Dropped::AllRecipientsDisabled => "Dropping mail; All recipients disabled.".to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Accept(Acceptance),
    Reject(Rejection),
}

/// Why a message may pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acceptance {
    /// PGP/MIME with an encrypted payload.
    Encrypted,
    /// A SecureJoin `vc-request`/`vg-request`, which cannot be encrypted yet.
    SecureJoin,
    /// An Autocrypt Setup Message the user sends to themselves (outgoing only).
    AutocryptSetup,
    /// A delivery status report from a mailer-daemon (incoming only).
    MailerDaemon,
    /// Cleartext to recipients who did not ask for encryption (incoming only).
    CleartextAllowed,
}

/// Why a message is refused; [`Rejection::reply`] is the SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Nothing that could be parsed as a message.
    Unparsable(String),
    /// No address in the `From:` header (the header value, possibly empty).
    InvalidFromHeader(String),
    /// Outgoing: the `From:` address is not the authenticated envelope sender.
    ForgedFrom { from: String, sender: String },
    /// Cleartext where encryption is required.
    EncryptionNeeded,
}

impl Rejection {
    /// The reply line, verbatim as upstream (filtermail.md §9).
    pub fn reply(&self) -> String {
        match self {
            Rejection::Unparsable(err) => format!("500 Failed to parse message: {err}"),
            Rejection::InvalidFromHeader(value) => format!("500 Invalid FROM header: {value}"),
            Rejection::ForgedFrom { from, sender } => {
                format!("500 Invalid FROM {from} for {sender}")
            }
            Rejection::EncryptionNeeded => {
                "523 Encryption Needed: Invalid Unencrypted Mail".to_owned()
            }
        }
    }
}

/// Severity of a [`LogLine`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
}

/// A log line operators' mtail programs count; the text is an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub level: LogLevel,
    pub text: String,
}

impl Verdict {
    /// The lines upstream logs for this verdict, in order (the drop's comes later, after
    /// the origin check: [`Dropped::log_line`]).
    pub fn log_lines(&self, direction: Direction) -> Vec<LogLine> {
        let info = |text: String| LogLine {
            level: LogLevel::Info,
            text,
        };
        let mut lines: Vec<LogLine> = match direction {
            Direction::Outgoing => self
                .disabled_recipients
                .iter()
                .map(|rcpt| LogLine {
                    level: LogLevel::Warn,
                    text: format!("Disabled recipient: {rcpt}; removing from RCPT TO"),
                })
                .collect(),
            Direction::Incoming => Vec::new(),
        };
        let from = self.from.as_deref().unwrap_or("");
        lines.extend(match &self.outcome {
            Outcome::Accept(Acceptance::Encrypted | Acceptance::SecureJoin) => {
                vec![info(format!("{direction}: Filtering encrypted mail."))]
            }
            Outcome::Accept(Acceptance::MailerDaemon) => vec![info(format!(
                "{direction}: Filtering mailer-daemon message from {from}"
            ))],
            Outcome::Accept(Acceptance::AutocryptSetup | Acceptance::CleartextAllowed) => {
                vec![info(format!("{direction}: Filtering unencrypted mail."))]
            }
            Outcome::Reject(Rejection::EncryptionNeeded) => vec![
                info(format!("{direction}: Filtering unencrypted mail.")),
                LogLine {
                    level: LogLevel::Warn,
                    text: format!("Rejected unencrypted mail from: {from}"),
                },
            ],
            Outcome::Reject(_) => Vec::new(),
        });
        lines
    }
}

/// Judges one message without disabled addresses: [`check_with_disabled`].
pub fn check(
    message: &[u8],
    envelope: &Envelope,
    direction: Direction,
    cleartext_ok: impl Fn(&str) -> bool,
) -> Verdict {
    check_with_disabled(message, envelope, direction, cleartext_ok, |_| false)
}

/// Judges one message. `cleartext_ok(recipient)` tells whether a local recipient accepts
/// unencrypted mail (incoming only), `disabled(address)` whether the operator disabled it;
/// both false for invalid addresses.
///
/// The order is upstream's, which decides what wins: the message must parse and `From:`
/// hold an address; disabled recipients are taken out (outgoing logs each); an outgoing
/// `From:` must be the envelope sender; then the encryption verdict over the remaining
/// recipients; an accepted message from a disabled sender (outgoing), or to no remaining
/// recipient, is dropped.
pub fn check_with_disabled(
    message: &[u8],
    envelope: &Envelope,
    direction: Direction,
    cleartext_ok: impl Fn(&str) -> bool,
    disabled: impl Fn(&str) -> bool,
) -> Verdict {
    let root = Part::parse(message);
    judge(message, root, envelope, direction, cleartext_ok, disabled)
}

/// [`check_with_disabled`] with the message's [`MessageIndex`] (built as it arrived):
/// the same verdict, reading only what the index does not vouch for.
pub fn check_indexed(
    message: &[u8],
    index: &MessageIndex,
    envelope: &Envelope,
    direction: Direction,
    cleartext_ok: impl Fn(&str) -> bool,
    disabled: impl Fn(&str) -> bool,
) -> Verdict {
    let root = Part::parse_indexed(message, Indexed::new(message, index));
    judge(message, root, envelope, direction, cleartext_ok, disabled)
}

fn judge(
    message: &[u8],
    root: Part<'_>,
    envelope: &Envelope,
    direction: Direction,
    cleartext_ok: impl Fn(&str) -> bool,
    disabled: impl Fn(&str) -> bool,
) -> Verdict {
    let rejected = |rejection, from, disabled_recipients| Verdict {
        outcome: Outcome::Reject(rejection),
        from,
        blank_sender: false,
        recipients: Vec::new(),
        disabled_recipients,
        dropped: None,
    };
    if message.is_empty() {
        return rejected(
            Rejection::Unparsable("empty message".to_owned()),
            None,
            Vec::new(),
        );
    }
    let from_header = root.header("from").unwrap_or("");
    let Some(from) = extract_address(from_header) else {
        return rejected(
            Rejection::InvalidFromHeader(from_header.to_owned()),
            None,
            Vec::new(),
        );
    };
    let (disabled_recipients, recipients): (Vec<String>, Vec<String>) = envelope
        .recipients
        .iter()
        .cloned()
        .partition(|rcpt| disabled(rcpt));
    let sender_matches = envelope.sender.eq_ignore_ascii_case(&from);
    let mut blank_sender = false;
    match direction {
        Direction::Outgoing if !sender_matches => {
            // Forged From headers are refused even when the mail is encrypted.
            let sender = envelope.sender.clone();
            return rejected(
                Rejection::ForgedFrom { from, sender },
                None,
                disabled_recipients,
            );
        }
        Direction::Outgoing => {}
        Direction::Incoming => blank_sender = !sender_matches && !envelope.sender.is_empty(),
    }
    let outcome = if is_encrypted(&root, direction) {
        Outcome::Accept(Acceptance::Encrypted)
    } else if is_securejoin_request(&root) {
        Outcome::Accept(Acceptance::SecureJoin)
    } else {
        match direction {
            Direction::Outgoing => {
                if is_self_sent_autocrypt_setup(&root, &from, &recipients) {
                    Outcome::Accept(Acceptance::AutocryptSetup)
                } else {
                    Outcome::Reject(Rejection::EncryptionNeeded)
                }
            }
            Direction::Incoming => {
                if is_mailer_daemon_report(&root, &from) {
                    Outcome::Accept(Acceptance::MailerDaemon)
                } else if recipients.iter().all(|r| cleartext_ok(r)) {
                    Outcome::Accept(Acceptance::CleartextAllowed)
                } else {
                    Outcome::Reject(Rejection::EncryptionNeeded)
                }
            }
        }
    };
    let dropped = match &outcome {
        Outcome::Reject(_) => None,
        Outcome::Accept(_)
            if direction == Direction::Outgoing
                && !envelope.sender.is_empty()
                && disabled(&envelope.sender) =>
        {
            Some(Dropped::SenderDisabled(envelope.sender.clone()))
        }
        // An envelope without recipients (an `/mxdeliv` request without X-MAIL-TO) is
        // not about disabled addresses; the caller drops it on its own.
        Outcome::Accept(_) if recipients.is_empty() && !disabled_recipients.is_empty() => {
            Some(Dropped::AllRecipientsDisabled)
        }
        Outcome::Accept(_) => None,
    };
    Verdict {
        outcome,
        from: Some(from),
        blank_sender,
        recipients,
        disabled_recipients,
        dropped,
    }
}

/// RFC 3156 PGP/MIME: `multipart/encrypted` with exactly two leaf parts, the version part
/// and the armored payload (filtermail-latest.md §10).
pub fn is_encrypted(root: &Part<'_>, direction: Direction) -> bool {
    if root.content_type() != "multipart/encrypted" {
        return false;
    }
    let [version, payload] = root.children() else {
        return false;
    };
    !version.is_multipart()
        && !payload.is_multipart()
        && version.content_type() == "application/pgp-encrypted"
        && version.decoded_body().trim_ascii() == b"Version: 1"
        && payload.content_type() == "application/octet-stream"
        && check_armored_payload_indexed(&payload.decoded_body(), direction, payload.indexed())
}

/// The first SecureJoin step, sent before keys are known (filtermail.md §6.4).
pub fn is_securejoin_request(root: &Part<'_>) -> bool {
    if !matches!(
        root.header("secure-join"),
        Some("vc-request" | "vg-request")
    ) {
        return false;
    }
    let [text] = root.children() else {
        return false;
    };
    if text.is_multipart() || text.content_type() != "text/plain" {
        return false;
    }
    let body = text.decoded_body().trim_ascii().to_ascii_lowercase();
    body == b"secure-join: vc-request" || body == b"secure-join: vg-request"
}

/// A key backup Delta Chat sends only to its own address.
fn is_self_sent_autocrypt_setup(root: &Part<'_>, from: &str, recipients: &[String]) -> bool {
    matches!(recipients, [only] if only == from)
        && root.header("subject") == Some("Autocrypt Setup Message")
        && root.content_type() == "multipart/mixed"
}

/// A bounce: auto-submitted, from `mailer-daemon@`, a `multipart/report`.
fn is_mailer_daemon_report(root: &Part<'_>, from: &str) -> bool {
    root.header("auto-submitted").is_some_and(|v| !v.is_empty())
        && from.starts_with("mailer-daemon@")
        && root.content_type() == "multipart/report"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(outcome: Outcome) -> Verdict {
        Verdict {
            outcome,
            from: Some("a@x.org".into()),
            blank_sender: false,
            recipients: vec!["b@x.org".into()],
            disabled_recipients: Vec::new(),
            dropped: None,
        }
    }

    fn texts(outcome: Outcome, direction: Direction) -> Vec<(LogLevel, String)> {
        verdict(outcome)
            .log_lines(direction)
            .into_iter()
            .map(|l| (l.level, l.text))
            .collect()
    }

    /// The lines mtail counts (relay's delivered_mail.mtail), verbatim.
    #[test]
    fn load_bearing_log_lines() {
        use LogLevel::{Info, Warn};
        let line = |level, text: &str| (level, text.to_owned());
        assert_eq!(
            texts(Outcome::Accept(Acceptance::Encrypted), Direction::Outgoing),
            [line(Info, "Outgoing: Filtering encrypted mail.")]
        );
        assert_eq!(
            texts(Outcome::Accept(Acceptance::SecureJoin), Direction::Incoming),
            [line(Info, "Incoming: Filtering encrypted mail.")]
        );
        assert_eq!(
            texts(
                Outcome::Accept(Acceptance::AutocryptSetup),
                Direction::Outgoing
            ),
            [line(Info, "Outgoing: Filtering unencrypted mail.")]
        );
        assert_eq!(
            texts(
                Outcome::Accept(Acceptance::CleartextAllowed),
                Direction::Incoming
            ),
            [line(Info, "Incoming: Filtering unencrypted mail.")]
        );
        assert_eq!(
            texts(
                Outcome::Accept(Acceptance::MailerDaemon),
                Direction::Incoming
            ),
            [line(
                Info,
                "Incoming: Filtering mailer-daemon message from a@x.org"
            )]
        );
        for direction in [Direction::Outgoing, Direction::Incoming] {
            assert_eq!(
                texts(Outcome::Reject(Rejection::EncryptionNeeded), direction),
                [
                    line(Info, &format!("{direction}: Filtering unencrypted mail.")),
                    line(Warn, "Rejected unencrypted mail from: a@x.org"),
                ]
            );
        }
        assert!(
            texts(
                Outcome::Reject(Rejection::InvalidFromHeader(String::new())),
                Direction::Outgoing
            )
            .is_empty()
        );
    }

    #[test]
    fn load_bearing_replies() {
        assert_eq!(
            Rejection::EncryptionNeeded.reply(),
            "523 Encryption Needed: Invalid Unencrypted Mail"
        );
        assert_eq!(
            Rejection::ForgedFrom {
                from: "a@x.org".into(),
                sender: "b@x.org".into()
            }
            .reply(),
            "500 Invalid FROM a@x.org for b@x.org"
        );
        assert_eq!(
            Rejection::InvalidFromHeader("nobody".into()).reply(),
            "500 Invalid FROM header: nobody"
        );
        assert_eq!(
            Rejection::Unparsable("empty message".into()).reply(),
            "500 Failed to parse message: empty message"
        );
    }

    #[test]
    fn autocrypt_setup_only_to_oneself() {
        let asm = b"From: a@x.org\r\nSubject: Autocrypt Setup Message\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n";
        let env = |rcpts: &[&str]| Envelope {
            sender: "a@x.org".into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
        };
        let out = |rcpts| check(asm, &env(rcpts), Direction::Outgoing, |_| true).outcome;
        assert_eq!(
            out(&["a@x.org"]),
            Outcome::Accept(Acceptance::AutocryptSetup)
        );
        assert_eq!(
            out(&["b@x.org"]),
            Outcome::Reject(Rejection::EncryptionNeeded)
        );
        assert_eq!(
            out(&["a@x.org", "a@x.org"]),
            Outcome::Reject(Rejection::EncryptionNeeded)
        );
        let incoming = check(asm, &env(&["a@x.org"]), Direction::Incoming, |_| false);
        assert_eq!(
            incoming.outcome,
            Outcome::Reject(Rejection::EncryptionNeeded)
        );
    }

    #[test]
    fn mailer_daemon_needs_all_three_marks() {
        let base = "From: MAILER-DAEMON@x.org\r\nAuto-Submitted: auto-replied\r\nContent-Type: multipart/report; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n";
        let verdict = |msg: &str| {
            let env = Envelope {
                sender: String::new(),
                recipients: vec!["u@y.org".into()],
            };
            check(msg.as_bytes(), &env, Direction::Incoming, |_| false).outcome
        };
        assert_eq!(verdict(base), Outcome::Accept(Acceptance::MailerDaemon));
        let not_auto = base.replace("Auto-Submitted: auto-replied", "Auto-Submitted:");
        assert_eq!(
            verdict(&not_auto),
            Outcome::Reject(Rejection::EncryptionNeeded)
        );
        let not_daemon = base.replace("MAILER-DAEMON@", "postmaster@");
        assert_eq!(
            verdict(&not_daemon),
            Outcome::Reject(Rejection::EncryptionNeeded)
        );
        let not_report = base.replace("multipart/report", "multipart/mixed");
        assert_eq!(
            verdict(&not_report),
            Outcome::Reject(Rejection::EncryptionNeeded)
        );
    }
}
