//! `fmig verify` end to end on the fixture pair after a clean migration (export, a user
//! mapping, import with the fixture's column mapping): it passes; then one defect at a time is
//! injected into the target, verify must fail naming the table, key and column, and the
//! defect is undone before the next one.

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::cli::{Run, Workdir};
use support::cluster::Cluster;
use support::seed::{self, ORPHAN_ACTOR_ID, SeedConfig};

const TARGET_DB: &str = "target";

struct Setup {
    cluster: Cluster,
    work: Workdir,
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn setup() -> Setup {
    setup_with("true", "null")
}

/// A migration whose user mapping holds only the users matching `mapped` (SQL on auth.users),
/// imported with `--unmapped <unmapped>`.
fn setup_with(mapped: &str, unmapped: &str) -> Setup {
    let cluster = Cluster::start();
    seed::load_source_schema(&cluster, "postgres");
    seed::seed_source(&cluster, "postgres", &SeedConfig::default());
    cluster.create_database(TARGET_DB);
    seed::load_target_schema(&cluster, TARGET_DB);
    let work = Workdir::new();
    work.run(
        &["export", "--output-dir", "out"],
        &[("SUPABASE_DB_URL", &cluster.url("postgres"))],
    )
    .expect_code(0);
    let mapping = cluster.psql(
        "postgres",
        &format!("SELECT json_build_object('generatedAt', '2026-11-22T00:00:00Z', 'retainUntil', '2027-02-20T00:00:00Z', \
           'mappings', json_agg(json_build_object('supabaseUserId', id, \
             'stackAuthUserId', md5('stack' || id)::uuid, 'email', email, 'migratedAt', '2026-11-22T00:00:00Z'))) \
         FROM auth.users WHERE {mapped}"),
    );
    std::fs::write(work.path().join("out/user-mapping.json"), mapping.trim()).unwrap();
    std::fs::copy(fixture("fmig.toml"), work.path().join("fmig.toml")).unwrap();
    work.run(
        &["import", "--input-dir", "out", "--unmapped", unmapped],
        &[("DATABASE_URL", &cluster.url(TARGET_DB))],
    )
    .expect_code(0);
    Setup { cluster, work }
}

impl Setup {
    fn verify(&self, extra: &[&str]) -> (Run, Value) {
        let mut args = vec!["verify", "--export-dir", "out"];
        args.extend_from_slice(extra);
        let run = self.work.run(
            &args,
            &[
                ("SUPABASE_DB_URL", &self.cluster.url("postgres")),
                ("DATABASE_URL", &self.cluster.url(TARGET_DB)),
            ],
        );
        let text = std::fs::read_to_string(self.work.path().join("out/verification-report.json"))
            .unwrap_or_else(|_| panic!("no report\n{}\n{}", run.stdout, run.stderr));
        (run, serde_json::from_str(&text).unwrap())
    }

    fn target(&self, sql: &str) -> String {
        self.cluster.psql(TARGET_DB, sql).trim().to_string()
    }

    /// Applies `inject`, expects verify of `table` to fail with a report containing every
    /// string of `expect` in that table's entry, then applies `undo`.
    fn expect_caught(&self, what: &str, table: &str, inject: &str, undo: &str, expect: &[&str]) {
        self.target(inject);
        let (run, report) = self.verify(&["--table", table]);
        self.target(undo);
        run.expect_code(1);
        let entry = report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == table)
            .unwrap_or_else(|| panic!("{what}: {table} not in the report"));
        assert_ne!(entry["status"], "ok", "{what}: {entry:#}");
        let text = entry.to_string();
        for e in expect {
            assert!(text.contains(e), "{what}: {e:?} not in {entry:#}");
        }
        assert!(run.stdout.contains(table), "{what}: {}", run.stdout);
    }
}

#[test]
fn verify_passes_after_a_clean_migration_and_catches_each_injected_defect() {
    let s = setup();

    let (run, report) = s.verify(&["--jobs", "2"]);
    run.expect_code(0);
    assert_eq!(report["ok"], true);
    assert_eq!(report["tables"].as_array().unwrap().len(), 23);
    assert!(
        run.stdout.contains("target equals source"),
        "{}",
        run.stdout
    );
    // Tables with expressions went through the staging table, the rest were compared in Rust.
    let methods: Vec<&str> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["method"].as_str().unwrap())
        .collect();
    assert!(methods.contains(&"staged") && methods.contains(&"rust"));
    assert!(s.work.log().contains("verify summary"));

    // Against the export files: every table through the staging table, equal too.
    let (run, report) = s.verify(&["--against", "export"]);
    run.expect_code(0);
    assert_eq!(report["ok"], true);
    assert!(report["against"].as_str().unwrap().starts_with("export"));

    // A changed value.
    let area = s.target("SELECT id FROM public.areas ORDER BY id LIMIT 1");
    s.expect_caught(
        "changed value",
        "areas",
        &format!("UPDATE public.areas SET name = name || 'X' WHERE id = '{area}'"),
        &format!("UPDATE public.areas SET name = left(name, -1) WHERE id = '{area}'"),
        &["changed", &area, "\"name\""],
    );
    // Against the export too (the previous value kept to put it back exactly).
    let floor = s.target(&format!(
        "SELECT coalesce(floor::text, 'NULL') FROM public.areas WHERE id = '{area}'"
    ));
    s.target(&format!(
        "UPDATE public.areas SET floor = coalesce(floor, 0) + 1 WHERE id = '{area}'"
    ));
    let (run, report) = s.verify(&["--against", "export", "--table", "areas"]);
    s.target(&format!(
        "UPDATE public.areas SET floor = {floor} WHERE id = '{area}'"
    ));
    run.expect_code(1);
    assert!(report.to_string().contains("\"floor\""), "{report:#}");

    // NULL turned into ''.
    let site = s.target("SELECT id FROM public.sites WHERE address IS NULL ORDER BY id LIMIT 1");
    assert!(!site.is_empty(), "the seed has a site without address");
    s.expect_caught(
        "NULL -> ''",
        "sites",
        &format!("UPDATE public.sites SET address = '' WHERE id = '{site}'"),
        &format!("UPDATE public.sites SET address = NULL WHERE id = '{site}'"),
        &[&site, "\"address\""],
    );

    // --fail-fast: after the first table that differs, no further table is started.
    s.target(&format!(
        "UPDATE public.sites SET address = '' WHERE id = '{site}'"
    ));
    let (run, report) = s.verify(&["--fail-fast", "--table", "sites,areas"]);
    s.target(&format!(
        "UPDATE public.sites SET address = NULL WHERE id = '{site}'"
    ));
    run.expect_code(1);
    let statuses: Vec<(&str, &str)> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["table"].as_str().unwrap(), t["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, [("sites", "differs"), ("areas", "skipped")]);

    // A deleted row (composite primary key, partitioned table).
    let reading = s.target(
        "SELECT id FROM public.sensor_readings WHERE received_at IS NOT NULL \
         AND temperature <> round(temperature) ORDER BY id LIMIT 1",
    );
    s.expect_caught(
        "deleted row",
        "sensor_readings",
        &format!(
            "CREATE SCHEMA IF NOT EXISTS keep; CREATE TABLE keep.r AS SELECT * FROM public.sensor_readings WHERE id = {reading}; \
             DELETE FROM public.sensor_readings WHERE id = {reading}"
        ),
        "INSERT INTO public.sensor_readings SELECT * FROM keep.r; DROP TABLE keep.r",
        &["missing", &format!("id={reading}")],
    );

    // A timestamp shifted by one hour.
    s.expect_caught(
        "timestamp shifted",
        "sensor_readings",
        &format!(
            "UPDATE public.sensor_readings SET received_at = received_at + interval '1 hour' WHERE id = {reading}"
        ),
        &format!(
            "UPDATE public.sensor_readings SET received_at = received_at - interval '1 hour' WHERE id = {reading}"
        ),
        &[&format!("id={reading}"), "\"received_at\""],
    );

    // A numeric rounded.
    let temperature = s.target(&format!(
        "SELECT temperature FROM public.sensor_readings WHERE id = {reading}"
    ));
    s.expect_caught(
        "numeric rounded",
        "sensor_readings",
        &format!(
            "UPDATE public.sensor_readings SET temperature = round(temperature) WHERE id = {reading}"
        ),
        &format!(
            "UPDATE public.sensor_readings SET temperature = {temperature} WHERE id = {reading}"
        ),
        &[&format!("id={reading}"), "\"temperature\""],
    );

    // A duplicated row in a table without a primary key.
    let ctid = s.target(
        "INSERT INTO public.door_events SELECT * FROM public.door_events LIMIT 1 RETURNING ctid",
    );
    let (run, report) = s.verify(&["--table", "door_events"]);
    s.target(&format!(
        "DELETE FROM public.door_events WHERE ctid = '{ctid}'"
    ));
    run.expect_code(1);
    let text = report.to_string();
    assert!(text.contains("duplicated"), "{report:#}");
    assert!(text.contains("door_events"), "{report:#}");
    let buckets = &report["tables"][0]["bucket_rows"][0];
    assert_eq!(
        buckets["target_rows"].as_u64().unwrap(),
        buckets["source_rows"].as_u64().unwrap() + 1,
        "{report:#}"
    );

    // A user id mapped to the wrong Stack Auth user, and one left unmapped.
    let (site, created_by) = {
        let row = s.target(
            "SELECT id || '|' || created_by FROM public.sites WHERE created_by IS NOT NULL ORDER BY id LIMIT 1",
        );
        let (a, b) = row.split_once('|').unwrap();
        (a.to_string(), b.to_string())
    };
    let other = s.cluster.psql(
        "postgres",
        &format!("SELECT md5('stack' || id)::uuid FROM auth.users WHERE md5('stack' || id)::uuid <> '{created_by}' ORDER BY 1 LIMIT 1"),
    );
    let other = other.trim();
    s.expect_caught(
        "wrong Stack Auth user",
        "sites",
        &format!("UPDATE public.sites SET created_by = '{other}' WHERE id = '{site}'"),
        &format!("UPDATE public.sites SET created_by = '{created_by}' WHERE id = '{site}'"),
        &[&site, "\"created_by\"", other],
    );
    // Left unmapped: the old Supabase id kept (what --unmapped keep writes).
    let old = s.cluster.psql(
        "postgres",
        &format!("SELECT created_by FROM public.sites WHERE id = '{site}'"),
    );
    let old = old.trim();
    s.expect_caught(
        "unmapped user id",
        "sites",
        &format!("UPDATE public.sites SET created_by = '{old}' WHERE id = '{site}'"),
        &format!("UPDATE public.sites SET created_by = '{created_by}' WHERE id = '{site}'"),
        &[&site, "not a Stack Auth id of the mapping", old],
    );
    s.expect_caught(
        "unknown user id",
        "event_logs",
        &format!("UPDATE public.event_logs SET actor_id = '{ORPHAN_ACTOR_ID}' WHERE id = (SELECT id FROM public.event_logs WHERE actor_id IS NULL ORDER BY id LIMIT 1)"),
        &format!("UPDATE public.event_logs SET actor_id = NULL WHERE actor_id = '{ORPHAN_ACTOR_ID}'"),
        &["actor_id", ORPHAN_ACTOR_ID],
    );

    // An orphaned foreign key (written with triggers off, as --disable-fk would).
    let (area, site_of_area) = {
        let row = s.target("SELECT id || '|' || site_id FROM public.areas ORDER BY id LIMIT 1");
        let (a, b) = row.split_once('|').unwrap();
        (a.to_string(), b.to_string())
    };
    s.expect_caught(
        "orphaned foreign key",
        "areas",
        &format!(
            "SET session_replication_role = replica; \
             UPDATE public.areas SET site_id = '00000000-0000-0000-0000-00000000dead' WHERE id = '{area}'"
        ),
        &format!(
            "SET session_replication_role = replica; \
             UPDATE public.areas SET site_id = '{site_of_area}' WHERE id = '{area}'"
        ),
        &["orphan", "00000000-0000-0000-0000-00000000dead", &area],
    );

    // Everything undone: equal again. Then a target whose column order and numeric type
    // differ from the source still verifies: values are compared, not layouts or texts.
    s.target(
        "ALTER TABLE public.units ALTER COLUMN target_temp TYPE numeric(10, 4); \
         ALTER TABLE public.areas ADD COLUMN description_moved text; \
         UPDATE public.areas SET description_moved = description; \
         ALTER TABLE public.areas DROP COLUMN description; \
         ALTER TABLE public.areas RENAME COLUMN description_moved TO description",
    );
    let (run, report) = s.verify(&["--table", "units,areas"]);
    run.expect_code(0);
    let units = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "units")
        .unwrap()
        .clone();
    assert!(
        units["compared_after_conversion"]
            .to_string()
            .contains("target_temp"),
        "{units:#}"
    );

    // Counts only.
    let (run, report) = s.verify(&["--skip-checksum", "--table", "sites"]);
    run.expect_code(0);
    assert_eq!(report["tables"][0]["checksum_ok"], Value::Null);
}

#[test]
fn verify_unmapped_keep_accepts_the_old_ids_import_kept_and_nothing_else() {
    // Half the users have no Stack Auth account: import keeps their old ids.
    let s = setup_with("id::text < '8'", "keep");
    // Without the flag, verify takes the policy the import recorded in the target, and says so.
    let (run, report) = s.verify(&[]);
    run.expect_code(0);
    assert!(
        run.stdout
            .contains("verifying with the import's choices recorded in the target at")
            && run.stdout.contains("--unmapped keep"),
        "{}",
        run.stdout
    );
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(
        run.stdout.contains("Kept on purpose") && run.stdout.contains("profiles.user_id"),
        "{}",
        run.stdout
    );
    let kept = report.to_string();
    assert!(kept.contains("have no Stack Auth account"), "{report:#}");

    // A flag that contradicts the recorded choice is refused, naming both...
    let (run, _) = s.verify(&["--unmapped", "null", "--table", "profiles"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("--unmapped: keep then, null now")
            && run.stderr.contains("--ignore-recorded"),
        "{}",
        run.stderr
    );
    // ... and so is another column mapping file than the one the import ran with.
    let edited = format!(
        "{}\n# edited after the import\n",
        std::fs::read_to_string(s.work.path().join("fmig.toml")).unwrap()
    );
    std::fs::write(s.work.path().join("other.toml"), edited).unwrap();
    let (run, _) = s.verify(&["--mapping-config", "other.toml", "--table", "profiles"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("column mapping: fmig.toml"),
        "{}",
        run.stderr
    );
    // Verified as if import had written NULL, when asked: every kept id is a difference.
    let (run, _) = s.verify(&[
        "--unmapped",
        "null",
        "--ignore-recorded",
        "--table",
        "profiles",
    ]);
    run.expect_code(1);

    // An old id that has a mapping but was not rewritten is still a difference.
    let (site, created_by) = {
        let row = s.target(
            "SELECT id || '|' || created_by FROM public.sites WHERE created_by IS NOT NULL ORDER BY id LIMIT 1",
        );
        let (a, b) = row.split_once('|').unwrap();
        (a.to_string(), b.to_string())
    };
    let mapped_old = s.cluster.psql(
        "postgres",
        "SELECT id FROM auth.users WHERE id::text < '8' ORDER BY id LIMIT 1",
    );
    let mapped_old = mapped_old.trim();
    s.target(&format!(
        "UPDATE public.sites SET created_by = '{mapped_old}' WHERE id = '{site}'"
    ));
    let (run, report) = s.verify(&["--unmapped", "keep", "--table", "sites"]);
    s.target(&format!(
        "UPDATE public.sites SET created_by = '{created_by}' WHERE id = '{site}'"
    ));
    run.expect_code(1);
    let text = report.to_string();
    assert!(
        text.contains("not rewritten") && text.contains(mapped_old),
        "{report:#}"
    );
}

#[test]
fn verify_cannot_run_without_a_target() {
    let work = Workdir::new();
    let run = work.run(
        &["verify", "--export-dir", "out"],
        &[("SUPABASE_DB_URL", "postgresql://u:p@127.0.0.1:1/x")],
    );
    run.expect_code(2);
}
