//! Conversions that reproduce what upstream's Python does with a value string.
//!
//! Upstream converts `chatmail.ini` values with `int()`, `float()`, `str.strip()`,
//! `str.split()` and `str.lower()`. Files that upstream accepts must keep working, so the
//! corner cases (which characters count as blanks, `+5`, `1_000`) follow Python, not Rust's
//! `str::parse`.

/// Python's `str.isspace()`: Unicode `White_Space` plus the ASCII information separators
/// U+001C..U+001F, which Python also treats as blanks.
pub(crate) fn is_py_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\u{1c}'..='\u{1f}')
}

/// Python's `str.strip()` without arguments.
pub(crate) fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `str.split()` without arguments: runs of blanks separate items, no empty items.
pub(crate) fn py_split(s: &str) -> Vec<String> {
    s.split(is_py_space)
        .filter(|item| !item.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Python's `int(s)` for base 10: surrounding blanks, one leading sign, ASCII digits with
/// single underscores between them. Python integers are unbounded; values beyond `i128`
/// saturate so that range checks further up still report "too large" rather than "not a
/// number". Python also accepts non-ASCII decimal digits; nobody writes those into a
/// config file, so they are rejected here.
pub(crate) fn py_int(s: &str) -> Option<i128> {
    let s = py_strip(s);
    let (negative, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let mut n: i128 = 0;
    let mut after_digit = false;
    for c in digits.chars() {
        if let Some(d) = c.to_digit(10) {
            n = n.saturating_mul(10).saturating_add(i128::from(d));
            after_digit = true;
        } else if c == '_' && after_digit {
            after_digit = false;
        } else {
            return None;
        }
    }
    // Also rejects an empty digit string and a trailing underscore.
    if !after_digit {
        return None;
    }
    Some(if negative { -n } else { n })
}

/// Python's `float(s)`, minus infinities and NaN: a load limit of `nan` would silently
/// disable the check, which is never what an operator meant. Python's digit-separating
/// underscores are not supported.
pub(crate) fn py_float(s: &str) -> Option<f64> {
    py_strip(s)
        .parse::<f64>()
        .ok()
        .filter(|value| value.is_finite())
}

/// Upstream's boolean rule: true iff the lower-cased value is exactly `true`; anything else,
/// including `yes` and `1`, is false and never an error.
pub(crate) fn py_bool(s: &str) -> bool {
    s.to_lowercase() == "true"
}

/// Makes text safe to embed in a one-line message: values may span lines (continuation
/// lines) or carry control characters, and a log line must stay one line.
pub(crate) fn one_line(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                out.extend(c.escape_unicode());
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn py_int_accepts_what_python_accepts() {
        assert_eq!(py_int("42"), Some(42));
        assert_eq!(py_int("  42\t"), Some(42));
        assert_eq!(py_int("+42"), Some(42));
        assert_eq!(py_int("-42"), Some(-42));
        assert_eq!(py_int("007"), Some(7));
        assert_eq!(py_int("1_000"), Some(1000));
        assert_eq!(py_int("\u{1c}5\u{1f}"), Some(5));
        assert_eq!(py_int("\u{a0}5\u{3000}"), Some(5));
    }

    #[test]
    fn py_int_rejects_what_python_rejects() {
        for bad in [
            "", " ", "+", "-", "1.5", "10k", "abc", "5 # five", "1__0", "_1", "1_", "+-1", "- 1",
            "0x10", "٣", "1 2",
        ] {
            assert_eq!(py_int(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn py_int_saturates_instead_of_failing() {
        let huge = "9".repeat(60);
        assert_eq!(py_int(&huge), Some(i128::MAX));
        assert_eq!(py_int(&format!("-{huge}")), Some(-i128::MAX));
    }

    #[test]
    fn py_float_cases() {
        assert_eq!(py_float("5"), Some(5.0));
        assert_eq!(py_float("5.0"), Some(5.0));
        assert_eq!(py_float(" -1.0 "), Some(-1.0));
        assert_eq!(py_float("1e1"), Some(10.0));
        assert_eq!(py_float(".5"), Some(0.5));
        for bad in ["abc", "", "inf", "-inf", "nan", "1e999", "5,0"] {
            assert_eq!(py_float(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn py_bool_only_true_is_true() {
        for yes in ["true", "True", "TRUE", "tRuE"] {
            assert!(py_bool(yes), "{yes:?}");
        }
        for no in [
            "",
            "yes",
            "1",
            "on",
            "false",
            "truee",
            "true # yes",
            "true\nx",
        ] {
            assert!(!py_bool(no), "{no:?}");
        }
    }

    #[test]
    fn py_split_drops_empty_items() {
        assert_eq!(py_split("  a  b\tc\n"), ["a", "b", "c"]);
        assert!(py_split("   ").is_empty());
    }

    #[test]
    fn one_line_escapes_line_breaks_and_controls() {
        assert_eq!(one_line("a\nb\rc\td"), "a\\nb\\rc\\td");
        assert_eq!(one_line("x\u{0}y\u{2028}"), "x\\u{0}y\\u{2028}");
        assert_eq!(one_line("plain ü"), "plain ü");
    }
}
