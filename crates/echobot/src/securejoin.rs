//! SecureJoin as inviter ("Alice"), setup-contact only: the legacy flow started by
//! `vc-request` and the v3 start `vc-request-pubkey`, then `vc-request-with-auth` answered
//! by `vc-contact-confirm` (spec B.7). [`handle`] is a pure decision; [`build_reply`] makes
//! the message; [`Tokens`] are the persisted INVITENUMBER and AUTH tokens.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sequoia_openpgp::Cert;

use crate::autocrypt;
use crate::error::{Error, Result};
use crate::key::BotKey;
use crate::message::{Built, Outgoing, Received, build_encrypted, build_password_encrypted};
use crate::state::{read_optional, write_private};

/// File name of the tokens in the state dir.
pub const TOKENS_FILE: &str = "securejoin-tokens";

/// How long after its creation an AUTH token still makes a contact verified (core's rule).
pub const AUTH_VERIFIES_FOR_SECS: u64 = 7 * 24 * 3600;

/// One AUTH token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthToken {
    /// The token, as in the invite link's `s=`.
    pub token: String,
    /// Unix time of its creation.
    pub created: u64,
}

/// The bot's SecureJoin secrets, kept across restarts so that a published invite stays
/// valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// The INVITENUMBER of the legacy `vc-request`.
    pub invitenumber: String,
    /// AUTH tokens, newest last; the invite link shows the newest.
    pub auths: Vec<AuthToken>,
}

/// A random token like core's: 18 random bytes, URL-safe base64 (24 characters).
pub fn random_token() -> String {
    let bytes: [u8; 18] = rand::random();
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Whether `token` looks like a token: 11–32 characters of `A-Za-z0-9-_`.
pub fn is_valid_token(token: &str) -> bool {
    (11..=32).contains(&token.len())
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Tokens {
    /// Fresh tokens created at `now`.
    pub fn generate(now: u64) -> Self {
        Tokens {
            invitenumber: random_token(),
            auths: vec![AuthToken {
                token: random_token(),
                created: now,
            }],
        }
    }

    /// The AUTH token the invite link shows.
    pub fn current_auth(&self) -> Option<&AuthToken> {
        self.auths.last()
    }

    /// The persisted form: `invitenumber=…` and `auth=<token> <created>` lines.
    pub fn to_file(&self) -> String {
        let mut out = format!("invitenumber={}\n", self.invitenumber);
        for auth in &self.auths {
            out.push_str(&format!("auth={} {}\n", auth.token, auth.created));
        }
        out
    }

    /// Parses [`Tokens::to_file`]'s output.
    pub fn from_file(text: &str) -> Option<Self> {
        let mut invitenumber = None;
        let mut auths = Vec::new();
        for line in text.lines() {
            match line.split_once('=') {
                Some(("invitenumber", value)) if is_valid_token(value.trim()) => {
                    invitenumber = Some(value.trim().to_owned());
                }
                Some(("auth", value)) => {
                    let (token, created) = value.trim().split_once(' ')?;
                    if !is_valid_token(token) {
                        return None;
                    }
                    auths.push(AuthToken {
                        token: token.to_owned(),
                        created: created.trim().parse().ok()?,
                    });
                }
                _ => {}
            }
        }
        let invitenumber = invitenumber?;
        (!auths.is_empty()).then_some(Tokens {
            invitenumber,
            auths,
        })
    }

    /// Loads the tokens from `dir`, or generates and persists new ones.
    pub fn load_or_generate(dir: &Path, now: u64) -> Result<Self> {
        let path = dir.join(TOKENS_FILE);
        if let Some(bytes) = read_optional(&path)? {
            return Tokens::from_file(&String::from_utf8_lossy(&bytes)).ok_or_else(|| {
                Error::BadStateFile {
                    path: path.clone(),
                    reason: "expected invitenumber= and auth= lines".into(),
                }
            });
        }
        let tokens = Tokens::generate(now);
        write_private(&path, tokens.to_file().as_bytes())?;
        Ok(tokens)
    }

    fn auth(&self, token: &str) -> Option<&AuthToken> {
        self.auths.iter().find(|a| a.token == token)
    }

    /// The passwords of SecureJoin v3 messages, in the order of [`Tokens::auths`]:
    /// `securejoin/<bot FP>/<AUTH>`.
    pub fn passwords(&self, fingerprint: &str) -> Vec<String> {
        self.auths
            .iter()
            .map(|a| password(fingerprint, &a.token))
            .collect()
    }
}

/// The SecureJoin v3 password for one AUTH token.
pub fn password(fingerprint: &str, auth: &str) -> String {
    format!("securejoin/{fingerprint}/{auth}")
}

/// What to do about a SecureJoin message.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Step 2: `vc-auth-required`, encrypted to the joiner's key.
    SendAuthRequired {
        /// The joiner's address.
        peer: String,
        /// The joiner's key from the request's Autocrypt header.
        peer_cert: Cert,
    },
    /// Step 2': `vc-pubkey`, encrypted with the SecureJoin password of `auth`.
    SendPubkey {
        /// The joiner's address.
        peer: String,
        /// The AUTH token the joiner used.
        auth: String,
    },
    /// Step 4: `vc-contact-confirm`; the joiner is now a (verified) contact.
    SendContactConfirm {
        /// The joiner's address.
        peer: String,
        /// The joiner's key, whose fingerprint was checked.
        peer_cert: Cert,
        /// Whether the AUTH token was young enough to count the contact as verified.
        verified: bool,
    },
    /// Nothing to send; why, for the log.
    Ignore(&'static str),
}

/// Decides on a SecureJoin step (`step` as in [`crate::message::Verdict::SecureJoin`]).
pub fn handle(
    step: &str,
    received: &Received,
    tokens: &Tokens,
    bot_fingerprint: &str,
    now: u64,
) -> Action {
    let headers = &received.content.headers;
    let Some(peer) = received.outer.from.clone() else {
        return Action::Ignore("no sender address");
    };
    match step {
        "vc-request" => {
            // Unencrypted: the headers are the outer ones, which `content` then holds.
            if headers.get("secure-join-invitenumber") != Some(tokens.invitenumber.as_str()) {
                return Action::Ignore("unknown invitenumber");
            }
            match received.autocrypt() {
                Some(header) if header.is_for(&peer) => Action::SendAuthRequired {
                    peer,
                    peer_cert: header.cert,
                },
                _ => Action::Ignore("vc-request without a usable Autocrypt header"),
            }
        }
        "vc-request-pubkey" => {
            let Some(index) = received.password_index else {
                return Action::Ignore("vc-request-pubkey not opened by a SecureJoin password");
            };
            let Some(auth) = tokens.auths.get(index) else {
                return Action::Ignore("vc-request-pubkey with an unknown password");
            };
            if headers.get("secure-join-auth") != Some(auth.token.as_str()) {
                return Action::Ignore(
                    "vc-request-pubkey whose Secure-Join-Auth is not its password's",
                );
            }
            Action::SendPubkey {
                peer,
                auth: auth.token.clone(),
            }
        }
        "vc-request-with-auth" => request_with_auth(received, tokens, bot_fingerprint, now, peer),
        _ => Action::Ignore("SecureJoin step not handled by an inviter"),
    }
}

fn request_with_auth(
    received: &Received,
    tokens: &Tokens,
    bot_fingerprint: &str,
    now: u64,
    peer: String,
) -> Action {
    let headers = &received.content.headers;
    let Some(claimed) = headers
        .get("secure-join-fingerprint")
        .map(|v| {
            v.split_whitespace()
                .collect::<String>()
                .to_ascii_uppercase()
        })
        .filter(|fp| fp.len() == 40 && fp.bytes().all(|b| b.is_ascii_hexdigit()))
    else {
        return Action::Ignore("vc-request-with-auth without a valid Secure-Join-Fingerprint");
    };
    if !received.encrypted {
        return Action::Ignore("vc-request-with-auth not encrypted");
    }
    if !received.signed_by.iter().any(|fp| fp.to_hex() == claimed) {
        return Action::Ignore("vc-request-with-auth not signed by Secure-Join-Fingerprint");
    }
    if !received.is_authenticated() {
        return Action::Ignore("vc-request-with-auth: sender key or From mismatch");
    }
    let gossips_bot = headers
        .get_all("autocrypt-gossip")
        .filter_map(|v| autocrypt::Header::parse(v).ok())
        .any(|h| h.cert.fingerprint().to_hex() == bot_fingerprint);
    if !gossips_bot {
        return Action::Ignore("vc-request-with-auth does not gossip the bot's key");
    }
    let Some(auth) = headers
        .get("secure-join-auth")
        .and_then(|token| tokens.auth(token))
    else {
        return Action::Ignore("vc-request-with-auth with an unknown AUTH token");
    };
    let Some(peer_cert) = received.sender_cert.clone() else {
        return Action::Ignore("vc-request-with-auth without the sender's key");
    };
    if peer_cert.fingerprint().to_hex() != claimed {
        return Action::Ignore("vc-request-with-auth: sender key is not Secure-Join-Fingerprint");
    }
    Action::SendContactConfirm {
        peer,
        peer_cert,
        verified: now.saturating_sub(auth.created) < AUTH_VERIFIES_FOR_SECS,
    }
}

/// Builds the message an [`Action`] sends, `None` for [`Action::Ignore`].
/// `in_reply_to` is the Message-ID (without brackets) of the step answered.
pub fn build_reply(
    action: &Action,
    key: &BotKey,
    bot_addr: &str,
    in_reply_to: Option<&str>,
) -> Result<Option<Built>> {
    let own = autocrypt::Header::new(bot_addr, key.secret_cert(), true);
    let bot_cert = key.public_cert();
    match action {
        Action::Ignore(_) => Ok(None),
        Action::SendAuthRequired { peer, peer_cert }
        | Action::SendContactConfirm {
            peer, peer_cert, ..
        } => {
            let step = if matches!(action, Action::SendAuthRequired { .. }) {
                "vc-auth-required"
            } else {
                "vc-contact-confirm"
            };
            let gossip = autocrypt::Header::new(peer, peer_cert, false);
            let text = format!("Secure-Join: {step}");
            let outgoing = Outgoing {
                from: bot_addr,
                to: peer,
                subject: "Secure-Join",
                text: &text,
                attachment: None,
                in_reply_to,
                extra_headers: vec![("Secure-Join", step.to_owned())],
                autocrypt: &own,
                gossip: vec![&gossip],
            };
            build_encrypted(&outgoing, &[peer_cert, &bot_cert], key).map(Some)
        }
        Action::SendPubkey { peer, auth } => {
            let outgoing = Outgoing {
                from: bot_addr,
                to: peer,
                subject: "Secure-Join",
                text: "Secure-Join",
                attachment: None,
                in_reply_to,
                extra_headers: vec![
                    ("Secure-Join", "vc-pubkey".to_owned()),
                    ("Secure-Join-Auth", auth.clone()),
                ],
                autocrypt: &own,
                gossip: Vec::new(),
            };
            build_password_encrypted(&outgoing, &password(&key.fingerprint(), auth), key).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::tests::{alice, bob};
    use crate::message::tests::{BOT, PEER, client_message};
    use crate::message::{Verdict, build_outer, classify, receive};
    use chatmail_filtermail::check::{self, Acceptance, Direction, Envelope, Outcome};
    use sequoia_openpgp::serialize::stream::{Armorer, LiteralWriter, Message};
    use std::io::Write;

    const NOW: u64 = 1_796_000_000;

    fn tokens() -> Tokens {
        Tokens {
            invitenumber: "INVITEnumber_0123456789a".into(),
            auths: vec![
                AuthToken {
                    token: "oldAUTHtoken_0123456789a".into(),
                    created: NOW - 30 * 24 * 3600,
                },
                AuthToken {
                    token: "AUTHtoken-0123456789abcd".into(),
                    created: NOW - 3600,
                },
            ],
        }
    }

    fn bob_autocrypt() -> String {
        autocrypt::Header::new(PEER, bob().secret_cert(), true)
            .to_value()
            .unwrap()
    }

    /// Step 1 as a client sends it: unencrypted, outer Autocrypt.
    fn vc_request(invitenumber: &str) -> Vec<u8> {
        format!(
            "From: <{PEER}>\r\nTo: <{BOT}>\r\nSubject: Message from {PEER}\r\n\
             Message-ID: <r1@localhost>\r\nChat-Version: 1.0\r\nSecure-Join: vc-request\r\n\
             Secure-Join-Invitenumber: {invitenumber}\r\nAutocrypt: {}\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n\
             Content-Type: text/plain; charset=utf-8\r\n\r\nSecure-Join: vc-request\r\n--b--\r\n",
            bob_autocrypt()
        )
        .into_bytes()
    }

    /// Step 3: encrypted and signed by Bob, with the given protected headers.
    fn vc_request_with_auth(auth: &str, fingerprint: &str, gossip_bot: bool) -> Vec<u8> {
        let gossip = if gossip_bot {
            format!(
                "Autocrypt-Gossip: {}\r\n",
                autocrypt::Header::new(BOT, alice().secret_cert(), false)
                    .to_gossip_value()
                    .unwrap()
            )
        } else {
            String::new()
        };
        let inner = format!(
            "Content-Type: text/plain; charset=utf-8; protected-headers=\"v1\"\r\n\
             From: <{PEER}>\r\nTo: <{BOT}>\r\nMessage-ID: <r3@localhost>\r\nChat-Version: 1.0\r\n\
             Secure-Join: vc-request-with-auth\r\nSecure-Join-Auth: {auth}\r\n\
             Secure-Join-Fingerprint: {fingerprint}\r\nAutocrypt: {}\r\n{gossip}\r\n\
             Secure-Join: vc-request-with-auth\r\n",
            bob_autocrypt()
        );
        client_message(&inner)
    }

    /// Step 1': password-encrypted, unsigned.
    fn vc_request_pubkey(password: &str, auth_header: &str) -> Vec<u8> {
        let inner = format!(
            "Content-Type: text/plain; charset=utf-8; protected-headers=\"v1\"\r\n\
             From: <{PEER}>\r\nTo: \"hidden-recipients\": ;\r\nSubject: Secure-Join\r\n\
             Message-ID: <r1p@localhost>\r\nSecure-Join: vc-request-pubkey\r\n\
             Secure-Join-Auth: {auth_header}\r\n\r\nSecure-Join\r\n"
        );
        // As Delta Chat sends it: SKESK v6 + SEIPD v2 (AES-128-OCB), unsigned.
        let mut packets = Vec::new();
        let mut literal = LiteralWriter::new(Message::new(&mut packets))
            .build()
            .unwrap();
        literal.write_all(inner.as_bytes()).unwrap();
        literal.finalize().unwrap();
        let binary = crate::ocb::encrypt_with_password(&packets, password).unwrap();
        let mut sink = Vec::new();
        let mut armor = Armorer::new(Message::new(&mut sink)).build().unwrap();
        armor.write_all(&binary).unwrap();
        armor.finalize().unwrap();
        build_outer(
            PEER,
            "r1p@localhost",
            "Sun, 29 Nov 2026 20:00:00 +0000",
            std::str::from_utf8(&sink).unwrap(),
        )
        .into_bytes()
    }

    fn bot_handles(raw: &[u8]) -> Action {
        let fp = alice().fingerprint();
        let tokens = tokens();
        let received = receive(raw, alice(), &tokens.passwords(&fp), |_| None).unwrap();
        match classify(BOT, &received) {
            Verdict::SecureJoin(step) => handle(&step, &received, &tokens, &fp, NOW),
            other => panic!("not a SecureJoin message: {other:?}"),
        }
    }

    #[test]
    fn tokens_have_core_shape_and_persist() {
        let token = random_token();
        assert_eq!(token.len(), 24);
        assert!(is_valid_token(&token));
        assert!(!is_valid_token("short"));
        assert!(!is_valid_token("has space in the token"));
        let dir = tempfile::tempdir().unwrap();
        let first = Tokens::load_or_generate(dir.path(), NOW).unwrap();
        let second = Tokens::load_or_generate(dir.path(), NOW + 5).unwrap();
        assert_eq!(first, second);
        assert_eq!(Tokens::from_file(&tokens().to_file()), Some(tokens()));
        std::fs::write(dir.path().join(TOKENS_FILE), "auth=x 1\n").unwrap();
        assert!(Tokens::load_or_generate(dir.path(), NOW).is_err());
    }

    #[test]
    fn legacy_vc_request_passes_filtermail_and_gets_vc_auth_required() {
        let request = vc_request("INVITEnumber_0123456789a");
        let verdict = check::check(
            &request,
            &Envelope {
                sender: PEER.into(),
                recipients: vec![BOT.into()],
            },
            Direction::Outgoing,
            |_| false,
        );
        assert_eq!(verdict.outcome, Outcome::Accept(Acceptance::SecureJoin));

        let action = bot_handles(&request);
        let Action::SendAuthRequired { peer, peer_cert } = &action else {
            panic!("{action:?}");
        };
        assert_eq!(peer, PEER);
        assert_eq!(peer_cert.fingerprint(), bob().public_cert().fingerprint());

        let reply = build_reply(&action, alice(), BOT, Some("r1@localhost"))
            .unwrap()
            .unwrap();
        let at_bob = receive(&reply.raw, bob(), &[], |_| None).unwrap();
        assert!(at_bob.is_authenticated());
        let h = &at_bob.content.headers;
        assert_eq!(h.get("secure-join"), Some("vc-auth-required"));
        assert_eq!(
            at_bob.content.text.as_deref(),
            Some("Secure-Join: vc-auth-required")
        );
        let gossip = autocrypt::Header::parse(h.get("autocrypt-gossip").unwrap()).unwrap();
        assert_eq!(gossip.cert.fingerprint(), bob().public_cert().fingerprint());
    }

    #[test]
    fn vc_request_with_unknown_invitenumber_is_ignored() {
        assert_eq!(
            bot_handles(&vc_request("WRONGnumber_0123456789ab")),
            Action::Ignore("unknown invitenumber")
        );
    }

    #[test]
    fn vc_request_with_auth_gets_contact_confirm() {
        let bob_fp = bob().fingerprint();
        let action = bot_handles(&vc_request_with_auth(
            "AUTHtoken-0123456789abcd",
            &bob_fp,
            true,
        ));
        let Action::SendContactConfirm { verified, .. } = &action else {
            panic!("{action:?}");
        };
        assert!(verified);
        let reply = build_reply(&action, alice(), BOT, Some("r3@localhost"))
            .unwrap()
            .unwrap();
        let at_bob = receive(&reply.raw, bob(), &[], |_| None).unwrap();
        assert!(at_bob.is_authenticated());
        assert_eq!(
            at_bob.content.headers.get("secure-join"),
            Some("vc-contact-confirm")
        );

        // An old AUTH token still gets an answer, but no verification.
        let action = bot_handles(&vc_request_with_auth(
            "oldAUTHtoken_0123456789a",
            &bob_fp,
            true,
        ));
        assert!(matches!(
            action,
            Action::SendContactConfirm {
                verified: false,
                ..
            }
        ));
    }

    #[test]
    fn vc_request_with_auth_checks() {
        let bob_fp = bob().fingerprint();
        let cases = [
            (
                vc_request_with_auth("UNKNOWNtoken_0123456789a", &bob_fp, true),
                "vc-request-with-auth with an unknown AUTH token",
            ),
            (
                vc_request_with_auth("AUTHtoken-0123456789abcd", &bob_fp, false),
                "vc-request-with-auth does not gossip the bot's key",
            ),
            (
                vc_request_with_auth("AUTHtoken-0123456789abcd", &alice().fingerprint(), true),
                "vc-request-with-auth not signed by Secure-Join-Fingerprint",
            ),
            (
                vc_request_with_auth("AUTHtoken-0123456789abcd", "not a fingerprint", true),
                "vc-request-with-auth without a valid Secure-Join-Fingerprint",
            ),
        ];
        for (raw, reason) in cases {
            assert_eq!(bot_handles(&raw), Action::Ignore(reason));
        }
    }

    #[test]
    fn v3_vc_request_pubkey_gets_vc_pubkey_under_the_same_password() {
        let fp = alice().fingerprint();
        let auth = "AUTHtoken-0123456789abcd";
        let request = vc_request_pubkey(&password(&fp, auth), auth);
        let action = bot_handles(&request);
        assert_eq!(
            action,
            Action::SendPubkey {
                peer: PEER.into(),
                auth: auth.into()
            }
        );
        let reply = build_reply(&action, alice(), BOT, Some("r1p@localhost"))
            .unwrap()
            .unwrap();
        let verdict = check::check(
            &reply.raw,
            &Envelope {
                sender: BOT.into(),
                recipients: vec![PEER.into()],
            },
            Direction::Outgoing,
            |_| false,
        );
        assert_eq!(verdict.outcome, Outcome::Accept(Acceptance::Encrypted));
        // Bob opens it with the password from the invite and verifies the bot's signature.
        let at_bob = receive(&reply.raw, bob(), &[password(&fp, auth)], |_| None).unwrap();
        assert_eq!(at_bob.password_index, Some(0));
        assert!(at_bob.is_authenticated());
        let h = &at_bob.content.headers;
        assert_eq!(h.get("secure-join"), Some("vc-pubkey"));
        assert_eq!(h.get("secure-join-auth"), Some(auth));
        let own = autocrypt::Header::parse(h.get("autocrypt").unwrap()).unwrap();
        assert_eq!(own.cert.fingerprint().to_hex(), fp);
    }

    #[test]
    fn v3_request_whose_header_names_another_token_is_ignored() {
        let fp = alice().fingerprint();
        let request = vc_request_pubkey(
            &password(&fp, "AUTHtoken-0123456789abcd"),
            "oldAUTHtoken_0123456789a",
        );
        assert!(matches!(bot_handles(&request), Action::Ignore(_)));
    }

    #[test]
    fn inviter_ignores_other_steps() {
        let fp = alice().fingerprint();
        let inner = crate::message::tests::client_inner(
            "Secure-Join: vc-contact-confirm-received\r\n",
            "x",
        );
        let received = receive(&client_message(&inner), alice(), &[], |_| None).unwrap();
        assert_eq!(
            handle(
                "vc-contact-confirm-received",
                &received,
                &tokens(),
                &fp,
                NOW
            ),
            Action::Ignore("SecureJoin step not handled by an inviter")
        );
    }
}
