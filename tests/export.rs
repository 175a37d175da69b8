//! `fmig export` against real clusters: exact values, one snapshot, files complete or absent,
//! and metadata that lets a later step trust the files.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;

use fmig::checksum::{Checksum, RowHasher};
use fmig::metadata::Metadata;
use serde_json::value::RawValue;
use support::cli::Workdir;
use support::cluster::Cluster;
use support::seed::{self, SeedConfig};

fn export(work: &Workdir, cluster: &Cluster, db: &str, extra: &[&str]) -> support::cli::Run {
    let mut args = vec!["export", "--output-dir", "out"];
    args.extend_from_slice(extra);
    work.run(&args, &[("SUPABASE_DB_URL", &cluster.url(db))])
}

fn read_file(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if path.extension().is_some_and(|e| e == "gz") {
        let mut text = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut text)
            .unwrap();
        text
    } else {
        String::from_utf8(bytes).unwrap()
    }
}

/// Recomputes a file's content checksum with an independent parser (serde_json over the whole
/// array, values kept as their raw text).
fn checksum_of(dir: &Path, entry: &fmig::metadata::FileEntry) -> Checksum {
    let text = read_file(&dir.join(&entry.file));
    let rows: Vec<BTreeMap<String, Box<RawValue>>> = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not a JSON array: {e}", entry.file));
    let columns: Vec<(String, fmig::codec::ColumnKind)> = entry
        .columns
        .iter()
        .map(|c| (c.name.clone(), c.kind().expect("known kind")))
        .collect();
    let mut hasher = RowHasher::new(&columns);
    let mut sum = Checksum::default();
    for row in &rows {
        assert_eq!(
            row.len(),
            columns.len(),
            "{}: row with other columns",
            entry.file
        );
        let values: Vec<&[u8]> = columns
            .iter()
            .map(|(n, _)| row[n].get().as_bytes())
            .collect();
        sum.add_row(&hasher.hash_row(&values));
    }
    sum
}

/// (column, type, SQL value, expected JSON text): every type the schema uses and the fallback.
const TYPES: &[(&str, &str, &str, &str)] = &[
    ("i2", "smallint", "-32768", "-32768"),
    ("i4", "integer", "2147483647", "2147483647"),
    ("i8", "bigint", "9223372036854775807", "9223372036854775807"),
    (
        "n",
        "numeric",
        "12345678901234567890.123456789012345678",
        r#""12345678901234567890.123456789012345678""#,
    ),
    ("n_scale", "numeric(6,2)", "4.2", r#""4.20""#),
    ("n_nan", "numeric", "'NaN'", r#""NaN""#),
    ("f4", "real", "1.5", "1.5"),
    ("f8", "double precision", "0.1", "0.1"),
    ("f8_nan", "double precision", "'NaN'", r#""NaN""#),
    (
        "f8_ninf",
        "double precision",
        "'-Infinity'",
        r#""-Infinity""#,
    ),
    ("b", "boolean", "true", "true"),
    (
        "t",
        "text",
        r#"E'tab\there "q" back\\slash\nline ''🧊'''"#,
        r#""tab\there \"q\" back\\slash\nline '🧊'""#,
    ),
    ("empty", "text", "''", r#""""#),
    ("vc", "varchar(10)", "'abc'", r#""abc""#),
    ("ch", "char(5)", "'ab'", r#""ab   ""#),
    (
        "u",
        "uuid",
        "'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11'",
        r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#,
    ),
    ("d", "date", "'1969-12-31'", r#""1969-12-31""#),
    ("d_inf", "date", "'infinity'", r#""infinity""#),
    ("tm", "time", "'23:59:59.999999'", r#""23:59:59.999999""#),
    ("ttz", "timetz", "'12:00:00+02'", r#""12:00:00+02""#),
    (
        "ts",
        "timestamp",
        "'1900-01-01 00:00:00.5'",
        r#""1900-01-01T00:00:00.500000""#,
    ),
    (
        "tstz",
        "timestamptz",
        "'2021-03-28 02:30:00.123456+01'",
        r#""2021-03-28T01:30:00.123456Z""#,
    ),
    ("tstz_inf", "timestamptz", "'-infinity'", r#""-infinity""#),
    (
        "iv",
        "interval",
        "'1 year 2 mons 3 days 04:05:06.7'",
        r#""1 year 2 mons 3 days 04:05:06.7""#,
    ),
    (
        "js",
        "json",
        "E'{\"b\": 1,\\n \"a\": [1.0]}'",
        r#"{"b": 1,  "a": [1.0]}"#,
    ),
    (
        "jb",
        "jsonb",
        r#"'{"big": 12345678901234567890, "dec": 0.1000000000000000055}'"#,
        r#"{"big": 12345678901234567890, "dec": 0.1000000000000000055}"#,
    ),
    ("by", "bytea", r"'\x00ff41'", r#""AP9B""#),
    (
        "ta",
        "text[]",
        r#"ARRAY['a', NULL, 'c"d']"#,
        r#"["a",null,"c\"d"]"#,
    ),
    ("ia2", "integer[]", "'{{1,2},{3,NULL}}'", "[[1,2],[3,null]]"),
    ("na", "numeric[]", "'{1.50,NaN}'", r#"["1.50","NaN"]"#),
    ("en", "mood", "'happy'", r#""happy""#),
    ("ena", "mood[]", "'{happy,sad}'", r#"["happy","sad"]"#),
    ("dm", "posint", "5", "5"),
    ("ip", "inet", "'192.168.0.1/24'", r#""192.168.0.1/24""#),
    (
        "mac",
        "macaddr",
        "'08:00:2b:01:02:03'",
        r#""08:00:2b:01:02:03""#,
    ),
    ("mo", "money", "12.34", r#""$12.34""#),
    ("rg", "int4range", "'[1,5)'", r#""[1,5)""#),
    (
        "gen",
        "integer GENERATED ALWAYS AS (i4 / 2) STORED",
        "",
        "1073741823",
    ),
];

#[test]
fn every_type_is_written_exactly() {
    let cluster = Cluster::start();
    cluster.create_database("types");
    let columns: Vec<String> = TYPES
        .iter()
        .map(|(c, t, _, _)| format!("{c} {t}"))
        .collect();
    let inserted: Vec<&(&str, &str, &str, &str)> =
        TYPES.iter().filter(|t| !t.2.is_empty()).collect();
    cluster.psql(
        "types",
        &format!(
            "SET lc_monetary = 'C'; \
             CREATE TYPE mood AS ENUM ('happy', 'sad'); \
             CREATE DOMAIN posint AS integer CHECK (VALUE > 0); \
             CREATE TABLE public.organizations ({}); \
             INSERT INTO public.organizations ({}) VALUES ({}); \
             INSERT INTO public.organizations (i4) VALUES (NULL);",
            columns.join(", "),
            inserted.iter().map(|t| t.0).collect::<Vec<_>>().join(", "),
            inserted.iter().map(|t| t.2).collect::<Vec<_>>().join(", "),
        ),
    );
    let work = Workdir::new();
    export(
        &work,
        &cluster,
        "types",
        &["--table", "organizations", "--skip-auth"],
    )
    .expect_code(0);
    let text = std::fs::read_to_string(work.path().join("out/organizations.json")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "one row per line between [ and ]:\n{text}");
    assert_eq!(lines[0], "[");
    assert_eq!(lines[3], "]");

    let full = TYPES
        .iter()
        .map(|(c, _, _, json)| format!("\"{c}\":{json}"))
        .collect::<Vec<_>>()
        .join(",");
    let nulls = TYPES
        .iter()
        .map(|(c, ..)| format!("\"{c}\":null"))
        .collect::<Vec<_>>()
        .join(",");
    // Row order is the server's; compare as a set of lines.
    let got: BTreeSet<&str> = [lines[1].trim_end_matches(','), lines[2]]
        .into_iter()
        .collect();
    let want: BTreeSet<String> = [format!("{{{full}}}"), format!("{{{nulls}}}")]
        .into_iter()
        .collect();
    let want: BTreeSet<&str> = want.iter().map(String::as_str).collect();
    if got != want {
        // Point at the first differing column rather than dumping two long lines.
        let row: serde_json::Map<String, serde_json::Value> = serde_json::from_str(
            lines[1..3]
                .iter()
                .map(|l| l.trim_end_matches(','))
                .find(|l| !l.contains("\"i2\":null"))
                .unwrap(),
        )
        .unwrap();
        for (c, _, _, json) in TYPES {
            let expected: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(row[*c], expected, "column {c}");
        }
        panic!("lines differ:\n got {got:?}\nwant {want:?}");
    }

    // metadata.json describes the columns.
    let metadata = Metadata::load(&work.path().join("out")).unwrap();
    let entry = metadata.table("organizations").unwrap();
    let types: BTreeMap<&str, &str> = entry
        .columns
        .iter()
        .map(|c| (c.name.as_str(), c.type_name.as_str()))
        .collect();
    assert_eq!(types["n_scale"], "numeric(6,2)");
    assert_eq!(types["ta"], "text[]");
    assert_eq!(types["en"], "mood");
    assert!(
        entry
            .columns
            .iter()
            .find(|c| c.name == "gen")
            .unwrap()
            .generated
    );
    assert_eq!(entry.rows, 2);
}

#[test]
fn the_fixture_exports_completely_and_verifiably() {
    let cluster = Cluster::start();
    seed::load_source_schema(&cluster, "postgres");
    let summary = seed::seed_source(&cluster, "postgres", &SeedConfig::default());
    let work = Workdir::new();
    let run = export(&work, &cluster, "postgres", &[]);
    run.expect_code(0);
    assert!(
        run.stdout.contains("metadata.json written last"),
        "{}",
        run.stdout
    );
    let dir = work.path().join("out");
    let metadata = Metadata::load(&dir).unwrap();

    assert_eq!(metadata.tables.len(), 23);
    let names: Vec<&str> = metadata.tables.iter().map(|t| t.name.as_str()).collect();
    let expected: Vec<&str> = fmig::manifest::builtin().iter().map(|t| t.name).collect();
    assert_eq!(names, expected, "metadata lists tables in import order");
    assert!(!metadata.snapshot_id.is_empty());
    assert!(!metadata.source.contains(Cluster::PASSWORD));
    for entry in &metadata.tables {
        assert_eq!(
            entry.rows, summary.tables[&entry.name],
            "rows of {}",
            entry.name
        );
        let path = dir.join(&entry.file);
        let (bytes, sha) = fmig::files::sha256_file(&path).unwrap();
        assert_eq!(
            (bytes, sha.as_str()),
            (entry.bytes, entry.sha256.as_str()),
            "{}",
            entry.name
        );
        let text = read_file(&path);
        assert_eq!(
            text.lines().count() as u64,
            entry.rows + 2,
            "{}: one row per line",
            entry.name
        );
        let recomputed = checksum_of(&dir, entry);
        assert_eq!(recomputed.rows, entry.rows);
        assert_eq!(
            recomputed.hex(),
            entry.checksum.sum,
            "checksum of {}",
            entry.name
        );
    }
    let users = metadata.auth_users.as_ref().expect("auth users exported");
    assert_eq!(users.rows, summary.users.total);
    assert_eq!(checksum_of(&dir, users).hex(), users.checksum.sum);
    use std::os::unix::fs::PermissionsExt;
    for file in ["auth_users.json", "profiles.json"] {
        let mode = std::fs::metadata(dir.join(file))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    let users_text = std::fs::read_to_string(dir.join("auth_users.json")).unwrap();
    assert!(
        users_text.contains("\"identities\":[{"),
        "identities are nested"
    );
    assert!(
        users_text.contains("\"encrypted_password\":\"$2"),
        "hashes are kept"
    );
    // The jsonb integer above 2^64 survived without a float in between.
    assert!(read_file(&dir.join("auth_users.json")).contains("12345678901234567890"));

    // The same snapshot content exported in parallel and compressed gives the same checksums.
    let again = Workdir::new();
    export(&again, &cluster, "postgres", &["--jobs", "3", "--gzip"]).expect_code(0);
    let gz = Metadata::load(&again.path().join("out")).unwrap();
    assert!(gz.gzip);
    for (a, b) in metadata.tables.iter().zip(&gz.tables) {
        assert_eq!(b.file, format!("{}.json.gz", a.name));
        assert_eq!(a.checksum, b.checksum, "{}", a.name);
        assert_eq!(
            checksum_of(&again.path().join("out"), b).hex(),
            b.checksum.sum
        );
    }
}

/// Pairs (organization + site) inserted in one transaction while the export runs are in both
/// files or in neither: every file reads the same snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_are_all_or_nothing_across_tables() {
    let cluster = Cluster::start();
    seed::load_source_schema(&cluster, "postgres");
    seed::seed_source(&cluster, "postgres", &SeedConfig::default());
    // A large sites table makes the export take long enough for writes to land in between.
    cluster.psql(
        "postgres",
        "INSERT INTO public.sites (organization_id, name) \
         SELECT (SELECT id FROM public.organizations ORDER BY id LIMIT 1), 'bulk ' || g \
         FROM generate_series(1, 300000) g",
    );
    for jobs in ["1", "2"] {
        let work = Workdir::new();
        let mut child = work
            .command(
                &[
                    "export",
                    "--output-dir",
                    "out",
                    "--skip-auth",
                    "--jobs",
                    jobs,
                ],
                &[("SUPABASE_DB_URL", &cluster.url("postgres"))],
            )
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (client, connection) =
            tokio_postgres::connect(&cluster.url("postgres"), tokio_postgres::NoTls)
                .await
                .unwrap();
        tokio::spawn(connection);
        let mut inserted = 0;
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            client
                .batch_execute(&format!(
                    "WITH o AS (INSERT INTO public.organizations (name, slug) VALUES ('snap', 'snap-{jobs}-{inserted}') RETURNING id) \
                     INSERT INTO public.sites (organization_id, name) SELECT id, 'snap-site-{jobs}' FROM o"
                ))
                .await
                .unwrap();
            inserted += 1;
        };
        assert!(status.success(), "export failed");
        assert!(
            inserted > 5,
            "too few concurrent writes ({inserted}) to prove anything"
        );

        let dir = work.path().join("out");
        let orgs: Vec<serde_json::Value> =
            serde_json::from_str(&read_file(&dir.join("organizations.json"))).unwrap();
        let sites: Vec<serde_json::Value> =
            serde_json::from_str(&read_file(&dir.join("sites.json"))).unwrap();
        let snap_orgs: BTreeSet<String> = orgs
            .iter()
            .filter(|o| {
                o["slug"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("snap-{jobs}-"))
            })
            .map(|o| o["id"].as_str().unwrap().to_string())
            .collect();
        let snap_sites: BTreeSet<String> = sites
            .iter()
            .filter(|s| s["name"] == format!("snap-site-{jobs}").as_str())
            .map(|s| s["organization_id"].as_str().unwrap().to_string())
            .collect();
        let orphans: Vec<_> = snap_sites.symmetric_difference(&snap_orgs).collect();
        assert!(
            orphans.is_empty(),
            "jobs={jobs}: {} pairs split across files (of {} exported): {orphans:?}",
            orphans.len(),
            snap_orgs.len()
        );
        assert!(
            (snap_orgs.len() as u64) < inserted,
            "jobs={jobs}: all {inserted} writes are in the export, so none happened during it"
        );
    }
}

#[test]
fn a_failing_table_leaves_no_file_for_it_and_no_metadata() {
    let cluster = Cluster::start();
    seed::load_source_schema(&cluster, "postgres");
    seed::seed_source(&cluster, "postgres", &SeedConfig::default());
    let work = Workdir::new();
    export(&work, &cluster, "postgres", &[]).expect_code(0);
    let dir = work.path().join("out");
    assert!(dir.join("metadata.json").exists());

    // The export role may read everything but door_events.
    cluster.psql(
        "postgres",
        "CREATE ROLE exporter LOGIN PASSWORD 'Exp0rt-pass'; \
         GRANT USAGE ON SCHEMA public, auth TO exporter; \
         GRANT SELECT ON ALL TABLES IN SCHEMA public, auth TO exporter; \
         REVOKE SELECT ON public.door_events FROM exporter;",
    );
    let url = cluster.url_with("postgres", "exporter", "Exp0rt-pass", "sslmode=disable");
    let run = work.run(
        &["export", "--output-dir", "out"],
        &[("SUPABASE_DB_URL", &url)],
    );
    run.expect_code(2);
    assert!(run.stderr.contains("door_events"), "{}", run.stderr);
    assert!(run.stderr.contains("permission denied"), "{}", run.stderr);
    assert!(
        !dir.join("metadata.json").exists(),
        "a failed export looks complete"
    );
    assert!(!dir.join("door_events.json").exists());
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // The lock file names the last run; it is not a half-written file.
        .filter(|n| n.starts_with('.') && n != fmig::lock::LOCK_FILE)
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // A missing table stops the export before anything is written.
    cluster.psql("postgres", "DROP TABLE public.door_events");
    let run = export(&work, &cluster, "postgres", &[]);
    run.expect_code(2);
    assert!(
        run.stderr.contains("public.door_events does not exist"),
        "{}",
        run.stderr
    );
    assert!(!dir.join("metadata.json").exists());
}

#[test]
fn a_json_null_document_in_a_nullable_column_is_warned_about() {
    // The export format writes the JSON document `null` and SQL NULL alike; in a nullable
    // column import cannot tell them apart, so the export says so, naming the column.
    let cluster = Cluster::start();
    seed::load_source_schema(&cluster, "postgres");
    seed::seed_source(&cluster, "postgres", &SeedConfig::default());
    cluster.psql(
        "postgres",
        "UPDATE public.profiles SET notification_prefs = 'null'::jsonb \
         WHERE id IN (SELECT id FROM public.profiles ORDER BY id LIMIT 2); \
         UPDATE public.subscriptions SET metadata = NULL",
    );
    // The seed has some of its own.
    let documents = cluster.psql(
        "postgres",
        "SELECT count(*) FROM public.profiles WHERE notification_prefs = 'null'::jsonb",
    );
    let documents = documents.trim();
    assert!(documents.parse::<u64>().unwrap() >= 2);
    let work = Workdir::new();
    let run = export(
        &work,
        &cluster,
        "postgres",
        &["--table", "profiles,subscriptions"],
    );
    run.expect_code(0);
    assert!(
        run.stderr.contains(&format!(
            "profiles.notification_prefs: {documents} row(s) hold the JSON document null"
        )),
        "{}",
        run.stderr
    );
    // SQL NULLs are not documents.
    assert!(
        !run.stderr.contains("subscriptions.metadata"),
        "{}",
        run.stderr
    );
}
