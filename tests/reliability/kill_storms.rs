//! Kill storms: the real `fmig` is killed with SIGKILL at 20 moments across a run and started
//! again after each kill, then a last run goes to completion; the end state is compared with an
//! uninterrupted run's.
//!
//! The moments are "random" but reproducible: a seeded xorshift picks one moment in each
//! twentieth of an uninterrupted run's measured duration, so they cover every phase. A command
//! that resumes (import, migrate-users) repeats its start-up (connect, check pass, reconcile)
//! on every run and then continues where the last one stopped, so a moment past the start-up
//! is mapped onto the work that is left: the run is killed that far past its start-up, minus
//! what the earlier kills already got done (see [`resumable_delays`]). Where each kill landed
//! is observed, not assumed (checkpoints, users created, files present) and summarised in the
//! outcome's `detail`; a scenario fails when fewer than half of its kills land before the run
//! would have finished anyway.

#[path = "../support/stack_auth_emulator.rs"]
mod emulator;

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use emulator::{Config, Emulator, Faults};
use serde_json::Value;

use crate::common::{self, SOURCE_DB, Setup, TARGET_DB};
use crate::support::seed::{self, SeedConfig};
use crate::{Outcome, Scenario};

const GROUP: &str = "kill storm";
const KILLS: usize = 20;
/// A run that is not killed on purpose and has not ended after this long is a hang.
const HANG: Duration = Duration::from_secs(300);

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            group: GROUP,
            name: "import killed 20 times".into(),
            promise: "fmig import killed with SIGKILL at 20 moments (connect, check pass, the \
                      copy of every level, finish) and re-run each time ends with exactly the \
                      rows of an uninterrupted import, the checkpoints always match the rows \
                      committed, every run that ends by itself exits 0, and fmig verify passes"
                .into(),
            slow: false,
            run: Box::new(import_storm),
        },
        Scenario {
            group: GROUP,
            name: "migrate-users killed 20 times".into(),
            promise: "fmig migrate-users killed with SIGKILL at 20 moments against the Stack Auth \
                      emulator (with latency) and re-run each time creates every migratable \
                      user exactly once, as many as an uninterrupted run, and leaves a complete \
                      and valid user-mapping.json; no mapping written on the way names a user \
                      that does not exist"
                .into(),
            slow: false,
            run: Box::new(migrate_users_storm),
        },
        Scenario {
            group: GROUP,
            name: "export killed 20 times".into(),
            promise: "after fmig export is killed with SIGKILL at any of 20 moments, the export \
                      directory is either rejected by fmig import with a clear message (exit 2, \
                      target untouched) or complete, importing to exactly the rows of an \
                      uninterrupted export with fmig verify passing; never a silent partial \
                      import"
                .into(),
            slow: false,
            run: Box::new(export_storm),
        },
    ]
}

// ---------------------------------------------------------------------------------------------
// Moments and runs.

/// xorshift64, seeded: the same moments on every run of the suite.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One moment in each twentieth of a run, as fractions of it, in order.
fn fractions(seed: u64) -> Vec<f64> {
    let mut rng = Rng::new(seed);
    (0..KILLS)
        .map(|i| (i as f64 + rng.unit()) / KILLS as f64)
        .collect()
}

/// When to kill each run of a command that resumes: `total` is an uninterrupted run, the first
/// `startup` of which every run repeats. A moment inside the start-up is used as it is; a moment
/// past it means "this far into the work": the run is killed after its start-up plus the part
/// of the work between the previous such moment and this one (the earlier kills did the rest).
fn resumable_delays(fractions: &[f64], total: Duration, startup: Duration) -> Vec<Duration> {
    let mut reached = startup;
    fractions
        .iter()
        .map(|f| {
            let at = total.mul_f64(*f);
            if at <= startup {
                at
            } else {
                let gap = at.saturating_sub(reached);
                reached = reached.max(at);
                startup + gap
            }
        })
        .collect()
}

/// How a run ended.
struct Ran {
    /// Killed by us (still running at its moment).
    killed: bool,
    /// Exit code when it ended by itself (-1 when killed or ended by another signal).
    code: i32,
    stderr: String,
}

impl Ran {
    /// For a problem report: how it ended and what it said.
    fn describe(&self) -> String {
        let tail: String = {
            let lines: Vec<&str> = self.stderr.lines().collect();
            lines[lines.len().saturating_sub(6)..].join(" / ")
        };
        if self.killed {
            format!("hung (killed after {}s): {tail}", HANG.as_secs())
        } else {
            format!("exited {}: {tail}", self.code)
        }
    }
}

/// Runs `cmd` and kills it with SIGKILL at `at` unless it ended before. stdout and stderr go to
/// files in `logs` (a pipe nobody reads could block fmig).
fn run_until(mut cmd: Command, at: Duration, logs: &Path, label: &str) -> Ran {
    let err_path = logs.join(format!("{label}.stderr"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(logs.join(format!("{label}.stdout"))).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"));
    let mut child = cmd.spawn().expect("spawn fmig");
    let deadline = Instant::now() + at;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        let now = Instant::now();
        if now >= deadline {
            child.kill().expect("SIGKILL");
            break child.wait().expect("reap fmig");
        }
        std::thread::sleep((deadline - now).min(Duration::from_millis(2)));
    };
    Ran {
        // It may have exited between the last look and the kill: then it was not killed.
        killed: status.signal() == Some(libc::SIGKILL),
        code: status.code().unwrap_or(-1),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
    }
}

/// Runs `cmd` to its end (a hang is killed after [`HANG`]).
fn run_to_end(cmd: Command, logs: &Path, label: &str) -> Ran {
    run_until(cmd, HANG, logs, label)
}

/// A run that ends by itself must end well, and without a panic.
fn ended_well(ran: &Ran, what: &str) -> Result<(), String> {
    if ran.stderr.contains("panicked") {
        return Err(format!("{what}: fmig panicked: {}", ran.describe()));
    }
    if ran.killed || ran.code == 0 {
        Ok(())
    } else {
        Err(format!("{what}: {}", ran.describe()))
    }
}

/// "3 check, 12 load (levels 0-3), 2 finish" from phase -> count.
fn tally(phases: &BTreeMap<String, u32>) -> String {
    phases
        .iter()
        .map(|(p, n)| format!("{n} {p}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Fails the scenario when too many kills came after the run had finished anyway.
fn enough_landed(outcome: &mut Outcome, landed: usize) {
    if landed * 2 < KILLS {
        outcome.failures += 1;
        outcome.problems.push(format!(
            "only {landed} of {KILLS} kills landed while fmig was running: the data set is too \
             small for this machine, or the moments are off"
        ));
    }
}

fn logs_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fmig-kills-")
        .tempdir()
        .expect("logs dir")
}

// ---------------------------------------------------------------------------------------------
// 1. fmig import.

/// Per table of the export: (level, rows in the file).
fn export_tables(dir: &Path) -> BTreeMap<String, (u64, u64)> {
    let text = std::fs::read_to_string(dir.join("metadata.json")).expect("metadata.json");
    let metadata: Value = serde_json::from_str(&text).expect("metadata.json is JSON");
    metadata["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap().to_string(),
                (t["level"].as_u64().unwrap(), t["rows"].as_u64().unwrap()),
            )
        })
        .collect()
}

/// The import's state in `db`: per table (rows committed by the checkpoint, rows present,
/// import completed), or nothing before the checkpoint table exists.
fn import_state(setup: &Setup, db: &str) -> BTreeMap<String, (u64, u64, bool)> {
    let mut state = BTreeMap::new();
    if setup
        .cluster
        .psql(db, "SELECT to_regclass('fmig.import_progress') IS NOT NULL")
        .trim()
        != "t"
    {
        return state;
    }
    let counts: Vec<String> = fmig::manifest::builtin()
        .iter()
        .map(|t| format!("SELECT '{0}' AS t, count(*) AS n FROM public.{0}", t.name))
        .collect();
    let sql = format!(
        "WITH c AS ({}) SELECT c.t, coalesce(p.rows_committed, -1), c.n, p.completed_at IS NOT NULL \
         FROM c LEFT JOIN fmig.import_progress p ON p.table_name = c.t",
        counts.join(" UNION ALL ")
    );
    for line in setup.cluster.psql(db, &sql).lines() {
        let f: Vec<&str> = line.split('|').collect();
        let committed: i64 = f[1].parse().unwrap();
        state.insert(
            f[0].to_string(),
            (
                // A table without a checkpoint has committed nothing (its rows must be 0).
                committed.max(0) as u64,
                f[2].parse().unwrap(),
                f[3] == "t",
            ),
        );
    }
    state
}

fn import_storm() -> Outcome {
    let mut outcome = Outcome::default();
    let logs = logs_dir();
    let s = Setup::new(&SeedConfig {
        sensor_readings: 120_000,
        ..SeedConfig::default()
    });
    s.export("out").expect_code(0);
    s.write_user_mapping("out");
    let tables = export_tables(&s.work.path().join("out"));
    let total_rows: u64 = tables.values().map(|(_, rows)| rows).sum();

    // The reference, uninterrupted, timed: the dry run is the start-up every run repeats
    // (connect, read every file once), the real run the whole.
    s.cluster.create_database("reference");
    seed::load_target_schema(&s.cluster, "reference");
    let started = Instant::now();
    s.import_into("reference", "out", &["--dry-run"])
        .expect_code(0);
    let startup = started.elapsed();
    let started = Instant::now();
    s.import_into("reference", "out", &[]).expect_code(0);
    let total = started.elapsed();
    let reference = common::fingerprint(&s.cluster, "reference");

    let import = || {
        s.work.command(
            &["import", "--input-dir", "out", "--unmapped", "null"],
            &[("DATABASE_URL", &s.target_url())],
        )
    };
    let mut phases: BTreeMap<String, u32> = BTreeMap::new();
    let mut landed = 0;
    let mut before = import_state(&s, TARGET_DB);
    for (i, at) in resumable_delays(&fractions(0x1A4F_0001), total, startup)
        .into_iter()
        .enumerate()
    {
        let ran = run_until(import(), at, logs.path(), &format!("import-{i}"));
        let after = import_state(&s, TARGET_DB);
        let mut result = ended_well(&ran, &format!("run {} (kill planned at {at:?})", i + 1));
        // The promise a resume rests on: what the checkpoint says is what is there.
        for (table, (committed, present, _)) in &after {
            if committed != present && result.is_ok() {
                result = Err(format!(
                    "after run {} ({}): {table} has {present} rows but its checkpoint says {committed}",
                    i + 1,
                    if ran.killed { "killed" } else { "ended" }
                ));
            }
        }
        outcome.record(result);
        let phase = if !ran.killed {
            "ended before its kill".to_string()
        } else {
            landed += 1;
            let committed = |st: &BTreeMap<String, (u64, u64, bool)>| -> u64 {
                st.values().map(|(c, _, _)| c).sum()
            };
            if after.values().any(|(_, _, done)| *done) {
                "after the last commit".to_string()
            } else if committed(&after) == total_rows {
                "finish (sequences, completion)".to_string()
            } else if committed(&after) > committed(&before) {
                // The deepest level that advanced: where the run was when it died.
                let level = after
                    .iter()
                    .filter(|(t, (c, _, _))| before.get(*t).map_or(0, |b| b.0) < *c)
                    .filter_map(|(t, _)| tables.get(t).map(|(level, _)| *level))
                    .max()
                    .unwrap_or(0);
                format!("copy of level {level}")
            } else {
                "connect/check (nothing committed)".to_string()
            }
        };
        *phases.entry(phase).or_default() += 1;
        before = after;
    }

    // The last run completes; the end state is the reference's, and verify agrees.
    let last = run_to_end(import(), logs.path(), "import-last");
    if last.killed || last.code != 0 {
        outcome.failures += 1;
        outcome
            .problems
            .push(format!("the completing run: {}", last.describe()));
    }
    let got = common::fingerprint(&s.cluster, TARGET_DB);
    outcome.lost = common::rows_lost(&reference, &got);
    if outcome.lost > 0 {
        let differ: Vec<String> = reference
            .iter()
            .zip(&got)
            .filter(|(r, g)| r != g)
            .map(|(r, g)| format!("{}: {} rows, reference {}", r.0, g.1, r.1))
            .collect();
        outcome.problems.push(format!(
            "the resumed import differs from an uninterrupted one: {}",
            differ.join("; ")
        ));
    }
    let verify = s.verify(TARGET_DB, "out");
    if verify.code != 0 {
        outcome.failures += 1;
        outcome.problems.push(format!(
            "fmig verify exited {}: {}",
            verify.code,
            verify
                .stdout
                .lines()
                .rev()
                .take(8)
                .collect::<Vec<_>>()
                .join(" / ")
        ));
    }
    enough_landed(&mut outcome, landed);
    outcome.detail = format!(
        "{total_rows} rows; uninterrupted {:.1}s (start-up {:.1}s); {landed} of {KILLS} kills \
         landed mid-run: {}; end state {} the reference's; verify exit {}",
        total.as_secs_f64(),
        startup.as_secs_f64(),
        tally(&phases),
        if outcome.lost == 0 {
            "equals"
        } else {
            "differs from"
        },
        verify.code
    );
    outcome
}

// ---------------------------------------------------------------------------------------------
// 2. fmig migrate-users.

/// Providers configured in the emulated project (as in tests/migrate_users.rs: `discord` left
/// out, so those users are "provider not configured" and created without it).
const PROVIDERS: &str = "google,github,microsoft,linkedin,x";

fn emulator(latency: Duration) -> Emulator {
    Emulator::start_with(
        Config {
            oauth_providers: PROVIDERS.split(',').map(String::from).collect(),
            ..Config::default()
        },
        Faults {
            latency,
            ..Faults::default()
        },
    )
}

/// Stack Auth user ids per `server_metadata.supabase_user_id` (two or more: a duplicate).
fn by_supabase_id(emu: &Emulator) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for u in emu.users() {
        let key = u
            .supabase_user_id()
            .unwrap_or("(none)")
            .to_ascii_lowercase();
        map.entry(key).or_default().push(u.id.clone());
    }
    map
}

/// Users created more than once.
fn duplicates(users: &BTreeMap<String, Vec<String>>) -> u64 {
    users.values().map(|ids| ids.len() as u64 - 1).sum()
}

/// `data/user-mapping.json`, when it exists, must be a valid mapping whose every entry names
/// the Stack Auth user that holds that Supabase id; with `complete`, it must also name every
/// user there is.
fn check_mapping(
    work: &crate::support::cli::Workdir,
    users: &BTreeMap<String, Vec<String>>,
    complete: bool,
) -> Result<usize, String> {
    let path = work.path().join("data/user-mapping.json");
    if !path.exists() {
        return if complete {
            Err("no user-mapping.json".into())
        } else {
            Ok(0)
        };
    }
    let mapping = fmig::user_mapping::UserMapping::load(&path)
        .map_err(|e| format!("invalid mapping: {e:#}"))?;
    for m in &mapping.mappings {
        let holders = users.get(&m.supabase_user_id.to_ascii_lowercase());
        if !holders.is_some_and(|ids| ids.contains(&m.stack_auth_user_id)) {
            return Err(format!(
                "user-mapping.json maps Supabase user {} to {}, which Stack Auth does not hold for it",
                m.supabase_user_id, m.stack_auth_user_id
            ));
        }
    }
    if complete && mapping.mappings.len() != users.len() {
        return Err(format!(
            "user-mapping.json has {} entries for {} Stack Auth users",
            mapping.mappings.len(),
            users.len()
        ));
    }
    Ok(mapping.mappings.len())
}

fn migrate_users_storm() -> Outcome {
    let mut outcome = Outcome::default();
    let logs = logs_dir();
    // Only the users matter: a real export of them (and of one small table), then no cluster.
    let Setup { cluster, work } = Setup::new(&SeedConfig {
        users_per_category: 20,
        sensor_readings: 10,
        ..SeedConfig::default()
    });
    work.run(
        &["export", "--table", "organizations", "--output-dir", "data"],
        &[("SUPABASE_DB_URL", &cluster.url(SOURCE_DB))],
    )
    .expect_code(0);
    drop(cluster);
    let auth_users = work.path().join("data/auth_users.json");
    let reference_work = crate::support::cli::Workdir::new();
    std::fs::create_dir(reference_work.path().join("data")).unwrap();
    std::fs::copy(
        &auth_users,
        reference_work.path().join("data/auth_users.json"),
    )
    .unwrap();

    // Each request waits this long, so a run lasts a few seconds and the kills land mid-run.
    let latency = Duration::from_millis(50);
    let args = [
        "migrate-users",
        "--export-dir",
        "data",
        "--oauth-providers",
        PROVIDERS,
        "--concurrency",
        "2",
        "--backoff-ms",
        "10",
    ];
    let command = |work: &crate::support::cli::Workdir, emu: &Emulator, extra: &[&str]| {
        let env = emu.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut all = args.to_vec();
        all.extend_from_slice(extra);
        work.command(&all, &env)
    };

    // The reference: an uninterrupted run against an emulator of its own, timed; the dry run
    // (plan, one read) stands for the start-up every run repeats.
    let reference_emu = emulator(latency);
    let started = Instant::now();
    let dry = run_to_end(
        command(&reference_work, &reference_emu, &["--dry-run"]),
        logs.path(),
        "reference-dry-run",
    );
    let startup = started.elapsed();
    let started = Instant::now();
    let reference_run = run_to_end(
        command(&reference_work, &reference_emu, &[]),
        logs.path(),
        "reference",
    );
    let total = started.elapsed();
    assert!(
        dry.code == 0 && reference_run.code == 0,
        "the uninterrupted runs failed: {} / {}",
        dry.describe(),
        reference_run.describe()
    );
    let reference = by_supabase_id(&reference_emu);
    assert!(
        duplicates(&reference) == 0 && !reference.is_empty(),
        "the uninterrupted run created {} users with {} duplicates",
        reference.len(),
        duplicates(&reference)
    );
    check_mapping(&reference_work, &reference, true)
        .unwrap_or_else(|e| panic!("the uninterrupted run's mapping: {e}"));
    drop(reference_emu);

    let emu = emulator(latency);
    let mut phases: BTreeMap<String, u32> = BTreeMap::new();
    let mut landed = 0;
    let mut before = 0;
    for (i, at) in resumable_delays(&fractions(0x1A4F_0002), total, startup)
        .into_iter()
        .enumerate()
    {
        let ran = run_until(
            command(&work, &emu, &[]),
            at,
            logs.path(),
            &format!("migrate-{i}"),
        );
        let users = by_supabase_id(&emu);
        let what = format!("run {} (kill planned at {at:?})", i + 1);
        let mut result = ended_well(&ran, &what);
        if result.is_ok() && duplicates(&users) > 0 {
            result = Err(format!(
                "after {what}: {} users created twice",
                duplicates(&users)
            ));
        }
        if result.is_ok()
            && let Err(e) = check_mapping(&work, &users, false)
        {
            result = Err(format!("after {what}: {e}"));
        }
        outcome.record(result);
        let after = users.len();
        let phase = if !ran.killed {
            "ended before its kill"
        } else {
            landed += 1;
            if after > before {
                "creating users"
            } else if after == reference.len() {
                "after the last create (mapping, summary)"
            } else {
                "start-up (plan, journal, listing)"
            }
        };
        *phases.entry(phase.to_string()).or_default() += 1;
        before = after;
    }

    let last = run_to_end(command(&work, &emu, &[]), logs.path(), "migrate-last");
    if last.killed || last.code != 0 {
        outcome.failures += 1;
        outcome
            .problems
            .push(format!("the completing run: {}", last.describe()));
    }
    let users = by_supabase_id(&emu);
    let missing = reference.keys().filter(|k| !users.contains_key(*k)).count() as u64;
    let extra = users.keys().filter(|k| !reference.contains_key(*k)).count() as u64;
    outcome.lost = missing + extra + duplicates(&users);
    if outcome.lost > 0 {
        outcome.problems.push(format!(
            "Stack Auth differs from an uninterrupted run: {missing} missing, {extra} not in it, \
             {} duplicated",
            duplicates(&users)
        ));
    }
    match check_mapping(&work, &users, true) {
        Ok(n) if n == reference.len() => {}
        Ok(n) => {
            outcome.failures += 1;
            outcome.problems.push(format!(
                "user-mapping.json has {n} entries, the uninterrupted run's {}",
                reference.len()
            ));
        }
        Err(e) => {
            outcome.failures += 1;
            outcome
                .problems
                .push(format!("after the completing run: {e}"));
        }
    }
    enough_landed(&mut outcome, landed);
    outcome.detail = format!(
        "{} users to create; uninterrupted {:.1}s (start-up {:.1}s, {}ms per request); {landed} \
         of {KILLS} kills landed mid-run: {}; end: {} users, {} duplicated, mapping {} entries",
        reference.len(),
        total.as_secs_f64(),
        startup.as_secs_f64(),
        latency.as_millis(),
        tally(&phases),
        users.len(),
        duplicates(&users),
        check_mapping(&work, &users, false).unwrap_or(0),
    );
    outcome
}

// ---------------------------------------------------------------------------------------------
// 3. fmig export.

/// What a killed export left in `dir`.
fn export_leftovers(dir: &Path) -> (bool, usize, usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return (false, 0, 0);
    };
    let names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let metadata = names.iter().any(|n| n == "metadata.json");
    let temp = names.iter().filter(|n| n.starts_with(".fmig-tmp.")).count();
    let data = names
        .iter()
        .filter(|n| {
            n.strip_suffix(".json").is_some_and(|t| {
                t == "auth_users" || fmig::manifest::builtin().iter().any(|s| s.name == t)
            })
        })
        .count();
    (metadata, data, temp)
}

fn export_storm() -> Outcome {
    let mut outcome = Outcome::default();
    let logs = logs_dir();
    let s = Setup::new(&SeedConfig {
        sensor_readings: 120_000,
        ..SeedConfig::default()
    });
    // The user mapping lives beside the export, so an export directory holds only what
    // `fmig export` wrote.
    s.write_user_mapping(".");
    let with_mapping = ["--mapping", "user-mapping.json"];
    let verify = |dir: &str| {
        s.work.run(
            &[
                "verify",
                "--export-dir",
                dir,
                "--unmapped",
                "null",
                "--mapping",
                "user-mapping.json",
            ],
            &[
                ("SUPABASE_DB_URL", &s.source_url()),
                ("DATABASE_URL", &s.target_url()),
            ],
        )
    };
    let reset_target = || {
        s.cluster
            .psql(SOURCE_DB, &format!("DROP DATABASE {TARGET_DB}"));
        s.cluster.create_database(TARGET_DB);
        seed::load_target_schema(&s.cluster, TARGET_DB);
    };

    // The reference: an uninterrupted export, timed, imported into its own database.
    let started = Instant::now();
    s.export("reference").expect_code(0);
    let total = started.elapsed();
    s.cluster.create_database("reference");
    seed::load_target_schema(&s.cluster, "reference");
    s.import_into("reference", "reference", &with_mapping)
        .expect_code(0);
    let reference = common::fingerprint(&s.cluster, "reference");
    let files = export_tables(&s.work.path().join("reference")).len() + 1;

    let export = || {
        s.work.command(
            &["export", "--output-dir", "out"],
            &[("SUPABASE_DB_URL", &s.source_url())],
        )
    };
    // Imports the directory as it is into the empty target: refused cleanly, or complete.
    let judge = |what: &str, outcome: &mut Outcome| -> Result<&'static str, String> {
        let (metadata, _, _) = export_leftovers(&s.work.path().join("out"));
        let run = s.import_into(TARGET_DB, "out", &with_mapping);
        if run.stderr.contains("panicked") {
            return Err(format!("{what}: fmig import panicked: {}", run.stderr));
        }
        match run.code {
            2 => {
                let written = common::nonempty_tables(&s.cluster, TARGET_DB);
                if !written.is_empty() {
                    Err(format!(
                        "{what}: the refused import wrote to the target: {written}"
                    ))
                } else if metadata {
                    Err(format!(
                        "{what}: an export with metadata.json was refused: {}",
                        run.stderr.trim()
                    ))
                } else if !(run.stderr.contains("metadata.json")
                    && run.stderr.contains("run fmig export again"))
                {
                    Err(format!(
                        "{what}: the refusal does not say what is wrong and what to do: {}",
                        run.stderr.trim()
                    ))
                } else {
                    Ok("refused")
                }
            }
            0 => {
                let checked = verify("out");
                let lost =
                    common::rows_lost(&reference, &common::fingerprint(&s.cluster, TARGET_DB));
                outcome.lost += lost;
                reset_target();
                if lost > 0 {
                    Err(format!(
                        "{what}: the import succeeded with {lost} rows lost or changed"
                    ))
                } else if checked.code != 0 {
                    Err(format!(
                        "{what}: imported, but fmig verify exited {}: {}",
                        checked.code,
                        checked.stdout.trim()
                    ))
                } else {
                    Ok("complete")
                }
            }
            code => Err(format!(
                "{what}: fmig import exited {code} (expected 0 or 2): {}",
                run.stderr.trim()
            )),
        }
    };

    let mut phases: BTreeMap<String, u32> = BTreeMap::new();
    let mut verdicts: BTreeMap<&str, u32> = BTreeMap::new();
    let mut landed = 0;
    for (i, f) in fractions(0x1A4F_0003).into_iter().enumerate() {
        let at = total.mul_f64(f);
        let ran = run_until(export(), at, logs.path(), &format!("export-{i}"));
        let what = format!("export {} (kill planned at {at:?})", i + 1);
        let (metadata, data, temp) = export_leftovers(&s.work.path().join("out"));
        let phase = if !ran.killed {
            "ended before its kill".to_string()
        } else {
            landed += 1;
            if metadata {
                "after metadata.json".to_string()
            } else if data + temp == 0 {
                "connect/snapshot (no file yet)".to_string()
            } else {
                format!("copy ({data} of {files} files finished)")
            }
        };
        *phases
            .entry(if phase.starts_with("copy") {
                "copy".into()
            } else {
                phase
            })
            .or_default() += 1;
        let result = ended_well(&ran, &what).and_then(|()| judge(&what, &mut outcome));
        if let Ok(verdict) = &result {
            *verdicts.entry(verdict).or_default() += 1;
        }
        outcome.record(result.map(|_| ()));
    }

    // A full export completes and imports.
    let last = run_to_end(export(), logs.path(), "export-last");
    let result = ended_well(&last, "the completing export").and_then(|()| {
        if last.killed {
            Err(format!("the completing export: {}", last.describe()))
        } else {
            match judge("the completing export", &mut outcome) {
                Ok("complete") => Ok(()),
                Ok(other) => Err(format!("the completing export was {other}")),
                Err(e) => Err(e),
            }
        }
    });
    if let Err(e) = result {
        outcome.failures += 1;
        outcome.problems.push(e);
    }
    enough_landed(&mut outcome, landed);
    outcome.detail = format!(
        "{} rows in {files} files; uninterrupted {:.1}s; {landed} of {KILLS} kills landed \
         mid-run: {}; import said: {}",
        reference.iter().map(|t| t.1).sum::<u64>(),
        total.as_secs_f64(),
        tally(&phases),
        verdicts
            .iter()
            .map(|(v, n)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    outcome
}
