//! The async unix-socket server shared by the dict daemons.
//!
//! One tokio task per connection; each connection is a sequential request/reply loop, so
//! replies leave in request order even when Dovecot pipelines several requests. Output is
//! buffered and flushed whenever no further complete request is already buffered, which
//! batches pipelined replies without ever waiting for input while holding unsent output.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use crate::protocol::{
    COMMIT_FAILED, COMMIT_OK, ITERATE_END, LookupReply, ParseError, Request, parse_request,
    write_iterate_row,
};

/// What a daemon plugs into the server. Every method has the behaviour of upstream's base
/// class as default, so a daemon implements only what it serves.
pub trait Handler: Send + Sync + 'static {
    /// `L` requests. `Err` is logged and answered with `F`, so Dovecot fails just this lookup.
    fn lookup(
        &self,
        key: String,
        user: Option<String>,
    ) -> impl Future<Output = Result<LookupReply, HandlerError>> + Send {
        async move {
            tracing::warn!("lookup ignored: key={key:?} user={user:?}");
            Ok(LookupReply::NotFound)
        }
    }

    /// `I` requests. Rows are sent as they arrive on the returned channel, so an iteration
    /// over a million accounts never sits in memory; the end line is sent when the sender
    /// is dropped. `None` answers an empty iteration.
    fn iterate(
        &self,
        request: IterateRequest,
    ) -> impl Future<Output = Result<Option<mpsc::Receiver<IterateRow>>, HandlerError>> + Send {
        async move {
            tracing::debug!("iterate of {:?} answered empty", request.path);
            Ok(None)
        }
    }

    /// `S` requests inside a transaction, applied at once (as upstream does, not at commit).
    /// `Ok(false)` means "not handled": the transaction's commit then answers `F`.
    fn set(
        &self,
        transaction: &Transaction,
        key: String,
        value: String,
    ) -> impl Future<Output = Result<bool, HandlerError>> + Send {
        let _ = (transaction, value);
        async move {
            tracing::debug!("set of {key:?} not handled");
            Ok(false)
        }
    }
}

/// An iterate request as the handler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IterateRequest {
    pub flags: u32,
    /// 0 means no limit; the server enforces the limit, handlers may use it to stop early.
    pub max_rows: u64,
    pub path: String,
    pub user: Option<String>,
}

/// One row of an iteration: key and value.
pub type IterateRow = (String, String);

/// The per-connection state of one open transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The user named in `B`; Dovecot always sends one.
    pub user: Option<String>,
    /// Set when any `S` was not handled or failed; the commit then answers `F`.
    pub failed: bool,
}

/// A failure inside a handler. It is logged and answered with `F`; the connection stays.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl HandlerError {
    pub fn new(message: impl Into<String>) -> Self {
        HandlerError(message.into())
    }
}

/// Limits that protect the daemon from a misbehaving client.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest request line accepted, LF included. Dovecot's keys are short; a longer line
    /// is logged and its connection closed.
    pub max_line_len: usize,
    /// Open transactions per connection. Dovecot keeps one or two; more is a leak.
    pub max_transactions: usize,
    /// Connections served at once; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// How long shutdown waits for connections to finish their current request.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_line_len: 64 * 1024,
            max_transactions: 1024,
            max_connections: 16 * 1024,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// Binds the socket at `path`, removing a stale socket left by a previous run first.
/// A non-socket file at that path is never removed: that is an operator's mistake to report.
/// The socket's mode follows the process umask (the systemd units set it).
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                ),
            ));
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {}
        Err(err) => return Err(err),
    }
    UnixListener::bind(path)
}

/// Why a dict daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start the runtime: {0}")]
    Runtime(#[source] io::Error),
    #[error("cannot handle signals: {0}")]
    Signals(#[source] io::Error),
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Runs a dict daemon the way systemd expects it: a tokio runtime with a bounded blocking
/// pool, SIGTERM/SIGINT handlers installed before the socket is bound, READY=1 once
/// listening, STOPPING=1 and the socket removed at exit.
pub fn run_daemon<H: Handler>(
    name: &str,
    socket: &Path,
    handler: H,
    limits: Limits,
    max_blocking_threads: usize,
) -> Result<(), StartError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(max_blocking_threads)
        .thread_name(name)
        .build()
        .map_err(StartError::Runtime)?;
    runtime.block_on(async {
        let shutdown = chatmail_daemon::shutdown_signal().map_err(StartError::Signals)?;
        let listener = bind(socket).map_err(|source| StartError::Bind {
            path: socket.to_path_buf(),
            source,
        })?;
        tracing::info!("{name} listening on {}", socket.display());
        chatmail_daemon::notify_ready();
        serve(listener, Arc::new(handler), limits, shutdown).await;
        chatmail_daemon::notify_stopping();
        let _ = std::fs::remove_file(socket);
        Ok(())
    })
}

/// Serves connections from `listener` until `shutdown` completes, then lets connections
/// finish their current request (up to `limits.shutdown_grace`) and returns.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let limits = Arc::new(limits);
    let mut connections = JoinSet::new();
    let mut accept_errors: u32 = 0;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    accept_errors = 0;
                    stream
                }
                Err(err) => {
                    // EMFILE and friends are passing: back off instead of dying.
                    accept_errors = accept_errors.saturating_add(1);
                    let pause = Duration::from_millis(10 << accept_errors.min(7));
                    tracing::error!("accept failed: {err}; retrying in {pause:?}");
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow without bound.
        while connections.try_join_next().is_some() {}
        let handler = handler.clone();
        let limits = limits.clone();
        let stop = stop_rx.clone();
        connections.spawn(async move {
            let _permit = permit;
            if let Err(err) = serve_connection(stream, &*handler, &limits, stop).await {
                tracing::warn!("dict connection closed: {err}");
            }
        });
    }
    let _ = stop_tx.send(true);
    let grace = limits.shutdown_grace;
    if tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!(
            "{} connection(s) still busy after {grace:?}; closing them",
            connections.len()
        );
        connections.shutdown().await;
    }
}

/// Why a connection ended other than by the client closing it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("request line longer than {0} bytes")]
    LineTooLong(usize),
    #[error("malformed request {line:?}: {error}")]
    Malformed { line: String, error: ParseError },
    #[error("more than {0} open transactions")]
    TooManyTransactions(usize),
}

/// Serves one client connection until it closes, sends a blank line, breaks the protocol,
/// or shutdown is requested.
pub async fn serve_connection<H: Handler>(
    stream: UnixStream,
    handler: &H,
    limits: &Limits,
    mut stop: watch::Receiver<bool>,
) -> Result<(), ConnectionError> {
    let (read_half, write_half) = stream.into_split();
    let mut reader = BufReader::new(read_half);
    let mut writer = BufWriter::new(write_half);
    let mut transactions: HashMap<String, Transaction> = HashMap::new();
    let mut line = Vec::with_capacity(512);
    let mut out = Vec::with_capacity(512);
    loop {
        if reader.buffer().is_empty() {
            writer.flush().await?;
        }
        line.clear();
        let mut limited = (&mut reader).take(limits.max_line_len as u64);
        let read = tokio::select! {
            biased;
            () = stopped(&mut stop) => return Ok(()),
            read = limited.read_until(b'\n', &mut line) => read?,
        };
        if read == 0 {
            return Ok(());
        }
        if line.last() != Some(&b'\n') && line.len() >= limits.max_line_len {
            return Err(ConnectionError::LineTooLong(limits.max_line_len));
        }
        let request = match parse_request(&line) {
            Ok(request) => request,
            Err(ParseError::Empty) => {
                tracing::debug!("blank request line: closing the connection as upstream does");
                return Ok(());
            }
            Err(error) => {
                return Err(ConnectionError::Malformed {
                    line: printable(&line),
                    error,
                });
            }
        };
        out.clear();
        handle_request(
            request,
            handler,
            limits,
            &mut transactions,
            &mut writer,
            &mut out,
        )
        .await?;
    }
}

async fn handle_request<H: Handler, W: AsyncWriteExt + Unpin>(
    request: Request<'_>,
    handler: &H,
    limits: &Limits,
    transactions: &mut HashMap<String, Transaction>,
    writer: &mut W,
    out: &mut Vec<u8>,
) -> Result<(), ConnectionError> {
    match request {
        Request::Hello { fields } => {
            tracing::debug!("hello {fields:?}");
        }
        Request::Lookup { key, user } => {
            let reply = handler
                .lookup(key.into_owned(), user.map(|u| u.into_owned()))
                .await
                .unwrap_or_else(|err| {
                    tracing::error!("lookup failed: {err}");
                    LookupReply::Failed(String::new())
                });
            reply.write_to(out);
            writer.write_all(out).await?;
        }
        Request::Iterate {
            flags,
            max_rows,
            path,
            user,
        } => {
            let request = IterateRequest {
                flags,
                max_rows,
                path: path.into_owned(),
                user: user.map(|u| u.into_owned()),
            };
            match handler.iterate(request).await {
                Ok(Some(mut rows)) => {
                    let mut sent: u64 = 0;
                    while let Some((key, value)) = rows.recv().await {
                        if max_rows != 0 && sent >= max_rows {
                            break;
                        }
                        out.clear();
                        write_iterate_row(out, &key, &value);
                        writer.write_all(out).await?;
                        sent = sent.saturating_add(1);
                    }
                }
                Ok(None) => {}
                Err(err) => tracing::error!("iterate failed: {err}"),
            }
            writer.write_all(ITERATE_END).await?;
        }
        Request::Begin { txid, user } => {
            if transactions.len() >= limits.max_transactions
                && !transactions.contains_key(txid.as_ref())
            {
                return Err(ConnectionError::TooManyTransactions(
                    limits.max_transactions,
                ));
            }
            transactions.insert(
                txid.into_owned(),
                Transaction {
                    user: user.map(|u| u.into_owned()),
                    failed: false,
                },
            );
        }
        Request::Set { txid, key, value } => {
            let Some(transaction) = transactions.get(txid.as_ref()) else {
                tracing::warn!("set outside a transaction (txid {txid:?}) ignored: {key:?}");
                return Ok(());
            };
            let handled = handler
                .set(
                    transaction,
                    key.clone().into_owned(),
                    value.clone().into_owned(),
                )
                .await
                .unwrap_or_else(|err| {
                    tracing::error!("set of {key:?} failed: {err}");
                    false
                });
            if !handled {
                let user = transaction.user.as_deref().unwrap_or("");
                tracing::error!("dictproxy-set failed for '{user}': S{txid}\t{key}\t{value}");
                if let Some(transaction) = transactions.get_mut(txid.as_ref()) {
                    transaction.failed = true;
                }
            }
        }
        Request::Unset { txid, key } => {
            tracing::warn!("unset of {key:?} in transaction {txid:?} ignored");
        }
        Request::Commit { txid } => {
            let reply = match transactions.remove(txid.as_ref()) {
                Some(transaction) if !transaction.failed => COMMIT_OK,
                Some(_) => COMMIT_FAILED,
                None => {
                    tracing::warn!("commit of unknown transaction {txid:?}");
                    COMMIT_FAILED
                }
            };
            writer.write_all(reply).await?;
        }
        Request::Rollback { txid } => {
            transactions.remove(txid.as_ref());
        }
        Request::Unknown { command } => {
            tracing::warn!("unknown dictproxy request: '{command}'");
        }
    }
    Ok(())
}

/// Completes when shutdown is requested; never, if nobody can request it any more.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|stopped| *stopped).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A log-safe rendering of a request line: lossy UTF-8, control bytes escaped, cut short,
/// and the text after `passdb/` hidden, because doveauth's passdb keys carry the password.
fn printable(line: &[u8]) -> String {
    const MAX: usize = 200;
    let text = String::from_utf8_lossy(line.get(..MAX).unwrap_or(line));
    let mut shown: String = match text.split_once("passdb/") {
        Some((before, _secret)) => format!("{}passdb/<redacted>", before.escape_debug()),
        None => text.escape_debug().collect(),
    };
    if line.len() > MAX {
        shown.push_str("...");
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::printable;

    #[test]
    fn logged_lines_hide_passwords_and_control_bytes() {
        assert_eq!(
            printable(b"Lshared/passdb/secret\xff\"u@x\tu@x\n"),
            "Lshared/passdb/<redacted>"
        );
        assert_eq!(printable(b"Ix\t0\n"), "Ix\\t0\\n");
        assert!(printable(&[b'L'; 500]).ends_with("..."));
    }
}
