//! Delivery of one message to one remote destination, as filtermail's transport mode does
//! it for Postfix: the destination's MX hosts in order, per host HTTPS `POST /mxdeliv`
//! first, then SMTP on port 25 with mandatory STARTTLS.
//!
//! The caller (filtermail's transport mode) groups recipients per [`Destination`] and asks
//! [`RemoteDelivery::deliver`] once per group; the answer is one SMTP reply line for all
//! recipients of the group. Nothing is queued or retried here: a temporary failure is a
//! 4xx reply and Postfix retries.

#![cfg_attr(test, allow(clippy::indexing_slicing))]

mod destination;

pub use destination::{Destination, InvalidAddress};

/// Delivers messages to remote relays.
#[derive(Debug, Default)]
pub struct RemoteDelivery {}

impl RemoteDelivery {
    /// Delivers `data` from `sender` (empty: the null sender) to `recipients`, all of
    /// `destination`. `data` is the message with CRLF line ends and without dot-stuffing.
    /// Returns one reply line without CRLF, e.g. `250 OK (HTTPS)`, `250 OK (SMTP)`, or a
    /// 4xx/5xx reply that applies to every recipient of the group.
    pub async fn deliver(
        &self,
        destination: &Destination,
        sender: &str,
        recipients: &[String],
        data: &[u8],
    ) -> String {
        // Placeholder until the MX/HTTPS/SMTP path lands.
        let _ = (destination, sender, recipients, data);
        "451 Local error".to_owned()
    }
}
