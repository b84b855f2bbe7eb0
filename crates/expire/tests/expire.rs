//! The daily expiry on generated trees: exactly which paths go, which stay, and the
//! summary numbers, in dry-run and remove mode.
#![allow(clippy::indexing_slicing)]

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Command;

use chatmail_config::Config;
use chatmail_expire::expire::{Policy, Run, Summary};
use common::{DAY, Tree};

const KB300: usize = 300_000;

/// Runs the expiry through the library at the tree's "now".
fn expire(tree: &Tree, dry: bool, verbose: bool) -> (Summary, String) {
    expire_measured(tree, dry, verbose, false)
}

/// [`expire`], with or without `--stat-sizes`.
fn expire_measured(tree: &Tree, dry: bool, verbose: bool, stat_sizes: bool) -> (Summary, String) {
    let config = Config::load(&tree.ini()).unwrap();
    let policy = Policy::new(&config, tree.now as f64, 0, dry).unwrap();
    let mut run = Run::new(&config, policy, verbose, &tree.shm());
    run.stat_sizes = stat_sizes;
    let mut log = Vec::new();
    let summary = run.execute(&mut log).unwrap();
    (summary, String::from_utf8(log).unwrap())
}

/// Dovecot-style name delivered `age` seconds ago with quota size `size`.
fn dovecot_name(tree: &Tree, age: u64, size: u64, unique: &str) -> String {
    format!("{}.M1P{unique}.host,S={size},W={size}:2,S", tree.now - age)
}

/// One mailbox of every age class; returns the paths that must go in remove mode.
fn build_every_class(tree: &Tree) -> BTreeSet<String> {
    let mut gone = BTreeSet::new();
    let mut go = |rel: &str| {
        gone.insert(rel.to_owned());
    };

    // Inactive for 91 days: maildir and index directory go.
    tree.file("mail/inactive@example.org/password", 10, 91 * DAY);
    tree.file("mail/inactive@example.org/cur/1.msg", 10, DAY);
    tree.file("shm/inactive@example.org/dovecot.index", 10, DAY);
    for rel in [
        "mail/inactive@example.org",
        "mail/inactive@example.org/password",
        "mail/inactive@example.org/cur",
        "mail/inactive@example.org/cur/1.msg",
        "shm/inactive@example.org",
        "shm/inactive@example.org/dovecot.index",
    ] {
        go(rel);
    }
    // Inactive without an index directory (after a reboot): must not abort the run.
    tree.file("mail/inactive-noshm@example.org/password", 10, 100 * DAY);
    go("mail/inactive-noshm@example.org");
    go("mail/inactive-noshm@example.org/password");

    // Never logged in, empty: removed (remove mode only).
    fs::create_dir_all(tree.mail().join("empty@example.org")).unwrap();
    go("mail/empty@example.org");
    // Never logged in, not empty: kept, even its old mail.
    tree.file("mail/nopass@example.org/cur/old", 10, 30 * DAY);

    // Old mail in cur/, new/ and a Maildir++ folder; recent mail stays.
    tree.file("mail/old@example.org/password", 10, DAY);
    tree.file("mail/old@example.org/maildirsize", 10, DAY);
    tree.file("mail/old@example.org/cur/old1", 10, 21 * DAY);
    tree.file("mail/old@example.org/new/old2", 10, 21 * DAY);
    tree.file("mail/old@example.org/.DeltaChat/cur/old3", 10, 21 * DAY);
    tree.file("mail/old@example.org/cur/recent", 10, 19 * DAY);
    tree.file("mail/old@example.org/tmp/old4", 10, 25 * DAY);
    for rel in [
        "cur/old1",
        "new/old2",
        ".DeltaChat/cur/old3",
        "tmp/old4",
        "maildirsize",
    ] {
        go(&format!("mail/old@example.org/{rel}"));
    }

    // Large mail: old large in cur/ goes, in new/ stays (but marks the mailbox changed).
    tree.file("mail/large@example.org/password", 10, DAY);
    tree.file("mail/large@example.org/maildirsize", 10, DAY);
    tree.file("mail/large@example.org/cur/big-old", KB300, 8 * DAY);
    tree.file("mail/large@example.org/new/big-unread", KB300, 8 * DAY);
    tree.file("mail/large@example.org/cur/big-fresh", KB300, DAY);
    tree.file("mail/large@example.org/cur/small-old", 10, 8 * DAY);
    go("mail/large@example.org/cur/big-old");
    go("mail/large@example.org/maildirsize");
    // Only old large mail in new/: nothing removed, but maildirsize still goes.
    tree.file("mail/unread@example.org/password", 10, DAY);
    tree.file("mail/unread@example.org/maildirsize", 10, DAY);
    tree.file("mail/unread@example.org/new/big-unread", KB300, 8 * DAY);
    go("mail/unread@example.org/maildirsize");

    // Over quota (1M, target 70 %): oldest by name go, the last 24 hours are protected.
    tree.file("mail/quota@example.org/password", 10, DAY);
    tree.file("mail/quota@example.org/maildirsize", 10, DAY);
    let ancient = dovecot_name(tree, 30 * DAY, 400_000, "a");
    let older = dovecot_name(tree, 10 * DAY, 400_000, "b");
    let old = dovecot_name(tree, 5 * DAY, 400_000, "c");
    let fresh = dovecot_name(tree, 3600, 400_000, "d");
    tree.file(
        &format!("mail/quota@example.org/cur/{ancient}"),
        100,
        21 * DAY,
    );
    tree.file(&format!("mail/quota@example.org/cur/{older}"), 100, DAY);
    tree.file(&format!("mail/quota@example.org/new/{old}"), 100, DAY);
    tree.file(&format!("mail/quota@example.org/cur/{fresh}"), 100, 3600);
    // Not Dovecot's name: never trimmed.
    tree.file("mail/quota@example.org/cur/foreign", 100, DAY);
    for rel in [&ancient, &older] {
        go(&format!("mail/quota@example.org/cur/{rel}"));
    }
    go(&format!("mail/quota@example.org/new/{old}"));
    go("mail/quota@example.org/maildirsize");
    // Over quota with only recent mail: nothing goes, maildirsize stays.
    tree.file("mail/recent@example.org/password", 10, DAY);
    tree.file("mail/recent@example.org/maildirsize", 10, DAY);
    for unique in ["e", "f", "g"] {
        let name = dovecot_name(tree, 3600, 400_000, unique);
        tree.file(&format!("mail/recent@example.org/cur/{name}"), 100, 3600);
    }

    // Oversized index files in the maildir and in the tmpfs index directory.
    tree.file("mail/index@example.org/password", 10, DAY);
    tree.file("mail/index@example.org/maildirsize", 10, DAY);
    tree.file("mail/index@example.org/dovecot.index.cache", 600_000, DAY);
    tree.file("mail/index@example.org/dovecot.index", 100_000, DAY);
    tree.file(
        "mail/index@example.org/.DeltaChat/dovecot.index.log",
        512_001,
        DAY,
    );
    tree.file("mail/index@example.org/big-other-file", 600_000, DAY);
    tree.file("shm/index@example.org/dovecot.index.log.2", 600_000, DAY);
    tree.file("shm/index@example.org/dovecot.index", 512_000, DAY);
    go("mail/index@example.org/dovecot.index.cache");
    go("mail/index@example.org/.DeltaChat/dovecot.index.log");
    go("shm/index@example.org/dovecot.index.log.2");

    // Fresh: untouched.
    tree.file("mail/fresh@example.org/password", 10, 0);
    tree.file("mail/fresh@example.org/maildirsize", 10, 0);
    tree.file("mail/fresh@example.org/cur/m", 10, 0);

    // Not a mailbox (no '@'): never looked at.
    tree.file("mail/pending_notifications/old", 10, 400 * DAY);
    gone
}

/// Messages counted as seen: every message of the mailboxes that were kept and checked.
const FILES_SEEN: u64 = 5 + 4 + 1 + 5 + 3 + 1;

#[test]
fn every_age_class_dry_run_deletes_nothing_and_counts_like_upstream() {
    let tree = Tree::new("tmpfs_index = true\n");
    build_every_class(&tree);
    let before = tree.listing();
    let (summary, log) = expire(&tree, true, false);
    assert_eq!(tree.listing(), before, "a dry run must delete nothing");
    assert_eq!(log, "");
    // Mailboxes: 2 inactive (the empty one only counts when removed).
    // Files: old 4 + maildirsize; large 1 + maildirsize; unread maildirsize; quota: the
    // age rule (1), the trim over all four named messages (3: upstream's dry run still
    // saw the one the age rule picked) + maildirsize; index 3.
    assert_eq!(
        summary,
        Summary {
            mailboxes_removed: 2,
            mailboxes_seen: 11,
            files_removed: 5 + 2 + 1 + 5 + 3,
            files_seen: FILES_SEEN,
        }
    );
}

#[test]
fn every_age_class_remove_mode_removes_exactly_the_expired_paths() {
    let tree = Tree::new("tmpfs_index = true\n");
    let gone = build_every_class(&tree);
    let before = tree.listing();
    let (summary, log) = expire(&tree, false, false);
    let after = tree.listing();
    let removed: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(removed, gone);
    assert!(after.is_subset(&before));
    assert_eq!(
        log,
        format!(
            "Skipped deleting {}/nopass@example.org, doesn't have last_login but isn't empty\n",
            tree.mail().display()
        )
    );
    // The trim ran after the age rule had unlinked the ancient message: 2, not 3.
    assert_eq!(
        summary,
        Summary {
            mailboxes_removed: 3,
            mailboxes_seen: 11,
            files_removed: 5 + 2 + 1 + 4 + 3,
            files_seen: FILES_SEEN,
        }
    );
    // A second run removes nothing more; as upstream it still counts (and reports as
    // vanished) the maildirsize of the two mailboxes whose old unread large mail in new/
    // marks them changed on every run.
    let (again, log) = expire(&tree, false, false);
    assert_eq!(again.files_removed, 2);
    assert_eq!(log.matches("file not found/vanished").count(), 2, "{log}");
    assert_eq!(again.mailboxes_removed, 0);
    assert_eq!(tree.listing(), after);
}

#[test]
fn verbose_lines_match_upstream() {
    let tree = Tree::new("tmpfs_index = false\n");
    tree.file("mail/a@example.org/password", 10, DAY);
    let old = tree.file("mail/a@example.org/cur/old", 10, 21 * DAY);
    tree.file("mail/b@example.org/password", 10, 200 * DAY);
    let (_, log) = expire(&tree, true, true);
    let mail = tree.mail().display().to_string();
    let date = |age: u64| chatmail_expire::clock::month_day((tree.now - age) as f64);
    let a = format!(
        "checking mailbox {} a@example.org\nremoving {} {}\nremoving {mail}/a@example.org/maildirsize\n",
        date(DAY),
        date(21 * DAY),
        old.display()
    );
    let b = format!("removing {mail}/b@example.org\n");
    assert!(
        log == format!("{a}{b}") || log == format!("{b}{a}"),
        "{log}"
    );
}

#[test]
fn vanished_maildirsize_is_reported_and_counted() {
    let tree = Tree::new("");
    tree.file("mail/a@example.org/password", 10, DAY);
    tree.file("mail/a@example.org/cur/old", 10, 21 * DAY);
    let (summary, log) = expire(&tree, false, false);
    assert_eq!(
        log,
        format!(
            "file not found/vanished {}/a@example.org/maildirsize\n",
            tree.mail().display()
        )
    );
    assert_eq!(summary.files_removed, 2);
}

#[test]
fn missing_mailboxes_dir_is_reported_not_fatal() {
    let tree = Tree::new("");
    fs::remove_dir(tree.mail()).unwrap();
    let (summary, log) = expire(&tree, false, false);
    assert_eq!(summary, Summary::default());
    assert_eq!(
        log,
        format!("no mailboxes found at: {}\n", tree.mail().display())
    );
}

#[test]
fn maxnum_counts_entries_without_at() {
    let tree = Tree::new("");
    fs::create_dir(tree.mail().join("pending_notifications")).unwrap();
    for i in 0..5 {
        tree.file(&format!("mail/u{i}@example.org/password"), 1, DAY);
    }
    let config = Config::load(&tree.ini()).unwrap();
    let policy = Policy::new(&config, tree.now as f64, 0, true).unwrap();
    let count = |maxnum| {
        let mut run = Run::new(&config, policy.clone(), false, &tree.shm());
        run.maxnum = Some(maxnum);
        run.execute(&mut Vec::new()).unwrap().mailboxes_seen
    };
    assert!([2, 3].contains(&count(3)));
    assert_eq!(count(6), 5);
    assert_eq!(count(0), 0);
    // Python's [:-1] drops the last entry.
    assert!([4, 5].contains(&count(-1)));
}

// Safety: nothing outside mailboxes_dir is ever touched, whatever links point there.
#[test]
fn symlinks_out_of_the_mailboxes_dir_are_never_followed() {
    let tree = Tree::new("tmpfs_index = true\n");
    let outside = tree.dir.path().join("outside");
    tree.file("outside/old-file", 10, 400 * DAY);
    tree.file("outside/cur/old-msg", 300_000, 400 * DAY);
    tree.file("outside/dovecot.index", 600_000, DAY);
    tree.file("outside/password", 10, 400 * DAY);
    // A kept mailbox with links in cur/ and as a folder.
    tree.file("mail/a@example.org/password", 10, DAY);
    fs::create_dir_all(tree.mail().join("a@example.org/cur")).unwrap();
    symlink(
        outside.join("old-file"),
        tree.mail().join("a@example.org/cur/link"),
    )
    .unwrap();
    symlink(&outside, tree.mail().join("a@example.org/.Folder")).unwrap();
    symlink(
        outside.join("dovecot.index"),
        tree.mail().join("a@example.org/dovecot.index"),
    )
    .unwrap();
    // An inactive mailbox holding a link to the outside directory.
    tree.file("mail/b@example.org/password", 10, 200 * DAY);
    symlink(&outside, tree.mail().join("b@example.org/.Folder")).unwrap();
    // A mailbox entry that is itself a link, and an index directory that is a link.
    symlink(&outside, tree.mail().join("c@example.org")).unwrap();
    tree.file("mail/d@example.org/password", 10, 200 * DAY);
    symlink(&outside, tree.shm().join("d@example.org")).unwrap();
    let outside_before: BTreeSet<String> = tree
        .listing()
        .into_iter()
        .filter(|p| p.starts_with("outside"))
        .collect();

    for dry in [true, false] {
        expire(&tree, dry, true);
    }
    let after = tree.listing();
    let outside_after: BTreeSet<String> = after
        .iter()
        .filter(|p| p.starts_with("outside"))
        .cloned()
        .collect();
    assert_eq!(outside_after, outside_before);
    assert!(
        !after.contains("mail/b@example.org"),
        "inactive mailbox removed, link and all"
    );
    assert!(after.contains("mail/a@example.org/cur/link"));
    assert!(after.contains("mail/c@example.org"));
    // d's index "directory" is a link: the mailbox is left alone rather than guessed at.
    assert!(after.contains("mail/d@example.org/password"));
}

#[test]
fn refuses_root_and_non_directory_mailboxes_dir() {
    for (dir, expected) in [("/", "root directory"), ("FILE", "not a directory")] {
        let tree = Tree::new("");
        let dir = if dir == "FILE" {
            tree.ini().display().to_string()
        } else {
            dir.to_owned()
        };
        let ini = fs::read_to_string(tree.ini()).unwrap();
        let ini = ini.replace(&tree.mail().display().to_string(), &dir);
        fs::write(tree.ini(), ini).unwrap();
        let config = Config::load(&tree.ini()).unwrap();
        let policy = Policy::new(&config, tree.now as f64, 0, false).unwrap();
        let run = Run::new(&config, policy, false, &tree.shm());
        let err = run.execute(&mut Vec::new()).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }
}

#[test]
fn two_concurrent_runs_do_no_harm() {
    let tree = Tree::new("tmpfs_index = true\n");
    let gone = build_every_class(&tree);
    for i in 0..200 {
        tree.file(&format!("mail/bulk{i}@example.org/password"), 10, 91 * DAY);
        tree.file(&format!("mail/bulk{i}@example.org/cur/m"), 10, DAY);
        tree.file(&format!("mail/keep{i}@example.org/password"), 10, DAY);
        tree.file(&format!("mail/keep{i}@example.org/cur/old"), 10, 30 * DAY);
    }
    let before = tree.listing();
    std::thread::scope(|s| {
        let a = s.spawn(|| expire(&tree, false, false));
        let b = s.spawn(|| expire(&tree, false, false));
        a.join().unwrap();
        b.join().unwrap();
    });
    let after = tree.listing();
    let removed: BTreeSet<String> = before.difference(&after).cloned().collect();
    let bulk = |p: &String| p.starts_with("mail/bulk") || p.starts_with("mail/keep");
    let removed_classes: BTreeSet<String> = removed.iter().filter(|p| !bulk(p)).cloned().collect();
    // The quota trim may pick differently once the other run unlinked the age-expired
    // message, so compare everything but that mailbox exactly.
    let no_quota = |set: &BTreeSet<String>| -> BTreeSet<String> {
        set.iter()
            .filter(|p| !p.contains("quota@"))
            .cloned()
            .collect()
    };
    assert_eq!(no_quota(&removed_classes), no_quota(&gone));
    for i in 0..200 {
        assert!(!after.contains(&format!("mail/bulk{i}@example.org")));
        assert!(after.contains(&format!("mail/keep{i}@example.org/password")));
        assert!(!after.contains(&format!("mail/keep{i}@example.org/cur/old")));
    }
    // Never more than a single run would remove.
    assert!(removed.iter().filter(|p| p.contains("quota@")).count() <= 4);
    assert!(after.contains(&format!(
        "mail/quota@example.org/cur/{}",
        dovecot_name(&tree, 3600, 400_000, "d")
    )));
}

fn bin(name: &str) -> Command {
    Command::new(match name {
        "chatmail-expire" => env!("CARGO_BIN_EXE_chatmail-expire"),
        _ => env!("CARGO_BIN_EXE_chatmail-quota-expire"),
    })
}

// "now" is the real epoch time, not upstream's UTC wall clock read as local time.
#[test]
fn now_is_utc_whatever_the_time_zone() {
    let tree = Tree::new("");
    tree.file("mail/a@example.org/password", 10, DAY);
    // 2 hours inside the 20-day limit: upstream under TZ=UTC+5 (New York) removes it.
    let keep = tree.file("mail/a@example.org/cur/keep", 10, 20 * DAY - 7200);
    for tz in ["UTC", "America/New_York", "Asia/Tokyo"] {
        let out = bin("chatmail-expire")
            .arg(tree.ini())
            .arg("--remove")
            .env("TZ", tz)
            .output()
            .unwrap();
        assert!(out.status.success());
        assert!(keep.exists(), "removed under TZ={tz}");
    }
}

#[test]
fn cli_prints_summary_on_stdout_and_days_moves_now() {
    let tree = Tree::new("");
    tree.file("mail/a@example.org/password", 10, 0);
    let msg = tree.file("mail/a@example.org/cur/m", 10, 15 * DAY);
    let out = bin("chatmail-expire").arg(tree.ini()).output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with(
            "Removed 0 out of 1 mailboxes and 0 out of 1 files in existing mailboxes in 0."
        ),
        "{stdout}"
    );
    assert!(stdout.ends_with(" seconds\n"));
    // --days 6 moves now back: the message looks... younger; --days -6 older.
    let out = bin("chatmail-expire")
        .args([
            tree.ini().as_os_str(),
            "--days".as_ref(),
            "-6".as_ref(),
            "-v".as_ref(),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("Removed 0 out of 1 mailboxes and 2 out of 1 files"),
        "{stdout}"
    );
    assert!(msg.exists(), "dry run by default");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("removing {}", tree.mail().display())),
        "{stderr}"
    );
    // Unknown options are usage errors (exit 2), as with argparse.
    let out = bin("chatmail-expire").arg("--bogus").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn quota_expire_cli_uses_name_sizes_and_protects_last_day() {
    let tree = Tree::new("");
    let mbox = tree.mail().join("user@example.org");
    let mib = 1_048_576;
    let a = dovecot_name(&tree, 10 * DAY, mib, "a");
    let b = dovecot_name(&tree, 5 * DAY, mib, "b");
    let c = dovecot_name(&tree, 60, mib, "c");
    // The oldest has only 100 bytes on disk: the name's size counts.
    tree.file(&format!("mail/user@example.org/cur/{a}"), 100, 10 * DAY);
    tree.file(&format!("mail/user@example.org/new/{b}"), 1000, 5 * DAY);
    tree.file(&format!("mail/user@example.org/cur/{c}"), 1000, 60);
    tree.file("mail/user@example.org/maildirsize", 10, 0);
    let out = bin("chatmail-quota-expire")
        .arg("1")
        .arg(&mbox)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "quota-expire: removed 2 message(s) from user@example.org\n"
    );
    assert!(!mbox.join("cur").join(&a).exists());
    assert!(!mbox.join("new").join(&b).exists());
    assert!(
        mbox.join("cur").join(&c).exists(),
        "the last 24 hours are protected"
    );
    assert!(!mbox.join("maildirsize").exists());
    // Under target: nothing to say, maildirsize kept.
    tree.file("mail/user@example.org/maildirsize", 10, 0);
    let out = bin("chatmail-quota-expire")
        .arg("1")
        .arg(&mbox)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stderr.is_empty());
    assert!(mbox.join("maildirsize").exists());
    // A missing mailbox is not an error.
    let out = bin("chatmail-quota-expire")
        .arg("1")
        .arg(tree.mail().join("x@y"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = bin("chatmail-quota-expire")
        .arg("x")
        .arg(&mbox)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn quota_expire_one_2mib_message_like_upstream_test() {
    let tree = Tree::new("");
    let mbox = tree.mail().join("user@example.org");
    let name = dovecot_name(&tree, 5 * DAY, 2 * 1_048_576, "x");
    tree.file(&format!("mail/user@example.org/cur/{name}"), 10, 5 * DAY);
    tree.file("mail/user@example.org/maildirsize", 10, 0);
    let out = bin("chatmail-quota-expire")
        .arg("1")
        .arg(&mbox)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "quota-expire: removed 1 message(s) from user@example.org\n"
    );
    assert!(!Path::new(&mbox.join("maildirsize")).exists());
}

// Regression (upstream quirk): the dry run's quota trim deleted messages.
#[test]
fn dry_run_quota_trim_deletes_nothing() {
    let tree = Tree::new("");
    tree.file("mail/a@example.org/password", 10, DAY);
    tree.file("mail/a@example.org/maildirsize", 10, DAY);
    for (age, unique) in [(10 * DAY, "a"), (5 * DAY, "b"), (2 * DAY, "c")] {
        let name = dovecot_name(&tree, age, 600_000, unique);
        tree.file(&format!("mail/a@example.org/cur/{name}"), 10, DAY);
    }
    let before = tree.listing();
    let (summary, log) = expire(&tree, true, true);
    assert_eq!(tree.listing(), before);
    assert!(
        log.contains("quota-expire: removed 2 message(s) from a@example.org\n"),
        "{log}"
    );
    assert_eq!(
        summary.files_removed, 3,
        "two trimmed messages and maildirsize"
    );
    let (summary, _) = expire(&tree, false, false);
    assert_eq!(summary.files_removed, 3);
    assert_eq!(before.difference(&tree.listing()).count(), 3);
}

// Regression (tmpfs-index branch): removing an inactive mailbox whose /dev/shm/<addr> is
// gone (emptied by a reboot) aborted the whole run.
#[test]
fn missing_index_dir_does_not_abort_the_run() {
    let tree = Tree::new("tmpfs_index = true\n");
    for addr in ["a", "b", "c"] {
        tree.file(&format!("mail/{addr}@example.org/password"), 10, 200 * DAY);
    }
    tree.file("shm/b@example.org/dovecot.index", 10, DAY);
    let (summary, log) = expire(&tree, false, false);
    assert_eq!(log, "");
    assert_eq!(summary.mailboxes_removed, 3);
    assert_eq!(
        tree.listing(),
        BTreeSet::from([
            "mail".to_owned(),
            "shm".to_owned(),
            "chatmail.ini".to_owned()
        ])
    );
}

// Sizes and times from Dovecot's names (`,S=`, delivery time), `stat` otherwise; with
// `--stat-sizes` from `stat` only, as upstream.

/// `<delivery time age seconds before the tree's now><rest>`.
fn name_with(tree: &Tree, age: u64, rest: &str) -> String {
    format!("{}{rest}", tree.now - age)
}

/// A Dovecot name delivered `age` seconds ago with quota size `size`.
fn dovecot_name_at(tree: &Tree, age: u64, size: u64) -> String {
    name_with(tree, age, &format!(".M1P{age}.host,S={size},W={size}:2,S"))
}

/// Builds a tree with `build` (which returns the message paths under
/// `mail/a@example.org/` it wants watched) twice and removes for real, without and with
/// `--stat-sizes`; returns which of the watched messages each run removed.
fn removed_by_mode(build: impl Fn(&Tree) -> Vec<String>) -> [Vec<bool>; 2] {
    [false, true].map(|stat_sizes| {
        let tree = Tree::new("");
        tree.file("mail/a@example.org/password", 10, DAY);
        let watched = build(&tree);
        expire_measured(&tree, false, false, stat_sizes);
        watched
            .iter()
            .map(|rel| !tree.mail().join("a@example.org").join(rel).exists())
            .collect()
    })
}

/// Writes `mail/a@example.org/<rel>` and returns `rel`.
fn message(tree: &Tree, rel: String, size: usize, age: u64) -> String {
    tree.file(&format!("mail/a@example.org/{rel}"), size, age);
    rel
}

#[test]
fn name_size_decides_large_by_default_disk_size_with_stat_sizes() {
    // 8 days old (large mail goes after 7), S=300000 but 10 bytes on disk: a compressed
    // large message.
    let [default, stat_sizes] = removed_by_mode(|tree| {
        let name = dovecot_name_at(tree, 8 * DAY, 300_000);
        vec![message(tree, format!("cur/{name}"), 10, 8 * DAY)]
    });
    assert_eq!(default, [true], "large by its name");
    assert_eq!(stat_sizes, [false], "small by stat");
}

#[test]
fn the_last_s_field_of_a_name_counts() {
    let [default, stat_sizes] = removed_by_mode(|tree| {
        let large_last = name_with(tree, 8 * DAY, ".M1P1.host,S=10,S=300000,W=300100:2,S");
        let small_last = name_with(tree, 8 * DAY, ".M2P1.host,S=300000,S=10,W=20:2,S");
        vec![
            message(tree, format!("cur/{large_last}"), 10, 8 * DAY),
            message(tree, format!("cur/{small_last}"), 10, 8 * DAY),
        ]
    });
    assert_eq!(default, [true, false]);
    assert_eq!(stat_sizes, [false, false]);
}

#[test]
fn names_without_s_field_are_measured_by_stat() {
    // The names' delivery times say "now"; the files are 8 and 21 days old and the first
    // is 300 kB. Without `,S=` the name is not used at all.
    let [default, stat_sizes] = removed_by_mode(|tree| {
        let large = name_with(tree, 0, ".M1P1.host:2,S");
        let old = name_with(tree, 0, ".M2P1.host");
        vec![
            message(tree, format!("cur/{large}"), KB300, 8 * DAY),
            message(tree, format!("new/{old}"), 10, 21 * DAY),
        ]
    });
    assert_eq!(default, [true, true]);
    assert_eq!(stat_sizes, [true, true]);
}

#[test]
fn a_name_time_before_the_cutoff_expires_by_default() {
    // Delivered 21 days ago (mails go after 20), and a large one 8 days ago (large mail
    // goes after 7); mtimes as Dovecot leaves them, a little after the delivery time.
    let [default, stat_sizes] = removed_by_mode(|tree| {
        let old = dovecot_name_at(tree, 21 * DAY, 100);
        let large = dovecot_name_at(tree, 8 * DAY + 5, 300_000);
        vec![
            message(tree, format!("cur/{old}"), 100, 21 * DAY - 1),
            message(tree, format!("cur/{large}"), KB300, 8 * DAY),
        ]
    });
    assert_eq!(default, [true, true]);
    assert_eq!(stat_sizes, [true, true]);
}

#[test]
fn name_and_mtime_disagreeing_never_expire_earlier_than_upstream() {
    let [default, stat_sizes] = removed_by_mode(|tree| {
        // Copied by IMAP COPY/MOVE a day ago: new name, the original's mtime. Upstream
        // (and --stat-sizes) go by the mtime and remove it; by default the later time,
        // the name's, keeps it.
        let copied = dovecot_name_at(tree, DAY, 100);
        // Restored from a backup that did not keep mtimes: old name, fresh mtime.
        // Upstream keeps it, and so do we: a name's time alone never removes a message.
        let restored = dovecot_name_at(tree, 30 * DAY, 100);
        // Large and unread in new/ (where the large rule removes nothing), delivered 8
        // days ago by its name, mtime 30 days: upstream's mail cut-off removes it; by
        // default the later time keeps it.
        let unread = dovecot_name_at(tree, 8 * DAY, 300_000);
        vec![
            message(tree, format!("cur/{copied}"), 100, 30 * DAY),
            message(tree, format!("cur/{restored}"), 100, DAY),
            message(tree, format!("new/{unread}"), KB300, 30 * DAY),
        ]
    });
    assert_eq!(default, [false, false, false]);
    assert_eq!(stat_sizes, [true, false, true]);
}

#[test]
fn scan_reads_mtimes_only_of_messages_the_age_rules_could_expire() {
    use chatmail_expire::scan::{MailboxScan, ScanOptions};
    use std::ffi::OsStr;
    let tree = Tree::new("");
    let young = dovecot_name_at(&tree, DAY, 300_000);
    let old = dovecot_name_at(&tree, 21 * DAY, 100);
    tree.file(&format!("mail/a@example.org/cur/{young}"), 10, 40 * DAY);
    tree.file(&format!("mail/a@example.org/cur/{old}"), 10, 21 * DAY - 1);
    tree.file("mail/a@example.org/cur/foreign", 10, 3 * DAY);
    let config = Config::load(&tree.ini()).unwrap();
    let policy = Policy::new(&config, tree.now as f64, 0, true).unwrap();
    let measure = |stat_sizes, age_rules| {
        let options = ScanOptions {
            stat_sizes,
            age_rules,
            ..ScanOptions::default()
        };
        let scan = MailboxScan::scan(&tree.mail(), OsStr::new("a@example.org"), &options);
        let mut found: Vec<(String, f64, u64, bool)> = scan
            .messages
            .iter()
            .map(|m| {
                let name = String::from_utf8_lossy(m.name()).into_owned();
                (name, m.mtime, m.size, m.mtime_read)
            })
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    };
    let at = |age: u64| (tree.now - age) as f64;
    let foreign = ("foreign".to_owned(), at(3 * DAY), 10, true);
    // Sorted by name: the older delivery time first, then the younger, then "foreign".
    // The old one's mtime (1 s after its delivery time) is read, the young one's not.
    assert_eq!(
        measure(false, Some(policy.age_rules())),
        [
            (old.clone(), at(21 * DAY - 1), 100, true),
            (young.clone(), at(DAY), 300_000, false),
            foreign.clone(),
        ]
    );
    // fsreport: no age rules, names only.
    assert_eq!(
        measure(false, None),
        [
            (old.clone(), at(21 * DAY), 100, false),
            (young.clone(), at(DAY), 300_000, false),
            foreign.clone(),
        ]
    );
    // --stat-sizes: stat only.
    assert_eq!(
        measure(true, Some(policy.age_rules())),
        [
            (old, at(21 * DAY - 1), 10, true),
            (young, at(40 * DAY), 10, true),
            foreign,
        ]
    );
}

#[test]
fn cli_stat_sizes_reproduces_upstreams_stat_decisions() {
    let tree = Tree::new("");
    tree.file("mail/a@example.org/password", 10, DAY);
    // A compressed large message, and a copied one (new name, old mtime).
    let large = dovecot_name_at(&tree, 8 * DAY, 300_000);
    let large = tree.file(&format!("mail/a@example.org/cur/{large}"), 10, 8 * DAY);
    let copied = dovecot_name_at(&tree, DAY, 100);
    let copied = tree.file(&format!("mail/a@example.org/cur/{copied}"), 100, 25 * DAY);
    let run = |extra: &[&str]| {
        let out = bin("chatmail-expire")
            .arg(tree.ini())
            .arg("-v")
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stderr).unwrap()
    };
    let date = |age: u64| chatmail_expire::clock::month_day((tree.now - age) as f64);
    let expected = |age: u64, path: &Path| {
        format!(
            "checking mailbox {} a@example.org\nremoving {} {}\nremoving {}/a@example.org/maildirsize\n",
            date(DAY),
            date(age),
            path.display(),
            tree.mail().display()
        )
    };
    assert_eq!(run(&["--stat-sizes"]), expected(25 * DAY, &copied));
    assert_eq!(run(&[]), expected(8 * DAY, &large));
    assert!(large.exists() && copied.exists(), "dry runs");
}
