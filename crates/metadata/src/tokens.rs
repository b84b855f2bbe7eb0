//! Device tokens in `<mailboxes_dir>/<addr>/metadata.json`, shared with upstream's Python:
//! the same JSON form, the same lock file and kind of lock, the same atomic rename, so both
//! daemons may run on one tree.
//!
//! The file is a JSON object; `devicetoken` maps each token to the Unix time of its most
//! recent SET. Old upstream versions wrote a JSON array of tokens instead; it is read and
//! converted to the object form on the next modification. Other top-level keys are kept.
//!
//! The async methods ([`TokenStore::add`], [`TokenStore::remove`], [`TokenStore::valid`])
//! do the file work on the calling task when the lock is free: a handful of system calls
//! on files in the page cache, cheaper than the two thread switches of a hop to the
//! blocking pool, which at one connection were most of a request's time. When another
//! holder (upstream's daemon, or another of our connections) has the lock, the work moves
//! to the blocking pool, to wait there for as long as it takes; so do writes while the
//! file system is slow (see [`crate::pace`]).
//!
//! A modification that leaves the file's bytes unchanged (a token refreshed within the
//! same second) writes nothing. Writes are not fsynced, as upstream's are not: see
//! [`write_and_rename`].
//!
//! The replaced file is kept open across the rename ([`Retired`]), so the rename only
//! unlinks it; freeing its inode and block happens when that descriptor is closed, which
//! the async forms do after handing their result back (see [`Retired`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chatmail_mailbox::Mailboxes;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde_json::{Map, Value};

use crate::MetadataError;
use crate::json::to_python_json;
use crate::pace::Pace;

/// Name of the per-user file.
pub const METADATA_FILE: &str = "metadata.json";
/// Upstream's `FileDict` lock: `<file>.lock`, an exclusive `flock` without timeout.
pub const METADATA_LOCK_FILE: &str = "metadata.json.lock";
/// Upstream writes here and renames over the file, under the lock (so one name suffices).
pub const METADATA_TMP_FILE: &str = "metadata.json.tmp";
/// The top-level key that holds the tokens.
pub const DEVICETOKEN_KEY: &str = "devicetoken";

/// A token expires this long after its last SET.
pub const TOKEN_LIFETIME_SECS: i64 = 90 * 24 * 3600;
/// Timestamps further than this in the future are invalid too (a clock that went back).
pub const TOKEN_FUTURE_SLACK_SECS: i64 = 60;

/// Whether a token set at `timestamp` is still valid at `now`: strictly inside
/// `(now - 90 days, now + 60 s)`. A timestamp that is not a number is invalid.
pub fn is_valid_timestamp(timestamp: &Value, now: i64) -> bool {
    let Some(ts) = timestamp.as_f64() else {
        return false;
    };
    ts > (now - TOKEN_LIFETIME_SECS) as f64 && ts < (now + TOKEN_FUTURE_SLACK_SECS) as f64
}

/// The token files of all users.
#[derive(Debug, Clone)]
pub struct TokenStore {
    /// Validates addresses and locates maildirs.
    mailboxes: Mailboxes,
    /// Whether writes run in the task or on the blocking pool (shared by the clones).
    pace: Arc<Pace>,
}

impl TokenStore {
    pub fn new(mailboxes: Mailboxes) -> Self {
        TokenStore {
            mailboxes,
            pace: Arc::new(Pace::new()),
        }
    }

    /// The file system's recent speed, for other writers in the same tree (the queue).
    pub fn pace(&self) -> &Pace {
        &self.pace
    }

    /// The maildir of `addr`, after checking the address is safe as a directory name.
    fn maildir(&self, addr: &str) -> Result<PathBuf, MetadataError> {
        Ok(self.mailboxes.user(addr)?.maildir().to_path_buf())
    }

    /// The path of the user's `metadata.json`.
    pub fn path(&self, addr: &str) -> Result<PathBuf, MetadataError> {
        Ok(self.maildir(addr)?.join(METADATA_FILE))
    }

    /// Adds (or refreshes) `token` for `addr` at `now`. Blocking: takes the file lock.
    pub fn add_token(&self, addr: &str, token: &str, now: i64) -> Result<(), MetadataError> {
        self.modify_tokens(addr, now, Wait::Yes, TokenChange::Insert.apply(token, now))
            .map(|_| ())
    }

    /// Removes `token` of `addr` (the notification server answered 410). Blocking.
    pub fn remove_token(&self, addr: &str, token: &str, now: i64) -> Result<(), MetadataError> {
        self.modify_tokens(addr, now, Wait::Yes, TokenChange::Delete.apply(token, now))
            .map(|_| ())
    }

    /// Runs the modification `work` (with [`Wait::Yes`]) on the blocking pool and returns
    /// its result as soon as it is known: the replaced file is closed after that, on the
    /// pool thread, while the caller goes on (replies).
    async fn modify_on_pool(
        &self,
        work: impl FnOnce(&TokenStore) -> Result<Option<(Written, Retired)>, MetadataError>
        + Send
        + 'static,
    ) -> Result<(), MetadataError> {
        let store = self.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::task::spawn_blocking(move || {
            let (result, retired) = match work(&store) {
                Ok(done) => (Ok(()), done.map(|(_, retired)| retired)),
                Err(err) => (Err(err), None),
            };
            let _ = tx.send(result);
            drop(retired);
        });
        match rx.await {
            Ok(result) => result,
            // The closure panicked before sending: the join error says so.
            Err(_) => task.await.map_err(MetadataError::from),
        }
    }

    /// The valid tokens of `addr` in file order. Reads without the lock, as upstream does;
    /// when some tokens have expired or the file is in the legacy array form, the file is
    /// rewritten under the lock. Blocking.
    pub fn valid_tokens(&self, addr: &str, now: i64) -> Result<Vec<String>, MetadataError> {
        self.valid_tokens_with(addr, now, Wait::Yes)
            .map(|valid| valid.unwrap_or_default())
    }

    /// [`TokenStore::add_token`] without blocking the runtime on the lock, nor on a slow
    /// file system (see [`Pace`]).
    pub async fn add(&self, addr: &str, token: &str, now: i64) -> Result<(), MetadataError> {
        self.change(addr, token, now, TokenChange::Insert).await
    }

    /// [`TokenStore::remove_token`] without blocking the runtime on the lock, nor on a
    /// slow file system.
    pub async fn remove(&self, addr: &str, token: &str, now: i64) -> Result<(), MetadataError> {
        self.change(addr, token, now, TokenChange::Delete).await
    }

    /// `change` of `token`: in the task when the pace allows and the lock is free, else on
    /// the blocking pool.
    async fn change(
        &self,
        addr: &str,
        token: &str,
        now: i64,
        change: TokenChange,
    ) -> Result<(), MetadataError> {
        let done = self
            .pace
            // The replaced file is closed inside, so the pace counts its cost.
            .run_in_task(|| {
                self.modify_tokens(addr, now, Wait::No, change.apply(token, now))
                    .map(|done| done.map(|(written, _retired)| written))
            });
        if let Some(done) = done
            && done?.is_some()
        {
            return Ok(());
        }
        let (addr, token) = (addr.to_owned(), token.to_owned());
        self.modify_on_pool(move |store| {
            store.modify_tokens(&addr, now, Wait::Yes, change.apply(&token, now))
        })
        .await
    }

    /// [`TokenStore::valid_tokens`] without blocking the runtime on the lock. Reading runs
    /// in the task whatever the file system's pace: it creates no file.
    pub async fn valid(&self, addr: &str, now: i64) -> Result<Vec<String>, MetadataError> {
        if let Some(valid) = self.valid_tokens_with(addr, now, Wait::No)? {
            return Ok(valid);
        }
        let (store, addr) = (self.clone(), addr.to_owned());
        tokio::task::spawn_blocking(move || store.valid_tokens(&addr, now)).await?
    }

    /// `None` only with [`Wait::No`], when the file had to be rewritten and the lock was
    /// held elsewhere.
    fn valid_tokens_with(
        &self,
        addr: &str,
        now: i64,
        wait: Wait,
    ) -> Result<Option<Vec<String>>, MetadataError> {
        let path = self.path(addr)?;
        let (data, _) = read_dict(&path);
        match data.get(DEVICETOKEN_KEY) {
            Some(Value::Object(tokens)) => {
                let valid: Vec<String> = tokens
                    .iter()
                    .filter(|(_, ts)| is_valid_timestamp(ts, now))
                    .map(|(token, _)| token.clone())
                    .collect();
                if valid.len() < tokens.len()
                    && self.modify_tokens(addr, now, wait, |_| {})?.is_none()
                {
                    return Ok(None);
                }
                Ok(Some(valid))
            }
            Some(Value::Array(_)) => {
                let mut valid = Vec::new();
                let done = self.modify_tokens(addr, now, wait, |tokens| {
                    valid = tokens.keys().cloned().collect();
                })?;
                Ok(done.map(|_| valid))
            }
            None => Ok(Some(Vec::new())),
            Some(other) => {
                tracing::warn!(
                    "ignoring {DEVICETOKEN_KEY} of type {} in {path:?}",
                    type_name(other)
                );
                Ok(Some(Vec::new()))
            }
        }
    }

    /// Upstream's `_modify_tokens`: under the lock, load, convert the legacy form, drop
    /// invalid tokens, let `change` edit the tokens, save. `None` when `wait` is
    /// [`Wait::No`] and the lock is held elsewhere (nothing was done).
    fn modify_tokens(
        &self,
        addr: &str,
        now: i64,
        wait: Wait,
        change: impl FnOnce(&mut Map<String, Value>),
    ) -> Result<Option<(Written, Retired)>, MetadataError> {
        let maildir = self.maildir(addr)?;
        modify_retiring(&maildir, wait, |data| {
            let tokens = data
                .entry(DEVICETOKEN_KEY)
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Array(list) = tokens {
                // The legacy form knows no times: every token counts as set now.
                let converted: Map<String, Value> = list
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|token| (token.to_owned(), Value::from(now)))
                    .collect();
                *tokens = Value::Object(converted);
            }
            if !tokens.is_object() {
                // Python would crash on this; starting afresh is what an operator wants.
                *tokens = Value::Object(Map::new());
            }
            if let Value::Object(tokens) = tokens {
                tokens.retain(|_, ts| is_valid_timestamp(ts, now));
                change(tokens);
            }
        })
    }
}

/// What a SET or a 410 does to a user's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenChange {
    /// Add the token, or refresh its time.
    Insert,
    /// Remove the token.
    Delete,
}

impl TokenChange {
    /// The edit of the `devicetoken` map for `token` at `now`.
    fn apply(self, token: &str, now: i64) -> impl FnOnce(&mut Map<String, Value>) + '_ {
        move |tokens| match self {
            // With preserve_order an existing key keeps its position: a refresh does not
            // reorder the tokens, as in Python's dict.
            TokenChange::Insert => {
                tokens.insert(token.to_owned(), Value::from(now));
            }
            // shift_remove keeps the order of the others, as Python's `del` does.
            TokenChange::Delete => {
                tokens.shift_remove(token);
            }
        }
    }
}

/// Whether a modification may wait for the lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Wait as long as it takes (blocking threads only).
    Yes,
    /// Give up at once when the lock is held elsewhere.
    No,
}

/// The `metadata.json` a modification replaced, still open.
///
/// While a descriptor holds it, the rename over it only unlinks it; the kernel frees its
/// inode and data block when the descriptor is closed, i.e. when this is dropped. On ext4
/// that is a truncate, and with the `discard` mount option a discard request waited for
/// on the device: a good part of a write's cost there. The async forms drop it after
/// handing their result back, so a reply does not wait for it.
#[derive(Debug, Default)]
pub struct Retired {
    _file: Option<File>,
}

/// What a modification did to `metadata.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The new content was written and renamed over the file.
    Replaced,
    /// The content was the same byte for byte: nothing was written.
    Unchanged,
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

/// Upstream's `FileDict.read`: a missing file is `{}`; anything unreadable or not a JSON
/// object is logged and treated as `{}` (and overwritten by the next modification). Also
/// returns the bytes read (`None` when there was no readable file), so a writer can tell
/// whether its new content differs.
pub fn read_dict(path: &Path) -> (Map<String, Value>, Option<Vec<u8>>) {
    let (data, bytes, _) = read_dict_open(path);
    (data, bytes)
}

/// [`read_dict`], also returning the file, still open.
fn read_dict_open(path: &Path) -> (Map<String, Value>, Option<Vec<u8>>, Retired) {
    let (bytes, file) = match read_small(path) {
        Ok(read) => read,
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            return (Map::new(), None, Retired::default());
        }
        Err(_) => {
            warn_corrupt(path);
            return (Map::new(), None, Retired::default());
        }
    };
    let file = Retired { _file: Some(file) };
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => (map, Some(bytes), file),
        _ => {
            warn_corrupt(path);
            (Map::new(), Some(bytes), file)
        }
    }
}

/// `fs::read` without its `statx` for the size: open, read until EOF. The files are a few
/// hundred bytes. The file is returned open.
fn read_small(path: &Path) -> io::Result<(Vec<u8>, File)> {
    let mut file = File::open(path)?;
    let mut bytes = Vec::with_capacity(1024);
    // Through `Take` the generic read_to_end runs, which asks for no size first.
    (&mut file).take(u64::MAX).read_to_end(&mut bytes)?;
    Ok((bytes, file))
}

fn warn_corrupt(path: &Path) {
    tracing::warn!("corrupt serialization state at: '{}'", path.display());
}

/// Upstream's `FileDict.modify` on `<maildir>/metadata.json`: takes the exclusive `flock`
/// on `metadata.json.lock` (waiting as long as it takes, as Python's `filelock` does), reads,
/// applies `change`, writes `metadata.json.tmp` and renames it over the file. The lock is
/// released when the function returns, or by the kernel if the process dies. Content equal
/// to the file's, byte for byte, is not written.
pub fn modify(
    maildir: &Path,
    change: impl FnOnce(&mut Map<String, Value>),
) -> Result<Written, MetadataError> {
    modify_with(maildir, Wait::Yes, change).map(|written| written.unwrap_or(Written::Unchanged))
}

/// [`modify`], or `None` (and nothing done) when `wait` is [`Wait::No`] and the lock is
/// held elsewhere.
pub fn modify_with(
    maildir: &Path,
    wait: Wait,
    change: impl FnOnce(&mut Map<String, Value>),
) -> Result<Option<Written>, MetadataError> {
    modify_retiring(maildir, wait, change).map(|done| done.map(|(written, _)| written))
}

/// [`modify_with`], also returning the replaced file, still open (see [`Retired`]).
fn modify_retiring(
    maildir: &Path,
    wait: Wait,
    change: impl FnOnce(&mut Map<String, Value>),
) -> Result<Option<(Written, Retired)>, MetadataError> {
    let lock_path = maildir.join(METADATA_LOCK_FILE);
    let Some(_lock) = lock_exclusive(&lock_path, wait)? else {
        return Ok(None);
    };
    let path = maildir.join(METADATA_FILE);
    let (mut data, old, retired) = read_dict_open(&path);
    change(&mut data);
    let text = to_python_json(&Value::Object(data));
    if old.as_deref() == Some(text.as_bytes()) {
        return Ok(Some((Written::Unchanged, Retired::default())));
    }
    let tmp = maildir.join(METADATA_TMP_FILE);
    write_and_rename(&tmp, &path, text.as_bytes()).map_err(|source| MetadataError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(Some((Written::Replaced, retired)))
}

/// The exclusive `flock` on `path`, or `None` when `wait` is [`Wait::No`] and another
/// open file holds it.
fn lock_exclusive(path: &Path, wait: Wait) -> Result<Option<Flock<File>>, MetadataError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|source| MetadataError::Io {
            path: path.to_owned(),
            source,
        })?;
    let arg = match wait {
        Wait::Yes => FlockArg::LockExclusive,
        Wait::No => FlockArg::LockExclusiveNonblock,
    };
    match Flock::lock(file, arg) {
        Ok(lock) => Ok(Some(lock)),
        Err((_, Errno::EWOULDBLOCK)) if wait == Wait::No => Ok(None),
        Err((_, errno)) => Err(MetadataError::Io {
            path: path.to_owned(),
            source: io::Error::from(errno),
        }),
    }
}

/// Writes `tmp` fully and renames it over `path`; readers see the old or the new file.
///
/// Not fsynced, as upstream's `FileDict` is not. A crash loses at most the writes of the
/// last few seconds; ext4 in its default mode (journal with `data=ordered`, `auto_da_alloc`)
/// writes the new data before it commits a rename over an existing file, so the file is
/// the old or the new one, never empty. A lost token costs nothing lasting: Delta Chat sets
/// its token again on every start. See docs/metadata.md.
fn write_and_rename(tmp: &Path, path: &Path, content: &[u8]) -> io::Result<()> {
    let written = (|| {
        let mut file = File::create(tmp)?;
        file.write_all(content)?;
        drop(file);
        fs::rename(tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;
    const ADDR: &str = "user@example.org";

    fn store() -> (tempfile::TempDir, TokenStore) {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(ADDR)).unwrap();
        let store = TokenStore::new(Mailboxes::new(dir.path()));
        (dir, store)
    }

    fn file(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join(ADDR).join(METADATA_FILE)
    }

    #[test]
    fn validity_window_is_strict() {
        let v = |ts: i64| is_valid_timestamp(&Value::from(ts), NOW);
        assert!(v(NOW));
        assert!(v(NOW - TOKEN_LIFETIME_SECS + 1));
        assert!(!v(NOW - TOKEN_LIFETIME_SECS));
        assert!(v(NOW + 59));
        assert!(!v(NOW + 60));
        assert!(is_valid_timestamp(&serde_json::json!(1_700_000_000.5), NOW));
        assert!(!is_valid_timestamp(&Value::from("1700000000"), NOW));
    }

    #[test]
    fn add_writes_upstreams_format() {
        let (dir, store) = store();
        store.add_token(ADDR, "01234", NOW).unwrap();
        assert_eq!(
            fs::read_to_string(file(&dir)).unwrap(),
            r#"{"devicetoken": {"01234": 1700000000}}"#
        );
        store.add_token(ADDR, "5678", NOW + 1).unwrap();
        store.add_token(ADDR, "01234", NOW + 2).unwrap();
        assert_eq!(
            fs::read_to_string(file(&dir)).unwrap(),
            r#"{"devicetoken": {"01234": 1700000002, "5678": 1700000001}}"#,
            "a refresh keeps the position"
        );
        assert_eq!(
            store.valid_tokens(ADDR, NOW + 2).unwrap(),
            ["01234", "5678"]
        );
        assert!(dir.path().join(ADDR).join(METADATA_LOCK_FILE).exists());
        assert!(!dir.path().join(ADDR).join(METADATA_TMP_FILE).exists());
    }

    #[test]
    fn other_keys_are_preserved() {
        let (dir, store) = store();
        fs::write(
            file(&dir),
            r#"{"z": [1, "é"], "devicetoken": {}, "a": 1.5}"#,
        )
        .unwrap();
        store.add_token(ADDR, "t", NOW).unwrap();
        assert_eq!(
            fs::read_to_string(file(&dir)).unwrap(),
            r#"{"z": [1, "\u00e9"], "devicetoken": {"t": 1700000000}, "a": 1.5}"#
        );
    }

    #[test]
    fn remove_keeps_the_order_of_the_others() {
        let (dir, store) = store();
        for (i, token) in ["a", "b", "c", "d"].iter().enumerate() {
            store.add_token(ADDR, token, NOW + i as i64).unwrap();
        }
        store.remove_token(ADDR, "b", NOW + 5).unwrap();
        store.remove_token(ADDR, "absent", NOW + 5).unwrap();
        assert_eq!(store.valid_tokens(ADDR, NOW + 5).unwrap(), ["a", "c", "d"]);
        assert!(
            fs::read_to_string(file(&dir))
                .unwrap()
                .starts_with(r#"{"devicetoken": {"a": "#)
        );
    }

    #[test]
    fn expired_tokens_are_not_returned_and_are_dropped_from_the_file() {
        let (dir, store) = store();
        let old = NOW - TOKEN_LIFETIME_SECS;
        fs::write(
            file(&dir),
            format!(
                r#"{{"devicetoken": {{"old": {old}, "new": {NOW}, "future": {}}}}}"#,
                NOW + 3600
            ),
        )
        .unwrap();
        assert_eq!(store.valid_tokens(ADDR, NOW).unwrap(), ["new"]);
        assert_eq!(
            fs::read_to_string(file(&dir)).unwrap(),
            format!(r#"{{"devicetoken": {{"new": {NOW}}}}}"#)
        );
    }

    /// Legacy format: `devicetoken` as a list, read and migrated to the object form.
    #[test]
    fn legacy_list_is_read_and_migrated() {
        let (dir, store) = store();
        fs::write(file(&dir), r#"{"devicetoken": ["1111", "2222"]}"#).unwrap();
        assert_eq!(store.valid_tokens(ADDR, NOW).unwrap(), ["1111", "2222"]);
        assert_eq!(
            fs::read_to_string(file(&dir)).unwrap(),
            format!(r#"{{"devicetoken": {{"1111": {NOW}, "2222": {NOW}}}}}"#)
        );
    }

    #[test]
    fn legacy_list_is_migrated_on_add() {
        let (dir, store) = store();
        fs::write(file(&dir), r#"{"devicetoken": ["1111"]}"#).unwrap();
        store.add_token(ADDR, "2222", NOW).unwrap();
        assert_eq!(
            fs::read_to_string(file(&dir)).unwrap(),
            format!(r#"{{"devicetoken": {{"1111": {NOW}, "2222": {NOW}}}}}"#)
        );
    }

    #[test]
    fn missing_and_corrupt_files_are_empty() {
        let (dir, store) = store();
        assert!(store.valid_tokens(ADDR, NOW).unwrap().is_empty());
        fs::write(file(&dir), "{not json").unwrap();
        assert!(store.valid_tokens(ADDR, NOW).unwrap().is_empty());
        store.add_token(ADDR, "t", NOW).unwrap();
        assert_eq!(
            fs::read_to_string(file(&dir)).unwrap(),
            format!(r#"{{"devicetoken": {{"t": {NOW}}}}}"#)
        );
        fs::write(file(&dir), r#"{"devicetoken": "weird"}"#).unwrap();
        assert!(store.valid_tokens(ADDR, NOW).unwrap().is_empty());
    }

    #[test]
    fn missing_maildir_is_an_error_and_bad_addresses_are_refused() {
        let (_dir, store) = store();
        assert!(store.add_token("nobody@example.org", "t", NOW).is_err());
        assert!(
            store
                .valid_tokens("nobody@example.org", NOW)
                .unwrap()
                .is_empty()
        );
        assert!(store.add_token("../x@example.org", "t", NOW).is_err());
        assert!(store.valid_tokens("a/b@example.org", NOW).is_err());
    }

    #[test]
    fn the_lock_excludes_another_holder() {
        let (dir, store) = store();
        let lock_path = dir.path().join(ADDR).join(METADATA_LOCK_FILE);
        let held = lock_exclusive(&lock_path, Wait::Yes).unwrap().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            store.add_token(ADDR, "t", NOW).unwrap();
            tx.send(()).unwrap();
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(300))
                .is_err(),
            "the writer waits for the lock"
        );
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        thread.join().unwrap();
    }

    #[test]
    fn unchanged_content_is_not_written() {
        use std::os::unix::fs::MetadataExt;
        let (dir, store) = store();
        let maildir = dir.path().join(ADDR);
        store.add_token(ADDR, "t", NOW).unwrap();
        let inode = fs::metadata(file(&dir)).unwrap().ino();
        let same = modify(&maildir, |data| {
            data.insert(DEVICETOKEN_KEY.into(), serde_json::json!({"t": NOW}));
        });
        assert_eq!(same.unwrap(), Written::Unchanged);
        assert_eq!(fs::metadata(file(&dir)).unwrap().ino(), inode);
        store.add_token(ADDR, "t", NOW).unwrap();
        assert_eq!(fs::metadata(file(&dir)).unwrap().ino(), inode);
        let changed = modify(&maildir, |data| {
            data.insert(DEVICETOKEN_KEY.into(), serde_json::json!({"t": NOW + 1}));
        });
        assert_eq!(changed.unwrap(), Written::Replaced);
        assert_ne!(fs::metadata(file(&dir)).unwrap().ino(), inode);
        // A file that is not the JSON we would write (here: not in Python's form) is
        // rewritten even though it holds the same data.
        fs::write(
            file(&dir),
            format!(r#"{{"devicetoken":{{"t":{}}}}}"#, NOW + 1),
        )
        .unwrap();
        let reformatted = modify(&maildir, |_| {});
        assert_eq!(reformatted.unwrap(), Written::Replaced);
        assert_eq!(
            fs::read_to_string(file(&dir)).unwrap(),
            format!(r#"{{"devicetoken": {{"t": {}}}}}"#, NOW + 1)
        );
    }

    #[test]
    fn without_waiting_a_held_lock_does_nothing() {
        let (dir, store) = store();
        store.add_token(ADDR, "a", NOW).unwrap();
        let lock_path = dir.path().join(ADDR).join(METADATA_LOCK_FILE);
        let held = lock_exclusive(&lock_path, Wait::Yes).unwrap().unwrap();
        assert!(lock_exclusive(&lock_path, Wait::No).unwrap().is_none());
        let done = store
            .modify_tokens(ADDR, NOW, Wait::No, TokenChange::Insert.apply("b", NOW))
            .unwrap();
        assert!(done.is_none());
        // Reading needs no lock; an expired token to drop would.
        assert_eq!(
            store.valid_tokens_with(ADDR, NOW, Wait::No).unwrap(),
            Some(vec!["a".to_owned()])
        );
        let later = NOW + TOKEN_LIFETIME_SECS;
        assert_eq!(
            store.valid_tokens_with(ADDR, later, Wait::No).unwrap(),
            None
        );
        drop(held);
        assert_eq!(
            store
                .modify_tokens(ADDR, NOW, Wait::No, TokenChange::Insert.apply("b", NOW))
                .unwrap()
                .map(|(written, _)| written),
            Some(Written::Replaced)
        );
        assert_eq!(store.valid_tokens(ADDR, NOW).unwrap(), ["a", "b"]);
    }

    /// The replaced file stays open, unlinked, until the [`Retired`] is dropped; an
    /// unchanged or new file retires nothing.
    #[test]
    fn the_replaced_file_is_retired_open() {
        use std::os::unix::fs::MetadataExt;
        let (dir, store) = store();
        let (written, retired) = store
            .modify_tokens(ADDR, NOW, Wait::Yes, TokenChange::Insert.apply("a", NOW))
            .unwrap()
            .unwrap();
        assert_eq!(written, Written::Replaced);
        assert!(retired._file.is_none(), "there was no file to replace");
        let (_, retired) = store
            .modify_tokens(ADDR, NOW, Wait::Yes, TokenChange::Insert.apply("a", NOW))
            .unwrap()
            .unwrap();
        assert!(retired._file.is_none(), "nothing was written");
        let (_, retired) = store
            .modify_tokens(ADDR, NOW, Wait::Yes, TokenChange::Insert.apply("b", NOW))
            .unwrap()
            .unwrap();
        let mut old = retired._file.expect("the replaced file");
        assert_eq!(old.metadata().unwrap().nlink(), 0, "unlinked by the rename");
        let mut content = String::new();
        std::io::Seek::rewind(&mut old).unwrap();
        old.read_to_string(&mut content).unwrap();
        assert_eq!(content, format!(r#"{{"devicetoken": {{"a": {NOW}}}}}"#));
        assert_eq!(
            fs::read_to_string(file(&dir)).unwrap(),
            format!(r#"{{"devicetoken": {{"a": {NOW}, "b": {NOW}}}}}"#)
        );
    }

    /// The async forms wait for a held lock on the blocking pool, then do their work.
    #[tokio::test]
    async fn async_forms_wait_for_a_held_lock_off_the_runtime() {
        let (dir, store) = store();
        store.add_token(ADDR, "a", NOW).unwrap();
        store.add_token(ADDR, "b", NOW + 10).unwrap();
        let lock_path = dir.path().join(ADDR).join(METADATA_LOCK_FILE);
        // "a" has expired at `later`: serving the tokens rewrites the file, under the lock.
        let later = NOW + TOKEN_LIFETIME_SECS + 5;
        let held = lock_exclusive(&lock_path, Wait::Yes).unwrap().unwrap();
        let valid = tokio::spawn({
            let store = store.clone();
            async move { store.valid(ADDR, later).await }
        });
        // Parked on the blocking pool: this single-threaded runtime still runs.
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!valid.is_finished());
        drop(held);
        assert_eq!(valid.await.unwrap().unwrap(), ["b"]);
        assert_eq!(
            fs::read_to_string(file(&dir)).unwrap(),
            format!(r#"{{"devicetoken": {{"b": {}}}}}"#, NOW + 10)
        );

        let held = lock_exclusive(&lock_path, Wait::Yes).unwrap().unwrap();
        let removed = tokio::spawn({
            let store = store.clone();
            async move { store.remove(ADDR, "b", later).await }
        });
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
        assert!(!removed.is_finished());
        drop(held);
        removed.await.unwrap().unwrap();
        assert_eq!(
            store.valid(ADDR, later).await.unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            fs::read_to_string(file(&dir)).unwrap(),
            r#"{"devicetoken": {}}"#
        );
    }
}
