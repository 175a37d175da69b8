//! `fmig plan`: before the window, every difference between the source and target schemas,
//! table by table, classified by what it does to the data, with the column mapping applied.
//!
//! Both databases are only read: the source through its read-only session, the target in a
//! READ ONLY transaction; both in REPEATABLE READ, so the catalogs and the counts come from one
//! snapshot each. Mapping expressions are prepared on the target (parsed and type-checked), never
//! run. Exit 1 while anything is blocking; `--write-template` writes a commented starting
//! mapping with one entry per difference.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio_postgres::{Client, IsolationLevel, Transaction};
use tracing::{error, info, warn};

use crate::Outcome;
use crate::catalog;
use crate::cli::PlanArgs;
use crate::column_map::{self, ColumnMap};
use crate::connect::{self, DbUrl};
use crate::manifest::{self, APP_SCHEMA};
use crate::progress;
use crate::report::{Align, TextTable};
use crate::schema_diff::{self, Catalog, Class, Comparison, Finding};

/// Everything `plan` found; printed as text or, with `--json`, as JSON.
#[derive(Debug, Serialize)]
pub struct PlanReport {
    pub source: String,
    pub source_version: String,
    pub target: String,
    pub target_version: String,
    /// The mapping file applied (`None`: no mapping, or `--write-template`).
    pub mapping: Option<String>,
    #[serde(flatten)]
    pub comparison: Comparison,
    pub summary: Summary,
    /// Where `--write-template` wrote the starting mapping.
    pub template: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub blocking: usize,
    pub lossy: usize,
    pub ok: usize,
}

pub async fn run(args: &PlanArgs) -> Result<Outcome> {
    let source_url = args.source.url()?;
    let target_url = args.target.url()?;
    if let Some(path) = &args.write_template
        && !args.force
        && path.exists()
    {
        bail!(
            "{} already exists: edit it and run fmig plan, or pass --force to overwrite it, or \
             write the template elsewhere (--write-template OTHER.toml)",
            path.display()
        );
    }
    // The template describes every difference, so it is computed without the mapping.
    let map = if args.write_template.is_some() {
        ColumnMap::empty()
    } else {
        ColumnMap::load(args.mapping_config.as_deref())?
    };

    let spinner = progress::spinner(&format!("connecting to {}", source_url.host));
    let options = args.connect.options();
    let mut source_client = connect::connect(&source_url, &options).await?;
    spinner.set_message(format!("connecting to {}", target_url.host));
    let mut target_client = connect::connect(&target_url, &options).await?;
    let source = snapshot(&mut source_client, &source_url).await?;
    let mut target = snapshot(&mut target_client, &target_url).await?;
    let source_version = server_version(&source).await?;
    let target_version = server_version(&target).await?;

    spinner.set_message("reading both catalogs");
    let source_catalog = Catalog::read(&source).await?;
    let target_catalog = Catalog::read(&target).await?;
    // Every source table: the built-in list and the ones discovered beside it.
    let specs = manifest::effective(&source_catalog.found);
    map.validate(specs, &source_catalog.found, &target_catalog.found)?;
    spinner.set_message("checking the mapping's expressions on the target");
    map.check_expressions(
        specs,
        &source_catalog.found,
        &target_catalog.found,
        &mut target,
    )
    .await?;
    // The statements import will run, prepared; a rejected one is blocking (the template is
    // written for a pair no mapping settles yet: nothing to prepare).
    let rejected = if args.write_template.is_none() {
        crate::pipeline::rejected_statements(
            &map,
            specs,
            &source_catalog.found,
            &target_catalog.found,
            &mut target,
        )
        .await?
    } else {
        Vec::new()
    };

    spinner.set_message("looking for user ids in uuid columns");
    let present: Vec<&str> = specs
        .iter()
        .map(|s| s.name)
        .filter(|name| source_catalog.found.tables.contains_key(*name))
        .collect();
    let by_value = catalog::user_ids_by_value(&source, APP_SCHEMA, &present).await?;
    spinner.set_message("comparing and measuring");
    let inputs = schema_diff::Inputs {
        specs,
        map: &map,
        source: &source_catalog,
        target: &target_catalog,
        by_value: &by_value,
        rejected: &rejected.iter().map(|(t, _)| t.clone()).collect(),
    };
    let mut comparison = schema_diff::compare(&inputs, &source, &mut target).await?;
    comparison.add_rejected_statements(rejected);
    source
        .commit()
        .await
        .context("could not end the source snapshot")?;
    target
        .commit()
        .await
        .context("could not end the target snapshot")?;
    spinner.finish_and_clear();

    let mut report = PlanReport {
        source: source_url.to_string(),
        source_version,
        target: target_url.to_string(),
        target_version,
        mapping: map.path().map(|p| p.display().to_string()),
        summary: Summary {
            blocking: comparison.count(Class::Blocking),
            lossy: comparison.count(Class::Lossy),
            ok: comparison.count(Class::Ok),
        },
        comparison,
        template: None,
    };
    if let Some(path) = &args.write_template {
        let text = template_text(&report);
        write_new_file(path, &text, args.force)?;
        report.template = Some(path.display().to_string());
    }

    record(&report);
    let text = if args.json {
        format!("{}\n", serde_json::to_string_pretty(&report)?)
    } else {
        render(&report, args)
    };
    progress::suspend(|| print!("{text}"));
    Ok(if report.summary.blocking > 0 {
        Outcome::ProblemsFound
    } else {
        Outcome::Success
    })
}

async fn snapshot<'a>(client: &'a mut Client, url: &DbUrl) -> Result<Transaction<'a>> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .with_context(|| {
            format!(
                "could not start a read-only snapshot on the {} database",
                url.side
            )
        })
}

async fn server_version(tx: &Transaction<'_>) -> Result<String> {
    Ok(tx.query_one("SHOW server_version", &[]).await?.get(0))
}

fn template_text(report: &PlanReport) -> String {
    let header = format!(
        "fmig column mapping, written by `fmig plan --write-template` at {}\n\
         source: {}\n\
         target: {}\n\
         {} blocking and {} lossy differences when it was written.",
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ"),
        report.source,
        report.target,
        report.summary.blocking,
        report.summary.lossy
    );
    let order: Vec<&str> = report
        .comparison
        .tables
        .iter()
        // An also entry exists only in a mapping someone wrote: the template is a start.
        .filter(|t| t.mapping.as_ref().is_none_or(|m| !m.also))
        .map(|t| t.table.as_str())
        .collect();
    column_map::render_template(&header, &order, &report.comparison.template_notes())
}

/// Writes `text` to `path` atomically (see [`crate::files`]). Without `force` an existing
/// file is never replaced, even one that appeared while fmig was running.
fn write_new_file(path: &Path, text: &str, force: bool) -> Result<()> {
    if force {
        crate::files::write_atomically(path, text.as_bytes())?;
        return Ok(());
    }
    match crate::files::write_new_atomically(path, text.as_bytes()) {
        Ok(_) => Ok(()),
        Err(err)
            if err
                .chain()
                .filter_map(|c| c.downcast_ref::<std::io::Error>())
                .any(|e| e.kind() == std::io::ErrorKind::AlreadyExists) =>
        {
            bail!(
                "{} already exists (it appeared while fmig was running); pass --force to \
                 overwrite it",
                path.display()
            )
        }
        Err(err) => Err(err),
    }
}

/// The findings in the log file (the console shows the printed report).
fn record(report: &PlanReport) {
    for t in &report.comparison.tables {
        for f in &t.findings {
            log_finding(Some(&t.table), f);
        }
    }
    for f in &report.comparison.schema {
        log_finding(None, f);
    }
    let s = &report.summary;
    info!(target: "fmig::report", blocking = s.blocking, lossy = s.lossy, ok = s.ok, mapping = report.mapping.as_deref(), template = report.template.as_deref(), "plan summary");
}

fn log_finding(table: Option<&str>, f: &Finding) {
    let columns = f.columns.join(",");
    let counts = serde_json::to_string(&f.counts).unwrap_or_default();
    let table = table.unwrap_or("");
    match f.class {
        Class::Blocking => {
            error!(target: "fmig::report", table, columns, kind = f.kind, class = "blocking", counts, "{}", f.message)
        }
        Class::Lossy => {
            warn!(target: "fmig::report", table, columns, kind = f.kind, class = "lossy", counts, "{}", f.message)
        }
        Class::Ok => {
            info!(target: "fmig::report", table, columns, kind = f.kind, class = "ok", counts, "{}", f.message)
        }
    }
}

fn render(report: &PlanReport, args: &PlanArgs) -> String {
    let mut out = format!(
        "Source:  {} (PostgreSQL {})\nTarget:  {} (PostgreSQL {})\n",
        report.source, report.source_version, report.target, report.target_version
    );
    let mapping = match (&report.mapping, &args.write_template) {
        (_, Some(_)) => "not applied: --write-template describes every difference".to_string(),
        (Some(path), None) => path.clone(),
        (None, None) => format!(
            "none ({} not found; every column is copied by name)",
            args.mapping_config
                .as_deref()
                .unwrap_or(Path::new(column_map::DEFAULT_PATH))
                .display()
        ),
    };
    out.push_str(&format!(
        "Mapping: {mapping}\nBoth databases were read in read-only snapshots; nothing was \
         written.\n\n"
    ));

    let mut table = TextTable::new(&[
        ("class", Align::Left),
        ("table", Align::Left),
        ("column", Align::Left),
        ("difference", Align::Left),
    ]);
    let mut rows = 0;
    let needing: Vec<(&str, &Finding)> = report
        .comparison
        .tables
        .iter()
        .flat_map(|t| t.findings.iter().map(move |f| (t.table.as_str(), f)))
        .filter(|(_, f)| f.class != Class::Ok)
        .collect();
    for row in grouped_rows(&needing, args.all) {
        table.row(row);
        rows += 1;
    }
    for f in report
        .comparison
        .schema
        .iter()
        .filter(|f| f.class != Class::Ok)
    {
        table.row(finding_row("(schema)", f));
        rows += 1;
    }
    if rows > 0 {
        out.push_str("Needs a decision (blocking) or a look (lossy), in import order:\n\n");
        out.push_str(&table.render());
        out.push('\n');
    }

    let mut ok = TextTable::new(&[
        ("table", Align::Left),
        ("column", Align::Left),
        ("checked, fine", Align::Left),
    ]);
    let mut same = Vec::new();
    let mut fine: BTreeMap<&str, usize> = BTreeMap::new();
    for t in &report.comparison.tables {
        if t.findings.is_empty() {
            same.push(t.table.as_str());
        }
        for f in t.findings.iter().filter(|f| f.class == Class::Ok) {
            *fine.entry(f.kind).or_default() += 1;
            ok.row(vec![
                t.table.clone(),
                f.columns.join(", "),
                f.message.clone(),
            ]);
        }
    }
    for f in report
        .comparison
        .schema
        .iter()
        .filter(|f| f.class == Class::Ok)
    {
        *fine.entry(f.kind).or_default() += 1;
        ok.row(vec!["(schema)".into(), String::new(), f.message.clone()]);
    }
    if args.all {
        out.push_str("Differences that need nothing:\n\n");
        out.push_str(&ok.render());
    } else {
        let kinds: Vec<String> = fine
            .iter()
            .map(|(kind, n)| format!("{n} {}", kind.replace('_', " ")))
            .collect();
        out.push_str(&format!(
            "Differences that need nothing: {} ({}); fmig plan --all lists them.\n",
            fine.values().sum::<usize>(),
            kinds.join(", ")
        ));
    }
    if !same.is_empty() {
        out.push_str(&format!(
            "\nNo difference at all ({} tables): {}\n",
            same.len(),
            same.join(", ")
        ));
    }

    let mut users = TextTable::new(&[
        ("user-id column", Align::Left),
        ("listed", Align::Left),
        ("FK", Align::Left),
        ("by value", Align::Left),
        ("mapping", Align::Left),
        ("rewritten", Align::Left),
    ]);
    let mut rewritten = Vec::new();
    for u in &report.comparison.user_id_columns {
        // By default only the columns that are not rewritten get a line.
        if !args.all && u.rewritten {
            rewritten.push(format!("{}.{}", u.table, u.column));
            continue;
        }
        let yes = |b: bool| if b { "yes" } else { "-" }.to_string();
        users.row(vec![
            format!("{}.{}", u.table, u.column),
            yes(u.listed),
            yes(u.foreign_key),
            u.by_value
                .map(|(m, n)| format!("{m}/{n} are users"))
                .unwrap_or_default(),
            u.mapping.unwrap_or("").to_string(),
            if u.rewritten { "yes" } else { "NO" }.to_string(),
        ]);
    }
    if args.all {
        out.push_str("\nUser-id columns (old auth.users ids, rewritten to Stack Auth ids):\n\n");
        out.push_str(&users.render());
    } else {
        out.push_str(&format!(
            "\nUser-id columns rewritten to Stack Auth ids ({}): {}\n",
            rewritten.len(),
            rewritten.join(", ")
        ));
        if rewritten.len() < report.comparison.user_id_columns.len() {
            out.push_str("Not rewritten:\n\n");
            out.push_str(&users.render());
        }
    }

    let s = &report.summary;
    out.push_str(&format!(
        "\n{} blocking, {} lossy, {} ok.\n",
        s.blocking, s.lossy, s.ok
    ));
    if let Some(path) = &report.template {
        out.push_str(&format!(
            "Wrote {path}: one commented entry per difference. Review each, remove its \"# \", \
             then run fmig plan again.\n"
        ));
    }
    if s.blocking > 0 {
        let file = args
            .mapping_config
            .as_deref()
            .unwrap_or(Path::new(column_map::DEFAULT_PATH))
            .display()
            .to_string();
        out.push_str(&format!(
            "Blocking differences would break the migration: settle each in {file} \
             (fmig plan --write-template writes a starting file), then run fmig plan again.\n"
        ));
    } else {
        out.push_str(
            "Nothing blocking is left. Review the lossy differences above before the window.\n",
        );
    }
    out
}

/// Lines a lossy pattern repeated over this many columns share (without --all).
const GROUP_AT: usize = 3;

/// The rows of the "needs a decision" table: blocking ones one by one; lossy ones with the same
/// kind and the same difference (counts aside) over [`GROUP_AT`] or more columns as one row,
/// the counts added up, unless `all`.
fn grouped_rows(findings: &[(&str, &Finding)], all: bool) -> Vec<Vec<String>> {
    let mut groups: BTreeMap<(&str, &str), Vec<(&str, &Finding)>> = BTreeMap::new();
    for &(table, f) in findings {
        if f.class == Class::Lossy && !f.head.is_empty() {
            groups
                .entry((f.kind, f.head.as_str()))
                .or_default()
                .push((table, f));
        }
    }
    let mut rows = Vec::new();
    let mut done = BTreeSet::new();
    for &(table, f) in findings {
        let key = (f.kind, f.head.as_str());
        let group = groups.get(&key).filter(|g| !all && g.len() >= GROUP_AT);
        let Some(group) = group else {
            rows.push(finding_row(table, f));
            continue;
        };
        if !done.insert(key) {
            continue;
        }
        // Counts with the same label add up.
        let mut totals: Vec<(i64, String)> = Vec::new();
        for (_, g) in group {
            for (n, label) in &g.parts {
                match totals.iter_mut().find(|(_, l)| l == label) {
                    Some(total) => total.0 += n,
                    None => totals.push((*n, label.clone())),
                }
            }
        }
        let places: Vec<String> = group
            .iter()
            .map(|(t, g)| format!("{t}.{}", g.columns.join("/")))
            .collect();
        let shown = places
            .iter()
            .take(4)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        let more = places.len().saturating_sub(4);
        let mut message = f.head.clone();
        if !totals.is_empty() {
            message.push_str(": ");
            message.push_str(
                &totals
                    .iter()
                    .map(|(n, label)| format!("{n} {label}"))
                    .collect::<Vec<_>>()
                    .join("; "),
            );
        }
        message.push_str(&format!(
            " (in {shown}{})",
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
        rows.push(vec![
            f.class.label().to_string(),
            format!(
                "{} tables",
                group.iter().map(|(t, _)| *t).collect::<BTreeSet<_>>().len()
            ),
            format!("{} columns", group.len()),
            message,
        ]);
    }
    rows
}

fn finding_row(table: &str, f: &Finding) -> Vec<String> {
    vec![
        f.class.label().to_string(),
        table.to_string(),
        f.columns.join(", "),
        f.message.clone(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lossy(kind: &'static str, column: &str, head: &str, parts: &[(i64, &str)]) -> Finding {
        Finding {
            class: Class::Lossy,
            kind,
            columns: vec![column.into()],
            message: format!("{head}: ..."),
            counts: BTreeMap::new(),
            suggestion: None,
            head: head.into(),
            parts: parts.iter().map(|(n, l)| (*n, l.to_string())).collect(),
        }
    }

    #[test]
    fn a_lossy_pattern_over_three_columns_is_one_row_with_the_counts_added_up() {
        let tz = "timestamp with time zone -> timestamp(3) without time zone";
        let a = lossy(
            "type_changed",
            "created_at",
            tz,
            &[(10, "values are rounded")],
        );
        let b = lossy(
            "type_changed",
            "updated_at",
            tz,
            &[(5, "values are rounded")],
        );
        let c = lossy("type_changed", "seen_at", tz, &[(1, "values are rounded")]);
        let other = lossy(
            "jsonb_to_text",
            "config",
            "jsonb -> text",
            &[(2, "documents")],
        );
        let findings = vec![
            ("sites", &a),
            ("hubs", &b),
            ("ttn_connections", &other),
            ("units", &c),
        ];
        let rows = grouped_rows(&findings, false);
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!(rows[0][1], "3 tables");
        assert_eq!(rows[0][2], "3 columns");
        assert!(
            rows[0][3].starts_with(&format!(
                "{tz}: 16 values are rounded (in sites.created_at, hubs.updated_at, units.seen_at)"
            )),
            "{}",
            rows[0][3]
        );
        assert_eq!(rows[1][1], "ttn_connections");
        // --all: one row per finding; two of a kind are not grouped.
        assert_eq!(grouped_rows(&findings, true).len(), 4);
        assert_eq!(grouped_rows(&findings[..2], false).len(), 2);
    }
}
