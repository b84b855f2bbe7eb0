//! fsreport on generated trees: counters, the human summary and the Prometheus files.
#![allow(clippy::indexing_slicing)]

use std::fs::{self, File, FileTimes};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chatmail_fsreport::{Options, Report, collect, hsize};

const DAY: u64 = 86_400;

struct Tree {
    dir: tempfile::TempDir,
    now: u64,
}

impl Tree {
    fn new(extra_ini: &str) -> Tree {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("mail")).unwrap();
        let ini = format!(
            "[params]\nmail_domain = example.org\nmailboxes_dir = {}\n{extra_ini}",
            dir.path().join("mail").display()
        );
        fs::write(dir.path().join("chatmail.ini"), ini).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        Tree { dir, now }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn file(&self, rel: &str, size: usize, age: u64) {
        let path = self.path(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, vec![b'x'; size]).unwrap();
        let time = UNIX_EPOCH + Duration::from_secs(self.now - age);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_times(FileTimes::new().set_modified(time))
            .unwrap();
    }

    fn report(&self, options: &Options, index_root: Option<PathBuf>) -> Report {
        collect(
            &self.path("mail"),
            None,
            index_root,
            options,
            &mut Vec::new(),
        )
        .unwrap()
    }

    fn options(&self, min_login_age: i64, mdir: Option<&str>) -> Options {
        Options {
            now_micros: self.now as i64 * 1_000_000,
            min_login_age,
            mdir: mdir.map(str::to_owned),
            stat_sizes: false,
        }
    }
}

// Upstream's test: 500 bytes in cur/, 600 in new/, last login 10 days ago, min age 1.
#[test]
fn mdir_filter_like_upstream_test() {
    let tree = Tree::new("");
    tree.file("mail/a@example.org/password", 10, 10 * DAY);
    tree.file("mail/a@example.org/cur/m1", 500, DAY);
    tree.file("mail/a@example.org/new/m2", 600, DAY);
    for (mdir, bytes) in [(None, 1100), (Some("cur"), 500), (Some("new"), 600)] {
        let report = tree.report(&tree.options(1, mdir), None);
        assert_eq!(report.bytes[0], bytes, "{mdir:?}");
    }
    // A login younger than min_login_age: message sizes not bucketed, still totalled.
    let report = tree.report(&tree.options(11, None), None);
    assert_eq!(report.bytes[0], 0);
    assert_eq!(report.size_messages, 1100);
}

#[test]
fn summary_layout_is_upstreams() {
    let tree = Tree::new("");
    tree.file("mail/a@example.org/password", 10, 5 * DAY);
    tree.file("mail/a@example.org/cur/m1", 500, DAY);
    tree.file("mail/a@example.org/cur/big", 150_000, DAY);
    tree.file("mail/ci-x@example.org/password", 10, DAY);
    tree.file("mail/b@example.org/password", 10, 0);
    tree.file("mail/nologin@example.org/cur/m", 1000, 0);
    let options = Options {
        now_micros: 1_796_063_400_000_000,
        ..tree.options(0, None)
    };
    // Logins are relative to the fixed reference; make them so.
    let mut report = tree.report(&tree.options(0, None), None);
    report.active = [1, 2, 2, 2, 2, 2, 2];
    let expected = "
## Mailbox storage use analysis
Mailbox data total size:   152K
Messages total size    :   152K
Extra files :  0.03K (0.02%)

larger than  0.00K:   150K (99.34%), 2 msgs
larger than   102K:   150K (99.01%), 1 msgs
larger than   524K:  0.00K (0.00%), 0 msgs
larger than     1M:  0.00K (0.00%), 0 msgs
larger than     2M:  0.00K (0.00%), 0 msgs
larger than     5M:  0.00K (0.00%), 0 msgs
larger than    10M:  0.00K (0.00%), 0 msgs

## Login stats, from date reference 2026-11-30 18:30:00
all:      0.00K
non-ci:   0.00K
ci:       0.00K
last   1 days:  0.00K (50.00%)
last  10 days:  0.00K (100.00%)
last  30 days:  0.00K (100.00%)
last  40 days:  0.00K (100.00%)
last  80 days:  0.00K (100.00%)
last 100 days:  0.00K (100.00%)
last 150 days:  0.00K (100.00%)
";
    assert_eq!(report.summary(&options), expected);
    assert_eq!((report.all_logins, report.ci_logins), (3, 1));
    let fresh = tree.report(&tree.options(0, None), None);
    assert_eq!(fresh.active, [1, 2, 2, 2, 2, 2, 2], "b today, a 5 days ago");

    let with_age = Options {
        min_login_age: 3,
        mdir: Some("cur".into()),
        ..options.clone()
    };
    let text = report.summary(&with_age);
    assert!(
        text.contains("\n\n### Message storage for 3 days old logins\n[cur] larger than  0.00K:")
    );
    let empty = Report::default().summary(&options);
    assert!(empty.contains("Extra files :  0.00K (100.00%)\n"));
    assert!(empty.contains("last   1 days:  0.00K 100%\n"));
}

#[test]
fn index_dir_counts_as_extra_with_tmpfs_index() {
    let tree = Tree::new("");
    tree.file("mail/a@example.org/password", 10, DAY);
    tree.file("shm/a@example.org/dovecot.index", 1000, DAY);
    assert_eq!(tree.report(&tree.options(0, None), None).size_extra, 10);
    let report = tree.report(&tree.options(0, None), Some(tree.path("shm")));
    assert_eq!(report.size_extra, 1010);
}

#[test]
fn hsize_of_counts_and_sizes() {
    assert_eq!(hsize(1_000_000), "    1M");
    assert_eq!(hsize(999_999_999), "  999M");
    assert_eq!(hsize(12_340_000_000), "12.34G");
}

fn fsreport(tree: &Tree, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_chatmail-fsreport"))
        .arg(tree.path("chatmail.ini"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn textfile_and_legacy_metrics_are_written_atomically() {
    let tree = Tree::new("");
    tree.file("mail/a@example.org/password", 10, DAY);
    tree.file("mail/ci-1@example.org/password", 10, DAY);
    tree.file("mail/a@example.org/cur/m", 200_000, DAY);
    fs::create_dir(tree.path("prom")).unwrap();
    let legacy = tree.path("metrics");
    let out = fsreport(
        &tree,
        &[
            "--textfile",
            tree.path("prom").to_str().unwrap(),
            "--legacy-metrics",
            legacy.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "no summary when files are asked for");
    let prom = fs::read_to_string(tree.path("prom/fsreport.prom")).unwrap();
    assert!(prom.starts_with(
        "# HELP chatmail_storage_bytes Mailbox storage in bytes.\n\
         # TYPE chatmail_storage_bytes gauge\n\
         chatmail_storage_bytes{kind=\"messages\"} 200000\n\
         chatmail_storage_bytes{kind=\"extra\"} 20\n\
         chatmail_storage_bytes{kind=\"total\"} 200020\n"
    ));
    assert!(prom.contains("chatmail_messages_bytes{min_size=\"102400\"} 200000\n"));
    assert!(prom.contains("chatmail_messages_count{min_size=\"524288\"} 0\n"));
    assert!(prom.contains("chatmail_accounts{kind=\"user\"} 1\n"));
    assert!(prom.ends_with("chatmail_accounts_active{days=\"150\"} 1\n"));
    assert_eq!(prom.lines().count(), 5 + 2 * (2 + 7) + 5 + 2 + 7);
    assert_eq!(
        fs::read_to_string(&legacy).unwrap(),
        "# HELP total number of accounts\n# TYPE accounts gauge\naccounts 2\n\
         # HELP number of CI accounts\n# TYPE ci_accounts gauge\nci_accounts 1\n\
         # HELP number of non-CI accounts\n# TYPE nonci_accounts gauge\nnonci_accounts 1\n"
    );
    let mode = fs::metadata(tree.path("prom/fsreport.prom"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o644);
    // No temporary files left behind.
    assert_eq!(fs::read_dir(tree.path("prom")).unwrap().count(), 1);
    // A file path is used as is.
    let out = fsreport(
        &tree,
        &["--textfile", tree.path("x.prom").to_str().unwrap()],
    );
    assert!(out.status.success());
    assert!(tree.path("x.prom").exists());
    // A directory that does not exist: error, nothing left behind.
    let out = fsreport(
        &tree,
        &["--textfile", tree.path("nodir/x.prom").to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(!Path::new(&tree.path("nodir")).exists());
}

#[test]
fn summary_on_stdout_without_file_options() {
    let tree = Tree::new("");
    tree.file("mail/a@example.org/password", 10, DAY);
    let out = fsreport(&tree, &["--min-login-age", "0", "--maxnum", "5"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("\n## Mailbox storage use analysis\n"),
        "{stdout}"
    );
    let out = fsreport(&tree, &["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
}

// Message sizes from Dovecot's `,S=` (what its quota counts; compressed files are smaller
// on disk), `stat` for names without it; `--stat-sizes` reports bytes on disk as upstream.
#[test]
fn message_sizes_from_names_or_with_stat_sizes_from_disk() {
    let tree = Tree::new("");
    tree.file("mail/a@example.org/password", 10, DAY);
    let name = format!("{}.M1P1.host,S=10,S=300000,W=300100:2,S", tree.now - DAY);
    tree.file(&format!("mail/a@example.org/cur/{name}"), 10, DAY);
    tree.file("mail/a@example.org/new/foreign", 1000, DAY);
    let mut options = tree.options(0, None);
    let report = tree.report(&options, None);
    assert_eq!(report.size_messages, 301_000, "the last ,S= and a stat");
    assert_eq!(report.count[1], 1, "one message over 100 KiB");
    options.stat_sizes = true;
    let report = tree.report(&options, None);
    assert_eq!(report.size_messages, 1010);
    assert_eq!(report.count[1], 0);
    // The command line.
    for (args, bytes) in [(&[][..], 301_000), (&["--stat-sizes"][..], 1010)] {
        let prom = tree.path("x.prom");
        let out = fsreport(
            &tree,
            &[&["--textfile", prom.to_str().unwrap()][..], args].concat(),
        );
        assert!(out.status.success(), "{out:?}");
        let text = fs::read_to_string(&prom).unwrap();
        let line = format!("chatmail_storage_bytes{{kind=\"messages\"}} {bytes}\n");
        assert!(text.contains(&line), "{args:?}: {text}");
    }
}
