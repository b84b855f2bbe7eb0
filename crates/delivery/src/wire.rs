//! The message's wire form and the reply lines handed back to Postfix.

/// `data` (CRLF line ends, not dot-stuffed) in the form both channels send: every line
/// starting with `.` gets a second one, the whole ends with CRLF; no final `.` line.
pub(crate) fn dot_stuffed(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 2);
    let mut line_start = true;
    for &byte in data {
        if line_start && byte == b'.' {
            out.push(b'.');
        }
        out.push(byte);
        line_start = byte == b'\n';
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
