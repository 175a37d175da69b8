//! `fmig export --dry-run` against a seeded Supabase-shaped cluster.

mod support;

use serde_json::Value;
use support::cli::Workdir;
use support::cluster::Cluster;
use support::seed::{self, SeedConfig, SeedSummary};

struct Seeded {
    cluster: Cluster,
    summary: SeedSummary,
}

fn seeded_source() -> Seeded {
    let cluster = Cluster::start();
    seed::load_source_schema(&cluster, "postgres");
    let summary = seed::seed_source(&cluster, "postgres", &SeedConfig::default());
    Seeded { cluster, summary }
}

fn dry_run_json(source: &Cluster, extra: &[&str], code: i32) -> Value {
    let work = Workdir::new();
    let mut args = vec!["export", "--dry-run", "--json"];
    args.extend_from_slice(extra);
    let run = work.run(&args, &[("SUPABASE_DB_URL", &source.url("postgres"))]);
    run.expect_code(code);
    serde_json::from_str(&run.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", run.stdout))
}

fn findings_of_kind<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == kind)
        .collect()
}

#[test]
fn lists_every_table_in_dependency_order_with_exact_counts() {
    let s = seeded_source();
    let report = dry_run_json(&s.cluster, &[], 0);
    let tables = report["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 23);

    // Levels are computed from the source's foreign keys; the fixture is built to the spec's
    // order, so they equal the hand-written ones, and the list is sorted by them.
    let mut previous = 0;
    for (line, spec) in tables.iter().zip(fmig::manifest::builtin()) {
        let level = line["level"].as_u64().unwrap();
        assert!(level >= previous, "not in dependency order: {line}");
        previous = level;
        assert_eq!(line["table"], spec.name, "order differs from the spec's");
        assert_eq!(level as usize, spec.level, "{}", spec.name);
        assert_eq!(line["large"], spec.large, "{}", spec.name);
        let rows = line["rows"].as_u64().unwrap();
        assert_eq!(
            rows, s.summary.tables[spec.name],
            "row count of {}",
            spec.name
        );
        assert!(line["size_bytes"].as_u64().unwrap() > 0, "{}", spec.name);
    }
    let total: u64 = s.summary.tables.values().sum();
    assert_eq!(report["total_rows"].as_u64().unwrap(), total);

    let users = &report["auth_users"];
    let want = &s.summary.users;
    assert_eq!(users["total"], want.total);
    assert_eq!(users["with_bcrypt_password"], want.with_bcrypt_password);
    assert_eq!(users["with_oauth_identity"], want.with_oauth_identity);
    assert_eq!(users["without_email"], want.without_email);
    assert_eq!(users["anonymous"], want.anonymous);
    assert_eq!(users["banned"], want.banned);
    assert_eq!(users["soft_deleted"], want.soft_deleted);
    assert_eq!(users["sso"], want.sso);

    // The fixture has user-id columns the team did not list, and an audit column without a
    // foreign key: both must be shown, neither is an error.
    assert!(
        findings_of_kind(&report, "user_id_column_not_in_manifest")
            .iter()
            .any(|f| f["table"] == "alerts" && f["column"] == "acknowledged_by")
    );
    assert!(
        findings_of_kind(&report, "user_id_column_without_foreign_key")
            .iter()
            .any(|f| f["table"] == "event_logs" && f["column"] == "actor_id")
    );
    assert!(
        report["findings"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| f["severity"] != "error"),
        "{report:#}"
    );
    let alerts = tables.iter().find(|t| t["table"] == "alerts").unwrap();
    assert!(
        alerts["user_id_columns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["column"] == "acknowledged_by"
                && c["listed"] == false
                && c["foreign_key"] == true)
    );
}

#[test]
fn a_missing_table_a_wrong_order_and_an_unlisted_table_are_reported() {
    let s = seeded_source();
    // subscriptions (hand-written level 1) now references units (level 3): importing in the
    // hand-written order would fail.
    s.cluster.psql(
        "postgres",
        "DROP TABLE public.door_events; \
         ALTER TABLE public.subscriptions ADD COLUMN unit_id uuid REFERENCES public.units(id); \
         CREATE TABLE public.extra_notes (id int PRIMARY KEY, note text);",
    );
    let report = dry_run_json(&s.cluster, &[], 1);

    assert_eq!(findings_of_kind(&report, "table_missing").len(), 1);
    assert_eq!(
        findings_of_kind(&report, "table_missing")[0]["table"],
        "door_events"
    );
    let door = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "door_events")
        .unwrap();
    assert_eq!(door["present"], false);
    assert!(door["rows"].is_null());

    let violations = findings_of_kind(&report, "order_violation");
    assert!(
        violations.iter().any(|v| v["table"] == "subscriptions"
            && v["references"] == "units"
            && v["severity"] == "warning"),
        "{report:#}"
    );
    // The computed order puts subscriptions after units.
    let names: Vec<&str> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    let pos = |n: &str| names.iter().position(|x| *x == n).unwrap();
    assert!(pos("subscriptions") > pos("units"), "{names:?}");
    let subs = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "subscriptions")
        .unwrap();
    assert_eq!(subs["level"], 4);
    assert_eq!(subs["listed_level"], 1);

    assert!(
        findings_of_kind(&report, "table_not_in_manifest")
            .iter()
            .any(|f| f["table"] == "extra_notes")
    );
}

#[test]
fn the_text_report_and_the_log_file_agree() {
    let s = seeded_source();
    s.cluster.psql(
        "postgres",
        "ALTER TABLE public.organizations ADD COLUMN hq_site uuid REFERENCES public.sites(id)",
    );
    let work = Workdir::new();
    let run = work.run(
        &["export", "--dry-run"],
        &[("SUPABASE_DB_URL", &s.cluster.url("postgres"))],
    );
    // organizations <-> sites is now a cycle: reported (exit 1), not looped on.
    run.expect_code(1);
    assert!(run.stdout.contains("level  table"), "{}", run.stdout);
    assert!(run.stdout.contains("auth.users:"), "{}", run.stdout);
    assert!(
        run.stdout.contains("cycle between organizations, sites"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains(Cluster::PASSWORD));
    let log = work.log();
    assert!(log.contains("dry-run summary"), "{log}");
    assert!(log.contains("cycle between organizations, sites"), "{log}");
}

#[test]
fn table_filters_and_unknown_names() {
    let s = seeded_source();
    let report = dry_run_json(&s.cluster, &["--skip-large", "--skip-auth"], 0);
    let names: Vec<&str> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 20);
    for large in ["sensor_readings", "alerts", "event_logs"] {
        assert!(!names.contains(&large));
    }
    assert!(report["auth_users"].is_null());

    let report = dry_run_json(&s.cluster, &["--table", "areas,sites"], 0);
    let names: Vec<&str> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sites", "areas"]);

    let work = Workdir::new();
    let run = work.run(
        &["export", "--dry-run", "--table", "sensor_reading"],
        &[("SUPABASE_DB_URL", &s.cluster.url("postgres"))],
    );
    run.expect_code(2);
    assert!(
        run.stderr
            .contains("\"sensor_reading\" is not one of fmig's tables"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("sensor_readings"), "{}", run.stderr);
}

/// The catalog discovery also reads the self-hosted target: a partitioned table is one table,
/// and its levels follow its own foreign keys.
#[tokio::test]
async fn discovery_on_the_target_sees_a_partitioned_table_once() {
    let cluster = Cluster::start();
    seed::load_target_schema(&cluster, "postgres");
    let url =
        fmig::connect::DbUrl::parse(fmig::connect::Side::Target, &cluster.url("postgres")).unwrap();
    let client = fmig::connect::connect(
        &url,
        &fmig::connect::ConnectOptions {
            connect_timeout: std::time::Duration::from_secs(5),
            allow_pooler: false,
        },
    )
    .await
    .unwrap();
    let found = fmig::catalog::discover(&client, "public").await.unwrap();
    assert_eq!(found.tables.len(), 23, "{:?}", found.tables.keys());
    assert!(found.tables["sensor_readings"].partitioned);
    assert!(!found.auth_users_present);
    for spec in fmig::manifest::builtin() {
        assert_eq!(found.levels[spec.name], spec.level, "{}", spec.name);
    }
    assert!(found.cycles.is_empty());
}

#[test]
fn a_listed_user_id_column_the_source_lacks_is_a_warning_the_mapping_acknowledges() {
    let s = seeded_source();
    // The built-in list names notification_deliveries.profile_id; this source calls it
    // otherwise (the column keeps its foreign key, so it is still found as a user-id column).
    s.cluster.psql(
        "postgres",
        "ALTER TABLE public.notification_deliveries RENAME COLUMN profile_id TO recipient_id; \
         ALTER TABLE public.sites ADD COLUMN deleted_by uuid; \
         UPDATE public.sites SET deleted_by = (SELECT id FROM auth.users ORDER BY id LIMIT 1) \
         WHERE id IN (SELECT id FROM public.sites ORDER BY id LIMIT 2)",
    );
    let by_value = |report: &Value| -> Value {
        report["user_ids_by_value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["table"] == "sites" && v["column"] == "deleted_by")
            .cloned()
            .unwrap_or_else(|| panic!("sites.deleted_by not found by value: {report:#}"))
    };
    let work = Workdir::new();
    let env = [("SUPABASE_DB_URL", s.cluster.url("postgres"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let run = work.run(&["export", "--dry-run", "--json"], &env);
    // Nothing breaks: a warning, exit 0.
    run.expect_code(0);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    let missing = findings_of_kind(&report, "user_id_column_missing");
    assert_eq!(missing.len(), 1, "{report:#}");
    assert_eq!(missing[0]["severity"], "warning");
    assert_eq!(missing[0]["column"], "profile_id");
    // An audit column holding user ids without a foreign key is found by its values.
    let found = by_value(&report);
    assert_eq!(found["matching"], 2);
    assert_eq!(found["non_null"], 2);
    assert_eq!(found["treatment"], "not mapped");
    let text = work.run(&["export", "--dry-run"], &env);
    assert!(
        text.stdout
            .contains("sites.deleted_by: 2/2 values are users; not mapped"),
        "{}",
        text.stdout
    );

    // The mapping acknowledges it: the dry run reads ./fmig.toml and says nothing more.
    std::fs::write(
        work.path().join("fmig.toml"),
        "[tables.notification_deliveries]\nuser_id_columns = { remove = [\"profile_id\"] }\n\
         [tables.sites]\ndrop = [\"deleted_by\"]\n",
    )
    .unwrap();
    let run = work.run(&["export", "--dry-run", "--json"], &env);
    run.expect_code(0);
    let report: Value = serde_json::from_str(&run.stdout).unwrap();
    assert!(
        findings_of_kind(&report, "user_id_column_missing").is_empty(),
        "{report:#}"
    );
    assert_eq!(by_value(&report)["treatment"], "dropped");
}
