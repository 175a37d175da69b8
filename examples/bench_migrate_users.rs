//! The migrate-users benchmark (issue #6): `fmig migrate-users` against the Stack Auth emulator
//! with a fixed latency per request, at several concurrencies, next to the previous scripts'
//! behaviour (one request at a time with a 100 ms pause).
//!
//! Writes `--users N` synthetic users (default 2,000) in the export's auth_users.json format -
//! bcrypt-shaped password hashes, OAuth identities, magic-link users - then, for each setting,
//! starts a fresh emulator (`--latency MS`, default 20) and times the release `fmig` binary
//! creating them all, then a re-run that finds them all and creates nothing. The previous
//! scripts' pace (`--concurrency 1 --rate-limit 100`) is measured on `--legacy-users` users
//! (default 200; 2,000 would take four minutes) and its rate extrapolated.
//!
//! Then `fmig verify --only users` (issue #15) for each `--verify-users N,...` (default
//! 2000,20000): the users are migrated at concurrency 32, then verify lists and compares them;
//! its wall time and peak RSS (`ru_maxrss` from `wait4`) are printed per size, so memory
//! growth with the number of users shows.
//! Run it through `scripts/bench-migrate-users.sh`, which builds the release binary it drives.

#[path = "../tests/support/stack_auth_emulator.rs"]
mod emulator;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use emulator::{Emulator, Faults};
use serde_json::json;

struct Options {
    users: usize,
    legacy_users: usize,
    latency: u64,
    concurrency: Vec<u16>,
    verify_users: Vec<usize>,
    fmig: PathBuf,
    workdir: PathBuf,
}

fn parse_args() -> Result<Options, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut o = Options {
        users: 2_000,
        legacy_users: 200,
        latency: 20,
        concurrency: vec![4, 16, 32],
        verify_users: vec![2_000, 20_000],
        fmig: exe
            .parent()
            .and_then(Path::parent)
            .map(|p| p.join("fmig"))
            .unwrap_or_else(|| PathBuf::from("fmig")),
        workdir: std::env::temp_dir().join("fmig-bench-migrate-users"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
        let number = |text: String| {
            text.replace('_', "")
                .parse::<usize>()
                .map_err(|e| e.to_string())
        };
        match arg.as_str() {
            "--users" => o.users = number(value("--users")?)?,
            "--legacy-users" => o.legacy_users = number(value("--legacy-users")?)?,
            "--latency" => o.latency = number(value("--latency")?)? as u64,
            "--concurrency" => {
                o.concurrency = value("--concurrency")?
                    .split(',')
                    .map(|c| c.trim().parse::<u16>().map_err(|e| e.to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--verify-users" => {
                o.verify_users = value("--verify-users")?
                    .split(',')
                    .filter(|c| !c.trim().is_empty())
                    .map(|c| number(c.trim().to_string()))
                    .collect::<Result<_, _>>()?
            }
            "--fmig" => o.fmig = value("--fmig")?.into(),
            "--workdir" => o.workdir = value("--workdir")?.into(),
            "-h" | "--help" => {
                println!(
                    "usage: bench_migrate_users [--users N (2000)] [--latency MS (20)] \
                     [--concurrency 4,16,32] [--legacy-users N (200; 0 skips)] \
                     [--verify-users 2000,20000 (empty skips)] [--fmig PATH] [--workdir DIR]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)")),
        }
    }
    if !o.fmig.is_file() {
        return Err(format!(
            "{} not found: build it first (scripts/bench-migrate-users.sh does)",
            o.fmig.display()
        ));
    }
    Ok(o)
}

/// `n` users as `fmig export` writes auth_users.json: 70% password, 20% OAuth, 10% magic link.
fn write_users(path: &Path, n: usize) {
    const ALPHABET: &[u8] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut out = String::from("[");
    for i in 0..n {
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            next() as u32,
            next() as u16,
            next() % 0xfff,
            next() % 0xfff,
            next() % 0xffff_ffff_ffff
        );
        let hash: String = (0..53)
            .map(|_| ALPHABET[(next() % 64) as usize] as char)
            .collect();
        let (password, identities) = match i % 10 {
            0..=6 => (format!("$2a$10${hash}"), json!([])),
            7 | 8 => (
                String::new(),
                json!([{"id": id, "provider": if i % 2 == 0 { "google" } else { "azure" },
                        "provider_id": format!("{}", 100_000_000 + i), "identity_data": {"sub": format!("{}", 100_000_000 + i)},
                        "email": format!("bench{i}@idp.example"), "created_at": "2025-01-01T00:00:00.000000Z",
                        "last_sign_in_at": null}]),
            ),
            _ => (String::new(), json!([])),
        };
        let user = json!({
            "id": id,
            "email": format!("bench{i}@freshtrack.example"),
            "encrypted_password": password,
            "email_confirmed_at": "2025-01-01T00:00:00.000000Z",
            "phone": null,
            "raw_user_meta_data": {"full_name": format!("Bench User {i}"), "locale": "de"},
            "raw_app_meta_data": {"provider": "email", "providers": ["email"]},
            "created_at": "2025-01-01T00:00:00.000000Z",
            "updated_at": "2025-01-01T00:00:00.000000Z",
            "last_sign_in_at": null,
            "banned_until": null,
            "deleted_at": null,
            "is_anonymous": false,
            "is_sso_user": false,
            "identities": identities,
        });
        out.push_str(if i == 0 { "\n" } else { ",\n" });
        out.push_str(&user.to_string());
    }
    out.push_str("\n]\n");
    std::fs::write(path, out).expect("write auth_users.json");
}

struct Measured {
    label: String,
    users: usize,
    seconds: f64,
    rerun_seconds: Option<f64>,
    requests: u64,
}

fn fmig(o: &Options, dir: &Path, emu: &Emulator, command: &[&str]) -> Command {
    let mut cmd = Command::new(&o.fmig);
    cmd.current_dir(dir)
        .args(["--no-progress", "-q"])
        .args(command)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1");
    for (k, v) in emu.env() {
        cmd.env(k, v);
    }
    cmd
}

fn run_fmig(o: &Options, dir: &Path, emu: &Emulator, extra: &[&str]) -> f64 {
    let args = [&["migrate-users", "--export-dir", "data"][..], extra].concat();
    let mut cmd = fmig(o, dir, emu, &args);
    let started = Instant::now();
    let out = cmd.output().expect("run fmig");
    let seconds = started.elapsed().as_secs_f64();
    if !out.status.success() {
        panic!(
            "fmig failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    seconds
}

/// A fresh directory `name` with `users` users in data/auth_users.json, and a fresh emulator
/// with the benchmark's latency.
fn setup(o: &Options, name: &str, users: usize) -> (PathBuf, Emulator) {
    let dir = o.workdir.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).expect("bench dir");
    write_users(&dir.join("data/auth_users.json"), users);
    let emu = Emulator::start_with(
        emulator::Config::default(),
        Faults {
            latency: Duration::from_millis(o.latency),
            ..Faults::default()
        },
    );
    (dir, emu)
}

fn measure(o: &Options, label: &str, users: usize, extra: &[&str], rerun: bool) -> Measured {
    let (dir, emu) = setup(o, &label.replace([' ', '='], "_"), users);
    let seconds = run_fmig(o, &dir, &emu, extra);
    let created = emu.users().len();
    assert_eq!(
        created, users,
        "{label}: {created} users created of {users}"
    );
    let requests = emu.counts().creates + emu.counts().lists;
    let rerun_seconds = rerun.then(|| run_fmig(o, &dir, &emu, extra));
    assert_eq!(
        emu.users().len(),
        users,
        "{label}: the re-run created users"
    );
    println!(
        "   {label}: {users} users in {seconds:.2}s = {:.0} users/s",
        users as f64 / seconds
    );
    Measured {
        label: label.to_string(),
        users,
        seconds,
        rerun_seconds,
        requests,
    }
}

/// Runs `command` to its end under `/usr/bin/time`; its wall seconds and peak RSS in MiB.
/// Not `wait4` from here: the child is forked from this process, which holds the emulator's
/// users, and `ru_maxrss` would count that copy before the exec.
fn run_measured(command: Command, dir: &Path) -> (f64, f64) {
    let stderr_path = dir.join("stderr.txt");
    let time_path = dir.join("time.txt");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("%e %M")
        .arg("-o")
        .arg(&time_path)
        .arg(command.get_program())
        .args(command.get_args())
        .current_dir(command.get_current_dir().unwrap_or(dir))
        .env_clear()
        .envs(command.get_envs().filter_map(|(k, v)| Some((k, v?))))
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"));
    let status = timed
        .status()
        .expect("run /usr/bin/time (Debian package time)");
    assert!(
        status.success(),
        "fmig verify failed ({status}):\n{}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&time_path).expect("time's output");
    let mut fields = text.split_whitespace();
    let seconds: f64 = fields.next().and_then(|f| f.parse().ok()).expect("seconds");
    let kib: f64 = fields.next().and_then(|f| f.parse().ok()).expect("max RSS");
    (seconds, kib / 1024.0)
}

/// `fmig verify --only users` after migrating `users` users: (seconds, peak RSS MiB, accounts).
fn measure_verify(o: &Options, users: usize) -> (f64, f64, usize) {
    let (dir, emu) = setup(o, &format!("verify_{users}"), users);
    run_fmig(o, &dir, &emu, &["--concurrency", "32"]);
    let accounts = emu.users().len();
    assert_eq!(accounts, users, "{accounts} users created of {users}");
    let lists_before = emu.counts().lists;
    let (seconds, rss) = run_measured(
        fmig(
            o,
            &dir,
            &emu,
            &["verify", "--export-dir", "data", "--only", "users"],
        ),
        &dir,
    );
    let pages = emu.counts().lists - lists_before;
    println!(
        "   verify --only users: {users} users, {pages} pages, {seconds:.2}s, {rss:.1} MiB peak RSS"
    );
    (seconds, rss, accounts)
}

fn main() {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("bench_migrate_users: {e}");
            std::process::exit(2);
        }
    };
    println!(
        "== fmig migrate-users: {} users, emulator latency {} ms per request, {} CPUs",
        o.users,
        o.latency,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let mut results = Vec::new();
    for c in &o.concurrency {
        let c_text = c.to_string();
        let label = if *c == 4 {
            "default (concurrency 4)".to_string()
        } else {
            format!("concurrency {c}")
        };
        results.push(measure(
            &o,
            &label,
            o.users,
            &["--concurrency", &c_text],
            true,
        ));
    }
    if o.legacy_users > 0 {
        results.push(measure(
            &o,
            "previous scripts' pace (concurrency 1, rate-limit 100)",
            o.legacy_users,
            &["--concurrency", "1", "--rate-limit", "100"],
            false,
        ));
    }
    println!();
    println!(
        "{:<56} {:>6} {:>9} {:>8} {:>11} {:>9} {:>16}",
        "setting", "users", "seconds", "users/s", "2,000 users", "requests", "re-run (no-op)"
    );
    for r in &results {
        let rate = r.users as f64 / r.seconds;
        println!(
            "{:<56} {:>6} {:>9.2} {:>8.1} {:>10.1}s {:>9} {:>16}",
            r.label,
            r.users,
            r.seconds,
            rate,
            2_000.0 / rate,
            r.requests,
            r.rerun_seconds
                .map_or("-".to_string(), |s| format!("{s:.2}s")),
        );
    }
    println!(
        "\nThe previous scripts: one request at a time, 100 ms pause = about 8 users/s, 250 s for 2,000."
    );
    if !o.verify_users.is_empty() {
        println!(
            "\n== fmig verify --only users, emulator latency {} ms per request",
            o.latency
        );
        let measured: Vec<(usize, (f64, f64, usize))> = o
            .verify_users
            .iter()
            .map(|&n| (n, measure_verify(&o, n)))
            .collect();
        println!(
            "\n{:>8} {:>9} {:>8} {:>14}",
            "users", "seconds", "users/s", "peak RSS MiB"
        );
        for (n, (seconds, rss, _)) in &measured {
            println!(
                "{n:>8} {seconds:>9.2} {:>8.0} {rss:>14.1}",
                *n as f64 / seconds
            );
        }
    }
    let _ = std::fs::remove_dir_all(&o.workdir);
}
