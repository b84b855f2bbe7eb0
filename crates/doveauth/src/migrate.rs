//! One-time migration of the pre-2024 sqlite passdb (`passdb_path`) into per-address
//! password files, as upstream's `migrate_db` does at every doveauth start.
//!
//! The database is only renamed (to `<path>.old`) after every row is written, so a
//! migration interrupted by a crash is simply done again at the next start: writing a row
//! twice gives the same files.

use std::path::{Path, PathBuf};

use chatmail_mailbox::{MailboxError, Mailboxes};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};
use thiserror::Error;

/// Rows between two progress lines.
const PROGRESS_EVERY: usize = 10_000;

#[derive(Debug, Error)]
pub enum MigrateError {
    #[error("{path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Mailbox(#[from] MailboxError),
    #[error("{path}: cannot move the migrated database aside: {source}")]
    Rename {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a migration did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    pub migrated: usize,
    /// CI accounts (`ci-`, `ac_`) left out, as upstream does.
    pub ci_skipped: usize,
    /// Rows that cannot be an account (bad address, no password): logged and left out.
    pub invalid_skipped: usize,
    /// Where the database was moved.
    pub moved_to: Option<PathBuf>,
}

/// One row of the `users` table.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    addr: Option<String>,
    password: Option<String>,
    last_login: Option<i64>,
}

/// Migrates `db_path` into `mailboxes` if the database exists; does nothing otherwise.
pub fn migrate_if_present(
    db_path: &Path,
    mailboxes: &Mailboxes,
) -> Result<Option<MigrationReport>, MigrateError> {
    if !db_path.exists() {
        return Ok(None);
    }
    let sqlite = |source| MigrateError::Sqlite {
        path: db_path.to_path_buf(),
        source,
    };
    let rows = read_rows(db_path).map_err(sqlite)?;
    let mut report = MigrationReport::default();
    let (ci, rows): (Vec<Row>, Vec<Row>) = rows.into_iter().partition(|row| {
        row.addr
            .as_deref()
            .is_some_and(|addr| addr.starts_with("ci-") || addr.starts_with("ac_"))
    });
    report.ci_skipped = ci.len();
    tracing::info!("ignoring {} CI accounts", report.ci_skipped);
    tracing::info!(
        "migrating {} sqlite database passwords to user dirs",
        rows.len()
    );
    for (i, row) in rows.iter().enumerate() {
        let (Some(addr), Some(password)) = (row.addr.as_deref(), row.password.as_deref()) else {
            tracing::warn!("migration: skipping a row without address or password: {row:?}");
            report.invalid_skipped += 1;
            continue;
        };
        let user = match mailboxes.user(addr) {
            Ok(user) => user,
            Err(err) => {
                tracing::warn!("migration: skipping invalid address: {err}");
                report.invalid_skipped += 1;
                continue;
            }
        };
        user.set_password(password)?;
        if let Some(timestamp) = row.last_login.filter(|ts| *ts != 0) {
            user.set_last_login(timestamp)?;
        }
        report.migrated += 1;
        if i > 0 && i % PROGRESS_EVERY == 0 {
            tracing::info!("migration-progress: {i} passwords transferred");
        }
    }
    tracing::info!("migration: all passwords migrated");
    let old = move_aside(db_path)?;
    tracing::info!("migration: moved database to '{}'", old.display());
    report.moved_to = Some(old);
    Ok(Some(report))
}

fn read_rows(db_path: &Path) -> Result<Vec<Row>, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        db_path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(60))?;
    let mut statement = conn.prepare("SELECT * FROM users")?;
    let columns = statement.column_count();
    let rows = statement.query_map([], |row| {
        Ok(Row {
            addr: text(row.get_ref(0)?),
            password: text(row.get_ref(1)?),
            last_login: if columns >= 3 {
                integer(row.get_ref(2)?)
            } else {
                None
            },
        })
    })?;
    rows.collect()
}

fn text(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Text(bytes) | ValueRef::Blob(bytes) => String::from_utf8(bytes.to_vec())
            .ok()
            .filter(|s| !s.is_empty()),
        _ => None,
    }
}

/// Python's `int(row[2])` for the values sqlite may hold; unparsable means "no login".
fn integer(value: ValueRef<'_>) -> Option<i64> {
    match value {
        ValueRef::Integer(i) => Some(i),
        ValueRef::Real(f) if f.is_finite() => Some(f.trunc() as i64),
        ValueRef::Text(bytes) => std::str::from_utf8(bytes).ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// Renames the database to `<path>.old` and deletes its `<name>-wal`, `<name>-shm`, ...
fn move_aside(db_path: &Path) -> Result<PathBuf, MigrateError> {
    let rename_error = |source| MigrateError::Rename {
        path: db_path.to_path_buf(),
        source,
    };
    let mut old = db_path.as_os_str().to_owned();
    old.push(".old");
    let old = PathBuf::from(old);
    std::fs::rename(db_path, &old).map_err(rename_error)?;
    let name = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sibling_prefix = format!("{name}-");
    let parent = db_path.parent().unwrap_or(Path::new("."));
    if let Ok(entries) = std::fs::read_dir(parent) {
        for entry in entries.flatten() {
            if entry
                .file_name()
                .to_string_lossy()
                .starts_with(&sibling_prefix)
            {
                if let Err(err) = std::fs::remove_file(entry.path()) {
                    tracing::warn!("migration: cannot remove {}: {err}", entry.path().display());
                }
            }
        }
    }
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create_db(path: &Path, with_last_login: bool) -> Connection {
        let conn = Connection::open(path).unwrap();
        if with_last_login {
            conn.execute_batch(
                "CREATE TABLE users (addr TEXT PRIMARY KEY, password TEXT, last_login INTEGER)",
            )
            .unwrap();
        } else {
            conn.execute_batch("CREATE TABLE users (addr TEXT PRIMARY KEY, password TEXT)")
                .unwrap();
        }
        conn
    }

    #[test]
    fn absent_database_is_nothing_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let boxes = Mailboxes::new(dir.path().join("mail"));
        assert_eq!(
            migrate_if_present(&dir.path().join("passdb.sqlite"), &boxes).unwrap(),
            None
        );
    }

    #[test]
    fn upstreams_thousand_rows_migrate() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("passdb.sqlite");
        let conn = create_db(&db, true);
        for i in 0..500i64 {
            conn.execute(
                "INSERT INTO users VALUES (?1, ?2, ?3)",
                (
                    format!("user{i}@x.org"),
                    format!("{{SHA512-CRYPT}}$6$s$h{i}"),
                    i * 86_400,
                ),
            )
            .unwrap();
        }
        for i in 500..1000i64 {
            conn.execute(
                "INSERT INTO users VALUES (?1, ?2, '')",
                (
                    format!("user{i}@x.org"),
                    format!("{{SHA512-CRYPT}}$6$s$h{i}"),
                ),
            )
            .unwrap();
        }
        conn.execute("INSERT INTO users VALUES ('ci-abc@x.org', 'p', NULL)", ())
            .unwrap();
        conn.execute("INSERT INTO users VALUES ('ac_abc@x.org', 'p', NULL)", ())
            .unwrap();
        conn.execute("INSERT INTO users VALUES ('../evil@x.org', 'p', NULL)", ())
            .unwrap();
        drop(conn);
        std::fs::write(dir.path().join("passdb.sqlite-wal"), "").unwrap();

        let boxes = Mailboxes::new(dir.path().join("mail"));
        let report = migrate_if_present(&db, &boxes).unwrap().unwrap();
        assert_eq!(report.migrated, 1000);
        assert_eq!(report.ci_skipped, 2);
        assert_eq!(report.invalid_skipped, 1);
        assert!(!db.exists());
        assert!(dir.path().join("passdb.sqlite.old").exists());
        assert!(!dir.path().join("passdb.sqlite-wal").exists());
        for i in [0i64, 1, 250, 499] {
            let user = boxes.user(&format!("user{i}@x.org")).unwrap();
            assert_eq!(
                user.password().unwrap().unwrap(),
                format!("{{SHA512-CRYPT}}$6$s$h{i}")
            );
            if i > 0 {
                assert_eq!(user.last_login().unwrap(), Some(i * 86_400));
            }
            assert!(!user.is_incoming_cleartext_ok());
        }
        let fresh = boxes.user("user700@x.org").unwrap();
        assert!(fresh.password().unwrap().is_some());
        assert!(!boxes.root().join("ci-abc@x.org").exists());
        assert!(!dir.path().join("evil@x.org").exists());
    }

    #[test]
    fn interrupted_migration_can_run_again() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("passdb.sqlite");
        let conn = create_db(&db, false);
        conn.execute("INSERT INTO users VALUES ('a@x.org', '{PLAIN}a')", ())
            .unwrap();
        conn.execute("INSERT INTO users VALUES ('b@x.org', '{PLAIN}b')", ())
            .unwrap();
        drop(conn);
        let boxes = Mailboxes::new(dir.path().join("mail"));
        // A previous run wrote one row and died before moving the database aside.
        boxes
            .user("a@x.org")
            .unwrap()
            .set_password("{PLAIN}a")
            .unwrap();
        let report = migrate_if_present(&db, &boxes).unwrap().unwrap();
        assert_eq!(report.migrated, 2);
        for (addr, pw) in [("a@x.org", "{PLAIN}a"), ("b@x.org", "{PLAIN}b")] {
            assert_eq!(boxes.user(addr).unwrap().password().unwrap().unwrap(), pw);
        }
        assert_eq!(migrate_if_present(&db, &boxes).unwrap(), None, "done once");
    }

    #[test]
    fn broken_database_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("passdb.sqlite");
        std::fs::write(&db, "this is not sqlite").unwrap();
        let boxes = Mailboxes::new(dir.path().join("mail"));
        let err = migrate_if_present(&db, &boxes).unwrap_err();
        assert!(err.to_string().contains("passdb.sqlite"), "{err}");
        assert!(db.exists(), "a database we could not read is left in place");
    }
}
