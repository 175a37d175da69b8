//! Connections against real clusters: TLS modes, the pooler guard, read-only sources, and
//! errors that say what went wrong without ever showing the password.

mod support;

use std::time::Duration;

use fmig::connect::{self, ConnectOptions, DbUrl, Side};
use support::cli::Workdir;
use support::cluster::{Cluster, ClusterOptions, percent_encode};

fn options() -> ConnectOptions {
    ConnectOptions {
        connect_timeout: Duration::from_secs(5),
        allow_pooler: false,
    }
}

async fn connect_err(url: &str) -> String {
    let url = DbUrl::parse(Side::Source, url).expect("url parses");
    match connect::connect(&url, &options()).await {
        Ok(_) => panic!("connecting to {url} should have failed"),
        Err(err) => format!("{err:#}"),
    }
}

#[tokio::test]
async fn sslmode_require_encrypts_and_verify_full_checks_the_certificate() {
    let cluster = Cluster::start_with(ClusterOptions { ssl: true });
    let ca = cluster
        .ca_cert()
        .expect("ssl cluster has a cert")
        .to_str()
        .unwrap()
        .to_string();

    // require: encrypted, certificate not checked.
    let url = DbUrl::parse(
        Side::Source,
        &cluster.url_with("postgres", "postgres", Cluster::PASSWORD, "sslmode=require"),
    )
    .unwrap();
    let client = connect::connect(&url, &options())
        .await
        .expect("sslmode=require connects");
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the session is not encrypted");

    // verify-full with the CA that signed the server certificate: accepted.
    let params = format!("sslmode=verify-full&sslrootcert={}", percent_encode(&ca));
    let url = DbUrl::parse(
        Side::Source,
        &cluster.url_with("postgres", "postgres", Cluster::PASSWORD, &params),
    )
    .unwrap();
    connect::connect(&url, &options())
        .await
        .expect("verify-full with the right CA connects");

    // verify-full against a CA that did not sign it: refused, with a TLS explanation.
    let other = Cluster::start_with(ClusterOptions { ssl: true });
    let wrong_ca = other.ca_cert().unwrap().to_str().unwrap().to_string();
    let params = format!(
        "sslmode=verify-full&sslrootcert={}",
        percent_encode(&wrong_ca)
    );
    let err =
        connect_err(&cluster.url_with("postgres", "postgres", Cluster::PASSWORD, &params)).await;
    assert!(
        err.contains("could not connect to the source database"),
        "{err}"
    );
    assert!(err.contains("certificate"), "{err}");
    assert!(!err.contains(Cluster::PASSWORD), "{err}");
}

#[test]
fn verify_full_without_a_root_certificate_fails_with_a_next_step() {
    let cluster = Cluster::start_with(ClusterOptions { ssl: true });
    let work = Workdir::new();
    let url = cluster.url_with(
        "postgres",
        "postgres",
        Cluster::PASSWORD,
        "sslmode=verify-full",
    );
    let run = work.run(&["export", "--dry-run"], &[("SUPABASE_DB_URL", &url)]);
    run.expect_code(2);
    assert!(run.stderr.contains("sslmode=verify-full"), "{}", run.stderr);
    assert!(run.stderr.contains("sslrootcert="), "{}", run.stderr);
    assert!(!run.stderr.contains(Cluster::PASSWORD), "{}", run.stderr);
}

#[test]
fn the_transaction_pooler_port_is_refused_with_the_direct_url() {
    let work = Workdir::new();
    let url = "postgresql://postgres.abcdefghij:pooler-Secret-9@aws-0-eu-central-1.pooler.supabase.com:6543/postgres";
    let run = work.run(&["export", "--dry-run"], &[("SUPABASE_DB_URL", url)]);
    run.expect_code(2);
    assert!(run.stderr.contains("transaction pooler"), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("postgresql://postgres:<password>@db.abcdefghij.supabase.co:5432/postgres"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("pooler-Secret-9"), "{}", run.stderr);
    assert!(!work.log().contains("pooler-Secret-9"));
}

#[test]
fn a_wrong_password_is_explained_and_never_printed_or_logged() {
    let cluster = Cluster::start();
    let work = Workdir::new();
    let wrong = "Wr0ng:p@ss/word%-9";
    let url = cluster.url_with("postgres", "postgres", wrong, "sslmode=disable");
    let run = work.run(
        &["export", "--dry-run", "-vv"],
        &[("SUPABASE_DB_URL", &url)],
    );
    run.expect_code(2);
    let port = format!("port={}", cluster.port());
    for fragment in [
        "source database",
        "host=127.0.0.1",
        port.as_str(),
        "database=postgres",
        "user=postgres",
        "password authentication failed",
        "check the password in SUPABASE_DB_URL",
    ] {
        assert!(
            run.stderr.contains(fragment),
            "missing {fragment:?} in:\n{}",
            run.stderr
        );
    }
    let log = work.log();
    assert!(
        log.contains("password authentication failed"),
        "the error is not in the log file:\n{log}"
    );
    for secret in [wrong.to_string(), percent_encode(wrong)] {
        assert!(
            !run.stderr.contains(&secret),
            "password on the console:\n{}",
            run.stderr
        );
        assert!(!run.stdout.contains(&secret));
        assert!(!log.contains(&secret), "password in the log file:\n{log}");
    }
}

#[test]
fn the_log_file_is_json_lines_and_private() {
    let cluster = Cluster::start();
    let work = Workdir::new();
    let url = cluster.url_with(
        "postgres",
        "postgres",
        "not-the-password",
        "sslmode=disable",
    );
    work.run(&["export", "--dry-run"], &[("SUPABASE_DB_URL", &url)])
        .expect_code(2);
    let log = work.log();
    assert!(!log.trim().is_empty(), "nothing logged");
    for line in log.lines() {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        assert!(value["timestamp"].is_string(), "{line}");
        assert!(value["level"].is_string(), "{line}");
    }
    assert!(
        log.lines().any(|l| l.contains("\"level\":\"ERROR\"")),
        "{log}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(work.log_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "log file mode {mode:o}");
}

#[tokio::test]
async fn the_source_session_is_read_only_and_the_target_is_not() {
    let cluster = Cluster::start();
    let source = DbUrl::parse(Side::Source, &cluster.url("postgres")).unwrap();
    let client = connect::connect(&source, &options()).await.unwrap();
    let err = client
        .batch_execute("CREATE TABLE must_not_exist (id int)")
        .await
        .unwrap_err();
    assert_eq!(
        err.as_db_error().map(|e| e.code().code()),
        Some("25006"),
        "expected read_only_sql_transaction, got {err}"
    );
    let target = DbUrl::parse(Side::Target, &cluster.url("postgres")).unwrap();
    let client = connect::connect(&target, &options()).await.unwrap();
    client
        .batch_execute("CREATE TABLE may_exist (id int)")
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_server_names_host_and_port() {
    // Bind and drop a listener to find a port where nothing listens.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!(
        "postgresql://postgres:x-secret-1@127.0.0.1:{port}/postgres?sslmode=disable&connect_timeout=1"
    );
    let err = connect_err(&url).await;
    assert!(err.contains(&format!("port={port}")), "{err}");
    assert!(err.contains("nothing accepts connections"), "{err}");
    assert!(!err.contains("x-secret-1"), "{err}");
}

#[test]
fn a_missing_source_url_says_which_variable_to_set() {
    let work = Workdir::new();
    let run = work.run(&["export", "--dry-run"], &[]);
    run.expect_code(2);
    assert!(run.stderr.contains("SUPABASE_DB_URL"), "{}", run.stderr);
}

#[test]
fn the_env_file_is_read_and_the_environment_wins() {
    let cluster = Cluster::start();
    let work = Workdir::new();
    // The .env points at the running cluster; a bad LOG_FILE_PATH in the real environment wins.
    std::fs::write(
        work.path().join(".env"),
        format!(
            "SUPABASE_DB_URL={}\nLOG_FILE_PATH=from-dotenv.log\n",
            cluster.url("postgres")
        ),
    )
    .unwrap();
    let run = work.run(
        &["export", "--dry-run", "--skip-auth"],
        &[("LOG_FILE_PATH", "from-env.log")],
    );
    // The cluster has no FreshTrack tables: the dry run works and reports them missing (exit 1).
    run.expect_code(1);
    assert!(work.path().join("from-env.log").exists());
    assert!(!work.path().join("from-dotenv.log").exists());

    let run = work.run(&["--env-file", "missing.env", "export", "--dry-run"], &[]);
    run.expect_code(2);
    assert!(run.stderr.contains("missing.env"), "{}", run.stderr);
}
