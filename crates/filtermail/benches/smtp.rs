//! Load benchmark of the `filtermail` binary in outgoing mode: SMTP clients send Sequoia-made
//! PGP/MIME messages (5 KiB and 1 MiB) and a cleartext one (refused with 523) through it into
//! an SMTP sink that plays Postfix's reinjection port; the same clients straight at the sink
//! give the ceiling. Messages/s, MB/s, p50/p99 latency per message, and filtermail's RSS.
//!
//! `cargo bench -p chatmail-filtermail --bench smtp`
//!
//! - `BENCH_SECONDS` (default 5): duration of each scenario.
//! - `BENCH_ONLY` (optional): run only the scenarios whose label contains this text.
//! - `BENCH_FILTERMAIL` (optional): the filtermail binary to measure instead of this
//!   workspace's, e.g. one built from another commit for an A/B comparison.
//! - `BENCH_PIN=1` (optional): this process (clients and sink) on CPU 0, filtermail on
//!   CPU 1, for the ceiling and the filtered runs alike, as a deployment with Postfix on
//!   other cores than filtermail would have. Needs two CPUs.
//!
//! Two client patterns, both without pipelining (filtermail does not offer it):
//!
//! - `session`: each connection greets once (EHLO), then sends messages back to back, each
//!   as MAIL, RCPT, DATA, the message and its dot, waiting for every reply; latency = MAIL
//!   to the reply after the dot.
//! - `postfix`: a new connection per message, as Postfix's `smtpd_proxy_filter` does ("connects
//!   to the content filter, delivers one message, and disconnects"): connect, 220, EHLO,
//!   MAIL, RCPT, DATA, message, QUIT; latency = connect to the reply after the dot.
//!
//! Before each measurement it waits up to 30 s for a second in which the machine was
//! nearly idle; the "other cores" column shows what still competed. filtermail is
//! restarted for every scenario, so its VmHWM is the peak of that scenario
//! alone; it is read at half time and at the end to show whether memory grows with the
//! number of messages. The sink and the clients share one tokio runtime in this process, on
//! the same cores as filtermail. Without `--bench` (as `cargo test --all-targets` runs it)
//! it does a short smoke run.

#![allow(clippy::indexing_slicing, clippy::string_slice)]

#[path = "../tests/support/pgp.rs"]
mod pgp;

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use chatmail_bench_support::{
    Daemon, cpu_model, cpu_seconds, date_utc, machine_busy_seconds, mib, ms, notify_socket, nproc,
    percentile, proc_status_kib, read_trimmed, spawn_notifying, thousands, wait_ready,
};

/// Bound on each SMTP step and on filtermail's start-up.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a quiet machine before a measurement.
const QUIET_WAIT: Duration = Duration::from_secs(30);
const SENDER: &str = pgp::ALICE;
const RECIPIENT: &str = pgp::BOB;

/// Upstream filtermail 0.2.0 (the shared figures.md): message, concurrency, msgs/s, MB/s,
/// p50 ms, p99 ms. Its small message is 3 KiB, ours 5 KiB.
const UPSTREAM: &[(&str, usize, f64, f64, f64, f64)] = &[
    ("encrypted, 3 KiB", 1, 23.0, 0.07, 44.0, 44.0),
    ("encrypted, 3 KiB", 50, 950.0, 2.9, 51.0, 65.0),
    ("encrypted, 1 MiB", 1, 27.0, 28.6, 50.0, 55.0),
    ("encrypted, 1 MiB", 50, 207.0, 217.0, 220.0, 398.0),
    ("plain (rejected 523)", 50, 5970.0, 6.5, 7.0, 12.0),
];
const UPSTREAM_RSS_PEAK_MIB: f64 = 94.0;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Pattern {
    Session,
    Postfix,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::Session => "session",
            Pattern::Postfix => "postfix",
        }
    }
}

/// One message kind.
struct Payload {
    label: &'static str,
    /// The upstream row it is compared with.
    upstream: &'static str,
    /// Message size in bytes (unstuffed, as a client holds it).
    size: usize,
    /// Dot-stuffed, with the terminating dot line.
    wire: Arc<Vec<u8>>,
    /// The reply filtermail gives after the dot (the sink always says 250).
    expect: u16,
}

struct Scenario<'a> {
    payload: &'a Payload,
    concurrency: usize,
    pattern: Pattern,
}

fn main() {
    let bench_mode = chatmail_bench_support::bench_mode();
    let seconds = chatmail_bench_support::scenario_seconds(bench_mode);
    let only = std::env::var("BENCH_ONLY").ok();
    let pin = std::env::var("BENCH_PIN").is_ok_and(|v| v == "1");
    let duration = Duration::from_secs_f64(seconds);
    if pin {
        // Before the runtime exists: its threads inherit the mask.
        pin_threads(std::process::id(), LOAD_CPU);
    }
    print_header(bench_mode, seconds, pin);

    let payloads = [
        payload(
            "encrypted, 5 KiB",
            "encrypted, 3 KiB",
            pgp::encrypted_mail_of_size(5 * 1024),
            250,
        ),
        payload(
            "encrypted, 1 MiB",
            "encrypted, 1 MiB",
            pgp::encrypted_mail_of_size(1024 * 1024),
            250,
        ),
        payload(
            "plain (rejected 523)",
            "plain (rejected 523)",
            plain_mail(1024),
            523,
        ),
    ];
    let mut scenarios = Vec::new();
    for pattern in [Pattern::Session, Pattern::Postfix] {
        for (i, concurrency) in [(0, 1), (0, 50), (1, 1), (1, 50), (2, 50)] {
            let s = Scenario {
                payload: &payloads[i],
                concurrency,
                pattern,
            };
            let label = format!("{} x{} {}", s.payload.label, concurrency, pattern.name());
            if only.as_deref().is_none_or(|o| label.contains(o)) {
                scenarios.push(s);
            }
        }
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let sink = runtime.block_on(Sink::start());
    let bin = std::env::var("BENCH_FILTERMAIL")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_filtermail").to_owned());
    let mut rows = Vec::new();
    for scenario in &scenarios {
        let label = format!(
            "{} x{} {}",
            scenario.payload.label,
            scenario.concurrency,
            scenario.pattern.name()
        );
        wait_for_quiet(bench_mode);
        eprintln!("{label}: through filtermail for {duration:?}");
        let relay = Relay::new(sink.addr.port());
        let mut daemon = relay.start(&bin);
        let pid = daemon.pid();
        if pin {
            // Its runtime's threads exist once it is ready; blocking-pool threads started
            // later inherit the mask of the worker that starts them.
            pin_threads(pid, FILTER_CPU);
        }
        std::thread::sleep(Duration::from_millis(200));
        let idle_kib = proc_status_kib(pid, "VmRSS:").unwrap_or(0);
        let through = runtime.block_on(measure(
            relay.addr(),
            scenario,
            scenario.payload.expect,
            Some(pid),
            &sink,
            duration,
        ));
        assert!(daemon.alive(), "filtermail died:\n{}", relay.log());
        let peak_kib = proc_status_kib(pid, "VmHWM:").unwrap_or(0);
        drop(daemon);
        if let Some(err) = &through.first_error {
            eprintln!("  {} errors, first: {err}", through.errors);
        }
        wait_for_quiet(bench_mode);
        eprintln!("{label}: straight at the sink for {duration:?}");
        let direct = runtime.block_on(measure(sink.addr, scenario, 250, None, &sink, duration));
        if let Some(err) = &direct.first_error {
            eprintln!("  {} errors, first: {err}", direct.errors);
        }
        rows.push(Row {
            scenario,
            through,
            direct,
            idle_kib,
            peak_kib,
        });
    }
    print_report(&rows, &format!("{bin} INI outgoing"), seconds);
}

fn payload(label: &'static str, upstream: &'static str, message: Vec<u8>, expect: u16) -> Payload {
    Payload {
        label,
        upstream,
        size: message.len(),
        wire: Arc::new(dot_stuff(&message)),
        expect,
    }
}

/// A cleartext mail of about `size` bytes from Alice to Bob: refused with 523 outgoing.
fn plain_mail(size: usize) -> Vec<u8> {
    let mut mail = format!(
        "From: {SENDER}\r\nTo: {RECIPIENT}\r\nSubject: hello\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\n"
    )
    .into_bytes();
    while mail.len() + 40 <= size {
        mail.extend_from_slice(b"Hello Bob, this is not encrypted at all\r\n");
    }
    mail
}

/// RFC 5321 §4.5.2 transparency and the terminator.
fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// With `BENCH_PIN=1`: the CPU of the clients and the sink, and filtermail's.
const LOAD_CPU: usize = 0;
const FILTER_CPU: usize = 1;

/// Restricts every thread of process `pid` to `cpu`.
fn pin_threads(pid: u32, cpu: usize) {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    set.set(cpu).expect("CPU number");
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("threads of the process");
    for task in tasks {
        let tid: i32 = task
            .expect("thread entry")
            .file_name()
            .to_string_lossy()
            .parse()
            .expect("thread id");
        // A thread may have ended meanwhile.
        let _ = sched_setaffinity(Pid::from_raw(tid), &set);
    }
}

// ---------------------------------------------------------------------------------------
// Header

fn print_header(bench_mode: bool, seconds: f64, pin: bool) {
    let mut command = String::new();
    for key in [
        "BENCH_SECONDS",
        "BENCH_ONLY",
        "BENCH_PIN",
        "BENCH_FILTERMAIL",
    ] {
        if let Ok(value) = std::env::var(key) {
            let _ = write!(command, "{key}={value:?} ");
        }
    }
    command.push_str(if bench_mode {
        "cargo bench -p chatmail-filtermail --bench smtp"
    } else {
        "cargo test -p chatmail-filtermail --bench smtp   (smoke run; use cargo bench for figures)"
    });
    let (date, nproc, cpu) = (date_utc(), nproc(), cpu_model());
    println!("# filtermail SMTP benchmark (outgoing)");
    println!();
    println!("- command: `{command}`");
    println!("- date: {date}");
    println!("- machine: nproc {nproc}, {cpu}");
    println!("- load average at start: {}", read_trimmed("/proc/loadavg"));
    if pin {
        println!(
            "- {seconds} s per scenario; clients and sink pinned to CPU {LOAD_CPU}, filtermail \
             to CPU {FILTER_CPU} (ceiling: clients and sink on CPU {LOAD_CPU}); no pipelining"
        );
    } else {
        println!(
            "- {seconds} s per scenario; clients, sink and filtermail on the same cores; no \
             pipelining"
        );
    }
    println!();
}

// ---------------------------------------------------------------------------------------
// The sink: Postfix's reinjection port

/// An SMTP server on 127.0.0.1 that takes every message: 250 to everything, 354 to DATA,
/// reads to the dot, 250. Offers PIPELINING as Postfix does, and like Postfix's smtpd
/// holds its replies while pipelined commands are still buffered. Counts connections,
/// messages and data bytes.
struct Sink {
    addr: SocketAddr,
    connections: Arc<AtomicU64>,
    messages: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl Sink {
    async fn start() -> Sink {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind sink");
        let addr = listener.local_addr().expect("sink address");
        let connections = Arc::new(AtomicU64::new(0));
        let messages = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let (c, m, b) = (connections.clone(), messages.clone(), bytes.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                c.fetch_add(1, Ordering::Relaxed);
                let (m, b) = (m.clone(), b.clone());
                tokio::spawn(async move {
                    let _ = sink_session(stream, &m, &b).await;
                });
            }
        });
        Sink {
            addr,
            connections,
            messages,
            bytes,
        }
    }
}

async fn sink_session(
    stream: TcpStream,
    messages: &AtomicU64,
    bytes: &AtomicU64,
) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut stream = BufReader::with_capacity(64 * 1024, stream);
    stream.get_mut().write_all(b"220 sink ESMTP\r\n").await?;
    let mut line = Vec::with_capacity(1024);
    // Replies wait while pipelined commands are still buffered, as Postfix's smtpd does.
    let mut replies = Vec::with_capacity(256);
    loop {
        line.clear();
        if stream.read_until(b'\n', &mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or(&line).to_ascii_uppercase();
        let reply: &[u8] = match verb.as_slice() {
            b"EHLO" => b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            b"DATA" => {
                replies.extend_from_slice(b"354 go ahead\r\n");
                stream.get_mut().write_all(&replies).await?;
                replies.clear();
                let mut size = 0u64;
                loop {
                    line.clear();
                    if stream.read_until(b'\n', &mut line).await? == 0 {
                        return Ok(());
                    }
                    if line == b".\r\n" {
                        break;
                    }
                    size += line.len() as u64;
                }
                messages.fetch_add(1, Ordering::Relaxed);
                bytes.fetch_add(size, Ordering::Relaxed);
                b"250 2.0.0 Ok: queued\r\n"
            }
            b"QUIT" => {
                replies.extend_from_slice(b"221 bye\r\n");
                let _ = stream.get_mut().write_all(&replies).await;
                return Ok(());
            }
            _ => b"250 OK\r\n",
        };
        replies.extend_from_slice(reply);
        if stream.buffer().is_empty() {
            stream.get_mut().write_all(&replies).await?;
            replies.clear();
        }
    }
}

// ---------------------------------------------------------------------------------------
// filtermail

/// A temporary chatmail.ini whose reinjection port is the sink; no send limit worth the
/// name (the benchmark sends thousands of messages per second from one sender).
struct Relay {
    dir: tempfile::TempDir,
    port: u16,
}

impl Relay {
    fn new(sink_port: u16) -> Relay {
        let dir = tempfile::Builder::new()
            .prefix("filtermail-bench")
            .tempdir()
            .expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let ini = format!(
            "[params]\n\
             mail_domain = example.org\n\
             mailboxes_dir = {}\n\
             filtermail_smtp_port = {port}\n\
             postfix_reinject_port = {sink_port}\n\
             max_user_send_per_minute = 1000000000\n\
             max_user_send_burst_size = 1000000\n",
            dir.path().join("mail").display(),
        );
        fs::write(dir.path().join("chatmail.ini"), ini).expect("write chatmail.ini");
        Relay { dir, port }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn start(&self, bin: &str) -> Daemon {
        let log = fs::File::create(self.path("filtermail.log")).expect("log file");
        let notify_path = self.path("notify");
        let notify = notify_socket(&notify_path);
        let daemon = spawn_notifying(
            Command::new(bin)
                .arg(self.path("chatmail.ini"))
                .arg("outgoing"),
            &notify_path,
            log,
            "filtermail",
        );
        wait_ready(&notify, "filtermail", || self.log());
        daemon
    }

    fn log(&self) -> String {
        fs::read_to_string(self.path("filtermail.log")).unwrap_or_default()
    }
}

/// Other people's builds share these cores: before each measurement, wait (at most
/// [`QUIET_WAIT`]) for a second in which the machine used under 0.2 cores.
fn wait_for_quiet(bench_mode: bool) {
    if !bench_mode {
        return;
    }
    let give_up = Instant::now() + QUIET_WAIT;
    loop {
        let before = machine_busy_seconds();
        std::thread::sleep(Duration::from_secs(1));
        let busy = machine_busy_seconds() - before;
        if busy < 0.2 {
            return;
        }
        if Instant::now() > give_up {
            eprintln!("  machine still busy ({busy:.2} cores), measuring anyway");
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The clients

/// A client connection that has been greeted and said EHLO.
struct Client {
    stream: BufReader<TcpStream>,
    line: Vec<u8>,
}

impl Client {
    async fn open(addr: SocketAddr) -> Result<Client, String> {
        let stream = step(TcpStream::connect(addr)).await?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut client = Client {
            stream: BufReader::with_capacity(4096, stream),
            line: Vec::with_capacity(512),
        };
        client.expect(220).await?;
        client.command(b"EHLO bench.example.org\r\n", 250).await?;
        Ok(client)
    }

    async fn command(&mut self, bytes: &[u8], code: u16) -> Result<(), String> {
        step(self.stream.get_mut().write_all(bytes)).await?;
        self.expect(code).await
    }

    /// Reads one (possibly multi-line) reply and checks its code.
    async fn expect(&mut self, code: u16) -> Result<(), String> {
        loop {
            self.line.clear();
            let n = step(self.stream.read_until(b'\n', &mut self.line)).await?;
            if n == 0 {
                return Err("connection closed".into());
            }
            if self.line.get(3) == Some(&b'-') {
                continue;
            }
            let got = std::str::from_utf8(self.line.get(..3).unwrap_or(b""))
                .ok()
                .and_then(|c| c.parse::<u16>().ok());
            return if got == Some(code) {
                Ok(())
            } else {
                Err(format!(
                    "expected {code}, got {:?}",
                    String::from_utf8_lossy(&self.line).trim_end()
                ))
            };
        }
    }

    /// MAIL, RCPT, DATA, the message; `expect` is the reply after the dot.
    async fn transaction(&mut self, wire: &[u8], expect: u16) -> Result<(), String> {
        self.command(format!("MAIL FROM:<{SENDER}>\r\n").as_bytes(), 250)
            .await?;
        self.command(format!("RCPT TO:<{RECIPIENT}>\r\n").as_bytes(), 250)
            .await?;
        self.command(b"DATA\r\n", 354).await?;
        self.command(wire, expect).await
    }
}

async fn step<T>(io: impl std::future::Future<Output = std::io::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(IO_TIMEOUT, io).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(err)) => Err(format!("io: {err}")),
        Err(_) => Err(format!("no progress within {IO_TIMEOUT:?}")),
    }
}

#[derive(Default)]
struct WorkerResult {
    latencies: Vec<Duration>,
    errors: u64,
    first_error: Option<String>,
}

impl WorkerResult {
    fn fail(&mut self, err: String) {
        self.errors += 1;
        self.first_error.get_or_insert(err);
    }
}

async fn worker(
    addr: SocketAddr,
    pattern: Pattern,
    wire: Arc<Vec<u8>>,
    expect: u16,
    start: Arc<tokio::sync::Barrier>,
    duration: Duration,
) -> WorkerResult {
    let mut result = WorkerResult::default();
    let mut session = match pattern {
        Pattern::Session => match Client::open(addr).await {
            Ok(c) => Some(c),
            Err(err) => {
                result.fail(format!("connect: {err}"));
                start.wait().await;
                return result;
            }
        },
        Pattern::Postfix => None,
    };
    start.wait().await;
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        let begin = Instant::now();
        let outcome = match &mut session {
            Some(client) => client
                .transaction(&wire, expect)
                .await
                .map(|()| begin.elapsed()),
            None => once(addr, &wire, expect, begin).await,
        };
        match outcome {
            Ok(latency) => result.latencies.push(latency),
            Err(err) => {
                result.fail(err);
                if pattern == Pattern::Session {
                    break;
                }
            }
        }
    }
    result
}

/// One message on its own connection, as Postfix's proxy client sends it; the latency
/// ends with the reply after the dot, QUIT follows.
async fn once(
    addr: SocketAddr,
    wire: &[u8],
    expect: u16,
    begin: Instant,
) -> Result<Duration, String> {
    let mut client = Client::open(addr).await?;
    client.transaction(wire, expect).await?;
    let latency = begin.elapsed();
    client.command(b"QUIT\r\n", 221).await?;
    Ok(latency)
}

struct Measured {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    /// Connections, messages and bytes the sink received during the run.
    sink_connections: u64,
    sink_messages: u64,
    sink_bytes: u64,
    daemon_cores: f64,
    client_cores: f64,
    /// Everything else running on the machine meanwhile (other users' builds).
    other_cores: f64,
    /// VmHWM of filtermail at half time.
    half_time_hwm_kib: u64,
}

impl Measured {
    fn per_sec(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

async fn measure(
    addr: SocketAddr,
    scenario: &Scenario<'_>,
    expect: u16,
    daemon: Option<u32>,
    sink: &Sink,
    duration: Duration,
) -> Measured {
    let n = scenario.concurrency;
    let start = Arc::new(tokio::sync::Barrier::new(n + 1));
    let handles: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(worker(
                addr,
                scenario.pattern,
                scenario.payload.wire.clone(),
                expect,
                start.clone(),
                duration,
            ))
        })
        .collect();
    start.wait().await;
    let daemon_stat = daemon.map(|pid| format!("/proc/{pid}/stat"));
    let daemon_cpu0 = daemon_stat.as_deref().map_or(0.0, cpu_seconds);
    let client_cpu0 = cpu_seconds("/proc/self/stat");
    let machine0 = machine_busy_seconds();
    let (sink_c0, sink_m0, sink_b0) = (
        sink.connections.load(Ordering::Relaxed),
        sink.messages.load(Ordering::Relaxed),
        sink.bytes.load(Ordering::Relaxed),
    );
    let begin = Instant::now();
    let half = tokio::spawn(async move {
        tokio::time::sleep(duration / 2).await;
        daemon
            .and_then(|pid| proc_status_kib(pid, "VmHWM:"))
            .unwrap_or(0)
    });
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for handle in handles {
        let r = handle.await.expect("worker");
        latencies.extend(r.latencies);
        errors += r.errors;
        if first_error.is_none() {
            first_error = r.first_error;
        }
    }
    let elapsed = begin.elapsed();
    let daemon_cpu = daemon_stat.as_deref().map_or(0.0, cpu_seconds) - daemon_cpu0;
    let client_cpu = cpu_seconds("/proc/self/stat") - client_cpu0;
    let machine = machine_busy_seconds() - machine0;
    latencies.sort_unstable();
    Measured {
        ok: latencies.len() as u64,
        errors,
        first_error,
        elapsed,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        sink_connections: sink.connections.load(Ordering::Relaxed) - sink_c0,
        sink_messages: sink.messages.load(Ordering::Relaxed) - sink_m0,
        sink_bytes: sink.bytes.load(Ordering::Relaxed) - sink_b0,
        daemon_cores: daemon_cpu / elapsed.as_secs_f64(),
        client_cores: client_cpu / elapsed.as_secs_f64(),
        other_cores: ((machine - daemon_cpu - client_cpu) / elapsed.as_secs_f64()).max(0.0),
        half_time_hwm_kib: half.await.unwrap_or(0),
    }
}

// ---------------------------------------------------------------------------------------
// Report

struct Row<'a> {
    scenario: &'a Scenario<'a>,
    through: Measured,
    direct: Measured,
    idle_kib: u64,
    peak_kib: u64,
}

fn print_report(rows: &[Row<'_>], command: &str, seconds: f64) {
    println!("## Through `{command}` into the sink, and the sink fed directly ({seconds} s each)");
    println!();
    println!(
        "| message | conc | pattern | msgs/s | MB/s | p50 ms | p99 ms | errors | reinjected | \
         sink conns | filtermail cores | filtermail CPU ms/msg | client+sink cores | other cores | RSS idle MiB | VmHWM half/end MiB | \
         ceiling msgs/s | ceiling p99 ms | of ceiling | upstream msgs/s | ours/upstream |"
    );
    println!(
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for row in rows {
        let s = row.scenario;
        let t = &row.through;
        let d = &row.direct;
        let up = UPSTREAM
            .iter()
            .find(|u| u.0 == s.payload.upstream && u.1 == s.concurrency);
        let (up_rate, vs) = match up {
            Some(u) => (thousands(u.2), format!("{:.1}x", t.per_sec() / u.2)),
            None => ("–".into(), "–".into()),
        };
        println!(
            "| {} | {} | {} | {} | {:.1} | {} | {} | {} | {} | {} | {:.2} | {:.3} | {:.2} | {:.2} | {:.1} | {:.1} / {:.1} | {} | {} | {:.0}% | {up_rate} | {vs} |",
            s.payload.label,
            s.concurrency,
            s.pattern.name(),
            thousands(t.per_sec()),
            t.per_sec() * s.payload.size as f64 / 1e6,
            ms(t.p50),
            ms(t.p99),
            t.errors,
            t.sink_messages,
            t.sink_connections,
            t.daemon_cores,
            1000.0 * t.daemon_cores / t.per_sec().max(1e-9),
            t.client_cores,
            t.other_cores,
            mib(row.idle_kib),
            mib(t.half_time_hwm_kib),
            mib(row.peak_kib),
            thousands(d.per_sec()),
            ms(d.p99),
            100.0 * t.per_sec() / d.per_sec().max(1e-9),
        );
        let _ = d.sink_bytes;
    }
    println!();
    for row in rows {
        for (what, m) in [("through", &row.through), ("direct", &row.direct)] {
            if let Some(err) = &m.first_error {
                println!(
                    "- {} x{} {} {what}: {} errors, first: {err}",
                    row.scenario.payload.label,
                    row.scenario.concurrency,
                    row.scenario.pattern.name(),
                    m.errors
                );
            }
        }
    }
    let peak = rows.iter().map(|r| r.peak_kib).max().unwrap_or(0);
    println!(
        "- message sizes: {}; peak RSS over all scenarios {:.1} MiB (upstream {UPSTREAM_RSS_PEAK_MIB} MiB)",
        rows.iter()
            .map(|r| format!(
                "{} = {} bytes",
                r.scenario.payload.label, r.scenario.payload.size
            ))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
            .join(", "),
        mib(peak),
    );
    println!("- load average at end: {}", read_trimmed("/proc/loadavg"));
}
