//! Server faults: the target restarted during an import, the source gone mid-export, the export
//! disk full. Each fault must end the run with a clear error (what happened, what to do next,
//! exit 2, no panic) and leave a state a re-run can finish from: the re-run completes and
//! `fmig verify` passes with nothing lost or duplicated.
//!
//! Source and target are separate clusters here, so one side can be restarted or stopped while
//! the other keeps running.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::common::{self, SOURCE_DB, TARGET_DB};
use crate::support::cli::{Run, Workdir};
use crate::support::cluster::Cluster;
use crate::support::seed::{self, SeedConfig};
use crate::{Outcome, Scenario};

pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            group: "server fault",
            name: "target restarted during import".into(),
            promise: "Restarting the target PostgreSQL at several moments of an import ends each \
                      run with exit 2 and a message that the target connection was lost and a \
                      re-run resumes; the re-run completes, equal to an uninterrupted import, and \
                      verify passes."
                .into(),
            slow: false,
            run: Box::new(target_restarted_during_import),
        },
        Scenario {
            group: "server fault",
            name: "source unreachable mid-export".into(),
            promise: "Terminating the export's source session, or stopping the source server, \
                      mid-export ends the run with exit 2 and a message naming the table; the \
                      directory has no metadata.json (import refuses it); once the source is back \
                      a re-run exports everything, which imports and verifies."
                .into(),
            slow: false,
            run: Box::new(source_unreachable_mid_export),
        },
        Scenario {
            group: "server fault",
            name: "export disk full".into(),
            promise:
                "An export directory that runs out of space ends the export with exit 2 and a \
                      message naming the file and the lack of space; nothing there looks complete \
                      (no metadata.json, no temporary file); a re-run into a directory with space \
                      exports everything, which imports and verifies."
                    .into(),
            slow: false,
            run: Box::new(export_disk_full),
        },
    ]
}

/// Readings in the fault scenarios' source: enough that an import of it (debug build) lasts a
/// few seconds, so the faults land mid-copy.
const READINGS: usize = 50_000;

/// A seeded source cluster, a separate target cluster with an empty drifted target database,
/// and a work directory holding `fmig.toml`.
pub struct Split {
    pub source: Cluster,
    pub target: Cluster,
    pub work: Workdir,
}

impl Split {
    pub fn new(config: &SeedConfig) -> Split {
        let source = Cluster::start();
        seed::load_source_schema(&source, SOURCE_DB);
        seed::seed_source(&source, SOURCE_DB, config);
        let target = Cluster::start();
        target.create_database(TARGET_DB);
        seed::load_target_schema(&target, TARGET_DB);
        let work = Workdir::new();
        std::fs::copy(common::fixture("fmig.toml"), work.path().join("fmig.toml")).unwrap();
        Split {
            source,
            target,
            work,
        }
    }

    /// `fmig export --output-dir <dir> <extra>`, not yet started.
    pub fn export_command(&self, dir: &str, extra: &[&str]) -> Command {
        let mut args = vec!["export", "--output-dir", dir];
        args.extend_from_slice(extra);
        self.work
            .command(&args, &[("SUPABASE_DB_URL", &self.source.url(SOURCE_DB))])
    }

    pub fn export(&self, dir: &str, extra: &[&str]) -> Run {
        run_to_end(self.export_command(dir, extra))
    }

    /// `<dir>/user-mapping.json`: see [`common::write_user_mapping`].
    pub fn write_user_mapping(&self, dir: &str) {
        common::write_user_mapping(&self.source, &self.work, dir);
    }

    /// `fmig import --input-dir <dir> --unmapped null` into `db` of the target cluster.
    pub fn import_command(&self, db: &str, dir: &str) -> Command {
        self.work.command(
            &["import", "--input-dir", dir, "--unmapped", "null"],
            &[("DATABASE_URL", &self.target.url(db))],
        )
    }

    pub fn import(&self, db: &str, dir: &str) -> Run {
        run_to_end(self.import_command(db, dir))
    }

    /// `fmig verify --export-dir <dir> --unmapped null` of `db` against the source.
    pub fn verify(&self, db: &str, dir: &str) -> Run {
        self.work.run(
            &["verify", "--export-dir", dir, "--unmapped", "null"],
            &[
                ("SUPABASE_DB_URL", &self.source.url(SOURCE_DB)),
                ("DATABASE_URL", &self.target.url(db)),
            ],
        )
    }

    /// An empty drifted target database `db` in the target cluster.
    pub fn new_target_db(&self, db: &str) {
        self.target.create_database(db);
        seed::load_target_schema(&self.target, db);
    }
}

/// A small seeded xorshift64*: "random" moments that are the same on every run.
pub struct XorShift(u64);

impl XorShift {
    pub fn new(seed: u64) -> XorShift {
        XorShift(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A fraction in [lo, hi).
    pub fn fraction(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)
    }
}

/// How long a faulted run may take to notice and exit before it counts as a hang.
const HANG: Duration = Duration::from_secs(180);

/// A started fmig whose output is collected on a thread, so it can be waited for with a
/// timeout (and killed if it hangs).
pub struct Running {
    pid: i32,
    done: mpsc::Receiver<std::io::Result<Output>>,
}

impl Running {
    pub fn start(mut cmd: Command) -> Running {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start fmig");
        let pid = child.id() as i32;
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        Running { pid, done }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`): holds the run still while a fault is set up, so
    /// the fault lands exactly where the run was seen to be.
    pub fn pause(&self, stop: bool) {
        let signal = if stop { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: kill(2) on our own child, not yet reaped (see `finish`).
        unsafe { libc::kill(self.pid, signal) };
    }

    /// Whether it has exited already (its output stays available to `finish`).
    pub fn exited(&self, buffered: &mut Option<Output>) -> bool {
        if buffered.is_some() {
            return true;
        }
        match self.done.try_recv() {
            Ok(out) => {
                *buffered = Some(out.expect("wait for fmig"));
                true
            }
            Err(_) => false,
        }
    }

    /// Waits up to `limit`; a run still going then is killed and reported as a hang (`Err`).
    pub fn finish(self, buffered: Option<Output>, limit: Duration) -> Result<Run, String> {
        let out = match buffered {
            Some(out) => out,
            None => match self.done.recv_timeout(limit) {
                Ok(out) => out.expect("wait for fmig"),
                Err(_) => {
                    // SAFETY: kill(2) on the pid of our own child, which has not been reaped
                    // (the waiting thread has not returned), so the pid is still ours.
                    unsafe { libc::kill(self.pid, libc::SIGKILL) };
                    let _ = self.done.recv();
                    return Err(format!(
                        "fmig did not exit within {}s of the fault (killed)",
                        limit.as_secs()
                    ));
                }
            },
        };
        Ok(Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

pub fn run_to_end(cmd: Command) -> Run {
    Running::start(cmd)
        .finish(None, Duration::from_secs(1800))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Checks that a faulted run failed the promised way: exit 2, no panic, and every fragment in
/// its error output.
pub fn failed_clearly(run: &Run, what: &str, fragments: &[&str]) -> Result<(), String> {
    let mut wrong = Vec::new();
    if run.code != 2 {
        wrong.push(format!("exit {} (expected 2)", run.code));
    }
    if run.stderr.contains("panicked") || run.stderr.contains("RUST_BACKTRACE") {
        wrong.push("fmig panicked".to_string());
    }
    for f in fragments {
        if !run.stderr.contains(f) {
            wrong.push(format!("no {f:?} in the message"));
        }
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{what}: {}; stderr: {}",
            wrong.join(", "),
            last_lines(&run.stderr, 6)
        ))
    }
}

pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" / ")
}

/// Exit 0 or a problem naming the step and its output.
pub fn succeeded(run: &Run, what: &str) -> Result<(), String> {
    if run.code == 0 {
        Ok(())
    } else {
        Err(format!(
            "{what} exited {}: {} {}",
            run.code,
            last_lines(&run.stdout, 8),
            last_lines(&run.stderr, 8)
        ))
    }
}

/// Rows the import has committed so far, by its checkpoints (0 before the table exists or
/// while the server is unreachable).
fn rows_committed(target: &Cluster, db: &str) -> u64 {
    let out = target
        .psql_command(db)
        .args([
            "-c",
            "SELECT coalesce(sum(rows_committed), 0) FROM fmig.import_progress",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    out.ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

/// The files an export directory holds, sorted ("" when it does not exist).
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// A failed export's directory must not look complete: no metadata.json, no temporary file,
/// and an import of it refused before any write.
fn looks_incomplete(s: &Split, dir: &str, what: &str) -> Result<(), String> {
    let names = listing(&s.work.path().join(dir));
    if names.iter().any(|n| n == "metadata.json") {
        return Err(format!(
            "{what}: metadata.json exists after a failed export"
        ));
    }
    if let Some(temp) = names
        .iter()
        .find(|n| n.starts_with(fmig::files::TEMP_PREFIX))
    {
        return Err(format!("{what}: temporary file {temp} left behind"));
    }
    let before = contents_of(&s.target, TARGET_DB);
    let run = s.work.run(
        &["import", "--input-dir", dir, "--unmapped", "null"],
        &[("DATABASE_URL", &s.target.url(TARGET_DB))],
    );
    failed_clearly(
        &run,
        &format!("{what}: import of the failed export"),
        &["missing or did not finish", "run fmig export again"],
    )?;
    if contents_of(&s.target, TARGET_DB) != before {
        return Err(format!(
            "{what}: the import of a failed export wrote to the target"
        ));
    }
    Ok(())
}

/// Every imported table's row count and content hash, and the checkpoints, in one query (the
/// per-table fingerprint runs a psql per table): what a run that must not write is checked
/// against.
fn contents_of(cluster: &Cluster, db: &str) -> String {
    let mut parts: Vec<String> = fmig::manifest::builtin()
        .iter()
        .map(|t| {
            format!(
                "SELECT '{0}:' || count(*) || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') \
                 FROM public.{0} x",
                t.name
            )
        })
        .collect();
    parts.push(
        "SELECT 'checkpoints:' || coalesce((SELECT string_agg(c.relname, ',') FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'fmig'), '')"
            .to_string(),
    );
    cluster.psql(db, &parts.join(" UNION ALL "))
}

/// Imports `dir` into the target database, verifies it, and counts rows lost against the
/// reference fingerprint (an uninterrupted import of an undisturbed export).
fn import_and_verify(s: &Split, dir: &str, o: &mut Outcome, reference: &[(String, u64, String)]) {
    s.write_user_mapping(dir);
    let run = s.import(TARGET_DB, dir);
    o.record(succeeded(&run, "the import of the re-run export"));
    let run = s.verify(TARGET_DB, dir);
    o.record(succeeded(&run, "verify after the re-run"));
    o.lost += common::rows_lost(reference, &common::fingerprint(&s.target, TARGET_DB));
}

/// The fingerprint of an uninterrupted import of `dir` into a fresh database `reference`.
fn reference_import(s: &Split, dir: &str) -> Vec<(String, u64, String)> {
    s.new_target_db("reference");
    s.write_user_mapping(dir);
    s.import("reference", dir).expect_code(0);
    common::fingerprint(&s.target, "reference")
}

// ---------------------------------------------------------------------------------------------

fn target_restarted_during_import() -> Outcome {
    let s = Split::new(&SeedConfig {
        sensor_readings: READINGS,
        ..SeedConfig::default()
    });
    s.export("out", &[]).expect_code(0);
    let reference = reference_import(&s, "out");
    let total: u64 = reference.iter().map(|(_, rows, _)| rows).sum();

    // Moments, as rows committed: the first batch of the first table, then three random points
    // of the copy, in order (each run resumes where the previous one stopped).
    let mut rng = XorShift::new(0x5EED_0008);
    let mut moments = vec![1u64];
    let mut fractions: Vec<f64> = (0..3).map(|_| rng.fraction(0.15, 0.85)).collect();
    fractions.sort_by(f64::total_cmp);
    moments.extend(fractions.iter().map(|f| (f * total as f64) as u64));

    let mut o = Outcome::default();
    let mut seen = Vec::new();
    for &moment in &moments {
        // What earlier runs committed: the restart must land in this run, after it has
        // committed something itself (a moment the previous run already passed would
        // otherwise restart the server before this one even connects).
        let before = rows_committed(&s.target, TARGET_DB);
        let running = Running::start(s.import_command(TARGET_DB, "out"));
        let mut early = None;
        let waited = Instant::now();
        let mut at = 0;
        while !running.exited(&mut early) && waited.elapsed() < HANG {
            at = rows_committed(&s.target, TARGET_DB);
            if at >= moment && at > before {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if early.is_some() {
            o.record(Err(format!(
                "the import ended before the restart at {moment} rows (too fast to interrupt)"
            )));
            continue;
        }
        // Held still across the restart, so it cannot finish first: the restart lands at `at`.
        running.pause(true);
        s.target.restart();
        running.pause(false);
        let result = running.finish(None, HANG).and_then(|run| {
            failed_clearly(
                &run,
                &format!("restart at {at} rows"),
                &[
                    "connection to the target database was lost",
                    "re-run `fmig import`",
                ],
            )
        });
        seen.push(at);
        o.record(result);
        // What was committed before the restart is still there: the next run resumes from it.
        let kept = rows_committed(&s.target, TARGET_DB);
        o.record(if kept >= at {
            Ok(())
        } else {
            Err(format!(
                "restart at {at} rows: only {kept} rows committed after it"
            ))
        });
    }

    let run = s.import(TARGET_DB, "out");
    o.record(succeeded(&run, "the import after the restarts"));
    o.lost = common::rows_lost(&reference, &common::fingerprint(&s.target, TARGET_DB));
    let run = s.verify(TARGET_DB, "out");
    o.record(succeeded(&run, "verify after the restarts"));
    o.detail = format!(
        "{} restarts of the target at {:?} of {total} rows committed; the re-run completed, equal to an uninterrupted import",
        seen.len(),
        seen
    );
    o
}

fn source_unreachable_mid_export() -> Outcome {
    let s = Split::new(&SeedConfig {
        sensor_readings: READINGS,
        ..SeedConfig::default()
    });
    let mut o = Outcome::default();
    let mut notes = Vec::new();
    s.export("good", &[]).expect_code(0);
    let reference = reference_import(&s, "good");

    // 1. The export's session terminated from another session while sensor_readings streams.
    // 2. The source server stopped (immediate) at the same point, then started again.
    for fault in ["pg_terminate_backend", "server stopped"] {
        let running = Running::start(s.export_command("out", &[]));
        let temp = s
            .work
            .path()
            .join("out")
            .join(format!("{}sensor_readings.json", fmig::files::TEMP_PREFIX));
        let mut early = None;
        let waited = Instant::now();
        let mut size = 0;
        // Mid-file: the largest table is exported first; wait until it is about 2 MB along.
        while !running.exited(&mut early) && waited.elapsed() < HANG {
            size = std::fs::metadata(&temp).map_or(0, |m| m.len());
            if size >= 2 << 20 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if early.is_some() {
            o.record(Err(format!("{fault}: the export ended before the fault")));
            continue;
        }
        // Held still while the source goes away: the server is certain to be mid-file then.
        running.pause(true);
        if fault == "pg_terminate_backend" {
            s.source.psql(
                SOURCE_DB,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                 WHERE application_name = 'fmig' AND pid <> pg_backend_pid()",
            );
        } else {
            pg_ctl(&s.source, &["stop", "-m", "immediate", "-w"]);
        }
        running.pause(false);
        let result = running.finish(None, HANG).and_then(|run| {
            failed_clearly(
                &run,
                fault,
                &[
                    "sensor_readings",
                    "connection to the source database was lost",
                    "run `fmig export` again",
                ],
            )
        });
        o.record(result);
        o.record(looks_incomplete(&s, "out", fault));
        notes.push(format!("{fault} at {} MB of sensor_readings", size >> 20));

        if fault == "server stopped" {
            // While it is down: a clear refusal to connect, quickly.
            let run = s.export("out", &["--connect-timeout", "2"]);
            o.record(failed_clearly(
                &run,
                "export while the source is down",
                &["could not connect to the source database", "next step"],
            ));
            o.record(looks_incomplete(
                &s,
                "out",
                "export while the source is down",
            ));
            pg_ctl(
                &s.source,
                &["start", "-w", "-o", &format!("-p {}", s.source.port())],
            );
        }
    }

    let run = s.export("out", &[]);
    o.record(succeeded(&run, "the export once the source is back"));
    import_and_verify(&s, "out", &mut o, &reference);
    o.detail = format!(
        "{}; each failed with exit 2 and no metadata.json, import refused the directory; the re-run exported, imported and verified",
        notes.join(", ")
    );
    o
}

/// `pg_ctl <args> -D <data dir>` as the cluster's owner, for stopping and starting the source
/// behind the `Cluster`'s back (its `Drop` still stops it at the end).
fn pg_ctl(cluster: &Cluster, args: &[&str]) {
    let data = cluster.data_dir();
    let mut cmd = Command::new("runuser");
    cmd.args(["-u", "postgres", "--", "pg_ctl"])
        .args(args)
        .arg("-D")
        .arg(data)
        .current_dir("/")
        .stdin(Stdio::null());
    if args.first() == Some(&"start") {
        cmd.arg("-l").arg(data.parent().unwrap().join("server.log"));
    }
    let out = cmd.output().expect("run pg_ctl");
    assert!(
        out.status.success(),
        "pg_ctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------

/// A tmpfs mounted on a directory for as long as this lives; unmounted on drop, also when the
/// scenario panics.
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    /// `None` when mounting is not permitted here (no root, a container without CAP_SYS_ADMIN).
    fn mount(dir: &Path, bytes: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={}k,mode=0700", bytes >> 10),
            ])
            .arg("tmpfs")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs {
            dir: dir.to_path_buf(),
        })
    }

    /// Gives it more room (the operator freeing space), keeping its files.
    fn grow(&self, bytes: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={}k", bytes >> 10)])
            .arg(&self.dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount of {} failed", self.dir.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

/// The RLIMIT_FSIZE of the simulated write error: less than sensor_readings.json needs.
const FILE_LIMIT: u64 = 4 << 20;

/// Per file of an export: rows and content checksum, to compare a re-run with the probe.
fn contents(work: &Path, dir: &str) -> Vec<(String, u64, String)> {
    let metadata = fmig::metadata::Metadata::load(&work.join(dir)).expect("metadata.json");
    metadata
        .tables
        .iter()
        .chain(&metadata.auth_users)
        .map(|t| (t.file.clone(), t.rows, t.checksum.sum.clone()))
        .collect()
}

fn same_contents(s: &Split, dir: &str, probe: &[(String, u64, String)]) -> Result<(), String> {
    let got = contents(s.work.path(), dir);
    if got == probe {
        Ok(())
    } else {
        Err(format!(
            "the re-run export in {dir} differs from an undisturbed one"
        ))
    }
}

fn export_disk_full() -> Outcome {
    let s = Split::new(&SeedConfig {
        sensor_readings: READINGS,
        ..SeedConfig::default()
    });
    let mut o = Outcome::default();
    let mut used = Vec::new();

    // An undisturbed export: its sizes place the fault, its contents are the reference.
    s.export("probe", &[]).expect_code(0);
    let probe = contents(s.work.path(), "probe");
    let metadata = fmig::metadata::Metadata::load(&s.work.path().join("probe")).unwrap();
    let page = |b: u64| b.div_ceil(4096) * 4096;
    let sensor = metadata
        .table("sensor_readings")
        .map_or(0, |t| page(t.bytes));
    let total: u64 = metadata
        .tables
        .iter()
        .chain(&metadata.auth_users)
        .map(|t| page(t.bytes))
        .sum();
    let reference = reference_import(&s, "probe");
    let mut imported = false;

    // A real full disk where mounting is allowed: room for the largest file (written first)
    // and half of the rest, so the export fails midway, with finished files beside it.
    let room = sensor + (total - sensor) / 2;
    match Tmpfs::mount(&s.work.path().join("small"), room) {
        Some(tmpfs) => {
            let run = s.export("small", &[]);
            o.record(failed_clearly(
                &run,
                "export onto a full tmpfs",
                &["small/", ".json: No space left on device", "--output-dir"],
            ));
            o.record(looks_incomplete(&s, "small", "full tmpfs"));
            let kept = listing(&s.work.path().join("small")).len();
            // The operator makes room and runs the same command again.
            tmpfs.grow(2 * total + (16 << 20));
            let run = s.export("small", &[]);
            o.record(succeeded(&run, "the export after making room"));
            o.record(same_contents(&s, "small", &probe));
            import_and_verify(&s, "small", &mut o, &reference);
            imported = true;
            drop(tmpfs);
            used.push(format!(
                "a {} KiB tmpfs (failed midway with {kept} finished files beside it)",
                room >> 10
            ));
        }
        None => used.push("no tmpfs (mount not permitted here)".to_string()),
    }

    // A write error simulated with RLIMIT_FSIZE (SIGXFSZ ignored, so write(2) fails with
    // EFBIG): needs no privilege, so it runs everywhere.
    let mut cmd = s.export_command("limited", &[]);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: only async-signal-safe calls (signal, setrlimit) between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let limit = libc::rlimit {
                    rlim_cur: FILE_LIMIT,
                    rlim_max: FILE_LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let run = run_to_end(cmd);
    o.record(failed_clearly(
        &run,
        "export with RLIMIT_FSIZE",
        &[
            "could not write limited/sensor_readings.json",
            "File too large",
            "--output-dir",
        ],
    ));
    o.record(looks_incomplete(&s, "limited", "RLIMIT_FSIZE"));
    let run = s.export("limited", &[]);
    o.record(succeeded(&run, "the export without the limit"));
    o.record(same_contents(&s, "limited", &probe));
    if !imported {
        import_and_verify(&s, "limited", &mut o, &reference);
    }
    used.push(format!(
        "a simulated write error (RLIMIT_FSIZE {} MiB)",
        FILE_LIMIT >> 20
    ));

    o.detail = format!(
        "{}: each export failed with exit 2 naming the file, no metadata.json, import refused it; \
         the re-run exported the same contents, which imported and verified",
        used.join(", and ")
    );
    o
}
