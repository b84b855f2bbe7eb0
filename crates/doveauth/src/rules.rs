//! Who may get an account on first login: upstream's `is_allowed_to_create` rules, in
//! upstream's order, with upstream's log texts (operators grep for them).

use std::path::PathBuf;

/// The creation rules' parameters from chatmail.ini.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreationRules {
    /// While this file exists, no account is created (upstream: `/etc/chatmail-nocreate`).
    pub nocreate_file: PathBuf,
    pub password_min_length: usize,
    pub username_min_length: usize,
    pub username_max_length: usize,
}

impl CreationRules {
    /// `Ok` if `addr` with `password` may be created, else the refusal's log line.
    /// Lengths count Unicode code points, as Python's `len` does.
    pub fn check(&self, addr: &str, password: &str) -> Result<(), String> {
        if self.nocreate_file.exists() {
            return Err(format!(
                "blocked account creation because '{}' exists.",
                self.nocreate_file.display()
            ));
        }
        if password.chars().count() < self.password_min_length {
            return Err(format!(
                "Password needs to be at least {} characters long",
                self.password_min_length
            ));
        }
        let mut parts = addr.split('@');
        let (Some(localpart), Some(_domain), None) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("user '{addr}' is not a proper e-mail address"));
        };
        let length = localpart.chars().count();
        if length < self.username_min_length || length > self.username_max_length {
            return Err(format!(
                "localpart {localpart} has to be between {} and {} chars long",
                self.username_min_length, self.username_max_length
            ));
        }
        if !localpart
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            return Err(format!(
                "localpart '{localpart}' contains invalid characters"
            ));
        }
        // Beyond upstream: RFC 5322 dot-atoms neither start nor end with a dot nor hold
        // two in a row; other mail servers refuse such addresses, and `..` as a directory
        // name invites mistakes in every tool that walks the mailboxes.
        if localpart.starts_with('.') || localpart.ends_with('.') || localpart.contains("..") {
            return Err(format!("localpart '{localpart}' is not a valid dot-atom"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(min: usize, max: usize) -> CreationRules {
        CreationRules {
            nocreate_file: PathBuf::from("/nonexistent/chatmail-nocreate"),
            password_min_length: 9,
            username_min_length: min,
            username_max_length: max,
        }
    }

    #[test]
    fn default_lengths() {
        let rules = rules(9, 9);
        assert_eq!(rules.check("abcdefghi@x.org", "123456789"), Ok(()));
        assert_eq!(
            rules.check("a1234@x.org", "123456789"),
            Err("localpart a1234 has to be between 9 and 9 chars long".into())
        );
    }

    #[test]
    fn length_range_of_upstreams_tests() {
        let rules = rules(6, 10);
        for localpart in ["012345", "0123456", "012345678", "0123456789"] {
            assert_eq!(
                rules.check(&format!("{localpart}@x.org"), "123456789"),
                Ok(())
            );
        }
        assert!(rules.check("0123456789x@x.org", "123456789").is_err());
        assert!(rules.check("01234@x.org", "123456789").is_err());
    }

    #[test]
    fn password_length_counts_code_points() {
        let rules = rules(9, 9);
        assert_eq!(
            rules.check("abcdefghi@x.org", "12345678"),
            Err("Password needs to be at least 9 characters long".into())
        );
        assert_eq!(rules.check("abcdefghi@x.org", "ééééééééé"), Ok(()));
    }

    #[test]
    fn address_shape_and_characters() {
        let rules = rules(1, 20);
        assert_eq!(
            rules.check("a@b@x.org", "123456789"),
            Err("user 'a@b@x.org' is not a proper e-mail address".into())
        );
        assert_eq!(
            rules.check("nodomain", "123456789"),
            Err("user 'nodomain' is not a proper e-mail address".into())
        );
        for bad in [
            "Upper",
            "with space",
            "plus+tag",
            "bang!",
            "back\\slash",
            "sl/ash",
            "ümlaut",
        ] {
            assert_eq!(
                rules.check(&format!("{bad}@x.org"), "123456789"),
                Err(format!("localpart '{bad}' contains invalid characters")),
            );
        }
        assert_eq!(rules.check("a.b_c-d9@x.org", "123456789"), Ok(()));
        for bad in [".", "..", ".abc", "abc.", "a..b"] {
            assert_eq!(
                rules.check(&format!("{bad}@x.org"), "123456789"),
                Err(format!("localpart '{bad}' is not a valid dot-atom")),
            );
        }
    }

    #[test]
    fn nocreate_file_blocks_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut rules = rules(9, 9);
        rules.nocreate_file = dir.path().join("chatmail-nocreate");
        std::fs::write(&rules.nocreate_file, "").unwrap();
        let err = rules.check("abcdefghi@x.org", "123456789").unwrap_err();
        assert_eq!(
            err,
            format!(
                "blocked account creation because '{}' exists.",
                rules.nocreate_file.display()
            )
        );
    }
}
