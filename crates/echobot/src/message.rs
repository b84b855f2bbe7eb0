//! Mail in and out: parsing a received message (outer headers, PGP/MIME, the decrypted
//! inner entity with its protected headers, text and one attachment), what to do with it
//! ([`classify`], the ignore rules), and building the bot's encrypted replies.

use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use mail_parser::{MessageParser, MimeHeaders, PartType};
use sequoia_openpgp::{Cert, Fingerprint};

use crate::autocrypt;
use crate::error::{Error, Result};
use crate::key::BotKey;
use crate::pgp;

/// The answer to `/help`, upstream's text.
pub const HELP_TEXT: &str = "Send me any message and I will echo it back";

/// A header block: names lower-cased, values unfolded and trimmed, in message order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    fn of_root(message: &mail_parser::Message<'_>) -> Self {
        Headers(
            message
                .headers_raw()
                .map(|(name, value)| (name.to_ascii_lowercase(), unfold(value)))
                .collect(),
        )
    }

    /// The first value of header `name` (any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All values of header `name` (any case), in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether header `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
}

/// Removes header folding (CRLF before whitespace) and surrounding whitespace.
fn unfold(value: &str) -> String {
    value
        .replace("\r\n", "")
        .replace('\n', "")
        .trim()
        .to_owned()
}

/// The bare address of the first mailbox in an address header value.
pub fn first_address(value: &str) -> Option<String> {
    let candidate = match (value.rfind('<'), value.rfind('>')) {
        (Some(start), Some(end)) if start < end => value.get(start + 1..end)?,
        _ => value.split(',').next()?,
    };
    let addr = candidate.trim();
    (addr.contains('@') && !addr.contains(char::is_whitespace)).then(|| addr.to_owned())
}

/// A received message as it arrived: outer headers and, for PGP/MIME, the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outer {
    /// The outer headers (for encrypted mail mostly placeholders, `[...]` subject).
    pub headers: Headers,
    /// Address of the outer `From:`.
    pub from: Option<String>,
    /// The armored OpenPGP message of an RFC 3156 `multipart/encrypted` message.
    pub encrypted_payload: Option<Vec<u8>>,
}

/// Parses the outer message.
pub fn parse_outer(raw: &[u8]) -> Result<Outer> {
    let message = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| Error::Message("not a MIME message".into()))?;
    let headers = Headers::of_root(&message);
    let from = headers.get("from").and_then(first_address);
    let encrypted_payload = pgp_mime_payload(&message);
    Ok(Outer {
        headers,
        from,
        encrypted_payload,
    })
}

/// The payload of `multipart/encrypted; protocol="application/pgp-encrypted"`: the
/// `application/octet-stream` part after the `application/pgp-encrypted` version part.
fn pgp_mime_payload(message: &mail_parser::Message<'_>) -> Option<Vec<u8>> {
    let root = message.parts.first()?;
    let ctype = root.content_type()?;
    if !ctype.ctype().eq_ignore_ascii_case("multipart")
        || !ctype
            .subtype()
            .is_some_and(|s| s.eq_ignore_ascii_case("encrypted"))
        || !ctype
            .attribute("protocol")
            .is_some_and(|p| p.eq_ignore_ascii_case("application/pgp-encrypted"))
    {
        return None;
    }
    let PartType::Multipart(children) = &root.body else {
        return None;
    };
    children.iter().find_map(|&id| {
        let part = message.parts.get(id as usize)?;
        let ctype = part.content_type()?;
        let is_payload = ctype.ctype().eq_ignore_ascii_case("application")
            && ctype
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("octet-stream"));
        is_payload.then(|| part.contents().to_vec())
    })
}

/// A file sent with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    /// The file name the sender gave (decoded), `file` when none was given.
    pub filename: String,
    /// Its `type/subtype`.
    pub content_type: String,
    /// The decoded bytes.
    pub data: Vec<u8>,
}

/// What a message says: the inner (decrypted) entity of encrypted mail, or the message
/// itself when unencrypted. Its headers are authoritative (protected headers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content {
    /// The entity's headers.
    pub headers: Headers,
    /// Address of its `From:`.
    pub from: Option<String>,
    /// The text as a client shows it: format=flowed undone, line ends `\n`.
    pub text: Option<String>,
    /// The first attachment, if any.
    pub attachment: Option<Attachment>,
    /// A disposition notification (read receipt).
    pub is_mdn: bool,
}

/// Parses a MIME entity: the decrypted inner part, or an unencrypted message.
pub fn parse_content(raw: &[u8]) -> Result<Content> {
    let message = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| Error::Message("not a MIME entity".into()))?;
    let headers = Headers::of_root(&message);
    let from = headers.get("from").and_then(first_address);
    let is_mdn = message.content_type().is_some_and(|ct| {
        ct.ctype().eq_ignore_ascii_case("multipart")
            && ct
                .subtype()
                .is_some_and(|s| s.eq_ignore_ascii_case("report"))
            && ct
                .attribute("report-type")
                .is_some_and(|t| t.eq_ignore_ascii_case("disposition-notification"))
    });
    let text = message.text_body.iter().find_map(|&id| {
        let part = message.parts.get(id as usize)?;
        let PartType::Text(text) = &part.body else {
            return None;
        };
        let ct = part.content_type();
        let flowed = ct
            .and_then(|ct| ct.attribute("format"))
            .is_some_and(|f| f.eq_ignore_ascii_case("flowed"));
        let delsp = ct
            .and_then(|ct| ct.attribute("delsp"))
            .is_some_and(|d| d.eq_ignore_ascii_case("yes"));
        Some(if flowed {
            unflow(text, delsp)
        } else {
            text.replace("\r\n", "\n")
        })
    });
    let attachment = message.attachments.iter().find_map(|&id| {
        let part = message.parts.get(id as usize)?;
        let content_type = part
            .content_type()
            .map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_owned(),
            })
            .unwrap_or_else(|| "application/octet-stream".to_owned())
            .to_ascii_lowercase();
        Some(Attachment {
            filename: part.attachment_name().unwrap_or("file").to_owned(),
            content_type,
            data: part.contents().to_vec(),
        })
    });
    Ok(Content {
        headers,
        from,
        text,
        attachment,
        is_mdn,
    })
}

/// Undoes RFC 3676 format=flowed: space-stuffing removed, soft line breaks (a line
/// ending in a space, except the signature separator `-- `) joined; with `delsp=yes`
/// the space before a soft break is removed too. Line ends become `\n`.
pub fn unflow(text: &str, delsp: bool) -> String {
    let text = text.replace("\r\n", "\n");
    let mut out = String::with_capacity(text.len());
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_prefix(' ').unwrap_or(line);
        let soft = line.ends_with(' ') && line != "-- " && lines.peek().is_some();
        if soft {
            out.push_str(if delsp {
                line.strip_suffix(' ').unwrap_or(line)
            } else {
                line
            });
        } else {
            out.push_str(line);
            if lines.peek().is_some() {
                out.push('\n');
            }
        }
    }
    out
}

/// A received message after decryption.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// The outer message.
    pub outer: Outer,
    /// The authoritative content (inner entity when encrypted).
    pub content: Content,
    /// Whether the content came out of an OpenPGP message.
    pub encrypted: bool,
    /// For password-based messages, which password opened it.
    pub password_index: Option<usize>,
    /// The certificates whose valid signature covers the content.
    pub signed_by: Vec<Fingerprint>,
    /// The sender's key: from the content's `Autocrypt:` header for its From address,
    /// else what `known_cert` said.
    pub sender_cert: Option<Cert>,
}

impl Received {
    /// Encrypted, inner and outer `From` the same, and signed by the sender's key.
    pub fn is_authenticated(&self) -> bool {
        let same_from = match (&self.outer.from, &self.content.from) {
            (Some(outer), Some(inner)) => outer.eq_ignore_ascii_case(inner),
            _ => false,
        };
        self.encrypted
            && same_from
            && self
                .sender_cert
                .as_ref()
                .is_some_and(|cert| self.signed_by.contains(&cert.fingerprint()))
    }

    /// The `Autocrypt:` header of the content for its `From` address, if valid.
    pub fn autocrypt(&self) -> Option<autocrypt::Header> {
        autocrypt_for(&self.content)
    }
}

fn autocrypt_for(content: &Content) -> Option<autocrypt::Header> {
    let from = content.from.as_deref()?;
    content
        .headers
        .get_all("autocrypt")
        .filter_map(|value| autocrypt::Header::parse(value).ok())
        .find(|header| header.is_for(from))
}

/// Parses and, if it is PGP/MIME, decrypts a received message. Public-key decryption with
/// the bot's key is tried first, then the `passwords` (SecureJoin v3). `known_cert(addr)`
/// supplies the key the bot already has for a sender that sends no `Autocrypt:` header.
pub fn receive(
    raw: &[u8],
    key: &BotKey,
    passwords: &[String],
    known_cert: impl Fn(&str) -> Option<Cert>,
) -> Result<Received> {
    let outer = parse_outer(raw)?;
    let Some(payload) = outer.encrypted_payload.clone() else {
        let content = parse_content(raw)?;
        let sender_cert = autocrypt_for(&content).map(|h| h.cert);
        return Ok(Received {
            outer,
            content,
            encrypted: false,
            password_index: None,
            signed_by: Vec::new(),
            sender_cert,
        });
    };
    let sender_of = |plaintext: &[u8]| -> Option<Cert> {
        let content = parse_content(plaintext).ok()?;
        autocrypt_for(&content)
            .map(|h| h.cert)
            .or_else(|| content.from.as_deref().and_then(&known_cert))
    };
    let decrypted = match pgp::decrypt(&payload, key, sender_of) {
        Ok(decrypted) => decrypted,
        Err(err) if passwords.is_empty() => return Err(err),
        Err(_) => pgp::decrypt_with_passwords(&payload, passwords, sender_of)?,
    };
    let content = parse_content(&decrypted.plaintext)?;
    let sender_cert = autocrypt_for(&content)
        .map(|h| h.cert)
        .or_else(|| content.from.as_deref().and_then(&known_cert));
    Ok(Received {
        outer,
        content,
        encrypted: true,
        password_index: decrypted.password_index,
        signed_by: decrypted.signed_by,
        sender_cert,
    })
}

/// Why a message gets no echo.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ignored {
    /// Sent by the bot itself.
    OwnMessage,
    /// A read receipt.
    Mdn,
    /// `Auto-Submitted` other than `no`: another bot or an auto-reply; answering could loop.
    AutoSubmitted,
    /// A chat system message (member added, group renamed, …).
    System,
    /// The announcement of a large message whose content follows separately.
    PreMessage,
    /// Not encrypted and signed by the sender's key.
    Unauthenticated,
    /// A `/command` other than `/help`.
    UnknownCommand,
    /// No text and no file.
    Empty,
    /// No usable `From:` address.
    NoSender,
}

/// What to do with a received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Send the text and file back.
    Echo,
    /// Answer with [`HELP_TEXT`].
    Help,
    /// A SecureJoin step (the `Secure-Join` header value), for [`crate::securejoin`].
    SecureJoin(String),
    /// Nothing to send.
    Ignore(Ignored),
}

/// Headers that mark chat system messages.
const SYSTEM_HEADERS: &[&str] = &[
    "chat-content",
    "chat-group-member-added",
    "chat-group-member-removed",
    "chat-group-name-changed",
    "chat-group-avatar",
    "chat-group-description-changed",
    "chat-group-pin-message",
    "chat-webrtc-room",
];

/// The ignore rules (spec B.5) and the command rule, as a pure function.
pub fn classify(bot_addr: &str, received: &Received) -> Verdict {
    let content = &received.content;
    let Some(from) = received.outer.from.as_deref() else {
        return Verdict::Ignore(Ignored::NoSender);
    };
    if from.eq_ignore_ascii_case(bot_addr) {
        return Verdict::Ignore(Ignored::OwnMessage);
    }
    let header = |name: &str| {
        content
            .headers
            .get(name)
            .or_else(|| received.outer.headers.get(name))
    };
    if let Some(step) = content.headers.get("secure-join").or_else(|| {
        // Only the unencrypted vc-request/vg-request carry it outside.
        (!received.encrypted)
            .then(|| received.outer.headers.get("secure-join"))
            .flatten()
    }) {
        return Verdict::SecureJoin(step.to_ascii_lowercase());
    }
    if content.is_mdn {
        return Verdict::Ignore(Ignored::Mdn);
    }
    if header("auto-submitted").is_some_and(|v| !v.eq_ignore_ascii_case("no")) {
        return Verdict::Ignore(Ignored::AutoSubmitted);
    }
    if SYSTEM_HEADERS.iter().any(|name| content.headers.has(name)) {
        return Verdict::Ignore(Ignored::System);
    }
    if content.headers.has("chat-post-message-id") {
        return Verdict::Ignore(Ignored::PreMessage);
    }
    if !received.is_authenticated() {
        return Verdict::Ignore(Ignored::Unauthenticated);
    }
    let text = content.text.as_deref().unwrap_or("");
    if let Some(command) = text.strip_prefix('/') {
        let word = command.split_whitespace().next().unwrap_or("");
        let name = word.split(['@', '_']).next().unwrap_or("");
        return if name == "help" {
            Verdict::Help
        } else {
            Verdict::Ignore(Ignored::UnknownCommand)
        };
    }
    if text.trim().is_empty() && content.attachment.is_none() {
        return Verdict::Ignore(Ignored::Empty);
    }
    Verdict::Echo
}

/// An outgoing message before encryption.
#[derive(Debug, Clone)]
pub struct Outgoing<'a> {
    /// The bot's address (`From:`, envelope sender).
    pub from: &'a str,
    /// The peer's address (`To:`, envelope recipient).
    pub to: &'a str,
    /// The protected subject.
    pub subject: &'a str,
    /// The text, `\n` line ends.
    pub text: &'a str,
    /// A file to send with the text.
    pub attachment: Option<&'a Attachment>,
    /// Message-ID of the message this answers.
    pub in_reply_to: Option<&'a str>,
    /// Further protected headers (SecureJoin), written after the standard ones.
    pub extra_headers: Vec<(&'a str, String)>,
    /// `Autocrypt:` of the bot.
    pub autocrypt: &'a autocrypt::Header,
    /// `Autocrypt-Gossip:` headers.
    pub gossip: Vec<&'a autocrypt::Header>,
}

/// A message ready for SMTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The whole message, CRLF line ends.
    pub raw: Vec<u8>,
    /// Its Message-ID, without angle brackets.
    pub message_id: String,
}

/// A Message-ID like core's: a random (v4) UUID at `localhost`.
pub fn new_message_id() -> String {
    let mut bytes: [u8; 16] = rand::random();
    if let Some(b) = bytes.get_mut(6) {
        *b = (*b & 0x0f) | 0x40;
    }
    if let Some(b) = bytes.get_mut(8) {
        *b = (*b & 0x3f) | 0x80;
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let part = |a: usize, b: usize| hex.get(a..b).unwrap_or("");
    format!(
        "{}-{}-{}-{}-{}@localhost",
        part(0, 8),
        part(8, 12),
        part(12, 16),
        part(16, 20),
        part(20, 32)
    )
}

/// RFC 5322 date of `time`, in UTC.
pub fn rfc5322_date(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"]
        .get(usize::try_from(days.rem_euclid(7)).unwrap_or(0))
        .copied()
        .unwrap_or("Thu");
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let month_name = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .get(usize::try_from(month - 1).unwrap_or(0))
    .copied()
    .unwrap_or("Jan");
    format!(
        "{weekday}, {day} {month_name} {year} {:02}:{:02}:{:02} +0000",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Appends `Name: value` folded at spaces to lines of at most 78 characters where
/// possible, CRLF-terminated.
fn push_header(out: &mut String, name: &str, value: &str) {
    let mut line_len = name.len() + 2;
    out.push_str(name);
    out.push_str(": ");
    let mut first = true;
    for word in value.split(' ') {
        if !first {
            if line_len + 1 + word.len() > 78 {
                out.push_str("\r\n ");
                line_len = 1;
            } else {
                out.push(' ');
                line_len += 1;
            }
        }
        first = false;
        out.push_str(word);
        line_len += word.len();
    }
    out.push_str("\r\n");
}

/// Base64 in lines of 76 characters, CRLF.
fn base64_lines(data: &[u8]) -> String {
    let encoded = STANDARD.encode(data);
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 38 + 2);
    let mut rest = encoded.as_str();
    while !rest.is_empty() {
        let (line, tail) = rest.split_at(rest.len().min(76));
        out.push_str(line);
        out.push_str("\r\n");
        rest = tail;
    }
    out
}

fn boundary() -> String {
    let bytes: [u8; 18] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `filename="…"` for plain ASCII names, RFC 2231 `filename*=utf-8''…` otherwise.
fn filename_param(name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ');
    if plain && !name.is_empty() {
        return format!("filename=\"{name}\"");
    }
    let mut encoded = String::new();
    for byte in name.bytes() {
        if byte.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            let _ = write!(encoded, "%{byte:02X}");
        }
    }
    format!("filename*=utf-8''{encoded}")
}

/// The text part: UTF-8, base64 (byte-exact, no format=flowed, so trailing spaces and
/// long lines survive as the client showed them), CRLF line ends inside.
fn text_part(text: &str) -> (String, String) {
    let crlf = text.replace("\r\n", "\n").replace('\n', "\r\n");
    (
        "text/plain; charset=\"utf-8\"".to_owned(),
        base64_lines(crlf.as_bytes()),
    )
}

/// The inner MIME entity with protected headers (to be encrypted).
pub fn build_inner(message: &Outgoing<'_>, message_id: &str, date: &str) -> Result<String> {
    let mut out = String::new();
    push_header(&mut out, "From", &format!("<{}>", message.from));
    push_header(&mut out, "To", &format!("<{}>", message.to));
    push_header(&mut out, "Subject", message.subject);
    push_header(&mut out, "Date", date);
    push_header(&mut out, "Message-ID", &format!("<{message_id}>"));
    if let Some(parent) = message.in_reply_to {
        push_header(&mut out, "In-Reply-To", &format!("<{parent}>"));
        push_header(&mut out, "References", &format!("<{parent}>"));
    }
    push_header(&mut out, "Chat-Version", "1.0");
    push_header(&mut out, "Auto-Submitted", "auto-generated");
    for (name, value) in &message.extra_headers {
        push_header(&mut out, name, value);
    }
    push_header(&mut out, "Autocrypt", &message.autocrypt.to_value()?);
    for gossip in &message.gossip {
        push_header(&mut out, "Autocrypt-Gossip", &gossip.to_gossip_value()?);
    }
    push_header(&mut out, "MIME-Version", "1.0");
    let (text_type, text_body) = text_part(message.text);
    match message.attachment {
        None => {
            push_header(
                &mut out,
                "Content-Type",
                &format!("{text_type}; protected-headers=\"v1\""),
            );
            push_header(&mut out, "Content-Transfer-Encoding", "base64");
            out.push_str("\r\n");
            out.push_str(&text_body);
        }
        Some(file) => {
            let boundary = boundary();
            push_header(
                &mut out,
                "Content-Type",
                &format!("multipart/mixed; boundary=\"{boundary}\"; protected-headers=\"v1\""),
            );
            out.push_str("\r\n");
            let _ = write!(out, "--{boundary}\r\n");
            push_header(&mut out, "Content-Type", &text_type);
            push_header(&mut out, "Content-Transfer-Encoding", "base64");
            out.push_str("\r\n");
            out.push_str(&text_body);
            let _ = write!(out, "--{boundary}\r\n");
            let content_type = if file.content_type.contains('/')
                && file
                    .content_type
                    .chars()
                    .all(|c| c.is_ascii_graphic() && c != '"' && c != ';')
            {
                file.content_type.as_str()
            } else {
                "application/octet-stream"
            };
            push_header(&mut out, "Content-Type", content_type);
            push_header(
                &mut out,
                "Content-Disposition",
                &format!("attachment; {}", filename_param(&file.filename)),
            );
            push_header(&mut out, "Content-Transfer-Encoding", "base64");
            out.push_str("\r\n");
            out.push_str(&base64_lines(&file.data));
            let _ = write!(out, "--{boundary}--\r\n");
        }
    }
    Ok(out)
}

/// The outer RFC 3156 message around an armored OpenPGP message.
pub fn build_outer(from: &str, message_id: &str, date: &str, armored: &str) -> String {
    let boundary = boundary();
    let mut out = String::new();
    push_header(&mut out, "From", &format!("<{from}>"));
    push_header(&mut out, "To", "\"hidden-recipients\": ;");
    push_header(&mut out, "Subject", "[...]");
    push_header(&mut out, "Date", date);
    push_header(&mut out, "Message-ID", &format!("<{message_id}>"));
    push_header(&mut out, "MIME-Version", "1.0");
    push_header(&mut out, "Chat-Version", "1.0");
    push_header(
        &mut out,
        "Content-Type",
        &format!(
            "multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"{boundary}\""
        ),
    );
    out.push_str("\r\n");
    let _ = write!(out, "--{boundary}\r\n");
    out.push_str("Content-Type: application/pgp-encrypted\r\n");
    out.push_str("Content-Description: PGP/MIME version identification\r\n\r\n");
    out.push_str("Version: 1\r\n\r\n");
    let _ = write!(out, "--{boundary}\r\n");
    out.push_str("Content-Type: application/octet-stream; name=\"encrypted.asc\"\r\n");
    out.push_str("Content-Description: OpenPGP encrypted message\r\n");
    out.push_str("Content-Disposition: inline; filename=\"encrypted.asc\"\r\n\r\n");
    out.push_str(armored);
    if !armored.ends_with("\r\n") {
        out.push_str("\r\n");
    }
    let _ = write!(out, "\r\n--{boundary}--\r\n");
    out
}

/// Builds a message encrypted to `recipients` (peer and bot) and signed by the bot.
pub fn build_encrypted(
    message: &Outgoing<'_>,
    recipients: &[&Cert],
    key: &BotKey,
) -> Result<Built> {
    let message_id = new_message_id();
    let date = rfc5322_date(SystemTime::now());
    let inner = build_inner(message, &message_id, &date)?;
    let armored = pgp::encrypt_and_sign(inner.as_bytes(), recipients, key)?;
    let raw = build_outer(message.from, &message_id, &date, &armored).into_bytes();
    Ok(Built { raw, message_id })
}

/// Builds a message encrypted with `password` only and signed by the bot (SecureJoin v3).
pub fn build_password_encrypted(
    message: &Outgoing<'_>,
    password: &str,
    key: &BotKey,
) -> Result<Built> {
    let message_id = new_message_id();
    let date = rfc5322_date(SystemTime::now());
    let inner = build_inner(message, &message_id, &date)?;
    let armored = pgp::encrypt_symmetric_and_sign(inner.as_bytes(), password, key)?;
    let raw = build_outer(message.from, &message_id, &date, &armored).into_bytes();
    Ok(Built { raw, message_id })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::key::tests::{alice, bob};
    use chatmail_filtermail::check::{self, Acceptance, Direction, Envelope, Outcome};

    pub(crate) const BOT: &str = "bot@example.org";
    pub(crate) const PEER: &str = "bob@example.org";

    /// An inner entity as a Delta Chat client writes it (format=flowed text).
    pub(crate) fn client_inner(extra_headers: &str, body: &str) -> String {
        let autocrypt = autocrypt::Header::new(PEER, bob().secret_cert(), true)
            .to_value()
            .unwrap();
        format!(
            "Content-Type: text/plain; charset=\"utf-8\"; format=flowed; delsp=no; protected-headers=\"v1\"\r\n\
             From: <{PEER}>\r\nTo: <{BOT}>\r\nSubject: Message from {PEER}\r\n\
             Date: Sun, 29 Nov 2026 20:00:00 +0000\r\nMessage-ID: <m1@localhost>\r\n\
             Chat-Version: 1.0\r\n{extra_headers}Autocrypt: {autocrypt}\r\n\r\n{body}"
        )
    }

    /// The outer message around `inner` encrypted by Bob to the bot and himself.
    pub(crate) fn client_message(inner: &str) -> Vec<u8> {
        let armored = crate::pgp::tests::client_message(
            inner.as_bytes(),
            bob(),
            &[&alice().public_cert(), &bob().public_cert()],
        );
        build_outer(
            PEER,
            "m1@localhost",
            "Sun, 29 Nov 2026 20:00:00 +0000",
            std::str::from_utf8(&armored).unwrap(),
        )
        .into_bytes()
    }

    fn receive_as_bot(raw: &[u8]) -> Received {
        receive(raw, alice(), &[], |_| None).unwrap()
    }

    #[test]
    fn unflow_joins_soft_breaks_and_unstuffs() {
        assert_eq!(
            unflow("Hello \r\nworld\r\nnext", false),
            "Hello world\nnext"
        );
        assert_eq!(unflow("Hello \r\nworld", true), "Helloworld");
        assert_eq!(
            unflow(" From here\r\n >quoted", false),
            "From here\n>quoted"
        );
        assert_eq!(unflow("text\r\n-- \r\nsig", false), "text\n-- \nsig");
        // A trailing space on the last line is kept (nothing to join).
        assert_eq!(unflow("end ", false), "end ");
        assert_eq!(unflow("a\r\n\r\nb", false), "a\n\nb");
    }

    #[test]
    fn encrypted_client_message_is_decrypted_and_authenticated() {
        let raw = client_message(&client_inner("", "Hi \r\nthere \u{1F600}\r\nsecond line"));
        let received = receive_as_bot(&raw);
        assert!(received.encrypted);
        assert!(received.is_authenticated());
        assert_eq!(received.outer.from.as_deref(), Some(PEER));
        assert_eq!(
            received.content.headers.get("message-id"),
            Some("<m1@localhost>")
        );
        assert_eq!(
            received.content.text.as_deref(),
            Some("Hi there \u{1F600}\nsecond line")
        );
        assert_eq!(classify(BOT, &received), Verdict::Echo);
    }

    #[test]
    fn attachment_and_caption_are_read() {
        let inner = format!(
            "Content-Type: multipart/mixed; boundary=\"b1\"; protected-headers=\"v1\"\r\n\
             From: <{PEER}>\r\nTo: <{BOT}>\r\nChat-Version: 1.0\r\nMessage-ID: <m2@localhost>\r\n\
             Autocrypt: {}\r\n\r\n\
             --b1\r\nContent-Type: text/plain; charset=utf-8; format=flowed\r\n\r\ncaption\r\n\
             --b1\r\nContent-Type: image/png\r\n\
             Content-Disposition: attachment; filename*=utf-8''gr%C3%BC%C3%9Fe.png\r\n\
             Content-Transfer-Encoding: base64\r\n\r\nAAEC/w==\r\n--b1--\r\n",
            autocrypt::Header::new(PEER, bob().secret_cert(), true)
                .to_value()
                .unwrap()
        );
        let received = receive_as_bot(&client_message(&inner));
        assert_eq!(received.content.text.as_deref(), Some("caption"));
        let file = received.content.attachment.as_ref().unwrap();
        assert_eq!(file.filename, "grüße.png");
        assert_eq!(file.content_type, "image/png");
        assert_eq!(file.data, [0, 1, 2, 255]);
        assert_eq!(classify(BOT, &received), Verdict::Echo);
    }

    #[test]
    fn ignore_rules() {
        let cases: &[(&str, &str, Verdict)] = &[
            (
                "Auto-Submitted: auto-generated\r\n",
                "hi",
                Verdict::Ignore(Ignored::AutoSubmitted),
            ),
            (
                "Auto-Submitted: auto-replied\r\n",
                "hi",
                Verdict::Ignore(Ignored::AutoSubmitted),
            ),
            ("Auto-Submitted: no\r\n", "hi", Verdict::Echo),
            (
                "Chat-Group-Member-Added: x@example.org\r\n",
                "hi",
                Verdict::Ignore(Ignored::System),
            ),
            (
                "Chat-Group-Name-Changed: old\r\n",
                "hi",
                Verdict::Ignore(Ignored::System),
            ),
            (
                "Chat-Content: ephemeral-timer-changed\r\n",
                "hi",
                Verdict::Ignore(Ignored::System),
            ),
            (
                "Chat-Post-Message-ID: <p@localhost>\r\n",
                "hi",
                Verdict::Ignore(Ignored::PreMessage),
            ),
            ("", "/help", Verdict::Help),
            ("", "/help@bot@example.org", Verdict::Help),
            ("", "/help_me please", Verdict::Help),
            ("", "/start", Verdict::Ignore(Ignored::UnknownCommand)),
            ("", "  \r\n", Verdict::Ignore(Ignored::Empty)),
            (
                "Secure-Join: vc-request-with-auth\r\n",
                "x",
                Verdict::SecureJoin("vc-request-with-auth".into()),
            ),
        ];
        for (headers, body, expected) in cases {
            let received = receive_as_bot(&client_message(&client_inner(headers, body)));
            assert_eq!(&classify(BOT, &received), expected, "{headers} {body}");
        }
    }

    #[test]
    fn own_mail_and_mdn_are_ignored() {
        let mut received = receive_as_bot(&client_message(&client_inner("", "hi")));
        received.outer.from = Some("BOT@example.org".into());
        assert_eq!(
            classify(BOT, &received),
            Verdict::Ignore(Ignored::OwnMessage)
        );

        let inner = format!(
            "Content-Type: multipart/report; report-type=disposition-notification; boundary=\"r\"\r\n\
             From: <{PEER}>\r\nAutocrypt: {}\r\n\r\n--r\r\nContent-Type: text/plain\r\n\r\nread\r\n\
             --r\r\nContent-Type: message/disposition-notification\r\n\r\nOriginal-Message-ID: <x@y>\r\n--r--\r\n",
            autocrypt::Header::new(PEER, bob().secret_cert(), true)
                .to_value()
                .unwrap()
        );
        let received = receive_as_bot(&client_message(&inner));
        assert_eq!(classify(BOT, &received), Verdict::Ignore(Ignored::Mdn));
    }

    #[test]
    fn unauthenticated_mail_is_not_echoed() {
        // Cleartext.
        let raw = format!("From: <{PEER}>\r\nTo: <{BOT}>\r\nSubject: hi\r\n\r\nhello\r\n");
        let received = receive_as_bot(raw.as_bytes());
        assert_eq!(
            classify(BOT, &received),
            Verdict::Ignore(Ignored::Unauthenticated)
        );

        // Encrypted, but the inner From is someone else.
        let inner =
            client_inner("", "hi").replace(&format!("From: <{PEER}>"), "From: <eve@example.org>");
        let received = receive_as_bot(&client_message(&inner));
        assert_eq!(
            classify(BOT, &received),
            Verdict::Ignore(Ignored::Unauthenticated)
        );

        // Encrypted and signed by Bob, but claiming Eve's key in the Autocrypt header.
        let eve = BotKey::generate("eve@example.org").unwrap();
        let eve_header = autocrypt::Header::new(PEER, eve.secret_cert(), true)
            .to_value()
            .unwrap();
        let inner = format!(
            "Content-Type: text/plain; charset=utf-8\r\nFrom: <{PEER}>\r\nAutocrypt: {eve_header}\r\n\r\nhi"
        );
        let received = receive_as_bot(&client_message(&inner));
        assert!(received.signed_by.is_empty());
        assert_eq!(
            classify(BOT, &received),
            Verdict::Ignore(Ignored::Unauthenticated)
        );
    }

    fn echo_of(text: &str, attachment: Option<&Attachment>) -> Built {
        let own = autocrypt::Header::new(BOT, alice().secret_cert(), true);
        let gossip = autocrypt::Header::new(PEER, bob().secret_cert(), false);
        let outgoing = Outgoing {
            from: BOT,
            to: PEER,
            subject: &format!("Message from {BOT}"),
            text,
            attachment,
            in_reply_to: Some("m1@localhost"),
            extra_headers: Vec::new(),
            autocrypt: &own,
            gossip: vec![&gossip],
        };
        build_encrypted(
            &outgoing,
            &[&bob().public_cert(), &alice().public_cert()],
            alice(),
        )
        .unwrap()
    }

    fn receive_as_peer(raw: &[u8]) -> Received {
        receive(raw, bob(), &[], |_| None).unwrap()
    }

    #[test]
    fn echo_is_pgp_mime_that_filtermail_accepts() {
        let built = echo_of("hi", None);
        let text = String::from_utf8(built.raw.clone()).unwrap();
        assert!(
            !text.replace("\r\n", "").contains('\n'),
            "bare LF in {text}"
        );
        let verdict = check::check(
            &built.raw,
            &Envelope {
                sender: BOT.into(),
                recipients: vec![PEER.into()],
            },
            Direction::Outgoing,
            |_| false,
        );
        assert_eq!(verdict.outcome, Outcome::Accept(Acceptance::Encrypted));
        let outer = parse_outer(&built.raw).unwrap();
        assert_eq!(outer.headers.get("subject"), Some("[...]"));
        assert_eq!(outer.headers.get("to"), Some("\"hidden-recipients\": ;"));
        assert_eq!(outer.headers.get("chat-version"), Some("1.0"));
        assert_eq!(
            outer.headers.get("message-id"),
            Some(format!("<{}>", built.message_id).as_str())
        );
        assert!(built.message_id.ends_with("@localhost"));
    }

    #[test]
    fn echo_decrypts_for_the_peer_byte_identical() {
        let text = "Hi there \u{1F600}\nline with trailing space \n\n  indented\n".to_owned()
            + &"long ".repeat(100);
        let built = echo_of(&text, None);
        let received = receive_as_peer(&built.raw);
        assert!(received.is_authenticated());
        assert_eq!(received.content.text.as_deref(), Some(text.as_str()));
        let h = &received.content.headers;
        assert_eq!(h.get("auto-submitted"), Some("auto-generated"));
        assert_eq!(h.get("chat-version"), Some("1.0"));
        assert_eq!(h.get("in-reply-to"), Some("<m1@localhost>"));
        assert_eq!(h.get("references"), Some("<m1@localhost>"));
        assert_eq!(h.get("subject"), Some("Message from bot@example.org"));
        assert_eq!(h.get("to"), Some("<bob@example.org>"));
        let content_type = h.get("content-type").unwrap();
        assert!(
            content_type.contains("protected-headers=\"v1\""),
            "{content_type}"
        );
        let gossip: Vec<_> = h
            .get_all("autocrypt-gossip")
            .map(|v| autocrypt::Header::parse(v).unwrap())
            .collect();
        assert_eq!(gossip.len(), 1);
        assert_eq!(
            gossip[0].cert.fingerprint(),
            bob().public_cert().fingerprint()
        );
        // The peer's client would see a bot: its own rules ignore auto-generated mail.
        assert_eq!(
            classify(PEER, &received),
            Verdict::Ignore(Ignored::AutoSubmitted)
        );
        // The bot can read its own copy.
        assert!(receive_as_bot(&built.raw).is_authenticated());
    }

    #[test]
    fn echo_with_attachment_round_trips() {
        let file = Attachment {
            filename: "grüße \"x\".bin".into(),
            content_type: "application/x-test".into(),
            data: (0..=255).collect(),
        };
        let built = echo_of("caption", Some(&file));
        let received = receive_as_peer(&built.raw);
        assert!(received.is_authenticated());
        assert_eq!(received.content.text.as_deref(), Some("caption"));
        assert_eq!(received.content.attachment.as_ref(), Some(&file));
    }

    #[test]
    fn dates_are_rfc5322() {
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_796_000_000);
        assert_eq!(rfc5322_date(t), "Mon, 30 Nov 2026 00:53:20 +0000");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(rfc5322_date(t), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn message_ids_are_uuid4_at_localhost() {
        let id = new_message_id();
        let (uuid, host) = id.split_once('@').unwrap();
        assert_eq!(host, "localhost");
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4");
        assert_ne!(id, new_message_id());
    }
}
