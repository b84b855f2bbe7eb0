//! Cross-checks against Python itself, the language of upstream's daemon: our
//! `metadata.json` bytes equal `json.dump`'s for the same data, what Python writes we
//! read, and a `fcntl.flock` held by a Python process excludes our writer (the lock
//! upstream's `filelock` takes on Linux). Skipped without python3, except in CI.

#![allow(clippy::indexing_slicing)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chatmail_mailbox::Mailboxes;
use chatmail_metadata::TokenStore;
use chatmail_metadata::json::to_python_json;

fn python() -> Option<&'static str> {
    let found = Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_ok_and(|s| s.success());
    if found {
        Some("python3")
    } else if std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!("python3 is missing (CI=true)");
    } else {
        eprintln!("python3 not found: skipped");
        None
    }
}

fn run_python(python: &str, script: &str, arg: &str) -> String {
    let output = Command::new(python)
        .arg("-c")
        .arg(script)
        .arg(arg)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// Documents with what makes JSON writers differ: escapes, non-ASCII, astral characters,
/// DEL, nesting, empty containers, big integers, floats.
const DOCUMENTS: [&str; 5] = [
    r#"{"devicetoken": {"01234": 1700000000, "b": 1700000001}}"#,
    r#"{"devicetoken": ["legacy1", "legacy2"]}"#,
    "{\"x\": \"\\u00e9\\u007f\\n\\t\\\"\\\\/\\ud83d\\ude00\\u0001\", \"y\": [[], {}, null, true, false]}",
    r#"{"big": 123456789012345678901234567890, "neg": -5, "f": 0.1, "e": 1e+16, "z": 1.5e-07}"#,
    r#"{"z": 1, "a": {"nested": {"deeper": ["\u2603", "k\u00fc"]}}, "devicetoken": {}}"#,
];

#[test]
fn metadata_json_bytes_equal_pythons_json_dump() {
    let Some(python) = python() else { return };
    for document in DOCUMENTS {
        let expected = run_python(
            python,
            "import json, sys; sys.stdout.write(json.dumps(json.loads(sys.argv[1])))",
            document,
        );
        let value: serde_json::Value = serde_json::from_str(document).unwrap();
        assert_eq!(to_python_json(&value), expected, "{document}");
    }
}

#[test]
fn files_written_by_python_are_read() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("user@example.org");
    fs::create_dir(&maildir).unwrap();
    let now = 1_800_000_000;
    run_python(
        python,
        "import json, sys, pathlib\n\
         p = pathlib.Path(sys.argv[1]) / 'metadata.json'\n\
         json.dump({'devicetoken': {'t\\u00e9': 1800000000, 'old': 1}, 'other': 'x'}, p.open('w'))",
        maildir.to_str().unwrap(),
    );
    let store = TokenStore::new(Mailboxes::new(dir.path()));
    assert_eq!(
        store.valid_tokens("user@example.org", now).unwrap(),
        ["t\u{e9}"]
    );
    // And Python reads what we rewrote (the expired token dropped).
    let read_back = run_python(
        python,
        "import json, sys, pathlib\n\
         p = pathlib.Path(sys.argv[1]) / 'metadata.json'\n\
         sys.stdout.write(repr(json.load(p.open())))",
        maildir.to_str().unwrap(),
    );
    assert_eq!(
        read_back,
        "{'devicetoken': {'té': 1800000000}, 'other': 'x'}"
    );
}

#[test]
fn a_python_flock_on_the_lock_file_excludes_our_writer() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();
    let maildir = dir.path().join("user@example.org");
    fs::create_dir(&maildir).unwrap();
    let mut holder = Command::new(python)
        .arg("-c")
        .arg(
            "import fcntl, os, sys, time\n\
             fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)\n\
             fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n\
             print('locked', flush=True)\n\
             time.sleep(1.0)\n",
        )
        .arg(maildir.join("metadata.json.lock"))
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "locked\n");
    let store = TokenStore::new(Mailboxes::new(dir.path()));
    let started = Instant::now();
    store
        .add_token("user@example.org", "t", 1_800_000_000)
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "waited for Python's lock"
    );
    holder.wait().unwrap();
}
