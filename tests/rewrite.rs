//! The real rewrite, end to end: the fixture pair with `tests/fixtures/rewrite` laid over it
//! (rows the target cannot hold, a value moved between tables, user references that became
//! profile references, NOT NULL user-id columns of users who are not migrated, enums through
//! the staging table, a generated secret, a dropped audit column), migrated with the mapping
//! there: export -> migrate-users (Stack Auth emulator) -> plan -> import -> verify.
//!
//! What the target must hold is computed here by queries on the **source** and the user
//! mapping, never by fmig, and compared with the target.

#[path = "support/stack_auth_emulator.rs"]
mod emulator;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use emulator::Emulator;
use serde_json::Value;
use support::cli::{Run, Workdir};
use support::cluster::Cluster;
use support::seed::{self, SeedConfig};

const SOURCE: &str = "source";
const TARGET: &str = "target";
const PROVIDERS: &str = "google,github,microsoft,linkedin,x";

fn rewrite_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/rewrite")
        .join(name)
}

struct Rewrite {
    cluster: Cluster,
    work: Workdir,
    _emulator: Emulator,
    /// Supabase user id -> Stack Auth user id, from user-mapping.json.
    mapped: BTreeMap<String, String>,
}

impl Rewrite {
    /// Source and target with the rewrite's drift, exported, users migrated, the mapping in
    /// place; nothing imported yet.
    fn prepare() -> Rewrite {
        let cluster = Cluster::start();
        cluster.create_database(SOURCE);
        cluster.create_database(TARGET);
        seed::load_source_schema(&cluster, SOURCE);
        seed::seed_source(&cluster, SOURCE, &SeedConfig::default());
        cluster.psql_file(SOURCE, &rewrite_fixture("source.sql"));
        seed::load_target_schema(&cluster, TARGET);
        cluster.psql_file(TARGET, &rewrite_fixture("target.sql"));

        let work = Workdir::new();
        std::fs::copy(rewrite_fixture("fmig.toml"), work.path().join("fmig.toml")).unwrap();
        work.run(
            &["export", "--output-dir", "out"],
            &[("SUPABASE_DB_URL", &cluster.url(SOURCE))],
        )
        .expect_code(0);
        let emulator = Emulator::start();
        let env = emulator.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let run = work.run(
            &[
                "migrate-users",
                "--export-dir",
                "out",
                "--oauth-providers",
                PROVIDERS,
            ],
            &env,
        );
        assert!(
            run.code == 0 || run.code == 1,
            "migrate-users: {}\n{}",
            run.stdout,
            run.stderr
        );
        let text = std::fs::read_to_string(work.path().join("out/user-mapping.json")).unwrap();
        let json: Value = serde_json::from_str(&text).unwrap();
        let mapped = json["mappings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["supabaseUserId"].as_str().unwrap().to_lowercase(),
                    m["stackAuthUserId"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        Rewrite {
            cluster,
            work,
            _emulator: emulator,
            mapped,
        }
    }

    fn env(&self) -> [(&'static str, String); 2] {
        [
            ("SUPABASE_DB_URL", self.cluster.url(SOURCE)),
            ("DATABASE_URL", self.cluster.url(TARGET)),
        ]
    }

    fn run(&self, args: &[&str]) -> Run {
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        self.work.run(args, &env)
    }

    fn import(&self) -> Run {
        self.run(&["import", "--input-dir", "out", "--unmapped", "null"])
    }

    fn verify(&self, extra: &[&str]) -> (Run, Value) {
        let mut args = vec!["verify", "--export-dir", "out"];
        args.extend_from_slice(extra);
        let run = self.run(&args);
        let text = std::fs::read_to_string(self.work.path().join("out/verification-report.json"))
            .unwrap_or_else(|_| panic!("no report\n{}\n{}", run.stdout, run.stderr));
        (run, serde_json::from_str(&text).unwrap())
    }

    fn source(&self, sql: &str) -> String {
        self.cluster.psql(SOURCE, sql).trim().to_string()
    }

    fn target(&self, sql: &str) -> String {
        self.cluster.psql(TARGET, sql).trim().to_string()
    }

    /// `'{id,id,...}'::uuid[]` of the migrated Supabase users, for source queries.
    fn mapped_array(&self) -> String {
        let ids: Vec<&str> = self.mapped.keys().map(String::as_str).collect();
        format!("'{{{}}}'::uuid[]", ids.join(","))
    }

    fn lines(&self, db: &str, sql: &str) -> BTreeSet<String> {
        self.cluster
            .psql(db, sql)
            .lines()
            .map(str::to_string)
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// The ids listed in `out/left-behind/<table>.csv`.
    fn left_behind(&self, table: &str) -> BTreeSet<String> {
        let path = self
            .work
            .path()
            .join("out/left-behind")
            .join(format!("{table}.csv"));
        let Ok(text) = std::fs::read_to_string(&path) else {
            return BTreeSet::new();
        };
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("row,id,reason"), "{}", path.display());
        lines
            .map(|l| l.split(',').nth(1).unwrap().to_string())
            .collect()
    }

    /// Applies `inject` to the target, expects verify of `table` to fail with every string of
    /// `expect` in that table's report entry, then applies `undo`.
    fn expect_caught(&self, what: &str, table: &str, inject: &str, undo: &str, expect: &[&str]) {
        self.target(inject);
        // An also entry's unit (`<table>+<target>`) is verified with its table.
        let selected = table.split('+').next().unwrap();
        let (run, report) = self.verify(&["--table", selected]);
        self.target(undo);
        assert_eq!(run.code, 1, "{what}: {}\n{}", run.stdout, run.stderr);
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
    }
}

/// A profile reference as the source says it must be: the source's profiles row of the user
/// in `user_column`, if that user is migrated (a profile of a user who is not stays behind).
fn expected_profile_refs(r: &Rewrite, table: &str, user_column: &str) -> BTreeSet<String> {
    r.lines(
        SOURCE,
        &format!(
            "SELECT t.id || '|' || coalesce(p.id::text, '') FROM public.{table} t \
             LEFT JOIN public.profiles p ON p.user_id = t.{user_column} \
             AND p.user_id = ANY({}) {}",
            r.mapped_array(),
            match table {
                "corrective_actions" => "WHERE t.alert_id IS NOT NULL",
                _ => "",
            }
        ),
    )
}

fn target_refs(r: &Rewrite, table: &str, column: &str) -> BTreeSet<String> {
    r.lines(
        TARGET,
        &format!("SELECT id || '|' || coalesce({column}::text, '') FROM public.{table}"),
    )
}

#[test]
fn the_rewrite_migrates_with_rows_left_behind_on_purpose_and_verify_derives_from_the_source() {
    let r = Rewrite::prepare();
    let unmapped_profiles = r.source(&format!(
        "SELECT count(*) FROM public.profiles WHERE NOT user_id = ANY({})",
        r.mapped_array()
    ));
    assert_ne!(
        unmapped_profiles, "0",
        "the fixture must have profiles of unmigrated users"
    );

    // plan: exits 0 with the mapping; the new keys are reported, nothing blocks.
    // The dry run agrees once the mapping is complete: the discovered tables and the computed
    // order are warnings, the skipped table is settled.
    let dry = r.run(&["export", "--dry-run", "--json"]);
    assert_eq!(
        dry.code, 0,
        "export --dry-run: {}\n{}",
        dry.stdout, dry.stderr
    );
    let report: Value = serde_json::from_str(&dry.stdout).unwrap();
    // The listed column the source lacks is acknowledged by the mapping's remove.
    assert!(
        !report["findings"]
            .to_string()
            .contains("user_id_column_missing"),
        "{report:#}"
    );
    let tables = report["tables"].to_string();
    assert!(
        tables.contains("\"gateways\"") && !tables.contains("\"legacy_audit\""),
        "{report:#}"
    );

    // By default the report fits on one screen: what needs reading, the rest counted.
    let short = r.run(&["plan"]);
    assert_eq!(short.code, 0, "plan: {}\n{}", short.stdout, short.stderr);
    assert!(short.stdout.lines().count() <= 50, "{}", short.stdout);
    assert!(
        short.stdout.contains("Differences that need nothing: ")
            && short.stdout.contains("fmig plan --all lists them"),
        "{}",
        short.stdout
    );
    let plan = r.run(&["plan", "--all"]);
    assert_eq!(plan.code, 0, "plan: {}\n{}", plan.stdout, plan.stderr);
    assert!(plan.stdout.lines().count() > short.stdout.lines().count());
    assert!(
        plan.stdout
            .lines()
            .any(|l| l.starts_with("gateways ") && l.contains("not in fmig's built-in list")),
        "{}",
        plan.stdout
    );
    // The template guesses the pair's renames, each with its evidence.
    let template = r.run(&["plan", "--write-template", "template.toml"]);
    assert_eq!(template.code, 1, "{}\n{}", template.stdout, template.stderr);
    let text = std::fs::read_to_string(r.work.path().join("template.toml")).unwrap();
    for (table, rename) in [
        ("devices", "battery_level = \"battery\""),
        ("alert_rules_history", "alert_rules_id = \"alert_rule_id\""),
        ("manual_temperature_logs", "logged_at = \"recorded_at\""),
    ] {
        let section = text
            .split("\n[tables.")
            .find(|s| s.starts_with(&format!("{table}]")))
            .unwrap_or_else(|| panic!("no [tables.{table}] in\n{text}"));
        assert!(
            section.contains(&format!("rename = {{ {rename} }}")),
            "{table}: {section}"
        );
        // Comments wrap; the evidence follows the guess.
        let unwrapped = section.replace("\n#   ", " ");
        assert!(
            unwrapped.contains("which may be it renamed ("),
            "{table}: {section}"
        );
    }

    // A source-only table with rows blocks until the mapping decides; an empty one does not.
    let mapping = std::fs::read_to_string(r.work.path().join("fmig.toml")).unwrap();
    std::fs::write(
        r.work.path().join("undecided.toml"),
        mapping
            .replace("[tables.legacy_audit]\n", "")
            .replacen("skip = true\n", "", 1),
    )
    .unwrap();
    let undecided = r.run(&["plan", "--mapping-config", "undecided.toml"]);
    assert_eq!(
        undecided.code, 1,
        "{}\n{}",
        undecided.stdout, undecided.stderr
    );
    let line = undecided
        .stdout
        .lines()
        .find(|l| l.contains("legacy_audit"))
        .unwrap_or_else(|| panic!("{}", undecided.stdout));
    assert!(
        line.starts_with("BLOCKING") && line.contains("2 rows would not be migrated"),
        "{line}"
    );
    assert!(
        !undecided
            .stdout
            .lines()
            .any(|l| l.starts_with("BLOCKING") && l.contains("scratch")),
        "{}",
        undecided.stdout
    );
    let refused = r.run(&[
        "import",
        "--input-dir",
        "out",
        "--unmapped",
        "null",
        "--mapping-config",
        "undecided.toml",
    ]);
    assert_eq!(refused.code, 2, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused
            .stderr
            .contains("legacy_audit: 2 rows, and the target has no table legacy_audit")
            && refused.stderr.contains("nothing was written"),
        "{}",
        refused.stderr
    );
    let readings_left =
        r.source("SELECT count(*) FROM public.sensor_readings WHERE temperature IS NULL");
    let line = plan
        .stdout
        .lines()
        .find(|l| l.contains("sensor_readings") && l.contains("where ="))
        .unwrap_or_else(|| panic!("{}", plan.stdout));
    assert!(
        line.contains(&format!("{readings_left} rows stay behind")),
        "{line}"
    );
    // The split is planned as its own unit, with devices' level: the sensors that make no
    // device row counted, and the keys it writes checked against those of devices.
    let not_split =
        r.source("SELECT count(*) FROM public.lora_sensors WHERE device_id IS NOT NULL");
    let unit_lines: Vec<&str> = plan
        .stdout
        .lines()
        .filter(|l| l.contains("lora_sensors+devices"))
        .collect();
    assert!(
        unit_lines
            .iter()
            .any(|l| l.contains(&format!("{not_split} rows make no devices row"))),
        "{}",
        plan.stdout
    );
    assert!(
        unit_lines
            .iter()
            .any(|l| l.contains("0 rows write a key that a row of devices writes too")),
        "{}",
        plan.stdout
    );
    // A foreign key the target adds is settled by a lookup into the referenced rows that move.
    assert!(
        !plan
            .stdout
            .lines()
            .any(|l| l.contains("corrective_action_id") && l.contains("would fail")),
        "{}",
        plan.stdout
    );
    assert!(
        plan.stdout
            .lines()
            .any(|l| l.contains("corrective_action_id")
                && l.contains("the lookup takes its values from the rows of corrective_actions")),
        "{}",
        plan.stdout
    );

    // import --dry-run makes the same decisions with the user mapping, and writes nothing.
    let dry = r.run(&[
        "import",
        "--input-dir",
        "out",
        "--unmapped",
        "null",
        "--dry-run",
    ]);
    assert_eq!(dry.code, 0, "{}\n{}", dry.stdout, dry.stderr);
    let line = dry
        .stdout
        .lines()
        .find(|l| l.starts_with("sensor_readings "))
        .unwrap_or_else(|| panic!("{}", dry.stdout));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields[3], readings_left, "{line}");
    assert!(!r.work.path().join("out/left-behind").exists());
    assert_eq!(r.target("SELECT count(*) FROM public.organizations"), "0");

    let run = r.import();
    assert_eq!(run.code, 0, "import: {}\n{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("left behind"), "{}", run.stdout);

    // Every row left behind is listed with its key, for the reason the mapping gives, and
    // computed here from the source.
    let expected_left: [(&str, String); 5] = [
        (
            "sensor_readings",
            "SELECT id FROM public.sensor_readings WHERE temperature IS NULL".into(),
        ),
        (
            "corrective_actions",
            "SELECT id FROM public.corrective_actions WHERE alert_id IS NULL".into(),
        ),
        (
            "subscriptions",
            "SELECT id FROM public.subscriptions WHERE status = 'canceled'".into(),
        ),
        (
            "profiles",
            format!(
                "SELECT id FROM public.profiles WHERE NOT user_id = ANY({})",
                r.mapped_array()
            ),
        ),
        (
            "user_roles",
            format!(
                "SELECT id FROM public.user_roles WHERE NOT user_id = ANY({})",
                r.mapped_array()
            ),
        ),
    ];
    for (table, sql) in &expected_left {
        let expected = r.lines(SOURCE, sql);
        assert!(
            !expected.is_empty(),
            "{table}: the fixture leaves nothing behind"
        );
        assert_eq!(r.left_behind(table), expected, "{table}: left-behind list");
        // No other row is missing: the target holds exactly the others.
        let all = r.lines(SOURCE, &format!("SELECT id FROM public.{table}"));
        let kept: BTreeSet<String> = all.difference(&expected).cloned().collect();
        assert_eq!(
            r.lines(TARGET, &format!("SELECT id FROM public.{table}")),
            kept,
            "{table}: imported rows"
        );
        let path = r.work.path().join(format!("out/left-behind/{table}.csv"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // A table outside fmig's built-in list, in both schemas: migrated, its installer rewritten
    // (NULL for a user who is not migrated); the source-only ones are not carried over.
    let gateways = r.lines(
        SOURCE,
        "SELECT id || '|' || serial || '|' || coalesce(installed_by::text, '') FROM public.gateways",
    );
    assert!(!gateways.is_empty());
    let expected: BTreeSet<String> = gateways
        .iter()
        .map(|l| {
            let (rest, user) = l.rsplit_once('|').unwrap();
            let new = r.mapped.get(user).cloned().unwrap_or_default();
            format!("{rest}|{new}")
        })
        .collect();
    assert_eq!(
        r.lines(
            TARGET,
            "SELECT id || '|' || serial || '|' || coalesce(installed_by::text, '') FROM public.gateways"
        ),
        expected
    );
    assert!(
        expected.iter().any(|l| !l.ends_with('|')),
        "no installer migrated"
    );

    // One table into two: each sensor without a device is a devices row too, made from the
    // sensor as the mapping says; every sensor points at its device; the devices of the source
    // are all there, and nothing else.
    let split_sensors = "SELECT id FROM public.lora_sensors WHERE device_id IS NULL";
    assert!(
        !r.lines(SOURCE, split_sensors).is_empty(),
        "no split rows in the fixture"
    );
    assert_eq!(
        r.left_behind("lora_sensors+devices"),
        r.lines(
            SOURCE,
            "SELECT id FROM public.lora_sensors WHERE device_id IS NOT NULL"
        ),
        "sensors that make no device row"
    );
    assert_eq!(
        r.lines(TARGET, "SELECT id FROM public.devices"),
        r.lines(
            SOURCE,
            &format!("SELECT id FROM public.devices UNION {split_sensors}")
        )
    );
    let made = "SELECT id || '|' || dev_eui || '|' || device_type || '|' || model || '|' ||                 (metadata ->> 'unit_id') || '|' || (hub_id IS NULL) FROM public.devices";
    assert_eq!(
        r.lines(TARGET, &format!("{made} WHERE device_type = 'lora'")),
        r.lines(
            SOURCE,
            "SELECT id || '|' || rpad(dev_eui, 16) || '|lora|LoRa ' || frequency_plan || '|' ||              unit_id || '|true' FROM public.lora_sensors WHERE device_id IS NULL"
        )
    );
    assert_eq!(
        target_refs(&r, "lora_sensors", "device_id"),
        r.lines(
            SOURCE,
            "SELECT id || '|' || coalesce(device_id, id) FROM public.lora_sensors"
        )
    );

    // Profile references equal what the source says.
    for (table, user_column, column) in [
        ("manual_temperature_logs", "profile_id", "profile_id"),
        ("alerts", "acknowledged_by", "acknowledged_by_profile_id"),
        ("corrective_actions", "profile_id", "profile_id"),
        ("event_logs", "actor_id", "actor_profile_id"),
    ] {
        let expected = expected_profile_refs(&r, table, user_column);
        assert!(
            expected.iter().any(|l| !l.ends_with('|')),
            "{table}: no profile reference in the fixture"
        );
        assert!(
            expected.iter().any(|l| l.ends_with('|')),
            "{table}: no lost profile reference in the fixture"
        );
        assert_eq!(target_refs(&r, table, column), expected, "{table}.{column}");
    }
    // A reference to a row left behind is NULL; the others are kept.
    assert_eq!(
        target_refs(&r, "event_logs", "corrective_action_id"),
        r.lines(
            SOURCE,
            "SELECT e.id || '|' || coalesce(c.id::text, '') FROM public.event_logs e \
             LEFT JOIN public.corrective_actions c ON c.id = e.corrective_action_id \
             AND c.alert_id IS NOT NULL"
        )
    );
    // The moved value, from the migrated subscription of each organization.
    assert_eq!(
        r.lines(
            TARGET,
            "SELECT id || '|' || coalesce(sensor_limit::text, '') FROM public.organizations"
        ),
        r.lines(
            SOURCE,
            "SELECT o.id || '|' || coalesce(s.sensor_limit::text, '') FROM public.organizations o \
             LEFT JOIN public.subscriptions s ON s.organization_id = o.id AND s.status <> 'canceled'"
        )
    );
    // NOT NULL user ids of kept rows are all Stack Auth ids.
    let stack_ids: BTreeSet<String> = r.mapped.values().cloned().collect();
    for id in r.lines(TARGET, "SELECT profile_id FROM public.user_roles") {
        assert!(stack_ids.contains(&id), "user_roles.profile_id {id}");
    }

    // verify passes, from the source and from the export, and names what it did not compare.
    for against in [&[][..], &["--against", "export"][..]] {
        let (run, report) = r.verify(against);
        assert_eq!(
            run.code, 0,
            "verify {against:?}: {}\n{}",
            run.stdout, run.stderr
        );
        assert_eq!(report["ok"], true);
        let ttn = report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == "ttn_connections")
            .unwrap();
        assert!(
            ttn["not_compared"].to_string().contains("webhook_secret"),
            "{ttn:#}"
        );
        assert!(run.stdout.contains("webhook_secret"), "{}", run.stdout);
        let gateways = report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == "gateways")
            .unwrap_or_else(|| panic!("the discovered table is not verified"));
        assert_eq!(gateways["status"], "ok", "{gateways:#}");
        assert!(
            !report.to_string().contains("legacy_audit") && !report.to_string().contains("scratch"),
            "{report:#}"
        );
        // The split is verified per unit: each compares the devices rows it writes.
        let split = report["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["table"] == "lora_sensors+devices")
            .unwrap_or_else(|| panic!("no split unit in the report"));
        assert_eq!(split["target_table"], "devices", "{split:#}");
        assert_eq!(
            split["source_rows"],
            r.lines(SOURCE, split_sensors).len() as u64,
            "{split:#}"
        );
        // The rows left behind are counted from the source, per table.
        for (table, sql) in &expected_left {
            let expected = r.lines(SOURCE, sql).len() as u64;
            let entry = report["tables"]
                .as_array()
                .unwrap()
                .iter()
                .find(|t| t["table"] == *table)
                .unwrap();
            assert_eq!(entry["left_behind"], expected, "{against:?} {entry:#}");
            assert!(
                run.stdout.contains(&format!("{table}: {expected} row(s)")),
                "{}",
                run.stdout
            );
        }
    }

    // Each defect is caught, naming table, key and column.
    let alert = r.target(
        "SELECT id FROM public.alerts WHERE acknowledged_by_profile_id IS NOT NULL ORDER BY id LIMIT 1",
    );
    let profile = r.target(&format!(
        "SELECT acknowledged_by_profile_id FROM public.alerts WHERE id = '{alert}'"
    ));
    r.expect_caught(
        "a lookup result replaced by NULL",
        "alerts",
        &format!("UPDATE public.alerts SET acknowledged_by_profile_id = NULL WHERE id = '{alert}'"),
        &format!(
            "UPDATE public.alerts SET acknowledged_by_profile_id = '{profile}' WHERE id = '{alert}'"
        ),
        &[&alert, "acknowledged_by_profile_id"],
    );

    let canceled = r.source("SELECT id FROM public.subscriptions WHERE status = 'canceled'");
    r.expect_caught(
        "a row the filter leaves behind present in the target",
        "subscriptions",
        &format!(
            "INSERT INTO public.subscriptions (id, organization_id, plan, status, seats) \
             SELECT '{canceled}', organization_id, plan, status, 1 FROM public.subscriptions LIMIT 1"
        ),
        &format!("DELETE FROM public.subscriptions WHERE id = '{canceled}'"),
        &[&canceled],
    );

    let kept_action = r.target("SELECT id FROM public.corrective_actions ORDER BY id LIMIT 1");
    r.expect_caught(
        "an imported row missing",
        "corrective_actions",
        &format!(
            "CREATE TABLE public.saved AS SELECT * FROM public.corrective_actions WHERE id = '{kept_action}'; \
             SET session_replication_role = replica; \
             DELETE FROM public.corrective_actions WHERE id = '{kept_action}'"
        ),
        "SET session_replication_role = replica; \
         INSERT INTO public.corrective_actions SELECT * FROM public.saved; DROP TABLE public.saved",
        &[&kept_action],
    );

    let split_row = r.source(&format!("{split_sensors} ORDER BY id LIMIT 1"));
    r.expect_caught(
        "a split row missing from its second table",
        "lora_sensors+devices",
        &format!(
            "CREATE TABLE public.saved AS SELECT * FROM public.devices WHERE id = '{split_row}'; \
             SET session_replication_role = replica; \
             DELETE FROM public.devices WHERE id = '{split_row}'"
        ),
        "SET session_replication_role = replica; \
         INSERT INTO public.devices SELECT * FROM public.saved; DROP TABLE public.saved",
        &[&split_row, "missing"],
    );
    // A devices row no unit writes is an extra row of the table's own unit.
    let extra = "00000000-0000-4000-8000-0000000000ee";
    r.expect_caught(
        "a devices row that no source row makes",
        "devices",
        &format!(
            "INSERT INTO public.devices (id, dev_eui, device_type) \
             VALUES ('{extra}', 'FFFFFFFFFFFFFFFF', 'lora')"
        ),
        &format!("DELETE FROM public.devices WHERE id = '{extra}'"),
        &[extra],
    );

    // The failure the real pair showed: the target's profiles empty, every reference to them
    // NULL. The expected side comes from the source, so verify cannot call this ok.
    r.target(
        "CREATE TABLE public.saved_profiles AS SELECT * FROM public.profiles; \
         CREATE TABLE public.saved_events AS SELECT id, actor_profile_id FROM public.event_logs; \
         SET session_replication_role = replica; \
         DELETE FROM public.profiles; UPDATE public.event_logs SET actor_profile_id = NULL",
    );
    let (run, report) = r.verify(&["--table", "event_logs", "--table", "profiles"]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    for t in report["tables"].as_array().unwrap() {
        assert_ne!(t["status"], "ok", "{t:#}");
    }
    let events = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "event_logs")
        .unwrap();
    assert!(
        events.to_string().contains("actor_profile_id"),
        "{events:#}"
    );
    r.target(
        "SET session_replication_role = replica; \
         INSERT INTO public.profiles SELECT * FROM public.saved_profiles; \
         UPDATE public.event_logs e SET actor_profile_id = s.actor_profile_id \
         FROM public.saved_events s WHERE s.id = e.id; \
         DROP TABLE public.saved_profiles, public.saved_events",
    );
    let (run, _) = r.verify(&[]);
    assert_eq!(run.code, 0, "after undoing: {}\n{}", run.stdout, run.stderr);
}

#[test]
fn rejected_statements_and_lost_references_fail_plan_and_refuse_the_import_before_any_write() {
    let r = Rewrite::prepare();
    // Without `missing = "null"`, an actor who has no profile (a user deleted long ago, an
    // anonymous one) or whose profile stays behind (not migrated) is a lost reference.
    let mapping = std::fs::read_to_string(r.work.path().join("fmig.toml")).unwrap();

    // Under --unmapped fail (the default), unmapped ids are refused in the columns that reach
    // the target as they are, not in those only a lookup reads (its lost references decide).
    let run = r.run(&["import", "--input-dir", "out", "--dry-run"]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("notification_deliveries.recipient_id"),
        "{}",
        run.stderr
    );
    for lookup_key in ["alerts.acknowledged_by", "event_logs.actor_id"] {
        assert!(
            !run.stderr.contains(lookup_key),
            "{lookup_key}: {}",
            run.stderr
        );
    }

    // First a row filter the target cannot evaluate: plan prepares every statement import
    // would run, so it blocks (exit 1, in its table), and import refuses it before any write.
    let broken = mapping.replace(
        "where = \"temperature IS NOT NULL\"",
        "where = \"temprature IS NOT NULL\"",
    );
    assert_ne!(broken, mapping);
    std::fs::write(r.work.path().join("fmig.toml"), &broken).unwrap();
    let plan = r.run(&["plan"]);
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    let line = plan
        .stdout
        .lines()
        .find(|l| l.contains("BLOCKING") && l.contains("sensor_readings"))
        .unwrap_or_else(|| panic!("{}", plan.stdout));
    assert!(
        line.contains("the target rejects the where condition") && line.contains("temprature"),
        "{line}"
    );
    let run = r.import();
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("temprature"), "{}", run.stderr);
    assert!(run.stderr.contains("Nothing was written"), "{}", run.stderr);
    assert_eq!(r.target("SELECT count(*) FROM public.organizations"), "0");

    // References to rows a where leaves behind, copied as they are: the target's foreign key
    // would reject them mid-import, so plan blocks with the count (found here on the source).
    let unguarded: String = mapping
        .lines()
        .filter(|l| !l.starts_with("corrective_action_id = "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(unguarded, mapping);
    std::fs::write(r.work.path().join("fmig.toml"), &unguarded).unwrap();
    let referencing = r.source(
        "SELECT count(*) FROM public.event_logs e JOIN public.corrective_actions c \
         ON c.id = e.corrective_action_id WHERE c.alert_id IS NULL",
    );
    assert_ne!(referencing, "0");
    let plan = r.run(&["plan"]);
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    let line = plan
        .stdout
        .lines()
        .find(|l| l.contains("BLOCKING") && l.contains("stays behind"))
        .unwrap_or_else(|| panic!("{}", plan.stdout));
    assert!(
        line.contains("event_logs")
            && line.contains("corrective_action_id")
            && line.contains(&format!(
                "{referencing} rows reference a row of corrective_actions that stays behind"
            )),
        "{line}"
    );
    let run = r.import();
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "event_logs.corrective_action_id references corrective_actions(id) by foreign key \
             event_logs_corrective_action_id_fkey: {referencing} row(s) point at a row that stays behind"
        )),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("nothing was written"), "{}", run.stderr);
    assert_eq!(r.target("SELECT count(*) FROM public.organizations"), "0");

    // A lookup whose key finds several rows that move (organization 0's canceled subscription
    // moves too without the where): plan and import both refuse to guess.
    let ambiguous = mapping.replace("where = \"status <> 'canceled'\"\n", "");
    assert_ne!(ambiguous, mapping);
    std::fs::write(r.work.path().join("fmig.toml"), &ambiguous).unwrap();
    let duplicated = r.source(
        "SELECT count(*) FROM public.organizations o \
         WHERE (SELECT count(*) FROM public.subscriptions s WHERE s.organization_id = o.id) > 1",
    );
    assert_ne!(duplicated, "0");
    let plan = r.run(&["plan"]);
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    let line = plan
        .stdout
        .lines()
        .find(|l| l.contains("BLOCKING") && l.contains("sensor_limit"))
        .unwrap_or_else(|| panic!("{}", plan.stdout));
    assert!(
        line.contains(&format!(
            "{duplicated} keys find several rows of subscriptions"
        )),
        "{line}"
    );
    let run = r.import();
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "organizations.sensor_limit = lookup in subscriptions by (organization_id = id): \
             {duplicated} row(s) find several rows of subscriptions"
        )),
        "{}",
        run.stderr
    );
    assert_eq!(r.target("SELECT count(*) FROM public.organizations"), "0");

    let strict = mapping.replace(
        "actor_profile_id = { lookup = \"profiles\", match = { user_id = \"actor_id\" }, take = \"id\", missing = \"null\" }",
        "actor_profile_id = { lookup = \"profiles\", match = { user_id = \"actor_id\" }, take = \"id\" }",
    );
    assert_ne!(strict, mapping);
    std::fs::write(r.work.path().join("fmig.toml"), strict).unwrap();
    let lost_count = |condition: &str| {
        r.source(&format!(
            "SELECT count(*) FROM public.event_logs e WHERE e.actor_id IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM public.profiles p WHERE p.user_id = e.actor_id {condition})"
        ))
    };

    // plan knows the source, not yet who is migrated: it counts keys without any profile.
    let lost_in_source = lost_count("");
    assert_ne!(lost_in_source, "0");
    let plan = r.run(&["plan"]);
    assert_eq!(plan.code, 1, "{}\n{}", plan.stdout, plan.stderr);
    let line = plan
        .stdout
        .lines()
        .find(|l| l.contains("BLOCKING") && l.contains("actor_profile_id"))
        .unwrap_or_else(|| panic!("{}", plan.stdout));
    assert!(
        line.contains(&format!("{lost_in_source} keys find no migrated row")),
        "{line}"
    );

    // import knows the user mapping too: a profile left behind (skip_row) is lost as well.
    let lost = lost_count(&format!("AND p.user_id = ANY({})", r.mapped_array()));
    assert_ne!(lost, lost_in_source);
    // Refused like unmapped user ids under --unmapped fail: a decision is missing (exit 2).
    let run = r.import();
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("nothing was written"), "{}", run.stderr);
    assert!(
        run.stderr.contains("event_logs.actor_profile_id"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("{lost} row(s) find no migrated row")),
        "count {lost} not in {}",
        run.stderr
    );
    assert!(run.stderr.contains("missing = \"null\""), "{}", run.stderr);
    for table in ["organizations", "profiles", "event_logs"] {
        assert_eq!(
            r.target(&format!("SELECT count(*) FROM public.{table}")),
            "0",
            "{table} was written"
        );
    }
    assert!(!r.work.path().join("out/left-behind").exists());
}
