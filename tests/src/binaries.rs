//! Builds doveauth, lastlogin, chatmail-metadata, filtermail and chatmail-quota-expire once
//! per test process and finds their executables.
//!
//! Cargo builds only the binaries of the package under test, so the harness runs
//! `cargo build --bins -p doveauth -p lastlogin -p chatmail-metadata -p chatmail-filtermail
//! -p chatmail-expire` itself; the workspace's lock and fingerprints make this cheap when they are already up
//! to date.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Paths of the daemon executables under test.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// The passdb/userdb dict daemon.
    pub doveauth: PathBuf,
    /// The last-login dict daemon.
    pub lastlogin: PathBuf,
    /// The IMAP METADATA dict daemon and push notifier.
    pub metadata: PathBuf,
    /// The before-queue SMTP filter (`filtermail INI outgoing|incoming`).
    pub filtermail: PathBuf,
    /// Dovecot's quota-warning script (`chatmail-quota-expire TARGET_MB MAILBOX_PATH`).
    pub quota_expire: PathBuf,
}

/// The workspace root: this crate lives in `<workspace>/tests`.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the test crate has a parent directory")
        .to_path_buf()
}

/// Builds the daemons (once per process) and returns their paths; panics with cargo's
/// output if the build fails.
pub fn binaries() -> &'static Binaries {
    static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
    match BINARIES.get_or_init(build) {
        Ok(binaries) => binaries,
        Err(err) => panic!("{err}"),
    }
}

fn build() -> Result<Binaries, String> {
    let root = workspace_root();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(&cargo)
        .args([
            "build",
            "--bins",
            "-p",
            "doveauth",
            "-p",
            "lastlogin",
            "-p",
            "chatmail-metadata",
            "-p",
            "chatmail-filtermail",
            "-p",
            "chatmail-expire",
        ])
        .current_dir(&root)
        .output()
        .map_err(|err| format!("cannot run {cargo:?} build: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build of the daemons failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => root.join(dir),
        _ => root.join("target"),
    };
    let debug = target.join("debug");
    let find = |name: &str| {
        let path = debug.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "cargo built {name} but {} does not exist",
                path.display()
            ))
        }
    };
    Ok(Binaries {
        doveauth: find("doveauth")?,
        lastlogin: find("lastlogin")?,
        metadata: find("chatmail-metadata")?,
        filtermail: find("filtermail")?,
        quota_expire: find("chatmail-quota-expire")?,
    })
}
