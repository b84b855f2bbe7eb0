//! OpenPGP for the bot: encrypt+sign to several certificates, decrypt with the bot's key
//! (also for anonymous recipients), verify against a sender's certificate, and the
//! password-based (SKESK) messages of SecureJoin v3.
//!
//! Armor is written without any header line (filtermail refuses a `Version:` header in
//! outgoing mail), with CRLF line ends and the CRC-24 line.

use std::io::{Read, Write};

use sequoia_openpgp as openpgp;

use openpgp::armor;
use openpgp::crypto::{Password, SessionKey};
use openpgp::packet::{PKESK, SKESK};
use openpgp::parse::Parse;
use openpgp::parse::stream::{
    DecryptionHelper, DecryptorBuilder, MessageLayer, MessageStructure, VerificationHelper,
    VerifierBuilder,
};
use openpgp::policy::StandardPolicy;
use openpgp::serialize::stream::{Compressor, Encryptor, LiteralWriter, Message, Signer};
use openpgp::types::{CompressionAlgorithm, SymmetricAlgorithm};
use openpgp::{Cert, Fingerprint, KeyHandle};

use crate::error::{Error, Result};
use crate::key::BotKey;

/// Whether this build can decrypt SEIPDv2 with AES-OCB, what Delta Chat uses for
/// SecureJoin v3 and for keys that advertise SEIPDv2. Nettle before 3.9 (Debian 12) has
/// no OCB.
pub fn can_decrypt_seipdv2() -> bool {
    openpgp::types::AEADAlgorithm::OCB.is_supported()
}

/// What decryption yielded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decrypted {
    /// The literal data: the inner MIME entity.
    pub plaintext: Vec<u8>,
    /// Fingerprints (primary keys) of the certificates whose valid signature covers the
    /// plaintext. Empty when unsigned or when no given certificate made the signature.
    pub signed_by: Vec<Fingerprint>,
    /// For password-based messages: the index of the password that opened it.
    pub password_index: Option<usize>,
}

/// Encrypts `plaintext` to every certificate in `recipients` (their transport-encryption
/// keys) and signs it with the bot's key, listing the recipients as intended recipients.
/// SEIPDv2 is used when every recipient advertises it and the backend has AES-OCB,
/// SEIPDv1 otherwise. Returns the armored message.
pub fn encrypt_and_sign(plaintext: &[u8], recipients: &[&Cert], key: &BotKey) -> Result<String> {
    let policy = StandardPolicy::new();
    let mut encryption_keys = Vec::new();
    for cert in recipients {
        let valid = cert.with_policy(&policy, None).map_err(Error::pgp)?;
        let before = encryption_keys.len();
        encryption_keys.extend(
            valid
                .keys()
                .supported()
                .alive()
                .revoked(false)
                .for_transport_encryption(),
        );
        if encryption_keys.len() == before {
            return Err(Error::Pgp(format!(
                "no encryption key in certificate {}",
                cert.fingerprint()
            )));
        }
    }
    let binary = (|| -> openpgp::Result<Vec<u8>> {
        let mut sink = Vec::new();
        let message = Message::new(&mut sink);
        let message = Encryptor::for_recipients(message, encryption_keys).build()?;
        // Compressed like Delta Chat's messages: the base64 of an attachment shrinks back
        // to about its binary size, which keeps echoes of large files under the relay's
        // max_message_size.
        let message = Compressor::new(message)
            .algo(CompressionAlgorithm::Zlib)
            .build()?;
        let mut signer = Signer::new(message, signing_keypair(key)?)?;
        for cert in recipients {
            signer = signer.add_intended_recipient(cert);
        }
        let message = signer.build()?;
        let mut literal = LiteralWriter::new(message).build()?;
        literal.write_all(plaintext)?;
        literal.finalize()?;
        Ok(sink)
    })()
    .map_err(Error::pgp)?;
    armor_message(&binary)
}

/// Encrypts `plaintext` with `password` only (one SKESK, no public-key recipients) and
/// signs it with the bot's key: SecureJoin v3's `vc-pubkey` answer. SKESK v6 + SEIPD v2
/// with AES-128-OCB, as Delta Chat writes it; not compressed.
pub fn encrypt_symmetric_and_sign(
    plaintext: &[u8],
    password: &str,
    key: &BotKey,
) -> Result<String> {
    if !can_decrypt_seipdv2() {
        // SKESK v6 + SEIPD v2 with AES-OCB as Delta Chat writes it, by hand.
        let signed = (|| -> openpgp::Result<Vec<u8>> {
            let mut sink = Vec::new();
            let message = Message::new(&mut sink);
            let message = Signer::new(message, signing_keypair(key)?)?.build()?;
            let mut literal = LiteralWriter::new(message).build()?;
            literal.write_all(plaintext)?;
            literal.finalize()?;
            Ok(sink)
        })()
        .map_err(Error::pgp)?;
        return armor_message(&crate::ocb::encrypt_with_password(&signed, password)?);
    }
    let binary = (|| -> openpgp::Result<Vec<u8>> {
        let mut sink = Vec::new();
        let message = Message::new(&mut sink);
        let message = Encryptor::with_passwords(message, Some(Password::from(password)))
            .symmetric_algo(SymmetricAlgorithm::AES128)
            .aead_algo(openpgp::types::AEADAlgorithm::OCB)
            .build()?;
        let message = Signer::new(message, signing_keypair(key)?)?.build()?;
        let mut literal = LiteralWriter::new(message).build()?;
        literal.write_all(plaintext)?;
        literal.finalize()?;
        Ok(sink)
    })()
    .map_err(Error::pgp)?;
    armor_message(&binary)
}

fn signing_keypair(key: &BotKey) -> openpgp::Result<openpgp::crypto::KeyPair> {
    let policy = StandardPolicy::new();
    let valid = key.secret_cert().with_policy(&policy, None)?;
    let signing = valid
        .keys()
        .secret()
        .alive()
        .revoked(false)
        .for_signing()
        .next()
        .ok_or_else(|| openpgp::Error::InvalidOperation("no signing key".into()))?;
    signing.key().clone().into_keypair()
}

/// ASCII armor without headers, CRLF line ends, with the CRC-24 line.
fn armor_message(binary: &[u8]) -> Result<String> {
    let mut armored = Vec::new();
    let mut writer = armor::Writer::new(&mut armored, armor::Kind::Message).map_err(Error::pgp)?;
    writer.write_all(binary).map_err(Error::pgp)?;
    writer.finalize().map_err(Error::pgp)?;
    let text = String::from_utf8(armored).map_err(Error::pgp)?;
    Ok(text.replace("\r\n", "\n").replace('\n', "\r\n"))
}

/// Decrypts a message addressed to the bot: every PKESK is tried with every encryption key
/// of the bot, whatever recipient key ID it names (Delta Chat sends anonymous recipients).
///
/// The sender's key is usually only known from the `Autocrypt:` header inside the
/// plaintext, so `sender_cert` is called with the plaintext; if it returns a certificate,
/// the message is decrypted again and its signature checked against that certificate.
pub fn decrypt(
    message: &[u8],
    key: &BotKey,
    sender_cert: impl FnOnce(&[u8]) -> Option<Cert>,
) -> Result<Decrypted> {
    let first = run_decryptor(message, Keys::Bot(key), Vec::new())?;
    let Some(cert) = sender_cert(&first.plaintext) else {
        return Ok(first);
    };
    run_decryptor(message, Keys::Bot(key), vec![cert])
}

/// Decrypts a password-based message with the first of `passwords` that opens one of its
/// SKESKs. As with [`decrypt`], a signature is checked against what `sender_cert` finds
/// for the plaintext. SKESK v6 + SEIPD v2 with AES-OCB (SecureJoin v3) is handled by
/// [`crate::ocb`] where the backend cannot.
pub fn decrypt_with_passwords(
    message: &[u8],
    passwords: &[String],
    sender_cert: impl FnOnce(&[u8]) -> Option<Cert>,
) -> Result<Decrypted> {
    let first = match run_decryptor(message, Keys::Passwords(passwords), Vec::new()) {
        Ok(first) => first,
        Err(err) if can_decrypt_seipdv2() => return Err(err),
        Err(_) => {
            let (index, packets) = crate::ocb::decrypt_with_passwords(message, passwords)?;
            let first = run_verifier(&packets, Vec::new(), index)?;
            let Some(cert) = sender_cert(&first.plaintext) else {
                return Ok(first);
            };
            return run_verifier(&packets, vec![cert], index);
        }
    };
    let Some(cert) = sender_cert(&first.plaintext) else {
        return Ok(first);
    };
    run_decryptor(message, Keys::Passwords(passwords), vec![cert])
}

/// Unpacks already decrypted packets (literal data, maybe signed), checking signatures
/// against `certs`.
fn run_verifier(packets: &[u8], certs: Vec<Cert>, password_index: usize) -> Result<Decrypted> {
    let policy = StandardPolicy::new();
    let helper = Helper {
        keys: Keys::Passwords(&[]),
        certs,
        signed_by: Vec::new(),
        encrypted: true,
        password_index: Some(password_index),
    };
    let mut verifier = VerifierBuilder::from_bytes(packets)
        .map_err(Error::pgp)?
        .with_policy(&policy, None, helper)
        .map_err(Error::pgp)?;
    let mut plaintext = Vec::new();
    verifier.read_to_end(&mut plaintext).map_err(Error::pgp)?;
    let helper = verifier.into_helper();
    Ok(Decrypted {
        plaintext,
        signed_by: helper.signed_by,
        password_index: helper.password_index,
    })
}

enum Keys<'a> {
    Bot(&'a BotKey),
    Passwords(&'a [String]),
}

struct Helper<'a> {
    keys: Keys<'a>,
    certs: Vec<Cert>,
    signed_by: Vec<Fingerprint>,
    encrypted: bool,
    password_index: Option<usize>,
}

impl VerificationHelper for Helper<'_> {
    fn get_certs(&mut self, _ids: &[KeyHandle]) -> openpgp::Result<Vec<Cert>> {
        Ok(self.certs.clone())
    }

    fn check(&mut self, structure: MessageStructure) -> openpgp::Result<()> {
        for layer in structure.into_iter() {
            match layer {
                MessageLayer::Encryption { .. } => self.encrypted = true,
                MessageLayer::Compression { .. } => {}
                MessageLayer::SignatureGroup { results } => {
                    for good in results.into_iter().flatten() {
                        let fingerprint = good.ka.cert().fingerprint();
                        if !self.signed_by.contains(&fingerprint) {
                            self.signed_by.push(fingerprint);
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl DecryptionHelper for Helper<'_> {
    fn decrypt(
        &mut self,
        pkesks: &[PKESK],
        skesks: &[SKESK],
        sym_algo: Option<SymmetricAlgorithm>,
        decrypt: &mut dyn FnMut(Option<SymmetricAlgorithm>, &SessionKey) -> bool,
    ) -> openpgp::Result<Option<Cert>> {
        match self.keys {
            Keys::Bot(key) => {
                let policy = StandardPolicy::new();
                let valid = key.secret_cert().with_policy(&policy, None)?;
                for ka in valid.keys().secret().for_transport_encryption() {
                    let mut pair = ka.key().clone().into_keypair()?;
                    for pkesk in pkesks {
                        if let Some((algo, session_key)) = pkesk.decrypt(&mut pair, sym_algo) {
                            if decrypt(algo, &session_key) {
                                return Ok(None);
                            }
                        }
                    }
                }
            }
            Keys::Passwords(passwords) => {
                for (index, password) in passwords.iter().enumerate() {
                    let password = Password::from(password.as_str());
                    for skesk in skesks {
                        if let Ok((algo, session_key)) = skesk.decrypt(&password) {
                            if decrypt(algo, &session_key) {
                                self.password_index = Some(index);
                                return Ok(None);
                            }
                        }
                    }
                }
            }
        }
        Err(openpgp::Error::MissingSessionKey("no key or password opens the message".into()).into())
    }
}

fn run_decryptor(message: &[u8], keys: Keys<'_>, certs: Vec<Cert>) -> Result<Decrypted> {
    let policy = StandardPolicy::new();
    let helper = Helper {
        keys,
        certs,
        signed_by: Vec::new(),
        encrypted: false,
        password_index: None,
    };
    let mut decryptor = DecryptorBuilder::from_bytes(message)
        .map_err(Error::pgp)?
        .with_policy(&policy, None, helper)
        .map_err(Error::pgp)?;
    let mut plaintext = Vec::new();
    decryptor.read_to_end(&mut plaintext).map_err(Error::pgp)?;
    let helper = decryptor.into_helper();
    if !helper.encrypted {
        return Err(Error::Pgp("message is not encrypted".into()));
    }
    Ok(Decrypted {
        plaintext,
        signed_by: helper.signed_by,
        password_index: helper.password_index,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::key::tests::{alice, bob};
    use openpgp::serialize::stream::{Armorer, Recipient};

    /// What a Delta Chat client sends: encrypted to the bot with an anonymous (wildcard)
    /// recipient, signed by `from`, optionally to a second recipient too.
    pub(crate) fn client_message(plaintext: &[u8], from: &BotKey, to: &[&Cert]) -> Vec<u8> {
        let policy = StandardPolicy::new();
        let mut recipients = Vec::new();
        for cert in to {
            let valid = cert.with_policy(&policy, None).unwrap();
            for ka in valid.keys().for_transport_encryption() {
                let recipient = Recipient::from(ka)
                    .set_key_handle(None::<KeyHandle>)
                    .unwrap();
                recipients.push(recipient);
            }
        }
        let mut sink = Vec::new();
        let message = Message::new(&mut sink);
        let message = Armorer::new(message).build().unwrap();
        let message = Encryptor::for_recipients(message, recipients)
            .build()
            .unwrap();
        let message = Signer::new(message, signing_keypair(from).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let mut literal = LiteralWriter::new(message).build().unwrap();
        literal.write_all(plaintext).unwrap();
        literal.finalize().unwrap();
        sink
    }

    #[test]
    fn anonymous_recipient_is_decrypted_and_signature_verified() {
        let bot = alice();
        let peer = bob();
        let message = client_message(b"hello", peer, &[&bot.public_cert(), &peer.public_cert()]);
        let decrypted = decrypt(&message, bot, |plaintext| {
            assert_eq!(plaintext, b"hello");
            Some(peer.public_cert())
        })
        .unwrap();
        assert_eq!(decrypted.plaintext, b"hello");
        assert_eq!(decrypted.signed_by, [peer.public_cert().fingerprint()]);
    }

    #[test]
    fn signature_by_another_key_is_not_reported() {
        let bot = alice();
        let peer = bob();
        let message = client_message(b"hello", peer, &[&bot.public_cert()]);
        // The claimed sender's key is the bot's own: the signature must not count.
        let decrypted = decrypt(&message, bot, |_| Some(bot.public_cert())).unwrap();
        assert_eq!(decrypted.plaintext, b"hello");
        assert!(decrypted.signed_by.is_empty());
    }

    #[test]
    fn message_for_someone_else_is_an_error() {
        let peer = bob();
        let message = client_message(b"secret", peer, &[&peer.public_cert()]);
        assert!(decrypt(&message, alice(), |_| None).is_err());
    }

    #[test]
    fn echo_decrypts_for_peer_and_for_bot_and_has_no_armor_headers() {
        let bot = alice();
        let peer = bob();
        let armored = encrypt_and_sign(
            b"echo \xF0\x9F\x98\x80\r\n",
            &[&peer.public_cert(), &bot.public_cert()],
            bot,
        )
        .unwrap();
        assert!(
            armored.starts_with("-----BEGIN PGP MESSAGE-----\r\n\r\n"),
            "{armored}"
        );
        assert!(armored.ends_with("-----END PGP MESSAGE-----\r\n"));
        assert!(!armored.contains("Version:") && !armored.contains("Comment:"));
        assert!(!armored.replace("\r\n", "").contains('\n'));
        // The CRC-24 line.
        assert!(
            armored
                .lines()
                .any(|line| line.starts_with('=') && line.len() == 5)
        );
        for reader in [peer, bot] {
            let decrypted =
                decrypt(armored.as_bytes(), reader, |_| Some(bot.public_cert())).unwrap();
            assert_eq!(decrypted.plaintext, b"echo \xF0\x9F\x98\x80\r\n");
            assert_eq!(decrypted.signed_by, [bot.public_cert().fingerprint()]);
        }
    }

    #[test]
    fn echoes_are_compressed() {
        let bot = alice();
        let base64ish = "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo=\r\n".repeat(3000);
        let armored = encrypt_and_sign(base64ish.as_bytes(), &[&bot.public_cert()], bot).unwrap();
        assert!(
            armored.len() < base64ish.len() / 4,
            "{} bytes",
            armored.len()
        );
        let decrypted = decrypt(armored.as_bytes(), bot, |_| Some(bot.public_cert())).unwrap();
        assert_eq!(decrypted.plaintext, base64ish.as_bytes());
        assert_eq!(decrypted.signed_by, [bot.public_cert().fingerprint()]);
    }

    #[test]
    fn unencrypted_signed_message_is_refused() {
        let mut sink = Vec::new();
        let message = Message::new(&mut sink);
        let message = Signer::new(message, signing_keypair(bob()).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let mut literal = LiteralWriter::new(message).build().unwrap();
        literal.write_all(b"plain").unwrap();
        literal.finalize().unwrap();
        assert!(decrypt(&sink, alice(), |_| None).is_err());
    }

    #[test]
    fn password_message_opens_with_the_right_password_only() {
        let bot = alice();
        let armored =
            encrypt_symmetric_and_sign(b"Secure-Join", "securejoin/FP/AUTH", bot).unwrap();
        assert!(!armored.contains("Version:"));
        let passwords = vec![
            "securejoin/FP/OTHER".to_owned(),
            "securejoin/FP/AUTH".to_owned(),
        ];
        let decrypted =
            decrypt_with_passwords(armored.as_bytes(), &passwords, |_| Some(bot.public_cert()))
                .unwrap();
        assert_eq!(decrypted.plaintext, b"Secure-Join");
        assert_eq!(decrypted.password_index, Some(1));
        // The shape Delta Chat uses: SKESK v6 and SEIPD v2 with AES-OCB.
        let pile = openpgp::PacketPile::from_bytes(armored.as_bytes()).unwrap();
        let packets: Vec<_> = pile.children().collect();
        assert!(
            matches!(packets[0], openpgp::Packet::SKESK(SKESK::V6(s)) if s.aead_algo() == openpgp::types::AEADAlgorithm::OCB)
        );
        assert!(matches!(
            packets[1],
            openpgp::Packet::SEIP(openpgp::packet::SEIP::V2(_))
        ));
        assert_eq!(packets.len(), 2);
        assert_eq!(decrypted.signed_by, [bot.public_cert().fingerprint()]);
        let wrong = vec!["securejoin/FP/NOPE".to_owned()];
        assert!(decrypt_with_passwords(armored.as_bytes(), &wrong, |_| None).is_err());
    }

    #[test]
    fn unsigned_password_message_as_a_client_sends_it() {
        let mut sink = Vec::new();
        let message = Message::new(&mut sink);
        let message = Encryptor::with_passwords(message, Some(Password::from("securejoin/X/Y")))
            .build()
            .unwrap();
        let mut literal = LiteralWriter::new(message).build().unwrap();
        literal.write_all(b"Secure-Join").unwrap();
        literal.finalize().unwrap();
        let decrypted =
            decrypt_with_passwords(&sink, &["securejoin/X/Y".to_owned()], |_| None).unwrap();
        assert_eq!(decrypted.plaintext, b"Secure-Join");
        assert!(decrypted.signed_by.is_empty());
    }
}
