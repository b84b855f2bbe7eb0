//! The push notifier: a persistent queue of (user, token) items, delivered by POSTing the
//! token to the notification gateway, retried on upstream's schedule.
//!
//! Upstream keeps one priority queue per retry level with a few threads each. Here each
//! level is one task that takes its items in order, sleeps until the first is due and hands
//! it to a request task; a semaphore bounds the requests in flight across all levels. Items
//! within a level are due in the order they were scheduled (the delay of a level is fixed),
//! so a FIFO per level is the priority queue. One HTTP client (HTTP/2 by ALPN, connection
//! reuse, rustls) serves every request.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chatmail_config::Config;
use tokio::sync::{Semaphore, mpsc};

use crate::MetadataError;
use crate::clock::Clock;
use crate::queue::{self, QueueItem};
use crate::tokens::TokenStore;

/// Base of the exponential back-off, in seconds.
pub const BASE_DELAY_SECS: i64 = 8;
/// Items are dropped when their next attempt would be later than this after the first.
pub const DROP_DEADLINE_SECS: i64 = 5 * 60 * 60;
/// `floor(log_8(18000)) + 1`: an item is attempted at most this often.
pub const RETRY_LEVELS: usize = 5;
/// Upstream's timeout per request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Requests in flight at once; upstream had 12 threads, each with one request.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 64;

/// Delay before an attempt at `level`: 0, 8, 64, 512, 4096 seconds.
pub fn retry_delay(level: usize) -> i64 {
    match level {
        0 => 0,
        n => u32::try_from(n)
            .ok()
            .and_then(|n| BASE_DELAY_SECS.checked_pow(n))
            .unwrap_or(i64::MAX),
    }
}

/// Where and how notifications are sent.
#[derive(Debug, Clone)]
pub struct NotifierOptions {
    /// The gateway (`notification_url`).
    pub url: String,
    /// PEM CA certificates that replace the system roots (`notification_ca_file`).
    pub ca_file: Option<PathBuf>,
    /// Timeout of one request, connecting included; a gateway that hangs costs one retry.
    pub request_timeout: Duration,
    /// Requests in flight at once, so a burst of mail cannot open unbounded streams.
    pub max_in_flight: usize,
}

impl NotifierOptions {
    pub fn from_config(config: &Config) -> Self {
        NotifierOptions {
            url: config.notification_url.clone(),
            ca_file: config.notification_ca_file.clone(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// An item and when it is due.
#[derive(Debug)]
struct Scheduled {
    when: i64,
    item: QueueItem,
}

/// Handle to the running notifier; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    /// `<mailboxes_dir>/pending_notifications`
    queue_dir: PathBuf,
    /// Tokens to notify, and to remove on 410.
    tokens: TokenStore,
    /// The gateway URL.
    url: String,
    /// The one client: its pool keeps the HTTP/2 connection open between notifications.
    client: reqwest::Client,
    /// Wall-clock time (a manual clock in tests).
    clock: Arc<dyn Clock>,
    /// One FIFO per retry level, drained by that level's task.
    levels: Vec<mpsc::UnboundedSender<Scheduled>>,
    /// Bounds requests in flight.
    in_flight: Arc<Semaphore>,
}

impl Notifier {
    /// Builds the HTTP client, starts one task per retry level and requeues every item
    /// left in `queue_dir` at level 0 (due now, deadline from its original start). Must be
    /// called inside a tokio runtime.
    pub fn start(
        queue_dir: PathBuf,
        tokens: TokenStore,
        options: NotifierOptions,
        clock: Arc<dyn Clock>,
    ) -> Result<Notifier, MetadataError> {
        let client = build_client(&options)?;
        let mut levels = Vec::with_capacity(RETRY_LEVELS);
        let mut receivers = Vec::with_capacity(RETRY_LEVELS);
        for _ in 0..RETRY_LEVELS {
            let (tx, rx) = mpsc::unbounded_channel();
            levels.push(tx);
            receivers.push(rx);
        }
        let notifier = Notifier {
            inner: Arc::new(Inner {
                queue_dir,
                tokens,
                url: options.url,
                client,
                clock,
                levels,
                in_flight: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            }),
        };
        for (level, rx) in receivers.into_iter().enumerate() {
            tokio::spawn(notifier.clone().run_level(level, rx));
        }
        let pending =
            queue::load_all(&notifier.inner.queue_dir).map_err(|source| MetadataError::Io {
                path: notifier.inner.queue_dir.clone(),
                source,
            })?;
        if !pending.is_empty() {
            tracing::info!("requeued {} pending notifications", pending.len());
        }
        for item in pending {
            notifier.schedule(item, 0);
        }
        Ok(notifier)
    }

    pub fn queue_dir(&self) -> &Path {
        &self.inner.queue_dir
    }

    /// Upstream's `new_message_for_addr`: one persistent item per valid token of `addr`,
    /// written before this returns (so the commit's `O` never promises a lost push), then
    /// due at once. Returns the number of items.
    pub async fn new_message_for_addr(&self, addr: String) -> Result<usize, MetadataError> {
        let inner = &self.inner;
        let start = inner.clock.now();
        // Like the token files, the items are written in this task unless the file system
        // has been slow lately (see crate::pace).
        let tokens = inner.tokens.valid(&addr, start).await?;
        if tokens.is_empty() {
            return Ok(0);
        }
        let queue_dir = inner.queue_dir.clone();
        let create = move || create_items(&queue_dir, &addr, start, &tokens);
        let (items, failed) = match inner.tokens.pace().run_in_task(&create) {
            Some(created) => created,
            None => tokio::task::spawn_blocking(create).await?,
        };
        let count = items.len();
        for item in items {
            self.schedule(item, 0);
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(count),
        }
    }

    /// Upstream's `queue_for_retry`: due `delay(level)` from now, unless that is past the
    /// deadline or the levels are used up; then the item is dropped.
    fn schedule(&self, item: QueueItem, level: usize) {
        let when = self.inner.clock.now().saturating_add(retry_delay(level));
        let deadline = item.start.saturating_add(DROP_DEADLINE_SECS);
        let sender = self.inner.levels.get(level);
        match sender {
            Some(sender) if when <= deadline => {
                if let Err(mpsc::error::SendError(scheduled)) =
                    sender.send(Scheduled { when, item })
                {
                    // Only while shutting down: the file stays for the next start.
                    tracing::debug!(
                        "notifier stopped; {} stays queued",
                        scheduled.item.path.display()
                    );
                }
            }
            _ => {
                item.delete();
                tracing::error!("notification exceeded deadline: '{}'", item.token);
            }
        }
    }

    /// One retry level: items in order, each sent when due.
    async fn run_level(self, level: usize, mut rx: mpsc::UnboundedReceiver<Scheduled>) {
        while let Some(Scheduled { when, item }) = rx.recv().await {
            self.inner.clock.sleep_until(when).await;
            let Ok(permit) = self.inner.in_flight.clone().acquire_owned().await else {
                return;
            };
            let notifier = self.clone();
            tokio::spawn(async move {
                notifier.attempt(item, level).await;
                drop(permit);
            });
        }
    }

    /// One request: 200 deletes the item, 410 also removes the token, anything else is
    /// retried at the next level.
    async fn attempt(&self, item: QueueItem, level: usize) {
        let response = self
            .inner
            .client
            .post(&self.inner.url)
            .body(item.token.clone())
            .send()
            .await;
        let failure = match response {
            Ok(response) => {
                let status = response.status().as_u16();
                // Reading the body lets an HTTP/1.1 connection be reused; its content and
                // errors do not matter.
                let _ = response.bytes().await;
                match status {
                    200 => {
                        item.delete();
                        return;
                    }
                    410 => {
                        self.remove_token(&item).await;
                        item.delete();
                        return;
                    }
                    // Upstream logs the `requests` response's repr; operators grep for it.
                    _ => format!("<Response [{status}]>"),
                }
            }
            Err(err) => error_chain(&err),
        };
        tracing::warn!("Notification request failed: {failure}");
        self.schedule(item, level + 1);
    }

    async fn remove_token(&self, item: &QueueItem) {
        let now = self.inner.clock.now();
        if let Err(err) = self.inner.tokens.remove(&item.addr, &item.token, now).await {
            tracing::error!("cannot remove token of {}: {err}", item.addr);
        }
    }
}

/// One queue item per token; on a failure, the items written so far and the error.
fn create_items(
    queue_dir: &Path,
    addr: &str,
    start: i64,
    tokens: &[String],
) -> (Vec<QueueItem>, Option<MetadataError>) {
    let mut items = Vec::with_capacity(tokens.len());
    for token in tokens {
        match QueueItem::create(queue_dir, addr, start, token) {
            Ok(item) => items.push(item),
            Err(source) => {
                // The items already written are still sent; the commit fails.
                let error = MetadataError::Io {
                    path: queue_dir.to_path_buf(),
                    source,
                };
                return (items, Some(error));
            }
        }
    }
    (items, None)
}

/// An error with its causes, e.g. "error sending request: operation timed out".
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn build_client(options: &NotifierOptions) -> Result<reqwest::Client, MetadataError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .user_agent(concat!("chatmail-metadata/", env!("CARGO_PKG_VERSION")))
        .timeout(options.request_timeout)
        .connect_timeout(options.request_timeout)
        .pool_idle_timeout(Duration::from_secs(90));
    if let Some(ca_file) = &options.ca_file {
        let pem = std::fs::read(ca_file).map_err(|source| MetadataError::Io {
            path: ca_file.clone(),
            source,
        })?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem).map_err(|source| {
            MetadataError::CaFile {
                path: ca_file.clone(),
                source,
            }
        })?;
        builder = builder.tls_built_in_root_certs(false);
        for certificate in certificates {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder.build().map_err(MetadataError::HttpClient)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams_schedule() {
        let delays: Vec<i64> = (0..RETRY_LEVELS).map(retry_delay).collect();
        assert_eq!(delays, [0, 8, 64, 512, 4096]);
        // floor(log_8(18000)) + 1
        assert_eq!(
            RETRY_LEVELS,
            (DROP_DEADLINE_SECS as f64).log(BASE_DELAY_SECS as f64) as usize + 1
        );
        assert_eq!(retry_delay(100), i64::MAX);
    }
}
