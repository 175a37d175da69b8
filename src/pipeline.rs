//! What `import` and `verify` share about turning a source row into a target row, so the two
//! cannot drift apart: the staging table, the statement that moves staged rows into the
//! target, user-id rewriting under each column's policy, row filters, and lookups.
//!
//! A source row travels as one line of `COPY ... FROM STDIN` text in the source's column
//! order (user-defined types as text, see [`staging_type`]), user ids already rewritten. For a
//! table with lookups, each lookup's value (found by the source's own ids, before the
//! rewrite) is appended to the line as one more field, and the
//! staging table has a column for it (`fmig_lookup_<n>`); the target column then reads it like
//! any other staged column. So a lookup is decided by fmig from the **source's** rows (the
//! export files for import and `verify --against export`, the source database for verify),
//! never from what the target holds: the result does not depend on import order, and verify
//! can recompute it independently.
//!
//! **Row filters** (`where`) are SQL conditions. They are evaluated by the target server over
//! staged source rows, in temporary tables of fmig's own session (nothing the application sees
//! is read or written): import does it in a pass before its first write ([`FilterStage`]), to
//! list the rows that stay behind and to know which rows lookups may find; verify applies the
//! same condition as the `WHERE` of its staged read. Like `set` expressions, a filter sees
//! user-id columns already rewritten.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::{SinkExt, TryStreamExt, pin_mut};
use tokio_postgres::Client;

use crate::catalog::{Column, Discovered, TableInfo};
use crate::cli::Unmapped;
use crate::column_map::{ColumnMap, ColumnValue, Lookup, TableMap, TargetColumn, staging_type};
use crate::connect::server_message;
use crate::ident::{QualifiedName, quote_ident};
use crate::manifest::APP_SCHEMA;
use crate::metadata::{FileEntry, Metadata};

/// Import's rule, shared with verify: a table goes straight into the target with `COPY` when
/// every written column is a source column of the same type; anything else (an expression, a
/// lookup, a type change) goes through the staging table.
pub fn copies_directly(map: &TableMap) -> bool {
    map.columns.iter().all(|t| match &t.value {
        ColumnValue::Source { source_type, .. } => *source_type == t.target_type,
        ColumnValue::Expression { .. } | ColumnValue::Lookup { .. } => false,
    })
}

/// The staging table's column definitions: the source columns (name, type oid, type name) with
/// their [`staging_type`], then one column per lookup.
pub fn staging_columns(columns: &[(&str, u32, &str)], map: &TableMap) -> Vec<String> {
    let mut defs: Vec<String> = columns
        .iter()
        .map(|(name, oid, ty)| format!("{} {}", quote_ident(name), staging_type(*oid, ty)))
        .collect();
    for (i, lookup) in map.lookups.iter().enumerate() {
        defs.push(format!(
            "{} {}",
            quote_ident(&lookup_column(i)),
            lookup.take_type
        ));
    }
    defs
}

/// The staging column of lookup `index`.
pub fn lookup_column(index: usize) -> String {
    format!("fmig_lookup_{index}")
}

/// A target column's value over the staged row `src`. Every source column is cast to the
/// target column's type: user-defined types are staged as text, and the target's enum, domain
/// or array of enums only accepts them through a cast (`column "plan" is of type plan but
/// expression is of type text` otherwise); for a column of the same built-in type the cast
/// does nothing.
pub fn staged_item(c: &TargetColumn) -> String {
    match &c.value {
        ColumnValue::Source { column, .. } => {
            format!("CAST(src.{} AS {})", quote_ident(column), c.target_type)
        }
        _ => c.select_sql(),
    }
}

/// `INSERT INTO target (cols) SELECT <staged items> FROM <from> AS src`: the statement import
/// runs per batch (`from` = the staging table) and plan prepares (`from` = a row of NULLs).
pub fn insert_sql(target: &QualifiedName, map: &TableMap, from: &str) -> String {
    let list: Vec<String> = map.columns.iter().map(|t| quote_ident(&t.name)).collect();
    let select: Vec<String> = map.columns.iter().map(staged_item).collect();
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM {from} AS src",
        target.quoted(),
        list.join(", "),
        select.join(", ")
    )
}

/// The `WHERE` that keeps a row: the filter is true (NULL counts as not true, as in SQL).
pub fn keep_condition(filter: &str) -> String {
    format!("coalesce(({filter}), false)")
}

/// A row of NULLs typed like the staging table: `(SELECT NULL::t AS "c", ...)`, what plan
/// prepares statements over.
pub fn probe_row(columns: &[(&str, u32, &str)], map: &TableMap) -> String {
    let mut items: Vec<String> = columns
        .iter()
        .map(|(name, oid, ty)| format!("NULL::{} AS {}", staging_type(*oid, ty), quote_ident(name)))
        .collect();
    for (i, lookup) in map.lookups.iter().enumerate() {
        items.push(format!(
            "NULL::{} AS {}",
            lookup.take_type,
            quote_ident(&lookup_column(i))
        ));
    }
    format!("(SELECT {})", items.join(", "))
}

/// How unmapped user ids of one column are treated, and what the rewrite decided for a row.
#[derive(Clone, Debug)]
pub struct UserIds {
    /// Old Supabase id (lower-cased) -> Stack Auth id.
    pub ids: Arc<HashMap<String, String>>,
    /// (field index in the source line, policy).
    pub columns: Vec<(usize, Unmapped)>,
    /// Fields whose policy decides whether the row stays behind but whose text is kept: the
    /// match columns of a looked-up table, so lookup keys compare the source's own ids.
    pub untouched: Vec<usize>,
}

/// What rewriting a row's user ids did.
#[derive(Debug, PartialEq, Eq)]
pub enum Rewritten {
    Kept,
    /// A `skip_row` column held an id without a mapping: the row stays behind.
    LeftBehind {
        column: usize,
    },
}

impl UserIds {
    /// Rewrites the user-id fields of one COPY text line (no trailing newline) into `out`,
    /// with a newline. `fail` ids were refused before the load, so they are written as NULL
    /// here (what verify expects of a row import never wrote is irrelevant: it did not start).
    pub fn rewrite_line(&self, line: &[u8], out: &mut Vec<u8>) -> Rewritten {
        let start = out.len();
        if self.columns.is_empty() {
            out.extend_from_slice(line);
            out.push(b'\n');
            return Rewritten::Kept;
        }
        for (i, field) in line.split(|&b| b == b'\t').enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            let policy = self.columns.iter().find(|(c, _)| *c == i).map(|(_, p)| *p);
            match policy {
                Some(policy) if field != b"\\N" => {
                    let old = String::from_utf8_lossy(field).to_ascii_lowercase();
                    let keep = self.untouched.contains(&i);
                    match self.ids.get(&old) {
                        Some(_) if keep => out.extend_from_slice(field),
                        Some(new) => out.extend_from_slice(new.as_bytes()),
                        None if keep && policy != Unmapped::SkipRow => out.extend_from_slice(field),
                        None => match policy {
                            Unmapped::Keep => out.extend_from_slice(field),
                            Unmapped::SkipRow => {
                                out.truncate(start);
                                return Rewritten::LeftBehind { column: i };
                            }
                            Unmapped::Null | Unmapped::Fail => out.extend_from_slice(b"\\N"),
                        },
                    }
                }
                _ => out.extend_from_slice(field),
            }
        }
        out.push(b'\n');
        Rewritten::Kept
    }
}

/// The fields of a COPY text line, borrowed.
pub fn fields(line: &[u8]) -> Vec<&[u8]> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.split(|&b| b == b'\t').collect()
}

/// One lookup's values, built from the looked-up table's source rows: key (the match fields of
/// the looked-up row, tab-joined, as COPY text) -> the taken field. Rows that stay behind are
/// not in it, so a key that finds one of them is a lost reference like a key that finds none.
#[derive(Debug, Default)]
pub struct LookupValues {
    values: HashMap<Vec<u8>, Vec<u8>>,
    /// Keys that several looked-up rows have: a row whose key is one of them finds no single
    /// row ([`Found::Ambiguous`]); keys nobody looks up do no harm.
    ambiguous: std::collections::HashSet<Vec<u8>>,
}

/// The answer of a lookup for one row.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    Value(&'a [u8]),
    /// The key is NULL: the value is NULL, nothing is lost.
    NullKey,
    /// No migrated row has the key.
    Lost,
    /// Several migrated rows have the key.
    Ambiguous,
}

impl LookupValues {
    /// Adds a looked-up row (its fields in source order).
    pub fn add(&mut self, key_fields: &[usize], take: usize, row: &[&[u8]]) {
        let Some(key) = key_of(key_fields, row) else {
            return;
        };
        let value = row[take].to_vec();
        if self.values.insert(key.clone(), value).is_some() {
            self.ambiguous.insert(key);
        }
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The value for a row whose match fields (in this table) are `key_fields`.
    pub fn find(&self, key_fields: &[usize], row: &[&[u8]]) -> Found<'_> {
        match key_of(key_fields, row) {
            None => Found::NullKey,
            Some(key) if self.ambiguous.contains(&key) => Found::Ambiguous,
            Some(key) => self
                .values
                .get(&key)
                .map_or(Found::Lost, |v| Found::Value(v.as_slice())),
        }
    }
}

/// The tab-joined fields at `indices`; `None` when one of them is NULL.
fn key_of(indices: &[usize], row: &[&[u8]]) -> Option<Vec<u8>> {
    let mut key = Vec::new();
    for (n, &i) in indices.iter().enumerate() {
        let field = row.get(i).copied().unwrap_or(b"\\N");
        if field == b"\\N" {
            return None;
        }
        if n > 0 {
            key.push(b'\t');
        }
        key.extend_from_slice(field);
    }
    Some(key)
}

/// A table's lookups, ready to apply to its rows: per lookup, the indices of this table's match
/// columns in the source line, and the values.
#[derive(Clone, Debug, Default)]
pub struct Lookups {
    pub keys: Vec<Vec<usize>>,
    pub values: Vec<Arc<LookupValues>>,
    /// Per lookup: a lost key gives NULL (`missing = "null"`).
    pub missing_null: Vec<bool>,
}

impl Lookups {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Appends each lookup's value as a field to `line` (a COPY text line ending in `\n`),
    /// its keys read from `line` itself. Returns the index of the first lookup whose key is
    /// lost (its field is NULL).
    pub fn append(&self, line: &mut Vec<u8>) -> Option<usize> {
        if self.is_empty() {
            return None;
        }
        let body = line.strip_suffix(b"\n").unwrap_or(line).to_vec();
        self.append_keyed(line, &fields(&body))
    }

    /// [`Lookups::append`] with the keys read from `key_row`: the source row as exported, before
    /// its user ids were rewritten (the looked-up rows are keyed by the source's ids too).
    pub fn append_keyed(&self, line: &mut Vec<u8>, key_row: &[&[u8]]) -> Option<usize> {
        if self.is_empty() {
            return None;
        }
        let row = key_row;
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        let mut lost = None;
        for (n, (keys, values)) in self.keys.iter().zip(&self.values).enumerate() {
            line.push(b'\t');
            match values.find(keys, row) {
                Found::Value(v) => line.extend_from_slice(v),
                Found::NullKey => line.extend_from_slice(b"\\N"),
                Found::Lost | Found::Ambiguous => {
                    line.extend_from_slice(b"\\N");
                    lost.get_or_insert(n);
                }
            }
        }
        line.push(b'\n');
        lost
    }
}

/// Index of `column` among `columns`, or an error naming the table.
pub fn position(columns: &[String], column: &str, table: &str) -> Result<usize> {
    columns
        .iter()
        .position(|c| c == column)
        .ok_or_else(|| anyhow!("{table} has no column {column} in the export"))
}

/// Per lookup of `map`: where its match columns are in this table's source line.
pub fn lookup_keys(map: &TableMap, columns: &[String]) -> Result<Vec<Vec<usize>>> {
    map.lookups
        .iter()
        .map(|l| {
            l.matches
                .iter()
                .map(|(_, own)| position(columns, own, &map.source_table))
                .collect()
        })
        .collect()
}

/// What a lookup reads in the looked-up table: its match columns and the taken column.
pub fn looked_up_fields(lookup: &Lookup, columns: &[String]) -> Result<(Vec<usize>, usize)> {
    let keys = lookup
        .matches
        .iter()
        .map(|(theirs, _)| position(columns, theirs, &lookup.table))
        .collect::<Result<Vec<_>>>()?;
    Ok((keys, position(columns, &lookup.take, &lookup.table)?))
}

/// Stages numbered source lines (`<row>\t<fields>\n`) in a temporary table on `client` and
/// returns the row numbers for which `filter` is not true. `defs` are the staging columns
/// (without the row number).
pub struct FilterStage<'a> {
    client: &'a Client,
    name: String,
    filter: String,
}

impl<'a> FilterStage<'a> {
    pub async fn create(
        client: &'a Client,
        table: &str,
        defs: &[String],
        filter: &str,
    ) -> Result<FilterStage<'a>> {
        let name = format!("fmig_filter_{table}");
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {0}; CREATE TEMP TABLE {0} (fmig_row bigint, {1})",
                quote_ident(&name),
                defs.join(", ")
            ))
            .await
            .map_err(|e| {
                anyhow!(
                    "{table}: could not create the filter's staging table: {}",
                    server_message(&e)
                )
            })?;
        Ok(FilterStage {
            client,
            name,
            filter: filter.to_string(),
        })
    }

    /// Sends a batch of numbered lines.
    pub async fn send(&self, data: Vec<u8>) -> Result<()> {
        let sink = self
            .client
            .copy_in(format!("COPY {} FROM STDIN", quote_ident(&self.name)).as_str())
            .await
            .map_err(|e| anyhow!("{}", server_message(&e)))?;
        pin_mut!(sink);
        sink.send(Bytes::from(data)).await?;
        sink.finish()
            .await
            .map_err(|e| anyhow!("staging rows for the filter: {}", server_message(&e)))?;
        Ok(())
    }

    /// The row numbers the filter leaves behind; the staging table is dropped.
    pub async fn left_behind(self, table: &str) -> Result<BTreeSet<u64>> {
        let sql = format!(
            "COPY (SELECT fmig_row FROM {} AS src WHERE NOT {}) TO STDOUT",
            quote_ident(&self.name),
            keep_condition(&self.filter)
        );
        let stream = self.client.copy_out(sql.as_str()).await.map_err(|e| {
            anyhow!(
                "{table}: the target could not evaluate where = {:?}: {}",
                self.filter,
                server_message(&e)
            )
        })?;
        pin_mut!(stream);
        let mut text = Vec::new();
        while let Some(chunk) = stream.try_next().await? {
            text.extend_from_slice(&chunk);
        }
        let mut rows = BTreeSet::new();
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let n: u64 = std::str::from_utf8(line)
                .ok()
                .and_then(|t| t.parse().ok())
                .ok_or_else(|| anyhow!("unexpected row number from the filter"))?;
            rows.insert(n);
        }
        self.client
            .batch_execute(&format!("DROP TABLE {}", quote_ident(&self.name)))
            .await?;
        Ok(rows)
    }
}

/// Why a row of a table stays behind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The table's `where` is not true for it.
    Filter,
    /// A `skip_row` user-id column holds a user without a Stack Auth account.
    UnmappedUser { column: String },
}

impl Reason {
    pub fn text(&self) -> String {
        match self {
            Reason::Filter => "where".into(),
            Reason::UnmappedUser { column } => format!("unmapped user in {column}"),
        }
    }
}

/// Rows (0-based index in the export file) that stay behind, per source table.
pub type LeftBehind = BTreeMap<String, BTreeMap<u64, Reason>>;

/// Prepares, on the target, every statement import will run for the mapping's tables (never
/// run): the `INSERT ... SELECT` of each staged table over a row of NULLs typed like the
/// staging table, and each `where` condition. So `plan` rejects what import would, e.g. a
/// target column whose type has no cast from the staged value. Problems name the table and
/// the server's message.
pub async fn check_statements(
    column_map: &crate::column_map::ColumnMap,
    specs: &[crate::manifest::TableSpec],
    source: &crate::catalog::Discovered,
    target: &crate::catalog::Discovered,
    tx: &mut tokio_postgres::Transaction<'_>,
) -> Result<()> {
    let problems = rejected_statements(column_map, specs, source, target, tx).await?;
    if problems.is_empty() {
        return Ok(());
    }
    let lines: Vec<String> = problems
        .iter()
        .map(|(table, problem)| format!("{table}: {problem}"))
        .collect();
    bail!(
        "{} statement(s) import would run are rejected by the target:\n  {}\n  next step: \
         correct the column mapping (the message names the column or condition)",
        lines.len(),
        lines.join("\n  ")
    )
}

/// [`check_statements`]' problems as (source table, what the target rejects and why), for
/// `plan` to report among the table's differences.
pub async fn rejected_statements(
    column_map: &crate::column_map::ColumnMap,
    specs: &[crate::manifest::TableSpec],
    source: &crate::catalog::Discovered,
    target: &crate::catalog::Discovered,
    tx: &mut tokio_postgres::Transaction<'_>,
) -> Result<Vec<(String, String)>> {
    let mut problems = Vec::new();
    for spec in specs {
        if column_map.is_skipped(spec.name)
            || !source.tables.contains_key(spec.name)
            || !target
                .tables
                .contains_key(column_map.target_name(spec.name))
        {
            continue;
        }
        for map in column_map.resolve_units(spec, source, target)? {
            if target.tables.contains_key(&map.target_table) {
                problems.extend(rejected_by_target(&map, source, tx).await?);
            }
        }
    }
    Ok(problems)
}

/// [`rejected_statements`] for one unit.
async fn rejected_by_target(
    map: &TableMap,
    source: &crate::catalog::Discovered,
    tx: &mut tokio_postgres::Transaction<'_>,
) -> Result<Vec<(String, String)>> {
    let mut problems = Vec::new();
    {
        let info = &source.tables[&map.source_table];
        let typed: Vec<(&str, u32, &str)> = info
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.type_oid, c.type_name.as_str()))
            .collect();
        let row = probe_row(&typed, map);
        let target_name = QualifiedName::new(crate::manifest::APP_SCHEMA, &map.target_table);
        let mut statements = Vec::new();
        if !copies_directly(map) {
            statements.push((
                "the INSERT from the staging table",
                insert_sql(&target_name, map, &row),
            ));
        }
        if let Some(filter) = &map.filter {
            let bare = probe_row(
                &typed,
                &TableMap {
                    lookups: Vec::new(),
                    ..map.clone()
                },
            );
            statements.push((
                "the where condition",
                format!(
                    "SELECT 1 FROM {bare} AS src WHERE {}",
                    keep_condition(filter)
                ),
            ));
        }
        for (what, sql) in statements {
            if let Err(err) = crate::column_map::prepare_checked(tx, &sql).await? {
                problems.push((
                    map.unit.clone(),
                    format!("the target rejects {what}: {}", server_message(&err)),
                ));
            }
        }
    }
    Ok(problems)
}

/// What a stream of source lines does with each line: appends the line to shape into the
/// batch (with its newline) and says whether it is kept.
pub trait LineShaper: FnMut(&[u8], &mut Vec<u8>) -> bool + Send + 'static {}
impl<F: FnMut(&[u8], &mut Vec<u8>) -> bool + Send + 'static> LineShaper for F {}

/// The shape of the plain streams: user ids rewritten, `skip_row` rows left out.
pub fn rewritten(user_ids: UserIds) -> impl LineShaper {
    move |line, out| user_ids.rewrite_line(line, out) == Rewritten::Kept
}

/// Batches of `batch_rows` shaped COPY text lines of a source table's rows (source column
/// order), read from the source database by `copy` (a `COPY (SELECT ...) TO STDOUT` in text
/// format) on a task of its own, so the consumer works while the next batch is read.
pub fn db_lines(
    source: Client,
    copy: String,
    mut shape: impl LineShaper,
    batch_rows: usize,
) -> (
    tokio::sync::mpsc::Receiver<Vec<u8>>,
    tokio::task::JoinHandle<Result<()>>,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let task = tokio::spawn(async move {
        let stream = source
            .copy_out(copy.as_str())
            .await
            .map_err(|e| anyhow!("{}", server_message(&e)))?;
        pin_mut!(stream);
        let mut pending: Vec<u8> = Vec::new();
        let mut batch: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut rows = 0usize;
        while let Some(chunk) = stream.try_next().await? {
            pending.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
                if shape(&pending[start..start + end], &mut batch) {
                    rows += 1;
                }
                start += end + 1;
                if rows == batch_rows {
                    rows = 0;
                    if sender.send(std::mem::take(&mut batch)).await.is_err() {
                        bail!("stopped");
                    }
                }
            }
            pending.drain(..start);
        }
        if rows > 0 {
            let _ = sender.send(batch).await;
        }
        Ok(())
    });
    (receiver, task)
}

/// Reads an export file row by row as COPY text lines in the file's column order, as exported
/// (user ids not rewritten): `on_row(index, line)`. The file is checked against its metadata
/// entry (SHA-256, size) once read: a file edited after the export is an error, not data.
pub fn read_export_lines(
    path: &std::path::Path,
    entry: &FileEntry,
    mut on_row: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let columns: Vec<String> = entry.columns.iter().map(|c| c.name.clone()).collect();
    let kinds = entry
        .columns
        .iter()
        .map(|c| {
            c.kind().ok_or_else(|| {
                anyhow!(
                    "metadata.json: {}.{} has an unknown kind",
                    entry.name,
                    c.name
                )
            })
        })
        .collect::<Result<Vec<_>>>()?;
    // Whether each column is NOT NULL (see `copy_text::write_export_field`).
    let not_null: Vec<bool> = entry.columns.iter().map(|c| c.not_null).collect();
    let mut raw = Vec::new();
    let read = crate::json_rows::read_rows_checked(path, &columns, &kinds, |i, values| {
        raw.clear();
        for (n, value) in values.iter().enumerate() {
            if n > 0 {
                raw.push(b'\t');
            }
            crate::copy_text::write_export_field(&mut raw, &kinds[n], not_null[n], value)
                .with_context(|| format!("row {} column {}", i + 1, columns[n]))?;
        }
        on_row(i, &raw)
    })
    .with_context(|| format!("reading {}", path.display()))?;
    entry.check_read(path, &read)
}

/// [`db_lines`] for an export file (read on a blocking thread; checked against its entry
/// before the last batch is sent, so a file edited after the export is never taken as data).
pub fn file_lines(
    path: std::path::PathBuf,
    entry: crate::metadata::FileEntry,
    mut shape: impl LineShaper,
    batch_rows: usize,
) -> (
    tokio::sync::mpsc::Receiver<Vec<u8>>,
    tokio::task::JoinHandle<Result<()>>,
) {
    let (sender, receiver) = tokio::sync::mpsc::channel::<Vec<u8>>(2);
    let task = tokio::task::spawn_blocking(move || {
        let mut batch = Vec::with_capacity(1 << 20);
        let mut rows = 0usize;
        read_export_lines(&path, &entry, |_, raw| {
            if shape(raw, &mut batch) {
                rows += 1;
            }
            if rows == batch_rows {
                rows = 0;
                if sender.blocking_send(std::mem::take(&mut batch)).is_err() {
                    bail!("stopped");
                }
            }
            Ok(())
        })?;
        if rows > 0 {
            let _ = sender.blocking_send(batch);
        }
        Ok(())
    });
    (receiver, task)
}

/// Rows per batch of [`db_lines`] and [`file_lines`] when reading a looked-up table.
pub const LINE_BATCH_ROWS: usize = 20_000;

/// One lookup's values from a stream of the looked-up table's lines ([`db_lines`] or
/// [`file_lines`], its `skip_row` rows already left out). With the looked-up table's filter,
/// its rows are staged on `client` (temporary table) and the rows it leaves behind removed, so
/// a key that finds only such a row is lost.
pub async fn lookup_values(
    mut lines: tokio::sync::mpsc::Receiver<Vec<u8>>,
    task: tokio::task::JoinHandle<Result<()>>,
    lookup: &Lookup,
    columns: &[String],
    filter: Option<(&Client, Vec<String>, &str)>,
) -> Result<LookupValues> {
    let (keys, take) = looked_up_fields(lookup, columns)?;
    let stage = match &filter {
        Some((client, defs, condition)) => {
            Some(FilterStage::create(client, &lookup.table, defs, condition).await?)
        }
        None => None,
    };
    // Candidates in stream order; with a filter, the ones it leaves behind are removed below.
    let mut candidates: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut values = LookupValues::default();
    let mut n = 0u64;
    while let Some(batch) = lines.recv().await {
        let mut numbered = Vec::new();
        for line in batch.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let row = fields(line);
            if stage.is_some() {
                numbered.extend_from_slice(n.to_string().as_bytes());
                numbered.push(b'\t');
                numbered.extend_from_slice(line);
                numbered.push(b'\n');
                candidates.push((line.to_vec(), Vec::new()));
            } else {
                values.add(&keys, take, &row);
            }
            n += 1;
        }
        if let Some(stage) = &stage {
            stage.send(numbered).await?;
        }
    }
    task.await
        .map_err(|e| anyhow!("the reader of {} panicked: {e}", lookup.table))??;
    if let Some(stage) = stage {
        let gone = stage.left_behind(&lookup.table).await?;
        for (i, (line, _)) in candidates.iter().enumerate() {
            if !gone.contains(&(i as u64)) {
                values.add(&keys, take, &fields(line));
            }
        }
    }
    Ok(values)
}

/// [`ColumnMap::check_expressions`] and [`check_statements`] in a read-only transaction of the
/// target, before anything is written (import and verify).
pub async fn check_mapping(
    column_map: &ColumnMap,
    source: &Discovered,
    target: &Discovered,
    client: &mut Client,
) -> Result<()> {
    let mut tx = client
        .build_transaction()
        .read_only(true)
        .start()
        .await
        .context("could not open a read-only transaction on the target")?;
    let specs = crate::manifest::effective(source);
    let mut checked = column_map
        .check_expressions(specs, source, target, &mut tx)
        .await;
    if checked.is_ok() {
        checked = check_statements(column_map, specs, source, target, &mut tx).await;
    }
    tx.rollback().await?;
    checked.map_err(|e| {
        anyhow!(
            "{e:#}\n  Nothing was written. next step: correct the expression in the mapping file \
             (fmig plan checks it the same way)"
        )
    })
}

/// The source's shape as `metadata.json` records it, in the form the column mapping expects.
pub fn source_catalog(metadata: &Metadata) -> Discovered {
    let mut found = Discovered {
        schema: APP_SCHEMA.to_string(),
        auth_users_present: true,
        ..Discovered::default()
    };
    for entry in &metadata.tables {
        let columns = entry
            .columns
            .iter()
            .map(|c| Column {
                name: c.name.clone(),
                type_oid: c.type_oid,
                type_name: c.type_name.clone(),
                type_kind: 'b',
                type_category: if c.json.starts_with("array:") {
                    'A'
                } else {
                    'U'
                },
                base_oid: None,
                not_null: c.not_null,
                default: None,
                generated: c.generated,
                identity: false,
            })
            .collect();
        found.tables.insert(
            entry.name.clone(),
            TableInfo {
                name: entry.name.clone(),
                partitioned: false,
                has_primary_key: false,
                columns,
            },
        );
        found.levels.insert(entry.name.clone(), entry.level);
        found
            .user_id_columns
            .insert(entry.name.clone(), entry.user_id_columns.clone());
    }
    found
}

/// (name, type oid, type name) of an export file's columns, as the pipeline takes them.
pub fn entry_columns(entry: &FileEntry) -> Vec<(&str, u32, &str)> {
    entry
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid, c.type_name.as_str()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_ids(policy: Unmapped) -> UserIds {
        let mut ids = HashMap::new();
        ids.insert("aaaa".to_string(), "NEW-A".to_string());
        UserIds {
            ids: Arc::new(ids),
            columns: vec![(1, policy)],
            untouched: Vec::new(),
        }
    }

    #[test]
    fn user_ids_follow_their_column_policy() {
        let mut out = Vec::new();
        assert_eq!(
            user_ids(Unmapped::Null).rewrite_line(b"1\tAAAA\tx", &mut out),
            Rewritten::Kept
        );
        assert_eq!(out, b"1\tNEW-A\tx\n");
        for (policy, expected) in [
            (Unmapped::Null, &b"2\t\\N\tx\n"[..]),
            (Unmapped::Keep, &b"2\tbbbb\tx\n"[..]),
        ] {
            let mut out = Vec::new();
            user_ids(policy).rewrite_line(b"2\tbbbb\tx", &mut out);
            assert_eq!(out, expected, "{policy:?}");
        }
        let mut out = b"earlier\n".to_vec();
        assert_eq!(
            user_ids(Unmapped::SkipRow).rewrite_line(b"2\tbbbb\tx", &mut out),
            Rewritten::LeftBehind { column: 1 }
        );
        assert_eq!(
            out, b"earlier\n",
            "a left-behind row leaves nothing in the batch"
        );
    }

    #[test]
    fn lookups_append_values_and_report_lost_keys() {
        let mut values = LookupValues::default();
        values.add(&[1], 0, &[b"p1", b"u1"]);
        values.add(&[1], 0, &[b"p2", b"\\N"]);
        let lookups = Lookups {
            keys: vec![vec![2]],
            values: vec![Arc::new(values)],
            missing_null: vec![false],
        };
        let mut line = b"r1\tx\tu1\n".to_vec();
        assert_eq!(lookups.append(&mut line), None);
        assert_eq!(line, b"r1\tx\tu1\tp1\n");
        let mut line = b"r2\tx\t\\N\n".to_vec();
        assert_eq!(lookups.append(&mut line), None, "a NULL key loses nothing");
        assert_eq!(line, b"r2\tx\t\\N\t\\N\n");
        let mut line = b"r3\tx\tu9\n".to_vec();
        assert_eq!(lookups.append(&mut line), Some(0));
        assert_eq!(line, b"r3\tx\tu9\t\\N\n");
    }

    #[test]
    fn a_key_shared_by_two_rows_is_ambiguous() {
        let mut values = LookupValues::default();
        values.add(&[0], 1, &[b"k", b"v1"]);
        values.add(&[0], 1, &[b"k", b"v2"]);
        values.add(&[0], 1, &[b"j", b"v3"]);
        assert_eq!(values.find(&[0], &[b"k"]), Found::Ambiguous);
        assert_eq!(values.find(&[0], &[b"j"]), Found::Value(b"v3"));
    }
}
