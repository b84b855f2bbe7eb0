//! Load benchmark of the `chatmail-metadata` binary over its unix socket: devicetoken SET
//! transactions each followed by a LOOKUP at 1, 8 and 64 connections, then `messagenew`
//! SETs for users with one token each, delivered to a local HTTP/1.1 gateway; with pairs/s,
//! p50/p99 latencies, notifications/s at the gateway and the daemon's idle and peak RSS.
//!
//! `cargo bench -p chatmail-metadata --bench socket`
//!
//! - `BENCH_SECONDS` (default 5): duration of each scenario.
//! - `BENCH_CONNECTIONS` (default `1,8,64`): the connection counts of the pair scenarios.
//! - `BENCH_DIR`: where the temporary relay lives (default: the system temp dir). Every
//!   token write creates a file (temp + rename), so the file system shows in the figures.
//! - `BENCH_NOTIFY=0`: skip the `messagenew` scenario (e.g. while profiling the pairs).
//! - `METADATA_BENCH_UPSTREAM`: a command prefix (e.g. `/venv/bin/chatmail-metadata`) run
//!   as `CMD SOCKET INI` in a relay of its own; the pair scenarios then run against it too
//!   and ours/upstream ratios are printed. Not the `messagenew` scenario: upstream's
//!   notification URL is hard-coded to the real service.
//!
//! One request in flight per connection: send a transaction or lookup, read the reply
//! line, record the latency. The load generator and the gateway run on the same machine as
//! the daemon. Without `--bench` (as `cargo test --all-targets` runs it) it does a short
//! smoke run.

#![allow(clippy::indexing_slicing, clippy::string_slice)]

use std::fmt::Write as _;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use chatmail_bench_support::{
    Daemon, cpu_seconds, mib, ms, notify_socket, percentile, print_preamble, proc_status_kib,
    spawn_notifying, thousands, wait_ready,
};

const DOMAIN: &str = "chat.example.org";
/// Users of the devicetoken scenarios, spread over the connections.
const USERS: usize = 1000;
/// Users with one token each, the recipients of `messagenew`.
const NOTIFY_USERS: usize = 100;
/// Connections sending `messagenew`.
const NOTIFY_CONNECTIONS: usize = 8;
const HELLO: &[u8] = b"H2\t2\t0\t\tmetadata\n";
/// Bound on a single reply and on the daemon's start-up.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on the wait for the notification queue to drain after the load stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Upstream's figures (../shared/figures.md): connections, pairs/s, set p99 ms, get p99 ms.
const UPSTREAM: &[(usize, f64, f64, f64)] = &[
    (1, 700.0, 2.1, 0.4),
    (8, 730.0, 21.0, 8.8),
    (64, 580.0, 202.0, 80.0),
];
const UPSTREAM_RSS_IDLE_MIB: f64 = 30.0;
const UPSTREAM_RSS_PEAK_MIB: f64 = 37.0;

const PAIR_CONNECTIONS: &[usize] = &[1, 8, 64];

/// `BENCH_CONNECTIONS` as a list, else [`PAIR_CONNECTIONS`].
fn pair_connections() -> Vec<usize> {
    match std::env::var("BENCH_CONNECTIONS") {
        Ok(list) => list
            .split(',')
            .filter(|n| !n.trim().is_empty())
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("BENCH_CONNECTIONS must be a comma-separated list of numbers")
            })
            .collect(),
        Err(_) => PAIR_CONNECTIONS.to_vec(),
    }
}

fn main() {
    let bench_mode = chatmail_bench_support::bench_mode();
    let seconds = chatmail_bench_support::scenario_seconds(bench_mode);
    let duration = Duration::from_secs_f64(seconds);
    print_header(bench_mode, seconds);

    let upstream = chatmail_bench_support::upstream_command("METADATA_BENCH_UPSTREAM");
    let notify = std::env::var("BENCH_NOTIFY").as_deref() != Ok("0");

    let gateway = Gateway::start();
    let bin = env!("CARGO_BIN_EXE_chatmail-metadata");
    let ours = run_target(Launch::Ours(bin.to_owned()), &gateway, duration, notify);
    // Upstream POSTs to the real notification service (its URL is hard-coded): never
    // send it messagenew.
    let theirs = upstream.map(|cmd| run_target(Launch::Upstream(cmd), &gateway, duration, false));
    print_report(&ours, theirs.as_ref(), seconds);
}

/// How a daemon is started.
enum Launch {
    /// Our binary, ready when it sends READY=1.
    Ours(String),
    /// A command prefix run as `CMD SOCKET INI`, ready when its socket accepts.
    Upstream(Vec<String>),
}

/// The figures of one daemon.
struct Target {
    name: &'static str,
    command: String,
    /// The file system's cost of one create + write + rename in the users' maildirs,
    /// before and after the pair scenarios.
    floor: Duration,
    floor_after: Duration,
    pairs: Vec<(usize, Measured)>,
    notify: Option<Notify>,
    idle_rss_kib: u64,
    peak_rss_kib: u64,
    threads: u64,
}

fn run_target(launch: Launch, gateway: &Gateway, duration: Duration, notify: bool) -> Target {
    let relay = Relay::new(gateway.port);
    let (name, command) = match &launch {
        Launch::Ours(bin) => ("ours (Rust)", format!("{bin} SOCKET INI")),
        Launch::Upstream(cmd) => ("upstream (Python)", format!("{} SOCKET INI", cmd.join(" "))),
    };
    eprintln!("{name}: {command}");
    let floor = fs_floor(&relay.path("mail"));
    let mut daemon = relay.start(&launch);
    let pid = daemon.pid();
    thread::sleep(Duration::from_millis(300));
    let idle_rss_kib = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
    let socket = relay.path("metadata.socket");

    let mut pairs = Vec::new();
    for connections in pair_connections() {
        eprintln!("devicetoken SET+LOOKUP x{connections} for {duration:?}");
        let m = run_pairs(&socket, pid, connections, duration);
        assert!(daemon.alive(), "{name} died:\n{}", relay.log());
        if let Some(err) = &m.first_error {
            eprintln!("  {} errors, first: {err}", m.errors);
        }
        pairs.push((connections, m));
    }
    let floor_after = fs_floor(&relay.path("mail"));

    let notify = notify.then(|| {
        eprintln!("messagenew x{NOTIFY_CONNECTIONS} for {duration:?}");
        let queue = relay.path("mail").join("pending_notifications");
        let notify = run_notify(&socket, pid, gateway, &queue, duration);
        assert!(daemon.alive(), "{name} died:\n{}", relay.log());
        if let Some(err) = &notify.first_error {
            eprintln!("  {} errors, first: {err}", notify.errors);
        }
        notify
    });

    let peak_rss_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
    let threads = proc_status_kib(pid, "Threads:").unwrap_or(0);
    drop(daemon);
    Target {
        name,
        command,
        floor,
        floor_after,
        pairs,
        notify,
        idle_rss_kib,
        peak_rss_kib,
        threads,
    }
}

// ---------------------------------------------------------------------------------------
// Header

fn print_header(bench_mode: bool, seconds: f64) {
    let command = chatmail_bench_support::command_line(
        bench_mode,
        &[
            "BENCH_SECONDS",
            "BENCH_CONNECTIONS",
            "BENCH_DIR",
            "BENCH_NOTIFY",
            "METADATA_BENCH_UPSTREAM",
        ],
        "-p chatmail-metadata --bench socket",
    );
    print_preamble("chatmail-metadata socket benchmark", &command);
    println!(
        "- {seconds} s per scenario, {USERS} users for the devicetoken pairs, {NOTIFY_USERS} \
         users with one token for messagenew, one request in flight per connection, load \
         generator and HTTP gateway on the same cores"
    );
    println!();
}

// ---------------------------------------------------------------------------------------
// Notification gateway

/// A plain HTTP/1.1 server on 127.0.0.1: a thread per connection, keep-alive, every
/// request answered 200 with an empty body; counts the request bodies.
struct Gateway {
    port: u16,
    bodies: Arc<AtomicU64>,
}

impl Gateway {
    fn start() -> Gateway {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind gateway");
        let port = listener.local_addr().expect("gateway address").port();
        let bodies = Arc::new(AtomicU64::new(0));
        let counter = bodies.clone();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let counter = counter.clone();
                thread::spawn(move || serve_http(stream, &counter));
            }
        });
        Gateway { port, bodies }
    }

    fn received(&self) -> u64 {
        self.bodies.load(Ordering::Relaxed)
    }
}

fn serve_http(stream: TcpStream, bodies: &AtomicU64) {
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(&stream);
    let mut writer = &stream;
    let mut line = String::new();
    let mut body = Vec::new();
    loop {
        let mut content_length = 0usize;
        // Request line and headers, up to the empty line.
        let mut first = true;
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                if first {
                    continue; // stray CRLF between requests
                }
                break;
            }
            first = false;
            if let Some((name, value)) = trimmed.split_once(':')
                && name.trim().eq_ignore_ascii_case("content-length")
            {
                content_length = value.trim().parse().unwrap_or(0);
            }
        }
        body.resize(content_length, 0);
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        bodies.fetch_add(1, Ordering::Relaxed);
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .is_err()
        {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Daemon

/// A temporary relay: chatmail.ini and the maildirs of every user.
struct Relay {
    dir: tempfile::TempDir,
}

impl Relay {
    fn new(gateway_port: u16) -> Relay {
        let base = std::env::var_os("BENCH_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = tempfile::Builder::new()
            .prefix("metadata-bench")
            .tempdir_in(&base)
            .unwrap_or_else(|err| panic!("temp dir in {}: {err}", base.display()));
        let mail = dir.path().join("mail");
        let ini = format!(
            "[params]\n\
             mail_domain = {DOMAIN}\n\
             mailboxes_dir = {}\n\
             notification_url = http://127.0.0.1:{gateway_port}/notify\n",
            mail.display(),
        );
        fs::write(dir.path().join("chatmail.ini"), ini).expect("write chatmail.ini");
        for i in 0..USERS {
            fs::create_dir_all(mail.join(pair_user(i))).expect("create maildir");
        }
        for i in 0..NOTIFY_USERS {
            fs::create_dir_all(mail.join(notify_user(i))).expect("create maildir");
        }
        Relay { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start(&self, launch: &Launch) -> Daemon {
        let socket = self.path("metadata.socket");
        let ini = self.path("chatmail.ini");
        let log = fs::File::create(self.path("daemon.log")).expect("daemon log");
        let notify_path = self.path("notify");
        let notify = notify_socket(&notify_path);
        let mut command = match launch {
            Launch::Ours(bin) => Command::new(bin),
            Launch::Upstream(cmd) => {
                let mut command = Command::new(&cmd[0]);
                command.args(&cmd[1..]);
                command
            }
        };
        let mut daemon = spawn_notifying(
            command.arg(&socket).arg(&ini),
            &notify_path,
            log,
            "the daemon",
        );
        match launch {
            Launch::Ours(_) => {
                wait_ready(&notify, "chatmail-metadata", || self.log());
            }
            Launch::Upstream(_) => {
                let deadline = Instant::now() + IO_TIMEOUT;
                while UnixStream::connect(&socket).is_err() {
                    assert!(
                        daemon.alive() && Instant::now() < deadline,
                        "upstream's daemon did not listen within {IO_TIMEOUT:?}:\n{}",
                        self.log()
                    );
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
        daemon
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("daemon.log")).unwrap_or_default()
    }
}

fn pair_user(i: usize) -> String {
    format!("u{i:06}@{DOMAIN}")
}

fn notify_user(i: usize) -> String {
    format!("n{i:06}@{DOMAIN}")
}

// ---------------------------------------------------------------------------------------
// Load

/// A connection to the daemon that has said hello.
fn connect(socket: &Path) -> std::io::Result<UnixStream> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    (&stream).write_all(HELLO)?;
    Ok(stream)
}

/// One request, one reply line: the latency, or an error message.
fn exchange(
    reader: &mut BufReader<&UnixStream>,
    request: &str,
    reply: &mut String,
    expect: impl Fn(&str) -> bool,
) -> Result<Duration, String> {
    reply.clear();
    let start = Instant::now();
    let mut writer: &UnixStream = reader.get_ref();
    let outcome = writer
        .write_all(request.as_bytes())
        .and_then(|()| reader.read_line(reply));
    let latency = start.elapsed();
    match outcome {
        Ok(_) if reply.ends_with('\n') && expect(reply) => Ok(latency),
        Ok(_) => Err(format!("unexpected reply {reply:?} to {request:?}")),
        Err(err) => Err(format!("io: {err}")),
    }
}

#[derive(Default)]
struct WorkerResult {
    set: Vec<Duration>,
    get: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl WorkerResult {
    fn fail(&mut self, err: String) {
        self.errors += 1;
        self.first_error.get_or_insert(err);
    }
}

struct Measured {
    /// Completed pairs, or completed messagenew transactions.
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    set_p50: Duration,
    set_p99: Duration,
    get_p50: Duration,
    get_p99: Duration,
    daemon_cores: f64,
    client_cores: f64,
    rss_after_kib: u64,
}

impl Measured {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `work(index, barrier)` on `n` threads; the clock starts when all have connected.
fn measure(pid: u32, n: usize, work: impl Fn(usize, &Barrier) -> WorkerResult + Sync) -> Measured {
    let barrier = Barrier::new(n + 1);
    let daemon_stat = format!("/proc/{pid}/stat");
    let (results, elapsed, daemon_cpu, client_cpu) = thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let barrier = &barrier;
                let work = &work;
                s.spawn(move || work(i, barrier))
            })
            .collect();
        barrier.wait();
        let daemon_cpu0 = cpu_seconds(&daemon_stat);
        let client_cpu0 = cpu_seconds("/proc/self/stat");
        let start = Instant::now();
        let results: Vec<WorkerResult> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let elapsed = start.elapsed();
        let daemon_cpu = cpu_seconds(&daemon_stat) - daemon_cpu0;
        let client_cpu = cpu_seconds("/proc/self/stat") - client_cpu0;
        (results, elapsed, daemon_cpu, client_cpu)
    });
    let mut set = Vec::new();
    let mut get = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for r in results {
        set.extend(r.set);
        get.extend(r.get);
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    set.sort_unstable();
    get.sort_unstable();
    Measured {
        ok: if get.is_empty() { set.len() } else { get.len() } as u64,
        errors,
        first_error,
        elapsed,
        set_p50: percentile(&set, 0.50),
        set_p99: percentile(&set, 0.99),
        get_p50: percentile(&get, 0.50),
        get_p99: percentile(&get, 0.99),
        daemon_cores: daemon_cpu / elapsed.as_secs_f64(),
        client_cores: client_cpu / elapsed.as_secs_f64(),
        rss_after_kib: proc_status_kib(pid, "VmRSS:").unwrap_or(0),
    }
}

/// Scenario 1: a devicetoken SET transaction then a LOOKUP of the same user, repeated;
/// connection `i` of `n` uses users `i`, `i + n`, `i + 2n`, … in turn, three tokens each.
fn run_pairs(socket: &Path, pid: u32, n: usize, duration: Duration) -> Measured {
    measure(pid, n, |index, barrier| {
        let mut result = WorkerResult::default();
        let connected = connect(socket);
        barrier.wait();
        let stream = match connected {
            Ok(stream) => stream,
            Err(err) => {
                result.fail(format!("connect: {err}"));
                return result;
            }
        };
        let users: Vec<String> = (index..USERS).step_by(n).map(pair_user).collect();
        let mut reader = BufReader::new(&stream);
        let mut request = String::with_capacity(256);
        let mut reply = String::with_capacity(256);
        let deadline = Instant::now() + duration;
        let mut k = 0usize;
        while Instant::now() < deadline {
            let user = &users[k % users.len()];
            let token = format!("tok{index}x{}", (k / users.len()) % 3);
            request.clear();
            let _ = write!(
                request,
                "B{k}\t{user}\nS{k}\tpriv/5cbe730f146fea6535be0d003dd4fc98/devicetoken\t{token}\nC{k}\n"
            );
            match exchange(&mut reader, &request, &mut reply, |r| r == "O\n") {
                Ok(latency) => result.set.push(latency),
                Err(err) => {
                    result.fail(err);
                    break;
                }
            }
            request.clear();
            let _ = writeln!(
                request,
                "Lpriv/5cbe730f146fea6535be0d003dd4fc98/devicetoken\t{user}"
            );
            let token = &token;
            match exchange(&mut reader, &request, &mut reply, |r| {
                r.starts_with('O') && r.contains(token.as_str())
            }) {
                Ok(latency) => result.get.push(latency),
                Err(err) => {
                    result.fail(err);
                    break;
                }
            }
            k += 1;
        }
        result
    })
}

struct Notify {
    load: Measured,
    /// Bodies at the gateway during the load, and by the end of the drain.
    delivered_in_load: u64,
    delivered_total: u64,
    /// From the start of the load until every body was counted and the queue directory
    /// was empty (or the drain's bound).
    until_drained: Duration,
    drained: bool,
    errors: u64,
    first_error: Option<String>,
}

/// Scenario 2: [`NOTIFY_USERS`] users with one token each; `messagenew` SETs for them in
/// turn on [`NOTIFY_CONNECTIONS`] connections; the gateway counts what arrives.
fn run_notify(
    socket: &Path,
    pid: u32,
    gateway: &Gateway,
    queue: &Path,
    duration: Duration,
) -> Notify {
    // One token per user.
    let stream = connect(socket).expect("connect");
    let mut reader = BufReader::new(&stream);
    let mut reply = String::new();
    for i in 0..NOTIFY_USERS {
        let user = notify_user(i);
        let request = format!("B1\t{user}\nS1\tpriv/g/devicetoken\tnotify-{i}\nC1\n");
        exchange(&mut reader, &request, &mut reply, |r| r == "O\n").expect("set token");
    }
    drop(reader);
    drop(stream);
    thread::sleep(Duration::from_millis(200));

    let before = gateway.received();
    let start = Instant::now();
    let load = measure(pid, NOTIFY_CONNECTIONS, |index, barrier| {
        let mut result = WorkerResult::default();
        let connected = connect(socket);
        barrier.wait();
        let stream = match connected {
            Ok(stream) => stream,
            Err(err) => {
                result.fail(format!("connect: {err}"));
                return result;
            }
        };
        let mut reader = BufReader::new(&stream);
        let mut request = String::with_capacity(256);
        let mut reply = String::with_capacity(64);
        let deadline = Instant::now() + duration;
        let mut k = index;
        while Instant::now() < deadline {
            let user = notify_user(k % NOTIFY_USERS);
            request.clear();
            let _ = write!(
                request,
                "B{k}\t{user}\nS{k}\tpriv/guid/messagenew\t\nC{k}\n"
            );
            match exchange(&mut reader, &request, &mut reply, |r| r == "O\n") {
                Ok(latency) => result.set.push(latency),
                Err(err) => {
                    result.fail(err);
                    break;
                }
            }
            k += NOTIFY_CONNECTIONS;
        }
        result
    });
    let delivered_in_load = gateway.received() - before;
    // End to end: every accepted messagenew POSTed and its queue file deleted.
    let target = before + load.ok;
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    let drained = loop {
        if gateway.received() >= target && queue_is_empty(queue) {
            break true;
        }
        if Instant::now() >= drain_deadline {
            break false;
        }
        thread::sleep(Duration::from_millis(2));
    };
    let until_drained = start.elapsed();
    let delivered_total = gateway.received() - before;
    let errors = load.errors;
    let first_error = load.first_error.clone();
    Notify {
        load,
        delivered_in_load,
        delivered_total,
        until_drained,
        drained,
        errors,
        first_error,
    }
}

/// The floor every token write stands on: the mean time of a plain create + write +
/// rename of a small file over an existing one (as a changed SET does), for 0.5 s, in the
/// pair users' maildirs in turn, as the SETs go: their inodes come from the same block
/// groups. On an ext4 without a journal the cost of a create grows with the inodes freed
/// in the group in the last minutes (each skipped while looking for a free one), so the
/// floor is measured again after the load.
fn fs_floor(mail: &Path) -> Duration {
    let dirs: Vec<PathBuf> = (0..USERS).map(|i| mail.join(pair_user(i))).collect();
    let content = br#"{"devicetoken": {"tok0x0": 1700000000, "tok0x1": 1700000000}}"#;
    let write = |dir: &Path| {
        let (tmp, file) = (dir.join("floor.json.tmp"), dir.join("floor.json"));
        let mut f = fs::File::create(&tmp).expect("create");
        f.write_all(content).expect("write");
        drop(f);
        fs::rename(&tmp, &file).expect("rename");
    };
    // Every rename replaces a file, as a SET's does.
    for dir in &dirs {
        write(dir);
    }
    let start = Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_millis(500) {
        write(&dirs[n as usize % dirs.len()]);
        n += 1;
    }
    let floor = start.elapsed() / n.max(1);
    for dir in &dirs {
        let _ = fs::remove_file(dir.join("floor.json"));
    }
    floor
}

/// No file left in the notification queue.
fn queue_is_empty(queue: &Path) -> bool {
    fs::read_dir(queue).is_ok_and(|mut entries| entries.next().is_none())
}

// ---------------------------------------------------------------------------------------
// Report

fn print_report(ours: &Target, theirs: Option<&Target>, seconds: f64) {
    println!("## devicetoken SET transaction then LOOKUP ({seconds} s per scenario)");
    for target in std::iter::once(ours).chain(theirs) {
        println!();
        println!("### {}: `{}`", target.name, target.command);
        println!();
        println!(
            "| connections | pairs/s | set p50 ms | set p99 ms | get p50 ms | get p99 ms | errors | daemon cores | load-gen cores | RSS after MiB | pairs/s vs figures.md | set p99 figures.md/this | get p99 figures.md/this |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        for (connections, m) in &target.pairs {
            let up = UPSTREAM.iter().find(|u| u.0 == *connections);
            let (vs, set_ratio, get_ratio) = match up {
                Some(&(_, rate, set99, get99)) => (
                    format!("{:.1}x", m.per_sec() / rate),
                    ratio(set99, m.set_p99),
                    ratio(get99, m.get_p99),
                ),
                None => ("?".into(), "?".into(), "?".into()),
            };
            println!(
                "| {connections} | {} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.1} | {vs} | {set_ratio} | {get_ratio} |",
                thousands(m.per_sec()),
                ms(m.set_p50),
                ms(m.set_p99),
                ms(m.get_p50),
                ms(m.get_p99),
                m.errors,
                m.daemon_cores,
                m.client_cores,
                mib(m.rss_after_kib),
            );
        }
    }
    if let Some(theirs) = theirs {
        println!();
        println!("### ours / upstream, same run");
        println!();
        println!(
            "| connections | pairs/s ours/upstream | set p99 upstream/ours | get p99 upstream/ours |"
        );
        println!("|---:|---:|---:|---:|");
        for (connections, m) in &ours.pairs {
            if let Some((_, u)) = theirs.pairs.iter().find(|(c, _)| c == connections) {
                println!(
                    "| {connections} | {:.1}x | {} | {} |",
                    m.per_sec() / u.per_sec().max(1e-9),
                    ratio(u.set_p99.as_secs_f64() * 1000.0, m.set_p99),
                    ratio(u.get_p99.as_secs_f64() * 1000.0, m.get_p99),
                );
            }
        }
    }
    if let Some(notify) = &ours.notify {
        let load = &notify.load;
        println!();
        println!(
            "## messagenew for {NOTIFY_USERS} users with one token each, {NOTIFY_CONNECTIONS} connections ({seconds} s), ours"
        );
        println!();
        println!(
            "| messagenew/s accepted | p50 ms | p99 ms | errors | delivered/s during load | delivered in total | end-to-end delivered/s | drained (POSTed, queue empty) | daemon cores |"
        );
        println!("|---:|---:|---:|---:|---:|---:|---:|---|---:|");
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} in {:.2} s | {:.2} |",
            thousands(load.per_sec()),
            ms(load.set_p50),
            ms(load.set_p99),
            notify.errors,
            thousands(notify.delivered_in_load as f64 / load.elapsed.as_secs_f64().max(1e-9)),
            thousands(notify.delivered_total as f64),
            thousands(notify.delivered_total as f64 / notify.until_drained.as_secs_f64().max(1e-9)),
            if notify.drained { "yes" } else { "no" },
            notify.until_drained.as_secs_f64(),
            load.daemon_cores,
        );
        if let Some(err) = &notify.first_error {
            println!();
            println!("- first messagenew error: {err}");
        }
    }
    println!();
    for target in std::iter::once(ours).chain(theirs) {
        println!(
            "- {}: RSS {:.1} MiB idle, {:.1} MiB peak (VmHWM), {} threads at the end",
            target.name,
            mib(target.idle_rss_kib),
            mib(target.peak_rss_kib),
            target.threads,
        );
    }
    println!(
        "- figures.md's upstream: RSS {UPSTREAM_RSS_IDLE_MIB} MiB idle, {UPSTREAM_RSS_PEAK_MIB} MiB peak"
    );
    for target in std::iter::once(ours).chain(theirs) {
        println!(
            "- file system floor for {}: {:.0} µs before the pair scenarios, {:.0} µs after, per create + write + rename of a small file over another in the users' maildirs (at most {} a second on one core before)",
            target.name,
            target.floor.as_secs_f64() * 1e6,
            target.floor_after.as_secs_f64() * 1e6,
            thousands(1.0 / target.floor.as_secs_f64().max(1e-9)),
        );
    }
    let min_ratio = ours
        .pairs
        .iter()
        .filter_map(|(c, m)| {
            UPSTREAM
                .iter()
                .find(|u| u.0 == *c)
                .map(|u| m.per_sec() / u.1)
        })
        .reduce(f64::min)
        .map_or_else(|| "n/a".to_owned(), |r| format!("{r:.1}x"));
    println!(
        "- goal (at least 10x upstream's pairs/s, RSS under 15 MiB): lowest pairs/s ratio to figures.md {min_ratio}, peak RSS {:.1} MiB",
        mib(ours.peak_rss_kib)
    );
}

/// `reference_ms / measured`, as "12.3x".
fn ratio(reference_ms: f64, measured: Duration) -> String {
    format!(
        "{:.1}x",
        reference_ms / (measured.as_secs_f64() * 1000.0).max(1e-9)
    )
}
