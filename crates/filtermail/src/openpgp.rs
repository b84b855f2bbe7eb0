//! The ASCII-armor and OpenPGP packet-sequence checks of an encrypted payload.
//!
//! Only packet headers are parsed: the relay never holds keys. The payload counts as
//! encrypted iff it is zero or more session-key packets (PKESK, SKESK) followed by exactly
//! one SEIPD packet ending exactly at the end of the data.

use base64::Engine as _;

use crate::check::Direction;
use crate::index::{Indexed, PAGE, Page};

const BEGIN: &[u8] = b"-----BEGIN PGP MESSAGE-----\r\n";
const END: &[u8] = b"-----END PGP MESSAGE-----";

/// Packet tags (RFC 9580 §5).
const TAG_PKESK: u8 = 1;
const TAG_SKESK: u8 = 3;
const TAG_SEIPD: u8 = 18;

/// Whether an armored `PGP MESSAGE` holds only an encrypted message (filtermail.md §6.2).
pub fn check_armored_payload(payload: &[u8], direction: Direction) -> bool {
    check_armored_payload_indexed(payload, direction, Indexed::unindexed(payload))
}

/// [`check_armored_payload`] for a payload that may lie in an indexed message: the
/// armor's whole pages are judged by their facts instead of being read.
pub fn check_armored_payload_indexed(
    payload: &[u8],
    direction: Direction,
    indexed: Indexed<'_>,
) -> bool {
    armor_body(payload, direction).is_some_and(|text| check_armor_body(text, indexed))
}

/// The base64 text between the armor lines, without a `Version:` header (refused
/// outgoing) and the checksum line; `None` when the armor is not acceptable.
fn armor_body(payload: &[u8], direction: Direction) -> Option<&[u8]> {
    let mut text = payload.strip_prefix(BEGIN)?;
    while let Some(rest) = text.strip_suffix(b"\r\n") {
        text = rest;
    }
    let mut text = text.strip_suffix(END)?;
    if text.starts_with(b"Version: ") {
        // Delta Chat never writes armor headers; other clients (ProtonMail, GnuPG) do,
        // and incoming mail from them must still arrive.
        if direction == Direction::Outgoing {
            return None;
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
    Some(text)
}

/// Whether the armor's base64 `text` decodes to an encrypted packet sequence: decoded
/// only where the packet walk reads when its lines are regular, else joined and decoded.
fn check_armor_body(text: &[u8], indexed: Indexed<'_>) -> bool {
    match Lines::regular(text, indexed).map(|lines| lines.decoded(indexed)) {
        Some(Base64::Valid(decoded)) => walk(&decoded),
        Some(Base64::Invalid) => false,
        // Irregular line breaks (hand-made armor): join and decode it all.
        Some(Base64::Irregular) | None => check_joined(text),
    }
}

/// Joins the lines of the armor's base64 `text`, decodes it all and walks the packets.
fn check_joined(text: &[u8]) -> bool {
    let mut joined = Vec::with_capacity(text.len());
    let mut start = 0;
    for line_break in memchr::memchr2_iter(b'\r', b'\n', text) {
        joined.extend_from_slice(text.get(start..line_break).unwrap_or_default());
        start = line_break + 1;
    }
    joined.extend_from_slice(text.get(start..).unwrap_or_default());
    match base64::engine::general_purpose::STANDARD.decode(joined) {
        Ok(data) => walk(data.as_slice()),
        Err(_) => false,
    }
}

/// Random access to bytes, so the packet walk runs over decoded bytes in memory as well
/// as over base64 text decoded only where the walk reads.
trait Octets {
    fn len(&self) -> usize;
    fn get(&self, index: usize) -> Option<u8>;
}

impl Octets for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn get(&self, index: usize) -> Option<u8> {
        <[u8]>::get(self, index).copied()
    }
}

/// Armor text whose lines all have one width and end in CRLF, but the last, which is
/// not longer: what every OpenPGP implementation writes. Index arithmetic then finds
/// the n-th base64 character without joining the lines.
struct Lines<'a> {
    text: &'a [u8],
    /// Characters per full line.
    width: usize,
    /// Base64 characters in all (the joined length).
    chars: usize,
}

impl<'a> Lines<'a> {
    fn regular(mut text: &'a [u8], indexed: Indexed<'_>) -> Option<Lines<'a>> {
        // Line breaks at the end join to nothing (the checksum line's removal leaves one).
        while let Some((&(b'\r' | b'\n'), rest)) = text.split_last() {
            text = rest;
        }
        let Some(width) = memchr::memchr2(b'\r', b'\n', text) else {
            return Some(Lines {
                text,
                width: text.len().max(1),
                chars: text.len(),
            });
        };
        if width == 0 {
            return None;
        }
        let stride = width + 2;
        let full = text.len() / stride;
        let last = text.len() % stride;
        if last == 0 || last > width {
            return None;
        }
        let grid = Grid {
            width,
            stride,
            full,
            pages: indexed.pages_within(text),
        };
        let mut line = 0;
        while line < full {
            if let Some(after) = grid.verified_through(line) {
                line = after;
                continue;
            }
            let at = line * stride + width;
            if text.get(at..at + 2) != Some(b"\r\n") {
                return None;
            }
            line += 1;
        }
        // Any other CR or LF would be inside a line: counted by the scan in `decoded`.
        Some(Lines {
            text,
            width,
            chars: full * width + last,
        })
    }

    /// Where the `index`-th base64 character lies in the text.
    fn position(&self, index: usize) -> usize {
        index / self.width * (self.width + 2) + index % self.width
    }

    fn char_at(&self, index: usize) -> u8 {
        self.text.get(self.position(index)).copied().unwrap_or(0)
    }

    /// The text checked as the standard engine checks the joined text (canonical
    /// padding, no trailing bits).
    ///
    /// The engine decodes every quad but the last on its own and fails on any byte
    /// outside the alphabet there ('=' included); the last 1–4 characters get the padding
    /// and length rules. So: one pass over the text before the last quad for the
    /// alphabet, the engine on the last quad.
    fn decoded(self, indexed: Indexed<'_>) -> Base64<'a> {
        if self.chars == 0 {
            // The engine decodes nothing into nothing, which is no packet.
            return Base64::Invalid;
        }
        let rem = self.chars % 4;
        let quads = self.chars - if rem == 0 { 4 } else { rem };
        let split = self.position(quads);
        let head = self.text.get(..split).unwrap_or_default();
        let (alphabet_only, head_breaks) = scan_indexed(head, indexed);
        let (_, tail_breaks) = scan(self.text.get(split..).unwrap_or_default());
        if head_breaks + tail_breaks != 2 * (self.chars.saturating_sub(1) / self.width) {
            // A CR or LF inside a line.
            return Base64::Irregular;
        }
        if !alphabet_only {
            return Base64::Invalid;
        }
        let mut last = [0u8; 4];
        for (i, slot) in (quads..self.chars).zip(&mut last) {
            *slot = self.char_at(i);
        }
        let mut tail = [0u8; 3];
        let decoded = base64::engine::general_purpose::STANDARD.decode_slice(
            last.get(..self.chars - quads).unwrap_or_default(),
            &mut tail,
        );
        match decoded {
            Ok(tail_len) => Base64::Valid(Decoded {
                lines: self,
                head: quads / 4 * 3,
                tail,
                tail_len,
            }),
            Err(_) => Base64::Invalid,
        }
    }
}

/// What [`Lines::decoded`] found.
enum Base64<'a> {
    Valid(Decoded<'a>),
    /// The standard engine would refuse the joined text.
    Invalid,
    /// Not regular lines after all: a CR or LF inside one.
    Irregular,
}

/// The line grid of regular armor text, with the facts of the indexed pages inside it.
struct Grid<'p> {
    width: usize,
    stride: usize,
    /// Lines ending in CRLF.
    full: usize,
    /// Offset in the text of the first indexed page, and the pages.
    pages: Option<(usize, &'p [Page])>,
}

impl Grid<'_> {
    /// When the LF of line `line` lies in an indexed page whose facts show CRLF exactly
    /// where the grid puts line ends (and no other line break): the first line whose LF
    /// lies beyond that page, as every line up to there is verified.
    fn verified_through(&self, line: usize) -> Option<usize> {
        let (lead, pages) = self.pages?;
        // Line k's LF is at k * stride + width + 1 (text offsets).
        let lf_of = |k: usize| k * self.stride + self.width + 1;
        let index = lf_of(line).checked_sub(lead)? / PAGE;
        let page = pages.get(index)?;
        if !page.pure || usize::from(page.stride) != self.stride {
            return None;
        }
        let start = lead + index * PAGE;
        // The grid's LFs in the page: lines first..end.
        let first = start.saturating_sub(self.width + 1).div_ceil(self.stride);
        // (A stride this page has is under PAGE, so the page's last byte lies past the
        // first LF; checked all the same.)
        let end =
            ((start + PAGE - 1).checked_sub(self.width + 1)? / self.stride + 1).min(self.full);
        // Both are evenly spaced by the same stride: equal if they start alike and count
        // alike. The page's facts put a CR before each of its LFs and rule out any other
        // CR or LF in it.
        let same = lf_of(first) == start + usize::from(page.first_lf)
            && end.checked_sub(first) == Some(usize::from(page.lfs));
        same.then_some(end)
    }
}

/// [`scan`] taking the counts of the indexed pages inside `text` instead of reading them.
fn scan_indexed(text: &[u8], indexed: Indexed<'_>) -> (bool, usize) {
    let Some((lead, pages)) = indexed.pages_within(text) else {
        return scan(text);
    };
    let tail = lead + pages.len() * PAGE;
    let (lead_ok, lead_breaks) = scan(text.get(..lead).unwrap_or_default());
    let (tail_ok, tail_breaks) = scan(text.get(tail..).unwrap_or_default());
    let pages_ok = pages.iter().all(|page| page.pure);
    let page_breaks: usize = pages.iter().map(|page| usize::from(page.breaks)).sum();
    (
        lead_ok && pages_ok && tail_ok,
        lead_breaks + page_breaks + tail_breaks,
    )
}

/// Whether every byte is a base64 character (without '='), CR or LF, and how many CR
/// and LF there are: the classification of the message's pages, on any text.
fn scan(text: &[u8]) -> (bool, usize) {
    let (alphabet_only, crs, lfs) = crate::index::classify(text);
    (alphabet_only, crs + lfs)
}

/// The decoded bytes of validated [`Lines`], each decoded when read.
struct Decoded<'a> {
    lines: Lines<'a>,
    /// Decoded length of the quads before the last.
    head: usize,
    /// The last quad, decoded by the engine.
    tail: [u8; 3],
    tail_len: usize,
}

impl Octets for Decoded<'_> {
    fn len(&self) -> usize {
        self.head + self.tail_len
    }

    fn get(&self, index: usize) -> Option<u8> {
        if index >= self.head {
            return self
                .tail
                .get(..self.tail_len)?
                .get(index - self.head)
                .copied();
        }
        let first = index / 3 * 4;
        let bits = (first..first + 4).fold(0u32, |acc, i| {
            (acc << 6) | u32::from(sextet(self.lines.char_at(i)))
        });
        let shift = 16 - 8 * (index % 3);
        Some((bits >> shift) as u8)
    }
}

/// The value of a base64 character (already validated).
fn sextet(c: u8) -> u8 {
    match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    }
}

/// The packet walk of filtermail-latest.md §10: new-format headers (with partial body
/// lengths) and legacy old-format headers (GnuPG still writes them).
pub fn is_encrypted_packet_sequence(data: &[u8]) -> bool {
    walk(data)
}

fn walk<D: Octets + ?Sized>(data: &D) -> bool {
    if data.len() == 0 {
        return false;
    }
    let mut i = 0usize;
    loop {
        let Some(header) = data.get(i) else {
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
                let Some(octet) = data.get(i) else {
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
            let Some(first) = data.get(i) else {
                return false;
            };
            (body_len, i) = match first {
                0..=191 => (usize::from(first), i + 1),
                192..=223 => {
                    let Some(second) = data.get(i + 1) else {
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
fn be_length<D: Octets + ?Sized>(data: &D, at: usize, octets: usize) -> Option<usize> {
    (at..at.checked_add(octets)?).try_fold(0usize, |acc, i| {
        Some((acc << 8) | usize::from(data.get(i)?))
    })
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

    /// The armor body check as it was before decoding on demand: join, decode, walk.
    fn joined_then_decoded(text: &[u8]) -> bool {
        let joined: Vec<u8> = text
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        match base64::engine::general_purpose::STANDARD.decode(joined) {
            Ok(data) => is_encrypted_packet_sequence(&data),
            Err(_) => false,
        }
    }

    /// The whole check as it was before decoding on demand.
    fn check_armored_payload_joined(payload: &[u8], direction: Direction) -> bool {
        armor_body(payload, direction).is_some_and(check_joined)
    }

    /// The new path alone (the fallback for irregular lines is the old one).
    fn on_demand(text: &[u8]) -> Option<bool> {
        match Lines::regular(text, Indexed::unindexed(text))
            .map(|lines| lines.decoded(Indexed::unindexed(text)))
        {
            Some(Base64::Valid(decoded)) => Some(walk(&decoded)),
            Some(Base64::Invalid) => Some(false),
            Some(Base64::Irregular) | None => None,
        }
    }

    /// Inserts `byte` at `at` (`how` 0), puts it in place of the byte there (1) or
    /// removes that byte (2).
    fn edit(text: &mut Vec<u8>, at: usize, byte: u8, how: usize) {
        match how {
            0 => text.insert(at, byte),
            1 if at < text.len() => text[at] = byte,
            _ if at < text.len() => {
                text.remove(at);
            }
            _ => {}
        }
    }

    fn wrap(b64: &[u8], width: usize) -> Vec<u8> {
        b64.chunks(width).collect::<Vec<_>>().join(&b"\r\n"[..])
    }

    /// xorshift64*: reproducible without a dependency.
    fn rng(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn decoding_on_demand_agrees_with_decoding_everything() {
        let mut state = 0xa2_b64_u64;
        let mut regular = 0;
        for round in 0..20_000 {
            let pick = |state: &mut u64, n: usize| (rng(state) % n as u64) as usize;
            let data = match pick(&mut state, 3) {
                0 => good(),
                1 => seq(&[
                    packet(1, pick(&mut state, 12)),
                    packet(18, pick(&mut state, 40)),
                ]),
                _ => (0..pick(&mut state, 40))
                    .map(|_| rng(&mut state) as u8)
                    .collect(),
            };
            let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
            let width = [1, 3, 4, 5, 8, 64, 76][pick(&mut state, 7)];
            let mut text = wrap(b64.as_bytes(), width);
            for _ in 0..pick(&mut state, 3) {
                let at = pick(&mut state, text.len() + 1);
                let byte = b"=\r\nA/+!- \xff"[pick(&mut state, 10)];
                edit(&mut text, at, byte, pick(&mut state, 3));
            }
            let expected = joined_then_decoded(&text);
            if let Some(got) = on_demand(&text) {
                regular += 1;
                assert_eq!(
                    got,
                    expected,
                    "round {round}: {:?}",
                    String::from_utf8_lossy(&text)
                );
            }
            let payload = [BEGIN, &text[..], b"\r\n", END, b"\r\n"].concat();
            for direction in [Direction::Outgoing, Direction::Incoming] {
                assert_eq!(
                    check_armored_payload(&payload, direction),
                    check_armored_payload_joined(&payload, direction),
                    "round {round}: {:?}",
                    String::from_utf8_lossy(&payload)
                );
            }
        }
        assert!(regular > 10_000, "{regular}");
    }

    #[test]
    fn megabyte_armor_is_decoded_on_demand() {
        // Partial body lengths as Sequoia writes them: chunks of 2^13 bytes.
        let mut data = packet(1, 60);
        data.push(0xd2);
        for _ in 0..128 {
            data.push(0xe0 | 13);
            data.extend(std::iter::repeat_n(0x5a, 1 << 13));
        }
        data.extend_from_slice(&[7, 1, 2, 3, 4, 5, 6, 7]);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
        for width in [64, 76] {
            let text = wrap(b64.as_bytes(), width);
            assert_eq!(on_demand(&text), Some(true));
            assert!(joined_then_decoded(&text));
            // What is left once the checksum line is cut off.
            assert_eq!(on_demand(&[&text[..], b"\r\n"].concat()), Some(true));
            let mut bad = text.clone();
            let middle = bad.len() / 2;
            bad[middle] = b'=';
            assert_eq!(on_demand(&bad), Some(false));
            assert!(!joined_then_decoded(&bad));
        }
    }

    /// With the message's index, the armor checks judge whole pages by their facts: the
    /// verdicts must be those of reading every byte, for armor of many pages at any
    /// offset in the message, any line width, with stray bytes, line breaks and missing
    /// bytes anywhere (page edges included).
    #[test]
    fn index_gives_the_verdicts_of_reading_everything() {
        use crate::index::MessageIndex;
        let mut state = 0x1_0de5_u64;
        let mut accepted = 0;
        let mut regular = 0;
        for round in 0..600 {
            let pick = |state: &mut u64, n: usize| (rng(state) % n as u64) as usize;
            let mut data = packet(1, 60);
            data.push(0xd2);
            for _ in 0..1 + pick(&mut state, 5) {
                data.push(0xe0 | 12);
                data.extend((0..1 << 12).map(|_| rng(&mut state) as u8));
            }
            let tail = pick(&mut state, 100);
            data.push(tail as u8);
            data.extend((0..tail).map(|_| rng(&mut state) as u8));
            let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
            let width = [64, 76, 60, 1, 4, 100, 2046, 4094, 5000][pick(&mut state, 9)];
            let mut text = wrap(b64.as_bytes(), width);
            // Where the text will start in the message.
            let offset = 1000 + pick(&mut state, PAGE);
            let changes = if round % 3 == 0 {
                0
            } else {
                pick(&mut state, 4)
            };
            for _ in 0..changes {
                // Near a page edge of the message half of the time.
                let at = if pick(&mut state, 2) == 0 {
                    (PAGE * (1 + pick(&mut state, 6)) + pick(&mut state, 5))
                        .saturating_sub(2 + offset)
                        .min(text.len())
                } else {
                    pick(&mut state, text.len() + 1)
                };
                let byte = b"=\r\nA/+!-.\xff"[pick(&mut state, 10)];
                edit(&mut text, at, byte, pick(&mut state, 3));
            }
            let payload = [BEGIN, &text[..], b"\r\n", END, b"\r\n"].concat();
            // The payload somewhere in a message.
            let lead = offset - BEGIN.len();
            let message = [vec![b'H'; lead], payload.clone(), b"\r\n--b--\r\n".to_vec()].concat();
            let index = MessageIndex::of(&message);
            let indexed = Indexed::new(&message, &index);
            let in_message = &message[lead..lead + payload.len()];
            let body = &message[lead + BEGIN.len()..lead + BEGIN.len() + text.len()];
            let plain = Lines::regular(&text, Indexed::unindexed(&text)).is_some();
            assert_eq!(
                Lines::regular(body, indexed).is_some(),
                plain,
                "round {round}: width {width}, {changes} changes"
            );
            regular += usize::from(plain);
            for direction in [Direction::Outgoing, Direction::Incoming] {
                let expected = check_armored_payload(&payload, direction);
                accepted += usize::from(expected);
                assert_eq!(
                    check_armored_payload_indexed(in_message, direction, indexed),
                    expected,
                    "round {round}: width {width}, {changes} changes"
                );
            }
        }
        // Both verdicts occur, regular armor is common.
        assert!(accepted > 300 && accepted < 1100, "{accepted}");
        assert!(regular > 300, "{regular}");
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
