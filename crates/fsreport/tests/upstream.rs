//! Differential test against upstream's Python `chatmail-fsreport` (relay 1.12), run only
//! when `CHATMAILD_UPSTREAM_SRC` names a directory holding upstream's `chatmaild/`
//! package (e.g. a chatmail/relay checkout's `chatmaild/src`), with `python3` installed:
//!
//! ```sh
//! CHATMAILD_UPSTREAM_SRC=~/relay/chatmaild/src cargo test -p chatmail-fsreport --test upstream
//! ```
//!
//! One random tree, both report on it; the Prometheus text files and the summaries (the
//! date-reference line aside) must be identical. By default on a tree whose Dovecot names
//! carry the files' sizes, with `--stat-sizes` on one whose names do not (compressed
//! messages).
#![allow(clippy::indexing_slicing)]

use std::fs::{self, File, FileTimes};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const DAY: u64 = 86_400;

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A sparse file of `size` bytes with mtime `epoch`.
fn file(path: &Path, size: u64, epoch: u64) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    let file = File::create(path).unwrap();
    file.set_len(size).unwrap();
    let time = UNIX_EPOCH + Duration::from_secs(epoch);
    file.set_times(FileTimes::new().set_modified(time).set_accessed(time))
        .unwrap();
}

/// With `consistent`, names carry the file's size and a delivery time up to 2 s before its
/// mtime; without, files are a fifth of the size in the name (compressed).
fn build(mail: &Path, now: u64, seed: u64, consistent: bool) {
    let mut rng = Rng(seed);
    for i in 0..300 {
        let prefix = if rng.below(8) == 0 { "ci-" } else { "u" };
        let mbox = mail.join(format!("{prefix}{i}@example.org"));
        fs::create_dir_all(&mbox).unwrap();
        if rng.below(10) > 0 {
            let days = [0, 1, 5, 20, 35, 90, 120, 200][rng.below(8) as usize];
            file(
                &mbox.join("password"),
                10,
                now - days * DAY - rng.below(1000),
            );
        }
        file(&mbox.join("dovecot.index.cache"), rng.below(5000), now);
        for j in 0..rng.below(10) {
            let sub = ["cur", "cur", "new", "tmp", ".DeltaChat/cur"][rng.below(5) as usize];
            let size = [10, 5000, 150_000, 600_000, 3_000_000, 12_000_000][rng.below(6) as usize];
            let mtime = now - rng.below(30 * DAY);
            let on_disk = if consistent { size } else { size / 5 };
            let name = if rng.below(6) == 0 {
                format!("foreign{j}")
            } else {
                let delivered = mtime - rng.below(3);
                format!("{delivered}.M{j}P{i}.host,S={size},W={}:2,S", size + 10)
            };
            file(&mbox.join(sub).join(name), on_disk, mtime);
        }
    }
}

const SHIM: &str = r#"
import sys, types, configparser
sys.path.insert(0, sys.argv.pop(1))
def read_config(path):
    parser = configparser.ConfigParser()
    parser.read(path)
    return types.SimpleNamespace(mailboxes_dir=parser["params"]["mailboxes_dir"])
config = types.ModuleType("chatmaild.config")
config.read_config = read_config
sys.modules["chatmaild.config"] = config
from chatmaild.fsreport import main
main(sys.argv[1:])
"#;

fn without_date_line(stdout: &[u8]) -> String {
    String::from_utf8_lossy(stdout)
        .lines()
        .filter(|line| !line.starts_with("## Login stats, from date reference"))
        .map(|line| format!("{line}\n"))
        .collect()
}

#[test]
fn report_matches_upstream_python() {
    let Some(src) = std::env::var_os("CHATMAILD_UPSTREAM_SRC") else {
        eprintln!("CHATMAILD_UPSTREAM_SRC not set: skipped");
        return;
    };
    assert!(Path::new(&src).join("chatmaild/fsreport.py").exists());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for (seed, consistent) in [(5, true), (9, false)] {
        let dir = tempfile::tempdir().unwrap();
        let mail = dir.path().join("mail");
        build(&mail, now, seed, consistent);
        let ini = dir.path().join("chatmail.ini");
        fs::write(
            &ini,
            format!(
                "[params]\nmail_domain = example.org\nmailboxes_dir = {}\n",
                mail.display()
            ),
        )
        .unwrap();
        let measure: &[&str] = if consistent { &[] } else { &["--stat-sizes"] };
        for args in [
            &[][..],
            &["--min-login-age", "10", "--mdir", "cur"][..],
            &["--textfile", "PROM"][..],
        ] {
            let run = |who: &str| {
                let prom = dir.path().join(format!("{who}.prom"));
                let args: Vec<&str> = args
                    .iter()
                    .map(|a| {
                        if *a == "PROM" {
                            prom.to_str().unwrap()
                        } else {
                            a
                        }
                    })
                    .collect();
                let out = if who == "upstream" {
                    Command::new("python3")
                        .args(["-c", SHIM])
                        .arg(&src)
                        .arg(&ini)
                        .args(&args)
                        .env("TZ", "UTC")
                        .output()
                        .unwrap()
                } else {
                    Command::new(env!("CARGO_BIN_EXE_chatmail-fsreport"))
                        .arg(&ini)
                        .args(&args)
                        .args(measure)
                        .output()
                        .unwrap()
                };
                assert!(out.status.success(), "{who} {args:?}: {out:?}");
                let text = fs::read_to_string(&prom).unwrap_or_default();
                (without_date_line(&out.stdout), text)
            };
            let theirs = run("upstream");
            assert!(!theirs.0.is_empty() || !theirs.1.is_empty());
            assert_eq!(run("ours"), theirs, "{args:?} consistent={consistent}");
        }
    }
}
