//! Transport mode: Postfix's `default_transport` over LMTP. Every recipient's mail goes to
//! its destination (the domain of its address) through that destination's worker, one
//! message at a time per destination; the answer is one LMTP reply line per recipient.
//!
//! The remote delivery itself (MX hosts, HTTPS `/mxdeliv`, SMTP with STARTTLS) is a
//! [`Deliver`]; the daemon uses [`chatmail_delivery::RemoteDelivery`].

mod pool;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chatmail_config::Config;
use chatmail_delivery::{Destination, RemoteDelivery};

pub use pool::{DeadWorker, Pending, Pool, Slot};

use crate::server::{Handler, Limits};

/// The reply for recipients whose destination's queue had no room.
pub const TRANSPORT_BUSY: &str = "421 Transport busy";

/// The reply for recipients whose worker died.
pub const LOCAL_ERROR: &str = "451 Local error";

/// Delivers one message to the recipients it has at one destination.
pub trait Deliver: Send + Sync + 'static {
    /// `data` has CRLF line ends and no dot-stuffing; `sender` is empty for the null
    /// sender. Returns one reply line without CRLF for all of `recipients`.
    fn deliver(
        &self,
        destination: &Destination,
        sender: &str,
        recipients: &[String],
        data: &[u8],
    ) -> impl Future<Output = String> + Send;
}

impl Deliver for RemoteDelivery {
    fn deliver(
        &self,
        destination: &Destination,
        sender: &str,
        recipients: &[String],
        data: &[u8],
    ) -> impl Future<Output = String> + Send {
        RemoteDelivery::deliver(self, destination, sender, recipients, data)
    }
}

/// Capacities and times of the worker pool.
#[derive(Debug, Clone)]
pub struct TransportLimits {
    /// Messages queued or reserved per destination beyond the one being delivered.
    pub queue_capacity: usize,
    /// Destinations with a worker at once.
    pub max_workers: usize,
    /// A worker without work for this long leaves the pool.
    pub idle_timeout: Duration,
    /// How long after the final dot the LMTP reply may wait for the deliveries; a group
    /// still queued or in delivery then gets a 4xx (see docs/filtermail.md).
    pub reply_deadline: Duration,
}

impl Default for TransportLimits {
    fn default() -> Self {
        TransportLimits {
            queue_capacity: 30,
            max_workers: 500,
            idle_timeout: Duration::from_secs(60),
            // Postfix gives up on the reply after lmtp_data_done_timeout (600 s) and sends
            // the message again; the reply must come well before.
            reply_deadline: Duration::from_secs(540),
        }
    }
}

/// The transport listener: LMTP dialogue limits and the worker pool.
pub struct Transport<D> {
    pool: Pool<D>,
    limits: Limits,
    max_message_size: u64,
    reply_deadline: Duration,
}

impl<D: Deliver> Transport<D> {
    pub fn new(
        deliver: Arc<D>,
        transport: TransportLimits,
        limits: Limits,
        max_message_size: u64,
    ) -> Transport<D> {
        Transport {
            reply_deadline: transport.reply_deadline,
            pool: Pool::new(deliver, transport),
            limits,
            max_message_size,
        }
    }

    /// The transport as chatmail.ini configures it, with the default limits.
    pub fn from_config(config: &Config, deliver: Arc<D>) -> Transport<D> {
        Transport::new(
            deliver,
            TransportLimits::default(),
            Limits::default(),
            config.max_message_size,
        )
    }

    /// The worker pool.
    pub fn pool(&self) -> &Pool<D> {
        &self.pool
    }
}

/// The queue places one transaction holds: one per destination, `None` where there was
/// no room.
#[derive(Default)]
pub struct TransportTransaction {
    slots: HashMap<Destination, Option<Slot>>,
}

impl<D: Deliver> Handler for Transport<D> {
    type Transaction = TransportTransaction;

    fn limits(&self) -> &Limits {
        &self.limits
    }

    fn max_message_size(&self) -> u64 {
        self.max_message_size
    }

    fn mail(&self, _sender: &str) -> Result<(), String> {
        Ok(())
    }

    fn rcpt(&self, transaction: &mut TransportTransaction, recipient: &str) -> Result<(), String> {
        let destination = Destination::of_recipient(recipient).map_err(|err| err.reply())?;
        if let Entry::Vacant(first) = transaction.slots.entry(destination) {
            let slot = self.pool.reserve(first.key());
            first.insert(slot);
        }
        // Accepted with or without a place: the recipients without one get 421 after
        // the data (or at DATA, when no recipient has a place).
        Ok(())
    }

    fn unparsable_rcpt(&self, line: &[u8]) -> String {
        format!("553 Invalid email address: {}", rcpt_argument(line))
    }

    fn data_start(&self, transaction: &TransportTransaction) -> Result<(), String> {
        if transaction.slots.values().all(Option::is_none) {
            return Err(TRANSPORT_BUSY.to_owned());
        }
        Ok(())
    }

    fn reply_per_recipient(&self) -> bool {
        true
    }

    async fn message(
        &self,
        mut transaction: TransportTransaction,
        sender: String,
        recipients: Vec<String>,
        data: Vec<u8>,
        // Delivery copies the message out whole; nothing to spare.
        _index: crate::index::MessageIndex,
    ) -> String {
        let deadline = tokio::time::Instant::now() + self.reply_deadline;
        let sender: Arc<str> = Arc::from(sender);
        let data = Arc::new(data);
        // Groups in the order of their first recipient; each recipient's group index.
        let mut groups: Vec<(Destination, Vec<String>)> = Vec::new();
        let mut index: HashMap<Destination, usize> = HashMap::new();
        let mut group_of = Vec::with_capacity(recipients.len());
        for recipient in recipients {
            // RCPT accepted only recipients with a destination.
            let Ok(destination) = Destination::of_recipient(&recipient) else {
                group_of.push(None);
                continue;
            };
            let next = groups.len();
            let i = *index.entry(destination.clone()).or_insert(next);
            if i == next {
                groups.push((destination, Vec::new()));
            }
            if let Some((_, members)) = groups.get_mut(i) {
                members.push(recipient);
            }
            group_of.push(Some(i));
        }
        // Every group is queued before any reply is awaited: the groups run at once.
        let pending: Vec<(Destination, Option<Pending>)> = groups
            .into_iter()
            .map(|(destination, members)| {
                let pending = transaction
                    .slots
                    .remove(&destination)
                    .flatten()
                    .map(|slot| slot.submit(sender.clone(), members, data.clone()));
                (destination, pending)
            })
            .collect();
        drop(transaction);
        let mut replies = Vec::with_capacity(pending.len());
        for (destination, pending) in pending {
            let reply = match pending {
                None => TRANSPORT_BUSY.to_owned(),
                Some(pending) => match tokio::time::timeout_at(deadline, pending.outcome()).await {
                    Ok(Ok(reply)) => one_line(&reply).unwrap_or_else(|| {
                        tracing::warn!(
                            "Delivery to {destination} answered a malformed reply: {reply:?}"
                        );
                        LOCAL_ERROR.to_owned()
                    }),
                    Ok(Err(DeadWorker)) => {
                        tracing::warn!("Delivery to {destination} failed due to a dead worker!");
                        LOCAL_ERROR.to_owned()
                    }
                    Err(_elapsed) => {
                        tracing::warn!(
                            "Delivery to {destination} not finished {} s after the data; \
                                 deferred",
                            self.reply_deadline.as_secs_f64()
                        );
                        format!("451 4.4.1 Delivery to {destination} did not finish in time")
                    }
                },
            };
            replies.push(reply);
        }
        group_of
            .into_iter()
            .map(|i| {
                i.and_then(|i| replies.get(i))
                    .map_or(LOCAL_ERROR, String::as_str)
            })
            .collect::<Vec<_>>()
            .join("\r\n")
    }
}

/// `reply` as one well-formed final reply line: a 2xx, 4xx or 5xx code, a space, text
/// without line breaks or control characters; the lines of a multi-line 4xx/5xx joined.
/// `None` for anything else, and for a multi-line 2xx (success must be unambiguous: an
/// EHLO reply passed on as an error looks like one).
fn one_line(reply: &str) -> Option<String> {
    let code = reply.get(..3)?;
    let valid = code.bytes().all(|b| b.is_ascii_digit()) && code.starts_with(['2', '4', '5']);
    if !valid {
        return None;
    }
    let rest = reply.get(3..)?;
    if !rest.is_empty() && !rest.starts_with([' ', '-', '\r', '\n']) {
        return None;
    }
    let multi_line = rest.starts_with('-') || rest.trim_end().contains(['\r', '\n']);
    if code.starts_with('2') && multi_line {
        return None;
    }
    let text = rest
        .split(|c: char| c.is_control())
        .map(|part| part.trim_start_matches('-').trim())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if text.is_empty() {
        Some(code.to_owned())
    } else {
        Some(format!("{code} {text}"))
    }
}

/// The address argument of an `RCPT TO:` line as sent, for the 553 reply: without the
/// brackets and parameters, control characters escaped.
fn rcpt_argument(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    // `RCPT TO:` is ASCII, matched case-insensitively by the command parser.
    let argument = text.get("RCPT TO:".len()..).unwrap_or("").trim_start();
    let argument = match argument.strip_prefix('<') {
        Some(bracketed) => bracketed.split('>').next().unwrap_or(""),
        None => argument.split(' ').next().unwrap_or(""),
    };
    argument
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_become_one_well_formed_line() {
        assert_eq!(
            one_line("250 OK (HTTPS)").as_deref(),
            Some("250 OK (HTTPS)")
        );
        assert_eq!(one_line("250").as_deref(), Some("250"));
        assert_eq!(
            one_line("550-5.1.1 no\r\n550 5.1.1 such user (forwarded from mx[1.2.3.4:25])")
                .as_deref(),
            Some("550 5.1.1 no 550 5.1.1 such user (forwarded from mx[1.2.3.4:25])")
        );
        assert_eq!(one_line("421 busy\r\n").as_deref(), Some("421 busy"));
        assert_eq!(one_line("250 OK\r\n").as_deref(), Some("250 OK"));
        assert_eq!(one_line("250-STARTTLS\r\n250 OK"), None);
        assert_eq!(one_line("250 OK\r\n250 more"), None);
        for bad in [
            "",
            "25",
            "354 go on",
            "250OK",
            "OK 250",
            "abc def",
            "2500 x",
            "\u{e4}50 x",
        ] {
            assert_eq!(one_line(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rcpt_arguments_are_quoted_as_sent() {
        assert_eq!(rcpt_argument(b"RCPT TO:<nobody>"), "nobody");
        assert_eq!(
            rcpt_argument(b"rcpt to: <a\0b@x> NOTIFY=NEVER"),
            "a\\u{0}b@x"
        );
        assert_eq!(rcpt_argument(b"RCPT TO:../x SIZE=1"), "../x");
        assert_eq!(rcpt_argument(b"RCPT TO:<>"), "");
        assert_eq!(rcpt_argument(b"RCPT TO:<a\r\x1bb"), "a\\r\\u{1b}b");
    }
}
