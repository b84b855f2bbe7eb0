//! SMTP command lines and address extraction over arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = chatmail_filtermail::command::parse_command(data);
    let _ = chatmail_filtermail::address::extract_address(&String::from_utf8_lossy(data));
});
