//! Reading an export file row by row, in constant memory.
//!
//! A `<table>.json[.gz]` file is one JSON array of row objects. [`read_rows`] walks it with a
//! serde visitor, handing each row to a callback as soon as it is parsed, so a file of any size
//! is never held in memory. The same pass computes the SHA-256 and size of the bytes on disk
//! (compressed bytes for `.gz`), so a file can be checked against `metadata.json` and used in
//! one read. Errors name the file and the line and column of the problem.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::files::hex;

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
    mut on_row: impl FnMut(u64, &[Value]) -> Result<()>,
) -> Result<FileRead> {
    let file = File::open(path).with_context(|| format!("could not open {}", path.display()))?;
    let mut hashing = HashingReader {
        inner: file,
        bytes: 0,
        digest: Sha256::new(),
    };
    let gz = path.extension().is_some_and(|e| e == "gz");
    let rows = {
        let reader: Box<dyn Read + '_> = if gz {
            Box::new(BufReader::with_capacity(
                256 * 1024,
                flate2::read::GzDecoder::new(&mut hashing),
            ))
        } else {
            Box::new(BufReader::with_capacity(256 * 1024, &mut hashing))
        };
        parse(reader, path, columns, &mut on_row)?
    };
    // Read to the end: the hash must cover the whole file even if, say, gzip trailing bytes
    // were not consumed by the decoder.
    io::copy(&mut hashing, &mut io::sink())
        .with_context(|| format!("could not read {}", path.display()))?;
    Ok(FileRead {
        rows,
        bytes: hashing.bytes,
        sha256: hex(&hashing.digest.finalize()),
    })
}

fn parse(
    reader: impl Read,
    path: &Path,
    columns: &[String],
    on_row: &mut dyn FnMut(u64, &[Value]) -> Result<()>,
) -> Result<u64> {
    let index: HashMap<&str, usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut callback_error: Option<anyhow::Error> = None;
    let mut de = serde_json::Deserializer::from_reader(reader);
    let visitor = ArrayVisitor {
        columns,
        index: &index,
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
    columns: &'a [String],
    index: &'a HashMap<&'a str, usize>,
    on_row: &'f mut dyn FnMut(u64, &[Value]) -> Result<()>,
    callback_error: &'f mut Option<anyhow::Error>,
}

impl<'de> Visitor<'de> for ArrayVisitor<'_, '_> {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of row objects")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut row: Vec<Option<Value>> = vec![None; self.columns.len()];
        let mut values: Vec<Value> = Vec::with_capacity(self.columns.len());
        let mut rows = 0u64;
        while seq
            .next_element_seed(RowSeed {
                columns: self.columns,
                index: self.index,
                row: &mut row,
                number: rows + 1,
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
    columns: &'a [String],
    index: &'a HashMap<&'a str, usize>,
    row: &'a mut Vec<Option<Value>>,
    number: u64,
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
        while let Some(i) = map.next_key_seed(KeySeed {
            index: self.index,
            number: self.number,
        })? {
            if self.row[i].is_some() {
                return Err(de::Error::custom(format_args!(
                    "row {} has column {:?} twice",
                    self.number, self.columns[i]
                )));
            }
            self.row[i] = Some(map.next_value()?);
        }
        if let Some(missing) = self.row.iter().position(Option::is_none) {
            return Err(de::Error::custom(format_args!(
                "row {} has no column {:?}",
                self.number, self.columns[missing]
            )));
        }
        Ok(())
    }
}

struct KeySeed<'a> {
    index: &'a HashMap<&'a str, usize>,
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
        self.index.get(key).copied().ok_or_else(|| {
            E::custom(format_args!(
                "row {} has a column {key:?} that metadata.json does not list",
                self.number
            ))
        })
    }
}

struct HashingReader<R> {
    inner: R,
    bytes: u64,
    digest: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.digest.update(&buf[..n]);
        self.bytes += n as u64;
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
}
