//! Address extraction from `MAIL FROM:`/`RCPT TO:` lines and the `From:` header value.
//!
//! Upstream lower-cases everything and reinjects the lower-cased envelope, so mailbox
//! lookups, rate-limit keys and the From/envelope comparison all see one spelling.

/// The first mailbox of a command argument or header value, lower-cased; `None` when
/// there is none (no `@`, unbalanced quotes or brackets, empty).
///
/// ESMTP parameters after the first `>` are dropped (`SIZE=`, `BODY=`, `ORCPT=`). Display
/// names, quoted strings, comments and groups are skipped as RFC 5322 allows.
pub fn extract_address(input: &str) -> Option<String> {
    let lower = input.to_lowercase();
    let rest = lower
        .strip_prefix("mail from:")
        .or_else(|| lower.strip_prefix("rcpt to:"))
        .unwrap_or(&lower);
    let rest = match rest.find('>') {
        Some(end) => rest.get(..=end)?,
        None => rest,
    };
    first_mailbox(rest)
}

/// Scans an RFC 5322 address list for its first mailbox.
fn first_mailbox(list: &str) -> Option<String> {
    // `word` collects the bare (unquoted, outside brackets) text of the current list
    // element; an angle-address wins over it.
    let mut word = String::new();
    let mut chars = list.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => {
                // A quoted display name (or quoted local part, kept).
                let mut quoted = String::from('"');
                loop {
                    match chars.next()? {
                        '\\' => quoted.push(chars.next()?),
                        '"' => break,
                        other => quoted.push(other),
                    }
                }
                quoted.push('"');
                word.push_str(&quoted);
            }
            '(' => {
                // Comments nest.
                let mut depth = 1;
                while depth > 0 {
                    match chars.next()? {
                        '\\' => {
                            chars.next()?;
                        }
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                }
            }
            '<' => {
                let mut addr = String::new();
                loop {
                    match chars.next()? {
                        '>' => break,
                        other => addr.push(other),
                    }
                }
                return mailbox(addr.trim());
            }
            '[' => {
                // An address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`): its colons are
                // no group separator.
                word.push('[');
                loop {
                    match chars.next()? {
                        ']' => break,
                        other => word.push(other),
                    }
                }
                word.push(']');
            }
            ':' => word.clear(), // group name: its members follow
            ',' | ';' => {
                if let Some(found) = mailbox(word.trim()) {
                    return Some(found);
                }
                word.clear();
            }
            other => word.push(other),
        }
    }
    mailbox(word.trim())
}

/// A bare `local@domain`: exactly the shape upstream accepts (an `@`, no blanks).
fn mailbox(candidate: &str) -> Option<String> {
    // A source route (`@a,@b:user@host`) is obsolete syntax; its last part is the mailbox.
    // A source route (`@a.example,@b.example:user@c.example`, RFC 5321 §4.1.2) is dropped;
    // any other colon belongs to the address (an IPv6 literal).
    let candidate = match candidate.strip_prefix('@') {
        Some(route) => route.split_once(':')?.1.trim(),
        None => candidate,
    };
    let (local, domain) = candidate.rsplit_once('@')?;
    let valid = !local.is_empty()
        && !domain.is_empty()
        && !candidate
            .chars()
            .any(|c| c.is_whitespace() || c.is_control());
    valid.then(|| candidate.to_owned())
}

#[cfg(test)]
mod tests {
    use super::extract_address;
    use rstest::rstest;

    #[rstest]
    #[case("MAIL FROM:<t1@example.org>", Some("t1@example.org"))]
    #[case(
        "MAIL FROM:<t2@example.org> SOMETHING=SOMETHING OTHER=OTHER",
        Some("t2@example.org")
    )]
    #[case(
        "MAIL FROM:<SRS1=HHH=example.com==HHH=TT=example.org=alice@example.net> abc=def",
        Some("srs1=hhh=example.com==hhh=tt=example.org=alice@example.net")
    )]
    #[case(
        "MAIL FROM:<abc+alice@example.net> abc=def",
        Some("abc+alice@example.net")
    )]
    #[case("RCPT TO:<t3@example.org>", Some("t3@example.org"))]
    #[case("mail from:<t4@example.org>", Some("t4@example.org"))]
    #[case("Foo Bar <t5@example.org>", Some("t5@example.org"))]
    #[case("t6@example.org", Some("t6@example.org"))]
    #[case("\"Bar, Foo\" <t7@Example.org>", Some("t7@example.org"))]
    #[case("friends: t8@example.org, t9@example.org;", Some("t8@example.org"))]
    #[case("t10@example.org (comment)", Some("t10@example.org"))]
    #[case("RCPT TO:<bob@[IPv6:::1]>", Some("bob@[ipv6:::1]"))]
    #[case("RCPT TO:<bob@[192.0.2.1]> NOTIFY=NEVER", Some("bob@[192.0.2.1]"))]
    #[case("Bob <bob@[IPv6:2001:db8::1]>", Some("bob@[ipv6:2001:db8::1]"))]
    #[case("bob@[IPv6:2001:db8::1]", Some("bob@[ipv6:2001:db8::1]"))]
    #[case("RCPT TO:<@a.example,@b.example:c@d.example>", Some("c@d.example"))]
    #[case("bob@[IPv6:::1", None)]
    #[case("MAIL FROM:<>", None)]
    #[case("RCPT TO:<>", None)]
    #[case("MAIL FROM:<nobody>", None)]
    #[case("", None)]
    #[case("\"unterminated <a@b>", None)]
    #[case("MAIL FROM:<a b@example.org>", None)]
    fn extracts(#[case] input: &str, #[case] expected: Option<&str>) {
        assert_eq!(extract_address(input).as_deref(), expected);
    }
}
