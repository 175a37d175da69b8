//! `fmig plan` on the fixture pair: a seeded Supabase-shaped source and the rewritten target,
//! whose differences cover every kind the migration spec lists. Expected counts are recomputed
//! here with SQL on the seeded source, never copied from fmig's output.

mod support;

use std::collections::BTreeSet;

use serde_json::Value;
use support::cli::{Run, Workdir};
use support::cluster::Cluster;
use support::seed::{self, SeedConfig};

/// One cluster with two databases: `source` (schema + seed) and `target` (schema only).
struct Pair {
    cluster: Cluster,
}

impl Pair {
    fn new() -> Pair {
        let cluster = Cluster::start();
        cluster.create_database("source");
        cluster.create_database("target");
        seed::load_source_schema(&cluster, "source");
        seed::seed_source(&cluster, "source", &SeedConfig::default());
        seed::load_target_schema(&cluster, "target");
        Pair { cluster }
    }

    fn env(&self) -> [(&'static str, String); 2] {
        [
            ("SUPABASE_DB_URL", self.cluster.url("source")),
            ("DATABASE_URL", self.cluster.url("target")),
        ]
    }

    fn plan(&self, work: &Workdir, args: &[&str]) -> Run {
        let mut all = vec!["plan"];
        all.extend_from_slice(args);
        let env = self.env();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        work.run(&all, &env)
    }

    fn plan_json(&self, work: &Workdir, args: &[&str], code: i32) -> Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let run = self.plan(work, &all);
        run.expect_code(code);
        serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}\n{}", run.stdout, run.stderr))
    }

    /// One number from the source.
    fn count(&self, sql: &str) -> i64 {
        let out = self.cluster.psql("source", sql);
        out.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{sql}: {out:?}: {e}"))
    }
}

/// The finding of `kind` on `table` whose columns start with `column`.
fn finding<'a>(report: &'a Value, table: &str, kind: &str, column: &str) -> &'a Value {
    let t = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == table)
        .unwrap_or_else(|| panic!("no table {table}"));
    t["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| {
            f["kind"] == kind
                && (f["columns"][0] == column
                    || (column.is_empty() && f["columns"].as_array().unwrap().is_empty()))
        })
        .unwrap_or_else(|| panic!("no {kind} finding for {table}.{column}:\n{t:#}"))
}

fn assert_finding(report: &Value, table: &str, kind: &str, column: &str, class: &str) -> Value {
    let f = finding(report, table, kind, column);
    assert_eq!(f["class"], class, "{table}.{column} {kind}: {f:#}");
    f.clone()
}

#[test]
fn without_a_mapping_every_difference_is_classified_and_measured() {
    let pair = Pair::new();
    let work = Workdir::new();
    let report = pair.plan_json(&work, &[], 1);
    assert!(report["mapping"].is_null());

    // A source-only column holding data: blocking, with its non-NULL count.
    let f = assert_finding(
        &report,
        "organizations",
        "source_only_column",
        "stripe_legacy_id",
        "blocking",
    );
    let n = pair.count("SELECT count(stripe_legacy_id) FROM public.organizations");
    assert!(n > 0);
    assert_eq!(f["counts"]["non_null"], n);
    assert_eq!(f["suggestion"]["key"], "drop");

    // numeric -> integer: lossy, measured.
    let f = assert_finding(&report, "subscriptions", "type_changed", "seats", "lossy");
    assert_eq!(
        f["counts"]["fractional"],
        pair.count("SELECT count(*) FROM public.subscriptions WHERE seats <> trunc(seats)")
    );
    assert_eq!(
        f["counts"]["out_of_range"],
        pair.count(
            "SELECT count(*) FROM public.subscriptions \
             WHERE round(seats) NOT BETWEEN -2147483648 AND 2147483647"
        )
    );
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("numeric -> integer")
    );

    // text -> varchar(120): lossy with the count of longer values.
    let f = assert_finding(&report, "sites", "type_changed", "name", "lossy");
    assert_eq!(
        f["counts"]["too_long"],
        pair.count("SELECT count(*) FROM public.sites WHERE length(name) > 120")
    );

    // jsonb -> text and text[] -> text: lossy, every non-NULL value concerned.
    let f = assert_finding(
        &report,
        "ttn_connections",
        "type_changed",
        "config",
        "lossy",
    );
    assert_eq!(
        f["counts"]["non_null"],
        pair.count("SELECT count(*) FROM public.ttn_connections WHERE config IS NOT NULL")
    );
    let f = assert_finding(
        &report,
        "manual_temperature_logs",
        "type_changed",
        "photo_urls",
        "lossy",
    );
    assert_eq!(
        f["counts"]["non_null"],
        pair.count(
            "SELECT count(*) FROM public.manual_temperature_logs WHERE photo_urls IS NOT NULL"
        )
    );

    // timestamptz -> timestamp(3): zone and sub-millisecond digits.
    let f = assert_finding(
        &report,
        "event_logs",
        "type_changed",
        "occurred_at",
        "lossy",
    );
    let sub_ms = pair.count(
        "SELECT count(*) FROM public.event_logs \
         WHERE date_trunc('milliseconds', occurred_at) <> occurred_at",
    );
    assert!(sub_ms > 0);
    assert_eq!(f["counts"]["sub_precision"], sub_ms);
    assert_eq!(
        f["counts"]["non_null"],
        pair.count("SELECT count(*) FROM public.event_logs")
    );

    // Renamed columns look like a source-only column with data plus a NOT NULL target-only
    // column without default: both blocking, and the template guesses the rename.
    for (table, from, to) in [
        ("user_roles", "user_id", "profile_id"),
        ("manual_temperature_logs", "logged_at", "recorded_at"),
    ] {
        let f = assert_finding(&report, table, "source_only_column", from, "blocking");
        assert_eq!(
            f["counts"]["non_null"],
            pair.count(&format!("SELECT count({from}) FROM public.{table}"))
        );
        assert_eq!(f["suggestion"]["key"], "rename");
        assert_eq!(f["suggestion"]["to"], to);
        let f = assert_finding(&report, table, "target_only_not_null", to, "blocking");
        assert_eq!(f["suggestion"]["from"], from);
    }

    // A target-only NOT NULL column with a default, and generated columns: fine.
    assert_finding(&report, "units", "target_only_column", "is_archived", "ok");
    assert_finding(&report, "units", "generated_column", "temp_range", "ok");

    // Enum label renamed in the target and used by the data: blocking, with the rows counted.
    for table in ["profiles", "user_roles"] {
        let f = assert_finding(&report, table, "enum_labels_missing", "role", "blocking");
        let n = pair.count(&format!(
            "SELECT count(*) FROM public.{table} WHERE role = 'staff'"
        ));
        assert!(n > 0);
        assert_eq!(f["counts"]["rows_with_missing_labels"], n);
        assert!(f["message"].as_str().unwrap().contains("'staff'"));
    }
    // Only added labels (alert_severity gains 'emergency'): nothing per column.
    assert!(
        report["schema"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["kind"] == "enum_type"
                && f["class"] == "ok"
                && f["message"].as_str().unwrap().contains("'emergency'"))
    );

    // Partitioned in the target, with a DEFAULT partition.
    let f = assert_finding(
        &report,
        "sensor_readings",
        "partitioned_in_target",
        "",
        "ok",
    );
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains("RANGE (recorded_at)")
    );

    // The user reference that points to profiles(id) in the target.
    let f = assert_finding(
        &report,
        "corrective_actions",
        "user_reference_to_table",
        "profile_id",
        "blocking",
    );
    assert!(f["message"].as_str().unwrap().contains("profiles(id)"));
    // The suggestion is a lookup in the source's profiles, not a query on the target's.
    let suggestion = &f["suggestion"];
    assert_eq!(suggestion["table"], "profiles", "{suggestion:#}");
    assert_eq!(suggestion["take"], "id", "{suggestion:#}");
    assert_eq!(
        suggestion["matches"],
        serde_json::json!([["user_id", "profile_id"]]),
        "{suggestion:#}"
    );

    // User ids by value: sites.created_by (no foreign key, not listed) is blocking; the listed
    // event_logs.actor_id holds one id of a vanished user.
    let users = |table: &str, column: &str| {
        let matching = pair.count(&format!(
            "SELECT count(*) FROM public.{table} t \
             WHERE EXISTS (SELECT 1 FROM auth.users u WHERE u.id = t.{column})"
        ));
        let non_null = pair.count(&format!("SELECT count({column}) FROM public.{table}"));
        (matching, non_null)
    };
    let (m, n) = users("sites", "created_by");
    assert!(m > 0);
    let f = assert_finding(
        &report,
        "sites",
        "user_id_column_by_value",
        "created_by",
        "blocking",
    );
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{m}/{n} values")),
        "{f:#}"
    );
    let (m, n) = users("event_logs", "actor_id");
    assert_eq!(n - m, 1, "the seed has exactly one orphan actor");
    let f = assert_finding(&report, "event_logs", "user_id_column", "actor_id", "lossy");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .contains(&format!("{m}/{n} values")),
        "{f:#}"
    );
    assert!(f["message"].as_str().unwrap().contains("1 is not"), "{f:#}");
    // Random uuids that are not user ids are not reported.
    let lines = report["user_id_columns"].as_array().unwrap();
    assert!(!lines.iter().any(|l| l["column"] == "entity_id"));
    let line = lines
        .iter()
        .find(|l| l["table"] == "event_logs" && l["column"] == "actor_id")
        .unwrap();
    assert_eq!(line["by_value"], serde_json::json!([m, n]));
    // Found by foreign key, not in the built-in list: rewritten, fine.
    assert_finding(&report, "alerts", "user_id_column", "acknowledged_by", "ok");

    // Everything else: the levels agree, a default differs, sequences are moved on.
    assert_finding(
        &report,
        "manual_temperature_logs",
        "default_changed",
        "profile_id",
        "ok",
    );
    assert_finding(&report, "sensor_readings", "sequence", "id", "ok");
    let levels = report["schema"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "levels")
        .unwrap();
    assert_eq!(levels["class"], "ok");
    assert!(
        levels["message"]
            .as_str()
            .unwrap()
            .contains("same import levels")
    );
    let tables: Vec<&str> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["table"].as_str().unwrap())
        .collect();
    assert_eq!(tables.len(), 23);

    // The summary agrees with the findings, and blocking means exit 1.
    let all: Vec<&Value> = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["findings"].as_array().unwrap())
        .chain(report["schema"].as_array().unwrap())
        .collect();
    for class in ["blocking", "lossy", "ok"] {
        let n = all.iter().filter(|f| f["class"] == class).count();
        assert_eq!(report["summary"][class], n, "{class}");
    }
    // Exactly these are blocking.
    let mut blocking = BTreeSet::new();
    for t in report["tables"].as_array().unwrap() {
        for f in t["findings"].as_array().unwrap() {
            if f["class"] == "blocking" {
                blocking.insert(format!(
                    "{}.{} {}",
                    t["table"].as_str().unwrap(),
                    f["columns"][0].as_str().unwrap_or(""),
                    f["kind"].as_str().unwrap()
                ));
            }
        }
    }
    let want: BTreeSet<String> = [
        "organizations.stripe_legacy_id source_only_column",
        "profiles.role enum_labels_missing",
        "sites.created_by user_id_column_by_value",
        "user_roles.user_id source_only_column",
        "user_roles.profile_id target_only_not_null",
        "user_roles.role enum_labels_missing",
        "manual_temperature_logs.logged_at source_only_column",
        "manual_temperature_logs.recorded_at target_only_not_null",
        "corrective_actions.profile_id user_reference_to_table",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(blocking, want);
    assert_eq!(report["summary"]["blocking"], want.len());
}

#[test]
fn the_text_report_is_readable_and_logged() {
    let pair = Pair::new();
    let work = Workdir::new();
    let run = pair.plan(&work, &[]);
    run.expect_code(1);
    let out = &run.stdout;
    assert!(out.contains("Mapping: none (fmig.toml not found"), "{out}");
    assert!(
        out.contains("BLOCKING  organizations"),
        "blocking rows lead with their class:\n{out}"
    );
    assert!(
        out.contains("Blocking differences would break the migration"),
        "{out}"
    );
    assert!(out.contains("event_logs.actor_id"), "{out}");
    assert!(!out.contains(Cluster::PASSWORD));
    let log = work.log();
    assert!(log.contains("plan summary"), "{log}");
    assert!(log.contains("stripe_legacy_id"), "{log}");
    assert!(log.contains("\"class\":\"blocking\""), "{log}");
}

/// Lines of a template that are commented-out entries: (section header, entry line).
fn suggested_entries(template: &str) -> Vec<(String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in template.lines() {
        if line.starts_with('[') {
            section = line.to_string();
        } else if let Some(entry) = line.strip_prefix("# ")
            && !section.is_empty()
            && is_entry(entry)
        {
            entries.push((section.clone(), entry.to_string()));
        }
    }
    entries
}

/// `key = value` where key is a bare TOML key: a commented-out entry, not prose.
fn is_entry(line: &str) -> bool {
    let Some((key, _)) = line.split_once(" = ") else {
        return false;
    };
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[test]
fn the_template_plus_the_intended_edits_leaves_nothing_blocking() {
    let pair = Pair::new();
    let work = Workdir::new();

    let run = pair.plan(&work, &["--write-template"]);
    // The report that comes with the template still has its blocking differences.
    run.expect_code(1);
    assert!(run.stdout.contains("Wrote fmig.toml"), "{}", run.stdout);
    let path = work.path().join("fmig.toml");
    let template = std::fs::read_to_string(&path).unwrap();
    assert!(template.starts_with("# fmig column mapping"), "{template}");
    assert!(!template.contains(Cluster::PASSWORD));
    // As written, every entry is commented out: a valid mapping that changes nothing.
    let parsed = fmig::column_map::ColumnMap::parse(&template, &path).unwrap();
    assert!(parsed.table("organizations").unwrap().drop.is_empty());

    // It does not overwrite without --force, and does with it.
    let again = pair.plan(&work, &["--write-template"]);
    again.expect_code(2);
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    pair.plan(&work, &["--write-template", "--force"])
        .expect_code(1);

    // Every entry of the intended mapping is suggested by the template, in the same section.
    let suggested = suggested_entries(&template);
    let fixture = std::fs::read_to_string(seed::fixture_path("fmig.toml")).unwrap();
    let intended = suggested_entries(
        &fixture
            .lines()
            .map(|l| {
                if l.starts_with('[') || l.starts_with('#') || l.is_empty() {
                    l.to_string()
                } else {
                    format!("# {l}")
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    );
    assert_eq!(intended.len(), 7, "{intended:?}");
    for (section, entry) in &intended {
        let key = entry.split_once(" = ").unwrap().0;
        assert!(
            suggested
                .iter()
                .any(|(s, e)| s == section && e.split_once(" = ").unwrap().0 == key),
            "the template has no {key} entry in {section}:\n{template}"
        );
    }

    // Edit 1: accept every suggestion as written.
    let accepted: String = template
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(entry) if is_entry(entry) => format!("{entry}\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&path, &accepted).unwrap();
    let run = pair.plan(&work, &[]);
    run.expect_code(0);
    assert!(run.stdout.contains("Mapping: fmig.toml"), "{}", run.stdout);
    assert!(
        run.stdout.contains("Nothing blocking is left"),
        "{}",
        run.stdout
    );

    // Edit 2: the fixture's hand-written mapping.
    let report = pair.plan_json(
        &work,
        &[
            "--mapping-config",
            seed::fixture_path("fmig.toml").to_str().unwrap(),
        ],
        0,
    );
    assert_eq!(report["summary"]["blocking"], 0, "{report:#}");
    let f = assert_finding(
        &report,
        "organizations",
        "dropped_column",
        "stripe_legacy_id",
        "lossy",
    );
    assert_eq!(
        f["counts"]["non_null"],
        pair.count("SELECT count(stripe_legacy_id) FROM public.organizations")
    );
    let f = assert_finding(&report, "user_roles", "enum_labels_missing", "role", "ok");
    assert!(
        f["message"]
            .as_str()
            .unwrap()
            .starts_with("set by expression"),
        "{f:#}"
    );
    assert_finding(
        &report,
        "corrective_actions",
        "user_reference_to_table",
        "profile_id",
        "ok",
    );
    assert_finding(&report, "sites", "user_id_column", "created_by", "ok");
    let roles = report["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["table"] == "user_roles")
        .unwrap();
    // What import will do: profile_id comes from user_id, which is rewritten.
    let columns = roles["mapping"]["columns"].as_array().unwrap();
    let profile = columns.iter().find(|c| c["name"] == "profile_id").unwrap();
    assert_eq!(profile["value"]["from"], "source");
    assert_eq!(profile["value"]["column"], "user_id");
    assert!(
        roles["mapping"]["user_id_columns"]
            .as_array()
            .unwrap()
            .contains(&Value::from("user_id"))
    );
    // Lossy differences stay visible.
    assert_finding(&report, "subscriptions", "type_changed", "seats", "lossy");
    assert_finding(&report, "event_logs", "user_id_column", "actor_id", "lossy");
}

#[test]
fn bad_mapping_files_name_the_file_line_and_problem() {
    let pair = Pair::new();
    let work = Workdir::new();
    let cases: [(&str, &str, &[&str]); 6] = [
        (
            "syntax",
            "[tables.sites]\nuser_id_columns = { add = [\"created_by\" }\n",
            &["syntax.toml:2:", "not a valid mapping file"],
        ),
        (
            "unknown-key",
            "[tables.sites]\n\nrenmae = { name = \"title\" }\n",
            &["unknown-key.toml:3:1:", "unknown field `renmae`"],
        ),
        (
            "unknown-column",
            "[tables.organizations]\ndrop = [\"stripe_legacy\"]\n",
            &[
                "unknown-column.toml:2:9:",
                "source column stripe_legacy does not exist in organizations",
            ],
        ),
        (
            "unknown-table",
            "[tables.organisations]\nskip = true\n",
            &[
                "unknown-table.toml:1:1:",
                "organisations is not one of fmig's tables",
            ],
        ),
        (
            "bad-expression",
            "[tables.subscriptions.set]\n# rounds\nseats = \"round(seets)::int\"\n",
            &[
                "bad-expression.toml:3:9:",
                "seats = \"round(seets)::int\"",
                "the target rejects this expression: column \"seets\" does not exist",
            ],
        ),
        (
            "bad-type",
            "[tables.profiles.set]\nrole = \"now()\"\n",
            &[
                "bad-type.toml:2:8:",
                "cannot cast type timestamp with time zone to app_role",
            ],
        ),
    ];
    for (name, text, wanted) in cases {
        let file = format!("{name}.toml");
        std::fs::write(work.path().join(&file), text).unwrap();
        let run = pair.plan(&work, &["--mapping-config", &file]);
        run.expect_code(2);
        for w in wanted {
            assert!(
                run.stderr.contains(w),
                "{name}: wanted {w:?} in:\n{}",
                run.stderr
            );
        }
    }
    // A named file must exist; the default one may be absent.
    let run = pair.plan(&work, &["--mapping-config", "missing.toml"]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("missing.toml does not exist"),
        "{}",
        run.stderr
    );
}
