//! PostgreSQL binary-format values -> JSON text, for the export files.
//!
//! Each column gets a [`ColumnKind`] from catalog facts ([`column_kind`]); kinds without a native
//! decoder here are selected as `::text` (or `::text[]`) so they arrive in PostgreSQL's own text
//! form and are written as JSON strings. Output conventions (the export file format):
//!
//! - NULL -> `null`; bool -> `true`/`false`; int2/4/8 -> exact JSON numbers.
//! - numeric -> JSON string in PostgreSQL's exact text form (scale kept: `"12.50"`, `"NaN"`,
//!   `"Infinity"`, `"-Infinity"`); never goes through a float.
//! - float4/float8 -> shortest round-trip JSON number (`0.1`, `1e300`, `-0`); NaN and the
//!   infinities, which JSON numbers cannot hold, as the strings `"NaN"`, `"Infinity"`,
//!   `"-Infinity"`.
//! - text-like -> JSON string (bpchar keeps its trailing blanks).
//! - uuid -> lowercase `"8-4-4-4-12"`.
//! - date -> `"YYYY-MM-DD"`; time -> `"HH:MM:SS[.ffffff]"` (fraction only when non-zero, trailing
//!   zeros trimmed, as PostgreSQL prints it); timestamp -> `"YYYY-MM-DDTHH:MM:SS.ffffff"` and
//!   timestamptz -> the same in UTC plus `Z`, always with 6 fractional digits (fixed width,
//!   lossless). Years before 1 AD get PostgreSQL's `" BC"` suffix, years past 9999 more digits
//!   (PostgreSQL reads both forms back); `"infinity"`/`"-infinity"` for the infinite values.
//! - json -> the server's text with raw CR/LF turned into spaces (they can only be insignificant
//!   whitespace) so that a row stays on one line; jsonb -> its text form. Numbers inside are
//!   copied verbatim, never parsed.
//! - bytea -> standard base64 with padding.
//! - arrays -> nested JSON arrays (`[]` when empty, `null` elements). Lower bounds other than 1
//!   cannot be expressed in JSON and are dropped.

use std::io::Write as _;

use thiserror::Error;

use crate::pg_oid;

/// What the catalog says about a column's type (one row of `pg_type`, seen from the column).
///
/// A query that fills it:
/// `SELECT t.oid, format_type(a.atttypid, a.atttypmod), t.typtype, t.typcategory,
///  NULLIF(t.typbasetype, 0) FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid ...`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgType {
    pub oid: u32,
    /// `format_type()` text, e.g. `numeric(6,2)`, `text[]`; informational only.
    pub name: String,
    /// `pg_type.typtype`: b(ase), c(omposite), d(omain), e(num), p(seudo), r(ange), m(ultirange).
    pub typtype: char,
    /// `pg_type.typcategory`; `'A'` marks arrays (and domains over arrays).
    pub category: char,
    /// For a domain, its base type (`typbasetype`). Resolve nested domains to the innermost base
    /// if you can; an unresolved base just falls back to `::text`.
    pub base_oid: Option<u32>,
}

/// How one column's binary value is turned into JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ColumnKind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    /// text, varchar, bpchar, name, and everything selected as `::text`.
    Text,
    Uuid,
    Date,
    Time,
    Timestamp,
    Timestamptz,
    Json,
    Jsonb,
    Bytea,
    /// Element kind; never itself an `Array`.
    Array(Box<ColumnKind>),
}

impl ColumnKind {
    pub fn name(&self) -> &'static str {
        match self {
            ColumnKind::Bool => "bool",
            ColumnKind::Int2 => "int2",
            ColumnKind::Int4 => "int4",
            ColumnKind::Int8 => "int8",
            ColumnKind::Float4 => "float4",
            ColumnKind::Float8 => "float8",
            ColumnKind::Numeric => "numeric",
            ColumnKind::Text => "text",
            ColumnKind::Uuid => "uuid",
            ColumnKind::Date => "date",
            ColumnKind::Time => "time",
            ColumnKind::Timestamp => "timestamp",
            ColumnKind::Timestamptz => "timestamptz",
            ColumnKind::Json => "json",
            ColumnKind::Jsonb => "jsonb",
            ColumnKind::Bytea => "bytea",
            ColumnKind::Array(_) => "array",
        }
    }
}

/// The cast the export's select list applies to a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cast {
    None,
    Text,
    TextArray,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    #[error("{kind} value has {got} bytes, expected {expected}")]
    Length {
        kind: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("invalid {kind} value: {reason}")]
    Invalid { kind: &'static str, reason: String },
}

fn invalid(kind: &'static str, reason: impl Into<String>) -> CodecError {
    CodecError::Invalid {
        kind,
        reason: reason.into(),
    }
}

/// Kinds decoded natively, by built-in type OID (built-in OIDs are fixed across servers).
fn scalar_kind(oid: u32) -> Option<ColumnKind> {
    Some(match oid {
        pg_oid::BOOL => ColumnKind::Bool,
        pg_oid::INT2 => ColumnKind::Int2,
        pg_oid::INT4 => ColumnKind::Int4,
        pg_oid::INT8 => ColumnKind::Int8,
        pg_oid::FLOAT4 => ColumnKind::Float4,
        pg_oid::FLOAT8 => ColumnKind::Float8,
        pg_oid::NUMERIC => ColumnKind::Numeric,
        // text, varchar, bpchar, name: binary form is the plain string.
        pg_oid::TEXT | pg_oid::VARCHAR | pg_oid::BPCHAR | pg_oid::NAME => ColumnKind::Text,
        pg_oid::UUID => ColumnKind::Uuid,
        pg_oid::DATE => ColumnKind::Date,
        pg_oid::TIME => ColumnKind::Time,
        pg_oid::TIMESTAMP => ColumnKind::Timestamp,
        pg_oid::TIMESTAMPTZ => ColumnKind::Timestamptz,
        pg_oid::JSON => ColumnKind::Json,
        pg_oid::JSONB => ColumnKind::Jsonb,
        pg_oid::BYTEA => ColumnKind::Bytea,
        _ => return None,
    })
}

/// Element type OID of the built-in array types of the natively decoded kinds.
fn array_elem_oid(oid: u32) -> Option<u32> {
    Some(match oid {
        pg_oid::BOOL_ARRAY => pg_oid::BOOL,
        pg_oid::INT2_ARRAY => pg_oid::INT2,
        pg_oid::INT4_ARRAY => pg_oid::INT4,
        pg_oid::INT8_ARRAY => pg_oid::INT8,
        pg_oid::FLOAT4_ARRAY => pg_oid::FLOAT4,
        pg_oid::FLOAT8_ARRAY => pg_oid::FLOAT8,
        pg_oid::NUMERIC_ARRAY => pg_oid::NUMERIC,
        pg_oid::TEXT_ARRAY => pg_oid::TEXT,
        pg_oid::VARCHAR_ARRAY => pg_oid::VARCHAR,
        pg_oid::BPCHAR_ARRAY => pg_oid::BPCHAR,
        pg_oid::NAME_ARRAY => pg_oid::NAME,
        pg_oid::UUID_ARRAY => pg_oid::UUID,
        pg_oid::DATE_ARRAY => pg_oid::DATE,
        pg_oid::TIME_ARRAY => pg_oid::TIME,
        pg_oid::TIMESTAMP_ARRAY => pg_oid::TIMESTAMP,
        pg_oid::TIMESTAMPTZ_ARRAY => pg_oid::TIMESTAMPTZ,
        pg_oid::JSON_ARRAY => pg_oid::JSON,
        pg_oid::JSONB_ARRAY => pg_oid::JSONB,
        pg_oid::BYTEA_ARRAY => pg_oid::BYTEA,
        _ => return None,
    })
}

/// The natively decoded kind of a built-in type OID (scalar or array), if any.
pub fn builtin_kind(oid: u32) -> Option<ColumnKind> {
    scalar_kind(oid).or_else(|| {
        array_elem_oid(oid)
            .and_then(scalar_kind)
            .map(|e| ColumnKind::Array(Box::new(e)))
    })
}

/// Chooses the decoder for a column and the cast its select expression needs.
///
/// Domains need no cast when their base is decoded natively: a domain's binary send function is
/// its base type's, so the bytes are identical.
pub fn column_kind(ty: &PgType) -> (ColumnKind, Cast) {
    let native = if ty.typtype == 'd' {
        ty.base_oid.and_then(builtin_kind)
    } else {
        builtin_kind(ty.oid)
    };
    match native {
        Some(kind) => (kind, Cast::None),
        None if ty.category == 'A' || ty.name.ends_with("[]") => (
            ColumnKind::Array(Box::new(ColumnKind::Text)),
            Cast::TextArray,
        ),
        None => (ColumnKind::Text, Cast::Text),
    }
}

/// The select-list expression for a column (`quoted_column` is already an SQL identifier).
pub fn select_expr(quoted_column: &str, cast: Cast) -> String {
    match cast {
        Cast::None => quoted_column.to_owned(),
        Cast::Text => format!("{quoted_column}::text"),
        Cast::TextArray => format!("{quoted_column}::text[]"),
    }
}

/// `"name":` with the name JSON-escaped: the per-column key prefix of an export row.
pub fn json_key(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(name.len() + 3);
    write_json_string(&mut out, name.as_bytes());
    out.push(b':');
    out
}

/// Appends the JSON text of one binary-format value (`None` = SQL NULL).
pub fn write_json_value(
    out: &mut Vec<u8>,
    kind: &ColumnKind,
    raw: Option<&[u8]>,
) -> Result<(), CodecError> {
    let Some(raw) = raw else {
        out.extend_from_slice(b"null");
        return Ok(());
    };
    match kind {
        ColumnKind::Bool => match fixed::<1>(kind, raw)? {
            [0] => out.extend_from_slice(b"false"),
            [1] => out.extend_from_slice(b"true"),
            [b] => return Err(invalid("bool", format!("byte {b}"))),
        },
        ColumnKind::Int2 => write_i64(out, i16::from_be_bytes(fixed(kind, raw)?).into()),
        ColumnKind::Int4 => write_i64(out, i32::from_be_bytes(fixed(kind, raw)?).into()),
        ColumnKind::Int8 => write_i64(out, i64::from_be_bytes(fixed(kind, raw)?)),
        ColumnKind::Float4 => write_f32(out, f32::from_be_bytes(fixed(kind, raw)?)),
        ColumnKind::Float8 => write_f64(out, f64::from_be_bytes(fixed(kind, raw)?)),
        ColumnKind::Numeric => write_numeric(out, raw)?,
        ColumnKind::Text => write_json_string(out, utf8("text", raw)?.as_bytes()),
        ColumnKind::Uuid => write_uuid(out, &fixed(kind, raw)?),
        ColumnKind::Date => write_date(out, i32::from_be_bytes(fixed(kind, raw)?)),
        ColumnKind::Time => write_time(out, i64::from_be_bytes(fixed(kind, raw)?))?,
        ColumnKind::Timestamp => write_timestamp(out, i64::from_be_bytes(fixed(kind, raw)?), false),
        ColumnKind::Timestamptz => {
            write_timestamp(out, i64::from_be_bytes(fixed(kind, raw)?), true)
        }
        ColumnKind::Json => write_json_text(out, "json", raw)?,
        ColumnKind::Jsonb => match raw.split_first() {
            Some((1, text)) => write_json_text(out, "jsonb", text)?,
            Some((v, _)) => return Err(invalid("jsonb", format!("unknown format version {v}"))),
            None => return Err(invalid("jsonb", "empty value")),
        },
        ColumnKind::Bytea => write_base64_string(out, raw),
        ColumnKind::Array(elem) => write_array(out, elem, raw)?,
    }
    Ok(())
}

fn fixed<const N: usize>(kind: &ColumnKind, raw: &[u8]) -> Result<[u8; N], CodecError> {
    raw.try_into().map_err(|_| CodecError::Length {
        kind: kind.name(),
        expected: N,
        got: raw.len(),
    })
}

fn utf8<'a>(kind: &'static str, raw: &'a [u8]) -> Result<&'a str, CodecError> {
    std::str::from_utf8(raw).map_err(|e| invalid(kind, format!("not UTF-8 ({e})")))
}

// ---------------------------------------------------------------------------------------------
// Numbers

const DIGIT_PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

fn write_u64(out: &mut Vec<u8>, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        i -= 2;
        buf[i..i + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        i -= 1;
        buf[i] = b'0' + n as u8;
    }
    out.extend_from_slice(&buf[i..]);
}

fn write_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    write_u64(out, n.unsigned_abs());
}

/// Exactly two digits (`n` < 100).
fn write_2(out: &mut Vec<u8>, n: u32) {
    let pair = n as usize * 2;
    out.extend_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
}

/// Exactly six digits (`n` < 1_000_000): a microsecond fraction.
fn write_6(out: &mut Vec<u8>, n: u32) {
    write_2(out, n / 10_000);
    write_2(out, n / 100 % 100);
    write_2(out, n % 100);
}

// Decimal notation where it is short, exponent notation outside (like JavaScript); both are
// Rust's shortest round-trip digits and valid JSON numbers.
fn write_f64(out: &mut Vec<u8>, v: f64) {
    if !v.is_finite() {
        return write_non_finite(out, v.is_nan(), v > 0.0);
    }
    let a = v.abs();
    if a == 0.0 || (1e-7..1e21).contains(&a) {
        let _ = write!(out, "{v}");
    } else {
        let _ = write!(out, "{v:e}");
    }
}

fn write_f32(out: &mut Vec<u8>, v: f32) {
    if !v.is_finite() {
        return write_non_finite(out, v.is_nan(), v > 0.0);
    }
    let a = v.abs();
    if a == 0.0 || (1e-7..1e21).contains(&a) {
        let _ = write!(out, "{v}");
    } else {
        let _ = write!(out, "{v:e}");
    }
}

fn write_non_finite(out: &mut Vec<u8>, nan: bool, positive: bool) {
    out.extend_from_slice(match (nan, positive) {
        (true, _) => b"\"NaN\"",
        (false, true) => b"\"Infinity\"",
        (false, false) => b"\"-Infinity\"",
    });
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;
const NUMERIC_DSCALE_MASK: u16 = 0x3FFF;

/// Binary numeric (base-10000 digits) -> its text form, exactly as PostgreSQL's
/// `get_str_from_var` prints it, as a JSON string.
fn write_numeric(out: &mut Vec<u8>, raw: &[u8]) -> Result<(), CodecError> {
    if raw.len() < 8 {
        return Err(invalid("numeric", format!("{} bytes", raw.len())));
    }
    let ndigits = i16::from_be_bytes([raw[0], raw[1]]);
    let weight = i64::from(i16::from_be_bytes([raw[2], raw[3]]));
    let sign = u16::from_be_bytes([raw[4], raw[5]]);
    let dscale = u16::from_be_bytes([raw[6], raw[7]]);
    if ndigits < 0 || raw.len() != 8 + 2 * ndigits as usize {
        return Err(invalid(
            "numeric",
            format!("{} bytes for {ndigits} digits", raw.len()),
        ));
    }
    let special: &[u8] = match sign {
        NUMERIC_POS | NUMERIC_NEG => b"",
        NUMERIC_NAN => b"\"NaN\"",
        NUMERIC_PINF => b"\"Infinity\"",
        NUMERIC_NINF => b"\"-Infinity\"",
        _ => return Err(invalid("numeric", format!("sign {sign:#06x}"))),
    };
    if !special.is_empty() {
        out.extend_from_slice(special);
        return Ok(());
    }
    if dscale & !NUMERIC_DSCALE_MASK != 0 {
        return Err(invalid("numeric", format!("scale {dscale:#06x}")));
    }
    let digits = &raw[8..];
    let ndigits = i64::from(ndigits);
    let digit = |d: i64| -> Result<u32, CodecError> {
        if d < 0 || d >= ndigits {
            return Ok(0);
        }
        let i = d as usize * 2;
        let v = u16::from_be_bytes([digits[i], digits[i + 1]]);
        if v >= 10000 {
            return Err(invalid("numeric", format!("base-10000 digit {v}")));
        }
        Ok(u32::from(v))
    };
    // Every stored digit must be valid, even those the scale hides.
    for d in 0..ndigits {
        digit(d)?;
    }

    out.push(b'"');
    if sign == NUMERIC_NEG {
        out.push(b'-');
    }
    // Integer part: groups 0..=weight, the first without leading zeros.
    let mut d: i64;
    if weight < 0 {
        d = weight + 1;
        out.push(b'0');
    } else {
        write_u64(out, u64::from(digit(0)?));
        d = 1;
        while d <= weight {
            write_4(out, digit(d)?);
            d += 1;
        }
    }
    // Fraction: dscale digits from group weight+1 on, the last group cut to fit.
    if dscale > 0 {
        out.push(b'.');
        let mut left = usize::from(dscale);
        while left > 0 {
            let mut group = [0u8; 4];
            let g = digit(d)?;
            group[..2].copy_from_slice(&DIGIT_PAIRS[(g / 100) as usize * 2..][..2]);
            group[2..].copy_from_slice(&DIGIT_PAIRS[(g % 100) as usize * 2..][..2]);
            let n = left.min(4);
            out.extend_from_slice(&group[..n]);
            left -= n;
            d += 1;
        }
    }
    out.push(b'"');
    Ok(())
}

/// Exactly four digits (`n` < 10000).
fn write_4(out: &mut Vec<u8>, n: u32) {
    write_2(out, n / 100);
    write_2(out, n % 100);
}

// ---------------------------------------------------------------------------------------------
// Strings

/// Per byte: 0 = copy as is, otherwise the character after the backslash (`u` = `\u00XX`).
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0A] = b'n';
    t[0x0C] = b'f';
    t[0x0D] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Writes `s` (UTF-8) as a JSON string; copies runs of plain bytes in one go.
fn write_json_string(out: &mut Vec<u8>, s: &[u8]) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in s.iter().enumerate() {
        let esc = ESCAPE[b as usize];
        if esc == 0 {
            continue;
        }
        out.extend_from_slice(&s[start..i]);
        if esc == b'u' {
            out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[(b >> 4) as usize],
                HEX[(b & 0xF) as usize],
            ]);
        } else {
            out.extend_from_slice(&[b'\\', esc]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

/// json/jsonb text is embedded as is, on one line. It was validated by the server; this only
/// guards against writing something that cannot be a JSON value at all.
fn write_json_text(out: &mut Vec<u8>, kind: &'static str, raw: &[u8]) -> Result<(), CodecError> {
    let text = utf8(kind, raw)?;
    match text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .bytes()
        .next()
    {
        Some(b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n') => {}
        Some(_) => return Err(invalid(kind, "does not start like a JSON value")),
        None => return Err(invalid(kind, "empty")),
    }
    let start = out.len();
    out.extend_from_slice(raw);
    // Raw CR/LF can only be whitespace between tokens (JSON strings must escape them).
    for b in &mut out[start..] {
        if *b == b'\n' || *b == b'\r' {
            *b = b' ';
        }
    }
    Ok(())
}

/// Standard base64 with padding.
pub fn base64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Standard base64 with padding, as a JSON string (the alphabet needs no escaping).
fn write_base64_string(out: &mut Vec<u8>, data: &[u8]) {
    use base64::Engine as _;
    let start = out.len() + 1;
    let len = base64::encoded_len(data.len(), true).expect("a bytea value fits in memory");
    out.resize(start + len, b'"');
    base64::engine::general_purpose::STANDARD
        .encode_slice(data, &mut out[start..])
        .expect("the slice has the encoded length");
    out.push(b'"');
}

fn write_uuid(out: &mut Vec<u8>, b: &[u8; 16]) {
    // Where each byte's two hex digits go in `"8-4-4-4-12"` (fixed, so no per-byte branching).
    const AT: [usize; 16] = [1, 3, 5, 7, 10, 12, 15, 17, 20, 22, 25, 27, 29, 31, 33, 35];
    let mut s = *b"\"00000000-0000-0000-0000-000000000000\"";
    for (&at, &byte) in AT.iter().zip(b) {
        s[at] = HEX[(byte >> 4) as usize];
        s[at + 1] = HEX[(byte & 0xF) as usize];
    }
    out.extend_from_slice(&s);
}

// ---------------------------------------------------------------------------------------------
// Dates and times

const USECS_PER_SEC: i64 = 1_000_000;
const USECS_PER_DAY: i64 = 86_400 * USECS_PER_SEC;
/// Days from 1970-01-01 to PostgreSQL's epoch 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// Proleptic Gregorian (year, month, day) of a day count from 1970-01-01; year 0 is 1 BC.
/// Howard Hinnant's `civil_from_days`, in i64 so that no input can overflow.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = (if mp < 10 { mp + 3 } else { mp - 9 }) as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// `YYYY-MM-DD` (more year digits when needed); returns whether the date is BC.
fn write_ymd(out: &mut Vec<u8>, days_since_1970: i64) -> bool {
    let (y, m, d) = civil_from_days(days_since_1970);
    let bc = y <= 0;
    let year = (if bc { 1 - y } else { y }) as u64;
    if year < 10_000 {
        write_4(out, year as u32);
    } else {
        write_u64(out, year);
    }
    out.push(b'-');
    write_2(out, m);
    out.push(b'-');
    write_2(out, d);
    bc
}

fn write_date(out: &mut Vec<u8>, pg_days: i32) {
    match pg_days {
        i32::MAX => out.extend_from_slice(b"\"infinity\""),
        i32::MIN => out.extend_from_slice(b"\"-infinity\""),
        _ => {
            out.push(b'"');
            if write_ymd(out, i64::from(pg_days) + PG_EPOCH_DAYS) {
                out.extend_from_slice(b" BC");
            }
            out.push(b'"');
        }
    }
}

fn write_hms(out: &mut Vec<u8>, secs_of_day: i64) {
    write_2(out, (secs_of_day / 3600) as u32);
    out.push(b':');
    write_2(out, (secs_of_day / 60 % 60) as u32);
    out.push(b':');
    write_2(out, (secs_of_day % 60) as u32);
}

/// PostgreSQL's text form: fraction only when non-zero, trailing zeros trimmed.
fn write_time(out: &mut Vec<u8>, micros: i64) -> Result<(), CodecError> {
    // 24:00:00 is a valid time.
    if !(0..=USECS_PER_DAY).contains(&micros) {
        return Err(invalid("time", format!("{micros} microseconds")));
    }
    out.push(b'"');
    write_hms(out, micros / USECS_PER_SEC);
    let frac = micros % USECS_PER_SEC;
    if frac != 0 {
        out.push(b'.');
        write_6(out, frac as u32);
        let trailing_zeros = out.iter().rev().take_while(|&&b| b == b'0').count();
        out.truncate(out.len() - trailing_zeros);
    }
    out.push(b'"');
    Ok(())
}

/// ISO 8601 with a `T` and always six fractional digits; `Z` when the value is UTC.
fn write_timestamp(out: &mut Vec<u8>, micros: i64, utc: bool) {
    match micros {
        i64::MAX => out.extend_from_slice(b"\"infinity\""),
        i64::MIN => out.extend_from_slice(b"\"-infinity\""),
        _ => {
            let days = micros.div_euclid(USECS_PER_DAY);
            let of_day = micros.rem_euclid(USECS_PER_DAY);
            out.push(b'"');
            let bc = write_ymd(out, days + PG_EPOCH_DAYS);
            out.push(b'T');
            write_hms(out, of_day / USECS_PER_SEC);
            out.push(b'.');
            write_6(out, (of_day % USECS_PER_SEC) as u32);
            if utc {
                out.push(b'Z');
            }
            if bc {
                out.extend_from_slice(b" BC");
            }
            out.push(b'"');
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Arrays

/// PostgreSQL's MAXDIM.
const MAX_DIMS: usize = 6;

struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.data.len() < n {
            return Err(invalid("array", "truncated"));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn i32(&mut self) -> Result<i32, CodecError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

/// Binary array: ndim, has-null flag, element OID, (length, lower bound) per dimension, then the
/// elements in row-major order, each as length (-1 = NULL) + bytes.
fn write_array(out: &mut Vec<u8>, elem: &ColumnKind, raw: &[u8]) -> Result<(), CodecError> {
    let mut r = Reader { data: raw };
    let ndim = r.i32()?;
    let _has_nulls = r.i32()?;
    let _elem_oid = r.i32()?;
    if !(0..=MAX_DIMS as i32).contains(&ndim) {
        return Err(invalid("array", format!("{ndim} dimensions")));
    }
    let mut dims = [0usize; MAX_DIMS];
    let mut total: usize = 1;
    for dim in dims.iter_mut().take(ndim as usize) {
        let len = r.i32()?;
        let _lower_bound = r.i32()?;
        if len < 0 {
            return Err(invalid("array", format!("dimension length {len}")));
        }
        *dim = len as usize;
        total = total.saturating_mul(*dim);
    }
    if ndim == 0 {
        total = 0;
    }
    // Each element takes at least its 4-byte length: reject absurd sizes before looping.
    if total > r.data.len() / 4 {
        return Err(invalid(
            "array",
            format!("{total} elements in {} bytes", raw.len()),
        ));
    }
    if ndim == 0 {
        out.extend_from_slice(b"[]");
    } else {
        write_dim(out, elem, &dims[..ndim as usize], &mut r)?;
    }
    if !r.data.is_empty() {
        return Err(invalid("array", format!("{} trailing bytes", r.data.len())));
    }
    Ok(())
}

fn write_dim(
    out: &mut Vec<u8>,
    elem: &ColumnKind,
    dims: &[usize],
    r: &mut Reader<'_>,
) -> Result<(), CodecError> {
    out.push(b'[');
    for i in 0..dims[0] {
        if i > 0 {
            out.push(b',');
        }
        if dims.len() > 1 {
            write_dim(out, elem, &dims[1..], r)?;
            continue;
        }
        let value = match r.i32()? {
            -1 => None,
            len if len < 0 => return Err(invalid("array", format!("element length {len}"))),
            len => Some(r.take(len as usize)?),
        };
        write_json_value(out, elem, value)?;
    }
    out.push(b']');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ColumnKind as K;

    fn json(kind: &ColumnKind, raw: Option<&[u8]>) -> String {
        let mut out = Vec::new();
        write_json_value(&mut out, kind, raw).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn j(kind: &ColumnKind, raw: &[u8]) -> String {
        json(kind, Some(raw))
    }

    fn err(kind: &ColumnKind, raw: &[u8]) -> CodecError {
        write_json_value(&mut Vec::new(), kind, Some(raw)).unwrap_err()
    }

    /// Output must parse as JSON (serde_json) and stay on one line.
    fn assert_valid_json(s: &str) {
        assert!(!s.contains('\n') && !s.contains('\r'), "{s}");
        serde_json::from_str::<serde_json::Value>(s).unwrap_or_else(|e| panic!("{s}: {e}"));
    }

    #[test]
    fn null_and_bool() {
        for k in [
            K::Bool,
            K::Int4,
            K::Text,
            K::Numeric,
            K::Array(Box::new(K::Int4)),
        ] {
            assert_eq!(json(&k, None), "null");
        }
        assert_eq!(j(&K::Bool, &[1]), "true");
        assert_eq!(j(&K::Bool, &[0]), "false");
        assert!(matches!(err(&K::Bool, &[2]), CodecError::Invalid { .. }));
        assert_eq!(
            err(&K::Bool, &[]),
            CodecError::Length {
                kind: "bool",
                expected: 1,
                got: 0
            }
        );
    }

    #[test]
    fn integers_exact() {
        assert_eq!(j(&K::Int2, &i16::MIN.to_be_bytes()), "-32768");
        assert_eq!(j(&K::Int2, &i16::MAX.to_be_bytes()), "32767");
        assert_eq!(j(&K::Int2, &0i16.to_be_bytes()), "0");
        assert_eq!(j(&K::Int4, &i32::MIN.to_be_bytes()), "-2147483648");
        assert_eq!(j(&K::Int4, &i32::MAX.to_be_bytes()), "2147483647");
        assert_eq!(j(&K::Int4, &(-7i32).to_be_bytes()), "-7");
        assert_eq!(j(&K::Int8, &i64::MIN.to_be_bytes()), "-9223372036854775808");
        assert_eq!(j(&K::Int8, &i64::MAX.to_be_bytes()), "9223372036854775807");
        for n in [
            0i64,
            1,
            9,
            10,
            99,
            100,
            101,
            999,
            1000,
            12345,
            1_000_000_007,
            -10,
            -100,
        ] {
            assert_eq!(j(&K::Int8, &n.to_be_bytes()), n.to_string());
        }
        assert!(matches!(err(&K::Int8, &[0; 4]), CodecError::Length { .. }));
    }

    #[test]
    fn floats_shortest_round_trip() {
        let f8 = |v: f64| j(&K::Float8, &v.to_be_bytes());
        let f4 = |v: f32| j(&K::Float4, &v.to_be_bytes());
        assert_eq!(f8(0.1), "0.1");
        assert_eq!(f8(3.0), "3");
        assert_eq!(f8(-0.0), "-0");
        assert_eq!(f8(0.0), "0");
        assert_eq!(f8(1e300), "1e300");
        assert_eq!(f8(-1.5e-300), "-1.5e-300");
        assert_eq!(f8(1e-310), "1e-310");
        assert_eq!(f8(5e-324), "5e-324");
        assert_eq!(f8(f64::MAX), "1.7976931348623157e308");
        assert_eq!(f8(123456.789), "123456.789");
        assert_eq!(f8(1e20), "100000000000000000000");
        assert_eq!(f8(1e21), "1e21");
        assert_eq!(f8(1e-7), "0.0000001");
        assert_eq!(f8(1.5e-8), "1.5e-8");
        assert_eq!(f8(f64::NAN), "\"NaN\"");
        assert_eq!(f8(f64::INFINITY), "\"Infinity\"");
        assert_eq!(f8(f64::NEG_INFINITY), "\"-Infinity\"");
        assert_eq!(f4(0.1), "0.1");
        assert_eq!(f4(3.4028235e38), "3.4028235e38");
        assert_eq!(f4(1e-45), "1e-45");
        assert_eq!(f4(-0.0), "-0");
        assert_eq!(f4(f32::NAN), "\"NaN\"");
        assert_eq!(f4(f32::NEG_INFINITY), "\"-Infinity\"");
        // Every finite output parses back to the same bits.
        for v in [
            0.1,
            1e300,
            1e-310,
            5e-324,
            f64::MAX,
            f64::MIN_POSITIVE,
            2.0f64.powi(60),
            1.0 / 3.0,
        ] {
            let s = f8(v);
            assert_valid_json(&s);
            assert_eq!(s.parse::<f64>().unwrap().to_bits(), v.to_bits(), "{s}");
        }
        for v in [0.1f32, 3.4028235e38, 1e-45, 16777217.0, 1.0 / 3.0] {
            let s = f4(v);
            assert_valid_json(&s);
            assert_eq!(s.parse::<f32>().unwrap().to_bits(), v.to_bits(), "{s}");
        }
    }

    /// Binary numeric from sign, weight, dscale and base-10000 digits.
    fn num(sign: u16, weight: i16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(digits.len() as i16).to_be_bytes());
        v.extend_from_slice(&weight.to_be_bytes());
        v.extend_from_slice(&sign.to_be_bytes());
        v.extend_from_slice(&dscale.to_be_bytes());
        for d in digits {
            v.extend_from_slice(&d.to_be_bytes());
        }
        v
    }

    #[test]
    fn numeric_text_form() {
        // Expected strings are what PostgreSQL 15 prints for the same values.
        let n = |sign, weight, dscale, digits: &[u16]| {
            j(&K::Numeric, &num(sign, weight, dscale, digits))
        };
        assert_eq!(n(0, 0, 2, &[12, 5000]), "\"12.50\"");
        assert_eq!(n(0, 0, 0, &[]), "\"0\"");
        assert_eq!(n(0, 0, 2, &[]), "\"0.00\"");
        assert_eq!(n(0x4000, -1, 3, &[10]), "\"-0.001\"");
        assert_eq!(
            n(
                0,
                4,
                18,
                &[1234, 5678, 9012, 3456, 7890, 1234, 5678, 9012, 3456, 7800]
            ),
            "\"12345678901234567890.123456789012345678\""
        );
        assert_eq!(n(0, -5, 20, &[1]), "\"0.00000000000000000001\"");
        assert_eq!(n(0, 2, 3, &[1]), "\"100000000.000\"");
        assert_eq!(n(0, 5, 0, &[1]), "\"100000000000000000000\"");
        assert_eq!(n(0x4000, 0, 0, &[7]), "\"-7\"");
        assert_eq!(n(0, 1, 1, &[1, 0, 1000]), "\"10000.1\"");
        assert_eq!(n(0, 0, 5, &[3, 1415, 9000]), "\"3.14159\"");
        assert_eq!(n(0xC000, 0, 0, &[]), "\"NaN\"");
        assert_eq!(n(0xD000, 0, 0, &[]), "\"Infinity\"");
        assert_eq!(n(0xF000, 0, 0, &[]), "\"-Infinity\"");
        // Huge scale and weight stay exact.
        let big = n(0, 100, 0, &[9999]);
        assert_eq!(big, format!("\"9999{}\"", "0".repeat(400)));

        assert!(matches!(
            err(&K::Numeric, &num(0x1234, 0, 0, &[])),
            CodecError::Invalid { .. }
        ));
        assert!(matches!(
            err(&K::Numeric, &num(0, 0, 0, &[10000])),
            CodecError::Invalid { .. }
        ));
        assert!(matches!(
            err(&K::Numeric, &num(0, 0, 0x4000, &[1])),
            CodecError::Invalid { .. }
        ));
        assert!(matches!(
            err(&K::Numeric, &[0, 1, 0, 0, 0, 0, 0, 0]),
            CodecError::Invalid { .. }
        ));
        assert!(matches!(
            err(&K::Numeric, &[0, 0]),
            CodecError::Invalid { .. }
        ));
    }

    #[test]
    fn text_escaping() {
        let t = |s: &str| j(&K::Text, s.as_bytes());
        assert_eq!(t(""), "\"\"");
        assert_eq!(t("plain"), "\"plain\"");
        assert_eq!(t("a\"b\\c/d"), r#""a\"b\\c/d""#);
        assert_eq!(t("é ✓ 🧊 \u{2028}"), "\"é ✓ 🧊 \u{2028}\"");
        assert_eq!(t("abc  "), "\"abc  \"", "bpchar keeps its padding");
        let controls: String = (0u8..0x20).map(char::from).collect();
        assert_eq!(
            t(&controls),
            concat!(
                r#""\u0000\u0001\u0002\u0003\u0004\u0005\u0006\u0007\b\t\n\u000b\f\r\u000e\u000f"#,
                r#"\u0010\u0011\u0012\u0013\u0014\u0015\u0016\u0017\u0018\u0019\u001a\u001b\u001c\u001d\u001e\u001f""#
            )
        );
        assert_eq!(t("\u{7f}"), "\"\u{7f}\"");
        // Round trip through a JSON parser for a mixed string.
        let s = "x\"\\\n\r\t\u{0}\u{1f}é🧊 end";
        let out = t(s);
        assert_valid_json(&out);
        assert_eq!(serde_json::from_str::<String>(&out).unwrap(), s);

        assert!(matches!(
            err(&K::Text, b"\xff\xfe"),
            CodecError::Invalid { .. }
        ));
        assert_eq!(json_key("a\"b"), br#""a\"b":"#.to_vec());
    }

    #[test]
    fn uuid_lowercase() {
        let b: [u8; 16] = [
            0xA0, 0xEE, 0xBC, 0x99, 0x9C, 0x0B, 0x4E, 0xF8, 0xBB, 0x6D, 0x6B, 0xB9, 0xBD, 0x38,
            0x0A, 0x11,
        ];
        assert_eq!(j(&K::Uuid, &b), "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\"");
        assert_eq!(
            j(&K::Uuid, &[0; 16]),
            "\"00000000-0000-0000-0000-000000000000\""
        );
        assert!(matches!(err(&K::Uuid, &[0; 15]), CodecError::Length { .. }));
    }

    fn days_since_2000(y: i32, m: u32, d: u32) -> i32 {
        let date = chrono::NaiveDate::from_ymd_opt(y, m, d).unwrap();
        (date - chrono::NaiveDate::from_ymd_opt(2000, 1, 1).unwrap()).num_days() as i32
    }

    #[test]
    fn dates() {
        let d = |days: i32| j(&K::Date, &days.to_be_bytes());
        assert_eq!(d(0), "\"2000-01-01\"");
        assert_eq!(d(-1), "\"1999-12-31\"");
        assert_eq!(d(days_since_2000(1969, 12, 31)), "\"1969-12-31\"");
        assert_eq!(d(days_since_2000(1970, 1, 1)), "\"1970-01-01\"");
        assert_eq!(d(days_since_2000(2024, 2, 29)), "\"2024-02-29\"");
        assert_eq!(d(days_since_2000(1900, 3, 1)), "\"1900-03-01\"");
        assert_eq!(d(days_since_2000(1, 1, 1)), "\"0001-01-01\"");
        // PostgreSQL: '0001-01-01'::date - 1 = '0001-12-31 BC'; chrono's year 0 is 1 BC.
        assert_eq!(d(days_since_2000(1, 1, 1) - 1), "\"0001-12-31 BC\"");
        assert_eq!(d(days_since_2000(-43, 3, 15)), "\"0044-03-15 BC\"");
        // Range limits of the date type, day numbers and text as PostgreSQL 15 gives them:
        // Julian day 0 ('J0'::date) and the largest date.
        assert_eq!(d(-2_451_545), "\"4714-11-24 BC\"");
        assert_eq!(d(2_145_031_948), "\"5874897-12-31\"");
        assert_eq!(d(days_since_2000(10000, 1, 1)), "\"10000-01-01\"");
        assert_eq!(d(i32::MAX), "\"infinity\"");
        assert_eq!(d(i32::MIN), "\"-infinity\"");
        // Out-of-range values from a broken stream still format without panicking.
        for v in [i32::MAX - 1, i32::MIN + 1] {
            assert_valid_json(&d(v));
        }
    }

    #[test]
    fn civil_matches_chrono_over_a_wide_range() {
        let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        let mut day = -800_000i64;
        while day < 3_000_000 {
            let c = epoch + chrono::Duration::days(day);
            use chrono::Datelike;
            assert_eq!(
                civil_from_days(day),
                (i64::from(c.year()), c.month(), c.day()),
                "{day}"
            );
            day += 97;
        }
    }

    fn micros(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32, us: u32) -> i64 {
        let t = chrono::NaiveDate::from_ymd_opt(y, mo, d)
            .unwrap()
            .and_hms_micro_opt(h, mi, s, us)
            .unwrap();
        let epoch = chrono::NaiveDate::from_ymd_opt(2000, 1, 1)
            .unwrap()
            .and_hms_opt(0, 0, 0)
            .unwrap();
        (t - epoch).num_microseconds().unwrap()
    }

    #[test]
    fn timestamps() {
        let ts = |v: i64| j(&K::Timestamp, &v.to_be_bytes());
        let tz = |v: i64| j(&K::Timestamptz, &v.to_be_bytes());
        assert_eq!(ts(0), "\"2000-01-01T00:00:00.000000\"");
        assert_eq!(tz(0), "\"2000-01-01T00:00:00.000000Z\"");
        assert_eq!(
            tz(micros(2024, 3, 9, 14, 5, 7, 123_456)),
            "\"2024-03-09T14:05:07.123456Z\""
        );
        assert_eq!(
            tz(micros(2024, 3, 9, 14, 5, 7, 5)),
            "\"2024-03-09T14:05:07.000005Z\""
        );
        assert_eq!(tz(-1), "\"1999-12-31T23:59:59.999999Z\"");
        assert_eq!(
            tz(micros(1970, 1, 1, 0, 0, 0, 0)),
            "\"1970-01-01T00:00:00.000000Z\""
        );
        assert_eq!(
            tz(micros(1969, 12, 31, 23, 59, 59, 999_999)),
            "\"1969-12-31T23:59:59.999999Z\""
        );
        assert_eq!(
            ts(micros(1899, 12, 31, 12, 0, 0, 1)),
            "\"1899-12-31T12:00:00.000001\""
        );
        assert_eq!(
            ts(micros(1, 1, 1, 0, 0, 0, 0)),
            "\"0001-01-01T00:00:00.000000\""
        );
        assert_eq!(
            tz(micros(-43, 3, 15, 12, 0, 0, 0)),
            "\"0044-03-15T12:00:00.000000Z BC\""
        );
        // Largest timestamp PostgreSQL accepts: 294276-12-31 23:59:59.999999.
        // ('294276-12-31'::date - '2000-01-01'::date = 106751982 in PostgreSQL 15.)
        assert_eq!(
            tz(106_751_982 * USECS_PER_DAY + USECS_PER_DAY - 1),
            "\"294276-12-31T23:59:59.999999Z\""
        );
        assert_eq!(tz(i64::MAX), "\"infinity\"");
        assert_eq!(tz(i64::MIN), "\"-infinity\"");
        assert_eq!(ts(i64::MAX), "\"infinity\"");
        assert_eq!(ts(i64::MIN), "\"-infinity\"");
        for v in [i64::MAX - 1, i64::MIN + 1] {
            assert_valid_json(&tz(v));
        }
    }

    #[test]
    fn times() {
        let t = |v: i64| j(&K::Time, &v.to_be_bytes());
        assert_eq!(t(0), "\"00:00:00\"");
        assert_eq!(t(USECS_PER_DAY - 1), "\"23:59:59.999999\"");
        assert_eq!(t(USECS_PER_DAY), "\"24:00:00\"");
        assert_eq!(t(12 * 3_600_000_000 + 500_000), "\"12:00:00.5\"");
        assert_eq!(t(3_723_000_010), "\"01:02:03.00001\"");
        assert_eq!(t(1), "\"00:00:00.000001\"");
        assert!(matches!(
            err(&K::Time, &(-1i64).to_be_bytes()),
            CodecError::Invalid { .. }
        ));
        assert!(matches!(
            err(&K::Time, &(USECS_PER_DAY + 1).to_be_bytes()),
            CodecError::Invalid { .. }
        ));
    }

    #[test]
    fn json_and_jsonb_verbatim() {
        let doc = "{\"a\": [1, 2],\r\n \"b\": \"x\\ny\",\n\"n\": 12345678901234567890, \"f\": 0.1000000000000000055}";
        let out = j(&K::Json, doc.as_bytes());
        assert_eq!(
            out,
            "{\"a\": [1, 2],   \"b\": \"x\\ny\", \"n\": 12345678901234567890, \"f\": 0.1000000000000000055}"
        );
        assert_valid_json(&out);

        let mut jb = vec![1u8];
        jb.extend_from_slice(br#"{"f": 0.1000000000000000055, "n": 12345678901234567890}"#);
        assert_eq!(
            j(&K::Jsonb, &jb),
            r#"{"f": 0.1000000000000000055, "n": 12345678901234567890}"#
        );
        assert_eq!(j(&K::Jsonb, b"\x01\"str\""), "\"str\"");
        assert_eq!(j(&K::Jsonb, b"\x01null"), "null");
        assert_eq!(j(&K::Json, b" -1"), " -1");

        assert!(matches!(
            err(&K::Jsonb, b"\x02{}"),
            CodecError::Invalid { .. }
        ));
        assert!(matches!(err(&K::Jsonb, b""), CodecError::Invalid { .. }));
        assert!(matches!(
            err(&K::Jsonb, b"\x01"),
            CodecError::Invalid { .. }
        ));
        assert!(matches!(err(&K::Json, b" \n "), CodecError::Invalid { .. }));
        assert!(matches!(err(&K::Json, b"<x/>"), CodecError::Invalid { .. }));
        assert!(matches!(
            err(&K::Json, b"\"\xff\""),
            CodecError::Invalid { .. }
        ));
    }

    #[test]
    fn bytea_base64() {
        // RFC 4648 test vectors.
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(j(&K::Bytea, input.as_bytes()), format!("\"{expected}\""));
        }
        assert_eq!(j(&K::Bytea, &[0x00, 0xff, 0xfe, 0x00]), "\"AP/+AA==\"");
        assert_eq!(j(&K::Bytea, &[0xfb, 0xff]), "\"+/8=\"");
    }

    /// Binary array: dims as (length, lower bound), elements as raw values (None = NULL).
    fn arr(elem_oid: u32, dims: &[(i32, i32)], elems: &[Option<&[u8]>]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(dims.len() as i32).to_be_bytes());
        v.extend_from_slice(&i32::from(elems.iter().any(Option::is_none)).to_be_bytes());
        v.extend_from_slice(&elem_oid.to_be_bytes());
        for (len, lb) in dims {
            v.extend_from_slice(&len.to_be_bytes());
            v.extend_from_slice(&lb.to_be_bytes());
        }
        for e in elems {
            match e {
                None => v.extend_from_slice(&(-1i32).to_be_bytes()),
                Some(b) => {
                    v.extend_from_slice(&(b.len() as i32).to_be_bytes());
                    v.extend_from_slice(b);
                }
            }
        }
        v
    }

    #[test]
    fn arrays() {
        let int4s = K::Array(Box::new(K::Int4));
        let texts = K::Array(Box::new(K::Text));
        let one = 1i32.to_be_bytes();
        let two = 2i32.to_be_bytes();
        let three = 3i32.to_be_bytes();
        assert_eq!(j(&int4s, &arr(23, &[], &[])), "[]");
        assert_eq!(j(&int4s, &arr(23, &[(0, 1)], &[])), "[]");
        assert_eq!(
            j(
                &int4s,
                &arr(23, &[(3, 1)], &[Some(&one), None, Some(&three)])
            ),
            "[1,null,3]"
        );
        // Lower bound 0 is not representable in JSON; the elements are kept.
        assert_eq!(
            j(&int4s, &arr(23, &[(2, 0)], &[Some(&one), Some(&two)])),
            "[1,2]"
        );
        assert_eq!(
            j(
                &texts,
                &arr(
                    25,
                    &[(2, 1), (2, 1)],
                    &[Some(b"a"), None, Some(b"\"q\""), Some(b"")]
                )
            ),
            r#"[["a",null],["\"q\"",""]]"#
        );
        assert_eq!(
            j(
                &int4s,
                &arr(
                    23,
                    &[(2, 1), (1, 1), (2, 1)],
                    &[Some(&one), Some(&two), None, Some(&three)]
                )
            ),
            "[[[1,2]],[[null,3]]]"
        );
        let nums = K::Array(Box::new(K::Numeric));
        assert_eq!(
            j(
                &nums,
                &arr(1700, &[(2, 1)], &[Some(&num(0, 0, 2, &[1, 2500])), None])
            ),
            r#"["1.25",null]"#
        );
        let tss = K::Array(Box::new(K::Timestamptz));
        assert_eq!(
            j(&tss, &arr(1184, &[(1, 1)], &[Some(&0i64.to_be_bytes())])),
            r#"["2000-01-01T00:00:00.000000Z"]"#
        );

        // Malformed arrays error instead of panicking.
        let good = arr(23, &[(3, 1)], &[Some(&one), None, Some(&three)]);
        for cut in 0..good.len() {
            assert!(write_json_value(&mut Vec::new(), &int4s, Some(&good[..cut])).is_err());
        }
        let mut extra = good.clone();
        extra.push(0);
        assert!(matches!(err(&int4s, &extra), CodecError::Invalid { .. }));
        assert!(matches!(
            err(&int4s, &arr(23, &[(i32::MAX, 1), (i32::MAX, 1)], &[])),
            CodecError::Invalid { .. }
        ));
        assert!(matches!(
            err(&int4s, &arr(23, &[(-1, 1)], &[])),
            CodecError::Invalid { .. }
        ));
        assert!(matches!(
            err(&int4s, &arr(23, &[(1, 1); 7], &[Some(&one)])),
            CodecError::Invalid { .. }
        ));
        assert!(matches!(
            err(&int4s, &arr(23, &[(1, 1)], &[Some(b"xx")])),
            CodecError::Length { .. }
        ));
    }

    #[test]
    fn arrays_built_by_postgres_types() {
        use tokio_postgres::types::{ToSql, Type};
        fn to_binary<T: ToSql>(v: &T, ty: &Type) -> Vec<u8> {
            let mut buf = Default::default();
            v.to_sql(ty, &mut buf).unwrap();
            buf.to_vec()
        }
        let v: Vec<Option<i64>> = vec![Some(i64::MIN), None, Some(42)];
        assert_eq!(
            j(
                &K::Array(Box::new(K::Int8)),
                &to_binary(&v, &Type::INT8_ARRAY)
            ),
            "[-9223372036854775808,null,42]"
        );
        let v: Vec<Option<String>> = vec![Some("x\ny".into()), None];
        assert_eq!(
            j(
                &K::Array(Box::new(K::Text)),
                &to_binary(&v, &Type::TEXT_ARRAY)
            ),
            r#"["x\ny",null]"#
        );
        let v: Vec<bool> = vec![];
        assert_eq!(
            j(
                &K::Array(Box::new(K::Bool)),
                &to_binary(&v, &Type::BOOL_ARRAY)
            ),
            "[]"
        );
        let v: Vec<f64> = vec![0.1, -0.0, f64::NAN];
        assert_eq!(
            j(
                &K::Array(Box::new(K::Float8)),
                &to_binary(&v, &Type::FLOAT8_ARRAY)
            ),
            r#"[0.1,-0,"NaN"]"#
        );
        let v = serde_json::json!({"k": [1, "two"]});
        assert_eq!(
            j(&K::Jsonb, &to_binary(&v, &Type::JSONB)),
            r#"{"k":[1,"two"]}"#
        );
    }

    fn ty(oid: u32, name: &str, typtype: char, category: char, base: Option<u32>) -> PgType {
        PgType {
            oid,
            name: name.into(),
            typtype,
            category,
            base_oid: base,
        }
    }

    #[test]
    fn kinds_and_casts() {
        let ck = |t: PgType| column_kind(&t);
        assert_eq!(ck(ty(23, "integer", 'b', 'N', None)), (K::Int4, Cast::None));
        assert_eq!(
            ck(ty(1700, "numeric(6,2)", 'b', 'N', None)),
            (K::Numeric, Cast::None)
        );
        assert_eq!(
            ck(ty(1042, "character(3)", 'b', 'S', None)),
            (K::Text, Cast::None)
        );
        assert_eq!(
            ck(ty(1043, "character varying(20)", 'b', 'S', None)),
            (K::Text, Cast::None)
        );
        assert_eq!(ck(ty(19, "name", 'b', 'S', None)), (K::Text, Cast::None));
        assert_eq!(
            ck(ty(1184, "timestamp with time zone", 'b', 'D', None)),
            (K::Timestamptz, Cast::None)
        );
        assert_eq!(
            ck(ty(1009, "text[]", 'b', 'A', None)),
            (K::Array(Box::new(K::Text)), Cast::None)
        );
        assert_eq!(
            ck(ty(1185, "timestamp with time zone[]", 'b', 'A', None)),
            (K::Array(Box::new(K::Timestamptz)), Cast::None)
        );
        // interval, inet, money, timetz: their text form.
        for (oid, name) in [
            (1186, "interval"),
            (869, "inet"),
            (790, "money"),
            (1266, "time with time zone"),
            (18, "\"char\""),
        ] {
            assert_eq!(
                ck(ty(oid, name, 'b', 'U', None)),
                (K::Text, Cast::Text),
                "{name}"
            );
        }
        // interval[] (1187) and an enum array.
        assert_eq!(
            ck(ty(1187, "interval[]", 'b', 'A', None)),
            (K::Array(Box::new(K::Text)), Cast::TextArray)
        );
        assert_eq!(
            ck(ty(16_500, "alert_status[]", 'b', 'A', None)),
            (K::Array(Box::new(K::Text)), Cast::TextArray)
        );
        // Extension types, enums, ranges, composites.
        assert_eq!(
            ck(ty(16_400, "citext", 'b', 'S', None)),
            (K::Text, Cast::Text)
        );
        assert_eq!(
            ck(ty(16_401, "alert_status", 'e', 'E', None)),
            (K::Text, Cast::Text)
        );
        assert_eq!(
            ck(ty(3904, "int4range", 'r', 'R', None)),
            (K::Text, Cast::Text)
        );
        assert_eq!(
            ck(ty(16_402, "address", 'c', 'C', None)),
            (K::Text, Cast::Text)
        );
        // Domains: native base -> native decoding without a cast.
        assert_eq!(
            ck(ty(16_403, "positive_int", 'd', 'N', Some(23))),
            (K::Int4, Cast::None)
        );
        assert_eq!(
            ck(ty(16_404, "tag_list", 'd', 'A', Some(1009))),
            (K::Array(Box::new(K::Text)), Cast::None)
        );
        assert_eq!(
            ck(ty(16_405, "email", 'd', 'S', Some(16_400))),
            (K::Text, Cast::Text)
        );
        assert_eq!(
            ck(ty(16_406, "statuses", 'd', 'A', Some(16_500))),
            (K::Array(Box::new(K::Text)), Cast::TextArray)
        );
        assert_eq!(
            ck(ty(16_407, "weird", 'd', 'U', None)),
            (K::Text, Cast::Text)
        );

        assert_eq!(select_expr("\"a b\"", Cast::None), "\"a b\"");
        assert_eq!(select_expr("\"x\"", Cast::Text), "\"x\"::text");
        assert_eq!(select_expr("\"x\"", Cast::TextArray), "\"x\"::text[]");
    }
}
