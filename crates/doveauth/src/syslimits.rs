//! The system-limits check before an account is created (upstream HEAD `syslimits`):
//! refuse new accounts while the machine is overloaded, short of memory or of disk.
//! Existing accounts are never affected.
//!
//! Reading is split from judging so the rules are tested with any numbers.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Thresholds from chatmail.ini.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemLimits {
    pub max_load_1m: f64,
    pub min_available_memory_mb: i64,
    pub min_free_disk_space_mb: i64,
}

/// One reading of the machine. `Err` means unreadable: that check is skipped with a warning.
#[derive(Debug)]
pub struct Readings {
    pub load_1m: io::Result<f64>,
    pub available_memory_mb: io::Result<i64>,
    pub free_disk_mb: io::Result<i64>,
}

impl Readings {
    /// Reads `/proc/loadavg`, `MemAvailable` of `/proc/meminfo` and the space free to
    /// unprivileged users on the file system of `mailboxes_dir`. Blocking: a few syscalls.
    pub fn read(mailboxes_dir: &Path) -> Readings {
        Readings {
            load_1m: read_load_1m(Path::new("/proc/loadavg")),
            available_memory_mb: read_available_memory_mb(Path::new("/proc/meminfo")),
            free_disk_mb: read_free_disk_mb(mailboxes_dir),
        }
    }
}

/// Readings shared by the creations of one moment. The load average moves every 5 s and
/// memory and disk change slowly, while `/proc/meminfo` costs tens of microseconds to
/// generate: during a burst of first logins one reading per interval is enough.
#[derive(Debug)]
pub struct CachedReadings {
    mailboxes_dir: PathBuf,
    max_age: Duration,
    latest: Mutex<Option<(Instant, Arc<Readings>)>>,
}

impl CachedReadings {
    pub fn new(mailboxes_dir: PathBuf, max_age: Duration) -> CachedReadings {
        CachedReadings {
            mailboxes_dir,
            max_age,
            latest: Mutex::new(None),
        }
    }

    /// The latest readings, taken anew when older than `max_age`. Blocking.
    pub fn get(&self) -> Arc<Readings> {
        let mut latest = self
            .latest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        match &*latest {
            Some((taken, readings)) if taken.elapsed() < self.max_age => readings.clone(),
            _ => {
                let readings = Arc::new(Readings::read(&self.mailboxes_dir));
                *latest = Some((Instant::now(), readings.clone()));
                readings
            }
        }
    }
}

/// Judges `readings` against `limits`, in upstream's order (load, memory, disk). Returns
/// the refusal message (`load avg 6.13 > 5.00`, ...) for the first exceeded limit.
/// Unreadable quantities are logged and skipped, so one broken reading disables only its
/// own check.
pub fn check(limits: &SystemLimits, readings: &Readings) -> Result<(), String> {
    match &readings.load_1m {
        Ok(load) if *load > limits.max_load_1m => {
            return Err(format!("load avg {load:.2} > {:.2}", limits.max_load_1m));
        }
        Ok(_) => {}
        Err(err) => tracing::warn!("ignoring unreadable system limit: load average: {err}"),
    }
    match &readings.available_memory_mb {
        Ok(mem) if *mem < limits.min_available_memory_mb => {
            return Err(format!(
                "available memory {mem}MB < {}MB",
                limits.min_available_memory_mb
            ));
        }
        Ok(_) => {}
        Err(err) => tracing::warn!("ignoring unreadable system limit: available memory: {err}"),
    }
    match &readings.free_disk_mb {
        Ok(disk) if *disk < limits.min_free_disk_space_mb => {
            return Err(format!(
                "free disk {disk}MB < {}MB",
                limits.min_free_disk_space_mb
            ));
        }
        Ok(_) => {}
        Err(err) => tracing::warn!("ignoring unreadable system limit: free disk: {err}"),
    }
    Ok(())
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// First field of `/proc/loadavg`.
pub fn read_load_1m(path: &Path) -> io::Result<f64> {
    parse_loadavg(&std::fs::read_to_string(path)?)
}

pub fn parse_loadavg(text: &str) -> io::Result<f64> {
    text.split_ascii_whitespace()
        .next()
        .and_then(|field| field.parse().ok())
        .ok_or_else(|| invalid("no load average in /proc/loadavg"))
}

/// `MemAvailable` of `/proc/meminfo`, in MiB.
pub fn read_available_memory_mb(path: &Path) -> io::Result<i64> {
    parse_meminfo_available_mb(&std::fs::read_to_string(path)?)
}

pub fn parse_meminfo_available_mb(text: &str) -> io::Result<i64> {
    let kib: i64 = text
        .lines()
        .find_map(|line| line.strip_prefix("MemAvailable:"))
        .and_then(|rest| rest.split_ascii_whitespace().next())
        .and_then(|value| value.parse().ok())
        .ok_or_else(|| invalid("no MemAvailable in /proc/meminfo"))?;
    Ok(kib / 1024)
}

/// Space available to unprivileged users on the file system holding `path`, in MiB.
pub fn read_free_disk_mb(path: &Path) -> io::Result<i64> {
    let stat = nix::sys::statvfs::statvfs(path)?;
    let bytes = u128::from(stat.blocks_available()) * u128::from(stat.fragment_size());
    Ok(i64::try_from(bytes / 1_048_576).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(load: f64, mem: i64, disk: i64) -> SystemLimits {
        SystemLimits {
            max_load_1m: load,
            min_available_memory_mb: mem,
            min_free_disk_space_mb: disk,
        }
    }

    fn readings(load: f64, mem: i64, disk: i64) -> Readings {
        Readings {
            load_1m: Ok(load),
            available_memory_mb: Ok(mem),
            free_disk_mb: Ok(disk),
        }
    }

    #[test]
    fn permissive_limits_pass_on_this_machine() {
        let here = Readings::read(Path::new("/"));
        assert!(here.load_1m.is_ok() && here.available_memory_mb.is_ok());
        assert!(here.free_disk_mb.is_ok());
        assert_eq!(check(&limits(99999.0, 0, 0), &here), Ok(()));
    }

    #[test]
    fn each_limit_refuses_with_upstreams_message() {
        assert_eq!(
            check(&limits(5.0, 200, 1024), &readings(6.126, 300, 2048)),
            Err("load avg 6.13 > 5.00".into())
        );
        assert_eq!(
            check(&limits(5.0, 200, 1024), &readings(1.0, 150, 2048)),
            Err("available memory 150MB < 200MB".into())
        );
        assert_eq!(
            check(&limits(5.0, 200, 1024), &readings(1.0, 300, 1000)),
            Err("free disk 1000MB < 1024MB".into())
        );
        assert_eq!(
            check(&limits(5.0, 200, 1024), &readings(5.0, 200, 1024)),
            Ok(()),
            "limits are inclusive"
        );
    }

    #[test]
    fn huge_requirements_on_this_machine_refuse() {
        let here = Readings::read(Path::new("/"));
        assert!(
            check(&limits(-1.0, 0, 0), &here)
                .unwrap_err()
                .starts_with("load avg")
        );
        let huge = 99_999_999 * 1024;
        assert!(
            check(&limits(99999.0, huge, 0), &here)
                .unwrap_err()
                .starts_with("available memory")
        );
        assert!(
            check(&limits(99999.0, 0, huge), &here)
                .unwrap_err()
                .starts_with("free disk")
        );
    }

    #[test]
    fn unreadable_values_skip_only_their_own_check() {
        let missing = Readings::read(Path::new("/nonexistent/mailboxes"));
        assert!(missing.free_disk_mb.is_err());
        assert_eq!(check(&limits(99999.0, 0, i64::MAX), &missing), Ok(()));

        let no_load = Readings {
            load_1m: Err(invalid("broken")),
            available_memory_mb: Ok(10),
            free_disk_mb: Ok(5),
        };
        assert_eq!(
            check(&limits(0.0, 0, 10), &no_load),
            Err("free disk 5MB < 10MB".into()),
            "a failing load reading does not disable the disk check"
        );
    }

    #[test]
    fn cached_readings_are_reused_then_refreshed() {
        let cache = CachedReadings::new(PathBuf::from("/"), Duration::from_millis(100));
        let first = cache.get();
        assert!(Arc::ptr_eq(&first, &cache.get()), "reused within max_age");
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            !Arc::ptr_eq(&first, &cache.get()),
            "taken anew after max_age"
        );
    }

    #[test]
    fn proc_parsers() {
        assert_eq!(parse_loadavg("0.52 0.58 0.59 1/189 12345\n").unwrap(), 0.52);
        assert!(parse_loadavg("").is_err());
        let meminfo = "MemTotal:       24000000 kB\nMemFree: 1 kB\nMemAvailable:   2097152 kB\n";
        assert_eq!(parse_meminfo_available_mb(meminfo).unwrap(), 2048);
        assert!(parse_meminfo_available_mb("MemTotal: 1 kB\n").is_err());
    }
}
