//! The `/mxdeliv` wire format, pure: the message body in SMTP's data form and the envelope
//! headers (filtermail-latest.md §4, §6.3).
//!
//! A relay delivering over HTTPS sends the message exactly as it would follow `DATA` on an
//! SMTP connection, minus the terminator: CRLF lines, leading dots doubled, ending in CRLF,
//! no `.` line. [`unstuff`] checks that form and turns it into the form the SMTP path
//! produces after the final dot (leading dots halved), which the check, DKIM and
//! reinjection take.

use thiserror::Error;

/// Longest envelope address taken from a header: RFC 5321's 256-octet path minus its
/// angle brackets.
pub const MAX_ADDRESS: usize = 254;

/// Why a body is not in the data form; each is answered `500 Invalid DATA`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum InvalidData {
    /// Empty, or the last line lacks its CRLF.
    #[error("does not end in CRLF")]
    NoFinalCrlf,
    /// A CR not followed by LF, or an LF not preceded by CR.
    #[error("bare CR or LF")]
    BareLineBreak,
    /// A line that is just `.` (an unescaped end-of-data mark), also as the first line.
    #[error("a lone . line")]
    LoneDot,
}

impl InvalidData {
    /// The reply to the sender, upstream's text for every case.
    pub fn reply(&self) -> &'static str {
        "500 Invalid DATA"
    }
}

/// Checks `data` is in the data form and removes the stuffing dot of every line that
/// starts with one (RFC 5321 §4.5.2), in place: the result never needs more memory than
/// the body it comes from.
pub fn unstuff(mut data: Vec<u8>) -> Result<Vec<u8>, InvalidData> {
    if !data.ends_with(b"\r\n") {
        return Err(InvalidData::NoFinalCrlf);
    }
    let len = data.len();
    let mut read = 0;
    let mut write = 0;
    while read < len {
        let rest = data.get(read..).unwrap_or_default();
        // The final CRLF was checked, so every line has its LF.
        let lf = read + memchr::memchr(b'\n', rest).ok_or(InvalidData::NoFinalCrlf)?;
        let line = data.get(read..=lf).unwrap_or_default();
        let content = line.get(..line.len() - 1).unwrap_or_default();
        let Some(content) = content.strip_suffix(b"\r") else {
            return Err(InvalidData::BareLineBreak);
        };
        if memchr::memchr(b'\r', content).is_some() {
            return Err(InvalidData::BareLineBreak);
        }
        let start = match content {
            b"." => return Err(InvalidData::LoneDot),
            [b'.', ..] => read + 1,
            _ => read,
        };
        data.copy_within(start..=lf, write);
        write += lf + 1 - start;
        read = lf + 1;
    }
    data.truncate(write);
    Ok(data)
}

/// An envelope address from an `X-MAIL-FROM` or `X-MAIL-TO` header value: lower-cased,
/// as the SMTP path does, or `None` unless it is one plain `local@domain` of visible ASCII
/// (no blanks, controls, 8-bit bytes or angle brackets, which could end the `<…>` of the
/// reinjected `MAIL FROM`/`RCPT TO` and smuggle parameters into it) of at most
/// [`MAX_ADDRESS`] bytes.
pub fn envelope_address(value: &[u8]) -> Option<String> {
    let plain = !value.is_empty()
        && value.len() <= MAX_ADDRESS
        && value
            .iter()
            .all(|&b| b.is_ascii_graphic() && b != b'<' && b != b'>');
    if !plain {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    let (local, domain) = text.rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then(|| text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case::plain(b"a\r\nb\r\n", b"a\r\nb\r\n")]
    #[case::empty_lines(b"\r\n\r\n", b"\r\n\r\n")]
    #[case::stuffed_first_line(b"..x\r\n", b".x\r\n")]
    #[case::stuffed_inner_line(b"a\r\n..\r\n...b\r\nc\r\n", b"a\r\n.\r\n..b\r\nc\r\n")]
    #[case::unstuffed_dot_is_removed(b"a\r\n.b\r\n", b"a\r\nb\r\n")]
    #[case::dot_inside_a_line(b"a.\r\nb. .\r\n", b"a.\r\nb. .\r\n")]
    #[case::last_line_stuffed(b"a\r\n..\r\n", b"a\r\n.\r\n")]
    #[case::eight_bit_and_nul(b"\xff\x00\r\n", b"\xff\x00\r\n")]
    fn valid_forms_unstuff(#[case] wire: &[u8], #[case] expected: &[u8]) {
        assert_eq!(unstuff(wire.to_vec()).as_deref(), Ok(expected));
    }

    #[rstest]
    #[case::empty(b"", InvalidData::NoFinalCrlf)]
    #[case::no_final_crlf(b"a\r\nb", InvalidData::NoFinalCrlf)]
    #[case::final_bare_cr(b"a\r\nb\r", InvalidData::NoFinalCrlf)]
    #[case::final_bare_lf(b"a\r\nb\n", InvalidData::NoFinalCrlf)]
    #[case::inner_bare_lf(b"a\nb\r\n", InvalidData::BareLineBreak)]
    #[case::inner_bare_cr(b"a\rb\r\n", InvalidData::BareLineBreak)]
    #[case::cr_before_crlf(b"a\r\r\n", InvalidData::BareLineBreak)]
    #[case::lone_lf_line(b"a\r\n\n\r\n", InvalidData::BareLineBreak)]
    #[case::starts_with_lone_dot(b".\r\nx\r\n", InvalidData::LoneDot)]
    #[case::only_a_lone_dot(b".\r\n", InvalidData::LoneDot)]
    #[case::unescaped_end_mark(b"a\r\n.\r\nb\r\n", InvalidData::LoneDot)]
    #[case::ends_with_the_terminator(b"a\r\n.\r\n", InvalidData::LoneDot)]
    fn invalid_forms_are_refused(#[case] wire: &[u8], #[case] expected: InvalidData) {
        assert_eq!(unstuff(wire.to_vec()), Err(expected));
        assert_eq!(expected.reply(), "500 Invalid DATA");
    }

    #[test]
    fn unstuffing_reverses_reinjection_stuffing() {
        let message = b".a\r\n..b\r\nc.\r\n.\r\n".to_vec();
        let mut wire = crate::reinject::dot_stuff(&message);
        // dot_stuff adds the terminator, which is not part of the /mxdeliv body.
        wire.truncate(wire.len() - 3);
        assert_eq!(unstuff(wire), Ok(message));
    }

    #[rstest]
    #[case::plain(b"bob@example.org", Some("bob@example.org"))]
    #[case::lower_cased(b"Bob@Example.ORG", Some("bob@example.org"))]
    #[case::literal(b"bob@[192.0.2.1]", Some("bob@[192.0.2.1]"))]
    #[case::at_in_local_part(b"\"a@b\"@example.org", Some("\"a@b\"@example.org"))]
    #[case::slash_is_left_to_the_mailbox_lookup(b"../x@y", Some("../x@y"))]
    #[case::empty(b"", None)]
    #[case::no_at(b"bob", None)]
    #[case::empty_local(b"@example.org", None)]
    #[case::empty_domain(b"bob@", None)]
    #[case::angle_brackets(b"<bob@example.org>", None)]
    #[case::parameter_smuggling(b"bob@example.org>NOTIFY=NEVER", None)]
    #[case::blank(b"bob@example.org x", None)]
    #[case::tab(b"bob@example.org\t", None)]
    #[case::nul(b"bob\0@example.org", None)]
    #[case::non_ascii(b"b\xc3\xb6b@example.org", None)]
    fn envelope_addresses(#[case] value: &[u8], #[case] expected: Option<&str>) {
        assert_eq!(envelope_address(value).as_deref(), expected);
    }

    #[test]
    fn overlong_addresses_are_refused() {
        let at_limit = format!("{}@example.org", "a".repeat(MAX_ADDRESS - 12));
        assert_eq!(at_limit.len(), MAX_ADDRESS);
        assert!(envelope_address(at_limit.as_bytes()).is_some());
        let over = format!("a{at_limit}");
        assert_eq!(envelope_address(over.as_bytes()), None);
    }
}
