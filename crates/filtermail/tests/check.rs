//! The encryption check over every fixture: ours (tests/fixtures) and upstream's
//! (../shared/testdata, required when CI=true).

#![allow(clippy::indexing_slicing)]

use std::path::{Path, PathBuf};

use chatmail_filtermail::Direction;
use chatmail_filtermail::check::{Acceptance, Envelope, Outcome, Rejection, check, check_indexed};
use chatmail_filtermail::index::{MessageIndex, PAGE};
use rstest::rstest;

mod support;
use support::pgp::{self, ALICE, Armor, BOB, CAROL, Encrypt, Seipd};

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
// Sequoia 2 output, written by `write_sequoia_fixtures`.
#[case("seq-pkesk3-seipd1.eml", "accept", "accept")]
#[case("seq-pkesk6-seipd2-v6-key.eml", "accept", "accept")]
#[case("seq-signed-two-recipients.eml", "accept", "accept")]
#[case("seq-skesk6-seipd2.eml", "accept", "accept")]
#[case("seq-version-header.eml", "523", "accept")]
#[case("seq-signed-only.eml", "523", "523")]
// An Autocrypt Setup Message from Alice to Bob, not to herself.
#[case("seq-autocrypt-setup.eml", "523", "523")]
fn own_fixture(#[case] name: &str, #[case] outgoing: &str, #[case] incoming: &str) {
    let message = std::fs::read(Path::new(OURS).join(name)).unwrap();
    assert_eq!(
        verdicts(&message, "alice@example.org", "bob@example.org"),
        (outgoing, incoming),
        "{name}"
    );
}

/// Messages Sequoia writes in the test itself (tests/support/pgp.rs).
#[derive(Debug, Clone, Copy)]
enum Made {
    /// To Bob: PKESK v3 + SEIPD v1, CRC line.
    ToBob,
    /// To Bob, forced AEAD: PKESK v6 + SEIPD v2 to a v4 key.
    ToBobSeipd2,
    /// To Carol's v6 certificate: PKESK v6 + SEIPD v2.
    ToCarolV6,
    /// To Carol's v6 certificate, armored as an RFC 9580 writer does: no CRC line. Base64
    /// without padding, so nothing looks like a CRC.
    ToCarolV6NoCrc,
    /// Signed by Alice inside the encryption to Bob.
    SignedEncrypted,
    /// To Alice and Bob: two PKESK v3.
    TwoRecipients,
    /// To Alice, Bob and Carol with SEIPD v2: three PKESK v6, mixing v4 and v6 keys.
    ThreeRecipientsSeipd2,
    /// Password only: SKESK v4 + SEIPD v1.
    Symmetric,
    /// Password only, forced AEAD: SKESK v6 + SEIPD v2.
    SymmetricSeipd2,
    /// To Bob and a password: PKESK v3, SKESK v4, SEIPD v1.
    PublicAndPassword,
    /// To Bob, armor with a `Version:` header.
    VersionHeader,
    /// To Bob, armor without CRC line whose base64 ends in `=` padding: upstream's CRC cut
    /// (at the last `=` anywhere) eats the padding and refuses it; we accept it.
    NoCrcPadded,
    /// Signed, not encrypted: one-pass signature, literal data, signature.
    SignedOnly,
    /// A bare literal data packet.
    LiteralOnly,
}

impl Made {
    /// The PGP/MIME mail from Alice to Bob, and its packet sequence.
    fn build(self) -> (Vec<u8>, String) {
        let plain = pgp::inner_part(200);
        let (alice, bob, carol) = (pgp::alice(), pgp::bob(), pgp::carol());
        let to = |certs: &[&sequoia_openpgp::Cert], seipd| {
            Encrypt {
                seipd,
                ..Encrypt::to(certs)
            }
            .binary(&plain)
        };
        let mut armor = Armor::MESSAGE;
        let binary = match self {
            Made::ToBob | Made::VersionHeader => to(&[bob], Seipd::Default),
            Made::ToBobSeipd2 => to(&[bob], Seipd::V2),
            Made::ToCarolV6 => to(&[carol], Seipd::Default),
            Made::ToCarolV6NoCrc => {
                armor.crc = false;
                padded(false, |n| to_len(&[carol], n))
            }
            Made::NoCrcPadded => {
                armor.crc = false;
                padded(true, |n| to_len(&[bob], n))
            }
            Made::SignedEncrypted => Encrypt {
                signer: Some(alice),
                ..Encrypt::to(&[bob])
            }
            .binary(&plain),
            Made::TwoRecipients => to(&[alice, bob], Seipd::Default),
            Made::ThreeRecipientsSeipd2 => to(&[alice, bob, carol], Seipd::V2),
            Made::Symmetric | Made::SymmetricSeipd2 => Encrypt {
                passwords: &["secret"],
                seipd: if matches!(self, Made::Symmetric) {
                    Seipd::Default
                } else {
                    Seipd::V2
                },
                ..Encrypt::to(&[])
            }
            .binary(&plain),
            Made::PublicAndPassword => Encrypt {
                passwords: &["secret"],
                ..Encrypt::to(&[bob])
            }
            .binary(&plain),
            Made::SignedOnly => pgp::signed_only(alice, &plain),
            Made::LiteralOnly => pgp::literal_only(&plain),
        };
        if let Made::VersionHeader = self {
            armor.headers = &[("Version", "Sequoia-PGP 2")];
        }
        let shape = pgp::shape(&binary);
        (pgp::pgp_mime(ALICE, BOB, &armor.apply(&binary)), shape)
    }
}

/// A message to `certs` whose plaintext part is `n` bytes.
fn to_len(certs: &[&sequoia_openpgp::Cert], n: usize) -> Vec<u8> {
    Encrypt::to(certs).binary(&pgp::inner_part(n))
}

/// The first of `make(200)`, `make(201)`, `make(202)` whose base64 ends in padding
/// (`padding`) or not: the packet lengths are fixed for a given plaintext length.
fn padded(padding: bool, make: impl Fn(usize) -> Vec<u8>) -> Vec<u8> {
    (200..203)
        .map(make)
        .find(|binary| (binary.len() % 3 != 0) == padding)
        .expect("one of three consecutive lengths has the wanted padding")
}

#[rstest]
#[case::pkesk3_seipd1(Made::ToBob, "PKESK3 SEIPD1", "accept", "accept")]
#[case::pkesk6_seipd2_v4_key(Made::ToBobSeipd2, "PKESK6 SEIPD2", "accept", "accept")]
#[case::v6_certificate(Made::ToCarolV6, "PKESK6 SEIPD2", "accept", "accept")]
#[case::v6_certificate_no_crc(Made::ToCarolV6NoCrc, "PKESK6 SEIPD2", "accept", "accept")]
#[case::signed_and_encrypted(Made::SignedEncrypted, "PKESK3 SEIPD1", "accept", "accept")]
#[case::two_recipients(Made::TwoRecipients, "PKESK3 PKESK3 SEIPD1", "accept", "accept")]
#[case::three_recipients_seipd2(
    Made::ThreeRecipientsSeipd2,
    "PKESK6 PKESK6 PKESK6 SEIPD2",
    "accept",
    "accept"
)]
#[case::symmetric(Made::Symmetric, "SKESK4 SEIPD1", "accept", "accept")]
#[case::symmetric_seipd2(Made::SymmetricSeipd2, "SKESK6 SEIPD2", "accept", "accept")]
#[case::public_and_password(Made::PublicAndPassword, "PKESK3 SKESK4 SEIPD1", "accept", "accept")]
#[case::version_header(Made::VersionHeader, "PKESK3 SEIPD1", "523", "accept")]
#[case::no_crc_padded(Made::NoCrcPadded, "PKESK3 SEIPD1", "accept", "accept")]
#[case::signed_only(Made::SignedOnly, "OnePassSig Literal Signature", "523", "523")]
#[case::literal_only(Made::LiteralOnly, "Literal", "523", "523")]
fn sequoia_message(
    #[case] made: Made,
    #[case] packets: &str,
    #[case] outgoing: &str,
    #[case] incoming: &str,
) {
    let (message, shape) = made.build();
    assert_eq!(shape, packets, "{made:?}");
    assert_eq!(
        verdicts(&message, ALICE, BOB),
        (outgoing, incoming),
        "{made:?}:\n{}",
        String::from_utf8_lossy(&message)
    );
}

/// Sequoia's signed message really carries signature packets (so `signed_only` above is
/// refused for its shape, not for a broken armor), and the v6 certificate is one.
#[test]
fn sequoia_certificates_are_what_the_cases_say() {
    use sequoia_openpgp::types::PublicKeyAlgorithm;
    assert_eq!(pgp::alice().primary_key().key().version(), 4);
    assert_eq!(pgp::carol().primary_key().key().version(), 6);
    let algos: Vec<PublicKeyAlgorithm> = pgp::carol().keys().map(|k| k.key().pk_algo()).collect();
    assert!(
        algos.contains(&PublicKeyAlgorithm::X25519),
        "Carol's encryption subkey is X25519: {algos:?}"
    );
}

/// The Autocrypt Setup Message (a cleartext multipart/mixed with a symmetrically encrypted
/// key): accepted outgoing only when Alice sends it to herself.
#[rstest]
#[case::to_oneself(ALICE, "accept", "523")]
#[case::to_someone_else(BOB, "523", "523")]
fn sequoia_autocrypt_setup_message(
    #[case] to: &str,
    #[case] outgoing: &str,
    #[case] incoming: &str,
) {
    let asm = pgp::autocrypt_setup_message(to);
    let out = check(&asm, &envelope(ALICE, to), Direction::Outgoing, |_| true);
    let inc = check(&asm, &envelope(ALICE, to), Direction::Incoming, |_| false);
    assert_eq!(
        (code(&out.outcome), code(&inc.outcome)),
        (outgoing, incoming)
    );
    if outgoing == "accept" {
        assert_eq!(out.outcome, Outcome::Accept(Acceptance::AutocryptSetup));
    }
}

/// The benchmark's messages are accepted both ways and have the sizes it claims.
#[rstest]
#[case(5 * 1024)]
#[case(1024 * 1024)]
fn sequoia_message_of_size(#[case] size: usize) {
    let message = pgp::encrypted_mail_of_size(size);
    assert!(
        message.len().abs_diff(size) < 100,
        "{} bytes for {size}",
        message.len()
    );
    assert_eq!(verdicts(&message, ALICE, BOB), ("accept", "accept"));
}

/// A third party (Carol) cannot make Alice's encrypted mail pass outgoing with a forged
/// envelope: the From check comes before the encryption check.
#[test]
fn sequoia_message_forged_sender() {
    let (message, _) = Made::ToBob.build();
    let forged = check(&message, &envelope(CAROL, BOB), Direction::Outgoing, |_| {
        true
    });
    assert_eq!(code(&forged.outcome), "500");
}

/// The Sequoia-made messages committed as fixture files (`tests/fixtures/seq-*.eml`), so
/// that other tests and people without this crate's dev-dependencies can use them.
const SEQUOIA_FIXTURES: &[(&str, Made)] = &[
    ("seq-pkesk3-seipd1.eml", Made::ToBob),
    ("seq-pkesk6-seipd2-v6-key.eml", Made::ToCarolV6),
    ("seq-signed-two-recipients.eml", Made::TwoRecipients),
    ("seq-skesk6-seipd2.eml", Made::SymmetricSeipd2),
    ("seq-version-header.eml", Made::VersionHeader),
    ("seq-signed-only.eml", Made::SignedOnly),
];

/// Regenerates the `seq-*.eml` fixtures (new keys and payloads, same shapes) and checks
/// that each fresh message gets the verdicts of its committed counterpart. Written to a
/// temp dir; with `WRITE_SEQUOIA_FIXTURES=1` over the committed files instead.
#[test]
fn sequoia_fixtures_regenerate_with_the_committed_verdicts() {
    let temp = tempfile::tempdir().unwrap();
    let overwrite = std::env::var("WRITE_SEQUOIA_FIXTURES").as_deref() == Ok("1");
    let target = if overwrite {
        Path::new(OURS)
    } else {
        temp.path()
    };
    let mut written: Vec<(&str, Vec<u8>)> = SEQUOIA_FIXTURES
        .iter()
        .map(|&(name, made)| (name, made.build().0))
        .collect();
    written.push(("seq-autocrypt-setup.eml", pgp::autocrypt_setup_message(BOB)));
    for (name, message) in &written {
        let committed = std::fs::read(Path::new(OURS).join(name)).unwrap();
        let path = target.join(name);
        let tmp = path.with_extension("eml.tmp");
        std::fs::write(&tmp, message).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        let fresh = std::fs::read(&path).unwrap();
        assert_eq!(
            verdicts(&fresh, "alice@example.org", "bob@example.org"),
            verdicts(&committed, "alice@example.org", "bob@example.org"),
            "{name}: a regenerated message must keep the committed one's verdicts"
        );
    }
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
/// Both directions' outcomes, judged with the message's index (as the server does) and
/// without; the two must agree.
fn indexed_and_plain(message: &[u8]) -> [(Outcome, Outcome); 2] {
    let index = MessageIndex::of(message);
    [(Direction::Outgoing, true), (Direction::Incoming, false)].map(|(direction, cleartext)| {
        let env = envelope(ALICE, BOB);
        let plain = check(message, &env, direction, |_| cleartext);
        let indexed = check_indexed(message, &index, &env, direction, |_| cleartext, |_| false);
        (indexed.outcome, plain.outcome)
    })
}

/// The index changes what the check reads, never what it decides: over every fixture,
/// and over a 256 KiB Sequoia message with a byte changed, removed or added anywhere in
/// it, page edges included.
#[test]
fn the_index_never_changes_a_verdict() {
    for entry in std::fs::read_dir(OURS).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|ext| ext == "eml") {
            let message = std::fs::read(&path).unwrap();
            for (indexed, plain) in indexed_and_plain(&message) {
                assert_eq!(indexed, plain, "{}", path.display());
            }
        }
    }
    let message = pgp::encrypted_mail_of_size(256 * 1024);
    let mut accepted = 0;
    let mut refused = 0;
    let mut state = 0x9a9e_u64;
    for round in 0..240 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let at = if round % 2 == 0 {
            // Around a page edge.
            (PAGE * (1 + (state % 63) as usize) + (state >> 20) as usize % 5).saturating_sub(2)
        } else {
            (state % message.len() as u64) as usize
        };
        let mut changed = message.clone();
        let byte = b"=-.!A\r\n \xc3"[(state >> 40) as usize % 9];
        match round % 3 {
            0 => changed[at] = byte,
            1 => {
                changed.remove(at);
            }
            _ => changed.insert(at, byte),
        }
        for (indexed, plain) in indexed_and_plain(&changed) {
            assert_eq!(indexed, plain, "round {round}: {byte:?} at {at}");
            if matches!(plain, Outcome::Accept(_)) {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
    }
    // Changes in headers and boundaries' surroundings may pass; most break the armor.
    assert!(
        refused > 200 && accepted > 0,
        "{accepted} accepted, {refused} refused"
    );
}

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

/// `DISABLED` markers (filtermail-latest.md §3, §5 steps 3 and 8, §6.1 steps 5 and 9):
/// what is taken out, what is logged, what is dropped, and in which order.
#[test]
fn disabled_addresses_follow_upstreams_order() {
    use Direction::{Incoming, Outgoing};
    use chatmail_filtermail::check::{Dropped, Verdict, check_with_disabled};
    let encrypted = std::fs::read(Path::new(OURS).join("enc-new-format.eml")).unwrap();
    let plain = b"From: one@example.org\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n";
    let alice = "alice@example.org";
    let envelope = |sender: &str, recipients: &[&str]| Envelope {
        sender: sender.into(),
        recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
    };
    let off = |addr: &str| addr.starts_with("off");
    let lines = |verdict: &Verdict, direction| -> Vec<String> {
        verdict
            .log_lines(direction)
            .into_iter()
            .map(|line| line.text)
            .collect()
    };
    let removed = |rcpt: &str| format!("Disabled recipient: {rcpt}; removing from RCPT TO");

    // Outgoing: disabled recipients are taken out, each logged before the verdict.
    let to = envelope(alice, &["bob@x.org", "off1@x.org", "carol@x.org"]);
    let verdict = check_with_disabled(&encrypted, &to, Outgoing, |_| true, off);
    assert_eq!(verdict.outcome, Outcome::Accept(Acceptance::Encrypted));
    assert_eq!(verdict.recipients, ["bob@x.org", "carol@x.org"]);
    assert_eq!(verdict.dropped, None);
    assert_eq!(
        lines(&verdict, Outgoing),
        [
            removed("off1@x.org"),
            "Outgoing: Filtering encrypted mail.".into()
        ]
    );

    // Every recipient disabled: accepted, then dropped.
    let to = envelope(alice, &["off1@x.org", "off2@x.org"]);
    let verdict = check_with_disabled(&encrypted, &to, Outgoing, |_| true, off);
    assert_eq!(verdict.outcome, Outcome::Accept(Acceptance::Encrypted));
    assert!(verdict.recipients.is_empty());
    assert_eq!(verdict.dropped, Some(Dropped::AllRecipientsDisabled));
    assert_eq!(
        verdict.dropped.as_ref().unwrap().log_line(),
        "Dropping mail; All recipients disabled."
    );
    assert_eq!(
        lines(&verdict, Outgoing),
        [
            removed("off1@x.org"),
            removed("off2@x.org"),
            "Outgoing: Filtering encrypted mail.".into()
        ]
    );

    // A disabled sender's accepted mail is dropped...
    let to = envelope(alice, &["bob@x.org"]);
    let verdict = check_with_disabled(&encrypted, &to, Outgoing, |_| true, |a| a == alice);
    assert_eq!(verdict.dropped, Some(Dropped::SenderDisabled(alice.into())));
    assert_eq!(
        verdict.dropped.as_ref().unwrap().log_line(),
        "Dropping mail; Sender alice@example.org is disabled."
    );
    // ...its cleartext still refused: the verdict comes first.
    let to = envelope("one@example.org", &["bob@x.org"]);
    let verdict = check_with_disabled(plain, &to, Outgoing, |_| true, |a| a == "one@example.org");
    assert_eq!(
        verdict.outcome,
        Outcome::Reject(Rejection::EncryptionNeeded)
    );
    assert_eq!(verdict.dropped, None);

    // A forged From is refused after the disabled recipients were logged.
    let to = envelope("mallory@x.org", &["off1@x.org", "bob@x.org"]);
    let verdict = check_with_disabled(&encrypted, &to, Outgoing, |_| true, off);
    assert!(matches!(
        verdict.outcome,
        Outcome::Reject(Rejection::ForgedFrom { .. })
    ));
    assert_eq!(lines(&verdict, Outgoing), [removed("off1@x.org")]);

    // Incoming: removed silently, and only the remaining recipients' wish for
    // encryption counts (off1 refuses cleartext, but it is gone).
    let to = envelope("one@example.org", &["open@x.org", "off1@x.org"]);
    let verdict = check_with_disabled(plain, &to, Incoming, |r| r == "open@x.org", off);
    assert_eq!(
        verdict.outcome,
        Outcome::Accept(Acceptance::CleartextAllowed)
    );
    assert_eq!(verdict.recipients, ["open@x.org"]);
    assert_eq!(
        lines(&verdict, Incoming),
        ["Incoming: Filtering unencrypted mail."]
    );
    let to = envelope(alice, &["off1@x.org"]);
    let verdict = check_with_disabled(&encrypted, &to, Incoming, |_| false, off);
    assert_eq!(verdict.dropped, Some(Dropped::AllRecipientsDisabled));
    assert_eq!(
        lines(&verdict, Incoming),
        ["Incoming: Filtering encrypted mail."]
    );
    // Incoming has no disabled-sender rule.
    let to = envelope(alice, &["bob@x.org"]);
    let verdict = check_with_disabled(&encrypted, &to, Incoming, |_| false, |a| a == alice);
    assert_eq!(verdict.dropped, None);

    // No recipients at all (an /mxdeliv request without X-MAIL-TO) is not about disabled
    // addresses; the server drops it with its own line.
    let verdict = check_with_disabled(&encrypted, &envelope(alice, &[]), Incoming, |_| false, off);
    assert_eq!(verdict.dropped, None);

    // Without markers nothing changes: `check` is the same with none disabled.
    let to = envelope(alice, &["bob@x.org", "off1@x.org"]);
    assert_eq!(
        check(&encrypted, &to, Outgoing, |_| true),
        check_with_disabled(&encrypted, &to, Outgoing, |_| true, |_| false)
    );
}
