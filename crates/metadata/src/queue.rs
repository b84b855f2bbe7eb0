//! The persistent notification queue in `<mailboxes_dir>/pending_notifications/`, in
//! upstream's file format so either implementation delivers what the other queued.
//!
//! One file per (message, token): named by a random UUID4 as 32 lowercase hex digits,
//! content `<addr>\n<start>\n<token>` without a trailing newline, where `start` is the Unix
//! time of the first attempt (the 5-hour deadline counts from it). Files are written to
//! `<name>.tmp` and renamed, so a reader never sees half an item.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Name of the queue directory inside `mailboxes_dir`.
pub const QUEUE_DIR: &str = "pending_notifications";

/// One queued notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueItem {
    /// The file that keeps the item across restarts; deleted once the item is done.
    pub path: PathBuf,
    /// Whose token it is: a 410 removes the token from this user's `metadata.json`.
    pub addr: String,
    /// Unix time of the first attempt; the deadline counts from here.
    pub start: i64,
    /// The opaque token, POSTed as the body.
    pub token: String,
}

/// `<addr>\n<start>\n<token>`
pub fn encode(addr: &str, start: i64, token: &str) -> String {
    format!("{addr}\n{start}\n{token}")
}

/// Parses a file's content as upstream does: split at the first two LFs; the middle part is
/// an integer (Python's `int()` allows surrounding blanks). `None` for anything else,
/// including invalid UTF-8.
pub fn decode(content: &[u8]) -> Option<(String, i64, String)> {
    let text = std::str::from_utf8(content).ok()?;
    let mut parts = text.splitn(3, '\n');
    let addr = parts.next()?;
    let start = parts.next()?.trim().replace('_', "").parse().ok()?;
    let token = parts.next()?;
    Some((addr.to_owned(), start, token.to_owned()))
}

/// A random UUID4 as upstream's `uuid4().hex`.
pub fn new_item_name() -> String {
    let mut bytes: [u8; 16] = rand::random();
    if let Some(b) = bytes.get_mut(6) {
        *b = (*b & 0x0f) | 0x40;
    }
    if let Some(b) = bytes.get_mut(8) {
        *b = (*b & 0x3f) | 0x80;
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl QueueItem {
    /// Writes a new item into `dir` (`.tmp`, then rename). Blocking.
    pub fn create(dir: &Path, addr: &str, start: i64, token: &str) -> io::Result<QueueItem> {
        let name = new_item_name();
        let path = dir.join(&name);
        let tmp = dir.join(format!("{name}.tmp"));
        let written =
            fs::write(&tmp, encode(addr, start, token)).and_then(|()| fs::rename(&tmp, &path));
        if let Err(err) = written {
            let _ = fs::remove_file(&tmp);
            return Err(err);
        }
        Ok(QueueItem {
            path,
            addr: addr.to_owned(),
            start,
            token: token.to_owned(),
        })
    }

    /// Deletes the file; an already missing file is fine (the other implementation, or an
    /// earlier attempt, may have removed it).
    pub fn delete(&self) {
        match fs::remove_file(&self.path) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => tracing::error!("cannot delete queue item {}: {err}", self.path.display()),
        }
    }
}

/// Reads every item of `dir` for the restart, oldest `start` first. `.tmp` files and files
/// that are not items are removed with a warning, never a crash; entries that cannot be
/// read at all (a directory, no permission) are left alone with a warning. Blocking.
pub fn load_all(dir: &Path) -> io::Result<Vec<QueueItem>> {
    let mut items = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = match entry {
            Ok(entry) => entry,
            Err(err) => {
                tracing::warn!("cannot list {}: {err}", dir.display());
                continue;
            }
        };
        let path = entry.path();
        if entry.file_name().to_string_lossy().ends_with(".tmp") {
            remove_spurious(&path);
            continue;
        }
        let content = match fs::read(&path) {
            Ok(content) => content,
            Err(err) => {
                tracing::warn!("cannot read queue item {}: {err}", path.display());
                continue;
            }
        };
        match decode(&content) {
            Some((addr, start, token)) => items.push(QueueItem {
                path,
                addr,
                start,
                token,
            }),
            None => remove_spurious(&path),
        }
    }
    items.sort_by_key(|item| item.start);
    Ok(items)
}

fn remove_spurious(path: &Path) {
    tracing::warn!("removing spurious queue item: {}", path.display());
    if let Err(err) = fs::remove_file(path) {
        tracing::error!("cannot remove {}: {err}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_round_trips() {
        assert_eq!(
            encode("a@x.org", 1700000000, "tok"),
            "a@x.org\n1700000000\ntok"
        );
        assert_eq!(
            decode(b"a@x.org\n1700000000\ntok"),
            Some(("a@x.org".into(), 1_700_000_000, "tok".into()))
        );
        // The token is everything after the second LF, LFs included.
        assert_eq!(
            decode(b"a@x.org\n 17 \ntok\nen\n"),
            Some(("a@x.org".into(), 17, "tok\nen\n".into()))
        );
        assert_eq!(
            decode(b"a@x.org\n17\n"),
            Some(("a@x.org".into(), 17, String::new()))
        );
        assert_eq!(decode(b"a@x.org\n17"), None);
        assert_eq!(decode(b"a@x.org\nsoon\ntok"), None);
        assert_eq!(decode(b"a@x.org\n17\n\xff"), None);
        assert_eq!(decode(b""), None);
    }

    #[test]
    fn names_are_uuid4_hex() {
        let name = new_item_name();
        assert_eq!(name.len(), 32);
        assert!(
            name.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(name.as_bytes()[12], b'4');
        assert_ne!(new_item_name(), name);
    }

    #[test]
    fn create_writes_upstreams_format_and_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let item = QueueItem::create(dir.path(), "a@x.org", 5, "tok").unwrap();
        assert_eq!(fs::read_to_string(&item.path).unwrap(), "a@x.org\n5\ntok");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
        item.delete();
        item.delete();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn load_all_removes_debris_and_sorts_by_start() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join("aaaa"), "b@x.org\n20\nt2").unwrap();
        fs::write(d.join("bbbb"), "a@x.org\n10\nt1").unwrap();
        fs::write(d.join("cccc.tmp"), "a@x.org\n10\nt1").unwrap();
        fs::write(d.join("dddd"), "garbage").unwrap();
        fs::write(d.join("eeee"), b"a@x.org\n1\n\xff\xfe").unwrap();
        fs::create_dir(d.join("subdir")).unwrap();
        let items = load_all(d).unwrap();
        let tokens: Vec<&str> = items.iter().map(|i| i.token.as_str()).collect();
        assert_eq!(tokens, ["t1", "t2"]);
        let mut left: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["aaaa", "bbbb", "subdir"]);
    }
}
