//! Load: the demo's data set (1,000,000 sensor readings, 100 users of every category) end to end
//! under the default settings, and 10,000,000 readings exported and imported with the peak
//! memory of every fmig process recorded (memory must stay flat as the data grows). Slow: only
//! with `--load`; meant for a release build.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::emulator;

use crate::common::{SOURCE_DB, Setup, TARGET_DB};
use crate::server_faults::last_lines;
use crate::support::cli::Run;
use crate::support::seed::{self, SeedConfig};
use crate::{Outcome, Scenario};

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            group: "load",
            name: "1M-row load end to end".into(),
            promise: "The demo's data set (100 users of every category, 3 organizations, \
                      1,000,000 sensor readings) goes through export, migrate-users (emulator), \
                      import --unmapped keep and verify under the default settings; verify finds \
                      every table equal (flagging only the kept ids of users that cannot be \
                      migrated) and every migrated user is in Stack Auth once."
                .into(),
            slow: true,
            run: Box::new(one_million_end_to_end),
        },
        Scenario {
            group: "load",
            name: "10M-reading load, flat memory".into(),
            promise: "10,000,000 sensor readings export and import completely, and the peak RSS \
                      of each fmig process stays within 1.5x of its peak at 1,000,000 readings."
                .into(),
            slow: true,
            run: Box::new(ten_million_flat_memory),
        },
    ]
}

/// One fmig run with its wall time and peak resident memory.
struct Measured {
    run: Run,
    seconds: f64,
    peak_rss_mib: f64,
}

/// `VmHWM` (the process's own peak resident set) from `/proc/<pid>/status`, in KiB.
fn vm_hwm_kib(pid: libc::pid_t) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cmd`, sampling its peak RSS every 10 ms until it exits. Not `ru_maxrss` from `wait4`:
/// Linux folds the *parent's* peak into a child's at exec (the address space it replaced was
/// the parent's), so after a scenario that grew this test process, every fmig run would report
/// at least that. `VmHWM` belongs to fmig's own address space and only grows, so the last
/// sample before exit misses at most the final 10 ms.
fn measured(mut cmd: Command) -> Measured {
    let logs = tempfile::tempdir().expect("temp dir");
    let (out_path, err_path) = (logs.path().join("stdout"), logs.path().join("stderr"));
    let started = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("start fmig");
    let pid = child.id() as libc::pid_t;
    let mut peak_kib = 0u64;
    let status = loop {
        // Sampled before the exit check: a zombie no longer has its memory figures.
        if let Some(kib) = vm_hwm_kib(pid) {
            peak_kib = peak_kib.max(kib);
        }
        if let Some(status) = child.try_wait().expect("wait for fmig") {
            break status;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let seconds = started.elapsed().as_secs_f64();
    Measured {
        run: Run {
            code: status.code().unwrap_or(-1),
            stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
            stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        },
        seconds,
        peak_rss_mib: peak_kib as f64 / 1024.0,
    }
}

/// Exit code in `accepted`, or a problem naming the step.
fn check(m: &Measured, what: &str, accepted: &[i32]) -> Result<(), String> {
    if accepted.contains(&m.run.code) {
        Ok(())
    } else {
        Err(format!(
            "{what} exited {}: {} {}",
            m.run.code,
            last_lines(&m.run.stdout, 10),
            last_lines(&m.run.stderr, 10)
        ))
    }
}

fn one_million_end_to_end() -> Outcome {
    let mut o = Outcome::default();
    let started = Instant::now();
    let s = Setup::new(&SeedConfig {
        users_per_category: 100,
        sensor_readings: 1_000_000,
        ..SeedConfig::default()
    });
    let seeded = started.elapsed().as_secs_f64();
    let source_url = s.source_url();
    let target_url = s.target_url();

    let export = measured(s.work.command(
        &["export", "--output-dir", "out"],
        &[("SUPABASE_DB_URL", &source_url)],
    ));
    o.record(check(&export, "export", &[0]));

    let emu = emulator::Emulator::start();
    let env = emu.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let users = measured(
        s.work
            .command(&["migrate-users", "--export-dir", "out"], &env),
    );
    // Exit 1: users that need a human (listed); everyone else is migrated and mapped.
    o.record(check(&users, "migrate-users", &[0, 1]));
    // Each mapped user is in Stack Auth exactly once, and nobody is there unmapped.
    let mapping: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(s.work.path().join("out/user-mapping.json")).unwrap_or_default(),
    )
    .unwrap_or_default();
    let mapped = mapping["mappings"].as_array().map_or(0, Vec::len) as u64;
    let stored = emu.users();
    let mut by_supabase: Vec<&str> = stored.iter().filter_map(|u| u.supabase_user_id()).collect();
    by_supabase.sort();
    by_supabase.dedup();
    o.lost += mapped.abs_diff(stored.len() as u64) + (stored.len() - by_supabase.len()) as u64;
    o.record(if mapped > 0 {
        Ok(())
    } else {
        Err("migrate-users mapped no user".into())
    });

    // Users that cannot be migrated (anonymous, SSO, banned, deleted, ...) still own rows, some
    // in NOT NULL columns: their old ids are kept deliberately, as the README's demo does.
    let import = measured(s.work.command(
        &["import", "--input-dir", "out", "--unmapped", "keep"],
        &[("DATABASE_URL", &target_url)],
    ));
    o.record(check(&import, "import", &[0]));
    // With the Stack Auth settings, verify checks the accounts too.
    let verify_env: Vec<(&str, &str)> = env
        .iter()
        .copied()
        .chain([
            ("SUPABASE_DB_URL", source_url.as_str()),
            ("DATABASE_URL", target_url.as_str()),
        ])
        .collect();
    let verify = measured(s.work.command(
        &["verify", "--export-dir", "out", "--unmapped", "keep"],
        &verify_env,
    ));
    // Exit 1 may only be those kept ids: every table's rows and checksum equal, no difference
    // located, and nothing referential but "not a Stack Auth id of the mapping".
    o.record(check(&verify, "verify", &[0, 1]).and_then(|()| verify_report_clean(&s)));
    // Row counts, table by table, as a check independent of verify.
    let source_counts = counts(&s, SOURCE_DB);
    let target_counts = counts(&s, TARGET_DB);
    for ((table, a), (_, b)) in source_counts.iter().zip(&target_counts) {
        if a != b {
            o.lost += a.abs_diff(*b);
            o.problems.push(format!(
                "{table}: {a} rows in the source, {b} in the target"
            ));
        }
    }
    let rows: u64 = source_counts.iter().map(|(_, n)| n).sum();
    o.detail = format!(
        "{rows} rows, {} users ({} mapped); seed {seeded:.0}s; export {:.1}s ({:.0} MiB RSS), \
         migrate-users {:.1}s ({:.0} MiB), import {:.1}s ({:.0} MiB, {:.0} rows/s), verify {:.1}s ({:.0} MiB)",
        s.cluster
            .psql(SOURCE_DB, "SELECT count(*) FROM auth.users")
            .trim(),
        mapped,
        export.seconds,
        export.peak_rss_mib,
        users.seconds,
        users.peak_rss_mib,
        import.seconds,
        import.peak_rss_mib,
        rows as f64 / import.seconds,
        verify.seconds,
        verify.peak_rss_mib,
    );
    o
}

/// `out/verification-report.json` says every table is equal, only kept user ids flagged.
fn verify_report_clean(s: &Setup) -> Result<(), String> {
    let path = s.work.path().join("out/verification-report.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let report: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let tables = report["tables"].as_array().cloned().unwrap_or_default();
    if tables.len() != fmig::manifest::builtin().len() {
        return Err(format!("verify reported {} tables", tables.len()));
    }
    let mut wrong = Vec::new();
    for t in &tables {
        let name = t["table"].as_str().unwrap_or("?");
        let unexpected_referential = t["referential"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
            .any(|r| !r.contains("is not a Stack Auth id of the mapping"));
        if t["rows_ok"] != true
            || t["checksum_ok"] != true
            || t["differences"].as_array().is_some_and(|d| !d.is_empty())
            || unexpected_referential
        {
            wrong.push(name.to_string());
        }
    }
    if report["users"]["status"] != "ok" {
        wrong.push(format!(
            "the Stack Auth users ({} problems, e.g. {})",
            report["users"]["problems_total"], report["users"]["problems"][0]
        ));
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!("verify found differences in {}", wrong.join(", ")))
    }
}

/// Row count of every imported table in `db`, in one query (the content fingerprint sorts
/// every row, too slow at 10M).
fn counts(s: &Setup, db: &str) -> Vec<(String, u64)> {
    let sql: Vec<String> = fmig::manifest::builtin()
        .iter()
        .map(|t| format!("SELECT '{0}', count(*) FROM public.{0}", t.name))
        .collect();
    s.cluster
        .psql(db, &sql.join(" UNION ALL "))
        .lines()
        .map(|line| {
            let (table, n) = line.split_once('|').expect("table|count");
            (table.to_string(), n.parse().expect("a count"))
        })
        .collect()
}

/// Free bytes on the file system holding `path`.
fn free_bytes(path: &Path) -> u64 {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a zeroed statvfs is a valid value for statvfs to fill in; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    st.f_bavail as u64 * st.f_frsize as u64
}

/// Disk the 10M run needs: the source (about 1.6 GiB), two exports (about 3.5 GiB at 10M),
/// the target with its partitions and indexes, and the WAL of both, with a margin.
const NEEDED_BYTES: u64 = 20 << 30;

fn ten_million_flat_memory() -> Outcome {
    let mut o = Outcome::default();
    let free = free_bytes(&std::env::temp_dir());
    if free < NEEDED_BYTES {
        o.record(Ok(()));
        o.detail = format!(
            "skipped: {:.1} GiB free in {}, the 10M run needs about {} GiB",
            free as f64 / f64::from(1 << 30),
            std::env::temp_dir().display(),
            NEEDED_BYTES >> 30
        );
        return o;
    }
    let s = Setup::new(&SeedConfig {
        sensor_readings: 1_000_000,
        ..SeedConfig::default()
    });
    let source_url = s.source_url();

    // One pass: export into `dir`, import into a fresh target database `db`, counts compared.
    let pass = |o: &mut Outcome, dir: &str, db: &str| -> (Measured, Measured, u64) {
        let export = measured(s.work.command(
            &["export", "--output-dir", dir],
            &[("SUPABASE_DB_URL", &source_url)],
        ));
        o.record(check(&export, &format!("export into {dir}"), &[0]));
        s.write_user_mapping(dir);
        if db != TARGET_DB {
            s.cluster.create_database(db);
            seed::load_target_schema(&s.cluster, db);
        }
        let import = measured(s.work.command(
            &["import", "--input-dir", dir, "--unmapped", "null"],
            &[("DATABASE_URL", &s.cluster.url(db))],
        ));
        o.record(check(&import, &format!("import into {db}"), &[0]));
        let readings: u64 = s
            .cluster
            .psql(db, "SELECT count(*) FROM public.sensor_readings")
            .trim()
            .parse()
            .unwrap();
        let source = counts(&s, SOURCE_DB);
        let target = counts(&s, db);
        for ((table, a), (_, b)) in source.iter().zip(&target) {
            if a != b {
                o.lost += a.abs_diff(*b);
                o.problems.push(format!(
                    "{db}.{table}: {a} rows in the source, {b} imported"
                ));
            }
        }
        (export, import, readings)
    };

    let (export1, import1, readings1) = pass(&mut o, "out1", TARGET_DB);
    // Make room before growing the source ten-fold.
    let _ = std::fs::remove_dir_all(s.work.path().join("out1"));
    s.cluster.psql(
        TARGET_DB,
        "DROP SCHEMA public CASCADE; DROP SCHEMA fmig CASCADE",
    );

    // Nine more copies of every reading under new ids (and frame counters), on the server.
    let grow = Instant::now();
    s.cluster.psql(
        SOURCE_DB,
        "INSERT INTO public.sensor_readings (id, unit_id, device_id, recorded_at, temperature, \
           humidity, battery_voltage, rssi, snr, frame_counter, raw_payload, received_at) \
         SELECT r.id + k * 1000000, r.unit_id, r.device_id, r.recorded_at + k * interval '1 microsecond', \
           r.temperature, r.humidity, r.battery_voltage, r.rssi, r.snr, r.frame_counter + k * 1000000, \
           r.raw_payload, r.received_at \
         FROM public.sensor_readings r CROSS JOIN generate_series(1, 9) AS k \
         WHERE r.id <= 1000000; \
         SELECT setval(pg_get_serial_sequence('public.sensor_readings', 'id'), 10000000); \
         ANALYZE public.sensor_readings",
    );
    let grew = grow.elapsed().as_secs_f64();
    let (export10, import10, readings10) = pass(&mut o, "out10", "target10");

    for (what, at1, at10) in [
        ("export", &export1, &export10),
        ("import", &import1, &import10),
    ] {
        let limit = at1.peak_rss_mib * 1.5;
        o.record(if at10.peak_rss_mib <= limit {
            Ok(())
        } else {
            Err(format!(
                "{what}: peak RSS {:.0} MiB at 10M readings, over 1.5x its {:.0} MiB at 1M",
                at10.peak_rss_mib, at1.peak_rss_mib
            ))
        });
    }
    let rate = |rows: u64, m: &Measured| rows as f64 / m.seconds;
    o.detail = format!(
        "1M: export {:.1}s {:.0} rows/s {:.0} MiB, import {:.1}s {:.0} rows/s {:.0} MiB; \
         10M ({readings10} readings, grown in {grew:.0}s): export {:.1}s {:.0} rows/s {:.0} MiB, \
         import {:.1}s {:.0} rows/s {:.0} MiB (readings rows/s)",
        export1.seconds,
        rate(readings1, &export1),
        export1.peak_rss_mib,
        import1.seconds,
        rate(readings1, &import1),
        import1.peak_rss_mib,
        export10.seconds,
        rate(readings10, &export10),
        export10.peak_rss_mib,
        import10.seconds,
        rate(readings10, &import10),
        import10.peak_rss_mib,
    );
    o
}
