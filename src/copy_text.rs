//! JSON values back into PostgreSQL: fields of `COPY ... FROM STDIN` in text format.
//!
//! Text format lets each target column's own input function parse the value, exactly as it
//! would parse a literal, so the export's text forms (ISO timestamps, `numeric` strings,
//! `"NaN"`, `"infinity"`, intervals, enums) load unchanged. What JSON changed is undone here:
//! bytea comes back from base64, arrays become array literals, JSON documents become their text.

use std::borrow::Cow;

use anyhow::{Result, anyhow, bail};
use serde_json::Value;

use crate::codec::ColumnKind;

/// [`write_field`] for a column of an export file, knowing whether the source column is NOT
/// NULL (`not_null` in metadata.json). The export writes SQL NULL and the JSON document `null`
/// of a json/jsonb column alike, as `null`; where the source column cannot hold SQL NULL, a
/// `null` can only be the document, and is loaded as the document.
pub fn write_export_field(
    out: &mut Vec<u8>,
    kind: &ColumnKind,
    source_not_null: bool,
    value: &Value,
) -> Result<()> {
    if source_not_null && value.is_null() && matches!(kind, ColumnKind::Json | ColumnKind::Jsonb) {
        out.extend_from_slice(b"null");
        return Ok(());
    }
    write_field(out, kind, value)
}

/// [`write_export_field`] for a value given as its raw JSON text (from
/// [`crate::json_rows::read_raw_rows`]), writing the same bytes. The common values (numbers,
/// booleans, strings) are written from the text without building a `Value`: a number's text
/// without exponent is what `Value` would print, and a JSON string without a backslash holds
/// no control character, so there is nothing for COPY to escape.
pub fn write_raw_field(
    out: &mut Vec<u8>,
    kind: &ColumnKind,
    source_not_null: bool,
    raw: &str,
) -> Result<()> {
    let bytes = raw.as_bytes();
    let structured = matches!(
        kind,
        ColumnKind::Json | ColumnKind::Jsonb | ColumnKind::Array(_)
    );
    match bytes.first() {
        _ if structured => {}
        Some(b'n') if raw == "null" => {
            out.extend_from_slice(b"\\N");
            return Ok(());
        }
        Some(b't') if raw == "true" => {
            out.push(b't');
            return Ok(());
        }
        Some(b'f') if raw == "false" => {
            out.push(b'f');
            return Ok(());
        }
        // serde_json writes an exponent as `e+`/`e-`: those numbers take the long way.
        Some(b'-' | b'0'..=b'9') if !bytes.iter().any(|&b| b == b'e' || b == b'E') => {
            out.extend_from_slice(bytes);
            return Ok(());
        }
        Some(b'"') => {
            if let Some(string) = crate::json_rows::json_string(raw) {
                match (kind, string) {
                    (ColumnKind::Bytea, b64) => write_bytea(out, &b64)?,
                    // Borrowed: no escapes, so no control character and nothing to escape.
                    (_, Cow::Borrowed(plain)) => out.extend_from_slice(plain.as_bytes()),
                    (_, Cow::Owned(text)) => escape_copy(out, &text),
                }
                return Ok(());
            }
        }
        _ => {}
    }
    let value: Value = serde_json::from_str(raw)?;
    write_export_field(out, kind, source_not_null, &value)
}

/// Appends one field (no delimiter) for `value` of a column of `kind`.
pub fn write_field(out: &mut Vec<u8>, kind: &ColumnKind, value: &Value) -> Result<()> {
    // The common scalar cases go straight into `out` (this runs for every value of every
    // row); the same text as `literal` makes, without building it in a String first.
    match (kind, value) {
        (_, Value::Null) => out.extend_from_slice(b"\\N"),
        (ColumnKind::Json | ColumnKind::Jsonb | ColumnKind::Array(_), _) => {
            let mut text = String::new();
            literal(&mut text, kind, value, false)?;
            escape_copy(out, &text);
        }
        (ColumnKind::Bytea, Value::String(b64)) => write_bytea(out, b64)?,
        (_, Value::String(s)) => escape_copy(out, s),
        (_, Value::Bool(b)) => out.push(if *b { b't' } else { b'f' }),
        // A number's text (exactly as in the file) has nothing COPY would escape.
        (_, Value::Number(n)) => {
            use std::io::Write;
            write!(out, "{n}").expect("writing to a Vec cannot fail");
        }
        (_, other @ (Value::Array(_) | Value::Object(_))) => {
            bail!("a {} column cannot hold {other}", kind.name())
        }
    }
    Ok(())
}

/// A bytea field from the export's base64: `\x` and hex digits, the bytea input `\x...` with
/// COPY's backslash escaped.
fn write_bytea(out: &mut Vec<u8>, b64: &str) -> Result<()> {
    let bytes = decode_base64(b64).ok_or_else(|| anyhow!("bytea value is not base64: {b64:?}"))?;
    out.reserve(3 + bytes.len() * 2);
    out.extend_from_slice(b"\\\\x");
    push_hex(out, &bytes);
    Ok(())
}

fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    out.resize(start + bytes.len() * 2, 0);
    hex::encode_to_slice(bytes, &mut out[start..]).expect("the slice has twice the length");
}

/// The value as PostgreSQL input text (before COPY escaping). Inside an array literal, elements
/// are double-quoted.
fn literal(out: &mut String, kind: &ColumnKind, value: &Value, in_array: bool) -> Result<()> {
    match (kind, value) {
        (_, Value::Null) if in_array => out.push_str("NULL"),
        (ColumnKind::Json | ColumnKind::Jsonb, v) => quoted(out, &v.to_string(), in_array),
        (ColumnKind::Array(element), Value::Array(items)) => {
            let mut inner = String::from("{");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    inner.push(',');
                }
                // A nested JSON array is a further dimension of the same array.
                if item.is_array() && !matches!(**element, ColumnKind::Json | ColumnKind::Jsonb) {
                    literal(&mut inner, kind, item, false)?;
                } else {
                    literal(&mut inner, element, item, true)?;
                }
            }
            inner.push('}');
            out.push_str(&inner);
        }
        (ColumnKind::Array(_), other) => bail!("expected a JSON array, found {other}"),
        (ColumnKind::Bytea, Value::String(b64)) => {
            let bytes =
                decode_base64(b64).ok_or_else(|| anyhow!("bytea value is not base64: {b64:?}"))?;
            let mut hex = Vec::with_capacity(2 + bytes.len() * 2);
            hex.extend_from_slice(b"\\x");
            push_hex(&mut hex, &bytes);
            quoted(
                out,
                std::str::from_utf8(&hex).expect("hex digits are ASCII"),
                in_array,
            );
        }
        (_, Value::String(s)) => quoted(out, s, in_array),
        (_, Value::Bool(b)) => out.push_str(if *b { "t" } else { "f" }),
        (_, Value::Number(n)) => out.push_str(&n.to_string()),
        (_, other @ (Value::Array(_) | Value::Object(_))) => {
            bail!("a {} column cannot hold {other}", kind.name())
        }
        (_, Value::Null) => unreachable!("handled by the caller"),
    }
    Ok(())
}

fn quoted(out: &mut String, text: &str, in_array: bool) {
    if !in_array {
        out.push_str(text);
        return;
    }
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// COPY text format: backslash, newline, carriage return and tab are escaped.
fn escape_copy(out: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

/// Whether `text` is standard base64 with padding, as the export writes bytea.
pub fn is_base64(text: &str) -> bool {
    decode_base64(text).is_some()
}

fn decode_base64(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(kind: ColumnKind, json: &str) -> String {
        let mut out = Vec::new();
        write_field(&mut out, &kind, &serde_json::from_str(json).unwrap()).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn raw_fields_are_the_fields_of_their_values() {
        let kinds = [
            ColumnKind::Bool,
            ColumnKind::Int4,
            ColumnKind::Float8,
            ColumnKind::Numeric,
            ColumnKind::Text,
            ColumnKind::Uuid,
            ColumnKind::Timestamptz,
            ColumnKind::Json,
            ColumnKind::Jsonb,
            ColumnKind::Bytea,
            ColumnKind::Array(Box::new(ColumnKind::Int4)),
            ColumnKind::Array(Box::new(ColumnKind::Text)),
            ColumnKind::Array(Box::new(ColumnKind::Bytea)),
        ];
        let raws = [
            "null",
            "true",
            "false",
            "0",
            "-0",
            "1.50",
            "-12e400",
            "1E-5",
            "2e+3",
            "123456789012345678901234567890.000",
            r#""""#,
            r#""x""#,
            r#""AP9B""#,
            r#""AP9""#,
            r#""a b\tc\nd\\e\"f""#,
            r#""caf\u00e9 \u0000""#,
            r#""2026-12-04T10:00:00+00:00""#,
            r#""NaN""#,
            "[]",
            "[1,null,[2]]",
            r#"["a\"b",null,"NULL"]"#,
            r#"{"k":[1e400,"\n"],"a":{}}"#,
        ];
        for kind in &kinds {
            for not_null in [false, true] {
                for raw in raws {
                    let mut expected = Vec::new();
                    let value: Value = serde_json::from_str(raw).unwrap();
                    let want = write_export_field(&mut expected, kind, not_null, &value);
                    let mut got = Vec::new();
                    let have = write_raw_field(&mut got, kind, not_null, raw);
                    let case = format!("{} not_null={not_null} {raw}", kind.name());
                    match (want, have) {
                        (Ok(()), Ok(())) => assert_eq!(
                            String::from_utf8(got).unwrap(),
                            String::from_utf8(expected).unwrap(),
                            "{case}"
                        ),
                        (Err(want), Err(have)) => {
                            assert_eq!(have.to_string(), want.to_string(), "{case}")
                        }
                        (want, have) => panic!("{case}: {want:?} vs {have:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn null_in_a_not_null_json_column_is_the_json_document() {
        let export_field = |kind: ColumnKind, not_null: bool| {
            let mut out = Vec::new();
            write_export_field(&mut out, &kind, not_null, &Value::Null).unwrap();
            String::from_utf8(out).unwrap()
        };
        assert_eq!(export_field(ColumnKind::Jsonb, true), "null");
        assert_eq!(export_field(ColumnKind::Json, true), "null");
        assert_eq!(export_field(ColumnKind::Jsonb, false), "\\N");
        assert_eq!(export_field(ColumnKind::Text, true), "\\N");
        let mut out = Vec::new();
        write_export_field(
            &mut out,
            &ColumnKind::Jsonb,
            true,
            &serde_json::json!({"a": 1}),
        )
        .unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), r#"{"a":1}"#);
    }

    #[test]
    fn fields_are_postgres_input_text() {
        assert_eq!(field(ColumnKind::Text, "null"), "\\N");
        assert_eq!(field(ColumnKind::Text, r#""a\tb\\c\nd""#), "a\\tb\\\\c\\nd");
        assert_eq!(field(ColumnKind::Numeric, r#""4.20""#), "4.20");
        assert_eq!(
            field(ColumnKind::Int8, "9223372036854775807"),
            "9223372036854775807"
        );
        assert_eq!(field(ColumnKind::Bool, "false"), "f");
        assert_eq!(field(ColumnKind::Bytea, r#""AP9B""#), "\\\\x00ff41");
        assert_eq!(
            field(
                ColumnKind::Jsonb,
                r#"{"big":12345678901234567890,"s":"a\"b"}"#
            ),
            // The JSON escape `\"` gets COPY's backslash escaping on top.
            r#"{"big":12345678901234567890,"s":"a\\"b"}"#
        );
        assert_eq!(
            field(
                ColumnKind::Array(Box::new(ColumnKind::Text)),
                r#"["a",null,"c\"d","NULL"]"#
            ),
            r#"{"a",NULL,"c\\"d","NULL"}"#
        );
        assert_eq!(
            field(
                ColumnKind::Array(Box::new(ColumnKind::Int4)),
                "[[1,2],[3,null]]"
            ),
            "{{1,2},{3,NULL}}"
        );
        assert_eq!(
            field(ColumnKind::Array(Box::new(ColumnKind::Int4)), "[]"),
            "{}"
        );
    }

    #[test]
    fn base64_round_trips() {
        assert_eq!(decode_base64("AP9B").unwrap(), [0x00, 0xff, 0x41]);
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
        assert_eq!(decode_base64("YWI=").unwrap(), b"ab");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert!(decode_base64("YQ=").is_none());
        assert!(decode_base64("Y!==").is_none());
    }
}
