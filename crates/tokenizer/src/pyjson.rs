//! Python `json.dumps` output format, for the chat template `tojson` filter.
//!
//! HF replaces Jinja's `tojson` with `json.dumps(x, ensure_ascii=False, indent=indent,
//! separators=separators, sort_keys=sort_keys)`, so templates that inline tool schemas
//! produce `{"type": "function", ...}` with Python's `", "` / `": "` separators and no
//! HTML escaping. Models are trained on that exact text, so we reproduce it rather than
//! use minijinja's compact, HTML-safe `tojson`.

use std::io;

use serde::Serialize;
use serde_json::ser::Formatter;

/// `json.dumps` keyword arguments.
#[derive(Debug, Clone, Default)]
pub(crate) struct DumpOptions {
    /// `indent`: `None` for one line, else the string repeated per nesting level.
    pub indent: Option<String>,
    /// `separators`: `(item, key)`; Python's default depends on `indent`.
    pub separators: Option<(String, String)>,
    pub sort_keys: bool,
    pub ensure_ascii: bool,
}

/// Serializes `value` as Python's `json.dumps` would with `options`.
pub(crate) fn dumps(value: &serde_json::Value, options: &DumpOptions) -> String {
    let sorted;
    let value = if options.sort_keys {
        sorted = sort_keys(value.clone());
        &sorted
    } else {
        value
    };
    let (item_sep, key_sep) = match (&options.separators, &options.indent) {
        (Some((item, key)), _) => (item.as_str(), key.as_str()),
        (None, None) => (", ", ": "),
        (None, Some(_)) => (",", ": "),
    };
    let formatter = PyFormatter {
        indent: options.indent.as_deref().map(str::as_bytes),
        item_sep: item_sep.as_bytes(),
        key_sep: key_sep.as_bytes(),
        depth: 0,
        has_value: false,
    };
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    value
        .serialize(&mut serializer)
        .expect("serializing a serde_json::Value into memory cannot fail: this is a bug");
    let text = String::from_utf8(out).expect("serde_json writes UTF-8: this is a bug");
    if options.ensure_ascii {
        escape_non_ascii(&text)
    } else {
        text
    }
}

fn sort_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sort_keys).collect())
        }
        other => other,
    }
}

/// Non-ASCII characters only occur inside JSON strings, so escaping them in the output
/// text equals Python's `ensure_ascii=True` (UTF-16 code units, lowercase hex).
fn escape_non_ascii(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

/// serde_json formatter laying out arrays and objects like CPython's `json` encoder.
struct PyFormatter<'a> {
    indent: Option<&'a [u8]>,
    item_sep: &'a [u8],
    key_sep: &'a [u8],
    depth: usize,
    /// Whether the container being closed had any element (`[]` stays on one line).
    has_value: bool,
}

impl PyFormatter<'_> {
    fn newline<W: ?Sized + io::Write>(&self, writer: &mut W) -> io::Result<()> {
        if let Some(indent) = self.indent {
            writer.write_all(b"\n")?;
            for _ in 0..self.depth {
                writer.write_all(indent)?;
            }
        }
        Ok(())
    }

    fn open<W: ?Sized + io::Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth += 1;
        self.has_value = false;
        writer.write_all(bracket)
    }

    fn close<W: ?Sized + io::Write>(&mut self, writer: &mut W, bracket: &[u8]) -> io::Result<()> {
        self.depth -= 1;
        if self.has_value {
            self.newline(writer)?;
        }
        writer.write_all(bracket)
    }

    fn element<W: ?Sized + io::Write>(&mut self, writer: &mut W, first: bool) -> io::Result<()> {
        if !first {
            writer.write_all(self.item_sep)?;
        }
        self.newline(writer)
    }
}

impl Formatter for PyFormatter<'_> {
    fn begin_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"]")
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.element(writer, first)
    }

    fn end_array_value<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }

    fn begin_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.open(writer, b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        self.close(writer, b"}")
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        writer: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.element(writer, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, writer: &mut W) -> io::Result<()> {
        writer.write_all(self.key_sep)
    }

    fn end_object_value<W: ?Sized + io::Write>(&mut self, _writer: &mut W) -> io::Result<()> {
        self.has_value = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn value() -> serde_json::Value {
        json!({"type": "function", "b": [1, 2.5, [], {}], "a": {"é": "x\"\n<>&"}, "n": null})
    }

    // Expected strings are CPython 3.11's json.dumps output for the same value.
    #[test]
    fn default_matches_python() {
        assert_eq!(
            dumps(&value(), &DumpOptions::default()),
            r#"{"type": "function", "b": [1, 2.5, [], {}], "a": {"é": "x\"\n<>&"}, "n": null}"#
        );
    }

    #[test]
    fn indent_matches_python() {
        let options = DumpOptions {
            indent: Some("  ".into()),
            ..DumpOptions::default()
        };
        let expected = "{\n  \"type\": \"function\",\n  \"b\": [\n    1,\n    2.5,\n    [],\n    {}\n  ],\n  \"a\": {\n    \"é\": \"x\\\"\\n<>&\"\n  },\n  \"n\": null\n}";
        assert_eq!(dumps(&value(), &options), expected);
    }

    #[test]
    fn sort_keys_separators_and_ensure_ascii_match_python() {
        let options = DumpOptions {
            separators: Some((",".into(), ":".into())),
            sort_keys: true,
            ensure_ascii: true,
            ..DumpOptions::default()
        };
        assert_eq!(
            dumps(&json!({"b": "😀é", "a": 1}), &options),
            r#"{"a":1,"b":"\ud83d\ude00\u00e9"}"#
        );
    }
}
