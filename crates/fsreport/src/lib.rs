//! `chatmail-fsreport`: storage use and login statistics over all mailboxes, as a human
//! summary or as Prometheus text files, from the same walk as `chatmail-expire`.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chatmail_expire::clock;
use chatmail_expire::scan::{self, MailboxScan, ScanOptions};
use thiserror::Error;

/// Days of the "active within N days" buckets.
pub const LOGIN_BUCKETS: [u32; 7] = [1, 10, 30, 40, 80, 100, 150];

/// Message size thresholds (bytes): 0, 100 KiB, 512 KiB, 1, 2, 5 and 10 MiB.
pub const SIZE_THRESHOLDS: [u64; 7] = [
    0,
    100 * 1024,
    512 * 1024,
    1024 * 1024,
    2 * 1024 * 1024,
    5 * 1024 * 1024,
    10 * 1024 * 1024,
];

/// Where `--legacy-metrics` writes without a file name.
pub const DEFAULT_LEGACY_METRICS: &str = "/var/www/html/metrics";

const DAY: f64 = 86_400.0;

/// Why the report could not be made or written.
#[derive(Debug, Error)]
pub enum Error {
    /// Walking the mailboxes failed.
    #[error(transparent)]
    Scan(#[from] chatmail_expire::Error),
    /// Writing an output file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The target file.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// What to count.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Reference time in microseconds since the epoch (now − `--days`).
    pub now_micros: i64,
    /// `--min-login-age`: only sum message sizes of mailboxes whose last login is at
    /// least this many days old.
    pub min_login_age: i64,
    /// `--mdir`: only count messages whose path contains `/<mdir>/`.
    pub mdir: Option<String>,
    /// `--stat-sizes`: `stat` every message for its size as upstream does, instead of
    /// taking the `,S=` size from Dovecot's file names.
    pub stat_sizes: bool,
}

/// The counters of upstream's report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Bytes of extra (non-message) files.
    pub size_extra: u64,
    /// Bytes of messages.
    pub size_messages: u64,
    /// Mailboxes with a last login.
    pub all_logins: u64,
    /// Of those, named `ci-*`.
    pub ci_logins: u64,
    /// Non-CI mailboxes logged in within each of [`LOGIN_BUCKETS`] days.
    pub active: [u64; LOGIN_BUCKETS.len()],
    /// Message bytes at or above each of [`SIZE_THRESHOLDS`].
    pub bytes: [u64; SIZE_THRESHOLDS.len()],
    /// Message count at or above each of [`SIZE_THRESHOLDS`].
    pub count: [u64; SIZE_THRESHOLDS.len()],
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

impl Report {
    /// Adds one mailbox.
    pub fn add(&mut self, mailbox: &MailboxScan, options: &Options) {
        let now = clock::micros_to_secs(options.now_micros);
        let last_login = mailbox.last_login.filter(|&login| login != 0.0);
        if let Some(login) = last_login {
            self.all_logins += 1;
            if mailbox.name.as_bytes().starts_with(b"ci-") {
                self.ci_logins += 1;
            } else {
                for (days, active) in LOGIN_BUCKETS.iter().zip(self.active.iter_mut()) {
                    if login >= now - f64::from(*days) * DAY {
                        *active += 1;
                    }
                }
            }
            if login <= now - options.min_login_age as f64 * DAY {
                let needle = options.mdir.as_ref().map(|mdir| format!("/{mdir}/"));
                for message in &mailbox.messages {
                    if let Some(needle) = &needle {
                        if !contains(message.path.as_os_str().as_bytes(), needle.as_bytes()) {
                            continue;
                        }
                    }
                    let counted = SIZE_THRESHOLDS
                        .iter()
                        .zip(self.bytes.iter_mut().zip(self.count.iter_mut()));
                    for (threshold, (bytes, count)) in counted {
                        if message.size >= *threshold {
                            *bytes += message.size;
                            *count += 1;
                        }
                    }
                }
            }
        }
        self.size_messages += mailbox.messages.iter().map(|m| m.size).sum::<u64>();
        self.size_extra += mailbox.extra.iter().map(|m| m.size).sum::<u64>();
    }

    /// Adds another partial report (mailboxes are counted in parallel).
    pub fn merge(&mut self, other: &Report) {
        self.size_extra += other.size_extra;
        self.size_messages += other.size_messages;
        self.all_logins += other.all_logins;
        self.ci_logins += other.ci_logins;
        for (a, b) in self.active.iter_mut().zip(other.active) {
            *a += b;
        }
        for (a, b) in self.bytes.iter_mut().zip(other.bytes) {
            *a += b;
        }
        for (a, b) in self.count.iter_mut().zip(other.count) {
            *a += b;
        }
    }

    /// Upstream's human summary, byte for byte (first line empty).
    pub fn summary(&self, options: &Options) -> String {
        let mut out = String::new();
        let all = self.size_messages;
        let extra = self.size_extra;
        let _ = writeln!(out);
        let _ = writeln!(out, "## Mailbox storage use analysis");
        let _ = writeln!(out, "Mailbox data total size: {}", hsize(extra + all));
        let _ = writeln!(out, "Messages total size    : {}", hsize(all));
        let percent = if extra + all == 0 {
            100.0
        } else {
            extra as f64 / (extra + all) as f64 * 100.0
        };
        let _ = writeln!(out, "Extra files : {} ({percent:.2}%)", hsize(extra));
        let _ = writeln!(out);
        if options.min_login_age != 0 {
            let _ = writeln!(
                out,
                "### Message storage for {} days old logins",
                options.min_login_age
            );
        }
        let pref = options
            .mdir
            .as_ref()
            .map(|m| format!("[{m}] "))
            .unwrap_or_default();
        for ((threshold, bytes), count) in SIZE_THRESHOLDS.iter().zip(self.bytes).zip(self.count) {
            let percent = if all == 0 {
                0.0
            } else {
                bytes as f64 / all as f64 * 100.0
            };
            let _ = writeln!(
                out,
                "{pref}larger than {}: {} ({percent:.2}%), {count} msgs",
                hsize(*threshold),
                hsize(bytes)
            );
        }
        let users = self.all_logins - self.ci_logins;
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "## Login stats, from date reference {}",
            clock::datetime_string(options.now_micros)
        );
        let _ = writeln!(out, "all:     {}", hsize(self.all_logins));
        let _ = writeln!(out, "non-ci:  {}", hsize(users));
        let _ = writeln!(out, "ci:      {}", hsize(self.ci_logins));
        for (days, active) in LOGIN_BUCKETS.iter().zip(self.active) {
            let p = if users == 0 {
                "100%".to_owned()
            } else {
                format!("({:.2}%)", active as f64 / users as f64 * 100.0)
            };
            let _ = writeln!(out, "last {days:3} days: {} {p}", hsize(active));
        }
        out
    }

    /// The Prometheus text file for node_exporter's textfile collector.
    pub fn textfile(&self) -> String {
        let mut out = String::new();
        let lines = [
            "# HELP chatmail_storage_bytes Mailbox storage in bytes.",
            "# TYPE chatmail_storage_bytes gauge",
        ];
        for line in lines {
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(
            out,
            "chatmail_storage_bytes{{kind=\"messages\"}} {}",
            self.size_messages
        );
        let _ = writeln!(
            out,
            "chatmail_storage_bytes{{kind=\"extra\"}} {}",
            self.size_extra
        );
        let _ = writeln!(
            out,
            "chatmail_storage_bytes{{kind=\"total\"}} {}",
            self.size_extra + self.size_messages
        );
        let _ = writeln!(
            out,
            "# HELP chatmail_messages_bytes Sum of msg bytes >= threshold."
        );
        let _ = writeln!(out, "# TYPE chatmail_messages_bytes gauge");
        for (threshold, bytes) in SIZE_THRESHOLDS.iter().zip(self.bytes) {
            let _ = writeln!(
                out,
                "chatmail_messages_bytes{{min_size=\"{threshold}\"}} {bytes}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP chatmail_messages_count Number of msgs >= size threshold."
        );
        let _ = writeln!(out, "# TYPE chatmail_messages_count gauge");
        for (threshold, count) in SIZE_THRESHOLDS.iter().zip(self.count) {
            let _ = writeln!(
                out,
                "chatmail_messages_count{{min_size=\"{threshold}\"}} {count}"
            );
        }
        let _ = writeln!(out, "# HELP chatmail_accounts Number of accounts.");
        let _ = writeln!(out, "# TYPE chatmail_accounts gauge");
        let _ = writeln!(out, "chatmail_accounts{{kind=\"all\"}} {}", self.all_logins);
        let _ = writeln!(out, "chatmail_accounts{{kind=\"ci\"}} {}", self.ci_logins);
        let _ = writeln!(
            out,
            "chatmail_accounts{{kind=\"user\"}} {}",
            self.all_logins - self.ci_logins
        );
        let _ = writeln!(
            out,
            "# HELP chatmail_accounts_active Non-CI accounts active within N days."
        );
        let _ = writeln!(out, "# TYPE chatmail_accounts_active gauge");
        for (days, active) in LOGIN_BUCKETS.iter().zip(self.active) {
            let _ = writeln!(out, "chatmail_accounts_active{{days=\"{days}\"}} {active}");
        }
        out
    }

    /// The 9-line file of upstream's former `chatmail-metrics`.
    pub fn legacy_metrics(&self) -> String {
        format!(
            "# HELP total number of accounts\n# TYPE accounts gauge\naccounts {}\n\
             # HELP number of CI accounts\n# TYPE ci_accounts gauge\nci_accounts {}\n\
             # HELP number of non-CI accounts\n# TYPE nonci_accounts gauge\nnonci_accounts {}\n",
            self.all_logins,
            self.ci_logins,
            self.all_logins - self.ci_logins
        )
    }
}

/// Upstream's `HSize`: decimal K/M/G, width 5 (also applied to plain counts).
pub fn hsize(size: u64) -> String {
    if size < 10_000 {
        format!("{:5.2}K", size as f64 / 1000.0)
    } else if size < 1_000_000 {
        format!("{:5.0}K", size as f64 / 1000.0)
    } else if size < 1_000_000_000 {
        format!("{:5}M", size / 1_000_000)
    } else {
        format!("{:5.2}G", size as f64 / 1e9)
    }
}

/// Walks all mailboxes of `root` and counts them.
pub fn collect(
    root: &Path,
    maxnum: Option<i64>,
    index_root: Option<PathBuf>,
    options: &Options,
    log: &mut dyn Write,
) -> Result<Report, Error> {
    let mut report = Report::default();
    if !scan::check_root(root)? {
        let _ = writeln!(log, "no mailboxes found at: {}", root.display());
        return Ok(report);
    }
    // No age rules: the report uses message sizes, not message times.
    let scan_options = ScanOptions {
        index_root,
        stat_sizes: options.stat_sizes,
        age_rules: None,
    };
    scan::for_each_mailbox(
        root,
        maxnum,
        &scan_options,
        scan::default_threads(),
        |mailbox| {
            let mut partial = Report::default();
            partial.add(&mailbox, options);
            partial
        },
        |partial| report.merge(&partial),
    )?;
    Ok(report)
}

/// `--textfile PATH`: a directory means `PATH/fsreport.prom`.
pub fn textfile_target(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("fsreport.prom")
    } else {
        path.to_owned()
    }
}

/// Writes `content` to `path` atomically: a uniquely named `*.tmp` file in the same
/// directory (node_exporter ignores it), mode 0644, renamed over `path`; on error the
/// temporary file is removed.
pub fn write_atomic(path: &Path, content: &str) -> Result<(), Error> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let err = |source| Error::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let base = path
        .file_name()
        .unwrap_or(OsStr::new("metrics"))
        .to_string_lossy();
    let (tmp, mut file) = loop {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{base}.{}.{}.{n}.tmp",
            std::process::id(),
            clock::now_micros()
        ));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(file) => break (tmp, file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(err(e)),
        }
    };
    let written = file
        .write_all(content.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsize_matches_python() {
        assert_eq!(hsize(500), " 0.50K");
        assert_eq!(hsize(3), " 0.00K");
        assert_eq!(hsize(512_000), "  512K");
        assert_eq!(hsize(12_345_678), "   12M");
        assert_eq!(hsize(1_500_000_000), " 1.50G");
        // Python rounds exact halves to even
        assert_eq!(hsize(512_500), "  512K");
        assert_eq!(hsize(513_500), "  514K");
        assert_eq!(hsize(0), " 0.00K");
        assert_eq!(hsize(9_999), "10.00K");
        assert_eq!(hsize(1_005), " 1.00K");
    }
}
