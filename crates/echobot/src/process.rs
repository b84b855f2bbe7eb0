//! One received message in, at most one reply out: decryption, the ignore rules, echo,
//! `/help` and SecureJoin, without any I/O.

use crate::Bot;
use crate::autocrypt;
use crate::error::Result;
use crate::message::{
    Built, HELP_TEXT, Ignored, Outgoing, Verdict, build_encrypted, classify, receive,
};
use crate::securejoin::{self, Action};

/// Texts of pre-messages, kept until their post-message (which carries the file but not
/// the text) arrives: Delta Chat splits messages with large files in two.
#[derive(Debug, Clone, Default)]
pub struct PendingCaptions {
    /// (Message-ID of the post-message, text), oldest first.
    entries: std::collections::VecDeque<(String, String)>,
}

impl PendingCaptions {
    /// How many captions are kept at most; older ones are dropped.
    const MAX: usize = 200;

    fn insert(&mut self, post_message_id: String, text: String) {
        if self.entries.len() >= Self::MAX {
            self.entries.pop_front();
        }
        self.entries.push_back((post_message_id, text));
    }

    fn take(&mut self, message_id: &str) -> Option<String> {
        let index = self.entries.iter().position(|(id, _)| id == message_id)?;
        self.entries.remove(index).map(|(_, text)| text)
    }
}

fn bare_id(id: &str) -> String {
    id.trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .to_owned()
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The envelope recipient.
    pub to: String,
    /// The message.
    pub built: Built,
}

/// What became of a received message, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Echoed (text and/or file) to the sender.
    Echoed,
    /// `/help` answered.
    Helped,
    /// A SecureJoin step answered (its reply's `Secure-Join` value).
    SecureJoin(&'static str),
    /// A SecureJoin message left unanswered, and why.
    SecureJoinIgnored(&'static str),
    /// No reply, and why.
    Ignored(Ignored),
    /// Could not be decrypted or parsed.
    Unreadable(String),
}

/// Decides and builds the answer to one raw message. `now` is Unix time (SecureJoin token
/// age). Errors only for failures to build a reply; unreadable input is an [`Outcome`].
pub fn process(
    bot: &Bot,
    raw: &[u8],
    now: u64,
    captions: &mut PendingCaptions,
) -> Result<(Outcome, Option<Reply>)> {
    let fingerprint = bot.key.fingerprint();
    let passwords = bot.tokens.passwords(&fingerprint);
    let received = match receive(raw, &bot.key, &passwords, |_| None) {
        Ok(received) => received,
        Err(err) => return Ok((Outcome::Unreadable(err.to_string()), None)),
    };
    let addr = bot.credentials.addr.as_str();
    let in_reply_to = received.content.headers.get("message-id").map(|id| {
        id.trim()
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned()
    });
    let verdict = classify(addr, &received);
    let (outcome, text) = match verdict {
        Verdict::Ignore(Ignored::PreMessage) => {
            if let (Some(post), Some(text)) = (
                received.content.headers.get("chat-post-message-id"),
                received.content.text.clone(),
            ) {
                if received.is_authenticated() {
                    captions.insert(bare_id(post), text);
                }
            }
            return Ok((Outcome::Ignored(Ignored::PreMessage), None));
        }
        Verdict::Ignore(why) => return Ok((Outcome::Ignored(why), None)),
        Verdict::SecureJoin(step) => {
            let action = securejoin::handle(&step, &received, &bot.tokens, &fingerprint, now);
            let (outcome, to) = match &action {
                Action::Ignore(why) => return Ok((Outcome::SecureJoinIgnored(why), None)),
                Action::SendAuthRequired { peer, .. } => {
                    (Outcome::SecureJoin("vc-auth-required"), peer.clone())
                }
                Action::SendPubkey { peer, .. } => (Outcome::SecureJoin("vc-pubkey"), peer.clone()),
                Action::SendContactConfirm { peer, .. } => {
                    (Outcome::SecureJoin("vc-contact-confirm"), peer.clone())
                }
            };
            let built = securejoin::build_reply(&action, &bot.key, addr, in_reply_to.as_deref())?;
            return Ok((outcome, built.map(|built| Reply { to, built })));
        }
        Verdict::Help => (Outcome::Helped, HELP_TEXT.to_owned()),
        Verdict::Echo => {
            let own = received.content.text.clone().unwrap_or_default();
            let pending = in_reply_to.as_deref().and_then(|id| captions.take(id));
            let text = match pending {
                Some(caption) if own.trim().is_empty() => caption,
                _ => own,
            };
            (Outcome::Echoed, text)
        }
    };
    // classify() only echoes authenticated mail, which has a sender and its key.
    let (Some(peer), Some(peer_cert)) = (received.outer.from.clone(), received.sender_cert.clone())
    else {
        return Ok((Outcome::Ignored(Ignored::Unauthenticated), None));
    };
    let own = autocrypt::Header::new(addr, bot.key.secret_cert(), true);
    let gossip = autocrypt::Header::new(&peer, &peer_cert, false);
    let subject = format!("Message from {addr}");
    let attachment = match outcome {
        Outcome::Echoed => received.content.attachment.as_ref(),
        _ => None,
    };
    let outgoing = Outgoing {
        from: addr,
        to: &peer,
        subject: &subject,
        text: &text,
        attachment,
        in_reply_to: in_reply_to.as_deref(),
        extra_headers: Vec::new(),
        autocrypt: &own,
        gossip: vec![&gossip],
    };
    let bot_cert = bot.key.public_cert();
    let built = build_encrypted(&outgoing, &[&peer_cert, &bot_cert], &bot.key)?;
    Ok((outcome, Some(Reply { to: peer, built })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::Credentials;
    use crate::key::tests::{alice, bob};
    use crate::message::tests::{BOT, PEER, client_inner, client_message};
    use crate::securejoin::{AuthToken, Tokens};

    fn bot() -> Bot {
        Bot {
            credentials: Credentials {
                addr: BOT.into(),
                password: "x".into(),
            },
            key: alice().clone(),
            tokens: Tokens {
                invitenumber: "INVITEnumber_0123456789a".into(),
                auths: vec![AuthToken {
                    token: "AUTHtoken-0123456789abcd".into(),
                    created: 0,
                }],
            },
            invite_link: String::new(),
        }
    }

    fn at_bob(reply: &Reply) -> crate::message::Received {
        assert_eq!(reply.to, PEER);
        receive(&reply.built.raw, bob(), &[], |_| None).unwrap()
    }

    #[test]
    fn text_is_echoed_to_the_sender() {
        let raw = client_message(&client_inner("", "Hello \r\n\u{1F600} world"));
        let (outcome, reply) = process(&bot(), &raw, 0, &mut PendingCaptions::default()).unwrap();
        assert_eq!(outcome, Outcome::Echoed);
        let echoed = at_bob(&reply.unwrap());
        assert!(echoed.is_authenticated());
        assert_eq!(
            echoed.content.text.as_deref(),
            Some("Hello \u{1F600} world")
        );
        assert_eq!(
            echoed.content.headers.get("in-reply-to"),
            Some("<m1@localhost>")
        );
    }

    #[test]
    fn help_is_answered() {
        let raw = client_message(&client_inner("", "/help"));
        let (outcome, reply) = process(&bot(), &raw, 0, &mut PendingCaptions::default()).unwrap();
        assert_eq!(outcome, Outcome::Helped);
        let answer = at_bob(&reply.unwrap());
        assert_eq!(answer.content.text.as_deref(), Some(HELP_TEXT));
    }

    #[test]
    fn bots_and_garbage_get_nothing() {
        let raw = client_message(&client_inner("Auto-Submitted: auto-generated\r\n", "hi"));
        assert_eq!(
            process(&bot(), &raw, 0, &mut PendingCaptions::default()).unwrap(),
            (Outcome::Ignored(Ignored::AutoSubmitted), None)
        );
        let (outcome, reply) = process(
            &bot(),
            b"\x00\x01 not mail",
            0,
            &mut PendingCaptions::default(),
        )
        .unwrap();
        assert!(reply.is_none(), "{outcome:?}");
    }

    #[test]
    fn undecryptable_mail_is_reported_not_answered() {
        // Encrypted to Bob only.
        let armored = crate::pgp::tests::client_message(
            client_inner("", "hi").as_bytes(),
            bob(),
            &[&bob().public_cert()],
        );
        let raw = crate::message::build_outer(
            PEER,
            "m1@localhost",
            "Sun, 29 Nov 2026 20:00:00 +0000",
            std::str::from_utf8(&armored).unwrap(),
        );
        let (outcome, reply) =
            process(&bot(), raw.as_bytes(), 0, &mut PendingCaptions::default()).unwrap();
        assert!(matches!(outcome, Outcome::Unreadable(_)), "{outcome:?}");
        assert!(reply.is_none());
    }

    #[test]
    fn caption_of_a_pre_message_goes_with_its_post_message() {
        let mut captions = PendingCaptions::default();
        let pre = client_message(&client_inner(
            "Chat-Post-Message-ID: <post@localhost>\r\n",
            "big one",
        ));
        let (outcome, reply) = process(&bot(), &pre, 0, &mut captions).unwrap();
        assert_eq!(outcome, Outcome::Ignored(Ignored::PreMessage));
        assert!(reply.is_none());
        let inner = format!(
            "Content-Type: multipart/mixed; boundary=\"b1\"; protected-headers=\"v1\"\r\n\
             From: <{PEER}>\r\nTo: <{BOT}>\r\nChat-Version: 1.0\r\nMessage-ID: <post@localhost>\r\n\
             Autocrypt: {}\r\n\r\n--b1\r\nContent-Type: application/octet-stream\r\n\
             Content-Disposition: attachment; filename=\"big.bin\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b1--\r\n",
            crate::autocrypt::Header::new(PEER, bob().secret_cert(), true)
                .to_value()
                .unwrap()
        );
        let (outcome, reply) = process(&bot(), &client_message(&inner), 0, &mut captions).unwrap();
        assert_eq!(outcome, Outcome::Echoed);
        let echoed = at_bob(&reply.unwrap());
        assert_eq!(echoed.content.text.as_deref(), Some("big one"));
        assert_eq!(echoed.content.attachment.unwrap().data, [0, 1, 2]);
        assert!(captions.entries.is_empty());
    }
}
