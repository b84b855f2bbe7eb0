//! The encryption check over every fixture: ours (tests/fixtures) and upstream's
//! (../shared/testdata, required when CI=true).

#![allow(clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use chatmail_filtermail::Direction;
use chatmail_filtermail::check::{Acceptance, Envelope, Outcome, Rejection, check};
use rstest::rstest;

const OURS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
const UPSTREAM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/testdata");

/// A verdict reduced to what a sender sees.
fn code(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Accept(_) => "accept",
        Outcome::Reject(Rejection::EncryptionNeeded) => "523",
        Outcome::Reject(_) => "500",
    }
}

fn envelope(sender: &str, rcpt: &str) -> Envelope {
    Envelope {
        sender: sender.into(),
        recipients: vec![rcpt.into()],
    }
}

/// Outgoing from the From address to someone else; incoming to a recipient that
/// refuses cleartext.
fn verdicts(message: &[u8], from: &str, to: &str) -> (&'static str, &'static str) {
    let out = check(message, &envelope(from, to), Direction::Outgoing, |_| true);
    let inc = check(message, &envelope(from, to), Direction::Incoming, |_| false);
    (code(&out.outcome), code(&inc.outcome))
}

#[rstest]
#[case("enc-new-format.eml", "accept", "accept")]
#[case("enc-skesk.eml", "accept", "accept")]
#[case("enc-old-format.eml", "accept", "accept")]
#[case("enc-partial-lengths.eml", "accept", "accept")]
#[case("enc-five-octet-length.eml", "accept", "accept")]
#[case("enc-base64-transfer.eml", "accept", "accept")]
#[case("enc-version-header.eml", "523", "accept")]
#[case("enc-comment-header.eml", "523", "523")]
#[case("enc-trailing-garbage.eml", "523", "523")]
#[case("enc-truncated.eml", "523", "523")]
#[case("enc-wrong-order.eml", "523", "523")]
#[case("enc-signature-packet.eml", "523", "523")]
#[case("enc-bad-base64.eml", "523", "523")]
#[case("enc-three-parts.eml", "523", "523")]
#[case("enc-nested-multipart.eml", "523", "523")]
#[case("enc-lf-only.eml", "523", "523")]
#[case("plain-8bit-headers.eml", "523", "523")]
#[case("securejoin-vg.eml", "accept", "accept")]
// Real GnuPG 2.2 output (generate-gpg.sh): old-format session-key packets.
#[case("gpg-pubkey.eml", "accept", "accept")]
#[case("gpg-two-recipients-signed.eml", "accept", "accept")]
#[case("gpg-symmetric.eml", "accept", "accept")]
#[case("gpg-version-header.eml", "523", "accept")]
#[case("gpg-signed-only.eml", "523", "523")]
#[case("gpg-literal.eml", "523", "523")]
#[case("securejoin-two-parts.eml", "523", "523")]
fn own_fixture(#[case] name: &str, #[case] outgoing: &str, #[case] incoming: &str) {
    let message = std::fs::read(Path::new(OURS).join(name)).unwrap();
    assert_eq!(
        verdicts(&message, "alice@example.org", "bob@example.org"),
        (outgoing, incoming),
        "{name}"
    );
}

/// Upstream's fixtures, or `None` (after saying why) when they are not next to the
/// checkout; in CI their absence fails.
fn upstream_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(UPSTREAM);
    if dir.is_dir() {
        return Some(dir);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "upstream fixtures missing at {UPSTREAM} (required when CI=true)"
    );
    eprintln!("skipped: upstream fixtures not found at {UPSTREAM}");
    None
}

/// The message as upstream's tests use it: `relay/` files are Python templates that the
/// tests fill in and re-serialise with CRLF line ends.
fn load_upstream(dir: &Path, folder: &str, name: &str) -> Vec<u8> {
    let raw = std::fs::read(dir.join(folder).join(name)).unwrap();
    if folder == "filtermail" {
        return raw;
    }
    let text = String::from_utf8(raw)
        .unwrap()
        .replace("{from_addr}", "one@example.org")
        .replace("{to_addr}", "two@example.org")
        .replace("{subject}", "[...]");
    text.replace("\r\n", "\n")
        .replace('\n', "\r\n")
        .into_bytes()
}

#[rstest]
fn upstream_fixture(
    #[values("filtermail", "relay")] folder: &str,
    #[values(
        ("asm.eml", "523", "523"),
        ("encrypted.eml", "accept", "accept"),
        ("fake-encrypted.eml", "523", "523"),
        ("literal.eml", "523", "523"),
        ("mailer-daemon.eml", "500", "accept"),
        ("mdn.eml", "523", "523"),
        ("plain.eml", "523", "523"),
        ("securejoin-vc.eml", "accept", "accept"),
        ("securejoin-vc-fake.eml", "523", "523"),
    )]
    expected: (&str, &str, &str),
) {
    let Some(dir) = upstream_dir() else { return };
    let (name, outgoing, incoming) = expected;
    let message = load_upstream(&dir, folder, name);
    assert_eq!(
        verdicts(&message, "one@example.org", "two@example.org"),
        (outgoing, incoming),
        "{folder}/{name}"
    );
}

#[rstest]
fn upstream_special_cases(#[values("filtermail", "relay")] folder: &str) {
    let Some(dir) = upstream_dir() else { return };
    let load = |name| load_upstream(&dir, folder, name);

    // Autocrypt Setup Message to oneself only.
    let asm = load("asm.eml");
    let to_self = check(
        &asm,
        &envelope("one@example.org", "one@example.org"),
        Direction::Outgoing,
        |_| true,
    );
    assert_eq!(to_self.outcome, Outcome::Accept(Acceptance::AutocryptSetup));

    // Forged From: refused outgoing even when encrypted.
    let encrypted = load("encrypted.eml");
    let forged = check(
        &encrypted,
        &envelope("mallory@example.org", "two@example.org"),
        Direction::Outgoing,
        |_| true,
    );
    assert_eq!(
        forged.outcome,
        Outcome::Reject(Rejection::ForgedFrom {
            from: "one@example.org".into(),
            sender: "mallory@example.org".into()
        })
    );
    assert_eq!(
        forged.outcome_reply(),
        "500 Invalid FROM one@example.org for mallory@example.org"
    );

    // Incoming: a mismatching envelope sender is blanked, not refused.
    let blanked = check(
        &encrypted,
        &envelope("srs0=x@fwd.org", "two@example.org"),
        Direction::Incoming,
        |_| false,
    );
    assert_eq!(blanked.outcome, Outcome::Accept(Acceptance::Encrypted));
    assert!(blanked.blank_sender);

    // Plain text incoming passes once the recipient allows cleartext.
    let plain = load("plain.eml");
    let allowed = check(
        &plain,
        &envelope("one@example.org", "two@example.org"),
        Direction::Incoming,
        |_| true,
    );
    assert_eq!(
        allowed.outcome,
        Outcome::Accept(Acceptance::CleartextAllowed)
    );
    // ...but not if any one recipient refuses it.
    let mixed = Envelope {
        sender: "one@example.org".into(),
        recipients: vec!["open@example.org".into(), "two@example.org".into()],
    };
    let refused = check(&plain, &mixed, Direction::Incoming, |r| {
        r == "open@example.org"
    });
    assert_eq!(
        refused.outcome,
        Outcome::Reject(Rejection::EncryptionNeeded)
    );

    // The bounce exemption is about the From header, whatever the envelope says.
    let bounce = load("mailer-daemon.eml");
    let from_null = check(
        &bounce,
        &envelope("", "two@example.org"),
        Direction::Incoming,
        |_| false,
    );
    assert_eq!(from_null.outcome, Outcome::Accept(Acceptance::MailerDaemon));
    assert!(!from_null.blank_sender);
}

trait ReplyExt {
    fn outcome_reply(&self) -> String;
}

impl ReplyExt for chatmail_filtermail::check::Verdict {
    fn outcome_reply(&self) -> String {
        match &self.outcome {
            Outcome::Reject(r) => r.reply(),
            Outcome::Accept(_) => "250 OK".into(),
        }
    }
}

/// Every .eml file in tests/fixtures has an `own_fixture` case, so a new fixture cannot
/// sit there untested.
#[test]
fn every_own_fixture_has_a_case() {
    let source = include_str!("check.rs");
    let mut cased: Vec<&str> = source
        .split("#[case(\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|name| name.ends_with(".eml"))
        .collect();
    cased.sort_unstable();
    let mut files: Vec<String> = std::fs::read_dir(OURS)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".eml"))
        .collect();
    files.sort_unstable();
    assert_eq!(cased, files);
}
