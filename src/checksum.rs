//! The order-independent content checksum of a table, shared by `export` (recorded in
//! `metadata.json`) and `verify` (recomputed on the source, the target or the files).
//!
//! Each row is reduced to a canonical byte form keyed by column name, so neither column order
//! nor text formatting changes the verdict: the columns are taken in name order, and each value
//! is its JSON text as [`crate::codec`] writes it, normalised where one value has several texts
//! (`numeric` `4.20` and `4.2`, JSON objects with reordered keys). The row's SHA-256 is then added
//! (wrapping, 128 bits) into the table's sum. Addition is commutative, so row order does not
//! matter and nothing is sorted; unlike XOR, a duplicated row changes the sum instead of
//! cancelling out. NULL is the JSON `null`, distinct from every value, so a NULL column cannot
//! make a row vanish (the old scripts' `||` did exactly that).

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec::ColumnKind;

/// Sum of row hashes plus row count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Checksum {
    pub rows: u64,
    pub sum: u128,
}

impl Checksum {
    pub fn add_row(&mut self, row_hash: &[u8; 32]) {
        let mut low = [0u8; 16];
        low.copy_from_slice(&row_hash[..16]);
        self.sum = self.sum.wrapping_add(u128::from_le_bytes(low));
        self.rows += 1;
    }

    /// Combines the checksums of two parts of one table.
    pub fn merge(&mut self, other: &Checksum) {
        self.sum = self.sum.wrapping_add(other.sum);
        self.rows += other.rows;
    }

    /// The sum as 32 hex digits.
    pub fn hex(&self) -> String {
        format!("{:032x}", self.sum)
    }
}

impl fmt::Display for Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rows, sum {}", self.rows, self.hex())
    }
}

/// How a checksum is recorded in files and reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedChecksum {
    /// Always `sha256-sum128-v1`: the canonical form and combination described in this module.
    pub algorithm: String,
    pub sum: String,
    pub rows: u64,
}

pub const ALGORITHM: &str = "sha256-sum128-v1";

impl From<&Checksum> for RecordedChecksum {
    fn from(c: &Checksum) -> Self {
        RecordedChecksum {
            algorithm: ALGORITHM.to_string(),
            sum: c.hex(),
            rows: c.rows,
        }
    }
}

/// Hashes rows of one table shape. Build once per table; reuses its buffers.
pub struct RowHasher {
    /// Column indices in name order, with the length-prefixed name.
    order: Vec<(usize, Vec<u8>)>,
    kinds: Vec<ColumnKind>,
    /// Per column (in the order values are given): does its text need normalising?
    normalise: Vec<bool>,
    /// The row's canonical bytes, hashed in one call: one SHA-256 pass over a contiguous
    /// buffer is much cheaper than a few dozen small updates (same bytes, same hash).
    row: Vec<u8>,
}

impl RowHasher {
    /// `columns`: (name, kind) in the order values will be given.
    pub fn new(columns: &[(String, ColumnKind)]) -> Self {
        let mut order: Vec<(usize, Vec<u8>)> = columns
            .iter()
            .enumerate()
            .map(|(i, (name, _))| {
                let mut key = (name.len() as u32).to_le_bytes().to_vec();
                key.extend_from_slice(name.as_bytes());
                (i, key)
            })
            .collect();
        order.sort_by(|a, b| a.1[4..].cmp(&b.1[4..]));
        RowHasher {
            order,
            kinds: columns.iter().map(|(_, k)| k.clone()).collect(),
            normalise: columns.iter().map(|(_, k)| needs_normalising(k)).collect(),
            row: Vec::new(),
        }
    }

    /// The row's hash from each column's JSON text (in the order given to [`RowHasher::new`]).
    pub fn hash_row(&mut self, values: &[&[u8]]) -> [u8; 32] {
        self.hash_with(|i| values[i])
    }

    /// Like [`RowHasher::hash_row`], with each value given as a byte range of `text` (one
    /// row's JSON line, say), so the caller needs no per-row vector.
    pub fn hash_spans(&mut self, text: &[u8], spans: &[(usize, usize)]) -> [u8; 32] {
        self.hash_with(|i| {
            let (start, end) = spans[i];
            &text[start..end]
        })
    }

    /// The canonical bytes: per column in name order, the length-prefixed name, then the
    /// length-prefixed canonical value (lengths u32 little-endian).
    fn hash_with<'a>(&mut self, value: impl Fn(usize) -> &'a [u8]) -> [u8; 32] {
        let row = &mut self.row;
        row.clear();
        for (index, key) in &self.order {
            row.extend_from_slice(key);
            let text = value(*index);
            if self.normalise[*index] {
                // Write the value, then fill in its length in front of it.
                let at = row.len();
                row.extend_from_slice(&[0; 4]);
                canonical_value(&self.kinds[*index], text, row);
                let len = (row.len() - at - 4) as u32;
                row[at..at + 4].copy_from_slice(&len.to_le_bytes());
            } else {
                row.extend_from_slice(&(text.len() as u32).to_le_bytes());
                row.extend_from_slice(text);
            }
        }
        Sha256::digest(row.as_slice()).into()
    }
}

fn needs_normalising(kind: &ColumnKind) -> bool {
    match kind {
        ColumnKind::Numeric | ColumnKind::Json | ColumnKind::Jsonb => true,
        ColumnKind::Array(element) => needs_normalising(element),
        _ => false,
    }
}

/// Appends the canonical form of one value given as its JSON text. Values whose text is
/// already canonical are copied; text that does not parse is copied as is (it then only
/// equals itself, which is the safe direction for a checksum).
pub fn canonical_value(kind: &ColumnKind, text: &[u8], out: &mut Vec<u8>) {
    if text == b"null" || !needs_normalising(kind) {
        out.extend_from_slice(text);
        return;
    }
    // Fast path for the usual numeric text, `"-12.50"`: a JSON string without escapes, so
    // parsing it would give exactly the bytes between the quotes.
    if let ColumnKind::Numeric = kind
        && let Some(inner) = text
            .strip_prefix(b"\"")
            .and_then(|t| t.strip_suffix(b"\""))
            .filter(|t| {
                t.iter()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
            })
            .and_then(|t| std::str::from_utf8(t).ok())
    {
        out.push(b'"');
        out.extend_from_slice(normalised_decimal(inner).as_bytes());
        out.push(b'"');
        return;
    }
    match serde_json::from_slice::<serde_json::Value>(text) {
        Ok(value) => write_canonical(kind, &value, out),
        Err(_) => out.extend_from_slice(text),
    }
}

fn write_canonical(kind: &ColumnKind, value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match (kind, value) {
        (_, Value::Null) => out.extend_from_slice(b"null"),
        (ColumnKind::Numeric, Value::String(s)) => {
            out.push(b'"');
            out.extend_from_slice(normalise_decimal(s).as_bytes());
            out.push(b'"');
        }
        (ColumnKind::Array(element), Value::Array(items)) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                // Nested arrays are further dimensions of the same element type.
                write_canonical(if item.is_array() { kind } else { element }, item, out);
            }
            out.push(b']');
        }
        (ColumnKind::Json | ColumnKind::Jsonb, v) => write_canonical_json(v, out),
        (_, v) => out.extend_from_slice(v.to_string().as_bytes()),
    }
}

/// JSON with object keys sorted (serde_json's map is ordered by key) and numbers normalised
/// like `numeric`, so `{"b":1.50,"a":1}` equals `{"a":1,"b":1.5}`, as jsonb equality says.
fn write_canonical_json(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Number(n) => out.extend_from_slice(normalise_decimal(&n.to_string()).as_bytes()),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical_json(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            for (i, (key, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(Value::String(key.clone()).to_string().as_bytes());
                out.push(b':');
                write_canonical_json(item, out);
            }
            out.push(b'}');
        }
        other => out.extend_from_slice(other.to_string().as_bytes()),
    }
}

/// `4.20` -> `4.2`, `-0.00` -> `0`, `10` -> `10`; exponent forms and `NaN`/`Infinity` unchanged.
pub fn normalise_decimal(text: &str) -> String {
    normalised_decimal(text).to_owned()
}

/// [`normalise_decimal`] without allocating: the result is a prefix of `text` or `"0"`.
fn normalised_decimal(text: &str) -> &str {
    if text.contains(['e', 'E']) || !text.contains('.') {
        return if text == "-0" { "0" } else { text };
    }
    let trimmed = text.trim_end_matches('0').trim_end_matches('.');
    match trimmed {
        "-0" | "" | "-" => "0",
        t => t,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(columns: &[(&str, ColumnKind)], values: &[&str]) -> [u8; 32] {
        let cols: Vec<(String, ColumnKind)> = columns
            .iter()
            .map(|(n, k)| (n.to_string(), k.clone()))
            .collect();
        let vals: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        RowHasher::new(&cols).hash_row(&vals)
    }

    #[test]
    fn column_order_and_value_formatting_do_not_matter() {
        let a = hash(
            &[
                ("id", ColumnKind::Int4),
                ("t", ColumnKind::Numeric),
                ("j", ColumnKind::Jsonb),
            ],
            &["1", "\"4.20\"", r#"{"b":1.50,"a":[1,2]}"#],
        );
        let b = hash(
            &[
                ("j", ColumnKind::Json),
                ("t", ColumnKind::Numeric),
                ("id", ColumnKind::Int4),
            ],
            &[r#"{ "a": [1, 2], "b": 1.5 }"#, "\"4.2\"", "1"],
        );
        assert_eq!(a, b);
    }

    #[test]
    fn null_empty_and_moved_values_are_distinct() {
        let cols = [("a", ColumnKind::Text), ("b", ColumnKind::Text)];
        let base = hash(&cols, &["\"x\"", "null"]);
        assert_ne!(base, hash(&cols, &["\"x\"", "\"\""]));
        assert_ne!(base, hash(&cols, &["null", "\"x\""]));
        assert_ne!(base, hash(&cols, &["\"x\"", "\"null\""]));
        // Name/value boundaries cannot shift: ("ab", "c") differs from ("a", "bc").
        assert_ne!(
            hash(&[("ab", ColumnKind::Text)], &["\"c\""]),
            hash(&[("a", ColumnKind::Text)], &["b\"c\""])
        );
    }

    #[test]
    fn the_sum_ignores_row_order_but_counts_duplicates() {
        let cols = [("v", ColumnKind::Int8)];
        let rows: Vec<[u8; 32]> = ["1", "2", "3"].iter().map(|v| hash(&cols, &[v])).collect();
        let mut forward = Checksum::default();
        rows.iter().for_each(|r| forward.add_row(r));
        let mut backward = Checksum::default();
        rows.iter().rev().for_each(|r| backward.add_row(r));
        assert_eq!(forward, backward);
        let mut duplicated = forward;
        duplicated.add_row(&rows[0]);
        assert_ne!(duplicated.sum, forward.sum);
        let mut twice = forward;
        twice.merge(&forward);
        assert_eq!(twice.rows, 6);
    }

    #[test]
    fn the_numeric_fast_path_agrees_with_the_parser() {
        for text in [
            "\"4.20\"",
            "\"-0.00\"",
            "\"-0\"",
            "\"10\"",
            "\"100.000\"",
            "\"NaN\"",
            "\"Infinity\"",
            "\"-Infinity\"",
            "\"1.50e3\"",
            "\"+1.0\"",
            "\"\"",
            "\".\"",
            "\"0.1000000000000000055\"",
        ] {
            let mut fast = Vec::new();
            canonical_value(&ColumnKind::Numeric, text.as_bytes(), &mut fast);
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            let mut parsed = Vec::new();
            write_canonical(&ColumnKind::Numeric, &value, &mut parsed);
            assert_eq!(
                String::from_utf8(fast).unwrap(),
                String::from_utf8(parsed).unwrap(),
                "{text}"
            );
        }
    }

    /// The canonical bytes are a file format: recorded checksums must stay comparable, so a
    /// change here needs a new [`ALGORITHM`] name. The sum was computed by the first version.
    #[test]
    fn the_v1_bytes_are_pinned() {
        let array = |k: ColumnKind| ColumnKind::Array(Box::new(k));
        let cols = [
            ("id", ColumnKind::Int8),
            ("temperature", ColumnKind::Numeric),
            ("humidity", ColumnKind::Float4),
            ("payload", ColumnKind::Jsonb),
            ("tags", array(ColumnKind::Text)),
            ("amounts", array(ColumnKind::Numeric)),
            ("name", ColumnKind::Text),
        ];
        let rows = [
            [
                "1",
                "\"21.50\"",
                "0.5",
                r#"{"b":1.50,"a":[1,2]}"#,
                r#"["x",null]"#,
                r#"["1.0","2"]"#,
                r#""\u00e9\n""#,
            ],
            ["2", "null", "null", "null", "null", "null", "null"],
            [
                "-3",
                "\"NaN\"",
                "\"Infinity\"",
                "12345678901234567890",
                "[]",
                r#"[["0.00"]]"#,
                "\"\"",
            ],
            [
                "4",
                "\"-0.00\"",
                "1e-7",
                "0.1000000000000000055",
                r#"["a\"b"]"#,
                "[null]",
                "\" \"",
            ],
            [
                "5",
                "\"100\"",
                "1",
                "\"s\"",
                "[\"\"]",
                r#"["1.50e3"]"#,
                "\"x\"",
            ],
            ["6", "\"-12.340\"", "-0", "[1.0,{}]", "[]", "[]", "\"y\""],
        ];
        let mut sum = Checksum::default();
        for row in &rows {
            sum.add_row(&hash(&cols, row));
        }
        assert_eq!(sum.rows, 6);
        assert_eq!(sum.hex(), "05bbc7232d7dbab95596a33e98cdc9a2");
    }

    #[test]
    fn decimals_normalise() {
        for (input, want) in [
            ("4.20", "4.2"),
            ("-0.00", "0"),
            ("10", "10"),
            ("100.000", "100"),
            ("-0", "0"),
            ("NaN", "NaN"),
            ("0.1000000000000000055", "0.1000000000000000055"),
            ("1.50e3", "1.50e3"),
        ] {
            assert_eq!(normalise_decimal(input), want, "{input}");
        }
        let mut out = Vec::new();
        canonical_value(
            &ColumnKind::Array(Box::new(ColumnKind::Numeric)),
            br#"[["1.0",null],["2.50","3"]]"#,
            &mut out,
        );
        assert_eq!(out, br#"[["1",null],["2.5","3"]]"#);
        out.clear();
        canonical_value(
            &ColumnKind::Jsonb,
            b"123456789012345678901234567890",
            &mut out,
        );
        assert_eq!(out, b"123456789012345678901234567890");
    }
}
