//! The column mapping file (`fmig.toml`): how each table's source columns become its target
//! columns, decided and reviewed before the maintenance window.
//!
//! The self-hosted schema is a rewrite of the Supabase one, so copying columns by name fails on
//! the first renamed column. This module is the one place that knows the mapping: `plan` checks
//! it, `import` builds its column lists and expressions from [`ColumnMap::resolve`], and
//! `verify` compares each target column with what [`TableMap`] says it was made from.
//!
//! # Format
//!
//! ```toml
//! [tables.manual_temperature_logs]      # a manifest (source) table name
//! rename = { logged_at = "recorded_at" } # source column = target column
//! drop = ["legacy_note"]                 # source columns whose data is left behind, on purpose
//! user_id_columns = { add = ["created_by"], remove = ["entity_id"] }
//! skip = false                           # true: the table is not migrated at all
//! target = "manual_temperature_logs"     # the table's name in the target, when it differs
//!
//! [tables.manual_temperature_logs.set]   # target column = SQL expression over source columns
//! temp_unit = "'celsius'"
//!
//! [[tables.lora_sensors.also]]           # the same rows also feed another target table
//! target = "devices"                     # required; rename, drop, set, where, unmapped as above
//! where = "device_id IS NULL"
//! ```
//!
//! An `also` entry is a *unit* of its own ([`unit_name`]: `lora_sensors+devices`): resolved by
//! [`ColumnMap::resolve_units`] against its own target table, it writes only the target columns
//! it finds a value for, and the source columns it does not use are its table's business.
//!
//! Unknown keys are errors, and so are names that do not exist (a table that is not one of
//! fmig's, a source or target column that is not there); every error names the file, line and
//! column. A missing default file (`./fmig.toml`) means "no mapping"; a file given with
//! `--mapping-config` must exist.
//!
//! # How a target column gets its value ([`ColumnMap::resolve`])
//!
//! For each target column, in the target's column order:
//! 1. generated columns are never written (the target computes them);
//! 2. a `set` expression wins;
//! 3. else the source column renamed to it;
//! 4. else the source column of the same name, unless that one is renamed away or dropped;
//! 5. else nothing is written: the target's default (or identity) fills it, or NULL, and a
//!    NOT NULL column without a default is [`Unwritten::Missing`] (the import would fail).
//!
//! # The expression contract (shared by `plan`, `import` and `verify`)
//!
//! A `set` expression is evaluated **on the target**, once per row, as
//! `CAST((<expression>) AS <target column type>)` in a query whose `FROM` is the source row,
//! aliased `src`. `src` has every source column, named as in the source and typed with the
//! source column's type when it is built in, else `text` (see [`staging_type`]). User-id
//! columns already hold the new Stack Auth ids when expressions see them, so a
//! lookup such as `(SELECT p.id FROM public.profiles AS p WHERE p.user_id = src.profile_id)`
//! finds the profile imported earlier. `plan` only prepares the expression (it is parsed and
//! type-checked, never run) against a row of NULLs: see [`expression_probe`]; `import` and
//! `verify` do the same before they start. The expression is the only SQL the file may hold,
//! and it must stay one expression: reading the file refuses a `;`, a comment, or a
//! parenthesis that closes one it did not open ([`expression_problem`]), which could reach
//! outside the `CAST((...))` into the statement built around it. Every name (tables, columns,
//! `target`) is checked against the catalogs and quoted.
//!
//! # User-id columns
//!
//! [`ColumnMap::user_id_columns`]: fmig's built-in list, plus the columns with a foreign key to
//! `auth.users(id)`, plus `user_id_columns.add`, minus `user_id_columns.remove` (source names).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use tokio_postgres::{Statement, Transaction};
use toml::Spanned;

use crate::catalog::{Column, Discovered, TableInfo};
use crate::cli::Unmapped;
use crate::connect::server_message;
use crate::ident::quote_ident;
use crate::manifest::{self, TableSpec};

/// The mapping file read when `--mapping-config` is not given.
pub const DEFAULT_PATH: &str = "fmig.toml";

/// A value from the mapping file with where it was written (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Located<T> {
    pub value: T,
    pub line: usize,
    pub column: usize,
}

/// One `[tables.<name>]` section, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TableConfig {
    /// The section's source table name, located at its header.
    pub name: Located<String>,
    pub skip: bool,
    pub target: Option<Located<String>>,
    /// (source column, target column).
    pub rename: Vec<(Located<String>, Located<String>)>,
    pub drop: Vec<Located<String>>,
    /// (target column, SQL expression).
    pub set: Vec<(Located<String>, Located<String>)>,
    pub user_ids_add: Vec<Located<String>>,
    pub user_ids_remove: Vec<Located<String>>,
    /// `where`: the rows for which this condition is not true stay behind.
    pub filter: Option<Located<String>>,
    /// `unmapped = "skip_row"`: the policy for every user-id column of the table.
    pub unmapped_all: Option<Located<Unmapped>>,
    /// `unmapped = { column = "null" }`: per user-id column (source names).
    pub unmapped_columns: Vec<(Located<String>, Unmapped)>,
    /// Target columns of `set` entries with `compare = false`.
    pub not_compared: BTreeSet<String>,
    /// (target column, lookup) from `set` entries `{ lookup = ..., match = ..., take = ... }`.
    pub lookups: Vec<(Located<String>, LookupConfig)>,
    /// `[[tables.<name>.also]]` entries: the same source rows feeding further target tables,
    /// each its own unit (named [`unit_name`]) with its own `target`, `rename`, `set`, `where`.
    pub also: Vec<TableConfig>,
    /// For an also entry: the source table whose section it belongs to.
    pub also_of: Option<String>,
}

/// A `set` entry that takes a value from another source table, as written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LookupConfig {
    /// The source table looked in, located at the entry.
    pub table: Located<String>,
    /// (column of the looked-up table, column of this table): the row whose columns equal
    /// this row's.
    pub matches: Vec<(String, String)>,
    /// The column of the looked-up row whose value is taken.
    pub take: String,
    /// `missing = "null"`: a key that finds no row gives NULL instead of stopping the import.
    pub missing_null: bool,
}

impl Default for Located<String> {
    fn default() -> Self {
        Located {
            value: String::new(),
            line: 0,
            column: 0,
        }
    }
}

/// The whole mapping: per source table, what the file says.
#[derive(Clone, Debug, Default)]
pub struct ColumnMap {
    /// The file it was read from; `None` when there is no mapping.
    path: Option<PathBuf>,
    tables: BTreeMap<String, TableConfig>,
}

/// Where a target column's value comes from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum ColumnValue {
    /// Copied from this source column (renamed when the names differ).
    Source { column: String, source_type: String },
    /// Computed by a `set` expression (see the module docs for the contract).
    Expression { sql: String, line: usize },
    /// Taken from a row of another source table (`TableMap::lookups[index]`), found by fmig
    /// in the exported source data and staged next to the row as `stage_column`.
    Lookup { index: usize, stage_column: String },
}

/// A target column the import writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetColumn {
    pub name: String,
    /// `format_type` of the target column: `character varying(120)`, `app_role`.
    pub target_type: String,
    pub value: ColumnValue,
}

impl TargetColumn {
    /// The column's value as an SQL select item over the source row `src`:
    /// `src."col"` or `CAST((expr) AS type)`.
    pub fn select_sql(&self) -> String {
        match &self.value {
            ColumnValue::Source { column, .. } => format!("src.{}", quote_ident(column)),
            ColumnValue::Expression { sql, .. } => cast_sql(sql, &self.target_type),
            ColumnValue::Lookup { stage_column, .. } => format!(
                "CAST(src.{} AS {})",
                quote_ident(stage_column),
                self.target_type
            ),
        }
    }
}

/// A lookup resolved against the source catalog: what the pipeline needs to find the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Lookup {
    /// The target column it feeds.
    pub target_column: String,
    /// The source table looked in.
    pub table: String,
    /// (column of `table`, column of this table).
    pub matches: Vec<(String, String)>,
    pub take: String,
    /// The staging type of `take` (see [`staging_type`]): the type the value is staged with.
    pub take_type: String,
    pub missing_null: bool,
    /// Where in the mapping file it is written (for messages).
    pub line: usize,
}

/// Why a target column is not written.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Unwritten {
    /// `GENERATED ALWAYS AS (...) STORED`: computed by the target.
    Generated,
    /// Filled by the target's default expression.
    Default { default: String },
    /// `GENERATED ... AS IDENTITY`: numbered by the target.
    Identity,
    /// Nullable without default: stays NULL.
    Null,
    /// NOT NULL, no default, no source, no expression: every insert would fail.
    Missing,
}

/// A target column nothing is written to, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UnwrittenColumn {
    pub name: String,
    #[serde(flatten)]
    pub reason: Unwritten,
}

/// One table, resolved against both catalogs: what `import` writes and `verify` compares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TableMap {
    /// The unit's name: the source table's, or [`unit_name`] for an also entry. Checkpoints,
    /// `left-behind/` files and reports are per unit.
    pub unit: String,
    /// Whether this unit is an also entry (a second target table fed by the same rows).
    pub also: bool,
    pub source_table: String,
    pub target_table: String,
    /// `skip = true`: nothing of this table is migrated; the lists below are empty.
    pub skip: bool,
    /// The target columns written, in target column order.
    pub columns: Vec<TargetColumn>,
    /// Target columns not written, in target column order.
    pub unwritten: Vec<UnwrittenColumn>,
    /// Source columns left behind on purpose (`drop`).
    pub dropped: Vec<String>,
    /// Source columns not copied into this table but named in a `set` expression, a lookup's
    /// `match`, or carried by an also entry of the same table.
    pub used_by_expressions: Vec<String>,
    /// Source columns with nowhere to go, not dropped and not used by an expression: their data
    /// would be lost silently, so `plan` blocks on them (when they hold data) and `import`
    /// must refuse them.
    pub unmapped: Vec<String>,
    /// Source columns holding `auth.users` ids, rewritten to Stack Auth ids before anything
    /// else sees them (see [`ColumnMap::user_id_columns`]).
    pub user_id_columns: Vec<String>,
    /// `where`: rows for which it is not true stay behind (evaluated over the staged row).
    pub filter: Option<String>,
    /// Values taken from other source tables; `ColumnValue::Lookup::index` points here.
    pub lookups: Vec<Lookup>,
    /// The mapping's `unmapped` policy per user-id column (source names); a column not listed
    /// follows the command's `--unmapped`.
    pub user_id_policies: BTreeMap<String, Unmapped>,
    /// Target columns whose value is generated (`compare = false`): verify does not compare them.
    pub not_compared: Vec<String>,
}

impl TableMap {
    /// The target column written from source column `source`, if any.
    pub fn target_of(&self, source: &str) -> Option<&TargetColumn> {
        self.columns
            .iter()
            .find(|c| matches!(&c.value, ColumnValue::Source { column, .. } if column == source))
    }

    /// The target column called `name`, if it is written.
    pub fn column(&self, name: &str) -> Option<&TargetColumn> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// The policy for unmapped ids of user-id column `column`: the mapping's, else `default`.
    pub fn policy(&self, column: &str, default: Unmapped) -> Unmapped {
        self.user_id_policies
            .get(column)
            .copied()
            .unwrap_or(default)
    }

    /// Whether rows of this table can stay behind (a filter, or a `skip_row` policy).
    pub fn leaves_rows_behind(&self, default: Unmapped) -> bool {
        self.filter.is_some()
            || self
                .user_id_columns
                .iter()
                .any(|c| self.policy(c, default) == Unmapped::SkipRow)
    }
}

/// A change to the mapping that would settle a difference; `plan --write-template` writes these
/// as commented-out lines.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "key", rename_all = "snake_case")]
pub enum Suggestion {
    Rename {
        from: String,
        to: String,
    },
    Drop {
        column: String,
    },
    Set {
        column: String,
        expression: String,
    },
    /// `column = { lookup = table, match = { their = own }, take, missing = "null" }`.
    Lookup {
        column: String,
        table: String,
        matches: Vec<(String, String)>,
        take: String,
    },
    AddUserId {
        column: String,
    },
    RemoveUserId {
        column: String,
    },
    Skip,
}

// The file as serde sees it; spans come along so every later error can point at a line.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    tables: BTreeMap<Spanned<String>, Spanned<RawTable>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    #[serde(default)]
    skip: Option<bool>,
    #[serde(default)]
    target: Option<Spanned<String>>,
    #[serde(default)]
    rename: BTreeMap<Spanned<String>, Spanned<String>>,
    #[serde(default)]
    drop: Vec<Spanned<String>>,
    #[serde(default)]
    set: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
    #[serde(default)]
    user_id_columns: Option<RawUserIds>,
    #[serde(default, rename = "where")]
    filter: Option<Spanned<String>>,
    #[serde(default)]
    unmapped: Option<Spanned<toml::Value>>,
    /// `[[tables.<name>.also]]`: further target tables fed by the same source rows.
    #[serde(default)]
    also: Vec<Spanned<RawTable>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUserIds {
    #[serde(default)]
    add: Vec<Spanned<String>>,
    #[serde(default)]
    remove: Vec<Spanned<String>>,
}

/// Problems found in a mapping file, each with its place; displayed one per line.
#[derive(Debug)]
pub struct MappingErrors {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

/// One problem in a mapping file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

impl fmt::Display for MappingErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.path.display();
        if let [only] = self.problems.as_slice() {
            return write!(f, "{file}:{}:{}: {}", only.line, only.column, only.message);
        }
        write!(
            f,
            "the mapping file {file} has {} problems:",
            self.problems.len()
        )?;
        for p in &self.problems {
            write!(f, "\n  {file}:{}:{}: {}", p.line, p.column, p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for MappingErrors {}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before.rfind('\n').map_or(before.chars().count(), |nl| {
        before[nl + 1..].chars().count()
    }) + 1;
    (line, column)
}

fn locate<T: Clone>(text: &str, spanned: &Spanned<T>) -> Located<T> {
    let (line, column) = line_col(text, spanned.span().start);
    Located {
        value: spanned.get_ref().clone(),
        line,
        column,
    }
}

impl ColumnMap {
    /// No mapping: every column is copied by name.
    pub fn empty() -> ColumnMap {
        ColumnMap::default()
    }

    /// Reads the mapping: `path` when given (it must exist), else `./fmig.toml` when it exists,
    /// else the empty mapping.
    pub fn load(path: Option<&Path>) -> Result<ColumnMap> {
        let (path, explicit) = match path {
            Some(p) => (p.to_path_buf(), true),
            None => (PathBuf::from(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(ColumnMap::empty());
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
                "the mapping file {} does not exist (given with --mapping-config); \
                 `fmig plan --write-template {}` writes a starting one",
                path.display(),
                path.display()
            ),
            Err(err) => {
                return Err(err).with_context(|| {
                    format!("could not read the mapping file {}", path.display())
                });
            }
        };
        Ok(ColumnMap::parse(&text, &path)?)
    }

    /// Parses a mapping file's text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> std::result::Result<ColumnMap, MappingErrors> {
        let fail = |problems: Vec<Problem>| MappingErrors {
            path: path.to_path_buf(),
            problems,
        };
        let raw: RawFile = toml::from_str(text).map_err(|err| {
            let (line, column) = err.span().map_or((1, 1), |s| line_col(text, s.start));
            fail(vec![Problem {
                line,
                column,
                message: toml_message(&err),
            }])
        })?;
        let mut problems = Vec::new();
        let mut tables = BTreeMap::new();
        for (name, table) in raw.tables {
            let name = locate(text, &name);
            let (line, column) = line_col(text, table.span().start);
            let table = table.into_inner();
            let located = Located {
                value: name.value.clone(),
                line,
                column,
            };
            let mut config = parse_table(text, &name.value, located, &table, &mut problems);
            for (index, also) in table.also.iter().enumerate() {
                let (line, column) = line_col(text, also.span().start);
                let label = format!("{}.also", name.value);
                let raw = also.get_ref();
                let Some(target) = raw.target.as_ref().map(|t| locate(text, t)) else {
                    problems.push(Problem {
                        line,
                        column,
                        message: format!(
                            "[[tables.{label}]] entry {}: target is missing; an also entry \
                             names the other target table this source table feeds, e.g. \
                             target = \"devices\"",
                            index + 1
                        ),
                    });
                    continue;
                };
                for (given, key) in [
                    (raw.skip.is_some(), "skip"),
                    (raw.user_id_columns.is_some(), "user_id_columns"),
                    (!raw.also.is_empty(), "also"),
                ] {
                    if given {
                        problems.push(Problem {
                            line,
                            column,
                            message: format!(
                                "[[tables.{label}]] {key}: not allowed in an also entry (it \
                                 belongs in [tables.{}], which the entry shares)",
                                name.value
                            ),
                        });
                    }
                }
                let located = Located {
                    value: unit_name(&name.value, &target.value),
                    line,
                    column,
                };
                let mut unit = parse_table(text, &label, located, raw, &mut problems);
                unit.target = Some(target);
                unit.also_of = Some(name.value.clone());
                config.also.push(unit);
            }
            tables.insert(name.value, config);
        }
        if !problems.is_empty() {
            return Err(fail(problems));
        }
        Ok(ColumnMap {
            path: Some(path.to_path_buf()),
            tables,
        })
    }

    /// The file the mapping came from (`None`: no mapping).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Whether the mapping says anything at all.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// The section for a source table, as written.
    pub fn table(&self, source_table: &str) -> Option<&TableConfig> {
        self.tables.get(source_table)
    }

    /// Whether `skip = true` leaves the table out.
    pub fn is_skipped(&self, source_table: &str) -> bool {
        self.table(source_table).is_some_and(|t| t.skip)
    }

    /// The table's name in the target (`target = ...`, else its own).
    pub fn target_name<'a>(&'a self, source_table: &'a str) -> &'a str {
        self.table(source_table)
            .and_then(|t| t.target.as_ref())
            .map_or(source_table, |t| t.value.as_str())
    }

    /// `file:line:column` of a place in the mapping file, for messages.
    pub fn place<T>(&self, at: &Located<T>) -> String {
        let file = self
            .path
            .as_deref()
            .map_or_else(|| DEFAULT_PATH.to_string(), |p| p.display().to_string());
        format!("{file}:{}:{}", at.line, at.column)
    }

    /// The source columns of `spec` that hold `auth.users` ids: the built-in list, plus the
    /// columns with a foreign key to `auth.users(id)`, plus `user_id_columns.add`, minus
    /// `user_id_columns.remove`; built-in ones first, no duplicates.
    pub fn user_id_columns(&self, spec: &TableSpec, source: &Discovered) -> Vec<String> {
        let mut columns = manifest::effective_user_id_columns(spec, source);
        if let Some(config) = self.table(spec.name) {
            for add in &config.user_ids_add {
                if !columns.contains(&add.value) {
                    columns.push(add.value.clone());
                }
            }
            columns.retain(|c| !config.user_ids_remove.iter().any(|r| &r.value == c));
        }
        columns
    }

    /// Checks every name in the mapping against the manifest and both catalogs: tables are
    /// fmig's, columns exist on the side they name, no two sources feed one target column.
    /// Tables missing from a catalog are left to `plan`'s report; their columns are not checked
    /// against that side.
    pub fn validate(
        &self,
        specs: &[TableSpec],
        source: &Discovered,
        target: &Discovered,
    ) -> std::result::Result<(), MappingErrors> {
        let mut problems = Vec::new();
        let mut targets_used: BTreeMap<&str, &str> = BTreeMap::new();
        for (name, config) in &self.tables {
            let at = &config.name;
            if manifest::find(specs, name).is_none() {
                let known: Vec<&str> = specs.iter().map(|s| s.name).collect();
                problems.push(problem(
                    at,
                    format!(
                        "[tables.{name}]: {name} is not one of fmig's tables; known tables: {}",
                        known.join(", ")
                    ),
                ));
                continue;
            }
            let target_name = self.target_name(name);
            if let Some(other) = targets_used.insert(target_name, name) {
                problems.push(problem(
                    config.target.as_ref().unwrap_or(at),
                    format!(
                        "[tables.{name}]: target table {target_name} is also the target of {other}"
                    ),
                ));
            }
            if let Some(t) = &config.target
                && !target.tables.contains_key(&t.value)
            {
                problems.push(problem(
                    t,
                    format!(
                        "[tables.{name}] target: table {} does not exist in the target database",
                        t.value
                    ),
                ));
            }
            let src = source.tables.get(name.as_str());
            let tgt = target.tables.get(target_name);
            validate_table(name, config, src, tgt, &mut problems);
            validate_lookups(name, config, source, tgt, &mut problems);
            let label = format!("{name}.also");
            let mut also_targets = BTreeSet::from([target_name]);
            for unit in &config.also {
                let Some(t) = &unit.target else { continue };
                if config.skip {
                    problems.push(problem(
                        t,
                        format!(
                            "[[tables.{label}]] target = {:?}: {name} is skipped, so nothing \
                             feeds this table; remove the entry or the skip",
                            t.value
                        ),
                    ));
                }
                if !also_targets.insert(t.value.as_str()) {
                    problems.push(problem(
                        t,
                        format!(
                            "[[tables.{label}]] target = {:?}: {name} already feeds this table; \
                             one entry per target table",
                            t.value
                        ),
                    ));
                }
                let unit_tgt = target.tables.get(&t.value);
                if unit_tgt.is_none() {
                    problems.push(problem(
                        t,
                        format!(
                            "[[tables.{label}]] target: table {} does not exist in the target \
                             database",
                            t.value
                        ),
                    ));
                }
                validate_table(&label, unit, src, unit_tgt, &mut problems);
                validate_lookups(&label, unit, source, unit_tgt, &mut problems);
            }
            if let (Some(spec), Some(_)) = (manifest::find(specs, name), src) {
                let user_ids = self.user_id_columns(spec, source);
                let policies = std::iter::once(config)
                    .chain(&config.also)
                    .flat_map(|c| &c.unmapped_columns);
                for (column, _) in policies {
                    if !user_ids.contains(&column.value) {
                        problems.push(problem(
                            column,
                            format!(
                                "[tables.{name}] unmapped: {} is not a user-id column of {name} \
                                 (they are: {}); add it to user_id_columns first if it holds \
                                 auth.users ids",
                                column.value,
                                if user_ids.is_empty() {
                                    "none".to_string()
                                } else {
                                    user_ids.join(", ")
                                }
                            ),
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            problems.sort_by_key(|p| (p.line, p.column));
            Err(MappingErrors {
                path: self
                    .path
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH)),
                problems,
            })
        }
    }

    /// Resolves one manifest table against both catalogs (see the module docs for the rules).
    /// Fails when the table is missing on a side and not skipped; call [`ColumnMap::validate`]
    /// first so names in the mapping are known to exist.
    pub fn resolve(
        &self,
        spec: &TableSpec,
        source: &Discovered,
        target: &Discovered,
    ) -> Result<TableMap> {
        let empty = TableConfig::default();
        let config = self.table(spec.name).unwrap_or(&empty);
        self.resolve_unit(spec, config, None, source, target)
    }

    /// Every unit of a source table: the table itself, then one per `[[tables.<name>.also]]`
    /// entry (none when the table is skipped).
    pub fn resolve_units(
        &self,
        spec: &TableSpec,
        source: &Discovered,
        target: &Discovered,
    ) -> Result<Vec<TableMap>> {
        let mut units = vec![self.resolve(spec, source, target)?];
        if let Some(config) = self.table(spec.name)
            && !config.skip
        {
            for unit in &config.also {
                units.push(self.resolve_unit(spec, unit, Some(config), source, target)?);
            }
        }
        // A column the table's own target has no place for is not lost when an also entry
        // carries it.
        let (main, also) = units.split_at_mut(1);
        let main = &mut main[0];
        let carried: Vec<String> = main
            .unmapped
            .iter()
            .filter(|column| {
                also.iter().any(|u| {
                    u.target_of(column).is_some()
                        || u.lookups.iter().any(|l| l.matches.iter().any(|(_, own)| own == *column))
                        || u.columns.iter().any(|c| {
                            matches!(&c.value, ColumnValue::Expression { sql, .. } if mentions(sql, column))
                        })
                })
            })
            .cloned()
            .collect();
        main.unmapped.retain(|c| !carried.contains(c));
        main.used_by_expressions.extend(carried);
        Ok(units)
    }

    /// The target tables of a source table's units, in [`ColumnMap::resolve_units`]' order.
    pub fn unit_targets(&self, source_table: &str) -> Vec<String> {
        let mut targets = vec![self.target_name(source_table).to_string()];
        if let Some(config) = self.table(source_table)
            && !config.skip
        {
            targets.extend(
                config
                    .also
                    .iter()
                    .filter_map(|u| u.target.as_ref().map(|t| t.value.clone())),
            );
        }
        targets
    }

    /// One unit: `config` is the table's section, or one of its also entries with `main` the
    /// section it belongs to. An also entry writes only the target columns it finds a value for;
    /// the source columns it does not use are the section's business, not lost.
    fn resolve_unit(
        &self,
        spec: &TableSpec,
        config: &TableConfig,
        main: Option<&TableConfig>,
        source: &Discovered,
        target: &Discovered,
    ) -> Result<TableMap> {
        let source_table = spec.name.to_string();
        let target_table = match (main, &config.target) {
            (Some(_), Some(t)) => t.value.clone(),
            _ => self.target_name(spec.name).to_string(),
        };
        let mut map = TableMap {
            unit: match main {
                Some(_) => config.name.value.clone(),
                None => spec.name.to_string(),
            },
            also: main.is_some(),
            source_table,
            target_table,
            skip: main.is_none() && self.is_skipped(spec.name),
            columns: Vec::new(),
            unwritten: Vec::new(),
            dropped: Vec::new(),
            used_by_expressions: Vec::new(),
            unmapped: Vec::new(),
            user_id_columns: Vec::new(),
            filter: None,
            lookups: Vec::new(),
            user_id_policies: BTreeMap::new(),
            not_compared: Vec::new(),
        };
        if map.skip {
            return Ok(map);
        }
        let src = source
            .tables
            .get(spec.name)
            .ok_or_else(|| anyhow!("table {} does not exist in the source database", spec.name))?;
        let tgt = target.tables.get(&map.target_table).ok_or_else(|| {
            anyhow!(
                "table {} does not exist in the target database",
                map.target_table
            )
        })?;
        let renamed_to = |target_column: &str| {
            config
                .rename
                .iter()
                .find(|(_, to)| to.value == target_column)
                .map(|(from, _)| from.value.as_str())
        };
        let renamed_away = |source_column: &str| {
            config
                .rename
                .iter()
                .any(|(from, _)| from.value == source_column)
        };
        let dropped = |source_column: &str| config.drop.iter().any(|d| d.value == source_column);

        for column in &tgt.columns {
            if column.generated {
                map.unwritten.push(UnwrittenColumn {
                    name: column.name.clone(),
                    reason: Unwritten::Generated,
                });
                continue;
            }
            if let Some((index, (_, lookup))) = config
                .lookups
                .iter()
                .enumerate()
                .find(|(_, (c, _))| c.value == column.name)
            {
                let table = source.tables.get(&lookup.table.value).ok_or_else(|| {
                    anyhow!(
                        "lookup table {} does not exist in the source",
                        lookup.table.value
                    )
                })?;
                let take = table.column(&lookup.take).ok_or_else(|| {
                    anyhow!("{} has no column {}", lookup.table.value, lookup.take)
                })?;
                let stage_column = format!("fmig_lookup_{index}");
                map.lookups.push(Lookup {
                    target_column: column.name.clone(),
                    table: lookup.table.value.clone(),
                    matches: lookup.matches.clone(),
                    take: lookup.take.clone(),
                    take_type: staging_type(take.type_oid, &take.type_name).to_string(),
                    missing_null: lookup.missing_null,
                    line: lookup.table.line,
                });
                map.columns.push(TargetColumn {
                    name: column.name.clone(),
                    target_type: column.type_name.clone(),
                    value: ColumnValue::Lookup {
                        index: map.lookups.len() - 1,
                        stage_column,
                    },
                });
                continue;
            }
            let expression = config.set.iter().find(|(c, _)| c.value == column.name);
            let from_source = renamed_to(&column.name).or_else(|| {
                src.column(&column.name)
                    .filter(|s| !renamed_away(&s.name) && !dropped(&s.name))
                    .map(|s| s.name.as_str())
            });
            let value = match (expression, from_source) {
                (Some((_, sql)), _) => Some(ColumnValue::Expression {
                    sql: sql.value.clone(),
                    line: sql.line,
                }),
                (None, Some(name)) => src.column(name).map(|s| ColumnValue::Source {
                    column: s.name.clone(),
                    source_type: s.type_name.clone(),
                }),
                (None, None) => None,
            };
            match value {
                Some(value) => map.columns.push(TargetColumn {
                    name: column.name.clone(),
                    target_type: column.type_name.clone(),
                    value,
                }),
                None => map.unwritten.push(UnwrittenColumn {
                    name: column.name.clone(),
                    reason: unwritten_reason(column),
                }),
            }
        }

        let expressions: Vec<&str> = config.set.iter().map(|(_, e)| e.value.as_str()).collect();
        for column in &src.columns {
            let copied = map.columns.iter().any(
                |c| matches!(&c.value, ColumnValue::Source { column: s, .. } if *s == column.name),
            );
            // A same-named target column that has a `set` expression replaces this column on
            // purpose: the expression decides what to do with it.
            let replaced = !renamed_away(&column.name)
                && (config.set.iter().any(|(c, _)| c.value == column.name)
                    || config.lookups.iter().any(|(c, _)| c.value == column.name));
            // A lookup's key column carries its value into the looked-up one.
            let lookup_key = config
                .lookups
                .iter()
                .any(|(_, l)| l.matches.iter().any(|(_, own)| *own == column.name));
            // A same-named generated target column recomputes it: nothing is lost.
            let recomputed = !renamed_away(&column.name)
                && tgt.column(&column.name).is_some_and(|c| c.generated);
            if copied || replaced || recomputed {
                continue;
            }
            if dropped(&column.name) {
                map.dropped.push(column.name.clone());
            } else if map.also {
                // Carried by the table's own unit (or dropped there).
            } else if lookup_key || expressions.iter().any(|e| mentions(e, &column.name)) {
                map.used_by_expressions.push(column.name.clone());
            } else {
                map.unmapped.push(column.name.clone());
            }
        }
        map.user_id_columns = self.user_id_columns(spec, source);
        map.filter = config.filter.as_ref().map(|f| f.value.clone());
        for column in &map.user_id_columns {
            let policy = config
                .unmapped_columns
                .iter()
                .find(|(c, _)| c.value == *column)
                .map(|(_, p)| *p)
                .or(config.unmapped_all.as_ref().map(|p| p.value))
                .or_else(|| {
                    let main = main?;
                    main.unmapped_columns
                        .iter()
                        .find(|(c, _)| c.value == *column)
                        .map(|(_, p)| *p)
                        .or(main.unmapped_all.as_ref().map(|p| p.value))
                });
            if let Some(policy) = policy {
                map.user_id_policies.insert(column.clone(), policy);
            }
        }
        map.not_compared = map
            .columns
            .iter()
            .filter(|c| config.not_compared.contains(&c.name))
            .map(|c| c.name.clone())
            .collect();
        Ok(map)
    }
}

impl ColumnMap {
    /// Checks every `set` expression on the target without running it: each is prepared as
    /// [`expression_probe`] over a row of NULLs typed like the source row, inside a savepoint of
    /// the caller's (read-only) transaction. Problems name the file, line, expression and the
    /// server's message. Call after [`ColumnMap::validate`].
    pub async fn check_expressions(
        &self,
        specs: &[TableSpec],
        source: &Discovered,
        target: &Discovered,
        tx: &mut Transaction<'_>,
    ) -> Result<()> {
        let mut problems = Vec::new();
        let sections = self.tables.iter().flat_map(|(name, config)| {
            let own = (name.clone(), config, self.target_name(name).to_string());
            let also = config.also.iter().filter_map(move |unit| {
                let target = unit.target.as_ref()?.value.clone();
                Some((format!("{name}.also"), unit, target))
            });
            std::iter::once(own).chain(also)
        });
        for (name, config, target_table) in sections {
            let source_table = config.also_of.as_deref().unwrap_or(&name);
            if config.set.is_empty() || config.skip || manifest::find(specs, source_table).is_none()
            {
                continue;
            }
            let (Some(src), Some(tgt)) = (
                source.tables.get(source_table),
                target.tables.get(&target_table),
            ) else {
                continue;
            };
            let row: Vec<(&str, &str)> = src
                .columns
                .iter()
                .map(|c| (c.name.as_str(), staging_type(c.type_oid, &c.type_name)))
                .collect();
            for (column, expression) in &config.set {
                let Some(target_column) = tgt.column(&column.value) else {
                    continue;
                };
                let sql = expression_probe(&expression.value, &target_column.type_name, &row);
                if let Err(err) = prepare_checked(tx, &sql).await? {
                    problems.push(problem(
                        expression,
                        format!(
                            "[tables.{name}.set] {} = {:?}: the target rejects this expression: {}",
                            column.value,
                            expression.value,
                            server_message(&err)
                        ),
                    ));
                }
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        problems.sort_by_key(|p| (p.line, p.column));
        Err(MappingErrors {
            path: self
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PATH)),
            problems,
        }
        .into())
    }
}

/// Prepares `sql` (parsed and planned, never run) inside a savepoint, so that a statement the
/// server rejects does not abort the caller's transaction. The outer error is a connection
/// failure; the inner one is the server's verdict on `sql`.
pub async fn prepare_checked(
    tx: &mut Transaction<'_>,
    sql: &str,
) -> Result<std::result::Result<Statement, tokio_postgres::Error>> {
    let savepoint = tx
        .savepoint("fmig_probe")
        .await
        .context("could not open a savepoint on the target")?;
    let result = savepoint.prepare(sql).await;
    savepoint
        .rollback()
        .await
        .context("could not roll back a savepoint on the target")?;
    Ok(result)
}

/// The name of the unit that loads source table `source` into the also target `target`: used
/// for checkpoints, `left-behind/` files and reports.
pub fn unit_name(source: &str, target: &str) -> String {
    format!("{source}+{target}")
}

/// One `[tables.<name>]` section or one of its `[[tables.<name>.also]]` entries; `label` is the
/// section as written, for messages.
fn parse_table(
    text: &str,
    label: &str,
    name: Located<String>,
    table: &RawTable,
    problems: &mut Vec<Problem>,
) -> TableConfig {
    let mut config = TableConfig {
        name,
        skip: table.skip.unwrap_or(false),
        target: table.target.as_ref().map(|t| locate(text, t)),
        ..TableConfig::default()
    };
    for (from, to) in &table.rename {
        let (from, to) = (locate(text, from), locate(text, to));
        if from.value == to.value {
            problems.push(problem(
                &from,
                format!(
                    "[tables.{}] rename: {} is renamed to itself",
                    label, from.value
                ),
            ));
        }
        config.rename.push((from, to));
    }
    let mut seen = BTreeSet::new();
    for column in &table.drop {
        let column = locate(text, column);
        if !seen.insert(column.value.clone()) {
            problems.push(problem(
                &column,
                format!("[tables.{}] drop: {} is listed twice", label, column.value),
            ));
        }
        config.drop.push(column);
    }
    for (column, entry) in &table.set {
        let column = locate(text, column);
        let at = locate(text, entry);
        let Some(expression) = set_entry(label, &column, &at, &mut config, problems) else {
            continue;
        };
        if expression.value.trim().is_empty() {
            problems.push(problem(
                &expression,
                format!(
                    "[tables.{}.set] {}: the expression is empty (use \"NULL\" for NULL)",
                    label, column.value
                ),
            ));
        }
        if let Some(why) = expression_problem(&expression.value) {
            problems.push(problem(
                &expression,
                format!(
                    "[tables.{}.set] {}: {why}. A set expression must be one SQL \
                         expression: fmig evaluates it as CAST((expression) AS <column type>), \
                         and nothing may reach outside those parentheses (comments belong in \
                         the TOML, after #)",
                    label, column.value
                ),
            ));
        }
        config.set.push((column, expression));
    }
    if let Some(filter) = &table.filter {
        let filter = locate(text, filter);
        if filter.value.trim().is_empty() {
            problems.push(problem(
                &filter,
                format!(
                    "[tables.{}] where: the condition is empty (remove the key to keep every row)",
                    label
                ),
            ));
        } else if let Some(why) = expression_problem(&filter.value) {
            problems.push(problem(
                &filter,
                format!(
                    "[tables.{}] where: {why}. A row filter must be one SQL condition \
                         over the source row (comments belong in the TOML, after #)",
                    label
                ),
            ));
        }
        config.filter = Some(filter);
    }
    if let Some(unmapped) = &table.unmapped {
        let at = locate(text, unmapped);
        unmapped_entry(label, &at, &mut config, problems);
    }
    if let Some(ids) = &table.user_id_columns {
        config.user_ids_add = ids.add.iter().map(|c| locate(text, c)).collect();
        config.user_ids_remove = ids.remove.iter().map(|c| locate(text, c)).collect();
        for column in &config.user_ids_add {
            if config
                .user_ids_remove
                .iter()
                .any(|r| r.value == column.value)
            {
                problems.push(problem(
                    column,
                    format!(
                        "[tables.{}] user_id_columns: {} is both added and removed",
                        label, column.value
                    ),
                ));
            }
        }
    }
    config
}

/// The keys of `entry` outside `allowed`, comma-separated; None when there are none.
fn unknown_keys(entry: &toml::Table, allowed: &[&str]) -> Option<String> {
    let unknown: Vec<&str> = entry
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    (!unknown.is_empty()).then(|| unknown.join(", "))
}

const POLICIES: &str = "\"fail\", \"null\", \"keep\" or \"skip_row\"";

/// One `set` entry: a string is an SQL expression; `{ sql = "...", compare = false }` one that
/// verify does not compare; `{ lookup = ..., match = ..., take = ... }` a lookup (recorded in
/// `config.lookups`). Returns the SQL expression, if the entry is one.
fn set_entry(
    table: &str,
    column: &Located<String>,
    at: &Located<toml::Value>,
    config: &mut TableConfig,
    problems: &mut Vec<Problem>,
) -> Option<Located<String>> {
    let located = |value: String| Located {
        value,
        line: at.line,
        column: at.column,
    };
    let mut complain = |message: String| {
        problems.push(Problem {
            line: at.line,
            column: at.column,
            message: format!("[tables.{table}.set] {}: {message}", column.value),
        });
    };
    let entry = match &at.value {
        toml::Value::String(sql) => return Some(located(sql.clone())),
        toml::Value::Table(entry) => entry,
        other => {
            complain(format!(
                "expected an SQL expression in quotes, {{ sql = \"...\", compare = false }} or \
                 {{ lookup = \"table\", match = {{ column = \"source column\" }}, take = \"column\" }}, \
                 found {}",
                other.type_str()
            ));
            return None;
        }
    };
    let string = |key: &str| entry.get(key).and_then(|v| v.as_str()).map(str::to_string);
    if entry.contains_key("lookup") {
        if let Some(unknown) = unknown_keys(entry, &["lookup", "match", "take", "missing"]) {
            complain(format!(
                "unknown key(s) {unknown} in a lookup; a lookup has lookup, match, take and missing"
            ));
            return None;
        }
        let (Some(lookup), Some(take)) = (string("lookup"), string("take")) else {
            complain(
                "a lookup needs lookup = \"<source table>\" and take = \"<its column>\"".into(),
            );
            return None;
        };
        let matches: Option<Vec<(String, String)>> = entry
            .get("match")
            .and_then(|m| m.as_table())
            .map(|m| {
                m.iter()
                    .map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or(None);
        let matches = match matches {
            Some(m) if !m.is_empty() => m,
            _ => {
                complain(format!(
                    "a lookup needs match = {{ <column of {lookup}> = \"<column of {table}>\" }}"
                ));
                return None;
            }
        };
        let missing_null = match string("missing").as_deref() {
            None | Some("fail") => false,
            Some("null") => true,
            Some(other) => {
                complain(format!(
                    "missing = {other:?}: write \"null\" (a key that finds no row gives NULL) or \
                     \"fail\" (the default: such a key stops the import before it writes)"
                ));
                return None;
            }
        };
        config.lookups.push((
            column.clone(),
            LookupConfig {
                table: located(lookup),
                matches,
                take,
                missing_null,
            },
        ));
        return None;
    }
    if let Some(unknown) = unknown_keys(entry, &["sql", "compare"]) {
        complain(format!(
            "unknown key(s) {unknown}; an expression entry has sql and compare (a lookup starts with lookup = ...)"
        ));
        return None;
    }
    let Some(sql) = string("sql") else {
        complain("expected sql = \"<SQL expression>\"".into());
        return None;
    };
    match entry.get("compare") {
        None | Some(toml::Value::Boolean(true)) => {}
        Some(toml::Value::Boolean(false)) => {
            config.not_compared.insert(column.value.clone());
        }
        Some(_) => {
            complain("compare must be true or false".into());
            return None;
        }
    }
    Some(located(sql))
}

/// `unmapped = "skip_row"` or `unmapped = { column = "null", ... }`.
fn unmapped_entry(
    table: &str,
    at: &Located<toml::Value>,
    config: &mut TableConfig,
    problems: &mut Vec<Problem>,
) {
    let bad = |what: &str| Problem {
        line: at.line,
        column: at.column,
        message: format!(
            "[tables.{table}] unmapped: {what}; write one of {POLICIES}, or {{ <user-id column> = \"...\" }}"
        ),
    };
    match &at.value {
        toml::Value::String(text) => match Unmapped::parse_mapping(text) {
            Some(policy) => {
                config.unmapped_all = Some(Located {
                    value: policy,
                    line: at.line,
                    column: at.column,
                })
            }
            None => problems.push(bad(&format!("{text:?} is not a policy"))),
        },
        toml::Value::Table(columns) => {
            for (column, policy) in columns {
                match policy.as_str().and_then(Unmapped::parse_mapping) {
                    Some(policy) => config.unmapped_columns.push((
                        Located {
                            value: column.clone(),
                            line: at.line,
                            column: at.column,
                        },
                        policy,
                    )),
                    None => problems.push(bad(&format!("{column} = {policy} is not a policy"))),
                }
            }
        }
        other => problems.push(bad(&format!("found {}", other.type_str()))),
    }
}

fn problem<T>(at: &Located<T>, message: String) -> Problem {
    Problem {
        line: at.line,
        column: at.column,
        message,
    }
}

/// toml's message without its own location header (we print `file:line:column:` instead).
fn toml_message(err: &toml::de::Error) -> String {
    let message = err.message().trim();
    let message = message.strip_suffix('.').unwrap_or(message);
    format!("not a valid mapping file: {message}")
}

fn unwritten_reason(column: &Column) -> Unwritten {
    if column.identity {
        Unwritten::Identity
    } else if let Some(default) = &column.default {
        Unwritten::Default {
            default: default.clone(),
        }
    } else if column.not_null {
        Unwritten::Missing
    } else {
        Unwritten::Null
    }
}

fn columns_list(info: &TableInfo) -> String {
    let names: Vec<&str> = info.columns.iter().map(|c| c.name.as_str()).collect();
    names.join(", ")
}

/// The name checks of one table section.
fn validate_table(
    name: &str,
    config: &TableConfig,
    src: Option<&TableInfo>,
    tgt: Option<&TableInfo>,
    problems: &mut Vec<Problem>,
) {
    let source_column = |at: &Located<String>, what: &str, problems: &mut Vec<Problem>| {
        if let Some(src) = src
            && src.column(&at.value).is_none()
        {
            problems.push(problem(
                at,
                format!(
                    "[tables.{name}] {what}: source column {} does not exist in {} \
                     (its columns: {})",
                    at.value,
                    src.name,
                    columns_list(src)
                ),
            ));
        }
    };
    let target_column = |at: &Located<String>, what: &str, problems: &mut Vec<Problem>| {
        if let Some(tgt) = tgt
            && tgt.column(&at.value).is_none()
        {
            problems.push(problem(
                at,
                format!(
                    "[tables.{name}] {what}: target column {} does not exist in {} \
                     (its columns: {})",
                    at.value,
                    tgt.name,
                    columns_list(tgt)
                ),
            ));
        }
    };

    let mut fed: BTreeMap<&str, &Located<String>> = BTreeMap::new();
    for (from, to) in &config.rename {
        source_column(from, "rename", problems);
        target_column(to, "rename", problems);
        if let Some(previous) = fed.insert(&to.value, from) {
            problems.push(problem(
                to,
                format!(
                    "[tables.{name}] rename: {} and {} are both renamed to {}",
                    previous.value, from.value, to.value
                ),
            ));
        }
        if config.drop.iter().any(|d| d.value == from.value) {
            problems.push(problem(
                from,
                format!(
                    "[tables.{name}] rename: {} is also dropped; keep one of the two",
                    from.value
                ),
            ));
        }
        if config.set.iter().any(|(c, _)| c.value == to.value) {
            problems.push(problem(
                to,
                format!(
                    "[tables.{name}] rename: target column {} also has a set expression; \
                     keep one of the two",
                    to.value
                ),
            ));
        }
        // The same-named source column would feed this target column too.
        if let Some(src) = src
            && src.column(&to.value).is_some()
            && !config.rename.iter().any(|(f, _)| f.value == to.value)
            && !config.drop.iter().any(|d| d.value == to.value)
        {
            problems.push(problem(
                to,
                format!(
                    "[tables.{name}] rename: {} -> {}, but the source also has a column {}, \
                     which would be copied there too; drop or rename it",
                    from.value, to.value, to.value
                ),
            ));
        }
    }
    for column in &config.drop {
        source_column(column, "drop", problems);
    }
    for (column, _) in &config.set {
        target_column(column, "set", problems);
        if let Some(tgt) = tgt
            && tgt.column(&column.value).is_some_and(|c| c.generated)
        {
            problems.push(problem(
                column,
                format!(
                    "[tables.{name}.set] {}: a generated column is computed by the target and \
                     cannot be set",
                    column.value
                ),
            ));
        }
    }
    for column in &config.user_ids_add {
        source_column(column, "user_id_columns.add", problems);
    }
    for column in &config.user_ids_remove {
        // Removing a column of fmig's built-in list that the source lacks acknowledges the
        // list's mistake; any other name must exist.
        let listed_only = src.is_some_and(|s| s.column(&column.value).is_none())
            && config.also_of.is_none()
            && manifest::find(manifest::builtin(), &config.name.value)
                .is_some_and(|spec| spec.user_id_columns.contains(&column.value.as_str()));
        if !listed_only {
            source_column(column, "user_id_columns.remove", problems);
        }
    }
}

/// The name checks of a table's lookups: the looked-up table and every column exist, and the
/// target column is fed by nothing else.
fn validate_lookups(
    name: &str,
    config: &TableConfig,
    source: &Discovered,
    tgt: Option<&TableInfo>,
    problems: &mut Vec<Problem>,
) {
    for (column, lookup) in &config.lookups {
        let at = &lookup.table;
        let entry = format!("[tables.{name}.set] {}", column.value);
        if let Some(tgt) = tgt
            && tgt.column(&column.value).is_none()
        {
            problems.push(problem(
                column,
                format!(
                    "{entry}: target column {} does not exist in {} (its columns: {})",
                    column.value,
                    tgt.name,
                    columns_list(tgt)
                ),
            ));
        }
        if config.rename.iter().any(|(_, to)| to.value == column.value) {
            problems.push(problem(
                column,
                format!("{entry}: the column is also the target of a rename; keep one of the two"),
            ));
        }
        let Some(looked_in) = source.tables.get(&at.value) else {
            problems.push(problem(
                at,
                format!(
                    "{entry}: lookup = {:?}: the source has no table {}; a lookup reads an \
                     exported source table",
                    at.value, at.value
                ),
            ));
            continue;
        };
        let own = source.tables.get(name);
        for (theirs, mine) in &lookup.matches {
            if looked_in.column(theirs).is_none() {
                problems.push(problem(
                    at,
                    format!(
                        "{entry}: match: {} has no column {theirs} (its columns: {})",
                        at.value,
                        columns_list(looked_in)
                    ),
                ));
            }
            if let Some(own) = own
                && own.column(mine).is_none()
            {
                problems.push(problem(
                    at,
                    format!(
                        "{entry}: match: {theirs} = {mine:?}, but {name} has no column {mine} \
                         (its columns: {})",
                        columns_list(own)
                    ),
                ));
            }
        }
        if looked_in.column(&lookup.take).is_none() {
            problems.push(problem(
                at,
                format!(
                    "{entry}: take = {:?}: {} has no such column (its columns: {})",
                    lookup.take,
                    at.value,
                    columns_list(looked_in)
                ),
            ));
        }
    }
}

/// The type of a source column in the row `src` that expressions see: the source type when it is
/// built in (the same on every server), `text` for user-defined types (enums, domains), whose
/// namesake in the target may differ: an enum that lost a label would reject the very rows a
/// `set` expression is there to fix.
pub fn staging_type(type_oid: u32, type_name: &str) -> &str {
    if type_oid < crate::pg_oid::FIRST_NORMAL_OBJECT_ID {
        type_name
    } else {
        "text"
    }
}

/// `CAST((expr) AS type)`: how every expression is applied, so the result has the target
/// column's type whatever the expression's own type.
pub fn cast_sql(expression: &str, target_type: &str) -> String {
    format!("CAST(({expression}) AS {target_type})")
}

/// The statement `plan` prepares on the target to check an expression without running it:
/// `SELECT CAST((expr) AS type) FROM (SELECT NULL::t1 AS "c1", ...) AS src LIMIT 0`.
/// `source_columns` are (name, type as it exists on the target).
pub fn expression_probe(
    expression: &str,
    target_type: &str,
    source_columns: &[(&str, &str)],
) -> String {
    let row: Vec<String> = source_columns
        .iter()
        .map(|(name, ty)| format!("NULL::{ty} AS {}", quote_ident(name)))
        .collect();
    // A table without columns still needs a one-row source.
    let row = if row.is_empty() {
        "SELECT".to_string()
    } else {
        format!("SELECT {}", row.join(", "))
    };
    format!(
        "SELECT {} FROM ({row}) AS src LIMIT 0",
        cast_sql(expression, target_type)
    )
}

/// Why `expression` is not one self-contained SQL expression, judged on its tokens the way
/// PostgreSQL's lexer sees them (with `standard_conforming_strings`, which every fmig session
/// sets): a `;`, a comment, or a parenthesis that closes one the expression did not open
/// could carry the text outside the `CAST((...) AS type)` it is placed in, into the rest of
/// the statement fmig builds around it. String literals (`'...'`, `E'...'`, `$tag$...$tag$`)
/// and quoted identifiers are skipped. `None` when it is fine.
pub fn expression_problem(expression: &str) -> Option<String> {
    let b = expression.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    // The index after the closing `quote` of the literal opening at `start`, or None.
    let closing = |start: usize, quote: u8, backslash_escapes: bool| -> Option<usize> {
        let mut i = start + 1;
        while i < b.len() {
            if backslash_escapes && b[i] == b'\\' {
                i += 2;
            } else if b[i] == quote {
                if b.get(i + 1) == Some(&quote) {
                    i += 2;
                } else {
                    return Some(i + 1);
                }
            } else {
                i += 1;
            }
        }
        None
    };
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        let next = b.get(i + 1).copied();
        match b[i] {
            b'\'' => {
                // E'...' (a lone e before the quote) takes backslash escapes.
                let escapes =
                    i > 0 && matches!(b[i - 1], b'e' | b'E') && (i < 2 || !ident(b[i - 2]));
                match closing(i, b'\'', escapes) {
                    Some(end) => i = end,
                    None => return Some("a string literal is not closed".into()),
                }
                continue;
            }
            b'"' => {
                match closing(i, b'"', false) {
                    Some(end) => i = end,
                    None => return Some("a quoted identifier is not closed".into()),
                }
                continue;
            }
            b'$' if i == 0 || !ident(b[i - 1]) => {
                // $tag$ ... $tag$ (tag empty or an identifier); $1 is a parameter, not a quote.
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80))
                    .map(|n| i + 1 + n);
                if let Some(end) = tag_end
                    && b[end] == b'$'
                    && !b[i + 1].is_ascii_digit()
                {
                    let tag = &b[i..=end];
                    match b[end + 1..].windows(tag.len()).position(|w| w == tag) {
                        Some(n) => i = end + 1 + n + tag.len(),
                        None => return Some("a dollar-quoted string is not closed".into()),
                    }
                    continue;
                }
            }
            b';' => return Some("it contains `;`, which would end the statement".into()),
            b'-' if next == Some(b'-') => return Some("it contains a `--` comment".into()),
            b'/' if next == Some(b'*') => return Some("it contains a `/*` comment".into()),
            b'(' => depth += 1,
            b')' if depth == 0 => {
                return Some("a `)` closes a parenthesis the expression did not open".into());
            }
            b')' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    (depth > 0).then(|| "a `(` is not closed".to_string())
}

/// Whether an SQL expression names `column`, as a bare word (case-insensitively, as
/// PostgreSQL folds it) or as a quoted identifier, outside string literals. A textual check:
/// good enough to tell "this source column feeds an expression" from "it is forgotten".
pub fn mentions(expression: &str, column: &str) -> bool {
    let chars: Vec<char> = expression.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            i += 1;
            while i < chars.len() {
                if chars[i] == '\'' {
                    if chars.get(i + 1) == Some(&'\'') {
                        i += 2;
                        continue;
                    }
                    break;
                }
                i += 1;
            }
            i += 1;
        } else if c == '"' {
            let mut name = String::new();
            i += 1;
            while i < chars.len() {
                if chars[i] == '"' {
                    if chars.get(i + 1) == Some(&'"') {
                        name.push('"');
                        i += 2;
                        continue;
                    }
                    break;
                }
                name.push(chars[i]);
                i += 1;
            }
            i += 1;
            if name == column {
                return true;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$')
            {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.to_lowercase() == column {
                return true;
            }
        } else {
            i += 1;
        }
    }
    false
}

/// `# text` wrapped at `width` columns, continuation lines indented (`#   more`), so a reader
/// tells a comment from a commented-out entry.
fn wrap_comment(text: &str, width: usize) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        let prefix_only = line == "#" || line == "#  ";
        if !prefix_only && line.chars().count() + 1 + word.chars().count() > width {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#  ");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}

/// A TOML string for `value`, quoted the way the `toml` crate writes strings.
fn toml_string(value: &str) -> String {
    toml::Value::String(value.to_string()).to_string()
}

/// A TOML key: bare when it can be, quoted otherwise.
pub fn toml_key(key: &str) -> String {
    if !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        key.to_string()
    } else {
        toml_string(key)
    }
}

/// One difference to describe in a template: a comment and, when a mapping entry settles it,
/// the entry.
#[derive(Clone, Debug)]
pub struct TemplateNote {
    pub table: String,
    /// `BLOCKING`/`lossy` and what is wrong, one line.
    pub comment: String,
    pub suggestion: Option<Suggestion>,
}

/// Renders a commented starting mapping: one section per table with differences; every entry
/// is commented out (`# key = value`) so the operator reviews each before removing the `# `.
/// Entries of the same key in one table are merged into one line (`drop = ["a", "b"]`).
pub fn render_template(header: &str, tables_in_order: &[&str], notes: &[TemplateNote]) -> String {
    let mut out = String::new();
    for line in header.lines() {
        out.push_str(format!("# {line}").trim_end());
        out.push('\n');
    }
    out.push_str(TEMPLATE_HELP);
    for table in tables_in_order {
        let notes: Vec<&TemplateNote> = notes.iter().filter(|n| n.table == *table).collect();
        if notes.is_empty() {
            continue;
        }
        let key = toml_key(table);
        out.push_str(&format!("\n[tables.{key}]\n"));
        for n in &notes {
            out.push_str(&wrap_comment(&n.comment, 98));
        }
        // Both halves of a rename suggest it: each entry once.
        let mut suggestions: Vec<&Suggestion> = Vec::new();
        for s in notes.iter().filter_map(|n| n.suggestion.as_ref()) {
            if !suggestions.contains(&s) {
                suggestions.push(s);
            }
        }
        if suggestions.iter().any(|s| matches!(s, Suggestion::Skip)) {
            out.push_str("# skip = true\n");
        }
        let renames: Vec<String> = suggestions
            .iter()
            .filter_map(|s| match s {
                Suggestion::Rename { from, to } => {
                    Some(format!("{} = {}", toml_key(from), toml_string(to)))
                }
                _ => None,
            })
            .collect();
        if !renames.is_empty() {
            out.push_str(&format!("# rename = {{ {} }}\n", renames.join(", ")));
        }
        let list = |pick: &dyn Fn(&Suggestion) -> Option<String>| -> Vec<String> {
            suggestions
                .iter()
                .filter_map(|s| pick(s))
                .map(|c| toml_string(&c))
                .collect()
        };
        let drops = list(&|s| match s {
            Suggestion::Drop { column } => Some(column.clone()),
            _ => None,
        });
        if !drops.is_empty() {
            out.push_str(&format!("# drop = [{}]\n", drops.join(", ")));
        }
        let adds = list(&|s| match s {
            Suggestion::AddUserId { column } => Some(column.clone()),
            _ => None,
        });
        let removes = list(&|s| match s {
            Suggestion::RemoveUserId { column } => Some(column.clone()),
            _ => None,
        });
        let mut parts = Vec::new();
        if !adds.is_empty() {
            parts.push(format!("add = [{}]", adds.join(", ")));
        }
        if !removes.is_empty() {
            parts.push(format!("remove = [{}]", removes.join(", ")));
        }
        if !parts.is_empty() {
            out.push_str(&format!("# user_id_columns = {{ {} }}\n", parts.join(", ")));
        }
        let sets: Vec<String> = suggestions
            .iter()
            .filter_map(|s| match s {
                Suggestion::Set { column, expression } => Some(format!(
                    "# {} = {}\n",
                    toml_key(column),
                    toml_string(expression)
                )),
                Suggestion::Lookup {
                    column,
                    table,
                    matches,
                    take,
                } => Some(format!(
                    "# {} = {{ lookup = {}, match = {{ {} }}, take = {}, missing = \"null\" }}\n",
                    toml_key(column),
                    toml_string(table),
                    matches
                        .iter()
                        .map(|(theirs, own)| format!("{} = {}", toml_key(theirs), toml_string(own)))
                        .collect::<Vec<_>>()
                        .join(", "),
                    toml_string(take)
                )),
                _ => None,
            })
            .collect();
        if !sets.is_empty() {
            out.push_str(&format!("[tables.{key}.set]\n"));
            for line in sets {
                out.push_str(&line);
            }
        }
    }
    out
}

const TEMPLATE_HELP: &str = "#
# One [tables.<source table>] section per table whose source and target differ. Each difference
# is described in a comment; where a mapping entry settles it, the entry follows, commented out.
# Review each entry, edit it if needed, remove its leading \"# \", then run `fmig plan` again until
# it reports nothing blocking.
#
# Keys of a table section (all optional):
#   rename = { source_column = \"target_column\" }
#   drop = [\"source_column\"]          leave the column's data behind, on purpose
#   user_id_columns = { add = [\"col\"], remove = [\"col\"] }
#                                     columns holding auth.users ids, relative to fmig's list
#   skip = true                       do not migrate the table
#   target = \"name\"                   the table's name in the target
# and, in a [tables.<source table>.set] section:
#   target_column = \"SQL expression\"
#       evaluated on the target for every row; the source row is `src`, with the source's column
#       names and types, user ids already rewritten; the result is cast to the column's type.
";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_expressions_cannot_reach_outside_their_parentheses() {
        for fine in [
            "CASE role::text WHEN 'staff' THEN 'operator' ELSE role::text END::public.app_role",
            "(SELECT p.id FROM public.profiles AS p WHERE p.user_id = src.profile_id)",
            "'it''s; -- not a comment (' || \"odd;name)\"",
            "E'a\\'b; )' || $$ ; ) -- $$ || $x$ ( $x$",
            "regexp_replace(name, '\\s+', ' ')",
            "a$b + 1",
            "1 - -1",
            "10 / 2",
        ] {
            assert_eq!(expression_problem(fine), None, "{fine}");
        }
        for (bad, why) in [
            ("NULL); DROP TABLE public.areas; --", "`)` closes"),
            ("NULL) AS text) FROM (SELECT 1) AS x --", "`)` closes"),
            ("1; DELETE FROM t", "`;`"),
            ("1 -- the rest", "`--`"),
            ("1 /* x */", "`/*`"),
            ("(1", "`(` is not closed"),
            ("'open", "string literal"),
            ("\"open", "quoted identifier"),
            ("$q$ open", "dollar-quoted"),
            // Standard strings take no backslash escape: the quote ends the literal here.
            ("'\\') AS int) --'", "`)` closes"),
        ] {
            let got = expression_problem(bad).unwrap_or_default();
            assert!(got.contains(why), "{bad}: {got}");
        }
        let err = ColumnMap::parse(
            "[tables.areas.set]\ndescription = \"NULL); DROP TABLE x; --\"\n",
            Path::new("fmig.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("fmig.toml:2:15: [tables.areas.set] description: a `)`"),
            "{err}"
        );
    }
    use crate::catalog::Column;

    fn parse(text: &str) -> std::result::Result<ColumnMap, MappingErrors> {
        ColumnMap::parse(text, Path::new("fmig.toml"))
    }

    /// The validation error of mapping `text` against the pair, as displayed.
    fn validation_error(text: &str, source: &Discovered, target: &Discovered) -> String {
        parse(text)
            .unwrap()
            .validate(manifest::builtin(), source, target)
            .unwrap_err()
            .to_string()
    }

    fn column(name: &str, type_name: &str) -> Column {
        Column {
            name: name.into(),
            type_oid: 25,
            type_name: type_name.into(),
            type_kind: 'b',
            type_category: 'S',
            base_oid: None,
            not_null: false,
            default: None,
            generated: false,
            identity: false,
        }
    }

    fn table(name: &str, columns: Vec<Column>) -> TableInfo {
        TableInfo {
            name: name.into(),
            partitioned: false,
            has_primary_key: true,
            columns,
        }
    }

    fn discovered(tables: Vec<TableInfo>) -> Discovered {
        Discovered {
            schema: "public".into(),
            tables: tables.into_iter().map(|t| (t.name.clone(), t)).collect(),
            ..Discovered::default()
        }
    }

    fn logs_pair() -> (Discovered, Discovered) {
        let mut id = column("id", "uuid");
        id.not_null = true;
        let source = discovered(vec![table(
            "manual_temperature_logs",
            vec![
                id.clone(),
                column("profile_id", "uuid"),
                column("logged_at", "timestamp with time zone"),
                column("legacy", "text"),
                column("unit_label", "text"),
                column("notes", "text"),
            ],
        )]);
        let mut recorded = column("recorded_at", "timestamp with time zone");
        recorded.not_null = true;
        let mut archived = column("is_archived", "boolean");
        archived.not_null = true;
        archived.default = Some("false".into());
        let mut unit = column("temp_unit", "text");
        unit.not_null = true;
        let mut generated = column("note_length", "integer");
        generated.generated = true;
        let target = discovered(vec![table(
            "manual_temperature_logs",
            vec![
                id,
                column("profile_id", "uuid"),
                recorded,
                column("notes", "character varying(50)"),
                archived,
                unit,
                generated,
                column("label", "text"),
            ],
        )]);
        (source, target)
    }

    fn spec() -> &'static TableSpec {
        manifest::find(manifest::builtin(), "manual_temperature_logs").unwrap()
    }

    #[test]
    fn a_missing_default_file_is_no_mapping_but_a_named_one_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let err = ColumnMap::load(Some(&missing)).unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
        assert!(err.contains("nope.toml"), "{err}");
        // (The default path is relative to the working directory, which tests do not change.)
        assert!(ColumnMap::empty().is_empty());
    }

    #[test]
    fn parses_filters_policies_lookups_and_uncompared_values() {
        let map = parse(
            "[tables.sensor_readings]\n\
             where = \"temperature IS NOT NULL\"\n\
             unmapped = \"skip_row\"\n\
             [tables.user_roles]\n\
             unmapped = { user_id = \"null\" }\n\
             [tables.manual_temperature_logs.set]\n\
             profile_id = { lookup = \"profiles\", match = { user_id = \"logged_by\" }, take = \"id\" }\n\
             [tables.ttn_connections.set]\n\
             webhook_secret = { sql = \"md5(random()::text)\", compare = false }\n",
        )
        .unwrap();
        let readings = map.table("sensor_readings").unwrap();
        assert_eq!(
            readings.filter.as_ref().unwrap().value,
            "temperature IS NOT NULL"
        );
        assert_eq!(
            readings.unmapped_all.as_ref().unwrap().value,
            Unmapped::SkipRow
        );
        let roles = map.table("user_roles").unwrap();
        assert_eq!(roles.unmapped_columns[0].0.value, "user_id");
        assert_eq!(roles.unmapped_columns[0].1, Unmapped::Null);
        let logs = map.table("manual_temperature_logs").unwrap();
        let (column, lookup) = &logs.lookups[0];
        assert_eq!(column.value, "profile_id");
        assert_eq!(lookup.table.value, "profiles");
        assert_eq!(lookup.table.line, 7);
        assert_eq!(lookup.matches, vec![("user_id".into(), "logged_by".into())]);
        assert_eq!(lookup.take, "id");
        assert!(!lookup.missing_null);
        assert!(logs.set.is_empty(), "a lookup is not an SQL expression");
        let ttn = map.table("ttn_connections").unwrap();
        assert_eq!(ttn.set[0].1.value, "md5(random()::text)");
        assert!(ttn.not_compared.contains("webhook_secret"));
    }

    #[test]
    fn misused_new_keys_name_the_line_and_what_to_write() {
        for (text, expected) in [
            (
                "[tables.alerts]\nunmapped = \"drop\"\n",
                "fmig.toml:2:12: [tables.alerts] unmapped: \"drop\" is not a policy",
            ),
            (
                "[tables.alerts.set]\nx = { lookup = \"profiles\", take = \"id\" }\n",
                "fmig.toml:2:5: [tables.alerts.set] x: a lookup needs match",
            ),
            (
                "[tables.alerts.set]\nx = { lookup = \"p\", match = { a = \"b\" }, take = \"id\", missing = \"zero\" }\n",
                "missing = \"zero\": write \"null\"",
            ),
            (
                "[tables.alerts.set]\nx = { sql = \"1\", compare = \"no\" }\n",
                "compare must be true or false",
            ),
            (
                "[tables.alerts.set]\nx = { sql = \"1\", comapre = false }\n",
                "unknown key(s) comapre",
            ),
            (
                "[tables.alerts]\nwhere = \"true; DROP TABLE x\"\n",
                "[tables.alerts] where: it contains `;`",
            ),
            ("[tables.alerts.set]\nx = 3\n", "found integer"),
            (
                "[[tables.alerts.also]]\nwhere = \"true\"\n",
                "fmig.toml:1:1: [[tables.alerts.also]] entry 1: target is missing",
            ),
            (
                "[[tables.alerts.also]]\ntarget = \"t\"\nskip = true\n",
                "[[tables.alerts.also]] skip: not allowed in an also entry",
            ),
            (
                "[[tables.alerts.also]]\ntarget = \"t\"\nwhere = \"\"\n",
                "[tables.alerts.also] where: the condition is empty",
            ),
        ] {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text}\n{err}");
        }
    }

    #[test]
    fn an_also_entry_is_a_unit_that_writes_only_its_own_columns() {
        let (source, mut target) = logs_pair();
        let mut id = column("id", "uuid");
        id.not_null = true;
        let mut kind = column("kind", "text");
        kind.not_null = true;
        target.tables.insert(
            "notes".into(),
            table("notes", vec![id, column("body", "text"), kind]),
        );
        let text = "[tables.manual_temperature_logs]\n\
                    drop = [\"legacy\", \"unit_label\"]\n\
                    rename = { logged_at = \"recorded_at\" }\n\
                    [tables.manual_temperature_logs.set]\n\
                    temp_unit = \"'C'\"\n\
                    [[tables.manual_temperature_logs.also]]\n\
                    target = \"notes\"\n\
                    where = \"notes IS NOT NULL\"\n\
                    rename = { notes = \"body\" }\n\
                    [tables.manual_temperature_logs.also.set]\n\
                    kind = \"'log'\"\n";
        let map = parse(text).unwrap();
        map.validate(manifest::builtin(), &source, &target).unwrap();
        let units = map.resolve_units(spec(), &source, &target).unwrap();
        assert_eq!(units.len(), 2);
        assert_eq!(units[0].unit, "manual_temperature_logs");
        assert!(!units[0].also);
        let note = &units[1];
        assert_eq!(note.unit, "manual_temperature_logs+notes");
        assert!(note.also);
        assert_eq!(note.target_table, "notes");
        assert_eq!(note.filter.as_deref(), Some("notes IS NOT NULL"));
        let written: Vec<&str> = note.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(written, ["id", "body", "kind"]);
        // The source columns it does not take are the table's own unit's business.
        assert!(note.unmapped.is_empty(), "{:?}", note.unmapped);
        assert_eq!(
            map.unit_targets("manual_temperature_logs"),
            ["manual_temperature_logs", "notes"]
        );

        // A column the table's own target has no place for is carried by the also entry:
        // not lost, so not unmapped.
        let text = text.replace("drop = [\"legacy\", \"unit_label\"]", "drop = [\"legacy\"]");
        let with_label = text.replace("kind = \"'log'\"", "kind = \"unit_label\"");
        let map = parse(&with_label).unwrap();
        let units = map.resolve_units(spec(), &source, &target).unwrap();
        assert!(units[0].unmapped.is_empty(), "{:?}", units[0].unmapped);
        assert!(
            units[0]
                .used_by_expressions
                .contains(&"unit_label".to_string())
        );
        let map = parse(&text).unwrap();
        let units = map.resolve_units(spec(), &source, &target).unwrap();
        assert_eq!(units[0].unmapped, ["unit_label"]);

        // Names are checked against the also entry's own target table.
        let wrong = text.replace("kind = ", "kinds = ");
        let err = validation_error(&wrong, &source, &target);
        assert!(
            err.contains("[tables.manual_temperature_logs.also] set: target column kinds does not exist in notes"),
            "{err}"
        );
        let missing = text.replace("target = \"notes\"", "target = \"nowhere\"");
        let err = validation_error(&missing, &source, &target);
        assert!(
            err.contains("table nowhere does not exist in the target"),
            "{err}"
        );
    }

    #[test]
    fn removing_a_listed_user_id_column_the_source_lacks_acknowledges_the_list() {
        let (mut source, target) = logs_pair();
        let logs = source.tables.get_mut("manual_temperature_logs").unwrap();
        logs.columns.retain(|c| c.name != "profile_id");
        let ok = "[tables.manual_temperature_logs]\n\
                  user_id_columns = { remove = [\"profile_id\"] }\n\
                  drop = [\"legacy\", \"unit_label\"]\n";
        parse(ok)
            .unwrap()
            .validate(manifest::builtin(), &source, &target)
            .unwrap();
        // A name that is neither in the source nor in fmig's list is still a mistake.
        let wrong = ok.replace("remove = [\"profile_id\"]", "remove = [\"profle_id\"]");
        let err = validation_error(&wrong, &source, &target);
        assert!(
            err.contains("user_id_columns.remove: source column profle_id does not exist"),
            "{err}"
        );
    }

    #[test]
    fn parses_every_key_with_its_line() {
        let map = parse(
            "# comment\n\
             [tables.manual_temperature_logs]\n\
             rename = { logged_at = \"recorded_at\" }\n\
             drop = [\"legacy\"]\n\
             user_id_columns = { add = [\"unit_label\"], remove = [\"profile_id\"] }\n\
             target = \"manual_temperature_logs\"\n\
             \n\
             [tables.manual_temperature_logs.set]\n\
             temp_unit = \"'celsius'\"\n\
             [tables.door_events]\n\
             skip = true\n",
        )
        .unwrap();
        let t = map.table("manual_temperature_logs").unwrap();
        assert_eq!(t.name.line, 2);
        assert_eq!(t.rename[0].0.value, "logged_at");
        assert_eq!(t.rename[0].1.value, "recorded_at");
        assert_eq!((t.rename[0].0.line, t.rename[0].0.column), (3, 12));
        assert_eq!(t.drop[0].value, "legacy");
        assert_eq!(t.drop[0].line, 4);
        assert_eq!(t.user_ids_add[0].value, "unit_label");
        assert_eq!(t.user_ids_remove[0].value, "profile_id");
        assert_eq!(t.set[0].0.value, "temp_unit");
        assert_eq!(t.set[0].1.value, "'celsius'");
        assert_eq!(t.set[0].1.line, 9);
        assert!(map.is_skipped("door_events"));
        assert!(!map.is_skipped("manual_temperature_logs"));
        assert_eq!(map.target_name("door_events"), "door_events");
    }

    #[test]
    fn syntax_errors_and_unknown_keys_name_file_line_and_problem() {
        let err = parse("[tables.sites]\nrename = { a = \"b\" \n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("fmig.toml:2:"), "{text}");
        assert!(text.contains("not a valid mapping file"), "{text}");

        let err = parse("[tables.sites]\n\nrenmae = { a = \"b\" }\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("fmig.toml:3:1:"), "{text}");
        assert!(text.contains("unknown field `renmae`"), "{text}");

        let err = parse("[tables.sites]\ndrop = \"created_by\"\n").unwrap_err();
        assert!(err.to_string().starts_with("fmig.toml:2:"), "{err}");

        let err = parse("[sites]\ndrop = []\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `sites`"), "{err}");

        let err = parse("[tables.sites.set]\nname = \"  \"\n").unwrap_err();
        assert!(err.to_string().contains("expression is empty"), "{err}");
    }

    #[test]
    fn unknown_tables_and_columns_are_errors_with_their_lines() {
        let (source, target) = logs_pair();
        let map = parse(
            "[tables.manual_temperature_log]\n\
             skip = true\n\
             [tables.manual_temperature_logs]\n\
             rename = { loged_at = \"recorded_at\", notes = \"remarks\" }\n\
             drop = [\"nothing\"]\n\
             [tables.manual_temperature_logs.set]\n\
             note_length = \"1\"\n\
             nope = \"1\"\n",
        )
        .unwrap();
        let err = map
            .validate(manifest::builtin(), &source, &target)
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("has 6 problems"), "{text}");
        assert!(
            text.contains("fmig.toml:1:1: [tables.manual_temperature_log]: manual_temperature_log is not one of fmig's tables"),
            "{text}"
        );
        assert!(
            text.contains("fmig.toml:4:12: [tables.manual_temperature_logs] rename: source column loged_at does not exist"),
            "{text}"
        );
        assert!(
            text.contains("fmig.toml:4:46: [tables.manual_temperature_logs] rename: target column remarks does not exist"),
            "{text}"
        );
        assert!(text.contains("fmig.toml:5:9:"), "{text}");
        assert!(
            text.contains("fmig.toml:7:1: [tables.manual_temperature_logs.set] note_length: a generated column"),
            "{text}"
        );
        assert!(
            text.contains(
                "fmig.toml:8:1: [tables.manual_temperature_logs] set: target column nope"
            ),
            "{text}"
        );
    }

    #[test]
    fn a_rename_onto_a_column_the_source_also_has_is_refused() {
        let (source, target) = logs_pair();
        let map =
            parse("[tables.manual_temperature_logs]\nrename = { legacy = \"notes\" }\n").unwrap();
        let err = map
            .validate(manifest::builtin(), &source, &target)
            .unwrap_err()
            .to_string();
        assert!(err.contains("the source also has a column notes"), "{err}");
    }

    #[test]
    fn resolution_follows_set_rename_name_then_default() {
        let (source, target) = logs_pair();
        let map = parse(
            "[tables.manual_temperature_logs]\n\
             rename = { logged_at = \"recorded_at\" }\n\
             drop = [\"legacy\"]\n\
             [tables.manual_temperature_logs.set]\n\
             temp_unit = \"'celsius'\"\n\
             label = \"upper(unit_label)\"\n",
        )
        .unwrap();
        map.validate(manifest::builtin(), &source, &target).unwrap();
        let t = map.resolve(spec(), &source, &target).unwrap();
        let written: Vec<(&str, String)> = t
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.select_sql()))
            .collect();
        assert_eq!(
            written,
            [
                ("id", "src.\"id\"".to_string()),
                ("profile_id", "src.\"profile_id\"".to_string()),
                ("recorded_at", "src.\"logged_at\"".to_string()),
                ("notes", "src.\"notes\"".to_string()),
                ("temp_unit", "CAST(('celsius') AS text)".to_string()),
                ("label", "CAST((upper(unit_label)) AS text)".to_string()),
            ]
        );
        assert_eq!(
            t.unwritten,
            [
                UnwrittenColumn {
                    name: "is_archived".into(),
                    reason: Unwritten::Default {
                        default: "false".into()
                    }
                },
                UnwrittenColumn {
                    name: "note_length".into(),
                    reason: Unwritten::Generated
                },
            ]
        );
        assert_eq!(t.dropped, ["legacy"]);
        assert_eq!(t.used_by_expressions, ["unit_label"]);
        assert!(t.unmapped.is_empty());
        assert_eq!(t.target_of("logged_at").unwrap().name, "recorded_at");

        // Without a mapping: the renamed and source-only columns are unmapped, and the NOT NULL
        // target-only columns are missing.
        let t = ColumnMap::empty()
            .resolve(spec(), &source, &target)
            .unwrap();
        assert_eq!(t.unmapped, ["logged_at", "legacy", "unit_label"]);
        let missing: Vec<&str> = t
            .unwritten
            .iter()
            .filter(|u| u.reason == Unwritten::Missing)
            .map(|u| u.name.as_str())
            .collect();
        assert_eq!(missing, ["recorded_at", "temp_unit"]);
        assert_eq!(t.user_id_columns, ["profile_id"]);
    }

    #[test]
    fn skipped_and_renamed_tables() {
        let (source, mut target) = logs_pair();
        let mut renamed = target.tables.remove("manual_temperature_logs").unwrap();
        renamed.name = "temperature_logs".into();
        target.tables.insert(renamed.name.clone(), renamed);
        let map = parse(
            "[tables.manual_temperature_logs]\n\
             target = \"temperature_logs\"\n\
             rename = { logged_at = \"recorded_at\" }\n",
        )
        .unwrap();
        map.validate(manifest::builtin(), &source, &target).unwrap();
        let t = map.resolve(spec(), &source, &target).unwrap();
        assert_eq!(t.target_table, "temperature_logs");
        assert_eq!(t.target_of("logged_at").unwrap().name, "recorded_at");

        let map = parse("[tables.manual_temperature_logs]\ntarget = \"nope\"\n").unwrap();
        let err = map
            .validate(manifest::builtin(), &source, &target)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("fmig.toml:2:10: [tables.manual_temperature_logs] target: table nope"),
            "{err}"
        );

        let map = parse("[tables.manual_temperature_logs]\nskip = true\n").unwrap();
        let t = map.resolve(spec(), &source, &target).unwrap();
        assert!(t.skip);
        assert!(t.columns.is_empty() && t.unmapped.is_empty());
    }

    #[test]
    fn user_id_columns_add_and_remove_relative_to_the_builtin_list() {
        let (source, _) = logs_pair();
        let map = parse(
            "[tables.manual_temperature_logs]\n\
             user_id_columns = { add = [\"unit_label\"], remove = [\"profile_id\"] }\n",
        )
        .unwrap();
        assert_eq!(map.user_id_columns(spec(), &source), ["unit_label"]);
        let err = parse("[tables.x]\nuser_id_columns = { add = [\"a\"], remove = [\"a\"] }\n")
            .unwrap_err();
        assert!(err.to_string().contains("both added and removed"), "{err}");
    }

    #[test]
    fn probes_quote_names_and_cast_to_the_target_type() {
        assert_eq!(
            expression_probe(
                "round(temp)::int",
                "integer",
                &[("temp", "numeric"), ("we\"ird", "text")]
            ),
            "SELECT CAST((round(temp)::int) AS integer) FROM (SELECT NULL::numeric AS \"temp\", \
             NULL::text AS \"we\"\"ird\") AS src LIMIT 0"
        );
    }

    #[test]
    fn mentions_skips_string_literals() {
        assert!(mentions("upper(unit_label)", "unit_label"));
        assert!(mentions("src.\"Unit\" || 'x'", "Unit"));
        assert!(mentions("UNIT_LABEL", "unit_label"));
        assert!(!mentions("'unit_label'", "unit_label"));
        assert!(!mentions("unit_label_2", "unit_label"));
        assert!(!mentions("'it''s unit_label'", "unit_label"));
    }

    #[test]
    fn the_template_parses_and_uncommenting_its_entries_applies_them() {
        let notes = vec![
            TemplateNote {
                table: "user_roles".into(),
                comment: "BLOCKING user_id: only in the source".into(),
                suggestion: Some(Suggestion::Rename {
                    from: "user_id".into(),
                    to: "profile_id".into(),
                }),
            },
            TemplateNote {
                table: "user_roles".into(),
                comment: "BLOCKING role: 'staff' is not a label of app_role".into(),
                suggestion: Some(Suggestion::Set {
                    column: "role".into(),
                    expression: "CASE \"role\"::text WHEN 'staff' THEN 'operator' ELSE \"role\"::text END::\"public\".\"app_role\"".into(),
                }),
            },
            TemplateNote {
                table: "organizations".into(),
                comment: "BLOCKING stripe_legacy_id".into(),
                suggestion: Some(Suggestion::Drop {
                    column: "stripe_legacy_id".into(),
                }),
            },
            TemplateNote {
                table: "subscriptions".into(),
                comment: "lossy seats: numeric -> integer".into(),
                suggestion: None,
            },
        ];
        let text = render_template(
            "generated\nby a test",
            &["organizations", "subscriptions", "user_roles"],
            &notes,
        );
        assert!(text.starts_with("# generated\n# by a test\n"), "{text}");
        assert_eq!(
            wrap_comment("lossy seats: numeric -> integer: 3 values are rounded", 30),
            "# lossy seats: numeric ->\n#   integer: 3 values are\n#   rounded\n"
        );
        let map = parse(&text).unwrap();
        assert!(map.table("user_roles").unwrap().rename.is_empty());

        let uncommented: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(entry) if entry.contains(" = ") && !entry.starts_with(' ') => {
                    format!("{entry}\n")
                }
                _ => format!("{l}\n"),
            })
            .collect();
        let map = parse(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let roles = map.table("user_roles").unwrap();
        assert_eq!(roles.rename[0].1.value, "profile_id");
        assert!(
            roles.set[0]
                .1
                .value
                .contains("WHEN 'staff' THEN 'operator'")
        );
        assert_eq!(
            map.table("organizations").unwrap().drop[0].value,
            "stripe_legacy_id"
        );
    }
}
