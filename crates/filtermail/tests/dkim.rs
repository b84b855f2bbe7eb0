//! The DKIM origin check with messages signed here (RSA-2048 and Ed25519 keys generated per
//! run) and key records served from memory: no network.

#![allow(clippy::indexing_slicing)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use chatmail_filtermail::dkim::{
    DkimRejection, DkimVerifier, KeyResolver, Lookup, LookupError, StaticResolver,
};
use chatmail_filtermail::reinject::ReinjectTarget;
use chatmail_filtermail::server::Limits;
use chatmail_filtermail::{Direction, Filter};
use chatmail_mailbox::Mailboxes;
use mail_auth::common::crypto::{Ed25519Key, RsaKey, Sha256, SigningKey};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::dkim::DkimSigner;
use mail_auth::dkim::generate::DkimKeyPair;

/// One signing key and the TXT record that publishes it.
struct Key {
    pkcs: Vec<u8>,
    record: String,
    rsa: bool,
}

fn rsa_key(bits: usize) -> Key {
    let pair = DkimKeyPair::generate_rsa(bits).unwrap();
    Key {
        record: format!("v=DKIM1; k=rsa; p={}", pair.encoded_public_key()),
        pkcs: pair.private_key().to_vec(),
        rsa: true,
    }
}

fn rsa2048() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| rsa_key(2048))
}

fn ed25519() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let pair = DkimKeyPair::generate_ed25519().unwrap();
        Key {
            record: format!("v=DKIM1; k=ed25519; p={}", pair.encoded_public_key()),
            pkcs: pair.private_key().to_vec(),
            rsa: false,
        }
    })
}

fn sign_with<T: SigningKey>(key: T, domain: &str, selector: &str, message: &[u8]) -> Vec<u8> {
    let signature = DkimSigner::from_key(key)
        .domain(domain)
        .selector(selector)
        .headers(["From", "To", "Subject"])
        .sign(message)
        .unwrap();
    let mut signed = signature.to_header().into_bytes();
    signed.extend_from_slice(message);
    signed
}

/// `message` with a `DKIM-Signature` of `domain` prepended.
fn sign(key: &Key, domain: &str, selector: &str, message: &[u8]) -> Vec<u8> {
    if key.rsa {
        #[allow(deprecated)]
        let rsa = RsaKey::<Sha256>::from_der(&key.pkcs).unwrap();
        sign_with(rsa, domain, selector, message)
    } else {
        let ed = Ed25519Key::from_pkcs8_der(&key.pkcs).unwrap();
        sign_with(ed, domain, selector, message)
    }
}

fn message(from: &str) -> Vec<u8> {
    format!("From: {from}\r\nTo: bob@example.org\r\nSubject: hi\r\n\r\nhello\r\n").into_bytes()
}

/// Publishes `key` as `<selector>._domainkey.<domain>`.
fn publish(resolver: &mut StaticResolver, key: &Key, domain: &str, selector: &str) {
    resolver.insert(&format!("{selector}._domainkey.{domain}"), &key.record);
}

fn verifier(resolver: StaticResolver) -> DkimVerifier {
    DkimVerifier::new(Arc::new(resolver)).unwrap()
}

/// The records of both keys for `remote.org` (selectors `rsa` and `ed`).
fn remote_org() -> StaticResolver {
    let mut resolver = StaticResolver::new();
    publish(&mut resolver, rsa2048(), "remote.org", "rsa");
    publish(&mut resolver, ed25519(), "remote.org", "ed");
    resolver
}

#[tokio::test]
async fn aligned_signatures_pass() {
    let v = verifier(remote_org());
    let msg = message("alice@remote.org");
    for (key, selector) in [(rsa2048(), "rsa"), (ed25519(), "ed")] {
        let signed = sign(key, "remote.org", selector, &msg);
        assert_eq!(
            v.verify(&signed, "alice@remote.org").await,
            Ok(()),
            "{selector}"
        );
    }
}

#[tokio::test]
async fn signature_of_another_domain_is_not_valid() {
    let mut resolver = remote_org();
    publish(&mut resolver, rsa2048(), "other.org", "rsa");
    let v = verifier(resolver);
    // Cryptographically valid, but other.org vouches for nothing about remote.org.
    let signed = sign(rsa2048(), "other.org", "rsa", &message("alice@remote.org"));
    assert_eq!(
        v.verify(&signed, "alice@remote.org").await,
        Err(DkimRejection::NoValidSignature)
    );
    // A subdomain is another domain too (strict alignment).
    let signed = sign(
        rsa2048(),
        "remote.org",
        "rsa",
        &message("alice@mx.remote.org"),
    );
    assert_eq!(
        v.verify(&signed, "alice@mx.remote.org").await,
        Err(DkimRejection::NoValidSignature)
    );
    // One aligned valid signature among others suffices.
    let both = sign(
        ed25519(),
        "remote.org",
        "ed",
        &sign(rsa2048(), "other.org", "rsa", &message("alice@remote.org")),
    );
    assert_eq!(v.verify(&both, "alice@remote.org").await, Ok(()));
}

#[tokio::test]
async fn unsigned_message_has_no_signature() {
    let v = verifier(remote_org());
    let reply = v
        .verify(&message("alice@remote.org"), "alice@remote.org")
        .await;
    assert_eq!(reply, Err(DkimRejection::NoSignature));
    assert_eq!(
        DkimRejection::NoSignature.reply(),
        "554 5.7.1 No DKIM signature found"
    );
    assert_eq!(
        DkimRejection::NoValidSignature.reply(),
        "554 5.7.1 No valid DKIM signature found"
    );
}

#[tokio::test]
async fn tampered_messages_fail() {
    let v = verifier(remote_org());
    for (key, selector) in [(rsa2048(), "rsa"), (ed25519(), "ed")] {
        let signed = sign(key, "remote.org", selector, &message("alice@remote.org"));
        let text = String::from_utf8(signed).unwrap();
        for tampered in [
            text.replace("hello\r\n", "hallo\r\n"),
            text.replace("Subject: hi", "Subject: ho"),
            text.replace("From: alice@", "From: mallory@"),
        ] {
            assert_eq!(
                v.verify(tampered.as_bytes(), "alice@remote.org").await,
                Err(DkimRejection::NoValidSignature),
                "{selector}: {tampered}"
            );
        }
    }
}

#[tokio::test]
async fn partial_body_signatures_do_not_count() {
    let v = verifier(remote_org());
    let key = Ed25519Key::from_pkcs8_der(&ed25519().pkcs).unwrap();
    let signature = DkimSigner::from_key(key)
        .domain("remote.org")
        .selector("ed")
        .headers(["From", "To", "Subject"])
        .body_length(true)
        .sign(&message("alice@remote.org"))
        .unwrap();
    let mut signed = signature.to_header().into_bytes();
    assert!(signature.l > 0, "{signature:?}");
    signed.extend_from_slice(&message("alice@remote.org"));
    assert_eq!(
        v.verify(&signed, "alice@remote.org").await,
        Err(DkimRejection::NoValidSignature)
    );
}

#[tokio::test]
async fn from_domain_compared_case_insensitively() {
    let v = verifier(remote_org());
    let signed = sign(rsa2048(), "Remote.ORG", "rsa", &message("alice@REMOTE.org"));
    assert_eq!(v.verify(&signed, "alice@remote.org").await, Ok(()));
    assert_eq!(v.verify(&signed, "alice@REMOTE.org").await, Ok(()));
}

#[tokio::test]
async fn domain_literal_senders_are_not_checked() {
    let v = verifier(StaticResolver::new());
    for from in ["alice@[192.0.2.1]", "alice@[IPv6:2001:db8::1]"] {
        assert_eq!(v.verify(&message(from), from).await, Ok(()), "{from}");
    }
}

#[tokio::test]
async fn missing_or_unusable_keys_fail() {
    let signed = sign(rsa2048(), "remote.org", "rsa", &message("alice@remote.org"));
    // Not published.
    let v = verifier(StaticResolver::new());
    assert_eq!(
        v.verify(&signed, "alice@remote.org").await,
        Err(DkimRejection::NoValidSignature)
    );
    // Published, but the wrong key.
    let mut wrong = StaticResolver::new();
    publish(&mut wrong, &rsa_key(1024), "remote.org", "rsa");
    assert_eq!(
        verifier(wrong).verify(&signed, "alice@remote.org").await,
        Err(DkimRejection::NoValidSignature)
    );
}

#[tokio::test]
async fn records_are_cleaned_before_parsing() {
    // Published over several strings and lines, with escaped quotes, without v=; an
    // unrelated TXT record first.
    let p = rsa2048().record.split("p=").nth(1).unwrap();
    let (head, tail) = p.split_at(p.len() / 2);
    let mut resolver = StaticResolver::new();
    resolver.insert("rsa._domainkey.remote.org", "google-site-verification=abc");
    resolver.insert(
        "rsa._domainkey.remote.org",
        &format!("k=rsa;\r\n\t p=\"{head}\" \"{tail}\""),
    );
    let signed = sign(rsa2048(), "remote.org", "rsa", &message("alice@remote.org"));
    assert_eq!(
        verifier(resolver).verify(&signed, "alice@remote.org").await,
        Ok(())
    );
}

#[tokio::test]
async fn an_added_from_header_is_not_covered() {
    let v = verifier(remote_org());
    let signed = sign(rsa2048(), "remote.org", "rsa", &message("alice@remote.org"));
    // The signer covered one From; a second one may be what the reader sees.
    let mut forged = b"From: ceo@remote.org\r\n".to_vec();
    forged.extend_from_slice(&signed);
    assert_eq!(
        v.verify(&forged, "ceo@remote.org").await,
        Err(DkimRejection::NoValidSignature)
    );
}

#[tokio::test]
async fn malformed_messages() {
    let v = verifier(remote_org());
    let mut latin1 = sign(rsa2048(), "remote.org", "rsa", &message("alice@remote.org"));
    latin1.extend_from_slice(b"caf\xe9\r\n");
    assert_eq!(
        v.verify(&latin1, "alice@remote.org").await,
        Err(DkimRejection::NonUtf8)
    );
    assert_eq!(DkimRejection::NonUtf8.reply(), "554 Non-UTF-8 message");
    let no_body = b"From: alice@remote.org\r\nSubject: hi\r\n";
    assert_eq!(
        v.verify(no_body, "alice@remote.org").await,
        Err(DkimRejection::MalformedData)
    );
    assert_eq!(DkimRejection::MalformedData.reply(), "554 Malformed data");
}

#[tokio::test]
async fn too_many_signatures_are_refused_without_lookups() {
    let v = verifier(remote_org());
    let mut signed = message("alice@remote.org");
    for _ in 0..11 {
        signed = sign(ed25519(), "remote.org", "ed", &signed);
    }
    assert_eq!(
        v.verify(&signed, "alice@remote.org").await,
        Err(DkimRejection::NoValidSignature)
    );
}

/// Never answers.
struct Silent;

impl KeyResolver for Silent {
    fn txt<'a>(&'a self, _: &'a str) -> Lookup<'a> {
        Box::pin(std::future::pending::<Result<Vec<Vec<u8>>, LookupError>>())
    }
}

#[tokio::test]
async fn lookups_time_out() {
    let v = DkimVerifier::new(Arc::new(Silent))
        .unwrap()
        .with_lookup_timeout(Duration::from_millis(50));
    let signed = sign(rsa2048(), "remote.org", "rsa", &message("alice@remote.org"));
    let verdict = tokio::time::timeout(
        Duration::from_secs(30),
        v.verify(&signed, "alice@remote.org"),
    );
    assert_eq!(
        verdict.await.expect("bounded by the lookup timeout"),
        Err(DkimRejection::NoValidSignature)
    );
}

// ------------------------------------------------------------ in the incoming filter

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// An encrypted message from `alice@example.org`, moved to `from`.
fn encrypted(from: &str) -> Vec<u8> {
    let text = std::fs::read_to_string(format!("{FIXTURES}/enc-new-format.eml")).unwrap();
    assert!(text.starts_with("From: alice@example.org\r\n"));
    text.replacen("alice@example.org", from, 1).into_bytes()
}

/// The incoming filter with `dkim`; reinjection goes to a closed port, so a message that
/// passes every check gets `451 4.4.1 Reinjection failed: …`.
fn incoming(dkim: Option<DkimVerifier>, mailboxes: &std::path::Path) -> Filter {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    Filter {
        direction: Direction::Incoming,
        mailboxes: Mailboxes::new(mailboxes),
        limiter: None,
        max_message_size: 1_000_000,
        reinject: ReinjectTarget::new(closed, Duration::from_secs(5)),
        limits: Limits::default(),
        dkim: dkim.map(Arc::new),
    }
}

async fn judge(filter: &Filter, message: Vec<u8>) -> String {
    filter
        .judge_and_reinject(
            "alice@remote.org".into(),
            vec!["bob@example.org".into()],
            message,
        )
        .await
}

#[tokio::test]
async fn incoming_filter_checks_encryption_then_origin() {
    let dir = tempfile::tempdir().unwrap();
    let filter = incoming(Some(verifier(remote_org())), dir.path());
    let passed = |reply: &str| reply.starts_with("451 4.4.1 Reinjection failed");

    // Encrypted: the origin decides.
    let reply = judge(&filter, encrypted("alice@remote.org")).await;
    assert_eq!(reply, "554 5.7.1 No DKIM signature found");
    let signed = sign(
        rsa2048(),
        "remote.org",
        "rsa",
        &encrypted("alice@remote.org"),
    );
    let reply = judge(&filter, signed).await;
    assert!(passed(&reply), "{reply}");
    let foreign = sign(
        rsa2048(),
        "other.org",
        "rsa",
        &encrypted("alice@remote.org"),
    );
    let reply = judge(&filter, foreign).await;
    assert_eq!(reply, "554 5.7.1 No valid DKIM signature found");

    // Cleartext to a recipient who allows it: the origin decides too.
    let reply = judge(&filter, message("alice@remote.org")).await;
    assert_eq!(reply, "554 5.7.1 No DKIM signature found");
    let signed = sign(ed25519(), "remote.org", "ed", &message("alice@remote.org"));
    assert!(passed(&judge(&filter, signed.clone()).await));

    // Cleartext to a recipient who requires encryption: 523 first, signed or not.
    let maildir = dir.path().join("bob@example.org");
    std::fs::create_dir_all(&maildir).unwrap();
    std::fs::write(maildir.join("enforceE2EEincoming"), "").unwrap();
    for msg in [message("alice@remote.org"), signed] {
        assert_eq!(
            judge(&filter, msg).await,
            "523 Encryption Needed: Invalid Unencrypted Mail"
        );
    }

    // Literal senders: no origin check.
    let reply = judge(&filter, encrypted("alice@[192.0.2.1]")).await;
    assert!(passed(&reply), "{reply}");
}

#[tokio::test]
async fn incoming_filter_without_verifier_skips_the_origin_check() {
    let dir = tempfile::tempdir().unwrap();
    let filter = incoming(None, dir.path());
    let reply = judge(&filter, encrypted("alice@remote.org")).await;
    assert!(reply.starts_with("451 4.4.1 Reinjection failed"), "{reply}");
}

// ------------------------------------------------------------ the hickory resolver

/// `name` in DNS wire format.
fn wire_name(name: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.trim_end_matches('.').split('.') {
        out.push(u8::try_from(label.len()).unwrap());
        out.extend_from_slice(label.as_bytes());
    }
    out.push(0);
    out
}

/// A one-shot UDP name server: answers every query for `qname` with a CNAME to
/// `t.remote.org` and that name's TXT record made of `strings`; serves `queries` queries.
fn stub_dns(strings: Vec<Vec<u8>>, queries: usize) -> std::net::SocketAddr {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        for _ in 0..queries {
            let Ok((len, peer)) = socket.recv_from(&mut buf) else {
                return;
            };
            let query = &buf[..len];
            // Header, then the question: name up to its 0 label, type and class.
            let mut end = 12;
            while query[end] != 0 {
                end += 1 + usize::from(query[end]);
            }
            let question = &query[12..end + 5];
            let mut reply = Vec::new();
            reply.extend_from_slice(&query[..2]); // ID
            reply.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 2, 0, 0, 0, 0]);
            reply.extend_from_slice(question);
            let target = wire_name("t.remote.org");
            // qname CNAME t.remote.org
            reply.extend_from_slice(&[0xc0, 12, 0, 5, 0, 1, 0, 0, 0, 60]);
            reply.extend_from_slice(&u16::try_from(target.len()).unwrap().to_be_bytes());
            reply.extend_from_slice(&target);
            // t.remote.org TXT "…" "…"
            let rdata: Vec<u8> = strings
                .iter()
                .flat_map(|s| {
                    let mut part = vec![u8::try_from(s.len()).unwrap()];
                    part.extend_from_slice(s);
                    part
                })
                .collect();
            reply.extend_from_slice(&target);
            reply.extend_from_slice(&[0, 16, 0, 1, 0, 0, 0, 60]);
            reply.extend_from_slice(&u16::try_from(rdata.len()).unwrap().to_be_bytes());
            reply.extend_from_slice(&rdata);
            socket.send_to(&reply, peer).unwrap();
        }
    });
    addr
}

#[tokio::test]
async fn hickory_resolver_joins_strings_and_skips_cnames() {
    use chatmail_filtermail::dkim::SystemResolver;
    let record = rsa2048().record.clone().into_bytes();
    let (head, tail) = record.split_at(record.len() / 2);
    let server = stub_dns(vec![head.to_vec(), tail.to_vec()], 4);
    let resolver = SystemResolver::with_nameserver(server).unwrap();
    let records = resolver.txt("rsa._domainkey.remote.org.").await.unwrap();
    assert_eq!(records, vec![record]);
    let v = DkimVerifier::new(Arc::new(resolver)).unwrap();
    let signed = sign(rsa2048(), "remote.org", "rsa", &message("alice@remote.org"));
    assert_eq!(v.verify(&signed, "alice@remote.org").await, Ok(()));
}
