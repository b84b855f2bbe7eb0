//! The ASCII-armor and OpenPGP packet-sequence checks of an encrypted payload.
//!
//! Only packet headers are parsed: the relay never holds keys. The payload counts as
//! encrypted iff it is zero or more session-key packets (PKESK, SKESK) followed by exactly
//! one SEIPD packet ending exactly at the end of the data.

use base64::Engine as _;

use crate::check::Direction;

const BEGIN: &[u8] = b"-----BEGIN PGP MESSAGE-----\r\n";
const END: &[u8] = b"-----END PGP MESSAGE-----";

/// Packet tags (RFC 9580 §5).
const TAG_PKESK: u8 = 1;
const TAG_SKESK: u8 = 3;
const TAG_SEIPD: u8 = 18;

/// Whether an armored `PGP MESSAGE` holds only an encrypted message (filtermail.md §6.2).
pub fn check_armored_payload(payload: &[u8], direction: Direction) -> bool {
    let Some(mut text) = payload.strip_prefix(BEGIN) else {
        return false;
    };
    while let Some(rest) = text.strip_suffix(b"\r\n") {
        text = rest;
    }
    let Some(mut text) = text.strip_suffix(END) else {
        return false;
    };
    if text.starts_with(b"Version: ") {
        // Delta Chat never writes armor headers; other clients (ProtonMail, GnuPG) do,
        // and incoming mail from them must still arrive.
        if direction == Direction::Outgoing {
            return false;
        }
        text = match text.windows(2).position(|w| w == b"\r\n") {
            Some(pos) => text.get(pos + 2..).unwrap_or(&[]),
            None => &[],
        };
    }
    while let Some(rest) = text.strip_prefix(b"\r\n") {
        text = rest;
    }
    // The optional CRC-24 checksum is a line of its own that starts with '='. Upstream cuts
    // at the last '=' anywhere, which also eats the base64 padding of armor without a
    // checksum line (RFC 9580 makes the line optional; Sequoia omits it for v6 keys), so
    // such valid messages were refused. Only a final line starting with '=' goes here.
    while let Some(rest) = text.strip_suffix(b"\r\n") {
        text = rest;
    }
    let last_line_start = text
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |pos| pos + 1);
    if text.get(last_line_start) == Some(&b'=') {
        text = text.get(..last_line_start).unwrap_or(&[]);
    }
    let mut base64 = Vec::with_capacity(text.len());
    let mut start = 0;
    for line_break in memchr::memchr2_iter(b'\r', b'\n', text) {
        base64.extend_from_slice(text.get(start..line_break).unwrap_or_default());
        start = line_break + 1;
    }
    base64.extend_from_slice(text.get(start..).unwrap_or_default());
    match base64::engine::general_purpose::STANDARD.decode(base64) {
        Ok(data) => is_encrypted_packet_sequence(&data),
        Err(_) => false,
    }
}

/// The packet walk of filtermail-latest.md §10: new-format headers (with partial body
/// lengths) and legacy old-format headers (GnuPG still writes them).
pub fn is_encrypted_packet_sequence(data: &[u8]) -> bool {
    if data.is_empty() {
        return false;
    }
    let mut i = 0usize;
    loop {
        let Some(&header) = data.get(i) else {
            return false;
        };
        i += 1;
        if header & 0x80 == 0 {
            return false;
        }
        let tag;
        let body_len: usize;
        if header & 0x40 != 0 {
            tag = header & 0x3f;
            // Partial body lengths: each chunk header is followed by 2^n bytes of body.
            loop {
                let Some(&octet) = data.get(i) else {
                    return false;
                };
                if !(224..=254).contains(&octet) {
                    break;
                }
                i = match i.checked_add(1 + (1usize << (octet & 0x1f))) {
                    Some(next) if next <= data.len() => next,
                    _ => return false,
                };
            }
            let Some(&first) = data.get(i) else {
                return false;
            };
            (body_len, i) = match first {
                0..=191 => (usize::from(first), i + 1),
                192..=223 => {
                    let Some(&second) = data.get(i + 1) else {
                        return false;
                    };
                    (
                        (usize::from(first - 192) << 8) + usize::from(second) + 192,
                        i + 2,
                    )
                }
                // 255: a four-octet length (224..=254 were consumed above).
                _ => match be_length(data, i + 1, 4) {
                    Some(len) => (len, i + 5),
                    None => return false,
                },
            };
        } else {
            tag = (header >> 2) & 0x0f;
            let octets = match header & 0x03 {
                0 => 1,
                1 => 2,
                2 => 4,
                // Indeterminate length: the packet runs to the end of whatever contains
                // it, which a session-key packet never does.
                _ => return false,
            };
            body_len = match be_length(data, i, octets) {
                Some(len) => len,
                None => return false,
            };
            i += octets;
        }
        i = match i.checked_add(body_len) {
            Some(next) => next,
            None => return false,
        };
        if i == data.len() {
            return tag == TAG_SEIPD;
        }
        if i > data.len() || (tag != TAG_PKESK && tag != TAG_SKESK) {
            return false;
        }
    }
}

/// A big-endian length of `octets` bytes at `at`.
fn be_length(data: &[u8], at: usize, octets: usize) -> Option<usize> {
    let bytes = data.get(at..at.checked_add(octets)?)?;
    Some(
        bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b)),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;
    use rstest::rstest;

    /// A new-format packet with a one-octet length.
    fn packet(tag: u8, len: usize) -> Vec<u8> {
        let mut p = vec![0xc0 | tag, len as u8];
        p.resize(2 + len, 0x42);
        p
    }

    fn seq(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    #[rstest]
    #[case::pkesk_seipd(seq(&[packet(1, 10), packet(18, 20)]), true)]
    #[case::two_pkesk_seipd(seq(&[packet(1, 10), packet(1, 12), packet(18, 20)]), true)]
    #[case::skesk_seipd(seq(&[packet(3, 10), packet(18, 20)]), true)]
    #[case::seipd_only(packet(18, 5), true)]
    #[case::empty(vec![], false)]
    #[case::literal(packet(11, 12), false)]
    #[case::wrong_order(seq(&[packet(18, 20), packet(1, 10)]), false)]
    #[case::two_seipd(seq(&[packet(18, 20), packet(18, 20)]), false)]
    #[case::signature_first(seq(&[packet(2, 10), packet(18, 20)]), false)]
    #[case::trailing_garbage(seq(&[packet(1, 10), packet(18, 20), vec![0]]), false)]
    #[case::truncated(seq(&[packet(1, 10), packet(18, 20)])[..25].to_vec(), false)]
    #[case::truncated_header(vec![0xc1], false)]
    #[case::not_a_header(vec![0x12, 0x00], false)]
    // Two-octet length 192..=8383: 0xc0 0x00 → 192.
    #[case::two_octet(seq(&[vec![0xd2, 0xc0, 0x00], vec![0; 192]]), true)]
    #[case::two_octet_truncated(vec![0xd2, 0xc0], false)]
    // Five-octet length.
    #[case::five_octet(seq(&[vec![0xd2, 0xff, 0, 0, 0, 3], vec![0; 3]]), true)]
    #[case::five_octet_truncated(vec![0xd2, 0xff, 0, 0], false)]
    #[case::five_octet_huge(vec![0xd2, 0xff, 0xff, 0xff, 0xff, 0xff], false)]
    // Partial lengths: 2^1 bytes, then a final one-octet length of 3.
    #[case::partial(seq(&[vec![0xd2, 0xe1, 1, 2, 3], vec![4, 5, 6]]), true)]
    #[case::partial_truncated(vec![0xd2, 0xe4, 1, 2], false)]
    #[case::partial_without_final(vec![0xd2, 0xe1, 1, 2], false)]
    // Old format: tag 1 one-octet length, then tag 18 is not expressible (old format has
    // tags 0..=15 only), so old-format PKESK + new-format SEIPD, as GnuPG writes.
    #[case::old_pkesk(seq(&[vec![0x84, 2, 9, 9], packet(18, 4)]), true)]
    #[case::old_pkesk_two_octet(seq(&[vec![0x85, 0, 2, 9, 9], packet(18, 4)]), true)]
    #[case::old_pkesk_four_octet(seq(&[vec![0x86, 0, 0, 0, 2, 9, 9], packet(18, 4)]), true)]
    #[case::old_indeterminate(seq(&[vec![0x87, 9, 9], packet(18, 4)]), false)]
    #[case::old_literal(vec![0xac, 2, 0, 0], false)]
    #[case::old_skesk_only(vec![0x8c, 1, 0], false)]
    fn packet_sequences(#[case] data: Vec<u8>, #[case] expected: bool) {
        assert_eq!(is_encrypted_packet_sequence(&data), expected);
    }

    fn armor(data: &[u8], header: &str, crc: &str) -> Vec<u8> {
        let b64 = base64::engine::general_purpose::STANDARD.encode(data);
        format!(
            "-----BEGIN PGP MESSAGE-----\r\n{header}\r\n{b64}\r\n{crc}-----END PGP MESSAGE-----\r\n"
        )
        .into_bytes()
    }

    fn good() -> Vec<u8> {
        // 33 bytes: base64 without padding, so the checksum line is optional.
        seq(&[packet(1, 10), packet(18, 19)])
    }

    fn bare_lf_after_begin() -> Vec<u8> {
        let crlf = armor(&good(), "", "=abcd\r\n");
        [b"-----BEGIN PGP MESSAGE-----\n", &crlf[BEGIN.len()..]].concat()
    }

    #[rstest]
    #[case::clean(armor(&good(), "", "=abcd\r\n"), true, true)]
    #[case::version_header(armor(&good(), "Version: 1\r\n", "=abcd\r\n"), false, true)]
    #[case::protonmail(armor(&good(), "Version: ProtonMail\r\n", "=abcd\r\n"), false, true)]
    #[case::comment_header(armor(&good(), "Comment: hi\r\n", "=abcd\r\n"), false, false)]
    #[case::not_openpgp(armor(b"hello world, not a packet", "", "=abcd\r\n"), false, false)]
    #[case::not_base64(b"-----BEGIN PGP MESSAGE-----\r\n\r\nHELLOWORLD!!\r\n-----END PGP MESSAGE-----\r\n".to_vec(), false, false)]
    #[case::only_crc(b"-----BEGIN PGP MESSAGE-----\r\n\r\n=njUN\r\n-----END PGP MESSAGE-----\r\n".to_vec(), false, false)]
    #[case::only_end(b"-----END PGP MESSAGE-----\r\n".to_vec(), false, false)]
    #[case::only_begin(b"-----BEGIN PGP MESSAGE-----\r\n".to_vec(), false, false)]
    #[case::bare_lf_after_begin(bare_lf_after_begin(), false, false)]
    #[case::no_trailing_crlf(armor(&good(), "", "=abcd\r\n")[..armor(&good(), "", "=abcd\r\n").len() - 2].to_vec(), true, true)]
    #[case::three_trailing_crlf([armor(&good(), "", "=abcd\r\n"), b"\r\n\r\n".to_vec()].concat(), true, true)]
    #[case::no_checksum_no_padding(armor(&good(), "", ""), true, true)]
    #[case::garbage_after_end([armor(&good(), "", "=abcd\r\n"), b"x".to_vec()].concat(), false, false)]
    fn armor_checks(#[case] payload: Vec<u8>, #[case] outgoing: bool, #[case] incoming: bool) {
        assert_eq!(
            check_armored_payload(&payload, Direction::Outgoing),
            outgoing,
            "outgoing"
        );
        assert_eq!(
            check_armored_payload(&payload, Direction::Incoming),
            incoming,
            "incoming"
        );
    }

    #[rstest]
    #[case::one_padding_byte(seq(&[packet(1, 9), packet(18, 19)]))]
    #[case::two_padding_bytes(seq(&[packet(1, 9), packet(18, 18)]))]
    fn padding_without_checksum_is_accepted(#[case] data: Vec<u8>) {
        // Upstream cut at the last '=' and so refused these valid messages (RFC 9580 makes
        // the checksum line optional).
        assert_ne!(data.len() % 3, 0);
        let payload = armor(&data, "", "");
        assert!(check_armored_payload(&payload, Direction::Outgoing));
        assert!(check_armored_payload(&payload, Direction::Incoming));
        let with_checksum = armor(&data, "", "=abcd\r\n");
        assert!(check_armored_payload(&with_checksum, Direction::Outgoing));
    }

    #[test]
    fn checksum_glued_to_the_data_line_is_refused() {
        // Not armor: the checksum must be a line of its own.
        let b64 = base64::engine::general_purpose::STANDARD.encode(good());
        let payload = format!(
            "-----BEGIN PGP MESSAGE-----\r\n\r\n{b64}=abcd\r\n-----END PGP MESSAGE-----\r\n"
        );
        assert!(!check_armored_payload(
            payload.as_bytes(),
            Direction::Incoming
        ));
    }
}
