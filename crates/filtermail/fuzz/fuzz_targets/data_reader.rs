//! The DATA reader over arbitrary bytes, taken in one piece through `feed` and read the
//! server's way (straight into the message whenever the reader offers room, otherwise
//! through a read buffer) in reads of sizes drawn from the input: both must consume the
//! same bytes and end the same way, and a message's index must be that of the message.
#![no_main]

use chatmail_filtermail::data::{DataEnd, DataReader};
use chatmail_filtermail::index::MessageIndex;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let Some((&[max_high, max_low, chunk, read], stream)) = input.split_first_chunk::<4>() else {
        return;
    };
    let max = usize::from(u16::from_be_bytes([max_high, max_low]));
    let chunk = 1 + usize::from(chunk) * 97;
    let read = 1 + usize::from(read) * 31;

    let expected = DataReader::new(max).feed(stream);

    let mut reader = DataReader::new(max);
    let mut taken = 0;
    let mut buffered: Vec<u8> = Vec::new();
    let got = loop {
        let end = if buffered.is_empty()
            && let Some(mut target) = reader.direct(chunk)
        {
            let room = bytes::BufMut::remaining_mut(&target);
            let Some(bytes) = stream.get(taken..(taken + read.min(room)).min(stream.len())) else {
                break (taken, None);
            };
            if bytes.is_empty() {
                break (taken, None);
            }
            bytes::BufMut::put_slice(&mut target, bytes);
            taken += bytes.len();
            reader.settle().map(|(end, after)| {
                buffered = after;
                end
            })
        } else {
            if buffered.is_empty() {
                let next = stream
                    .get(taken..(taken + read).min(stream.len()))
                    .unwrap_or_default();
                if next.is_empty() {
                    break (taken, None);
                }
                buffered.extend_from_slice(next);
                taken += next.len();
            }
            let (used, end) = reader.feed(&buffered);
            buffered.drain(..used);
            end
        };
        if let Some(end) = end {
            if let DataEnd::Message(message) = &end {
                assert_eq!(reader.take_index(), MessageIndex::of(message));
            }
            break (taken - buffered.len(), Some(end));
        }
    };
    assert_eq!(got, expected);
});
