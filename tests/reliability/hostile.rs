//! The hostile input corpus: one scenario per broken input of `tests/fixtures/hostile/cases.toml`.
//!
//! Each case starts from a copy of one valid export of a small seed (made once, lazily, for
//! the whole group: export directory, `user-mapping.json`, the fixture `fmig.toml`), applies
//! the case's edits (cut a file, replace bytes, lie in `metadata.json`, write a `.env`...), and
//! runs the real `fmig` binary (`import`, `verify`, `plan`, `export`, `migrate-users`) on it,
//! each command into a fresh copy of the empty target database. A run keeps its promise when:
//!
//! - it exits with the case's code (never 101, never a signal) within [`TIMEOUT`], else it is
//!   killed and counted as a hang;
//! - its output holds every expected fragment, no "panicked", and never the database password;
//! - nothing was written: the target database has no rows and no `fmig` schema, and the case's
//!   work directory (the export, the mapping, `fmig.toml`) is byte for byte as before, apart
//!   from the log file.
//!
//! The first cases are controls: the unedited copy must import (and its users plan), so every
//! refusal below is the edit's doing and not a broken setup. `verify` runs against a copy of
//! the target with the unedited export imported, limited with `--table` to the tables whose
//! files the case edits (else `profiles`, whose user ids need the mapping). The 100 MB line is
//! generated at test time.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::common::{self, Setup, TARGET_DB, nonempty_tables};
use crate::support::cli::Workdir;
use crate::support::cluster::Cluster;
use crate::support::seed::SeedConfig;
use crate::{Outcome, Scenario};

/// Longer than any honest run of these small inputs (a debug build reads 100 MB in seconds).
const TIMEOUT: Duration = Duration::from_secs(120);

/// The export every case starts from, in the work directory of [`Setup`].
const EXPORT: &str = "out";

/// The same export made with `--gzip`, made when a case first needs it.
const EXPORT_GZIP: &str = "out-gzip";

/// The target with the unedited export imported: what `verify` cases compare.
const IMPORTED_DB: &str = "imported";

/// One broken input, as written in `cases.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    /// The scenario name (`hostile: <name>`).
    name: String,
    /// What the operator has in hand, one phrase, for the docs.
    input: String,
    /// The commands fed with it, each run once (`import`, `verify`, `plan`, `export`,
    /// `migrate-users`); see [`Command`].
    commands: Vec<String>,
    #[serde(default)]
    edits: Vec<Edit>,
    /// Extra arguments for every command of the case.
    #[serde(default)]
    args: Vec<String>,
    /// Environment instead of the command's usual one (placeholders as in [`expand`]).
    env: Option<BTreeMap<String, String>>,
    /// The exit code the README promises.
    exit: i32,
    /// Fragments that must all appear in stdout + stderr, compared case-insensitively
    /// (placeholders as in [`Places::expand`]).
    expect: Vec<String>,
    /// More fragments for one command only.
    #[serde(default)]
    expect_by: BTreeMap<String, Vec<String>>,
    /// Whether the run may write (the control case, and a row only the server can refuse).
    #[serde(default)]
    writes: bool,
    /// `gzip`: start from the export made with `--gzip` (`<table>.json.gz`) instead.
    #[serde(default)]
    gzip: bool,
}

/// One change to the copy of the export (paths relative to the case's work directory, which
/// holds `out/` and `fmig.toml`).
#[derive(Debug, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum Edit {
    /// Keep the first `keep` share of the file's bytes.
    Truncate { file: String, keep: f64 },
    /// Replace the first occurrence of `find` (it must occur).
    Replace {
        file: String,
        find: String,
        with: String,
    },
    /// Replace the first occurrence of `find` with raw bytes given in hex (invalid UTF-8, NUL).
    ReplaceHex {
        file: String,
        find: String,
        with_hex: String,
    },
    /// Replace the whole file (placeholders expanded).
    Write { file: String, text: String },
    /// Append text (placeholders expanded).
    Append { file: String, text: String },
    /// Replace an export file by its first row object alone: an object, not an array.
    FirstRowOnly { file: String },
    /// Insert, after the file's first line, one row whose `column` holds a string of `mb` MB:
    /// a single line of that size, the file otherwise intact.
    GiantLine {
        file: String,
        column: String,
        mb: usize,
    },
    /// Remove the file.
    Delete { file: String },
    /// Set `key` of the `metadata.json` entry of `table` (or of its `column`) to `value`, or
    /// add `add` to it.
    Metadata {
        table: String,
        column: Option<String>,
        key: String,
        value: Option<toml::Value>,
        add: Option<i64>,
    },
    /// Set `column` of row `row` (1-based; the export's one row per line) to the JSON text
    /// `json`, keeping the line's layout.
    RowSet {
        file: String,
        row: usize,
        column: String,
        json: String,
    },
    /// Record the file's current SHA-256 and size in `metadata.json`, as if the export had
    /// written it so: what makes a hand-edited file reach the checks behind the hash.
    Rehash { file: String },
    /// Append a copy of element `index` of the JSON array at `pointer`, with `set` applied.
    JsonDuplicate {
        file: String,
        pointer: String,
        index: usize,
        #[serde(default)]
        set: BTreeMap<String, String>,
    },
    /// Set the value at a JSON pointer.
    JsonSet {
        file: String,
        pointer: String,
        value: toml::Value,
    },
}

impl Edit {
    /// The table whose export file (or `metadata.json` entry) the edit changes, if any.
    fn table(&self) -> Option<&str> {
        match self {
            Edit::Metadata { table, .. } => Some(table),
            _ => {
                let name = self.file()?.strip_prefix(EXPORT)?.strip_prefix('/')?;
                name.strip_suffix(".json")
                    .or_else(|| name.strip_suffix(".json.gz"))
            }
        }
    }

    /// The file the edit changes (none for `metadata`, which edits `metadata.json`).
    fn file(&self) -> Option<&str> {
        match self {
            Edit::Truncate { file, .. }
            | Edit::Replace { file, .. }
            | Edit::ReplaceHex { file, .. }
            | Edit::Write { file, .. }
            | Edit::Append { file, .. }
            | Edit::FirstRowOnly { file }
            | Edit::GiantLine { file, .. }
            | Edit::Delete { file }
            | Edit::RowSet { file, .. }
            | Edit::Rehash { file }
            | Edit::JsonDuplicate { file, .. }
            | Edit::JsonSet { file, .. } => Some(file),
            Edit::Metadata { .. } => None,
        }
    }
}

/// The export and the target every case copies, made once per test process.
struct Shared {
    setup: Setup,
    gzip_made: bool,
    /// Bumped for each fresh copy of the target database.
    databases: u32,
}

pub fn scenarios() -> Vec<Scenario> {
    let path = common::fixture("hostile/cases.toml");
    let text = std::fs::read_to_string(&path).expect("read tests/fixtures/hostile/cases.toml");
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        case: Vec<Case>,
    }
    let file: File = toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let shared: Rc<RefCell<Option<Shared>>> = Rc::new(RefCell::new(None));
    let last = file.case.len().saturating_sub(1);
    file.case
        .into_iter()
        .enumerate()
        .map(|(n, case)| {
            let case = Rc::new(case);
            let promise = format!(
                "{}: `fmig {}` exits {}{} within {} s, saying \"{}\"; no panic, no password in the output{}",
                case.input,
                case.commands.join("`, `fmig "),
                case.exit,
                if case.exit == 0 { "" } else { " (refused)" },
                TIMEOUT.as_secs(),
                case.expect.join("\", \""),
                if case.writes {
                    ""
                } else {
                    ", nothing written to the target or the export"
                }
            );
            let shared = Rc::clone(&shared);
            let name = format!("hostile: {}", case.name);
            Scenario {
                group: "hostile input",
                name,
                promise,
                slow: false,
                run: Box::new(move || {
                    let outcome = run_case(&case, &shared);
                    // The cluster is not needed by the scenarios after the last case (when a
                    // filter skips it, it goes when the suite ends).
                    if n == last {
                        shared.borrow_mut().take();
                    }
                    outcome
                }),
            }
        })
        .collect()
}

fn run_case(case: &Case, shared: &RefCell<Option<Shared>>) -> Outcome {
    let mut shared = shared.borrow_mut();
    let shared = shared.get_or_insert_with(|| {
        let setup = Setup::new(&SeedConfig {
            sensor_readings: 300,
            users_per_category: 2,
            ..SeedConfig::default()
        });
        setup.export(EXPORT).expect_code(0);
        setup.write_user_mapping(EXPORT);
        // What verify runs against: the unedited export imported.
        let cluster = &setup.cluster;
        cluster.psql(
            "postgres",
            &format!("CREATE DATABASE {IMPORTED_DB} TEMPLATE {TARGET_DB}"),
        );
        setup.import_into(IMPORTED_DB, EXPORT, &[]).expect_code(0);
        Shared {
            setup,
            gzip_made: false,
            databases: 0,
        }
    });
    if case.gzip && !shared.gzip_made {
        let setup = &shared.setup;
        setup
            .work
            .run(
                &["export", "--gzip", "--output-dir", EXPORT_GZIP],
                &[("SUPABASE_DB_URL", &setup.source_url())],
            )
            .expect_code(0);
        setup.write_user_mapping(EXPORT_GZIP);
        shared.gzip_made = true;
    }

    let mut outcome = Outcome::default();
    let mut details = Vec::new();
    for command in &case.commands {
        shared.databases += 1;
        let db = format!("hostile_{}", shared.databases);
        let cluster = &shared.setup.cluster;
        // verify compares an imported target; everything else starts from the empty one.
        let template = if command.starts_with("verify") {
            IMPORTED_DB
        } else {
            TARGET_DB
        };
        cluster.psql(
            "postgres",
            &format!("CREATE DATABASE {db} TEMPLATE {template}"),
        );
        let result = run_command(case, command, &shared.setup, &db);
        cluster.psql("postgres", &format!("DROP DATABASE {db} WITH (FORCE)"));
        match result {
            Ok(detail) => {
                details.push(detail);
                outcome.record(Ok(()));
            }
            Err(problem) => {
                details.push(format!("{command}: FAILED"));
                outcome.record(Err(format!("fmig {command}: {problem}")));
            }
        }
    }
    outcome.detail = details.join("; ");
    outcome
}

/// Builds the case's inputs in a fresh work directory, runs one command on them and checks
/// the promise. `Ok` carries the observation for the table.
fn run_command(case: &Case, command: &str, setup: &Setup, db: &str) -> Result<String, String> {
    let work = Workdir::new();
    let export = if case.gzip { EXPORT_GZIP } else { EXPORT };
    copy_dir(&setup.work.path().join(export), &work.path().join(EXPORT))?;
    std::fs::copy(
        setup.work.path().join("fmig.toml"),
        work.path().join("fmig.toml"),
    )
    .map_err(|e| format!("copy fmig.toml: {e}"))?;
    let places = Places::new(&setup.cluster, db);
    for edit in &case.edits {
        apply(edit, work.path(), &places).map_err(|e| format!("the case's edit failed: {e}"))?;
    }

    let (mut args, default_env) = Command::of(command, &places)?;
    args.extend(case.args.iter().map(|a| places.expand(a)));
    if command.starts_with("verify") {
        // Only the tables whose files were edited (else profiles, whose user ids need the
        // mapping): a whole verify of every table adds seconds and checks nothing more here.
        let mut tables: Vec<&str> = case
            .edits
            .iter()
            .filter_map(Edit::table)
            .filter(|t| fmig::manifest::builtin().iter().any(|s| s.name == *t))
            .collect();
        tables.dedup();
        if tables.is_empty() {
            tables.push("profiles");
        }
        args.extend(["--table".to_string(), tables.join(",")]);
    }
    let env: Vec<(String, String)> = match &case.env {
        Some(env) => env
            .iter()
            .map(|(k, v)| (k.clone(), places.expand(v)))
            .collect(),
        None => default_env,
    };
    let before = snapshot(work.path())?;
    let target_before = target_state(&setup.cluster, db);
    let args_ref: Vec<&str> = args.iter().map(String::as_str).collect();
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let started = Instant::now();
    let run = run_with_timeout(&work, &args_ref, &env_ref)?;
    let seconds = started.elapsed().as_secs_f64();
    let output = format!("{}\n{}", run.stdout, run.stderr);
    let shown = || {
        format!(
            "\n--- stdout\n{}\n--- stderr\n{}",
            tail(&run.stdout, 3000),
            tail(&run.stderr, 3000)
        )
    };

    let mut problems = Vec::new();
    match run.code {
        None => problems.push("killed by a signal".to_string()),
        Some(101) => problems.push("exit 101 (a Rust panic)".to_string()),
        Some(code) if code != case.exit => {
            problems.push(format!("exit {code}, expected {}", case.exit))
        }
        Some(_) => {}
    }
    if output.contains("panicked") {
        problems.push("the output says \"panicked\"".into());
    }
    let lower = output.to_lowercase();
    let by_command = case.expect_by.get(command).into_iter().flatten();
    for fragment in case.expect.iter().chain(by_command) {
        let fragment = places.expand(fragment);
        if !lower.contains(&fragment.to_lowercase()) {
            problems.push(format!("no {fragment:?} in the output"));
        }
    }
    for secret in [Cluster::PASSWORD, &percent(Cluster::PASSWORD)] {
        if output.contains(secret) {
            problems.push("the database password appears in the output".into());
        }
    }
    if !case.writes {
        if target_state(&setup.cluster, db) != target_before {
            problems.push(format!(
                "the target was written to (tables with rows now: {})",
                nonempty_tables(&setup.cluster, db).replace('\n', ", ")
            ));
        }
        let after = snapshot(work.path())?;
        // verify's report is its output, written whatever the result.
        let report = format!("{EXPORT}/verification-report.json");
        let changed: Vec<&String> = after
            .iter()
            .filter(|(f, h)| before.get(*f) != Some(*h))
            .map(|(f, _)| f)
            .chain(before.keys().filter(|f| !after.contains_key(*f)))
            .filter(|f| !(command.starts_with("verify") && **f == report))
            .collect();
        if !changed.is_empty() {
            problems.push(format!("files were written or removed: {changed:?}"));
        }
    }
    if problems.is_empty() {
        Ok(format!(
            "{command}: exit {} in {seconds:.1}s, \"{}\"",
            run.code.unwrap_or(-1),
            first_error_line(&output, &case.expect, &places)
        ))
    } else {
        Err(format!("{}{}", problems.join("; "), shown()))
    }
}

/// Every imported table's row count and an order-independent hash of its rows, and whether
/// the `fmig` schema exists: one query (the suite runs it twice per command).
fn target_state(cluster: &Cluster, db: &str) -> String {
    let tables: Vec<String> = fmig::manifest::builtin()
        .iter()
        .map(|t| {
            format!(
                "SELECT '{0}:' || count(*) || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM public.{0} x",
                t.name
            )
        })
        .collect();
    cluster.psql(
        db,
        &format!(
            "{} UNION ALL SELECT 'fmig schema: ' || (to_regnamespace('fmig') IS NOT NULL)",
            tables.join(" UNION ALL ")
        ),
    )
}

/// A command's arguments and environment when the case does not give its own.
struct Command;

/// Arguments, and environment variables as (name, value).
type Invocation = (Vec<String>, Vec<(String, String)>);

impl Command {
    fn of(command: &str, p: &Places) -> Result<Invocation, String> {
        let target = ("DATABASE_URL".to_string(), p.target_url.clone());
        let source = ("SUPABASE_DB_URL".to_string(), p.source_url.clone());
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Ok(match command {
            "import" => (
                args(&["import", "--input-dir", EXPORT, "--unmapped", "null"]),
                vec![target],
            ),
            "verify" => (
                args(&["verify", "--export-dir", EXPORT, "--unmapped", "null"]),
                vec![source, target],
            ),
            "verify-against-export" => (
                args(&[
                    "verify",
                    "--export-dir",
                    EXPORT,
                    "--unmapped",
                    "null",
                    "--against",
                    "export",
                ]),
                vec![target],
            ),
            "plan" => (args(&["plan"]), vec![source, target]),
            "mapping-lookup" => (
                args(&[
                    "mapping",
                    "lookup",
                    "00000000-0000-4000-8000-000000000000",
                    "--export-dir",
                    EXPORT,
                ]),
                vec![],
            ),
            "export" => (
                args(&["export", "--output-dir", "new-export"]),
                vec![source],
            ),
            // Stack Auth on a port where nothing listens: the input must be refused before any
            // request (a request would fail with a connection error instead).
            "migrate-users" => (
                args(&["migrate-users", "--export-dir", EXPORT]),
                vec![
                    ("STACK_AUTH_API_URL".into(), "http://127.0.0.1:9".into()),
                    ("STACK_AUTH_PROJECT_ID".into(), "hostile".into()),
                    ("STACK_AUTH_SECRET_KEY".into(), "ssk_hostile_secret".into()),
                ],
            ),
            other => return Err(format!("unknown command {other:?} in cases.toml")),
        })
    }
}

/// What placeholders in cases.toml expand to: `{target_url}`, `{source_url}`, `{host}`,
/// `{port}`, `{target_db}`, `{password}` (percent-encoded).
struct Places {
    target_url: String,
    source_url: String,
    port: u16,
    target_db: String,
}

impl Places {
    fn new(cluster: &Cluster, db: &str) -> Places {
        Places {
            target_url: cluster.url(db),
            source_url: cluster.url(common::SOURCE_DB),
            port: cluster.port(),
            target_db: db.to_string(),
        }
    }

    fn expand(&self, text: &str) -> String {
        text.replace("{target_url}", &self.target_url)
            .replace("{source_url}", &self.source_url)
            .replace("{host}", "127.0.0.1")
            .replace("{port}", &self.port.to_string())
            .replace("{target_db}", &self.target_db)
            .replace("{password}", &percent(Cluster::PASSWORD))
    }
}

fn percent(text: &str) -> String {
    crate::support::cluster::percent_encode(text)
}

fn apply(edit: &Edit, dir: &Path, places: &Places) -> Result<(), String> {
    let read = |file: &str| std::fs::read(dir.join(file)).map_err(|e| format!("read {file}: {e}"));
    let write = |file: &str, bytes: &[u8]| {
        std::fs::write(dir.join(file), bytes).map_err(|e| format!("write {file}: {e}"))
    };
    match edit {
        Edit::Truncate { file, keep } => {
            let bytes = read(file)?;
            let cut = (bytes.len() as f64 * keep) as usize;
            if cut >= bytes.len() {
                return Err(format!("truncating {file} to {keep} changes nothing"));
            }
            write(file, &bytes[..cut])
        }
        Edit::Replace { file, find, with } => {
            let bytes = read(file)?;
            write(
                file,
                &replace_first(&bytes, find.as_bytes(), &places.expand(with).into_bytes())
                    .ok_or(format!("{find:?} is not in {file}"))?,
            )
        }
        Edit::ReplaceHex {
            file,
            find,
            with_hex,
        } => {
            let with = unhex(with_hex)?;
            let bytes = read(file)?;
            write(
                file,
                &replace_first(&bytes, find.as_bytes(), &with)
                    .ok_or(format!("{find:?} is not in {file}"))?,
            )
        }
        Edit::Write { file, text } => write(file, places.expand(text).as_bytes()),
        Edit::Append { file, text } => {
            let mut bytes = read(file).unwrap_or_default();
            bytes.extend_from_slice(places.expand(text).as_bytes());
            write(file, &bytes)
        }
        Edit::FirstRowOnly { file } => {
            let text = String::from_utf8(read(file)?).map_err(|e| e.to_string())?;
            let row = text
                .lines()
                .nth(1)
                .filter(|l| l.starts_with('{'))
                .ok_or(format!("{file} has no first row"))?;
            write(file, row.trim_end_matches(',').as_bytes())
        }
        Edit::GiantLine { file, column, mb } => {
            let text = String::from_utf8(read(file)?).map_err(|e| e.to_string())?;
            let (head, rest) = text
                .split_once('\n')
                .ok_or(format!("{file} has no first line"))?;
            let first = rest
                .lines()
                .next()
                .filter(|l| l.starts_with('{'))
                .ok_or(format!("{file} has no first row"))?
                .trim_end_matches(',');
            let mut row: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(first).map_err(|e| format!("{file} row 1: {e}"))?;
            if !row.contains_key(column) {
                return Err(format!("{file} has no column {column}"));
            }
            row.insert(column.clone(), serde_json::Value::String(String::new()));
            let row = serde_json::to_string(&row).map_err(|e| e.to_string())?;
            let empty = format!("\"{column}\":\"\"");
            let (before, after) = row
                .split_once(&empty)
                .ok_or(format!("{file}: no {empty} after the edit"))?;
            let mut out = Vec::with_capacity(mb << 20 | 4096);
            out.extend_from_slice(head.as_bytes());
            out.push(b'\n');
            out.extend_from_slice(before.as_bytes());
            out.extend_from_slice(format!("\"{column}\":\"").as_bytes());
            out.resize(out.len() + (mb << 20), b'x');
            out.extend_from_slice(b"\"");
            out.extend_from_slice(after.as_bytes());
            out.extend_from_slice(b",\n");
            out.extend_from_slice(rest.as_bytes());
            write(file, &out)
        }
        Edit::Delete { file } => {
            std::fs::remove_file(dir.join(file)).map_err(|e| format!("remove {file}: {e}"))
        }
        Edit::Metadata {
            table,
            column,
            key,
            value,
            add,
        } => edit_json(dir, "out/metadata.json", |json| {
            let mut entry = table_entry(json, table)?;
            if let Some(column) = column {
                entry = entry["columns"]
                    .as_array_mut()
                    .ok_or(format!("metadata.json: {table} has no columns"))?
                    .iter_mut()
                    .find(|c| c["name"] == column.as_str())
                    .ok_or(format!("metadata.json: {table} has no column {column}"))?;
            }
            let old = entry
                .get(key)
                .ok_or(format!("metadata.json: {table} has no {key}"))?;
            let new = match (value, add) {
                (Some(v), None) => serde_json::to_value(v).map_err(|e| e.to_string())?,
                (None, Some(n)) => {
                    (old.as_i64().ok_or(format!("{table}.{key} is no number"))? + n).into()
                }
                _ => return Err("metadata: give value or add".into()),
            };
            entry[key] = new;
            Ok(())
        }),
        Edit::RowSet {
            file,
            row,
            column,
            json,
        } => {
            let text = String::from_utf8(read(file)?).map_err(|e| e.to_string())?;
            let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
            let line = lines
                .get_mut(*row)
                .filter(|l| l.starts_with('{'))
                .ok_or(format!("{file} has no row {row}"))?;
            let comma = line.ends_with(',');
            let mut object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line.trim_end_matches(','))
                    .map_err(|e| format!("{file} row {row}: {e}"))?;
            let slot = object
                .get_mut(column)
                .ok_or(format!("{file} has no column {column}"))?;
            *slot = serde_json::from_str(json).map_err(|e| format!("{json}: {e}"))?;
            *line = serde_json::to_string(&object).map_err(|e| e.to_string())?;
            if comma {
                line.push(',');
            }
            write(file, lines.join("\n").as_bytes())
        }
        Edit::Rehash { file } => {
            let bytes = read(file)?;
            let name = Path::new(file)
                .file_name()
                .and_then(|n| n.to_str())
                .ok_or("no file name")?
                .to_string();
            let sha = Sha256::digest(&bytes)
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>();
            edit_json(dir, "out/metadata.json", |json| {
                let entry = if json["auth_users"]["file"] == name.as_str() {
                    &mut json["auth_users"]
                } else {
                    json["tables"]
                        .as_array_mut()
                        .ok_or("metadata.json has no tables")?
                        .iter_mut()
                        .find(|t| t["file"] == name.as_str())
                        .ok_or(format!("metadata.json has no entry for {name}"))?
                };
                entry["sha256"] = sha.clone().into();
                entry["bytes"] = (bytes.len() as u64).into();
                Ok(())
            })
        }
        Edit::JsonDuplicate {
            file,
            pointer,
            index,
            set,
        } => edit_json(dir, file, |json| {
            let array = json
                .pointer_mut(pointer)
                .and_then(|a| a.as_array_mut())
                .ok_or(format!("{file}: no array at {pointer}"))?;
            let mut copy = array
                .get(*index)
                .cloned()
                .ok_or(format!("{file}: no element {index} at {pointer}"))?;
            for (k, v) in set {
                copy[k] = v.clone().into();
            }
            array.push(copy);
            Ok(())
        }),
        Edit::JsonSet {
            file,
            pointer,
            value,
        } => edit_json(dir, file, |json| {
            let slot = json
                .pointer_mut(pointer)
                .ok_or(format!("{file}: nothing at {pointer}"))?;
            *slot = serde_json::to_value(value).map_err(|e| e.to_string())?;
            Ok(())
        }),
    }
}

fn table_entry<'a>(
    json: &'a mut serde_json::Value,
    table: &str,
) -> Result<&'a mut serde_json::Value, String> {
    json["tables"]
        .as_array_mut()
        .ok_or("metadata.json has no tables")?
        .iter_mut()
        .find(|t| t["name"] == table)
        .ok_or(format!("metadata.json has no table {table}"))
}

fn edit_json(
    dir: &Path,
    file: &str,
    change: impl FnOnce(&mut serde_json::Value) -> Result<(), String>,
) -> Result<(), String> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("read {file}: {e}"))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
    change(&mut json)?;
    let text = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| format!("write {file}: {e}"))
}

fn replace_first(bytes: &[u8], find: &[u8], with: &[u8]) -> Option<Vec<u8>> {
    let at = bytes.windows(find.len()).position(|w| w == find)?;
    let mut out = Vec::with_capacity(bytes.len() + with.len());
    out.extend_from_slice(&bytes[..at]);
    out.extend_from_slice(with);
    out.extend_from_slice(&bytes[at + find.len()..]);
    Some(out)
}

fn unhex(text: &str) -> Result<Vec<u8>, String> {
    text.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).map_err(|e| format!("hex {b:?}: {e}")))
        .collect()
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::create_dir_all(to).map_err(|e| format!("create {}: {e}", to.display()))?;
    for entry in std::fs::read_dir(from).map_err(|e| format!("read {}: {e}", from.display()))? {
        let entry = entry.map_err(|e| e.to_string())?;
        let path = entry.path();
        if path.is_dir() {
            copy_dir(&path, &to.join(entry.file_name()))?;
        } else {
            std::fs::copy(&path, to.join(entry.file_name()))
                .map_err(|e| format!("copy {}: {e}", path.display()))?;
        }
    }
    Ok(())
}

/// Every file under `dir` (but the log, and the lock files that name the last run) with a hash
/// of its contents.
fn snapshot(dir: &Path) -> Result<BTreeMap<String, String>, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) -> Result<(), String> {
        for entry in std::fs::read_dir(dir).map_err(|e| format!("read {}: {e}", dir.display()))? {
            let path = entry.map_err(|e| e.to_string())?.path();
            let name = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else if name != "migration.log" && !name.ends_with(fmig::lock::LOCK_FILE) {
                let mut file = std::fs::File::open(&path).map_err(|e| format!("{name}: {e}"))?;
                let mut digest = Sha256::new();
                let mut buf = vec![0; 1 << 20];
                loop {
                    let n = file.read(&mut buf).map_err(|e| format!("{name}: {e}"))?;
                    if n == 0 {
                        break;
                    }
                    digest.update(&buf[..n]);
                }
                out.insert(name, format!("{:x}", digest.finalize()));
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

struct Finished {
    /// `None`: killed by a signal (or by the timeout).
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs fmig, killing it after [`TIMEOUT`] (a hang is a failure, not a stuck suite).
fn run_with_timeout(
    work: &Workdir,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<Finished, String> {
    let mut child = work
        .command(args, env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start fmig: {e}"))?;
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = reader(Box::new(child.stdout.take().expect("stdout")));
    let stderr = reader(Box::new(child.stderr.take().expect("stderr")));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if started.elapsed() > TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "no exit within {} s: killed (a hang){}",
                TIMEOUT.as_secs(),
                {
                    let err = stderr.join().unwrap_or_default();
                    format!("\n--- stderr\n{}", tail(&err, 2000))
                }
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Ok(Finished {
        code: status.code(),
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// The output line holding the first expected fragment, shortened for the table.
fn first_error_line(output: &str, expect: &[String], places: &Places) -> String {
    let fragment = expect.first().map(|f| places.expand(f)).unwrap_or_default();
    let line = output
        .lines()
        .find(|l| l.to_lowercase().contains(&fragment.to_lowercase()))
        .unwrap_or("")
        .trim();
    // Neither the log line's time and level nor the work directory's temp path say anything.
    let line = line
        .split_once(" ERROR ")
        .filter(|(time, _)| time.len() <= 8)
        .map_or(line, |(_, rest)| rest);
    let line = line.strip_prefix("error: ").unwrap_or(line);
    let line = line
        .split_once("/out/")
        .map_or(line.to_string(), |(_, rest)| rest.to_string());
    // A long message keeps its start (what) and its end (why).
    let chars: Vec<char> = line.chars().collect();
    if chars.len() <= 170 {
        return line;
    }
    let head: String = chars[..70].iter().collect();
    let tail: String = chars[chars.len() - 100..].iter().collect();
    format!("{head} … {tail}")
}
