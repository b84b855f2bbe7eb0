//! A small, lenient MIME walker: exactly what the encryption check needs, over bytes.
//!
//! Hand-written rather than `mail-parser` because the check's rules are about the raw
//! structure (the *first* header of a name, leaf versus multipart, the decoded body bytes
//! of a part, CRLF kept inside bodies) and must never allocate without bound or recurse
//! without bound on hostile input; a fuzzer can drive this module directly. Header values
//! are not RFC 2047-decoded: every value the check compares is ASCII.

use std::borrow::Cow;

use base64::Engine as _;

use crate::index::Indexed;

/// Multipart nesting deeper than this is treated as a leaf: no legitimate message needs
/// it and recursion must stay bounded.
const MAX_DEPTH: usize = 16;

/// One MIME entity.
#[derive(Debug, Clone)]
pub struct Part<'a> {
    /// Unfolded header fields in order, name as sent, value with surrounding blanks
    /// trimmed; 8-bit bytes are replaced, since only ASCII values are ever compared.
    headers: Vec<(String, String)>,
    /// Lower-cased `type/subtype`, `text/plain` when missing (RFC 2045 §5.2).
    content_type: String,
    /// The body as sent (before transfer decoding).
    body: &'a [u8],
    /// Sub-parts, `Some` iff the content type is `multipart/*` (even with none found).
    children: Option<Vec<Part<'a>>>,
    /// The message this part is in, with its index if it has one.
    indexed: Indexed<'a>,
}

impl<'a> Part<'a> {
    /// Parses a whole message. Never fails: like upstream's lenient parser, anything is a
    /// message, at worst one without headers.
    pub fn parse(message: &'a [u8]) -> Part<'a> {
        parse_entity(message, 0, Indexed::unindexed(message))
    }

    /// [`Part::parse`] of an indexed message: delimiter lines are searched for only
    /// outside its pure pages.
    pub fn parse_indexed(message: &'a [u8], indexed: Indexed<'a>) -> Part<'a> {
        parse_entity(message, 0, indexed)
    }

    /// The message this part is in, with its index (for the checks of its body).
    pub fn indexed(&self) -> Indexed<'a> {
        self.indexed
    }

    /// The value of the first header field called `name` (ASCII case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    pub fn is_multipart(&self) -> bool {
        self.children.is_some()
    }

    /// Sub-parts of a multipart (empty for a leaf).
    pub fn children(&self) -> &[Part<'a>] {
        self.children.as_deref().unwrap_or(&[])
    }

    /// The body after Content-Transfer-Encoding decoding (base64, quoted-printable; any
    /// other encoding is identity, and borrows). Broken base64 decodes leniently, as mail
    /// readers do.
    pub fn decoded_body(&self) -> Cow<'a, [u8]> {
        let encoding = self
            .header("content-transfer-encoding")
            .unwrap_or("")
            .to_ascii_lowercase();
        match encoding.as_str() {
            "base64" => Cow::Owned(decode_base64_lenient(self.body)),
            "quoted-printable" => Cow::Owned(decode_quoted_printable(self.body)),
            _ => Cow::Borrowed(self.body),
        }
    }
}

fn parse_entity<'a>(entity: &'a [u8], depth: usize, indexed: Indexed<'a>) -> Part<'a> {
    let (header_block, body) = split_header(entity);
    let headers = parse_headers(header_block);
    let content_type_value = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.as_str())
        .unwrap_or("");
    let (content_type, boundary) = parse_content_type(content_type_value);
    let children = if content_type.starts_with("multipart/") && depth < MAX_DEPTH {
        Some(
            boundary
                .map(|boundary| {
                    split_multipart(body, boundary.as_bytes(), indexed)
                        .into_iter()
                        .map(|part| parse_entity(part, depth + 1, indexed))
                        .collect()
                })
                .unwrap_or_default(),
        )
    } else {
        None
    };
    Part {
        headers,
        content_type,
        body,
        children,
        indexed,
    }
}

/// Splits at the first empty line (CRLF or bare LF line ends are both accepted: two
/// upstream fixtures use LF). No empty line: everything is header, the body is empty.
fn split_header(entity: &[u8]) -> (&[u8], &[u8]) {
    // A part may start with its empty line directly (no headers).
    if let Some(body) = entity.strip_prefix(b"\r\n") {
        return (&[], body);
    }
    if let Some(body) = entity.strip_prefix(b"\n") {
        return (&[], body);
    }
    let mut start = 0;
    while let Some(pos) = memchr(b'\n', entity.get(start..).unwrap_or(&[])) {
        let line_end = start + pos + 1;
        let rest = entity.get(line_end..).unwrap_or(&[]);
        if let Some(body) = rest
            .strip_prefix(b"\r\n")
            .or_else(|| rest.strip_prefix(b"\n"))
        {
            return (entity.get(..line_end).unwrap_or(&[]), body);
        }
        start = line_end;
    }
    (entity, &[])
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    memchr::memchr(needle, haystack)
}

/// Unfolds the header block into `(name, value)` pairs; lines without a colon are skipped.
fn parse_headers(block: &[u8]) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let text = String::from_utf8_lossy(line);
        if text.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(text.trim());
            }
            continue;
        }
        if let Some((name, value)) = text.split_once(':') {
            fields.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    for (_, value) in &mut fields {
        let trimmed = value.trim();
        if trimmed.len() != value.len() {
            *value = trimmed.to_owned();
        }
    }
    fields
}

/// `type/subtype` lower-cased and the `boundary` parameter, if any.
fn parse_content_type(value: &str) -> (String, Option<String>) {
    let mut params = value.split(';');
    let media = params.next().unwrap_or("").trim().to_ascii_lowercase();
    let media = if media.contains('/') {
        media
    } else {
        "text/plain".to_owned()
    };
    let boundary = params.find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| value.trim().trim_matches('"').to_owned())
            .filter(|b| !b.is_empty())
    });
    (media, boundary)
}

/// Whether `line` (with its line break) is a delimiter of `boundary`: `Some(true)` for
/// the close delimiter `--boundary--`, `Some(false)` for `--boundary`; only white space
/// may follow (RFC 2046 §5.1.1).
fn delimiter(line: &[u8], boundary: &[u8]) -> Option<bool> {
    let after = line.strip_prefix(b"--")?.strip_prefix(boundary)?;
    let closing = after.starts_with(b"--");
    let tail = if closing {
        after.get(2..).unwrap_or(&[])
    } else {
        after
    };
    tail.iter()
        .all(|b| b.is_ascii_whitespace())
        .then_some(closing)
}

/// The part from `start` to the delimiter line at `delimiter_start`, without the line
/// break that precedes the delimiter (it belongs to the delimiter).
fn part_before(body: &[u8], start: usize, delimiter_start: usize) -> &[u8] {
    let mut end = delimiter_start;
    if end > start && body.get(end - 1) == Some(&b'\n') {
        end -= 1;
        if end > start && body.get(end - 1) == Some(&b'\r') {
            end -= 1;
        }
    }
    body.get(start..end).unwrap_or(&[])
}

/// The body parts between `--boundary` delimiter lines; the line break before a delimiter
/// belongs to the delimiter (RFC 2046 §5.1.1). Preamble and epilogue are dropped; a
/// missing close delimiter ends the last part at the end of the body.
fn split_multipart<'a>(body: &'a [u8], boundary: &[u8], indexed: Indexed<'_>) -> Vec<&'a [u8]> {
    let mut parts = Vec::new();
    // Start offset of the current part's content, once the first delimiter was seen.
    let mut current: Option<usize> = None;
    // Only lines that start with "--boundary" can be delimiters: find those by searching
    // for LF "--" boundary (one pass at memory speed, none over the pure pages of an
    // indexed message, which hold no '-') instead of visiting every line.
    let mut needle = Vec::with_capacity(boundary.len() + 3);
    needle.extend_from_slice(b"\n--");
    needle.extend_from_slice(boundary);
    let first = body
        .starts_with(needle.get(1..).unwrap_or_default())
        .then_some(0);
    let candidates = first
        .into_iter()
        .chain(indexed.find_all(body, &needle).into_iter().map(|lf| lf + 1));
    for line_start in candidates {
        let rest = body.get(line_start..).unwrap_or(&[]);
        let line_len = memchr(b'\n', rest).map_or(rest.len(), |p| p + 1);
        let line = rest.get(..line_len).unwrap_or(&[]);
        let next = line_start + line_len;
        let Some(closing) = delimiter(line, boundary) else {
            continue;
        };
        if let Some(start) = current {
            parts.push(part_before(body, start, line_start));
        }
        if closing {
            return parts;
        }
        current = Some(next);
    }
    if let Some(start) = current {
        parts.push(body.get(start..).unwrap_or(&[]));
    }
    parts
}

/// Base64 with line breaks and stray characters skipped, padding optional.
fn decode_base64_lenient(body: &[u8]) -> Vec<u8> {
    let clean: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
        .collect();
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    // A dangling single sextet cannot decode; drop it rather than the whole body.
    let usable = clean.len() - usize::from(clean.len() % 4 == 1);
    engine
        .decode(clean.get(..usable).unwrap_or(&[]))
        .unwrap_or_default()
}

fn decode_quoted_printable(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while let Some(&b) = body.get(i) {
        if b != b'=' {
            out.push(b);
            i += 1;
            continue;
        }
        match (body.get(i + 1), body.get(i + 2)) {
            (Some(b'\r'), Some(b'\n')) => i += 3,
            (Some(b'\n'), _) => i += 2,
            (Some(&h), Some(&l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                out.push(hex(h) << 4 | hex(l));
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn hex(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit.wrapping_sub(b'A').wrapping_add(10),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::indexing_slicing)]
    use super::*;

    #[test]
    fn walks_nested_multiparts() {
        let msg = b"Content-Type: multipart/mixed; boundary=\"a\"\r\n\r\npre\r\n--a\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n--a\r\nContent-Type: Text/Plain\r\n\r\nhello\r\n--a--\r\nepilogue";
        let part = Part::parse(msg);
        assert_eq!(part.content_type(), "multipart/mixed");
        assert_eq!(part.children().len(), 2);
        assert!(part.children()[0].is_multipart());
        assert_eq!(
            part.children()[0].children()[0].decoded_body().as_ref(),
            b"x"
        );
        assert_eq!(part.children()[1].content_type(), "text/plain");
        assert_eq!(part.children()[1].decoded_body().as_ref(), b"hello");
    }

    #[test]
    fn first_header_wins_and_folding_is_undone() {
        let part = Part::parse(b"Subject: one\r\n two\r\nsubject: three\r\n\r\nbody");
        assert_eq!(part.header("SUBJECT"), Some("one two"));
        assert_eq!(part.decoded_body().as_ref(), b"body");
    }

    #[test]
    fn decodes_transfer_encodings() {
        let b64 = Part::parse(b"Content-Transfer-Encoding: BASE64\r\n\r\naGVs\r\nbG8=\r\n");
        assert_eq!(b64.decoded_body().as_ref(), b"hello");
        let qp = Part::parse(b"Content-Transfer-Encoding: quoted-printable\r\n\r\na=3Db=\r\nc");
        assert_eq!(qp.decoded_body().as_ref(), b"a=bc");
    }

    /// The delimiter search as it was: every line visited.
    #[allow(clippy::indexing_slicing)]
    fn split_multipart_line_by_line<'a>(body: &'a [u8], boundary: &[u8]) -> Vec<&'a [u8]> {
        let mut parts = Vec::new();
        // Start offset of the current part's content, once the first delimiter was seen.
        let mut current: Option<usize> = None;
        let mut line_start = 0;
        while line_start <= body.len() {
            let rest = body.get(line_start..).unwrap_or(&[]);
            let line_len = memchr(b'\n', rest).map_or(rest.len(), |p| p + 1);
            let line = rest.get(..line_len).unwrap_or(&[]);
            let next = line_start + line_len;
            if let Some(closing) = delimiter(line, boundary) {
                if let Some(start) = current {
                    parts.push(part_before(body, start, line_start));
                }
                if closing {
                    return parts;
                }
                current = Some(next);
            }
            if line_len == 0 {
                break;
            }
            line_start = next;
        }
        if let Some(start) = current {
            parts.push(body.get(start..).unwrap_or(&[]));
        }
        parts
    }

    #[test]
    fn delimiter_search_agrees_with_visiting_every_line() {
        let pieces: &[&[u8]] = &[
            b"--b", b"--b--", b"\r\n", b"\n", b"x", b" ", b"-", b"b", b"--bb", b"\t",
        ];
        let mut state = 0x5eed_u64;
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let n = (state % 12) as usize;
            let mut s = state;
            let body: Vec<u8> = (0..n)
                .flat_map(|_| {
                    s = s.rotate_left(5) ^ 0x9e37_79b9;
                    pieces[(s % pieces.len() as u64) as usize].iter().copied()
                })
                .collect();
            assert_eq!(
                split_multipart(&body, b"b", Indexed::unindexed(&body)),
                split_multipart_line_by_line(&body, b"b"),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    /// In an indexed message, delimiters are found outside the pure pages only: the same
    /// parts, wherever the delimiter lines fall against the pages.
    #[test]
    fn indexed_search_agrees_with_visiting_every_line() {
        use crate::index::{MessageIndex, PAGE};
        let mut state = 0x5eed_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let b64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        for round in 0..300 {
            let lead = next(PAGE);
            let width = [76, 64, 3, 200][next(4)];
            let mut body = Vec::new();
            let mut column = 0;
            while body.len() < 4 * PAGE {
                if column == width {
                    body.extend_from_slice(b"\r\n");
                    column = 0;
                } else {
                    body.push(b64[next(64)]);
                    column += 1;
                }
            }
            let delimiters: [&[u8]; 4] = [
                b"\r\n--b\r\n",
                b"\r\n--b--\r\n",
                b"\r\n--bx\r\n",
                b"\n--b \r\n",
            ];
            for _ in 0..next(5) {
                let line = delimiters[next(4)];
                let at = if next(2) == 0 {
                    // At a page edge of the message.
                    (PAGE * (1 + next(3)))
                        .saturating_sub(lead + next(12))
                        .min(body.len())
                } else {
                    next(body.len())
                };
                body.splice(at..at, line.iter().copied());
            }
            let message = [vec![b'x'; lead], body.clone()].concat();
            let index = MessageIndex::of(&message);
            let indexed = Indexed::new(&message, &index);
            assert_eq!(
                split_multipart(&message[lead..], b"b", indexed),
                split_multipart_line_by_line(&body, b"b"),
                "round {round}"
            );
        }
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let mut msg = Vec::new();
        for _ in 0..10_000 {
            msg.extend_from_slice(b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\n");
        }
        let _ = Part::parse(&msg);
    }
}
