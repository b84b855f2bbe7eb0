//! Load benchmark of the `doveauth` binary over its unix socket (acceptance point 9):
//! passdb lookups of existing accounts at 1, 8 and 64 connections, userdb lookups at 64,
//! first-login creations at 1 and 64, each for a fixed time, with ops/s, p50/p99 latency,
//! the daemon's idle and peak RSS, and the cost of one SHA512-crypt hash alone.
//!
//! `cargo bench -p doveauth --bench socket`
//!
//! - `BENCH_SECONDS` (default 5): duration of each scenario.
//! - `BENCH_DIR`: where the temporary relays live (default: the system temp dir). Account
//!   creation costs inodes, so the file system shows in the creation figures: compare
//!   with a tmpfs such as `/dev/shm`.
//! - `DOVEAUTH_BENCH_UPSTREAM`: a command prefix (e.g. `/venv/bin/doveauth`) run as
//!   `CMD SOCKET INI`; the same scenarios then run against it and ours/upstream ratios are
//!   printed.
//!
//! One request in flight per connection: send a line, read the reply line, record the
//! latency. The load generator runs on the same machine as the daemon. Without `--bench`
//! (as `cargo test --all-targets` runs it) it does a short smoke run.

#![allow(clippy::indexing_slicing, clippy::string_slice)]

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use chatmail_bench_support::{
    Daemon, cpu_seconds, machine_busy_seconds, mib, ms, notify_socket, percentile, print_preamble,
    proc_status_kib, spawn_notifying, thousands, wait_ready,
};

const DOMAIN: &str = "chat.example.org";
/// Accounts created on disk before the load; lookups pick among them at random.
const ACCOUNTS: usize = 1000;
/// At least 9 characters (creation rule), no `"` or `\` (the key's separators).
const PASSWORD: &str = "benchpass123";
const HELLO: &[u8] = b"H3\t2\t0\t\tauth\n";
/// Bound on a single reply and on the daemon's start-up.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
enum Kind {
    Passdb,
    Userdb,
    /// First logins of fresh addresses starting with this letter.
    Create(char),
}

struct Scenario {
    name: &'static str,
    kind: Kind,
    connections: usize,
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "passdb lookup, existing account",
        kind: Kind::Passdb,
        connections: 1,
    },
    Scenario {
        name: "passdb lookup, existing account",
        kind: Kind::Passdb,
        connections: 8,
    },
    Scenario {
        name: "passdb lookup, existing account",
        kind: Kind::Passdb,
        connections: 64,
    },
    Scenario {
        name: "userdb lookup",
        kind: Kind::Userdb,
        connections: 64,
    },
    Scenario {
        name: "first-login creation",
        kind: Kind::Create('a'),
        connections: 1,
    },
    Scenario {
        name: "first-login creation",
        kind: Kind::Create('b'),
        connections: 64,
    },
];

struct Measured {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    /// CPU cores the daemon and the load generator used on average during the scenario.
    daemon_cores: f64,
    client_cores: f64,
    /// Busy cores of the whole machine minus the two above: other work that competed.
    other_cores: f64,
    rss_after_kib: u64,
}

impl Measured {
    fn ops_per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct TargetResult {
    label: String,
    command: String,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
    threads_at_end: u64,
    scenarios: Vec<Measured>,
}

fn main() {
    let bench_mode = chatmail_bench_support::bench_mode();
    let seconds = chatmail_bench_support::scenario_seconds(bench_mode);
    let duration = Duration::from_secs_f64(seconds);
    let upstream = chatmail_bench_support::upstream_command("DOVEAUTH_BENCH_UPSTREAM");

    print_header(bench_mode, seconds);

    let hash_time = if bench_mode {
        Duration::from_secs(1)
    } else {
        Duration::from_millis(100)
    };
    let hash = measure_hash(hash_time);

    let ours_bin = env!("CARGO_BIN_EXE_doveauth").to_owned();
    let ours = run_target("ours (Rust)", Launch::Ours(ours_bin), duration);
    let theirs =
        upstream.map(|cmd| run_target("upstream (Python)", Launch::Upstream(cmd), duration));

    print_report(&ours, theirs.as_ref(), &hash, seconds);
}

// ---------------------------------------------------------------------------------------
// Header

fn print_header(bench_mode: bool, seconds: f64) {
    let command = chatmail_bench_support::command_line(
        bench_mode,
        &["BENCH_SECONDS", "BENCH_DIR", "DOVEAUTH_BENCH_UPSTREAM"],
        "-p doveauth --bench socket",
    );
    print_preamble("doveauth socket benchmark", &command);
    println!(
        "- {seconds} s per scenario, {ACCOUNTS} pre-created accounts, one request in flight \
         per connection, load generator on the same cores"
    );
    println!();
}

// ---------------------------------------------------------------------------------------
// Hash cost

struct HashCost {
    single_per_sec: f64,
    all_cores_per_sec: f64,
    cores: usize,
}

/// `hash_password` in a loop on one thread, then on every core at once; the best of three
/// rounds of each, as the ceiling the daemon could reach.
fn measure_hash(time: Duration) -> HashCost {
    let cores = thread::available_parallelism().map_or(1, |n| n.get());
    let mut single: f64 = 0.0;
    let mut all: f64 = 0.0;
    for _ in 0..3 {
        let start = Instant::now();
        let n = hash_loop(time);
        single = single.max(n as f64 / start.elapsed().as_secs_f64());
        let start = Instant::now();
        let total: u64 = thread::scope(|s| {
            let handles: Vec<_> = (0..cores).map(|_| s.spawn(|| hash_loop(time))).collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        all = all.max(total as f64 / start.elapsed().as_secs_f64());
    }
    HashCost {
        single_per_sec: single,
        all_cores_per_sec: all,
        cores,
    }
}

fn hash_loop(time: Duration) -> u64 {
    let deadline = Instant::now() + time;
    let mut n = 0u64;
    while Instant::now() < deadline {
        std::hint::black_box(doveauth::hash::hash_password(std::hint::black_box(
            PASSWORD,
        )));
        n += 1;
    }
    n
}

// ---------------------------------------------------------------------------------------
// Daemons

enum Launch {
    /// Our binary; readiness by sd_notify.
    Ours(String),
    /// A command prefix; readiness when the socket accepts connections.
    Upstream(Vec<String>),
}

/// A temporary relay: chatmail.ini, mailboxes with [`ACCOUNTS`] accounts.
struct Relay {
    dir: tempfile::TempDir,
}

impl Relay {
    fn new() -> Relay {
        let base = std::env::var_os("BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("doveauth-bench")
            .tempdir_in(&base)
            .unwrap_or_else(|err| panic!("temp dir in {}: {err}", base.display()));
        let path = |name: &str| dir.path().join(name).display().to_string();
        let ini = format!(
            "[params]\n\
             mail_domain = {DOMAIN}\n\
             mailboxes_dir = {}\n\
             passdb_path = {}\n\
             nocreate_file = {}\n\
             max_load_1m = 100000\n\
             min_available_memory = 0M\n\
             min_free_disk_space = 0M\n",
            path("mail"),
            path("passdb.sqlite"),
            path("nocreate"),
        );
        fs::write(dir.path().join("chatmail.ini"), ini).expect("write chatmail.ini");
        // One hash for every account: lookups return the stored hash without checking it.
        let hash = doveauth::hash::hash_password(PASSWORD);
        for i in 0..ACCOUNTS {
            let maildir = dir.path().join("mail").join(existing_addr(i));
            fs::create_dir_all(&maildir).expect("create maildir");
            fs::write(maildir.join("password"), &hash).expect("write password");
            fs::write(maildir.join("enforceE2EEincoming"), "").expect("write marker");
        }
        Relay { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start(&self, launch: &Launch) -> (Daemon, String) {
        let socket = self.path("doveauth.socket");
        let ini = self.path("chatmail.ini");
        let log = fs::File::create(self.path("daemon.log")).expect("daemon log");
        match launch {
            Launch::Ours(bin) => {
                let notify_path = self.path("notify");
                let notify = notify_socket(&notify_path);
                let daemon = spawn_notifying(
                    Command::new(bin).arg(&socket).arg(&ini),
                    &notify_path,
                    log,
                    "doveauth",
                );
                wait_ready(&notify, "doveauth", || self.log());
                let command = format!("{bin} SOCKET INI");
                (daemon, command)
            }
            Launch::Upstream(cmd) => {
                let child = Command::new(&cmd[0])
                    .args(&cmd[1..])
                    .arg(&socket)
                    .arg(&ini)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|err| panic!("start {cmd:?}: {err}"));
                let mut daemon = Daemon::new(child);
                let deadline = Instant::now() + IO_TIMEOUT;
                loop {
                    if UnixStream::connect(&socket).is_ok() {
                        break;
                    }
                    assert!(daemon.alive(), "{cmd:?} exited at start:\n{}", self.log());
                    assert!(
                        Instant::now() < deadline,
                        "{cmd:?} did not accept connections within {IO_TIMEOUT:?}"
                    );
                    thread::sleep(Duration::from_millis(20));
                }
                (daemon, format!("{} SOCKET INI", cmd.join(" ")))
            }
        }
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }
}

fn existing_addr(i: usize) -> String {
    format!("u{i:08}@{DOMAIN}")
}

fn run_target(label: &str, launch: Launch, duration: Duration) -> TargetResult {
    eprintln!("[{label}] creating {ACCOUNTS} accounts");
    let relay = Relay::new();
    let (mut daemon, command) = relay.start(&launch);
    let pid = daemon.pid();
    thread::sleep(Duration::from_millis(300));
    let idle_rss_kib = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    let socket = relay.path("doveauth.socket");
    let counter = AtomicU64::new(0);
    let mut scenarios = Vec::new();
    for scenario in SCENARIOS {
        eprintln!(
            "[{label}] {} x{} for {:?}",
            scenario.name, scenario.connections, duration
        );
        let measured = run_scenario(&socket, pid, scenario, duration, &counter);
        assert!(daemon.alive(), "{label} died:\n{}", relay.log());
        if let Some(err) = &measured.first_error {
            eprintln!("[{label}]   {} errors, first: {err}", measured.errors);
        }
        scenarios.push(measured);
    }
    let peak_rss_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    let threads_at_end = proc_status_kib(pid, "Threads:").unwrap_or(0);
    drop(daemon);
    TargetResult {
        label: label.to_owned(),
        command,
        idle_rss_kib,
        peak_rss_kib,
        threads_at_end,
        scenarios,
    }
}

// ---------------------------------------------------------------------------------------
// Load

struct WorkerResult {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

fn run_scenario(
    socket: &Path,
    pid: u32,
    scenario: &Scenario,
    duration: Duration,
    counter: &AtomicU64,
) -> Measured {
    let n = scenario.connections;
    let barrier = Arc::new(Barrier::new(n + 1));
    let daemon_stat = format!("/proc/{pid}/stat");
    let (results, elapsed, daemon_cpu, client_cpu, machine_cpu) = thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let barrier = barrier.clone();
                s.spawn(move || worker(socket, scenario.kind, i, &barrier, duration, counter))
            })
            .collect();
        // Every connection is open and has said hello before the clock starts.
        barrier.wait();
        let daemon_cpu0 = cpu_seconds(&daemon_stat);
        let client_cpu0 = cpu_seconds("/proc/self/stat");
        let machine_cpu0 = machine_busy_seconds();
        let start = Instant::now();
        let results: Vec<WorkerResult> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let elapsed = start.elapsed();
        let daemon_cpu = cpu_seconds(&daemon_stat) - daemon_cpu0;
        let client_cpu = cpu_seconds("/proc/self/stat") - client_cpu0;
        let machine_cpu = machine_busy_seconds() - machine_cpu0;
        (results, elapsed, daemon_cpu, client_cpu, machine_cpu)
    });
    let mut latencies: Vec<Duration> = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for r in results {
        latencies.extend(r.latencies);
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    latencies.sort_unstable();
    Measured {
        ok: latencies.len() as u64,
        errors,
        first_error,
        elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        daemon_cores: daemon_cpu / elapsed.as_secs_f64(),
        client_cores: client_cpu / elapsed.as_secs_f64(),
        other_cores: ((machine_cpu - daemon_cpu - client_cpu) / elapsed.as_secs_f64()).max(0.0),
        rss_after_kib: proc_status_kib(pid, "VmRSS:").unwrap_or(0),
    }
}

fn worker(
    socket: &Path,
    kind: Kind,
    index: usize,
    barrier: &Barrier,
    duration: Duration,
    counter: &AtomicU64,
) -> WorkerResult {
    let mut result = WorkerResult {
        latencies: Vec::with_capacity(4096),
        errors: 0,
        first_error: None,
    };
    let connected = UnixStream::connect(socket).and_then(|stream| {
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        (&stream).write_all(HELLO)?;
        Ok(stream)
    });
    // Reach the barrier even on failure, or the others would wait forever.
    barrier.wait();
    let stream = match connected {
        Ok(stream) => stream,
        Err(err) => {
            result.errors += 1;
            result.first_error = Some(format!("connect: {err}"));
            return result;
        }
    };
    let deadline = Instant::now() + duration;
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let mut rng = XorShift::new(index as u64);
    let mut request = String::with_capacity(128);
    let mut reply = String::with_capacity(512);
    while Instant::now() < deadline {
        request.clear();
        match kind {
            Kind::Passdb => {
                let addr = existing_addr(rng.below(ACCOUNTS));
                let _ = writeln!(request, "Lshared/passdb/{PASSWORD}\"{addr}\t{addr}");
            }
            Kind::Userdb => {
                let addr = existing_addr(rng.below(ACCOUNTS));
                let _ = writeln!(request, "Lshared/userdb/{addr}\t{addr}");
            }
            Kind::Create(letter) => {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                let addr = format!("{letter}{n:08}@{DOMAIN}");
                let _ = writeln!(request, "Lshared/passdb/{PASSWORD}\"{addr}\t{addr}");
            }
        }
        reply.clear();
        let start = Instant::now();
        let outcome = writer
            .write_all(request.as_bytes())
            .and_then(|()| reader.read_line(&mut reply));
        let latency = start.elapsed();
        match outcome {
            Ok(_) if reply.starts_with("O{") && reply.ends_with('\n') => {
                result.latencies.push(latency);
            }
            Ok(_) => {
                result.errors += 1;
                result
                    .first_error
                    .get_or_insert_with(|| format!("unexpected reply {reply:?}"));
                if reply.is_empty() {
                    break; // closed
                }
            }
            Err(err) => {
                result.errors += 1;
                result
                    .first_error
                    .get_or_insert_with(|| format!("io: {err}"));
                break;
            }
        }
    }
    result
}

/// xorshift64*: enough to spread lookups over the accounts.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> XorShift {
        XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 32) as usize % n
    }
}

// ---------------------------------------------------------------------------------------
// Report

fn print_report(ours: &TargetResult, theirs: Option<&TargetResult>, hash: &HashCost, seconds: f64) {
    println!("## doveauth over its unix socket ({seconds} s per scenario)");
    println!();
    println!(
        "| daemon | scenario | connections | ops/s | p50 ms | p99 ms | errors | daemon cores | daemon CPU µs/op | load-gen cores | other cores | RSS after MiB |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for target in std::iter::once(ours).chain(theirs) {
        for (scenario, m) in SCENARIOS.iter().zip(&target.scenarios) {
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.0} | {:.2} | {:.2} | {:.1} |",
                target.label,
                scenario.name,
                scenario.connections,
                thousands(m.ops_per_sec()),
                ms(m.p50),
                ms(m.p99),
                m.errors,
                m.daemon_cores,
                1e6 * m.daemon_cores / m.ops_per_sec().max(1e-9),
                m.client_cores,
                m.other_cores,
                mib(m.rss_after_kib),
            );
        }
    }
    println!();
    for target in std::iter::once(ours).chain(theirs) {
        println!(
            "- {}: `{}`: RSS {:.1} MiB idle, {:.1} MiB peak (VmHWM), threads at the end: {}",
            target.label,
            target.command,
            mib(target.idle_rss_kib),
            mib(target.peak_rss_kib),
            target.threads_at_end,
        );
    }
    println!(
        "- SHA512-crypt alone (`doveauth::hash::hash_password`, 5000 rounds): {} hashes/s on \
         one thread ({:.2} ms each); {} cores: implied ceiling {}/s, measured {}/s on {} threads \
         (best of 3 rounds)",
        thousands(hash.single_per_sec),
        1000.0 / hash.single_per_sec.max(1e-9),
        hash.cores,
        thousands(hash.single_per_sec * hash.cores as f64),
        thousands(hash.all_cores_per_sec),
        hash.cores,
    );
    for (scenario, m) in SCENARIOS.iter().zip(&ours.scenarios) {
        if matches!(scenario.kind, Kind::Create(_)) {
            println!(
                "- ours, creation at {} connection(s): {:.0}% of the one-thread hash rate, \
                 {:.0}% of the all-core hash rate",
                scenario.connections,
                100.0 * m.ops_per_sec() / hash.single_per_sec.max(1e-9),
                100.0 * m.ops_per_sec() / hash.all_cores_per_sec.max(1e-9),
            );
        }
    }
    if let Some(theirs) = theirs {
        println!();
        println!("### ours / upstream");
        println!();
        println!(
            "| scenario | connections | ops/s ours/upstream | p50 upstream/ours | p99 upstream/ours |"
        );
        println!("|---|---:|---:|---:|---:|");
        for ((scenario, a), b) in SCENARIOS.iter().zip(&ours.scenarios).zip(&theirs.scenarios) {
            println!(
                "| {} | {} | {:.1}x | {:.1}x | {:.1}x |",
                scenario.name,
                scenario.connections,
                a.ops_per_sec() / b.ops_per_sec().max(1e-9),
                ratio(b.p50, a.p50),
                ratio(b.p99, a.p99),
            );
        }
        println!();
        println!(
            "- peak RSS upstream/ours: {:.1}x",
            theirs.peak_rss_kib as f64 / (ours.peak_rss_kib as f64).max(1.0)
        );
    }
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}
