//! One worker per destination, each delivering one message at a time from a bounded queue.
//!
//! A transaction reserves a place in a worker's queue at RCPT time ([`Pool::reserve`]) and
//! fills it after the final dot ([`Slot::submit`]); a full queue or a full pool means no
//! place, and the caller answers 421. Reservations and a worker's decision to retire are
//! both made under the pool's lock, and a worker retires only while nobody holds a place
//! in its queue, so a reserved place always belongs to a live worker (or to one that
//! died, which [`Pending::outcome`] reports instead of waiting).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use chatmail_delivery::Destination;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use super::{Deliver, TransportLimits};

/// One message for one destination: the group of recipients it has there.
struct Job {
    sender: Arc<str>,
    recipients: Vec<String>,
    data: Arc<Vec<u8>>,
    /// Where the reply goes; closed when the transaction stopped waiting.
    reply: oneshot::Sender<String>,
}

/// A worker as the pool knows it.
struct Worker {
    id: u64,
    queue: mpsc::Sender<Job>,
}

struct Shared<D> {
    deliver: Arc<D>,
    limits: TransportLimits,
    workers: Mutex<HashMap<Destination, Worker>>,
    next_id: AtomicU64,
}

impl<D> Shared<D> {
    fn workers(&self) -> MutexGuard<'_, HashMap<Destination, Worker>> {
        // The map stays consistent even if a holder panicked: every change is one call.
        self.workers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An idle worker asks to leave the pool; `false` while a place in its queue is
    /// reserved or filled (it must then keep serving).
    fn retire(&self, id: u64, destination: &Destination) -> bool {
        let mut workers = self.workers();
        match workers.get(destination) {
            Some(worker) if worker.id == id => {
                if worker.queue.capacity() < worker.queue.max_capacity() {
                    return false;
                }
                workers.remove(destination);
                true
            }
            // Already replaced: nothing can reach this worker's queue any more.
            _ => true,
        }
    }
}

/// The per-destination workers of one transport listener.
pub struct Pool<D> {
    shared: Arc<Shared<D>>,
}

/// A reserved place in one destination worker's queue; dropping it frees the place.
pub struct Slot {
    permit: mpsc::OwnedPermit<Job>,
}

/// A message handed to a worker.
pub struct Pending {
    reply: oneshot::Receiver<String>,
    queue: mpsc::Sender<Job>,
}

/// The worker of a destination ended before answering (it panicked).
#[derive(Debug, Error, PartialEq, Eq)]
#[error("the worker died")]
pub struct DeadWorker;

impl<D: Deliver> Pool<D> {
    pub fn new(deliver: Arc<D>, limits: TransportLimits) -> Pool<D> {
        Pool {
            shared: Arc::new(Shared {
                deliver,
                limits,
                workers: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Reserves one place in `destination`'s queue, starting its worker if it has none.
    /// `None` when its queue is full, or when it has no worker and the pool is full.
    /// Needs a Tokio runtime (the worker is spawned on it).
    pub fn reserve(&self, destination: &Destination) -> Option<Slot> {
        let shared = &self.shared;
        let mut workers = shared.workers();
        if let Some(worker) = workers.get(destination) {
            match worker.queue.clone().try_reserve_owned() {
                Ok(permit) => return Some(Slot { permit }),
                Err(mpsc::error::TrySendError::Full(_)) => return None,
                // The worker died; a new one takes its place.
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    workers.remove(destination);
                }
            }
        }
        if workers.len() >= shared.limits.max_workers {
            workers.retain(|_, worker| !worker.queue.is_closed());
        }
        if workers.len() >= shared.limits.max_workers {
            tracing::warn!(
                "Worker pool operating at maximum capacity! Messages to new destinations will \
                 be deferred."
            );
            return None;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (queue, jobs) = mpsc::channel(shared.limits.queue_capacity.max(1));
        let permit = queue.clone().try_reserve_owned().ok()?;
        workers.insert(destination.clone(), Worker { id, queue });
        drop(workers);
        tracing::info!("Starting worker {id} for destination {destination}");
        tokio::spawn(run_worker(shared.clone(), id, destination.clone(), jobs));
        Some(Slot { permit })
    }

    /// Workers in the pool now (live or not yet found dead).
    pub fn workers(&self) -> usize {
        self.shared.workers().len()
    }
}

impl Slot {
    /// Queues the message in the reserved place. `data` is shared with the other groups of
    /// the same message.
    pub fn submit(self, sender: Arc<str>, recipients: Vec<String>, data: Arc<Vec<u8>>) -> Pending {
        let (reply, receiver) = oneshot::channel();
        let queue = self.permit.send(Job {
            sender,
            recipients,
            data,
            reply,
        });
        Pending {
            reply: receiver,
            queue,
        }
    }
}

impl Pending {
    /// The delivery's reply line. Dropping the future (a deadline) abandons the message:
    /// if its worker has not started it yet, it never will.
    pub async fn outcome(mut self) -> Result<String, DeadWorker> {
        tokio::select! {
            biased;
            reply = &mut self.reply => reply.map_err(|_| DeadWorker),
            // A worker closes its queue only by ending; a message sent into the queue of a
            // worker that just died would otherwise wait for nobody.
            () = self.queue.closed() => self.reply.try_recv().map_err(|_| DeadWorker),
        }
    }
}

async fn run_worker<D: Deliver>(
    shared: Arc<Shared<D>>,
    id: u64,
    destination: Destination,
    mut jobs: mpsc::Receiver<Job>,
) {
    let idle = shared.limits.idle_timeout;
    loop {
        let job = match tokio::time::timeout(idle, jobs.recv()).await {
            Ok(Some(job)) => job,
            Ok(None) => break,
            Err(_idle) => {
                if shared.retire(id, &destination) {
                    break;
                }
                continue;
            }
        };
        if job.reply.is_closed() {
            // Its transaction gave up (deadline, lost connection) and Postfix will offer
            // the message again: delivering it now would deliver it twice.
            tracing::info!(
                "Worker {id} for domain {destination} skips a message nobody waits for any more"
            );
            continue;
        }
        let reply = shared
            .deliver
            .deliver(&destination, &job.sender, &job.recipients, &job.data)
            .await;
        let _ = job.reply.send(reply);
    }
    tracing::info!("Worker {id} for domain {destination} shutting down...");
}
