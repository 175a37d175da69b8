//! Reading an export file row by row, in constant memory.
//!
//! A `<table>.json[.gz]` file is one JSON array of row objects. [`read_rows`] walks it with a
//! serde visitor, handing each row to a callback as soon as it is parsed, so a file of any size
//! is never held in memory. The same pass computes the SHA-256 and size of the bytes on disk
//! (compressed bytes for `.gz`), so a file can be checked against `metadata.json` and used in
//! one read. Errors name the file and the line and column of the problem.
//!
//! The layout `fmig export` writes (`[`, one row object per line, `]`) is read line by line,
//! each row parsed from a slice; any other layout, and any problem, is read again from the start
//! by the general streaming parser, which accepts any JSON layout and words the errors.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::mpsc;
use std::thread;

use anyhow::{Context, Result, anyhow};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::codec::ColumnKind;
use crate::files::hex;

mod parallel;

/// What reading a whole file found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRead {
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// Calls `on_row(index, values)` for every row of the file, `values` in the order of `columns`
/// (`None` never occurs: a row must have every column; JSON null is `Value::Null`). Stops at the
/// first error, from the file or from `on_row`.
pub fn read_rows(
    path: &Path,
    columns: &[String],
    on_row: impl FnMut(u64, &[Value]) -> Result<()>,
) -> Result<FileRead> {
    read_rows_with(path, columns, None, None, on_row)
}

/// [`read_rows`], and every value is checked against its column's kind (`kinds`, as in
/// `columns`): what the loader could not turn into a field PostgreSQL reads back (an object in
/// an integer column, `1e3` for an int4, a text with a NUL, bytea that is not base64) is an
/// error naming the row and column, here, instead of a failed batch later.
pub fn read_rows_checked(
    path: &Path,
    columns: &[String],
    kinds: &[ColumnKind],
    on_row: impl FnMut(u64, &[Value]) -> Result<()>,
) -> Result<FileRead> {
    assert_eq!(kinds.len(), columns.len(), "one kind per column");
    read_rows_with(path, columns, None, Some(kinds), on_row)
}

/// [`read_rows_checked`], but only the columns marked in `keep` (indices as in `columns`) are
/// built as values; the others are checked (JSON and kind) and skipped, and handed to `on_row`
/// as `Value::Null`. Every row must still have every column, once. For a pass that only needs
/// a few columns (or none: hash, row count, syntax and kinds), this saves building every value.
pub fn read_rows_keeping(
    path: &Path,
    columns: &[String],
    kinds: &[ColumnKind],
    keep: &[bool],
    on_row: impl FnMut(u64, &[Value]) -> Result<()>,
) -> Result<FileRead> {
    assert_eq!(keep.len(), columns.len(), "one keep flag per column");
    assert_eq!(kinds.len(), columns.len(), "one kind per column");
    read_rows_with(path, columns, Some(keep), Some(kinds), on_row)
}

/// One row as the raw JSON text of each value (numbers as written, strings with their quotes
/// and escapes), in the order of the columns asked for.
pub struct RawRow<'a> {
    text: &'a str,
    spans: &'a [(usize, usize)],
}

impl<'a> RawRow<'a> {
    /// The raw JSON text of column `i` (an index into the columns asked for).
    pub fn get(&self, i: usize) -> &'a str {
        let (start, end) = self.spans[i];
        &self.text[start..end]
    }
}

/// Calls `on_row(index, row)` for every row of the file, each value as its raw JSON text, and
/// returns the row count. For a pass after [`read_rows_checked`] verified the file: nothing is
/// hashed, no value is built or checked against its kind, so the load reads each row once
/// more at about the cost of finding its values (a row must still have every column, once).
pub fn read_raw_rows(
    path: &Path,
    columns: &[String],
    mut on_row: impl FnMut(u64, RawRow) -> Result<()>,
) -> Result<u64> {
    let index = column_index(columns);
    let shape = RowLayout {
        columns,
        keep: None,
        kinds: None,
        index: &index,
    };
    let gz = path.extension().is_some_and(|e| e == "gz");
    let open = || -> Result<Box<dyn Read>> {
        let file =
            File::open(path).with_context(|| format!("could not open {}", path.display()))?;
        Ok(if gz {
            Box::new(flate2::read::GzDecoder::new(file))
        } else {
            Box::new(file)
        })
    };

    let mut delivered = 0u64;
    let mut row: Vec<Option<(usize, usize)>> = vec![None; columns.len()];
    let mut spans: Vec<(usize, usize)> = Vec::with_capacity(columns.len());
    let reader = BufReader::with_capacity(256 * 1024, open()?);
    let lines = export_lines(reader, MAX_LINE, &mut |i, object| {
        let mut de = serde_json::Deserializer::from_str(object);
        let parsed = RawRowSeed {
            shape: &shape,
            row: &mut row,
            base: object.as_ptr() as usize,
            number: i + 1,
        }
        .deserialize(&mut de)
        .and_then(|()| de.end());
        if parsed.is_err() {
            row.fill(None);
            return Ok(false);
        }
        spans.clear();
        spans.extend(row.iter_mut().map(|s| s.take().expect("every column")));
        on_row(
            i,
            RawRow {
                text: object,
                spans: &spans,
            },
        )?;
        delivered += 1;
        Ok(true)
    })?;
    if let Some(rows) = lines {
        return Ok(rows);
    }

    // Another layout: the general parser builds the values, and each is written back as JSON
    // text (the same value; numbers keep their text). Rows already handed over are skipped.
    let mut text = String::new();
    let mut remaining = |i: u64, values: &[Value]| {
        if i < delivered {
            return Ok(());
        }
        text.clear();
        spans.clear();
        for value in values {
            let start = text.len();
            text.push_str(&value.to_string());
            spans.push((start, text.len()));
        }
        on_row(
            i,
            RawRow {
                text: &text,
                spans: &spans,
            },
        )
    };
    // serde_json's reader reads one byte at a time: the boxed reader under a BufReader it can
    // see keeps that inline.
    let reader = BufReader::with_capacity(256 * 1024, open()?);
    parse(reader, path, &shape, &mut remaining)
}

/// The string a raw JSON value holds (borrowed when it has no escapes), or None for any other
/// value.
pub fn json_string(raw: &str) -> Option<std::borrow::Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(raw).ok().map(Into::into)
    } else {
        Some(inner.into())
    }
}

fn column_index(columns: &[String]) -> HashMap<&str, usize> {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect()
}

fn read_rows_with(
    path: &Path,
    columns: &[String],
    keep: Option<&[bool]>,
    kinds: Option<&[ColumnKind]>,
    mut on_row: impl FnMut(u64, &[Value]) -> Result<()>,
) -> Result<FileRead> {
    let index = column_index(columns);
    let shape = RowLayout {
        columns,
        keep,
        kinds,
        index: &index,
    };
    let gz = path.extension().is_some_and(|e| e == "gz");

    // First as fmig export lays the file out: `[`, one row object per line, `]`. Each line is
    // parsed from a slice, several times faster than serde_json's byte-at-a-time reader. Any
    // other layout, and any problem, sends the file to the general parser below, which reads
    // it again from the start, accepts any JSON layout and names the line and column of a
    // problem; rows the first pass already handed over are not handed over again.
    let mut hashing = open(path)?;
    let mut delivered = 0u64;
    let lines = {
        let mut counted = |i: u64, values: &[Value]| {
            on_row(i, values)?;
            delivered += 1;
            Ok(())
        };
        if gz {
            let reader =
                BufReader::with_capacity(256 * 1024, flate2::read::GzDecoder::new(&mut hashing));
            parse_lines(reader, &shape, MAX_LINE, &mut counted)?
        } else {
            let reader = BufReader::with_capacity(256 * 1024, &mut hashing);
            parse_lines(reader, &shape, MAX_LINE, &mut counted)?
        }
    };
    if let Some(rows) = lines {
        return finish(path, hashing, rows);
    }

    let mut hashing = open(path)?;
    let mut remaining = |i: u64, values: &[Value]| {
        if i < delivered {
            Ok(())
        } else {
            on_row(i, values)
        }
    };
    // A concrete reader type, not `Box<dyn Read>`: serde_json reads one byte at a time, and
    // only a `BufReader` it can see takes each byte from the buffer inline (through a boxed
    // reader every byte was a virtual `read` call, most of the parse time).
    let rows = if gz {
        let reader =
            BufReader::with_capacity(256 * 1024, flate2::read::GzDecoder::new(&mut hashing));
        parse(reader, path, &shape, &mut remaining)?
    } else {
        let reader = BufReader::with_capacity(256 * 1024, &mut hashing);
        parse(reader, path, &shape, &mut remaining)?
    };
    finish(path, hashing, rows)
}

fn open(path: &Path) -> Result<HashingReader<File>> {
    let file = File::open(path).with_context(|| {
        format!(
            "could not open {}, a file metadata.json lists (next step: run fmig export again)",
            path.display()
        )
    })?;
    HashingReader::new(file).context("could not start the hashing thread")
}

fn finish(path: &Path, mut hashing: HashingReader<File>, rows: u64) -> Result<FileRead> {
    // Read to the end: the hash must cover the whole file even if, say, gzip trailing bytes
    // were not consumed by the decoder.
    io::copy(&mut hashing, &mut io::sink())
        .with_context(|| format!("could not read {}", path.display()))?;
    Ok(FileRead {
        rows,
        bytes: hashing.bytes,
        sha256: hashing.sha256(),
    })
}

/// The columns a row must have, and which of them to build.
struct RowLayout<'a> {
    columns: &'a [String],
    keep: Option<&'a [bool]>,
    /// When given, every value is checked against its column's kind.
    kinds: Option<&'a [ColumnKind]>,
    index: &'a HashMap<&'a str, usize>,
}

/// The longest line the fast path holds in memory; a longer one (a huge row, or a whole
/// array on one line) is left to the streaming parser.
const MAX_LINE: u64 = 8 << 20;

/// The fast path: `[`, then one row object per line with a comma after every row but the
/// last, then `]` at the end of the file. `Ok(Some(rows))` when the whole file is exactly
/// that; `Ok(None)` as soon as anything is not (another layout, a damaged file, a read
/// error, a line longer than `max_line` bytes), leaving it to [`parse`]. `Err` only from
/// `on_row`.
fn parse_lines(
    reader: impl BufRead,
    shape: &RowLayout,
    max_line: u64,
    on_row: &mut dyn FnMut(u64, &[Value]) -> Result<()>,
) -> Result<Option<u64>> {
    parallel::parse_lines(reader, shape, max_line, on_row)
}

/// The layout of the fast path, line by line: `on_object(index, text)` gets each row's
/// object text (valid UTF-8, without its comma) and says whether it took the row; `false`,
/// or anything in the layout that differs, ends the walk with `Ok(None)`.
fn export_lines(
    mut reader: impl BufRead,
    max_line: u64,
    on_object: &mut dyn FnMut(u64, &str) -> Result<bool>,
) -> Result<Option<u64>> {
    let mut line = Vec::with_capacity(64 * 1024);
    // The line without its newline; None at the end of the file, on a read error, or when
    // the line is too long.
    let mut next = |line: &mut Vec<u8>| -> Option<usize> {
        line.clear();
        match (&mut reader).take(max_line).read_until(b'\n', line) {
            Ok(0) | Err(_) => None,
            Ok(n) if line.last() == Some(&b'\n') => Some(n - 1),
            // The last line, without a newline.
            Ok(n) if (n as u64) < max_line => Some(n),
            Ok(_) => None,
        }
    };
    if next(&mut line).is_none_or(|n| line[..n] != *b"[") {
        return Ok(None);
    }
    let mut rows = 0u64;
    let mut comma = false;
    loop {
        let Some(n) = next(&mut line) else {
            return Ok(None);
        };
        let text = &line[..n];
        if text == b"]" {
            // No comma after the last row, and nothing after the array.
            if comma || next(&mut line).is_some() {
                return Ok(None);
            }
            return Ok(Some(rows));
        }
        if rows > 0 && !comma {
            return Ok(None);
        }
        let (object, ends_with_comma) = match text.split_last() {
            Some((b',', object)) => (object, true),
            _ => (text, false),
        };
        // Checked once here: parsing from a `str`, serde_json does not check each string
        // and raw value again.
        let Ok(object) = std::str::from_utf8(object) else {
            return Ok(None);
        };
        if !on_object(rows, object)? {
            return Ok(None);
        }
        rows += 1;
        comma = ends_with_comma;
    }
}

fn parse(
    reader: impl Read,
    path: &Path,
    shape: &RowLayout,
    on_row: &mut dyn FnMut(u64, &[Value]) -> Result<()>,
) -> Result<u64> {
    let mut callback_error: Option<anyhow::Error> = None;
    let mut de = serde_json::Deserializer::from_reader(reader);
    let visitor = ArrayVisitor {
        shape,
        on_row,
        callback_error: &mut callback_error,
    };
    let result = de
        .deserialize_seq(visitor)
        .and_then(|rows| de.end().map(|_| rows));
    match (result, callback_error) {
        (_, Some(err)) => Err(err),
        (Ok(rows), None) => Ok(rows),
        (Err(err), None) => Err(describe(path, &err)),
    }
}

fn describe(path: &Path, err: &serde_json::Error) -> anyhow::Error {
    let what = match err.classify() {
        serde_json::error::Category::Eof => "the file ends too early (truncated?)",
        serde_json::error::Category::Io if path.extension().is_some_and(|e| e == "gz") => {
            "it is not a complete gzip file (truncated or damaged?)"
        }
        serde_json::error::Category::Io => "it could not be read",
        serde_json::error::Category::Syntax => "it is not valid JSON",
        serde_json::error::Category::Data => "it does not have the shape of an export file",
    };
    anyhow!(
        "{}, line {} column {}: {what}: {err}.\n  next step: the file was changed or damaged after the export; run fmig export again",
        path.display(),
        err.line(),
        err.column()
    )
}

struct ArrayVisitor<'a, 'f> {
    shape: &'a RowLayout<'a>,
    on_row: &'f mut dyn FnMut(u64, &[Value]) -> Result<()>,
    callback_error: &'f mut Option<anyhow::Error>,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_, '_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of row objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut row: Vec<Option<Value>> = vec![None; self.shape.columns.len()];
        let mut values: Vec<Value> = Vec::with_capacity(self.shape.columns.len());
        let mut rows = 0u64;
        while seq
            .next_element_seed(RowSeed {
                shape: self.shape,
                row: &mut row,
                number: rows + 1,
                borrows: false,
            })?
            .is_some()
        {
            values.clear();
            values.extend(row.iter_mut().map(|v| v.take().unwrap_or(Value::Null)));
            if let Err(err) = (self.on_row)(rows, &values) {
                *self.callback_error = Some(err);
                return Err(de::Error::custom("stopped"));
            }
            rows += 1;
        }
        Ok(rows)
    }
}

struct RowSeed<'a> {
    shape: &'a RowLayout<'a>,
    row: &'a mut Vec<Option<Value>>,
    number: u64,
    /// Parsing a line held in memory (the fast path): values not kept can be borrowed as raw
    /// JSON text and their kinds checked on it, without building anything.
    borrows: bool,
}

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "row {} as a JSON object", self.number)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let columns = self.shape.columns;
        let mut position = 0;
        while let Some(i) = map.next_key_seed(KeySeed {
            shape: self.shape,
            position,
            number: self.number,
        })? {
            position += 1;
            if self.row[i].is_some() {
                return Err(de::Error::custom(format_args!(
                    "row {} has column {:?} twice",
                    self.number, columns[i]
                )));
            }
            let check = self.shape.kinds.map(|kinds| KindCheck {
                kind: &kinds[i],
                nested: None,
                row: self.number,
                column: &columns[i],
            });
            self.row[i] = Some(match check {
                _ if self.shape.keep.is_none_or(|keep| keep[i]) => {
                    let value: Value = map.next_value()?;
                    if let Some(check) = check {
                        check.deserialize(&value).map_err(de::Error::custom)?;
                    }
                    value
                }
                Some(check) if self.borrows => {
                    // Any doubt sends the file to the general parser, whose KindCheck decides
                    // and words the error.
                    let raw: &serde_json::value::RawValue = map.next_value()?;
                    if !kind_fits(check, raw.get()) {
                        return Err(de::Error::custom("a value does not fit its column"));
                    }
                    Value::Null
                }
                Some(check) => {
                    map.next_value_seed(check)?;
                    Value::Null
                }
                None => {
                    map.next_value::<de::IgnoredAny>()?;
                    Value::Null
                }
            });
        }
        if let Some(missing) = self.row.iter().position(Option::is_none) {
            return Err(de::Error::custom(format_args!(
                "row {} has no column {:?}",
                self.number, columns[missing]
            )));
        }
        Ok(())
    }
}

/// A row of the fast path as the byte span of each value's raw text in the line (`base` is
/// where the line starts), checked for every column once and no other.
struct RawRowSeed<'a> {
    shape: &'a RowLayout<'a>,
    row: &'a mut Vec<Option<(usize, usize)>>,
    base: usize,
    number: u64,
}

impl<'de> DeserializeSeed<'de> for RawRowSeed<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RawRowSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "row {} as a JSON object", self.number)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut position = 0;
        while let Some(i) = map.next_key_seed(KeySeed {
            shape: self.shape,
            position,
            number: self.number,
        })? {
            position += 1;
            let raw: &serde_json::value::RawValue = map.next_value()?;
            // Where the borrowed text sits in the line: an offset, not a pointer.
            let start = raw.get().as_ptr() as usize - self.base;
            if self.row[i]
                .replace((start, start + raw.get().len()))
                .is_some()
            {
                return Err(de::Error::custom("a column twice"));
            }
        }
        if self.row.iter().any(Option::is_none) {
            return Err(de::Error::custom("a column missing"));
        }
        Ok(())
    }
}

struct KeySeed<'a> {
    shape: &'a RowLayout<'a>,
    /// How many keys of the row came before this one.
    position: usize,
    number: u64,
}

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = usize;
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a column name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<usize, E> {
        // Export files list the keys in column order: one comparison instead of a lookup.
        if self
            .shape
            .columns
            .get(self.position)
            .is_some_and(|c| c == key)
        {
            return Ok(self.position);
        }
        self.shape.index.get(key).copied().ok_or_else(|| {
            E::custom(format_args!(
                "row {} has a column {key:?} that metadata.json does not list",
                self.number
            ))
        })
    }
}

/// [`KindCheck`] on a value's raw JSON text, for the fast path: `true` only when KindCheck
/// would accept it (it may refuse more: the general parser then decides). Numbers are judged
/// on their text, strings are unescaped only when they hold a backslash; nothing is built for
/// the common values, which is what keeps the check pass near the speed of skipping them.
fn kind_fits(check: KindCheck, raw: &str) -> bool {
    let kind = check.kind;
    let bytes = raw.as_bytes();
    let Some(&first) = bytes.first() else {
        return false;
    };
    if raw == "null" {
        return true;
    }
    let string = || json_string(raw);
    let number = first == b'-' || first.is_ascii_digit();
    match kind {
        ColumnKind::Json | ColumnKind::Jsonb => true,
        ColumnKind::Bool => raw == "true" || raw == "false",
        ColumnKind::Int2 => raw.parse::<i16>().is_ok(),
        ColumnKind::Int4 => raw.parse::<i32>().is_ok(),
        ColumnKind::Int8 => raw.parse::<i64>().is_ok(),
        ColumnKind::Float4 | ColumnKind::Float8 => {
            number || matches!(raw, "\"NaN\"" | "\"Infinity\"" | "\"-Infinity\"")
        }
        ColumnKind::Numeric if number => true,
        // Arrays are rare and nested: checked by KindCheck itself, on their text.
        ColumnKind::Array(_) => check
            .deserialize(&mut serde_json::Deserializer::from_str(raw))
            .is_ok(),
        ColumnKind::Bytea => string().is_some_and(|s| crate::copy_text::is_base64(&s)),
        _ => string().is_some_and(|s| !s.contains('\0')),
    }
}

/// Checks one value against its column's kind without building it: the JSON an export writes
/// for that kind (see `codec`), in a form the loader turns into a field PostgreSQL reads. What
/// only the server can judge (a numeric's precision, a date's calendar) is left to it. Messages
/// name the row and column but never the value, which may be personal data.
#[derive(Clone, Copy)]
struct KindCheck<'a> {
    kind: &'a ColumnKind,
    /// Inside an array of this kind: a nested array is a further dimension of it.
    nested: Option<&'a ColumnKind>,
    row: u64,
    column: &'a str,
}

impl KindCheck<'_> {
    fn refuse<E: de::Error>(&self, found: &str) -> E {
        let expected = match self.kind {
            ColumnKind::Bool => "true or false",
            ColumnKind::Int2 | ColumnKind::Int4 | ColumnKind::Int8 => "an integer",
            ColumnKind::Float4 | ColumnKind::Float8 => {
                "a number (or \"NaN\", \"Infinity\", \"-Infinity\")"
            }
            ColumnKind::Numeric => "a number, as a string",
            ColumnKind::Bytea => "base64 text",
            ColumnKind::Array(_) => "an array",
            ColumnKind::Json | ColumnKind::Jsonb => "JSON",
            _ => "a string",
        };
        E::custom(format_args!(
            "row {}, column {} ({}{}): expected {expected}, found {found}",
            self.row,
            self.column,
            self.kind.name(),
            if self.nested.is_some() {
                " in an array"
            } else {
                ""
            },
        ))
    }

    fn integer<E: de::Error>(&self, fits: bool) -> Result<(), E> {
        match self.kind {
            ColumnKind::Int2 | ColumnKind::Int4 | ColumnKind::Int8 if !fits => {
                Err(self.refuse(&format!("an integer out of the {} range", self.kind.name())))
            }
            ColumnKind::Int2
            | ColumnKind::Int4
            | ColumnKind::Int8
            | ColumnKind::Float4
            | ColumnKind::Float8
            | ColumnKind::Numeric
            | ColumnKind::Json
            | ColumnKind::Jsonb => Ok(()),
            _ => Err(self.refuse("a number")),
        }
    }

    /// A number that is not a 64-bit integer: a fraction, an exponent, or more digits.
    fn other_number<E: de::Error>(&self, text: &str) -> Result<(), E> {
        match self.kind {
            ColumnKind::Int2 | ColumnKind::Int4 | ColumnKind::Int8 => {
                if text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
                    // `-0`, or more digits than 64 bits hold.
                    let fits = text.parse::<i64>().is_ok_and(|v| match self.kind {
                        ColumnKind::Int2 => i16::try_from(v).is_ok(),
                        ColumnKind::Int4 => i32::try_from(v).is_ok(),
                        _ => true,
                    });
                    self.integer(fits)
                } else if text.contains(['e', 'E']) {
                    Err(self.refuse("a number in scientific notation"))
                } else {
                    Err(self.refuse("a number with a fraction"))
                }
            }
            _ => self.integer(true),
        }
    }
}

impl<'de> DeserializeSeed<'de> for KindCheck<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for KindCheck<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "a value for the {} column {}",
            self.kind.name(),
            self.column
        )
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        match self.kind {
            ColumnKind::Bool | ColumnKind::Json | ColumnKind::Jsonb => Ok(()),
            _ => Err(self.refuse("true or false")),
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.integer(match self.kind {
            ColumnKind::Int2 => i16::try_from(v).is_ok(),
            ColumnKind::Int4 => i32::try_from(v).is_ok(),
            _ => true,
        })
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.integer(match self.kind {
            ColumnKind::Int2 => i16::try_from(v).is_ok(),
            ColumnKind::Int4 => i32::try_from(v).is_ok(),
            _ => i64::try_from(v).is_ok(),
        })
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.integer(false)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.integer(false)
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.other_number(&format!("{v:?}"))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        match self.kind {
            ColumnKind::Json | ColumnKind::Jsonb => Ok(()),
            ColumnKind::Bool | ColumnKind::Int2 | ColumnKind::Int4 | ColumnKind::Int8 => {
                Err(self.refuse("a string"))
            }
            ColumnKind::Float4 | ColumnKind::Float8
                if !matches!(v, "NaN" | "Infinity" | "-Infinity") =>
            {
                Err(self.refuse("a string other than \"NaN\", \"Infinity\", \"-Infinity\""))
            }
            ColumnKind::Array(_) => Err(self.refuse("a string")),
            ColumnKind::Bytea if !crate::copy_text::is_base64(v) => {
                Err(self.refuse("a string that is not base64"))
            }
            // PostgreSQL's text types cannot hold the character 0.
            _ if v.contains('\0') => Err(self.refuse("a string with a NUL character (\\u0000)")),
            _ => Ok(()),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (element, array) = match (self.nested, self.kind) {
            (_, ColumnKind::Json | ColumnKind::Jsonb) => {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                return Ok(());
            }
            // A further dimension of the array this value is an element of.
            (Some(array @ ColumnKind::Array(element)), _) => (&**element, array),
            (None, array @ ColumnKind::Array(element)) => (&**element, array),
            _ => return Err(self.refuse("an array")),
        };
        let check = KindCheck {
            kind: element,
            nested: Some(array),
            ..self
        };
        // Elements of a json array are whole documents, not further dimensions.
        let check = if matches!(element, ColumnKind::Json | ColumnKind::Jsonb) {
            KindCheck {
                nested: None,
                ..check
            }
        } else {
            check
        };
        while seq.next_element_seed(check)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        // serde_json (arbitrary_precision) hands a number that is not a 64-bit integer over
        // as a one-entry map from its private token to the number's text.
        let Some(key) = map.next_key::<std::borrow::Cow<str>>()? else {
            return match self.kind {
                ColumnKind::Json | ColumnKind::Jsonb => Ok(()),
                _ => Err(self.refuse("an object")),
            };
        };
        if key == "$serde_json::private::Number" {
            let text: std::borrow::Cow<str> = map.next_value()?;
            return self.other_number(&text);
        }
        match self.kind {
            ColumnKind::Json | ColumnKind::Jsonb => {
                map.next_value::<de::IgnoredAny>()?;
                while map
                    .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(())
            }
            _ => Err(self.refuse("an object")),
        }
    }
}

/// Counts the bytes read through it and hashes them. The SHA-256 runs on a thread of its own,
/// fed the chunks in order, so it is off the parser's critical path (it was a quarter of the
/// check before an import).
struct HashingReader<R> {
    inner: R,
    bytes: u64,
    chunks: Option<mpsc::SyncSender<Vec<u8>>>,
    hasher: Option<thread::JoinHandle<Sha256>>,
}

impl<R> HashingReader<R> {
    fn new(inner: R) -> io::Result<HashingReader<R>> {
        // A few chunks in flight (BufReader reads up to 256 KiB at a time): memory stays small.
        let (chunks, received) = mpsc::sync_channel::<Vec<u8>>(4);
        let hasher = thread::Builder::new()
            .name("fmig-sha256".into())
            .spawn(move || {
                let mut digest = Sha256::new();
                for chunk in received {
                    digest.update(&chunk);
                }
                digest
            })?;
        Ok(HashingReader {
            inner,
            bytes: 0,
            chunks: Some(chunks),
            hasher: Some(hasher),
        })
    }

    /// The hex SHA-256 of everything read.
    fn sha256(mut self) -> String {
        drop(self.chunks.take());
        let digest = self
            .hasher
            .take()
            .expect("hashed once")
            .join()
            .expect("the hashing thread does not panic");
        hex(&digest.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.bytes += n as u64;
            let chunks = self.chunks.as_ref().expect("not hashed yet");
            chunks
                .send(buf[..n].to_vec())
                .map_err(|_| io::Error::other("the hashing thread stopped"))?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<Vec<String>>> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, text).unwrap();
        let mut rows = Vec::new();
        let columns = vec!["a".to_string(), "b".to_string()];
        read_rows(&path, &columns, |_, values| {
            rows.push(values.iter().map(|v| v.to_string()).collect());
            Ok(())
        })
        .map_err(|e| anyhow!("{e:#}"))?;
        Ok(rows)
    }

    #[test]
    fn rows_stream_with_exact_numbers() {
        let rows = read(
            "[\n{\"a\":1,\"b\":123456789012345678901234567890.5}\n,{\"b\":null,\"a\":\"x\"}\n]\n",
        )
        .unwrap();
        assert_eq!(
            rows,
            [["1", "123456789012345678901234567890.5"], ["\"x\"", "null"]]
        );
        assert_eq!(read("[]").unwrap().len(), 0);
    }

    #[test]
    fn damaged_files_are_named_with_line_and_column() {
        for (text, fragment) in [
            ("[\n{\"a\":1,\"b\":2},\n{\"a\":1,", "ends too early"),
            ("{\"a\":1}", "not have the shape"),
            (
                "[\n{\"a\":1,\"b\":2,\"c\":3}\n]",
                "column \"c\" that metadata.json does not list",
            ),
            ("[\n{\"a\":1}\n]", "row 1 has no column \"b\""),
            ("[\n{\"a\":1,\"a\":2,\"b\":3}\n]", "column \"a\" twice"),
            ("[\n{\"a\":1,\"b\":2}\n] trailing", "line 3"),
            ("[\n{\"a\":1,\"b\":2}\n,\n{\"a\":1 \"b\":2}]", "line 4"),
        ] {
            let err = read(text).unwrap_err().to_string();
            assert!(err.contains(fragment), "{text:?}: {err}");
            assert!(err.contains("t.json, line"), "{err}");
        }
    }

    #[test]
    fn a_callback_error_stops_the_read_and_is_returned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        std::fs::write(&path, "[{\"a\":1,\"b\":2},{\"a\":3,\"b\":4}]").unwrap();
        let mut seen = 0;
        let err = read_rows(&path, &["a".into(), "b".into()], |i, _| {
            seen += 1;
            if i == 0 {
                Err(anyhow!("server said no"))
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "server said no");
        assert_eq!(seen, 1);
    }

    /// Every call of `on_row` (index and values), for `text` written as `t.json` or
    /// `t.json.gz`, read with `keep` when given.
    fn calls(text: &str, gz: bool, keep: Option<&[bool]>) -> Result<Vec<(u64, Vec<String>)>> {
        let dir = tempfile::tempdir().unwrap();
        let path = write_rows_file(dir.path(), text, gz);
        let columns = vec!["a".to_string(), "b".to_string()];
        let mut seen = Vec::new();
        let on_row = |i: u64, values: &[Value]| {
            seen.push((i, values.iter().map(|v| v.to_string()).collect()));
            Ok(())
        };
        let read = match keep {
            // Json kinds accept every value: these tests are about layouts.
            Some(keep) => read_rows_keeping(
                &path,
                &columns,
                &[ColumnKind::Json, ColumnKind::Json],
                keep,
                on_row,
            ),
            None => read_rows(&path, &columns, on_row),
        }
        .map_err(|e| anyhow!("{e:#}"))?;
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(read.bytes, bytes.len() as u64);
        assert_eq!(read.sha256, hex(&Sha256::digest(&bytes)));
        assert_eq!(read.rows, seen.len() as u64);
        Ok(seen)
    }

    fn write_rows_file(dir: &Path, text: &str, gz: bool) -> std::path::PathBuf {
        let path = dir.join(if gz { "t.json.gz" } else { "t.json" });
        if gz {
            use std::io::Write;
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(text.as_bytes()).unwrap();
            std::fs::write(&path, encoder.finish().unwrap()).unwrap();
        } else {
            std::fs::write(&path, text).unwrap();
        }
        path
    }

    /// Every call of `read_raw_rows`' `on_row` (index and raw values) for `text`.
    fn raw_calls(text: &str, gz: bool) -> Result<Vec<(u64, Vec<String>)>> {
        let dir = tempfile::tempdir().unwrap();
        let path = write_rows_file(dir.path(), text, gz);
        let columns = vec!["a".to_string(), "b".to_string()];
        let mut seen = Vec::new();
        let rows = read_raw_rows(&path, &columns, |i, row| {
            seen.push((i, vec![row.get(0).to_string(), row.get(1).to_string()]));
            Ok(())
        })
        .map_err(|e| anyhow!("{e:#}"))?;
        assert_eq!(rows, seen.len() as u64);
        Ok(seen)
    }

    fn strings(rows: &[(u64, [&str; 2])]) -> Vec<(u64, Vec<String>)> {
        rows.iter()
            .map(|(i, r)| (*i, r.iter().map(|v| v.to_string()).collect()))
            .collect()
    }

    #[test]
    fn the_export_layout_takes_the_line_by_line_path() {
        let columns = vec!["a".to_string(), "b".to_string()];
        let index: HashMap<&str, usize> = [("a", 0), ("b", 1)].into_iter().collect();
        let shape = RowLayout {
            columns: &columns,
            keep: None,
            kinds: None,
            index: &index,
        };
        let lines = |text: &str| {
            let mut rows = 0;
            let found = parse_lines(text.as_bytes(), &shape, 64, &mut |_, _| {
                rows += 1;
                Ok(())
            })
            .unwrap();
            (found, rows)
        };
        let export = "[\n{\"a\":1,\"b\":\"x\"},\n{\"a\":2,\"b\":null},\n{\"b\":[1],\"a\":3}\n]\n";
        assert_eq!(lines(export), (Some(3), 3));
        assert_eq!(lines("[\n]\n"), (Some(0), 0));
        assert_eq!(lines("[\n{\"a\":1,\"b\":2}\n]"), (Some(1), 1));
        // Anything else is left to the general parser, at the first line that differs.
        for (text, rows_before) in [
            ("[{\"a\":1,\"b\":2}]", 0),
            ("[\n{\"a\":1,\"b\":2}\n,{\"a\":1,\"b\":2}\n]\n", 1),
            ("[\n{\"a\":1,\"b\":2},\n]\n", 1),
            ("[\n{\"a\":1,\"b\":2}\n{\"a\":1,\"b\":2}\n]\n", 1),
            ("[\n{\"a\":1,\"b\":2}, {\"a\":1,\"b\":2}\n]\n", 0),
            ("[\n{\"a\":1,\"b\":2}\n]\n\n", 1),
            ("[\n{\"a\":1,\"b\":2}\n", 1),
            ("[\n{\"a\":1,\"b\":2,\"c\":3}\n]\n", 0),
            ("[\r\n{\"a\":1,\"b\":2}\r\n]\r\n", 0),
            (" [\n]\n", 0),
            // A line longer than the limit (64 bytes here) is not held in memory.
            (
                "[\n{\"a\":1,\"b\":2},\n{\"a\":1,\"b\":\"01234567890123456789012345678901234567890123456789012345678901234567890123456789\"}\n]\n",
                1,
            ),
        ] {
            assert_eq!(lines(text), (None, rows_before), "{text:?}");
        }
    }

    #[test]
    fn every_layout_gives_the_same_rows_each_once() {
        let expected = strings(&[(0, ["1", "\"x\""]), (1, ["2", "null"]), (2, ["3", "[1]"])]);
        for text in [
            // The export's layout (the line-by-line path).
            "[\n{\"a\":1,\"b\":\"x\"},\n{\"a\":2,\"b\":null},\n{\"b\":[1],\"a\":3}\n]\n",
            // Other layouts, also switching after some rows were handed over already.
            "[{\"a\":1,\"b\":\"x\"},{\"a\":2,\"b\":null},{\"b\":[1],\"a\":3}]",
            "[\n{\"a\":1,\"b\":\"x\"},\n{\"a\":2,\"b\":null}, {\"b\":[1],\"a\":3}\n]\n",
            "[\n{\"a\":1,\"b\":\"x\"}\n,{\"a\":2,\"b\":null}\n,{\"b\":[1],\"a\":3}\n]\n",
            "[\n{\"a\":1,\"b\":\"x\"},\n{\"a\":2,\"b\":null},\n{\"b\":[1],\n\"a\":3}\n]\n",
            "[\n{\"a\":1,\"b\":\"x\"},\n{\"a\":2,\"b\":null},\n{\"b\":[1],\"a\":3}\n]\n\n  \n",
        ] {
            for gz in [false, true] {
                assert_eq!(calls(text, gz, None).unwrap(), expected, "{text:?} gz={gz}");
                assert_eq!(raw_calls(text, gz).unwrap(), expected, "{text:?} gz={gz}");
            }
        }
        // Columns not kept are checked, not built.
        let text = "[\n{\"a\":1,\"b\":\"x\"},\n{\"a\":2,\"b\":null}\n]\n";
        assert_eq!(
            calls(text, false, Some(&[false, true])).unwrap(),
            strings(&[(0, ["null", "\"x\""]), (1, ["null", "null"])])
        );
        let err = calls(
            "[\n{\"a\":1,\"b\":\"x\"},\n{\"a\":tru,\"b\":null}\n]\n",
            false,
            Some(&[false, true]),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 3 column"), "{err}");
    }

    #[test]
    fn rows_parsed_on_several_threads_come_in_file_order_each_once() {
        // Enough rows for many blocks; row `bad` differs in each case.
        let rows = 20_000u64;
        let file = |bad: u64, line: &str| {
            let mut text = String::from("[\n");
            for i in 0..rows {
                let row = if i == bad {
                    line.to_string()
                } else {
                    format!("{{\"a\":{i},\"b\":\"r{i}\"}}")
                };
                text.push_str(&row);
                text.push_str(if i + 1 < rows { ",\n" } else { "\n" });
            }
            text + "]\n"
        };
        let expected: Vec<(u64, Vec<String>)> = (0..rows)
            .map(|i| (i, vec![i.to_string(), format!("\"r{i}\"")]))
            .collect();
        for gz in [false, true] {
            assert_eq!(calls(&file(rows, ""), gz, None).unwrap(), expected);
        }
        // A row split over two lines (another layout from there on): every row, once.
        let split = file(15_000, "{\"a\":15000,\n\"b\":\"r15000\"}");
        assert_eq!(calls(&split, false, None).unwrap(), expected);
        assert_eq!(
            calls(&split, false, Some(&[true, false])).unwrap().len(),
            rows as usize
        );
        // A damaged row in a later block: named, and nothing is handed over twice.
        let dir = tempfile::tempdir().unwrap();
        let path = write_rows_file(
            dir.path(),
            &file(15_000, "{\"a\":1,\"a\":2,\"b\":null}"),
            false,
        );
        let columns = vec!["a".to_string(), "b".to_string()];
        let mut seen = Vec::new();
        let err = read_rows(&path, &columns, |i, _| {
            seen.push(i);
            Ok(())
        })
        .unwrap_err();
        assert!(
            format!("{err:#}").contains("row 15001 has column \"a\" twice"),
            "{err:#}"
        );
        assert_eq!(seen, (0..15_000).collect::<Vec<u64>>());
        // The callback's error stops the read there.
        let mut last = None;
        let err = read_rows(
            &write_rows_file(dir.path(), &file(rows, ""), false),
            &columns,
            |i, _| {
                if i == 12_345 {
                    anyhow::bail!("stop at {i}");
                }
                last = Some(i);
                Ok(())
            },
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "stop at 12345");
        assert_eq!(last, Some(12_344));
    }

    #[test]
    fn raw_rows_keep_each_value_as_written_on_every_path() {
        // The line-by-line path hands over the text as written; the general parser (another
        // layout, or a row the fast path refuses) writes the same value back.
        let line = "[\n{\"a\":1.50,\"b\":\"caf\\u00e9 \\\"x\\\"\"},\n{\"b\":{\"k\":[1e400]},\"a\":-0}\n]\n";
        assert_eq!(
            raw_calls(line, false).unwrap(),
            strings(&[
                (0, ["1.50", "\"caf\\u00e9 \\\"x\\\"\""]),
                (1, ["-0", "{\"k\":[1e400]}"])
            ])
        );
        let compact = line.replace('\n', "");
        let general = raw_calls(&compact, false).unwrap();
        assert_eq!(general.len(), 2);
        for ((_, fast), (_, slow)) in raw_calls(line, false).unwrap().iter().zip(&general) {
            for (f, s) in fast.iter().zip(slow) {
                let f: Value = serde_json::from_str(f).unwrap();
                let s: Value = serde_json::from_str(s).unwrap();
                assert_eq!(f, s);
            }
        }
        assert_eq!(general[0].1[0], "1.50", "numbers keep their text");
        // A column twice or missing on line 3: the general parser takes over from there, the
        // rows before are not handed over again, and its error names the row.
        for (row, found) in [
            (
                "{\"a\":2,\"a\":3,\"b\":null}",
                "row 2 has column \"a\" twice",
            ),
            ("{\"a\":2}", "row 2 has no column \"b\""),
            (
                "{\"a\":2,\"b\":null,\"c\":1}",
                "metadata.json does not list",
            ),
        ] {
            let text = format!("[\n{{\"a\":1,\"b\":\"x\"}},\n{row}\n]\n");
            let err = raw_calls(&text, false).unwrap_err().to_string();
            assert!(err.contains(found), "{row}: {err}");
        }
        let text = "[\n{\"a\":1,\"b\":\"x\"},\n{\"a\":2,\n\"b\":null}\n]\n";
        assert_eq!(
            raw_calls(text, true).unwrap(),
            strings(&[(0, ["1", "\"x\""]), (1, ["2", "null"])])
        );
    }

    #[test]
    fn values_are_checked_against_their_kinds_with_row_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        let columns: Vec<String> = ["i", "f", "b", "t", "y", "a", "j"]
            .iter()
            .map(|c| c.to_string())
            .collect();
        let kinds = [
            ColumnKind::Int2,
            ColumnKind::Float8,
            ColumnKind::Bool,
            ColumnKind::Text,
            ColumnKind::Bytea,
            ColumnKind::Array(Box::new(ColumnKind::Int4)),
            ColumnKind::Jsonb,
        ];
        let row = |values: &str| {
            format!(
                "[\n{{\"i\":1,\"f\":1.5,\"b\":true,\"t\":\"x\",\"y\":\"AP9B\",\"a\":[[1,null],[2,3]],\"j\":{{\"k\":[1e400,\"\\u0000\"]}}}},\n{values}\n]\n"
            )
        };
        let good = r#"{"i":-32768,"f":"NaN","b":null,"t":"a\tb","y":"","a":[],"j":"s"}"#;
        for keep in [None, Some([true; 7]), Some([false; 7])] {
            std::fs::write(&path, row(good)).unwrap();
            let read = match keep {
                None => read_rows_checked(&path, &columns, &kinds, |_, _| Ok(())),
                Some(keep) => read_rows_keeping(&path, &columns, &kinds, &keep, |_, _| Ok(())),
            };
            assert_eq!(read.unwrap().rows, 2);
        }
        for (bad, found) in [
            (
                r#""i":{"dbm":-70}"#,
                "column i (int2): expected an integer, found an object",
            ),
            (
                r#""i":1e3"#,
                "column i (int2): expected an integer, found a number in scientific notation",
            ),
            (r#""i":1.5"#, "found a number with a fraction"),
            (r#""i":40000"#, "found an integer out of the int2 range"),
            (r#""i":"1""#, "found a string"),
            (r#""f":"fast""#, "column f (float8)"),
            (
                r#""b":1"#,
                "column b (bool): expected true or false, found a number",
            ),
            (r#""t":"a\u0000b""#, "found a string with a NUL character"),
            (
                r#""t":["x"]"#,
                "column t (text): expected a string, found an array",
            ),
            (r#""y":"not base64!""#, "found a string that is not base64"),
            (
                r#""a":[1,"2"]"#,
                "column a (int4 in an array): expected an integer, found a string",
            ),
            (r#""a":[[1],[{}]]"#, "found an object"),
        ] {
            let (key, _) = bad.split_once(':').unwrap();
            let values = good.replacen(
                &format!(
                    "{key}:{}",
                    good.split(&format!("{key}:"))
                        .nth(1)
                        .unwrap()
                        .split([',', '}'])
                        .next()
                        .unwrap()
                ),
                bad,
                1,
            );
            assert_ne!(values, good, "{bad}");
            std::fs::write(&path, row(&values)).unwrap();
            for keep in [[false; 7], [true; 7]] {
                let err = read_rows_keeping(&path, &columns, &kinds, &keep, |_, _| Ok(()))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains("t.json, line 3 column"), "{bad}: {err}");
                assert!(err.contains("row 2, "), "{bad}: {err}");
                assert!(err.contains(found), "{bad} (keep {}): {err}", keep[0]);
            }
        }
        // The fast path's raw check never accepts what the general check refuses.
        let kinds_all = [
            ColumnKind::Int2,
            ColumnKind::Int8,
            ColumnKind::Float4,
            ColumnKind::Numeric,
            ColumnKind::Bool,
            ColumnKind::Text,
            ColumnKind::Uuid,
            ColumnKind::Bytea,
            ColumnKind::Array(Box::new(ColumnKind::Int2)),
            ColumnKind::Array(Box::new(ColumnKind::Text)),
            ColumnKind::Jsonb,
        ];
        for raw in [
            "null",
            "true",
            "0",
            "-0",
            "40000",
            "-32768",
            "1e3",
            "1.5",
            "12345678901234567890",
            "\"NaN\"",
            "\"x\"",
            "\"a\\u0000b\"",
            "\"a\\nb\"",
            "\"AP9B\"",
            "\"AP9\"",
            "\"\"",
            "[1,2]",
            "[[1],[null]]",
            "[\"a\"]",
            "[1e3]",
            "{}",
            "{\"a\":1}",
        ] {
            for kind in &kinds_all {
                let check = KindCheck {
                    kind,
                    nested: None,
                    row: 1,
                    column: "c",
                };
                let general = check
                    .deserialize(&mut serde_json::Deserializer::from_str(raw))
                    .is_ok();
                assert_eq!(kind_fits(check, raw), general, "{raw} as {}", kind.name());
            }
        }
        // Without kinds nothing is checked but the shape.
        std::fs::write(
            &path,
            row(r#"{"i":"x","f":1,"b":1,"t":1,"y":1,"a":1,"j":1}"#),
        )
        .unwrap();
        assert!(read_rows(&path, &columns, |_, _| Ok(())).is_ok());
    }

    #[test]
    fn a_problem_after_some_rows_is_named_and_no_row_is_repeated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.json");
        // Rows 1 and 2 in the export's layout, then a damaged row on line 4.
        std::fs::write(
            &path,
            "[\n{\"a\":1,\"b\":2},\n{\"a\":3,\"b\":4},\n{\"a\":5 \"b\":6}\n]\n",
        )
        .unwrap();
        let mut seen = Vec::new();
        let err = read_rows(&path, &["a".into(), "b".into()], |i, _| {
            seen.push(i);
            Ok(())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("t.json, line 4 column"), "{err}");
        assert!(err.contains("not valid JSON"), "{err}");
        assert_eq!(seen, [0, 1]);
    }
}
