//! What the machine must provide: Dovecot (and Postfix for the filtermail tests), root (to
//! start them and switch to `vmail`), and the `vmail` system user the daemons and mail
//! processes run as.

use std::path::Path;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use nix::unistd::{Gid, Uid, User};

/// Where Debian's `dovecot-core` installs the master binary.
pub const DOVECOT: &str = "/usr/sbin/dovecot";
/// Dovecot's administration tool (same package).
pub const DOVEADM: &str = "/usr/bin/doveadm";

/// Debian's `postfix` package: the administration command and the master daemon.
pub const POSTFIX: &str = "/usr/sbin/postfix";
pub const POSTFIX_MASTER: &str = "/usr/lib/postfix/sbin/master";

/// The `vmail` user as the daemons and Dovecot's mail processes use it.
#[derive(Debug, Clone, Copy)]
pub struct Vmail {
    /// Numeric user id, for `CommandExt::uid`, `chown` and Dovecot's `first_valid_uid`.
    pub uid: Uid,
    /// Numeric group id of the `vmail` group.
    pub gid: Gid,
}

/// Checks that this machine can run the end-to-end tests and returns the `vmail` user.
///
/// Without Dovecot or root: panics when the `CI` variable is set (CI must not silently skip),
/// otherwise prints why the current test is skipped and returns `None`.
pub fn require_dovecot() -> Option<Vmail> {
    let missing = if !Path::new(DOVECOT).exists() {
        Some(format!("{DOVECOT} is missing (install dovecot-imapd)"))
    } else if !Path::new(crate::tls::OPENSSL).exists() {
        Some(format!(
            "{} is missing (install openssl; it makes the relay's certificate)",
            crate::tls::OPENSSL
        ))
    } else if !Uid::effective().is_root() {
        Some("not running as root (needed to start Dovecot and switch to vmail)".to_string())
    } else {
        None
    };
    if let Some(why) = missing {
        let in_ci = std::env::var_os("CI").is_some_and(|value| !value.is_empty());
        if in_ci {
            panic!("Dovecot is required in CI: .ci/run installs dovecot-imapd; but {why}");
        }
        let test = std::thread::current().name().unwrap_or("test").to_string();
        eprintln!("skipping {test}: {why}");
        return None;
    }
    Some(vmail())
}

/// Checks that this machine can run Postfix next to Dovecot (the Postfix binaries and its
/// `postfix` user here; Dovecot and root through [`require_dovecot`]): `None` after
/// printing why the current test is skipped, or a panic when `CI` is set, as
/// [`require_dovecot`] does.
pub fn require_postfix() -> Option<Vmail> {
    let missing = if !Path::new(POSTFIX).exists() || !Path::new(POSTFIX_MASTER).exists() {
        Some(format!("{POSTFIX_MASTER} is missing (install postfix)"))
    } else if User::from_name("postfix").ok().flatten().is_none() {
        Some("the postfix user is missing (reinstall postfix)".to_string())
    } else {
        None
    };
    if let Some(why) = missing {
        let in_ci = std::env::var_os("CI").is_some_and(|value| !value.is_empty());
        if in_ci {
            panic!("Postfix is required in CI: .ci/run installs postfix; but {why}");
        }
        let test = std::thread::current().name().unwrap_or("test").to_string();
        eprintln!("skipping {test}: {why}");
        return None;
    }
    require_dovecot()
}

/// Looks up `vmail`, creating it as a system user on first use; panics if that fails.
fn vmail() -> Vmail {
    static VMAIL: OnceLock<Vmail> = OnceLock::new();
    *VMAIL.get_or_init(|| {
        let (uid, gid) = system_user("vmail");
        Vmail { uid, gid }
    })
}

/// The `filtermail` user that filtermail outgoing runs as, created as a system user on
/// first use; panics if that fails.
pub fn filtermail_user() -> (Uid, Gid) {
    static FILTERMAIL: OnceLock<(Uid, Gid)> = OnceLock::new();
    *FILTERMAIL.get_or_init(|| system_user("filtermail"))
}

/// Looks up a user, creating it as a system user with a group of its own, no home and no
/// login shell if it is missing; panics if that fails.
fn system_user(name: &str) -> (Uid, Gid) {
    static CREATE: Mutex<()> = Mutex::new(());
    let _guard = CREATE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(found) = lookup(name) {
        return found;
    }
    let output = Command::new("useradd")
        .args(["--system", "--user-group", "--no-create-home"])
        .args(["--shell", "/usr/sbin/nologin", name])
        .output()
        .expect("cannot run useradd");
    // Another process may have created it meanwhile; the lookup decides.
    lookup(name).unwrap_or_else(|| {
        panic!(
            "cannot create the {name} user ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

fn lookup(name: &str) -> Option<(Uid, Gid)> {
    let user = User::from_name(name).expect("cannot read the user database")?;
    Some((user.uid, user.gid))
}
