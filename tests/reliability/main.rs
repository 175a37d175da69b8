//! The reliability suite (issue #8): scenarios on real throwaway clusters that try to break a
//! migration (kill storms, server faults, a hostile input corpus, load) and check that nothing
//! is lost or duplicated. A plain program (`harness = false`), not libtest: the scenarios run
//! one after another, each owning its clusters, and the outcome table they produce is written
//! as `docs/reliability.md` by `scripts/reliability.sh` rather than typed by hand.
//!
//! `cargo test` runs every scenario but the load ones. Arguments (after `--`): a substring of
//! a scenario name to run only matching ones, `--load` (also the slow load scenarios; or
//! `FMIG_RELIABILITY_LOAD=1`), `--write-docs PATH` (write the outcome table there), `--list`.
//! libtest's own flags, which `cargo test` may pass to every test binary, are ignored.
// libc calls the standard library has no safe form of (sync, wait4's rusage, kill, statvfs).
#![allow(unsafe_code)]

#[path = "../support/mod.rs"]
mod support;

mod common;
#[path = "../support/stack_auth_emulator.rs"]
mod emulator;
mod hostile;
mod kill_storms;
mod load;
mod server_faults;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What one scenario observed. A scenario "fails" when `failures > 0` or anything was lost or
/// duplicated, or when it panics (an assertion of its own).
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    /// Attempts made: kills, faults injected, inputs tried.
    pub runs: u32,
    /// Attempts that did not end as promised (wrong exit code, missing message, panic of fmig,
    /// a hang, a write where none is allowed).
    pub failures: u32,
    /// Rows missing or duplicated in the end state compared with an uninterrupted run (for a
    /// user migration: users missing from or duplicated in Stack Auth or the mapping).
    pub lost: u64,
    /// One line on what was observed, for the outcome table (figures welcome).
    pub detail: String,
    /// What went wrong, one entry per failure, printed and written to the docs.
    pub problems: Vec<String>,
}

impl Outcome {
    /// Records a run; `Err(problem)` counts as a failure.
    pub fn record(&mut self, result: Result<(), String>) {
        self.runs += 1;
        if let Err(problem) = result {
            self.failures += 1;
            self.problems.push(problem);
        }
    }
}

/// One row of the outcome table. `run` is a closure so that one function can make a scenario
/// per input (the hostile corpus: one row per broken input).
pub struct Scenario {
    /// "kill storm", "server fault", "hostile input", "load".
    pub group: &'static str,
    pub name: String,
    /// The promise checked, one sentence, for the docs.
    pub promise: String,
    /// Load scenarios: only with `--load`.
    pub slow: bool,
    pub run: Box<dyn Fn() -> Outcome>,
}

struct Row<'a> {
    scenario: &'a Scenario,
    outcome: Outcome,
    took: Duration,
}

impl Row<'_> {
    fn passed(&self) -> bool {
        self.outcome.failures == 0 && self.outcome.lost == 0 && self.outcome.runs > 0
    }
}

fn all() -> Vec<Scenario> {
    let mut all = Vec::new();
    all.extend(kill_storms::scenarios());
    all.extend(server_faults::scenarios());
    all.extend(hostile::scenarios());
    all.extend(load::scenarios());
    all
}

fn main() {
    let mut filter: Option<String> = None;
    let mut load = std::env::var("FMIG_RELIABILITY_LOAD").is_ok_and(|v| v == "1");
    let mut write_docs: Option<PathBuf> = None;
    let mut list = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--load" => load = true,
            "--list" => list = true,
            "--write-docs" => write_docs = Some(args.next().expect("--write-docs PATH").into()),
            // libtest flags with a separate value.
            "--test-threads" | "--color" | "--format" | "--logfile" | "--skip" => {
                args.next();
            }
            a if a.starts_with('-') => {} // other libtest flags
            a => filter = Some(a.to_string()),
        }
    }
    let scenarios = all();
    let chosen: Vec<&Scenario> = scenarios
        .iter()
        .filter(|s| load || !s.slow)
        .filter(|s| filter.as_deref().is_none_or(|f| s.name.contains(f)))
        .collect();
    if list {
        for s in &chosen {
            println!("{}: {}", s.group, s.name);
        }
        return;
    }
    // A panicking scenario prints its own message; the hook's default output is enough.
    let mut rows = Vec::new();
    for scenario in chosen {
        println!("reliability: {} / {} ...", scenario.group, scenario.name);
        let started = Instant::now();
        let outcome = match std::panic::catch_unwind(AssertUnwindSafe(|| (scenario.run)())) {
            Ok(o) => o,
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "panicked".into());
                Outcome {
                    runs: 1,
                    failures: 1,
                    detail: "the scenario itself failed".into(),
                    problems: vec![message],
                    ..Outcome::default()
                }
            }
        };
        let row = Row {
            scenario,
            outcome,
            took: started.elapsed(),
        };
        println!(
            "reliability: {} / {}: {} ({} runs, {} failures, {} lost, {:.1}s) {}",
            scenario.group,
            scenario.name,
            if row.passed() { "ok" } else { "FAILED" },
            row.outcome.runs,
            row.outcome.failures,
            row.outcome.lost,
            row.took.as_secs_f64(),
            row.outcome.detail
        );
        for p in &row.outcome.problems {
            println!("    problem: {p}");
        }
        rows.push(row);
    }
    let table = markdown(&rows, load);
    println!("\n{table}");
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("reliability.md");
    let _ = std::fs::write(&tmp, &table);
    match write_docs {
        // A partial run must not replace the table of a whole one.
        Some(path) if filter.is_some() => println!(
            "reliability: {} not written (only scenarios matching {:?} ran); the table is in {}",
            path.display(),
            filter.unwrap_or_default(),
            tmp.display()
        ),
        Some(path) => {
            std::fs::write(&path, &table).expect("write the outcome table");
            println!("reliability: outcome table written to {}", path.display());
        }
        None => {}
    }
    let failed = rows.iter().filter(|r| !r.passed()).count();
    println!(
        "reliability: {} scenario(s), {} passed, {failed} failed",
        rows.len(),
        rows.len() - failed
    );
    if failed > 0 {
        eprintln!("reliability: {failed} scenario(s) failed");
        std::process::exit(1);
    }
}

/// The outcome table as Markdown, with how and where it was produced.
fn markdown(rows: &[Row], load: bool) -> String {
    let mut out = String::new();
    out.push_str("# Reliability suite: outcome\n\n");
    out.push_str(
        "Generated by `scripts/reliability.sh` (the scenarios of `tests/reliability/`); do not \
         edit by hand. Each scenario runs the real `fmig` binary against throwaway PostgreSQL \
         clusters and the Stack Auth emulator, and checks the end state against an \
         uninterrupted run.\n\n",
    );
    out.push_str(&format!(
        "Run: {} UTC, {} build, {} CPUs, {}; load scenarios {}.\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        postgres_version(),
        if load {
            "included"
        } else {
            "not run (pass --load)"
        },
    ));
    out.push_str("| group | scenario | runs | failures | data lost | seconds | observed |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---|\n");
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} | {} |\n",
            r.scenario.group,
            r.scenario.name,
            r.outcome.runs,
            r.outcome.failures,
            r.outcome.lost,
            r.took.as_secs_f64(),
            r.outcome.detail.replace('|', "\\|"),
        ));
    }
    out.push_str("\n## What each scenario promises\n\n");
    for r in rows {
        out.push_str(&format!(
            "- **{}**: {}\n",
            r.scenario.name, r.scenario.promise
        ));
        for p in &r.outcome.problems {
            out.push_str(&format!("  - problem: {}\n", p.replace('\n', " ")));
        }
    }
    out
}

/// `postgres --version` from PATH or Debian's off-PATH directory.
fn postgres_version() -> String {
    let mut candidates = vec![PathBuf::from("postgres")];
    if let Ok(dirs) = std::fs::read_dir("/usr/lib/postgresql") {
        candidates.extend(dirs.flatten().map(|d| d.path().join("bin/postgres")));
    }
    candidates
        .iter()
        .find_map(|exe| {
            let out = std::process::Command::new(exe)
                .arg("--version")
                .output()
                .ok()?;
            String::from_utf8(out.stdout)
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "PostgreSQL".into())
}
