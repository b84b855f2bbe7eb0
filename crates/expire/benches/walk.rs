//! Times `chatmail-expire` (dry run, and `--remove` on fresh copies) and
//! `chatmail-fsreport`, each by default (sizes and times from Dovecot's names) and the
//! dry runs also with `--stat-sizes` (every message `stat`ed, as upstream), on a
//! synthetic tree of N mailboxes x M messages, next to the floor
//! `find MAILBOXES -type f -printf '%s %T@\n' > /dev/null`, and prints a markdown table.
//!
//! ```sh
//! cargo bench -p chatmail-expire --bench walk                      # 10,000 x 50
//! BENCH_MAILBOXES=50000 cargo bench -p chatmail-expire --bench walk
//! ```
//!
//! Environment: `BENCH_MAILBOXES` (10000), `BENCH_MESSAGES` (50), `BENCH_RUNS` (3, the
//! median is shown), `BENCH_DIR` (a fresh directory under /tmp, removed at the end unless
//! `BENCH_KEEP=1`). Wall, user and system time and peak RSS come from GNU time
//! (`/usr/bin/time -f`), which measures the child alone.
#![allow(clippy::indexing_slicing)]

use std::fs::{self, File, FileTimes};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: u64 = 86_400;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Small deterministic generator (xorshift), so every run builds the same tree.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn touch(path: &Path, bytes: usize, mtime: u64) {
    let file = File::create(path).unwrap();
    if bytes > 0 {
        file.set_len(bytes as u64).unwrap();
    }
    let time = UNIX_EPOCH + Duration::from_secs(mtime);
    file.set_times(FileTimes::new().set_modified(time).set_accessed(time))
        .unwrap();
}

/// One mailbox in Dovecot's maildir layout: cur/new/tmp, a `.DeltaChat` folder in one of
/// four mailboxes, the password, maildirsize, index and uidlist files, and `messages`
/// empty message files named as Dovecot names them (delivery time = mtime; the `,S=`
/// sizes, 1 to 101 kB, stay under the large-message limit, so the empty files decide the
/// same way), aged 0 to 30 days (so about a third expire). One mailbox in 20 has not
/// logged in for 100 days.
fn build_mailbox(root: &Path, i: usize, messages: usize, now: u64) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
    let dir = root.join(format!("user{i:07}@example.org"));
    let deltachat = i % 4 == 0;
    let mut folders = vec![dir.clone()];
    if deltachat {
        folders.push(dir.join(".DeltaChat"));
    }
    for folder in &folders {
        for sub in ["cur", "new", "tmp"] {
            fs::create_dir_all(folder.join(sub)).unwrap();
        }
    }
    let login = if i % 20 == 0 {
        now - 100 * DAY
    } else {
        now - rng.below(10) * DAY
    };
    touch(&dir.join("password"), 106, login);
    for (name, bytes) in [
        ("maildirsize", 40),
        ("dovecot.index", 2000),
        ("dovecot.index.cache", 9000),
        ("dovecot.index.log", 5000),
        ("dovecot-uidlist", 3000),
        ("dovecot-uidvalidity", 8),
        ("dovecot-keywords", 0),
        ("subscriptions", 20),
        ("dovecot.list.index.log", 700),
    ] {
        touch(&dir.join(name), bytes, now - DAY);
    }
    if deltachat {
        touch(&dir.join(".DeltaChat/dovecot.index.log"), 800, now - DAY);
        touch(&dir.join(".DeltaChat/dovecot-uidlist"), 100, now - DAY);
        touch(&dir.join(".DeltaChat/maildirfolder"), 0, now - DAY);
    }
    for m in 0..messages {
        let age = rng.below(30 * DAY);
        let size = 1000 + rng.below(100_000);
        let folder = if deltachat && m % 2 == 1 {
            &folders[1]
        } else {
            &folders[0]
        };
        let sub = if m % 5 == 0 { "new" } else { "cur" };
        let flags = if sub == "cur" { ":2,S" } else { "" };
        let name = format!(
            "{}.M{}P{}.relay,S={size},W={}{flags}",
            now - age,
            rng.below(1_000_000),
            10_000 + i,
            size + size / 40
        );
        touch(&folder.join(sub).join(name), 0, now - age);
    }
}

/// Builds the tree with a few threads (generation is not what is measured).
fn generate(root: &Path, mailboxes: usize, messages: usize, now: u64) {
    fs::create_dir_all(root).unwrap();
    fs::create_dir_all(root.join("pending_notifications")).unwrap();
    let threads = 4;
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in (t..mailboxes).step_by(threads) {
                    build_mailbox(root, i, messages, now);
                }
            });
        }
    });
}

#[derive(Clone, Copy, Debug)]
struct Sample {
    wall: f64,
    user: f64,
    sys: f64,
    rss_kib: u64,
}

/// Runs `sh -c script` under GNU time; returns the child's figures.
fn measure(script: &str) -> Sample {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "BENCH %e %U %S %M", "sh", "-c", script])
        .output()
        .expect("/usr/bin/time (apt-get install time)");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.starts_with("BENCH "))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    Sample {
        wall: f[1].parse().unwrap(),
        user: f[2].parse().unwrap(),
        sys: f[3].parse().unwrap(),
        rss_kib: f[4].parse().unwrap(),
    }
}

fn median(mut samples: Vec<Sample>) -> Sample {
    samples.sort_by(|a, b| a.wall.total_cmp(&b.wall));
    samples[samples.len() / 2]
}

fn ini(path: &Path, mailboxes_dir: &Path) {
    fs::write(
        path,
        format!(
            "[params]\nmail_domain = example.org\nmailboxes_dir = {}\ntmpfs_index = false\n",
            mailboxes_dir.display()
        ),
    )
    .unwrap();
}

fn count(root: &Path) -> (u64, u64) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find {0} -type f | wc -l; find {0} -type d | wc -l",
            root.display()
        ))
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let mut nums = text.split_whitespace().map(|n| n.parse().unwrap());
    (nums.next().unwrap(), nums.next().unwrap())
}

/// Writes, NUL-separated, the paths a `--remove` run would delete (from the verbose dry
/// run: `removing [<Mon DD>] <path>`), for the floor-plus-unlinks row.
fn write_removal_list(expire: &str, ini: &Path, list: &Path) {
    let out = Command::new(expire).arg(ini).arg("-v").output().unwrap();
    assert!(out.status.success());
    let mut paths = Vec::new();
    for line in String::from_utf8_lossy(&out.stderr).lines() {
        let Some(rest) = line.strip_prefix("removing ") else {
            continue;
        };
        // Dated lines carry "Mon DD " before the path.
        let path = if rest.starts_with('/') {
            rest
        } else {
            rest.get(7..).unwrap_or_default()
        };
        paths.extend_from_slice(path.as_bytes());
        paths.push(0);
    }
    fs::write(list, paths).unwrap();
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing: only run the
    // benchmark when asked to.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mailboxes = env_or("BENCH_MAILBOXES", 10_000);
    let messages = env_or("BENCH_MESSAGES", 50);
    let runs = env_or("BENCH_RUNS", 3).max(1);
    let base = std::env::var("BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            std::env::temp_dir().join(format!("expire-bench-{}", std::process::id()))
        });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tree = base.join("mail");
    let expire = env!("CARGO_BIN_EXE_chatmail-expire");
    let fsreport = Path::new(expire).with_file_name("chatmail-fsreport");
    assert!(
        fsreport.exists(),
        "build it first: cargo build --release -p chatmail-fsreport"
    );
    eprintln!("generating {mailboxes} x {messages} in {}", tree.display());
    if !tree.exists() {
        generate(&tree, mailboxes, messages, now);
    }
    let (files, dirs) = count(&tree);
    let ini_path = base.join("chatmail.ini");
    ini(&ini_path, &tree);
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();

    let floor = format!(
        "find {} -type f -printf '%s %T@\\n' > /dev/null",
        tree.display()
    );
    let dry = format!("{expire} {} > /dev/null", ini_path.display());
    let report = format!("{} {} > /dev/null", fsreport.display(), ini_path.display());
    let dry_stat = format!("{expire} {} --stat-sizes > /dev/null", ini_path.display());
    let report_stat = format!(
        "{} {} --stat-sizes > /dev/null",
        fsreport.display(),
        ini_path.display()
    );
    let mut rows: Vec<(&str, Sample)> = Vec::new();
    // Warm the page cache once so every job sees the same hot cache.
    measure(&floor);
    for (label, script) in [
        ("floor: find -printf '%s %T@'", &floor),
        ("chatmail-expire (dry run)", &dry),
        ("chatmail-fsreport", &report),
        ("chatmail-expire --stat-sizes (dry run)", &dry_stat),
        ("chatmail-fsreport --stat-sizes", &report_stat),
    ] {
        let samples = (0..runs).map(|_| measure(script)).collect();
        rows.push((label, median(samples)));
    }
    let copy = base.join("copy");
    let copy_ini = base.join("copy.ini");
    ini(&copy_ini, &copy);
    let mut removes = Vec::new();
    let mut floors = Vec::new();
    let mut floor_unlinks = Vec::new();
    for _ in 0..runs {
        let _ = fs::remove_dir_all(&copy);
        let status = Command::new("cp")
            .arg("-a")
            .arg(&tree)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        // The floor on the fresh copy too: the copy's cache state is what remove sees.
        floors.push(measure(&format!(
            "find {} -type f -printf '%s %T@\\n' > /dev/null",
            copy.display()
        )));
        // The unavoidable part: the same unlinks, single-threaded, after the floor walk.
        let list = base.join("removed.list");
        write_removal_list(expire, &copy_ini, &list);
        floor_unlinks.push(measure(&format!(
            "find {} -type f -printf '%s %T@\\n' > /dev/null; xargs -0 rm -rf < {}",
            copy.display(),
            list.display()
        )));
        let _ = fs::remove_dir_all(&copy);
        let status = Command::new("cp")
            .arg("-a")
            .arg(&tree)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        removes.push(measure(&format!(
            "{expire} {} --remove > /dev/null",
            copy_ini.display()
        )));
    }
    let _ = fs::remove_dir_all(&copy);
    rows.push(("floor on the fresh copy", median(floors)));
    rows.push((
        "floor + the same unlinks (find, then xargs rm -rf)",
        median(floor_unlinks),
    ));
    rows.push(("chatmail-expire --remove (fresh copy)", median(removes)));

    println!(
        "{mailboxes} mailboxes x {messages} messages: {files} files, {dirs} directories; \
         {} cores; load average before: {}",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "(`BENCH_MAILBOXES={mailboxes} BENCH_MESSAGES={messages} BENCH_RUNS={runs} cargo bench -p chatmail-expire --bench walk`, median of {runs})"
    );
    println!();
    println!("| job | wall s | user s | sys s | peak RSS MiB | wall / floor |");
    println!("|---|---:|---:|---:|---:|---:|");
    let floor_wall = rows[0].1.wall.max(0.01);
    for (label, s) in &rows {
        println!(
            "| {label} | {:.2} | {:.2} | {:.2} | {:.1} | {:.2} |",
            s.wall,
            s.user,
            s.sys,
            s.rss_kib as f64 / 1024.0,
            s.wall / floor_wall
        );
    }
    if std::env::var("BENCH_KEEP").is_err() {
        let _ = fs::remove_dir_all(&base);
    }
}
