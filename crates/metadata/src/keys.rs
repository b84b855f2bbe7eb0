//! The dict keys Dovecot derives from IMAP METADATA entries, parsed without I/O.
//!
//! `GETMETADATA INBOX /private/devicetoken` becomes `priv/<guid>/devicetoken`;
//! `GETMETADATA "" /shared/vendor/deltachat/<name>` becomes
//! `shared/<guid>/vendor/vendor.dovecot/pvt/server/vendor/deltachat/<name>`. The GUID is
//! ignored, as upstream does.

/// What follows `shared/<guid>/` in the server-wide Delta Chat keys.
pub const DELTACHAT_PREFIX: &str = "vendor/vendor.dovecot/pvt/server/vendor/deltachat/";

/// A lookup key that the daemon answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupKey {
    /// `priv/<guid>/devicetoken`: the user's valid tokens.
    DeviceToken,
    /// `/shared/vendor/deltachat/irohrelay`
    IrohRelay,
    /// `/shared/vendor/deltachat/turn`
    Turn,
    /// `/shared/vendor/deltachat/maxsmtprecipients`
    MaxSmtpRecipients,
    /// `/shared/vendor/deltachat/appversions`
    AppVersions,
    /// Anything else: logged and answered `N`.
    Other,
}

/// Splits at the first two `/` like Python's `key.split("/", 2)`, which must give three parts.
pub fn parse_lookup(key: &str) -> LookupKey {
    let mut parts = key.splitn(3, '/');
    let (Some(ns), Some(_guid), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
        return LookupKey::Other;
    };
    match ns {
        "priv" if name == "devicetoken" => LookupKey::DeviceToken,
        "shared" => match name.strip_prefix(DELTACHAT_PREFIX) {
            Some("irohrelay") => LookupKey::IrohRelay,
            Some("turn") => LookupKey::Turn,
            Some("maxsmtprecipients") => LookupKey::MaxSmtpRecipients,
            Some("appversions") => LookupKey::AppVersions,
            _ => LookupKey::Other,
        },
        _ => LookupKey::Other,
    }
}

/// A set key that the daemon handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetKey {
    /// `priv/<guid>/devicetoken`: add the value as a token.
    DeviceToken,
    /// `priv/<guid>/messagenew`: the lua push script saw new mail; notify every token.
    MessageNew,
    /// Anything else: "not handled", the commit answers `F`.
    Other,
}

/// Splits on every `/`; exactly three components are ours, as upstream's match requires.
pub fn parse_set(key: &str) -> SetKey {
    let mut parts = key.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("priv"), Some(_), Some("devicetoken"), None) => SetKey::DeviceToken,
        (Some("priv"), Some(_), Some("messagenew"), None) => SetKey::MessageNew,
        _ => SetKey::Other,
    }
}

/// The TURN reply: host, Delta Chat's fixed port and the credentials as the TURN service
/// gave them.
pub fn turn_value(mail_domain: &str, credentials: &str) -> String {
    format!("{mail_domain}:3478:{credentials}")
}

/// Postfix's default `smtpd_recipient_limit`, which chatmail does not change.
pub const MAX_SMTP_RECIPIENTS: &str = "1000";

/// Python's `repr` of the request parts, for the `lookup ignored: [...]` line operators know.
pub fn python_repr_list(parts: &[&str]) -> String {
    let items: Vec<String> = parts.iter().map(|part| python_repr_str(part)).collect();
    format!("[{}]", items.join(", "))
}

fn python_repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_keys() {
        let shared = |name: &str| format!("shared/0123/{DELTACHAT_PREFIX}{name}");
        assert_eq!(
            parse_lookup("priv/0123/devicetoken"),
            LookupKey::DeviceToken
        );
        assert_eq!(parse_lookup("priv//devicetoken"), LookupKey::DeviceToken);
        assert_eq!(parse_lookup(&shared("irohrelay")), LookupKey::IrohRelay);
        assert_eq!(parse_lookup(&shared("turn")), LookupKey::Turn);
        assert_eq!(
            parse_lookup(&shared("maxsmtprecipients")),
            LookupKey::MaxSmtpRecipients
        );
        assert_eq!(parse_lookup(&shared("appversions")), LookupKey::AppVersions);
        assert_eq!(parse_lookup(&shared("unknown")), LookupKey::Other);
        assert_eq!(parse_lookup(&shared("turn/x")), LookupKey::Other);
        assert_eq!(
            parse_lookup("shared/0123/vendor/vendor.dovecot/pvt/server/wrong/prefix/key"),
            LookupKey::Other
        );
        assert_eq!(parse_lookup("priv/123/chatmail"), LookupKey::Other);
        assert_eq!(parse_lookup("shared/0123/devicetoken"), LookupKey::Other);
        assert_eq!(parse_lookup("priv/devicetoken"), LookupKey::Other);
        assert_eq!(parse_lookup("priv/1/devicetoken/x"), LookupKey::Other);
        assert_eq!(parse_lookup(""), LookupKey::Other);
    }

    #[test]
    fn set_keys() {
        assert_eq!(parse_set("priv/guid00/devicetoken"), SetKey::DeviceToken);
        assert_eq!(parse_set("priv/guid00/messagenew"), SetKey::MessageNew);
        assert_eq!(parse_set("priv/guid00/messagenew/x"), SetKey::Other);
        assert_eq!(parse_set("shared/guid00/devicetoken"), SetKey::Other);
        assert_eq!(parse_set("priv/devicetoken"), SetKey::Other);
        assert_eq!(parse_set("priv/g/chatmail"), SetKey::Other);
    }

    #[test]
    fn turn_reply_value() {
        assert_eq!(
            turn_value("turn.example.org", "user:pass"),
            "turn.example.org:3478:user:pass"
        );
        assert_eq!(turn_value("[1.2.3.4]", "u:p"), "[1.2.3.4]:3478:u:p");
    }

    #[test]
    fn lookup_ignored_line_is_pythons_repr() {
        assert_eq!(
            python_repr_list(&["priv/123/chatmail", "user@example.org"]),
            "['priv/123/chatmail', 'user@example.org']"
        );
        assert_eq!(python_repr_list(&["it's"]), r#"["it's"]"#);
        assert_eq!(python_repr_list(&["a\tb"]), r"['a\tb']");
    }
}
