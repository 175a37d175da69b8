//! `fmig export --dry-run`: what an export would move, before anything moves.
//!
//! Reads the source's catalog, exact row counts, sizes and the `auth.users` population inside
//! one read-only REPEATABLE READ transaction, so every number comes from the same snapshot, and
//! prints the tables in the import order computed from the source's foreign keys, with every
//! disagreement between the built-in manifest and the catalog.

use std::collections::BTreeSet;

use anyhow::{Context, Result};
use serde::Serialize;
use tokio_postgres::IsolationLevel;
use tracing::{error, info, warn};

use crate::Outcome;
use crate::catalog::{self, Discovered};
use crate::cli::ExportArgs;
use crate::column_map::ColumnMap;
use crate::connect;
use crate::ident::QualifiedName;
use crate::manifest::{self, APP_SCHEMA, Drift, Severity, TableSpec};
use crate::progress;
use crate::report::{Align, TextTable, size, thousands};
use crate::supabase::{self, AuthUserStats};

/// Everything the dry run found; printed as a table or, with `--json`, as JSON.
#[derive(Debug, Serialize)]
pub struct DryRunReport {
    pub source: String,
    pub server_version: String,
    pub tables: Vec<TableLine>,
    pub total_rows: i64,
    pub total_size_bytes: i64,
    /// `None` with `--skip-auth` or when the source has no `auth.users`.
    pub auth_users: Option<AuthUserStats>,
    /// uuid columns without a foreign key whose values are `auth.users` ids (some or all), and
    /// whether the import rewrites them (the mapping's user_id_columns and drop considered).
    pub user_ids_by_value: Vec<ByValue>,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Serialize)]
pub struct ByValue {
    pub table: String,
    pub column: String,
    pub matching: i64,
    pub non_null: i64,
    /// `rewritten`, `dropped` (by the mapping), or `not mapped` (plan blocks on it).
    pub treatment: &'static str,
}

#[derive(Debug, Serialize)]
pub struct TableLine {
    /// Level computed from the source's foreign keys (the hand-written one if the table is
    /// missing).
    pub level: usize,
    pub listed_level: usize,
    pub table: String,
    pub present: bool,
    pub rows: Option<i64>,
    pub size_bytes: Option<i64>,
    pub large: bool,
    pub partitioned: bool,
    pub has_primary_key: bool,
    pub user_id_columns: Vec<UserIdColumn>,
}

#[derive(Debug, Serialize)]
pub struct UserIdColumn {
    pub column: String,
    /// Listed in the built-in manifest.
    pub listed: bool,
    /// Has a foreign key to `auth.users(id)`.
    pub foreign_key: bool,
}

#[derive(Debug, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub message: String,
    #[serde(flatten)]
    pub drift: Drift,
}

pub async fn run(args: &ExportArgs) -> Result<Outcome> {
    let url = args.source.url()?;
    if args.tables.iter().all(|t| manifest::is_builtin(t)) {
        manifest::select(manifest::builtin(), &args.tables, args.skip_large)?;
    }
    // Decisions already made in the column mapping settle their findings.
    let column_map = ColumnMap::load(args.mapping_config.as_deref())?;

    let spinner = progress::spinner(&format!("connecting to {}", url.host));
    let mut client = connect::connect(&url, &args.connect.options()).await?;
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .context("could not start a read-only snapshot on the source")?;
    let server_version: String = tx.query_one("SHOW server_version", &[]).await?.get(0);

    spinner.set_message("reading the catalog");
    let found = catalog::discover(&tx, APP_SCHEMA).await?;
    // What export writes: the built-in list and the tables discovered beside it.
    let manifest = manifest::effective(&found);
    let selected = manifest::select(manifest, &args.tables, args.skip_large)?;
    let mut tables = Vec::new();
    for (level, spec) in manifest::import_order(manifest, &found) {
        if !selected.contains(spec.name) || column_map.is_skipped(spec.name) {
            continue;
        }
        spinner.set_message(format!("counting {}", spec.name));
        tables.push(table_line(&tx, level, spec, &found).await?);
    }
    // Audit columns hold user ids without a foreign key: found by their values, as plan does.
    spinner.set_message("looking for user ids by value");
    let present: Vec<&str> = tables
        .iter()
        .filter(|t| t.present)
        .map(|t| t.table.as_str())
        .collect();
    let user_ids_by_value: Vec<ByValue> = catalog::user_ids_by_value(&tx, APP_SCHEMA, &present)
        .await?
        .into_iter()
        .filter(|v| v.matching > 0)
        .map(|v| {
            let spec = manifest::find(manifest, &v.table);
            let rewritten = spec
                .is_some_and(|spec| column_map.user_id_columns(spec, &found).contains(&v.column));
            let dropped = column_map
                .table(&v.table)
                .is_some_and(|t| t.drop.iter().any(|d| d.value == v.column));
            ByValue {
                treatment: if rewritten {
                    "rewritten"
                } else if dropped {
                    "dropped"
                } else {
                    "not mapped"
                },
                table: v.table,
                column: v.column,
                matching: v.matching,
                non_null: v.non_null,
            }
        })
        .collect();
    let auth_users = if args.skip_auth {
        None
    } else {
        spinner.set_message("counting auth.users");
        supabase::auth_user_stats(&tx).await?
    };
    tx.commit().await.context("could not end the snapshot")?;
    spinner.finish_and_clear();

    let filtered = selected.len() < manifest.len();
    let settled = |d: &Drift| match d {
        Drift::TableMissing { table } | Drift::TableNotInManifest { table } => {
            column_map.is_skipped(table)
        }
        Drift::UserIdColumnMissing { table, column } => column_map
            .table(table)
            .is_some_and(|t| t.user_ids_remove.iter().any(|r| r.value == *column)),
        _ => false,
    };
    let findings: Vec<Finding> = manifest::compare(manifest::builtin(), &found)
        .into_iter()
        .filter(|d| !filtered || concerns_selected(d, &selected))
        .filter(|d| !settled(d))
        .map(|drift| Finding {
            severity: drift.severity(),
            message: drift.message(),
            drift,
        })
        .collect();
    let report = DryRunReport {
        source: url.to_string(),
        server_version,
        total_rows: tables.iter().filter_map(|t| t.rows).sum(),
        total_size_bytes: tables.iter().filter_map(|t| t.size_bytes).sum(),
        tables,
        auth_users,
        user_ids_by_value,
        findings,
    };

    record(&report);
    let text = if args.json {
        serde_json::to_string_pretty(&report)?
    } else {
        render(&report, args.skip_auth)
    };
    progress::suspend(|| print!("{text}"));
    if report
        .findings
        .iter()
        .any(|f| f.severity == Severity::Error)
    {
        Ok(Outcome::ProblemsFound)
    } else {
        Ok(Outcome::Success)
    }
}

async fn table_line(
    tx: &tokio_postgres::Transaction<'_>,
    level: usize,
    spec: &TableSpec,
    found: &Discovered,
) -> Result<TableLine> {
    let info = found.tables.get(spec.name);
    let discovered = found.user_id_columns.get(spec.name);
    let user_id_columns = manifest::effective_user_id_columns(spec, found)
        .into_iter()
        .map(|column| UserIdColumn {
            listed: spec.user_id_columns.contains(&column.as_str()),
            foreign_key: discovered.is_some_and(|d| d.contains(&column)),
            column,
        })
        .collect();
    let (rows, size_bytes) = if info.is_some() {
        let name = QualifiedName::new(APP_SCHEMA, spec.name);
        (
            Some(catalog::row_count(tx, &name).await?),
            Some(catalog::total_size(tx, &name).await?),
        )
    } else {
        (None, None)
    };
    Ok(TableLine {
        level,
        listed_level: spec.level,
        table: spec.name.to_string(),
        present: info.is_some(),
        rows,
        size_bytes,
        large: spec.large,
        partitioned: info.is_some_and(|i| i.partitioned),
        has_primary_key: info.is_some_and(|i| i.has_primary_key),
        user_id_columns,
    })
}

fn concerns_selected(drift: &Drift, selected: &BTreeSet<&str>) -> bool {
    let names: Vec<&str> = match drift {
        Drift::TableMissing { table }
        | Drift::TableNotInManifest { table }
        | Drift::LevelDiffers { table, .. }
        | Drift::SelfReference { table, .. }
        | Drift::UserIdColumnNotInManifest { table, .. }
        | Drift::UserIdColumnWithoutForeignKey { table, .. }
        | Drift::UserIdColumnMissing { table, .. } => vec![table],
        Drift::OrderViolation {
            table, references, ..
        } => vec![table, references],
        Drift::Cycle { tables } => tables.iter().map(String::as_str).collect(),
    };
    names.iter().any(|n| selected.contains(n))
}

/// Writes the report to the log file as structured events (the console already shows the
/// printed report, so these go to the file only: see `logging`).
fn record(report: &DryRunReport) {
    for t in &report.tables {
        info!(target: "fmig::report", table = %t.table, level = t.level, rows = t.rows, size_bytes = t.size_bytes, present = t.present, "dry-run table");
    }
    if let Some(u) = &report.auth_users {
        info!(target: "fmig::report", total = u.total, with_bcrypt_password = u.with_bcrypt_password, with_oauth_identity = u.with_oauth_identity, without_email = u.without_email, anonymous = u.anonymous, sso = u.sso, banned = u.banned, soft_deleted = u.soft_deleted, "dry-run auth.users");
    }
    for f in &report.findings {
        match f.severity {
            Severity::Error => error!(target: "fmig::report", "{}", f.message),
            Severity::Warning => warn!(target: "fmig::report", "{}", f.message),
            Severity::Info => info!(target: "fmig::report", "{}", f.message),
        }
    }
    info!(target: "fmig::report", tables = report.tables.len(), rows = report.total_rows, size_bytes = report.total_size_bytes, findings = report.findings.len(), "dry-run summary");
}

fn render(report: &DryRunReport, skip_auth: bool) -> String {
    let mut table = TextTable::new(&[
        ("level", Align::Right),
        ("table", Align::Left),
        ("rows", Align::Right),
        ("size", Align::Right),
        ("large", Align::Left),
        ("user-id columns", Align::Left),
    ]);
    let mut level_differs = false;
    for t in &report.tables {
        let marker = if t.present && t.level != t.listed_level {
            level_differs = true;
            "*"
        } else {
            ""
        };
        let columns: Vec<String> = t
            .user_id_columns
            .iter()
            .map(|c| match (c.listed, c.foreign_key) {
                (true, true) => c.column.clone(),
                (true, false) => format!("{} (no FK)", c.column),
                (false, _) => format!("{} (discovered)", c.column),
            })
            .collect();
        table.row(vec![
            format!("{}{marker}", t.level),
            t.table.clone(),
            t.rows.map_or("MISSING".to_string(), thousands),
            t.size_bytes.map_or(String::new(), size),
            if t.large { "large" } else { "" }.to_string(),
            columns.join(", "),
        ]);
    }

    let mut out = format!(
        "Source: {} (PostgreSQL {}), read in one read-only snapshot\n\n{}",
        report.source,
        report.server_version,
        table.render()
    );
    out.push_str(&format!(
        "{} tables, {} rows, {}\n",
        report.tables.iter().filter(|t| t.present).count(),
        thousands(report.total_rows),
        size(report.total_size_bytes)
    ));
    if level_differs {
        out.push_str("* level computed from foreign keys differs from the hand-written order\n");
    }
    if !report.user_ids_by_value.is_empty() {
        out.push_str(
            "\nUser ids found by value (uuid columns without a foreign key holding auth.users ids):\n",
        );
        for v in &report.user_ids_by_value {
            out.push_str(&format!(
                "  {}.{}: {}/{} values are users; {}\n",
                v.table,
                v.column,
                thousands(v.matching),
                thousands(v.non_null),
                match v.treatment {
                    "rewritten" => "rewritten as a user-id column",
                    "dropped" => "dropped by the mapping",
                    _ =>
                        "not mapped: add it to user_id_columns or drop it (fmig plan blocks on it)",
                }
            ));
        }
    }
    match (&report.auth_users, skip_auth) {
        (_, true) => out.push_str("\nauth.users: skipped (--skip-auth)\n"),
        (None, false) => out.push_str(
            "\nauth.users: not found (is this a Supabase database? users cannot be migrated)\n",
        ),
        (Some(u), false) => out.push_str(&format!(
            "\nauth.users: {} users: {} with a bcrypt password, {} with an OAuth identity, \
             {} without e-mail, {} anonymous, {} SSO, {} banned, {} soft-deleted\n",
            thousands(u.total),
            thousands(u.with_bcrypt_password),
            thousands(u.with_oauth_identity),
            thousands(u.without_email),
            thousands(u.anonymous),
            thousands(u.sso),
            thousands(u.banned),
            thousands(u.soft_deleted),
        )),
    }
    if report.findings.is_empty() {
        out.push_str("\nThe built-in table list agrees with the source's catalog.\n");
    } else {
        out.push_str(&format!("\nFindings ({}):\n", report.findings.len()));
        let mut findings: Vec<&Finding> = report.findings.iter().collect();
        findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        for f in findings {
            let label = match f.severity {
                Severity::Error => "ERROR  ",
                Severity::Warning => "WARNING",
                Severity::Info => "info   ",
            };
            out.push_str(&format!("  {label} {}\n", f.message));
        }
    }
    out
}
