//! `fmig verify`: proves the target equals the source after the mappings, table by table, and
//! points at every difference.
//!
//! Per table, both sides are streamed at the same time (never held in memory, never sorted):
//! - **target**: its written columns (the [`TableMap`]'s, by target name) through binary COPY
//!   and [`crate::codec`] to JSON text, hashed by [`RowHasher`];
//! - **source**, transformed exactly as `import` does: user-id columns rewritten through
//!   `user-mapping.json` (an id without a mapping becomes NULL, what `--unmapped null` writes;
//!   the referential check flags any id the mapping does not know), then columns renamed or
//!   dropped per the column mapping. A table whose columns all copy across unchanged (import's
//!   "direct COPY") is transformed in Rust. Any other table (a `set` expression, or a column
//!   whose type differs) goes through a temporary staging table of the source's shape on a
//!   second target connection, in batches, and is read back with
//!   `COPY (SELECT <item per target column> FROM stage AS src) TO STDOUT (FORMAT binary)`,
//!   where an expression is [`TargetColumn::select_sql`] (the very SQL import runs) and a
//!   column of another type is `CAST(src.col AS <target type>)`.
//!
//! With `--against export` the source rows come from the export files instead, and every table
//! takes the staging path, fed exactly as import feeds it (the file's JSON values written as
//! COPY text by [`crate::copy_text`], user ids rewritten on the way).
//!
//! **Canonical rule.** Both sides end with values of the target column's type, decoded by the
//! same codec kind, so [`crate::checksum`]'s canonical form applies unchanged: `numeric` by
//! value (4.20 = 4.2), timestamptz by instant, json key order ignored, `''` distinct from NULL,
//! column order irrelevant. A lossy conversion (numeric -> integer, timestamptz ->
//! timestamp(3), jsonb -> text) is compared *after* the cast PostgreSQL applies on import; the
//! report lists such columns as "compared after conversion".
//!
//! **Locating differences.** Each side also keeps 256 bucket checksums, the bucket chosen by a
//! hash of the primary key (of the whole row without one). When a table differs, a second pass
//! keeps only the rows of differing buckets and reports primary keys missing, extra or changed
//! (columns with both values; personal or secret columns masked), up to `--max-diffs`.
//!
//! **Referential checks.** Every user-id value in the target is a Stack Auth id of the mapping
//! (or NULL), and no foreign key of the verified tables has orphans. With `--unmapped keep`, a
//! value that is the old id of a user without a mapping is listed as kept, not as a difference
//! (the checksum has already shown it is the source's own value); the old id of a user who
//! *has* a mapping is still a difference.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use futures::{SinkExt, StreamExt, TryStreamExt, pin_mut};
use serde::Serialize;
use tokio_postgres::Client;
use tracing::{error, info};

use crate::Outcome;
use crate::catalog::{self, Column, Discovered};
use crate::checksum::{self, Checksum, RecordedChecksum, RowHasher};
use crate::cli::{Unmapped, VerifyAgainst, VerifyArgs, VerifyOnly};
use crate::codec::{self, Cast, ColumnKind};
use crate::column_map::{ColumnMap, ColumnValue, TableMap};
use crate::connect::{self, ConnectOptions, DbUrl};
use crate::copy_binary::CopyBinaryParser;
use crate::files;
use crate::ident::{QualifiedName, quote_ident};
use crate::import_choices::ImportChoices;
use crate::manifest::{self, APP_SCHEMA, TableSpec};
use crate::metadata::{FileEntry, Metadata};
use crate::pipeline;
use crate::progress;
use crate::report::{Align, TextTable, thousands};
use crate::user_mapping::UserMapping;

mod users;

/// Buckets per table for locating differences: 256 checksums per side cost nothing to keep,
/// and a single changed row then costs a re-read of 1/256 of the table.
const BUCKETS: usize = 256;
/// Rows staged on the target per round trip (tables with expressions or type changes).
const STAGE_BATCH_ROWS: usize = 50_000;
/// Rows kept per side in the locating pass, so a table that differs everywhere cannot exhaust
/// memory: beyond it the report says the listing is incomplete.
const COLLECT_LIMIT: usize = 200_000;

/// The whole report, also written as JSON.
#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub generated_at: String,
    pub against: String,
    pub algorithm: String,
    pub tables: Vec<TableReport>,
    /// The Stack Auth accounts against the export and the mapping (`--only users`, or a plain
    /// verify with the Stack Auth settings present).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<users::UsersReport>,
    /// `--sign-in`: each account's sign-in through Stack Auth.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sign_in: Vec<crate::sign_in::SignIn>,
    pub ok: bool,
    pub seconds: f64,
}

#[derive(Debug, Serialize)]
pub struct TableReport {
    pub table: String,
    pub target_table: String,
    pub source_rows: Option<u64>,
    pub target_rows: Option<u64>,
    pub rows_ok: bool,
    /// `None` with --skip-checksum.
    pub checksum_ok: Option<bool>,
    pub status: Status,
    pub seconds: f64,
    /// `rust` (renamed/rewritten in fmig) or `staged` (through a staging table on the target).
    pub method: String,
    pub source_checksum: Option<RecordedChecksum>,
    pub target_checksum: Option<RecordedChecksum>,
    /// Columns whose type differs between the sides: compared after the target's cast.
    pub compared_after_conversion: Vec<String>,
    /// Target columns not compared, with why (`compare = false` in the column mapping).
    pub not_compared: Vec<String>,
    pub differing_buckets: usize,
    /// Per differing bucket: its rows on each side (what is left to say without a primary key).
    pub bucket_rows: Vec<BucketRows>,
    pub differences: Vec<Difference>,
    /// More differences were found than listed (--max-diffs, or the collect limit).
    pub differences_truncated: bool,
    /// User-id values not in the mapping, foreign-key orphans.
    pub referential: Vec<String>,
    /// `--unmapped keep`: old ids of users without a Stack Auth account, kept on purpose (the
    /// content checksum has already proved each is the source's own value).
    pub kept_old_ids: Vec<String>,
    /// Source rows the mapping leaves behind (`where`, `skip_row`): expected absent, and
    /// not counted in `source_rows`.
    pub left_behind: u64,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct BucketRows {
    pub bucket: usize,
    pub source_rows: u64,
    pub target_rows: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Differs,
    Error,
    Skipped,
}

/// One difference, named by primary key (or, without one, by the row's values).
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Difference {
    /// In the source, not in the target.
    Missing { key: String, count: u64 },
    /// In the target, not in the source.
    Extra { key: String, count: u64 },
    /// Same key, other values.
    Changed {
        key: String,
        columns: Vec<ColumnDiff>,
    },
    /// The same row a different number of times on each side.
    Duplicated {
        key: String,
        source_count: u64,
        target_count: u64,
    },
}

#[derive(Debug, Serialize)]
pub struct ColumnDiff {
    pub column: String,
    pub source: String,
    pub target: String,
}

/// What one table's verification needs, decided before reading a row.
#[derive(Clone)]
struct TableCheck {
    name: String,
    target: QualifiedName,
    source: QualifiedName,
    map: TableMap,
    /// Target column names and codec kinds, in map.columns order (both sides).
    names: Vec<String>,
    kinds: Vec<ColumnKind>,
    casts: Vec<Cast>,
    /// `COPY (...) TO STDOUT (FORMAT binary)` of the target.
    target_copy: String,
    source_side: SourceSide,
    /// Indices (into names) of the target's primary key; empty: none.
    pk: Vec<usize>,
    converted: Vec<String>,
    not_compared: Vec<String>,
    /// User-id fields of the source row (indices as in the source line) and their policies.
    user_ids: Vec<(usize, Unmapped)>,
    /// `--unmapped`, for columns the mapping sets no policy for.
    default_policy: Unmapped,
    /// Lookups appended to each staged source row, computed from the source.
    lookups: pipeline::Lookups,
    /// The target side's select list (what `target_copy` reads).
    target_select: Vec<String>,
    /// For a target table fed by several units: which of its rows this unit compares.
    keys: Option<KeyFilter>,
    /// Verified and reported (false: planned only for its keys, see [`KeyFilter`]).
    selected: bool,
}

/// How a unit of a target table fed by several units (a table and the also entries of other
/// tables) picks its rows of the target: by the primary keys the units write, each computed
/// from the source alone (the unit's own rows, staged and filtered as import does) into a
/// temporary table on the target reader's connection. An also entry compares the target rows
/// whose key it writes; the table's own unit compares all the others, so a row no unit writes
/// is still an extra row, and a split row missing from its second table is a missing row.
#[derive(Clone)]
struct KeyFilter {
    /// The units whose keys are staged: the plan itself (`include`), or every also unit of the
    /// target table (not `include`).
    units: Vec<TableCheck>,
    include: bool,
}

#[derive(Clone)]
enum SourceSide {
    /// Binary COPY of the source, user ids rewritten in Rust at these indices (into names).
    Direct { copy: String, user_ids: Vec<usize> },
    /// The export file into a staging table on the target, read back transformed.
    File {
        path: std::path::PathBuf,
        /// What the export recorded for the file; checked when it has been read.
        entry: Box<FileEntry>,
        rows: u64,
        create: String,
        stage: String,
        select: String,
    },
    /// Text COPY of the source into a staging table on the target, read back transformed.
    Staged {
        copy: String,
        create: String,
        stage: String,
        select: String,
    },
}

/// Everything the per-table work shares.
struct Shared {
    /// None with --against export.
    source_url: Option<DbUrl>,
    target_url: DbUrl,
    options: ConnectOptions,
    user_map: Arc<IdMap>,
    max_diffs: usize,
    skip_checksum: bool,
    /// The `--unmapped` policy the import ran with (see [`recorded_choices`]).
    unmapped: Unmapped,
}

pub async fn run(args: &VerifyArgs) -> Result<Outcome> {
    let started = Instant::now();
    if let (Some(only), Some(_)) = (args.only, &args.sign_in)
        && only != VerifyOnly::SignIn
    {
        bail!("--sign-in signs in: it goes without --only, or with --only sign-in");
    }
    // Sign-ins first: quick, and they need no database.
    let sign_in = match &args.sign_in {
        Some(path) => {
            let settings = crate::sign_in::ClientSettings {
                api_url: &args.stack_auth.project.stack_auth_url,
                project_id: args.stack_auth.project.project_id.as_deref().unwrap_or(""),
                publishable_client_key: args.publishable_client_key.as_deref().unwrap_or(""),
            };
            crate::sign_in::check(path, &settings).await?
        }
        None if args.only == Some(VerifyOnly::SignIn) => {
            bail!("--only sign-in needs --sign-in accounts.csv")
        }
        None => Vec::new(),
    };
    // Then the users: they need no database either.
    let check_users = match args.only {
        Some(only) => only == VerifyOnly::Users,
        None => users::wanted_by_default(args),
    };
    if args.only.is_none() && !check_users {
        info!(target: "fmig::report", "users not verified: STACK_AUTH_PROJECT_ID and STACK_AUTH_SECRET_KEY are not both set, or there is no auth_users.json or user-mapping.json (--only users says which)");
    }
    let users = if check_users {
        Some(users::verify(args).await?)
    } else {
        None
    };
    if matches!(args.only, Some(VerifyOnly::SignIn | VerifyOnly::Users)) {
        return finish(args, Vec::new(), users, sign_in, started);
    }
    if args.tables.iter().all(|t| manifest::is_builtin(t)) {
        manifest::select(manifest::builtin(), &args.tables, false)?;
    }
    let column_map = ColumnMap::load(args.mapping_config.as_deref())?;
    let target_url = args.target.url()?;
    let options = args.connect.options();
    let (source_url, source, metadata) = match args.against {
        VerifyAgainst::Source => {
            let url = args.source.url()?;
            let client = connect::connect(&url, &options).await?;
            let found = catalog::discover(&client, APP_SCHEMA).await?;
            (Some(url), found, None)
        }
        VerifyAgainst::Export => {
            let metadata = Metadata::load(&args.export_dir)?;
            (None, pipeline::source_catalog(&metadata), Some(metadata))
        }
    };
    // Every source table: the built-in list and the ones discovered beside it.
    let manifest = manifest::effective(&source);
    let selected = manifest::select(manifest, &args.tables, false)?;
    let mut target_client = connect::connect(&target_url, &options).await?;
    let set_aside = crate::commands::import::deferred::pending(&target_client).await?;
    if set_aside > 0 {
        bail!(
            "the target lacks {set_aside} foreign key(s) or index(es) that an interrupted import \
             set aside (recorded in {}).\n  next step: run fmig import --restore-schema (or \
             finish the import), then verify",
            crate::commands::import::deferred::TABLE
        );
    }
    let target = catalog::discover(&target_client, APP_SCHEMA).await?;
    column_map
        .validate(manifest, &source, &target)
        .map_err(|e| anyhow!("{e}"))?;
    pipeline::check_mapping(&column_map, &source, &target, &mut target_client).await?;
    let unmapped = recorded_choices(args, &column_map, &target_client).await?;

    let mut plans = Vec::new();
    let mut reports = Vec::new();
    // The target tables verified: an also entry that writes into one of them is planned too
    // (its keys tell the table's rows apart) even when its own table is not selected.
    let selected_targets: BTreeSet<String> = manifest
        .iter()
        .filter(|s| selected.contains(s.name))
        .flat_map(|s| column_map.unit_targets(s.name))
        .collect();
    for (_, spec) in manifest::import_order(manifest, &target) {
        let wanted = selected.contains(spec.name);
        let feeds_selected = column_map
            .unit_targets(spec.name)
            .iter()
            .skip(1)
            .any(|t| selected_targets.contains(t));
        if !(wanted || feeds_selected) || column_map.is_skipped(spec.name) {
            continue;
        }
        let target_name = column_map.target_name(spec.name).to_string();
        if !source.tables.contains_key(spec.name) || !target.tables.contains_key(&target_name) {
            if !wanted {
                continue;
            }
            // A discovered table the target lacks is left out by import when it is empty.
            if !manifest::is_builtin(spec.name) && source.tables.contains_key(spec.name) {
                let rows = match (&metadata, &source_url) {
                    (Some(m), _) => m.table(spec.name).map_or(0, |e| e.rows),
                    (None, Some(url)) => {
                        count(url, &options, &QualifiedName::new(APP_SCHEMA, spec.name)).await?
                    }
                    (None, None) => 0,
                };
                if rows == 0 {
                    continue;
                }
            }
            let mut r = empty_report(spec.name, &target_name);
            r.status = Status::Error;
            r.error = Some("missing in the source or the target".into());
            reports.push(r);
            continue;
        }
        let file = match &metadata {
            Some(m) => Some(m.table(spec.name).ok_or_else(|| {
                anyhow!(
                    "table {} is not in the export in {}",
                    spec.name,
                    args.export_dir.display()
                )
            })?),
            None => None,
        };
        for map in column_map.resolve_units(spec, &source, &target)? {
            if !(wanted || map.also && selected_targets.contains(&map.target_table)) {
                continue;
            }
            if !target.tables.contains_key(&map.target_table) {
                let mut r = empty_report(&map.unit, &map.target_table);
                r.status = Status::Error;
                r.error = Some("missing in the target".into());
                reports.push(r);
                continue;
            }
            let pk = primary_key(&target_client, &map.target_table).await?;
            // An also entry takes the staging path, which can also list the keys it writes
            // (see KeyFilter).
            let staged = map.also;
            let mut plan = plan_table(spec, map, &source, &target, &pk, unmapped, staged)?;
            if let Some(entry) = file {
                plan.source_side = file_side(&plan, entry, &args.export_dir)?;
                plan.source = QualifiedName::new("export", &entry.file);
            }
            plan.selected = wanted;
            plans.push(plan);
        }
    }

    let mapping_path = args.mapping_path();
    let needs_mapping = plans.iter().any(|p| !p.map.user_id_columns.is_empty());
    let ids: HashMap<String, String> = if needs_mapping {
        UserMapping::load(&mapping_path)
            .with_context(|| {
                format!(
                    "no usable user mapping at {} (give the one import used with --mapping)",
                    mapping_path.display()
                )
            })?
            .id_map()
    } else {
        HashMap::new()
    };
    let shared = Arc::new(Shared {
        source_url,
        target_url,
        options,
        user_map: Arc::new(IdMap {
            ids: Arc::new(ids),
            keep: unmapped == Unmapped::Keep,
        }),
        max_diffs: args.max_diffs,
        skip_checksum: args.skip_checksum,
        unmapped,
    });

    // Lookups, computed from the source (or the export) alone, never from the target.
    let ids = shared.user_map.ids.clone();
    for plan in &mut plans {
        if plan.map.lookups.is_empty() {
            continue;
        }
        let columns: Vec<String> = match &metadata {
            Some(m) => m
                .table(&plan.map.source_table)
                .map(|e| e.columns.iter().map(|c| c.name.clone()).collect())
                .unwrap_or_default(),
            None => source.tables[&plan.map.source_table]
                .columns
                .iter()
                .map(|c| c.name.clone())
                .collect(),
        };
        let mut values = Vec::new();
        for lookup in &plan.map.lookups {
            let built = lookup_values(
                lookup,
                &column_map,
                &source,
                &target,
                metadata.as_ref(),
                args,
                &shared,
                &target_client,
                &ids,
            )
            .await
            .with_context(|| format!("{}: the lookup in {}", plan.name, lookup.table))?;
            values.push(Arc::new(built));
        }
        plan.lookups = pipeline::Lookups {
            keys: pipeline::lookup_keys(&plan.map, &columns)?,
            values,
            missing_null: plan.map.lookups.iter().map(|l| l.missing_null).collect(),
        };
    }

    // Target tables fed by several units: each unit compares only the target rows it writes.
    restrict_shared_targets(&mut plans)?;
    plans.retain(|p| p.selected);

    // Tables in parallel (--jobs); --fail-fast stops starting new ones after a difference.
    let stop = Arc::new(AtomicBool::new(false));
    let fail_fast = args.fail_fast;
    let results: Vec<TableReport> = futures::stream::iter(plans.iter().cloned())
        .map(|plan| {
            let shared = shared.clone();
            let stop = stop.clone();
            async move {
                if stop.load(Ordering::SeqCst) {
                    let mut r = empty_report(&plan.name, &plan.target.name);
                    r.status = Status::Skipped;
                    return r;
                }
                let report = verify_table(&plan, &shared).await;
                if fail_fast && report.status != Status::Ok {
                    stop.store(true, Ordering::SeqCst);
                }
                report
            }
        })
        .buffered(usize::from(args.jobs))
        .collect()
        .await;
    reports.extend(results);

    // Referential checks on the target, attached to the table they concern.
    if !stop.load(Ordering::SeqCst) {
        referential_checks(
            &target_client,
            &plans,
            &target,
            &shared.user_map,
            &mut reports,
        )
        .await?;
    }

    finish(args, reports, users, sign_in, started)
}

/// The report (console and JSON) and the outcome.
fn finish(
    args: &VerifyArgs,
    reports: Vec<TableReport>,
    users: Option<users::UsersReport>,
    sign_in: Vec<crate::sign_in::SignIn>,
    started: Instant,
) -> Result<Outcome> {
    let ok = reports.iter().all(|r| r.status == Status::Ok)
        && users.as_ref().is_none_or(|u| u.status == Status::Ok)
        && sign_in.iter().all(|s| s.ok);
    let report = VerifyReport {
        generated_at: chrono::Utc::now().to_rfc3339(),
        against: match args.against {
            VerifyAgainst::Source => "source".into(),
            VerifyAgainst::Export => format!("export {}", args.export_dir.display()),
        },
        algorithm: checksum::ALGORITHM.into(),
        tables: reports,
        users,
        sign_in,
        ok,
        seconds: started.elapsed().as_secs_f64(),
    };
    log_report(&report);
    let text = render(&report, args.max_diffs);
    progress::suspend(|| print!("{text}"));
    let output = args.output_path();
    let json = serde_json::to_vec_pretty(&report)?;
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    files::write_atomically(&output, &json)?;
    info!(path = %output.display(), "verification report written");
    // A table that could not be read is not verified: "could not run" (exit 2), not "differs".
    let failed: Vec<&str> = report
        .tables
        .iter()
        .filter(|r| r.status == Status::Error)
        .map(|r| r.table.as_str())
        .collect();
    if let Some(e) = report.users.as_ref().and_then(users::failure) {
        return Err(e.context(format!("see {}", output.display())));
    }
    if !failed.is_empty() {
        bail!(
            "could not verify {} (see {})",
            failed.join(", "),
            output.display()
        );
    }
    Ok(if ok {
        Outcome::Success
    } else {
        Outcome::ProblemsFound
    })
}

/// The `--unmapped` policy verify expects, and a check of the column mapping, against the
/// choices the import recorded in the target ([`ImportChoices`]): the recorded ones are the
/// defaults, and a flag or mapping file that contradicts them is refused unless
/// `--ignore-recorded`.
async fn recorded_choices(
    args: &VerifyArgs,
    column_map: &ColumnMap,
    target: &Client,
) -> Result<Unmapped> {
    let Some(recorded) = ImportChoices::read(target).await? else {
        let unmapped = args.unmapped.unwrap_or(Unmapped::Null);
        if args.unmapped.is_none() {
            info!(target: "fmig::report", "no import choices recorded in the target: verifying with --unmapped null");
        }
        return Ok(unmapped);
    };
    let now = ImportChoices::current(
        recorded.export.clone(),
        column_map,
        args.unmapped.unwrap_or(recorded.unmapped),
    )?;
    let differences = recorded.differences(&now);
    if !differences.is_empty() && !args.ignore_recorded {
        bail!(
            "the import recorded in the target ran with other choices: {}.\n  next step: verify \
             with the import's choices (leave --unmapped out to use the recorded one; give the \
             column mapping file it used with --mapping-config), or add --ignore-recorded to \
             verify with these anyway",
            differences.join("; ")
        );
    }
    let unmapped = args.unmapped.unwrap_or(recorded.unmapped);
    let text = format!(
        "verifying with the import's choices recorded in the target at {}: --unmapped {}, column \
         mapping {}, export {}{}",
        recorded.recorded_at.as_deref().unwrap_or("?"),
        recorded.unmapped.mapping_name(),
        recorded.mapping_config.as_deref().unwrap_or("none"),
        recorded.export,
        if differences.is_empty() {
            String::new()
        } else {
            format!(" (ignored as asked: {})", differences.join("; "))
        }
    );
    info!(target: "fmig::report", "{text}");
    progress::suspend(|| println!("{text}"));
    Ok(unmapped)
}

/// One lookup's values from the looked-up table's rows in the source database (or, with
/// `--against export`, its export file), user ids rewritten and its rows that stay behind left
/// out, as import computes them from the export.
#[allow(clippy::too_many_arguments)]
async fn lookup_values(
    lookup: &crate::column_map::Lookup,
    column_map: &ColumnMap,
    source: &Discovered,
    target: &Discovered,
    metadata: Option<&Metadata>,
    args: &VerifyArgs,
    shared: &Shared,
    target_client: &Client,
    ids: &Arc<HashMap<String, String>>,
) -> Result<pipeline::LookupValues> {
    let spec = manifest::find(manifest::effective(source), &lookup.table)
        .ok_or_else(|| anyhow!("{} is not one of fmig's tables", lookup.table))?;
    let map = column_map.resolve(spec, source, target)?;
    let info = source
        .tables
        .get(&lookup.table)
        .ok_or_else(|| anyhow!("the source has no table {}", lookup.table))?;
    let columns: Vec<String> = info.columns.iter().map(|c| c.name.clone()).collect();
    let user_ids = pipeline::UserIds {
        ids: ids.clone(),
        columns: info
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| map.user_id_columns.contains(&c.name))
            .map(|(i, c)| (i, map.policy(&c.name, shared.unmapped)))
            .collect(),
        untouched: pipeline::looked_up_fields(lookup, &columns)?.0,
    };
    let typed: Vec<(&str, u32, &str)> = info
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_oid, c.type_name.as_str()))
        .collect();
    let mut bare = map.clone();
    bare.lookups.clear();
    let defs = pipeline::staging_columns(&typed, &bare);
    let filter = map.filter.as_deref().map(|f| (target_client, defs, f));
    let (lines, task) = match metadata {
        Some(m) => {
            let entry = m
                .table(&lookup.table)
                .ok_or_else(|| anyhow!("{} is not in the export", lookup.table))?;
            pipeline::file_lines(
                args.export_dir.join(&entry.file),
                entry.clone(),
                pipeline::rewritten(user_ids),
                pipeline::LINE_BATCH_ROWS,
            )
        }
        None => {
            let url = shared
                .source_url
                .as_ref()
                .ok_or_else(|| anyhow!("no source database"))?;
            let client = connect::connect(url, &shared.options).await?;
            let copy = source_text_copy(info, &QualifiedName::new(APP_SCHEMA, &lookup.table));
            pipeline::db_lines(
                client,
                copy,
                pipeline::rewritten(user_ids),
                pipeline::LINE_BATCH_ROWS,
            )
        }
    };
    let values = pipeline::lookup_values(lines, task, lookup, &columns, filter).await?;
    Ok(values)
}

/// `COPY (SELECT <every column, user-defined types as text>) TO STDOUT`: the source's rows in
/// the staging table's shape.
fn source_text_copy(info: &crate::catalog::TableInfo, name: &QualifiedName) -> String {
    let list: Vec<String> = info
        .columns
        .iter()
        .map(|c| {
            let staged = crate::column_map::staging_type(c.type_oid, &c.type_name);
            // User-defined types travel as text, as in import.
            if staged == c.type_name {
                quote_ident(&c.name)
            } else {
                format!("{}::text", quote_ident(&c.name))
            }
        })
        .collect();
    format!(
        "COPY (SELECT {} FROM {}) TO STDOUT",
        list.join(", "),
        name.quoted()
    )
}

fn empty_report(table: &str, target_table: &str) -> TableReport {
    TableReport {
        table: table.to_string(),
        target_table: target_table.to_string(),
        source_rows: None,
        target_rows: None,
        rows_ok: false,
        checksum_ok: None,
        status: Status::Ok,
        seconds: 0.0,
        method: String::new(),
        source_checksum: None,
        target_checksum: None,
        compared_after_conversion: Vec::new(),
        not_compared: Vec::new(),
        differing_buckets: 0,
        bucket_rows: Vec::new(),
        differences: Vec::new(),
        differences_truncated: false,
        referential: Vec::new(),
        kept_old_ids: Vec::new(),
        left_behind: 0,
        error: None,
    }
}

/// The target table's primary-key columns, in key order.
async fn primary_key(client: &Client, table: &str) -> Result<Vec<String>> {
    let name = QualifiedName::new(APP_SCHEMA, table).quoted();
    let rows = client
        .query(
            "SELECT a.attname::text FROM pg_index i \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
             WHERE i.indrelid = $1::text::regclass AND i.indisprimary \
             ORDER BY array_position(i.indkey::int2[], a.attnum)",
            &[&name],
        )
        .await
        .with_context(|| format!("could not read the primary key of {name}"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

fn plan_table(
    spec: &TableSpec,
    mut map: TableMap,
    source: &Discovered,
    target: &Discovered,
    pk: &[String],
    default: Unmapped,
    force_staged: bool,
) -> Result<TableCheck> {
    // Generated values (`compare = false`) are left out of both sides.
    let not_compared = map.not_compared.clone();
    map.columns.retain(|c| !not_compared.contains(&c.name));
    let source_info = &source.tables[spec.name];
    let target_info = &target.tables[&map.target_table];
    let target_name = QualifiedName::new(APP_SCHEMA, &map.target_table);
    let source_name = QualifiedName::new(APP_SCHEMA, spec.name);
    let mut names = Vec::new();
    let mut kinds = Vec::new();
    let mut casts = Vec::new();
    for column in &map.columns {
        let info = target_info
            .column(&column.name)
            .ok_or_else(|| anyhow!("{}: no target column {}", spec.name, column.name))?;
        let (kind, cast) = codec::column_kind(&info.pg_type());
        names.push(column.name.clone());
        kinds.push(kind);
        casts.push(cast);
    }
    let target_select: Vec<String> = map
        .columns
        .iter()
        .zip(&casts)
        .map(|(c, cast)| codec::select_expr(&quote_ident(&c.name), *cast))
        .collect();
    let target_copy = copy_sql(&target_select, &target_name.quoted());
    let converted: Vec<String> = map
        .columns
        .iter()
        .filter(|c| matches!(&c.value, ColumnValue::Source { source_type, .. } if *source_type != c.target_type))
        .map(|c| c.name.clone())
        .collect();

    // Import's rule (straight in when every written column is a source column of the same
    // type); rows that can stay behind need the staging table's WHERE or the policy's rewrite.
    let direct = !force_staged
        && pipeline::copies_directly(&map)
        && !map.leaves_rows_behind(default)
        && map.user_id_policies.is_empty();
    let source_side = if direct {
        let select: Vec<String> = map
            .columns
            .iter()
            .zip(&casts)
            .map(|(c, cast)| match &c.value {
                ColumnValue::Source { column, .. } => {
                    codec::select_expr(&quote_ident(column), *cast)
                }
                _ => unreachable!("direct tables copy source columns only"),
            })
            .collect();
        let user_ids = map
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| matches!(&c.value, ColumnValue::Source { column, .. } if map.user_id_columns.contains(column)))
            .map(|(i, _)| i)
            .collect();
        SourceSide::Direct {
            copy: copy_sql(&select, &source_name.quoted()),
            user_ids,
        }
    } else {
        // The staging table has the source's shape, as import's (the expression contract).
        let stage = format!("fmig_verify_{}", map.unit);
        let columns: Vec<&Column> = source_info.columns.iter().collect();
        let typed: Vec<(&str, u32, &str)> = columns
            .iter()
            .map(|c| (c.name.as_str(), c.type_oid, c.type_name.as_str()))
            .collect();
        let defs = pipeline::staging_columns(&typed, &map);
        let create = format!(
            "CREATE TEMP TABLE IF NOT EXISTS {} ({})",
            quote_ident(&stage),
            defs.join(", ")
        );
        let copy = source_text_copy(source_info, &source_name);
        let select = staged_select(&map, &casts, &stage);
        SourceSide::Staged {
            copy,
            create,
            stage,
            select,
        }
    };
    let pk = pk
        .iter()
        .filter_map(|k| names.iter().position(|n| n == k))
        .collect();
    let user_ids = source_info
        .columns
        .iter()
        .enumerate()
        .filter(|(_, c)| map.user_id_columns.contains(&c.name))
        .map(|(i, c)| (i, map.policy(&c.name, default)))
        .collect();
    Ok(TableCheck {
        name: map.unit.clone(),
        target_select,
        keys: None,
        selected: true,
        target: target_name,
        source: source_name,
        map,
        names,
        kinds,
        casts,
        target_copy,
        source_side,
        pk,
        converted,
        not_compared,
        user_ids,
        default_policy: default,
        lookups: pipeline::Lookups::default(),
    })
}

/// Reads the staged rows back as the target columns, with the target side's codec casts.
/// Reads the staged rows back as import's INSERT ... SELECT computes them
/// ([`pipeline::staged_item`]), keeping only the rows the table's filter keeps.
fn staged_select(map: &TableMap, casts: &[Cast], stage: &str) -> String {
    let items: Vec<String> = map
        .columns
        .iter()
        .zip(casts)
        .map(|(c, cast)| codec::select_expr(&format!("({})", pipeline::staged_item(c)), *cast))
        .collect();
    let mut from = format!("{} AS src", quote_ident(stage));
    if let Some(filter) = &map.filter {
        from.push_str(&format!(" WHERE {}", pipeline::keep_condition(filter)));
    }
    copy_sql(&items, &from)
}

fn copy_sql(select: &[String], from: &str) -> String {
    let list = if select.is_empty() {
        "1".to_string()
    } else {
        select.join(", ")
    };
    format!("COPY (SELECT {list} FROM {from}) TO STDOUT (FORMAT binary)")
}

/// Gives every unit of a target table fed by several units its [`KeyFilter`] and the target
/// copy that reads only its rows.
fn restrict_shared_targets(plans: &mut [TableCheck]) -> Result<()> {
    let mut by_target: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, plan) in plans.iter().enumerate() {
        by_target
            .entry(plan.map.target_table.clone())
            .or_default()
            .push(i);
    }
    for (table, units) in by_target {
        if units.len() < 2 {
            continue;
        }
        let also: Vec<TableCheck> = units
            .iter()
            .map(|&i| &plans[i])
            .filter(|p| p.map.also)
            .cloned()
            .collect();
        if let Some(p) = units.iter().map(|&i| &plans[i]).find(|p| p.pk.is_empty()) {
            bail!(
                "{}: target table {table} is fed by {} units ({}), and verify tells their rows \
                 apart by the primary key, which {table} does not have",
                p.name,
                units.len(),
                units
                    .iter()
                    .map(|&i| plans[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        for &i in &units {
            let plan = &mut plans[i];
            let filter = if plan.map.also {
                KeyFilter {
                    units: vec![plan.clone()],
                    include: true,
                }
            } else {
                KeyFilter {
                    units: also.clone(),
                    include: false,
                }
            };
            let pk: Vec<String> = plan.pk.iter().map(|&k| plan.names[k].clone()).collect();
            let conditions: Vec<String> = (0..filter.units.len())
                .map(|j| {
                    let matches: Vec<String> = pk
                        .iter()
                        .map(|c| format!("k.{0} = t.{0}", quote_ident(c)))
                        .collect();
                    format!(
                        "{}EXISTS (SELECT 1 FROM {} AS k WHERE {})",
                        if filter.include { "" } else { "NOT " },
                        quote_ident(&key_table(j)),
                        matches.join(" AND ")
                    )
                })
                .collect();
            let from = format!(
                "{} AS t WHERE {}",
                plan.target.quoted(),
                conditions.join(if filter.include { " OR " } else { " AND " })
            );
            plan.target_copy = copy_sql(&plan.target_select, &from);
            plan.keys = Some(filter);
        }
    }
    Ok(())
}

fn key_table(index: usize) -> String {
    format!("fmig_verify_keys_{index}")
}

/// Stages, on the target reader's connection, the keys of each unit of `filter` (see
/// [`KeyFilter`]), computed from the source or the export as the unit's own source side is.
async fn stage_keys(
    client: &Client,
    filter: &KeyFilter,
    source_url: Option<&DbUrl>,
    options: &ConnectOptions,
    user_map: &Arc<IdMap>,
) -> Result<()> {
    for (j, unit) in filter.units.iter().enumerate() {
        let table = quote_ident(&key_table(j));
        let pk: Vec<&crate::column_map::TargetColumn> =
            unit.pk.iter().map(|&k| &unit.map.columns[k]).collect();
        let defs: Vec<String> = pk
            .iter()
            .map(|c| format!("{} {}", quote_ident(&c.name), c.target_type))
            .collect();
        client
            .batch_execute(&format!(
                "DROP TABLE IF EXISTS {table}; CREATE TEMP TABLE {table} ({})",
                defs.join(", ")
            ))
            .await?;
        let stage_name = match &unit.source_side {
            SourceSide::File { stage, .. } | SourceSide::Staged { stage, .. } => stage.clone(),
            SourceSide::Direct { .. } => bail!("{}: an also entry is always staged", unit.name),
        };
        let items: Vec<String> = pk.iter().map(|c| pipeline::staged_item(c)).collect();
        let mut insert = format!(
            "INSERT INTO {table} SELECT {} FROM {} AS src",
            items.join(", "),
            quote_ident(&stage_name)
        );
        if let Some(filter) = &unit.map.filter {
            insert.push_str(&format!(" WHERE {}", pipeline::keep_condition(filter)));
        }
        let mut ignored = Tally::new(unit, None);
        let done = match &unit.source_side {
            SourceSide::File { .. } => {
                from_file(unit, client, user_map.clone(), &mut ignored, Some(&insert)).await
            }
            _ => {
                let url = source_url.ok_or_else(|| anyhow!("no source database"))?;
                let source = connect::connect(url, options).await?;
                staged(
                    unit,
                    source,
                    client,
                    user_map.clone(),
                    &mut ignored,
                    Some(&insert),
                )
                .await
            }
        };
        done.with_context(|| format!("{}: the keys it writes, from the source", unit.name))?;
    }
    Ok(())
}

async fn verify_table(plan: &TableCheck, shared: &Shared) -> TableReport {
    let started = Instant::now();
    let mut report = empty_report(&plan.name, &plan.target.name);
    report.method = match plan.source_side {
        SourceSide::Direct { .. } => "rust".into(),
        SourceSide::Staged { .. } => "staged".into(),
        SourceSide::File { .. } => "export file, staged".into(),
    };
    report.compared_after_conversion = plan.converted.clone();
    report.not_compared = plan
        .not_compared
        .iter()
        .map(|c| format!("{c} (generated on import: compare = false in the column mapping)"))
        .collect();
    if let Err(e) = verify_into(plan, shared, &mut report).await {
        report.status = Status::Error;
        report.error = Some(format!("{e:#}"));
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

async fn verify_into(plan: &TableCheck, shared: &Shared, report: &mut TableReport) -> Result<()> {
    // A unit of a shared target table is compared row by row even then: a count of the
    // whole table would include the other units' rows.
    if shared.skip_checksum && plan.keys.is_none() {
        let t = count(&shared.target_url, &shared.options, &plan.target).await?;
        let s = match (&plan.source_side, &shared.source_url) {
            (SourceSide::File { rows, .. }, _) => *rows,
            (_, Some(url)) => count(url, &shared.options, &plan.source).await?,
            (_, None) => bail!("no source database"),
        };
        report.source_rows = Some(s);
        report.target_rows = Some(t);
        report.rows_ok = s == t;
        report.status = if s == t { Status::Ok } else { Status::Differs };
        return Ok(());
    }
    let (source, target) = both_sides(plan, shared, None).await?;
    report.left_behind = source.left_behind;
    report.source_rows = Some(source.checksum.rows);
    report.target_rows = Some(target.checksum.rows);
    report.rows_ok = source.checksum.rows == target.checksum.rows;
    report.source_checksum = Some(RecordedChecksum::from(&source.checksum));
    report.target_checksum = Some(RecordedChecksum::from(&target.checksum));
    let equal = source.checksum == target.checksum;
    report.checksum_ok = Some(equal);
    if equal {
        report.status = Status::Ok;
        return Ok(());
    }
    report.status = Status::Differs;
    let differing: BTreeSet<usize> = (0..BUCKETS)
        .filter(|&b| source.buckets[b] != target.buckets[b])
        .collect();
    report.differing_buckets = differing.len();
    report.bucket_rows = differing
        .iter()
        .map(|&b| BucketRows {
            bucket: b,
            source_rows: source.buckets[b].rows,
            target_rows: target.buckets[b].rows,
        })
        .collect();
    // Second pass: only the rows of the differing buckets.
    let (source, target) = both_sides(plan, shared, Some(Arc::new(differing))).await?;
    let (differences, truncated) = compare_rows(plan, &source, &target, shared.max_diffs);
    report.differences = differences;
    report.differences_truncated = truncated || source.collect_overflow || target.collect_overflow;
    Ok(())
}

async fn count(url: &DbUrl, options: &ConnectOptions, table: &QualifiedName) -> Result<u64> {
    let client = connect::connect(url, options).await?;
    Ok(catalog::row_count(&client, table).await? as u64)
}

/// One side's rows reduced: the checksum, the bucket checksums, and in the locating pass the
/// rows of the selected buckets.
struct Tally {
    kinds: Vec<ColumnKind>,
    pk: Vec<usize>,
    hasher: RowHasher,
    checksum: Checksum,
    buckets: Vec<Checksum>,
    collect: Option<Arc<BTreeSet<usize>>>,
    /// Key (PK text, or the row hash without a PK) -> (count, row hash, values).
    rows: HashMap<String, (u64, [u8; 32], Vec<String>)>,
    collect_overflow: bool,
    /// User-id rewriting in Rust (Direct source side only).
    user_ids: Vec<usize>,
    user_map: Option<Arc<IdMap>>,
    values: Vec<Vec<u8>>,
    /// Source rows staged but not selected (the table's `where`) or not staged (`skip_row`).
    left_behind: u64,
}

impl Tally {
    fn new(plan: &TableCheck, collect: Option<Arc<BTreeSet<usize>>>) -> Tally {
        let columns: Vec<(String, ColumnKind)> = plan
            .names
            .iter()
            .cloned()
            .zip(plan.kinds.iter().cloned())
            .collect();
        Tally {
            kinds: plan.kinds.clone(),
            pk: plan.pk.clone(),
            hasher: RowHasher::new(&columns),
            checksum: Checksum::default(),
            buckets: vec![Checksum::default(); BUCKETS],
            collect,
            rows: HashMap::new(),
            collect_overflow: false,
            user_ids: Vec::new(),
            user_map: None,
            values: vec![Vec::new(); plan.names.len()],
            left_behind: 0,
        }
    }

    /// One binary COPY row (NULL = None).
    fn add(&mut self, fields: &[Option<&[u8]>]) -> Result<()> {
        if fields.len() != self.kinds.len() {
            // `SELECT 1` stands in for a table without written columns.
            if !self.kinds.is_empty() {
                bail!("{} fields, expected {}", fields.len(), self.kinds.len());
            }
        }
        for (i, kind) in self.kinds.iter().enumerate() {
            self.values[i].clear();
            codec::write_json_value(&mut self.values[i], kind, fields[i])
                .map_err(|e| anyhow!("column {i}: {e}"))?;
        }
        if let Some(map) = &self.user_map {
            for &i in &self.user_ids {
                let text = &self.values[i];
                if text.as_slice() == b"null" {
                    continue;
                }
                let old: String = serde_json::from_slice(text).unwrap_or_default();
                let new = match map.rewrite(&old) {
                    Some(new) => serde_json::to_vec(&new)?,
                    None => b"null".to_vec(),
                };
                self.values[i] = new;
            }
        }
        let refs: Vec<&[u8]> = self.values.iter().map(|v| v.as_slice()).collect();
        let hash = self.hasher.hash_row(&refs);
        let bucket = if self.pk.is_empty() {
            hash[31] as usize
        } else {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for &i in &self.pk {
                for b in refs[i].iter().chain(b"\x00") {
                    h = (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
                }
            }
            (h % BUCKETS as u64) as usize
        };
        self.checksum.add_row(&hash);
        self.buckets[bucket].add_row(&hash);
        if let Some(set) = &self.collect
            && set.contains(&bucket)
        {
            let key = if self.pk.is_empty() {
                files::hex(&hash)
            } else {
                self.pk
                    .iter()
                    .map(|&i| String::from_utf8_lossy(refs[i]).into_owned())
                    .collect::<Vec<_>>()
                    .join(",")
            };
            if let Some(entry) = self.rows.get_mut(&key) {
                entry.0 += 1;
            } else if self.rows.len() < COLLECT_LIMIT {
                let values = refs
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect();
                self.rows.insert(key, (1, hash, values));
            } else {
                self.collect_overflow = true;
            }
        }
        Ok(())
    }
}

/// Streams both sides at the same time, each on its own task and connection.
async fn both_sides(
    plan: &TableCheck,
    shared: &Shared,
    collect: Option<Arc<BTreeSet<usize>>>,
) -> Result<(Tally, Tally)> {
    let target_task = {
        let plan = plan.clone();
        let url = shared.target_url.clone();
        let options = shared.options.clone();
        let collect = collect.clone();
        let source_url = shared.source_url.clone();
        let user_map = shared.user_map.clone();
        tokio::spawn(async move {
            let client = connect::connect(&url, &options).await?;
            if let Some(filter) = &plan.keys {
                stage_keys(&client, filter, source_url.as_ref(), &options, &user_map).await?;
            }
            let mut tally = Tally::new(&plan, collect);
            copy_binary(&client, &plan.target_copy, &mut tally)
                .await
                .with_context(|| format!("reading {} from the target", plan.target.name))?;
            Ok::<Tally, anyhow::Error>(tally)
        })
    };
    let source_task = {
        let plan = plan.clone();
        let source_url = shared.source_url.clone();
        let target_url = shared.target_url.clone();
        let options = shared.options.clone();
        let user_map = shared.user_map.clone();
        tokio::spawn(async move {
            let mut tally = Tally::new(&plan, collect);
            if let SourceSide::File { .. } = &plan.source_side {
                let stage = connect::connect(&target_url, &options).await?;
                from_file(&plan, &stage, user_map, &mut tally, None)
                    .await
                    .with_context(|| {
                        format!("{}: the export file through the staging table", plan.name)
                    })?;
                return Ok::<Tally, anyhow::Error>(tally);
            }
            let source_url = source_url.ok_or_else(|| anyhow!("no source database"))?;
            let source = connect::connect(&source_url, &options).await?;
            match &plan.source_side {
                SourceSide::File { .. } => unreachable!("handled above"),
                SourceSide::Direct { copy, user_ids } => {
                    tally.user_ids = user_ids.clone();
                    tally.user_map = Some(user_map);
                    copy_binary(&source, copy, &mut tally)
                        .await
                        .with_context(|| format!("reading {} from the source", plan.name))?;
                }
                SourceSide::Staged { .. } => {
                    let stage = connect::connect(&target_url, &options).await?;
                    staged(&plan, source, &stage, user_map, &mut tally, None)
                        .await
                        .with_context(|| {
                            format!("{}: the source through the staging table", plan.name)
                        })?;
                }
            }
            Ok::<Tally, anyhow::Error>(tally)
        })
    };
    let (source, target) = tokio::join!(source_task, target_task);
    Ok((
        source.context("the source reader panicked")??,
        target.context("the target reader panicked")??,
    ))
}

async fn copy_binary(client: &Client, sql: &str, tally: &mut Tally) -> Result<()> {
    let stream = client
        .copy_out(sql)
        .await
        .map_err(|e| anyhow!("{}", crate::connect::server_message(&e)))?;
    pin_mut!(stream);
    let mut parser = CopyBinaryParser::with_expected_fields(tally.kinds.len().max(1));
    while let Some(chunk) = stream.try_next().await? {
        parser.feed(&chunk, |fields: &[Option<&[u8]>]| tally.add(fields))?;
    }
    parser.finish()?;
    Ok(())
}

/// The source's rows as COPY text, user ids rewritten, staged on the target in batches and
/// read back through the mapping's select list. A reader task fills the next batch while the
/// current one is staged, so the source and the staging connection work at the same time.
async fn staged(
    plan: &TableCheck,
    source: Client,
    stage: &Client,
    user_map: Arc<IdMap>,
    tally: &mut Tally,
    keys_into: Option<&str>,
) -> Result<()> {
    let SourceSide::Staged {
        copy,
        create,
        stage: stage_name,
        select,
    } = &plan.source_side
    else {
        unreachable!("staged() is only called for staged tables")
    };
    stage.batch_execute(create).await?;
    let stage_copy = format!("COPY {} FROM STDIN", quote_ident(stage_name));
    let truncate = format!("TRUNCATE {}", quote_ident(stage_name));
    let skipped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (mut receiver, reader) = {
        let rewrite = pipeline::UserIds {
            ids: user_map.ids.clone(),
            columns: plan.user_ids.clone(),
            untouched: Vec::new(),
        };
        let shape = counted_shape(rewrite, plan.lookups.clone(), skipped.clone());
        pipeline::db_lines(source, copy.clone(), shape, STAGE_BATCH_ROWS)
    };
    let mut failure = None;
    while let Some(mut batch) = receiver.recv().await {
        let read_back = keys_into.map_or(ReadBack::Copy(select), ReadBack::InsertKeys);
        if let Err(e) =
            flush_stage(stage, &stage_copy, read_back, &truncate, &mut batch, tally).await
        {
            failure = Some(e);
            break;
        }
    }
    drop(receiver);
    let read = reader.await.context("the source reader panicked")?;
    if let Some(e) = failure {
        return Err(e);
    }
    tally.left_behind += skipped.load(Ordering::Relaxed);
    read
}

/// The staging side of --against export: the export's columns, typed as in the source.
fn file_side(plan: &TableCheck, entry: &FileEntry, dir: &Path) -> Result<SourceSide> {
    let stage = format!("fmig_verify_{}", plan.name);
    let defs = pipeline::staging_columns(&pipeline::entry_columns(entry), &plan.map);
    if let Some(c) = entry.columns.iter().find(|c| c.kind().is_none()) {
        bail!(
            "metadata.json: {}.{} has an unknown kind {:?}",
            plan.name,
            c.name,
            c.json
        );
    }
    let select = staged_select(&plan.map, &plan.casts, &stage);
    Ok(SourceSide::File {
        path: dir.join(&entry.file),
        entry: Box::new(entry.clone()),
        rows: entry.rows,
        create: format!(
            "CREATE TEMP TABLE IF NOT EXISTS {} ({})",
            quote_ident(&stage),
            defs.join(", ")
        ),
        stage,
        select,
    })
}

/// --against export: the file read on a blocking thread into COPY text batches (import's own
/// encoding), each staged and read back.
async fn from_file(
    plan: &TableCheck,
    stage: &Client,
    user_map: Arc<IdMap>,
    tally: &mut Tally,
    keys_into: Option<&str>,
) -> Result<()> {
    let SourceSide::File {
        path,
        entry,
        create,
        stage: stage_name,
        select,
        ..
    } = &plan.source_side
    else {
        unreachable!("from_file() is only called for export files")
    };
    stage.batch_execute(create).await?;
    // The staging table has the file's columns in the file's order, then the lookups'.
    let stage_copy = format!("COPY {} FROM STDIN", quote_ident(stage_name));
    let truncate = format!("TRUNCATE {}", quote_ident(stage_name));
    let skipped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (mut receiver, reader) = {
        let rewrite = pipeline::UserIds {
            ids: user_map.ids.clone(),
            columns: plan.user_ids_in(entry),
            untouched: Vec::new(),
        };
        let shape = counted_shape(rewrite, plan.lookups.clone(), skipped.clone());
        pipeline::file_lines(path.clone(), (**entry).clone(), shape, STAGE_BATCH_ROWS)
    };
    let mut failure = None;
    while let Some(mut batch) = receiver.recv().await {
        let read_back = keys_into.map_or(ReadBack::Copy(select), ReadBack::InsertKeys);
        if let Err(e) =
            flush_stage(stage, &stage_copy, read_back, &truncate, &mut batch, tally).await
        {
            failure = Some(e);
            break;
        }
    }
    drop(receiver);
    let read = reader.await.context("the file reader panicked")?;
    if let Some(e) = failure {
        return Err(e);
    }
    tally.left_behind += skipped.load(Ordering::Relaxed);
    read
}

/// What import wrote for an old user id: its Stack Auth id; for an id the mapping lacks, NULL
/// (`--unmapped null`) or the old id itself (`--unmapped keep`).
#[derive(Debug, Default)]
struct IdMap {
    /// Old id (lower-cased) -> Stack Auth id.
    ids: Arc<HashMap<String, String>>,
    keep: bool,
}

impl IdMap {
    fn rewrite(&self, old: &str) -> Option<String> {
        match self.ids.get(&old.to_ascii_lowercase()) {
            Some(new) => Some(new.clone()),
            None if self.keep => Some(old.to_string()),
            None => None,
        }
    }
}

/// [`shape_line`] as a stream's line shaper, counting the rows left behind (`skip_row`).
fn counted_shape(
    rewrite: pipeline::UserIds,
    lookups: pipeline::Lookups,
    skipped: Arc<std::sync::atomic::AtomicU64>,
) -> impl pipeline::LineShaper {
    move |line: &[u8], out: &mut Vec<u8>| {
        let kept = shape_line(line, &rewrite, &lookups, out);
        if !kept {
            skipped.fetch_add(1, Ordering::Relaxed);
        }
        kept
    }
}

/// One source row as import stages it: the lookups' values appended (found by the source's
/// ids), user ids rewritten under their policies. False when the row stays behind
/// (`skip_row`).
fn shape_line(
    line: &[u8],
    rewrite: &pipeline::UserIds,
    lookups: &pipeline::Lookups,
    out: &mut Vec<u8>,
) -> bool {
    if lookups.is_empty() {
        return rewrite.rewrite_line(line, out) == pipeline::Rewritten::Kept;
    }
    // Lookups read the source's own ids (as the looked-up rows are keyed), so they go first;
    // the fields they append lie beyond the user-id columns the rewrite touches.
    let mut shaped = line.to_vec();
    lookups.append(&mut shaped);
    let body = shaped.strip_suffix(b"\n").unwrap_or(&shaped);
    rewrite.rewrite_line(body, out) == pipeline::Rewritten::Kept
}

impl TableCheck {
    /// [`TableCheck::user_ids`] for the columns of an export file (its order may differ from the
    /// source catalog's).
    fn user_ids_in(&self, entry: &FileEntry) -> Vec<(usize, Unmapped)> {
        entry
            .columns
            .iter()
            .enumerate()
            .filter(|(_, c)| self.map.user_id_columns.contains(&c.name))
            .map(|(i, c)| (i, self.map.policy(&c.name, self.default_policy)))
            .collect()
    }
}

/// What is done with each staged batch: read back into the tally, or its keys inserted into
/// a key table ([`stage_keys`]).
#[derive(Clone, Copy)]
enum ReadBack<'a> {
    Copy(&'a str),
    InsertKeys(&'a str),
}

async fn flush_stage(
    stage: &Client,
    stage_copy: &str,
    read_back: ReadBack<'_>,
    truncate: &str,
    batch: &mut Vec<u8>,
    tally: &mut Tally,
) -> Result<()> {
    // COPY text escapes newlines inside values: every newline ends a row.
    let staged = batch.iter().filter(|&&b| b == b'\n').count() as u64;
    let before = tally.checksum.rows;
    let sink = stage.copy_in(stage_copy).await?;
    pin_mut!(sink);
    sink.send(Bytes::from(std::mem::take(batch))).await?;
    sink.finish()
        .await
        .map_err(|e| anyhow!("{}", crate::connect::server_message(&e)))?;
    match read_back {
        ReadBack::Copy(select) => copy_binary(stage, select, tally).await?,
        ReadBack::InsertKeys(insert) => stage.batch_execute(insert).await?,
    }
    tally.left_behind += staged.saturating_sub(tally.checksum.rows - before);
    stage.batch_execute(truncate).await?;
    Ok(())
}

/// The rows of the differing buckets, compared key by key.
fn compare_rows(
    plan: &TableCheck,
    source: &Tally,
    target: &Tally,
    max_diffs: usize,
) -> (Vec<Difference>, bool) {
    let mut keys: BTreeSet<&String> = source.rows.keys().collect();
    keys.extend(target.rows.keys());
    let mut out = Vec::new();
    let mut truncated = false;
    for key in keys {
        let difference = match (source.rows.get(key), target.rows.get(key)) {
            (Some((sc, sh, sv)), Some((tc, th, tv))) => {
                if sh != th {
                    let columns = plan
                        .names
                        .iter()
                        .enumerate()
                        .filter(|&(i, _)| {
                            canonical(&plan.kinds[i], &sv[i]) != canonical(&plan.kinds[i], &tv[i])
                        })
                        .map(|(i, name)| ColumnDiff {
                            column: name.clone(),
                            source: shown(name, &sv[i]),
                            target: shown(name, &tv[i]),
                        })
                        .collect();
                    Difference::Changed {
                        key: describe_key(plan, sv),
                        columns,
                    }
                } else if sc != tc {
                    Difference::Duplicated {
                        key: describe_key(plan, sv),
                        source_count: *sc,
                        target_count: *tc,
                    }
                } else {
                    continue;
                }
            }
            (Some((count, _, values)), None) => Difference::Missing {
                key: describe_key(plan, values),
                count: *count,
            },
            (None, Some((count, _, values))) => Difference::Extra {
                key: describe_key(plan, values),
                count: *count,
            },
            (None, None) => continue,
        };
        if out.len() == max_diffs {
            truncated = true;
            break;
        }
        out.push(difference);
    }
    (out, truncated)
}

fn canonical(kind: &ColumnKind, text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    checksum::canonical_value(kind, text.as_bytes(), &mut out);
    out
}

/// `id=...` for a primary key; without one, the row itself (secrets masked).
fn describe_key(plan: &TableCheck, values: &[String]) -> String {
    if plan.pk.is_empty() {
        let row: Vec<String> = plan
            .names
            .iter()
            .zip(values)
            .map(|(n, v)| format!("{n}={}", shown(n, v)))
            .collect();
        format!("row {{{}}}", row.join(", "))
    } else {
        plan.pk
            .iter()
            .map(|&i| format!("{}={}", plan.names[i], unquote(&values[i])))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn unquote(text: &str) -> String {
    serde_json::from_str::<String>(text).unwrap_or_else(|_| text.to_string())
}

/// Columns that hold personal data or secrets: their values are never printed.
fn is_sensitive(column: &str) -> bool {
    let c = column.to_ascii_lowercase();
    [
        "email", "e_mail", "mail", "password", "hash", "token", "secret", "phone", "api_key",
        "apikey",
    ]
    .iter()
    .any(|s| c.contains(s))
}

fn shown(column: &str, text: &str) -> String {
    if is_sensitive(column) && text != "null" {
        format!("<masked, {} chars>", text.len())
    } else {
        text.to_string()
    }
}

/// User-id values unknown to the mapping, and foreign-key orphans, in the target.
async fn referential_checks(
    client: &Client,
    plans: &[TableCheck],
    target: &Discovered,
    user_map: &IdMap,
    reports: &mut [TableReport],
) -> Result<()> {
    let mut problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    // Per user-id column: whether old ids of users without a mapping are kept on purpose
    // (`--unmapped keep`, or the mapping's `unmapped = "keep"` for it).
    let user_columns: Vec<(&TableCheck, String, bool)> = plans
        .iter()
        .flat_map(|p| {
            p.map.user_id_columns.iter().filter_map(move |c| {
                let keep = p.map.policy(c, p.default_policy) == Unmapped::Keep;
                p.map.target_of(c).map(|t| (p, t.name.clone(), keep))
            })
        })
        .collect();
    let any_keep = user_columns.iter().any(|(_, _, keep)| *keep);
    let mut kept: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if !user_columns.is_empty() {
        client
            .batch_execute(
                "CREATE TEMP TABLE IF NOT EXISTS fmig_verify_user_ids (id text PRIMARY KEY); \
                 CREATE TEMP TABLE IF NOT EXISTS fmig_verify_old_ids (id text PRIMARY KEY); \
                 TRUNCATE fmig_verify_user_ids, fmig_verify_old_ids",
            )
            .await?;
        copy_ids(client, "fmig_verify_user_ids", user_map.ids.values()).await?;
        // With --unmapped keep, a value that is no Stack Auth id is either an old id kept on
        // purpose (its user has no mapping) or an old id that import should have rewritten.
        if any_keep {
            copy_ids(client, "fmig_verify_old_ids", user_map.ids.keys()).await?;
        }
        for (plan, column, keep) in user_columns {
            let c = quote_ident(&column);
            let sql = format!(
                "SELECT count(*) FILTER (WHERE o.id IS NOT NULL), \
                        (array_agg(DISTINCT t.{c}::text) FILTER (WHERE o.id IS NOT NULL))[1:5], \
                        count(*) FILTER (WHERE o.id IS NULL), \
                        count(DISTINCT t.{c}) FILTER (WHERE o.id IS NULL), \
                        (array_agg(DISTINCT t.{c}::text) FILTER (WHERE o.id IS NULL))[1:2] \
                 FROM {} t LEFT JOIN fmig_verify_old_ids o ON o.id = lower(t.{c}::text) \
                 WHERE t.{c} IS NOT NULL AND NOT EXISTS \
                 (SELECT 1 FROM fmig_verify_user_ids u WHERE u.id = lower(t.{c}::text))",
                plan.target.quoted()
            );
            let row = client.query_one(sql.as_str(), &[]).await?;
            let (mapped, mapped_samples): (i64, Option<Vec<String>>) = (row.get(0), row.get(1));
            let (unmapped, unmapped_users, unmapped_samples): (i64, i64, Option<Vec<String>>) =
                (row.get(2), row.get(3), row.get(4));
            let samples = |s: Option<Vec<String>>| s.unwrap_or_default().join(", ");
            if keep {
                if mapped > 0 {
                    problems.entry(plan.name.clone()).or_default().push(format!(
                        "{}.{column}: {mapped} row(s) hold the old id of a user who has a Stack Auth id (not rewritten), e.g. {}",
                        plan.target.name,
                        samples(mapped_samples)
                    ));
                }
                if unmapped > 0 {
                    kept.entry(plan.name.clone()).or_default().push(format!(
                        "{}.{column}: {unmapped} row(s) keep {unmapped_users} old user id(s) that have no Stack Auth account, e.g. {}, ...",
                        plan.target.name,
                        samples(unmapped_samples)
                    ));
                }
            } else if mapped + unmapped > 0 {
                let mut all = mapped_samples.unwrap_or_default();
                all.extend(unmapped_samples.unwrap_or_default());
                all.truncate(5);
                problems.entry(plan.name.clone()).or_default().push(format!(
                    "{}.{column}: {} row(s) hold a user id that is not a Stack Auth id of the mapping, e.g. {}",
                    plan.target.name,
                    mapped + unmapped,
                    all.join(", ")
                ));
            }
        }
    }
    for (table, problem) in orphans(client, plans, target).await? {
        problems.entry(table).or_default().push(problem);
    }
    // Every constraint and index as the first import found it (it set some aside).
    let mut seen = BTreeSet::new();
    for plan in plans.iter().filter(|p| seen.insert(p.target.quoted())) {
        for change in
            crate::commands::import::deferred::schema_changes(client, &plan.target).await?
        {
            problems.entry(plan.name.clone()).or_default().push(change);
        }
    }
    for report in reports.iter_mut() {
        report.kept_old_ids = kept.remove(&report.table).unwrap_or_default();
        if let Some(list) = problems.remove(&report.table) {
            report.referential = list;
            if report.status == Status::Ok {
                report.status = Status::Differs;
            }
        }
    }
    Ok(())
}

/// Loads lower-cased ids into one of the referential checks' temporary tables.
async fn copy_ids<'a>(
    client: &Client,
    table: &str,
    ids: impl Iterator<Item = &'a String>,
) -> Result<()> {
    let ids: HashSet<String> = ids.map(|v| v.to_ascii_lowercase()).collect();
    let mut data = Vec::new();
    for id in ids {
        data.extend_from_slice(id.replace(['\\', '\t', '\n'], "").as_bytes());
        data.push(b'\n');
    }
    let sink = client
        .copy_in(format!("COPY {table} FROM STDIN").as_str())
        .await?;
    pin_mut!(sink);
    sink.send(Bytes::from(data)).await?;
    sink.finish().await?;
    Ok(())
}

/// Every foreign key of the verified tables checked for orphans (the query of import's
/// `--disable-fk` check; a foreign key can be violated when it was loaded with triggers off).
async fn orphans(
    client: &Client,
    plans: &[TableCheck],
    target: &Discovered,
) -> Result<Vec<(String, String)>> {
    let by_target: HashMap<&str, &str> = plans
        .iter()
        .map(|p| (p.target.name.as_str(), p.name.as_str()))
        .collect();
    let mut problems = Vec::new();
    for fk in &target.foreign_keys {
        let Some(table) = by_target.get(fk.table.as_str()) else {
            continue;
        };
        if let Some(found) = catalog::orphans(client, fk).await? {
            problems.push((
                table.to_string(),
                format!(
                    "foreign key {} ({}.{} -> {}): {found}",
                    fk.constraint,
                    fk.table,
                    fk.columns.join(","),
                    fk.references,
                ),
            ));
        }
    }
    Ok(problems)
}

fn status_text(status: Status) -> &'static str {
    match status {
        Status::Ok => "ok",
        Status::Differs => "DIFFERS",
        Status::Error => "ERROR",
        Status::Skipped => "skipped",
    }
}

fn yes_no(ok: Option<bool>) -> String {
    match ok {
        Some(true) => "yes".into(),
        Some(false) => "NO".into(),
        None => "-".into(),
    }
}

fn rows_text(n: Option<u64>) -> String {
    n.map_or_else(|| "-".into(), |n| thousands(n as i64))
}

/// The console table, then each table's differences.
fn render(report: &VerifyReport, max_diffs: usize) -> String {
    let mut table = TextTable::new(&[
        ("table", Align::Left),
        ("source rows", Align::Right),
        ("target rows", Align::Right),
        ("rows ok", Align::Left),
        ("checksum ok", Align::Left),
        ("status", Align::Left),
        ("seconds", Align::Right),
    ]);
    for r in &report.tables {
        table.row(vec![
            r.table.clone(),
            rows_text(r.source_rows),
            rows_text(r.target_rows),
            yes_no(r.source_rows.map(|_| r.rows_ok)),
            yes_no(r.checksum_ok),
            status_text(r.status).to_string(),
            format!("{:.2}", r.seconds),
        ]);
    }
    let mut out = if report.tables.is_empty() {
        String::new()
    } else {
        table.render()
    };
    for r in report.tables.iter().filter(|r| r.status != Status::Ok) {
        out.push_str(&format!("\n{} ({}):\n", r.table, status_text(r.status)));
        for line in detail_lines(r) {
            out.push_str(&format!("  {line}\n"));
        }
    }
    let kept: Vec<&String> = report.tables.iter().flat_map(|r| &r.kept_old_ids).collect();
    if !kept.is_empty() {
        out.push_str(
            "\nKept on purpose (--unmapped keep; each value is the source's own, as the checksums show):\n",
        );
        for line in kept {
            out.push_str(&format!("  {line}\n"));
        }
    }
    let not_compared: Vec<String> = report
        .tables
        .iter()
        .flat_map(|r| {
            r.not_compared
                .iter()
                .map(move |c| format!("{}.{c}", r.target_table))
        })
        .collect();
    let left: Vec<String> = report
        .tables
        .iter()
        .filter(|r| r.left_behind > 0)
        .map(|r| format!("{}: {} row(s)", r.table, thousands(r.left_behind as i64)))
        .collect();
    if !left.is_empty() {
        out.push_str(
            "\nLeft behind on purpose (the mapping's where and skip_row): expected absent from \
             the target\n",
        );
        for line in left {
            out.push_str(&format!("  {line}\n"));
        }
    }
    if !not_compared.is_empty() {
        out.push_str("\nNot compared:\n");
        for line in not_compared {
            out.push_str(&format!("  {line}\n"));
        }
    }
    if let Some(u) = &report.users {
        out.push_str(&users::render(u, max_diffs));
    }
    if !report.sign_in.is_empty() {
        let mut accounts = TextTable::new(&[
            ("account", Align::Left),
            ("sign-in", Align::Left),
            ("code", Align::Left),
        ]);
        for s in &report.sign_in {
            accounts.row(vec![
                s.email.clone(),
                s.outcome.clone(),
                s.code.clone().unwrap_or_default(),
            ]);
        }
        let failed = report.sign_in.iter().filter(|s| !s.ok).count();
        out.push_str(&format!(
            "\nSign-in with real accounts (Stack Auth client password sign-in):\n\n{}{} of {} \
             accounts signed in{}.\n",
            accounts.render(),
            report.sign_in.len() - failed,
            report.sign_in.len(),
            if failed > 0 {
                format!("; {failed} refused")
            } else {
                String::new()
            }
        ));
    }
    if report.tables.is_empty() {
        return out;
    }
    let bad = report
        .tables
        .iter()
        .filter(|r| r.status != Status::Ok)
        .count();
    out.push_str(&if bad == 0 {
        format!(
            "\n{} tables verified: target equals source. {:.1}s\n",
            report.tables.len(),
            report.seconds
        )
    } else {
        format!(
            "\n{bad} of {} tables differ or could not be verified. {:.1}s\n",
            report.tables.len(),
            report.seconds
        )
    });
    out
}

fn detail_lines(r: &TableReport) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(e) = &r.error {
        lines.push(format!("error: {e}"));
    }
    if !r.rows_ok && r.source_rows.is_some() {
        lines.push(format!(
            "row count: source {}, target {}",
            rows_text(r.source_rows),
            rows_text(r.target_rows)
        ));
    }
    if r.checksum_ok == Some(false) {
        lines.push(format!(
            "checksum: source {}, target {} ({} of {BUCKETS} buckets differ)",
            r.source_checksum.as_ref().map_or("-", |c| c.sum.as_str()),
            r.target_checksum.as_ref().map_or("-", |c| c.sum.as_str()),
            r.differing_buckets
        ));
        if !r.compared_after_conversion.is_empty() {
            lines.push(format!(
                "compared after conversion: {}",
                r.compared_after_conversion.join(", ")
            ));
        }
    }
    for d in &r.differences {
        lines.push(match d {
            Difference::Missing { key, count } => {
                format!("missing in target: {key}{}", times(*count))
            }
            Difference::Extra { key, count } => {
                format!("extra in target: {key}{}", times(*count))
            }
            Difference::Changed { key, columns } => format!(
                "changed: {key}: {}",
                columns
                    .iter()
                    .map(|c| format!("{} source {} target {}", c.column, c.source, c.target))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            Difference::Duplicated {
                key,
                source_count,
                target_count,
            } => format!(
                "duplicated: {key}: {source_count} time(s) in source, {target_count} in target"
            ),
        });
    }
    if r.differences_truncated {
        lines.push("more differences not listed (raise --max-diffs)".into());
    }
    lines.extend(r.referential.iter().cloned());
    lines
}

fn times(count: u64) -> String {
    if count > 1 {
        format!(" ({count} times)")
    } else {
        String::new()
    }
}

fn log_report(report: &VerifyReport) {
    for r in &report.tables {
        let source = r
            .source_checksum
            .as_ref()
            .map(|c| c.sum.clone())
            .unwrap_or_default();
        let target = r
            .target_checksum
            .as_ref()
            .map(|c| c.sum.clone())
            .unwrap_or_default();
        if r.status == Status::Ok {
            info!(target: "fmig::report", table = %r.table, source_rows = r.source_rows, target_rows = r.target_rows, source_checksum = %source, target_checksum = %target, seconds = r.seconds, status = status_text(r.status), "verified");
        } else {
            error!(target: "fmig::report", table = %r.table, source_rows = r.source_rows, target_rows = r.target_rows, source_checksum = %source, target_checksum = %target, seconds = r.seconds, status = status_text(r.status), "verification failed");
            for line in detail_lines(r) {
                error!(target: "fmig::report", table = %r.table, "{line}");
            }
        }
    }
    if let Some(u) = &report.users {
        users::log(u);
    }
    for s in &report.sign_in {
        if s.ok {
            info!(target: "fmig::report", account = %s.email, outcome = %s.outcome, "sign-in");
        } else {
            error!(target: "fmig::report", account = %s.email, outcome = %s.outcome, code = s.code.as_deref().unwrap_or(""), "sign-in refused");
        }
    }
    info!(target: "fmig::report", tables = report.tables.len(), ok = report.ok, seconds = report.seconds, "verify summary");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shaped_lines_rewrite_user_ids_and_drop_rows_left_behind() {
        let ids = Arc::new(HashMap::from([("aa".to_string(), "new-a".to_string())]));
        let rewrite = pipeline::UserIds {
            ids: ids.clone(),
            columns: vec![(1, Unmapped::Null)],
            untouched: Vec::new(),
        };
        let none = pipeline::Lookups::default();
        let mut out = Vec::new();
        assert!(shape_line(b"1\tAA\tx", &rewrite, &none, &mut out));
        assert!(shape_line(b"2\tbb\tx", &rewrite, &none, &mut out));
        assert!(shape_line(b"3\t\\N\tx", &rewrite, &none, &mut out));
        assert_eq!(out, b"1\tnew-a\tx\n2\t\\N\tx\n3\t\\N\tx\n");
        // skip_row: the row is not expected in the target at all, and nothing is written.
        let skip = pipeline::UserIds {
            ids,
            columns: vec![(1, Unmapped::SkipRow)],
            untouched: Vec::new(),
        };
        out.clear();
        assert!(!shape_line(b"2\tbb\tx", &skip, &none, &mut out));
        assert!(out.is_empty());
    }

    fn plan(pk: Vec<usize>) -> TableCheck {
        TableCheck {
            name: "t".into(),
            target: QualifiedName::new("public", "t"),
            source: QualifiedName::new("public", "t"),
            map: TableMap {
                unit: "t".into(),
                also: false,
                source_table: "t".into(),
                target_table: "t".into(),
                skip: false,
                columns: Vec::new(),
                unwritten: Vec::new(),
                dropped: Vec::new(),
                used_by_expressions: Vec::new(),
                unmapped: Vec::new(),
                user_id_columns: Vec::new(),
                filter: None,
                lookups: Vec::new(),
                user_id_policies: Default::default(),
                not_compared: Vec::new(),
            },
            names: vec!["id".into(), "v".into(), "email".into()],
            kinds: vec![ColumnKind::Int4, ColumnKind::Numeric, ColumnKind::Text],
            casts: vec![Cast::None; 3],
            target_copy: String::new(),
            source_side: SourceSide::Direct {
                copy: String::new(),
                user_ids: Vec::new(),
            },
            pk,
            converted: Vec::new(),
            not_compared: Vec::new(),
            user_ids: Vec::new(),
            default_policy: Unmapped::Null,
            lookups: pipeline::Lookups::default(),
            target_select: Vec::new(),
            keys: None,
            selected: true,
        }
    }

    fn tally(plan: &TableCheck, rows: &[[&str; 3]]) -> Tally {
        let mut t = Tally::new(plan, Some(Arc::new((0..BUCKETS).collect())));
        for row in rows {
            let fields: Vec<Option<Vec<u8>>> = row
                .iter()
                .zip(&plan.kinds)
                .map(|(v, k)| match (v, k) {
                    (&"NULL", _) => None,
                    (v, ColumnKind::Int4) => Some(v.parse::<i32>().unwrap().to_be_bytes().to_vec()),
                    (v, ColumnKind::Numeric) => Some(numeric_binary(v)),
                    (v, _) => Some(v.as_bytes().to_vec()),
                })
                .collect();
            let refs: Vec<Option<&[u8]>> = fields.iter().map(|f| f.as_deref()).collect();
            t.add(&refs).unwrap();
        }
        t
    }

    /// Binary numeric for small non-negative values with up to 4 decimals (one base-10000
    /// digit each side of the point), enough for these tests.
    fn numeric_binary(text: &str) -> Vec<u8> {
        let (int, frac) = text.split_once('.').unwrap_or((text, ""));
        let dscale = frac.len() as i16;
        let frac_digit: i16 = format!("{frac:0<4}").parse().unwrap();
        let int_digit: i16 = int.parse().unwrap();
        let mut out = Vec::new();
        for v in [2i16, 0, 0, dscale, int_digit, frac_digit] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out
    }

    #[test]
    fn equal_values_in_other_formats_compare_equal_and_differences_are_named() {
        let p = plan(vec![0]);
        let source = tally(
            &p,
            &[
                ["1", "4.20", "a@b.c"],
                ["2", "1.5", "NULL"],
                ["3", "2", "x"],
            ],
        );
        let target = tally(
            &p,
            &[["1", "4.2", "a@b.c"], ["2", "1.5", ""], ["4", "2", "x"]],
        );
        let (diffs, truncated) = compare_rows(&p, &source, &target, 20);
        assert!(!truncated);
        let text = serde_json::to_string(&diffs).unwrap();
        assert_eq!(diffs.len(), 3, "{text}");
        assert!(text.contains(r#""kind":"changed","key":"id=2""#), "{text}");
        assert!(
            text.contains(r#""column":"email","source":"null","target":"<masked, 2 chars>""#),
            "{text}"
        );
        assert!(text.contains(r#""kind":"missing","key":"id=3""#), "{text}");
        assert!(text.contains(r#""kind":"extra","key":"id=4""#), "{text}");
        let (diffs, truncated) = compare_rows(&p, &source, &target, 1);
        assert!(truncated && diffs.len() == 1);
    }

    #[test]
    fn without_a_primary_key_duplicates_are_counted() {
        let p = plan(Vec::new());
        let source = tally(&p, &[["1", "1", "x"], ["1", "1", "x"]]);
        let target = tally(&p, &[["1", "1", "x"], ["1", "1", "x"], ["1", "1", "x"]]);
        let (diffs, _) = compare_rows(&p, &source, &target, 20);
        let text = serde_json::to_string(&diffs).unwrap();
        assert!(
            text.contains(r#""source_count":2,"target_count":3"#),
            "{text}"
        );
    }

    #[test]
    fn secrets_are_masked() {
        assert!(is_sensitive("contact_email"));
        assert!(is_sensitive("api_token"));
        assert!(!is_sensitive("temperature"));
        assert_eq!(shown("email", "\"a@b.c\""), "<masked, 7 chars>");
        assert_eq!(shown("email", "null"), "null");
    }
}
