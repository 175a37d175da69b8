//! `fmig import` end to end: the fixture source, exported, loaded into the drifted fixture
//! target with the fixture's column mapping and a user mapping; plus resume after kills and
//! server restarts, and the refusals that protect data.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use support::cli::{Run, Workdir};
use support::cluster::Cluster;
use support::seed::{self, ORPHAN_ACTOR_ID, SeedConfig};

/// A seeded source database and an empty target database in one cluster, an export of the
/// source, and a user mapping that gives every auth user a new id.
struct Setup {
    cluster: Cluster,
    work: Workdir,
}

const TARGET_DB: &str = "target";

fn setup(config: &SeedConfig) -> Setup {
    let cluster = Cluster::start();
    seed::load_source_schema(&cluster, "postgres");
    seed::seed_source(&cluster, "postgres", config);
    cluster.create_database(TARGET_DB);
    seed::load_target_schema(&cluster, TARGET_DB);
    let work = Workdir::new();
    work.run(
        &["export", "--output-dir", "out"],
        &[("SUPABASE_DB_URL", &cluster.url("postgres"))],
    )
    .expect_code(0);
    // The new id of a user is derived from the old one, so tests can predict it.
    let mapping = cluster.psql(
        "postgres",
        "SELECT json_build_object('generatedAt', '2026-11-22T00:00:00Z', 'retainUntil', '2027-02-20T00:00:00Z', \
           'mappings', json_agg(json_build_object('supabaseUserId', id, \
             'stackAuthUserId', md5('stack' || id)::uuid, 'email', email, 'migratedAt', '2026-11-22T00:00:00Z'))) \
         FROM auth.users",
    );
    std::fs::write(work.path().join("out/user-mapping.json"), mapping.trim()).unwrap();
    std::fs::copy(fixture("fmig.toml"), work.path().join("fmig.toml")).unwrap();
    Setup { cluster, work }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

impl Setup {
    fn import(&self, extra: &[&str]) -> Run {
        self.import_into(TARGET_DB, extra)
    }

    fn import_into(&self, db: &str, extra: &[&str]) -> Run {
        let mut args = vec!["import", "--input-dir", "out"];
        args.extend_from_slice(extra);
        self.work
            .run(&args, &[("DATABASE_URL", &self.cluster.url(db))])
    }

    fn target(&self, sql: &str) -> String {
        self.cluster.psql(TARGET_DB, sql).trim().to_string()
    }

    fn source(&self, sql: &str) -> String {
        self.cluster.psql("postgres", sql).trim().to_string()
    }
}

/// A fingerprint of every imported table's contents, independent of row order.
fn fingerprint(cluster: &Cluster, db: &str) -> String {
    let tables: Vec<&str> = fmig::manifest::builtin().iter().map(|t| t.name).collect();
    tables
        .iter()
        .map(|t| {
            cluster
                .psql(db, &format!("SELECT '{t}:' || count(*) || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM public.{t} x"))
                .trim()
                .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every constraint and index of the target's application schema, with its exact definition
/// and comment: what an import must leave as it found it.
fn schema_fingerprint(cluster: &Cluster, db: &str) -> String {
    cluster
        .psql(
            db,
            "SELECT string_agg(line, E'\\n' ORDER BY line) FROM ( \
               SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid) \
                 || ' valid=' || convalidated || coalesce(' /' || obj_description(oid, 'pg_constraint'), '') AS line \
               FROM pg_constraint WHERE connamespace = 'public'::regnamespace \
               UNION ALL \
               SELECT pg_get_indexdef(indexrelid) || coalesce(' /' || obj_description(indexrelid, 'pg_class'), '') \
               FROM pg_index JOIN pg_class c ON c.oid = indexrelid \
               WHERE c.relnamespace = 'public'::regnamespace) x",
        )
        .trim()
        .to_string()
}

#[test]
fn a_full_import_maps_users_and_columns_and_advances_sequences() {
    let s = setup(&SeedConfig::default());

    // The orphan audit id has no mapping: listed, and nothing is written.
    let run = s.import(&[]);
    run.expect_code(2);
    assert!(run.stderr.contains(ORPHAN_ACTOR_ID), "{}", run.stderr);
    assert!(run.stderr.contains("event_logs.actor_id"), "{}", run.stderr);
    assert!(run.stderr.contains("nothing was written"), "{}", run.stderr);
    assert_eq!(
        s.target("SELECT to_regclass('fmig.import_progress') IS NULL"),
        "t"
    );
    assert_eq!(s.target("SELECT count(*) FROM public.organizations"), "0");

    // The dry run checks everything, shows the plan, and writes nothing.
    let run = s.import(&["--unmapped", "null", "--dry-run"]);
    run.expect_code(0);
    assert!(run.stdout.contains("nothing was written"), "{}", run.stdout);
    assert!(run.stdout.contains("staging + mapping"), "{}", run.stdout);
    assert!(run.stdout.contains("direct COPY"), "{}", run.stdout);
    assert_eq!(
        s.target("SELECT to_regclass('fmig.import_progress') IS NULL"),
        "t"
    );

    let run = s.import(&["--unmapped", "null"]);
    run.expect_code(0);
    for spec in fmig::manifest::builtin() {
        let source = s.source(&format!("SELECT count(*) FROM public.{}", spec.name));
        let target = s.target(&format!("SELECT count(*) FROM public.{}", spec.name));
        assert_eq!(source, target, "rows of {}", spec.name);
    }
    // User ids are Stack Auth ids now; the orphan became NULL.
    let expected_profiles = s.source("SELECT string_agg(md5('stack' || user_id)::uuid::text, ',' ORDER BY 1) FROM public.profiles");
    let got_profiles =
        s.target("SELECT string_agg(user_id::text, ',' ORDER BY 1) FROM public.profiles");
    assert_eq!(got_profiles, expected_profiles);
    assert_eq!(
        s.target(&format!(
            "SELECT count(*) FROM public.event_logs WHERE actor_id = '{ORPHAN_ACTOR_ID}'"
        )),
        "0"
    );
    assert_eq!(
        s.target("SELECT count(*) FROM public.sites s WHERE created_by IS NOT NULL"),
        s.source("SELECT count(*) FROM public.sites s WHERE created_by IS NOT NULL"),
    );
    // Renamed column kept its data; the profile lookup found profiles.
    assert_eq!(
        s.target("SELECT count(*) FROM public.manual_temperature_logs WHERE recorded_at IS NULL"),
        "0"
    );
    assert_eq!(
        s.target("SELECT count(*) FROM public.corrective_actions c WHERE c.profile_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM public.profiles p WHERE p.id = c.profile_id)"),
        "0"
    );
    // The next sensor reading gets an id above every imported one.
    assert_eq!(
        s.target("SELECT nextval(pg_get_serial_sequence('public.sensor_readings', 'id')) > (SELECT max(id) FROM public.sensor_readings)"),
        "t"
    );
    // A second run has nothing left to do and changes nothing.
    let before = fingerprint(&s.cluster, TARGET_DB);
    let run = s.import(&["--unmapped", "null"]);
    run.expect_code(0);
    assert_eq!(fingerprint(&s.cluster, TARGET_DB), before);
}

#[test]
fn a_json_null_document_in_a_not_null_column_stays_a_json_document() {
    // The seed's sixth organization has settings = 'null'::jsonb: a JSON document, which the
    // export writes as `null`, like SQL NULL. The column is NOT NULL in the source, so import
    // loads the document (before, it loaded SQL NULL and the target refused the row).
    let s = setup(&SeedConfig {
        organizations: 6,
        ..SeedConfig::default()
    });
    let documents = "SELECT count(*) FROM public.organizations WHERE settings = 'null'::jsonb";
    assert_eq!(s.source(documents), "1");
    s.import(&["--unmapped", "null"]).expect_code(0);
    assert_eq!(s.target(documents), "1");
    assert_eq!(
        s.target("SELECT count(*) FROM public.organizations WHERE settings IS NULL"),
        "0"
    );
    for against in ["source", "export"] {
        let run = s.work.run(
            &[
                "verify",
                "--export-dir",
                "out",
                "--unmapped",
                "null",
                "--against",
                against,
                "--table",
                "organizations",
            ],
            &[
                ("SUPABASE_DB_URL", &s.cluster.url("postgres")),
                ("DATABASE_URL", &s.cluster.url(TARGET_DB)),
            ],
        );
        run.expect_code(0);
    }
}

#[test]
fn killed_and_restarted_imports_resume_without_duplicates_or_gaps() {
    let s = setup(&SeedConfig {
        // Enough rows that the import is still running at several of the kill moments below.
        sensor_readings: 150_000,
        ..SeedConfig::default()
    });
    // The reference: one uninterrupted import into another database.
    s.cluster.create_database("reference");
    seed::load_target_schema(&s.cluster, "reference");
    s.import_into("reference", &["--unmapped", "null", "--batch-size", "200"])
        .expect_code(0);
    let reference = fingerprint(&s.cluster, "reference");

    // Kill -9 at several moments (deterministic spread: 0.3 s .. 2.1 s), re-running each time.
    let mut kills = 0;
    // Every other run writes with six connections: tables side by side, and sensor_readings
    // on several connections at once.
    for (round, delay_ms) in [300u64, 700, 1100, 1500, 2100].into_iter().enumerate() {
        let jobs = if round % 2 == 1 { "6" } else { "1" };
        let mut child = s
            .work
            .command(
                &[
                    "import",
                    "--input-dir",
                    "out",
                    "--unmapped",
                    "null",
                    "--batch-size",
                    "200",
                    "--jobs",
                    jobs,
                ],
                &[("DATABASE_URL", &s.cluster.url(TARGET_DB))],
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            child.kill().unwrap(); // SIGKILL
            kills += 1;
        }
        child.wait().unwrap();
    }
    assert!(
        kills >= 2,
        "the import finished too fast to be interrupted ({kills} kills)"
    );

    // A server restart in the middle of a run: the run fails, the next one completes.
    let child = s
        .work
        .command(
            &[
                "import",
                "--input-dir",
                "out",
                "--unmapped",
                "null",
                "--batch-size",
                "50",
            ],
            &[("DATABASE_URL", &s.cluster.url(TARGET_DB))],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(400));
    s.cluster.restart();
    let _ = child.wait_with_output().unwrap();

    // Whatever the kills interrupted (a table's foreign keys and indexes set aside, or their
    // rebuild), --restore-schema alone puts every definition back.
    let restore = s.import(&["--restore-schema"]);
    assert_eq!(restore.code, 0, "{}\n{}", restore.stdout, restore.stderr);
    assert_eq!(
        schema_fingerprint(&s.cluster, TARGET_DB),
        schema_fingerprint(&s.cluster, "reference"),
        "--restore-schema left the schema incomplete"
    );
    s.import(&["--unmapped", "null", "--batch-size", "200"])
        .expect_code(0);
    assert_eq!(
        fingerprint(&s.cluster, TARGET_DB),
        reference,
        "resumed import differs from an uninterrupted one"
    );
    assert_eq!(
        schema_fingerprint(&s.cluster, TARGET_DB),
        schema_fingerprint(&s.cluster, "reference"),
        "the resumed import changed the schema"
    );
    // Running again with other choices than the import in the target ran with would mix two
    // imports: refused, nothing written.
    let other = s.import(&["--unmapped", "keep", "--batch-size", "200"]);
    assert_eq!(other.code, 2, "{}\n{}", other.stdout, other.stderr);
    assert!(
        other.stderr.contains(
            "the import in the target ran with other choices (--unmapped: null then, keep now)"
        ),
        "{}",
        other.stderr
    );

    assert_eq!(
        fingerprint(&s.cluster, TARGET_DB),
        reference,
        "the refused run changed the target"
    );
}

#[test]
fn one_table_written_by_several_connections_commits_in_file_order() {
    let s = setup(&SeedConfig {
        sensor_readings: 40_000,
        ..SeedConfig::default()
    });
    s.cluster.create_database("reference");
    seed::load_target_schema(&s.cluster, "reference");
    s.import_into("reference", &["--unmapped", "null"])
        .expect_code(0);
    let reference = fingerprint(&s.cluster, "reference");

    // The target refuses one reading in the middle of the file: its batch fails while later
    // batches are being written on other connections, and none of those may commit.
    let rejected: u64 = 25_001;
    let id = s.source(&format!(
        "SELECT id FROM public.sensor_readings ORDER BY id OFFSET {} LIMIT 1",
        rejected - 1
    ));
    s.target(&format!(
        "ALTER TABLE public.sensor_readings ADD CONSTRAINT not_this_one CHECK (id <> {id})"
    ));
    // Eight connections for five tables at sensor_readings' level, the others small: most of
    // the connections write sensor_readings' batches.
    let args = ["--unmapped", "null", "--batch-size", "100", "--jobs", "8"];
    let run = s.import(&args);
    run.expect_code(2);
    assert!(
        run.stderr.contains(&format!(
            "public.sensor_readings: the target rejected row {rejected} of sensor_readings.json"
        )),
        "{}",
        run.stderr
    );
    // What is committed is exactly the rows before the failed batch: no later batch got in.
    let committed = s.target(
        "SELECT rows_committed FROM fmig.import_progress WHERE table_name = 'sensor_readings'",
    );
    assert_eq!(committed, (rejected / 100 * 100).to_string());
    assert_eq!(
        s.target("SELECT count(*) FROM public.sensor_readings"),
        committed
    );
    assert_eq!(
        s.target(&format!(
            "SELECT count(*) FROM public.sensor_readings WHERE id > {id}"
        )),
        "0"
    );

    s.target("ALTER TABLE public.sensor_readings DROP CONSTRAINT not_this_one");
    s.import(&args).expect_code(0);
    assert_eq!(fingerprint(&s.cluster, TARGET_DB), reference);
    let log = s.work.log();
    let imported = log
        .lines()
        .rev()
        .find(|l| l.contains("\"imported\"") && l.contains("\"table\":\"sensor_readings\""))
        .unwrap_or_else(|| panic!("no imported line in {log}"));
    let writers: u64 = imported
        .split("\"writers\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no writers in {imported}"));
    assert!(writers >= 4, "{imported}");
}

#[test]
fn ctrl_c_during_the_check_pass_stops_the_import_at_once() {
    let s = setup(&SeedConfig::default());
    // A file that never ends: opening a FIFO no one writes to blocks, so the check pass
    // would wait for ever; Ctrl-C must not.
    let file = s.work.path().join("out/areas.json");
    std::fs::remove_file(&file).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(&file)
        .status()
        .unwrap();
    assert!(made.success());
    let mut child = s
        .work
        .command(
            &["import", "--input-dir", "out", "--unmapped", "null"],
            &[("DATABASE_URL", &s.cluster.url(TARGET_DB))],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the check pass to start", || {
        s.work.log().contains("checking the export files")
    });
    std::thread::sleep(Duration::from_millis(300));
    let signalled = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(signalled.success());
    let sent = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if sent.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            panic!("the import did not stop within 10 s of Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(s.target("SELECT count(*) FROM public.organizations"), "0");
}

#[test]
fn damaged_exports_are_refused_before_any_write() {
    let s = setup(&SeedConfig::default());
    let out = s.work.path().join("out");

    // An edited value keeps the JSON valid but not the hash.
    let path = out.join("areas.json");
    let original = std::fs::read_to_string(&path).unwrap();
    let edited = original.replacen("\"name\":\"", "\"name\":\"X", 1);
    assert_ne!(edited, original);
    std::fs::write(&path, &edited).unwrap();
    let run = s.import(&["--unmapped", "null"]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("areas.json does not match metadata.json"),
        "{}",
        run.stderr
    );

    // A truncated file: the line and column of the problem.
    std::fs::write(&path, &original[..original.len() / 2]).unwrap();
    let run = s.import(&["--unmapped", "null"]);
    run.expect_code(2);
    assert!(run.stderr.contains("areas.json, line"), "{}", run.stderr);
    assert!(run.stderr.contains("truncated"), "{}", run.stderr);
    std::fs::write(&path, &original).unwrap();
    assert_eq!(
        s.target("SELECT to_regclass('fmig.import_progress') IS NULL"),
        "t",
        "something was written"
    );

    // A target with someone else's rows, and --truncate-first without --yes.
    s.target("INSERT INTO public.organizations (id, name, slug) VALUES (gen_random_uuid(), 'theirs', 'theirs')");
    let run = s.import(&["--unmapped", "null"]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("already has rows that fmig did not import"),
        "{}",
        run.stderr
    );
    let run = s.import(&["--unmapped", "null", "--truncate-first"]);
    run.expect_code(2);
    assert!(run.stderr.contains("--yes"), "{}", run.stderr);
    assert_eq!(s.target("SELECT count(*) FROM public.organizations"), "1");
    s.import(&["--unmapped", "null", "--truncate-first", "--yes"])
        .expect_code(0);
    assert_eq!(
        s.target("SELECT count(*) FROM public.organizations WHERE slug = 'theirs'"),
        "0"
    );
}

#[test]
fn a_rejected_row_is_named_and_disable_fk_reports_orphans() {
    let s = setup(&SeedConfig::default());
    // The target rejects one existing area name: the error names table, file row and column.
    let name = s.source("SELECT name FROM public.areas ORDER BY name LIMIT 1");
    s.target(&format!(
        "ALTER TABLE public.areas ADD CONSTRAINT no_such_name CHECK (name <> {})",
        fmig::ident::quote_literal(&name)
    ));
    let run = s.import(&["--unmapped", "null"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("public.areas: the target rejected row"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("of areas.json"), "{}", run.stderr);
    assert!(run.stderr.contains("no_such_name"), "{}", run.stderr);
    assert!(
        run.stderr.contains("a re-run resumes after them"),
        "{}",
        run.stderr
    );
    // Earlier tables are committed and checkpointed; areas has nothing.
    assert_eq!(s.target("SELECT count(*) FROM public.areas"), "0");
    assert!(
        s.target("SELECT count(*) FROM fmig.import_progress")
            .parse::<u32>()
            .unwrap()
            > 0
    );

    // --disable-fk loads sites without their organizations and reports the orphans.
    // Truncating only sites is refused by the server (other tables reference it), with its hint.
    let run = s.import(&[
        "--unmapped",
        "null",
        "--truncate-first",
        "--yes",
        "--table",
        "sites",
    ]);
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("cannot truncate a table referenced in a foreign key"),
        "{}",
        run.stderr
    );
    s.cluster.create_database("fk");
    seed::load_target_schema(&s.cluster, "fk");
    let run = s.import_into(
        "fk",
        &["--unmapped", "null", "--disable-fk", "--table", "sites"],
    );
    run.expect_code(1);
    assert!(
        run.stdout.contains("sites_organization_id_fkey"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("orphan row"), "{}", run.stdout);
}

#[test]
fn constraints_set_aside_while_loading_come_back_exactly_and_violations_come_back_not_valid() {
    let s = setup(&SeedConfig::default());
    // A comment on a foreign key and on an index must survive their rebuild too.
    s.target(
        "COMMENT ON CONSTRAINT sites_organization_id_fkey ON public.sites IS 'every site has an owner'",
    );
    let index = s.target(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         JOIN pg_class t ON t.oid = i.indrelid \
         WHERE t.relnamespace = 'public'::regnamespace AND t.relkind = 'r' \
           AND NOT t.relispartition AND NOT i.indisunique AND NOT i.indisprimary \
         ORDER BY 1 LIMIT 1",
    );
    assert!(
        !index.is_empty(),
        "the fixture target has a secondary index"
    );
    s.target(&format!(
        "COMMENT ON INDEX public.{index} IS 'for the dashboard'"
    ));
    // A partition's index renamed by hand must come back under its own name too.
    s.target("ALTER INDEX public.sensor_readings_2024_02_unit_id_recorded_at_idx RENAME TO readings_feb_idx");
    let before = schema_fingerprint(&s.cluster, TARGET_DB);

    s.cluster.create_database("kept");
    seed::load_target_schema(&s.cluster, "kept");
    s.cluster.psql(
        "kept",
        &format!(
            "COMMENT ON CONSTRAINT sites_organization_id_fkey ON public.sites IS 'every site has an owner'; \
             COMMENT ON INDEX public.{index} IS 'for the dashboard'; \
             ALTER INDEX public.sensor_readings_2024_02_unit_id_recorded_at_idx RENAME TO readings_feb_idx"
        ),
    );
    s.import_into("kept", &["--unmapped", "null", "--keep-constraints"])
        .expect_code(0);

    // Three tables at a time, too: the end state is the same.
    let run = s.import(&["--unmapped", "null", "--jobs", "3"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let rebuilt = run
        .stdout
        .lines()
        .find(|l| l.starts_with("Set aside while loading and rebuilt after:"))
        .unwrap_or_else(|| panic!("nothing was set aside:\n{}", run.stdout));
    assert!(!rebuilt.contains(" 0 foreign key"), "{rebuilt}");
    assert!(!rebuilt.contains(" 0 index"), "{rebuilt}");
    assert!(run.stdout.contains("table(s) analyzed"), "{}", run.stdout);
    // The same rows and the same definitions as with everything in place, nothing left over.
    assert_eq!(
        fingerprint(&s.cluster, TARGET_DB),
        fingerprint(&s.cluster, "kept")
    );
    assert_eq!(schema_fingerprint(&s.cluster, TARGET_DB), before);
    assert_eq!(schema_fingerprint(&s.cluster, "kept"), before);
    assert_eq!(
        s.target("SELECT count(*) FROM fmig.deferred_definitions"),
        "0"
    );
    // verify compares every definition with how the first import found it.
    let verify = || {
        s.work.run(
            &["verify", "--export-dir", "out", "--unmapped", "null"],
            &[
                ("SUPABASE_DB_URL", &s.cluster.url("postgres")),
                ("DATABASE_URL", &s.cluster.url(TARGET_DB)),
            ],
        )
    };
    let run = verify();
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    s.target(&format!("DROP INDEX public.{index}"));
    let run = verify();
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(&format!(
            "index {index} is missing (before the import: CREATE INDEX"
        )),
        "{}",
        run.stdout
    );
    // Statistics are fresh: ANALYZE has counted the rows.
    assert_eq!(
        s.target("SELECT reltuples::bigint = (SELECT count(*) FROM public.sites) FROM pg_class WHERE oid = 'public.sites'::regclass"),
        "t"
    );

    // Sites without their organizations: loaded, the foreign key re-added NOT VALID (never
    // missing), the orphans reported with the next step, exit 1.
    s.cluster.create_database("orphans");
    seed::load_target_schema(&s.cluster, "orphans");
    let run = s.import_into("orphans", &["--unmapped", "null", "--table", "sites"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("sites_organization_id_fkey on public.sites is back NOT VALID"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("orphan row"), "{}", run.stdout);
    assert!(run.stdout.contains("VALIDATE CONSTRAINT"), "{}", run.stdout);
    assert_eq!(
        s.cluster
            .psql(
                "orphans",
                "SELECT convalidated FROM pg_constraint WHERE conname = 'sites_organization_id_fkey'"
            )
            .trim(),
        "f"
    );
}

#[test]
fn a_loader_that_does_not_own_the_tables_loads_with_everything_in_place_and_says_why() {
    let s = setup(&SeedConfig::default());
    // A role that may write the tables but owns none of them: it cannot drop their indexes.
    s.target(
        "CREATE ROLE loader LOGIN PASSWORD 'loader-pw'; \
         GRANT CREATE, TEMPORARY ON DATABASE target TO loader; \
         GRANT USAGE ON SCHEMA public TO loader; \
         GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO loader; \
         GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO loader",
    );
    let before = schema_fingerprint(&s.cluster, TARGET_DB);
    let url = s
        .cluster
        .url_with(TARGET_DB, "loader", "loader-pw", "sslmode=disable");
    let run = s.work.run(
        &["import", "--input-dir", "out", "--unmapped", "null"],
        &[("DATABASE_URL", &url)],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("stay in place while it loads")
            && run.stderr.contains("import as the tables' owner"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stdout.contains("Set aside while loading"),
        "{}",
        run.stdout
    );
    assert_eq!(schema_fingerprint(&s.cluster, TARGET_DB), before);
    for spec in fmig::manifest::builtin() {
        let source = s.source(&format!("SELECT count(*) FROM public.{}", spec.name));
        let target = s.target(&format!("SELECT count(*) FROM public.{}", spec.name));
        assert_eq!(source, target, "rows of {}", spec.name);
    }
}

/// A psql session holding the locks of `sql` (run in an open transaction) until dropped.
struct Holding(std::process::Child);

impl Holding {
    fn start(s: &Setup, sql: &str) -> Holding {
        use std::io::Write;
        let mut child = s
            .cluster
            .psql_command(TARGET_DB)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.as_mut().unwrap();
        writeln!(stdin, "SET application_name = 'holder'; BEGIN; {sql}").unwrap();
        stdin.flush().unwrap();
        wait_until("the holding session to have its locks", || {
            s.target(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE application_name = 'holder' AND state = 'idle in transaction'",
            ) == "1"
        });
        Holding(child)
    }
}

impl Drop for Holding {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn killed_while_setting_aside_or_rebuilding_then_restore_schema_puts_every_definition_back() {
    let s = setup(&SeedConfig {
        sensor_readings: 20_000,
        ..SeedConfig::default()
    });
    s.cluster.create_database("reference");
    seed::load_target_schema(&s.cluster, "reference");
    s.import_into("reference", &["--unmapped", "null"])
        .expect_code(0);
    let reference_schema = schema_fingerprint(&s.cluster, "reference");
    assert_eq!(schema_fingerprint(&s.cluster, TARGET_DB), reference_schema);
    let spawn = || {
        s.work
            .command(
                &["import", "--input-dir", "out", "--unmapped", "null"],
                &[("DATABASE_URL", &s.cluster.url(TARGET_DB))],
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let blocked_on = |statement: &str| {
        s.target(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '{statement}%'"
        )) != "0"
    };
    let pending = |table: &str| {
        s.target(&format!(
            "SELECT count(*) FROM fmig.deferred_definitions WHERE table_name = '{table}'"
        ))
        .parse::<u32>()
        .unwrap()
    };

    // 1. Killed in the middle of setting a table's definitions aside: a session holds a lock
    // on alerts, so its DROP waits inside the transaction that recorded them.
    let holder = Holding::start(&s, "LOCK TABLE public.alerts IN ACCESS SHARE MODE;");
    let mut child = spawn();
    wait_until("the import to wait for alerts", || {
        blocked_on(r#"ALTER TABLE "public"."alerts" DROP CONSTRAINT"#)
    });
    child.kill().unwrap();
    child.wait().unwrap();
    drop(holder);
    assert_eq!(pending("alerts"), 0, "a rolled-back set-aside left records");
    assert!(
        pending("sites") > 0,
        "the tables before alerts were set aside"
    );
    let verify = s.work.run(
        &["verify", "--export-dir", "out", "--unmapped", "null"],
        &[
            ("SUPABASE_DB_URL", &s.cluster.url("postgres")),
            ("DATABASE_URL", &s.cluster.url(TARGET_DB)),
        ],
    );
    assert_eq!(verify.code, 2, "{}\n{}", verify.stdout, verify.stderr);
    assert!(
        verify.stderr.contains("--restore-schema"),
        "{}",
        verify.stderr
    );

    // 2. Killed in the middle of the rebuild: a session holds sensor_readings' records, so
    // re-adding its foreign keys waits to delete them, inside the transaction that re-adds.
    let mut child = spawn();
    wait_until("sensor_readings to be set aside", || {
        pending("sensor_readings") > 0
    });
    let holder = Holding::start(
        &s,
        "SELECT 1 FROM fmig.deferred_definitions \
         WHERE table_name = 'sensor_readings' AND kind = 'foreign key' FOR UPDATE;",
    );
    wait_until("the rebuild to wait", || {
        blocked_on("DELETE FROM fmig.deferred_definitions")
    });
    child.kill().unwrap();
    child.wait().unwrap();
    drop(holder);
    assert!(pending("sensor_readings") > 0);
    assert_ne!(schema_fingerprint(&s.cluster, TARGET_DB), reference_schema);

    // --restore-schema alone puts everything back; the next import finishes the data.
    let run = s.import(&["--restore-schema"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("Put back"), "{}", run.stdout);
    assert_eq!(schema_fingerprint(&s.cluster, TARGET_DB), reference_schema);
    s.import(&["--unmapped", "null"]).expect_code(0);
    assert_eq!(schema_fingerprint(&s.cluster, TARGET_DB), reference_schema);
    assert_eq!(
        fingerprint(&s.cluster, TARGET_DB),
        fingerprint(&s.cluster, "reference")
    );
}

/// Polls `check` every 50 ms for at most 30 s.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_second_import_into_the_same_target_exits_2_naming_the_first_and_a_killed_one_frees_it() {
    use std::io::Write;
    use std::process::Stdio;
    let s = setup(&SeedConfig::default());
    let url = s.cluster.url(TARGET_DB);
    let env = [("DATABASE_URL", url.as_str())];
    // The first run holds the lock and then waits for a table another session keeps locked,
    // so it is surely running when the second starts.
    let mut blocker = s
        .cluster
        .psql_command(TARGET_DB)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut blocker_in = blocker.stdin.take().unwrap();
    writeln!(
        blocker_in,
        "BEGIN; LOCK TABLE public.organizations IN ACCESS EXCLUSIVE MODE; SELECT 1;"
    )
    .unwrap();
    blocker_in.flush().unwrap();
    wait_until("the blocker's table lock", || {
        s.target("SELECT count(*) FROM pg_locks WHERE relation = 'public.organizations'::regclass AND mode = 'AccessExclusiveLock' AND granted") == "1"
    });
    let mut first = s
        .work
        .command(
            &["import", "--input-dir", "out", "--unmapped", "null"],
            &env,
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock_held = format!(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND classid::bigint = ({} >> 32)",
        fmig::lock::TARGET_LOCK_KEY
    );
    wait_until("the first import's lock", || s.target(&lock_held) == "1");

    let started = std::time::Instant::now();
    let second = s.import(&["--unmapped", "null"]);
    assert_eq!(second.code, 2, "{}\n{}", second.stdout, second.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second run waited {:?}",
        started.elapsed()
    );
    assert!(
        second
            .stderr
            .contains("another fmig import is writing to this target database")
            && second
                .stderr
                .contains(&format!("fmig import pid {}", first.id())),
        "{}",
        second.stderr
    );
    assert!(
        second.stderr.contains("nothing was written"),
        "{}",
        second.stderr
    );

    // kill -9 of the holder: its lock goes with its connection, and the next run loads
    // everything.
    first.kill().unwrap();
    first.wait().unwrap();
    drop(blocker_in);
    blocker.wait().unwrap();
    let next = s.import(&["--unmapped", "null"]);
    assert_eq!(next.code, 0, "{}\n{}", next.stdout, next.stderr);
    assert_eq!(
        s.target("SELECT count(*) FROM public.sites"),
        s.source("SELECT count(*) FROM public.sites")
    );
    assert_eq!(s.target(&lock_held), "0", "the lock outlived its run");
}
