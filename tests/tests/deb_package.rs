//! The Debian package: built by packaging/build-deb, installed with dpkg on this machine,
//! checked, and removed again. Needs root and dpkg: skipped elsewhere, except in CI.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use chatmail_e2e::binaries::workspace_root;

const INI: &str = "/usr/local/lib/chatmaild/chatmail.ini";
/// Where the package puts its templates.
const SHARE: &str = "/usr/share/chatmaild-rs";

/// Every `[[bin]]` of the workspace's daemon crates, installed in /usr/bin.
const BINARIES: [&str; 8] = [
    "doveauth",
    "lastlogin",
    "chatmail-metadata",
    "filtermail",
    "chatmail-expire",
    "chatmail-quota-expire",
    "chatmail-fsreport",
    "echobot",
];

/// The files below `dir`, relative to it, sorted.
fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        for entry in fs::read_dir(&current).unwrap_or_else(|err| panic!("{current:?}: {err}")) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    files
}

/// What the package must install from the source tree: (source, installed path) of every
/// systemd unit and configuration template.
fn shipped_files(root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut shipped = Vec::new();
    for unit in files_below(&root.join("systemd")) {
        shipped.push((
            root.join("systemd").join(&unit),
            Path::new("/lib/systemd/system").join(&unit),
        ));
    }
    let conf = root.join("packaging/conf");
    for file in files_below(&conf) {
        shipped.push((conf.join(&file), Path::new(SHARE).join("conf").join(&file)));
    }
    shipped.push((
        root.join("packaging/dovecot/push_notification.lua"),
        Path::new(SHARE).join("dovecot/push_notification.lua"),
    ));
    shipped.push((
        root.join("packaging/chatmail.ini"),
        Path::new(SHARE).join("chatmail.ini"),
    ));
    shipped
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|err| panic!("cannot run {program}: {err}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn can_run() -> bool {
    let root = nix::unistd::geteuid().is_root();
    let dpkg = Path::new("/usr/bin/dpkg").exists();
    if root && dpkg {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none_or(|v| v.is_empty()),
        "the package test needs root and dpkg in CI"
    );
    eprintln!("skipping deb_package: needs root and dpkg");
    false
}

#[test]
fn installs_never_overwrites_chatmail_ini_and_removes_cleanly() {
    if !can_run() {
        return;
    }
    let root = workspace_root();
    let deb = run(
        root.join("packaging/build-deb").to_str().unwrap(),
        &["--debug"],
    );
    let deb = deb.trim();
    assert!(deb.ends_with(".deb"), "{deb}");
    let deb = root.join(deb);

    // Leave the machine as found: remember an operator's chatmail.ini, if any.
    let before = fs::read(INI).ok();
    let _ = Command::new("dpkg").args(["-r", "chatmaild-rs"]).output();

    // An existing chatmail.ini is kept byte for byte.
    fs::create_dir_all(Path::new(INI).parent().unwrap()).unwrap();
    fs::write(INI, b"[params]\nmail_domain = kept.example.org\n").unwrap();
    run("dpkg", &["-i", deb.to_str().unwrap()]);
    for name in BINARIES {
        let path = Path::new("/usr/bin").join(name);
        let mode = fs::metadata(&path)
            .unwrap_or_else(|err| panic!("{path:?} not installed: {err}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "{path:?} mode {mode:o}");
    }
    let shipped = shipped_files(&root);
    for unit in [
        "doveauth.service",
        "echobot.service",
        "chatmail-expire.timer",
    ] {
        let path = Path::new("/lib/systemd/system").join(unit);
        assert!(
            shipped.iter().any(|(_, to)| *to == path),
            "{unit} not shipped"
        );
    }
    for file in [
        "dovecot/dovecot.conf",
        "dovecot/auth.conf",
        "postfix/main.cf",
    ] {
        let path = Path::new(SHARE).join("conf").join(file);
        assert!(
            shipped.iter().any(|(_, to)| *to == path),
            "{file} not shipped"
        );
    }
    for (from, to) in &shipped {
        let installed = fs::read(to).unwrap_or_else(|err| panic!("{to:?} not installed: {err}"));
        assert!(
            installed == fs::read(from).unwrap(),
            "{to:?} differs from {from:?}"
        );
        let mode = fs::metadata(to).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "{to:?} mode {mode:o}");
    }
    assert_eq!(
        fs::read_to_string(INI).unwrap(),
        "[params]\nmail_domain = kept.example.org\n"
    );
    run("getent", &["passwd", "vmail"]);
    let version = run("/usr/bin/doveauth", &["--version"]);
    assert!(version.starts_with("doveauth "), "{version}");

    // Without one, the template is installed, and it loads.
    fs::remove_file(INI).unwrap();
    run("dpkg", &["-i", deb.to_str().unwrap()]);
    let template = fs::read_to_string(INI).unwrap();
    assert!(
        template.contains("mail_domain = chat.example.org"),
        "{template}"
    );
    chatmail_config_loads(INI);

    run("dpkg", &["-r", "chatmaild-rs"]);
    for name in BINARIES {
        let path = Path::new("/usr/bin").join(name);
        assert!(!path.exists(), "{path:?} left after dpkg -r");
    }
    for (_, to) in &shipped {
        assert!(!to.exists(), "{to:?} left after dpkg -r");
    }
    assert!(!Path::new(SHARE).exists(), "{SHARE} left after dpkg -r");
    assert!(
        Path::new(INI).exists(),
        "chatmail.ini is the operator's: kept"
    );

    match before {
        Some(content) => fs::write(INI, content).unwrap(),
        None => fs::remove_file(INI).unwrap(),
    }
}

/// The shipped template is a valid chatmail.ini: doveauth refuses a bad one at once with
/// status 1, so a socket in a temp dir and a quick SIGTERM tell.
fn chatmail_config_loads(ini: &str) {
    let output = Command::new("/usr/bin/doveauth")
        .args(["/nonexistent-dir/doveauth.socket", ini])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot listen on /nonexistent-dir/doveauth.socket"),
        "the template loads and only the socket fails: {stderr}"
    );
}
