//! Source and target catalogs compared table by table, each difference classified by what it
//! does to the data: the heart of `fmig plan`.
//!
//! Every table of the manifest is resolved through the column mapping
//! ([`ColumnMap::resolve`], the same resolution `import` uses), and each resulting pair of
//! columns, each column present on one side only, each foreign key and each user-id column is
//! checked. A difference is [`Class::Ok`] (nothing changes or it only widens), [`Class::Lossy`]
//! (data may change: rounding, truncated precision, lost formatting, data left behind on purpose)
//! or [`Class::Blocking`] (the import would fail, or data would be lost without anyone having
//! said so). Where data decides, the source is measured in the caller's snapshot (one scan per
//! table, only for tables that need it): a count of values that fail turns a lossy difference
//! into a blocking one, and a count of zero can turn a feared one into ok. Cast questions the
//! catalogs cannot answer are asked of the target by preparing a statement (never running it).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_postgres::{GenericClient, Transaction};

use crate::catalog::{
    self, Column, Discovered, ForeignKey, PartitionInfo, TableInfo, TypeInfo, UserIdsByValue,
};
use crate::column_map::{
    self, ColumnMap, ColumnValue, Lookup, Suggestion, TableMap, TemplateNote, Unwritten,
};
use crate::ident::{QualifiedName, quote_ident, quote_literal};
use crate::manifest::{self, APP_SCHEMA, TableSpec};
use crate::pg_oid;
use crate::pipeline;

/// How much a difference matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    /// Identical in effect, safely widening, or settled by the mapping.
    Ok,
    /// The data may change on the way (or is left behind on purpose); read it, then go on.
    Lossy,
    /// The import would fail, or data would be lost silently: `plan` exits 1.
    Blocking,
}

impl Class {
    pub fn label(self) -> &'static str {
        match self {
            Class::Ok => "ok",
            Class::Lossy => "lossy",
            Class::Blocking => "BLOCKING",
        }
    }
}

/// One classified difference.
#[derive(Clone, Debug, Serialize)]
pub struct Finding {
    pub class: Class,
    /// What kind of difference, snake_case (`type_changed`, `source_only_column`, ...).
    pub kind: &'static str,
    /// The columns concerned (source names, or target names for target-only columns).
    pub columns: Vec<String>,
    pub message: String,
    /// Measured on the source: `non_null`, `fractional`, `out_of_range`, `too_long`,
    /// `sub_precision`, `nulls`, `rows_with_missing_labels`, `not_a_label`, ...
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, i64>,
    /// The mapping entry that would settle it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggestion: Option<Suggestion>,
    /// The message without its counts, and the counts with their labels: what the text report
    /// needs to add up a pattern repeated over many columns (the JSON has `message` and
    /// `counts`).
    #[serde(skip)]
    pub head: String,
    #[serde(skip)]
    pub parts: Vec<(i64, String)>,
}

/// One manifest table's comparison.
#[derive(Clone, Debug, Serialize)]
pub struct TableComparison {
    pub table: String,
    pub target_table: String,
    /// Level computed from the target's foreign keys (the hand-written one when the table is
    /// missing from the target).
    pub level: usize,
    pub listed_level: usize,
    pub findings: Vec<Finding>,
    /// What `import` would do with this table (absent when a side lacks the table).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapping: Option<TableMap>,
}

/// A user-id column as the three sources of truth see it.
#[derive(Clone, Debug, Serialize)]
pub struct UserIdColumnLine {
    pub table: String,
    pub column: String,
    /// In fmig's built-in list.
    pub listed: bool,
    /// Has a foreign key to `auth.users(id)`.
    pub foreign_key: bool,
    /// (values that are `auth.users` ids, non-NULL values), for uuid columns without a foreign
    /// key.
    pub by_value: Option<(i64, i64)>,
    /// `added` or `removed` by the mapping.
    pub mapping: Option<&'static str>,
    /// Rewritten to Stack Auth ids by the import.
    pub rewritten: bool,
}

/// Everything compared.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    pub tables: Vec<TableComparison>,
    /// Differences that belong to no single manifest table: levels, cycles, enum types,
    /// tables outside the manifest.
    pub schema: Vec<Finding>,
    pub user_id_columns: Vec<UserIdColumnLine>,
}

impl Comparison {
    /// Statements import would run that the target rejects (see
    /// [`crate::pipeline::rejected_statements`]): blocking, in their table.
    pub fn add_rejected_statements(&mut self, rejected: Vec<(String, String)>) {
        for (table, message) in rejected {
            let finding = Finding {
                class: Class::Blocking,
                kind: "statement_rejected",
                columns: Vec::new(),
                message: format!(
                    "{message}; import would stop here: correct the column mapping (the message \
                     names the column or condition)"
                ),
                counts: BTreeMap::new(),
                suggestion: None,
                head: String::new(),
                parts: Vec::new(),
            };
            match self.tables.iter_mut().find(|t| t.table == table) {
                Some(t) => t.findings.insert(0, finding),
                None => self.schema.push(finding),
            }
        }
    }

    pub fn findings(&self) -> impl Iterator<Item = &Finding> {
        self.tables
            .iter()
            .flat_map(|t| t.findings.iter())
            .chain(self.schema.iter())
    }

    pub fn count(&self, class: Class) -> usize {
        self.findings().filter(|f| f.class == class).count()
    }

    /// One template note per lossy or blocking difference of a table, in import order.
    pub fn template_notes(&self) -> Vec<TemplateNote> {
        let mut notes = Vec::new();
        for t in &self.tables {
            for f in &t.findings {
                if f.class == Class::Ok {
                    continue;
                }
                let columns = if f.columns.is_empty() {
                    String::new()
                } else {
                    format!(" {}", f.columns.join(", "))
                };
                notes.push(TemplateNote {
                    table: t.table.clone(),
                    comment: format!("{}{columns}: {}", f.class.label(), f.message),
                    suggestion: f.suggestion.clone(),
                });
            }
        }
        notes
    }
}

/// One database's catalog with what the comparison needs beyond [`Discovered`].
#[derive(Clone, Debug)]
pub struct Catalog {
    pub found: Discovered,
    pub types: BTreeMap<u32, TypeInfo>,
    pub typmods: BTreeMap<(String, String), i32>,
    pub partitions: BTreeMap<String, PartitionInfo>,
}

impl Catalog {
    /// Reads the application schema's catalog, in the caller's transaction.
    pub async fn read(client: &impl GenericClient) -> Result<Catalog> {
        let found = catalog::discover(client, APP_SCHEMA).await?;
        let oids: Vec<u32> = found
            .tables
            .values()
            .flat_map(|t| t.columns.iter().map(|c| c.type_oid))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Ok(Catalog {
            types: catalog::types(client, &oids).await?,
            typmods: catalog::column_typmods(client, APP_SCHEMA).await?,
            partitions: catalog::partitions(client, APP_SCHEMA).await?,
            found,
        })
    }

    fn shape(&self, table: &str, column: &Column) -> Resolved {
        let typmod = self
            .typmods
            .get(&(table.to_string(), column.name.clone()))
            .copied()
            .unwrap_or(-1);
        resolve_type(&self.types, column.type_oid, typmod)
    }

    /// Enum types of the schema's columns, by name, with their labels.
    fn enums(&self) -> BTreeMap<&str, &[String]> {
        self.types
            .values()
            .filter(|t| t.kind == 'e')
            .map(|t| (t.name.as_str(), t.enum_labels.as_slice()))
            .collect()
    }
}

/// What a column's type means for its values, independent of the database's oids (built-in
/// types have the same oids everywhere; user types are compared by name).
#[derive(Clone, Debug, PartialEq, Eq)]
enum TypeShape {
    Int(u8),
    /// `(precision, scale)` when constrained.
    Numeric(Option<(i32, i32)>),
    Float(u8),
    Text,
    Varchar(i32),
    Char(i32),
    Timestamp {
        tz: bool,
        precision: i32,
    },
    Time {
        tz: bool,
        precision: i32,
    },
    Json,
    Jsonb,
    Enum {
        name: String,
        labels: Vec<String>,
    },
    Array(Box<TypeShape>),
    Other(String),
}

/// A domain a column's type goes through.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Domain {
    name: String,
    not_null: bool,
    checks: Vec<String>,
}

#[derive(Clone, Debug)]
struct Resolved {
    shape: TypeShape,
    domains: Vec<Domain>,
}

fn resolve_type(types: &BTreeMap<u32, TypeInfo>, oid: u32, typmod: i32) -> Resolved {
    let mut domains = Vec::new();
    let mut oid = oid;
    let mut typmod = typmod;
    // Domains over domains: walk down to the base type, keeping every level's constraints.
    for _ in 0..32 {
        match types.get(&oid) {
            Some(t) if t.kind == 'd' => {
                domains.push(Domain {
                    name: t.name.clone(),
                    not_null: t.domain_not_null,
                    checks: t.domain_checks.clone(),
                });
                if typmod < 0 {
                    typmod = t.base_typmod;
                }
                match t.base {
                    Some(base) => oid = base,
                    None => break,
                }
            }
            _ => break,
        }
    }
    Resolved {
        shape: base_shape(types, oid, typmod, 0),
        domains,
    }
}

fn base_shape(types: &BTreeMap<u32, TypeInfo>, oid: u32, typmod: i32, depth: usize) -> TypeShape {
    let info = types.get(&oid);
    let name = info.map_or_else(|| format!("oid {oid}"), |t| t.name.clone());
    let precision = |typmod: i32| if typmod >= 0 { typmod } else { 6 };
    match oid {
        pg_oid::INT2 => TypeShape::Int(2),
        pg_oid::INT4 => TypeShape::Int(4),
        pg_oid::INT8 => TypeShape::Int(8),
        pg_oid::FLOAT4 => TypeShape::Float(4),
        pg_oid::FLOAT8 => TypeShape::Float(8),
        pg_oid::NUMERIC if typmod >= 4 => {
            let t = typmod - 4;
            // PostgreSQL 15 stores the scale as an 11-bit signed number.
            TypeShape::Numeric(Some(((t >> 16) & 0xffff, ((t & 0x7ff) ^ 1024) - 1024)))
        }
        pg_oid::NUMERIC => TypeShape::Numeric(None),
        pg_oid::TEXT => TypeShape::Text,
        pg_oid::VARCHAR if typmod >= 4 => TypeShape::Varchar(typmod - 4),
        pg_oid::VARCHAR => TypeShape::Text,
        pg_oid::BPCHAR if typmod >= 4 => TypeShape::Char(typmod - 4),
        pg_oid::BPCHAR => TypeShape::Text,
        pg_oid::TIMESTAMP => TypeShape::Timestamp {
            tz: false,
            precision: precision(typmod),
        },
        pg_oid::TIMESTAMPTZ => TypeShape::Timestamp {
            tz: true,
            precision: precision(typmod),
        },
        pg_oid::TIME => TypeShape::Time {
            tz: false,
            precision: precision(typmod),
        },
        pg_oid::TIMETZ => TypeShape::Time {
            tz: true,
            precision: precision(typmod),
        },
        pg_oid::JSON => TypeShape::Json,
        pg_oid::JSONB => TypeShape::Jsonb,
        _ => match info {
            Some(t) if t.kind == 'e' => TypeShape::Enum {
                name,
                labels: t.enum_labels.clone(),
            },
            Some(t) if t.kind == 'd' && depth < 8 => {
                // A domain as an array element: compare its base.
                let base_typmod = if typmod >= 0 { typmod } else { t.base_typmod };
                t.base.map_or(TypeShape::Other(name), |b| {
                    base_shape(types, b, base_typmod, depth + 1)
                })
            }
            Some(t) if t.category == 'A' && depth < 8 => match t.element {
                Some(e) => TypeShape::Array(Box::new(base_shape(types, e, typmod, depth + 1))),
                None => TypeShape::Other(name),
            },
            _ => TypeShape::Other(name),
        },
    }
}

fn is_texty(shape: &TypeShape) -> bool {
    matches!(
        shape,
        TypeShape::Text | TypeShape::Varchar(_) | TypeShape::Char(_)
    )
}

/// What a measured count means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    /// Values that would make the insert fail (or be cut): more than 0 is blocking.
    Fails,
    /// Values that change: more than 0 is at least lossy.
    Changes,
    /// Context only.
    Info,
}

/// One count to take on the source, as an aggregate over the table aliased `t`.
#[derive(Clone, Debug)]
struct Measure {
    key: &'static str,
    /// Completes "N ..." in the message: "values have a fractional part (rounded)".
    label: String,
    sql: String,
    effect: Effect,
}

fn count_where(condition: String) -> String {
    format!("count(*) FILTER (WHERE {condition})")
}

fn non_null(c: &str, label: &str, effect: Effect) -> Measure {
    Measure {
        key: "non_null",
        label: label.to_string(),
        sql: format!("count({c})"),
        effect,
    }
}

fn int_bounds(bits: u8) -> (&'static str, &'static str) {
    match bits {
        2 => ("-32768", "32767"),
        4 => ("-2147483648", "2147483647"),
        _ => ("-9223372036854775808", "9223372036854775807"),
    }
}

fn int_name(bits: u8) -> &'static str {
    match bits {
        2 => "smallint",
        4 => "integer",
        _ => "bigint",
    }
}

/// Values outside an integer type's range once rounded (NaN and infinities included: they
/// compare greater than every number).
fn out_of_range(c: &str, bits: u8, src: &TypeShape) -> Measure {
    let (lo, hi) = int_bounds(bits);
    let condition = if matches!(src, TypeShape::Int(_)) {
        format!("NOT ({c} BETWEEN {lo} AND {hi})")
    } else {
        format!("NOT ({c} > {lo}.5 AND {c} < {hi}.5)")
    };
    Measure {
        key: "out_of_range",
        label: format!(
            "values are outside the {} range (would fail)",
            int_name(bits)
        ),
        sql: count_where(condition),
        effect: Effect::Fails,
    }
}

fn fractional(c: &str) -> Measure {
    Measure {
        key: "fractional",
        label: "values have a fractional part (rounded)".into(),
        sql: count_where(format!("{c} <> trunc({c})")),
        effect: Effect::Changes,
    }
}

fn too_long(c: &str, length: i32) -> Measure {
    Measure {
        key: "too_long",
        label: format!("values are longer than {length} characters (would fail or be cut)"),
        sql: count_where(format!("char_length({c}::text) > {length}")),
        effect: Effect::Fails,
    }
}

fn numeric_overflow(c: &str, precision: i32, scale: i32) -> Measure {
    Measure {
        key: "overflow",
        label: format!("values do not fit numeric({precision},{scale}) (would fail)"),
        sql: count_where(format!(
            "{c}::numeric <> 'NaN' AND abs(round({c}::numeric, {scale})) >= 1e{}",
            precision - scale
        )),
        effect: Effect::Fails,
    }
}

fn numeric_rounded(c: &str, scale: i32) -> Measure {
    Measure {
        key: "rounded",
        label: format!("values have more than {scale} decimal places (rounded)"),
        sql: count_where(format!("{c}::numeric <> round({c}::numeric, {scale})")),
        effect: Effect::Changes,
    }
}

fn sub_precision(c: &str, precision: i32) -> Measure {
    let unit = 10_i64.pow((6 - precision.clamp(0, 6)) as u32);
    let what = match precision {
        0 => "fractional seconds".to_string(),
        3 => "sub-millisecond digits".to_string(),
        p => format!("digits below 10^-{p} s"),
    };
    Measure {
        key: "sub_precision",
        label: format!("values have {what} (rounded)"),
        sql: count_where(format!(
            "(extract(microseconds FROM {c})::bigint % {unit}) <> 0"
        )),
        effect: Effect::Changes,
    }
}

fn labels_array(labels: &[String]) -> String {
    let quoted: Vec<String> = labels.iter().map(|l| quote_literal(l)).collect();
    format!("ARRAY[{}]::text[]", quoted.join(", "))
}

/// What a change of type means for the data.
#[derive(Clone, Debug)]
enum Verdict {
    Same,
    /// Safe: described for the report.
    Widening(String),
    /// `base` is the class when no measured count says worse.
    Measured {
        what: String,
        base: Class,
        measures: Vec<Measure>,
    },
    /// The catalogs cannot tell: ask the target whether the cast exists.
    Probe,
}

fn lossy(what: impl Into<String>, measures: Vec<Measure>) -> Verdict {
    Verdict::Measured {
        what: what.into(),
        base: Class::Lossy,
        measures,
    }
}

fn compare_shapes(src: &TypeShape, tgt: &TypeShape, c: &str) -> Verdict {
    use TypeShape::*;
    if src == tgt {
        return Verdict::Same;
    }
    let widening = |why: &str| Verdict::Widening(why.to_string());
    match (src, tgt) {
        (Int(a), Int(b)) if b >= a => widening("wider integer"),
        (Int(_), Int(b)) => lossy("narrower integer", vec![out_of_range(c, *b, src)]),
        (Int(_), Numeric(None)) => widening("every integer fits numeric"),
        (Int(a), Numeric(Some((p, s)))) => {
            let digits = match a {
                2 => 5,
                4 => 10,
                _ => 19,
            };
            if p - s >= digits {
                widening("every integer fits")
            } else {
                lossy("", vec![numeric_overflow(c, *p, *s)])
            }
        }
        (Int(a), Float(b)) => {
            let mantissa = if *b == 4 { 24 } else { 53 };
            if (*a == 2) || (*a == 4 && *b == 8) {
                widening("every integer fits")
            } else {
                let limit = 1_i64 << mantissa;
                lossy(
                    "",
                    vec![Measure {
                        key: "imprecise",
                        label: format!("values are beyond 2^{mantissa} (rounded)"),
                        sql: count_where(format!("abs({c}) > {limit}")),
                        effect: Effect::Changes,
                    }],
                )
            }
        }
        (Numeric(_) | Float(_), Int(b)) => lossy("", vec![fractional(c), out_of_range(c, *b, src)]),
        (Numeric(_), Numeric(None)) => widening("unconstrained numeric"),
        (Numeric(from), Numeric(Some((p2, s2)))) => {
            let scale_ok = matches!(from, Some((_, s)) if s <= s2);
            // Rounding to fewer decimals can carry into one more integer digit (999.99 ->
            // 1000.0), so then the target needs strictly more integer digits.
            let digits_ok = matches!(from, Some((p, s))
                if p - s < p2 - s2 || (scale_ok && p - s == p2 - s2));
            if scale_ok && digits_ok {
                widening("more digits")
            } else {
                let mut measures = Vec::new();
                if !scale_ok {
                    measures.push(numeric_rounded(c, *s2));
                }
                if !digits_ok {
                    measures.push(numeric_overflow(c, *p2, *s2));
                }
                lossy("", measures)
            }
        }
        (Numeric(_), Float(_)) => lossy(
            "",
            vec![non_null(
                c,
                "values become floating point (digits beyond its precision are lost)",
                Effect::Info,
            )],
        ),
        (Float(a), Float(b)) if b >= a => widening("wider floating point"),
        (Float(_), Float(_)) => lossy("", vec![non_null(c, "values lose precision", Effect::Info)]),
        (Float(_), Numeric(p)) => {
            let mut measures = vec![non_null(
                c,
                "values are converted with 15 significant digits",
                Effect::Info,
            )];
            if let Some((p, s)) = p {
                measures.push(numeric_overflow(c, *p, *s));
            }
            lossy("", measures)
        }
        (s, Text) if is_texty(s) => widening("text holds any string"),
        (Varchar(n) | Char(n), Varchar(m) | Char(m)) if n <= m => widening("longer"),
        (s, Varchar(m) | Char(m)) if is_texty(s) => lossy("", vec![too_long(c, *m)]),
        (Json | Jsonb, Text) => lossy(
            "",
            vec![non_null(
                c,
                "documents are stored as text (formatting may change)",
                Effect::Info,
            )],
        ),
        (Json | Jsonb, Varchar(m) | Char(m)) => lossy(
            "",
            vec![
                non_null(
                    c,
                    "documents are stored as text (formatting may change)",
                    Effect::Info,
                ),
                too_long(c, *m),
            ],
        ),
        (Jsonb, Json) => widening("json keeps jsonb's text"),
        (Json, Jsonb) => lossy(
            "",
            vec![non_null(
                c,
                "documents lose duplicate keys, key order and whitespace",
                Effect::Info,
            )],
        ),
        (s, Json | Jsonb) if is_texty(s) => lossy(
            "",
            vec![non_null(c, "values must be valid JSON", Effect::Info)],
        ),
        (Enum { labels: from, .. }, Enum { name, labels: to }) => {
            let missing: Vec<String> = from.iter().filter(|l| !to.contains(l)).cloned().collect();
            if missing.is_empty() {
                return if src_name(src) == Some(name) {
                    Verdict::Same
                } else {
                    widening("every label exists in the target enum")
                };
            }
            Verdict::Measured {
                what: format!(
                    "label{} {} not in the target's {name} ({})",
                    if missing.len() == 1 { "" } else { "s" },
                    quoted_list(&missing),
                    to.join(", ")
                ),
                base: Class::Ok,
                measures: vec![Measure {
                    key: "rows_with_missing_labels",
                    label: "rows use them (would fail)".into(),
                    sql: count_where(format!("{c}::text = ANY ({})", labels_array(&missing))),
                    effect: Effect::Fails,
                }],
            }
        }
        (Enum { .. }, Text) => widening("labels become text"),
        (Enum { .. }, Varchar(m) | Char(m)) => lossy("", vec![too_long(c, *m)]),
        (s, Enum { name, labels }) if is_texty(s) => Verdict::Measured {
            what: format!("values must be labels of {name}"),
            base: Class::Ok,
            measures: vec![Measure {
                key: "not_a_label",
                label: format!("values are not labels of {name} (would fail)"),
                sql: count_where(format!("NOT ({c}::text = ANY ({}))", labels_array(labels))),
                effect: Effect::Fails,
            }],
        },
        (
            Timestamp {
                tz: a,
                precision: p,
            },
            Timestamp {
                tz: b,
                precision: q,
            },
        )
        | (
            Time {
                tz: a,
                precision: p,
            },
            Time {
                tz: b,
                precision: q,
            },
        ) => {
            let mut measures = Vec::new();
            if *a && !*b {
                measures.push(non_null(
                    c,
                    "values lose their time zone (kept as UTC wall-clock time)",
                    Effect::Info,
                ));
            } else if !*a && *b {
                measures.push(non_null(c, "values are read as UTC", Effect::Info));
            }
            if q < p {
                measures.push(sub_precision(c, *q));
            }
            if measures.is_empty() {
                widening("more precision")
            } else {
                lossy("", measures)
            }
        }
        (Array(a), Array(b)) => match compare_shapes(a, b, "x") {
            Verdict::Same => Verdict::Same,
            Verdict::Widening(why) => Verdict::Widening(format!("elements: {why}")),
            Verdict::Measured { .. } => lossy(
                "",
                vec![non_null(
                    c,
                    "arrays have their elements converted (not measured)",
                    Effect::Info,
                )],
            ),
            Verdict::Probe => Verdict::Probe,
        },
        (Array(_), Text) => lossy(
            "",
            vec![non_null(
                c,
                "arrays become one text value ({a,b} form)",
                Effect::Info,
            )],
        ),
        (Array(_), Varchar(m) | Char(m)) => lossy(
            "",
            vec![
                non_null(c, "arrays become one text value ({a,b} form)", Effect::Info),
                too_long(c, *m),
            ],
        ),
        (Other(_), Text) => widening("stored as its text form"),
        (Other(_), Varchar(m) | Char(m)) => lossy("", vec![too_long(c, *m)]),
        _ => Verdict::Probe,
    }
}

fn src_name(shape: &TypeShape) -> Option<&String> {
    match shape {
        TypeShape::Enum { name, .. } => Some(name),
        _ => None,
    }
}

fn quoted_list(values: &[String]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
    quoted.join(", ")
}

/// A finding whose class and message wait for the source's counts.
#[derive(Clone, Debug)]
struct Pending {
    kind: &'static str,
    columns: Vec<String>,
    /// The start of the message; measures are appended as "; N label".
    head: String,
    base: Class,
    measures: Vec<Measure>,
    suggestion: Option<Suggestion>,
    /// Settled by this `set` expression: the class is ok whatever the counts.
    settled_by: Option<String>,
}

impl Pending {
    fn fixed(kind: &'static str, columns: &[&str], class: Class, message: String) -> Pending {
        Pending {
            kind,
            columns: columns.iter().map(|c| c.to_string()).collect(),
            head: message,
            base: class,
            measures: Vec::new(),
            suggestion: None,
            settled_by: None,
        }
    }

    fn suggest(mut self, suggestion: Option<Suggestion>) -> Pending {
        self.suggestion = suggestion;
        self
    }

    fn finish(self, counts: &BTreeMap<String, i64>) -> Finding {
        let mut class = self.base;
        let mut parts = Vec::new();
        let mut counted = Vec::new();
        let mut measured = BTreeMap::new();
        for m in &self.measures {
            let n = counts.get(&m.sql).copied().unwrap_or(0);
            measured.insert(m.key.to_string(), n);
            parts.push(format!("{n} {}", m.label));
            counted.push((n, m.label.clone()));
            match m.effect {
                Effect::Fails if n > 0 => class = Class::Blocking,
                Effect::Changes if n > 0 => class = class.max(Class::Lossy),
                _ => {}
            }
        }
        let head = self.head.clone();
        let mut message = self.head;
        if !parts.is_empty() {
            if !message.is_empty() {
                message.push_str(": ");
            }
            message.push_str(&parts.join("; "));
        }
        let mut suggestion = self.suggestion;
        let settled = self.settled_by.is_some();
        if let Some(expression) = self.settled_by {
            class = Class::Ok;
            suggestion = None;
            message = format!("set by expression {expression:?} (instead of: {message})");
        } else if class == Class::Ok {
            suggestion = None;
        }
        Finding {
            class,
            kind: self.kind,
            columns: self.columns,
            message,
            counts: measured,
            suggestion,
            head: if settled { String::new() } else { head },
            parts: if settled { Vec::new() } else { counted },
        }
    }
}

/// What the comparison reads.
pub struct Inputs<'a> {
    pub specs: &'a [TableSpec],
    pub map: &'a ColumnMap,
    pub source: &'a Catalog,
    pub target: &'a Catalog,
    /// From [`catalog::user_ids_by_value`] on the source.
    pub by_value: &'a [UserIdsByValue],
    /// Tables whose statements the target rejected (reported as blocking): their `where` is not
    /// applied when measuring, since the source would reject it too.
    pub rejected: &'a BTreeSet<String>,
}

/// Compares every manifest table. Counts are taken with `source` (the snapshot the caller
/// holds); cast questions are prepared on `target` inside savepoints.
pub async fn compare(
    inputs: &Inputs<'_>,
    source: &Transaction<'_>,
    target: &mut Transaction<'_>,
) -> Result<Comparison> {
    let mut maps: BTreeMap<&str, TableMap> = BTreeMap::new();
    for spec in inputs.specs {
        if inputs.map.is_skipped(spec.name)
            || !inputs.source.found.tables.contains_key(spec.name)
            || !inputs
                .target
                .found
                .tables
                .contains_key(inputs.map.target_name(spec.name))
        {
            continue;
        }
        let map = inputs
            .map
            .resolve(spec, &inputs.source.found, &inputs.target.found)?;
        maps.insert(spec.name, map);
    }

    let mut tables = Vec::new();
    let mut user_id_columns = Vec::new();
    for (_, spec) in manifest::import_order(inputs.specs, &inputs.target.found) {
        let pending =
            table_findings(inputs, spec, None, &maps, &mut user_id_columns, target).await?;
        let filter = maps
            .get(spec.name)
            .and_then(|m| m.filter.as_deref())
            .filter(|_| !inputs.rejected.contains(spec.name));
        let counts = measure(source, spec.name, filter, &pending).await?;
        let findings = sort_findings(pending.into_iter().map(|p| p.finish(&counts)).collect());
        let target_table = inputs.map.target_name(spec.name).to_string();
        tables.push(TableComparison {
            level: inputs
                .target
                .found
                .levels
                .get(&target_table)
                .copied()
                .unwrap_or(spec.level),
            listed_level: spec.level,
            table: spec.name.to_string(),
            target_table,
            findings,
            mapping: maps.get(spec.name).cloned(),
        });
        if !maps.contains_key(spec.name) {
            continue;
        }
        for unit in inputs
            .map
            .resolve_units(spec, &inputs.source.found, &inputs.target.found)?
            .into_iter()
            .skip(1)
            .filter(|u| inputs.target.found.tables.contains_key(&u.target_table))
        {
            let pending = table_findings(
                inputs,
                spec,
                Some(&unit),
                &maps,
                &mut user_id_columns,
                target,
            )
            .await?;
            let filter = unit
                .filter
                .as_deref()
                .filter(|_| !inputs.rejected.contains(&unit.unit));
            let counts = measure(source, spec.name, filter, &pending).await?;
            let findings = sort_findings(pending.into_iter().map(|p| p.finish(&counts)).collect());
            tables.push(TableComparison {
                level: inputs
                    .target
                    .found
                    .levels
                    .get(&unit.target_table)
                    .copied()
                    .unwrap_or(spec.level),
                listed_level: spec.level,
                table: unit.unit.clone(),
                target_table: unit.target_table.clone(),
                findings,
                mapping: Some(unit),
            });
        }
    }
    // An also entry is loaded with its target table's level.
    tables.sort_by_key(|t| t.level);
    let schema = schema_findings(inputs, &maps);
    Ok(Comparison {
        tables,
        schema,
        user_id_columns,
    })
}

/// Rows of the measured (kept) rows whose lookup key finds no row of the looked-up table that
/// moves (its `where` applied): lost references. Import refuses them unless the entry says
/// `missing = "null"`; rows left behind by `skip_row` are not known before the user mapping
/// exists and are counted by import.
fn lost_references(
    lookup: &Lookup,
    maps: &BTreeMap<&str, TableMap>,
    rejected: &BTreeSet<String>,
) -> Measure {
    let (keys, matches, kept) = lookup_sql(lookup, maps, rejected);
    Measure {
        key: "lost_references",
        label: if lookup.missing_null {
            "keys find no migrated row (NULL instead)".into()
        } else {
            "keys find no migrated row: lost references (import refuses them; add missing = \"null\" to write NULL)".into()
        },
        sql: count_where(format!(
            "{keys} AND NOT EXISTS (SELECT 1 FROM {} AS src WHERE {matches}{kept})",
            QualifiedName::new(APP_SCHEMA, &lookup.table).quoted(),
        )),
        effect: if lookup.missing_null {
            Effect::Changes
        } else {
            Effect::Fails
        },
    }
}

/// Rows whose lookup key finds several rows of the looked-up table that move: import refuses
/// an ambiguous lookup, so plan blocks on it.
fn ambiguous_keys(
    lookup: &Lookup,
    maps: &BTreeMap<&str, TableMap>,
    rejected: &BTreeSet<String>,
) -> Measure {
    let (keys, matches, kept) = lookup_sql(lookup, maps, rejected);
    Measure {
        key: "ambiguous_keys",
        label: format!(
            "keys find several rows of {} (a lookup must find one: match on a unique column, or \
             leave the duplicates behind with where)",
            lookup.table
        ),
        sql: count_where(format!(
            "{keys} AND (SELECT count(*) FROM {} AS src WHERE {matches}{kept}) > 1",
            QualifiedName::new(APP_SCHEMA, &lookup.table).quoted(),
        )),
        effect: Effect::Fails,
    }
}

/// A lookup's SQL over the measured table `t` and the looked-up table `src`: its keys are not
/// NULL, its match condition, and ` AND <the looked-up table's where>` (or nothing).
fn lookup_sql(
    lookup: &Lookup,
    maps: &BTreeMap<&str, TableMap>,
    rejected: &BTreeSet<String>,
) -> (String, String, String) {
    let keys: Vec<String> = lookup
        .matches
        .iter()
        .map(|(_, own)| format!("t.{} IS NOT NULL", quote_ident(own)))
        .collect();
    let matches: Vec<String> = lookup
        .matches
        .iter()
        .map(|(theirs, own)| format!("src.{} = t.{}", quote_ident(theirs), quote_ident(own)))
        .collect();
    let kept = maps
        .get(lookup.table.as_str())
        .and_then(|m| m.filter.as_deref())
        .filter(|_| !rejected.contains(&lookup.table))
        .map(|f| format!(" AND {}", pipeline::keep_condition(f)))
        .unwrap_or_default();
    (keys.join(" AND "), matches.join(" AND "), kept)
}

/// Key of the measure counted over every source row, not only the rows that move.
const LEFT_BEHIND: &str = "left_behind";

/// The rows a table's `where` leaves behind, of all its source rows.
fn left_behind(filter: &str) -> Pending {
    Pending {
        kind: "rows_left_behind",
        columns: Vec::new(),
        head: format!("where = {filter:?}"),
        base: Class::Ok,
        measures: vec![Measure {
            key: LEFT_BEHIND,
            label: "rows stay behind on purpose (import lists them in left-behind/<table>.csv; \
                    the other columns' counts are over the rows that move)"
                .into(),
            sql: count_where(format!("NOT {}", pipeline::keep_condition(filter))),
            effect: Effect::Changes,
        }],
        suggestion: None,
        settled_by: None,
    }
}

fn sort_findings(mut findings: Vec<Finding>) -> Vec<Finding> {
    findings.sort_by_key(|f| std::cmp::Reverse(f.class));
    findings
}

/// Runs every measure of one table in one scan of the source table. With a `where`, the
/// measures count the rows that move (the target never sees the others), except the count of
/// rows left behind, which is over every row.
async fn measure(
    source: &Transaction<'_>,
    table: &str,
    filter: Option<&str>,
    pending: &[Pending],
) -> Result<BTreeMap<String, i64>> {
    let name = QualifiedName::new(APP_SCHEMA, table);
    let mut counts = BTreeMap::new();
    for all_rows in [false, true] {
        let aggregates: Vec<&str> = pending
            .iter()
            .flat_map(|p| p.measures.iter())
            .filter(|m| (m.key == LEFT_BEHIND) == all_rows)
            .map(|m| m.sql.as_str())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if aggregates.is_empty() {
            continue;
        }
        let from = match (filter, all_rows) {
            (Some(f), false) => format!(
                "(SELECT * FROM {} AS src WHERE {}) AS t",
                name.quoted(),
                pipeline::keep_condition(f)
            ),
            (_, true) => format!("{} AS src", name.quoted()),
            (None, false) => format!("{} AS t", name.quoted()),
        };
        let sql = format!("SELECT {} FROM {from}", aggregates.join(", "));
        let row = source
            .query_one(sql.as_str(), &[])
            .await
            .with_context(|| format!("could not measure the data of {name} on the source"))?;
        counts.extend(
            aggregates
                .iter()
                .enumerate()
                .map(|(i, sql)| (sql.to_string(), row.get::<_, i64>(i))),
        );
    }
    Ok(counts)
}

/// Every difference of one table, before measuring.
async fn table_findings(
    inputs: &Inputs<'_>,
    spec: &TableSpec,
    also: Option<&TableMap>,
    maps: &BTreeMap<&str, TableMap>,
    user_lines: &mut Vec<UserIdColumnLine>,
    target: &mut Transaction<'_>,
) -> Result<Vec<Pending>> {
    let mut out = Vec::new();
    let name = spec.name;
    let unit = also.map_or(name, |m| m.unit.as_str());
    let target_name = also.map_or(inputs.map.target_name(name), |m| m.target_table.as_str());
    if also.is_none() && inputs.map.is_skipped(name) {
        out.push(Pending::fixed(
            "table_skipped",
            &[],
            Class::Ok,
            "skip = true: the table is not migrated".into(),
        ));
        return Ok(out);
    }
    let src = inputs.source.found.tables.get(name);
    let tgt = inputs.target.found.tables.get(target_name);
    if src.is_none() {
        out.push(
            Pending::fixed(
                "table_missing_in_source",
                &[],
                Class::Blocking,
                "the table does not exist in the source".into(),
            )
            .suggest(Some(Suggestion::Skip)),
        );
    }
    let discovered = also.is_none() && !manifest::is_builtin(name);
    if discovered && src.is_some() {
        out.push(Pending::fixed(
            "discovered_table",
            &[],
            Class::Ok,
            "not in fmig's built-in list: found in the source, migrated like a listed table \
             (skip = true leaves it out)"
                .into(),
        ));
    }
    if tgt.is_none() && discovered && src.is_some() {
        // Only rows make it matter: an empty table with nowhere to go is left out.
        out.push(Pending {
            kind: "table_missing_in_target",
            columns: Vec::new(),
            head: format!(
                "table {target_name} does not exist in the target: skip it (skip = true) or name \
                 its target table (target = \"...\")"
            ),
            base: Class::Ok,
            measures: vec![Measure {
                key: "rows",
                label: "rows would not be migrated (an empty table is left out by itself)".into(),
                sql: "count(*)".into(),
                effect: Effect::Fails,
            }],
            suggestion: Some(Suggestion::Skip),
            settled_by: None,
        });
    } else if tgt.is_none() {
        out.push(
            Pending::fixed(
                "table_missing_in_target",
                &[],
                Class::Blocking,
                format!(
                    "table {target_name} does not exist in the target: create it, name the \
                     target table with target = \"...\", or leave it out with skip = true"
                ),
            )
            .suggest(Some(Suggestion::Skip)),
        );
    }
    let (Some(src), Some(tgt), Some(map)) = (src, tgt, also.or(maps.get(name))) else {
        return Ok(out);
    };

    if also.is_none() {
        table_shape_findings(inputs, src, tgt, &mut out);
    }
    if let Some(filter) = map
        .filter
        .as_ref()
        .filter(|_| !inputs.rejected.contains(unit))
    {
        out.push(match also {
            None => left_behind(filter),
            Some(m) => rows_not_split(filter, m),
        });
    }
    if let Some(m) = also {
        out.extend(split_findings(inputs, m, maps));
    }
    let renames = rename_candidates(inputs, src, tgt, map);

    // Target columns written from a source column or an expression.
    for column in &map.columns {
        let Some(tcol) = tgt.column(&column.name) else {
            continue;
        };
        match &column.value {
            ColumnValue::Source { column: scol, .. } => {
                if scol != &column.name {
                    out.push(Pending::fixed(
                        "renamed",
                        &[scol, &column.name],
                        Class::Ok,
                        format!("renamed to {} by the mapping", column.name),
                    ));
                }
                if let Some(scol) = src.column(scol) {
                    out.extend(column_pair(inputs, src, scol, tgt, tcol, None, target).await?);
                }
            }
            ColumnValue::Expression { sql, .. } => {
                // What the expression replaces: the same-named source column, if any.
                match src.column(&column.name) {
                    Some(scol) => out.extend(
                        column_pair(inputs, src, scol, tgt, tcol, Some(sql), target).await?,
                    ),
                    None => out.push(Pending::fixed(
                        "set_by_expression",
                        &[&column.name],
                        Class::Ok,
                        format!("set by expression {sql:?}"),
                    )),
                }
                if reads_tables(sql) {
                    out.push(Pending::fixed(
                        "expression_reads_target",
                        &[&column.name],
                        Class::Lossy,
                        "the expression reads tables of the target: its result depends on what \
                         the target holds when it runs, and verify cannot check it from the \
                         source alone; a lookup (set = { lookup = \"table\", match = { ... }, \
                         take = \"column\" }) is computed from the exported source rows instead"
                            .into(),
                    ));
                }
            }
            ColumnValue::Lookup { index, .. } => {
                let lookup = &map.lookups[*index];
                let matches: Vec<String> = lookup
                    .matches
                    .iter()
                    .map(|(theirs, own)| format!("{theirs} = {own}"))
                    .collect();
                let mut pending = Pending::fixed(
                    "set_by_lookup",
                    &[&column.name],
                    Class::Ok,
                    format!(
                        "looked up in the source's {} ({}), taking {}{}",
                        lookup.table,
                        matches.join(", "),
                        lookup.take,
                        if lookup.missing_null {
                            "; a key that finds no row gives NULL"
                        } else {
                            ""
                        }
                    ),
                );
                pending
                    .measures
                    .push(lost_references(lookup, maps, inputs.rejected));
                pending
                    .measures
                    .push(ambiguous_keys(lookup, maps, inputs.rejected));
                out.push(pending);
            }
        }
    }

    // Target columns nothing is written to.
    for unwritten in &map.unwritten {
        let c = unwritten.name.as_str();
        let pending = match &unwritten.reason {
            Unwritten::Generated if src.column(c).is_some() => Pending::fixed(
                "generated_column",
                &[c],
                Class::Ok,
                "generated in the target: computed there, the source's values are not copied"
                    .into(),
            ),
            Unwritten::Generated => Pending::fixed(
                "generated_column",
                &[c],
                Class::Ok,
                "only in the target, generated: computed there".into(),
            ),
            Unwritten::Identity => Pending::fixed(
                "target_only_column",
                &[c],
                Class::Ok,
                "only in the target, an identity column: numbered by the target".into(),
            ),
            Unwritten::Default { default } => Pending::fixed(
                "target_only_column",
                &[c],
                Class::Ok,
                format!("only in the target: filled by its default {default}"),
            ),
            Unwritten::Null => Pending::fixed(
                "target_only_column",
                &[c],
                Class::Ok,
                "only in the target, nullable without default: left NULL".into(),
            ),
            Unwritten::Missing => {
                let suggestion = renames
                    .iter()
                    .find(|(_, to, _)| to == c)
                    .map(|(from, to, _)| Suggestion::Rename {
                        from: from.clone(),
                        to: to.clone(),
                    })
                    .unwrap_or_else(|| Suggestion::Set {
                        column: c.to_string(),
                        expression: "TODO (an SQL expression over the source columns)".into(),
                    });
                Pending::fixed(
                    "target_only_not_null",
                    &[c],
                    Class::Blocking,
                    "only in the target, NOT NULL without a default: every insert would fail; \
                     rename a source column to it or set it"
                        .into(),
                )
                .suggest(Some(suggestion))
            }
        };
        out.push(pending);
    }

    // Source columns that are not copied.
    for c in &map.dropped {
        // A value that moved to another table: dropped here, taken there by a lookup.
        let taken_by = maps.values().find_map(|m| {
            m.lookups
                .iter()
                .find(|l| l.table == map.source_table && l.take == *c)
                .map(|l| format!("{}.{}", m.target_table, l.target_column))
        });
        if let Some(there) = taken_by {
            out.push(Pending::fixed(
                "dropped_column",
                &[c],
                Class::Ok,
                format!("dropped here; its values move to {there} (a lookup)"),
            ));
            continue;
        }
        out.push(Pending {
            kind: "dropped_column",
            columns: vec![c.clone()],
            head: "dropped by the mapping".into(),
            base: Class::Ok,
            measures: vec![non_null(
                &col(c),
                "non-NULL values are left behind",
                Effect::Changes,
            )],
            suggestion: None,
            settled_by: None,
        });
    }
    for c in &map.used_by_expressions {
        out.push(Pending::fixed(
            "used_by_expression",
            &[c],
            Class::Ok,
            "not copied as a column; read by a set expression".into(),
        ));
    }
    for c in &map.unmapped {
        let guess = renames.iter().find(|(from, _, _)| from == c);
        let suggestion = guess
            .map(|(from, to, _)| Suggestion::Rename {
                from: from.clone(),
                to: to.clone(),
            })
            .unwrap_or_else(|| Suggestion::Drop { column: c.clone() });
        let hint = match guess {
            Some((_, to, evidence)) => format!(
                "the target has {to} instead, which may be it renamed ({evidence}): rename it, \
                 or drop it"
            ),
            _ => "drop it to leave the data behind on purpose, or rename it to a target column"
                .into(),
        };
        out.push(Pending {
            kind: "source_only_column",
            columns: vec![c.clone()],
            head: format!("only in the source ({hint})"),
            base: Class::Ok,
            measures: vec![non_null(
                &col(c),
                "non-NULL values would be lost",
                Effect::Fails,
            )],
            suggestion: Some(suggestion),
            settled_by: None,
        });
    }

    if also.is_none() {
        user_id_findings(inputs, spec, src, tgt, map, maps, user_lines, &mut out);
        foreign_key_findings(inputs, name, map, maps, &mut out);
    } else {
        for fk in inputs
            .target
            .found
            .foreign_keys
            .iter()
            .filter(|fk| fk.table == map.target_table)
        {
            out.extend(references_left_behind(fk, map, maps, inputs.rejected));
        }
    }
    Ok(out)
}

/// The rows of an also entry's `where` that make no row of its target table (they still move
/// with the table's own unit).
fn rows_not_split(filter: &str, unit: &TableMap) -> Pending {
    let mut pending = left_behind(filter);
    pending.kind = "rows_not_split";
    pending.measures[0].label = format!(
        "rows make no {} row (listed in left-behind/{}.csv; they still move into {})",
        unit.target_table, unit.unit, unit.source_table
    );
    pending.measures[0].effect = Effect::Info;
    pending
}

/// What an also entry adds: which table it feeds, and keys that collide with the rows the
/// table's own unit writes (import would stop at the first with a duplicate key).
fn split_findings(
    inputs: &Inputs<'_>,
    unit: &TableMap,
    maps: &BTreeMap<&str, TableMap>,
) -> Vec<Pending> {
    let mut out = vec![Pending::fixed(
        "also_feeds",
        &[],
        Class::Ok,
        format!(
            "[[tables.{}.also]]: the rows of {} also feed {} ({} column(s) written), loaded \
             at the level of {}",
            unit.source_table,
            unit.source_table,
            unit.target_table,
            unit.columns.len(),
            unit.target_table
        ),
    )];
    let Some(tgt) = inputs.target.found.tables.get(&unit.target_table) else {
        return out;
    };
    // The table's own unit into the same target, with a primary key copied on both sides.
    let Some(owner) = maps
        .values()
        .find(|m| !m.also && m.target_table == unit.target_table)
    else {
        return out;
    };
    // The catalog knows whether there is a primary key, not its columns: the FreshTrack
    // tables' key is `id`.
    if !tgt.has_primary_key || tgt.column("id").is_none() {
        return out;
    }
    let pk = &vec!["id".to_string()];
    let copied = |m: &TableMap| -> Option<Vec<String>> {
        pk.iter()
            .map(|k| match &m.column(k)?.value {
                ColumnValue::Source { column, .. } => Some(column.clone()),
                _ => None,
            })
            .collect()
    };
    let (Some(own), Some(theirs)) = (copied(unit), copied(owner)) else {
        return out;
    };
    let matches: Vec<String> = own
        .iter()
        .zip(&theirs)
        .map(|(o, t)| format!("src.{} = t.{}", quote_ident(t), quote_ident(o)))
        .collect();
    // The owner's rows are aliased `src`, as its `where` expects (the lookups' measures do
    // the same): the condition applies to them unchanged.
    let kept = owner
        .filter
        .as_deref()
        .filter(|_| !inputs.rejected.contains(&owner.unit))
        .map(|f| format!(" AND {}", pipeline::keep_condition(f)))
        .unwrap_or_default();
    out.push(Pending {
        kind: "split_key_collision",
        columns: pk.clone(),
        head: format!("primary key of {}", unit.target_table),
        base: Class::Ok,
        measures: vec![Measure {
            key: "duplicate_keys",
            label: format!(
                "rows write a key that a row of {} writes too (import would stop at the first)",
                owner.source_table
            ),
            sql: count_where(format!(
                "EXISTS (SELECT 1 FROM {} AS src WHERE {}{kept})",
                QualifiedName::new(APP_SCHEMA, &owner.source_table).quoted(),
                matches.join(" AND ")
            )),
            effect: Effect::Fails,
        }],
        suggestion: None,
        settled_by: None,
    });
    out
}

fn col(name: &str) -> String {
    format!("t.{}", quote_ident(name))
}

/// Partitioning and primary keys.
fn table_shape_findings(
    inputs: &Inputs<'_>,
    src: &TableInfo,
    tgt: &TableInfo,
    out: &mut Vec<Pending>,
) {
    match (src.partitioned, tgt.partitioned) {
        (false, true) => {
            let info = inputs.target.partitions.get(&tgt.name);
            let (key, count, has_default) = info.map_or(("?".to_string(), 0, false), |p| {
                (p.key.clone(), p.partitions, p.has_default)
            });
            if has_default {
                out.push(Pending::fixed(
                    "partitioned_in_target",
                    &[],
                    Class::Ok,
                    format!(
                        "partitioned in the target by {key} ({count} partitions, one of them \
                         DEFAULT): rows are routed to their partition"
                    ),
                ));
            } else {
                out.push(Pending::fixed(
                    "partitioned_in_target",
                    &[],
                    Class::Lossy,
                    format!(
                        "partitioned in the target by {key} ({count} partitions, no DEFAULT \
                         partition): a row outside every partition's range would fail"
                    ),
                ));
            }
        }
        (true, false) => out.push(Pending::fixed(
            "partitioned_in_source",
            &[],
            Class::Ok,
            "partitioned in the source, one table in the target".into(),
        )),
        _ => {}
    }
    match (src.has_primary_key, tgt.has_primary_key) {
        (true, false) => out.push(Pending::fixed(
            "primary_key",
            &[],
            Class::Ok,
            "no primary key in the target: duplicates would not be refused".into(),
        )),
        (false, true) => out.push(Pending::fixed(
            "primary_key",
            &[],
            Class::Lossy,
            "the target has a primary key the source lacks: duplicate rows would fail".into(),
        )),
        _ => {}
    }
}

/// Source-only and target-only columns of one table that are probably one column renamed:
/// only when there is exactly one of each and their types are compatible.
fn rename_candidates(
    inputs: &Inputs<'_>,
    src: &TableInfo,
    tgt: &TableInfo,
    map: &TableMap,
) -> Vec<(String, String, String)> {
    let references = |found: &Discovered, table: &str, column: &str| {
        found
            .foreign_keys
            .iter()
            .find(|fk| fk.table == table && fk.columns.len() == 1 && fk.columns[0] == column)
            .map(|fk| fk.references.clone())
    };
    let source_only: Vec<RenameSide> = map
        .unmapped
        .iter()
        .filter_map(|c| src.column(c))
        .map(|c| RenameSide {
            name: c.name.clone(),
            type_name: c.type_name.clone(),
            references: references(&inputs.source.found, &src.name, &c.name),
        })
        .collect();
    let target_only: Vec<RenameSide> = map
        .unwritten
        .iter()
        .filter(|u| {
            matches!(
                u.reason,
                Unwritten::Missing | Unwritten::Null | Unwritten::Default { .. }
            ) && src.column(&u.name).is_none()
        })
        .filter_map(|u| tgt.column(&u.name))
        .map(|c| RenameSide {
            name: c.name.clone(),
            type_name: c.type_name.clone(),
            references: references(&inputs.target.found, &tgt.name, &c.name),
        })
        .collect();
    guess_renames(&source_only, &target_only, |from, to| {
        let (Some(scol), Some(tcol)) = (src.column(from), tgt.column(to)) else {
            return false;
        };
        let s = inputs.source.shape(&src.name, scol);
        let t = inputs.target.shape(&tgt.name, tcol);
        !matches!(compare_shapes(&s.shape, &t.shape, "x"), Verdict::Probe)
    })
}

/// A column only one side has, as the rename guesser sees it.
#[derive(Clone, Debug)]
struct RenameSide {
    name: String,
    type_name: String,
    /// The table its single-column foreign key references.
    references: Option<String>,
}

/// Guesses at the score a pair needs to be suggested (see [`rename_score`]).
const RENAME_THRESHOLD: f64 = 0.6;

/// Source-only columns paired one-to-one with target-only ones that may be them renamed, best
/// first, each with its evidence: (from, to, evidence). `compatible` says whether a value of
/// `from` can be copied into `to` at all; pairs that cannot are never guessed.
fn guess_renames(
    source_only: &[RenameSide],
    target_only: &[RenameSide],
    compatible: impl Fn(&str, &str) -> bool,
) -> Vec<(String, String, String)> {
    let mut scored = Vec::new();
    for s in source_only {
        for t in target_only {
            if !compatible(&s.name, &t.name) {
                continue;
            }
            let (score, evidence) = rename_score(s, t, source_only, target_only);
            if score >= RENAME_THRESHOLD {
                scored.push((score, s.name.clone(), t.name.clone(), evidence));
            }
        }
    }
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| a.1.cmp(&b.1)));
    let mut taken_from = BTreeSet::new();
    let mut taken_to = BTreeSet::new();
    let mut out = Vec::new();
    for (_, from, to, evidence) in scored {
        if taken_from.contains(&from) || taken_to.contains(&to) {
            continue;
        }
        taken_from.insert(from.clone());
        taken_to.insert(to.clone());
        out.push((from, to, evidence));
    }
    out
}

/// The words of a column name, lower-cased, plurals made singular (`alert_rules_id` ->
/// alert, rule, id).
fn name_words(name: &str) -> Vec<String> {
    name.to_lowercase()
        .split('_')
        .filter(|w| !w.is_empty())
        .map(|w| match w.strip_suffix('s') {
            Some(stem) if w.len() > 3 && !w.ends_with("ss") => stem.to_string(),
            _ => w.to_string(),
        })
        .collect()
}

/// The words that say what kind of column it is rather than what it holds.
const KIND_WORDS: [&str; 4] = ["id", "at", "on", "by"];
/// Words that name a point in time, like an `_at` or `_on` suffix.
const TIME_WORDS: [&str; 4] = ["timestamp", "time", "date", "datetime"];

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let current = row[j + 1];
            row[j + 1] = if ca == *cb {
                previous
            } else {
                1 + previous.min(row[j]).min(row[j + 1])
            };
            previous = current;
        }
    }
    row[b.len()]
}

/// How likely `t` is `s` renamed, from 0, with the reasons: the better of name likeness (edit
/// distance) and shared words (all of one name's words in the other counts extra), plus the
/// same kind suffix (`_id`, `_at`, or a time word against a time suffix), the same type, the
/// only column of its type on each side, and foreign keys to the same table.
fn rename_score(
    s: &RenameSide,
    t: &RenameSide,
    source_only: &[RenameSide],
    target_only: &[RenameSide],
) -> (f64, String) {
    let mut evidence = Vec::new();
    let (sw, tw) = (name_words(&s.name), name_words(&t.name));
    let core = |words: &[String]| -> BTreeSet<String> {
        words
            .iter()
            .filter(|w| !KIND_WORDS.contains(&w.as_str()))
            .cloned()
            .collect()
    };
    let (sc, tc) = (core(&sw), core(&tw));
    let distance = levenshtein(&s.name.to_lowercase(), &t.name.to_lowercase());
    let longest = s.name.chars().count().max(t.name.chars().count()).max(1);
    let alike = 1.0 - distance as f64 / longest as f64;
    let shared: Vec<&String> = sc.intersection(&tc).collect();
    let union = sc.union(&tc).count();
    let mut words = if union == 0 {
        0.0
    } else {
        shared.len() as f64 / union as f64
    };
    if !shared.is_empty() && (sc.is_subset(&tc) || tc.is_subset(&sc)) {
        words += 0.3;
    }
    let mut score = if words >= alike && !shared.is_empty() {
        evidence.push(format!(
            "shares the word{} {}",
            if shared.len() > 1 { "s" } else { "" },
            shared
                .iter()
                .map(|w| w.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
        words
    } else {
        if alike >= 0.5 {
            evidence.push(format!("names alike (edit distance {distance})"));
        }
        alike
    };
    let kind = |words: &[String]| -> Option<&'static str> {
        let last = words.last()?.as_str();
        if KIND_WORDS.contains(&last) {
            Some(match last {
                "at" | "on" => "a time",
                "id" => "an id",
                _ => "a by",
            })
        } else if TIME_WORDS.contains(&last) {
            Some("a time")
        } else {
            None
        }
    };
    if let (Some(a), Some(b)) = (kind(&sw), kind(&tw))
        && a == b
    {
        score += 0.2;
        evidence.push(format!("both name {a}"));
    }
    if s.type_name == t.type_name {
        score += 0.2;
        evidence.push(format!("both {}", s.type_name));
        let alone = source_only
            .iter()
            .filter(|c| c.type_name == s.type_name)
            .count()
            == 1
            && target_only
                .iter()
                .filter(|c| c.type_name == t.type_name)
                .count()
                == 1;
        if alone {
            score += 0.2;
            evidence.push(format!("the only {} column on each side", s.type_name));
        }
    }
    if let (Some(a), Some(b)) = (&s.references, &t.references)
        && a == b
    {
        score += 0.3;
        evidence.push(format!("both reference {a}"));
    }
    (score, evidence.join("; "))
}

/// The checks of one source column copied (or replaced by an expression) into one target
/// column: type, enum labels, domains, nullability, defaults, sequences.
#[allow(clippy::too_many_arguments)]
async fn column_pair(
    inputs: &Inputs<'_>,
    src: &TableInfo,
    scol: &Column,
    tgt: &TableInfo,
    tcol: &Column,
    expression: Option<&String>,
    target: &mut Transaction<'_>,
) -> Result<Vec<Pending>> {
    let mut out = Vec::new();
    let c = col(&scol.name);
    let columns: Vec<String> = if scol.name == tcol.name {
        vec![scol.name.clone()]
    } else {
        vec![scol.name.clone(), tcol.name.clone()]
    };
    let arrow = format!("{} -> {}", scol.type_name, tcol.type_name);
    let settled_by = expression.cloned();
    let s = inputs.source.shape(&src.name, scol);
    let t = inputs.target.shape(&tgt.name, tcol);

    let verdict = match compare_shapes(&s.shape, &t.shape, &c) {
        Verdict::Probe => probe_cast(scol, tcol, &c, target).await?,
        v => v,
    };
    let mut pending = match verdict {
        Verdict::Same => None,
        Verdict::Widening(why) => Some(Pending {
            kind: "type_changed",
            columns: columns.clone(),
            head: format!("{arrow} ({why})"),
            base: Class::Ok,
            measures: Vec::new(),
            suggestion: None,
            settled_by: None,
        }),
        Verdict::Measured {
            what,
            base,
            measures,
        } => Some(Pending {
            kind: if what.contains("not in the target's") {
                "enum_labels_missing"
            } else {
                "type_changed"
            },
            columns: columns.clone(),
            head: if what.is_empty() {
                arrow.clone()
            } else {
                format!("{arrow}: {what}")
            },
            base,
            measures,
            suggestion: None,
            settled_by: None,
        }),
        Verdict::Probe => unreachable!("probe_cast answers"),
    };
    if let Some(p) = &mut pending {
        if p.kind == "enum_labels_missing" {
            p.suggestion = Some(Suggestion::Set {
                column: tcol.name.clone(),
                expression: enum_expression(&scol.name, &s.shape, &t.shape, &tcol.type_name),
            });
        } else if p.base == Class::Blocking {
            p.suggestion = Some(Suggestion::Set {
                column: tcol.name.clone(),
                expression: format!(
                    "TODO (convert {} to {})",
                    quote_ident(&scol.name),
                    tcol.type_name
                ),
            });
        }
        p.settled_by = settled_by.clone();
    }
    out.extend(pending);

    // Domains: the target's constraints apply to every inserted value.
    let target_checks: Vec<&Domain> = t
        .domains
        .iter()
        .filter(|d| d.not_null || !d.checks.is_empty())
        .collect();
    if !target_checks.is_empty() && s.domains != t.domains {
        let rules: Vec<String> = target_checks
            .iter()
            .map(|d| {
                let mut parts = d.checks.clone();
                if d.not_null {
                    parts.push("NOT NULL".into());
                }
                format!("{} ({})", d.name, parts.join(", "))
            })
            .collect();
        out.push(Pending {
            kind: "domain_constraints",
            columns: columns.clone(),
            head: format!(
                "the target's domain {} checks every value; the source does not check the same",
                rules.join(", ")
            ),
            base: Class::Lossy,
            measures: vec![non_null(
                &c,
                "values are checked (not measured)",
                Effect::Info,
            )],
            suggestion: None,
            settled_by: settled_by.clone(),
        });
    }

    if tcol.not_null && !scol.not_null {
        out.push(Pending {
            kind: "nullability",
            columns: columns.clone(),
            head: "NOT NULL in the target, nullable in the source".into(),
            base: Class::Ok,
            measures: vec![Measure {
                key: "nulls",
                label: "rows hold NULL (would fail)".into(),
                sql: count_where(format!("{c} IS NULL")),
                effect: Effect::Fails,
            }],
            suggestion: Some(Suggestion::Set {
                column: tcol.name.clone(),
                expression: format!("coalesce(src.{}, TODO)", quote_ident(&scol.name)),
            }),
            settled_by: settled_by.clone(),
        });
    }

    let is_sequence = |c: &Column| {
        c.identity
            || c.default
                .as_deref()
                .is_some_and(|d| d.starts_with("nextval("))
    };
    if is_sequence(tcol) && expression.is_none() {
        out.push(Pending::fixed(
            "sequence",
            &[&tcol.name],
            Class::Ok,
            if tcol.identity {
                "identity column: the source's values are written, then the import moves the \
                 sequence past the largest"
                    .into()
            } else {
                "numbered by a sequence: the source's values are written, then the import moves \
                 the sequence past the largest"
                    .into()
            },
        ));
    } else if scol.default != tcol.default && !is_sequence(scol) {
        let show = |d: &Option<String>| d.clone().unwrap_or_else(|| "none".into());
        out.push(Pending::fixed(
            "default_changed",
            &columns.iter().map(String::as_str).collect::<Vec<_>>(),
            Class::Ok,
            format!(
                "default differs (source: {}, target: {}); it only applies to rows the \
                 application inserts later",
                show(&scol.default),
                show(&tcol.default)
            ),
        ));
    }
    if scol.generated && !tcol.generated {
        out.push(Pending::fixed(
            "generated_in_source",
            &[&scol.name],
            Class::Ok,
            "generated in the source, a plain column in the target: the computed values are \
             copied"
                .into(),
        ));
    }
    Ok(out)
}

/// Asks the target whether the source type casts to the target type. A source type the target
/// does not know travels as text.
async fn probe_cast(
    scol: &Column,
    tcol: &Column,
    c: &str,
    target: &mut Transaction<'_>,
) -> Result<Verdict> {
    let direct = format!(
        "SELECT {}",
        column_map::cast_sql(&format!("NULL::{}", scol.type_name), &tcol.type_name)
    );
    if column_map::prepare_checked(target, &direct).await?.is_ok() {
        return Ok(lossy(
            "converted by the target's cast (not measured)",
            vec![non_null(c, "values are converted", Effect::Info)],
        ));
    }
    let via_text = format!(
        "SELECT {}",
        column_map::cast_sql("NULL::text", &tcol.type_name)
    );
    let known = column_map::prepare_checked(target, &format!("SELECT NULL::{}", scol.type_name))
        .await?
        .is_ok();
    if !known
        && column_map::prepare_checked(target, &via_text)
            .await?
            .is_ok()
    {
        return Ok(lossy(
            format!(
                "the target has no type {}: values travel as text and are parsed as {}",
                scol.type_name, tcol.type_name
            ),
            vec![non_null(
                c,
                "values are converted (not measured)",
                Effect::Info,
            )],
        ));
    }
    Ok(Verdict::Measured {
        what: "no cast between these types: the import would fail".into(),
        base: Class::Blocking,
        measures: vec![non_null(c, "non-NULL values", Effect::Info)],
    })
}

/// `CASE "col"::text WHEN 'old' THEN 'new' ... ELSE "col"::text END::type`, pairing the missing
/// labels with the target's new ones when there is exactly one of each, `TODO` otherwise.
fn enum_expression(column: &str, src: &TypeShape, tgt: &TypeShape, target_type: &str) -> String {
    let (TypeShape::Enum { labels: from, .. }, TypeShape::Enum { labels: to, .. }) = (src, tgt)
    else {
        return "TODO".into();
    };
    let missing: Vec<&String> = from.iter().filter(|l| !to.contains(l)).collect();
    let added: Vec<&String> = to.iter().filter(|l| !from.contains(l)).collect();
    let c = quote_ident(column);
    let whens: Vec<String> = missing
        .iter()
        .map(|m| {
            let new = if missing.len() == 1 && added.len() == 1 {
                quote_literal(added[0])
            } else {
                "TODO".to_string()
            };
            format!("WHEN {} THEN {new}", quote_literal(m))
        })
        .collect();
    format!(
        "CASE {c}::text {} ELSE {c}::text END::{target_type}",
        whens.join(" ")
    )
}

/// The user-id columns of one table: the built-in list, foreign keys to `auth.users`, values,
/// the mapping, and where they land in the target.
#[allow(clippy::too_many_arguments)]
fn user_id_findings(
    inputs: &Inputs<'_>,
    spec: &TableSpec,
    src: &TableInfo,
    tgt: &TableInfo,
    map: &TableMap,
    maps: &BTreeMap<&str, TableMap>,
    lines: &mut Vec<UserIdColumnLine>,
    out: &mut Vec<Pending>,
) {
    let name = spec.name;
    let by_fk: Vec<&String> = inputs
        .source
        .found
        .user_id_columns
        .get(name)
        .map(|v| v.iter().collect())
        .unwrap_or_default();
    let config = inputs.map.table(name);
    let added = |c: &str| config.is_some_and(|t| t.user_ids_add.iter().any(|a| a.value == c));
    let removed = |c: &str| config.is_some_and(|t| t.user_ids_remove.iter().any(|r| r.value == c));
    let values = |c: &str| {
        inputs
            .by_value
            .iter()
            .find(|v| v.table == name && v.column == c)
    };

    let mut all: Vec<String> = spec.user_id_columns.iter().map(|c| c.to_string()).collect();
    for c in by_fk.iter().map(|c| c.to_string()).chain(
        inputs
            .by_value
            .iter()
            .filter(|v| v.table == name && v.matching > 0)
            .map(|v| v.column.clone()),
    ) {
        if !all.contains(&c) {
            all.push(c);
        }
    }
    for c in config.into_iter().flat_map(|t| {
        t.user_ids_add
            .iter()
            .chain(t.user_ids_remove.iter())
            .map(|a| a.value.clone())
    }) {
        if !all.contains(&c) {
            all.push(c);
        }
    }

    for column in &all {
        let c = column.as_str();
        let listed = spec.user_id_columns.contains(&c);
        let fk = by_fk.contains(&column);
        let measured = values(c);
        let rewritten = map.user_id_columns.iter().any(|u| u == column);
        lines.push(UserIdColumnLine {
            table: name.to_string(),
            column: column.clone(),
            listed,
            foreign_key: fk,
            by_value: measured.map(|v| (v.matching, v.non_null)),
            mapping: if added(c) {
                Some("added")
            } else if removed(c) {
                Some("removed")
            } else {
                None
            },
            rewritten,
        });
        if src.column(c).is_none() {
            // Nothing to rewrite, so nothing breaks: a warning until the mapping acknowledges
            // it (the built-in list is a cross-check, not the truth).
            if rewritten {
                out.push(
                    Pending::fixed(
                        "user_id_column_missing",
                        &[c],
                        if added(c) {
                            Class::Blocking
                        } else {
                            Class::Lossy
                        },
                        if added(c) {
                            "added as a user-id column by the mapping, but the source table has \
                             no such column"
                                .into()
                        } else {
                            "in fmig's built-in user-id list, but the source table has no such \
                             column: nothing to rewrite; acknowledge it with \
                             user_id_columns.remove"
                                .into()
                        },
                    )
                    .suggest(Some(Suggestion::RemoveUserId {
                        column: column.clone(),
                    })),
                );
            } else if removed(c) {
                out.push(Pending::fixed(
                    "user_id_column_missing",
                    &[c],
                    Class::Ok,
                    "in fmig's built-in user-id list, absent from the source: acknowledged by \
                     user_id_columns.remove"
                        .into(),
                ));
            }
            continue;
        }
        let share = measured.map(|v| share_text(v.matching, v.non_null));
        let pending = if rewritten {
            let how = if added(c) {
                "added by the mapping".to_string()
            } else if listed {
                "in fmig's list".to_string()
            } else {
                "found by its foreign key to auth.users(id), not in fmig's list".to_string()
            };
            match measured {
                Some(v) if v.non_null > v.matching => Pending::fixed(
                    "user_id_column",
                    &[c],
                    Class::Lossy,
                    format!(
                        "user-id column ({how}, no foreign key): {}; an id that is not a user \
                         has no Stack Auth id to become",
                        share.clone().unwrap_or_default()
                    ),
                ),
                Some(_) => Pending::fixed(
                    "user_id_column",
                    &[c],
                    Class::Ok,
                    format!(
                        "user-id column ({how}, no foreign key): {}",
                        share.clone().unwrap_or_default()
                    ),
                ),
                None if !listed || added(c) => Pending::fixed(
                    "user_id_column",
                    &[c],
                    Class::Ok,
                    format!("user-id column ({how}): rewritten to Stack Auth ids"),
                ),
                None => continue,
            }
        } else if removed(c) {
            let n = measured.map_or(0, |v| v.matching);
            Pending::fixed(
                "user_id_column_removed",
                &[c],
                if n > 0 { Class::Lossy } else { Class::Ok },
                format!(
                    "removed from the user-id columns by the mapping: copied unchanged{}",
                    share
                        .as_ref()
                        .map(|s| format!(" ({s}); they point to no user after the cut-over"))
                        .unwrap_or_default()
                ),
            )
        } else if map.dropped.iter().any(|d| d == column) {
            // Dropped by the mapping: nothing is copied, so nothing points at a lost user (the
            // drop itself is reported with the count of values left behind).
            continue;
        } else if let Some(v) = measured.filter(|v| v.matching > 0) {
            Pending::fixed(
                "user_id_column_by_value",
                &[c],
                Class::Blocking,
                format!(
                    "{}, but it is not a user-id column (no foreign key, not in fmig's list): \
                     copied unchanged, they would point to users that no longer exist; add it to \
                     user_id_columns (or remove it to copy it on purpose)",
                    share_text(v.matching, v.non_null)
                ),
            )
            .suggest(Some(Suggestion::AddUserId {
                column: column.clone(),
            }))
        } else {
            continue;
        };
        out.push(pending);
    }

    // A user-id column whose target column references a table: the Stack Auth id is not a row
    // of that table, so the value must be looked up, not renamed.
    for fk in &inputs.target.found.foreign_keys {
        let [target_column] = fk.columns.as_slice() else {
            continue;
        };
        if fk.table != tgt.name {
            continue;
        }
        let Some(written) = map.column(target_column) else {
            continue;
        };
        let (source_column, settled_by) = match &written.value {
            ColumnValue::Source { column, .. } => (column.clone(), None),
            ColumnValue::Expression { sql, .. } => (target_column.clone(), Some(sql.clone())),
            ColumnValue::Lookup { index, .. } => {
                let lookup = &map.lookups[*index];
                let own = lookup.matches.first().map(|(_, own)| own.clone());
                (
                    own.unwrap_or_else(|| target_column.clone()),
                    Some(format!("lookup in {}", lookup.table)),
                )
            }
        };
        if !map.user_id_columns.contains(&source_column) {
            continue;
        }
        let references = format!("{}({})", fk.references, fk.referenced_columns.join(", "));
        out.push(Pending {
            kind: "user_reference_to_table",
            columns: vec![source_column.clone()],
            head: format!(
                "user-id column, but in the target {} references {references}: the old user id \
                 must become the id of that user's {} row (a lookup in the source's {}, not a \
                 rename)",
                target_column, fk.references, fk.references
            ),
            base: Class::Blocking,
            measures: Vec::new(),
            suggestion: Some(
                lookup_suggestion(maps, fk, target_column, &source_column).unwrap_or_else(|| {
                    Suggestion::Set {
                        column: target_column.clone(),
                        expression: lookup_expression(inputs, maps, fk, &source_column),
                    }
                }),
            ),
            settled_by,
        });
    }
}

/// Whether an expression holds a subquery (`SELECT ... FROM`): it then reads the target's tables.
fn reads_tables(sql: &str) -> bool {
    crate::column_map::mentions(sql, "select") && crate::column_map::mentions(sql, "from")
}

fn share_text(matching: i64, non_null: i64) -> String {
    if non_null == 0 {
        return "no non-NULL values to check".into();
    }
    let percent = if non_null > 0 {
        matching as f64 * 100.0 / non_null as f64
    } else {
        0.0
    };
    let rest = non_null - matching;
    format!(
        "{matching}/{non_null} values ({percent:.1}%) are auth.users ids, {rest} {} not",
        if rest == 1 { "is" } else { "are" }
    )
}

/// `profile_id = { lookup = "profiles", match = { user_id = "profile_id" }, take = "id" }`: the
/// referenced table's source row for the user, found through its one user-id column in the
/// exported source rows. None when that column or the referenced key is not one column.
fn lookup_suggestion(
    maps: &BTreeMap<&str, TableMap>,
    fk: &ForeignKey,
    target_column: &str,
    source_column: &str,
) -> Option<Suggestion> {
    let referenced = maps.values().find(|m| m.target_table == fk.references)?;
    let [their_user] = referenced.user_id_columns.as_slice() else {
        return None;
    };
    let [key] = fk.referenced_columns.as_slice() else {
        return None;
    };
    let take = referenced.columns.iter().find_map(|c| match &c.value {
        ColumnValue::Source { column, .. } if &c.name == key => Some(column.clone()),
        _ => None,
    })?;
    Some(Suggestion::Lookup {
        column: target_column.to_string(),
        table: referenced.source_table.clone(),
        matches: vec![(their_user.clone(), source_column.to_string())],
        take,
    })
}

/// `(SELECT r."id" FROM "public"."profiles" AS r WHERE r."user_id" = src."profile_id")`: the
/// referenced table's row for the user, found through that table's own user-id column.
fn lookup_expression(
    inputs: &Inputs<'_>,
    maps: &BTreeMap<&str, TableMap>,
    fk: &ForeignKey,
    source_column: &str,
) -> String {
    let referenced = maps.values().find(|m| m.target_table == fk.references);
    let user_column = referenced.and_then(|m| {
        let targets: Vec<&str> = m
            .user_id_columns
            .iter()
            .filter_map(|u| m.target_of(u).map(|t| t.name.as_str()))
            .collect();
        match targets.as_slice() {
            [one] => Some(one.to_string()),
            _ => None,
        }
    });
    let [referenced_column] = fk.referenced_columns.as_slice() else {
        return "TODO".into();
    };
    let table = QualifiedName::new(inputs.target.found.schema.as_str(), fk.references.as_str());
    match user_column {
        Some(u) => format!(
            "(SELECT r.{} FROM {} AS r WHERE r.{} = src.{})",
            quote_ident(referenced_column),
            table.quoted(),
            quote_ident(&u),
            quote_ident(source_column)
        ),
        None => format!(
            "(SELECT r.{} FROM {} AS r WHERE TODO = src.{})",
            quote_ident(referenced_column),
            table.quoted(),
            quote_ident(source_column)
        ),
    }
}

/// Foreign keys of one table: those the target adds (rows may break them) and those it drops.
/// A target foreign key whose column is copied from the source and whose referenced table's
/// source rows are filtered by a `where`: rows that reference a row left behind would be
/// rejected by the key, mid-import. Counted over the rows that move; blocking.
fn references_left_behind(
    fk: &ForeignKey,
    map: &TableMap,
    maps: &BTreeMap<&str, TableMap>,
    rejected: &BTreeSet<String>,
) -> Option<Pending> {
    let ([column], [referenced]) = (fk.columns.as_slice(), fk.referenced_columns.as_slice()) else {
        return None;
    };
    let ColumnValue::Source {
        column: own_source, ..
    } = &map.column(column)?.value
    else {
        return None;
    };
    let to = maps.values().find(|m| m.target_table == fk.references)?;
    if rejected.contains(&to.source_table) {
        return None;
    }
    let filter = to.filter.as_deref()?;
    let their_source = to.column(referenced).and_then(|c| match &c.value {
        ColumnValue::Source { column, .. } => Some(column.clone()),
        _ => None,
    })?;
    Some(Pending {
        kind: "references_rows_left_behind",
        columns: vec![own_source.clone()],
        head: format!(
            "references {}({referenced}), whose where leaves rows behind",
            fk.references
        ),
        base: Class::Ok,
        measures: vec![Measure {
            key: "references_left_behind",
            label: format!(
                "rows reference a row of {} that stays behind (the target's foreign key {} \
                 would reject them mid-import; set {column} = {{ lookup = \"{}\", match = \
                 {{ {their_source} = \"{own_source}\" }}, take = \"{their_source}\", \
                 missing = \"null\" }} to write NULL, or leave these rows behind too)",
                to.source_table, fk.constraint, to.source_table
            ),
            sql: count_where(format!(
                "t.{own} IS NOT NULL AND EXISTS (SELECT 1 FROM {} AS src WHERE src.{their} = \
                 t.{own} AND NOT {})",
                QualifiedName::new(APP_SCHEMA, &to.source_table).quoted(),
                pipeline::keep_condition(filter),
                own = quote_ident(own_source),
                their = quote_ident(&their_source),
            )),
            effect: Effect::Fails,
        }],
        suggestion: None,
        settled_by: None,
    })
}

fn foreign_key_findings(
    inputs: &Inputs<'_>,
    table: &str,
    map: &TableMap,
    maps: &BTreeMap<&str, TableMap>,
    out: &mut Vec<Pending>,
) {
    // A source key in target names; None when a column does not survive the mapping.
    let translate = |fk: &ForeignKey| -> Option<(Vec<String>, String, Vec<String>)> {
        let from = maps.get(fk.table.as_str())?;
        let to = maps.get(fk.references.as_str())?;
        let columns: Option<Vec<String>> = fk
            .columns
            .iter()
            .map(|c| from.target_of(c).map(|t| t.name.clone()))
            .collect();
        let referenced: Option<Vec<String>> = fk
            .referenced_columns
            .iter()
            .map(|c| to.target_of(c).map(|t| t.name.clone()))
            .collect();
        Some((columns?, to.target_table.clone(), referenced?))
    };
    let source_keys: Vec<(Vec<String>, String, Vec<String>)> = inputs
        .source
        .found
        .foreign_keys
        .iter()
        .filter(|fk| fk.table == table)
        .filter_map(translate)
        .collect();
    let target_keys: Vec<&ForeignKey> = inputs
        .target
        .found
        .foreign_keys
        .iter()
        .filter(|fk| fk.table == map.target_table)
        .collect();
    for fk in &target_keys {
        if let Some(pending) = references_left_behind(fk, map, maps, inputs.rejected) {
            out.push(pending);
        }
    }
    for fk in &target_keys {
        let key = (
            fk.columns.clone(),
            fk.references.clone(),
            fk.referenced_columns.clone(),
        );
        if source_keys.contains(&key) {
            continue;
        }
        // From a user-id column: reported as a user reference above.
        let from_user_column = match fk.columns.as_slice() {
            [c] => map.column(c).is_some_and(|w| match &w.value {
                ColumnValue::Source { column, .. } => map.user_id_columns.contains(column),
                ColumnValue::Expression { .. } => map.user_id_columns.contains(c),
                ColumnValue::Lookup { index, .. } => map.lookups[*index]
                    .matches
                    .iter()
                    .any(|(_, own)| map.user_id_columns.contains(own)),
            }),
            _ => false,
        };
        if from_user_column {
            continue;
        }
        // Nothing is written to the key's columns: they stay NULL, which no key rejects.
        if fk.columns.iter().all(|c| map.column(c).is_none()) {
            continue;
        }
        // Set by a lookup that takes the referenced column of the referenced table's rows that
        // move: every value written exists there (or is NULL).
        let by_lookup = match (fk.columns.as_slice(), fk.referenced_columns.as_slice()) {
            ([c], [referenced]) => map.column(c).is_some_and(|w| match &w.value {
                ColumnValue::Lookup { index, .. } => {
                    let lookup = &map.lookups[*index];
                    maps.get(lookup.table.as_str()).is_some_and(|to| {
                        to.target_table == fk.references
                            && to
                                .target_of(&lookup.take)
                                .is_some_and(|t| &t.name == referenced)
                    })
                }
                _ => false,
            }),
            _ => false,
        };
        if by_lookup {
            out.push(Pending::fixed(
                "foreign_key_added",
                &fk.columns.iter().map(String::as_str).collect::<Vec<_>>(),
                Class::Ok,
                format!(
                    "the target adds foreign key {} -> {}({}); the lookup takes its values from \
                     the rows of {} that move, so each one exists there (or is NULL)",
                    fk.constraint,
                    fk.references,
                    fk.referenced_columns.join(", "),
                    fk.references
                ),
            ));
            continue;
        }
        out.push(Pending::fixed(
            "foreign_key_added",
            &fk.columns.iter().map(String::as_str).collect::<Vec<_>>(),
            Class::Lossy,
            format!(
                "the target adds foreign key {} ({}) -> {}({}), which the source does not \
                 enforce: a row that breaks it would fail",
                fk.constraint,
                fk.columns.join(", "),
                fk.references,
                fk.referenced_columns.join(", ")
            ),
        ));
    }
    for (columns, references, referenced) in &source_keys {
        let kept = target_keys.iter().any(|fk| {
            &fk.columns == columns
                && &fk.references == references
                && &fk.referenced_columns == referenced
        });
        if !kept {
            out.push(Pending::fixed(
                "foreign_key_dropped",
                &columns.iter().map(String::as_str).collect::<Vec<_>>(),
                Class::Ok,
                format!(
                    "the target no longer enforces ({}) -> {references}({})",
                    columns.join(", "),
                    referenced.join(", ")
                ),
            ));
        }
    }
}

/// Differences that belong to the schema as a whole.
fn schema_findings(inputs: &Inputs<'_>, maps: &BTreeMap<&str, TableMap>) -> Vec<Finding> {
    let mut out = Vec::new();
    let fixed = |kind, columns: Vec<String>, class, message: String| Finding {
        class,
        kind,
        columns,
        message,
        counts: BTreeMap::new(),
        suggestion: None,
        head: String::new(),
        parts: Vec::new(),
    };
    let target = &inputs.target.found;

    // Levels: fmig imports in the order the target's foreign keys give.
    let mut differ = Vec::new();
    for spec in inputs.specs {
        let Some(m) = maps.get(spec.name) else {
            continue;
        };
        if let Some(&level) = target.levels.get(&m.target_table)
            && level != spec.level
        {
            differ.push(format!(
                "{} (listed {}, computed {level})",
                spec.name, spec.level
            ));
        }
    }
    if differ.is_empty() {
        out.push(fixed(
            "levels",
            Vec::new(),
            Class::Ok,
            "the target's foreign keys give the same import levels as fmig's built-in order".into(),
        ));
    } else {
        out.push(fixed(
            "levels",
            Vec::new(),
            Class::Ok,
            format!(
                "the hand-written order disagrees with the target's foreign keys for {}; fmig \
                 imports in the computed order",
                differ.join(", ")
            ),
        ));
    }
    for cycle in &target.cycles {
        out.push(fixed(
            "cycle",
            Vec::new(),
            Class::Lossy,
            format!(
                "the target's foreign keys form a cycle between {}: no table order satisfies \
                 them; the import needs deferred constraints or --disable-fk",
                cycle.join(", ")
            ),
        ));
    }
    for (table, constraint) in &target.self_references {
        out.push(fixed(
            "self_reference",
            Vec::new(),
            Class::Ok,
            format!("{table} references itself ({constraint}): rows must be loaded parents first"),
        ));
    }

    // Enum types present on both sides, by name.
    let source_enums = inputs.source.enums();
    let target_enums = inputs.target.enums();
    for (name, labels) in &source_enums {
        let Some(target_labels) = target_enums.get(name) else {
            continue;
        };
        if labels == target_labels {
            continue;
        }
        let added: Vec<String> = target_labels
            .iter()
            .filter(|l| !labels.contains(l))
            .cloned()
            .collect();
        let missing: Vec<String> = labels
            .iter()
            .filter(|l| !target_labels.contains(l))
            .cloned()
            .collect();
        let mut parts = Vec::new();
        if !added.is_empty() {
            parts.push(format!("the target adds {}", quoted_list(&added)));
        }
        if !missing.is_empty() {
            parts.push(format!(
                "the target lacks {} (the columns using it say whether any row does)",
                quoted_list(&missing)
            ));
        }
        if parts.is_empty() {
            parts.push("the labels are in another order".into());
        }
        out.push(fixed(
            "enum_type",
            Vec::new(),
            Class::Ok,
            format!("enum {name}: {}", parts.join("; ")),
        ));
    }

    // Tables outside the manifest.
    let listed: BTreeSet<&str> = inputs.specs.iter().map(|s| s.name).collect();
    for name in inputs.source.found.tables.keys() {
        if !listed.contains(name.as_str()) {
            out.push(fixed(
                "source_table_not_in_manifest",
                Vec::new(),
                Class::Lossy,
                format!(
                    "source table {name} is not one of fmig's tables: its rows are not migrated"
                ),
            ));
        }
    }
    let targets: BTreeSet<&str> = inputs
        .specs
        .iter()
        .map(|s| inputs.map.target_name(s.name))
        .collect();
    for name in target.tables.keys() {
        if !targets.contains(name.as_str()) {
            out.push(fixed(
                "target_table_not_in_manifest",
                Vec::new(),
                Class::Ok,
                format!("target table {name} is not written by fmig"),
            ));
        }
    }
    sort_findings(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(name: &str, type_name: &str, references: Option<&str>) -> RenameSide {
        RenameSide {
            name: name.into(),
            type_name: type_name.into(),
            references: references.map(String::from),
        }
    }

    fn guesses(source: &[RenameSide], target: &[RenameSide]) -> Vec<(String, String)> {
        guess_renames(source, target, |_, _| true)
            .into_iter()
            .map(|(from, to, evidence)| {
                assert!(!evidence.is_empty(), "{from} -> {to} without evidence");
                (from, to)
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn renames_are_guessed_from_words_suffixes_types_and_keys_one_to_one() {
        // The renames the real rewrite made, each among columns that are no rename.
        let tz = "timestamp with time zone";
        assert_eq!(
            guesses(
                &[
                    side("battery_level", "smallint", None),
                    side("legacy_flag", "boolean", None)
                ],
                &[
                    side("battery", "smallint", None),
                    side("firmware_channel", "text", None)
                ],
            ),
            pairs(&[("battery_level", "battery")])
        );
        assert_eq!(
            guesses(
                &[side("alert_rules_id", "uuid", Some("alert_rules"))],
                &[side("alert_rule_id", "uuid", Some("alert_rules"))],
            ),
            pairs(&[("alert_rules_id", "alert_rule_id")])
        );
        assert_eq!(
            guesses(
                &[
                    side("event_hash", "text", None),
                    side("occurred_at", tz, None)
                ],
                &[side("hash", "text", None), side("timestamp", tz, None)],
            ),
            pairs(&[("event_hash", "hash"), ("occurred_at", "timestamp")])
        );
        assert_eq!(
            guesses(
                &[side("logged_at", tz, None), side("legacy", "text", None)],
                &[
                    side("recorded_at", tz, None),
                    side("temp_unit", "text", None)
                ],
            ),
            pairs(&[("logged_at", "recorded_at")])
        );
        // One-to-one: the better pair wins, the other column is not paired twice.
        assert_eq!(
            guesses(
                &[side("created_at", tz, None), side("updated_at", tz, None)],
                &[side("created_on", tz, None)],
            ),
            pairs(&[("created_at", "created_on")])
        );
        // A pair the types cannot carry is never guessed.
        assert!(
            guess_renames(
                &[side("battery_level", "smallint", None)],
                &[side("battery", "text", None)],
                |_, _| false
            )
            .is_empty()
        );
    }

    fn class_of(v: &Verdict) -> &'static str {
        match v {
            Verdict::Same => "same",
            Verdict::Widening(_) => "widening",
            Verdict::Measured {
                base: Class::Ok, ..
            } => "measured-ok",
            Verdict::Measured { .. } => "lossy",
            Verdict::Probe => "probe",
        }
    }

    fn keys(v: &Verdict) -> Vec<&'static str> {
        match v {
            Verdict::Measured { measures, .. } => measures.iter().map(|m| m.key).collect(),
            _ => Vec::new(),
        }
    }

    #[test]
    fn type_pairs_are_classified() {
        use TypeShape::*;
        let ts = |tz, precision| Timestamp { tz, precision };
        let cases: Vec<(TypeShape, TypeShape, &str, Vec<&str>)> = vec![
            (Varchar(50), Text, "widening", vec![]),
            (Int(4), Int(8), "widening", vec![]),
            (Numeric(Some((5, 2))), Numeric(None), "widening", vec![]),
            (
                Numeric(Some((5, 2))),
                Numeric(Some((7, 2))),
                "widening",
                vec![],
            ),
            (
                Numeric(None),
                Int(4),
                "lossy",
                vec!["fractional", "out_of_range"],
            ),
            (
                Numeric(Some((6, 2))),
                Numeric(Some((6, 1))),
                "lossy",
                vec!["rounded"],
            ),
            (
                Numeric(Some((5, 2))),
                Numeric(Some((4, 1))),
                "lossy",
                vec!["rounded", "overflow"],
            ),
            (
                Numeric(Some((5, 2))),
                Numeric(Some((5, 3))),
                "lossy",
                vec!["overflow"],
            ),
            (Int(8), Int(4), "lossy", vec!["out_of_range"]),
            (Text, Varchar(120), "lossy", vec!["too_long"]),
            (Varchar(200), Varchar(120), "lossy", vec!["too_long"]),
            (Varchar(100), Varchar(120), "widening", vec![]),
            (Jsonb, Text, "lossy", vec!["non_null"]),
            (Json, Jsonb, "lossy", vec!["non_null"]),
            (Jsonb, Json, "widening", vec![]),
            (Array(Box::new(Text)), Text, "lossy", vec!["non_null"]),
            (
                ts(true, 6),
                ts(false, 3),
                "lossy",
                vec!["non_null", "sub_precision"],
            ),
            (ts(false, 6), ts(false, 3), "lossy", vec!["sub_precision"]),
            (ts(false, 3), ts(false, 6), "widening", vec![]),
            (ts(true, 6), ts(true, 6), "same", vec![]),
            (Other("uuid".into()), Text, "widening", vec![]),
            (Other("uuid".into()), Other("bytea".into()), "probe", vec![]),
            (Text, Array(Box::new(Text)), "probe", vec![]),
        ];
        for (src, tgt, want, want_keys) in cases {
            let v = compare_shapes(&src, &tgt, "t.\"c\"");
            assert_eq!(class_of(&v), want, "{src:?} -> {tgt:?}: {v:?}");
            assert_eq!(keys(&v), want_keys, "{src:?} -> {tgt:?}");
        }
    }

    #[test]
    fn enum_labels_missing_in_the_target_are_measured() {
        let src = TypeShape::Enum {
            name: "app_role".into(),
            labels: vec!["owner".into(), "staff".into()],
        };
        let tgt = TypeShape::Enum {
            name: "app_role".into(),
            labels: vec!["owner".into(), "operator".into()],
        };
        let v = compare_shapes(&src, &tgt, "t.\"role\"");
        assert_eq!(class_of(&v), "measured-ok");
        let Verdict::Measured { measures, what, .. } = &v else {
            unreachable!()
        };
        assert!(what.contains("'staff'"), "{what}");
        assert_eq!(
            measures[0].sql,
            "count(*) FILTER (WHERE t.\"role\"::text = ANY (ARRAY['staff']::text[]))"
        );
        assert_eq!(
            enum_expression("role", &src, &tgt, "app_role"),
            "CASE \"role\"::text WHEN 'staff' THEN 'operator' ELSE \"role\"::text END::app_role"
        );
        // Only added labels: nothing to measure.
        let wider = TypeShape::Enum {
            name: "app_role".into(),
            labels: vec!["owner".into(), "staff".into(), "x".into()],
        };
        assert_eq!(class_of(&compare_shapes(&src, &wider, "c")), "same");
    }

    #[test]
    fn counts_decide_the_class() {
        let p = Pending {
            kind: "type_changed",
            columns: vec!["seats".into()],
            head: "numeric -> integer".into(),
            base: Class::Lossy,
            measures: vec![
                fractional("c"),
                out_of_range("c", 4, &TypeShape::Numeric(None)),
            ],
            suggestion: None,
            settled_by: None,
        };
        let counts = |a: i64, b: i64| {
            BTreeMap::from([
                (p.measures[0].sql.clone(), a),
                (p.measures[1].sql.clone(), b),
            ])
        };
        let f = p.clone().finish(&counts(3, 0));
        assert_eq!(f.class, Class::Lossy);
        assert_eq!(
            f.message,
            "numeric -> integer: 3 values have a fractional part (rounded); 0 values are \
             outside the integer range (would fail)"
        );
        assert_eq!(f.counts["fractional"], 3);
        assert_eq!(p.clone().finish(&counts(0, 1)).class, Class::Blocking);
        let both = counts(0, 1);
        let mut settled = p;
        settled.settled_by = Some("round(seats)".into());
        let f = settled.finish(&both);
        assert_eq!(f.class, Class::Ok);
        assert!(
            f.message.starts_with("set by expression \"round(seats)\""),
            "{}",
            f.message
        );
    }

    #[test]
    fn typmods_decode() {
        let types = BTreeMap::new();
        assert_eq!(
            base_shape(&types, 1700, (6 << 16 | 2) + 4, 0),
            TypeShape::Numeric(Some((6, 2)))
        );
        assert_eq!(base_shape(&types, 1043, 124, 0), TypeShape::Varchar(120));
        assert_eq!(base_shape(&types, 1043, -1, 0), TypeShape::Text);
        assert_eq!(
            base_shape(&types, 1114, 3, 0),
            TypeShape::Timestamp {
                tz: false,
                precision: 3
            }
        );
        assert_eq!(
            base_shape(&types, 1184, -1, 0),
            TypeShape::Timestamp {
                tz: true,
                precision: 6
            }
        );
    }
}
