//! The message's wire form and the reply lines handed back to Postfix.

/// `data` (CRLF line ends, not dot-stuffed) in the form both channels send: every line
/// starting with `.` gets a second one, the whole ends with CRLF; no final `.` line.
pub(crate) fn dot_stuffed(data: &[u8]) -> Vec<u8> {
    let pieces = stuffed_pieces(data);
    let mut out = Vec::with_capacity(data.len() + pieces.len() + 2);
    for piece in pieces {
        out.extend_from_slice(piece);
    }
    if !out.ends_with(b"\r\n") {
        if out.ends_with(b"\r") {
            out.push(b'\n');
        } else {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// The dot-stuffed form of `data` without copying it (RFC 5321 §4.5.2): slices of `data`
/// whose concatenation doubles every line-start dot (each such dot ends one slice and
/// starts the next, so it goes out twice). No line end is added. filtermail's
/// reinjection writes these slices as they are.
pub fn stuffed_pieces(data: &[u8]) -> Vec<&[u8]> {
    stuffed_pieces_at(data, memchr::memmem::find_iter(data, b"\n."))
}

/// [`stuffed_pieces`] given where `data` holds LF `.`, in order (found by a caller that
/// knows where to look).
pub fn stuffed_pieces_at(data: &[u8], lf_dots: impl IntoIterator<Item = usize>) -> Vec<&[u8]> {
    let mut pieces = Vec::new();
    let mut start = 0;
    if data.first() == Some(&b'.') {
        pieces.push(data.get(..1).unwrap_or_default());
    }
    for newline in lf_dots {
        let dot = newline + 1;
        pieces.push(data.get(start..=dot).unwrap_or_default());
        start = dot;
    }
    pieces.push(data.get(start..).unwrap_or_default());
    pieces
}

/// `text` as one reply line: printable ASCII only (anything else becomes `?`), runs of
/// white space (including line breaks) folded to one space, no trailing space.
pub(crate) fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            pending_space = !out.is_empty();
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(if c.is_ascii_graphic() { c } else { '?' });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_dots_are_doubled_and_crlf_ends_the_data() {
        assert_eq!(
            dot_stuffed(b".a\r\nb.\r\n..c\r\n"),
            b"..a\r\nb.\r\n...c\r\n"
        );
        assert_eq!(dot_stuffed(b"x\r\n.\r\n"), b"x\r\n..\r\n");
        assert_eq!(dot_stuffed(b"no end"), b"no end\r\n");
        assert_eq!(dot_stuffed(b"cr\r"), b"cr\r\n");
        assert_eq!(dot_stuffed(b""), b"\r\n");
    }

    #[test]
    fn replies_are_folded_onto_one_printable_line() {
        assert_eq!(one_line("550 a\r\nb\tc  "), "550 a b c");
        assert_eq!(one_line("451 \u{1b}[31mx\u{e4}"), "451 ?[31mx?");
    }
}
