//! The demo: a maintenance window rehearsed on throwaway local databases.
//!
//! Starts a Supabase-shaped source and a self-hosted-shaped target (the test fixtures), seeds a
//! realistic FreshTrack data set, starts a local emulator of the Stack Auth API, then runs the
//! maintenance window's steps against them, printing each step's output and wall time. The
//! databases are removed on exit, also on Ctrl-C, unless `--keep`.
//! Run it through `scripts/demo.sh`, which builds the `fmig` binary it drives.

#[path = "../tests/support/stack_auth_emulator.rs"]
mod emulator;
#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::cluster::Cluster;
use support::seed::{self, SeedConfig};

struct Options {
    scale: usize,
    users_per_category: usize,
    keep: bool,
    fmig: PathBuf,
    workdir: PathBuf,
}

fn parse_args() -> Result<Options, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    // target/<profile>/examples/demo -> target/<profile>/fmig
    let default_fmig = exe
        .parent()
        .and_then(Path::parent)
        .map(|p| p.join("fmig"))
        .unwrap_or_else(|| PathBuf::from("fmig"));
    let mut options = Options {
        scale: 1_000_000,
        users_per_category: 100,
        keep: false,
        fmig: default_fmig,
        workdir: std::env::temp_dir().join("fmig-demo"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        match arg.as_str() {
            "--scale" => {
                options.scale = value("--scale")?
                    .replace('_', "")
                    .parse()
                    .map_err(|_| "--scale takes a number of sensor readings".to_string())?
            }
            "--users" => {
                options.users_per_category = value("--users")?
                    .parse()
                    .map_err(|_| "--users takes a number of users per category".to_string())?
            }
            "--keep" => options.keep = true,
            "--fmig" => options.fmig = value("--fmig")?.into(),
            "--workdir" => options.workdir = value("--workdir")?.into(),
            "-h" | "--help" => {
                println!(
                    "usage: demo [--scale READINGS (1000000)] [--users PER_CATEGORY (100)] \
                     [--keep] [--workdir DIR] [--fmig PATH]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if !options.fmig.is_file() {
        return Err(format!(
            "{} not found: build it first (scripts/demo.sh does)",
            options.fmig.display()
        ));
    }
    Ok(options)
}

fn main() {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("demo: {e}");
            std::process::exit(2);
        }
    };
    // Ctrl-C reaches fmig too (same process group); the demo notices, skips the remaining steps
    // and lets the clusters' Drop remove them.
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
    // Ctrl-C while a cluster starts or the seed runs kills that psql/initdb, which fails the
    // step with a panic: unwinding drops (removes) the clusters; say so quietly and exit 130.
    let default_hook = std::panic::take_hook();
    {
        let interrupted = interrupted.clone();
        std::panic::set_hook(Box::new(move |info| {
            if !interrupted.load(Ordering::SeqCst) {
                default_hook(info);
            }
        }));
    }
    let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run(&options, &interrupted)
    })) {
        Ok(code) => code,
        Err(_) if interrupted.load(Ordering::SeqCst) => {
            eprintln!("demo: interrupted; the databases were removed");
            130
        }
        Err(_) => 101,
    };
    std::process::exit(code);
}

fn run(options: &Options, interrupted: &AtomicBool) -> i32 {
    let _ = std::fs::remove_dir_all(&options.workdir);
    std::fs::create_dir_all(&options.workdir).expect("create the demo directory");
    let total = Instant::now();
    let mut timings: Vec<(String, Duration, i32)> = Vec::new();

    let rewrite = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rewrite");
    let started = Instant::now();
    println!("== starting a Supabase-shaped source and a self-hosted target (PostgreSQL 15)");
    let source = Cluster::start();
    let target = Cluster::start();
    seed::load_source_schema(&source, "postgres");
    target.create_database("freshtrack");
    seed::load_target_schema(&target, "freshtrack");
    // The real rewrite's drift on top of the fixture pair (tests/fixtures/rewrite).
    target.psql_file("freshtrack", &rewrite.join("target.sql"));
    timings.push(("start clusters".into(), started.elapsed(), 0));

    let started = Instant::now();
    let config = SeedConfig {
        users_per_category: options.users_per_category,
        sensor_readings: options.scale,
        ..SeedConfig::default()
    };
    println!(
        "== seeding: {} users per category, {} orgs, {} sensor readings",
        config.users_per_category, config.organizations, config.sensor_readings
    );
    let summary = seed::seed_source(&source, "postgres", &config);
    source.psql_file("postgres", &rewrite.join("source.sql"));
    println!(
        "   {} rows in 23 tables, {} auth users",
        summary.tables.values().sum::<u64>(),
        summary.users.total
    );
    timings.push(("seed".into(), started.elapsed(), 0));

    let stack_auth = emulator::Emulator::start();
    let mut env = format!(
        "SUPABASE_DB_URL={}\nDATABASE_URL={}\nLOG_FILE_PATH={}\nEXPORT_DIR={}\n",
        source.url("postgres"),
        target.url("freshtrack"),
        options.workdir.join("migration.log").display(),
        options.workdir.join("migration-data").display(),
    );
    for (key, value) in stack_auth.env() {
        env.push_str(&format!("{key}={value}\n"));
    }
    let env_file = options.workdir.join(".env");
    std::fs::write(&env_file, env).expect("write the demo .env");
    // The column mapping an operator writes after `fmig plan --write-template` (see the README):
    // the rewrite's, with rows left behind on purpose, lookups and a generated secret.
    let mapping = rewrite.join("fmig.toml");
    std::fs::copy(&mapping, options.workdir.join("fmig.toml")).expect("copy fmig.toml");

    // (step, arguments, exit codes that let the window go on)
    let steps: &[(&str, &[&str], &[i32])] = &[
        ("fmig export --dry-run", &["export", "--dry-run"], &[0]),
        ("fmig plan", &["plan"], &[0]),
        ("fmig export", &["export"], &[0]),
        // Exit 1: some users need a human (listed, and in users-needing-attention.csv);
        // everyone else is mapped.
        ("fmig migrate-users", &["migrate-users"], &[0, 1]),
        // Users that could not be migrated (anonymous, deleted, ...) still own rows: keep their
        // old ids deliberately, as listed by the import.
        ("fmig import", &["import", "--unmapped", "keep"], &[0]),
        // Verify accepts exactly those kept ids (and lists them); anything else is a failure.
        ("fmig verify", &["verify", "--unmapped", "keep"], &[0]),
    ];
    let mut failed: Option<String> = None;
    for (name, args, accepted) in steps {
        if interrupted.load(Ordering::SeqCst) {
            break;
        }
        println!("\n== {name}");
        let started = Instant::now();
        let status = Command::new(&options.fmig)
            .args(*args)
            .current_dir(&options.workdir)
            .status()
            .expect("run fmig");
        let code = status.code().unwrap_or(-1);
        timings.push((name.to_string(), started.elapsed(), code));
        if !accepted.contains(&code) {
            failed = Some(format!("{name} exited {code}"));
            break;
        }
    }

    let data = options.workdir.join("migration-data");
    println!("\n== summary");
    println!("   {:<24} {:>9}  {:>4}", "step", "seconds", "exit");
    println!("   {:-<24} {:->9}  {:->4}", "", "", "");
    for (name, took, code) in &timings {
        println!("   {name:<24} {:>9.1}  {code:>4}", took.as_secs_f64());
    }
    println!("   {:<24} {:>9.1}", "total", total.elapsed().as_secs_f64());
    println!();
    println!("   settings (.env):      {}", env_file.display());
    println!(
        "   column mapping:       {}",
        options.workdir.join("fmig.toml").display()
    );
    println!(
        "   log (JSON lines):     {}",
        options.workdir.join("migration.log").display()
    );
    println!("   export:               {}", data.display());
    for (what, file) in [
        ("user mapping", "user-mapping.json"),
        ("to contact", "password-reset-needed.csv"),
        ("needing attention", "users-needing-attention.csv"),
        ("verification report", "verification-report.json"),
        ("rows left behind", "left-behind"),
    ] {
        if data.join(file).exists() {
            println!(
                "   {:<21} {}",
                format!("{what}:"),
                data.join(file).display()
            );
        }
    }
    if interrupted.load(Ordering::SeqCst) {
        println!("\ninterrupted: removing the databases");
        return 130;
    }
    match &failed {
        Some(why) => println!("\nThe rehearsal stopped: {why} (its output is above)."),
        None => println!(
            "\nThe rehearsal passed: every row moved but those the mapping leaves behind on purpose \
             (listed in left-behind/), verify proved the target holds what the source says, and Stack Auth \
             holds exactly the accounts migrate-users planned."
        ),
    }
    if options.keep {
        println!(
            "\n--keep: the databases and the Stack Auth emulator stay up until you press Enter (or Ctrl-C)"
        );
        println!("   source:     {}", source.url("postgres"));
        println!("   target:     {}", target.url("freshtrack"));
        println!("   Stack Auth: {}", stack_auth.url());
        println!(
            "   try:        cd {} && {} verify",
            options.workdir.display(),
            options.fmig.display()
        );
        wait_for_enter_or_interrupt(interrupted);
    }
    println!("removing the databases");
    if failed.is_some() { 1 } else { 0 }
}

/// Blocks until a line (or end of input) arrives on stdin, or Ctrl-C.
fn wait_for_enter_or_interrupt(interrupted: &AtomicBool) {
    let entered = Arc::new(AtomicBool::new(false));
    {
        let entered = entered.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            entered.store(true, Ordering::SeqCst);
        });
    }
    while !entered.load(Ordering::SeqCst) && !interrupted.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
}
