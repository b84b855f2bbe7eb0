//! Parsing of the lookup keys Dovecot sends to doveauth (pure functions).
//!
//! Dovecot's `auth.conf` builds them as `passdb/%Ew"%Eu` and `userdb/%Eu`, prefixed with
//! the `shared/` dict namespace. `%E` puts a backslash before `"`, `'` and `\`, so the
//! password and the user are separated by the one unescaped `"`.

use thiserror::Error;

/// What a lookup key asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthKey {
    /// `shared/userdb/<user>`
    Userdb { user: String },
    /// `shared/passdb/<password>"<user>`
    Passdb { password: String, user: String },
    /// A well-formed key doveauth does not serve (another namespace or type): `F`.
    Unsupported,
}

/// A key that cannot have come from Dovecot's `auth.conf`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    #[error("key has fewer than two '/'")]
    MissingSlash,
    #[error("key ends in a lone backslash")]
    TrailingBackslash,
    #[error("passdb key has no '\"' between password and user")]
    MissingUser,
}

/// Parses a lookup key such as `shared/passdb/secret"user@example.org`.
pub fn parse_key(key: &str) -> Result<AuthKey, KeyError> {
    let (namespace, rest) = key.split_once('/').ok_or(KeyError::MissingSlash)?;
    let (kind, args) = rest.split_once('/').ok_or(KeyError::MissingSlash)?;
    if namespace != "shared" {
        return Ok(AuthKey::Unsupported);
    }
    match kind {
        "userdb" => {
            let mut args = split_and_unescape(args)?.into_iter();
            let user = args.next().unwrap_or_default();
            Ok(AuthKey::Userdb { user })
        }
        "passdb" => {
            let mut args = split_and_unescape(args)?.into_iter();
            let password = args.next().unwrap_or_default();
            let user = args.next().ok_or(KeyError::MissingUser)?;
            Ok(AuthKey::Passdb { password, user })
        }
        _ => Ok(AuthKey::Unsupported),
    }
}

/// Splits on unescaped `"`, where `\x` stands for the character `x`.
pub fn split_and_unescape(args: &str) -> Result<Vec<String>, KeyError> {
    let mut parts = Vec::with_capacity(2);
    let mut current = String::with_capacity(args.len());
    let mut chars = args.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => current.push(chars.next().ok_or(KeyError::TrailingBackslash)?),
            '"' => parts.push(std::mem::take(&mut current)),
            other => current.push(other),
        }
    }
    parts.push(current);
    Ok(parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userdb_key() {
        assert_eq!(
            parse_key("shared/userdb/foobar@chat.example.org").unwrap(),
            AuthKey::Userdb {
                user: "foobar@chat.example.org".into()
            }
        );
    }

    #[test]
    fn passdb_key_with_every_escaped_character() {
        // The example of upstream's test_handle_dovecot_request.
        let key = r#"shared/passdb/laksjd\\sjdlk\"12j\'3l1/k2j3123"some42123@chat.example.org"#;
        assert_eq!(
            parse_key(key).unwrap(),
            AuthKey::Passdb {
                password: r#"laksjd\sjdlk"12j'3l1/k2j3123"#.into(),
                user: "some42123@chat.example.org".into()
            }
        );
    }

    #[test]
    fn other_namespaces_and_types_are_unsupported() {
        assert_eq!(
            parse_key("private/passdb/x\"y").unwrap(),
            AuthKey::Unsupported
        );
        assert_eq!(parse_key("shared/other/x").unwrap(), AuthKey::Unsupported);
    }

    #[test]
    fn malformed_keys() {
        assert_eq!(parse_key("shared"), Err(KeyError::MissingSlash));
        assert_eq!(parse_key("shared/userdb"), Err(KeyError::MissingSlash));
        assert_eq!(
            parse_key("shared/passdb/only-a-password"),
            Err(KeyError::MissingUser)
        );
        assert_eq!(
            parse_key("shared/userdb/user@x\\"),
            Err(KeyError::TrailingBackslash)
        );
    }

    #[test]
    fn empty_parts() {
        assert_eq!(split_and_unescape("").unwrap(), [""]);
        assert_eq!(split_and_unescape("\"").unwrap(), ["", ""]);
        assert_eq!(split_and_unescape("a\"b\"c").unwrap(), ["a", "b", "c"]);
    }
}
