//! The import benchmark (issue #5): `fmig import` of `sensor_readings` against `psql \copy ...
//! from` of the same rows, into identical tables, in the same run.
//!
//! Starts one throwaway PostgreSQL cluster and, for each `--rows N`:
//!
//! 1. seeds a source database with N `sensor_readings` (the rest of the fixture at its default
//!    size), runs `fmig export` into a temp dir, and writes `user-mapping.json` (every auth user
//!    gets a new id) and the fixture column mapping `fmig.toml`, as `tests/import.rs` does
//!    (untimed);
//! 2. creates two target databases with the target fixture schema (where `sensor_readings` is
//!    partitioned, with its primary key, an index and two foreign keys) and imports every other
//!    table into both with fmig, so the readings' foreign keys have their parents (untimed);
//! 3. imports `sensor_readings` once into target A with fmig and dumps it from there with
//!    `\copy (select <columns> from sensor_readings order by id) to FILE`: a text-format file of
//!    exactly the rows fmig writes, in the export file's order (untimed);
//! 4. times, `--repeat` times each, interleaved with the order rotated every round:
//!    - `fmig import --table sensor_readings --unmapped null` into A (default batch size, 500);
//!    - `psql -c "\copy sensor_readings (<columns>) from FILE"` into B;
//!    - `fmig import ... --batch-size B` into A for each `--extra-batch-sizes` (informational).
//!
//!    Before each run the benchmark (untimed) empties the table - `TRUNCATE`, and for fmig the
//!    table's checkpoint row `fmig.import_progress` - then runs `CHECKPOINT` and `sync`, so no
//!    run pays for the previous one's dirty pages. After each run the table must hold N rows;
//!    at the end, A and B must hold the same rows (a content fingerprint is compared).
//!
//! Each run's wall time and peak RSS (`ru_maxrss` from `wait4` on the child, exact and per
//! process) are recorded; the medians are printed with the targets, which are
//! informational: the exit code is 0 whenever everything ran. Run it through
//! `scripts/bench-import.sh`, which builds the release `fmig` it drives.
// libc calls the standard library has no safe form of (sync, wait4's rusage, kill, statvfs).
#![allow(unsafe_code)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::cluster::Cluster;
use support::seed::{self, SeedConfig};

/// Environment variables fmig reads; cleared so the developer's own settings cannot leak in.
const FMIG_ENV: &[&str] = &[
    "SUPABASE_DB_URL",
    "DATABASE_URL",
    "STACK_AUTH_PROJECT_ID",
    "STACK_AUTH_SECRET_KEY",
    "STACK_AUTH_API_URL",
    "LOG_FILE_PATH",
    "EXPORT_DIR",
    "RUST_LOG",
    "PGPASSWORD",
];

const TABLE: &str = "sensor_readings";
const RSS_TARGET_MIB: f64 = 64.0;
/// fmig's time (default batch size) over the raw COPY's.
const TIME_RATIO_TARGET: f64 = 1.25;
/// Issue #16's target: fmig at most half of COPY's time into the same schema.
const FAST_RATIO_TARGET: f64 = 0.5;
/// ... for this many rows and more (the rebuild and ANALYZE cost the same on fewer).
const FAST_RATIO_ROWS: usize = 1_000_000;
const DEFAULT_BATCH_SIZE: u32 = 500;

struct Options {
    rows: Vec<usize>,
    repeat: usize,
    extra_batch_sizes: Vec<u32>,
    fmig: PathBuf,
    fmig_args: Vec<String>,
    workdir: Option<PathBuf>,
    max_load: Option<f64>,
    max_wait: u64,
    whole_jobs: Vec<u16>,
    jobs: Vec<u16>,
}

fn usage() -> &'static str {
    "usage: bench_import [--rows N[,N...] (100000,1000000)] [--repeat R (3)] \
     [--extra-batch-sizes B[,B...]|none (5000)] [--jobs J[,J...]|none (2)] [--fmig PATH] \
     [--fmig-arg ARG]... \
     [--max-load L] [--max-wait S (900)] [--whole-jobs J[,J...]|none (1,4)] [--workdir DIR]\n\
     \n\
     --rows               sensor_readings sizes, run in turn (the issue also names 3000000)\n\
     --repeat             timed runs per contender and size; the median is reported\n\
     --extra-batch-sizes  further fmig runs with --batch-size B (informational); none for no extra\n\
     --jobs               further fmig runs (batch 500) with --jobs J: sensor_readings written on J\n\
                          connections at once; none for no extra\n\
     --fmig               the fmig binary (default: target/<profile>/fmig next to this example)\n\
     --fmig-arg           extra argument for every timed fmig import (repeatable)\n\
     --max-load           before timing each size, wait until the 1-minute load average is below L\n\
     --max-wait           ... but at most S seconds, then time anyway (the load is printed)\n\
     --whole-jobs         per size, also time one import of the whole fixture (23 tables) into a\n\
                          fresh target with each --jobs J (once each, informational)\n\
     --workdir            where the export and the dump go (default: a temp dir, removed at the end)"
}

/// `J[,J...]` or `none`.
fn parse_jobs(text: &str, flag: &str) -> Result<Vec<u16>, String> {
    if text == "none" {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|n| {
            parse_count(n, flag)
                .and_then(|n| u16::try_from(n).map_err(|_| format!("{flag} {n} is too large")))
        })
        .collect()
}

fn parse_count(text: &str, flag: &str) -> Result<usize, String> {
    text.trim()
        .replace('_', "")
        .parse::<usize>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{flag} takes positive numbers, got {text:?}"))
}

fn parse_args() -> Result<Options, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/examples/bench_import -> target/<profile>/fmig
    let default_fmig = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("fmig"))
        .unwrap_or_else(|| PathBuf::from("fmig"));
    let mut options = Options {
        rows: vec![100_000, 1_000_000],
        repeat: 3,
        extra_batch_sizes: vec![5_000],
        fmig: default_fmig,
        fmig_args: Vec::new(),
        workdir: None,
        max_load: None,
        max_wait: 900,
        whole_jobs: vec![1, 4],
        jobs: vec![2],
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--rows" => {
                options.rows = value("--rows")?
                    .split(',')
                    .map(|n| parse_count(n, "--rows"))
                    .collect::<Result<_, _>>()?
            }
            "--repeat" => options.repeat = parse_count(&value("--repeat")?, "--repeat")?,
            "--extra-batch-sizes" => {
                let text = value("--extra-batch-sizes")?;
                options.extra_batch_sizes = if text == "none" {
                    Vec::new()
                } else {
                    text.split(',')
                        .map(|n| {
                            parse_count(n, "--extra-batch-sizes").and_then(|n| {
                                u32::try_from(n).map_err(|_| format!("batch size {n} is too large"))
                            })
                        })
                        .collect::<Result<_, _>>()?
                };
            }
            "--fmig" => options.fmig = value("--fmig")?.into(),
            "--fmig-arg" => options.fmig_args.push(value("--fmig-arg")?),
            "--whole-jobs" => {
                options.whole_jobs = parse_jobs(&value("--whole-jobs")?, "--whole-jobs")?
            }
            "--jobs" => options.jobs = parse_jobs(&value("--jobs")?, "--jobs")?,
            "--workdir" => options.workdir = Some(value("--workdir")?.into()),
            "--max-load" => {
                let text = value("--max-load")?;
                options.max_load = Some(
                    text.parse::<f64>()
                        .ok()
                        .filter(|l| *l > 0.0)
                        .ok_or(format!("--max-load takes a positive number, got {text:?}"))?,
                );
            }
            "--max-wait" => {
                options.max_wait = value("--max-wait")?
                    .parse::<u64>()
                    .map_err(|e| format!("--max-wait: {e}"))?
            }
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if !options.fmig.is_file() {
        return Err(format!(
            "{} not found: build it first (scripts/bench-import.sh does)",
            options.fmig.display()
        ));
    }
    Ok(options)
}

fn main() {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench_import: {e}");
            std::process::exit(2);
        }
    };
    // Ctrl-C reaches the running tool too (same process group); the benchmark notices, stops
    // and lets the cluster's and the temp dir's Drop remove them.
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("signal runtime");
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            flag.store(true, Ordering::SeqCst);
        });
    }
    let code = match run(&options, &interrupted) {
        Ok(()) => 0,
        Err(e) if interrupted.load(Ordering::SeqCst) => {
            eprintln!("bench_import: interrupted ({e})");
            130
        }
        Err(e) => {
            eprintln!("bench_import: {e}");
            1
        }
    };
    std::process::exit(code);
}

/// One contender: fmig with a batch size and a number of connections, or psql's
/// `\copy ... from`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Fmig { batch: u32, jobs: u16 },
    PsqlCopy,
}

impl Tool {
    const DEFAULT: Tool = Tool::Fmig {
        batch: DEFAULT_BATCH_SIZE,
        jobs: 1,
    };

    fn label(self) -> String {
        match self {
            Tool::DEFAULT => "fmig import (batch 500)".to_string(),
            Tool::Fmig { batch, jobs: 1 } => format!("fmig import --batch-size {batch}"),
            Tool::Fmig {
                batch: DEFAULT_BATCH_SIZE,
                jobs,
            } => format!("fmig import --jobs {jobs}"),
            Tool::Fmig { batch, jobs } => format!("fmig import --batch-size {batch} --jobs {jobs}"),
            Tool::PsqlCopy => "psql \\copy from (text)".to_string(),
        }
    }
}

/// One timed run.
#[derive(Clone, Copy)]
struct Sample {
    seconds: f64,
    /// User + system CPU of the client process (the server's work is not in it).
    cpu_seconds: f64,
    peak_rss_kib: u64,
}

/// Medians over the runs of one contender at one size.
struct Summary {
    seconds: f64,
    cpu_seconds: f64,
    peak_rss_kib: u64,
}

impl Summary {
    fn of(samples: &[Sample]) -> Summary {
        Summary {
            seconds: median(samples.iter().map(|s| s.seconds).collect()),
            cpu_seconds: median(samples.iter().map(|s| s.cpu_seconds).collect()),
            peak_rss_kib: median(samples.iter().map(|s| s.peak_rss_kib).collect()),
        }
    }

    fn rss_mib(&self) -> f64 {
        self.peak_rss_kib as f64 / 1024.0
    }
}

/// The middle value (the lower middle for an even count).
fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
    values.sort_by(|a, b| a.partial_cmp(b).expect("comparable"));
    values[(values.len() - 1) / 2]
}

/// Everything one size needs: the export, fmig's working directory, the two targets, the dump.
struct Prepared {
    rows: usize,
    fmig: PathBuf,
    export: PathBuf,
    fmig_dir: PathBuf,
    db_fmig: String,
    db_copy: String,
    columns: String,
    dump: PathBuf,
}

fn run(options: &Options, interrupted: &AtomicBool) -> Result<(), String> {
    let temp = match &options.workdir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            tempfile::Builder::new()
                .prefix("fmig-bench-import-")
                .tempdir_in(dir)
        }
        None => tempfile::Builder::new()
            .prefix("fmig-bench-import-")
            .tempdir(),
    }
    .map_err(|e| format!("cannot create a work directory: {e}"))?;
    let work = temp.path();

    println!("== fmig import benchmark: {TABLE}, psql \\copy ... from as the reference");
    let cluster = Cluster::start();
    print_machine(&cluster, options);

    let mut tools = vec![Tool::DEFAULT, Tool::PsqlCopy];
    tools.extend(
        options
            .jobs
            .iter()
            .filter(|&&jobs| jobs != 1)
            .map(|&jobs| Tool::Fmig {
                batch: DEFAULT_BATCH_SIZE,
                jobs,
            }),
    );
    tools.extend(
        options
            .extra_batch_sizes
            .iter()
            .filter(|&&b| b != DEFAULT_BATCH_SIZE)
            .map(|&batch| Tool::Fmig { batch, jobs: 1 }),
    );

    let mut fmig_rss: Vec<(usize, f64)> = Vec::new();
    let mut misses = 0;
    for &rows in &options.rows {
        if interrupted.load(Ordering::SeqCst) {
            return Err("stopped before seeding".into());
        }
        let prepared = prepare(&cluster, rows, work, &options.fmig)?;
        wait_for_load(options, interrupted);
        println!(
            "   load average before timing: {}  (1/5/15 min)",
            load_average()
        );

        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); tools.len()];
        for round in 0..options.repeat {
            for offset in 0..tools.len() {
                let index = (round + offset) % tools.len();
                let tool = tools[index];
                let sample = measure(tool, &cluster, &prepared, options)?;
                println!(
                    "   round {} {:<30} {:>7.2}s  {:>9} rows/s  {:>6.1} MiB peak RSS  {:>5.2}s client CPU",
                    round + 1,
                    tool.label(),
                    sample.seconds,
                    thousands((rows as f64 / sample.seconds) as u64),
                    sample.peak_rss_kib as f64 / 1024.0,
                    sample.cpu_seconds
                );
                samples[index].push(sample);
                if interrupted.load(Ordering::SeqCst) {
                    return Err("stopped during timing".into());
                }
            }
        }
        println!("   load average after timing:  {}", load_average());
        same_rows(&cluster, &prepared)?;

        let summaries: Vec<Summary> = samples.iter().map(|s| Summary::of(s)).collect();
        print_table(rows, options.repeat, &tools, &summaries);
        let fmig = &summaries[0];
        let copy = &summaries[1];
        let ratio = fmig.seconds / copy.seconds;
        println!("   targets:");
        misses += verdict(
            "fmig time / raw COPY time",
            format!("{ratio:.2}x"),
            format!("<= {TIME_RATIO_TARGET:.2}x"),
            ratio <= TIME_RATIO_TARGET,
        );
        // Issue #16: faster than COPY into the same constrained schema, at the default batch
        // size, with whichever --jobs the run timed.
        let (best, best_ratio) = tools
            .iter()
            .zip(&summaries)
            .filter(|(t, _)| {
                matches!(
                    t,
                    Tool::Fmig {
                        batch: DEFAULT_BATCH_SIZE,
                        ..
                    }
                )
            })
            .map(|(t, s)| (t.label(), s.seconds / copy.seconds))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .expect("the default contender");
        if rows >= FAST_RATIO_ROWS {
            misses += verdict(
                &format!("{best} / raw COPY time"),
                format!("{best_ratio:.2}x"),
                format!("<= {FAST_RATIO_TARGET:.2}x"),
                best_ratio <= FAST_RATIO_TARGET,
            );
        } else {
            println!(
                "   info {:<36} {:>14}   (the {FAST_RATIO_TARGET:.2}x target is for {FAST_RATIO_ROWS}+ rows: below, the fixed costs weigh)",
                format!("{best} / raw COPY time"),
                format!("{best_ratio:.2}x")
            );
        }
        misses += verdict(
            "fmig peak RSS",
            format!("{:.1} MiB", fmig.rss_mib()),
            format!("< {RSS_TARGET_MIB:.0} MiB"),
            fmig.rss_mib() < RSS_TARGET_MIB,
        );
        fmig_rss.push((rows, fmig.rss_mib()));

        // The whole fixture (23 tables) into a fresh target, with each --jobs.
        for &jobs in &options.whole_jobs {
            let db = format!("target_whole_{rows}_{jobs}");
            cluster.create_database(&db);
            seed::load_target_schema(&cluster, &db);
            let mut cmd = fmig_command(&prepared.fmig, &prepared.fmig_dir);
            cmd.env("DATABASE_URL", cluster.url(&db))
                .args(["--no-progress", "import", "--input-dir"])
                .arg(&prepared.export)
                .args(["--unmapped", "null", "--jobs", &jobs.to_string()])
                .args(&options.fmig_args);
            let sample = run_timed(
                cmd,
                &prepared.fmig_dir,
                &format!("fmig import --jobs {jobs}"),
            )?;
            println!(
                "   whole fixture, fmig import --jobs {jobs}: {:.2}s, {:.1} MiB peak RSS, {:.2}s client CPU",
                sample.seconds,
                sample.peak_rss_kib as f64 / 1024.0,
                sample.cpu_seconds
            );
            cluster.psql("postgres", &format!("DROP DATABASE \"{db}\""));
        }

        // The next size gets its own databases; these ones' disk space is no longer needed.
        for db in [&prepared.db_fmig, &prepared.db_copy] {
            cluster.psql("postgres", &format!("DROP DATABASE \"{db}\""));
        }
        let _ = std::fs::remove_dir_all(work.join(format!("n{rows}")));
    }

    println!("\n== fmig peak RSS across sizes (default batch size)");
    for (rows, mib) in &fmig_rss {
        println!("   {rows:>12} rows  {mib:>8.1} MiB");
    }
    if fmig_rss.len() < 2 {
        println!("   flat across sizes: n/a (run with several sizes, e.g. --rows 100000,1000000)");
    } else {
        let low = fmig_rss.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
        let high = fmig_rss.iter().map(|r| r.1).fold(0.0, f64::max);
        // Allocator noise moves RSS by a few MiB; growth with the row count would show as a
        // multiple.
        let flat = high - low <= (low * 0.10).max(4.0);
        misses += verdict(
            "fmig peak RSS flat across sizes",
            format!("{low:.1}..{high:.1} MiB"),
            "spread <= max(10%, 4 MiB)".to_string(),
            flat,
        );
    }
    println!("\n   load average at the end: {}", load_average());
    println!(
        "   {} (targets are informational: the exit code is 0 whenever every run succeeded)",
        if misses == 0 {
            "all targets met".to_string()
        } else {
            format!("{misses} target(s) missed")
        }
    );
    Ok(())
}

/// Steps 1-3 of the module comment, all untimed.
fn prepare(cluster: &Cluster, rows: usize, work: &Path, fmig: &Path) -> Result<Prepared, String> {
    let source = format!("source_{rows}");
    let db_fmig = format!("target_fmig_{rows}");
    let db_copy = format!("target_copy_{rows}");
    let dir = work.join(format!("n{rows}"));
    let export = dir.join("export");
    let fmig_dir = dir.join("fmig");
    std::fs::create_dir_all(&fmig_dir).map_err(|e| format!("{}: {e}", fmig_dir.display()))?;

    println!("\n== {rows} rows: seeding database {source}");
    let started = Instant::now();
    cluster.create_database(&source);
    seed::load_source_schema(cluster, &source);
    let summary = seed::seed_source(
        cluster,
        &source,
        &SeedConfig {
            sensor_readings: rows,
            ..Default::default()
        },
    );
    let count = summary.tables.get(TABLE).copied().unwrap_or(0);
    if count != rows as u64 {
        return Err(format!("the seed made {count} {TABLE} rows, not {rows}"));
    }
    println!("   seeded in {:.1}s", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let mut export_cmd = fmig_command(fmig, &fmig_dir);
    export_cmd
        .env("SUPABASE_DB_URL", cluster.url(&source))
        .args(["--no-progress", "export", "--output-dir"])
        .arg(&export);
    run_checked(export_cmd, "fmig export")?;
    // The new id of a user is derived from the old one, as in tests/import.rs.
    let mapping = cluster.psql(
        &source,
        "SELECT json_build_object('generatedAt', now(), 'retainUntil', now() + interval '90 days', \
           'mappings', json_agg(json_build_object('supabaseUserId', id, \
             'stackAuthUserId', md5('stack' || id)::uuid, 'email', email, 'migratedAt', now()))) \
         FROM auth.users",
    );
    write_file(&export.join("user-mapping.json"), mapping.trim())?;
    let fixture = seed::fixture_path("fmig.toml");
    std::fs::copy(&fixture, fmig_dir.join("fmig.toml"))
        .map_err(|e| format!("{}: {e}", fixture.display()))?;
    let file = export.join(format!("{TABLE}.json"));
    let file_size = std::fs::metadata(&file)
        .map_err(|e| format!("{}: {e}", file.display()))?
        .len();
    println!(
        "   exported in {:.1}s; {TABLE}.json: {:.1} MB",
        started.elapsed().as_secs_f64(),
        file_size as f64 / 1e6
    );
    // Everything needed from the source is in the export now.
    cluster.psql("postgres", &format!("DROP DATABASE \"{source}\""));

    // Both targets: the fixture schema, and every other table imported by fmig.
    let started = Instant::now();
    let others: Vec<&str> = fmig::manifest::builtin()
        .iter()
        .map(|t| t.name)
        .filter(|&t| t != TABLE)
        .collect();
    let others = others.join(",");
    for db in [&db_fmig, &db_copy] {
        cluster.create_database(db);
        seed::load_target_schema(cluster, db);
        let mut cmd = fmig_command(fmig, &fmig_dir);
        cmd.env("DATABASE_URL", cluster.url(db))
            .args(["--no-progress", "import", "--input-dir"])
            .arg(&export)
            .args(["--table", &others, "--unmapped", "null"]);
        run_checked(cmd, &format!("fmig import of the other tables into {db}"))?;
    }
    println!(
        "   targets {db_fmig} and {db_copy}: schema + {} other tables imported in {:.1}s",
        others.split(',').count(),
        started.elapsed().as_secs_f64()
    );
    let shape = cluster.psql(
        &db_fmig,
        &format!(
            "SELECT (SELECT count(*) FROM pg_inherits WHERE inhparent = 'public.{TABLE}'::regclass), \
                    (SELECT count(*) FROM pg_index WHERE indrelid = 'public.{TABLE}'::regclass), \
                    (SELECT count(*) FROM pg_constraint WHERE conrelid = 'public.{TABLE}'::regclass \
                        AND contype = 'f')"
        ),
    );
    let shape: Vec<&str> = shape.trim().split('|').collect();
    println!(
        "   target {TABLE}: partitioned ({} partitions), {} indexes, {} foreign keys, in both",
        shape.first().unwrap_or(&"?"),
        shape.get(1).unwrap_or(&"?"),
        shape.get(2).unwrap_or(&"?")
    );

    // The columns fmig writes: every non-generated target column (the table copies straight
    // across; fmig's dry run says so below).
    let columns = cluster
        .psql(
            &db_fmig,
            &format!(
                "SELECT string_agg(quote_ident(attname), ', ' ORDER BY attnum) FROM pg_attribute \
                 WHERE attrelid = 'public.{TABLE}'::regclass AND attnum > 0 \
                   AND NOT attisdropped AND attgenerated = ''"
            ),
        )
        .trim()
        .to_string();
    let mut dry = fmig_command(fmig, &fmig_dir);
    dry.env("DATABASE_URL", cluster.url(&db_fmig))
        .args(["--no-progress", "import", "--input-dir"])
        .arg(&export)
        .args(["--table", TABLE, "--unmapped", "null", "--dry-run"]);
    let plan = run_checked(dry, "fmig import --dry-run")?;
    let path = if plan.contains("direct COPY") {
        "direct COPY"
    } else if plan.contains("staging") {
        "staging + mapping"
    } else {
        "?"
    };
    println!("   fmig's path for {TABLE}: {path}; columns: {columns}");

    // The reference file: what fmig loaded into A, dumped as COPY text in the file's order.
    let prepared = Prepared {
        rows,
        fmig: fmig.to_path_buf(),
        export,
        fmig_dir,
        db_fmig,
        db_copy,
        columns,
        dump: dir.join(format!("{TABLE}.copy.txt")),
    };
    let started = Instant::now();
    reset(cluster, &prepared, Tool::DEFAULT)?;
    let mut cmd = fmig_import_command(&prepared, cluster, DEFAULT_BATCH_SIZE, &[]);
    cmd.stdin(Stdio::null());
    run_checked(cmd, "fmig import (warm-up)")?;
    let mut dump = cluster.psql_command(&prepared.db_fmig);
    dump.arg("-c").arg(format!(
        "\\copy (SELECT {} FROM public.{TABLE} ORDER BY id) to '{}'",
        prepared.columns,
        prepared.dump.display()
    ));
    run_checked(dump, "psql \\copy to")?;
    let lines = count_lines(&prepared.dump)?;
    if lines != rows as u64 {
        return Err(format!(
            "the dump {} has {lines} lines, expected {rows}",
            prepared.dump.display()
        ));
    }
    println!(
        "   warm-up fmig import + text dump ({:.1} MB) in {:.1}s",
        std::fs::metadata(&prepared.dump).map_or(0, |m| m.len()) as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    Ok(prepared)
}

/// fmig in `dir` (where `fmig.toml` is) with a clean environment.
fn fmig_command(fmig: &Path, dir: &Path) -> Command {
    let mut cmd = Command::new(fmig);
    for var in FMIG_ENV {
        cmd.env_remove(var);
    }
    cmd.env("LOG_FILE_PATH", dir.join("migration.log"))
        .env("NO_COLOR", "1")
        .env("HOME", dir)
        // No .env of the developer's checkout is read from here.
        .current_dir(dir);
    cmd
}

fn fmig_import_command(
    prepared: &Prepared,
    cluster: &Cluster,
    batch_size: u32,
    extra: &[String],
) -> Command {
    let mut cmd = fmig_command(&prepared.fmig, &prepared.fmig_dir);
    cmd.env("DATABASE_URL", cluster.url(&prepared.db_fmig))
        .args(["--no-progress", "import", "--input-dir"])
        .arg(&prepared.export)
        .args(["--table", TABLE, "--unmapped", "null"]);
    if batch_size != DEFAULT_BATCH_SIZE {
        cmd.args(["--batch-size", &batch_size.to_string()]);
    }
    cmd.args(extra);
    cmd
}

/// Runs `command` to completion, untimed; its stdout, or an error with its output.
fn run_checked(mut command: Command, label: &str) -> Result<String, String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{label}: cannot start {command:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{label} failed ({})\n--- stdout\n{}\n--- stderr\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Empties the contender's target table (and fmig's checkpoint for it), then flushes what
/// earlier runs left dirty so that the next run starts from the same state.
fn reset(cluster: &Cluster, prepared: &Prepared, tool: Tool) -> Result<(), String> {
    match tool {
        Tool::Fmig { .. } => cluster.psql(
            &prepared.db_fmig,
            &format!(
                "TRUNCATE public.{TABLE}; \
                 DO $$ BEGIN IF to_regclass('fmig.import_progress') IS NOT NULL THEN \
                   DELETE FROM fmig.import_progress WHERE table_name = '{TABLE}'; END IF; END $$"
            ),
        ),
        Tool::PsqlCopy => cluster.psql(&prepared.db_copy, &format!("TRUNCATE public.{TABLE}")),
    };
    cluster.psql("postgres", "CHECKPOINT");
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    Ok(())
}

/// Resets the contender's table, runs it once timed, checks the table holds every row.
fn measure(
    tool: Tool,
    cluster: &Cluster,
    prepared: &Prepared,
    options: &Options,
) -> Result<Sample, String> {
    reset(cluster, prepared, tool)?;
    let (command, db) = match tool {
        Tool::Fmig { batch, jobs } => {
            let mut args = options.fmig_args.clone();
            if jobs != 1 {
                args.extend(["--jobs".to_string(), jobs.to_string()]);
            }
            (
                fmig_import_command(prepared, cluster, batch, &args),
                &prepared.db_fmig,
            )
        }
        Tool::PsqlCopy => {
            // The password travels in PGPASSWORD (set by psql_command), never in argv.
            let mut cmd = cluster.psql_command(&prepared.db_copy);
            cmd.arg("-c").arg(format!(
                "\\copy public.{TABLE} ({}) from '{}'",
                prepared.columns,
                prepared.dump.display()
            ));
            (cmd, &prepared.db_copy)
        }
    };
    let logs = prepared.fmig_dir.join("run");
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let sample = run_timed(command, &logs, &tool.label())?;
    let count: u64 = cluster
        .psql(db, &format!("SELECT count(*) FROM public.{TABLE}"))
        .trim()
        .parse()
        .map_err(|e| format!("count: {e}"))?;
    if count != prepared.rows as u64 {
        return Err(format!(
            "{}: {count} rows in {db}.{TABLE} after the run, expected {}",
            tool.label(),
            prepared.rows
        ));
    }
    if let Tool::Fmig { .. } = tool {
        let committed = cluster.psql(
            db,
            &format!(
                "SELECT rows_committed, completed_at IS NOT NULL FROM fmig.import_progress \
                 WHERE table_name = '{TABLE}'"
            ),
        );
        if committed.trim() != format!("{}|t", prepared.rows) {
            return Err(format!(
                "{}: checkpoint after the run is {:?}, expected {} rows, completed",
                tool.label(),
                committed.trim(),
                prepared.rows
            ));
        }
    }
    Ok(sample)
}

/// After the timed runs both targets hold the same rows (fmig's last run in A, psql's in B).
fn same_rows(cluster: &Cluster, prepared: &Prepared) -> Result<(), String> {
    let sql = format!(
        "SELECT count(*), sum(hashtextextended(t::text, 0)) FROM \
         (SELECT {} FROM public.{TABLE}) AS t",
        prepared.columns
    );
    let a = cluster.psql(&prepared.db_fmig, &sql);
    let b = cluster.psql(&prepared.db_copy, &sql);
    if a.trim() != b.trim() {
        return Err(format!(
            "the targets differ after the runs: fmig's {} vs psql's {}",
            a.trim(),
            b.trim()
        ));
    }
    println!(
        "   both targets hold the same rows (count|content fingerprint {})",
        a.trim()
    );
    Ok(())
}

/// With `--max-load`: waits (at most `--max-wait` seconds) for the machine to calm down.
fn wait_for_load(options: &Options, interrupted: &AtomicBool) {
    let Some(max) = options.max_load else {
        return;
    };
    let started = Instant::now();
    let mut reported = false;
    loop {
        let one = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|l| {
                l.split_whitespace()
                    .next()
                    .and_then(|x| x.parse::<f64>().ok())
            })
            .unwrap_or(0.0);
        if one < max || interrupted.load(Ordering::SeqCst) {
            return;
        }
        if started.elapsed().as_secs() >= options.max_wait {
            println!(
                "   load {one:.2} still >= {max} after {}s: timing anyway",
                options.max_wait
            );
            return;
        }
        if !reported {
            println!("   waiting for the 1-minute load average ({one:.2}) to drop below {max}");
            reported = true;
        }
        std::thread::sleep(Duration::from_secs(5));
    }
}

fn verdict(what: &str, value: String, target: String, pass: bool) -> usize {
    println!(
        "   {:<4} {what:<36} {value:>14}   (target {target})",
        if pass { "PASS" } else { "MISS" }
    );
    usize::from(!pass)
}

fn print_table(rows: usize, repeat: usize, tools: &[Tool], summaries: &[Summary]) {
    println!("\n   {rows} rows, median of {repeat} runs:");
    println!(
        "   {:<30} {:>8} {:>11} {:>9} {:>13} {:>12}",
        "contender", "seconds", "rows/s", "vs COPY", "peak RSS MiB", "client CPU s"
    );
    let copy = summaries[1].seconds;
    for (tool, s) in tools.iter().zip(summaries) {
        println!(
            "   {:<30} {:>8.2} {:>11} {:>8.2}x {:>13.1} {:>12.2}",
            tool.label(),
            s.seconds,
            thousands((rows as f64 / s.seconds) as u64),
            s.seconds / copy,
            s.rss_mib(),
            s.cpu_seconds
        );
    }
    println!(
        "   (vs COPY: time over psql's; client CPU: user + system time of the fmig or psql \
         process, the server's work is not in it)"
    );
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn print_machine(cluster: &Cluster, options: &Options) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or("unknown".into(), |kib| {
            format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0)
        });
    let server = cluster.psql("postgres", "SHOW server_version");
    let psql = Command::new("psql")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("unavailable: {e}"));
    let fmig = Command::new(&options.fmig)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|e| format!("unavailable: {e}"));
    println!("   machine:    {cpus} CPUs (nproc), {model}, {memory} RAM");
    println!(
        "   PostgreSQL: server {} (throwaway cluster, shared_buffers 32MB, fsync on); {psql}",
        server.trim()
    );
    println!("   fmig:       {fmig} ({})", options.fmig.display());
    if !options.fmig_args.is_empty() {
        println!("   fmig args:  {}", options.fmig_args.join(" "));
    }
    println!(
        "   load:       {} (1/5/15-minute load averages; later ones include this benchmark, \
         which keeps about 2 processes busy)",
        load_average()
    );
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Spawns `command` (stdout and stderr to files in `dir`), reaps it with `wait4` for its
/// exact peak RSS, and fails with its stderr unless it exited 0.
fn run_timed(mut command: Command, dir: &Path, label: &str) -> Result<Sample, String> {
    let stdout_path = dir.join("stdout.txt");
    let stderr_path = dir.join("stderr.txt");
    let stdout = File::create(&stdout_path).map_err(|e| e.to_string())?;
    let stderr = File::create(&stderr_path).map_err(|e| e.to_string())?;
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);

    let started = Instant::now();
    let child = command
        .spawn()
        .map_err(|e| format!("{label}: cannot start {command:?}: {e}"))?;
    let pid = child.id() as libc::pid_t;
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own unreaped child; status and usage are valid for writes.
        let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if reaped == pid {
            break;
        }
        let error = std::io::Error::last_os_error();
        if error.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("{label}: wait4 failed: {error}"));
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Reaped above: dropping the handle neither waits nor kills.
    drop(child);

    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    if code != 0 {
        let how = if libc::WIFSIGNALED(status) {
            format!("was killed by signal {}", libc::WTERMSIG(status))
        } else {
            format!("exited {code}")
        };
        return Err(format!(
            "{label} {how}\n--- stdout\n{}\n--- stderr\n{}",
            std::fs::read_to_string(&stdout_path).unwrap_or_default(),
            std::fs::read_to_string(&stderr_path).unwrap_or_default()
        ));
    }
    let cpu = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Sample {
        seconds,
        cpu_seconds: cpu(usage.ru_utime) + cpu(usage.ru_stime),
        // Linux reports ru_maxrss in KiB.
        peak_rss_kib: usage.ru_maxrss.max(0) as u64,
    })
}

fn count_lines(path: &Path) -> Result<u64, String> {
    use std::io::Read;
    let mut file = File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    loop {
        let n = file
            .read(&mut buffer)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buffer[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}
