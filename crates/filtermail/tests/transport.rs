//! Transport mode over real LMTP connections on 127.0.0.1: the server under test with a
//! scripted [`Deliver`] in place of remote delivery (replies per destination, gates,
//! recorded envelopes, concurrency counters), log lines captured verbatim.

#![allow(clippy::indexing_slicing)]

mod support;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chatmail_delivery::Destination;
use chatmail_filtermail::server::{Limits, serve};
use chatmail_filtermail::transport::{Deliver, Pool, Transport, TransportLimits};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use support::client::Client;
use support::logs::{self, Logs};

/// Every wait in these tests ends after this at the latest.
const PATIENCE: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------- the scripted delivery

/// What one delivery does before it answers.
#[derive(Clone)]
enum Wait {
    None,
    /// Until the test adds a permit.
    Gate(Arc<Semaphore>),
    /// Until this many deliveries (all destinations) have run at once, at most a quarter of
    /// [`PATIENCE`] (then it answers 451).
    Active(usize),
    Sleep(Duration),
}

#[derive(Clone)]
struct Step {
    wait: Wait,
    /// `None`: panic (the worker dies).
    reply: Option<String>,
}

fn reply(text: &str) -> Step {
    Step {
        wait: Wait::None,
        reply: Some(text.to_owned()),
    }
}

fn after(wait: Wait, text: &str) -> Step {
    Step {
        wait,
        reply: Some(text.to_owned()),
    }
}

fn panic_after(wait: Wait) -> Step {
    Step { wait, reply: None }
}

/// The default reply once a destination's script is used up.
const FAKE_OK: &str = "250 OK (fake)";

#[derive(Debug, Clone, PartialEq, Eq)]
struct Delivered {
    destination: String,
    sender: String,
    recipients: Vec<String>,
    data: Vec<u8>,
    /// Where the data lives: the groups of one message share one copy.
    data_at: usize,
}

#[derive(Default)]
struct Counters {
    active: HashMap<String, usize>,
    total: usize,
    max: HashMap<String, usize>,
    max_total: usize,
    finished: HashMap<String, usize>,
}

#[derive(Default)]
struct Fake {
    script: Mutex<HashMap<String, VecDeque<Step>>>,
    delivered: Mutex<Vec<Delivered>>,
    counters: Mutex<Counters>,
}

/// Counts one running delivery; uncounts it when dropped, also in a panic.
struct Running<'a> {
    fake: &'a Fake,
    destination: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut c = self.fake.counters.lock().unwrap();
        *c.active.entry(self.destination.clone()).or_default() -= 1;
        c.total -= 1;
        *c.finished.entry(self.destination.clone()).or_default() += 1;
    }
}

impl Fake {
    fn script(&self, destination: &str, steps: Vec<Step>) {
        self.script
            .lock()
            .unwrap()
            .insert(destination.to_owned(), steps.into());
    }

    fn delivered(&self) -> Vec<Delivered> {
        self.delivered.lock().unwrap().clone()
    }

    fn started(&self, destination: &str) -> usize {
        self.delivered()
            .iter()
            .filter(|d| d.destination == destination)
            .count()
    }

    fn finished(&self, destination: &str) -> usize {
        let c = self.counters.lock().unwrap();
        c.finished.get(destination).copied().unwrap_or(0)
    }

    fn max_concurrent(&self, destination: &str) -> usize {
        let c = self.counters.lock().unwrap();
        c.max.get(destination).copied().unwrap_or(0)
    }

    fn max_total(&self) -> usize {
        self.counters.lock().unwrap().max_total
    }

    /// Waits until `destination` had `count` deliveries started.
    async fn wait_started(&self, destination: &str, count: usize) {
        let waited = tokio::time::timeout(PATIENCE, async {
            while self.started(destination) < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{destination}: {:?}", self.delivered());
    }

    async fn wait_finished(&self, destination: &str, count: usize) {
        let waited = tokio::time::timeout(PATIENCE, async {
            while self.finished(destination) < count {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{destination} never finished {count}");
    }
}

impl Deliver for Fake {
    async fn deliver(
        &self,
        destination: &Destination,
        sender: &str,
        recipients: &[String],
        data: &[u8],
    ) -> String {
        let destination = destination.to_string();
        self.delivered.lock().unwrap().push(Delivered {
            destination: destination.clone(),
            sender: sender.to_owned(),
            recipients: recipients.to_vec(),
            data: data.to_vec(),
            data_at: data.as_ptr() as usize,
        });
        let step = self
            .script
            .lock()
            .unwrap()
            .get_mut(&destination)
            .and_then(VecDeque::pop_front)
            .unwrap_or_else(|| reply(FAKE_OK));
        {
            let mut c = self.counters.lock().unwrap();
            let active = c.active.entry(destination.clone()).or_default();
            *active += 1;
            let active = *active;
            let max = c.max.entry(destination.clone()).or_default();
            *max = (*max).max(active);
            c.total += 1;
            c.max_total = c.max_total.max(c.total);
        }
        let _running = Running {
            fake: self,
            destination,
        };
        match step.wait {
            Wait::None => {}
            Wait::Gate(gate) => {
                gate.acquire().await.unwrap().forget();
            }
            Wait::Active(n) => {
                let reached = tokio::time::timeout(PATIENCE / 4, async {
                    while self.max_total() < n {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                })
                .await;
                if reached.is_err() {
                    return format!("451 never {n} deliveries at once");
                }
            }
            Wait::Sleep(time) => tokio::time::sleep(time).await,
        }
        match step.reply {
            Some(reply) => reply,
            None => panic!("scripted worker death"),
        }
    }
}

// ---------------------------------------------------------------- server and client

struct Setup {
    addr: SocketAddr,
    transport: Arc<Transport<Fake>>,
}

async fn start(fake: Arc<Fake>, limits: TransportLimits) -> Setup {
    start_sized(fake, limits, 1_000_000).await
}

async fn start_sized(fake: Arc<Fake>, limits: TransportLimits, max_size: u64) -> Setup {
    let transport = Arc::new(Transport::new(fake, limits, Limits::default(), max_size));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, transport.clone(), std::future::pending()));
    Setup { addr, transport }
}

/// The LMTP side of the client, as Postfix's: LHLO, MAIL, RCPTs, DATA, one reply line per
/// recipient.
impl Client {
    /// Connects and says LHLO.
    async fn lhlo(addr: SocketAddr) -> Client {
        let mut client = Client::connect(addr).await;
        assert_eq!(
            client.command("LHLO relay.example").await,
            "250-filtermail\n250-8BITMIME\n250 OK"
        );
        client
    }

    /// MAIL and RCPTs, each expected to get `250 OK`.
    async fn envelope(&mut self, from: &str, to: &[&str]) {
        assert_eq!(self.command(&format!("MAIL FROM:<{from}>")).await, "250 OK");
        for rcpt in to {
            assert_eq!(self.command(&format!("RCPT TO:<{rcpt}>")).await, "250 OK");
        }
    }

    /// DATA (expecting 354) and the already stuffed message with its final dot.
    async fn data(&mut self, stuffed: &[u8]) {
        assert_eq!(
            self.command("DATA").await,
            "354 End data with <CR><LF>.<CR><LF>"
        );
        self.send(stuffed).await;
        self.send(b".\r\n").await;
    }

    /// `count` reply lines after the final dot, then proves no further line follows.
    async fn final_lines(&mut self, count: usize) -> Vec<String> {
        let mut lines = Vec::new();
        for _ in 0..count {
            lines.push(self.line().await);
        }
        assert_eq!(self.command("NOOP").await, "250 OK", "after {lines:?}");
        lines
    }

    /// A whole transaction: returns the final lines.
    async fn mail(&mut self, from: &str, to: &[&str]) -> Vec<String> {
        self.envelope(from, to).await;
        self.data(MESSAGE).await;
        self.final_lines(to.len()).await
    }
}

const MESSAGE: &[u8] = b"Subject: hi\r\n\r\nhello\r\n";

fn limits() -> TransportLimits {
    TransportLimits::default()
}

/// Waits for a client task, at most [`PATIENCE`].
async fn join<T>(handle: tokio::task::JoinHandle<T>) -> T {
    tokio::time::timeout(PATIENCE, handle)
        .await
        .expect("client in time")
        .unwrap()
}

// ---------------------------------------------------------------- tests

#[tokio::test]
async fn one_line_per_recipient_in_rcpt_order_across_destinations() {
    let fake = Arc::new(Fake::default());
    fake.script("a.example", vec![reply("250 OK (HTTPS)")]);
    fake.script("b.example", vec![reply("450 4.2.0 b is busy")]);
    fake.script("c.example", vec![reply("550 5.1.1 no such user")]);
    let setup = start(fake.clone(), limits()).await;
    let mut c = Client::lhlo(setup.addr).await;
    let lines = c
        .mail(
            "Sender@Example.org",
            &[
                "a1@a.example",
                "b1@b.example",
                "a2@A.Example",
                "c1@c.example",
                "b2@b.example.",
                "a3@a.example",
            ],
        )
        .await;
    assert_eq!(
        lines,
        [
            "250 OK (HTTPS)",
            "450 4.2.0 b is busy",
            "250 OK (HTTPS)",
            "550 5.1.1 no such user",
            "450 4.2.0 b is busy",
            "250 OK (HTTPS)",
        ]
    );
    let mut delivered = fake.delivered();
    delivered.sort_by(|x, y| x.destination.cmp(&y.destination));
    let envelopes: Vec<(&str, &str, Vec<&str>)> = delivered
        .iter()
        .map(|d| {
            let rcpts = d.recipients.iter().map(String::as_str).collect();
            (d.destination.as_str(), d.sender.as_str(), rcpts)
        })
        .collect();
    // Addresses arrive lower-cased, as the filter modes see them.
    assert_eq!(
        envelopes,
        [
            (
                "a.example",
                "sender@example.org",
                vec!["a1@a.example", "a2@a.example", "a3@a.example"]
            ),
            (
                "b.example",
                "sender@example.org",
                vec!["b1@b.example", "b2@b.example."]
            ),
            ("c.example", "sender@example.org", vec!["c1@c.example"]),
        ]
    );
    // The transaction is over: a second one on the same connection works the same way.
    let lines = c.mail("", &["x@c.example"]).await;
    assert_eq!(lines, [FAKE_OK]);
    assert_eq!(fake.delivered().last().unwrap().sender, "");
}

#[tokio::test]
async fn every_group_gets_the_unstuffed_data_from_one_shared_copy() {
    let fake = Arc::new(Fake::default());
    let setup = start(fake.clone(), limits()).await;
    let mut c = Client::lhlo(setup.addr).await;
    c.envelope(
        "a@example.org",
        &["x@one.example", "y@two.example", "z@[192.0.2.7]"],
    )
    .await;
    // As sent: leading dots doubled; as meant: one dot less each.
    let stuffed: &[u8] =
        b"Subject: dots\r\n\r\n..\r\n...two\r\n..hidden\r\nmid.dle\r\n\xff\xfe bytes\r\n \r\n\r\n";
    let meant: &[u8] =
        b"Subject: dots\r\n\r\n.\r\n..two\r\n.hidden\r\nmid.dle\r\n\xff\xfe bytes\r\n \r\n\r\n";
    c.data(stuffed).await;
    assert_eq!(c.final_lines(3).await, [FAKE_OK, FAKE_OK, FAKE_OK]);
    let delivered = fake.delivered();
    assert_eq!(delivered.len(), 3);
    for d in &delivered {
        assert_eq!(d.data, meant, "{}", d.destination);
    }
    let mut destinations: Vec<&str> = delivered.iter().map(|d| d.destination.as_str()).collect();
    destinations.sort_unstable();
    assert_eq!(destinations, ["[192.0.2.7]", "one.example", "two.example"]);
    assert!(
        delivered.iter().all(|d| d.data_at == delivered[0].data_at),
        "each group got its own copy"
    );
}

#[tokio::test]
async fn addresses_without_destination_get_553_and_are_not_delivered() {
    let fake = Arc::new(Fake::default());
    let setup = start(fake.clone(), limits()).await;
    let mut c = Client::lhlo(setup.addr).await;
    assert_eq!(c.command("MAIL FROM:<>").await, "250 OK");
    for (rcpt, reply) in [
        ("<a@b@c>", "553 Invalid email address: a@b@c"),
        ("<../x>", "553 Invalid email address: ../x"),
        ("<x@../x>", "553 Invalid email address: x@../x"),
        (
            "<nul\0@x.example>",
            "553 Invalid email address: nul\\u{0}@x.example",
        ),
        ("<nobody>", "553 Invalid email address: nobody"),
        ("<>", "553 Invalid email address: "),
    ] {
        assert_eq!(
            c.command(&format!("RCPT TO:{rcpt}")).await,
            reply,
            "{rcpt:?}"
        );
    }
    // Nobody accepted: no data.
    assert_eq!(c.command("DATA").await, "554 5.5.1 No valid recipients");
    assert_eq!(c.command("RSET").await, "250 OK");
    assert_eq!(c.command("MAIL FROM:<a@example.org>").await, "250 OK");
    assert_eq!(
        c.command("RCPT TO:<a@b@c>").await,
        "553 Invalid email address: a@b@c"
    );
    assert_eq!(c.command("RCPT TO:<ok@x.example>").await, "250 OK");
    assert_eq!(
        c.command("RCPT TO:<nobody>").await,
        "553 Invalid email address: nobody"
    );
    c.data(MESSAGE).await;
    assert_eq!(c.final_lines(1).await, [FAKE_OK]);
    let delivered = fake.delivered();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered[0].recipients, ["ok@x.example"]);
}

#[tokio::test]
async fn deliveries_are_serial_per_destination_and_parallel_across_destinations() {
    let fake = Arc::new(Fake::default());
    // Each answers only once both run at the same time.
    fake.script("a.example", vec![after(Wait::Active(2), "250 a")]);
    fake.script("b.example", vec![after(Wait::Active(2), "250 b")]);
    let slow = || after(Wait::Sleep(Duration::from_millis(50)), FAKE_OK);
    fake.script("s.example", vec![slow(), slow(), slow(), slow()]);
    let setup = start(fake.clone(), limits()).await;
    let mut c = Client::lhlo(setup.addr).await;
    let lines = c
        .mail("a@example.org", &["x@a.example", "y@b.example"])
        .await;
    assert_eq!(lines, ["250 a", "250 b"]);
    assert_eq!(fake.max_total(), 2);

    // Four connections at once for one destination: one delivery at a time.
    let mut clients = Vec::new();
    for i in 0..4 {
        let addr = setup.addr;
        clients.push(tokio::spawn(async move {
            let mut c = Client::lhlo(addr).await;
            c.mail("a@example.org", &[&format!("r{i}@s.example")]).await
        }));
    }
    for client in clients {
        assert_eq!(join(client).await, [FAKE_OK]);
    }
    assert_eq!(fake.started("s.example"), 4);
    assert_eq!(fake.max_concurrent("s.example"), 1);
    assert_eq!(fake.max_concurrent("a.example"), 1);
}

#[tokio::test]
async fn a_full_queue_defers_its_recipients_with_421() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let fake = Arc::new(Fake::default());
    let gate = Arc::new(Semaphore::new(0));
    fake.script(
        "slow.example",
        vec![
            after(Wait::Gate(gate.clone()), "250 first"),
            reply("250 second"),
        ],
    );
    let setup = start(
        fake.clone(),
        TransportLimits {
            queue_capacity: 1,
            ..limits()
        },
    )
    .await;
    // A: in delivery, held by the gate.
    let mut a = Client::lhlo(setup.addr).await;
    a.envelope("a@example.org", &["a@slow.example"]).await;
    a.data(MESSAGE).await;
    fake.wait_started("slow.example", 1).await;
    // B: takes the one place in the queue.
    let mut b = Client::lhlo(setup.addr).await;
    b.envelope("b@example.org", &["b@slow.example"]).await;
    b.data(MESSAGE).await;
    // C: no place for slow.example, one for ok.example.
    let mut c = Client::lhlo(setup.addr).await;
    let lines = c
        .mail(
            "c@example.org",
            &["c@slow.example", "c@ok.example", "d@slow.example"],
        )
        .await;
    assert_eq!(lines, ["421 Transport busy", FAKE_OK, "421 Transport busy"]);
    // D: no place for any recipient: refused before the data.
    let mut d = Client::lhlo(setup.addr).await;
    d.envelope("d@example.org", &["d@slow.example"]).await;
    assert_eq!(d.command("DATA").await, "421 Transport busy");
    assert_eq!(d.command("RSET").await, "250 OK");

    gate.add_permits(1);
    assert_eq!(a.final_lines(1).await, ["250 first"]);
    assert_eq!(b.final_lines(1).await, ["250 second"]);
    let slow: Vec<Vec<String>> = fake
        .delivered()
        .into_iter()
        .filter(|d| d.destination == "slow.example")
        .map(|d| d.recipients)
        .collect();
    assert_eq!(slow, [vec!["a@slow.example"], vec!["b@slow.example"]]);
    // The queue has room again.
    assert_eq!(
        d.mail("d@example.org", &["d@slow.example"]).await,
        [FAKE_OK]
    );
    assert_eq!(
        logs.count("INFO Starting worker 1 for destination slow.example"),
        1
    );
}

#[tokio::test]
async fn a_full_pool_warns_and_defers_new_destinations() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let fake = Arc::new(Fake::default());
    let gate = Arc::new(Semaphore::new(0));
    fake.script(
        "one.example",
        vec![after(Wait::Gate(gate.clone()), "250 one")],
    );
    let setup = start(
        fake.clone(),
        TransportLimits {
            max_workers: 1,
            ..limits()
        },
    )
    .await;
    let mut a = Client::lhlo(setup.addr).await;
    a.envelope("a@example.org", &["a@one.example"]).await;
    a.data(MESSAGE).await;
    fake.wait_started("one.example", 1).await;

    let warning = "WARN Worker pool operating at maximum capacity! Messages to new destinations \
                   will be deferred.";
    assert_eq!(logs.count(warning), 0);
    let mut b = Client::lhlo(setup.addr).await;
    b.envelope("b@example.org", &["b@two.example"]).await;
    assert_eq!(b.command("DATA").await, "421 Transport busy");
    assert_eq!(logs.count(warning), 1);
    assert_eq!(b.command("RSET").await, "250 OK");
    // The existing destination still queues; the new one is deferred.
    b.envelope("b@example.org", &["b@two.example", "b@one.example"])
        .await;
    b.data(MESSAGE).await;
    gate.add_permits(1);
    assert_eq!(a.final_lines(1).await, ["250 one"]);
    assert_eq!(b.final_lines(2).await, ["421 Transport busy", FAKE_OK]);
    assert_eq!(logs.count(warning), 2);
    assert_eq!(setup.transport.pool().workers(), 1);
    assert_eq!(fake.started("two.example"), 0);
}

#[tokio::test]
async fn idle_workers_leave_the_pool_and_start_again() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let fake = Arc::new(Fake::default());
    let setup = start(
        fake.clone(),
        TransportLimits {
            idle_timeout: Duration::from_millis(100),
            max_workers: 1,
            ..limits()
        },
    )
    .await;
    let mut c = Client::lhlo(setup.addr).await;
    assert_eq!(c.mail("a@example.org", &["x@a.example"]).await, [FAKE_OK]);
    assert_eq!(
        logs.count("INFO Starting worker 1 for destination a.example"),
        1
    );
    logs.wait_for(
        "INFO Worker 1 for domain a.example shutting down...",
        1,
        PATIENCE,
    )
    .await;
    assert_eq!(setup.transport.pool().workers(), 0);
    // Its place in the full pool is free again: another destination gets a worker.
    assert_eq!(c.mail("a@example.org", &["x@b.example"]).await, [FAKE_OK]);
    assert_eq!(
        logs.count("INFO Starting worker 2 for destination b.example"),
        1
    );
    logs.wait_for(
        "INFO Worker 2 for domain b.example shutting down...",
        1,
        PATIENCE,
    )
    .await;
    assert_eq!(c.mail("a@example.org", &["y@a.example"]).await, [FAKE_OK]);
    assert_eq!(
        logs.count("INFO Starting worker 3 for destination a.example"),
        1
    );
    // A reservation keeps an idle worker alive: RCPT, then wait three idle times.
    c.envelope("a@example.org", &["z@a.example"]).await;
    let retired = |logs: &Logs| {
        logs.lines()
            .iter()
            .filter(|l| l.ends_with("for domain a.example shutting down..."))
            .count()
    };
    let before = retired(&logs);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(retired(&logs), before, "{:#?}", logs.lines());
    c.data(MESSAGE).await;
    assert_eq!(c.final_lines(1).await, [FAKE_OK]);
    assert_eq!(fake.started("a.example"), 3);
    assert!(
        !logs.lines().iter().any(|l| l.starts_with("WARN")),
        "{:#?}",
        logs.lines()
    );
}

#[tokio::test]
async fn a_dead_worker_answers_451_also_for_places_reserved_in_it() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let fake = Arc::new(Fake::default());
    let gate = Arc::new(Semaphore::new(0));
    fake.script("dead.example", vec![panic_after(Wait::Gate(gate.clone()))]);
    let setup = start(fake.clone(), limits()).await;
    // A: in delivery to dead.example (worker 1) and fine.example (worker 2).
    let mut a = Client::lhlo(setup.addr).await;
    a.envelope("a@example.org", &["x@dead.example", "y@fine.example"])
        .await;
    a.data(MESSAGE).await;
    fake.wait_started("dead.example", 1).await;
    // B reserves a place in the queue of the worker about to die.
    let mut b = Client::lhlo(setup.addr).await;
    b.envelope("b@example.org", &["z@dead.example"]).await;

    gate.add_permits(1);
    assert_eq!(a.final_lines(2).await, ["451 Local error", FAKE_OK]);
    // B's message goes into the dead worker's queue: answered, not left waiting.
    b.data(MESSAGE).await;
    assert_eq!(b.final_lines(1).await, ["451 Local error"]);
    let warning = "WARN Delivery to dead.example failed due to a dead worker!";
    assert_eq!(logs.count(warning), 2);
    // The next transaction gets a new worker.
    assert_eq!(
        b.mail("b@example.org", &["z@dead.example"]).await,
        [FAKE_OK]
    );
    assert_eq!(
        logs.count("INFO Starting worker 3 for destination dead.example"),
        1
    );
    assert_eq!(fake.started("dead.example"), 2);
}

#[tokio::test]
async fn the_reply_deadline_defers_late_groups_and_drops_their_queued_messages() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let fake = Arc::new(Fake::default());
    let gate = Arc::new(Semaphore::new(0));
    fake.script(
        "slow.example",
        vec![after(Wait::Gate(gate.clone()), "250 late")],
    );
    let setup = start(
        fake.clone(),
        TransportLimits {
            reply_deadline: Duration::from_millis(300),
            ..limits()
        },
    )
    .await;
    let mut a = Client::lhlo(setup.addr).await;
    let lines = a
        .mail("a@example.org", &["x@slow.example", "y@fast.example"])
        .await;
    assert_eq!(
        lines,
        [
            "451 4.4.1 Delivery to slow.example did not finish in time",
            FAKE_OK
        ]
    );
    // B queues behind the stuck delivery and times out as well.
    let lines = a.mail("a@example.org", &["z@slow.example"]).await;
    assert_eq!(
        lines,
        ["451 4.4.1 Delivery to slow.example did not finish in time"]
    );
    gate.add_permits(1);
    fake.wait_finished("slow.example", 1).await;
    // Nobody waits for B's message: Postfix will offer it again, so it is not delivered.
    logs.wait_for(
        "INFO Worker 1 for domain slow.example skips a message nobody waits for any more",
        1,
        PATIENCE,
    )
    .await;
    assert_eq!(fake.started("slow.example"), 1);
    assert_eq!(
        logs.count("WARN Delivery to slow.example not finished 0.3 s after the data; deferred"),
        2
    );
}

#[tokio::test]
async fn refusals_after_the_data_get_one_line_per_recipient() {
    let fake = Arc::new(Fake::default());
    let setup = start_sized(fake.clone(), limits(), 100).await;
    let mut c = Client::lhlo(setup.addr).await;
    c.envelope("a@example.org", &["x@a.example", "y@b.example"])
        .await;
    c.data(&[&[b'x'; 200][..], b"\r\n"].concat()).await;
    assert_eq!(
        c.final_lines(2).await,
        [
            "552 Message exceeds maximum size",
            "552 Message exceeds maximum size"
        ]
    );
    c.envelope("a@example.org", &["x@a.example"]).await;
    c.data(b"bare\rCR\r\n").await;
    assert_eq!(c.final_lines(1).await, ["500 Invalid DATA"]);
    // The places of both refused transactions are free again.
    assert_eq!(c.mail("a@example.org", &["x@a.example"]).await, [FAKE_OK]);
    assert_eq!(fake.delivered().len(), 1);
}

#[tokio::test]
async fn malformed_delivery_replies_become_one_well_formed_line() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let fake = Arc::new(Fake::default());
    fake.script(
        "a.example",
        vec![reply(
            "550-5.1.1 first\r\n550 5.1.1 second (forwarded from mx.a.example)",
        )],
    );
    // Success must be unambiguous: a multi-line 2xx (an EHLO reply passed on) is not.
    fake.script(
        "b.example",
        vec![reply("250-STARTTLS missing\r\n250 8BITMIME")],
    );
    fake.script("c.example", vec![reply("OK")]);
    let setup = start(fake.clone(), limits()).await;
    let mut c = Client::lhlo(setup.addr).await;
    let lines = c
        .mail(
            "a@example.org",
            &["x@a.example", "x@b.example", "x@c.example"],
        )
        .await;
    assert_eq!(
        lines,
        [
            "550 5.1.1 first 550 5.1.1 second (forwarded from mx.a.example)",
            "451 Local error",
            "451 Local error",
        ]
    );
    assert_eq!(
        logs.count("WARN Delivery to c.example answered a malformed reply: \"OK\""),
        1
    );
}

/// The race between a worker retiring after its idle time and a new reservation for it:
/// every reservation must end in a delivery, never in a retired worker's queue.
#[tokio::test]
async fn idle_retirement_never_strands_a_reservation() {
    let (logs, _guard) = logs::capture(tracing::Level::INFO);
    let fake = Arc::new(Fake::default());
    let pool = Pool::new(
        fake.clone(),
        TransportLimits {
            idle_timeout: Duration::from_millis(1),
            ..limits()
        },
    );
    let destination = Destination::of_recipient("x@race.example").unwrap();
    let data = Arc::new(MESSAGE.to_vec());
    for i in 0..200u64 {
        let slot = pool.reserve(&destination).expect("a place");
        // Hold the place across several idle times now and then.
        tokio::time::sleep(Duration::from_micros((i % 4) * 1000)).await;
        let pending = slot.submit(
            Arc::from("a@example.org"),
            vec![format!("r{i}@race.example")],
            data.clone(),
        );
        let outcome = tokio::time::timeout(PATIENCE, pending.outcome())
            .await
            .expect("an answer in time");
        assert_eq!(outcome.as_deref(), Ok(FAKE_OK), "round {i}");
        if i % 10 == 0 {
            // Long enough for the worker to retire.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(fake.started("race.example"), 200);
    let started = logs
        .lines()
        .iter()
        .filter(|l| l.starts_with("INFO Starting worker "))
        .count();
    let retired = logs
        .lines()
        .iter()
        .filter(|l| l.ends_with("for domain race.example shutting down..."))
        .count();
    // Workers did retire in between (the race was exercised), and never while holding a
    // reservation (each reservation was delivered).
    assert!(started >= 5, "{started} workers started");
    assert!(retired + 1 >= started, "{retired} retired of {started}");
}
