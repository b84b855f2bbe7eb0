//! Pure parsing and formatting of Dovecot dict proxy protocol lines.
//!
//! Nothing here does I/O, so every function can be fed arbitrary bytes by unit tests
//! and fuzzers. The server in [`crate::server`] frames lines and calls [`parse_request`].
//!
//! Wire format (Dovecot 2.3, as the chatmail daemons see it): one request per LF-terminated
//! line, the first byte names the command, the fields after it are separated by TAB.
//! Field contents are tab-escaped by Dovecot: `\x01` followed by `0`, `1`, `t`, `r` or `n`
//! stands for NUL, `\x01`, TAB, CR or LF. Upstream's Python daemons do not undo this
//! escaping; we do, so that a password that really contains a TAB is hashed as typed.
//! Both agree for every value that contains none of those bytes.

use std::borrow::Cow;

use thiserror::Error;

/// One parsed request line. Field values are unescaped; most borrow from the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    /// `H<major>\t<minor>\t<value_type>\t<user>\t<dict_name>`: sent once per connection,
    /// never answered. The fields are kept for logging only.
    Hello { fields: Vec<Cow<'a, str>> },
    /// `L<key>[\t<user>]`: answered by exactly one `O`, `N` or `F` line.
    Lookup {
        key: Cow<'a, str>,
        user: Option<Cow<'a, str>>,
    },
    /// `I<flags>\t<max_rows>\t<path>[\t<user>]`: answered by rows and an empty line.
    Iterate {
        flags: u32,
        /// 0 means no limit.
        max_rows: u64,
        path: Cow<'a, str>,
        user: Option<Cow<'a, str>>,
    },
    /// `B<txid>[\t<user>]`: opens a transaction, no reply.
    Begin {
        txid: Cow<'a, str>,
        user: Option<Cow<'a, str>>,
    },
    /// `S<txid>\t<key>[\t<value>]`: a missing value is the empty string, no reply.
    Set {
        txid: Cow<'a, str>,
        key: Cow<'a, str>,
        value: Cow<'a, str>,
    },
    /// `U<txid>\t<key>`: no reply.
    Unset {
        txid: Cow<'a, str>,
        key: Cow<'a, str>,
    },
    /// `C<txid>`: answered by `O` or `F`.
    Commit { txid: Cow<'a, str> },
    /// `R<txid>`: drops the transaction, no reply.
    Rollback { txid: Cow<'a, str> },
    /// Any other command letter (`A` atomic-inc, `T` timestamp, `D`, ...). Upstream logs and
    /// ignores these without a reply; so do we.
    Unknown { command: char },
}

/// Why a line could not be parsed. A parse error ends the connection: the client and we
/// no longer agree on the conversation, and Dovecot reconnects on its own.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// An empty or blank line. Upstream ends the session on it; Dovecot never sends one.
    #[error("empty request line")]
    Empty,
    #[error("request line is not valid UTF-8")]
    NotUtf8,
    #[error("'{command}' request lacks its {field} field")]
    MissingField { command: char, field: &'static str },
    #[error("'{command}' request has an invalid {field} field")]
    InvalidField { command: char, field: &'static str },
}

/// Parses one request line, without its terminating LF (a trailing CR or other ASCII
/// white space is ignored, as upstream strips the line).
pub fn parse_request(line: &[u8]) -> Result<Request<'_>, ParseError> {
    let line = line.trim_ascii();
    let text = std::str::from_utf8(line).map_err(|_| ParseError::NotUtf8)?;
    let mut chars = text.chars();
    let command = chars.next().ok_or(ParseError::Empty)?;
    let mut fields = chars.as_str().split('\t');
    let mut required = |field: &'static str| {
        fields
            .next()
            .map(unescape)
            .ok_or(ParseError::MissingField { command, field })
    };
    let request = match command {
        'H' => Request::Hello {
            fields: chars.as_str().split('\t').map(unescape).collect(),
        },
        'L' => {
            let key = required("key")?;
            let user = required("user").ok();
            Request::Lookup { key, user }
        }
        'I' => {
            let flags = required("flags")?;
            let max_rows = required("max_rows")?;
            let path = required("path")?;
            let user = required("user").ok();
            Request::Iterate {
                flags: flags.trim().parse().map_err(|_| ParseError::InvalidField {
                    command,
                    field: "flags",
                })?,
                max_rows: max_rows
                    .trim()
                    .parse()
                    .map_err(|_| ParseError::InvalidField {
                        command,
                        field: "max_rows",
                    })?,
                path,
                user,
            }
        }
        'B' => {
            let txid = required("txid")?;
            let user = required("user").ok();
            Request::Begin { txid, user }
        }
        'S' => {
            let txid = required("txid")?;
            let key = required("key")?;
            let value = required("value").unwrap_or(Cow::Borrowed(""));
            Request::Set { txid, key, value }
        }
        'U' => {
            let txid = required("txid")?;
            let key = required("key")?;
            Request::Unset { txid, key }
        }
        'C' => Request::Commit {
            txid: required("txid")?,
        },
        'R' => Request::Rollback {
            txid: required("txid")?,
        },
        other => Request::Unknown { command: other },
    };
    Ok(request)
}

/// Undoes Dovecot's tab-escaping of one field (`\x01` + `0`/`1`/`t`/`r`/`n`).
/// An `\x01` followed by anything else is kept as it is.
pub fn unescape(field: &str) -> Cow<'_, str> {
    if !field.contains('\x01') {
        return Cow::Borrowed(field);
    }
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\x01' {
            out.push(c);
            continue;
        }
        let decoded = match chars.peek() {
            Some('0') => '\0',
            Some('1') => '\x01',
            Some('t') => '\t',
            Some('r') => '\r',
            Some('n') => '\n',
            _ => {
                out.push(c);
                continue;
            }
        };
        chars.next();
        out.push(decoded);
    }
    Cow::Owned(out)
}

/// Tab-escapes a value for a reply, so that a TAB, CR, LF, NUL or `\x01` inside it cannot
/// break the line framing. Values without those bytes go out unchanged, byte for byte as
/// upstream sends them.
pub fn escape(value: &str) -> Cow<'_, str> {
    if !value.contains(['\0', '\x01', '\t', '\r', '\n']) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\0' => out.push_str("\x010"),
            '\x01' => out.push_str("\x011"),
            '\t' => out.push_str("\x01t"),
            '\r' => out.push_str("\x01r"),
            '\n' => out.push_str("\x01n"),
            other => out.push(other),
        }
    }
    Cow::Owned(out)
}

/// The answer to a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupReply {
    /// `O<value>`
    Found(String),
    /// `N`
    NotFound,
    /// `F<reason>`: Dovecot treats the lookup as a temporary failure.
    Failed(String),
}

impl LookupReply {
    /// Appends the reply line, LF included, to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        match self {
            LookupReply::Found(value) => {
                out.push(b'O');
                out.extend_from_slice(escape(value).as_bytes());
            }
            LookupReply::NotFound => out.push(b'N'),
            LookupReply::Failed(reason) => {
                out.push(b'F');
                out.extend_from_slice(escape(reason).as_bytes());
            }
        }
        out.push(b'\n');
    }
}

/// Appends one iterate row `O<key>\t<value>\n` to `out`.
pub fn write_iterate_row(out: &mut Vec<u8>, key: &str, value: &str) {
    out.push(b'O');
    out.extend_from_slice(escape(key).as_bytes());
    out.push(b'\t');
    out.extend_from_slice(escape(value).as_bytes());
    out.push(b'\n');
}

/// The line that ends an iteration. Dovecot waits for it, so it is sent even on errors.
pub const ITERATE_END: &[u8] = b"\n";

/// Commit replies. Upstream sends them without the transaction id and Dovecot 2.3 matches
/// them by order.
pub const COMMIT_OK: &[u8] = b"O\n";
pub const COMMIT_FAILED: &[u8] = b"F\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Cow<'_, str> {
        Cow::Borrowed(v)
    }

    #[test]
    fn hello_is_parsed_and_kept_for_logging() {
        let req = parse_request(b"H3\t2\t0\t\tauth\n").unwrap();
        assert_eq!(
            req,
            Request::Hello {
                fields: vec![s("3"), s("2"), s("0"), s(""), s("auth")]
            }
        );
    }

    #[test]
    fn lookup_with_and_without_user() {
        assert_eq!(
            parse_request(b"Lshared/userdb/a@b\ta@b").unwrap(),
            Request::Lookup {
                key: s("shared/userdb/a@b"),
                user: Some(s("a@b"))
            }
        );
        assert_eq!(
            parse_request(b"Lshared/userdb/a@b\r\n").unwrap(),
            Request::Lookup {
                key: s("shared/userdb/a@b"),
                user: None
            }
        );
    }

    #[test]
    fn passdb_key_keeps_backslash_escapes_for_the_handler() {
        let line = br#"Lshared/passdb/laksjd\\sjdlk\"12j\'3l1/k2j3123"some42123@chat.example.org	some42123@chat.example.org"#;
        match parse_request(line).unwrap() {
            Request::Lookup { key, user } => {
                assert_eq!(
                    key,
                    r#"shared/passdb/laksjd\\sjdlk\"12j\'3l1/k2j3123"some42123@chat.example.org"#
                );
                assert_eq!(user.as_deref(), Some("some42123@chat.example.org"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn iterate_fields() {
        assert_eq!(
            parse_request(b"I0\t0\tshared/userdb/\n").unwrap(),
            Request::Iterate {
                flags: 0,
                max_rows: 0,
                path: s("shared/userdb/"),
                user: None
            }
        );
        assert_eq!(
            parse_request(b"I1\t5\tshared/userdb/\tu@x").unwrap(),
            Request::Iterate {
                flags: 1,
                max_rows: 5,
                path: s("shared/userdb/"),
                user: Some(s("u@x"))
            }
        );
    }

    #[test]
    fn iterate_needs_three_numeric_fields() {
        assert_eq!(
            parse_request(b"I0\t0"),
            Err(ParseError::MissingField {
                command: 'I',
                field: "path"
            })
        );
        assert_eq!(
            parse_request(b"Ix\t0\tshared/"),
            Err(ParseError::InvalidField {
                command: 'I',
                field: "flags"
            })
        );
        assert_eq!(
            parse_request(b"I0\t-1\tshared/"),
            Err(ParseError::InvalidField {
                command: 'I',
                field: "max_rows"
            })
        );
    }

    #[test]
    fn transaction_commands() {
        assert_eq!(
            parse_request(b"B1\tu@x").unwrap(),
            Request::Begin {
                txid: s("1"),
                user: Some(s("u@x"))
            }
        );
        assert_eq!(
            parse_request(b"S1\tshared/last-login/u@x\t1700000000").unwrap(),
            Request::Set {
                txid: s("1"),
                key: s("shared/last-login/u@x"),
                value: s("1700000000")
            }
        );
        assert_eq!(
            parse_request(b"C1").unwrap(),
            Request::Commit { txid: s("1") }
        );
        assert_eq!(
            parse_request(b"R1").unwrap(),
            Request::Rollback { txid: s("1") }
        );
        assert_eq!(
            parse_request(b"U1\tkey").unwrap(),
            Request::Unset {
                txid: s("1"),
                key: s("key")
            }
        );
    }

    #[test]
    fn set_with_empty_value_after_strip() {
        // Upstream strips the line, so a trailing TAB and a missing value both mean "".
        for line in [&b"S1\tkey\t\n"[..], b"S1\tkey"] {
            assert_eq!(
                parse_request(line).unwrap(),
                Request::Set {
                    txid: s("1"),
                    key: s("key"),
                    value: s("")
                }
            );
        }
    }

    #[test]
    fn unknown_commands_are_reported_not_errors() {
        assert_eq!(
            parse_request(b"A1\tkey\t1").unwrap(),
            Request::Unknown { command: 'A' }
        );
        assert_eq!(
            parse_request(b"D1").unwrap(),
            Request::Unknown { command: 'D' }
        );
    }

    #[test]
    fn blank_and_invalid_lines() {
        assert_eq!(parse_request(b""), Err(ParseError::Empty));
        assert_eq!(parse_request(b" \t\r\n"), Err(ParseError::Empty));
        assert_eq!(parse_request(b"L\xff\xfe"), Err(ParseError::NotUtf8));
        assert_eq!(
            parse_request(b"C"),
            Ok(Request::Commit { txid: s("") }),
            "an empty txid is still a field"
        );
        assert_eq!(
            parse_request(b"S1"),
            Err(ParseError::MissingField {
                command: 'S',
                field: "key"
            })
        );
    }

    #[test]
    fn tab_escapes_round_trip() {
        let raw = "a\tb\nc\rd\0e\x01f";
        let escaped = escape(raw);
        assert_eq!(escaped, "a\x01tb\x01nc\x01rd\x010e\x011f");
        assert_eq!(unescape(&escaped), raw);
        assert!(matches!(escape("plain"), Cow::Borrowed("plain")));
        assert!(matches!(unescape("plain"), Cow::Borrowed("plain")));
        assert_eq!(unescape("x\x01"), "x\x01");
        assert_eq!(unescape("x\x01z"), "x\x01z");
    }

    #[test]
    fn escaped_password_field_is_unescaped() {
        match parse_request(b"Lshared/passdb/pa\x01tss\"u@x\tu@x").unwrap() {
            Request::Lookup { key, .. } => assert_eq!(key, "shared/passdb/pa\tss\"u@x"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn replies_are_formatted_like_upstream() {
        let mut out = Vec::new();
        LookupReply::Found("{\"a\": 1}".into()).write_to(&mut out);
        LookupReply::NotFound.write_to(&mut out);
        LookupReply::Failed(String::new()).write_to(&mut out);
        write_iterate_row(&mut out, "shared/userdb/a@b", "");
        out.extend_from_slice(ITERATE_END);
        assert_eq!(out, b"O{\"a\": 1}\nN\nF\nOshared/userdb/a@b\t\n\n");
    }

    #[test]
    fn parser_never_panics_on_noise() {
        // A bounded xorshift stream of lines built from the bytes that matter to the parser.
        let alphabet = b"HLIBSUCRA\t\x01tn0\\\"/@ \r\xffx1";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut line = Vec::new();
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let len = (state % 24) as usize;
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let pick = (state % alphabet.len() as u64) as usize;
                line.push(alphabet.get(pick).copied().unwrap_or(b'x'));
            }
            let _ = parse_request(&line);
        }
    }
}
