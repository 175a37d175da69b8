//! Import's decisions about rows, made from the export alone before the first write: which rows
//! stay behind (a table's `where`, a `skip_row` user-id column) and what each lookup finds. A
//! lookup that finds nothing stops the import here, with nothing written, unless its entry says
//! `missing = "null"`. The rows that stay behind are listed in `left-behind/<table>.csv`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::TableLoad;
use crate::catalog::Discovered;
use crate::cli::Unmapped;
use crate::column_map::{ColumnMap, Lookup, TableMap};
use crate::files;
use crate::json_rows;
use crate::manifest;
use crate::metadata::{FileEntry, Metadata};
use crate::pipeline::{self, FilterStage, LeftBehind, LookupValues, Lookups, Reason, UserIds};
use crate::report::thousands;

/// Rows sent to the filter's staging table per round trip.
const FILTER_BATCH_ROWS: usize = 20_000;
/// Lost references named per lookup in the refusal (all are counted).
const SAMPLES: usize = 5;

/// What was decided: per table, the rows that stay behind with their `id` (when the source
/// table has one) and why.
#[derive(Default)]
pub(super) struct Decided {
    pub rows: BTreeMap<String, BTreeMap<u64, (Option<String>, Reason)>>,
}

/// One table the decisions read: its resolved mapping and export file.
struct Input {
    map: TableMap,
    entry: FileEntry,
}

impl Input {
    fn user_ids(&self, ids: &Arc<HashMap<String, String>>, default: Unmapped) -> UserIds {
        let columns = self
            .map
            .user_id_columns
            .iter()
            .filter_map(|c| {
                let i = self.entry.columns.iter().position(|e| &e.name == c)?;
                Some((i, self.map.policy(c, default)))
            })
            .collect();
        UserIds {
            ids: ids.clone(),
            columns,
            untouched: Vec::new(),
        }
    }

    fn id_field(&self) -> Option<usize> {
        self.entry.columns.iter().position(|c| c.name == "id")
    }
}

/// Decides the rows that stay behind and the lookups' values, and stores both in `plans`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn decide(
    client: &Client,
    dir: &Path,
    metadata: &Metadata,
    column_map: &ColumnMap,
    source: &Discovered,
    target: &Discovered,
    plans: &mut [TableLoad],
    user_map: &Arc<HashMap<String, String>>,
    default: Unmapped,
) -> Result<Decided> {
    // The tables read: every imported table whose rows can stay behind or that has lookups,
    // and every table a lookup reads in (whether or not this run imports it).
    let mut inputs: BTreeMap<String, Input> = BTreeMap::new();
    for plan in plans.iter() {
        if plan.map.leaves_rows_behind(default) || !plan.map.lookups.is_empty() {
            inputs.insert(
                plan.name().to_string(),
                Input {
                    map: plan.map.clone(),
                    entry: plan.entry.clone(),
                },
            );
        }
    }
    let looked_in: Vec<String> = plans
        .iter()
        .flat_map(|p| p.map.lookups.iter().map(|l| l.table.clone()))
        .collect();
    for table in looked_in {
        if inputs.contains_key(&table) {
            continue;
        }
        let spec = manifest::find(manifest::effective(source), &table)
            .ok_or_else(|| anyhow!("lookup table {table} is not one of fmig's tables"))?;
        let entry = metadata.table(&table).ok_or_else(|| {
            anyhow!(
                "a lookup reads {table}, which is not in the export in {}; export it too",
                dir.display()
            )
        })?;
        inputs.insert(
            table.clone(),
            Input {
                map: column_map.resolve(spec, source, target)?,
                entry: entry.clone(),
            },
        );
    }

    // 1. Rows that stay behind.
    let mut decided = Decided::default();
    for (name, input) in &inputs {
        if !input.map.leaves_rows_behind(default) {
            continue;
        }
        let rows = left_behind(client, dir, name, input, user_map, default).await?;
        if !rows.is_empty() {
            info!(table = %name, rows = rows.len(), "rows stay behind");
        }
        decided.rows.insert(name.clone(), rows);
    }
    let skipped: LeftBehind = decided
        .rows
        .iter()
        .map(|(t, rows)| {
            (
                t.clone(),
                rows.iter().map(|(i, (_, r))| (*i, r.clone())).collect(),
            )
        })
        .collect();
    let skipped = Arc::new(skipped);

    // 2. Lookup values, from the looked-up tables' rows that move.
    let mut values: HashMap<(String, String), Arc<LookupValues>> = HashMap::new();
    for plan in plans.iter() {
        for lookup in &plan.map.lookups {
            let key = (
                lookup.table.clone(),
                format!("{:?}", (&lookup.matches, &lookup.take)),
            );
            if values.contains_key(&key) {
                continue;
            }
            let input = &inputs[&lookup.table];
            let built = build_values(dir, input, lookup, user_map, default, &skipped).await?;
            values.insert(key, Arc::new(built));
        }
    }

    // 3. Each table's lookups, and the references they lose.
    let mut refusals = Vec::new();
    for plan in plans.iter_mut() {
        if let Some(rows) = skipped.get(plan.name()) {
            plan.left_behind = Arc::new(rows.clone());
        }
        if plan.map.lookups.is_empty() {
            continue;
        }
        let columns: Vec<String> = plan.entry.columns.iter().map(|c| c.name.clone()).collect();
        plan.lookups = Lookups {
            keys: pipeline::lookup_keys(&plan.map, &columns)?,
            values: plan
                .map
                .lookups
                .iter()
                .map(|l| values[&(l.table.clone(), format!("{:?}", (&l.matches, &l.take)))].clone())
                .collect(),
            missing_null: plan.map.lookups.iter().map(|l| l.missing_null).collect(),
        };
        let input = &inputs[plan.name()];
        let lost = lost_references(
            dir,
            input,
            &plan.lookups,
            user_map,
            default,
            &plan.left_behind,
        )
        .await?;
        for (n, [(count, samples), (ambiguous, examples)]) in lost.iter().enumerate() {
            let lookup = &plan.map.lookups[n];
            let matches = lookup
                .matches
                .iter()
                .map(|(theirs, own)| format!("{theirs} = {own}"))
                .collect::<Vec<_>>()
                .join(", ");
            if *ambiguous > 0 {
                // Whatever `missing` says: one of several rows would be a guess.
                refusals.push(format!(
                    "{}.{} = lookup in {} by ({matches}): {} row(s) find several rows of {}, e.g. \
                     {}; match on columns that identify one row (its primary key or a unique \
                     column), or leave the duplicates behind with where",
                    plan.name(),
                    lookup.target_column,
                    lookup.table,
                    thousands(*ambiguous as i64),
                    lookup.table,
                    examples.join("; ")
                ));
            }
            if *count == 0 {
                continue;
            }
            let text = format!(
                "{}.{} = lookup in {} by ({matches}): {} row(s) find no migrated row, e.g. {}",
                plan.name(),
                lookup.target_column,
                lookup.table,
                thousands(*count as i64),
                samples.join("; ")
            );
            if lookup.missing_null {
                warn!(target: "fmig::report", "{text}: written as NULL (missing = \"null\")");
            } else {
                refusals.push(text);
            }
        }
    }
    refusals.extend(references_left_behind(dir, target, plans, &decided, user_map, default).await?);
    if !refusals.is_empty() {
        bail!(
            "lost references: lookups that find no row that is migrated (the key is in no row \
             of the looked-up table, or only in a row that stays behind) or several, or foreign \
             keys to rows that stay behind:\n  {}\n  next step: decide in the column mapping: missing = \
             \"null\" on a lookup writes NULL, or a where on this table leaves such rows behind \
             too (fmig plan counts what it can see on the source)",
            refusals.join("\n  ")
        );
    }
    Ok(decided)
}

/// Rows that move but whose column, copied as it is, references (by a foreign key of the
/// target) the `id` of a row that stays behind: the key would reject them mid-import. One
/// refusal line per column, counted, with examples.
async fn references_left_behind(
    dir: &Path,
    target: &Discovered,
    plans: &[TableLoad],
    decided: &Decided,
    user_map: &Arc<HashMap<String, String>>,
    default: Unmapped,
) -> Result<Vec<String>> {
    let mut refusals = Vec::new();
    for plan in plans {
        for fk in target
            .foreign_keys
            .iter()
            .filter(|fk| fk.table == plan.map.target_table)
        {
            let ([column], [referenced]) =
                (fk.columns.as_slice(), fk.referenced_columns.as_slice())
            else {
                continue;
            };
            let Some(crate::column_map::ColumnValue::Source { column: own, .. }) =
                plan.map.column(column).map(|c| &c.value)
            else {
                continue;
            };
            let Some(to) = plans
                .iter()
                .find(|p| p.map.target_table == fk.references && !p.map.also)
            else {
                continue;
            };
            let by_id = to.map.column(referenced).is_some_and(|c| {
                matches!(&c.value, crate::column_map::ColumnValue::Source { column, .. } if column == "id")
            });
            let gone: std::collections::HashSet<String> = decided
                .rows
                .get(to.name())
                .into_iter()
                .flat_map(|rows| rows.values().filter_map(|(id, _)| id.clone()))
                .collect();
            if !by_id || gone.is_empty() {
                continue;
            }
            let Some(field) = plan.entry.columns.iter().position(|c| &c.name == own) else {
                continue;
            };
            let input = Input {
                map: plan.map.clone(),
                entry: plan.entry.clone(),
            };
            let path = dir.join(&plan.entry.file);
            let user_ids = input.user_ids(user_map, default);
            let own_gone = plan.left_behind.clone();
            let id_field = input.id_field();
            let (count, samples) = tokio::task::spawn_blocking(move || {
                let mut count = 0u64;
                let mut samples = Vec::new();
                scan_file(&path, &input.entry, &user_ids, |i, row, raw| {
                    if row.is_err() || own_gone.contains_key(&i) {
                        return Ok(());
                    }
                    let fields = pipeline::fields(raw);
                    let value = String::from_utf8_lossy(fields[field]);
                    if gone.contains(value.as_ref()) {
                        count += 1;
                        if samples.len() < SAMPLES {
                            samples.push(match id_field {
                                Some(f) => format!(
                                    "row {} (id {}) -> {value}",
                                    i + 1,
                                    String::from_utf8_lossy(fields[f])
                                ),
                                None => format!("row {} -> {value}", i + 1),
                            });
                        }
                    }
                    Ok(())
                })?;
                Ok::<_, anyhow::Error>((count, samples))
            })
            .await
            .context("the reference check panicked")??;
            if count > 0 {
                refusals.push(format!(
                    "{}.{own} references {}({referenced}) by foreign key {}: {} row(s) point at \
                     a row that stays behind, e.g. {}; set {column} = {{ lookup = \"{}\", match = \
                     {{ id = \"{own}\" }}, take = \"id\", missing = \"null\" }} to write NULL",
                    plan.name(),
                    fk.references,
                    fk.constraint,
                    thousands(count as i64),
                    samples.join("; "),
                    to.name()
                ));
            }
        }
    }
    Ok(refusals)
}

/// The rows of one table that stay behind: `skip_row` user ids, then the filter, evaluated by
/// the target over the staged rows (temporary tables only).
async fn left_behind(
    client: &Client,
    dir: &Path,
    name: &str,
    input: &Input,
    user_map: &Arc<HashMap<String, String>>,
    default: Unmapped,
) -> Result<BTreeMap<u64, (Option<String>, Reason)>> {
    let user_ids = input.user_ids(user_map, default);
    let id_field = input.id_field();
    let columns: Vec<String> = input.entry.columns.iter().map(|c| c.name.clone()).collect();
    let (sender, mut receiver) = mpsc::channel::<Vec<u8>>(2);
    let filtered = input.map.filter.is_some();
    let reader = {
        let path = dir.join(&input.entry.file);
        let entry = input.entry.clone();
        let names = columns.clone();
        tokio::task::spawn_blocking(move || {
            let mut skipped = BTreeMap::new();
            let mut batch = Vec::new();
            let mut rows = 0;
            let mut line = Vec::new();
            scan_file(&path, &entry, &user_ids, |i, row, raw| {
                match row {
                    Err(column) => {
                        let id = id_field.map(|f| field_text(raw, f));
                        skipped.insert(
                            i,
                            (
                                id,
                                Reason::UnmappedUser {
                                    column: names[column].clone(),
                                },
                            ),
                        );
                    }
                    Ok(text) if filtered => {
                        line.clear();
                        line.extend_from_slice(i.to_string().as_bytes());
                        line.push(b'\t');
                        line.extend_from_slice(text);
                        batch.extend_from_slice(&line);
                        rows += 1;
                        if rows == FILTER_BATCH_ROWS {
                            rows = 0;
                            if sender.blocking_send(std::mem::take(&mut batch)).is_err() {
                                bail!("the import stopped");
                            }
                        }
                    }
                    Ok(_) => {}
                }
                Ok(())
            })?;
            if rows > 0 {
                let _ = sender.blocking_send(batch);
            }
            Ok::<_, anyhow::Error>(skipped)
        })
    };
    let mut filter_rows = None;
    let mut failure = None;
    if let Some(filter) = &input.map.filter {
        let defs = pipeline::staging_columns(
            &pipeline::entry_columns(&input.entry),
            &no_lookups(&input.map),
        );
        match FilterStage::create(client, name, &defs, filter).await {
            Ok(stage) => {
                while let Some(batch) = receiver.recv().await {
                    if let Err(e) = stage.send(batch).await {
                        failure = Some(e);
                        break;
                    }
                }
                if failure.is_none() {
                    match stage.left_behind(name).await {
                        Ok(rows) => filter_rows = Some(rows),
                        Err(e) => failure = Some(e),
                    }
                }
            }
            Err(e) => failure = Some(e),
        }
    }
    drop(receiver);
    let read = reader.await.context("the file reader panicked")?;
    if let Some(e) = failure {
        return Err(e.context(format!("{name}: deciding the rows that stay behind")));
    }
    let mut rows = read?;
    if let Some(filtered) = filter_rows {
        let ids = match (id_field, filtered.is_empty()) {
            (Some(f), false) => ids_of(dir, &input.entry, f, &filtered)?,
            _ => HashMap::new(),
        };
        for i in filtered {
            rows.entry(i)
                .or_insert_with(|| (ids.get(&i).cloned(), Reason::Filter));
        }
    }
    Ok(rows)
}

/// The map without its lookups: the filter sees the source row only.
fn no_lookups(map: &TableMap) -> TableMap {
    let mut map = map.clone();
    map.lookups.clear();
    map
}

/// The folder, next to the export's files, that lists the rows left behind.
pub(super) const LEFT_BEHIND_DIR: &str = "left-behind";

/// The `id` values of some rows of a file (for the left-behind list).
fn ids_of(
    dir: &Path,
    entry: &FileEntry,
    field: usize,
    rows: &std::collections::BTreeSet<u64>,
) -> Result<HashMap<u64, String>> {
    let columns: Vec<String> = entry.columns.iter().map(|c| c.name.clone()).collect();
    let mut ids = HashMap::new();
    json_rows::read_rows(&dir.join(&entry.file), &columns, |i, values| {
        if rows.contains(&i) {
            ids.insert(i, value_text(&values[field]));
        }
        Ok(())
    })?;
    Ok(ids)
}

fn value_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Field `index` of a COPY text line, as text.
fn field_text(line: &[u8], index: usize) -> String {
    pipeline::fields(line)
        .get(index)
        .map(|f| String::from_utf8_lossy(f).into_owned())
        .unwrap_or_default()
}

/// Reads every row of an export file as a COPY text line (user ids rewritten under their
/// policies): `on_row(index, Ok(line) | Err(skip_row column), raw line before rewriting)`.
fn scan_file(
    path: &Path,
    entry: &FileEntry,
    user_ids: &UserIds,
    mut on_row: impl FnMut(u64, std::result::Result<&[u8], usize>, &[u8]) -> Result<()>,
) -> Result<()> {
    let mut line = Vec::new();
    pipeline::read_export_lines(path, entry, |i, raw| {
        line.clear();
        match user_ids.rewrite_line(raw, &mut line) {
            pipeline::Rewritten::Kept => on_row(i, Ok(&line), raw),
            pipeline::Rewritten::LeftBehind { column } => on_row(i, Err(column), raw),
        }
    })
}

/// One lookup's values: the looked-up table's rows that move, keyed by the match columns.
async fn build_values(
    dir: &Path,
    input: &Input,
    lookup: &Lookup,
    user_map: &Arc<HashMap<String, String>>,
    default: Unmapped,
    skipped: &Arc<LeftBehind>,
) -> Result<LookupValues> {
    let columns: Vec<String> = input.entry.columns.iter().map(|c| c.name.clone()).collect();
    let (keys, take) = pipeline::looked_up_fields(lookup, &columns)?;
    let path = dir.join(&input.entry.file);
    let entry = input.entry.clone();
    // The match columns keep the source's ids: the referring rows' keys are not rewritten.
    let user_ids = UserIds {
        untouched: keys.clone(),
        ..input.user_ids(user_map, default)
    };
    let skipped = skipped.clone();
    let table = lookup.table.clone();
    tokio::task::spawn_blocking(move || {
        let gone = skipped.get(&table);
        let mut values = LookupValues::default();
        scan_file(&path, &entry, &user_ids, |i, row, _| {
            if let Ok(line) = row
                && !gone.is_some_and(|g| g.contains_key(&i))
            {
                values.add(&keys, take, &pipeline::fields(line));
            }
            Ok(())
        })?;
        Ok(values)
    })
    .await
    .context("the lookup reader panicked")?
}

/// Per lookup of a table: how many of its moving rows find nothing (`[0]`) and how many find
/// several rows (`[1]`), each with a few of them named.
async fn lost_references(
    dir: &Path,
    input: &Input,
    lookups: &Lookups,
    user_map: &Arc<HashMap<String, String>>,
    default: Unmapped,
    left_behind: &Arc<BTreeMap<u64, Reason>>,
) -> Result<Vec<[(u64, Vec<String>); 2]>> {
    let path = dir.join(&input.entry.file);
    let entry = input.entry.clone();
    let user_ids = input.user_ids(user_map, default);
    let lookups = lookups.clone();
    let left_behind = left_behind.clone();
    let id_field = input.id_field();
    tokio::task::spawn_blocking(move || {
        let mut lost: Vec<[(u64, Vec<String>); 2]> =
            vec![[(0, Vec::new()), (0, Vec::new())]; lookups.keys.len()];
        scan_file(&path, &entry, &user_ids, |i, row, raw| {
            if row.is_err() || left_behind.contains_key(&i) {
                return Ok(());
            }
            // Keys are the source's own ids, as the looked-up rows are keyed.
            let fields = pipeline::fields(raw);
            for (n, keys) in lookups.keys.iter().enumerate() {
                let kind = match lookups.values[n].find(keys, &fields) {
                    pipeline::Found::Lost => 0,
                    pipeline::Found::Ambiguous => 1,
                    _ => continue,
                };
                {
                    let (count, samples) = &mut lost[n][kind];
                    *count += 1;
                    if samples.len() < SAMPLES {
                        let key: Vec<String> = keys
                            .iter()
                            .map(|&k| String::from_utf8_lossy(fields[k]).into_owned())
                            .collect();
                        samples.push(match id_field {
                            Some(f) => format!(
                                "row {} (id {}) key {}",
                                i + 1,
                                String::from_utf8_lossy(fields[f]),
                                key.join(",")
                            ),
                            None => format!("row {} key {}", i + 1, key.join(",")),
                        });
                    }
                }
            }
            Ok(())
        })?;
        Ok(lost)
    })
    .await
    .context("the lookup reader panicked")?
}

/// `left-behind/<table>.csv` (0600, atomic) for every table with rows that stay behind: the
/// file row, the row's `id` when the table has one, and why. A table with none has no file (a
/// file from an earlier run is removed, so no list looks current that is not).
pub(super) fn write_left_behind(dir: &Path, plans: &[TableLoad], decided: &Decided) -> Result<()> {
    let folder = dir.join(LEFT_BEHIND_DIR);
    for plan in plans {
        let path = folder.join(format!("{}.csv", plan.name()));
        let rows = decided.rows.get(plan.name()).filter(|r| !r.is_empty());
        let Some(rows) = rows else {
            if path.exists() {
                std::fs::remove_file(&path)
                    .with_context(|| format!("could not remove {}", path.display()))?;
            }
            continue;
        };
        std::fs::create_dir_all(&folder)
            .with_context(|| format!("could not create {}", folder.display()))?;
        let mut text = String::from("row,id,reason\n");
        for (i, (id, reason)) in rows {
            text.push_str(&format!(
                "{},{},{}\n",
                i + 1,
                csv_field(id.as_deref().unwrap_or("")),
                csv_field(&reason.text())
            ));
        }
        files::write_atomically(&path, text.as_bytes())?;
        info!(table = plan.name(), rows = rows.len(), path = %path.display(), "left-behind rows listed");
    }
    Ok(())
}

fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}
