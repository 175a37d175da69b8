//! Kill storms: the real `fmig` is killed with SIGKILL at 20 moments across a run and started
//! again after each kill, then a last run goes to completion; the end state is compared with an
//! uninterrupted run's.
//!
//! The moments come from an uninterrupted reference run, watched while it ran (checkpoints in
//! the target, users in the emulator, files in the export directory), and from a seeded
//! xorshift, so they are the same on every run of the suite: one in every phase the reference
//! went through (connect and check pass, the copy of each foreign-key level, finish) and the
//! rest one in each equal slice of its duration. A command that resumes (import,
//! migrate-users) repeats its start-up on every run and then continues where the last one
//! stopped, so a moment past the start-up is a point of the *work*: the run is killed as soon as
//! it has got as far as the reference had at that moment (see [`Moment`]). Where each kill
//! actually landed is observed, not assumed, printed per run and summarised in the outcome's
//! `detail`; a scenario fails when fewer than half of its kills land before the run ends.
//! Nothing is asserted about timing: a kill that comes late only lands elsewhere.

use crate::emulator;

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
            promise: "fmig import, with the rewrite fixture's mapping (row filters that leave \
                      rows behind, lookups, staged enums), killed with SIGKILL at 20 moments \
                      (connect, check pass, the copy of every level, finish) and re-run each \
                      time ends with exactly the rows of an uninterrupted import, the \
                      checkpoints always match the rows committed (file rows minus those left \
                      behind), every run that ends by itself exits 0, and fmig verify passes"
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

/// Progress of a command that resumes, as something watched from outside: see
/// [`checkpoint_progress`] for an import, (users in Stack Auth, 0) for migrate-users. Both
/// parts only grow.
type Progress = (u64, u64);

/// An uninterrupted run: its duration, its progress sampled every few milliseconds while it
/// ran, and when each of its phases began (as observed in the samples).
struct Reference {
    total: Duration,
    samples: Vec<(Duration, Progress)>,
    phases: Vec<(String, Duration)>,
}

/// When to kill one run.
#[derive(Clone, Copy, Debug)]
enum Moment {
    /// This long after the start, or when the run first gets something done if that is sooner:
    /// before the uninterrupted run had got anything done (connect, check pass, reconcile),
    /// which every run repeats.
    After(Duration),
    /// As soon as the run has got as far as the uninterrupted run had at that moment, and
    /// further than it started: that point of the work, whatever the earlier kills did.
    Reached(Progress),
}

impl Reference {
    /// Builds the reference from samples of some state, with `progress` and `phase` of each.
    fn new<S>(
        total: Duration,
        samples: Vec<(Duration, S)>,
        progress: impl Fn(&S) -> Progress,
        phase: impl Fn(&S) -> String,
    ) -> Reference {
        let mut phases: Vec<(String, Duration)> = Vec::new();
        for (t, state) in &samples {
            let name = phase(state);
            if phases.last().is_none_or(|(last, _)| *last != name) {
                phases.push((
                    name,
                    if phases.is_empty() {
                        Duration::ZERO
                    } else {
                        *t
                    },
                ));
            }
        }
        Reference {
            total,
            samples: samples.iter().map(|(t, st)| (*t, progress(st))).collect(),
            phases,
        }
    }

    /// The kill times, in order: one at a seeded random time within each phase, so that every
    /// phase gets one however short it is, and the others one in each equal slice of the run.
    fn times(&self, seed: u64) -> Vec<Duration> {
        let mut rng = Rng::new(seed);
        let mut times = Vec::new();
        for (i, (_, start)) in self.phases.iter().enumerate() {
            let end = self.phases.get(i + 1).map_or(self.total, |(_, t)| *t);
            times.push(*start + end.saturating_sub(*start).mul_f64(rng.unit()));
        }
        let rest = KILLS.saturating_sub(times.len());
        for i in 0..rest {
            times.push(self.total.mul_f64((i as f64 + rng.unit()) / rest as f64));
        }
        times.truncate(KILLS);
        times.sort();
        times
    }

    /// The kill moment for a resumed run of the time `at` of the uninterrupted one.
    fn moment(&self, at: Duration) -> Moment {
        let progress = self
            .samples
            .iter()
            .take_while(|(t, _)| *t <= at)
            .last()
            .map_or((0, 0), |(_, p)| *p);
        if progress == (0, 0) {
            Moment::After(at)
        } else {
            Moment::Reached(progress)
        }
    }

    /// "start-up 0.4s, level 0 0.1s, ...": the phases and how long each lasted.
    fn describe_phases(&self) -> String {
        self.phases
            .iter()
            .enumerate()
            .map(|(i, (name, start))| {
                let end = self.phases.get(i + 1).map_or(self.total, |(_, t)| *t);
                format!("{name} {:.2}s", end.saturating_sub(*start).as_secs_f64())
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl Moment {
    fn describe(&self) -> String {
        match self {
            Moment::After(at) => format!("{:.2}s after the start", at.as_secs_f64()),
            Moment::Reached((a, b)) => format!("at progress {a}/{b}"),
        }
    }
}

/// How a run ended.
struct Ran {
    /// Killed by us: still running at its moment (or hung).
    killed: bool,
    /// Still running after [`HANG`] (and killed).
    hung: bool,
    /// Exit code when it ended by itself (-1 when killed or ended by another signal).
    code: i32,
    stderr: String,
    took: Duration,
}

impl Ran {
    /// For a problem report: how it ended and what it said.
    fn describe(&self) -> String {
        let tail: String = {
            let lines: Vec<&str> = self.stderr.lines().collect();
            lines[lines.len().saturating_sub(6)..].join(" / ")
        };
        if self.hung {
            format!("hung, killed after {}s: {tail}", HANG.as_secs())
        } else if self.killed {
            format!("killed after {:.1}s: {tail}", self.took.as_secs_f64())
        } else {
            format!("exited {}: {tail}", self.code)
        }
    }
}

/// Runs `cmd`, asking `kill_now` (with the time since the start) every few milliseconds, and
/// kills it with SIGKILL when it says so (or after [`HANG`]) unless it ended before. stdout and
/// stderr go to files in `logs` (a pipe nobody reads could block fmig).
fn run_watching(
    mut cmd: Command,
    logs: &Path,
    label: &str,
    mut kill_now: impl FnMut(Duration) -> bool,
) -> Ran {
    let err_path = logs.join(format!("{label}.stderr"));
    cmd.stdin(Stdio::null())
        .stdout(File::create(logs.join(format!("{label}.stdout"))).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"));
    let started = Instant::now();
    let mut child = cmd.spawn().expect("spawn fmig");
    let mut hung = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        let elapsed = started.elapsed();
        hung = elapsed >= HANG;
        if hung || kill_now(elapsed) {
            child.kill().expect("SIGKILL");
            break child.wait().expect("reap fmig");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Ran {
        // It may have exited between the last look and the kill: then it was not killed.
        killed: status.signal() == Some(libc::SIGKILL),
        hung,
        code: status.code().unwrap_or(-1),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        took: started.elapsed(),
    }
}

/// Runs `cmd` and kills it at `at` unless it ended before.
fn run_until(cmd: Command, at: Duration, logs: &Path, label: &str) -> Ran {
    run_watching(cmd, logs, label, |elapsed| elapsed >= at)
}

/// Runs `cmd` and kills it at `moment`, judged by `progress`; a moment of progress is taken
/// `jitter` after it is seen.
fn run_to_moment(
    cmd: Command,
    moment: Moment,
    jitter: Duration,
    logs: &Path,
    label: &str,
    progress: impl Fn() -> Progress,
) -> Ran {
    let start = progress();
    let mut seen: Option<Duration> = None;
    run_watching(cmd, logs, label, |elapsed| match moment {
        // A start-up moment: also as soon as the run gets anything done, if it is quicker
        // than the uninterrupted one was.
        Moment::After(at) => elapsed >= at || progress() != start,
        Moment::Reached(target) => {
            if seen.is_none() {
                let now = progress();
                if now != start && now.0 >= target.0 && now.1 >= target.1 {
                    seen = Some(elapsed);
                }
            }
            seen.is_some_and(|at| elapsed >= at + jitter)
        }
    })
}

/// Runs `cmd` to its end, sampling `state` all along: the reference run.
fn run_sampled<S>(
    cmd: Command,
    logs: &Path,
    label: &str,
    state: impl Fn() -> S,
) -> (Ran, Vec<(Duration, S)>) {
    let mut samples = Vec::new();
    let ran = run_watching(cmd, logs, label, |elapsed| {
        samples.push((elapsed, state()));
        false
    });
    (ran, samples)
}

/// Runs `cmd` to its end (a hang is killed after [`HANG`]).
fn run_to_end(cmd: Command, logs: &Path, label: &str) -> Ran {
    run_watching(cmd, logs, label, |_| false)
}

/// A run that ends by itself must end well, and without a panic.
fn ended_well(ran: &Ran, what: &str) -> Result<(), String> {
    if ran.stderr.contains("panicked") {
        return Err(format!("{what}: fmig panicked: {}", ran.describe()));
    }
    if ran.hung {
        return Err(format!("{what}: {}", ran.describe()));
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

/// Per table, the file rows (1-based) listed in `left-behind/<table>.csv`.
fn left_behind_rows(dir: &Path) -> BTreeMap<String, Vec<u64>> {
    let mut out = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(table) = path.file_stem().and_then(|t| t.to_str()) else {
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let rows = text
            .lines()
            .skip(1)
            .filter_map(|l| l.split(',').next()?.parse().ok())
            .collect();
        out.insert(table.to_string(), rows);
    }
    out
}

/// The import's state in `db`: per table, rows committed by its checkpoint (0 without one),
/// rows present, and whether the import was completed.
fn import_state(setup: &Setup, db: &str) -> BTreeMap<String, (u64, u64, bool)> {
    let checkpoints = setup
        .cluster
        .psql(db, "SELECT to_regclass('fmig.import_progress') IS NOT NULL")
        .trim()
        == "t";
    let counts: Vec<String> = fmig::manifest::builtin()
        .iter()
        .map(|t| format!("SELECT '{0}' AS t, count(*) AS n FROM public.{0}", t.name))
        .collect();
    // An also entry's unit (`<table>+<target>`) has a checkpoint of its own and no table: its
    // rows are counted in its target table's.
    let sql = if checkpoints {
        format!(
            "WITH c AS ({}) SELECT c.t, coalesce(p.rows_committed, 0), c.n, \
             p.completed_at IS NOT NULL FROM c LEFT JOIN fmig.import_progress p ON p.table_name = c.t \
             UNION ALL SELECT table_name, rows_committed, 0, completed_at IS NOT NULL \
             FROM fmig.import_progress WHERE table_name LIKE '%+%'",
            counts.join(" UNION ALL ")
        )
    } else {
        format!(
            "WITH c AS ({}) SELECT c.t, 0, c.n, false FROM c",
            counts.join(" UNION ALL ")
        )
    };
    setup
        .cluster
        .psql(db, &sql)
        .lines()
        .map(|line| {
            let f: Vec<&str> = line.split('|').collect();
            (
                f[0].to_string(),
                (f[1].parse().unwrap(), f[2].parse().unwrap(), f[3] == "t"),
            )
        })
        .collect()
}

/// Transactions rolled back in `db` so far (a killed client's open transaction is one).
fn rollbacks(setup: &Setup, db: &str) -> u64 {
    setup
        .cluster
        .psql(
            db,
            "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()",
        )
        .trim()
        .parse()
        .expect("xact_rollback")
}

/// Waits until no other client session is connected to `db` (a killed client's backend
/// notices the closed socket, rolls back and exits), at most a minute.
fn wait_for_no_sessions(setup: &Setup, db: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND backend_type = 'client backend' \
         AND application_name <> '{WATCHER}'"
    );
    while setup.cluster.psql(db, &sql).trim() != "0" {
        assert!(
            Instant::now() < deadline,
            "a killed fmig's session is still open after a minute"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The import's checkpoints as `table=rows,...`, `-` before the checkpoint table exists. One
/// query that neither fails nor counts as a rollback without the table.
const CHECKPOINTS_SQL: &str = "SELECT CASE WHEN to_regclass('fmig.import_progress') IS NULL THEN '-' \
     ELSE coalesce((xpath('/row/s/text()', query_to_xml('SELECT string_agg(table_name || ''='' \
       || rows_committed, '','') AS s FROM fmig.import_progress', false, true, '')))[1]::text, '') END";

/// The application name of [`Watcher`]'s session, which [`wait_for_no_sessions`] ignores.
const WATCHER: &str = "fmig-kill-storm-watcher";

/// A session that watches an import's checkpoints, a few milliseconds a look (a psql process
/// takes tens).
struct Watcher {
    runtime: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

impl Watcher {
    fn connect(setup: &Setup, db: &str) -> Watcher {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("watcher runtime");
        let client = runtime.block_on(async {
            let (client, connection) = tokio_postgres::Config::new()
                .host("127.0.0.1")
                .port(setup.cluster.port())
                .user("postgres")
                .password(crate::support::cluster::Cluster::PASSWORD)
                .dbname(db)
                .application_name(WATCHER)
                .connect(tokio_postgres::NoTls)
                .await
                .expect("watcher connection");
            tokio::spawn(connection);
            client
        });
        Watcher { runtime, client }
    }

    /// Rows committed per table; `None` before the load began (no checkpoint table yet).
    fn checkpoints(&self) -> Option<BTreeMap<String, u64>> {
        let text: String = self.runtime.block_on(async {
            self.client
                .query_one(CHECKPOINTS_SQL, &[])
                .await
                .expect("watch the checkpoints")
                .get(0)
        });
        if text == "-" {
            return None;
        }
        Some(
            text.split(',')
                .filter(|p| !p.is_empty())
                .map(|p| {
                    let (table, rows) = p.split_once('=').expect("table=rows");
                    (table.to_string(), rows.parse().expect("rows"))
                })
                .collect(),
        )
    }

    fn progress(&self) -> Progress {
        checkpoint_progress(&self.checkpoints())
    }
}

/// (rows committed, 1 + tables with a checkpoint), (0, 0) before the checkpoint table exists:
/// the load has begun at (0, 1).
fn checkpoint_progress(checkpoints: &Option<BTreeMap<String, u64>>) -> Progress {
    checkpoints
        .as_ref()
        .map_or((0, 0), |c| (c.values().sum(), 1 + c.len() as u64))
}

/// The lowest foreign-key level with a table not loaded completely: the level being copied.
fn level_in_flight(
    committed: &BTreeMap<String, u64>,
    tables: &BTreeMap<String, (u64, u64)>,
) -> Option<u64> {
    tables
        .iter()
        .filter(|(t, (_, rows))| committed.get(*t).copied().unwrap_or(0) < *rows)
        .map(|(_, (level, _))| *level)
        .min()
}

/// The import's kill moments, in the order of the work: one in the check pass, one as each
/// foreign-key level begins (whatever the level's size: the moment all lower levels are
/// committed, or for level 0 the checkpoint table created), one when every row is committed
/// (sequences and completion left), and the rest one in each equal slice of the uninterrupted
/// run.
fn import_moments(
    timeline: &Reference,
    tables: &BTreeMap<String, (u64, u64)>,
    seed: u64,
) -> Vec<Moment> {
    let mut rng = Rng::new(seed);
    let load_start = timeline.phases.get(1).map_or(timeline.total, |(_, t)| *t);
    let mut moments = vec![Moment::After(load_start.mul_f64(rng.unit()))];
    let deepest = tables.values().map(|(level, _)| *level).max().unwrap_or(0);
    for level in 0..=deepest + 1 {
        let below = tables.values().filter(|(l, _)| *l < level);
        moments.push(Moment::Reached((
            below.clone().map(|(_, rows)| rows).sum(),
            1 + below.count() as u64,
        )));
    }
    let rest = KILLS.saturating_sub(moments.len());
    for i in 0..rest {
        let at = timeline
            .total
            .mul_f64((i as f64 + rng.unit()) / rest as f64);
        moments.push(timeline.moment(at));
    }
    moments.truncate(KILLS);
    moments.sort_by_key(|m| match m {
        Moment::After(at) => (0, 0, *at),
        Moment::Reached((rows, tables)) => (*rows, *tables, Duration::MAX),
    });
    moments
}

fn import_storm() -> Outcome {
    let mut outcome = Outcome::default();
    let logs = logs_dir();
    // The rewrite's mapping: rows left behind by filters, lookups, staged enums.
    let s = Setup::rewrite(&SeedConfig {
        organizations: 12,
        sensor_readings: 30_000,
        ..SeedConfig::default()
    });
    s.export("out").expect_code(0);
    s.write_user_mapping("out");
    let tables = export_tables(&s.work.path().join("out"));
    let left_dir = s.work.path().join("out/left-behind");
    let total_rows: u64 = tables.values().map(|(_, rows)| rows).sum();

    let import = |db: &str, extra: &[&str]| {
        let mut args = vec!["import", "--input-dir", "out", "--unmapped", "null"];
        args.extend_from_slice(extra);
        s.work
            .command(&args, &[("DATABASE_URL", &s.cluster.url(db))])
    };
    // The reference: an uninterrupted import into a database of its own, its progress sampled.
    s.cluster.create_database("reference");
    s.load_target_schema("reference");
    let watch_reference = Watcher::connect(&s, "reference");
    let (ran, samples) = run_sampled(import("reference", &[]), logs.path(), "reference", || {
        watch_reference.checkpoints()
    });
    assert!(
        ran.code == 0 && !ran.killed,
        "the uninterrupted import failed: {}",
        ran.describe()
    );
    drop(watch_reference);
    let timeline = Reference::new(
        ran.took,
        samples,
        checkpoint_progress,
        |state| match state {
            None => "connect/check pass".into(),
            Some(committed) => match level_in_flight(committed, &tables) {
                Some(level) => format!("copy of level {level}"),
                None => "finish".into(),
            },
        },
    );
    // The rewrite's mapping generates ttn_connections.webhook_secret: random in every import.
    let generated = ["webhook_secret"];
    let reference = common::fingerprint_without(&s.cluster, "reference", &generated);

    let watcher = Watcher::connect(&s, TARGET_DB);
    let mut phases: BTreeMap<String, u32> = BTreeMap::new();
    let mut landed = 0;
    let mut before = import_state(&s, TARGET_DB);
    for (i, moment) in import_moments(&timeline, &tables, 0x1A4F_0001)
        .into_iter()
        .enumerate()
    {
        // File rows committed by the tables' own units (an also entry reads them again).
        let committed = |st: &BTreeMap<String, (u64, u64, bool)>| -> u64 {
            st.iter()
                .filter(|(t, _)| !t.contains('+'))
                .map(|(_, (c, _, _))| c)
                .sum()
        };
        let rollbacks_before = rollbacks(&s, TARGET_DB);
        let ran = run_to_moment(
            import(TARGET_DB, &[]),
            moment,
            Duration::ZERO,
            logs.path(),
            &format!("import-{i}"),
            || watcher.progress(),
        );
        // The server ends the killed run's session; its last transaction is then settled.
        wait_for_no_sessions(&s, TARGET_DB);
        let rollbacks_after = rollbacks(&s, TARGET_DB);
        let after = import_state(&s, TARGET_DB);
        let mut result = ended_well(
            &ran,
            &format!("run {} (kill planned {})", i + 1, moment.describe()),
        );
        // The promises a resume rests on: what the checkpoint says is what is there, and
        // nothing committed is ever taken back.
        // A checkpoint counts file rows; the rows the mapping leaves behind are not loaded.
        // A target table fed by several units holds the loaded rows of each.
        let left = left_behind_rows(&left_dir);
        let mut loaded: BTreeMap<&str, (u64, Vec<String>)> = BTreeMap::new();
        for (unit, (committed, _, _)) in &after {
            let skipped = left.get(unit).map_or(0, |rows| {
                rows.iter().filter(|&&r| r <= *committed).count() as u64
            });
            let table = unit.rsplit('+').next().unwrap();
            let entry = loaded.entry(table).or_default();
            entry.0 += committed - skipped;
            entry.1.push(format!(
                "{unit}: {committed} file rows, {skipped} left behind"
            ));
        }
        for (table, (committed, present, _)) in &after {
            let earlier = before.get(table).map_or(0, |b| b.0);
            let (expected, units) = loaded.get(table.as_str()).cloned().unwrap_or_default();
            if result.is_ok() && !table.contains('+') && expected != *present {
                result = Err(format!(
                    "after run {} ({}): {table} has {present} rows but its checkpoints say {}",
                    i + 1,
                    if ran.killed { "killed" } else { "ended" },
                    units.join("; ")
                ));
            } else if result.is_ok() && *committed < earlier {
                result = Err(format!(
                    "after run {}: {table} went back from {earlier} committed rows to {committed}",
                    i + 1
                ));
            }
        }
        outcome.record(result);
        let phase = if !ran.killed {
            "ended before its kill".to_string()
        } else {
            landed += 1;
            // The batch transaction is always open while a table loads, and the run ends
            // each table's load with an empty ROLLBACK: rollbacks beyond those mean the kill
            // came in the middle of a batch.
            let finished_tables = after
                .iter()
                .filter(|(t, (c, _, _))| {
                    // An also entry's unit reads its table's file.
                    let file = t.split('+').next().unwrap();
                    let rows = tables.get(file).map_or(0, |(_, rows)| *rows);
                    *c == rows && before.get(*t).map_or(0, |b| b.0) < rows
                })
                .count() as u64;
            let in_batch = rollbacks_after.saturating_sub(rollbacks_before) > finished_tables;
            // The level in flight: the lowest with a table not complete yet.
            let in_flight = after
                .iter()
                .filter(|(t, (c, _, _))| tables.get(*t).is_some_and(|(_, rows)| c < rows))
                .filter_map(|(t, _)| tables.get(t).map(|(level, _)| *level))
                .min();
            if after.values().any(|(_, _, done)| *done) {
                "after the last commit".to_string()
            } else if committed(&after) == total_rows {
                "finish (sequences, completion)".to_string()
            } else if let (Some(level), true) = (
                in_flight,
                in_batch || committed(&after) > committed(&before),
            ) {
                format!("copy of level {level}")
            } else {
                "no batch open (connect, check pass, or between transactions)".to_string()
            }
        };
        println!(
            "    import run {:2}: kill {} -> after {:.2}s: {phase}; {} rows committed",
            i + 1,
            moment.describe(),
            ran.took.as_secs_f64(),
            committed(&after)
        );
        *phases.entry(phase).or_default() += 1;
        before = after;
    }

    // The last run completes; the end state is the reference's, and verify agrees.
    let last = run_to_end(import(TARGET_DB, &[]), logs.path(), "import-last");
    if last.killed || last.code != 0 {
        outcome.failures += 1;
        outcome
            .problems
            .push(format!("the completing run: {}", last.describe()));
    }
    let got = common::fingerprint_without(&s.cluster, TARGET_DB, &generated);
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
        "{total_rows} rows; uninterrupted {:.1}s ({}); {landed} of {KILLS} kills landed \
         mid-run: {}; end state {} the reference's; verify exit {}",
        timeline.total.as_secs_f64(),
        timeline.describe_phases(),
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

/// An emulated project whose every request takes `latency`, and whose creates store the user
/// `latency` before they answer: a kill then often falls between "created" and "recorded".
fn emulator(latency: Duration) -> Emulator {
    Emulator::start_with(
        Config {
            oauth_providers: PROVIDERS.split(',').map(String::from).collect(),
            ..Config::default()
        },
        Faults {
            latency,
            delay_after_create: latency,
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
    let Setup { cluster, work, .. } = Setup::new(&SeedConfig {
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
    let latency = Duration::from_millis(25);
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

    // The reference: an uninterrupted run against an emulator of its own, its progress (users
    // stored) sampled.
    let reference_emu = emulator(latency);
    let (reference_run, samples) = run_sampled(
        command(&reference_work, &reference_emu, &[]),
        logs.path(),
        "reference",
        || reference_emu.users().len() as u64,
    );
    assert!(
        reference_run.code == 0 && !reference_run.killed,
        "the uninterrupted run failed: {}",
        reference_run.describe()
    );
    let reference = by_supabase_id(&reference_emu);
    let all = reference.len() as u64;
    let timeline = Reference::new(
        reference_run.took,
        samples,
        |users| (*users, 0),
        |users| match *users {
            0 => "start-up (plan, journal, listing)".into(),
            n if n < all => "creating users".into(),
            _ => "finish (mapping, summary)".into(),
        },
    );
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
    // Past the start-up, a kill comes up to two requests after the user the uninterrupted run
    // had reached: between storing a user and answering, in the journal write, or in flight.
    let mut rng = Rng::new(0x1A4F_0012);
    for (i, at) in timeline.times(0x1A4F_0002).into_iter().enumerate() {
        let moment = timeline.moment(at);
        let jitter = (latency * 4).mul_f64(rng.unit());
        let ran = run_to_moment(
            command(&work, &emu, &[]),
            moment,
            jitter,
            logs.path(),
            &format!("migrate-{i}"),
            || (emu.users().len() as u64, 0),
        );
        let users = by_supabase_id(&emu);
        let what = format!("run {} (kill planned {})", i + 1, moment.describe());
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
            let mapped = check_mapping(&work, &users, false).unwrap_or(0);
            if after == reference.len() && mapped == after {
                "after the last create (mapping, summary)"
            } else if after > before {
                "creating users"
            } else {
                "start-up (plan, journal, listing)"
            }
        };
        println!(
            "    migrate-users run {:2}: kill {} (+{}ms) -> after {:.2}s: {phase}; {after} users",
            i + 1,
            moment.describe(),
            jitter.as_millis(),
            ran.took.as_secs_f64(),
        );
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
    // Users the server had created when a kill came before fmig recorded them, found again.
    let reconciled = std::fs::read_to_string(work.path().join("data/user-migration.journal.jsonl"))
        .unwrap_or_default()
        .matches("\"event\":\"reconciled\"")
        .count();
    outcome.detail = format!(
        "{} users to create; uninterrupted {:.1}s ({}; {}ms per request + {}ms between storing \
         a user and answering); {landed} of {KILLS} kills landed mid-run: {}; \
         {reconciled} users created by a killed run were found and recorded by the next; end: {} \
         users, {} duplicated, mapping {} entries",
        reference.len(),
        timeline.total.as_secs_f64(),
        timeline.describe_phases(),
        latency.as_millis(),
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
        organizations: 12,
        sensor_readings: 30_000,
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

    // The reference: an uninterrupted export, what it has written watched, imported into a
    // database of its own.
    let export = |dir: &str| {
        s.work.command(
            &["export", "--output-dir", dir],
            &[("SUPABASE_DB_URL", &s.source_url())],
        )
    };
    let reference_dir = s.work.path().join("reference");
    let (ran, samples) = run_sampled(export("reference"), logs.path(), "reference", || {
        export_leftovers(&reference_dir)
    });
    assert!(
        ran.code == 0 && !ran.killed,
        "the uninterrupted export failed: {}",
        ran.describe()
    );
    let timeline = Reference::new(
        ran.took,
        samples,
        |_| (0, 0),
        |(metadata, data, temp)| {
            if *metadata {
                "metadata.json written".into()
            } else if data + temp == 0 {
                "connect/snapshot".into()
            } else {
                "copy".into()
            }
        },
    );
    s.cluster.create_database("reference");
    s.load_target_schema("reference");
    s.import_into("reference", "reference", &with_mapping)
        .expect_code(0);
    let reference = common::fingerprint(&s.cluster, "reference");
    let files = export_tables(&s.work.path().join("reference")).len() + 1;

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
    for (i, at) in timeline.times(0x1A4F_0003).into_iter().enumerate() {
        let ran = run_until(export("out"), at, logs.path(), &format!("export-{i}"));
        let what = format!(
            "export {} (kill planned at {:.2}s)",
            i + 1,
            at.as_secs_f64()
        );
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
        println!(
            "    export run {:2}: kill at {:.2}s -> {phase}",
            i + 1,
            at.as_secs_f64()
        );
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
    let last = run_to_end(export("out"), logs.path(), "export-last");
    let result = ended_well(&last, "the completing export").and_then(|()| {
        let (_, _, temp) = export_leftovers(&s.work.path().join("out"));
        if last.killed || last.code != 0 {
            Err(format!("the completing export: {}", last.describe()))
        } else if temp > 0 {
            Err(format!(
                "the completing export left {temp} temporary files of the killed ones behind"
            ))
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
        "{} rows in {files} files; uninterrupted {:.1}s ({}); {landed} of {KILLS} kills landed \
         mid-run: {}; import said: {}",
        reference.iter().map(|t| t.1).sum::<u64>(),
        timeline.total.as_secs_f64(),
        timeline.describe_phases(),
        tally(&phases),
        verdicts
            .iter()
            .map(|(v, n)| format!("{n} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    outcome
}
