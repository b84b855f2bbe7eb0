//! Differential test against upstream's Python `chatmail-expire` (relay 1.12), run only
//! when `CHATMAILD_UPSTREAM_SRC` names a directory holding upstream's `chatmaild/`
//! package (e.g. a chatmail/relay checkout's `chatmaild/src`), with `python3` installed:
//!
//! ```sh
//! CHATMAILD_UPSTREAM_SRC=~/relay/chatmaild/src cargo test -p chatmail-expire --test upstream
//! ```
//!
//! Two identical random trees; upstream runs on one, we on the other; stdout (elapsed
//! time aside), stderr and, after `--remove`, the remaining trees must be identical.
//! Index files stay under 500 KiB and `tmpfs_index` off: relay 1.12 has neither rule.
//!
//! Trees whose Dovecot names agree with the files (`,S=` the size, the delivery time at or
//! up to 2 s before the mtime, as Dovecot writes them) must match with our default, which
//! reads names; trees whose names disagree (compressed sizes, copied messages) must match
//! with `--stat-sizes`.
#![allow(clippy::indexing_slicing, clippy::string_slice)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{DAY, Tree};

struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// With `consistent`, names carry the file's size and a delivery time 0 to 2 s before its
/// mtime; without, sizes on disk and delivery times are unrelated to the names.
fn build(tree: &Tree, seed: u64, mailboxes: usize, consistent: bool) {
    let mut rng = Rng(seed);
    for i in 0..mailboxes {
        let mbox = format!("mail/u{i}@example.org");
        std::fs::create_dir_all(tree.dir.path().join(&mbox)).unwrap();
        let kind = rng.below(20);
        if kind == 0 {
            continue;
        }
        if kind > 1 {
            let days = [0, 1, 50, 89, 91, 200][rng.below(6) as usize];
            tree.file(
                &format!("{mbox}/password"),
                10,
                days * DAY + rng.below(1000),
            );
        }
        if rng.below(2) == 0 {
            tree.file(&format!("{mbox}/maildirsize"), 10, DAY);
        }
        for j in 0..rng.below(12) {
            let sub =
                ["cur", "cur", "new", "tmp", ".DeltaChat/cur", ".Sent/new"][rng.below(6) as usize];
            let age = [1, 4, 12, 24, 24 * 6, 24 * 8, 24 * 19, 24 * 21, 24 * 40]
                [rng.below(9) as usize]
                * 3600
                + rng.below(1000);
            let size = [10, 1000, 150_000, 250_000, 400_000][rng.below(5) as usize];
            let mut delivered =
                tree.now - [1, 48, 24 * 6, 24 * 8, 24 * 21][rng.below(5) as usize] * 3600;
            let mut on_disk = if rng.below(3) == 0 { 5 } else { size };
            if consistent {
                delivered = tree.now - age - rng.below(3);
                on_disk = size;
            }
            let name = if rng.below(5) == 0 {
                format!("foreign{j}")
            } else {
                format!("{delivered}.M{j}P{i}.host,S={size},W={}:2,S", size + 10)
            };
            tree.sparse(&format!("{mbox}/{sub}/{name}"), on_disk, tree.now - age);
        }
        if rng.below(3) == 0 {
            tree.file(&format!("{mbox}/dovecot.index.cache"), 1000, 0);
        }
    }
    tree.file("mail/pending_notifications/x", 1, 400 * DAY);
}

const SHIM: &str = r#"
import sys, types, configparser
sys.path.insert(0, sys.argv.pop(1))
def read_config(path):
    parser = configparser.ConfigParser()
    parser.read(path)
    p = parser["params"]
    return types.SimpleNamespace(
        mailboxes_dir=p["mailboxes_dir"],
        delete_mails_after=p["delete_mails_after"],
        delete_large_after=p["delete_large_after"],
        delete_inactive_users_after=int(p["delete_inactive_users_after"]),
        max_mailbox_size_mb=int(p["max_mailbox_size"].rstrip("M")),
    )
config = types.ModuleType("chatmaild.config")
config.read_config = read_config
sys.modules["chatmaild.config"] = config
from chatmaild.expire import daily_expire_main
daily_expire_main(sys.argv[1:])
"#;

fn strip_elapsed(stdout: &[u8]) -> String {
    let text = String::from_utf8_lossy(stdout).into_owned();
    match text.rfind(" in ") {
        Some(at) => text[..at].to_owned(),
        None => text,
    }
}

#[test]
fn decisions_and_output_match_upstream_python() {
    let Some(src) = std::env::var_os("CHATMAILD_UPSTREAM_SRC") else {
        eprintln!("CHATMAILD_UPSTREAM_SRC not set: skipped");
        return;
    };
    assert!(Path::new(&src).join("chatmaild/expire.py").exists());
    for (seed, args, consistent) in [
        (7, vec!["-v"], true),
        (11, vec!["-v", "--remove"], true),
        (13, vec!["--remove"], true),
        (17, vec!["-v"], false),
        (19, vec!["-v", "--remove"], false),
    ] {
        let ours = Tree::new("tmpfs_index = false\n");
        let theirs = Tree {
            now: ours.now,
            ..Tree::new("tmpfs_index = false\n")
        };
        build(&ours, seed, 400, consistent);
        build(&theirs, seed, 400, consistent);
        let upstream = Command::new("python3")
            .args(["-c", SHIM])
            .arg(&src)
            .arg(theirs.ini())
            .args(&args)
            .env("TZ", "UTC")
            .output()
            .unwrap();
        assert!(upstream.status.success(), "{upstream:?}");
        let rust = Command::new(env!("CARGO_BIN_EXE_chatmail-expire"))
            .arg(ours.ini())
            .args(&args)
            .args((!consistent).then_some("--stat-sizes"))
            .output()
            .unwrap();
        assert!(rust.status.success());
        assert_eq!(
            strip_elapsed(&rust.stdout),
            strip_elapsed(&upstream.stdout),
            "{args:?}"
        );
        let their_err = String::from_utf8_lossy(&upstream.stderr).replace(
            &theirs.mail().display().to_string(),
            &ours.mail().display().to_string(),
        );
        assert_eq!(String::from_utf8_lossy(&rust.stderr), their_err, "{args:?}");
        if args.contains(&"--remove") {
            assert_eq!(ours.listing(), theirs.listing(), "{args:?}");
        }
    }
}
