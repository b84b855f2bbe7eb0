//! Helpers shared by the load benchmarks of the daemons (`cargo bench`): the benchmark's
//! duration, the daemon under load (started, waited for, killed when dropped), its memory,
//! threads and CPU time from `/proc`, the machine's busy time and description, percentiles
//! and the number formats of the result tables.
//!
//! Linux only (it reads `/proc`); used as a dev-dependency, never by a daemon.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// /proc reports CPU times in USER_HZ, which is 100 on Linux.
const USER_HZ: f64 = 100.0;

/// Bound on a daemon's start-up (its READY=1).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the benchmark runs as `cargo bench` (`--bench` in its arguments) rather than as
/// the short smoke run of `cargo test --all-targets`.
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Seconds per scenario: `BENCH_SECONDS`, else 5 under `cargo bench`, else 0.2 (smoke run).
///
/// # Panics
///
/// When `BENCH_SECONDS` is not a number.
pub fn scenario_seconds(bench_mode: bool) -> f64 {
    match std::env::var("BENCH_SECONDS") {
        Ok(s) => s
            .parse()
            .expect("BENCH_SECONDS must be a number of seconds"),
        Err(_) if bench_mode => 5.0,
        Err(_) => 0.2,
    }
}

/// The command line that reproduces this run, for the report: the environment variables
/// among `vars` that are set (`VAR=value `), then `cargo bench <target>` (or, for the smoke
/// run, `cargo test <target>` with a note), `target` being e.g. `-p doveauth --bench socket`.
pub fn command_line(bench_mode: bool, vars: &[&str], target: &str) -> String {
    let mut command = String::new();
    for var in vars {
        if let Ok(value) = std::env::var(var) {
            let _ = write!(command, "{var}={value} ");
        }
    }
    if bench_mode {
        let _ = write!(command, "cargo bench {target}");
    } else {
        let _ = write!(
            command,
            "cargo test {target}   (smoke run; use cargo bench for figures)"
        );
    }
    command
}

/// An upstream command prefix from the environment variable `var`, split on whitespace;
/// `None` when unset or blank.
pub fn upstream_command(var: &str) -> Option<Vec<String>> {
    std::env::var(var)
        .ok()
        .map(|s| s.split_whitespace().map(str::to_owned).collect())
        .filter(|v: &Vec<String>| !v.is_empty())
}

// ---------------------------------------------------------------------------------------
// The daemon

/// The daemon process; killed when dropped, so a panic leaves nothing running.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// Takes charge of a started process.
    pub fn new(child: Child) -> Daemon {
        Daemon { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Not exited yet.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `command` as a daemon that reports readiness: `NOTIFY_SOCKET` set to
/// `notify_path`, `JOURNAL_STREAM` and `RUST_LOG` removed, stdin and stdout on /dev/null,
/// stderr into `log`.
///
/// # Panics
///
/// When the process cannot be started (naming it `name`).
pub fn spawn_notifying(
    command: &mut Command,
    notify_path: &Path,
    log: fs::File,
    name: &str,
) -> Daemon {
    let child = command
        .env("NOTIFY_SOCKET", notify_path)
        .env_remove("JOURNAL_STREAM")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|err| panic!("start {name}: {err}"));
    Daemon::new(child)
}

/// A datagram socket at `path` to pass to a daemon as `NOTIFY_SOCKET`, with a read
/// timeout of [`READY_TIMEOUT`].
///
/// # Panics
///
/// When the socket cannot be bound.
pub fn notify_socket(path: &Path) -> UnixDatagram {
    let notify = UnixDatagram::bind(path).expect("bind notify socket");
    notify
        .set_read_timeout(Some(READY_TIMEOUT))
        .expect("notify socket timeout");
    notify
}

/// Waits for the daemon `name`'s `READY=1` on `notify`.
///
/// # Panics
///
/// When none arrives within [`READY_TIMEOUT`] (with the daemon's `log()`), or when the
/// datagram is something else.
pub fn wait_ready(notify: &UnixDatagram, name: &str, log: impl FnOnce() -> String) {
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap_or_else(|err| {
        panic!(
            "no READY=1 from {name} within {READY_TIMEOUT:?}: {err}\n{}",
            log()
        )
    });
    assert_eq!(buf.get(..n).unwrap_or(&[]).trim_ascii(), b"READY=1");
}

// ---------------------------------------------------------------------------------------
// /proc

/// A numeric field of /proc/<pid>/status (kB for the Vm* fields, a count for `Threads:`).
pub fn proc_status_kib(pid: u32, key: &str) -> Option<u64> {
    proc_status_kib_of(&format!("/proc/{pid}/status"), key)
}

/// The first number after `key` at the start of a line of the file `path` (e.g.
/// `/proc/meminfo`'s `MemTotal:`).
pub fn proc_status_kib_of(path: &str, key: &str) -> Option<u64> {
    let status = fs::read_to_string(path).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.strip_prefix(key)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of a process from its `stat` file (`/proc/<pid>/stat`,
/// `/proc/self/stat`), in seconds; 0 when unreadable.
pub fn cpu_seconds(stat_path: &str) -> f64 {
    let Ok(stat) = fs::read_to_string(stat_path) else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / USER_HZ
}

/// Busy CPU time of the whole machine (all of /proc/stat's `cpu` line but idle and
/// iowait), in seconds.
pub fn machine_busy_seconds() -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let ticks: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: f64 = ticks.iter().sum();
    let idle = ticks.get(3).unwrap_or(&0.0) + ticks.get(4).unwrap_or(&0.0);
    (total - idle) / USER_HZ
}

// ---------------------------------------------------------------------------------------
// The machine

/// A file's content without surrounding white space, or `?`.
pub fn read_trimmed(path: &str) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "?".to_owned())
}

/// The current time as `date -u` prints it (`2026-01-31 12:00:00 UTC`), else seconds
/// since the epoch.
pub fn date_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M:%S UTC"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            format!("{secs} s since the epoch")
        })
}

/// The number of cores this process may use (0 if unknown).
pub fn nproc() -> usize {
    thread::available_parallelism().map_or(0, |n| n.get())
}

/// The CPU's model name from /proc/cpuinfo, or `?`.
pub fn cpu_model() -> String {
    fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "?".to_owned())
}

/// The first lines of a report: its `# title`, then the command, argv, date, machine
/// (cores, CPU, RAM, kernel) and load average as a list.
pub fn print_preamble(title: &str, command: &str) {
    let argv: Vec<String> = std::env::args().collect();
    let kernel = read_trimmed("/proc/sys/kernel/osrelease");
    let mem_total = proc_status_kib_of("/proc/meminfo", "MemTotal:").unwrap_or(0);
    println!("# {title}");
    println!();
    println!("- command: `{command}`");
    println!("- argv: `{}`", argv.join(" "));
    println!("- date: {}", date_utc());
    println!(
        "- machine: nproc {}, {}, {:.1} GiB RAM, Linux {kernel}",
        nproc(),
        cpu_model(),
        mem_total as f64 / 1024.0 / 1024.0
    );
    println!("- load average at start: {}", read_trimmed("/proc/loadavg"));
}

// ---------------------------------------------------------------------------------------
// Figures

/// Nearest-rank percentile (`p` in 0..=1) of sorted values; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .copied()
        .unwrap_or(Duration::ZERO)
}

/// KiB as MiB.
pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Milliseconds with three or four significant digits (`0.123`, `1.23`, `12.3`, `123`).
pub fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1.0 {
        format!("{ms:.3}")
    } else if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// A rounded non-negative number with thousands separators (`12,345`).
pub fn thousands(x: f64) -> String {
    let digits = format!("{:.0}", x.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.50), Duration::from_millis(50));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&v, 0.0), Duration::from_millis(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn formats() {
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-3.0), "0");
        assert_eq!(ms(Duration::from_micros(123)), "0.123");
        assert_eq!(ms(Duration::from_micros(12_345)), "12.3");
        assert_eq!(ms(Duration::from_millis(250)), "250");
        assert_eq!(mib(2048), 2.0);
    }

    #[test]
    fn reads_proc() {
        assert!(proc_status_kib(std::process::id(), "VmRSS:").is_some_and(|k| k > 0));
        assert!(proc_status_kib_of("/proc/meminfo", "MemTotal:").is_some_and(|k| k > 0));
        assert!(cpu_seconds("/proc/self/stat") >= 0.0);
        assert!(machine_busy_seconds() > 0.0);
    }
}
