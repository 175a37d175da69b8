//! `fmig migrate-users` against the Stack Auth emulator, with users from a real `fmig export` of
//! a seeded Supabase-shaped cluster: every category, passwords that still verify, re-runs that
//! create nothing, fault storms, bad credentials, conflicts, and kill -9 at random moments.

#[path = "support/stack_auth_emulator.rs"]
mod emulator;
mod support;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use emulator::{Config, Emulator, Faults, StoredUser};
use serde_json::Value;
use support::cli::{Run, Workdir};
use support::cluster::Cluster;
use support::seed::{self, SeedConfig, SeededUser};

/// Providers configured in the emulated project: `discord` is left out on purpose, so the
/// seed's discord identities are "provider not configured".
const PROVIDERS: &str = "google,github,microsoft,linkedin,x";

struct Fixture {
    /// auth_users.json exactly as `fmig export` wrote it.
    auth_users: String,
    users: Vec<SeededUser>,
}

/// One seeded cluster and one real export per test binary; the cluster is stopped as soon as
/// the file is read.
fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let cluster = Cluster::start();
        seed::load_source_schema(&cluster, "postgres");
        let summary = seed::seed_source(
            &cluster,
            "postgres",
            &SeedConfig {
                users_per_category: 12,
                sensor_readings: 10,
                ..SeedConfig::default()
            },
        );
        let work = Workdir::new();
        work.run(
            &["export", "--table", "organizations", "--output-dir", "data"],
            &[("SUPABASE_DB_URL", &cluster.url("postgres"))],
        )
        .expect_code(0);
        let auth_users =
            std::fs::read_to_string(work.path().join("data/auth_users.json")).expect("export");
        Fixture {
            auth_users,
            users: summary.seeded_users,
        }
    })
}

/// What the default rules (with [`PROVIDERS`]) must do with a seeded user.
fn expected_category(u: &SeededUser) -> &'static str {
    match u.category {
        "password" | "upper_case_email" => "password",
        "oauth" if u.identities.iter().any(|(p, _)| p == "discord") => "provider_not_configured",
        "oauth" => "oauth",
        "magic_link" => "email_only",
        "invalid_hash" => "invalid_hash",
        "phone" | "anonymous" | "sso" | "banned" | "soft_deleted" | "idn_email" => "skipped",
        other => panic!("unknown seed category {other}"),
    }
}

fn migratable(f: &Fixture) -> Vec<&SeededUser> {
    f.users
        .iter()
        .filter(|u| expected_category(u) != "skipped")
        .collect()
}

/// A work directory with the export's auth_users.json in `data/` (all users, or the first `n`
/// migratable ones).
fn workdir(only: Option<usize>) -> Workdir {
    let f = fixture();
    let work = Workdir::new();
    std::fs::create_dir(work.path().join("data")).unwrap();
    let text = match only {
        None => f.auth_users.clone(),
        Some(n) => {
            let keep: BTreeSet<&str> = migratable(f)
                .iter()
                .take(n)
                .map(|u| u.id.as_str())
                .collect();
            let all: Vec<Value> = serde_json::from_str(&f.auth_users).unwrap();
            let kept: Vec<Value> = all
                .into_iter()
                .filter(|u| keep.contains(u["id"].as_str().unwrap()))
                .collect();
            serde_json::to_string(&kept).unwrap()
        }
    };
    std::fs::write(work.path().join("data/auth_users.json"), text).unwrap();
    work
}

fn emulator_with(faults: Faults) -> Emulator {
    Emulator::start_with(
        Config {
            oauth_providers: PROVIDERS.split(',').map(String::from).collect(),
            ..Config::default()
        },
        faults,
    )
}

fn migrate(work: &Workdir, emu: &Emulator, extra: &[&str]) -> Run {
    let env = emu.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec![
        "migrate-users",
        "--export-dir",
        "data",
        "--oauth-providers",
        PROVIDERS,
    ];
    args.extend_from_slice(extra);
    work.run(&args, &env)
}

/// `fmig migrate-users` on `data/` with the project's providers and `concurrency` workers.
fn migrate_args(concurrency: &'static str) -> [&'static str; 7] {
    [
        "migrate-users",
        "--export-dir",
        "data",
        "--oauth-providers",
        PROVIDERS,
        "--concurrency",
        concurrency,
    ]
}

/// Stack Auth users by `supabase_user_id`; panics on a Supabase user created twice.
fn by_supabase_id(emu: &Emulator) -> BTreeMap<String, StoredUser> {
    let mut map = BTreeMap::new();
    for u in emu.users() {
        let id = u
            .supabase_user_id()
            .unwrap_or_else(|| panic!("user {} has no supabase_user_id", u.id))
            .to_string();
        if let Some(other) = map.insert(id.clone(), u.clone()) {
            panic!(
                "Supabase user {id} exists twice in Stack Auth: {} and {}",
                other.id, u.id
            );
        }
    }
    map
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn load_mapping(work: &Workdir) -> Value {
    let text = std::fs::read_to_string(work.path().join("data/user-mapping.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// Exactly one Stack Auth user per migratable Supabase user, none for the others, and a
/// mapping that names each of them.
fn assert_complete(work: &Workdir, emu: &Emulator, users: &[&SeededUser]) {
    let stored = by_supabase_id(emu);
    let expected: BTreeSet<&str> = users.iter().map(|u| u.id.as_str()).collect();
    let got: BTreeSet<&str> = stored.keys().map(String::as_str).collect();
    assert_eq!(
        got, expected,
        "Stack Auth users differ from the migratable ones"
    );
    assert_eq!(emu.users().len(), expected.len());
    let mapping = load_mapping(work);
    let pairs: BTreeMap<&str, &str> = mapping["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["supabaseUserId"].as_str().unwrap(),
                m["stackAuthUserId"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(pairs.len(), expected.len(), "mapping size");
    for (sup, user) in &stored {
        assert_eq!(
            pairs.get(sup.as_str()),
            Some(&user.id.as_str()),
            "mapping of {sup}"
        );
    }
}

#[test]
fn every_category_migrates_by_the_rules_and_a_rerun_creates_nothing() {
    let f = fixture();
    let emu = emulator_with(Faults::default());
    let work = workdir(None);
    let run = migrate(&work, &emu, &[]);
    run.expect_code(0);
    let expected = migratable(f);
    assert_complete(&work, &emu, &expected);

    let exported: Vec<Value> = serde_json::from_str(&f.auth_users).unwrap();
    let exported: HashMap<&str, &Value> = exported
        .iter()
        .map(|u| (u["id"].as_str().unwrap(), u))
        .collect();
    let stored = by_supabase_id(&emu);
    let mut verified_passwords = 0;
    let mut totp_users = 0;
    for u in &expected {
        let s = &stored[&u.id];
        let row = exported[u.id.as_str()];
        assert_eq!(
            s.primary_email.as_deref(),
            u.email.as_deref().map(str::to_lowercase).as_deref(),
            "{}",
            u.id
        );
        assert_eq!(
            s.primary_email_verified,
            !row["email_confirmed_at"].is_null(),
            "verification of {}",
            u.id
        );
        assert!(s.primary_email_auth_enabled);
        match expected_category(u) {
            "password" => {
                let hash = u.encrypted_password.as_deref().unwrap();
                assert_eq!(s.password_hash.as_deref(), Some(hash), "hash of {}", u.id);
                if let Some(password) = u.password {
                    assert!(
                        bcrypt::verify(password, s.password_hash.as_deref().unwrap()).unwrap(),
                        "the old password of {} no longer verifies",
                        u.id
                    );
                    verified_passwords += 1;
                }
            }
            _ => assert_eq!(s.password_hash, None, "{} should have no password", u.id),
        }
        let want: BTreeSet<(String, String)> = u
            .identities
            .iter()
            .filter(|(p, _)| !matches!(p.as_str(), "email" | "phone" | "discord"))
            .map(|(p, id)| {
                let p = match p.as_str() {
                    "azure" => "microsoft",
                    "linkedin_oidc" => "linkedin",
                    "twitter" => "x",
                    other => other,
                };
                (p.to_string(), id.clone())
            })
            .collect();
        let got: BTreeSet<(String, String)> = s
            .oauth_providers
            .iter()
            .map(|p| {
                (
                    p["id"].as_str().unwrap().to_string(),
                    p["account_id"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(got, want, "OAuth accounts of {}", u.id);
        // A verified TOTP factor is carried: the code the user's authenticator app shows
        // (computed here from the Supabase secret) is the one Stack Auth expects.
        match u.carried_totp() {
            Some(secret) => {
                let bytes = totp_rs::Secret::Encoded(secret.to_string())
                    .to_bytes()
                    .unwrap();
                let app = totp_rs::TOTP::new_unchecked(totp_rs::Algorithm::SHA1, 6, 1, 30, bytes);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                assert_eq!(
                    s.totp_code(now),
                    Some(app.generate(now)),
                    "TOTP of {}",
                    u.id
                );
                totp_users += 1;
            }
            None => assert_eq!(s.totp_secret, None, "{} should have no TOTP", u.id),
        }
        assert_eq!(
            s.server_metadata["supabase_app_metadata"], row["raw_app_meta_data"],
            "app metadata of {} (big integers included)",
            u.id
        );
    }
    assert_eq!(verified_passwords, seed::KNOWN_BCRYPT.len());
    assert_eq!(totp_users, 1, "the fixture's TOTP user");
    assert!(
        run.stdout.contains(
            "Two-factor authentication: 1 users keep their TOTP authenticator; 2 had 2FA"
        ),
        "{}",
        run.stdout
    );

    // Files: private, in the spec's format.
    let dir = work.path().join("data");
    for name in [
        "user-mapping.json",
        "password-reset-needed.csv",
        "users-needing-attention.csv",
        "user-migration.journal.jsonl",
    ] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    let mapping = load_mapping(&work);
    let generated =
        chrono::DateTime::parse_from_rfc3339(mapping["generatedAt"].as_str().unwrap()).unwrap();
    let retain =
        chrono::DateTime::parse_from_rfc3339(mapping["retainUntil"].as_str().unwrap()).unwrap();
    assert_eq!((retain - generated).num_days(), 90);
    let keys: BTreeSet<&str> = mapping["mappings"][0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["supabaseUserId", "stackAuthUserId", "email", "migratedAt"])
    );
    let csv = std::fs::read_to_string(dir.join("password-reset-needed.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("id,email,reason"));
    let in_csv: BTreeSet<&str> = lines.map(|l| l.split(',').next().unwrap()).collect();
    let want_csv: BTreeSet<&str> = expected
        .iter()
        .filter(|u| {
            matches!(expected_category(u), "email_only" | "invalid_hash")
                || (expected_category(u) == "provider_not_configured" && u.identities.len() == 1)
        })
        .map(|u| u.id.as_str())
        .collect();
    assert_eq!(in_csv, want_csv, "{csv}");

    // Everyone who needs attention is in the CSV, with the reason; the console names the first
    // few of each category and counts the rest.
    let attention = std::fs::read_to_string(dir.join("users-needing-attention.csv")).unwrap();
    assert_eq!(attention.lines().next(), Some("category,id,email,details"));
    for u in f
        .users
        .iter()
        .filter(|u| !matches!(expected_category(u), "password" | "oauth"))
    {
        assert!(
            attention.contains(&u.id),
            "{} ({}) not in users-needing-attention.csv:\n{attention}",
            u.id,
            u.category,
        );
    }
    // Users whose second factor cannot be carried are named, with what they must do.
    let lost: Vec<&SeededUser> = f.users.iter().filter(|u| u.loses_2fa()).collect();
    assert_eq!(lost.len(), 2);
    for u in lost {
        let line = attention
            .lines()
            .find(|l| l.contains(&u.id))
            .unwrap_or_else(|| panic!("{} lost 2FA but is not in the CSV:\n{attention}", u.id));
        assert!(line.contains("must enrol again"), "{line}");
    }
    // The secrets are nowhere in the files or the output.
    let secret = f.users.iter().find_map(|u| u.carried_totp()).unwrap();
    assert!(!run.stdout.contains(secret) && !run.stderr.contains(secret));
    assert!(!attention.contains(secret) && !work.log().contains(secret));
    let categories: BTreeSet<&str> = attention
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let named = f
        .users
        .iter()
        .filter(|u| run.stdout.contains(&u.id))
        .count();
    assert!(
        named <= 5 * categories.len(),
        "{named} users named on the console:\n{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("more") && run.stdout.contains("users-needing-attention.csv"),
        "{}",
        run.stdout
    );
    for label in [
        "SSO (SAML)",
        "anonymous",
        "banned",
        "soft-deleted",
        "no e-mail and no OAuth",
        "e-mail rejected by Stack Auth",
        "invalid password hash",
        "OAuth provider not configured",
        "internationalised domain",
    ] {
        assert!(
            run.stdout.contains(label),
            "{label} missing:\n{}",
            run.stdout
        );
    }
    // Secrets stay out of the log and the console.
    let log = work.log();
    assert!(log.contains("migrate-users summary"), "{log}");
    for u in &f.users {
        if let Some(h) = u.encrypted_password.as_deref().filter(|h| h.len() > 20) {
            assert!(!log.contains(h) && !run.stdout.contains(h) && !run.stderr.contains(h));
        }
    }
    assert!(!log.contains(emulator::SECRET_KEY));

    // A re-run finds everyone and creates nothing.
    let creates = emu.counts().creates;
    let again = migrate(&work, &emu, &[]);
    again.expect_code(0);
    assert_eq!(emu.counts().creates, creates, "a re-run sent creates");
    assert!(again.stdout.contains("\n0 created"), "{}", again.stdout);
    assert_complete(&work, &emu, &expected);

    // The support workflow.
    let pw = expected.iter().find(|u| u.category == "password").unwrap();
    let new_id = stored[&pw.id].id.clone();
    let run = work.run(
        &[
            "mapping",
            "lookup",
            &pw.email.clone().unwrap().to_uppercase(),
            "--export-dir",
            "data",
        ],
        &[],
    );
    run.expect_code(0);
    assert!(
        run.stdout.contains(&new_id) && run.stdout.contains(&pw.id),
        "{}",
        run.stdout
    );
    let run = work.run(
        &[
            "mapping",
            "lookup",
            &new_id,
            "--export-dir",
            "data",
            "--json",
        ],
        &[],
    );
    run.expect_code(0);
    let found: Vec<Value> = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(found[0]["supabaseUserId"], pw.id.as_str());
    work.run(
        &[
            "mapping",
            "lookup",
            "nobody@nowhere.example",
            "--export-dir",
            "data",
        ],
        &[],
    )
    .expect_code(1);
    let refused = work.run(&["mapping", "prune", "--export-dir", "data"], &[]);
    refused.expect_code(1);
    assert!(refused.stdout.contains("--force"), "{}", refused.stdout);
    assert!(dir.join("user-mapping.json").exists());
    work.run(
        &["mapping", "prune", "--export-dir", "data", "--force"],
        &[],
    )
    .expect_code(0);
    for name in [
        "user-mapping.json",
        "password-reset-needed.csv",
        "users-needing-attention.csv",
        "user-migration.journal.jsonl",
        "user-migration.choices.json",
    ] {
        assert!(!dir.join(name).exists(), "{name} survived prune");
    }
    assert!(
        dir.join("auth_users.json").exists(),
        "prune touched the export"
    );
}

#[test]
fn dry_run_prints_the_plan_masks_hashes_and_writes_nothing() {
    let emu = emulator_with(Faults::default());
    let work = workdir(None);
    let run = migrate(&work, &emu, &["--dry-run"]);
    run.expect_code(0);
    let counts = emu.counts();
    assert_eq!(counts.creates, 0);
    assert!(counts.lists <= 1, "{counts:?}");
    assert!(run.stdout.contains("credentials OK"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("\"password_hash\": \"$2a$10$********\""),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("\"supabase_user_id\""),
        "{}",
        run.stdout
    );
    for u in &fixture().users {
        if let Some(h) = u.encrypted_password.as_deref().filter(|h| h.len() > 20) {
            assert!(!run.stdout.contains(h), "a hash was printed");
        }
    }
    let names: Vec<String> = std::fs::read_dir(work.path().join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["auth_users.json"], "the dry run wrote files");

    // Without credentials it still plans, and says it did not check them.
    let run = work.run(&["migrate-users", "--export-dir", "data", "--dry-run"], &[]);
    run.expect_code(0);
    assert!(
        run.stderr.contains("credentials not checked"),
        "{}",
        run.stderr
    );
}

#[test]
fn bad_credentials_stop_at_once_and_never_show_the_key() {
    let emu = emulator_with(Faults::default());
    let work = workdir(None);
    let wrong_key = "ssk_wrong_key_4f1e2d3c";
    let url = emu.url();
    for (project, key, expect) in [
        (emulator::PROJECT_ID, wrong_key, "INVALID_SECRET_SERVER_KEY"),
        (
            "00000000-0000-4000-8000-000000000000",
            emulator::SECRET_KEY,
            "CURRENT_PROJECT_NOT_FOUND",
        ),
    ] {
        let started = Instant::now();
        let run = work.run(
            &["migrate-users", "--export-dir", "data"],
            &[
                ("STACK_AUTH_API_URL", url.as_str()),
                ("STACK_AUTH_PROJECT_ID", project),
                ("STACK_AUTH_SECRET_KEY", key),
            ],
        );
        run.expect_code(2);
        assert!(started.elapsed() < Duration::from_secs(10), "not at once");
        assert!(run.stderr.contains(expect), "{}", run.stderr);
        assert!(
            run.stderr.contains("STACK_AUTH_SECRET_KEY"),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains(wrong_key) && !work.log().contains(wrong_key));
    }
    assert_eq!(emu.counts().creates, 0);
    assert!(emu.counts().unauthorized <= 2, "{:?}", emu.counts());

    // Not Stack Auth at all: a 404 from another server is fatal too.
    let run = work.run(
        &["migrate-users", "--export-dir", "data"],
        &[
            ("STACK_AUTH_API_URL", &format!("{url}/not-here")),
            ("STACK_AUTH_PROJECT_ID", emulator::PROJECT_ID),
            ("STACK_AUTH_SECRET_KEY", emulator::SECRET_KEY),
        ],
    );
    run.expect_code(2);
    assert!(run.stderr.contains("STACK_AUTH_API_URL"), "{}", run.stderr);
}

#[test]
fn a_key_revoked_mid_run_stops_at_once_and_keeps_the_mapping_of_those_created() {
    use std::io::Read;
    let f = fixture();
    let emu = emulator_with(Faults {
        latency: Duration::from_millis(50),
        ..Faults::default()
    });
    let work = workdir(None);
    let env = emu.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = migrate_args("2");
    let mut child = work
        .command(&args, &env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while emu.users().len() < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    emu.set_secret_key("ssk_rotated_by_an_admin_0000");
    let rotated = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            rotated.elapsed() < Duration::from_secs(20),
            "fmig kept going with a revoked key"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let stopped_after = rotated.elapsed();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stopped_after < Duration::from_secs(3), "{stopped_after:?}");
    assert!(stderr.contains("INVALID_SECRET_SERVER_KEY"), "{stderr}");
    let created = emu.users().len();
    assert!(
        created < migratable(f).len(),
        "the run finished before the key was revoked"
    );
    // Everyone whose answer arrived is in the mapping; at most the requests in flight are not.
    let mapping = load_mapping(&work);
    let mapped = mapping["mappings"].as_array().unwrap().len();
    assert!(
        mapped <= created && mapped + 2 >= created,
        "{mapped} mapped, {created} created"
    );

    emu.set_secret_key(emulator::SECRET_KEY);
    migrate(&work, &emu, &[]).expect_code(0);
    assert_complete(&work, &emu, &migratable(f));
}

#[test]
fn storms_of_429_with_and_without_retry_after_and_5xx_are_ridden_out() {
    let f = fixture();
    let emu = emulator_with(Faults {
        latency: Duration::from_millis(2),
        rate_429: 0.3,
        retry_after_share: 0.5,
        retry_after_secs: 1,
        rate_5xx: 0.15,
        ..Faults::default()
    });
    let work = workdir(None);
    let run = migrate(&work, &emu, &["--backoff-ms", "20", "--max-attempts", "20"]);
    run.expect_code(0);
    assert_complete(&work, &emu, &migratable(f));
    let c = emu.counts();
    assert!(c.rate_limited_with_retry_after > 0, "{c:?}");
    assert!(c.rate_limited > c.rate_limited_with_retry_after, "{c:?}");
    assert!(c.server_errors > 0, "{c:?}");
}

#[test]
fn lost_answers_are_reconciled_not_created_twice() {
    let f = fixture();
    // Connections dropped right after the user was stored.
    let emu = emulator_with(Faults {
        drop_after_create: 0.35,
        ..Faults::default()
    });
    let work = workdir(None);
    migrate(&work, &emu, &["--backoff-ms", "10"]).expect_code(0);
    assert!(emu.counts().dropped > 0);
    assert_complete(&work, &emu, &migratable(f));

    // A server slower than the client's timeout: every create times out, yet each user exists.
    let emu = emulator_with(Faults {
        delay_after_create: Duration::from_millis(2500),
        ..Faults::default()
    });
    let work = workdir(Some(4));
    let run = migrate(
        &work,
        &emu,
        &["--request-timeout", "1", "--backoff-ms", "10"],
    );
    run.expect_code(0);
    assert_eq!(emu.counts().creates, 4, "{:?}", emu.counts());
    let some: Vec<&SeededUser> = migratable(f).into_iter().take(4).collect();
    assert_complete(&work, &emu, &some);
}

#[test]
fn an_existing_account_with_the_same_email_is_a_conflict_until_adopted() {
    let f = fixture();
    let emu = emulator_with(Faults::default());
    let victim = migratable(f)
        .into_iter()
        .find(|u| u.category == "password")
        .unwrap();
    let email = victim.email.clone().unwrap();
    let existing = emu.insert_user(serde_json::json!({
        "primary_email": email,
        "primary_email_verified": true,
        "primary_email_auth_enabled": true,
        "display_name": "signed up on the new app already",
    }));
    let work = workdir(None);
    let run = migrate(&work, &emu, &[]);
    run.expect_code(1);
    assert!(run.stdout.contains("CONFLICT"), "{}", run.stdout);
    assert!(run.stdout.contains(&existing) && run.stdout.contains("--adopt-existing"));
    let same: Vec<StoredUser> = emu
        .users()
        .into_iter()
        .filter(|u| u.primary_email.as_deref() == Some(email.to_lowercase().as_str()))
        .collect();
    assert_eq!(same.len(), 1, "the conflict was duplicated");
    let mapping = load_mapping(&work);
    let mapped = mapping["mappings"].as_array().unwrap();
    assert_eq!(mapped.len(), migratable(f).len() - 1);
    assert!(
        mapped
            .iter()
            .all(|m| m["supabaseUserId"] != victim.id.as_str())
    );

    let run = migrate(&work, &emu, &["--adopt-existing"]);
    run.expect_code(0);
    let mapping = load_mapping(&work);
    let adopted = mapping["mappings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["supabaseUserId"] == victim.id.as_str())
        .expect("adopted user mapped");
    assert_eq!(adopted["stackAuthUserId"], existing.as_str());
    assert_eq!(emu.users().len(), migratable(f).len());
    // The adopted account is explained by the journal, and only its e-mail is fmig's to check.
    let run = verify_users(&work, &emu, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
}

#[test]
fn a_migrated_user_deleted_in_stack_auth_is_noticed_and_created_again() {
    let f = fixture();
    let emu = emulator_with(Faults::default());
    let work = workdir(Some(5));
    migrate(&work, &emu, &[]).expect_code(0);
    let some: Vec<&SeededUser> = migratable(f).into_iter().take(5).collect();
    let gone = by_supabase_id(&emu)[&some[0].id].id.clone();
    emu.delete_user(&gone);
    let run = migrate(&work, &emu, &[]);
    // Recreated and mapped, but a human should know someone deleted a migrated account.
    run.expect_code(1);
    assert!(
        run.stdout.contains(&gone) && run.stdout.contains("no longer exists"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("\n1 created"), "{}", run.stdout);
    assert_complete(&work, &emu, &some);
    assert_ne!(by_supabase_id(&emu)[&some[0].id].id, gone);
    let journal =
        std::fs::read_to_string(work.path().join("data/user-migration.journal.jsonl")).unwrap();
    assert_eq!(
        journal.matches("\"event\":\"missing\"").count(),
        1,
        "{journal}"
    );
    migrate(&work, &emu, &[]).expect_code(0);
}

/// Kills fmig with SIGKILL and waits for it.
fn kill_9(mut child: std::process::Child) {
    child.kill().expect("kill -9");
    child.wait().expect("reap");
}

#[test]
fn kill_9_at_random_moments_then_a_rerun_leaves_one_user_each_and_a_complete_mapping() {
    let f = fixture();
    let users = migratable(f);
    let latency = Duration::from_millis(100);
    let emu = emulator_with(Faults {
        latency,
        stall_after_create: true,
        ..Faults::default()
    });
    let work = workdir(None);
    let env = emu.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = |concurrency: &'static str| {
        [&migrate_args(concurrency)[..], &["--backoff-ms", "10"]].concat()
    };
    let spawn = |concurrency: &'static str| {
        work.command(&args(concurrency), &env)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fmig")
    };

    // Exactly between "the server created the user" and "fmig recorded it": the emulator
    // stores the users and holds the answers back; fmig dies waiting for them.
    let child = spawn("3");
    let deadline = Instant::now() + Duration::from_secs(60);
    while emu.stalled() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(emu.stalled(), 3, "the creates did not reach the server");
    kill_9(child);
    let stalled_users = emu.users().len();
    emu.release();

    // Then at random moments, the last two rounds losing half the answers as well.
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut random_ms = |lo: u64, hi: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        lo + seed % (hi - lo)
    };
    let mut kills = Vec::new();
    for round in 0..4 {
        emu.set_faults(Faults {
            latency,
            drop_after_create: if round >= 2 { 0.5 } else { 0.0 },
            ..Faults::default()
        });
        let before = emu.users().len();
        let child = spawn("2");
        let wait = random_ms(150, 900);
        std::thread::sleep(Duration::from_millis(wait));
        kill_9(child);
        kills.push((wait, emu.users().len() - before));
    }
    emu.set_faults(Faults::default());

    // A torn last journal line, as a kill in the middle of a write leaves it.
    let journal = work.path().join("data/user-migration.journal.jsonl");
    let mut text = std::fs::read_to_string(&journal).expect("the journal exists");
    text.push_str("{\"event\":\"created\",\"projectId\":\"");
    std::fs::write(&journal, text).unwrap();

    let run = work.run(&args("4"), &env);
    run.expect_code(0);
    assert!(
        run.stderr.contains("last line was incomplete"),
        "{}",
        run.stderr
    );
    assert_complete(&work, &emu, &users);
    let journal = std::fs::read_to_string(&journal).unwrap();
    for (i, line) in journal.lines().enumerate() {
        serde_json::from_str::<Value>(line)
            .unwrap_or_else(|e| panic!("journal line {} is damaged: {e}: {line}", i + 1));
    }
    // Stack Auth holds exactly what the plan says, field by field.
    let run = verify_users(&work, &emu, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let reconciled = journal.matches("\"event\":\"reconciled\"").count();
    assert!(
        reconciled >= stalled_users,
        "{stalled_users} users created during the stall, {reconciled} reconciled; kills: {kills:?}"
    );
    eprintln!(
        "{} users; stalled then killed: {stalled_users}; kills (ms after start, users created): {kills:?}; reconciled on the last run: {reconciled}",
        users.len()
    );
}

#[test]
fn a_second_run_on_the_same_directory_exits_2_naming_the_first_and_a_killed_one_frees_it() {
    let f = fixture();
    let emu = emulator_with(Faults {
        stall_after_create: true,
        ..Faults::default()
    });
    let work = workdir(None);
    let env = emu.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = migrate_args("1");
    let first = work
        .command(&args, &env)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn fmig");
    let deadline = Instant::now() + Duration::from_secs(60);
    while emu.stalled() < 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(emu.stalled(), 1, "the first run did not reach the server");
    let created = emu.users().len();

    let started = Instant::now();
    let second = work.run(&args, &env);
    assert_eq!(second.code, 2, "{}\n{}", second.stdout, second.stderr);
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        second.stderr.contains("another fmig run is using data")
            && second
                .stderr
                .contains(&format!("fmig migrate-users pid {}", first.id())),
        "{}",
        second.stderr
    );
    assert_eq!(emu.users().len(), created, "the refused run created users");

    // kill -9 of the holder frees the directory; the next run completes the migration.
    kill_9(first);
    emu.set_faults(Faults::default());
    emu.release();
    let next = work.run(&args, &env);
    assert_eq!(next.code, 0, "{}\n{}", next.stdout, next.stderr);
    assert_complete(&work, &emu, &migratable(f));
}

/// The "total" row of a run's summary: (users, created, already there).
fn totals(run: &Run) -> (u64, u64, u64) {
    let line = run
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with("total "))
        .unwrap_or_else(|| panic!("no total row:\n{}", run.stdout));
    let n: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.replace(',', "").parse().unwrap())
        .collect();
    (n[0], n[1], n[2])
}

#[test]
fn two_runs_from_different_directories_count_each_user_created_once() {
    // Two copies of the export (the directory lock cannot see one from the other) against one
    // project at the same time: each user is created once, and a user the other run created is
    // "already there", never "created" (it used to be counted by both).
    let f = fixture();
    let users = migratable(f);
    let emu = emulator_with(Faults {
        latency: Duration::from_millis(15),
        ..Faults::default()
    });
    let (a, b) = (workdir(None), workdir(None));
    let env = emu.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let args = migrate_args("4");
    let spawn = |w: &Workdir| {
        w.command(&args, &env)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fmig")
    };
    let (first, second) = (spawn(&a), spawn(&b));
    let runs: Vec<Run> = [first, second]
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            Run {
                code: out.status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            }
        })
        .collect();
    for run in &runs {
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    }
    let stored = by_supabase_id(&emu);
    assert_eq!(stored.len(), users.len());
    let (ta, tb) = (totals(&runs[0]), totals(&runs[1]));
    assert_eq!(
        ta.1 + tb.1,
        users.len() as u64,
        "created counted twice: {ta:?} {tb:?}\n{}\n{}",
        runs[0].stdout,
        runs[1].stdout
    );
    assert_eq!(ta.1 + ta.2, users.len() as u64, "{ta:?}");
    assert_eq!(tb.1 + tb.2, users.len() as u64, "{tb:?}");
}

#[test]
fn sign_in_with_migrated_accounts_succeeds_names_refusals_and_spots_totp() {
    let f = fixture();
    let emu = emulator_with(Faults::default());
    let work = workdir(None);
    migrate(&work, &emu, &[]).expect_code(0);

    // Users with their plaintext passwords (the seed's known hashes); one of them has TOTP.
    let known: Vec<&SeededUser> = f
        .users
        .iter()
        .filter(|u| u.password.is_some() && expected_category(u) == "password")
        .collect();
    assert!(known.len() >= 2);
    let totp = known
        .iter()
        .find(|u| u.carried_totp().is_some())
        .expect("a TOTP user with a known password");
    let plain = known
        .iter()
        .find(|u| u.carried_totp().is_none() && !u.loses_2fa())
        .expect("a password user without 2FA");
    let wrong_password = "not-the-password, with a comma";
    let csv = format!(
        "email,password\n{},{}\n{},{}\n{},\"{}\"\n",
        plain.email.as_deref().unwrap(),
        plain.password.unwrap(),
        totp.email.as_deref().unwrap(),
        totp.password.unwrap(),
        plain.email.as_deref().unwrap(),
        wrong_password
    );
    let path = work.path().join("accounts.csv");
    std::fs::write(&path, &csv).unwrap();
    let env = emu.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let verify = |extra: &[&str]| {
        let mut args = vec!["verify", "--export-dir", "data", "--only", "sign-in"];
        args.extend_from_slice(extra);
        work.run(&args, &env)
    };

    // The file holds passwords: refused unless private.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let run = verify(&["--sign-in", "accounts.csv"]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("chmod 600"), "{}", run.stderr);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

    let run = verify(&["--sign-in", "accounts.csv"]);
    // The wrong password is refused: exit 1, with Stack Auth's reason.
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(work.path().join("data/verification-report.json")).unwrap(),
    )
    .unwrap();
    let results = report["sign_in"].as_array().unwrap();
    assert_eq!(results.len(), 3, "{report:#}");
    assert_eq!(results[0]["ok"], true);
    assert_eq!(results[0]["outcome"], "signed in");
    assert_eq!(results[1]["ok"], true);
    assert_eq!(results[1]["outcome"], "password accepted, TOTP required");
    assert_eq!(results[2]["ok"], false);
    assert_eq!(results[2]["code"], "EMAIL_PASSWORD_MISMATCH");
    assert!(
        run.stdout.contains("2 of 3 accounts signed in; 1 refused"),
        "{}",
        run.stdout
    );
    // No password anywhere it could be read.
    for secret in [
        plain.password.unwrap(),
        totp.password.unwrap(),
        wrong_password,
    ] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{secret}"
        );
        assert!(!work.log().contains(secret), "{secret} in the log");
        assert!(
            !report.to_string().contains(secret),
            "{secret} in the report"
        );
    }
    // Every account right: exit 0.
    std::fs::write(&path, csv.lines().take(3).collect::<Vec<_>>().join("\n")).unwrap();
    let run = verify(&["--sign-in", "accounts.csv"]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
}

/// `fmig verify --only users` on `data/`.
fn verify_users(work: &Workdir, emu: &Emulator, extra: &[&str]) -> Run {
    let env = emu.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut args = vec!["verify", "--export-dir", "data", "--only", "users"];
    args.extend_from_slice(extra);
    work.run(&args, &env)
}

fn users_report(work: &Workdir) -> Value {
    let text = std::fs::read_to_string(work.path().join("data/verification-report.json")).unwrap();
    let report: Value = serde_json::from_str(&text).unwrap();
    report["users"].clone()
}

#[test]
fn verify_users_passes_after_a_clean_migration_and_names_each_broken_account() {
    let f = fixture();
    let emu = emulator_with(Faults::default());
    let work = workdir(None);
    migrate(&work, &emu, &[]).expect_code(0);

    let run = verify_users(&work, &emu, &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let report = users_report(&work);
    let creates = migratable(f).len() as u64;
    assert_eq!(report["status"], "ok", "{report:#}");
    assert_eq!(report["migratable"], creates);
    assert_eq!(report["migratable_ok"], creates);
    assert_eq!(report["skipped"], f.users.len() as u64 - creates);
    assert_eq!(report["accounts_listed"], creates);
    assert!(run.stdout.contains("users verified"), "{}", run.stdout);

    // One account broken per way it can break, each on another user.
    let stored = by_supabase_id(&emu);
    let mut taken: BTreeSet<&str> = BTreeSet::new();
    let mut pick = |what: &str, ok: &dyn Fn(&SeededUser) -> bool| -> &'static SeededUser {
        let u = f
            .users
            .iter()
            .find(|u| !taken.contains(u.id.as_str()) && ok(u))
            .unwrap_or_else(|| panic!("no seeded user for {what}"));
        taken.insert(u.id.as_str());
        u
    };
    let plain = |u: &SeededUser| {
        expected_category(u) == "password" && u.carried_totp().is_none() && !u.loses_2fa()
    };
    let deleted = pick("a deleted account", &plain);
    let doubled = pick("a second account", &plain);
    let renamed = pick("a changed e-mail", &plain);
    let no_password = pick("a lost password", &plain);
    let no_oauth = pick("a lost OAuth account", &|u| {
        expected_category(u) == "oauth" && u.carried_totp().is_none()
    });
    let no_totp = pick("a lost TOTP secret", &|u| {
        expected_category(u) != "skipped" && u.carried_totp().is_some()
    });
    let banned = pick("a skipped user", &|u| u.banned);
    emu.delete_user(&stored[&deleted.id].id);
    let second = emu.insert_user(serde_json::json!({
        "primary_email": "second-account@freshtrack.example",
        "server_metadata": {"supabase_user_id": doubled.id},
    }));
    emu.update_user(&stored[&renamed.id].id, |u| {
        u.primary_email = Some("someone-else@freshtrack.example".into())
    });
    emu.update_user(&stored[&no_password.id].id, |u| u.password_hash = None);
    emu.update_user(&stored[&no_oauth.id].id, |u| u.oauth_providers.clear());
    emu.update_user(&stored[&no_totp.id].id, |u| u.totp_secret = None);
    let for_banned = emu.insert_user(serde_json::json!({
        "display_name": "created for a banned user",
        "server_metadata": {"supabase_user_id": banned.id},
    }));
    let stranger = emu.insert_user(serde_json::json!({
        "primary_email": "stranger@elsewhere.example",
        "primary_email_auth_enabled": true,
    }));

    let run = verify_users(&work, &emu, &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    let report = users_report(&work);
    assert_eq!(report["status"], "differs");
    let problems: Vec<(String, String, String)> = report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["supabase_user_id"]
                    .as_str()
                    .or(p["stack_auth_user_id"].as_str())
                    .unwrap()
                    .to_string(),
                p["field"].as_str().unwrap().to_string(),
                format!("{} / {}", p["expected"], p["found"]),
            )
        })
        .collect();
    let expect = [
        (deleted.id.as_str(), "account"),
        (doubled.id.as_str(), "account"),
        (renamed.id.as_str(), "primary_email"),
        (no_password.id.as_str(), "has_password"),
        (no_oauth.id.as_str(), "oauth_providers"),
        (no_totp.id.as_str(), "requires_totp_mfa"),
        (banned.id.as_str(), "account"),
        (stranger.as_str(), "unexplained account"),
    ];
    let found: BTreeSet<(&str, &str)> = problems
        .iter()
        .map(|(who, field, _)| (who.as_str(), field.as_str()))
        .collect();
    assert_eq!(
        found,
        expect.iter().copied().collect::<BTreeSet<_>>(),
        "{problems:#?}"
    );
    assert_eq!(report["problems_total"], expect.len() as u64);
    assert_eq!(report["migratable_ok"], creates - 6);
    assert_eq!(report["unexplained"], 1);
    let second_problem = problems.iter().find(|p| p.0 == doubled.id).unwrap();
    assert!(second_problem.2.contains(&second), "{second_problem:?}");
    let banned_problem = problems.iter().find(|p| p.0 == banned.id).unwrap();
    assert!(
        banned_problem.2.contains("skipped") && banned_problem.2.contains(&for_banned),
        "{banned_problem:?}"
    );
    // The console names each user and field too.
    for (who, field) in expect {
        assert!(
            run.stdout
                .lines()
                .any(|l| l.contains(who) && l.contains(&format!(": {field}: "))),
            "{who} {field} not named:\n{}",
            run.stdout
        );
    }

    // The expectation comes from the export: a users file changed since migrate-users read it
    // is refused (exit 2), as is a missing mapping.
    let users_file = work.path().join("data/auth_users.json");
    let original = std::fs::read(&users_file).unwrap();
    std::fs::write(&users_file, [&original[..], b"\n"].concat()).unwrap();
    let run = verify_users(&work, &emu, &[]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("is not the users file migrate-users read"),
        "{}",
        run.stderr
    );
    std::fs::write(&users_file, &original).unwrap();
    let run = verify_users(&work, &emu, &["--mapping", "data/nowhere.json"]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("run fmig migrate-users first"),
        "{}",
        run.stderr
    );
    // The server key never shows.
    let key = emu
        .env()
        .into_iter()
        .find(|(k, _)| *k == "STACK_AUTH_SECRET_KEY")
        .unwrap()
        .1;
    assert!(!run.stdout.contains(&key) && !run.stderr.contains(&key));
    assert!(!work.log().contains(&key));
}
