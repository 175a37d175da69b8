//! Incremental parser for PostgreSQL's binary COPY format
//! (`COPY ... TO STDOUT (FORMAT binary)`).
//!
//! Chunks may split the header, a tuple or a single field anywhere. Complete tuples inside a
//! chunk are handed to the callback straight from the chunk (zero copy); only a tuple that
//! straddles a chunk boundary is assembled in an internal buffer, which therefore never holds more
//! than one tuple (or the header).

use thiserror::Error;

/// `PGCOPY\n\xff\r\n\0`
const SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";
/// Signature, flags (u32), header extension length (u32).
const FIXED_HEADER_LEN: usize = 11 + 4 + 4;
/// Flags bit 16: every tuple carries an OID. Servers since PostgreSQL 12 never set it.
const FLAG_WITH_OIDS: u32 = 1 << 16;
/// Flags bits 17..=31 are "critical": a reader must reject a stream that sets one it doesn't know.
const FLAGS_CRITICAL: u32 = 0xFFFF_0000;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CopyBinaryError {
    #[error("not a PostgreSQL binary COPY stream (bad signature)")]
    BadSignature,
    #[error("binary COPY header has unsupported flags {0:#010x}")]
    UnsupportedFlags(u32),
    #[error("binary COPY row {row}: {found} fields, expected {expected}")]
    FieldCount {
        row: u64,
        found: usize,
        expected: usize,
    },
    #[error("binary COPY row {row}: invalid field count {count}")]
    BadFieldCount { row: u64, count: i16 },
    #[error("binary COPY row {row}, field {field}: invalid length {len}")]
    BadFieldLength { row: u64, field: usize, len: i32 },
    #[error("binary COPY stream truncated: {0}")]
    Truncated(&'static str),
    #[error("binary COPY stream has {0} bytes after the end-of-data trailer")]
    TrailingData(usize),
    #[error("binary COPY parser used after an earlier error")]
    Poisoned,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Tuples,
    Done,
    Failed,
}

/// Outcome of looking at the start of some bytes for one record (header or tuple).
enum Scan {
    /// A complete record of this many bytes; for a tuple, its fields were filled in.
    Complete(usize),
    /// The end-of-data trailer (2 bytes).
    Trailer,
    /// Incomplete: the rest arrives in a later chunk.
    Need,
}

/// Streaming parser; feed it chunks in order, then call [`CopyBinaryParser::finish`].
///
/// After any error (including one returned by the row callback) the parser is poisoned.
#[derive(Debug)]
pub struct CopyBinaryParser {
    state: State,
    /// Bytes of a record that started in an earlier chunk and is not complete yet.
    pending: Vec<u8>,
    expected_fields: Option<usize>,
    rows: u64,
    /// Recycled allocation for the per-row field slice (always empty between calls).
    slots: Vec<Option<&'static [u8]>>,
}

impl Default for CopyBinaryParser {
    fn default() -> Self {
        Self::new()
    }
}

impl CopyBinaryParser {
    /// A parser that takes the field count from the first tuple and then holds every tuple to it.
    pub fn new() -> Self {
        CopyBinaryParser {
            state: State::Header,
            pending: Vec::new(),
            expected_fields: None,
            rows: 0,
            slots: Vec::new(),
        }
    }

    /// A parser that rejects any tuple without exactly `n` fields (the selected column count).
    pub fn with_expected_fields(n: usize) -> Self {
        CopyBinaryParser {
            expected_fields: Some(n),
            ..Self::new()
        }
    }

    /// Rows parsed so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Parses one chunk, calling `on_row` for every tuple completed by it, in order.
    ///
    /// The callback's slice holds one entry per field, `None` for SQL NULL. Its error type only
    /// needs to absorb [`CopyBinaryError`] (e.g. `anyhow::Error`).
    pub fn feed<E, F>(&mut self, chunk: &[u8], mut on_row: F) -> Result<(), E>
    where
        E: From<CopyBinaryError>,
        F: FnMut(&[Option<&[u8]>]) -> Result<(), E>,
    {
        // Borrow the recycled buffer with this call's lifetime: an empty Vec collected in place
        // into a same-layout element type keeps its allocation, so steady state allocates nothing.
        let mut fields: Vec<Option<&[u8]>> = std::mem::take(&mut self.slots)
            .into_iter()
            .map(|_| None)
            .collect();
        let result = self.feed_inner(chunk, &mut fields, &mut on_row);
        fields.clear();
        self.slots = fields.into_iter().map(|_| None).collect();
        if result.is_err() {
            self.state = State::Failed;
        }
        result
    }

    fn feed_inner<'a, E, F>(
        &mut self,
        chunk: &'a [u8],
        fields: &mut Vec<Option<&'a [u8]>>,
        on_row: &mut F,
    ) -> Result<(), E>
    where
        E: From<CopyBinaryError>,
        F: FnMut(&[Option<&[u8]>]) -> Result<(), E>,
    {
        let mut rest = chunk;
        if self.state == State::Failed {
            return Err(CopyBinaryError::Poisoned.into());
        }
        if !self.pending.is_empty() {
            rest = self.complete_pending(rest, on_row)?;
        }
        while !rest.is_empty() {
            match self.state {
                State::Header => match scan_header(rest)? {
                    Scan::Complete(n) => {
                        rest = &rest[n..];
                        self.state = State::Tuples;
                    }
                    Scan::Need => break,
                    Scan::Trailer => unreachable!("headers have no trailer"),
                },
                State::Tuples => {
                    fields.clear();
                    match scan_tuple(rest, self.rows, &mut self.expected_fields, fields)? {
                        Scan::Complete(n) => {
                            self.rows += 1;
                            on_row(fields)?;
                            rest = &rest[n..];
                        }
                        Scan::Trailer => {
                            rest = &rest[2..];
                            self.state = State::Done;
                        }
                        Scan::Need => break,
                    }
                }
                State::Done => return Err(CopyBinaryError::TrailingData(rest.len()).into()),
                State::Failed => return Err(CopyBinaryError::Poisoned.into()),
            }
        }
        // Keep only the unfinished record's bytes for the next chunk.
        self.pending.extend_from_slice(rest);
        Ok(())
    }

    /// Moves just enough bytes from `chunk` into `pending` to finish the record that `pending`
    /// starts, processes it if it is complete, and returns the unused part of `chunk`.
    fn complete_pending<'c, E, F>(
        &mut self,
        mut chunk: &'c [u8],
        on_row: &mut F,
    ) -> Result<&'c [u8], E>
    where
        E: From<CopyBinaryError>,
        F: FnMut(&[Option<&[u8]>]) -> Result<(), E>,
    {
        // Measure through pending+chunk without copying, so each byte is copied at most once.
        let total = match self.state {
            State::Header => measure_header(&self.pending, chunk)?,
            State::Tuples => measure_tuple(&self.pending, chunk, self.rows)?,
            State::Done => {
                return Err(CopyBinaryError::TrailingData(self.pending.len() + chunk.len()).into());
            }
            State::Failed => return Err(CopyBinaryError::Poisoned.into()),
        };
        let Some(total) = total else {
            self.pending.extend_from_slice(chunk);
            return Ok(&[]);
        };
        let take = total - self.pending.len();
        self.pending.extend_from_slice(&chunk[..take]);
        chunk = &chunk[take..];

        let pending = std::mem::take(&mut self.pending);
        let outcome = self.process_complete(&pending, on_row);
        // Keep the allocation for the next straddling record.
        self.pending = pending;
        self.pending.clear();
        outcome.map(|()| chunk)
    }

    /// Processes a buffer known to hold exactly one complete header or tuple (or the trailer).
    fn process_complete<E, F>(&mut self, record: &[u8], on_row: &mut F) -> Result<(), E>
    where
        E: From<CopyBinaryError>,
        F: FnMut(&[Option<&[u8]>]) -> Result<(), E>,
    {
        match self.state {
            State::Header => {
                scan_header(record)?;
                self.state = State::Tuples;
            }
            _ => {
                // A separate small Vec here: this path runs only for records split across chunks.
                let mut fields = Vec::new();
                match scan_tuple(record, self.rows, &mut self.expected_fields, &mut fields)? {
                    Scan::Complete(_) => {
                        self.rows += 1;
                        on_row(&fields)?;
                    }
                    Scan::Trailer => self.state = State::Done,
                    Scan::Need => unreachable!("measured as complete"),
                }
            }
        }
        Ok(())
    }

    /// Ends the stream; errors unless the header and the end-of-data trailer were both seen.
    /// Returns the number of rows.
    pub fn finish(self) -> Result<u64, CopyBinaryError> {
        match self.state {
            State::Done => Ok(self.rows),
            State::Failed => Err(CopyBinaryError::Poisoned),
            State::Header => Err(CopyBinaryError::Truncated("ended inside the header")),
            State::Tuples if self.pending.is_empty() => Err(CopyBinaryError::Truncated(
                "ended without the end-of-data trailer",
            )),
            State::Tuples => Err(CopyBinaryError::Truncated("ended inside a row")),
        }
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn scan_header(data: &[u8]) -> Result<Scan, CopyBinaryError> {
    // Check the signature as soon as its bytes arrive, so garbage fails at once.
    let n = data.len().min(SIGNATURE.len());
    if data[..n] != SIGNATURE[..n] {
        return Err(CopyBinaryError::BadSignature);
    }
    if data.len() < FIXED_HEADER_LEN {
        return Ok(Scan::Need);
    }
    let flags = be_u32(&data[11..15]);
    if flags & (FLAGS_CRITICAL | FLAG_WITH_OIDS) != 0 {
        return Err(CopyBinaryError::UnsupportedFlags(flags));
    }
    let total = FIXED_HEADER_LEN + be_u32(&data[15..19]) as usize;
    if data.len() < total {
        return Ok(Scan::Need);
    }
    Ok(Scan::Complete(total))
}

/// Scans one tuple (or the trailer) at the start of `data`, pushing its fields into `fields`.
fn scan_tuple<'a>(
    data: &'a [u8],
    row_index: u64,
    expected: &mut Option<usize>,
    fields: &mut Vec<Option<&'a [u8]>>,
) -> Result<Scan, CopyBinaryError> {
    let row = row_index + 1;
    if data.len() < 2 {
        return Ok(Scan::Need);
    }
    let count = i16::from_be_bytes([data[0], data[1]]);
    if count == -1 {
        return Ok(Scan::Trailer);
    }
    let count = check_count(count, row, expected)?;
    let mut pos = 2;
    for field in 0..count {
        let Some(len_bytes) = data.get(pos..pos + 4) else {
            return Ok(Scan::Need);
        };
        let len = be_u32(len_bytes) as i32;
        pos += 4;
        if len == -1 {
            fields.push(None);
            continue;
        }
        if len < 0 {
            return Err(CopyBinaryError::BadFieldLength { row, field, len });
        }
        let end = pos + len as usize;
        let Some(value) = data.get(pos..end) else {
            return Ok(Scan::Need);
        };
        fields.push(Some(value));
        pos = end;
    }
    Ok(Scan::Complete(pos))
}

fn check_count(
    count: i16,
    row: u64,
    expected: &mut Option<usize>,
) -> Result<usize, CopyBinaryError> {
    if count < 0 {
        return Err(CopyBinaryError::BadFieldCount { row, count });
    }
    let count = count as usize;
    match *expected {
        Some(expected) if expected != count => Err(CopyBinaryError::FieldCount {
            row,
            found: count,
            expected,
        }),
        Some(_) => Ok(count),
        None => {
            // Every tuple of one COPY has the same width; the first one sets it.
            *expected = Some(count);
            Ok(count)
        }
    }
}

/// Reads bytes at logical offsets of the concatenation `a ++ b` without building it.
struct Joined<'x> {
    a: &'x [u8],
    b: &'x [u8],
}

impl Joined<'_> {
    fn len(&self) -> usize {
        self.a.len() + self.b.len()
    }

    fn byte(&self, i: usize) -> u8 {
        if i < self.a.len() {
            self.a[i]
        } else {
            self.b[i - self.a.len()]
        }
    }

    /// Big-endian u32 at `i`, or `None` if the bytes have not arrived.
    fn u32_at(&self, i: usize) -> Option<u32> {
        (i + 4 <= self.len()).then(|| {
            u32::from_be_bytes([
                self.byte(i),
                self.byte(i + 1),
                self.byte(i + 2),
                self.byte(i + 3),
            ])
        })
    }
}

/// Total header length if `pending ++ chunk` holds the complete header.
fn measure_header(pending: &[u8], chunk: &[u8]) -> Result<Option<usize>, CopyBinaryError> {
    let j = Joined {
        a: pending,
        b: chunk,
    };
    let n = j.len().min(SIGNATURE.len());
    if (0..n).any(|i| j.byte(i) != SIGNATURE[i]) {
        return Err(CopyBinaryError::BadSignature);
    }
    let Some(flags) = j.u32_at(11) else {
        return Ok(None);
    };
    if flags & (FLAGS_CRITICAL | FLAG_WITH_OIDS) != 0 {
        return Err(CopyBinaryError::UnsupportedFlags(flags));
    }
    let Some(ext) = j.u32_at(15) else {
        return Ok(None);
    };
    let total = FIXED_HEADER_LEN + ext as usize;
    Ok((j.len() >= total).then_some(total))
}

/// Total length of the tuple (or trailer) starting `pending ++ chunk`, if it is complete.
/// Field count against the expectation is checked later, by `scan_tuple`.
fn measure_tuple(
    pending: &[u8],
    chunk: &[u8],
    row_index: u64,
) -> Result<Option<usize>, CopyBinaryError> {
    let row = row_index + 1;
    let j = Joined {
        a: pending,
        b: chunk,
    };
    if j.len() < 2 {
        return Ok(None);
    }
    let count = i16::from_be_bytes([j.byte(0), j.byte(1)]);
    if count == -1 {
        return Ok(Some(2));
    }
    if count < 0 {
        return Err(CopyBinaryError::BadFieldCount { row, count });
    }
    let mut pos = 2usize;
    for field in 0..count as usize {
        let Some(len) = j.u32_at(pos) else {
            return Ok(None);
        };
        let len = len as i32;
        pos += 4;
        if len == -1 {
            continue;
        }
        if len < 0 {
            return Err(CopyBinaryError::BadFieldLength { row, field, len });
        }
        pos += len as usize;
        if pos > j.len() {
            return Ok(None);
        }
    }
    Ok(Some(pos))
}

#[cfg(test)]
mod tests {
    use super::*;

    type Row = Vec<Option<Vec<u8>>>;

    fn header() -> Vec<u8> {
        let mut v = SIGNATURE.to_vec();
        v.extend_from_slice(&0u32.to_be_bytes());
        v.extend_from_slice(&0u32.to_be_bytes());
        v
    }

    fn tuple(out: &mut Vec<u8>, fields: &[Option<&[u8]>]) {
        out.extend_from_slice(&(fields.len() as i16).to_be_bytes());
        for f in fields {
            match f {
                None => out.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    out.extend_from_slice(b);
                }
            }
        }
    }

    fn trailer(out: &mut Vec<u8>) {
        out.extend_from_slice(&(-1i16).to_be_bytes());
    }

    fn sample_stream() -> Vec<u8> {
        let mut s = header();
        tuple(&mut s, &[Some(b"abc"), None, Some(b"")]);
        tuple(&mut s, &[None, None, None]);
        tuple(&mut s, &[Some(&[0u8; 300]), Some(b"\xff\x00"), Some(b"x")]);
        trailer(&mut s);
        s
    }

    fn parse_chunks<'a>(
        mut parser: CopyBinaryParser,
        chunks: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<(Vec<Row>, u64), CopyBinaryError> {
        let mut rows = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, |fields| {
                rows.push(fields.iter().map(|f| f.map(<[u8]>::to_vec)).collect());
                Ok::<(), CopyBinaryError>(())
            })?;
        }
        let n = parser.finish()?;
        Ok((rows, n))
    }

    fn expected_rows() -> Vec<Row> {
        vec![
            vec![Some(b"abc".to_vec()), None, Some(vec![])],
            vec![None, None, None],
            vec![
                Some(vec![0u8; 300]),
                Some(vec![0xff, 0]),
                Some(b"x".to_vec()),
            ],
        ]
    }

    #[test]
    fn whole_stream_in_one_chunk() {
        let s = sample_stream();
        let (rows, n) = parse_chunks(CopyBinaryParser::new(), [&s[..]]).unwrap();
        assert_eq!(rows, expected_rows());
        assert_eq!(n, 3);
    }

    #[test]
    fn field_slice_allocation_is_recycled() {
        let s = sample_stream();
        let mut p = CopyBinaryParser::new();
        p.feed(&s[..s.len() - 2], |_| Ok::<(), CopyBinaryError>(()))
            .unwrap();
        // The in-place collect in `feed` kept the Vec that held the rows' fields.
        assert!(p.slots.capacity() >= 3, "{}", p.slots.capacity());
        assert!(p.slots.is_empty());
    }

    #[test]
    fn byte_by_byte_matches_whole() {
        let s = sample_stream();
        let (rows, n) = parse_chunks(CopyBinaryParser::new(), s.chunks(1)).unwrap();
        assert_eq!(rows, expected_rows());
        assert_eq!(n, 3);
    }

    #[test]
    fn every_split_point_and_chunk_size() {
        let s = sample_stream();
        for cut in 0..=s.len() {
            let (a, b) = s.split_at(cut);
            let (rows, n) = parse_chunks(CopyBinaryParser::new(), [a, b]).unwrap();
            assert_eq!((rows, n), (expected_rows(), 3), "cut at {cut}");
        }
        for size in 1..40 {
            let (rows, _) =
                parse_chunks(CopyBinaryParser::with_expected_fields(3), s.chunks(size)).unwrap();
            assert_eq!(rows, expected_rows(), "chunk size {size}");
        }
    }

    #[test]
    fn empty_chunks_are_harmless() {
        let s = sample_stream();
        let chunks = [&[][..], &s[..5], &[], &s[5..40], &[], &s[40..], &[]];
        let (rows, _) = parse_chunks(CopyBinaryParser::new(), chunks).unwrap();
        assert_eq!(rows, expected_rows());
    }

    #[test]
    fn header_extension_is_skipped() {
        let mut s = SIGNATURE.to_vec();
        s.extend_from_slice(&0x0000_ffffu32.to_be_bytes()); // non-critical flag bits are ignored
        s.extend_from_slice(&5u32.to_be_bytes());
        s.extend_from_slice(b"12345");
        tuple(&mut s, &[Some(b"v")]);
        trailer(&mut s);
        for size in [1, 3, 7, s.len()] {
            let (rows, n) = parse_chunks(CopyBinaryParser::new(), s.chunks(size)).unwrap();
            assert_eq!(rows, vec![vec![Some(b"v".to_vec())]]);
            assert_eq!(n, 1);
        }
    }

    #[test]
    fn zero_rows_and_zero_columns() {
        let mut s = header();
        trailer(&mut s);
        assert_eq!(
            parse_chunks(CopyBinaryParser::new(), [&s[..]]).unwrap().1,
            0
        );

        let mut s = header();
        tuple(&mut s, &[]);
        tuple(&mut s, &[]);
        trailer(&mut s);
        let (rows, n) = parse_chunks(CopyBinaryParser::new(), s.chunks(1)).unwrap();
        assert_eq!(rows, vec![Vec::<Option<Vec<u8>>>::new(); 2]);
        assert_eq!(n, 2);
    }

    #[test]
    fn truncated_streams_error() {
        let s = sample_stream();
        for cut in 0..s.len() {
            let err = parse_chunks(CopyBinaryParser::new(), s[..cut].chunks(7)).unwrap_err();
            assert!(
                matches!(err, CopyBinaryError::Truncated(_)),
                "cut {cut}: {err:?}"
            );
        }
        let err = parse_chunks(CopyBinaryParser::new(), [&s[..5]]).unwrap_err();
        assert_eq!(err, CopyBinaryError::Truncated("ended inside the header"));
        let err = parse_chunks(CopyBinaryParser::new(), [&s[..s.len() - 2]]).unwrap_err();
        assert_eq!(
            err,
            CopyBinaryError::Truncated("ended without the end-of-data trailer")
        );
        let err = parse_chunks(CopyBinaryParser::new(), [&s[..s.len() - 3]]).unwrap_err();
        assert_eq!(err, CopyBinaryError::Truncated("ended inside a row"));
        assert!(err.to_string().contains("truncated"));
    }

    #[test]
    fn bad_signature() {
        let mut s = sample_stream();
        s[3] = b'X';
        for size in [1, 2, 100] {
            let err = parse_chunks(CopyBinaryParser::new(), s.chunks(size)).unwrap_err();
            assert_eq!(err, CopyBinaryError::BadSignature);
        }
        // Text-format COPY output is rejected at the first differing byte.
        let err = parse_chunks(CopyBinaryParser::new(), [&b"1\tabc\n"[..]]).unwrap_err();
        assert_eq!(err, CopyBinaryError::BadSignature);
    }

    #[test]
    fn oids_and_critical_flags_rejected() {
        for flags in [1u32 << 16, 1 << 20] {
            let mut s = SIGNATURE.to_vec();
            s.extend_from_slice(&flags.to_be_bytes());
            s.extend_from_slice(&0u32.to_be_bytes());
            let err = parse_chunks(CopyBinaryParser::new(), [&s[..]]).unwrap_err();
            assert_eq!(err, CopyBinaryError::UnsupportedFlags(flags));
        }
    }

    #[test]
    fn field_count_mismatch() {
        let mut s = header();
        tuple(&mut s, &[Some(b"a"), Some(b"b")]);
        trailer(&mut s);
        let err = parse_chunks(CopyBinaryParser::with_expected_fields(3), [&s[..]]).unwrap_err();
        assert_eq!(
            err,
            CopyBinaryError::FieldCount {
                row: 1,
                found: 2,
                expected: 3
            }
        );
        assert_eq!(err.to_string(), "binary COPY row 1: 2 fields, expected 3");

        // Without an expectation the first row sets the width.
        let mut s = header();
        tuple(&mut s, &[Some(b"a"), Some(b"b")]);
        tuple(&mut s, &[Some(b"a")]);
        trailer(&mut s);
        for size in [1, 100] {
            let err = parse_chunks(CopyBinaryParser::new(), s.chunks(size)).unwrap_err();
            assert!(
                matches!(
                    err,
                    CopyBinaryError::FieldCount {
                        row: 2,
                        found: 1,
                        expected: 2
                    }
                ),
                "{err:?}"
            );
        }
    }

    #[test]
    fn bad_lengths_and_counts() {
        let mut s = header();
        s.extend_from_slice(&1i16.to_be_bytes());
        s.extend_from_slice(&(-2i32).to_be_bytes());
        for size in [1, 100] {
            let err = parse_chunks(CopyBinaryParser::new(), s.chunks(size)).unwrap_err();
            assert_eq!(
                err,
                CopyBinaryError::BadFieldLength {
                    row: 1,
                    field: 0,
                    len: -2
                }
            );
        }
        let mut s = header();
        s.extend_from_slice(&(-5i16).to_be_bytes());
        let err = parse_chunks(CopyBinaryParser::new(), [&s[..]]).unwrap_err();
        assert_eq!(err, CopyBinaryError::BadFieldCount { row: 1, count: -5 });
    }

    #[test]
    fn data_after_trailer_is_rejected() {
        let mut s = sample_stream();
        s.extend_from_slice(b"zz");
        let err = parse_chunks(CopyBinaryParser::new(), [&s[..]]).unwrap_err();
        assert_eq!(err, CopyBinaryError::TrailingData(2));
        let err = parse_chunks(CopyBinaryParser::new(), s.chunks(1)).unwrap_err();
        assert_eq!(err, CopyBinaryError::TrailingData(1));
    }

    #[test]
    fn callback_error_stops_and_poisons() {
        let s = sample_stream();
        let mut p = CopyBinaryParser::new();
        let mut seen = 0;
        let err = p
            .feed(&s, |_| {
                seen += 1;
                if seen == 2 {
                    Err(anyhow::anyhow!("disk full"))
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert_eq!(err.to_string(), "disk full");
        assert_eq!(seen, 2);
        let again = p.feed(&[], |_| Ok::<(), anyhow::Error>(())).unwrap_err();
        assert!(again.to_string().contains("earlier error"));
        assert_eq!(p.finish(), Err(CopyBinaryError::Poisoned));
    }

    #[test]
    fn pending_buffer_holds_at_most_one_record() {
        // One large row split in 1 KiB chunks, followed by small rows: the tail buffer never
        // grows past the large row.
        let mut s = header();
        let big = vec![7u8; 100_000];
        tuple(&mut s, &[Some(&big)]);
        for _ in 0..1000 {
            tuple(&mut s, &[Some(b"small")]);
        }
        trailer(&mut s);
        let mut p = CopyBinaryParser::new();
        let mut max_pending = 0;
        let mut count = 0;
        for c in s.chunks(1024) {
            p.feed(c, |f| {
                count += 1;
                assert_eq!(f.len(), 1);
                Ok::<(), CopyBinaryError>(())
            })
            .unwrap();
            max_pending = max_pending.max(p.pending.len());
        }
        assert_eq!(p.finish().unwrap(), 1001);
        assert_eq!(count, 1001);
        assert!(max_pending <= 100_000 + 6, "{max_pending}");
    }
}
