//! Quota expiry: trim a mailbox to a size target, oldest messages first, never touching
//! the last 24 hours (relay 1.12's `chatmail-quota-expire`, also run by the daily job).
//!
//! Sizes and delivery times come from Dovecot's maildir file names
//! (`<T>.<unique>,S=<size>...`), as Dovecot's own quota counts them; names without that
//! structure are not Dovecot's and are left alone.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::scan::{child, list_non_dirs};

/// Upstream's target for the daily trim: 70 % of the quota.
pub const QUOTA_CLEANUP_FACTOR: f64 = 0.7;

/// Messages delivered within this many seconds are never trimmed: the quota-full signal
/// must reach the owner's device.
pub const PROTECT_SECS: f64 = 86_400.0;

/// A message as the quota trim sees it. Field order is the sort order: delivery time,
/// quota size, then relative path (`cur/<name>` or `new/<name>`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QuotaEntry {
    /// Delivery time `T` from the name.
    pub time: u64,
    /// Quota size `S` from the last `,S=<digits>` in the name.
    pub size: u64,
    /// `cur/<name>` or `new/<name>`, the tie-breaker upstream sorts by.
    pub relpath: Vec<u8>,
    /// The file to unlink.
    pub path: PathBuf,
}

fn parse_digits(digits: &[u8]) -> u64 {
    // Python's int() has no upper bound; a saturated value sorts and sums the same way
    // for any name Dovecot writes.
    digits.iter().fold(0u64, |acc, d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}

/// `(T, S)` of a Dovecot maildir name, matching upstream's `.+/(\d+)\..+,S=(\d+)` applied
/// to `cur/<name>`: leading digits and a dot, then at least one character, then the last
/// `,S=<digits>` (Python's `.` does not match a newline, so one must not come before it).
pub fn parse_dovecot_name(name: &[u8]) -> Option<(u64, u64)> {
    let digits = name.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || name.get(digits) != Some(&b'.') {
        return None;
    }
    let time = parse_digits(name.get(..digits)?);
    let rest = name.get(digits + 1..)?;
    let limit = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let mut pos = rest.len();
    while pos > 0 {
        pos -= 1;
        if pos == 0 || pos > limit {
            continue;
        }
        let Some(tail) = rest.get(pos..) else {
            continue;
        };
        if let Some(after) = tail.strip_prefix(b",S=") {
            let size_digits = after.iter().take_while(|b| b.is_ascii_digit()).count();
            if size_digits > 0 {
                return Some((time, parse_digits(after.get(..size_digits)?)));
            }
        }
    }
    None
}

/// A quota entry for `<mailbox>/<sub>/<name>`, if the name is Dovecot's.
pub fn entry(mailbox: &Path, sub: &str, name: &OsStr) -> Option<QuotaEntry> {
    let (time, size) = parse_dovecot_name(name.as_bytes())?;
    let mut relpath = Vec::with_capacity(sub.len() + 1 + name.len());
    relpath.extend_from_slice(sub.as_bytes());
    relpath.push(b'/');
    relpath.extend_from_slice(name.as_bytes());
    Some(QuotaEntry {
        time,
        size,
        relpath,
        path: child(&child(mailbox, OsStr::new(sub)), name),
    })
}

/// The messages to remove so the quota sizes sum to at most `target_bytes`: oldest first,
/// stopping at the first message delivered after `protect` (epoch seconds).
pub fn plan_trim(mut entries: Vec<QuotaEntry>, target_bytes: f64, protect: f64) -> Vec<QuotaEntry> {
    let mut total: u64 = entries.iter().map(|e| e.size).fold(0, u64::saturating_add);
    entries.sort();
    let mut victims = Vec::new();
    for entry in entries {
        if total as f64 <= target_bytes || entry.time as f64 > protect {
            break;
        }
        total = total.saturating_sub(entry.size);
        victims.push(entry);
    }
    victims
}

/// Lists `<mailbox>/cur` and `<mailbox>/new` and removes what [`plan_trim`] picks
/// (a message already gone is fine). Returns how many were picked.
pub fn expire_to_target(mailbox: &Path, target_bytes: f64, protect: f64) -> io::Result<usize> {
    let mut entries = Vec::new();
    for sub in ["cur", "new"] {
        for name in list_non_dirs(&child(mailbox, OsStr::new(sub)))? {
            entries.extend(entry(mailbox, sub, &name));
        }
    }
    let victims = plan_trim(entries, target_bytes, protect);
    for victim in &victims {
        remove_file_if_exists(&victim.path)?;
    }
    Ok(victims.len())
}

/// Unlinks a file; a file that is already gone is not an error.
pub fn remove_file_if_exists(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(err) if err.kind() != io::ErrorKind::NotFound => Err(err),
        _ => Ok(()),
    }
}

/// `chatmail-quota-expire TARGET_MB MAILBOX_PATH`: trims to `target_mb` MiB; when it
/// removed anything, drops `maildirsize` so Dovecot recounts, and returns the line for
/// stderr (`quota-expire: removed <n> message(s) from <name>`, counted by mtail).
pub fn quota_expire(target_mb: i64, mailbox: &Path, now: f64) -> io::Result<Option<String>> {
    let target_bytes = (target_mb as f64) * 1_048_576.0;
    let removed = expire_to_target(mailbox, target_bytes, now - PROTECT_SECS)?;
    if removed == 0 {
        return Ok(None);
    }
    remove_file_if_exists(&child(mailbox, OsStr::new("maildirsize")))?;
    let name = mailbox
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Some(format!(
        "quota-expire: removed {removed} message(s) from {name}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_dovecot_names_like_upstream_regex() {
        assert_eq!(
            parse_dovecot_name(b"1775324677.M448978P3029757.exam,S=3235,W=3305:2,S"),
            Some((1775324677, 3235))
        );
        assert_eq!(parse_dovecot_name(b"msg_without_structure"), None);
        // the last ,S= wins
        assert_eq!(parse_dovecot_name(b"1.x,S=1,S=22:2,"), Some((1, 22)));
        // at least one character between the dot and ,S=
        assert_eq!(parse_dovecot_name(b"1.,S=5"), None);
        assert_eq!(parse_dovecot_name(b"1.a,S=5"), Some((1, 5)));
        assert_eq!(parse_dovecot_name(b"12a.x,S=5"), None);
        assert_eq!(parse_dovecot_name(b"1.x,S=,S=7x"), Some((1, 7)));
        assert_eq!(parse_dovecot_name(b"1.x,S="), None);
        // '.' does not match a newline
        assert_eq!(parse_dovecot_name(b"1.x,S=3\n,S=4"), Some((1, 3)));
        assert_eq!(parse_dovecot_name(b"1.\n,S=3"), None);
    }
}
