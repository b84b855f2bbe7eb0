//! The whole policy over arbitrary bytes, both directions: must not panic or hang.
#![no_main]

use chatmail_filtermail::Direction;
use chatmail_filtermail::check::{Envelope, check};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let envelope = Envelope {
        sender: "alice@example.org".into(),
        recipients: vec!["alice@example.org".into(), "bob@example.org".into()],
    };
    for direction in [Direction::Outgoing, Direction::Incoming] {
        let _ = check(data, &envelope, direction, |rcpt| rcpt.starts_with('a'));
    }
    let _ = chatmail_filtermail::openpgp::is_encrypted_packet_sequence(data);
});
