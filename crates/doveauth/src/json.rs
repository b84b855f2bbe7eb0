//! The userdb/passdb reply, serialised byte for byte as upstream's Python `json.dumps`
//! does it (`", "` and `": "` separators, non-ASCII as `\uXXXX`), so that captures of
//! both implementations compare equal.

use std::fmt::Write;

use chatmail_mailbox::UserRecord;

/// `{"addr": ..., "home": ..., "uid": ..., "gid": ..., "password": ...}`
pub fn user_record_json(record: &UserRecord) -> String {
    let mut out = String::with_capacity(64 + record.home.len() + record.password.len());
    let fields = [
        ("addr", &record.addr),
        ("home", &record.home),
        ("uid", &record.uid),
        ("gid", &record.gid),
        ("password", &record.password),
    ];
    out.push('{');
    for (i, (name, value)) in fields.into_iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        push_json_string(&mut out, name);
        out.push_str(": ");
        push_json_string(&mut out, value);
    }
    out.push('}');
    out
}

/// Appends `value` as a JSON string with Python's `ensure_ascii` escaping.
pub fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if c.is_ascii() && !c.is_ascii_control() => out.push(c),
            '\u{7f}' => out.push(c),
            c => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_matches_python_json_dumps() {
        let record = UserRecord {
            addr: "some42123@chat.example.org".into(),
            home: "/home/vmail/mail/chat.example.org/some42123@chat.example.org".into(),
            uid: "vmail".into(),
            gid: "vmail".into(),
            password: "{SHA512-CRYPT}$6$abc/.$xyz".into(),
        };
        assert_eq!(
            user_record_json(&record),
            r#"{"addr": "some42123@chat.example.org", "home": "/home/vmail/mail/chat.example.org/some42123@chat.example.org", "uid": "vmail", "gid": "vmail", "password": "{SHA512-CRYPT}$6$abc/.$xyz"}"#
        );
    }

    #[test]
    fn escapes_like_python() {
        let mut out = String::new();
        // json.dumps('a"b\\c\n\x01é😀\x7f')
        push_json_string(&mut out, "a\"b\\c\n\u{1}é😀\u{7f}");
        assert_eq!(out, "\"a\\\"b\\\\c\\n\\u0001\\u00e9\\ud83d\\ude00\u{7f}\"");
    }
}
