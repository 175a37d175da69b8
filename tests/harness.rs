//! Tests of the integration-test harness itself (tests/support, tests/fixtures): if these fail,
//! no other integration test can be trusted.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::process::Command;

use support::seed::{HOSTILE_STRINGS, INVALID_HASHES, is_bcrypt_mcf};
use support::*;

fn spec_levels() -> BTreeMap<String, usize> {
    SPEC_LEVELS
        .iter()
        .map(|(t, l)| (t.to_string(), *l))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).expect("hex escape"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn cluster_authenticates_restarts_and_cleans_up() {
    let cluster = Cluster::start();
    let port = cluster.port();
    let data_dir = cluster.data_dir().to_path_buf();
    assert!(data_dir.join("PG_VERSION").is_file());
    assert_eq!(
        cluster.psql("postgres", "SHOW server_version_num")[..2],
        *"15"
    );
    assert_eq!(cluster.psql("postgres", "SHOW fsync").trim(), "on");
    assert_eq!(cluster.psql("postgres", "SHOW ssl").trim(), "off");

    // A wrong password is refused, over TCP and over the Unix socket alike.
    let out = cluster
        .psql_command("postgres")
        .env("PGPASSWORD", "wrong")
        .args(["-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "wrong password accepted over TCP");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("password authentication failed"),
        "{stderr}"
    );
    let socket_dir = data_dir.parent().unwrap();
    let out = cluster
        .psql_command("postgres")
        .env("PGPASSWORD", "wrong")
        .args(["-h", socket_dir.to_str().unwrap(), "-c", "SELECT 1"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "wrong password accepted on the socket"
    );

    // The URL carries the password percent-encoded and pins sslmode=disable.
    let url = cluster.url("app db");
    let userinfo = url
        .strip_prefix("postgresql://postgres:")
        .unwrap()
        .split_once("@127.0.0.1:")
        .unwrap()
        .0;
    assert!(!userinfo.contains([':', '@', '/', '?']), "{url}");
    assert_eq!(percent_decode(userinfo), Cluster::PASSWORD);
    assert!(
        url.ends_with(&format!(":{port}/app%20db?sslmode=disable")),
        "{url}"
    );
    assert_eq!(
        cluster.url_with("d", "u", "p", ""),
        format!("postgresql://u:p@127.0.0.1:{port}/d")
    );

    // Committed data survives a restart on the same port.
    cluster.create_database("app");
    cluster.psql(
        "app",
        "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2);",
    );
    let started_before = cluster.psql("app", "SELECT pg_postmaster_start_time()");
    cluster.restart();
    assert_eq!(cluster.port(), port);
    assert_eq!(cluster.psql("app", "SELECT sum(x) FROM t").trim(), "3");
    assert_ne!(
        cluster.psql("app", "SELECT pg_postmaster_start_time()"),
        started_before,
        "restart did not restart"
    );

    drop(cluster);
    assert!(!data_dir.exists(), "data dir left behind: {data_dir:?}");
    assert!(!socket_dir.exists(), "cluster dir left behind");
    TcpListener::bind(("127.0.0.1", port)).expect("port still in use after drop");
    let running = Command::new("pgrep")
        .args(["-f", data_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        running.stdout.is_empty(),
        "postgres still running: {}",
        String::from_utf8_lossy(&running.stdout)
    );
}

#[test]
fn stop_is_idempotent_and_drop_after_panic_cleans_up() {
    let mut cluster = Cluster::start();
    let data_dir = cluster.data_dir().to_path_buf();
    cluster.stop();
    cluster.stop();
    assert!(
        Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &cluster.port().to_string()])
            .args(["-U", "postgres", "-X", "-c", "SELECT 1"])
            .env("PGPASSWORD", Cluster::PASSWORD)
            .env("PGCONNECT_TIMEOUT", "3")
            .output()
            .map(|o| !o.status.success())
            .unwrap(),
        "server still answering after stop"
    );
    drop(cluster);
    assert!(!data_dir.exists());

    // Drop runs while a test panics.
    let dir = std::panic::catch_unwind(|| {
        let cluster = Cluster::start();
        let dir = cluster.data_dir().to_path_buf();
        std::panic::panic_any(dir);
    })
    .unwrap_err()
    .downcast::<std::path::PathBuf>()
    .unwrap();
    assert!(!dir.exists(), "panicking test left {dir:?}");
}

#[test]
fn sql_literal_round_trips_with_either_string_setting() {
    let cluster = Cluster::start();
    let mut samples: Vec<String> = HOSTILE_STRINGS.iter().map(|s| s.to_string()).collect();
    samples.push("\u{1}\u{2}\u{7}\u{1b}[31m \u{7f}\u{85} \u{2028}".to_owned());
    samples.push("\\x41 \\u0041 \\\\' ''".to_owned());
    for setting in ["on", "off"] {
        let mut sql = format!("SET standard_conforming_strings = {setting};\n");
        for s in &samples {
            sql.push_str(&format!(
                "SELECT encode(convert_to({}, 'UTF8'), 'hex');\n",
                sql_literal(s)
            ));
        }
        let out = cluster.psql("postgres", &sql);
        let got: Vec<&str> = out.lines().collect();
        assert_eq!(got.len(), samples.len(), "{out}");
        for (s, hex) in samples.iter().zip(got) {
            let want: String = s.bytes().map(|b| format!("{b:02x}")).collect();
            assert_eq!(hex, want, "standard_conforming_strings={setting}: {s:?}");
        }
    }
}

#[test]
fn seeded_source_matches_summary_and_spec() {
    let cluster = Cluster::start();
    cluster.create_database("source");
    load_source_schema(&cluster, "source");
    let summary = seed_source(&cluster, "source", &SeedConfig::default());

    let tables: BTreeSet<String> = cluster
        .psql(
            "source",
            "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE nspname = 'public' AND relkind IN ('r', 'p') AND NOT relispartition",
        )
        .lines()
        .map(str::to_owned)
        .collect();
    let expected: BTreeSet<String> = spec_levels().into_keys().collect();
    assert_eq!(tables, expected);
    assert_eq!(
        summary.tables.keys().cloned().collect::<BTreeSet<_>>(),
        expected
    );

    let mut counted = BTreeMap::new();
    for table in &expected {
        let n: u64 = cluster
            .psql("source", &format!("SELECT count(*) FROM public.{table}"))
            .trim()
            .parse()
            .unwrap();
        assert!(n > 0, "{table} is empty");
        counted.insert(table.clone(), n);
    }
    assert_eq!(counted, summary.tables);
    assert_eq!(summary.tables["sensor_readings"], 2_000);

    let row = cluster.psql(
        "source",
        r"SELECT count(*),
            count(*) FILTER (WHERE encrypted_password ~ '^\$2[aby]\$\d\d\$.{53}$'),
            count(*) FILTER (WHERE EXISTS (SELECT 1 FROM auth.identities i
                WHERE i.user_id = u.id AND i.provider NOT IN ('email', 'phone')
                  AND i.provider NOT LIKE 'sso:%')),
            count(*) FILTER (WHERE coalesce(email, '') = ''),
            count(*) FILTER (WHERE is_anonymous),
            count(*) FILTER (WHERE banned_until > now()),
            count(*) FILTER (WHERE deleted_at IS NOT NULL),
            count(*) FILTER (WHERE is_sso_user)
          FROM auth.users u",
    );
    let n: Vec<u64> = row.trim().split('|').map(|x| x.parse().unwrap()).collect();
    let from_sql = UserCounts {
        total: n[0],
        with_bcrypt_password: n[1],
        with_oauth_identity: n[2],
        without_email: n[3],
        anonymous: n[4],
        banned: n[5],
        soft_deleted: n[6],
        sso: n[7],
    };
    assert_eq!(from_sql, summary.users);
    assert_eq!(summary.users.total, summary.seeded_users.len() as u64);
    eprintln!("user counts (default config): {:?}", summary.users);
    eprintln!("table counts (default config): {:?}", summary.tables);

    assert_eq!(fk_levels(&cluster, "source"), spec_levels());

    // Columns declared as user references: the spec's list minus the audit column without a
    // foreign key (event_logs.actor_id), plus two the spec forgot.
    let declared: BTreeSet<String> = cluster
        .psql(
            "source",
            "SELECT c.conrelid::regclass || '.' || a.attname
             FROM pg_constraint c
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
             WHERE c.contype = 'f' AND c.confrelid = 'auth.users'::regclass
               AND c.connamespace = 'public'::regnamespace",
        )
        .lines()
        .map(str::to_owned)
        .collect();
    let mut want: BTreeSet<String> = SPEC_USER_ID_COLUMNS
        .iter()
        .filter(|(t, _)| *t != "event_logs")
        .map(|(t, c)| format!("{t}.{c}"))
        .collect();
    want.insert("alerts.acknowledged_by".to_owned());
    want.insert("alert_rules_history.changed_by".to_owned());
    assert_eq!(declared, want);

    // The hostile values really landed.
    let checks = [
        (
            "SELECT count(*) FROM auth.users WHERE email = 'chef@küche.example'",
            "1",
        ),
        (
            "SELECT count(*) FROM auth.users WHERE email = 'Upper.Case0@FreshTrack.EXAMPLE'",
            "1",
        ),
        (
            "SELECT count(*) FROM auth.users WHERE encrypted_password = ''",
            "6",
        ),
        (
            "SELECT count(*) FROM auth.users a JOIN auth.users b
               ON a.email = b.email AND a.is_sso_user AND NOT b.is_sso_user",
            "3",
        ),
        (
            "SELECT count(DISTINCT provider) FROM auth.identities
             WHERE provider IN ('google','github','azure','linkedin_oidc','twitter')",
            "5",
        ),
        (
            "SELECT count(*) - count(DISTINCT d) FROM public.door_events d",
            "1",
        ),
        (
            "SELECT count(*) FROM public.lora_sensors WHERE last_snr = 'NaN'",
            "1",
        ),
        (
            "SELECT count(*) > 0 FROM public.lora_sensors
             WHERE offset_celsius = 12345678901234567890.123456789012345678",
            "t",
        ),
        (
            "SELECT count(*) FROM public.organizations
             WHERE settings ->> 'big' = '123456789012345678901234567890'
               AND (settings -> 'dec')::text = '0.1000000000000000055'",
            "1",
        ),
        (
            "SELECT count(*) FROM public.subscriptions WHERE current_period_end = 'infinity'",
            "1",
        ),
        (
            "SELECT count(*) FROM public.alerts WHERE resolved_at = 'infinity'",
            "9",
        ),
        (
            "SELECT count(*) FROM public.organizations WHERE created_at < '1970-01-01'",
            "1",
        ),
        (
            "SELECT count(*) FROM public.sites WHERE closing_time = '24:00:00'",
            "1",
        ),
        (
            "SELECT count(*) FROM public.sites
             WHERE tags[2] IS NULL AND tags[6] = 'NULL' AND array_length(tags, 1) = 7",
            "2",
        ),
        (
            "SELECT array_ndims(escalation_matrix) FROM public.alert_rules LIMIT 1",
            "2",
        ),
        (
            "SELECT count(*) FROM public.sensor_readings
             WHERE position('\\x00'::bytea IN raw_payload) > 0",
            "2000",
        ),
        (
            "SELECT count(*) FROM public.subscriptions WHERE metadata::text LIKE '%\"a\": 1,  \"a\": 2%'",
            "1",
        ),
        (
            "SELECT count(*) FROM public.areas a JOIN public.areas p ON a.parent_area_id = p.id",
            "6",
        ),
        (
            &format!("SELECT count(*) FROM public.event_logs WHERE actor_id = '{ORPHAN_ACTOR_ID}'"),
            "1",
        ),
        (
            "SELECT last_value FROM public.sensor_readings_id_seq",
            "2000",
        ),
    ];
    let wrong: Vec<String> = checks
        .iter()
        .filter_map(|(sql, want)| {
            let got = cluster.psql("source", sql);
            (got.trim() != *want).then(|| format!("{sql}\n  got {}, want {want}", got.trim()))
        })
        .collect();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // The known hashes are real bcrypt (pgcrypto understands the $2a$ ones).
    cluster.psql("source", "CREATE EXTENSION pgcrypto");
    for (password, hash) in KNOWN_BCRYPT.iter().filter(|(_, h)| h.starts_with("$2a$")) {
        let sql = format!(
            "SELECT crypt({}, {h}) = {h}",
            sql_literal(password),
            h = sql_literal(hash)
        );
        assert_eq!(cluster.psql("source", &sql).trim(), "t", "{password}");
    }
    assert!(KNOWN_BCRYPT.iter().all(|(_, h)| is_bcrypt_mcf(h)));
    assert!(!INVALID_HASHES.iter().any(|h| is_bcrypt_mcf(h)));
}

fn table_digests(cluster: &Cluster, db: &str) -> BTreeMap<String, String> {
    let mut names: Vec<String> = SPEC_LEVELS
        .iter()
        .map(|(t, _)| format!("public.{t}"))
        .collect();
    names.push("auth.users".to_owned());
    names.push("auth.identities".to_owned());
    names
        .into_iter()
        .map(|t| {
            let sql = format!(
                "SELECT md5(coalesce(string_agg(x::text, ',' ORDER BY x::text), '')) FROM {t} x"
            );
            let digest = cluster.psql(db, &sql).trim().to_owned();
            (t, digest)
        })
        .collect()
}

#[test]
fn same_seed_gives_identical_data() {
    let cluster = Cluster::start();
    let cfg = SeedConfig::default();
    let mut digests = Vec::new();
    let mut summaries = Vec::new();
    for (db, seed) in [("a", cfg.seed), ("b", cfg.seed), ("c", cfg.seed + 1)] {
        cluster.create_database(db);
        load_source_schema(&cluster, db);
        let cfg = SeedConfig {
            seed,
            ..cfg.clone()
        };
        summaries.push(seed_source(&cluster, db, &cfg));
        digests.push(table_digests(&cluster, db));
    }
    assert_eq!(summaries[0], summaries[1]);
    assert_eq!(digests[0], digests[1]);
    // Not vacuous: another seed changes every table that holds generated ids.
    let same: Vec<&String> = digests[0]
        .iter()
        .filter(|(t, d)| digests[2][*t] == **d)
        .map(|(t, _)| t)
        .collect();
    assert_eq!(same, Vec::<&String>::new(), "unchanged by the seed");
}

#[test]
fn ssl_cluster_serves_tls() {
    let cluster = Cluster::start_with(ClusterOptions { ssl: true });
    assert_eq!(cluster.psql("postgres", "SHOW ssl").trim(), "on");
    let ca = cluster.ca_cert().expect("ca cert").to_path_buf();
    assert!(ca.is_file());
    assert!(
        !cluster.url("postgres").contains('?'),
        "{}",
        cluster.url("postgres")
    );

    let in_tls = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let run = |envs: &[(&str, &str)]| {
        let mut cmd = cluster.psql_command("postgres");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.args(["-c", in_tls]).output().unwrap();
        assert!(
            out.status.success(),
            "{envs:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    assert_eq!(run(&[("PGSSLMODE", "require")]), "t");
    // The certificate verifies for 127.0.0.1 (IP SAN) against itself as the root.
    assert_eq!(
        run(&[
            ("PGSSLMODE", "verify-full"),
            ("PGSSLROOTCERT", ca.to_str().unwrap())
        ]),
        "t"
    );
    // Plain connections are still allowed (Supabase refuses them; our tests pick the mode).
    assert_eq!(run(&[("PGSSLMODE", "disable")]), "f");
}

#[test]
fn target_schema_has_spec_levels_and_partitions() {
    let cluster = Cluster::start();
    cluster.create_database("target");
    load_target_schema(&cluster, "target");
    assert_eq!(fk_levels(&cluster, "target"), spec_levels());
    assert_eq!(
        cluster
            .psql(
                "target",
                "SELECT relkind FROM pg_class WHERE oid = 'public.sensor_readings'::regclass"
            )
            .trim(),
        "p"
    );
    let partitions = cluster.psql(
        "target",
        "SELECT c.relname || ' ' || pg_get_expr(c.relpartbound, c.oid)
         FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
         WHERE i.inhparent = 'public.sensor_readings'::regclass ORDER BY 1",
    );
    assert_eq!(partitions.lines().count(), 5, "{partitions}");
    assert!(
        partitions.contains("sensor_readings_default DEFAULT"),
        "{partitions}"
    );
    assert_eq!(
        cluster
            .psql(
                "target",
                "SELECT count(*) FROM pg_namespace WHERE nspname = 'auth'"
            )
            .trim(),
        "0"
    );
    assert_eq!(
        cluster
            .psql(
                "target",
                "SELECT confrelid::regclass FROM pg_constraint
                 WHERE conrelid = 'public.corrective_actions'::regclass AND contype = 'f'
                   AND conkey = ARRAY[(SELECT attnum FROM pg_attribute
                       WHERE attrelid = 'public.corrective_actions'::regclass
                         AND attname = 'profile_id')]"
            )
            .trim(),
        "profiles"
    );
}

/// The seed's server-side `sensor_readings` insert at the spec's "grows without bound" scale.
/// Slow-ish; run with `cargo test --test harness -- --ignored`.
#[test]
#[ignore]
fn seeds_a_million_readings() {
    let cluster = Cluster::start();
    cluster.create_database("big");
    load_source_schema(&cluster, "big");
    let started = std::time::Instant::now();
    let cfg = SeedConfig {
        sensor_readings: 1_000_000,
        ..SeedConfig::default()
    };
    let summary = seed_source(&cluster, "big", &cfg);
    eprintln!("seeded 1,000,000 readings in {:?}", started.elapsed());
    assert_eq!(
        cluster
            .psql("big", "SELECT count(*) FROM public.sensor_readings")
            .trim(),
        "1000000"
    );
    assert_eq!(summary.tables["sensor_readings"], 1_000_000);
}
