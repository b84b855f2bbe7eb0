//! The mailbox walk shared by `chatmail-expire` and `chatmail-fsreport`.
//!
//! Enumeration follows upstream: list `mailboxes_dir`, take the first `maxnum` entries,
//! keep the names containing `@`. Each mailbox is scanned depth-first in directory order,
//! so messages come out in the order upstream's Python sees them and verbose output
//! matches line for line.
//!
//! Unlike upstream, the walk never follows a symbolic link: a link is neither a message
//! nor an extra file and is never descended into. Dovecot never creates links in a
//! maildir, and following them is how upstream came to delete files outside the
//! mailboxes directory. File types come from `readdir`'s `d_type` (an `lstat` only where
//! the file system reports `DT_UNKNOWN`).
//!
//! A message whose name is Dovecot's (`<T>.<unique>,S=<size>...`) is not `stat`ed: its
//! size is `S` and its time the delivery time `T`. Only when that time alone would
//! expire it under [`AgeRules`] is its mtime read too, and the later of the two counts,
//! so a message is never expired earlier than upstream's mtime rule would expire it.
//! Every other file is `stat`ed, as is every message with [`ScanOptions::stat_sizes`].

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, ReadDir};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, mpsc};

use crate::Error;
use crate::quota::parse_dovecot_name;

/// One file found by the scan.
#[derive(Debug, Clone, PartialEq)]
pub struct FileStat {
    /// `<dir>/<name>` as upstream builds it; printed in verbose lines and unlinked.
    pub path: PathBuf,
    /// The time the age rules compare, in float seconds: `st_mtime` as CPython computes
    /// it for a `stat`ed file (so comparisons decide exactly as upstream); for a Dovecot
    /// name the delivery time `T`, or the later of `T` and `st_mtime` when both were read.
    pub mtime: f64,
    /// Size in bytes: the name's `,S=` (what Dovecot's quota counts; with the zlib plugin
    /// more than the compressed bytes on disk) or, without one, `st_size`.
    pub size: u64,
    /// Whether `st_mtime` went into [`FileStat::mtime`]. The age rules expire nothing
    /// without it, so a name's time alone never removes a message.
    pub mtime_read: bool,
}

impl FileStat {
    /// The file name (last path component) as bytes.
    pub fn name(&self) -> &[u8] {
        self.path
            .file_name()
            .map(OsStrExt::as_bytes)
            .unwrap_or_default()
    }

    /// The name of the directory holding the file (`cur`, `new`, `tmp` for messages).
    pub fn parent_name(&self) -> &[u8] {
        self.path
            .parent()
            .and_then(Path::file_name)
            .map(OsStrExt::as_bytes)
            .unwrap_or_default()
    }
}

/// Everything the jobs need to know about one mailbox.
#[derive(Debug, Clone, Default)]
pub struct MailboxScan {
    /// Directory entry name in `mailboxes_dir` (the address).
    pub name: OsString,
    /// `<mailboxes_dir>/<name>`.
    pub dir: PathBuf,
    /// The `password` file's mtime: Dovecot's last-login day. `None` when there is none.
    pub last_login: Option<f64>,
    /// Regular files directly inside any `cur`, `new` or `tmp` directory, in scan order.
    pub messages: Vec<FileStat>,
    /// Every other regular file (including the index directory's), largest first; equal
    /// sizes keep scan order, as upstream's repeated stable sorts leave them.
    pub extra: Vec<FileStat>,
    /// Directories that could not be read for another reason than not existing, with the
    /// error; reported, and they make the expiry of this mailbox conservative.
    pub errors: Vec<String>,
}

/// What to scan besides the maildir, and how to measure messages.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// With `tmpfs_index`, the root holding Dovecot's per-address index directories
    /// (`/dev/shm` in production, a temporary directory in tests).
    pub index_root: Option<PathBuf>,
    /// `--stat-sizes`: `stat` every message and use `st_size` and `st_mtime` as upstream
    /// does, whatever its name says.
    pub stat_sizes: bool,
    /// The expiry's cut-offs: a Dovecot-named message they would expire by its name's
    /// time is `stat`ed to confirm. `None` (fsreport, which uses no message times): names
    /// alone.
    pub age_rules: Option<AgeRules>,
}

/// The age rules' cut-offs, as far as the scan needs them to decide what to `stat`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AgeRules {
    /// Messages older than this (epoch seconds) expire.
    pub cutoff_mails: f64,
    /// Messages larger than this (bytes)...
    pub large_size: u64,
    /// ...and older than this expire (from `cur/`).
    pub cutoff_large: f64,
}

impl AgeRules {
    /// Whether a message of this time and size could expire under the rules.
    pub fn may_expire(&self, time: f64, size: u64) -> bool {
        time < self.cutoff_mails || (size > self.large_size && time < self.cutoff_large)
    }
}

/// `<dir>/<name>` by string concatenation, exactly as upstream builds its paths.
pub fn child(dir: &Path, name: &OsStr) -> PathBuf {
    let mut path = OsString::with_capacity(dir.as_os_str().len() + name.len() + 1);
    path.push(dir.as_os_str());
    path.push("/");
    path.push(name);
    PathBuf::from(path)
}

/// `st_mtime` as CPython computes it (`sec + nsec * 1e-9` in double precision).
pub fn mtime_of(meta: &fs::Metadata) -> f64 {
    meta.mtime() as f64 + meta.mtime_nsec() as f64 * 1e-9
}

fn read_dir_if_exists(dir: &Path, errors: &mut Vec<String>) -> Option<ReadDir> {
    match fs::read_dir(dir) {
        Ok(entries) => Some(entries),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(err) => {
            errors.push(format!("cannot read {}: {err}", dir.display()));
            None
        }
    }
}

/// A regular file's stat, or `None` when the entry is not a regular file (links
/// included) or vanished since it was listed.
fn regular_file(entry: &fs::DirEntry, path: PathBuf) -> Option<FileStat> {
    // DirEntry::metadata does not follow symbolic links.
    let meta = entry.metadata().ok()?;
    meta.file_type().is_file().then(|| FileStat {
        path,
        mtime: mtime_of(&meta),
        size: meta.len(),
        mtime_read: true,
    })
}

/// A message: measured from its Dovecot name where it has one (see the module
/// documentation), else by `stat`. `None` for anything but a regular file, and for a
/// file that vanished before a needed `stat`.
fn message(entry: &fs::DirEntry, path: PathBuf, options: &ScanOptions) -> Option<FileStat> {
    if options.stat_sizes {
        return regular_file(entry, path);
    }
    let named = path
        .file_name()
        .and_then(|name| parse_dovecot_name(name.as_bytes()));
    let Some((time, size)) = named else {
        return regular_file(entry, path);
    };
    // d_type, or lstat where the file system does not fill it in.
    if !entry.file_type().ok()?.is_file() {
        return None;
    }
    let time = time as f64;
    if options
        .age_rules
        .is_some_and(|rules| rules.may_expire(time, size))
    {
        let stat = regular_file(entry, path)?;
        return Some(FileStat {
            mtime: stat.mtime.max(time),
            size,
            ..stat
        });
    }
    Some(FileStat {
        path,
        mtime: time,
        size,
        mtime_read: false,
    })
}

impl MailboxScan {
    /// Scans `<root>/<name>` and, with an index root, `<index_root>/<name>`.
    pub fn scan(root: &Path, name: &OsStr, options: &ScanOptions) -> MailboxScan {
        let dir = child(root, name);
        let mut scan = MailboxScan {
            name: name.to_owned(),
            dir: dir.clone(),
            ..MailboxScan::default()
        };
        if scan.is_real_dir(&dir, true) {
            scan.scan_dir(&dir, options);
        }
        if let Some(index_root) = &options.index_root {
            let index_dir = child(index_root, name);
            if scan.is_real_dir(&index_dir, false) {
                scan.scan_dir(&index_dir, options);
            }
        }
        // One stable sort at the end orders the extra files exactly as upstream's sort
        // after every directory does: sizes descending, ties in the order they were found.
        scan.extra.sort_by_key(|file| std::cmp::Reverse(file.size));
        scan
    }

    /// Whether `dir` is a directory and not a link to one. A missing index directory is
    /// normal (a reboot empties `/dev/shm`); anything else that is not a directory is
    /// recorded as an error so expiry leaves the mailbox alone.
    fn is_real_dir(&mut self, dir: &Path, must_exist: bool) -> bool {
        match fs::symlink_metadata(dir) {
            Ok(meta) if meta.is_dir() => true,
            Ok(_) => {
                self.errors
                    .push(format!("not a directory, skipped: {}", dir.display()));
                false
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound && !must_exist => false,
            Err(err) => {
                self.errors
                    .push(format!("cannot read {}: {err}", dir.display()));
                false
            }
        }
    }

    fn scan_dir(&mut self, dir: &Path, options: &ScanOptions) {
        let Some(entries) = read_dir_if_exists(dir, &mut self.errors) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let path = child(dir, &name);
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if matches!(name.as_bytes(), b"cur" | b"new" | b"tmp") {
                if file_type.is_dir() {
                    self.scan_messages(&path, options);
                }
            } else if file_type.is_dir() {
                self.scan_dir(&path, options);
            } else if let Some(file) = regular_file(&entry, path) {
                if name.as_bytes() == b"password" {
                    self.last_login = Some(file.mtime);
                }
                self.extra.push(file);
            }
        }
    }

    fn scan_messages(&mut self, dir: &Path, options: &ScanOptions) {
        let Some(entries) = read_dir_if_exists(dir, &mut self.errors) else {
            return;
        };
        for entry in entries.flatten() {
            let path = child(dir, &entry.file_name());
            if let Some(file) = message(&entry, path, options) {
                self.messages.push(file);
            }
        }
    }
}

/// Checks that `mailboxes_dir` is a directory other than `/`. `Ok(false)` when it does
/// not exist (upstream prints `no mailboxes found at: <dir>` and processes nothing).
pub fn check_root(root: &Path) -> Result<bool, Error> {
    let canonical = match fs::canonicalize(root) {
        Ok(canonical) => canonical,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(Error::Io {
                path: root.to_owned(),
                source,
            });
        }
    };
    if canonical == Path::new("/") {
        return Err(Error::UnsafeRoot(root.to_owned()));
    }
    let meta = fs::metadata(&canonical).map_err(|source| Error::Io {
        path: root.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(Error::NotADirectory(root.to_owned()));
    }
    Ok(true)
}

/// Which directory entries of `mailboxes_dir` to look at: upstream's `[:maxnum]` slice,
/// negative values included (`-1` drops the last entry).
fn take_names(root: &Path, maxnum: Option<i64>) -> Result<NameFeed, Error> {
    let entries = fs::read_dir(root).map_err(|source| Error::Io {
        path: root.to_owned(),
        source,
    })?;
    match maxnum {
        Some(n) if n < 0 => {
            // Needs the total count first; only an operator's manual run asks for this.
            let mut names: Vec<OsString> = entries.flatten().map(|e| e.file_name()).collect();
            let keep = names.len().saturating_sub(n.unsigned_abs() as usize);
            names.truncate(keep);
            Ok(NameFeed::List(names.into_iter()))
        }
        Some(n) => Ok(NameFeed::Dir {
            entries,
            left: n as u64,
        }),
        None => Ok(NameFeed::Dir {
            entries,
            left: u64::MAX,
        }),
    }
}

/// The directory listing, streamed so memory does not grow with the number of mailboxes.
enum NameFeed {
    Dir { entries: ReadDir, left: u64 },
    List(std::vec::IntoIter<OsString>),
}

impl Iterator for NameFeed {
    type Item = OsString;

    fn next(&mut self) -> Option<OsString> {
        loop {
            let name = match self {
                NameFeed::Dir { entries, left } => {
                    if *left == 0 {
                        return None;
                    }
                    *left -= 1;
                    match entries.next()? {
                        Ok(entry) => entry.file_name(),
                        // An entry that cannot be read still counts against maxnum.
                        Err(_) => continue,
                    }
                }
                NameFeed::List(names) => names.next()?,
            };
            if name.as_bytes().contains(&b'@') {
                return Some(name);
            }
        }
    }
}

/// How many workers: the available cores, at least one. The walk is I/O-bound on
/// `getdents`/`statx` and the page cache, so one thread per core is enough.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

struct Feed {
    names: NameFeed,
    next_seq: u64,
}

/// Scans every mailbox of `root` with `threads` workers, runs `work` on each scan in the
/// worker, and hands the results to `sink` in enumeration order on the calling thread.
///
/// At most `4 × threads` mailboxes are in flight (scanned or waiting to be handed on), so
/// memory depends on the largest mailboxes, not on how many there are. `work` may delete
/// files: mailboxes are independent, so doing it in the workers parallelises the unlinks
/// too while the output stays in upstream's order.
pub fn for_each_mailbox<R, W, S>(
    root: &Path,
    maxnum: Option<i64>,
    options: &ScanOptions,
    threads: usize,
    work: W,
    mut sink: S,
) -> Result<(), Error>
where
    R: Send,
    W: Fn(MailboxScan) -> R + Sync,
    S: FnMut(R),
{
    let threads = threads.max(1);
    let window = 4 * threads as u64;
    let feed = Mutex::new(Feed {
        names: take_names(root, maxnum)?,
        next_seq: 0,
    });
    let handed_on = AtomicU64::new(0);
    let room = Condvar::new();
    let (tx, rx) = mpsc::channel::<(u64, R)>();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let tx = tx.clone();
            let (feed, handed_on, room, work) = (&feed, &handed_on, &room, &work);
            scope.spawn(move || {
                loop {
                    let (seq, name) = {
                        let mut guard = feed.lock().unwrap_or_else(|e| e.into_inner());
                        // Wait until the consumer has room: bounds memory when one big
                        // mailbox holds up the in-order hand-over.
                        while guard.next_seq >= handed_on.load(Ordering::Acquire) + window {
                            guard = room.wait(guard).unwrap_or_else(|e| e.into_inner());
                        }
                        let Some(name) = guard.names.next() else {
                            return;
                        };
                        let seq = guard.next_seq;
                        guard.next_seq += 1;
                        (seq, name)
                    };
                    let result = work(MailboxScan::scan(root, &name, options));
                    if tx.send((seq, result)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let mut pending = BTreeMap::new();
        let mut expected = 0u64;
        for (seq, result) in rx {
            pending.insert(seq, result);
            while let Some(result) = pending.remove(&expected) {
                sink(result);
                expected += 1;
                // Take the lock so a worker cannot miss the wake-up between its check
                // and its wait.
                let _guard = feed.lock().unwrap_or_else(|e| e.into_inner());
                handed_on.store(expected, Ordering::Release);
                room.notify_all();
            }
        }
    });
    Ok(())
}

/// Lists the names of a directory's entries, used by the quota trim; a missing directory
/// is empty. Directories are left out (they cannot be unlinked as messages).
pub fn list_non_dirs(dir: &Path) -> io::Result<Vec<OsString>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut names = Vec::new();
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| !t.is_dir()) {
            names.push(entry.file_name());
        }
    }
    Ok(names)
}
