//! The Debian package: built by packaging/build-deb, installed with dpkg on this machine,
//! checked, and removed again. Needs root and dpkg: skipped elsewhere, except in CI.

use std::fs;
use std::path::Path;
use std::process::Command;

use chatmail_e2e::binaries::workspace_root;

const INI: &str = "/usr/local/lib/chatmaild/chatmail.ini";

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
    for path in [
        "/usr/bin/doveauth",
        "/usr/bin/lastlogin",
        "/usr/bin/chatmail-metadata",
        "/usr/bin/filtermail",
        "/lib/systemd/system/doveauth.service",
        "/lib/systemd/system/lastlogin.service",
        "/lib/systemd/system/chatmail-metadata.service",
        "/lib/systemd/system/filtermail.service",
        "/usr/share/chatmaild-rs/dovecot/push_notification.lua",
        "/usr/share/chatmaild-rs/chatmail.ini",
    ] {
        assert!(Path::new(path).exists(), "{path} not installed");
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
    for path in [
        "/usr/bin/doveauth",
        "/usr/bin/filtermail",
        "/lib/systemd/system/doveauth.service",
        "/usr/share/chatmaild-rs/chatmail.ini",
    ] {
        assert!(!Path::new(path).exists(), "{path} left after dpkg -r");
    }
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
