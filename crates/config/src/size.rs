//! Size strings such as `500M` or `2G`, as used by `max_mailbox_size`,
//! `min_available_memory` and `min_free_disk_space`.

use crate::values::{one_line, py_int, py_strip};

/// A string that is not a size in upstream's format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size '{}', expected {EXPECTED_SIZE}", one_line(.input))]
pub struct SizeError {
    /// The string as given.
    pub input: String,
}

/// How a valid size looks, for error messages.
pub(crate) const EXPECTED_SIZE: &str =
    "a whole number of MiB with optional suffix M or G (like 500M or 2G)";

/// Parses a size into a whole number of MiB, following upstream's `parse_size_mb`.
///
/// Blanks around the value are ignored, case does not matter, one trailing `B` is dropped,
/// then `G` multiplies by 1024 and `M` or no suffix means MiB. Upstream quirks that are kept
/// for compatibility: `100B` is 100 MiB, and negative numbers are accepted. `K`, `T`,
/// decimals and the empty string are errors.
pub fn parse_size_mb(input: &str) -> Result<i64, SizeError> {
    let error = || SizeError {
        input: input.to_owned(),
    };
    let upper = py_strip(input).to_uppercase();
    let s = upper.strip_suffix('B').unwrap_or(&upper);
    let (number, factor) = if let Some(number) = s.strip_suffix('G') {
        (number, 1024)
    } else if let Some(number) = s.strip_suffix('M') {
        (number, 1)
    } else {
        (s, 1)
    };
    let mb = py_int(number)
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(error)?;
    i64::try_from(mb).map_err(|_| error())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_from_upstream_tests() {
        assert_eq!(parse_size_mb("500M"), Ok(500));
        assert_eq!(parse_size_mb("2G"), Ok(2048));
        assert_eq!(parse_size_mb("  1g  "), Ok(1024));
        assert_eq!(parse_size_mb("100MB"), Ok(100));
        assert_eq!(parse_size_mb("256"), Ok(256));
    }

    #[test]
    fn kept_quirks() {
        assert_eq!(parse_size_mb("100B"), Ok(100));
        assert_eq!(parse_size_mb("100b"), Ok(100));
        assert_eq!(parse_size_mb("-1G"), Ok(-1024));
        assert_eq!(parse_size_mb("+5m"), Ok(5));
        assert_eq!(parse_size_mb("2gb"), Ok(2048));
        // Python's int() strips again, so blanks before the suffix are fine.
        assert_eq!(parse_size_mb("1 G"), Ok(1024));
    }

    #[test]
    fn unsupported_forms_are_errors() {
        for bad in [
            "",
            "  ",
            "B",
            "G",
            "MB",
            "1K",
            "1KB",
            "1T",
            "1.5G",
            "0.5",
            "abc",
            "1BB",
            "1GM",
            "500M # default",
        ] {
            assert_eq!(
                parse_size_mb(bad),
                Err(SizeError {
                    input: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn overflow_is_an_error_not_a_panic() {
        assert!(parse_size_mb("9223372036854775807G").is_err());
        assert!(parse_size_mb(&"9".repeat(100)).is_err());
        assert_eq!(
            parse_size_mb("9223372036854775807"),
            Ok(9_223_372_036_854_775_807)
        );
    }

    #[test]
    fn error_message_names_value_and_form() {
        let e = parse_size_mb("1.5G").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid size '1.5G', expected a whole number of MiB with optional suffix M or G (like 500M or 2G)"
        );
    }
}
