//! The export benchmark (issue #3): `fmig export` against PostgreSQL's own COPY, on the same
//! data in the same run.
//!
//! Starts one throwaway PostgreSQL cluster and, for each `--rows N`, loads the source fixture
//! into a fresh database with N generated `sensor_readings`, then times, `--repeat` times each
//! (interleaved, the order rotated every round so no tool always goes first):
//!
//! - `fmig export --table sensor_readings --skip-auth` (the release binary);
//! - `psql \copy (select row_to_json(t) from sensor_readings t) to FILE` (JSON made by the server);
//! - `psql \copy sensor_readings to FILE` (plain text COPY, the upper bound).
//!
//! Each run's wall time, output size and peak RSS (`ru_maxrss` from `wait4` on the child, so
//! exact and per process) are recorded; the medians are printed with the targets.
//! Run it through `scripts/bench-export.sh`, which builds the release `fmig` it drives.
// libc calls the standard library has no safe form of (sync, wait4's rusage, kill, statvfs).
#![allow(unsafe_code)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

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
const ROW_TO_JSON_TARGET: f64 = 1.0;
const TEXT_COPY_TARGET: f64 = 0.6;

struct Options {
    rows: Vec<usize>,
    repeat: usize,
    fmig: PathBuf,
    fmig_args: Vec<String>,
    workdir: Option<PathBuf>,
}

fn usage() -> &'static str {
    "usage: bench_export [--rows N[,N...] (1000000)] [--repeat R (3)] [--fmig PATH] \
     [--fmig-arg ARG]... [--workdir DIR]\n\
     \n\
     --rows      sensor_readings sizes, run in turn (e.g. 100000,1000000)\n\
     --repeat    timed runs per tool and size; the median is reported\n\
     --fmig      the fmig binary (default: target/release/fmig next to this example)\n\
     --fmig-arg  extra argument for fmig export (repeatable, e.g. --fmig-arg --gzip)\n\
     --workdir   where the output files go (default: a temp dir, removed at the end)"
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
    // target/<profile>/examples/bench_export -> target/<profile>/fmig
    let default_fmig = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("fmig"))
        .unwrap_or_else(|| PathBuf::from("fmig"));
    let mut options = Options {
        rows: vec![1_000_000],
        repeat: 3,
        fmig: default_fmig,
        fmig_args: Vec::new(),
        workdir: None,
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
            "--fmig" => options.fmig = value("--fmig")?.into(),
            "--fmig-arg" => options.fmig_args.push(value("--fmig-arg")?),
            "--workdir" => options.workdir = Some(value("--workdir")?.into()),
            "-h" | "--help" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if !options.fmig.is_file() {
        return Err(format!(
            "{} not found: build it first (scripts/bench-export.sh does)",
            options.fmig.display()
        ));
    }
    Ok(options)
}

fn main() {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench_export: {e}");
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
            eprintln!("bench_export: interrupted ({e})");
            130
        }
        Err(e) => {
            eprintln!("bench_export: {e}");
            1
        }
    };
    std::process::exit(code);
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tool {
    Fmig,
    RowToJson,
    TextCopy,
}

const TOOLS: [Tool; 3] = [Tool::Fmig, Tool::RowToJson, Tool::TextCopy];

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Fmig => "fmig export",
            Tool::RowToJson => "psql \\copy row_to_json",
            Tool::TextCopy => "psql \\copy text",
        }
    }
}

/// One timed run of one tool.
#[derive(Clone, Copy)]
struct Sample {
    seconds: f64,
    /// User + system CPU of the client process (the server's work is not in it).
    cpu_seconds: f64,
    bytes: u64,
    peak_rss_kib: u64,
}

/// Medians over the runs of one tool at one size.
struct Summary {
    seconds: f64,
    cpu_seconds: f64,
    bytes: u64,
    peak_rss_kib: u64,
}

impl Summary {
    fn of(samples: &[Sample]) -> Summary {
        Summary {
            seconds: median(samples.iter().map(|s| s.seconds).collect()),
            cpu_seconds: median(samples.iter().map(|s| s.cpu_seconds).collect()),
            bytes: median(samples.iter().map(|s| s.bytes).collect()),
            peak_rss_kib: median(samples.iter().map(|s| s.peak_rss_kib).collect()),
        }
    }

    fn rows_per_second(&self, rows: usize) -> f64 {
        rows as f64 / self.seconds
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

fn run(options: &Options, interrupted: &AtomicBool) -> Result<(), String> {
    let temp = match &options.workdir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            tempfile::Builder::new()
                .prefix("fmig-bench-")
                .tempdir_in(dir)
        }
        None => tempfile::Builder::new().prefix("fmig-bench-").tempdir(),
    }
    .map_err(|e| format!("cannot create a work directory: {e}"))?;
    let work = temp.path();

    println!("== fmig export benchmark: {TABLE}, PostgreSQL COPY as the reference");
    let cluster = Cluster::start();
    print_machine(&cluster, options);

    let mut fmig_rss: Vec<(usize, f64)> = Vec::new();
    let mut misses = 0;
    for &rows in &options.rows {
        if interrupted.load(Ordering::SeqCst) {
            return Err("stopped before seeding".into());
        }
        let db = format!("bench_{rows}");
        println!("\n== {rows} rows: seeding database {db}");
        let seeded = Instant::now();
        cluster.create_database(&db);
        seed::load_source_schema(&cluster, &db);
        let summary = seed::seed_source(
            &cluster,
            &db,
            &SeedConfig {
                sensor_readings: rows,
                ..Default::default()
            },
        );
        let count = summary.tables.get(TABLE).copied().unwrap_or(0);
        if count != rows as u64 {
            return Err(format!("the seed made {count} {TABLE} rows, not {rows}"));
        }
        // Every tool then reads settled, all-visible pages from a warm cache: hint bits and
        // the visibility map are set once here, not by whichever tool happens to run first.
        cluster.psql(&db, &format!("VACUUM (FREEZE, ANALYZE) public.{TABLE}"));
        cluster.psql(&db, "CHECKPOINT");
        let size = cluster.psql(
            &db,
            &format!(
                "SELECT pg_size_pretty(pg_total_relation_size('public.{TABLE}')), \
                 count(*) FROM public.{TABLE}"
            ),
        );
        let (disk, counted) = size.trim().split_once('|').unwrap_or(("?", "?"));
        println!(
            "   seeded in {:.1}s; {TABLE}: {counted} rows, {disk} on disk",
            seeded.elapsed().as_secs_f64(),
        );
        println!("   load average before timing: {}", load_average());

        let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); TOOLS.len()];
        for round in 0..options.repeat {
            for offset in 0..TOOLS.len() {
                let index = (round + offset) % TOOLS.len();
                let tool = TOOLS[index];
                let sample = measure(tool, &cluster, &db, rows, work, options)?;
                println!(
                    "   round {} {:<24} {:>7.2}s  {:>6.1} MiB peak RSS  {:>5.2}s client CPU",
                    round + 1,
                    tool.label(),
                    sample.seconds,
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

        let summaries: Vec<Summary> = samples.iter().map(|s| Summary::of(s)).collect();
        print_table(rows, options.repeat, &summaries);
        let fmig = &summaries[0];
        let json_ratio = fmig.rows_per_second(rows) / summaries[1].rows_per_second(rows);
        let text_ratio = fmig.rows_per_second(rows) / summaries[2].rows_per_second(rows);
        println!("   targets:");
        misses += verdict(
            "fmig rows/s / row_to_json rows/s",
            format!("{json_ratio:.2}"),
            format!(">= {ROW_TO_JSON_TARGET:.1}"),
            json_ratio >= ROW_TO_JSON_TARGET,
        );
        misses += verdict(
            "fmig rows/s / text COPY rows/s",
            format!("{text_ratio:.2}"),
            format!(">= {TEXT_COPY_TARGET:.1}"),
            text_ratio >= TEXT_COPY_TARGET,
        );
        misses += verdict(
            "fmig peak RSS",
            format!("{:.1} MiB", fmig.rss_mib()),
            format!("< {RSS_TARGET_MIB:.0} MiB"),
            fmig.rss_mib() < RSS_TARGET_MIB,
        );
        fmig_rss.push((rows, fmig.rss_mib()));

        // The next size gets its own database; this one's disk space is no longer needed.
        cluster.psql("postgres", &format!("DROP DATABASE \"{db}\""));
    }

    println!("\n== fmig peak RSS across sizes");
    for (rows, mib) in &fmig_rss {
        println!("   {rows:>12} rows  {mib:>8.1} MiB");
    }
    if fmig_rss.len() < 2 {
        println!("   flat across sizes: n/a (run with several sizes, e.g. --rows 100000,1000000)");
    } else {
        let low = fmig_rss.iter().map(|r| r.1).fold(f64::INFINITY, f64::min);
        let high = fmig_rss.iter().map(|r| r.1).fold(0.0, f64::max);
        // Allocator and page-cache noise moves RSS by a few MiB; growth with the row count
        // would show as a multiple.
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

fn verdict(what: &str, value: String, target: String, pass: bool) -> usize {
    println!(
        "   {:<4} {what:<36} {value:>14}   (target {target})",
        if pass { "PASS" } else { "MISS" }
    );
    usize::from(!pass)
}

fn print_table(rows: usize, repeat: usize, summaries: &[Summary]) {
    println!("\n   {rows} rows, median of {repeat} runs:");
    println!(
        "   {:<24} {:>8} {:>11} {:>10} {:>7} {:>13} {:>12}",
        "tool", "seconds", "rows/s", "output MB", "MB/s", "peak RSS MiB", "client CPU s"
    );
    for (tool, s) in TOOLS.iter().zip(summaries) {
        println!(
            "   {:<24} {:>8.2} {:>11} {:>10.1} {:>7.1} {:>13.1} {:>12.2}",
            tool.label(),
            s.seconds,
            thousands(s.rows_per_second(rows) as u64),
            s.bytes as f64 / 1e6,
            s.bytes as f64 / 1e6 / s.seconds,
            s.rss_mib(),
            s.cpu_seconds
        );
    }
    println!(
        "   (client CPU: user + system time of the fmig or psql process; the server's work, \
         e.g. row_to_json, is not in it)"
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
        "   PostgreSQL: server {} (throwaway cluster, shared_buffers 32MB); {psql}",
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

/// Runs one tool once into a fresh directory, checks its output, removes it.
fn measure(
    tool: Tool,
    cluster: &Cluster,
    db: &str,
    rows: usize,
    work: &Path,
    options: &Options,
) -> Result<Sample, String> {
    let dir = work.join("run");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let (command, output) = match tool {
        Tool::Fmig => {
            let out_dir = dir.join("export");
            let mut cmd = Command::new(&options.fmig);
            for var in FMIG_ENV {
                cmd.env_remove(var);
            }
            cmd.env("SUPABASE_DB_URL", cluster.url(db))
                .env("LOG_FILE_PATH", dir.join("migration.log"))
                .env("NO_COLOR", "1")
                // No .env of the developer's checkout is read from here.
                .current_dir(&dir)
                .args(["--no-progress", "export", "--table", TABLE, "--skip-auth"])
                .arg("--output-dir")
                .arg(&out_dir)
                .args(&options.fmig_args);
            let file = if options.fmig_args.iter().any(|a| a == "--gzip") {
                format!("{TABLE}.json.gz")
            } else {
                format!("{TABLE}.json")
            };
            (cmd, out_dir.join(file))
        }
        Tool::RowToJson | Tool::TextCopy => {
            let file = dir.join(if tool == Tool::TextCopy {
                "copy.txt"
            } else {
                "row_to_json.txt"
            });
            let source = if tool == Tool::TextCopy {
                format!("public.{TABLE}")
            } else {
                format!("(select row_to_json(t) from public.{TABLE} t)")
            };
            // The password travels in PGPASSWORD (set by psql_command), never in argv.
            let mut cmd = cluster.psql_command(db);
            cmd.current_dir(&dir)
                .arg("-c")
                .arg(format!("\\copy {source} to '{}'", file.display()));
            (cmd, file)
        }
    };

    let sample = run_timed(command, &dir, tool.label())?;
    let bytes = std::fs::metadata(&output)
        .map_err(|e| format!("{}: no output {}: {e}", tool.label(), output.display()))?
        .len();
    check_rows(tool, &output, &dir, rows)?;
    std::fs::remove_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(Sample { bytes, ..sample })
}

/// Spawns `command` (stdout and stderr to files in `dir`), reaps it with `wait4` for its
/// exact peak RSS, and fails with its stderr unless it exited 0.
fn run_timed(mut command: Command, dir: &Path, label: &str) -> Result<Sample, String> {
    let stdout_path = dir.join("stdout.txt");
    let stderr_path = dir.join("stderr.txt");
    let stdout = File::create(&stdout_path).map_err(|e| e.to_string())?;
    let stderr = File::create(&stderr_path).map_err(|e| e.to_string())?;
    command.stdin(Stdio::null()).stdout(stdout).stderr(stderr);
    // Dirty pages of the previous run are written back now, not during this one.
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };

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
        bytes: 0,
        // Linux reports ru_maxrss in KiB.
        peak_rss_kib: usage.ru_maxrss.max(0) as u64,
    })
}

/// The output holds every row: fmig's metadata.json says so, and psql's files have one line
/// per row (text COPY escapes newlines inside values).
fn check_rows(tool: Tool, output: &Path, dir: &Path, rows: usize) -> Result<(), String> {
    let found = match tool {
        Tool::Fmig => {
            let path = output.with_file_name("metadata.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("fmig export: {}: {e}", path.display()))?;
            let metadata: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| format!("fmig export: {}: {e}", path.display()))?;
            metadata["tables"]
                .as_array()
                .and_then(|tables| tables.iter().find(|t| t["name"] == TABLE))
                .and_then(|t| t["rows"].as_u64())
                .ok_or_else(|| format!("fmig export: no {TABLE} row count in metadata.json"))?
        }
        Tool::RowToJson | Tool::TextCopy => count_lines(output)?,
    };
    if found != rows as u64 {
        return Err(format!(
            "{}: {found} rows written, expected {rows} ({})",
            tool.label(),
            dir.display()
        ));
    }
    Ok(())
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
