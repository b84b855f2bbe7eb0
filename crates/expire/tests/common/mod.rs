//! Builds maildir trees in temporary directories.
#![allow(dead_code, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::fs::{self, File, FileTimes};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const DAY: u64 = 86_400;

/// A temporary relay: `mail/` (mailboxes_dir), `shm/` (index root), `chatmail.ini`.
pub struct Tree {
    pub dir: tempfile::TempDir,
    /// Epoch seconds all ages are relative to.
    pub now: u64,
}

impl Tree {
    pub fn new(extra_ini: &str) -> Tree {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("mail")).unwrap();
        fs::create_dir_all(dir.path().join("shm")).unwrap();
        let ini = format!(
            "[params]\nmail_domain = example.org\nmailboxes_dir = {}\n\
             delete_mails_after = 20\ndelete_large_after = 7\n\
             delete_inactive_users_after = 90\nmax_mailbox_size = 1M\n{extra_ini}",
            dir.path().join("mail").display()
        );
        fs::write(dir.path().join("chatmail.ini"), ini).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Tree { dir, now }
    }

    pub fn ini(&self) -> PathBuf {
        self.dir.path().join("chatmail.ini")
    }

    pub fn mail(&self) -> PathBuf {
        self.dir.path().join("mail")
    }

    pub fn shm(&self) -> PathBuf {
        self.dir.path().join("shm")
    }

    /// Writes `mail/<rel>` (or any path under the temp dir when `rel` starts with `/`
    /// relative to it) with `size` bytes and an mtime `age` seconds before now.
    pub fn file(&self, rel: &str, size: usize, age: u64) -> PathBuf {
        let path = self.dir.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, vec![b'x'; size]).unwrap();
        set_mtime(&path, self.now - age);
        path
    }

    /// Like [`Tree::file`] but sparse (`set_len`): `size` bytes for `stat`, none on disk,
    /// and an mtime at `epoch`.
    pub fn sparse(&self, rel: &str, size: u64, epoch: u64) -> PathBuf {
        let path = self.dir.path().join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        File::create(&path).unwrap().set_len(size).unwrap();
        set_mtime(&path, epoch);
        path
    }

    /// Every path (files, dirs, links) under the temp dir, relative, without following links.
    pub fn listing(&self) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        walk(self.dir.path(), self.dir.path(), &mut out);
        out
    }
}

pub fn set_mtime(path: &Path, epoch: u64) {
    let time = UNIX_EPOCH + Duration::from_secs(epoch);
    File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(FileTimes::new().set_modified(time).set_accessed(time))
        .unwrap();
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        let rel = path.strip_prefix(base).unwrap().display().to_string();
        out.insert(rel);
        if entry.file_type().unwrap().is_dir() {
            walk(base, &path, out);
        }
    }
}
