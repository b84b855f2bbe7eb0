//! The dict server over a real unix socket, with a small handler that records what it sees.

#![allow(clippy::indexing_slicing, clippy::string_slice)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chatmail_dict::{
    Handler, HandlerError, IterateRequest, IterateRow, Limits, LookupReply, Transaction,
};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

/// Answers `L<key>` with `O<key>` (or `N` for `missing`, an error for `boom`), iterates
/// `rows/<n>` as n rows, handles SETs of keys starting with `ok/`.
struct TestHandler {
    sets: AtomicUsize,
}

impl Handler for TestHandler {
    async fn lookup(&self, key: String, user: Option<String>) -> Result<LookupReply, HandlerError> {
        match key.as_str() {
            "missing" => Ok(LookupReply::NotFound),
            "boom" => Err(HandlerError::new("boom")),
            "slow" => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok(LookupReply::Found("slow".into()))
            }
            "user" => Ok(LookupReply::Found(user.unwrap_or_default())),
            _ => Ok(LookupReply::Found(key)),
        }
    }

    async fn iterate(
        &self,
        request: IterateRequest,
    ) -> Result<Option<mpsc::Receiver<IterateRow>>, HandlerError> {
        let Some(count) = request.path.strip_prefix("rows/") else {
            return Ok(None);
        };
        let count: usize = count.parse().map_err(|_| HandlerError::new("bad count"))?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for i in 0..count {
                if tx.send((format!("k{i}"), format!("v{i}"))).await.is_err() {
                    break;
                }
            }
        });
        Ok(Some(rx))
    }

    async fn set(
        &self,
        _transaction: &Transaction,
        key: String,
        _value: String,
    ) -> Result<bool, HandlerError> {
        if key == "boom" {
            return Err(HandlerError::new("boom"));
        }
        self.sets.fetch_add(1, Ordering::SeqCst);
        Ok(key.starts_with("ok/"))
    }
}

struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    handler: Arc<TestHandler>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    async fn start(limits: Limits) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dict.socket");
        let listener = chatmail_dict::bind(&path).unwrap();
        let handler = Arc::new(TestHandler {
            sets: AtomicUsize::new(0),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(chatmail_dict::serve(
            listener,
            handler.clone(),
            limits,
            async {
                let _ = stopped.await;
            },
        ));
        Server {
            _dir: dir,
            path,
            handler,
            stop: Some(stop),
            task,
        }
    }

    async fn connect(&self) -> Client {
        Client::connect(&self.path).await
    }

    async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(10), &mut self.task)
            .await
            .expect("serve returns after shutdown")
            .unwrap();
    }
}

struct Client {
    reader: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    async fn connect(path: &Path) -> Client {
        let stream = UnixStream::connect(path).await.unwrap();
        let (read, writer) = stream.into_split();
        Client {
            reader: BufReader::new(read),
            writer,
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    async fn line(&mut self) -> String {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(5), self.reader.read_line(&mut line))
            .await
            .expect("a reply within 5 s")
            .unwrap();
        line
    }

    /// True if the server closed the connection (EOF or reset) within 5 s.
    async fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        match tokio::time::timeout(Duration::from_secs(5), self.reader.read_to_end(&mut rest)).await
        {
            Ok(Ok(_)) => rest.is_empty(),
            Ok(Err(_)) => true,
            Err(_) => false,
        }
    }
}

#[tokio::test]
async fn lookups_get_one_reply_each() {
    let server = Server::start(Limits::default()).await;
    let mut client = server.connect().await;
    client.send(b"H3\t2\t0\t\tauth\n").await;
    client.send(b"Lsome/key\tu@x\n").await;
    assert_eq!(client.line().await, "Osome/key\n");
    client.send(b"Lmissing\n").await;
    assert_eq!(client.line().await, "N\n");
    client.send(b"Luser\tu@x\n").await;
    assert_eq!(client.line().await, "Ou@x\n");
    server.shutdown().await;
}

#[tokio::test]
async fn handler_error_answers_f_and_keeps_the_connection() {
    let server = Server::start(Limits::default()).await;
    let mut client = server.connect().await;
    client.send(b"Lboom\n").await;
    assert_eq!(client.line().await, "F\n");
    client.send(b"Lafter\n").await;
    assert_eq!(client.line().await, "Oafter\n");
    server.shutdown().await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let server = Server::start(Limits::default()).await;
    let mut client = server.connect().await;
    client
        .send(b"Lslow\nLmissing\nB1\tu@x\nS1\tok/a\tv\nC1\nI0\t0\trows/2\nLlast\n")
        .await;
    assert_eq!(client.line().await, "Oslow\n");
    assert_eq!(client.line().await, "N\n");
    assert_eq!(client.line().await, "O\n");
    assert_eq!(client.line().await, "Ok0\tv0\n");
    assert_eq!(client.line().await, "Ok1\tv1\n");
    assert_eq!(client.line().await, "\n");
    assert_eq!(client.line().await, "Olast\n");
    server.shutdown().await;
}

#[tokio::test]
async fn transactions_commit_ok_or_f() {
    let server = Server::start(Limits::default()).await;
    let mut client = server.connect().await;
    client
        .send(b"B1\tu@x\nS1\tok/a\t1\nS1\tok/b\t2\nC1\n")
        .await;
    assert_eq!(client.line().await, "O\n");
    client
        .send(b"B2\tu@x\nS2\tok/a\t1\nS2\tnot-handled\t2\nC2\n")
        .await;
    assert_eq!(client.line().await, "F\n");
    client.send(b"B3\tu@x\nS3\tboom\t1\nC3\n").await;
    assert_eq!(client.line().await, "F\n", "a failing set fails the commit");
    client.send(b"C99\n").await;
    assert_eq!(client.line().await, "F\n", "unknown transaction");
    client.send(b"B4\tu@x\nR4\nC4\n").await;
    assert_eq!(client.line().await, "F\n", "rolled back");
    client.send(b"S5\tok/outside\t1\nLstill-here\n").await;
    assert_eq!(client.line().await, "Ostill-here\n");
    // The same txid on two connections are two transactions.
    let mut other = server.connect().await;
    client.send(b"B1\tu@x\nS1\tok/a\t1\n").await;
    other.send(b"B1\tu@x\nS1\tnope\t1\nC1\n").await;
    assert_eq!(other.line().await, "F\n");
    client.send(b"C1\n").await;
    assert_eq!(client.line().await, "O\n");
    server.shutdown().await;
}

#[tokio::test]
async fn iterate_streams_rows_honours_max_rows_and_always_ends() {
    let server = Server::start(Limits::default()).await;
    let mut client = server.connect().await;
    client.send(b"I0\t0\trows/1000\n").await;
    for i in 0..1000 {
        assert_eq!(client.line().await, format!("Ok{i}\tv{i}\n"));
    }
    assert_eq!(client.line().await, "\n");
    client.send(b"I0\t3\trows/1000\n").await;
    for i in 0..3 {
        assert_eq!(client.line().await, format!("Ok{i}\tv{i}\n"));
    }
    assert_eq!(client.line().await, "\n");
    client.send(b"I0\t0\tother/path\nI0\t0\trows/bad\n").await;
    assert_eq!(client.line().await, "\n", "unsupported path: empty result");
    assert_eq!(client.line().await, "\n", "handler error: still ended");
    server.shutdown().await;
}

#[tokio::test]
async fn unknown_commands_are_ignored_without_reply() {
    let server = Server::start(Limits::default()).await;
    let mut client = server.connect().await;
    client.send(b"A1\tkey\t1\nT1\t0\nD1\nLnext\n").await;
    assert_eq!(client.line().await, "Onext\n");
    server.shutdown().await;
}

#[tokio::test]
async fn broken_lines_close_only_their_connection() {
    let limits = Limits {
        max_line_len: 1024,
        ..Limits::default()
    };
    let server = Server::start(limits).await;
    let mut bystander = server.connect().await;

    let mut overlong = server.connect().await;
    let mut line = vec![b'L'; 5000];
    line.push(b'\n');
    overlong.send(&line).await;
    assert!(overlong.closed().await, "overlong line closes");

    let mut garbage = server.connect().await;
    garbage.send(b"L\xff\xfe\n").await;
    assert!(garbage.closed().await, "invalid UTF-8 closes");

    let mut malformed = server.connect().await;
    malformed.send(b"Ix\t0\tpath\n").await;
    assert!(malformed.closed().await, "malformed iterate closes");

    let mut blank = server.connect().await;
    blank.send(b"\n").await;
    assert!(
        blank.closed().await,
        "blank line ends the session, as upstream"
    );

    let mut nul = server.connect().await;
    nul.send(b"Lkey\0with-nul\n").await;
    assert_eq!(
        nul.line().await,
        "Okey\x010with-nul\n",
        "NUL is escaped back out"
    );

    bystander.send(b"Lalive\n").await;
    assert_eq!(bystander.line().await, "Oalive\n");
    let mut fresh = server.connect().await;
    fresh.send(b"Lalive\n").await;
    assert_eq!(fresh.line().await, "Oalive\n");
    server.shutdown().await;
}

#[tokio::test]
async fn client_vanishing_mid_transaction_or_mid_iterate_is_harmless() {
    let server = Server::start(Limits::default()).await;
    for _ in 0..20 {
        let mut client = server.connect().await;
        client.send(b"B1\tu@x\nS1\tok/a\t1\n").await;
        drop(client);
        let mut client = server.connect().await;
        client.send(b"I0\t0\trows/100000\n").await;
        let _ = client.line().await;
        drop(client);
    }
    let mut client = server.connect().await;
    client.send(b"Lalive\n").await;
    assert_eq!(client.line().await, "Oalive\n");
    assert!(server.handler.sets.load(Ordering::SeqCst) >= 20);
    server.shutdown().await;
}

#[tokio::test]
async fn too_many_open_transactions_close_the_connection() {
    let limits = Limits {
        max_transactions: 8,
        ..Limits::default()
    };
    let server = Server::start(limits).await;
    let mut client = server.connect().await;
    for i in 0..9 {
        client.send(format!("B{i}\tu@x\n").as_bytes()).await;
    }
    assert!(client.closed().await);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    let server = Server::start(Limits::default()).await;
    let mut tasks = Vec::new();
    for c in 0..200 {
        let path = server.path.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = Client::connect(&path).await;
            for i in 0..20 {
                client.send(format!("Lc{c}-{i}\n").as_bytes()).await;
                assert_eq!(client.line().await, format!("Oc{c}-{i}\n"));
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    server.shutdown().await;
}

#[tokio::test]
async fn connection_limit_queues_instead_of_failing() {
    let limits = Limits {
        max_connections: 2,
        ..Limits::default()
    };
    let server = Server::start(limits).await;
    let mut first = server.connect().await;
    let mut second = server.connect().await;
    let mut third = server.connect().await;
    third.send(b"Lthird\n").await;
    first.send(b"Lfirst\n").await;
    assert_eq!(first.line().await, "Ofirst\n");
    second.send(b"Lsecond\n").await;
    assert_eq!(second.line().await, "Osecond\n");
    drop(first);
    assert_eq!(third.line().await, "Othird\n", "served once a slot frees");
    server.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_idle_connections() {
    let server = Server::start(Limits::default()).await;
    let mut idle = server.connect().await;
    idle.send(b"Lwarm\n").await;
    assert_eq!(idle.line().await, "Owarm\n");
    server.shutdown().await;
    assert!(idle.closed().await);
}

#[tokio::test]
async fn bind_replaces_a_stale_socket_but_never_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dict.socket");
    let first = chatmail_dict::bind(&path).unwrap();
    drop(first); // leaves the socket file behind, as a killed daemon does
    assert!(path.exists());
    let _second = chatmail_dict::bind(&path).expect("stale socket is replaced");

    let file = dir.path().join("important");
    std::fs::write(&file, "data").unwrap();
    let err = chatmail_dict::bind(&file).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
}
