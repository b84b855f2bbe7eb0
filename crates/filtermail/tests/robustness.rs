//! Mutated fixtures through every pure parser: no panic, same answer twice. A cheap,
//! deterministic stand-in for a fuzzer that runs in every `cargo test`.

#![allow(clippy::indexing_slicing)]

use chatmail_filtermail::Direction;
use chatmail_filtermail::check::{Envelope, check};
use chatmail_filtermail::command::parse_command;
use chatmail_filtermail::openpgp::is_encrypted_packet_sequence;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// xorshift64*: reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(5) {
            0 => out.truncate(at),
            1 if at < out.len() => out[at] = rng.next() as u8,
            2 => out.insert(at, [b'\r', b'\n', b'-', b'=', 0xff][rng.below(5)]),
            3 if at < out.len() => {
                out.remove(at);
            }
            _ => {
                let from = rng.below(out.len() + 1);
                let chunk: Vec<u8> = out[from..(from + rng.below(64)).min(out.len())].to_vec();
                out.splice(at..at, chunk);
            }
        }
    }
    out
}

#[test]
fn mutated_messages_never_panic() {
    let mut seeds = Vec::new();
    for entry in std::fs::read_dir(FIXTURES).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "eml") {
            seeds.push(std::fs::read(path).unwrap());
        }
    }
    assert!(!seeds.is_empty());
    let envelope = Envelope {
        sender: "alice@example.org".into(),
        recipients: vec!["bob@example.org".into()],
    };
    let mut rng = Rng(0x5eed_f00d);
    for round in 0..3000 {
        let seed = &seeds[round % seeds.len()];
        let message = mutate(&mut rng, seed);
        for direction in [Direction::Outgoing, Direction::Incoming] {
            let first = check(&message, &envelope, direction, |_| false);
            let again = check(&message, &envelope, direction, |_| false);
            assert_eq!(first, again);
        }
        let _ = parse_command(&message[..message.len().min(100)]);
        let _ = is_encrypted_packet_sequence(&message);
    }
}
