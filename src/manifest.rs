//! The table manifest: which tables fmig moves, in which order, and which of their columns hold
//! Supabase user ids.
//!
//! The built-in list is the FreshTrack team's hand-written belief (see the migration spec). The
//! database catalogs are the truth, so [`compare`] checks the list against what
//! [`crate::catalog`] discovered and reports every disagreement instead of trusting either side
//! silently.

use std::collections::BTreeSet;

use anyhow::{Result, bail};
use serde::Serialize;

use crate::catalog::Discovered;

/// The schema the application tables live in, on both sides.
pub const APP_SCHEMA: &str = "public";

/// One table as the team listed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableSpec {
    pub name: &'static str,
    /// Hand-written foreign-key level: a table may only reference tables of lower levels.
    pub level: usize,
    /// Columns holding `auth.users.id` values that must be rewritten to Stack Auth ids.
    pub user_id_columns: &'static [&'static str],
    /// Tables that grow without bound; `--skip-large` leaves them out.
    pub large: bool,
}

const fn table(name: &'static str, level: usize) -> TableSpec {
    TableSpec {
        name,
        level,
        user_id_columns: &[],
        large: false,
    }
}

const fn with_users(mut spec: TableSpec, columns: &'static [&'static str]) -> TableSpec {
    spec.user_id_columns = columns;
    spec
}

const fn large(mut spec: TableSpec) -> TableSpec {
    spec.large = true;
    spec
}

/// FreshTrack's 23 tables in import order (8 levels), from the migration spec.
pub static FRESHTRACK: [TableSpec; 23] = [
    table("organizations", 0),
    table("subscriptions", 1),
    with_users(table("profiles", 1), &["user_id"]),
    table("sites", 1),
    table("ttn_connections", 1),
    with_users(table("user_roles", 2), &["user_id"]),
    with_users(table("escalation_contacts", 2), &["profile_id"]),
    table("areas", 2),
    table("hubs", 2),
    table("alert_rules", 2),
    table("units", 3),
    table("devices", 3),
    table("lora_sensors", 4),
    table("calibration_records", 4),
    large(table("sensor_readings", 4)),
    with_users(table("manual_temperature_logs", 4), &["profile_id"]),
    table("door_events", 4),
    large(table("alerts", 5)),
    table("alert_rules_history", 5),
    with_users(table("corrective_actions", 6), &["profile_id"]),
    with_users(table("notification_deliveries", 6), &["profile_id"]),
    large(with_users(table("event_logs", 7), &["actor_id"])),
    table("pairing_sessions", 7),
];

/// The built-in manifest.
pub fn builtin() -> &'static [TableSpec] {
    &FRESHTRACK
}

/// The tables fmig migrates from a source whose catalog is `source`: the built-in list, then
/// every other table of the application schema, in name order, which migrates like a listed
/// one (its level computed from foreign keys, its user-id columns found by their foreign keys
/// or named in the mapping) unless the mapping says `skip = true`. The built-in list is what
/// the team expects; [`compare`] reports where the catalog disagrees with it.
///
/// The list lives for the rest of the process (one per command run, a few dozen names).
pub fn effective(source: &Discovered) -> &'static [TableSpec] {
    let extra: Vec<&String> = source
        .tables
        .keys()
        .filter(|name| find(&FRESHTRACK, name).is_none())
        .collect();
    if extra.is_empty() {
        return &FRESHTRACK;
    }
    // One leaked list per distinct set of tables, however often a command asks.
    static LISTS: std::sync::Mutex<Vec<&'static [TableSpec]>> = std::sync::Mutex::new(Vec::new());
    let mut lists = LISTS.lock().expect("manifest lists");
    let same = |list: &&'static [TableSpec]| {
        list.len() == FRESHTRACK.len() + extra.len()
            && list[FRESHTRACK.len()..]
                .iter()
                .zip(&extra)
                .all(|(spec, name)| spec.name == name.as_str())
    };
    if let Some(list) = lists.iter().find(|l| same(l)) {
        return list;
    }
    let mut specs = FRESHTRACK.to_vec();
    for name in extra {
        let name: &'static str = Box::leak(name.clone().into_boxed_str());
        specs.push(TableSpec {
            name,
            level: source.levels.get(name).copied().unwrap_or(0),
            user_id_columns: &[],
            large: false,
        });
    }
    let list: &'static [TableSpec] = Box::leak(specs.into_boxed_slice());
    lists.push(list);
    list
}

/// Whether a table is one of the built-in list (not discovered).
pub fn is_builtin(name: &str) -> bool {
    find(&FRESHTRACK, name).is_some()
}

/// Looks a table up by name in a manifest.
pub fn find<'a>(manifest: &'a [TableSpec], name: &str) -> Option<&'a TableSpec> {
    manifest.iter().find(|t| t.name == name)
}

/// The manifest tables named by `--table` (all when none) minus the large ones with
/// `--skip-large`. An unknown name is an error that lists the known ones.
pub fn select(
    manifest: &[TableSpec],
    names: &[String],
    skip_large: bool,
) -> Result<BTreeSet<&'static str>> {
    let mut selected = BTreeSet::new();
    for name in names {
        let name = name.trim();
        let Some(spec) = manifest.iter().find(|t| t.name == name) else {
            let known: Vec<&str> = manifest.iter().map(|t| t.name).collect();
            bail!(
                "--table {name:?} is not one of fmig's tables; known tables: {}",
                known.join(", ")
            );
        };
        selected.insert(spec.name);
    }
    if names.is_empty() {
        selected.extend(manifest.iter().map(|t| t.name));
    }
    if skip_large {
        selected.retain(|name| !find(manifest, name).is_some_and(|t| t.large));
    }
    Ok(selected)
}

/// How much a disagreement matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Informational: nothing will go wrong because of it.
    Info,
    /// Worth a look before the window; the migration can still be correct.
    Warning,
    /// The migration would fail or lose data if run as configured.
    Error,
}

/// One disagreement between the built-in manifest and a database's catalog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Drift {
    /// A manifest table does not exist in the database.
    TableMissing { table: String },
    /// A table exists in the application schema but not in the manifest: it would not be migrated.
    TableNotInManifest { table: String },
    /// The hand-written order imports `table` before (or with) a table it references.
    OrderViolation {
        table: String,
        level: usize,
        references: String,
        referenced_level: usize,
    },
    /// The hand-written level differs from the one computed from foreign keys, without breaking
    /// the order.
    LevelDiffers {
        table: String,
        builtin: usize,
        computed: usize,
    },
    /// Tables that reference each other in a cycle: no table-by-table order satisfies them.
    Cycle { tables: Vec<String> },
    /// A table references itself: rows must arrive parents first, or with deferred checks.
    SelfReference { table: String, constraint: String },
    /// A column references `auth.users(id)` but the manifest does not list it as a user-id column.
    UserIdColumnNotInManifest { table: String, column: String },
    /// A listed user-id column has no foreign key to `auth.users(id)` (normal for audit columns).
    UserIdColumnWithoutForeignKey { table: String, column: String },
    /// A listed user-id column does not exist in the table.
    UserIdColumnMissing { table: String, column: String },
}

impl Drift {
    pub fn severity(&self) -> Severity {
        match self {
            // What breaks the migration and needs a person; what fmig resolves itself (the
            // order) or what breaks nothing (a listed column that is not there) is a warning.
            Drift::TableMissing { .. } | Drift::Cycle { .. } => Severity::Error,
            Drift::UserIdColumnMissing { .. }
            | Drift::OrderViolation { .. }
            | Drift::TableNotInManifest { .. }
            | Drift::LevelDiffers { .. }
            | Drift::SelfReference { .. }
            | Drift::UserIdColumnNotInManifest { .. } => Severity::Warning,
            Drift::UserIdColumnWithoutForeignKey { .. } => Severity::Info,
        }
    }

    /// One sentence an operator can act on.
    pub fn message(&self) -> String {
        match self {
            Drift::TableMissing { table } => format!(
                "table {table} is in fmig's manifest but does not exist in the database: \
                 check the database name in the URL, or that the schema was created"
            ),
            Drift::TableNotInManifest { table } => format!(
                "table {table} exists in the database but is not in fmig's built-in list: it is \
                 migrated too (discovered), unless the column mapping says skip = true"
            ),
            Drift::OrderViolation {
                table,
                level,
                references,
                referenced_level,
            } => format!(
                "order: {table} (level {level}) references {references} (level \
                 {referenced_level}), which the hand-written order imports at the same time or \
                 later; fmig uses the levels computed from foreign keys instead"
            ),
            Drift::LevelDiffers {
                table,
                builtin,
                computed,
            } => format!(
                "level: {table} is at level {builtin} in the hand-written order but at level \
                 {computed} by its foreign keys; fmig uses level {computed}"
            ),
            Drift::Cycle { tables } => format!(
                "foreign keys form a cycle between {}: no import order satisfies them; \
                 the import needs deferred constraints or --disable-fk",
                tables.join(", ")
            ),
            Drift::SelfReference { table, constraint } => format!(
                "{table} references itself ({constraint}): rows must be loaded parents first"
            ),
            Drift::UserIdColumnNotInManifest { table, column } => format!(
                "{table}.{column} references auth.users(id) but is not a listed user-id column: \
                 it will be rewritten as one (discovered)"
            ),
            Drift::UserIdColumnWithoutForeignKey { table, column } => format!(
                "{table}.{column} is a listed user-id column without a foreign key to \
                 auth.users(id) (usual for audit columns)"
            ),
            Drift::UserIdColumnMissing { table, column } => format!(
                "{table}.{column} is a listed user-id column but the table has no such column"
            ),
        }
    }
}

/// Compares the built-in manifest with a database's catalog.
///
/// Tables absent from the database are reported once and otherwise ignored, so a missing table
/// does not also produce order or column findings.
pub fn compare(manifest: &[TableSpec], found: &Discovered) -> Vec<Drift> {
    let mut drift = Vec::new();
    let listed: BTreeSet<&str> = manifest.iter().map(|t| t.name).collect();

    for spec in manifest {
        if !found.tables.contains_key(spec.name) {
            drift.push(Drift::TableMissing {
                table: spec.name.to_string(),
            });
        }
    }
    for name in found.tables.keys() {
        if !listed.contains(name.as_str()) {
            drift.push(Drift::TableNotInManifest {
                table: name.clone(),
            });
        }
    }

    for cycle in &found.cycles {
        drift.push(Drift::Cycle {
            tables: cycle.clone(),
        });
    }
    for (table, constraint) in &found.self_references {
        drift.push(Drift::SelfReference {
            table: table.clone(),
            constraint: constraint.clone(),
        });
    }

    // Order: every reference must point at a table the hand-written list loads strictly earlier.
    let mut violated: BTreeSet<&str> = BTreeSet::new();
    for fk in &found.foreign_keys {
        if fk.table == fk.references {
            continue;
        }
        let (Some(from), Some(to)) = (find(manifest, &fk.table), find(manifest, &fk.references))
        else {
            continue;
        };
        if from.level <= to.level {
            violated.insert(from.name);
            drift.push(Drift::OrderViolation {
                table: from.name.to_string(),
                level: from.level,
                references: to.name.to_string(),
                referenced_level: to.level,
            });
        }
    }
    for spec in manifest {
        if violated.contains(spec.name) {
            continue;
        }
        if let Some(&computed) = found.levels.get(spec.name)
            && computed != spec.level
        {
            drift.push(Drift::LevelDiffers {
                table: spec.name.to_string(),
                builtin: spec.level,
                computed,
            });
        }
    }

    for spec in manifest {
        let Some(info) = found.tables.get(spec.name) else {
            continue;
        };
        let by_fk = found.user_id_columns.get(spec.name);
        for &column in spec.user_id_columns {
            if info.column(column).is_none() {
                drift.push(Drift::UserIdColumnMissing {
                    table: spec.name.to_string(),
                    column: column.to_string(),
                });
            } else if found.auth_users_present
                && !by_fk.is_some_and(|cols| cols.iter().any(|c| c == column))
            {
                drift.push(Drift::UserIdColumnWithoutForeignKey {
                    table: spec.name.to_string(),
                    column: column.to_string(),
                });
            }
        }
        for column in by_fk.into_iter().flatten() {
            if !spec.user_id_columns.contains(&column.as_str()) {
                drift.push(Drift::UserIdColumnNotInManifest {
                    table: spec.name.to_string(),
                    column: column.clone(),
                });
            }
        }
    }
    drift
}

/// The user-id columns to rewrite for one table: the listed ones plus those discovered by
/// foreign key, without duplicates, listed ones first.
pub fn effective_user_id_columns(spec: &TableSpec, found: &Discovered) -> Vec<String> {
    let mut columns: Vec<String> = spec.user_id_columns.iter().map(|c| c.to_string()).collect();
    if let Some(discovered) = found.user_id_columns.get(spec.name) {
        for column in discovered {
            if !columns.contains(column) {
                columns.push(column.clone());
            }
        }
    }
    columns
}

/// The manifest tables grouped by the level computed from the catalog (the hand-written level
/// where the table is missing), in a stable order: computed level, then hand-written position.
pub fn import_order<'a>(
    manifest: &'a [TableSpec],
    found: &Discovered,
) -> Vec<(usize, &'a TableSpec)> {
    let mut ordered: Vec<(usize, usize, &TableSpec)> = manifest
        .iter()
        .enumerate()
        .map(|(pos, spec)| {
            let level = found.levels.get(spec.name).copied().unwrap_or(spec.level);
            (level, pos, spec)
        })
        .collect();
    ordered.sort_by_key(|&(level, pos, _)| (level, pos));
    ordered
        .into_iter()
        .map(|(level, _, spec)| (level, spec))
        .collect()
}
