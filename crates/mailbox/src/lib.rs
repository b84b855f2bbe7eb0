//! The per-address directory of a chatmail relay, as every daemon and upstream's Python
//! see it on disk:
//!
//! ```text
//! <mailboxes_dir>/<localpart>@<domain>/
//!     password              {SHA512-CRYPT}$6$... (no newline); mtime = last-login day
//!     password.lock         creation lock (flock), may remain
//!     password.tmp-<n>      transient, atomic write in progress
//!     enforceE2EEincoming   empty marker: incoming cleartext is refused
//!     DISABLED              operator's marker: filtermail neither delivers to nor sends
//!                           from the address (upstream filtermail 0.6+, experimental)
//! ```
//!
//! Every name that comes from a client is validated here before it becomes a path, so no
//! caller can be tricked into touching a file outside `mailboxes_dir`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use thiserror::Error;

/// Name of the password file inside a maildir.
pub const PASSWORD_FILE: &str = "password";
/// Name of the creation lock file (upstream HEAD uses the same name and `flock`).
pub const PASSWORD_LOCK_FILE: &str = "password.lock";
/// Name of the marker that makes filtermail refuse incoming cleartext mail.
pub const ENFORCE_E2EE_FILE: &str = "enforceE2EEincoming";
/// Name of the marker an operator creates to disable an address in filtermail.
pub const DISABLED_FILE: &str = "DISABLED";

/// Longest address accepted: it becomes one directory name, and Linux file systems
/// refuse names over 255 bytes.
pub const MAX_ADDRESS_LEN: usize = 255;

const SECONDS_PER_DAY: i64 = 86_400;

/// Why an address cannot name a mailbox.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AddressError {
    #[error("address is empty")]
    Empty,
    #[error("address {0:?} has no '@'")]
    NoAt(String),
    #[error("address {0:?} contains '/'")]
    Slash(String),
    #[error("address {0:?} contains a control character")]
    ControlCharacter(String),
    #[error("address is longer than {MAX_ADDRESS_LEN} bytes")]
    TooLong,
}

/// Errors of file operations on a mailbox.
#[derive(Debug, Error)]
pub enum MailboxError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: password file is not ASCII text")]
    NotText { path: PathBuf },
    #[error("{path}: lock not acquired within {timeout:?}")]
    LockTimeout { path: PathBuf, timeout: Duration },
}

impl MailboxError {
    fn io(path: &Path, source: io::Error) -> Self {
        MailboxError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// True when the error is the file (or its directory) not existing.
    pub fn is_not_found(&self) -> bool {
        matches!(self, MailboxError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// The directory that holds one maildir per address.
#[derive(Debug, Clone)]
pub struct Mailboxes {
    root: PathBuf,
}

impl Mailboxes {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Mailboxes { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The mailbox of `addr`, after checking that the address is safe as a directory name.
    pub fn user(&self, addr: &str) -> Result<User, AddressError> {
        validate_address(addr)?;
        Ok(User {
            addr: addr.to_owned(),
            maildir: self.root.join(addr),
        })
    }

    /// Names of the entries of `mailboxes_dir` that look like addresses (contain `@`), in
    /// directory order, streamed so a million accounts never sit in memory. A missing
    /// `mailboxes_dir` has no accounts.
    pub fn addresses(&self) -> Result<impl Iterator<Item = String> + use<>, MailboxError> {
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => Some(entries),
            Err(err) if err.kind() == io::ErrorKind::NotFound => None,
            Err(err) => return Err(MailboxError::io(&self.root, err)),
        };
        Ok(entries.into_iter().flatten().filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            (name.contains('@') && validate_address(&name).is_ok()).then_some(name)
        }))
    }
}

/// Checks what upstream's `get_user` checks (non-empty, has `@`, no `/`) and what it
/// leaves to chance: control characters (NUL included) and overlong names.
pub fn validate_address(addr: &str) -> Result<(), AddressError> {
    if addr.is_empty() {
        return Err(AddressError::Empty);
    }
    if addr.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::TooLong);
    }
    if addr.contains('/') {
        return Err(AddressError::Slash(addr.to_owned()));
    }
    if addr.chars().any(char::is_control) {
        return Err(AddressError::ControlCharacter(addr.to_owned()));
    }
    if !addr.contains('@') {
        return Err(AddressError::NoAt(addr.to_owned()));
    }
    Ok(())
}

/// What Dovecot's userdb needs to know of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub addr: String,
    pub home: String,
    pub uid: String,
    pub gid: String,
    /// The password file's content, unmodified (a hash with its `{SCHEME}` prefix).
    pub password: String,
}

/// Owner of every mailbox, as Dovecot's userdb reports it.
pub const VMAIL_USER: &str = "vmail";

/// One address's mailbox. Built only through [`Mailboxes::user`], so the address is valid.
#[derive(Debug, Clone)]
pub struct User {
    addr: String,
    maildir: PathBuf,
}

/// Result of [`User::set_last_login`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LastLoginUpdate {
    /// The password file's times were set to this day (seconds since the epoch).
    Updated(i64),
    /// The file already carried that day; nothing was written.
    Unchanged(i64),
}

impl User {
    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub fn maildir(&self) -> &Path {
        &self.maildir
    }

    pub fn password_path(&self) -> PathBuf {
        self.maildir.join(PASSWORD_FILE)
    }

    pub fn lock_path(&self) -> PathBuf {
        self.maildir.join(PASSWORD_LOCK_FILE)
    }

    pub fn enforce_e2ee_path(&self) -> PathBuf {
        self.maildir.join(ENFORCE_E2EE_FILE)
    }

    pub fn disabled_path(&self) -> PathBuf {
        self.maildir.join(DISABLED_FILE)
    }

    /// The stored password hash: `None` when the file is missing or empty (an empty file is
    /// logged, as upstream does, because it means a broken account).
    pub fn password(&self) -> Result<Option<String>, MailboxError> {
        let path = self.password_path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err)
                if err.kind() == io::ErrorKind::NotFound
                    || err.kind() == io::ErrorKind::NotADirectory =>
            {
                return Ok(None);
            }
            Err(err) => return Err(MailboxError::io(&path, err)),
        };
        if bytes.is_empty() {
            tracing::error!("password is empty for: {}", self.addr);
            return Ok(None);
        }
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| MailboxError::NotText { path })
    }

    /// The userdb record, or `None` when the account does not exist.
    pub fn record(&self) -> Result<Option<UserRecord>, MailboxError> {
        Ok(self.password()?.map(|password| UserRecord {
            addr: self.addr.clone(),
            home: self.maildir.to_string_lossy().into_owned(),
            uid: VMAIL_USER.to_owned(),
            gid: VMAIL_USER.to_owned(),
            password,
        }))
    }

    /// Stores a password hash: creates the maildir, replaces the password file atomically,
    /// then creates the `enforceE2EEincoming` marker, as upstream does for new accounts.
    pub fn set_password(&self, hash: &str) -> Result<(), MailboxError> {
        fs::create_dir_all(&self.maildir).map_err(|err| MailboxError::io(&self.maildir, err))?;
        let path = self.password_path();
        if let Err(err) = write_atomic(&path, hash.as_bytes()) {
            if err.kind() == io::ErrorKind::PermissionDenied {
                tracing::error!("could not write password for: {}", self.addr);
            }
            return Err(MailboxError::io(&path, err));
        }
        let marker = self.enforce_e2ee_path();
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&marker)
            .map_err(|err| MailboxError::io(&marker, err))?;
        Ok(())
    }

    /// True unless the account refuses incoming cleartext mail.
    pub fn is_incoming_cleartext_ok(&self) -> bool {
        !self.enforce_e2ee_path().exists()
    }

    /// True when the operator disabled the address (a `DISABLED` file in its maildir).
    pub fn is_disabled(&self) -> bool {
        self.disabled_path().exists()
    }

    /// Takes the exclusive creation lock, waiting at most `timeout`. Upstream's Python
    /// (HEAD) takes the same `flock` on the same file, so both can create accounts in one
    /// directory at once. The maildir is created if needed, as upstream's lock helper does.
    pub fn lock_for_creation(&self, timeout: Duration) -> Result<CreationLock, MailboxError> {
        fs::create_dir_all(&self.maildir).map_err(|err| MailboxError::io(&self.maildir, err))?;
        let path = self.lock_path();
        let deadline = Instant::now() + timeout;
        let mut file = open_lock_file(&path)?;
        loop {
            match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(CreationLock { _lock: lock }),
                Err((returned, nix::errno::Errno::EWOULDBLOCK)) => {
                    if Instant::now() >= deadline {
                        return Err(MailboxError::LockTimeout { path, timeout });
                    }
                    file = returned;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((_, errno)) => return Err(MailboxError::io(&path, errno.into())),
            }
        }
    }

    /// Records a login at `timestamp` (seconds) with day granularity: the password file's
    /// atime and mtime become 00:00 UTC of that day. The file is touched at most once a day.
    pub fn set_last_login(&self, timestamp: i64) -> Result<LastLoginUpdate, MailboxError> {
        let path = self.password_path();
        let meta = fs::metadata(&path).map_err(|err| MailboxError::io(&path, err))?;
        let day = timestamp.div_euclid(SECONDS_PER_DAY) * SECONDS_PER_DAY;
        if meta.mtime() == day {
            return Ok(LastLoginUpdate::Unchanged(day));
        }
        let time = TimeSpec::new(day, 0);
        utimensat(
            nix::fcntl::AT_FDCWD,
            &path,
            &time,
            &time,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|errno| MailboxError::io(&path, errno.into()))?;
        Ok(LastLoginUpdate::Updated(day))
    }

    /// The last-login day (the password file's mtime), or `None` without a password file.
    pub fn last_login(&self) -> Result<Option<i64>, MailboxError> {
        let path = self.password_path();
        match fs::metadata(&path) {
            Ok(meta) => Ok(Some(meta.mtime())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(MailboxError::io(&path, err)),
        }
    }
}

fn open_lock_file(path: &Path) -> Result<File, MailboxError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|err| MailboxError::io(path, err))
}

/// Holds the creation lock of one address until dropped.
#[derive(Debug)]
pub struct CreationLock {
    _lock: Flock<File>,
}

/// Replaces `path` with `content` atomically: readers see the old file or the whole new
/// one, never a part. The content goes to `<name>.tmp-<n>` (upstream's naming, `n` random
/// in 0..10^7) in the same directory, is synced, then renamed over `path`. On any error
/// the temporary file is removed, so a full disk leaves the old file and no debris.
pub fn write_atomic(path: &Path, content: &[u8]) -> io::Result<()> {
    write_atomic_with_mode(path, content, 0o666)
}

/// [`write_atomic`] with the new file created with `mode` (still reduced by the umask),
/// so that e.g. a private file is never readable by others, not even for a moment.
pub fn write_atomic_with_mode(path: &Path, content: &[u8], mode: u32) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?
        .to_string_lossy()
        .into_owned();
    let mut attempts = 0;
    let (tmp, mut file) = loop {
        let suffix: u32 = rand::random_range(0..=10_000_000);
        let tmp = path.with_file_name(format!("{name}.tmp-{suffix}"));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(file) => break (tmp, file),
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists && attempts < 16 => {
                attempts += 1;
            }
            Err(err) => return Err(err),
        }
    };
    let written = file
        .write_all(content)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(err) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mailboxes() -> (tempfile::TempDir, Mailboxes) {
        let dir = tempfile::tempdir().unwrap();
        let boxes = Mailboxes::new(dir.path().join("mail"));
        (dir, boxes)
    }

    #[test]
    fn hostile_addresses_are_refused() {
        let (_dir, boxes) = mailboxes();
        assert_eq!(boxes.user("").unwrap_err(), AddressError::Empty);
        assert!(matches!(boxes.user("nobody"), Err(AddressError::NoAt(_))));
        assert!(matches!(boxes.user("../x@y"), Err(AddressError::Slash(_))));
        assert!(matches!(boxes.user("a/b@y"), Err(AddressError::Slash(_))));
        assert!(matches!(
            boxes.user("a\0b@y"),
            Err(AddressError::ControlCharacter(_))
        ));
        assert!(matches!(
            boxes.user("a\nb@y"),
            Err(AddressError::ControlCharacter(_))
        ));
        let long = format!("{}@x", "a".repeat(300));
        assert_eq!(boxes.user(&long).unwrap_err(), AddressError::TooLong);
        // Dots alone cannot escape: without '/', the name is one entry inside the root.
        let dots = boxes.user("..@..").unwrap();
        assert_eq!(dots.maildir().parent(), Some(boxes.root()));
    }

    #[test]
    fn fresh_user_has_no_record_and_empty_password_is_none() {
        let (_dir, boxes) = mailboxes();
        let user = boxes.user("someone@example.org").unwrap();
        assert_eq!(user.record().unwrap(), None);
        fs::create_dir_all(user.maildir()).unwrap();
        fs::write(user.password_path(), "").unwrap();
        assert_eq!(user.record().unwrap(), None);
    }

    #[test]
    fn disabled_is_the_marker_file() {
        let (_dir, boxes) = mailboxes();
        let user = boxes.user("someone@example.org").unwrap();
        assert!(!user.is_disabled());
        user.set_password("{SHA512-CRYPT}$6$abc$def").unwrap();
        assert!(!user.is_disabled(), "accounts are not created disabled");
        fs::write(user.disabled_path(), "").unwrap();
        assert!(user.is_disabled());
        assert_eq!(
            user.disabled_path(),
            user.maildir().join("DISABLED"),
            "the name upstream's filtermail looks for"
        );
    }

    #[test]
    fn set_password_writes_verbatim_and_marks_e2ee() {
        let (_dir, boxes) = mailboxes();
        let user = boxes.user("someone@example.org").unwrap();
        assert!(user.is_incoming_cleartext_ok());
        user.set_password("{SHA512-CRYPT}$6$abc$def").unwrap();
        assert_eq!(
            fs::read(user.password_path()).unwrap(),
            b"{SHA512-CRYPT}$6$abc$def"
        );
        assert!(!user.is_incoming_cleartext_ok());
        let record = user.record().unwrap().unwrap();
        assert_eq!(record.addr, "someone@example.org");
        assert_eq!(record.home, user.maildir().to_string_lossy());
        assert_eq!(record.uid, "vmail");
        assert_eq!(record.gid, "vmail");
        assert_eq!(record.password, "{SHA512-CRYPT}$6$abc$def");
        // Only the password, the marker: no temp file left behind.
        let mut names: Vec<_> = fs::read_dir(user.maildir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["enforceE2EEincoming", "password"]);
    }

    #[test]
    fn last_login_has_day_granularity() {
        let (_dir, boxes) = mailboxes();
        let user = boxes.user("someone@example.org").unwrap();
        assert!(user.set_last_login(100_000).unwrap_err().is_not_found());
        assert_eq!(user.last_login().unwrap(), None);
        user.set_password("{PLAIN}x").unwrap();
        assert_eq!(
            user.set_last_login(100_000).unwrap(),
            LastLoginUpdate::Updated(86_400)
        );
        assert_eq!(user.last_login().unwrap(), Some(86_400));
        assert_eq!(
            user.set_last_login(200_000).unwrap(),
            LastLoginUpdate::Updated(172_800)
        );
        assert_eq!(user.last_login().unwrap(), Some(172_800));
        assert_eq!(
            user.set_last_login(345_600).unwrap(),
            LastLoginUpdate::Updated(345_600)
        );
        for ts in 345_600..345_610 {
            assert_eq!(
                user.set_last_login(ts).unwrap(),
                LastLoginUpdate::Unchanged(345_600)
            );
        }
        let meta = fs::metadata(user.password_path()).unwrap();
        assert_eq!(meta.atime(), 345_600);
    }

    #[test]
    fn concurrent_atomic_writers_leave_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        std::thread::scope(|scope| {
            for i in 0..30 {
                let path = &path;
                scope.spawn(move || write_atomic(path, format!("writer {i}").as_bytes()).unwrap());
            }
        });
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
        assert!(fs::read_to_string(&path).unwrap().starts_with("writer "));
    }

    #[test]
    fn failed_atomic_write_keeps_the_old_file_and_no_debris() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        fs::write(&path, "old").unwrap();
        // Renaming a file over a non-empty directory fails after the temp file is written.
        let blocker = dir.path().join("blocker");
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("inside"), "x").unwrap();
        assert!(write_atomic(&blocker, b"new").is_err());
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["blocker", "data"]);
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
    }

    #[test]
    fn creation_lock_excludes_and_times_out() {
        let (_dir, boxes) = mailboxes();
        let user = boxes.user("someone@example.org").unwrap();
        let held = user.lock_for_creation(Duration::from_secs(1)).unwrap();
        let err = user
            .lock_for_creation(Duration::from_millis(50))
            .unwrap_err();
        assert!(matches!(err, MailboxError::LockTimeout { .. }));
        drop(held);
        user.lock_for_creation(Duration::from_millis(50)).unwrap();
        assert!(
            user.lock_path().exists(),
            "the lock file may remain, as upstream's"
        );
    }

    #[test]
    fn addresses_lists_only_address_like_entries() {
        let (_dir, boxes) = mailboxes();
        assert_eq!(boxes.addresses().unwrap().count(), 0, "missing root");
        for name in ["a@x", "b@x", "pending_notifications", "notanaddress"] {
            fs::create_dir_all(boxes.root().join(name)).unwrap();
        }
        let mut found: Vec<_> = boxes.addresses().unwrap().collect();
        found.sort();
        assert_eq!(found, ["a@x", "b@x"]);
    }
}
