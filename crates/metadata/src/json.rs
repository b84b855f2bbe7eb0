//! JSON written byte for byte as upstream's Python `json.dump` writes it, so files on disk
//! and lookup replies compare equal between the two implementations: `ensure_ascii`
//! (everything outside printable ASCII as `\uXXXX`, lowercase, UTF-16 surrogate pairs) and
//! either the default `", "` / `": "` separators or the compact `","` / `":"` ones.

use std::io;

use serde_json::Value;
use serde_json::ser::{Formatter, Serializer};

/// `json.dump(value, f)`: the form of `metadata.json`.
pub fn to_python_json(value: &Value) -> String {
    write(value, b", ", b": ")
}

/// `json.dumps(value, separators=(",", ":"))`: one line for a dict reply.
pub fn to_compact_json(value: &Value) -> String {
    write(value, b",", b":")
}

fn write(value: &Value, item_separator: &'static [u8], key_separator: &'static [u8]) -> String {
    let mut out = Vec::with_capacity(128);
    let formatter = PythonFormatter {
        item_separator,
        key_separator,
    };
    let mut serializer = Serializer::with_formatter(&mut out, formatter);
    // Serialising a Value into memory cannot fail: its keys are strings and there is no I/O.
    if serde::Serialize::serialize(value, &mut serializer).is_err() {
        return String::from("null");
    }
    // Only ASCII is ever written.
    String::from_utf8(out).unwrap_or_default()
}

/// serde_json's compact formatter with Python's separators and `ensure_ascii`.
struct PythonFormatter {
    item_separator: &'static [u8],
    key_separator: &'static [u8],
}

impl Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(self.item_separator)
        }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first {
            Ok(())
        } else {
            writer.write_all(self.item_separator)
        }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(self.key_separator)
    }

    /// serde_json already escapes `"`, `\` and C0 controls; Python also escapes DEL and
    /// every non-ASCII character.
    fn write_string_fragment<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut units = [0u16; 2];
        for c in fragment.chars() {
            if (' '..='~').contains(&c) {
                let mut buf = [0u8; 1];
                writer.write_all(c.encode_utf8(&mut buf).as_bytes())?;
            } else {
                for unit in c.encode_utf16(&mut units) {
                    write!(writer, "\\u{unit:04x}")?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn python_default_separators() {
        let value = parse(r#"{"devicetoken":{"01234":1700000000,"b":1},"x":[1,2,{}],"y":[]}"#);
        assert_eq!(
            to_python_json(&value),
            r#"{"devicetoken": {"01234": 1700000000, "b": 1}, "x": [1, 2, {}], "y": []}"#
        );
    }

    #[test]
    fn compact_separators() {
        let value = parse(r#"{ "a" : [ 1 , "b" ] , "c" : null }"#);
        assert_eq!(to_compact_json(&value), r#"{"a":[1,"b"],"c":null}"#);
    }

    #[test]
    fn ensure_ascii_escapes_like_python() {
        // json.dumps("é\x7f\n\t\"\\/😀\x01") in Python 3
        let value = Value::String("é\u{7f}\n\t\"\\/😀\u{1}".to_owned());
        assert_eq!(
            to_python_json(&value),
            r#""\u00e9\u007f\n\t\"\\/\ud83d\ude00\u0001""#
        );
    }

    #[test]
    fn numbers_round_trip_verbatim() {
        // Python writes big ints and floats its own way; they must survive our rewrite.
        let value = parse(r#"{"a": 123456789012345678901234567890, "b": 1e+16, "c": 0.1}"#);
        assert_eq!(
            to_python_json(&value),
            r#"{"a": 123456789012345678901234567890, "b": 1e+16, "c": 0.1}"#
        );
    }

    #[test]
    fn key_order_is_kept() {
        let value = parse(r#"{"z": 1, "a": 2, "m": 3}"#);
        assert_eq!(to_compact_json(&value), r#"{"z":1,"a":2,"m":3}"#);
    }
}
