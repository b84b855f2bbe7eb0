//! The INI dialect of upstream's `iniconfig` package, which is what `chatmail.ini` is
//! written in.
//!
//! Hand-written on purpose: the INI crates on crates.io strip inline comments (upstream
//! keeps `key = 5 # five` as the value `5 # five`), do not treat a duplicate key as an
//! error, or disagree about `name: value` lines and indented continuation lines. A file that
//! upstream reads must mean the same thing here, and a file upstream rejects must be
//! rejected, so the rules are spelled out below and nowhere else:
//!
//! * Lines are split on every line boundary Python's `str.splitlines()` knows.
//! * A line whose first non-blank character is `#` or `;` is a comment; blank lines are
//!   ignored.
//! * A line starting with `[` is a section header `[name]`; anything after a `#` or `;` on
//!   it is ignored.
//! * Any other line starting in column 0 is `name = value`, split at the first `=`, unless
//!   the text before that `=` contains a `:` (or there is no `=`), then it is split at the
//!   first `:`. Name and value are stripped of surrounding blanks. Nothing else is stripped.
//! * A line starting with a blank continues the previous value: its stripped text is
//!   appended after a `\n` (or replaces the value if that is still empty).
//!
//! Deviation from `iniconfig`, where it only affects broken files: a column-0 line starting
//! with `[` that is not a well-formed header is an error here; `iniconfig` would silently
//! append it to the previous value. A leading byte-order mark is skipped.

use std::collections::HashSet;

use crate::values::{is_py_space, one_line, py_strip};

/// A parsed file: its sections in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ini {
    /// In file order; section names are unique.
    pub sections: Vec<Section>,
}

/// One `[name]` section with its entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The text between the brackets, not stripped (as upstream).
    pub name: String,
    /// 1-based line number of the header, for messages about the section.
    pub line: usize,
    /// In file order; keys are unique within the section.
    pub entries: Vec<Entry>,
}

/// One `name = value` entry, continuation lines already joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The stripped name.
    pub key: String,
    /// The stripped value; continuation lines joined with `\n`.
    pub value: String,
    /// 1-based line number of the `name = value` line, for messages about the value.
    pub line: usize,
}

/// Why a file is not valid INI, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {kind}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong on that line.
    pub kind: ParseErrorKind,
}

/// The kinds of syntax errors; each is fatal, as in upstream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// A `name = value` line before the first section header.
    #[error("key '{}' outside of any section (no section header defined)", one_line(.key))]
    KeyOutsideSection {
        /// The stripped key name.
        key: String,
    },
    /// The same section header twice.
    #[error("duplicate section [{}]", one_line(.name))]
    DuplicateSection {
        /// The section name.
        name: String,
    },
    /// The same key twice in one section.
    #[error("duplicate key '{}' in section [{}]", one_line(.key), one_line(.section))]
    DuplicateKey {
        /// The stripped key name.
        key: String,
        /// The section both occurrences are in.
        section: String,
    },
    /// An indented line with no `name = value` line before it in the same section.
    #[error("indented continuation line without a preceding 'name = value' line")]
    ContinuationWithoutKey,
    /// A column-0 line that is neither a header, nor a comment, nor has `=` or `:`.
    #[error("expected 'name = value' or 'name: value', found '{}'", one_line(.line))]
    MissingSeparator {
        /// The offending line, right-stripped.
        line: String,
    },
    /// `[]`.
    #[error("empty section name")]
    EmptySectionName,
    /// A column-0 line starting with `[` that does not end in `]`.
    #[error("malformed section header '{}', expected '[name]'", one_line(.line))]
    MalformedSectionHeader {
        /// The offending line, right-stripped.
        line: String,
    },
}

impl Ini {
    /// Parses a whole file; the first error (in line order) is returned.
    pub fn parse(text: &str) -> Result<Ini, ParseError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut sections: Vec<Section> = Vec::new();
        let mut section_names: HashSet<String> = HashSet::new();
        let mut keys_in_section: HashSet<String> = HashSet::new();
        // Whether an indented line may extend the last entry: only directly after entries
        // and their continuations, not after a section header.
        let mut last_line_was_entry = false;

        for (index, raw) in lines(text).enumerate() {
            let line_no = index + 1;
            let error = |kind| ParseError {
                line: line_no,
                kind,
            };
            if raw.trim_start_matches(is_py_space).starts_with(['#', ';']) {
                continue;
            }
            let line = raw.trim_end_matches(is_py_space);
            let Some(first) = line.chars().next() else {
                continue;
            };

            if first == '[' {
                let name = section_name(line).ok_or_else(|| {
                    error(ParseErrorKind::MalformedSectionHeader {
                        line: line.to_owned(),
                    })
                })?;
                if name.is_empty() {
                    return Err(error(ParseErrorKind::EmptySectionName));
                }
                if !section_names.insert(name.to_owned()) {
                    return Err(error(ParseErrorKind::DuplicateSection {
                        name: name.to_owned(),
                    }));
                }
                sections.push(Section {
                    name: name.to_owned(),
                    line: line_no,
                    entries: Vec::new(),
                });
                keys_in_section.clear();
                last_line_was_entry = false;
            } else if is_py_space(first) {
                let data = py_strip(line);
                let entry = sections
                    .last_mut()
                    .and_then(|section| section.entries.last_mut())
                    .filter(|_| last_line_was_entry)
                    .ok_or_else(|| error(ParseErrorKind::ContinuationWithoutKey))?;
                if !entry.value.is_empty() {
                    entry.value.push('\n');
                }
                entry.value.push_str(data);
            } else {
                let (key, value) = split_entry(line).ok_or_else(|| {
                    error(ParseErrorKind::MissingSeparator {
                        line: line.to_owned(),
                    })
                })?;
                let Some(section) = sections.last_mut() else {
                    return Err(error(ParseErrorKind::KeyOutsideSection {
                        key: key.to_owned(),
                    }));
                };
                if !keys_in_section.insert(key.to_owned()) {
                    return Err(error(ParseErrorKind::DuplicateKey {
                        key: key.to_owned(),
                        section: section.name.clone(),
                    }));
                }
                section.entries.push(Entry {
                    key: key.to_owned(),
                    value: value.to_owned(),
                    line: line_no,
                });
                last_line_was_entry = true;
            }
        }
        Ok(Ini { sections })
    }

    /// The section called `name`, if the file has one.
    pub fn section(&self, name: &str) -> Option<&Section> {
        self.sections.iter().find(|section| section.name == name)
    }
}

impl Section {
    /// The value of `key` in this section.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|entry| entry.key == key)
            .map(|entry| entry.value.as_str())
    }
}

/// The name inside `[name]`, comments after `#`/`;` removed; `None` if not well-formed.
fn section_name(line: &str) -> Option<&str> {
    let before_comment = line.split(['#', ';']).next().unwrap_or(line);
    before_comment
        .trim_end_matches(is_py_space)
        .strip_prefix('[')?
        .strip_suffix(']')
}

/// Splits `name = value` / `name: value` as upstream does, both parts stripped.
fn split_entry(line: &str) -> Option<(&str, &str)> {
    let (name, value) = match line.split_once('=') {
        Some((name, value)) if !name.contains(':') => (name, value),
        _ => line.split_once(':')?,
    };
    Some((py_strip(name), py_strip(value)))
}

/// Python's `str.splitlines()` line boundaries.
fn is_line_boundary(c: char) -> bool {
    matches!(
        c,
        '\n' | '\r'
            | '\u{b}'
            | '\u{c}'
            | '\u{1c}'
            | '\u{1d}'
            | '\u{1e}'
            | '\u{85}'
            | '\u{2028}'
            | '\u{2029}'
    )
}

/// Python's `str.splitlines()`: `\r\n` is one boundary, no empty item after a final break.
fn lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (line, tail) = rest.split_once(is_line_boundary).unwrap_or((rest, ""));
        let crlf = rest.as_bytes().get(line.len()) == Some(&b'\r');
        rest = if crlf {
            tail.strip_prefix('\n').unwrap_or(tail)
        } else {
            tail
        };
        Some(line)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Ini {
        match Ini::parse(text) {
            Ok(ini) => ini,
            Err(e) => panic!("{text:?} does not parse: {e}"),
        }
    }

    fn parse_err(text: &str) -> ParseError {
        match Ini::parse(text) {
            Ok(ini) => panic!("{text:?} parsed unexpectedly: {ini:?}"),
            Err(e) => e,
        }
    }

    fn pairs(section: &Section) -> Vec<(&str, &str)> {
        section
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect()
    }

    fn params(ini: &Ini) -> &Section {
        ini.section("params").expect("section [params]")
    }

    #[test]
    fn sections_and_entries_in_file_order() {
        let ini = parse("[params]\nb = 2\na=1\n\n[other]\nb = x\n");
        let names: Vec<&str> = ini.sections.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["params", "other"]);
        assert_eq!(pairs(params(&ini)), [("b", "2"), ("a", "1")]);
        assert_eq!(ini.section("other").and_then(|s| s.get("b")), Some("x"));
        assert_eq!(params(&ini).get("missing"), None);
        let lines: Vec<usize> = params(&ini).entries.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 3]);
        assert_eq!(ini.section("other").map(|s| s.line), Some(5));
    }

    #[test]
    fn empty_input_has_no_sections() {
        assert!(parse("").sections.is_empty());
        assert!(parse("\n\n  \n# only a comment\n").sections.is_empty());
    }

    #[test]
    fn colon_syntax() {
        let ini = parse("[params]\nname: value\nurl = http://x:1/\na:b = c\nempty:\n");
        assert_eq!(
            pairs(params(&ini)),
            [
                ("name", "value"),
                ("url", "http://x:1/"),
                ("a", "b = c"),
                ("empty", "")
            ]
        );
    }

    #[test]
    fn name_and_value_are_stripped_but_inline_comments_kept() {
        let ini = parse("[params]\n  \nkey\t =  5 # five  \nother = x ; y\n");
        assert_eq!(
            pairs(params(&ini)),
            [("key", "5 # five"), ("other", "x ; y")]
        );
    }

    #[test]
    fn value_may_contain_equals_sign() {
        let ini = parse("[params]\nk = a=b=c\n");
        assert_eq!(params(&ini).get("k"), Some("a=b=c"));
    }

    #[test]
    fn comment_lines() {
        let ini =
            parse("# c\n; c\n[params]\n  # indented comment, not a continuation\nk = v\n\t; c\n");
        assert_eq!(pairs(params(&ini)), [("k", "v")]);
    }

    #[test]
    fn comment_after_section_header_is_ignored() {
        let ini = parse("[params] # the main section\nk = v\n[x]; other\n");
        assert_eq!(params(&ini).get("k"), Some("v"));
        assert!(ini.section("x").is_some());
    }

    #[test]
    fn section_name_is_not_stripped() {
        let ini = parse("[ params ]\nk = v\n");
        assert!(ini.section("params").is_none());
        assert!(ini.section(" params ").is_some());
    }

    #[test]
    fn continuation_lines_join_with_newline() {
        let ini = parse("[params]\naddr = Line 1\n    Line 2\n\n\tLine 3  \nnext = x\n");
        assert_eq!(
            pairs(params(&ini)),
            [("addr", "Line 1\nLine 2\nLine 3"), ("next", "x")]
        );
    }

    #[test]
    fn continuation_of_empty_value_replaces_it() {
        let ini = parse("[params]\naddr =\n  first\n  second\n");
        assert_eq!(params(&ini).get("addr"), Some("first\nsecond"));
    }

    #[test]
    fn whitespace_only_line_is_blank_not_continuation() {
        let ini = parse("[params]\na = 1\n   \t\nb = 2\n");
        assert_eq!(pairs(params(&ini)), [("a", "1"), ("b", "2")]);
    }

    #[test]
    fn line_endings() {
        let ini = parse("[params]\r\na = 1\rb = 2\r\n  more\u{2028}c = 3\u{b}d = 4");
        assert_eq!(
            pairs(params(&ini)),
            [("a", "1"), ("b", "2\nmore"), ("c", "3"), ("d", "4")]
        );
        // `\r\n` counts as one boundary, `\n\r` as two.
        assert_eq!(parse_err("[a]\r\n[a]").line, 2);
        assert_eq!(parse_err("[a]\n\r[a]").line, 3);
    }

    #[test]
    fn byte_order_mark_is_skipped() {
        let ini = parse("\u{feff}[params]\nk = v\n");
        assert_eq!(params(&ini).get("k"), Some("v"));
    }

    #[test]
    fn same_key_in_different_sections_is_fine() {
        let ini = parse("[a]\nk = 1\n[b]\nk = 2\n");
        assert_eq!(ini.section("b").and_then(|s| s.get("k")), Some("2"));
    }

    #[test]
    fn error_key_outside_section() {
        let e = parse_err("# header comment\nmail_domain = x\n[params]\n");
        assert_eq!(e.line, 2);
        assert_eq!(
            e.kind,
            ParseErrorKind::KeyOutsideSection {
                key: "mail_domain".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "line 2: key 'mail_domain' outside of any section (no section header defined)"
        );
    }

    #[test]
    fn error_duplicate_section() {
        let e = parse_err("[params]\na = 1\n[other]\n[params]\n");
        assert_eq!(e.line, 4);
        assert_eq!(e.to_string(), "line 4: duplicate section [params]");
    }

    #[test]
    fn error_duplicate_key() {
        let e = parse_err("[params]\nmail_domain = a\nmail_domain: b\n");
        assert_eq!(e.line, 3);
        assert_eq!(
            e.to_string(),
            "line 3: duplicate key 'mail_domain' in section [params]"
        );
    }

    #[test]
    fn error_continuation_without_key() {
        for (text, line) in [
            ("  orphan\n[params]\n", 1),
            ("[params]\n  orphan\n", 2),
            ("[a]\nk = v\n[params]\n  orphan\n", 4),
        ] {
            let e = parse_err(text);
            assert_eq!(e.line, line, "{text:?}");
            assert_eq!(e.kind, ParseErrorKind::ContinuationWithoutKey, "{text:?}");
        }
    }

    #[test]
    fn continuation_after_comment_still_extends_value() {
        // iniconfig drops comment lines before looking at continuations.
        let ini = parse("[params]\nk = a\n# comment\n  b\n");
        assert_eq!(params(&ini).get("k"), Some("a\nb"));
    }

    #[test]
    fn error_missing_separator() {
        let e = parse_err("[params]\nmail_domain example.org\n");
        assert_eq!(e.line, 2);
        assert_eq!(
            e.to_string(),
            "line 2: expected 'name = value' or 'name: value', found 'mail_domain example.org'"
        );
    }

    #[test]
    fn error_malformed_section_headers() {
        for text in ["[params\n", "[params] junk\n", "[par#ams]\n", "[\n"] {
            let e = parse_err(text);
            assert_eq!(e.line, 1, "{text:?}");
            assert!(
                matches!(e.kind, ParseErrorKind::MalformedSectionHeader { .. }),
                "{text:?}: {e}"
            );
        }
        assert_eq!(parse_err("[]\n").kind, ParseErrorKind::EmptySectionName);
    }

    #[test]
    fn error_messages_stay_on_one_line() {
        let e = parse_err("[params]\nbad\u{1b}[31m line\n");
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
    }

    /// xorshift64: deterministic, dependency-free pseudo-random numbers for the fuzz loop.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }

        fn below(&mut self, n: usize) -> usize {
            usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
        }
    }

    /// One pseudo-random input: lines that are mostly shaped like INI (headers, entries,
    /// continuations, comments) so that deep parser states are reached, with random bytes
    /// mixed in for invalid UTF-8, control characters and odd line breaks.
    fn random_input(rng: &mut XorShift) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            b"[params]",
            b"[other]",
            b"[",
            b"]",
            b"mail_domain",
            b"max_load_1m",
            b"key",
            b" = ",
            b"=",
            b":",
            b" ",
            b"\t",
            b"# c",
            b"; c",
            b"1.3.3.7",
            b"x.org",
            b"500M",
            b"-1",
            b"true",
            b"\xc3\xa4",
            b"\xe2\x80\xa8",
            b"\r\n",
            b"\r",
            b"\x0b",
            b"\x1c",
        ];
        let mut bytes = Vec::new();
        for _ in 0..rng.below(12) {
            match rng.below(6) {
                0 => bytes.extend_from_slice(b"[params]"),
                1 => bytes.extend_from_slice(b"k = v"),
                2 => bytes.extend_from_slice(b"  continued"),
                _ => {
                    for _ in 0..rng.below(6) {
                        if rng.below(6) == 0 {
                            bytes.push(u8::try_from(rng.next() & 0xff).unwrap());
                        } else {
                            bytes.extend_from_slice(PIECES.get(rng.below(PIECES.len())).unwrap());
                        }
                    }
                }
            }
            bytes.push(b'\n');
        }
        bytes
    }

    #[test]
    fn fuzz_never_panics() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut parsed = 0;
        for _ in 0..5000 {
            let bytes = random_input(&mut rng);
            let text = String::from_utf8_lossy(&bytes);
            if let Ok(ini) = Ini::parse(&text) {
                parsed += 1;
                for section in &ini.sections {
                    assert!(!section.name.is_empty());
                    for entry in &section.entries {
                        assert_eq!(section.get(&entry.key), Some(entry.value.as_str()));
                    }
                }
            }
            // The config layer on top must not panic either.
            let _ = crate::Config::parse(&text, std::path::Path::new("/fuzz.ini"));
            let _ = crate::Config::parse(
                &format!("[params]\nmail_domain = x.org\n{text}"),
                std::path::Path::new("/fuzz.ini"),
            );
        }
        // Guards against a generator that only ever produces garbage.
        assert!(parsed > 100, "only {parsed} inputs parsed");
    }
}
