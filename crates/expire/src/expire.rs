//! The daily expiry: which mailboxes and files go, decided by pure functions over a
//! [`MailboxScan`], then carried out (or, in a dry run, only reported and counted).
//!
//! The rules are upstream relay 1.12's `chatmail-expire` plus the `tmpfs-index` branch's
//! index handling, with three fixes pinned by tests: a dry run deletes nothing (upstream's
//! quota trim deleted even then), a missing `/dev/shm/<addr>` does not abort the run, and
//! "now" is the real epoch time (see [`crate::clock`]).

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Instant;

use chatmail_config::Config;

use crate::Error;
use crate::clock;
use crate::quota::{self, QUOTA_CLEANUP_FACTOR, QuotaEntry};
use crate::scan::{self, AgeRules, MailboxScan, ScanOptions, child};

/// Messages larger than this (bytes) expire after `delete_large_after` days.
pub const LARGE_MESSAGE: u64 = 200_000;

/// Index files (`dovecot.index*`) larger than this (bytes) are removed; Dovecot rebuilds
/// them. Replaces the `mail_cache_max_size = 500K` setting the tmpfs-index branch dropped.
pub const LARGE_INDEX: u64 = 500 * 1024;

const DAY: f64 = 86_400.0;

/// Everything the decisions depend on, fixed once per run.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Reference time (epoch seconds), moved back by `--days`.
    pub now: f64,
    /// Accounts whose last login is older than this are removed.
    pub cutoff_inactive: f64,
    /// Messages older than this are removed.
    pub cutoff_mails: f64,
    /// Large messages in `cur/` older than this are removed.
    pub cutoff_large: f64,
    /// The daily quota trim's target: 70 % of `max_mailbox_size`, in bytes.
    pub quota_target: f64,
    /// Messages delivered after this (real clock minus 24 h, `--days` does not move it)
    /// are never trimmed.
    pub quota_protect: f64,
    /// Dry run: decide and report, delete nothing.
    pub dry: bool,
}

impl Policy {
    /// The policy of `config` at `real_now` (epoch seconds) moved back `days` days.
    pub fn new(config: &Config, real_now: f64, days: i64, dry: bool) -> Result<Policy, Error> {
        let now = real_now - DAY * days as f64;
        let mails = config.delete_mails_after_days()?;
        let large = config.delete_large_after_days()?;
        Ok(Policy {
            now,
            cutoff_inactive: now - f64::from(config.delete_inactive_users_after) * DAY,
            cutoff_mails: now - f64::from(mails) * DAY,
            cutoff_large: now - f64::from(large) * DAY,
            quota_target: (config.max_mailbox_size_mb as f64) * 1_048_576.0 * QUOTA_CLEANUP_FACTOR,
            quota_protect: real_now - quota::PROTECT_SECS,
            dry,
        })
    }

    /// The cut-offs the scan needs to know which Dovecot-named messages to `stat`.
    pub fn age_rules(&self) -> AgeRules {
        AgeRules {
            cutoff_mails: self.cutoff_mails,
            large_size: LARGE_MESSAGE,
            cutoff_large: self.cutoff_large,
        }
    }
}

/// One step of a mailbox's expiry, in the order upstream takes them.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Unreadable parts: report and leave the whole mailbox alone.
    Skip(Vec<String>),
    /// Inactive account: remove the maildir and its index directory.
    RemoveMailbox,
    /// No password file: remove the directory if it is empty (only with `--remove`).
    RemoveIfEmpty,
    /// Verbose `checking mailbox` line with the last login.
    Check(Option<f64>),
    /// Remove one file; the mtime, when known, is printed in the verbose line.
    RemoveFile {
        /// The file.
        path: PathBuf,
        /// Its mtime, printed as `%b %d`.
        mtime: Option<f64>,
    },
    /// Quota trim: unlink these silently, count them, print one verbose line.
    QuotaTrim(Vec<PathBuf>),
}

/// Whether a message sits directly in `<mailbox>/cur` or `<mailbox>/new`: the only ones
/// the quota trim lists.
fn quota_entry(scan: &MailboxScan, message: &scan::FileStat) -> Option<QuotaEntry> {
    let parent = message.path.parent()?;
    if parent.parent()? != scan.dir {
        return None;
    }
    let sub = match message.parent_name() {
        b"cur" => "cur",
        b"new" => "new",
        _ => return None,
    };
    quota::entry(&scan.dir, sub, message.path.file_name()?)
}

/// The expiry of one mailbox. The age rules only expire messages whose mtime the scan
/// read (see [`scan::FileStat::mtime_read`]); scanning with [`Policy::age_rules`] reads
/// it for every message they could expire.
pub fn plan(scan: &MailboxScan, policy: &Policy) -> Vec<Action> {
    if !scan.errors.is_empty() {
        return vec![Action::Skip(scan.errors.clone())];
    }
    let last_login = match scan.last_login {
        Some(login) if login != 0.0 && login < policy.cutoff_inactive => {
            return vec![Action::RemoveMailbox];
        }
        None => return vec![Action::RemoveIfEmpty],
        Some(login) => login,
    };
    let mut actions = vec![Action::Check((last_login != 0.0).then_some(last_login))];
    let mut changed = false;
    // In a remove run the trim lists the directories after these unlinks; in a dry run
    // nothing was unlinked, so upstream's trim saw (and counted) them again.
    let mut removed = vec![false; scan.messages.len()];
    for (message, removed) in scan.messages.iter().zip(removed.iter_mut()) {
        if !message.mtime_read {
            continue;
        }
        if message.mtime < policy.cutoff_mails {
            actions.push(Action::RemoveFile {
                path: message.path.clone(),
                mtime: Some(message.mtime),
            });
            *removed = true;
        } else if message.size > LARGE_MESSAGE && message.mtime < policy.cutoff_large {
            // Large unread mail in new/ is kept, but (as upstream) still marks the
            // mailbox changed.
            if message.parent_name() == b"cur" {
                actions.push(Action::RemoveFile {
                    path: message.path.clone(),
                    mtime: Some(message.mtime),
                });
                *removed = true;
            }
        } else {
            continue;
        }
        changed = true;
    }
    let candidates = scan
        .messages
        .iter()
        .zip(&removed)
        .filter(|(_, removed)| policy.dry || !**removed)
        .filter_map(|(m, _)| quota_entry(scan, m))
        .collect();
    let victims = quota::plan_trim(candidates, policy.quota_target, policy.quota_protect);
    if !victims.is_empty() {
        changed = true;
        actions.push(Action::QuotaTrim(
            victims.into_iter().map(|v| v.path).collect(),
        ));
    }
    if changed {
        actions.push(Action::RemoveFile {
            path: child(&scan.dir, OsStr::new("maildirsize")),
            mtime: None,
        });
    }
    for file in &scan.extra {
        if file.size > LARGE_INDEX && contains(file.name(), b"dovecot.index") {
            actions.push(Action::RemoveFile {
                path: file.path.clone(),
                mtime: None,
            });
        }
    }
    actions
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What expiring one mailbox did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Lines for stderr, each ending in a newline, in upstream's order.
    pub log: String,
    /// 1 when the mailbox was (or in a dry run would be) removed.
    pub mailboxes_removed: u64,
    /// Messages looked at (upstream's "files seen").
    pub files_seen: u64,
    /// Files removed (or that would be).
    pub files_removed: u64,
}

/// How the actions are carried out.
#[derive(Debug, Clone)]
pub struct Executor {
    /// Delete nothing, only report and count.
    pub dry: bool,
    /// Print each removal and each checked mailbox.
    pub verbose: bool,
    /// With `tmpfs_index`: where the per-address index directories live.
    pub index_root: Option<PathBuf>,
}

/// Removes a directory tree without following links; a tree already gone (a concurrent
/// run got there first) is success.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    // A concurrent run may delete entries while this one walks the tree, which makes
    // remove_dir_all fail half-way; retry until the tree is gone or the error persists.
    let mut last = None;
    for _ in 0..3 {
        match fs::remove_dir_all(path) {
            Ok(()) => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                if fs::symlink_metadata(path).is_err() {
                    return Ok(());
                }
                last = Some(err);
            }
            Err(err) => last = Some(err),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("remove_dir_all failed")))
}

impl Executor {
    /// Carries out `actions` for `scan`.
    pub fn run(&self, scan: &MailboxScan, actions: &[Action]) -> Outcome {
        let mut out = Outcome::default();
        let name = scan.name.to_string_lossy();
        for action in actions {
            match action {
                Action::Skip(errors) => {
                    for error in errors {
                        let _ = writeln!(out.log, "{error}");
                    }
                    let _ = writeln!(
                        out.log,
                        "Skipped {}: not fully readable",
                        scan.dir.display()
                    );
                }
                Action::RemoveMailbox => {
                    if self.verbose {
                        let _ = writeln!(out.log, "removing {}", scan.dir.display());
                    }
                    if !self.dry {
                        if let Err(err) = remove_tree(&scan.dir) {
                            let _ =
                                writeln!(out.log, "cannot remove {}: {err}", scan.dir.display());
                        }
                        if let Some(index_root) = &self.index_root {
                            // A reboot empties /dev/shm: a missing index directory is fine.
                            let index_dir = child(index_root, &scan.name);
                            if let Err(err) = remove_tree(&index_dir) {
                                let _ = writeln!(
                                    out.log,
                                    "cannot remove {}: {err}",
                                    index_dir.display()
                                );
                            }
                        }
                    }
                    out.mailboxes_removed += 1;
                }
                Action::RemoveIfEmpty => {
                    if !self.dry {
                        match fs::remove_dir(&scan.dir) {
                            Ok(()) => out.mailboxes_removed += 1,
                            Err(_) => {
                                let _ = writeln!(
                                    out.log,
                                    "Skipped deleting {}, doesn't have last_login but isn't empty",
                                    scan.dir.display()
                                );
                            }
                        }
                    }
                }
                Action::Check(login) => {
                    if self.verbose {
                        match login {
                            Some(login) => {
                                let _ = writeln!(
                                    out.log,
                                    "checking mailbox {} {name}",
                                    clock::month_day(*login)
                                );
                            }
                            None => {
                                let _ =
                                    writeln!(out.log, "checking mailbox (no last_login) {name}");
                            }
                        }
                    }
                    out.files_seen += scan.messages.len() as u64;
                }
                Action::RemoveFile { path, mtime } => {
                    if self.verbose {
                        match mtime {
                            Some(mtime) => {
                                let _ = writeln!(
                                    out.log,
                                    "removing {} {}",
                                    clock::month_day(*mtime),
                                    path.display()
                                );
                            }
                            None => {
                                let _ = writeln!(out.log, "removing {}", path.display());
                            }
                        }
                    }
                    if !self.dry {
                        match fs::remove_file(path) {
                            Ok(()) => {}
                            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                                let _ =
                                    writeln!(out.log, "file not found/vanished {}", path.display());
                            }
                            Err(err) => {
                                let _ =
                                    writeln!(out.log, "cannot remove {}: {err}", path.display());
                            }
                        }
                    }
                    out.files_removed += 1;
                }
                Action::QuotaTrim(victims) => {
                    if !self.dry {
                        for victim in victims {
                            if let Err(err) = quota::remove_file_if_exists(victim) {
                                let _ =
                                    writeln!(out.log, "cannot remove {}: {err}", victim.display());
                            }
                        }
                    }
                    out.files_removed += victims.len() as u64;
                    if self.verbose {
                        let _ = writeln!(
                            out.log,
                            "quota-expire: removed {} message(s) from {name}",
                            victims.len()
                        );
                    }
                }
            }
        }
        out
    }
}

/// Totals of a whole run: upstream's summary line.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// Mailboxes removed (or that would be).
    pub mailboxes_removed: u64,
    /// Mailboxes looked at.
    pub mailboxes_seen: u64,
    /// Files removed (or that would be).
    pub files_removed: u64,
    /// Messages looked at in mailboxes that were kept.
    pub files_seen: u64,
}

impl Summary {
    /// `Removed A out of B mailboxes and C out of D files in existing mailboxes in S
    /// seconds`, printed on stdout.
    pub fn line(&self, elapsed_secs: f64) -> String {
        format!(
            "Removed {} out of {} mailboxes and {} out of {} files in existing mailboxes in {:.2} seconds",
            self.mailboxes_removed,
            self.mailboxes_seen,
            self.files_removed,
            self.files_seen,
            elapsed_secs
        )
    }
}

/// A whole `chatmail-expire` run.
#[derive(Debug, Clone)]
pub struct Run {
    /// `mailboxes_dir`.
    pub root: PathBuf,
    /// `--maxnum`.
    pub maxnum: Option<i64>,
    /// Decisions.
    pub policy: Policy,
    /// Print removals and checked mailboxes.
    pub verbose: bool,
    /// With `tmpfs_index`, the index root (`/dev/shm`).
    pub index_root: Option<PathBuf>,
    /// Worker threads.
    pub threads: usize,
    /// `--stat-sizes`: measure every message with `stat`, as upstream does.
    pub stat_sizes: bool,
}

impl Run {
    /// The run `config` asks for; `index_root` is used when `tmpfs_index` is on.
    pub fn new(config: &Config, policy: Policy, verbose: bool, index_root: &Path) -> Run {
        Run {
            root: config.mailboxes_dir.clone(),
            maxnum: None,
            policy,
            verbose,
            index_root: config.tmpfs_index.then(|| index_root.to_owned()),
            threads: scan::default_threads(),
            stat_sizes: false,
        }
    }

    /// Expires every mailbox, writing per-mailbox lines to `log` in enumeration order.
    /// Returns the totals; the caller prints [`Summary::line`].
    pub fn execute(&self, log: &mut dyn io::Write) -> Result<Summary, Error> {
        let mut summary = Summary::default();
        if !scan::check_root(&self.root)? {
            let _ = writeln!(log, "no mailboxes found at: {}", self.root.display());
            return Ok(summary);
        }
        let options = ScanOptions {
            index_root: self.index_root.clone(),
            stat_sizes: self.stat_sizes,
            age_rules: Some(self.policy.age_rules()),
        };
        let executor = Executor {
            dry: self.policy.dry,
            verbose: self.verbose,
            index_root: self.index_root.clone(),
        };
        scan::for_each_mailbox(
            &self.root,
            self.maxnum,
            &options,
            self.threads,
            |scan| executor.run(&scan, &plan(&scan, &self.policy)),
            |outcome| {
                summary.mailboxes_seen += 1;
                summary.mailboxes_removed += outcome.mailboxes_removed;
                summary.files_seen += outcome.files_seen;
                summary.files_removed += outcome.files_removed;
                if !outcome.log.is_empty() {
                    let _ = log.write_all(outcome.log.as_bytes());
                }
            },
        )?;
        Ok(summary)
    }
}

/// `chatmail-expire`'s whole job: runs and returns the summary line with elapsed time.
pub fn run_and_summarize(run: &Run, log: &mut dyn io::Write) -> Result<String, Error> {
    let start = Instant::now();
    let summary = run.execute(log)?;
    Ok(summary.line(start.elapsed().as_secs_f64()))
}
