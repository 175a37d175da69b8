//! `fmig import`: the export directory into the target, user ids rewritten, resumable.
//!
//! The stages, in order:
//! 1. **check**, before any write: `metadata.json`, the column mapping resolved against the
//!    target's catalog, and every file read once (SHA-256, size and row count against the
//!    metadata; user-id values against `user-mapping.json`). A damaged file, a column with
//!    nowhere to go, or an unmapped user id stops the run here, with nothing written;
//! 2. **checkpoints**: `fmig.import_progress` in the target holds, per table, the export file's
//!    hash and the rows committed. A table with rows but no checkpoint is someone else's data
//!    and is refused (unless `--truncate-first --yes`); a checkpoint for another export is
//!    refused too;
//! 3. **load**, table by table in the target's foreign-key order: a blocking thread parses the
//!    file (skipping rows already committed) into COPY text batches of `--batch-size` rows; each
//!    batch is one transaction that COPYs the rows and advances the checkpoint, so a crash loses
//!    at most the batch in flight and a re-run continues exactly after the last commit. Tables
//!    whose columns all copy across unchanged go straight in; the others go through a staging
//!    table of the source's shape and `INSERT ... SELECT` with the mapping's expressions;
//! 4. **finish**: sequences set to the imported maximum, the foreign-key orphan check after
//!    `--disable-fk`, and a synchronous commit so everything committed asynchronously before is
//!    durable before success is reported.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::{SinkExt, pin_mut};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_postgres::{Client, Statement};
use tracing::{info, warn};

use crate::Outcome;
use crate::catalog::{self, Discovered};
use crate::cli::{ImportArgs, Unmapped};
use crate::codec::ColumnKind;
use crate::column_map::{ColumnMap, ColumnValue, TableMap, Unwritten};
use crate::connect;
use crate::copy_text;
use crate::ident::{QualifiedName, quote_ident, quote_literal};
use crate::import_choices::ImportChoices;
use crate::json_rows;
use crate::manifest::{self, APP_SCHEMA, TableSpec};
use crate::metadata::{FileEntry, Metadata};
use crate::pipeline;
use crate::progress;
use crate::report::{Align, TextTable, thousands};
use crate::user_mapping::UserMapping;

pub(crate) mod deferred;
mod rows;

/// How a failed check before the load begins: the operator's first question is whether the
/// target was touched.
const NOTHING_WRITTEN: &str = "import checks every file before writing; nothing was written";

/// Where checkpoints live in the target.
const CHECKPOINT_TABLE: &str = "fmig.import_progress";

/// One table's import, decided before anything is written.
struct TableLoad {
    spec: &'static TableSpec,
    entry: FileEntry,
    map: TableMap,
    target: QualifiedName,
    /// The file's columns (source names, in `entry`'s order) and their JSON kinds.
    columns: Vec<String>,
    kinds: Vec<ColumnKind>,
    /// Indices (into `columns`) of user-id columns, with whether NULL may replace an unmapped id,
    /// and the column's policy for unmapped ids (the mapping's, else `--unmapped`).
    user_ids: Vec<(usize, bool, Unmapped)>,
    /// `COPY ... FROM STDIN` into the target (direct) or into the staging table.
    copy_sql: String,
    /// Indices (into `columns`) of the values COPY sends, in COPY column order.
    copy_fields: Vec<usize>,
    /// For staged tables: the staging table's DDL and the INSERT ... SELECT from it.
    staging: Option<(String, String)>,
    /// Rows of the file that stay behind (decided before the first write).
    left_behind: Arc<BTreeMap<u64, pipeline::Reason>>,
    /// Values taken from other source tables, appended to each staged row.
    lookups: pipeline::Lookups,
}

impl TableLoad {
    /// The unit's name (the source table's, or `<table>+<target>` for an also entry): what
    /// checkpoints, `left-behind/` files and messages use.
    fn name(&self) -> &str {
        &self.map.unit
    }
}

/// A batch of COPY text on its way to the server.
struct Batch {
    /// Index in the file of the batch's first row.
    first_row: u64,
    /// Index in the file after the batch's last row: what the checkpoint records. Rows that
    /// stay behind are passed over, so it can be more than `first_row + rows`.
    next_row: u64,
    rows: u64,
    /// File index of each row sent (to name the row the server rejects).
    file_rows: Vec<u64>,
    data: Vec<u8>,
}

/// What loading one table did.
struct Loaded {
    table: String,
    rows_in_file: u64,
    already: u64,
    loaded: u64,
    seconds: f64,
    /// Rows of the file left behind on purpose.
    left_behind: u64,
    /// Connections that wrote its batches.
    writers: usize,
}

pub async fn run(args: &ImportArgs) -> Result<Outcome> {
    import(args).await.map_err(|e| {
        connect::explain_lost_connection(
            e,
            connect::Side::Target,
            "once the target accepts connections again, re-run `fmig import` with the same \
             arguments; it resumes after the last committed batch",
        )
    })
}

async fn import(args: &ImportArgs) -> Result<Outcome> {
    let started = Instant::now();
    let dir = &args.input_dir;
    let metadata = Metadata::load(dir)?;
    let source = pipeline::source_catalog(&metadata);
    // The exported tables: the built-in list and the ones export discovered beside it.
    let manifest = manifest::effective(&source);
    let selected = manifest::select(manifest, &args.tables, false)?;
    let column_map = ColumnMap::load(args.mapping_config.as_deref())?;
    let mapping_path = args
        .mapping
        .clone()
        .unwrap_or_else(|| dir.join("user-mapping.json"));

    let url = args.target.url()?;
    let mut client = connect::connect(&url, &args.connect.options()).await?;
    if !args.dry_run {
        crate::lock::lock_target(&client).await?;
    }
    // Before anything else: what an interrupted import set aside goes back.
    let mut restored = if args.dry_run {
        let pending = deferred::pending(&client).await?;
        if pending > 0 {
            warn!(
                definitions = pending,
                "an interrupted import left foreign keys and indexes set aside ({}); the import puts them back first",
                deferred::TABLE
            );
        }
        deferred::Restored::default()
    } else {
        deferred::restore(&mut client).await?
    };
    if args.restore_schema {
        let text = render_restored(&restored, &client).await?;
        progress::suspend(|| print!("{text}"));
        return Ok(
            if restored.not_valid.is_empty() && restored.mismatches.is_empty() {
                Outcome::Success
            } else {
                Outcome::ProblemsFound
            },
        );
    }
    let target = catalog::discover(&client, APP_SCHEMA).await?;
    column_map
        .validate(manifest, &source, &target)
        .map_err(|e| anyhow!("{e}"))?;
    // A `set` expression the target rejects would otherwise stop the load at its table, after
    // the tables before it were written: each is prepared now (never run), as plan does.
    pipeline::check_mapping(&column_map, &source, &target, &mut client).await?;

    // 1. Plans, in the target's dependency order.
    let mut plans = Vec::new();
    for (_, spec) in manifest::import_order(manifest, &target) {
        if !selected.contains(spec.name) || column_map.is_skipped(spec.name) {
            continue;
        }
        let Some(entry) = metadata.table(spec.name) else {
            if args.tables.is_empty() {
                warn!(table = spec.name, "not in this export; skipped");
                continue;
            }
            bail!(
                "table {} is not in the export in {}",
                spec.name,
                dir.display()
            );
        };
        // A discovered table the target lacks: nothing to do when it is empty; with rows, the
        // mapping must decide (plan blocks on it the same way).
        if !manifest::is_builtin(spec.name)
            && !target
                .tables
                .contains_key(column_map.target_name(spec.name))
        {
            if entry.rows == 0 {
                info!(table = spec.name, "empty, and not in the target: left out");
                continue;
            }
            bail!(
                "{}: {} rows, and the target has no table {}; it is not in fmig's built-in list \
                 but exists in the source, so it is migrated unless the column mapping says \
                 skip = true (or names its target = \"...\"). {NOTHING_WRITTEN}",
                spec.name,
                entry.rows,
                column_map.target_name(spec.name)
            );
        }
        for map in column_map.resolve_units(spec, &source, &target)? {
            plans.push(plan_table(
                spec,
                entry.clone(),
                map,
                &target,
                args.unmapped,
            )?);
        }
    }
    // A table fed by an also entry is loaded with its own target table's level, so a split
    // row's first half exists before the half that references it.
    let position: BTreeMap<String, usize> = plans
        .iter()
        .enumerate()
        .map(|(i, p)| (p.name().to_string(), i))
        .collect();
    plans.sort_by_key(|p| {
        let level = target.levels.get(&p.map.target_table).copied();
        (level.unwrap_or(p.spec.level), position[p.name()])
    });

    // 2. Every file read once; user ids checked against the mapping.
    let needs_mapping = plans
        .iter()
        .any(|p| !p.user_ids.is_empty() || !p.map.lookups.is_empty());
    let user_map = if needs_mapping {
        Some(load_user_mapping(&mapping_path, args.unmapped)?)
    } else {
        None
    };
    // On a blocking thread: it reads every file (tens of seconds at 10M rows), and Ctrl-C,
    // which main.rs waits for beside this future, must not wait for it.
    info!(tables = plans.len(), "checking the export files");
    let (mut plans, user_map, checked) = {
        let dir = dir.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let checked = check_files(&dir, &plans, user_map.as_ref());
            (plans, user_map, checked)
        })
        .await
        .context("the check pass panicked")?
    };
    let unmapped = checked?;
    if !unmapped.is_empty() {
        handle_unmapped(&unmapped, &plans, &mapping_path)?;
    }
    // 2b. Rows that stay behind, and lookups, decided from the export alone, before any write.
    let user_map = Arc::new(user_map.unwrap_or_default());
    let decided = rows::decide(
        &client,
        dir,
        &metadata,
        &column_map,
        &source,
        &target,
        &mut plans,
        &user_map,
        args.unmapped,
    )
    .await
    .context(NOTHING_WRITTEN)?;
    let user_map = Some(user_map.as_ref().clone());

    // 3. Checkpoints and what each table needs.
    let checkpoints = read_checkpoints(&client).await?;
    let mut start_at: BTreeMap<String, u64> = BTreeMap::new();
    let mut refusals = Vec::new();
    for plan in &plans {
        let name = &plan.name();
        match checkpoints.get(*name) {
            Some((sha, rows)) if !args.truncate_first && *sha != plan.entry.sha256 => {
                refusals.push(format!(
                    "{name}: the target holds a partial import of a different export (checkpoint \
                     file hash {}…, export file hash {}…)",
                    &sha[..12.min(sha.len())],
                    &plan.entry.sha256[..12]
                ));
                let _ = rows;
            }
            Some((_, rows)) if !args.truncate_first => {
                start_at.insert(name.to_string(), *rows);
            }
            _ => {
                // A table fed by several units (an also entry) holds the rows of the units
                // already started: those are fmig's own. A unit without a checkpoint has
                // written nothing, as every batch commits with its checkpoint.
                let shared_with_started = plans.iter().any(|other| {
                    other.name() != plan.name()
                        && other.map.target_table == plan.map.target_table
                        && checkpoints.contains_key(other.name())
                });
                let has_rows = !shared_with_started
                    && client
                        .query_one(
                            &format!("SELECT EXISTS (SELECT 1 FROM {})", plan.target.quoted()),
                            &[],
                        )
                        .await?
                        .get::<_, bool>(0);
                if has_rows && !args.truncate_first {
                    refusals.push(format!(
                        "{}: the target table already has rows that fmig did not import",
                        plan.target
                    ));
                }
                start_at.insert(name.to_string(), 0);
            }
        }
    }
    // A resumed import keeps the choices it started with: other ones would mix two imports.
    let choices = ImportChoices::current(
        format!(
            "{} (snapshot {})",
            metadata.exported_at, metadata.snapshot_id
        ),
        &column_map,
        args.unmapped,
    )?;
    let resuming = plans.iter().any(|p| checkpoints.contains_key(p.name()));
    if resuming
        && !args.truncate_first
        && let Some(recorded) = ImportChoices::read(&client).await?
    {
        let differences = recorded.differences(&choices);
        if !differences.is_empty() {
            refusals.push(format!(
                "the import in the target ran with other choices ({}); resume or re-run with the \
                 same ones",
                differences.join("; ")
            ));
        }
    }
    if !refusals.is_empty() {
        bail!(
            "refusing to import over existing data:\n  {}\n  next step: if that data may go, \
             run again with --truncate-first --yes (empties the imported tables and forgets \
             the checkpoints)",
            refusals.join("\n  ")
        );
    }
    if args.truncate_first && !args.yes {
        bail!("--truncate-first empties the target tables: add --yes to confirm");
    }

    if args.dry_run {
        let text = render_dry_run(&plans, &start_at, args);
        progress::suspend(|| print!("{text}"));
        return Ok(Outcome::Success);
    }
    rows::write_left_behind(dir, &plans, &decided)?;

    // 4. Load.
    client
        .batch_execute(&format!(
            "CREATE SCHEMA IF NOT EXISTS fmig; \
             CREATE TABLE IF NOT EXISTS {CHECKPOINT_TABLE} ( \
                 table_name text PRIMARY KEY, file_sha256 text NOT NULL, \
                 rows_committed bigint NOT NULL, rows_total bigint NOT NULL, \
                 updated_at timestamptz NOT NULL DEFAULT now(), completed_at timestamptz)"
        ))
        .await
        .context("could not create fmig's checkpoint table in the target")?;
    choices.record(&client).await?;
    if args.truncate_first {
        truncate(&client, &plans).await?;
        for plan in &plans {
            deferred::forget_fingerprint(&client, &plan.target).await?;
        }
    }
    // The writing connections: this one, and one more per extra --jobs.
    let mut writers = Vec::with_capacity(usize::from(args.jobs));
    for _ in 1..args.jobs {
        writers.push(connect::connect(&url, &args.connect.options()).await?);
    }
    for writer in std::iter::once(&client).chain(&writers) {
        writer_session(writer, args).await?;
    }

    // Level by level (the order the plans are sorted in); within a level, the tables are
    // shared out over the writers, the largest first.
    let level_of = |p: &TableLoad| {
        target
            .levels
            .get(&p.map.target_table)
            .copied()
            .unwrap_or(p.spec.level)
    };
    let mut results: Vec<(usize, Loaded)> = Vec::new();
    let mut set_aside: BTreeSet<String> = BTreeSet::new();
    let mut start = 0;
    while start < plans.len() {
        let level = level_of(&plans[start]);
        let end = start
            + plans[start..]
                .iter()
                .take_while(|p| level_of(p) == level)
                .count();
        let group: Vec<usize> = (start..end).collect();
        start = end;
        // Set aside just before the tables' first writes; a refusal (not the owner) loads the
        // table with everything in place.
        for &i in &group {
            let plan = &plans[i];
            let from = start_at.get(plan.name()).copied().unwrap_or(0);
            if !args.keep_constraints
                && from < plan.entry.rows
                && set_aside.insert(plan.map.target_table.clone())
            {
                deferred::defer(&mut client, &plan.target, !args.disable_fk).await?;
            }
        }
        let connections: Vec<&Client> = std::iter::once(&client).chain(&writers).collect();
        let queues = share_out(
            &group,
            |i| plans[i].entry.rows,
            |i| plans[i].staging.is_none(),
            connections.len(),
        );
        let mut spare = connections.iter().copied();
        let loads = queues.into_iter().map(|(queue, writers)| {
            let writers: Vec<&Client> = spare.by_ref().take(writers).collect();
            let (plans, start_at, user_map) = (&plans, &start_at, user_map.as_ref());
            async move {
                let mut done = Vec::new();
                for i in queue {
                    let plan = &plans[i];
                    let from = start_at.get(plan.name()).copied().unwrap_or(0);
                    done.push((
                        i,
                        load_table(&writers, plan, dir, from, args, user_map).await?,
                    ));
                }
                Ok::<_, anyhow::Error>(done)
            }
        });
        for done in futures::future::try_join_all(loads).await? {
            results.extend(done);
        }
    }
    results.sort_by_key(|(i, _)| *i);
    let results: Vec<Loaded> = results.into_iter().map(|(_, r)| r).collect();
    drop(writers);
    if args.disable_fk {
        client
            .batch_execute("SET session_replication_role = DEFAULT")
            .await?;
    }
    set_sequences(&client, &plans).await?;
    let mut orphans = if args.disable_fk {
        orphan_check(&client, &plans, &target).await?
    } else {
        Vec::new()
    };
    // Then every index and foreign key set aside, each built or validated in one pass.
    let rebuilt = deferred::restore(&mut client).await?;
    restored.indexes += rebuilt.indexes;
    restored.foreign_keys += rebuilt.foreign_keys;
    restored.not_valid.extend(rebuilt.not_valid);
    restored.mismatches.extend(rebuilt.mismatches);
    restored.seconds += rebuilt.seconds;
    orphans.extend(not_valid_orphans(&client, &restored, &target).await?);
    orphans.extend(restored.mismatches.iter().cloned());
    let analyzed = if args.skip_analyze {
        None
    } else {
        Some(analyze(&client, &plans).await?)
    };

    // A synchronous commit flushes the WAL of every earlier asynchronous one.
    client.batch_execute("SET synchronous_commit = on").await?;
    let names: Vec<String> = plans.iter().map(|p| p.name().to_string()).collect();
    client
        .execute(
            &format!(
                "UPDATE {CHECKPOINT_TABLE} SET completed_at = now() WHERE table_name = ANY($1)"
            ),
            &[&names],
        )
        .await
        .context("could not record the end of the import")?;

    let mut summary = render_summary(&results, started.elapsed().as_secs_f64(), &orphans, dir);
    if restored.indexes + restored.foreign_keys > 0 {
        summary.push_str(&format!(
            "Set aside while loading and rebuilt after: {} index(es), {} foreign key(s) in {:.1}s{}\n",
            restored.indexes,
            restored.foreign_keys,
            restored.seconds,
            if restored.not_valid.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} re-added NOT VALID (rows violate them, listed above)",
                    restored.not_valid.len()
                )
            }
        ));
    }
    if let Some((tables, seconds)) = analyzed {
        summary.push_str(&format!(
            "Statistics: {tables} table(s) analyzed in {seconds:.1}s\n"
        ));
    }
    for r in &results {
        info!(target: "fmig::report", table = %r.table, rows = r.rows_in_file, already = r.already, loaded = r.loaded, left_behind = r.left_behind, seconds = r.seconds, writers = r.writers, "imported");
    }
    info!(target: "fmig::report", tables = results.len(), rows = results.iter().map(|r| r.loaded).sum::<u64>(), seconds = started.elapsed().as_secs_f64(), orphans = orphans.len(), "import summary");
    progress::suspend(|| print!("{summary}"));
    if orphans.is_empty() {
        Ok(Outcome::Success)
    } else {
        Ok(Outcome::ProblemsFound)
    }
}

fn plan_table(
    spec: &'static TableSpec,
    entry: FileEntry,
    map: TableMap,
    target: &Discovered,
    default_policy: Unmapped,
) -> Result<TableLoad> {
    let name = map.unit.clone();
    if !map.unmapped.is_empty() {
        bail!(
            "{name}: source column(s) {} have nowhere to go in the target and are not dropped; \
             their data would be lost.\n  next step: run fmig plan and map or drop them in the \
             column mapping",
            map.unmapped.join(", ")
        );
    }
    if let Some(missing) = map
        .unwritten
        .iter()
        .find(|u| u.reason == Unwritten::Missing)
    {
        bail!(
            "{name}: target column {}.{} is NOT NULL without a default and nothing feeds it; \
             every row would fail.\n  next step: give it a `set` expression in the column mapping \
             (fmig plan shows the differences)",
            map.target_table,
            missing.name
        );
    }
    let info = target
        .tables
        .get(&map.target_table)
        .ok_or_else(|| anyhow!("target table {} does not exist", map.target_table))?;
    let columns: Vec<String> = entry.columns.iter().map(|c| c.name.clone()).collect();
    let kinds: Vec<ColumnKind> = entry
        .columns
        .iter()
        .map(|c| {
            c.kind().ok_or_else(|| {
                anyhow!(
                    "metadata.json: {name}.{} has an unknown kind {:?}",
                    c.name,
                    c.json
                )
            })
        })
        .collect::<Result<_>>()?;
    let index = |column: &str| columns.iter().position(|c| c == column);
    let mut user_ids = Vec::new();
    for column in &map.user_id_columns {
        let Some(i) = index(column) else { continue };
        // A column only a lookup reads (its key, compared as the source's id) reaches the
        // target through the lookup, which decides lost references itself: no unmapped-id
        // check, no rewrite.
        let reaches_target = map.columns.iter().any(|t| match &t.value {
            ColumnValue::Source { column: c, .. } => c == column,
            ColumnValue::Expression { sql, .. } => crate::column_map::mentions(sql, column),
            ColumnValue::Lookup { .. } => false,
        });
        if !reaches_target {
            continue;
        }
        let nullable = map
            .target_of(column)
            .and_then(|t| info.column(&t.name))
            .is_none_or(|c| !c.not_null);
        user_ids.push((i, nullable, map.policy(column, default_policy)));
    }
    let target_name = QualifiedName::new(APP_SCHEMA, &map.target_table);

    // Straight in when every written column is a source column of the same type.
    let (copy_sql, copy_fields, staging) = if pipeline::copies_directly(&map) {
        let fields =
            map.columns
                .iter()
                .map(|t| match &t.value {
                    ColumnValue::Source { column, .. } => index(column)
                        .ok_or_else(|| anyhow!("{name}: no column {column} in the export")),
                    _ => unreachable!("direct tables copy source columns only"),
                })
                .collect::<Result<Vec<_>>>()?;
        let list: Vec<String> = map.columns.iter().map(|t| quote_ident(&t.name)).collect();
        (
            format!(
                "COPY {} ({}) FROM STDIN",
                target_name.quoted(),
                list.join(", ")
            ),
            fields,
            None,
        )
    } else {
        // The staging table has the source's shape (the expression contract in column_map),
        // and a column per lookup.
        let stage = format!("fmig_stage_{}", map.unit);
        let defs = pipeline::staging_columns(&pipeline::entry_columns(&entry), &map);
        let create = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {} ({}) ON COMMIT DELETE ROWS",
            quote_ident(&stage),
            defs.join(", ")
        );
        let insert = pipeline::insert_sql(&target_name, &map, &quote_ident(&stage));
        (
            format!("COPY {} FROM STDIN", quote_ident(&stage)),
            (0..columns.len()).collect(),
            Some((create, insert)),
        )
    };
    Ok(TableLoad {
        spec,
        entry,
        map,
        target: target_name,
        columns,
        kinds,
        user_ids,
        copy_sql,
        copy_fields,
        staging,
        left_behind: Arc::default(),
        lookups: pipeline::Lookups::default(),
    })
}

/// The user mapping as the import needs it: old Supabase id (lower-cased) -> Stack Auth id.
fn load_user_mapping(path: &Path, unmapped: Unmapped) -> Result<HashMap<String, String>> {
    if !path.exists() && unmapped != Unmapped::Fail {
        warn!(path = %path.display(), "no user mapping: every user id is {}", if unmapped == Unmapped::Null { "set to NULL" } else { "kept" });
        return Ok(HashMap::new());
    }
    let mapping = UserMapping::load(path).with_context(|| {
        format!(
            "no usable user mapping at {} (run fmig migrate-users first, or give its path with --mapping)",
            path.display()
        )
    })?;
    if mapping.is_expired(chrono::Utc::now()) {
        warn!(path = %path.display(), retain_until = %mapping.retain_until, "the user mapping is past its retainUntil date: is it the right file?");
    }
    Ok(mapping.id_map())
}

/// (table, column) -> unmapped id -> rows.
type UnmappedIds = BTreeMap<(String, String), BTreeMap<String, u64>>;

/// Reads every file once: hash, size and row count against the metadata, and user ids against
/// the mapping.
fn check_files(
    dir: &Path,
    plans: &[TableLoad],
    user_map: Option<&HashMap<String, String>>,
) -> Result<UnmappedIds> {
    let mut unmapped = UnmappedIds::new();
    for plan in plans {
        let path = dir.join(&plan.entry.file);
        let bar = progress::bar(plan.entry.rows, &format!("checking {}", plan.name()));
        // Only the user-id values are looked at here: the other columns are checked as JSON
        // and skipped, not built (the load reads them again).
        let mut keep = vec![false; plan.columns.len()];
        if user_map.is_some() {
            for &(c, _, _) in &plan.user_ids {
                keep[c] = true;
            }
        }
        json_rows::read_rows_keeping(&path, &plan.columns, &plan.kinds, &keep, |i, values| {
            if let Some(map) = user_map {
                // skip_row columns are decided with the rows that stay behind.
                for &(c, _, policy) in &plan.user_ids {
                    if policy == Unmapped::SkipRow {
                        continue;
                    }
                    if let Value::String(id) = &values[c]
                        && !map.contains_key(&id.to_ascii_lowercase())
                    {
                        *unmapped
                            .entry((plan.name().to_string(), plan.columns[c].clone()))
                            .or_default()
                            .entry(id.clone())
                            .or_default() += 1;
                    }
                }
            }
            if i % 4096 == 0 {
                bar.set_position(i);
            }
            Ok(())
        })
        .and_then(|read| plan.entry.check_read(&path, &read))
        .context(NOTHING_WRITTEN)?;
        bar.finish_and_clear();
    }
    Ok(unmapped)
}

/// Reports user ids without a mapping per column (a short table on the console; every id in the
/// log file) and applies `--unmapped`: fail before writing, or go on writing NULL or the old id.
fn handle_unmapped(unmapped: &UnmappedIds, plans: &[TableLoad], mapping: &Path) -> Result<()> {
    let column_of = |table: &str, column: &str| {
        let plan = plans.iter().find(|p| p.name() == table).expect("planned");
        let i = plan
            .columns
            .iter()
            .position(|c| c == column)
            .expect("column");
        *plan
            .user_ids
            .iter()
            .find(|&&(c, _, _)| c == i)
            .expect("a user-id column")
    };
    // The strictest policy among the columns decides: fail, then null, then keep.
    let policies: Vec<Unmapped> = unmapped.keys().map(|(t, c)| column_of(t, c).2).collect();
    let policy = [Unmapped::Fail, Unmapped::Null, Unmapped::Keep]
        .into_iter()
        .find(|p| policies.contains(p))
        .unwrap_or(Unmapped::Keep);
    let mut table = TextTable::new(&[
        ("column", Align::Left),
        ("users", Align::Right),
        ("rows", Align::Right),
        ("e.g.", Align::Left),
    ]);
    let mut ids: BTreeSet<&str> = BTreeSet::new();
    let mut total_rows = 0u64;
    for ((table_name, column), values) in unmapped {
        if policy == Unmapped::Fail && column_of(table_name, column).2 != Unmapped::Fail {
            continue;
        }
        let rows: u64 = values.values().sum();
        total_rows += rows;
        let shown: Vec<&str> = values.keys().take(2).map(String::as_str).collect();
        table.row(vec![
            format!("{table_name}.{column}"),
            thousands(values.len() as i64),
            thousands(rows as i64),
            shown.join(", ") + if values.len() > 2 { ", ..." } else { "" },
        ]);
        // The whole list goes to the log only: thousands of ids help no one on a console.
        info!(
            target: "fmig::report",
            table = %table_name,
            column = %column,
            rows,
            ids = %values.keys().cloned().collect::<Vec<_>>().join(","),
            "user ids without a mapping"
        );
        ids.extend(values.keys().map(String::as_str));
    }
    let summary = format!(
        "{} user id(s) in {} row(s) have no entry in {} (every id is in the log file; policy {policy:?}):\n{}",
        thousands(ids.len() as i64),
        thousands(total_rows as i64),
        mapping.display(),
        table.render()
    );
    match policy {
        Unmapped::Fail => bail!(
            "{summary}The import stopped before its first write: nothing was written.\n  next step: run fmig migrate-users for the missing \
             users, or choose explicitly: --unmapped null (write NULL; nullable columns only) or \
             --unmapped keep (keep the old ids, which point at no Stack Auth user), or per \
             table or column in the column mapping: unmapped = \"skip_row\" leaves such rows \
             behind, listed"
        ),
        Unmapped::Null | Unmapped::Keep | Unmapped::SkipRow => {
            for (table, column) in unmapped.keys() {
                let (_, nullable, policy) = column_of(table, column);
                if policy == Unmapped::Null && !nullable {
                    bail!(
                        "--unmapped null: {table}.{column} is NOT NULL in the target, so its \
                         unmapped ids cannot become NULL; nothing was written.\n{summary}  \
                         next step: migrate those users, use --unmapped keep, or leave their \
                         rows behind with unmapped = \"skip_row\" in the column mapping"
                    );
                }
            }
            progress::suspend(|| print!("{summary}"));
            warn!(
                ids = ids.len(),
                rows = total_rows,
                "these user ids are written as NULL (policy null) or kept as they are (policy keep: they point at no Stack Auth user)"
            );
        }
    }
    Ok(())
}

async fn read_checkpoints(client: &Client) -> Result<BTreeMap<String, (String, u64)>> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('fmig.import_progress') IS NOT NULL",
            &[],
        )
        .await?
        .get(0);
    if !exists {
        return Ok(BTreeMap::new());
    }
    let rows = client
        .query(
            &format!("SELECT table_name, file_sha256, rows_committed FROM {CHECKPOINT_TABLE}"),
            &[],
        )
        .await
        .context("could not read the import checkpoints")?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, String>(0),
                (r.get::<_, String>(1), r.get::<_, i64>(2) as u64),
            )
        })
        .collect())
}

async fn truncate(client: &Client, plans: &[TableLoad]) -> Result<()> {
    let tables: BTreeSet<String> = plans.iter().map(|p| p.target.quoted()).collect();
    let tables: Vec<String> = tables.into_iter().collect();
    let names: Vec<String> = plans.iter().map(|p| p.name().to_string()).collect();
    let sql = format!("TRUNCATE {}", tables.join(", "));
    client.batch_execute(&sql).await.map_err(|e| {
        anyhow!(
            "--truncate-first could not empty the tables: {}",
            crate::connect::server_message(&e)
        )
    })?;
    client
        .execute(
            &format!("DELETE FROM {CHECKPOINT_TABLE} WHERE table_name = ANY($1)"),
            &[&names],
        )
        .await?;
    warn!(tables = %names.join(", "), "target tables emptied (--truncate-first)");
    Ok(())
}

/// Loads one table's file from row `from`, on one writer or several. With several, batches
/// are written at the same time, one per writer, and committed strictly in file order (each
/// waits for the batch before it), so the checkpoint still says "every row before this one is
/// in" and resuming is as with one writer.
async fn load_table(
    writers: &[&Client],
    plan: &TableLoad,
    dir: &Path,
    from: u64,
    args: &ImportArgs,
    user_map: Option<&HashMap<String, String>>,
) -> Result<Loaded> {
    let started = Instant::now();
    let name = plan.name();
    let total = plan.entry.rows;
    let client = writers[0];
    // A staged table's INSERT may meet a row of a later batch still being written (ON
    // CONFLICT of a split table), which a strict commit order would turn into a wait with no
    // end: only tables copied straight in share their batches out.
    let writers = if plan.staging.is_some() {
        &writers[..1]
    } else {
        writers
    };
    if from >= total {
        ensure_checkpoint(client, plan).await?;
        return Ok(Loaded {
            table: name.to_string(),
            rows_in_file: total,
            already: from,
            loaded: 0,
            seconds: 0.0,
            left_behind: plan.left_behind.len() as u64,
            writers: 0,
        });
    }
    for writer in writers {
        if let Some((create, _)) = &plan.staging {
            writer
                .batch_execute(create)
                .await
                .with_context(|| format!("{name}: could not create the staging table"))?;
        }
        if writers.len() > 1 {
            // An earlier batch that waits for a later one's row (the same key in both) would
            // wait for ever, the later one waiting for its turn to commit: a lock wait this
            // long ends it with an error instead.
            writer
                .batch_execute(&format!("SET lock_timeout = '{PARALLEL_LOCK_TIMEOUT}'"))
                .await?;
        }
    }
    let bar = progress::bar(total, name);
    bar.set_position(from);

    let (sender, receiver) = mpsc::channel::<Batch>(4 * writers.len());
    let reader = {
        let path: PathBuf = dir.join(&plan.entry.file);
        let columns = plan.columns.clone();
        let kinds = plan.kinds.clone();
        // Whether each source column is NOT NULL (see `copy_text::write_export_field`).
        let not_null: Vec<bool> = plan.entry.columns.iter().map(|c| c.not_null).collect();
        let fields = plan.copy_fields.clone();
        let user_ids = plan.user_ids.clone();
        // New ids as ready-made JSON text, so a rewritten row borrows them instead of copying.
        let user_map: Option<HashMap<String, String>> = user_map.map(|map| {
            map.iter()
                .map(|(old, new)| (old.clone(), Value::String(new.clone()).to_string()))
                .collect()
        });
        let batch_size = u64::from(args.batch_size);
        let left_behind = plan.left_behind.clone();
        let lookups = plan.lookups.clone();
        tokio::task::spawn_blocking(move || {
            let mut batch = Batch {
                first_row: from,
                next_row: from,
                rows: 0,
                file_rows: Vec::new(),
                data: Vec::with_capacity(64 * 1024),
            };
            // Per column of the file: the JSON text written instead of the file's (a user id
            // rewritten, or null for an unmapped one); None writes the file's value.
            let mut rewritten: Vec<Option<&str>> = vec![None; columns.len()];
            let mut line = Vec::new();
            let mut raw = Vec::new();
            // The check pass read every value against its kind and the file's hash: this pass
            // takes each value's JSON text as it stands and builds nothing for the common ones.
            json_rows::read_raw_rows(&path, &columns, |i, row| {
                if i < from {
                    return Ok(());
                }
                batch.next_row = i + 1;
                if !left_behind.contains_key(&i) {
                    if let Some(map) = &user_map {
                        for &(c, _, policy) in &user_ids {
                            rewritten[c] = None;
                            // A user-id column holding null is not rewritten.
                            let Some(old) = json_rows::json_string(row.get(c)) else {
                                continue;
                            };
                            let new = if old.bytes().any(|b| b.is_ascii_uppercase()) {
                                map.get(&old.to_ascii_lowercase())
                            } else {
                                map.get(old.as_ref())
                            };
                            match new {
                                Some(new) => rewritten[c] = Some(new),
                                None if policy == Unmapped::Null => rewritten[c] = Some("null"),
                                None if policy == Unmapped::Keep => {}
                                // skip_row rows were left behind above; fail stopped the
                                // import before it began: the file changed since.
                                None => bail!("row {}: user id {old} has no mapping", i + 1),
                            }
                        }
                    }
                    let out = if lookups.is_empty() {
                        &mut batch.data
                    } else {
                        line.clear();
                        &mut line
                    };
                    for (n, &f) in fields.iter().enumerate() {
                        if n > 0 {
                            out.push(b'\t');
                        }
                        let value = rewritten[f].unwrap_or_else(|| row.get(f));
                        copy_text::write_raw_field(out, &kinds[f], not_null[f], value)
                            .with_context(|| format!("row {} column {}", i + 1, columns[f]))?;
                    }
                    out.push(b'\n');
                    if !lookups.is_empty() {
                        // Lookups find rows by the source's own ids, not the rewritten ones.
                        raw.clear();
                        for (n, &f) in fields.iter().enumerate() {
                            if n > 0 {
                                raw.push(b'\t');
                            }
                            copy_text::write_raw_field(
                                &mut raw,
                                &kinds[f],
                                not_null[f],
                                row.get(f),
                            )
                            .with_context(|| format!("row {} column {}", i + 1, columns[f]))?;
                        }
                        if let Some(n) = lookups.append_keyed(&mut line, &pipeline::fields(&raw))
                            && !lookups.missing_null[n]
                        {
                            bail!(
                                "row {}: a lookup found no row; the export changed since the check",
                                i + 1
                            );
                        }
                        batch.data.extend_from_slice(&line);
                    }
                    batch.rows += 1;
                    batch.file_rows.push(i);
                }
                if batch.rows == batch_size {
                    let next = Batch {
                        first_row: i + 1,
                        next_row: i + 1,
                        rows: 0,
                        file_rows: Vec::new(),
                        data: Vec::with_capacity(batch.data.capacity()),
                    };
                    let full = std::mem::replace(&mut batch, next);
                    if sender.blocking_send(full).is_err() {
                        bail!("the import stopped");
                    }
                }
                Ok(())
            })?;
            // Also a batch of no rows, when rows at the end stay behind: its checkpoint says
            // the file is done.
            if batch.rows > 0 || batch.next_row > batch.first_row {
                let _ = sender.blocking_send(batch);
            }
            Ok::<(), anyhow::Error>(())
        })
    };

    // Where the committed rows end: each batch commits once this reaches its first row.
    let (turn, turns) = tokio::sync::watch::channel(from);
    let receiver = tokio::sync::Mutex::new(receiver);
    let loads = writers.iter().map(|&writer| {
        let (receiver, turn, bar) = (&receiver, &turn, &bar);
        let mut turns = turns.clone();
        async move {
            // The statements are parsed once per writer for the whole table, and the first
            // batch's transaction is opened (each commit opens the next one: see write_batch).
            let statements = prepare_batch_statements(writer, plan).await?;
            writer.batch_execute("BEGIN").await?;
            loop {
                // Not `while let`: its lock guard would live through the batch, one writer
                // at a time.
                let Some(batch) = receiver.lock().await.recv().await else {
                    break;
                };
                let (first_row, next_row) = (batch.first_row, batch.next_row);
                let my_turn = async {
                    turns
                        .wait_for(|&committed| committed == first_row)
                        .await
                        .map(|_| ())
                        .map_err(|_| anyhow!("the import stopped"))
                };
                write_batch(writer, plan, &statements, batch, my_turn)
                    .await
                    .map_err(|e| parallel_wait(e, writers.len(), first_row, next_row))?;
                turn.send_replace(next_row);
                bar.set_position(next_row);
            }
            // Ends the transaction the last commit opened, empty (after a failure, the loop
            // below rolls back every writer's).
            writer
                .batch_execute("ROLLBACK")
                .await
                .context("could not end the last batch's transaction")?;
            if writers.len() > 1 {
                writer.batch_execute("RESET lock_timeout").await?;
            }
            anyhow::Ok(())
        }
    });
    // The first failure stops the others where they are: a batch not yet committed is rolled
    // back with its connection's transaction, one committing is in order.
    let failure = futures::future::try_join_all(loads).await.err();
    drop(receiver);
    if failure.is_some() {
        for writer in writers {
            let _ = writer.batch_execute("ROLLBACK").await;
        }
    }
    let committed = *turns.borrow();
    let read = reader.await.context("the file reader panicked")?;
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(e.context(format!(
            "import of {name} stopped; {committed} of {total} rows are committed and a re-run resumes after them"
        )));
    }
    read.with_context(|| {
        format!(
            "reading {} failed; {committed} of {total} rows are committed",
            plan.entry.file
        )
    })?;
    if committed != total {
        bail!("{name}: {committed} rows loaded but the file has {total}");
    }
    Ok(Loaded {
        table: name.to_string(),
        rows_in_file: total,
        already: from,
        loaded: committed - from - plan.left_behind.range(from..).count() as u64,
        seconds: started.elapsed().as_secs_f64(),
        left_behind: plan.left_behind.len() as u64,
        writers: writers.len(),
    })
}

/// The statements every batch of a table runs, parsed once for the table, not per batch.
struct BatchStatements {
    copy: Statement,
    /// For staged tables: the INSERT ... SELECT from the staging table.
    insert: Option<Statement>,
}

async fn prepare_batch_statements(client: &Client, plan: &TableLoad) -> Result<BatchStatements> {
    let copy = client
        .prepare(&plan.copy_sql)
        .await
        .with_context(|| format!("{}: could not prepare the COPY", plan.name()))?;
    let insert = match &plan.staging {
        Some((_, insert)) => Some(client.prepare(insert).await.with_context(|| {
            format!(
                "{}: could not prepare the INSERT from the staging table",
                plan.name()
            )
        })?),
        None => None,
    };
    Ok(BatchStatements { copy, insert })
}

/// One transaction: the rows, then the checkpoint that says they are in, committed once
/// `my_turn` resolves (at once with one writer; after the batch before it with several). The
/// caller has opened it; the checkpoint, the COMMIT and the next batch's BEGIN go to the
/// server as one message (run in order, up to the first error). On an error the transaction
/// is left open, failed, for the caller to roll back.
async fn write_batch(
    client: &Client,
    plan: &TableLoad,
    statements: &BatchStatements,
    mut batch: Batch,
    my_turn: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    // The COPY, the staged INSERT and the checkpoint's commit go out back to back, each
    // behind the one before on the connection, instead of one round trip after another (a
    // third of a 500-row batch's time). Nothing can commit what failed: after an error the
    // transaction is aborted, so the later statements fail too, and COMMIT is never reached.
    let data = Bytes::from(std::mem::take(&mut batch.data));
    let copy = async {
        let sink = client.copy_in(&statements.copy).await?;
        pin_mut!(sink);
        sink.send(data).await?;
        sink.finish().await
    };
    let insert = async {
        match &statements.insert {
            Some(insert) => client.execute(insert, &[]).await.map(Some),
            None => Ok(None),
        }
    };
    let checkpoint = format!(
        "INSERT INTO {CHECKPOINT_TABLE} (table_name, file_sha256, rows_committed, rows_total) \
         VALUES ({}, {}, {}, {}) ON CONFLICT (table_name) DO UPDATE \
         SET rows_committed = EXCLUDED.rows_committed, file_sha256 = EXCLUDED.file_sha256, \
             rows_total = EXCLUDED.rows_total, updated_at = now(); \
         COMMIT; BEGIN",
        quote_literal(plan.name()),
        quote_literal(&plan.entry.sha256),
        batch.next_row,
        plan.entry.rows
    );
    let commit = async {
        my_turn.await?;
        client
            .batch_execute(&checkpoint)
            .await
            .context("could not commit a batch")
    };
    // `join!` polls in order, so the requests reach the connection in this order.
    let (copied, inserted, committed) = futures::join!(copy, insert, commit);
    if let Err(e) = copied {
        return Err(row_error(plan, &batch, e));
    }
    inserted.map_err(|e| {
        if connect::is_connection_lost(&e) {
            return anyhow::Error::new(e).context(format!(
                "{}: writing rows {}..{} of {} failed",
                plan.name(),
                batch.first_row + 1,
                batch.next_row,
                plan.entry.file
            ));
        }
        anyhow!(
            "{}: the target rejected rows {}..{} of {} (after the column mapping): {}",
            plan.name(),
            batch.first_row + 1,
            batch.next_row,
            plan.entry.file,
            crate::connect::server_message(&e)
        )
    })?;
    committed
}

/// How long a parallel writer's statement waits for a lock before it gives up (see
/// [`parallel_wait`]).
const PARALLEL_LOCK_TIMEOUT: &str = "60s";

/// With several writers, a lock timeout means a batch waited for a later batch's rows: the
/// same key in both. One writer names the row the target rejects.
fn parallel_wait(e: anyhow::Error, writers: usize, first_row: u64, next_row: u64) -> anyhow::Error {
    let timed_out = e
        .chain()
        .filter_map(|c| c.downcast_ref::<tokio_postgres::Error>())
        .any(|e| e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE));
    if writers < 2 || !timed_out {
        return e;
    }
    e.context(format!(
        "rows {}..{} waited {PARALLEL_LOCK_TIMEOUT} for rows written at the same time by another \
         of the {writers} writers (the same key twice in the file?).\n  next step: run again with \
         --jobs 1, which names the row the target rejects",
        first_row + 1,
        next_row
    ))
}

/// Names the file row, column and reason of a row the server rejected. The server's CONTEXT
/// (`COPY t, line 7, column c: "value"`) would show the value; only the line and column are
/// kept, since the value may be personal data.
fn row_error(plan: &TableLoad, batch: &Batch, e: tokio_postgres::Error) -> anyhow::Error {
    let (first_row, last_row) = (batch.first_row, batch.next_row);
    if connect::is_connection_lost(&e) {
        // Not the rows' fault: keep the error, so `run` says the connection was lost.
        return anyhow::Error::new(e).context(format!(
            "{}: writing rows {}..{} of {} failed",
            plan.name(),
            first_row + 1,
            last_row,
            plan.entry.file
        ));
    }
    let Some(db) = e.as_db_error() else {
        return anyhow!("{}: writing a batch failed: {e}", plan.name());
    };
    let context = db.where_().unwrap_or_default();
    let line = context
        .split("line ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse::<u64>().ok());
    let column = context
        .split(", column ")
        .nth(1)
        .map(|rest| rest.split(':').next().unwrap_or(rest).to_string());
    let row = line.map_or_else(
        || format!("rows {}..{}", first_row + 1, last_row),
        |l| {
            let row = batch
                .file_rows
                .get((l as usize).saturating_sub(1))
                .map_or(first_row + l, |i| i + 1);
            format!("row {row}")
        },
    );
    anyhow!(
        "{}: the target rejected {row} of {}{}: {} (SQLSTATE {}); the batch was rolled back",
        plan.target,
        plan.entry.file,
        column.map(|c| format!(", column {c}")).unwrap_or_default(),
        db.message(),
        db.code().code()
    )
}

/// A table with no rows (or already complete) still gets its checkpoint.
async fn ensure_checkpoint(client: &Client, plan: &TableLoad) -> Result<()> {
    client
        .execute(
            &format!(
                "INSERT INTO {CHECKPOINT_TABLE} (table_name, file_sha256, rows_committed, rows_total) \
                 VALUES ($1, $2, $3, $3) ON CONFLICT (table_name) DO NOTHING"
            ),
            &[&plan.name(), &plan.entry.sha256, &(plan.entry.rows as i64)],
        )
        .await?;
    Ok(())
}

/// Identity and serial columns continue after the imported maximum (what pg_dump's `setval`
/// does; forgetting it breaks the first insert after the cut-over).
async fn set_sequences(client: &Client, plans: &[TableLoad]) -> Result<()> {
    for plan in plans {
        let table = plan.target.quoted();
        let rows = client
            .query(
                "SELECT a.attname::text, pg_get_serial_sequence($1, a.attname) \
                 FROM pg_attribute a \
                 WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped \
                   AND pg_get_serial_sequence($1, a.attname) IS NOT NULL",
                &[&table],
            )
            .await?;
        for row in rows {
            let column: String = row.get(0);
            let sequence: String = row.get(1);
            client
                .execute(
                    &format!(
                        "SELECT setval({}, m) FROM (SELECT max({}) AS m FROM {table}) x WHERE m IS NOT NULL",
                        quote_literal(&sequence),
                        quote_ident(&column)
                    ),
                    &[],
                )
                .await
                .with_context(|| format!("could not advance {sequence}"))?;
        }
    }
    Ok(())
}

/// After `--disable-fk`: every foreign key between imported tables, checked for orphans.
async fn orphan_check(
    client: &Client,
    plans: &[TableLoad],
    target: &Discovered,
) -> Result<Vec<String>> {
    let imported: BTreeSet<&str> = plans.iter().map(|p| p.map.target_table.as_str()).collect();
    let mut problems = Vec::new();
    for fk in &target.foreign_keys {
        if !imported.contains(fk.table.as_str()) {
            continue;
        }
        if let Some(found) = catalog::orphans(client, fk).await? {
            problems.push(format!(
                "{} ({}.{} -> {}): {found}",
                fk.constraint,
                fk.table,
                fk.columns.join(","),
                fk.references,
            ));
        }
    }
    for p in &problems {
        tracing::error!(target: "fmig::report", "foreign key violated: {p}");
    }
    Ok(problems)
}

/// Tables (indexes into the plans) loaded one after another, and how many writers load them.
type Queue = (Vec<usize>, usize);

/// Shares the tables `group` out over `writers` connections, as queues of tables loaded one
/// after another by one or more writers each: `(tables, writers)` per queue. A table's time is
/// taken as its rows (`rows`) over its writers, or over one writer when its batches cannot be
/// shared (`shares` false: staged tables). Of the ways to cut the group into 1..=writers
/// queues (the largest tables first, each to the lightest queue; each writer left over to
/// the queue that would finish last), the one that finishes first wins, the one with more
/// queues on a tie: a level with one large table and a few small ones gives most writers to
/// the large one, a level of equal tables one writer to each.
fn share_out(
    group: &[usize],
    rows: impl Fn(usize) -> u64,
    shares: impl Fn(usize) -> bool,
    writers: usize,
) -> Vec<Queue> {
    let time = |queue: &[usize], writers: usize| -> f64 {
        queue
            .iter()
            .map(|&i| rows(i) as f64 / if shares(i) { writers as f64 } else { 1.0 })
            .sum()
    };
    let mut by_size = group.to_vec();
    by_size.sort_by_key(|&i| std::cmp::Reverse(rows(i)));
    let mut best: Option<(f64, Vec<Queue>)> = None;
    for queue_count in 1..=group.len().clamp(1, writers) {
        let mut queues: Vec<(u64, Vec<usize>)> = vec![(0, Vec::new()); queue_count];
        for &i in &by_size {
            let lightest = queues
                .iter_mut()
                .min_by_key(|(rows, _)| *rows)
                .expect("at least one queue");
            lightest.0 += rows(i);
            lightest.1.push(i);
        }
        let mut shared: Vec<Queue> = queues.into_iter().map(|(_, q)| (q, 1)).collect();
        for _ in queue_count..writers {
            let last = shared
                .iter_mut()
                .filter(|(q, _)| q.iter().any(|&i| shares(i)))
                .max_by(|a, b| time(&a.0, a.1).total_cmp(&time(&b.0, b.1)));
            match last {
                Some(queue) => queue.1 += 1,
                // Nothing to share: the writer stays idle, counted on the first queue.
                None => shared[0].1 += 1,
            }
        }
        let finish = shared.iter().map(|(q, w)| time(q, *w)).fold(0.0, f64::max);
        if best.as_ref().is_none_or(|(b, _)| finish <= *b) {
            best = Some((finish, shared));
        }
    }
    best.expect("at least one way").1
}

/// A writing connection's settings. Each batch's commit carries its checkpoint, so losing an
/// asynchronous commit in a crash loses the batch and its checkpoint together; the final
/// commit of the import is synchronous.
async fn writer_session(client: &Client, args: &ImportArgs) -> Result<()> {
    client.batch_execute("SET synchronous_commit = off").await?;
    if args.disable_fk {
        client
            .batch_execute("SET session_replication_role = replica")
            .await
            .map_err(|e| {
                anyhow!(
                    "--disable-fk needs to set session_replication_role, which the target refused: {}. \
                     It needs a superuser (or, on PostgreSQL 15, a role granted SET on that parameter); \
                     run without --disable-fk to load in foreign-key order instead",
                    crate::connect::server_message(&e)
                )
            })?;
    }
    Ok(())
}

/// The orphans of each foreign key re-added `NOT VALID`, reported like `--disable-fk`'s, with
/// the next step.
async fn not_valid_orphans(
    client: &Client,
    restored: &deferred::Restored,
    target: &Discovered,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (table, constraint) in &restored.not_valid {
        let found = match target
            .foreign_keys
            .iter()
            .find(|fk| fk.table == table.name && fk.constraint == *constraint)
        {
            Some(fk) => catalog::orphans(client, fk).await?,
            None => None,
        };
        out.push(format!(
            "{} on {table} is back NOT VALID: rows violate it{}. Next step: fix or remove those \
             rows, then ALTER TABLE {} VALIDATE CONSTRAINT {}",
            constraint,
            found.map(|f| format!(" ({f})")).unwrap_or_default(),
            table.quoted(),
            quote_ident(constraint)
        ));
    }
    for p in &out {
        tracing::error!(target: "fmig::report", "{p}");
    }
    Ok(out)
}

/// `ANALYZE` of every imported target table: the application's first queries after the switch
/// must not be planned on empty statistics. Returns (tables, seconds).
async fn analyze(client: &Client, plans: &[TableLoad]) -> Result<(usize, f64)> {
    let started = Instant::now();
    let tables: BTreeSet<String> = plans.iter().map(|p| p.target.quoted()).collect();
    for table in &tables {
        client
            .batch_execute(&format!("ANALYZE {table}"))
            .await
            .with_context(|| {
                format!("could not ANALYZE {table} (--skip-analyze leaves it to autovacuum)")
            })?;
    }
    let seconds = started.elapsed().as_secs_f64();
    info!(target: "fmig::report", tables = tables.len(), seconds, "statistics updated");
    Ok((tables.len(), seconds))
}

/// `fmig import --restore-schema`: what was put back.
async fn render_restored(restored: &deferred::Restored, client: &Client) -> Result<String> {
    let target = catalog::discover(client, APP_SCHEMA).await?;
    let mut out = if restored.indexes + restored.foreign_keys == 0 {
        format!(
            "Nothing was set aside: every foreign key and index fmig recorded ({}) is in place.\n",
            deferred::TABLE
        )
    } else {
        format!(
            "Put back {} index(es) and {} foreign key(s) in {:.1}s.\n",
            restored.indexes, restored.foreign_keys, restored.seconds
        )
    };
    for line in not_valid_orphans(client, restored, &target)
        .await?
        .iter()
        .chain(&restored.mismatches)
    {
        out.push_str(&format!("  {line}\n"));
    }
    Ok(out)
}

fn render_dry_run(
    plans: &[TableLoad],
    start_at: &BTreeMap<String, u64>,
    args: &ImportArgs,
) -> String {
    let mut table = TextTable::new(&[
        ("table", Align::Left),
        ("into", Align::Left),
        ("rows", Align::Right),
        ("left behind", Align::Right),
        ("resume at", Align::Right),
        ("path", Align::Left),
        ("user-id columns", Align::Left),
    ]);
    for p in plans {
        let from = start_at.get(p.name()).copied().unwrap_or(0);
        table.row(vec![
            p.name().to_string(),
            p.map.target_table.clone(),
            thousands(p.entry.rows as i64),
            thousands(p.left_behind.len() as i64),
            if args.truncate_first {
                "0 (truncate)".into()
            } else {
                thousands(from as i64)
            },
            if p.staging.is_some() {
                "staging + mapping"
            } else {
                "direct COPY"
            }
            .to_string(),
            p.user_ids
                .iter()
                .map(|&(c, _, _)| p.columns[c].clone())
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    format!(
        "{}Dry run: files, hashes, row counts, user mapping, column mapping and target tables \
         checked; nothing was written. Batches of {} rows.\n",
        table.render(),
        args.batch_size
    )
}

fn render_summary(results: &[Loaded], seconds: f64, orphans: &[String], dir: &Path) -> String {
    let mut table = TextTable::new(&[
        ("table", Align::Left),
        ("rows", Align::Right),
        ("already in", Align::Right),
        ("loaded", Align::Right),
        ("left behind", Align::Right),
        ("seconds", Align::Right),
        ("rows/s", Align::Right),
    ]);
    for r in results {
        table.row(vec![
            r.table.clone(),
            thousands(r.rows_in_file as i64),
            thousands(r.already as i64),
            thousands(r.loaded as i64),
            thousands(r.left_behind as i64),
            format!("{:.2}", r.seconds),
            if r.seconds > 0.0 {
                thousands((r.loaded as f64 / r.seconds) as i64)
            } else {
                String::new()
            },
        ]);
    }
    let mut out = format!(
        "{}{} tables, {} rows loaded in {:.1}s\n",
        table.render(),
        results.len(),
        thousands(results.iter().map(|r| r.loaded).sum::<u64>() as i64),
        seconds
    );
    let left_behind: u64 = results.iter().map(|r| r.left_behind).sum();
    if left_behind > 0 {
        out.push_str(&format!(
            "{} rows left behind on purpose (the mapping's `where` and `skip_row`), listed in {}\n",
            thousands(left_behind as i64),
            dir.join(rows::LEFT_BEHIND_DIR).display()
        ));
    }
    if !orphans.is_empty() {
        out.push_str(&format!("\nForeign keys violated ({}):\n", orphans.len()));
        for o in orphans {
            out.push_str(&format!("  {o}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::share_out;

    #[test]
    fn writers_are_shared_out_so_that_the_level_finishes_first() {
        let rows = [1_000_000u64, 10, 500_000, 0, 400_000, 400_000];
        let of = |i: usize| rows[i];
        let all = |_: usize| true;
        // One writer: every table in one queue, largest first.
        assert_eq!(
            share_out(&[0, 1, 2, 3], of, all, 1),
            vec![(vec![0, 2, 1, 3], 1)]
        );
        // One table, three writers: all three on it.
        assert_eq!(share_out(&[0], of, all, 3), vec![(vec![0], 3)]);
        // A large table and small ones: the writers go to the large one's batches.
        assert_eq!(share_out(&[0, 1, 3], of, all, 4), vec![(vec![0, 1, 3], 4)]);
        // Equal tables: one writer each, side by side.
        let mut equal = share_out(&[4, 5], of, all, 2);
        equal.sort();
        assert_eq!(equal, vec![(vec![4], 1), (vec![5], 1)]);
        // A staged table (not shared) keeps one writer; the others share the rest.
        let staged = |i: usize| i != 0;
        let mut mixed = share_out(&[0, 2], of, staged, 3);
        mixed.sort();
        assert_eq!(mixed, vec![(vec![0], 1), (vec![2], 2)]);
        // Every writer is used exactly once.
        for writers in 1..8 {
            let total: usize = share_out(&[0, 1, 2, 3, 4, 5], of, all, writers)
                .iter()
                .map(|(_, w)| w)
                .sum();
            assert_eq!(total, writers);
        }
    }
}
