//! Real OpenPGP messages, made with Sequoia in the test itself: certificates, session-key
//! packets (PKESK/SKESK) with SEIPD v1 or v2, signed and multi-recipient messages, an
//! Autocrypt Setup Message, and the PGP/MIME wrapping a mail client puts around them (CRLF line ends).
//!
//! Sequoia is an implementation independent of the packet walk under test, so a message it
//! writes is what a real client could send. Payloads differ on every run (fresh keys and
//! session keys); their shape and length do not.
//!
//! Used by `tests/check.rs` (as `mod support`) and by `benches/smtp.rs` (by path).

#![allow(dead_code)]

use std::io::Write;
use std::sync::OnceLock;

use sequoia_openpgp as openpgp;

use openpgp::Profile;
use openpgp::armor;
use openpgp::cert::prelude::*;
use openpgp::policy::StandardPolicy;
use openpgp::serialize::Serialize;
use openpgp::serialize::stream::{Encryptor, LiteralWriter, Message, Recipient, Signer};
use openpgp::types::{AEADAlgorithm, Features};

pub const ALICE: &str = "alice@example.org";
pub const BOB: &str = "bob@example.org";
pub const CAROL: &str = "carol@example.org";

/// The Autocrypt Setup Code a user would type (numeric9x4, Autocrypt Level 1 §4.4.3).
pub const SETUP_CODE: &str = "1234-5678-9012-3456-7890-1234-5678-9012-3456";

static POLICY: StandardPolicy<'static> = StandardPolicy::new();

/// Generating Cv25519 keys takes milliseconds; each test binary does it once per cert.
fn cert(cell: &'static OnceLock<Cert>, make: fn() -> Cert) -> &'static Cert {
    cell.get_or_init(make)
}

/// A version 4 Cv25519 certificate (Ed25519 primary and signing key, X25519 encryption
/// subkey) that advertises SEIPD v1 only, so messages to it default to PKESK v3 + SEIPD v1.
fn v4_seipd1(addr: &str) -> Cert {
    CertBuilder::general_purpose(Some(addr))
        .set_cipher_suite(CipherSuite::Cv25519)
        .set_profile(Profile::RFC4880)
        .and_then(|b| b.set_features(Features::empty().set_seipdv1()))
        .and_then(|b| b.generate())
        .expect("generate v4 certificate")
        .0
}

/// Alice, a v4 Cv25519 certificate with its secret keys (the sender in most messages).
pub fn alice() -> &'static Cert {
    static CELL: OnceLock<Cert> = OnceLock::new();
    cert(&CELL, || v4_seipd1(ALICE))
}

/// Bob, a v4 Cv25519 certificate with its secret keys.
pub fn bob() -> &'static Cert {
    static CELL: OnceLock<Cert> = OnceLock::new();
    cert(&CELL, || v4_seipd1(BOB))
}

/// Carol, a version 6 certificate (RFC 9580): messages to her are PKESK v6 + SEIPD v2.
pub fn carol() -> &'static Cert {
    static CELL: OnceLock<Cert> = OnceLock::new();
    cert(&CELL, || {
        CertBuilder::general_purpose(Some(CAROL))
            .set_cipher_suite(CipherSuite::Cv25519)
            .set_profile(Profile::RFC9580)
            .and_then(|b| b.generate())
            .expect("generate v6 certificate")
            .0
    })
}

/// How to encrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seipd {
    /// What the recipients' features ask for (v1 for Alice and Bob, v2 for Carol; v1
    /// for passwords only).
    Default,
    /// SEIPD v2 (AEAD, OCB) with PKESK v6 / SKESK v6, whatever the features say.
    V2,
}

/// What goes into one binary OpenPGP message.
#[derive(Debug, Clone, Copy)]
pub struct Encrypt<'a> {
    pub recipients: &'a [&'a Cert],
    pub passwords: &'a [&'a str],
    /// Signs inside the encryption (one-pass signature, literal data, signature).
    pub signer: Option<&'a Cert>,
    pub seipd: Seipd,
}

impl Encrypt<'_> {
    /// To `recipients`, unsigned, default SEIPD version.
    pub fn to<'a>(recipients: &'a [&'a Cert]) -> Encrypt<'a> {
        Encrypt {
            recipients,
            passwords: &[],
            signer: None,
            seipd: Seipd::Default,
        }
    }

    /// The binary message (packets, not armored) holding `plaintext` as literal data.
    pub fn binary(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut sink = Vec::with_capacity(plaintext.len() + 1024);
        let message = Message::new(&mut sink);
        let v2 = self.seipd == Seipd::V2;
        let recipients: Vec<Recipient<'_>> = self
            .recipients
            .iter()
            .flat_map(|cert| {
                cert.keys()
                    .with_policy(&POLICY, None)
                    .supported()
                    .alive()
                    .revoked(false)
                    .for_transport_encryption()
                    .map(move |ka| {
                        if v2 {
                            // PKESK v6 names the key by fingerprint, whatever the
                            // certificate advertises.
                            Recipient::new(
                                Features::sequoia(),
                                openpgp::KeyHandle::from(ka.key().fingerprint()),
                                ka.key(),
                            )
                        } else {
                            ka.into()
                        }
                    })
            })
            .collect();
        let mut encryptor = Encryptor::for_recipients(message, recipients)
            .add_passwords(self.passwords.iter().copied());
        if v2 {
            encryptor = encryptor.aead_algo(AEADAlgorithm::default());
        }
        let mut message = encryptor.build().expect("encryptor");
        if let Some(signer) = self.signer {
            message = Signer::new(message, signing_key(signer))
                .expect("signer")
                .build()
                .expect("signer");
        }
        let mut literal = LiteralWriter::new(message).build().expect("literal writer");
        literal.write_all(plaintext).expect("write plaintext");
        literal.finalize().expect("finalize message");
        sink
    }
}

fn signing_key(cert: &Cert) -> openpgp::crypto::KeyPair {
    cert.keys()
        .unencrypted_secret()
        .with_policy(&POLICY, None)
        .supported()
        .alive()
        .revoked(false)
        .for_signing()
        .next()
        .expect("a signing subkey")
        .key()
        .clone()
        .into_keypair()
        .expect("signing key pair")
}

/// A message that is signed but not encrypted (one-pass signature, literal, signature).
pub fn signed_only(signer: &Cert, plaintext: &[u8]) -> Vec<u8> {
    let mut sink = Vec::new();
    let message = Message::new(&mut sink);
    let message = Signer::new(message, signing_key(signer))
        .expect("signer")
        .build()
        .expect("signer");
    let mut literal = LiteralWriter::new(message).build().expect("literal writer");
    literal.write_all(plaintext).expect("write plaintext");
    literal.finalize().expect("finalize message");
    sink
}

/// A bare literal data packet: neither encrypted nor signed.
pub fn literal_only(plaintext: &[u8]) -> Vec<u8> {
    let mut sink = Vec::new();
    let message = Message::new(&mut sink);
    let mut literal = LiteralWriter::new(message).build().expect("literal writer");
    literal.write_all(plaintext).expect("write plaintext");
    literal.finalize().expect("finalize message");
    sink
}

/// ASCII armor as Sequoia writes it, with CRLF line ends.
#[derive(Debug, Clone, Copy)]
pub struct Armor<'a> {
    pub kind: armor::Kind,
    /// Armor headers, in order (e.g. `("Version", "…")`).
    pub headers: &'a [(&'a str, &'a str)],
    /// The `=XXXX` CRC-24 line (RFC 4880). RFC 9580 writers leave it out.
    pub crc: bool,
}

impl Armor<'_> {
    /// `-----BEGIN PGP MESSAGE-----`, no headers, CRC line.
    pub const MESSAGE: Armor<'static> = Armor {
        kind: armor::Kind::Message,
        headers: &[],
        crc: true,
    };

    pub fn apply(&self, binary: &[u8]) -> String {
        let mut writer = armor::Writer::with_headers(
            Vec::new(),
            self.kind,
            self.headers.iter().map(|&(k, v)| (k, v)),
        )
        .expect("armor writer");
        if !self.crc {
            writer.set_profile(Profile::RFC9580).expect("armor profile");
        }
        writer.write_all(binary).expect("armor");
        let text = String::from_utf8(writer.finalize().expect("armor")).expect("ASCII armor");
        text.replace("\r\n", "\n").replace('\n', "\r\n")
    }
}

/// The inner MIME entity a client encrypts: a text/plain part of about `len` bytes.
pub fn inner_part(len: usize) -> Vec<u8> {
    let mut part = b"Content-Type: text/plain; charset=utf-8\r\n\r\n".to_vec();
    let line = b"Hello Bob! The quick brown fox jumps over the lazy dog 0123456789.\r\n";
    while part.len() + line.len() <= len {
        part.extend_from_slice(line);
    }
    part.resize(len.max(part.len()), b'x');
    part
}

/// RFC 3156 PGP/MIME around an armored message, as Delta Chat and GnuPG-based clients
/// send it; CRLF line ends throughout.
pub fn pgp_mime(from: &str, to: &str, armored: &str) -> Vec<u8> {
    let mut mail = format!(
        "From: {from}\r\nTo: {to}\r\nSubject: [...]\r\nMessage-ID: <sequoia@example.org>\r\n\
         Date: Sun, 29 Nov 2026 20:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; \
         boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n\
         --b\r\nContent-Type: application/octet-stream; name=\"encrypted.asc\"\r\n\r\n"
    );
    mail.push_str(armored);
    if !armored.ends_with("\r\n") {
        mail.push_str("\r\n");
    }
    mail.push_str("\r\n--b--\r\n");
    mail.into_bytes()
}

/// A PGP/MIME message from Alice to Bob (PKESK v3 + SEIPD v1, CRC line) whose wire form
/// is `size` bytes give or take a few (the benchmark's 5 KiB and 1 MiB messages).
pub fn encrypted_mail_of_size(size: usize) -> Vec<u8> {
    let encrypt = Encrypt::to(&[]);
    let recipients = [bob()];
    let encrypt = Encrypt {
        recipients: &recipients,
        ..encrypt
    };
    let build = |plain: usize| {
        pgp_mime(
            ALICE,
            BOB,
            &Armor::MESSAGE.apply(&encrypt.binary(&inner_part(plain))),
        )
    };
    // Armor turns 48 bytes into a line of 64 characters and a CRLF.
    let overhead = build(0).len();
    let mut plain = size.saturating_sub(overhead) * 48 / 66;
    let mut mail = build(plain);
    for _ in 0..4 {
        let diff = size as i64 - mail.len() as i64;
        if diff.abs() < 8 {
            break;
        }
        plain = (plain as i64 + diff * 48 / 66).max(0) as usize;
        mail = build(plain);
    }
    mail
}

/// An Autocrypt Setup Message (Autocrypt Level 1 §4.4): Alice's secret key, armored,
/// encrypted with the setup code (SKESK + SEIPD), armored with the `Passphrase-*`
/// headers, in a multipart/mixed mail addressed to `to`.
pub fn autocrypt_setup_message(to: &str) -> Vec<u8> {
    let mut key = Vec::new();
    {
        let mut writer =
            armor::Writer::new(&mut key, armor::Kind::SecretKey).expect("armor writer");
        alice()
            .as_tsk()
            .serialize(&mut writer)
            .expect("serialize secret key");
        writer.finalize().expect("armor");
    }
    let encrypted = Encrypt {
        recipients: &[],
        passwords: &[SETUP_CODE],
        signer: None,
        seipd: Seipd::Default,
    }
    .binary(&key);
    let armored = Armor {
        kind: armor::Kind::Message,
        headers: &[
            ("Passphrase-Format", "numeric9x4"),
            ("Passphrase-Begin", "12"),
        ],
        crc: true,
    }
    .apply(&encrypted);
    format!(
        "From: {ALICE}\r\nTo: {to}\r\nSubject: Autocrypt Setup Message\r\n\
         Autocrypt-Setup-Message: v1\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n\
         This is the Autocrypt Setup Message used to transfer your end-to-end setup\r\n\
         between clients.\r\n\r\n\
         --b\r\nContent-Type: application/autocrypt-setup\r\n\
         Content-Disposition: attachment; filename=\"autocrypt-setup-message.html\"\r\n\r\n\
         <html><body><pre>\r\n{armored}</pre></body></html>\r\n\r\n--b--\r\n"
    )
    .into_bytes()
}

/// The top-level packet sequence of a binary message, e.g. `PKESK3 PKESK3 SEIPD1`, so a
/// test can show which packet versions it really fed to the check.
pub fn shape(binary: &[u8]) -> String {
    use openpgp::Packet;
    use openpgp::parse::Parse;
    let pile = openpgp::PacketPile::from_bytes(binary).expect("parse packets");
    pile.children()
        .map(|packet| match packet {
            Packet::PKESK(p) => format!("PKESK{}", p.version()),
            Packet::SKESK(p) => format!("SKESK{}", p.version()),
            Packet::SEIP(p) => format!("SEIPD{}", p.version()),
            other => format!("{:?}", other.tag()),
        })
        .collect::<Vec<_>>()
        .join(" ")
}
