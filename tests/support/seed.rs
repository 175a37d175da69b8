//! Deterministic, hostile FreshTrack data for a source database built from
//! tests/fixtures/source_schema.sql.
//!
//! Everything (ids included) comes from a splitmix64 stream seeded by [`SeedConfig::seed`], so
//! two databases seeded with the same config hold byte-identical rows. The SQL is generated in
//! Rust, written to a temp file and run by psql in one transaction; `sensor_readings` is filled
//! server-side by one `INSERT ... SELECT ... FROM generate_series` so a million rows take seconds.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::cluster::Cluster;

/// The spec's hand-written import order (shared/specs/freshtrack-migration.md): table, level.
/// Both fixture schemas reproduce it exactly; see [`fk_levels`].
pub const SPEC_LEVELS: [(&str, usize); 23] = [
    ("organizations", 0),
    ("subscriptions", 1),
    ("profiles", 1),
    ("sites", 1),
    ("ttn_connections", 1),
    ("user_roles", 2),
    ("escalation_contacts", 2),
    ("areas", 2),
    ("hubs", 2),
    ("alert_rules", 2),
    ("units", 3),
    ("devices", 3),
    ("lora_sensors", 4),
    ("calibration_records", 4),
    ("sensor_readings", 4),
    ("manual_temperature_logs", 4),
    ("door_events", 4),
    ("alerts", 5),
    ("alert_rules_history", 5),
    ("corrective_actions", 6),
    ("notification_deliveries", 6),
    ("event_logs", 7),
    ("pairing_sessions", 7),
];

/// The spec's list of user-id columns (table, column), as the team wrote it.
pub const SPEC_USER_ID_COLUMNS: [(&str, &str); 7] = [
    ("profiles", "user_id"),
    ("user_roles", "user_id"),
    ("escalation_contacts", "profile_id"),
    ("manual_temperature_logs", "profile_id"),
    ("corrective_actions", "profile_id"),
    ("notification_deliveries", "profile_id"),
    ("event_logs", "actor_id"),
];

/// Real bcrypt hashes (made with libxcrypt) of known passwords: (password, hash). Seeded
/// password users take these first, so a test can check that a carried hash still verifies.
/// They cover the `$2a$`, `$2b$` and `$2y$` prefixes and costs 4, 10 and 12.
pub const KNOWN_BCRYPT: [(&str, &str); 6] = [
    (
        "Sup3r-Secret!",
        "$2a$10$Bkh0efqmLf1BxI9pMUn0I..mGw1JZHrBQHCfgIBXsu/IEvBWl.TdG",
    ),
    (
        "hunter2 with spaces",
        "$2b$10$vHXebGQgGTFJvUkQaDPcU.eSu6UVm5zsweOUAiJG3BmKUT4JMm4Pa",
    ),
    (
        "pässwörd-ünïcode-🔑",
        "$2y$10$3T61FHNvqLCCQCUysH2IN.aGSLoFCBhXmPM7d37jLKLxm/5h12SjK",
    ),
    (
        "correct horse battery staple",
        "$2a$12$C5Jd8Hbj9XWaK0sgZU9Nf.GkIrxVcZMYaqSxdv/oxlcLzR6HcFf5.",
    ),
    (
        "x",
        "$2b$04$rvUA1kuC/g6n5qwzGRNvO.2je3El.dFyALsKyqJtSjQWeCJsDWOA2",
    ),
    (
        "O'Brien\"s \\pw",
        "$2a$10$vkKAlCJLWPqzBAIswRp.h.Tpgm0NOkhNkyI343FxkHnQVbDLF2qee",
    ),
];

/// Not-quite-bcrypt values found in real `encrypted_password` columns; none passes the rule
/// of [`UserCounts::with_bcrypt_password`].
pub const INVALID_HASHES: [&str; 5] = [
    "$2a$10$tooShort",
    "plaintext-password",
    "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObG",
    // $2x$ is a real historical prefix, but not one Stack Auth accepts.
    "$2x$10$abcdefghijklmnopqrstuvABCDEFGHIJKLMNOPQRSTUVWXYZ01234",
    // A valid hash with a leading space: 61 characters.
    " $2a$10$Bkh0efqmLf1BxI9pMUn0I..mGw1JZHrBQHCfgIBXsu/IEvBWl.TdG",
];

/// An `event_logs.actor_id` that matches no `auth.users` row: audit columns outlive users, so
/// a migration meets ids it has no mapping for and must not keep them silently.
pub const ORPHAN_ACTOR_ID: &str = "deadbeef-0000-4000-8000-000000000001";

#[derive(Debug, Clone)]
pub struct SeedConfig {
    pub seed: u64,
    pub organizations: usize,
    /// Users per category. The password, OAuth and invalid-hash categories get at least as
    /// many users as they have variants (6, 6 and 5), so every variant always appears.
    pub users_per_category: usize,
    pub sensor_readings: usize,
}

impl Default for SeedConfig {
    fn default() -> Self {
        SeedConfig {
            seed: 42,
            organizations: 3,
            users_per_category: 3,
            sensor_readings: 2_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedSummary {
    /// Exact row count per public table; all 23 tables are present (possibly with 0).
    pub tables: BTreeMap<String, u64>,
    pub users: UserCounts,
    /// Every seeded auth user, in insertion order.
    pub seeded_users: Vec<SeededUser>,
}

/// Counts over `auth.users`; each field's doc is the exact rule (as SQL), so a test can
/// recompute it from the database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserCounts {
    /// `count(*)`
    pub total: u64,
    /// `encrypted_password ~ '^\$2[aby]\$\d\d\$.{53}$'`
    pub with_bcrypt_password: u64,
    /// Has an identity whose provider is an OAuth provider:
    /// `provider NOT IN ('email', 'phone') AND provider NOT LIKE 'sso:%'`.
    pub with_oauth_identity: u64,
    /// `coalesce(email, '') = ''` (older GoTrue stored '' for phone users).
    pub without_email: u64,
    /// `is_anonymous`
    pub anonymous: u64,
    /// `banned_until > now()` (one more user has a ban that already expired).
    pub banned: u64,
    /// `deleted_at IS NOT NULL`
    pub soft_deleted: u64,
    /// `is_sso_user`
    pub sso: u64,
}

/// One `auth.users` row as seeded, with the category that produced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeededUser {
    pub id: String,
    /// One of: password, oauth, magic_link, phone, anonymous, sso, banned, soft_deleted,
    /// upper_case_email, idn_email, invalid_hash.
    pub category: &'static str,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub encrypted_password: Option<String>,
    /// The clear-text password when `encrypted_password` is one of [`KNOWN_BCRYPT`].
    pub password: Option<&'static str>,
    /// `(provider, provider_id)` of each identity.
    pub identities: Vec<(String, String)>,
    pub is_anonymous: bool,
    pub is_sso_user: bool,
    /// `banned_until` lies in the future.
    pub banned: bool,
    pub soft_deleted: bool,
    /// The user has a `profiles` row (everyone but anonymous users).
    pub profile_id: Option<String>,
    /// `auth.mfa_factors` rows: (factor_type, status, secret).
    pub mfa_factors: Vec<(&'static str, &'static str, Option<String>)>,
}

impl SeededUser {
    /// The base32 secret of the verified TOTP factor fmig carries, if any.
    pub fn carried_totp(&self) -> Option<&str> {
        self.mfa_factors
            .iter()
            .filter(|(t, s, secret)| {
                *t == "totp"
                    && *s == "verified"
                    && secret.as_deref().is_some_and(|x| !x.starts_with('{'))
            })
            .filter_map(|(_, _, secret)| secret.as_deref())
            .next_back()
    }

    /// Whether the user had verified 2FA that cannot be carried (and none that can).
    pub fn loses_2fa(&self) -> bool {
        self.carried_totp().is_none() && self.mfa_factors.iter().any(|(_, s, _)| *s == "verified")
    }
}

pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

pub fn load_source_schema(cluster: &Cluster, db: &str) {
    cluster.psql_file(db, &fixture_path("source_schema.sql"));
}

pub fn load_target_schema(cluster: &Cluster, db: &str) {
    cluster.psql_file(db, &fixture_path("target_schema.sql"));
}

/// Quotes `s` as an SQL string literal. Plain `'...'` when that is unambiguous, otherwise an
/// `E'...'` literal so backslashes and control characters mean the same whatever the server's
/// `standard_conforming_strings` is. Panics on NUL, which PostgreSQL text cannot hold.
pub fn sql_literal(s: &str) -> String {
    assert!(
        !s.contains('\0'),
        "PostgreSQL text cannot contain NUL: {s:?}"
    );
    let needs_escape = s.chars().any(|c| c == '\\' || c.is_control());
    if !needs_escape {
        return format!("'{}'", s.replace('\'', "''"));
    }
    let mut out = String::with_capacity(s.len() + 8);
    out.push_str("E'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Always two hex digits, so a following hex character is not swallowed.
            c if (c as u32) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            // Non-ASCII control characters (e.g. U+0085) as a Unicode escape.
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A JSON string token for `s` (for hand-written JSON that must keep big numbers verbatim).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The rule of [`UserCounts::with_bcrypt_password`], in Rust.
pub fn is_bcrypt_mcf(s: &str) -> bool {
    let chars: Vec<char> = s.chars().collect();
    chars.len() == 60
        && chars[0] == '$'
        && chars[1] == '2'
        && matches!(chars[2], 'a' | 'b' | 'y')
        && chars[3] == '$'
        && chars[4].is_ascii_digit()
        && chars[5].is_ascii_digit()
        && chars[6] == '$'
}

/// Foreign-key levels of the user tables in `public`, computed from pg_constraint: 0 without
/// a foreign key to another public table, else 1 + the highest level referenced.
/// Self-references, references outside `public` and partitions (whose cloned constraints
/// duplicate their parent's) are ignored. Panics on a cycle.
pub fn fk_levels(cluster: &Cluster, db: &str) -> BTreeMap<String, usize> {
    let tables = cluster.psql(
        db,
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relispartition
         ORDER BY 1",
    );
    let edges = cluster.psql(
        db,
        "SELECT s.relname, d.relname
         FROM pg_constraint k
         JOIN pg_class s ON s.oid = k.conrelid JOIN pg_namespace sn ON sn.oid = s.relnamespace
         JOIN pg_class d ON d.oid = k.confrelid JOIN pg_namespace dn ON dn.oid = d.relnamespace
         WHERE k.contype = 'f' AND k.conparentid = 0 AND k.conrelid <> k.confrelid
           AND sn.nspname = 'public' AND dn.nspname = 'public'
           AND NOT s.relispartition AND NOT d.relispartition
         ORDER BY 1, 2",
    );
    let mut refs: BTreeMap<String, Vec<String>> =
        tables.lines().map(|t| (t.to_owned(), Vec::new())).collect();
    for line in edges.lines() {
        let (from, to) = line.split_once('|').expect("edge row");
        refs.get_mut(from)
            .expect("referencing table is listed")
            .push(to.to_owned());
    }

    fn level(
        table: &str,
        refs: &BTreeMap<String, Vec<String>>,
        done: &mut BTreeMap<String, usize>,
        path: &mut Vec<String>,
    ) -> usize {
        if let Some(&l) = done.get(table) {
            return l;
        }
        assert!(
            !path.iter().any(|t| t == table),
            "foreign-key cycle: {path:?} -> {table}"
        );
        path.push(table.to_owned());
        let l = refs[table]
            .iter()
            .map(|r| level(r, refs, done, path) + 1)
            .max()
            .unwrap_or(0);
        path.pop();
        done.insert(table.to_owned(), l);
        l
    }

    let mut done = BTreeMap::new();
    for table in refs.keys() {
        level(table, &refs, &mut done, &mut Vec::new());
    }
    done
}

/// Seeds users and all 23 public tables into `db`, which must already hold the source schema.
pub fn seed_source(cluster: &Cluster, db: &str, cfg: &SeedConfig) -> SeedSummary {
    assert!(
        cfg.organizations > 0,
        "the seed needs at least one organization"
    );
    let mut s = Seeder::new(cfg);
    s.sql.push_str(
        "\\set ON_ERROR_STOP on\nSET client_encoding = 'UTF8';\n\
         SET standard_conforming_strings = on;\nBEGIN;\n",
    );
    s.users();
    s.public_tables();
    s.sql.push_str("COMMIT;\n");

    let file = tempfile::Builder::new()
        .prefix("fmig-seed-")
        .suffix(".sql")
        .tempfile()
        .expect("seed temp file");
    std::fs::write(file.path(), &s.sql).expect("write seed SQL");
    cluster.psql_file(db, file.path());

    let users = count_users(&s.users);
    let mut tables: BTreeMap<String, u64> = SPEC_LEVELS
        .iter()
        .map(|(t, _)| (t.to_string(), 0))
        .collect();
    for (t, n) in s.counts {
        *tables.get_mut(&t).expect("seeded table is one of the 23") += n;
    }
    SeedSummary {
        tables,
        users,
        seeded_users: s.users,
    }
}

fn count_users(users: &[SeededUser]) -> UserCounts {
    let n = |f: &dyn Fn(&SeededUser) -> bool| users.iter().filter(|u| f(u)).count() as u64;
    UserCounts {
        total: users.len() as u64,
        with_bcrypt_password: n(&|u| u.encrypted_password.as_deref().is_some_and(is_bcrypt_mcf)),
        with_oauth_identity: n(&|u| {
            u.identities
                .iter()
                .any(|(p, _)| p != "email" && p != "phone" && !p.starts_with("sso:"))
        }),
        without_email: n(&|u| u.email.as_deref().unwrap_or("").is_empty()),
        anonymous: n(&|u| u.is_anonymous),
        banned: n(&|u| u.banned),
        soft_deleted: n(&|u| u.soft_deleted),
        sso: n(&|u| u.is_sso_user),
    }
}

/// splitmix64: tiny, fast, and the same sequence on every platform.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, xs: &'a [T]) -> &'a T {
        &xs[self.below(xs.len() as u64) as usize]
    }

    /// A version-4-shaped UUID.
    fn uuid(&mut self) -> String {
        let a = self.next_u64();
        let b = self.next_u64();
        let a = (a & !0xF000) | 0x4000;
        let b = (b & !(0xC << 60)) | (0x8 << 60);
        format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xFFFF,
            a & 0xFFFF,
            b >> 48,
            b & 0xFFFF_FFFF_FFFF
        )
    }

    fn bcrypt_like(&mut self, prefix: &str) -> String {
        const ALPHABET: &[u8] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let mut s = prefix.to_owned();
        for _ in 0..53 {
            s.push(*self.pick(ALPHABET) as char);
        }
        s
    }

    fn hex(&mut self, bytes: usize) -> String {
        (0..bytes)
            .map(|_| format!("{:02x}", self.below(256)))
            .collect()
    }
}

/// Strings that break naive quoting, CSV/COPY encodings, JSON writers and terminals.
pub const HOSTILE_STRINGS: &[&str] = &[
    "O'Brien's \"Kühlhaus\" ❄️🥶",
    r"C:\temp\new\table \\server\share \x00 \u0000",
    "tab\there\tand\tthere",
    "line1\nline2\r\nline3\rend",
    "",
    "NULL",
    r"\N",
    "emoji 🧊🌡️ zwj 👩‍🍳 flag 🇩🇪",
    "RTL \u{200f}עברית\u{200e} العربية",
    "combining e\u{301} vs precomposed \u{e9}",
    "\u{feff}BOM at start",
    "  leading and trailing  ",
    "%s %d {} ${HOME} $1 ? :name",
    "<script>alert('x')</script>",
    "x'; DROP TABLE public.organizations; --",
    "日本語のテキスト",
    "\u{7f}\u{1}\u{1f} control chars \u{85}",
    "a\\\"b\\'c",
    "'",
    "\"",
    "\\",
    "E'not an escape'",
    "$$dollar$$ $tag$ quoting",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢 astral 𝄞",
];

/// JSON documents with values that do not survive a trip through f64 or a lossy JSON parser.
pub const HOSTILE_JSON: &[&str] = &[
    r#"{"big": 123456789012345678901234567890, "dec": 0.1000000000000000055, "neg": -0.0, "exp": 1.5e300, "int64max": 9223372036854775807, "u64over": 18446744073709551616}"#,
    r#"{"text": "quote \" backslash \\ newline \n tab \t unicode \u00e9 \ud83e\uddca", "": "empty key", "nested": [1, null, {"a": []}, true, false]}"#,
    r#"[]"#,
    r#"{}"#,
    r#""a bare JSON string""#,
    r#"null"#,
    r#"{"threshold": {"min": -18.5, "max": 4}, "tags": ["frozen", "fish"], "emoji": "🧊", "sql": "'; --"}"#,
];

const MICROS: i64 = 1_000_000;

/// Days since 1970-01-01 for a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

/// Microseconds since the epoch, UTC.
fn at(y: i64, mo: i64, d: i64, h: i64, mi: i64, s: i64) -> i64 {
    ((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60 * MICROS + s * MICROS
}

/// A quoted timestamptz literal in UTC with microseconds.
fn tstz(micros: i64) -> String {
    format!("'{}+00'", naive(micros))
}

/// A quoted timestamp (without time zone) literal.
fn ts(micros: i64) -> String {
    format!("'{}'", naive(micros))
}

fn naive(micros: i64) -> String {
    let secs = micros.div_euclid(MICROS);
    let frac = micros.rem_euclid(MICROS);
    let (y, mo, d) = civil_from_days(secs.div_euclid(86_400));
    let sod = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{mo:02}-{d:02} {:02}:{:02}:{:02}.{frac:06}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

fn date(micros: i64) -> String {
    format!("'{}'", &naive(micros)[..10])
}

fn q(s: &str) -> String {
    sql_literal(s)
}

fn qo(s: Option<&str>) -> String {
    s.map_or_else(null, sql_literal)
}

fn null() -> String {
    "NULL".to_owned()
}

fn b(v: bool) -> String {
    v.to_string()
}

fn jsonb(doc: &str) -> String {
    format!("{}::jsonb", sql_literal(doc))
}

fn bytea(bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("decode('{hex}', 'hex')")
}

fn text_array(items: &[Option<&str>]) -> String {
    if items.is_empty() {
        return "'{}'::text[]".to_owned();
    }
    let parts: Vec<String> = items.iter().map(|i| qo(*i)).collect();
    format!("ARRAY[{}]::text[]", parts.join(", "))
}

struct Seeder {
    rng: Rng,
    cfg: SeedConfig,
    sql: String,
    counts: BTreeMap<String, u64>,
    users: Vec<SeededUser>,
    /// A base instant all generated times are offsets of.
    t0: i64,
}

/// Ids of the generated rows other tables refer to.
#[derive(Default)]
struct Ids {
    orgs: Vec<String>,
    /// (id, organization index)
    sites: Vec<(String, usize)>,
    areas: Vec<String>,
    hubs: Vec<String>,
    /// (id, organization index)
    rules: Vec<(String, usize)>,
    units: Vec<String>,
    devices: Vec<String>,
    /// (id, unit id)
    sensors: Vec<(String, String)>,
    alerts: Vec<String>,
    corrective: Vec<String>,
    deliveries: Vec<String>,
}

impl Seeder {
    fn new(cfg: &SeedConfig) -> Self {
        Seeder {
            rng: Rng(cfg.seed),
            cfg: cfg.clone(),
            sql: String::new(),
            counts: BTreeMap::new(),
            users: Vec::new(),
            t0: at(2024, 3, 30, 22, 0, 0),
        }
    }

    /// A time within ~90 days after `t0`, with microseconds.
    fn some_time(&mut self) -> i64 {
        self.t0 + self.rng.below(90 * 86_400 * MICROS as u64) as i64
    }

    fn insert(&mut self, table: &str, columns: &[&str], rows: Vec<Vec<String>>) {
        *self.counts.entry(table.to_owned()).or_default() += rows.len() as u64;
        let schema = if table.contains('.') { "" } else { "public." };
        for chunk in rows.chunks(200) {
            let _ = writeln!(
                self.sql,
                "INSERT INTO {schema}{table} ({}) VALUES",
                columns.join(", ")
            );
            for (i, row) in chunk.iter().enumerate() {
                assert_eq!(row.len(), columns.len(), "row width for {table}");
                let sep = if i + 1 == chunk.len() { ";" } else { "," };
                let _ = writeln!(self.sql, "  ({}){sep}", row.join(", "));
            }
        }
    }

    fn hostile(&mut self) -> &'static str {
        self.rng.pick::<&str>(HOSTILE_STRINGS)
    }

    /// Hostile text, sometimes NULL, cycling so every hostile value appears.
    fn text_or_null(&self, i: usize) -> String {
        if i % 7 == 6 {
            null()
        } else {
            q(HOSTILE_STRINGS[i % HOSTILE_STRINGS.len()])
        }
    }

    fn users(&mut self) {
        let n = self.cfg.users_per_category;
        let mut users = Vec::new();

        // Password users: real hashes first, then random ones cycling through the variants.
        let prefixes = ["$2a$10$", "$2b$10$", "$2y$10$", "$2a$12$"];
        for i in 0..n.max(KNOWN_BCRYPT.len()) {
            let (hash, password) = match KNOWN_BCRYPT.get(i) {
                Some((pw, h)) => (h.to_string(), Some(*pw)),
                None => (self.rng.bcrypt_like(prefixes[i % prefixes.len()]), None),
            };
            let mut u = self.user("password", Some(format!("user{i}@freshtrack.example")));
            u.encrypted_password = Some(hash);
            u.password = password;
            users.push(u);
        }

        // OAuth-only: '' password; providers spread over the users, the last ones repeat, and
        // 'discord' stands for a provider the Stack Auth project may not have configured.
        let providers = [
            "google",
            "github",
            "azure",
            "linkedin_oidc",
            "twitter",
            "discord",
        ];
        let m = n.max(providers.len());
        for i in 0..m {
            let mut u = self.user("oauth", Some(format!("oauth{i}@mail.example")));
            u.encrypted_password = Some(String::new());
            u.identities.clear();
            for (k, p) in providers.iter().enumerate() {
                if k % m == i || (i >= providers.len() && i % providers.len() == k) {
                    let id = format!("{}", 100_000_000_000_000_000u64 + self.rng.below(1 << 50));
                    u.identities.push((p.to_string(), id));
                }
            }
            users.push(u);
        }

        for i in 0..n {
            let u = self.user("magic_link", Some(format!("magic{i}@freshtrack.example")));
            users.push(u);
        }

        for i in 0..n {
            // Older GoTrue stored '' rather than NULL as a phone user's e-mail. Only one: the
            // unique index on email (like GoTrue's) admits a single ''.
            let email = if i == 1 { Some(String::new()) } else { None };
            let mut u = self.user("phone", email);
            let phone = format!("49151{:07}", 1_000_000 + i);
            u.phone = Some(phone.clone());
            u.identities = vec![("phone".to_owned(), u.id.clone())];
            if i == 0 {
                // Phone + password sign-up exists too.
                u.encrypted_password = Some(self.rng.bcrypt_like("$2a$10$"));
            }
            users.push(u);
        }

        for _ in 0..n {
            let mut u = self.user("anonymous", None);
            u.is_anonymous = true;
            u.identities.clear();
            users.push(u);
        }

        let sso_provider = self.rng.uuid();
        for i in 0..n {
            // Same address as a password user: allowed because the unique index skips SSO rows.
            let mut u = self.user("sso", Some(format!("user{}@freshtrack.example", i % 6)));
            u.is_sso_user = true;
            u.identities = vec![(format!("sso:{sso_provider}"), format!("saml-subject-{i}"))];
            users.push(u);
        }

        for i in 0..n {
            let mut u = self.user("banned", Some(format!("banned{i}@freshtrack.example")));
            u.encrypted_password = Some(self.rng.bcrypt_like("$2a$10$"));
            u.banned = true;
            users.push(u);
        }

        for i in 0..n {
            let mut u = self.user(
                "soft_deleted",
                Some(format!("deleted{i}@freshtrack.example")),
            );
            u.encrypted_password = Some(self.rng.bcrypt_like("$2b$10$"));
            u.soft_deleted = true;
            users.push(u);
        }

        for i in 0..n {
            let email = format!("Upper.Case{i}@FreshTrack.EXAMPLE");
            let mut u = self.user("upper_case_email", Some(email));
            u.encrypted_password = Some(self.rng.bcrypt_like("$2b$10$"));
            users.push(u);
        }

        for i in 0..n {
            let email = if i == 0 {
                "chef@küche.example".to_owned()
            } else {
                format!("chef{i}@küche.example")
            };
            let mut u = self.user("idn_email", Some(email));
            if i == 0 {
                u.encrypted_password = Some(self.rng.bcrypt_like("$2y$10$"));
            }
            users.push(u);
        }

        for i in 0..n.max(INVALID_HASHES.len()) {
            let mut u = self.user(
                "invalid_hash",
                Some(format!("legacy{i}@freshtrack.example")),
            );
            u.encrypted_password = Some(INVALID_HASHES[i % INVALID_HASHES.len()].to_owned());
            users.push(u);
        }

        // Second factors: a verified TOTP (carried) beside an enrolment never finished; a
        // WebAuthn key (bound to the old site: cannot be carried); a TOTP secret GoTrue
        // encrypted at rest (a JSON envelope: cannot be carried either).
        let (secret, unfinished) = (self.totp_secret(), self.totp_secret());
        users[0].mfa_factors = vec![
            ("totp", "verified", Some(secret)),
            ("totp", "unverified", Some(unfinished)),
        ];
        users[1].mfa_factors = vec![("webauthn", "verified", None)];
        if let Some(u) = users.iter_mut().find(|u| u.category == "oauth") {
            u.mfa_factors = vec![(
                "totp",
                "verified",
                Some(
                    r#"{"key_id":"k1","alg":"aes-gcm-hkdf","nonce":"bm9uY2U=","data":"ZGF0YQ=="}"#
                        .to_owned(),
                ),
            )];
        }

        // Extra identities and states on ordinary users.
        users[2].identities.push((
            "google".to_owned(),
            format!("{}", 200_000_000_000_000_000u64 + self.rng.below(1 << 50)),
        ));

        for u in &mut users {
            if !u.is_anonymous {
                u.profile_id = Some(self.rng.uuid());
            }
        }
        self.users = users;
        self.write_users();
    }

    /// A user with an e-mail identity when it has an address, no password, no flags.
    fn user(&mut self, category: &'static str, email: Option<String>) -> SeededUser {
        let id = self.rng.uuid();
        let identities = match &email {
            Some(e) if !e.is_empty() => vec![("email".to_owned(), id.clone())],
            _ => Vec::new(),
        };
        SeededUser {
            id,
            category,
            email,
            phone: None,
            encrypted_password: None,
            password: None,
            identities,
            is_anonymous: false,
            is_sso_user: false,
            banned: false,
            soft_deleted: false,
            profile_id: None,
            mfa_factors: Vec::new(),
        }
    }

    /// A base32 TOTP secret (160 bits, as authenticator setups make them).
    fn totp_secret(&mut self) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
        (0..32)
            .map(|_| ALPHABET[self.rng.below(32) as usize] as char)
            .collect()
    }

    fn write_users(&mut self) {
        let users = self.users.clone();
        let mut rows = Vec::new();
        let mut identity_rows = Vec::new();
        let mut factor_rows = Vec::new();
        for (i, u) in users.iter().enumerate() {
            let created = self.t0 - 400 * 86_400 * MICROS + i as i64 * 3_600 * MICROS + 123_456;
            let email_confirmed =
                u.email.as_deref().is_some_and(|e| !e.is_empty()) && i % 5 != 4 && !u.is_sso_user;
            let first_provider = u
                .identities
                .first()
                .map_or("email".to_owned(), |(p, _)| p.clone());
            let providers: Vec<String> = u.identities.iter().map(|(p, _)| json_string(p)).collect();
            let app_meta = if u.is_anonymous {
                r#"{}"#.to_owned()
            } else {
                format!(
                    r#"{{"provider": {}, "providers": [{}], "roles": ["staff"], "org_count": 12345678901234567890}}"#,
                    json_string(&first_provider),
                    providers.join(", ")
                )
            };
            let name = HOSTILE_STRINGS[i % HOSTILE_STRINGS.len()];
            let user_meta = match i % 6 {
                0 => format!(
                    r#"{{"full_name": {}, "avatar_url": "https://cdn.example/a/{i}.png", "locale": "de"}}"#,
                    json_string(name)
                ),
                1 => format!(
                    r#"{{"display_name": "", "name": {}, "avatar_url": "not a url"}}"#,
                    json_string(name)
                ),
                2 => r#"{}"#.to_owned(),
                3 => format!(
                    r#"{{"display_name": {}, "full_name": "Ignored Full", "favourite_fridge": 7, "nested": {{"a": [1, 2]}}}}"#,
                    json_string(name)
                ),
                4 => "null".to_owned(),
                _ => r#"{"name": "Zoë Ünïcødé 🧑‍🍳", "email_verified": true}"#.to_owned(),
            };
            let banned_until = if u.banned {
                tstz(at(2099, 12, 31, 23, 59, 59))
            } else if u.category == "password" && i == 3 {
                // A ban that expired long ago: not banned by the rule.
                tstz(at(2020, 1, 1, 0, 0, 0))
            } else {
                null()
            };
            rows.push(vec![
                q("00000000-0000-0000-0000-000000000000"),
                q(&u.id),
                // GoTrue gives anonymous users the `authenticated` role too.
                q("authenticated"),
                q("authenticated"),
                qo(u.email.as_deref()),
                qo(u.encrypted_password.as_deref()),
                if email_confirmed {
                    tstz(created + 60 * MICROS)
                } else {
                    null()
                },
                q(""),
                q(""),
                jsonb(&app_meta),
                if user_meta == "null" {
                    null()
                } else {
                    jsonb(&user_meta)
                },
                b(false),
                tstz(created),
                tstz(created + 86_400 * MICROS),
                if i % 4 == 0 {
                    null()
                } else {
                    tstz(created + 2 * 86_400 * MICROS)
                },
                qo(u.phone.as_deref()),
                if u.phone.is_some() {
                    tstz(created + 30 * MICROS)
                } else {
                    null()
                },
                banned_until,
                b(u.is_sso_user),
                if u.soft_deleted {
                    tstz(created + 10 * 86_400 * MICROS)
                } else {
                    null()
                },
                b(u.is_anonymous),
            ]);
            for (k, (factor_type, status, secret)) in u.mfa_factors.iter().enumerate() {
                factor_rows.push(vec![
                    q(&self.rng.uuid()),
                    q(&u.id),
                    q(factor_type),
                    q(status),
                    secret.as_deref().map_or_else(null, q),
                    tstz(created + (5 + k as i64) * 86_400 * MICROS),
                    tstz(created + (5 + k as i64) * 86_400 * MICROS),
                ]);
            }
            for (provider, provider_id) in &u.identities {
                let email = match provider.as_str() {
                    "email" => u.email.clone(),
                    "phone" => None,
                    p if p.starts_with("sso:") => u.email.clone(),
                    // OAuth accounts often carry a different address than the user row.
                    p => Some(format!("{}.{p}@{p}.example", &u.id[..8])),
                };
                let mut data = format!(
                    r#"{{"sub": {}, "email_verified": true, "phone_verified": false"#,
                    json_string(provider_id)
                );
                if let Some(e) = &email {
                    let _ = write!(data, r#", "email": {}"#, json_string(e));
                }
                if provider != "email" && provider != "phone" {
                    let _ = write!(
                        data,
                        r#", "full_name": {}, "avatar_url": "https://avatars.example/{provider_id}""#,
                        json_string(name)
                    );
                }
                data.push('}');
                identity_rows.push(vec![
                    q(&self.rng.uuid()),
                    q(provider_id),
                    q(&u.id),
                    jsonb(&data),
                    q(provider),
                    tstz(created + 3 * 86_400 * MICROS),
                    tstz(created),
                    tstz(created + 86_400 * MICROS),
                ]);
            }
        }
        self.insert(
            "auth.users",
            &[
                "instance_id",
                "id",
                "aud",
                "role",
                "email",
                "encrypted_password",
                "email_confirmed_at",
                "confirmation_token",
                "recovery_token",
                "raw_app_meta_data",
                "raw_user_meta_data",
                "is_super_admin",
                "created_at",
                "updated_at",
                "last_sign_in_at",
                "phone",
                "phone_confirmed_at",
                "banned_until",
                "is_sso_user",
                "deleted_at",
                "is_anonymous",
            ],
            rows,
        );
        self.insert(
            "auth.identities",
            &[
                "id",
                "provider_id",
                "user_id",
                "identity_data",
                "provider",
                "last_sign_in_at",
                "created_at",
                "updated_at",
            ],
            identity_rows,
        );
        if !factor_rows.is_empty() {
            self.insert(
                "auth.mfa_factors",
                &[
                    "id",
                    "user_id",
                    "factor_type",
                    "status",
                    "secret",
                    "created_at",
                    "updated_at",
                ],
                factor_rows,
            );
        }
        // auth.* rows are not public tables.
        self.counts.remove("auth.users");
        self.counts.remove("auth.identities");
        self.counts.remove("auth.mfa_factors");
    }

    /// A user that has a profile, or None ~1 in 8.
    fn some_user(&mut self) -> Option<SeededUser> {
        if self.rng.chance(12) {
            return None;
        }
        let with_profile: Vec<&SeededUser> = self
            .users
            .iter()
            .filter(|u| u.profile_id.is_some())
            .collect();
        Some((*self.rng.pick(&with_profile)).clone())
    }

    fn some_user_id(&mut self) -> String {
        self.some_user().map_or_else(null, |u| q(&u.id))
    }

    fn public_tables(&mut self) {
        let mut ids = Ids::default();
        self.organizations(&mut ids);
        self.level1(&mut ids);
        self.level2(&mut ids);
        self.level3(&mut ids);
        self.level4(&mut ids);
        self.level5(&mut ids);
        self.level6(&mut ids);
        self.level7(&mut ids);
    }

    fn organizations(&mut self, ids: &mut Ids) {
        let mut rows = Vec::new();
        for i in 0..self.cfg.organizations {
            let id = self.rng.uuid();
            ids.orgs.push(id.clone());
            let name = match i {
                0 => "Müller's \"Frische\" Küche 🧊".to_owned(),
                1 => "Café \\ Bar\tNord\r\n(Zweigstelle)".to_owned(),
                _ => format!("{} #{i}", self.hostile()),
            };
            rows.push(vec![
                q(&id),
                q(&name),
                q(&format!("org-{i}")),
                // char(2): 'J' comes back as 'J ' (blank-padded).
                q(["DE", "US", "J"][i % 3]),
                q(["Europe/Berlin", "America/New_York", "Asia/Kolkata"][i % 3]),
                jsonb(HOSTILE_JSON[i % HOSTILE_JSON.len()]),
                match i % 3 {
                    0 => bytea(&[
                        0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0x0d,
                    ]),
                    1 => "''::bytea".to_owned(),
                    _ => null(),
                },
                qo((i % 2 == 0).then_some("cus_LEGACY'42\\x")),
                // Organization 0 was "founded" before the Unix epoch.
                if i == 0 {
                    tstz(at(1969, 7, 20, 20, 17, 40) + 123_456)
                } else {
                    tstz(self.t0 - i as i64 * 86_400 * MICROS)
                },
                if i % 2 == 1 { tstz(self.t0) } else { null() },
            ]);
        }
        self.insert(
            "organizations",
            &[
                "id",
                "name",
                "slug",
                "country_code",
                "timezone",
                "settings",
                "logo",
                "stripe_legacy_id",
                "created_at",
                "updated_at",
            ],
            rows,
        );
    }

    fn level1(&mut self, ids: &mut Ids) {
        // subscriptions: one per organization, plus a cancelled one for organization 0.
        let mut rows = Vec::new();
        for (i, org) in ids.orgs.clone().iter().enumerate() {
            for k in 0..(if i == 0 { 2 } else { 1 }) {
                let metadata = match (i + k) % 4 {
                    // json keeps duplicate keys and whitespace verbatim; jsonb would not.
                    0 => q(
                        r#"{"a": 1,  "a": 2, "nested" : {"x":[1, 2 ,3]}, "big": 123456789012345678901234567890}"#,
                    ),
                    1 => q(r#"{"source":"stripe"}"#),
                    2 => q("[]"),
                    _ => null(),
                };
                rows.push(vec![
                    q(&self.rng.uuid()),
                    q(org),
                    q(["starter", "pro", "enterprise"][(i + k) % 3]),
                    q(if k == 1 { "canceled" } else { "active" }),
                    // numeric in the source, integer in the target: all integral here.
                    format!("'{}'", 5 + 10 * i + k),
                    q(["12.50", "0.00", "99999999.99"][(i + k) % 3]),
                    date(self.t0 - 30 * 86_400 * MICROS),
                    if i == 0 && k == 0 {
                        "'infinity'".to_owned()
                    } else {
                        date(self.t0 + 335 * 86_400 * MICROS)
                    },
                    if k == 1 {
                        "'-infinity'".to_owned()
                    } else {
                        tstz(self.some_time())
                    },
                    q(&format!("cus_{}", self.rng.hex(7))),
                    metadata,
                    tstz(self.t0 - 200 * 86_400 * MICROS),
                ]);
            }
        }
        self.insert(
            "subscriptions",
            &[
                "id",
                "organization_id",
                "plan",
                "status",
                "seats",
                "price_per_seat",
                "current_period_start",
                "current_period_end",
                "trial_ends_at",
                "stripe_customer_id",
                "metadata",
                "created_at",
            ],
            rows,
        );

        // profiles: one per non-anonymous user.
        let mut rows = Vec::new();
        let roles = ["owner", "admin", "manager", "staff", "viewer"];
        for (i, u) in self.users.clone().iter().enumerate() {
            let Some(pid) = &u.profile_id else { continue };
            let org = &ids.orgs[i % ids.orgs.len()];
            let email = u.email.as_deref().filter(|e| !e.is_empty());
            rows.push(vec![
                q(pid),
                q(&u.id),
                if i % 9 == 8 { null() } else { q(org) },
                qo(email),
                self.text_or_null(i),
                qo((i % 3 == 0).then_some("Zoë 🧑‍🍳")),
                qo(u.phone.as_deref()),
                qo((i % 2 == 0).then_some("https://cdn.example/avatar.png?size=64&x='1'")),
                q(["en", "de-DE", "ja", "pt-BR"][i % 4]),
                if i % 3 == 0 {
                    null()
                } else {
                    jsonb(HOSTILE_JSON[i % HOSTILE_JSON.len()])
                },
                q(roles[i % roles.len()]),
                b(i % 10 != 7),
                if i % 5 == 0 {
                    null()
                } else {
                    tstz(self.some_time())
                },
                tstz(self.t0 - (i as i64) * 3_600 * MICROS),
            ]);
        }
        self.insert(
            "profiles",
            &[
                "id",
                "user_id",
                "organization_id",
                "email",
                "full_name",
                "display_name",
                "phone",
                "avatar_url",
                "locale",
                "notification_prefs",
                "role",
                "is_active",
                "last_seen_at",
                "created_at",
            ],
            rows,
        );

        // sites: two per organization.
        let mut rows = Vec::new();
        for (oi, org) in ids.orgs.clone().iter().enumerate() {
            for k in 0..2 {
                let i = oi * 2 + k;
                let id = self.rng.uuid();
                ids.sites.push((id.clone(), oi));
                let tags = match i % 4 {
                    // NULL elements next to the string 'NULL', commas, quotes and ''.
                    0 => text_array(&[
                        Some("walk-in"),
                        None,
                        Some("a,b"),
                        Some("\"q\""),
                        Some(""),
                        Some("NULL"),
                        Some("back\\slash"),
                    ]),
                    1 => text_array(&[]),
                    2 => null(),
                    _ => text_array(&[Some("kühl"), Some("🧊")]),
                };
                rows.push(vec![
                    q(&id),
                    q(org),
                    q(&format!(
                        "{} site {i}",
                        HOSTILE_STRINGS[i % HOSTILE_STRINGS.len()]
                    )),
                    self.text_or_null(i + 3),
                    format!("{}", 52.520_008 + i as f64 / 1000.0),
                    if i == 1 {
                        // 0.1 + 0.2: needs 17 significant digits to round-trip.
                        "0.30000000000000004".to_owned()
                    } else {
                        format!("{}", 13.404_954 - i as f64 / 1000.0)
                    },
                    q(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe"][i % 3]),
                    q(["06:00:00", "00:00:00", "05:30:00.123456"][i % 3]),
                    // '24:00:00' is a valid time in PostgreSQL, not in most languages.
                    if i == 0 { q("24:00:00") } else { q("22:15:00") },
                    qo([
                        Some("192.168.0.1"),
                        Some("2001:db8::1/64"),
                        Some("10.0.0.0/8"),
                        None,
                    ][i % 4]),
                    tags,
                    self.some_user_id(),
                    tstz(self.t0 - 100 * 86_400 * MICROS + i as i64),
                ]);
            }
        }
        self.insert(
            "sites",
            &[
                "id",
                "organization_id",
                "name",
                "address",
                "latitude",
                "longitude",
                "timezone",
                "opening_time",
                "closing_time",
                "gateway_ip",
                "tags",
                "created_by",
                "created_at",
            ],
            rows,
        );

        // ttn_connections: one per organization.
        let mut rows = Vec::new();
        for (i, org) in ids.orgs.clone().iter().enumerate() {
            rows.push(vec![
                q(&self.rng.uuid()),
                q(org),
                q(&format!("freshtrack-app-{i}")),
                q(["eu1", "nam1", "au1"][i % 3]),
                bytea(&[0, 1, 2, 0, 0xff, 0xfe, 0, b'\\', b'\'', 0]),
                self.text_or_null(i + 1),
                q([
                    "1 mon 2 days 03:04:05.678901",
                    "-1 days +02:00:00",
                    "00:00:00",
                ][i % 3]),
                b(i % 2 == 0),
                if i % 3 == 2 {
                    null()
                } else {
                    jsonb(HOSTILE_JSON[i % 2])
                },
                if i == 0 {
                    "'infinity'".to_owned()
                } else {
                    tstz(self.some_time())
                },
                tstz(self.t0 - 50 * 86_400 * MICROS),
            ]);
        }
        self.insert(
            "ttn_connections",
            &[
                "id",
                "organization_id",
                "application_id",
                "region",
                "api_key_encrypted",
                "webhook_secret",
                "sync_interval",
                "is_enabled",
                "config",
                "last_sync_at",
                "created_at",
            ],
            rows,
        );
    }

    fn level2(&mut self, ids: &mut Ids) {
        // user_roles: one per profile, site-scoped for some.
        let mut rows = Vec::new();
        let roles = ["owner", "admin", "manager", "staff", "viewer"];
        for (i, u) in self.users.clone().iter().enumerate() {
            if u.profile_id.is_none() {
                continue;
            }
            let oi = i % ids.orgs.len();
            let site = ids
                .sites
                .iter()
                .filter(|(_, o)| *o == oi)
                .nth(i % 2)
                .map(|(s, _)| s.clone());
            rows.push(vec![
                q(&self.rng.uuid()),
                q(&u.id),
                q(&ids.orgs[oi]),
                if i % 3 == 0 {
                    qo(site.as_deref())
                } else {
                    null()
                },
                // 'staff' does not exist in the target enum.
                q(roles[(i + 3) % roles.len()]),
                match i % 4 {
                    0 => text_array(&[Some("units:read"), None, Some("NULL"), Some("")]),
                    1 => text_array(&[]),
                    2 => null(),
                    _ => text_array(&[Some("alerts:ack"), Some("a\"b,c{d}")]),
                },
                tstz(self.some_time()),
            ]);
        }
        self.insert(
            "user_roles",
            &[
                "id",
                "user_id",
                "organization_id",
                "site_id",
                "role",
                "permissions",
                "granted_at",
            ],
            rows,
        );

        // escalation_contacts: two per site.
        let mut rows = Vec::new();
        for (si, (site, _)) in ids.sites.clone().iter().enumerate() {
            for k in 0..2 {
                let i = si * 2 + k;
                let user = self.some_user();
                let email = user
                    .as_ref()
                    .and_then(|u| u.email.clone())
                    .filter(|e| !e.is_empty());
                rows.push(vec![
                    q(&self.rng.uuid()),
                    q(site),
                    user.as_ref().map_or_else(null, |u| q(&u.id)),
                    q(&format!(
                        "{} (on call)",
                        HOSTILE_STRINGS[(i + 5) % HOSTILE_STRINGS.len()]
                    )),
                    qo((k == 0).then_some("+49 (151) 000-0000 ext. 7")),
                    qo(email.as_deref()),
                    format!("{}", k + 1),
                    text_array(&[Some("sms"), Some("email")][..1 + k]),
                    tstz(self.some_time()),
                ]);
            }
        }
        self.insert(
            "escalation_contacts",
            &[
                "id",
                "site_id",
                "profile_id",
                "name",
                "phone",
                "email",
                "priority",
                "notify_via",
                "created_at",
            ],
            rows,
        );

        // areas: two roots per site and one child of the first root (self-reference).
        let mut rows = Vec::new();
        for (si, (site, _)) in ids.sites.clone().iter().enumerate() {
            let root = self.rng.uuid();
            for k in 0..3 {
                let i = si * 3 + k;
                let id = if k == 0 {
                    root.clone()
                } else {
                    self.rng.uuid()
                };
                ids.areas.push(id.clone());
                rows.push(vec![
                    q(&id),
                    q(site),
                    if k == 2 { q(&root) } else { null() },
                    q(&format!(
                        "Area {i} {}",
                        HOSTILE_STRINGS[(i + 7) % HOSTILE_STRINGS.len()]
                    )),
                    self.text_or_null(i + 2),
                    if k == 1 {
                        "-1".to_owned()
                    } else {
                        format!("{k}")
                    },
                    format!("{}", i as i64 * 10 - 5),
                    tstz(self.some_time()),
                ]);
            }
        }
        self.insert(
            "areas",
            &[
                "id",
                "site_id",
                "parent_area_id",
                "name",
                "description",
                "floor",
                "sort_order",
                "created_at",
            ],
            rows,
        );

        // hubs: one per site.
        let mut rows = Vec::new();
        for (i, (site, _)) in ids.sites.clone().iter().enumerate() {
            let id = self.rng.uuid();
            ids.hubs.push(id.clone());
            rows.push(vec![
                q(&id),
                q(site),
                // Shorter than char(12): stored blank-padded.
                q(&format!("HUB-{i:04}")),
                self.text_or_null(i + 4),
                q(&format!("v1.{i}.0-rc.1+build.{}", self.rng.below(1000))),
                qo([Some("127.0.0.1"), Some("::1"), Some("0.0.0.0"), None][i % 4]),
                q([
                    "3 days 04:05:06.789",
                    "00:00:00.000001",
                    "-00:00:01",
                    "1 year 2 mons",
                ][i % 4]),
                tstz(self.some_time()),
                tstz(self.t0 - 90 * 86_400 * MICROS),
            ]);
        }
        self.insert(
            "hubs",
            &[
                "id",
                "site_id",
                "serial_number",
                "name",
                "firmware_version",
                "ip_address",
                "uptime",
                "last_seen_at",
                "created_at",
            ],
            rows,
        );

        // alert_rules: an organization-wide and a site rule per organization.
        let mut rows = Vec::new();
        for (oi, org) in ids.orgs.clone().iter().enumerate() {
            for k in 0..2 {
                let i = oi * 2 + k;
                let id = self.rng.uuid();
                ids.rules.push((id.clone(), oi));
                let site = ids
                    .sites
                    .iter()
                    .find(|(_, o)| *o == oi)
                    .map(|(s, _)| s.clone());
                rows.push(vec![
                    q(&id),
                    q(org),
                    if k == 1 { qo(site.as_deref()) } else { null() },
                    q(&format!(
                        "Rule {i}: {}",
                        HOSTILE_STRINGS[(i + 11) % HOSTILE_STRINGS.len()]
                    )),
                    q(["-25.00", "0.00", "2.50"][i % 3]),
                    q(["-18.00", "4.00", "8.00"][i % 3]),
                    format!("{}", 5 + i * 5),
                    q(["info", "warning", "critical"][i % 3]),
                    b(i % 4 != 3),
                    match i % 3 {
                        // Two-dimensional, with a NULL element.
                        0 => q("{{1,2,3},{4,NULL,6}}"),
                        1 => q("{}"),
                        _ => null(),
                    },
                    jsonb(HOSTILE_JSON[(i + 3) % HOSTILE_JSON.len()]),
                    tstz(self.some_time()),
                ]);
            }
        }
        self.insert(
            "alert_rules",
            &[
                "id",
                "organization_id",
                "site_id",
                "name",
                "min_temp",
                "max_temp",
                "duration_minutes",
                "severity",
                "is_enabled",
                "escalation_matrix",
                "schedule",
                "created_at",
            ],
            rows,
        );
    }

    fn level3(&mut self, ids: &mut Ids) {
        // units: two per area.
        let mut rows = Vec::new();
        for (ai, area) in ids.areas.clone().iter().enumerate() {
            for k in 0..2 {
                let i = ai * 2 + k;
                let id = self.rng.uuid();
                ids.units.push(id.clone());
                let (min, max) = [("-25.00", "-15.00"), ("0.00", "4.00"), ("1.00", "7.99")][i % 3];
                rows.push(vec![
                    q(&id),
                    q(area),
                    q(&format!(
                        "Unit {i} {}",
                        HOSTILE_STRINGS[(i + 13) % HOSTILE_STRINGS.len()]
                    )),
                    q(["freezer", "fridge", "blast_chiller"][i % 3]),
                    if i % 5 == 4 { null() } else { q(min) },
                    q(min),
                    if i % 6 == 5 { null() } else { q(max) },
                    format!("{}", 100 + i * 50),
                    b(i % 2 == 0),
                    self.text_or_null(i + 6),
                    tstz(self.some_time()),
                ]);
            }
        }
        self.insert(
            "units",
            &[
                "id",
                "area_id",
                "name",
                "unit_type",
                "target_temp",
                "min_temp",
                "max_temp",
                "capacity_litres",
                "has_door_sensor",
                "notes",
                "created_at",
            ],
            rows,
        );

        // devices: two per hub.
        let mut rows = Vec::new();
        for (hi, hub) in ids.hubs.clone().iter().enumerate() {
            for k in 0..2 {
                let i = hi * 2 + k;
                let id = self.rng.uuid();
                ids.devices.push(id.clone());
                rows.push(vec![
                    q(&id),
                    q(hub),
                    q(&format!("{:016X}", 0x70B3_D57E_D000_0000u64 + i as u64)),
                    q(["temperature", "door", "humidity"][i % 3]),
                    self.text_or_null(i + 8),
                    format!("{}", (i * 37) % 101),
                    q(&format!("fw-{}", self.rng.hex(3))),
                    if i == 0 {
                        "'-infinity'".to_owned()
                    } else {
                        date(self.some_time())
                    },
                    jsonb(HOSTILE_JSON[i % HOSTILE_JSON.len()]),
                    tstz(self.some_time()),
                ]);
            }
        }
        self.insert(
            "devices",
            &[
                "id",
                "hub_id",
                "dev_eui",
                "device_type",
                "model",
                "battery_level",
                "firmware",
                "installed_on",
                "metadata",
                "created_at",
            ],
            rows,
        );
    }

    fn level4(&mut self, ids: &mut Ids) {
        // lora_sensors: one per unit.
        let mut rows = Vec::new();
        let offsets = [
            "12345678901234567890.123456789012345678",
            "-0.000000000000000000001",
            "1.10",
            "0",
            "-273.15",
        ];
        for (i, unit) in ids.units.clone().iter().enumerate() {
            let id = self.rng.uuid();
            ids.sensors.push((id.clone(), unit.clone()));
            let device = &ids.devices[i % ids.devices.len()];
            rows.push(vec![
                q(&id),
                q(unit),
                if i % 8 == 7 { null() } else { q(device) },
                q(&format!("{:016x}", 0xA840_4100_0000_0000u64 + i as u64)),
                bytea(&[0, 0, 0x10 + (i % 200) as u8, 0, 0xff, 0, 0, 0x7f]),
                q(["EU_863_870", "US_902_928", "AU_915_928"][i % 3]),
                format!("{}", 7 + i % 6),
                match i % 4 {
                    0 => "14.2".to_owned(),
                    1 => "'-Infinity'::real".to_owned(),
                    2 => "3.4028235e38".to_owned(),
                    _ => null(),
                },
                format!("{}", -(((i * 7) % 90) as i64) - 30),
                // NaN: valid in double precision, not representable in JSON.
                if i == 0 {
                    "'NaN'::float8".to_owned()
                } else {
                    format!("{}", (i as f64) * 0.25 - 5.0)
                },
                if i % 6 == 5 {
                    null()
                } else {
                    q(offsets[i % offsets.len()])
                },
                q(["active", "paired", "lost", ""][i % 4]),
                tstz(self.some_time()),
                tstz(self.some_time()),
            ]);
        }
        self.insert(
            "lora_sensors",
            &[
                "id",
                "unit_id",
                "device_id",
                "dev_eui",
                "app_key",
                "frequency_plan",
                "spreading_factor",
                "tx_power",
                "last_rssi",
                "last_snr",
                "offset_celsius",
                "status",
                "paired_at",
                "created_at",
            ],
            rows,
        );

        // calibration_records: one per device.
        let mut rows = Vec::new();
        for (i, device) in ids.devices.clone().iter().enumerate() {
            let unit = &ids.units[i % ids.units.len()];
            rows.push(vec![
                q(&self.rng.uuid()),
                q(device),
                if i % 5 == 4 { null() } else { q(unit) },
                tstz(self.some_time()),
                q("0.00"),
                q(["0.12", "-0.30", "0.00"][i % 3]),
                q(["0.12000000000000000000000000000001", "-0.3", "0"][i % 3]),
                self.text_or_null(i + 9),
                if i % 2 == 0 {
                    bytea(b"%PDF-1.4\n\x00\x01\x02\xff binary\x00")
                } else {
                    null()
                },
                match i % 3 {
                    0 => "'infinity'".to_owned(),
                    1 => null(),
                    _ => date(self.t0 + 365 * 86_400 * MICROS),
                },
                self.text_or_null(i + 10),
            ]);
        }
        self.insert(
            "calibration_records",
            &[
                "id",
                "device_id",
                "unit_id",
                "calibrated_at",
                "reference_temp",
                "measured_temp",
                "offset_applied",
                "technician",
                "certificate_pdf",
                "valid_until",
                "notes",
            ],
            rows,
        );

        self.sensor_readings(ids);

        // manual_temperature_logs: two per unit, some around the EU DST switch.
        let mut rows = Vec::new();
        let dst = at(2024, 3, 31, 0, 59, 59) + 999_999;
        for (ui, unit) in ids.units.clone().iter().enumerate() {
            for k in 0..2 {
                let i = ui * 2 + k;
                let logged = match i % 4 {
                    // The last microsecond before 02:00 CET became 03:00 CEST.
                    0 => dst,
                    1 => dst + 1,
                    2 => at(1965, 5, 5, 5, 5, 5) + 50,
                    _ => self.some_time(),
                };
                rows.push(vec![
                    q(&self.rng.uuid()),
                    q(unit),
                    self.some_user_id(),
                    tstz(logged),
                    q(["3.50", "-18.25", "0.00", "-0.01"][i % 4]),
                    self.text_or_null(i + 12),
                    match i % 3 {
                        0 => text_array(&[
                            Some("https://cdn.example/p/1.jpg"),
                            None,
                            Some("https://cdn.example/p/2,3.jpg"),
                        ]),
                        1 => text_array(&[]),
                        _ => null(),
                    },
                    if i % 5 == 4 { null() } else { b(i % 2 == 0) },
                ]);
            }
        }
        self.insert(
            "manual_temperature_logs",
            &[
                "id",
                "unit_id",
                "profile_id",
                "logged_at",
                "temperature",
                "notes",
                "photo_urls",
                "is_within_range",
            ],
            rows,
        );

        // door_events: two per unit for half the units, plus an exact duplicate row.
        let mut rows = Vec::new();
        let local_times = [
            // Does not exist in Europe/Berlin (clocks jumped 02:00 -> 03:00).
            at(2024, 3, 31, 2, 30, 0),
            // Happened twice in Europe/Berlin (clocks went 03:00 -> 02:00).
            at(2024, 10, 27, 2, 30, 0),
            at(1965, 5, 5, 5, 5, 5),
        ];
        for (ui, unit) in ids.units.clone().iter().enumerate() {
            if ui % 2 == 1 {
                continue;
            }
            for k in 0..2 {
                let i = ui + k;
                let device = &ids.devices[ui % ids.devices.len()];
                let when = if i % 2 == 0 {
                    local_times[(i / 2) % local_times.len()]
                } else {
                    self.some_time()
                };
                rows.push(vec![
                    q(unit),
                    if i % 5 == 4 { null() } else { q(device) },
                    q(if k == 0 { "open" } else { "close" }),
                    ts(when),
                    if k == 0 {
                        null()
                    } else {
                        q(["00:00:42.5", "00:12:00", "-00:00:01"][ui % 3])
                    },
                    if i % 3 == 0 {
                        null()
                    } else {
                        jsonb(HOSTILE_JSON[i % HOSTILE_JSON.len()])
                    },
                ]);
            }
        }
        if let Some(first) = rows.first().cloned() {
            rows.push(first);
        }
        self.insert(
            "door_events",
            &[
                "unit_id",
                "device_id",
                "event_type",
                "occurred_at",
                "open_duration",
                "raw",
            ],
            rows,
        );
    }

    /// One server-side statement: every column is a deterministic function of g.
    fn sensor_readings(&mut self, ids: &Ids) {
        let n = self.cfg.sensor_readings;
        let uuid_array = |xs: &[String]| {
            let quoted: Vec<String> = xs.iter().map(|x| format!("'{x}'")).collect();
            format!("(ARRAY[{}]::uuid[])", quoted.join(","))
        };
        let units = uuid_array(&ids.units);
        let devices = uuid_array(&ids.devices);
        let (nu, nd) = (ids.units.len(), ids.devices.len());
        let start = naive(self.t0);
        // Small seeds still spread over several target partitions (March, April, DEFAULT).
        let step = (120 * 86_400 / n.max(1)).max(37);
        let _ = writeln!(
            self.sql,
            "INSERT INTO public.sensor_readings (id, unit_id, device_id, recorded_at, temperature,
    humidity, battery_voltage, rssi, snr, frame_counter, raw_payload, received_at)
SELECT g,
    {units}[1 + g % {nu}],
    CASE WHEN g % 50 = 0 THEN NULL ELSE {devices}[1 + g % {nd}] END,
    timestamptz '{start}+00' + g * interval '{step} seconds' + (g % 1000) * interval '1 microsecond'
        - CASE WHEN g % 500 = 0 THEN interval '400 days' ELSE interval '0' END,
    CASE WHEN g % 97 = 0 THEN NULL ELSE ((g * 7919) % 3001 - 1000)::numeric / 100 END,
    CASE WHEN g % 89 = 0 THEN NULL ELSE ((g * 31) % 1000)::real / 10 END,
    3 + ((g * 13) % 120)::float8 / 100 + 1e-15,
    -((g * 17) % 90)::int - 30,
    ((g * 7) % 200 - 100)::real / 10,
    4294967296 + g,
    decode(lpad(to_hex(g), 8, '0') || '00ff00', 'hex'),
    timestamptz '{start}+00' + g * interval '{step} seconds' + interval '1.5 seconds'
FROM generate_series(1, {n}::bigint) AS g;
SELECT setval(pg_get_serial_sequence('public.sensor_readings', 'id'), greatest({n}, 1), {n} > 0);"
        );
        *self.counts.entry("sensor_readings".to_owned()).or_default() += n as u64;
    }

    fn level5(&mut self, ids: &mut Ids) {
        // alerts: one per sensor.
        let mut rows = Vec::new();
        for (i, (sensor, unit)) in ids.sensors.clone().iter().enumerate() {
            let id = self.rng.uuid();
            ids.alerts.push(id.clone());
            let rule = &ids.rules[i % ids.rules.len()].0;
            let triggered = self.some_time();
            let ack = if i % 3 == 0 { None } else { self.some_user() };
            rows.push(vec![
                q(&id),
                q(unit),
                if i % 7 == 6 { null() } else { q(sensor) },
                if i % 5 == 4 { null() } else { q(rule) },
                q(["info", "warning", "critical"][i % 3]),
                q(["open", "acknowledged", "resolved"][i % 3]),
                self.text_or_null(i + 14),
                if i % 4 == 3 {
                    null()
                } else {
                    q(["9.99", "-30.01", "4.00"][i % 3])
                },
                tstz(triggered),
                match i % 4 {
                    0 => "'infinity'".to_owned(),
                    1 => null(),
                    _ => tstz(triggered + 3_600 * MICROS + 1),
                },
                ack.as_ref().map_or_else(null, |u| q(&u.id)),
                if ack.is_some() {
                    tstz(triggered + 60 * MICROS)
                } else {
                    null()
                },
                format!("{}", i % 4),
                jsonb(HOSTILE_JSON[i % HOSTILE_JSON.len()]),
            ]);
        }
        self.insert(
            "alerts",
            &[
                "id",
                "unit_id",
                "lora_sensor_id",
                "alert_rule_id",
                "severity",
                "status",
                "message",
                "temperature_at_trigger",
                "triggered_at",
                "resolved_at",
                "acknowledged_by",
                "acknowledged_at",
                "escalation_level",
                "context",
            ],
            rows,
        );

        // alert_rules_history: two entries per rule.
        let mut rows = Vec::new();
        for (ri, (rule, _)) in ids.rules.clone().iter().enumerate() {
            for k in 0..2 {
                let i = ri * 2 + k;
                let sensor = &ids.sensors[i % ids.sensors.len()].0;
                rows.push(vec![
                    q(&self.rng.uuid()),
                    q(rule),
                    if k == 0 { q(sensor) } else { null() },
                    self.some_user_id(),
                    tstz(self.some_time()),
                    if k == 0 {
                        null()
                    } else {
                        jsonb(HOSTILE_JSON[i % HOSTILE_JSON.len()])
                    },
                    jsonb(HOSTILE_JSON[(i + 1) % HOSTILE_JSON.len()]),
                    self.text_or_null(i + 15),
                ]);
            }
        }
        self.insert(
            "alert_rules_history",
            &[
                "id",
                "alert_rule_id",
                "lora_sensor_id",
                "changed_by",
                "changed_at",
                "old_values",
                "new_values",
                "change_reason",
            ],
            rows,
        );
    }

    fn level6(&mut self, ids: &mut Ids) {
        // corrective_actions: for every other alert. profile_id users all have a profile,
        // which the target's profiles(id) reference needs.
        let mut rows = Vec::new();
        for (i, alert) in ids.alerts.clone().iter().enumerate() {
            if i % 2 == 1 {
                continue;
            }
            let id = self.rng.uuid();
            ids.corrective.push(id.clone());
            rows.push(vec![
                q(&id),
                q(alert),
                self.some_user_id(),
                q(&format!(
                    "Moved stock. {}",
                    HOSTILE_STRINGS[(i + 16) % HOSTILE_STRINGS.len()]
                )),
                tstz(self.some_time()),
                if i % 3 == 0 { null() } else { q("3.99") },
                if i % 4 == 0 {
                    bytea(&[0xff, 0xd8, 0xff, 0xe0, 0, 0x10, b'J', b'F', b'I', b'F', 0])
                } else {
                    null()
                },
                if i % 5 == 0 { null() } else { b(i % 3 == 1) },
                match i % 3 {
                    0 => date(at(1969, 12, 31, 0, 0, 0)),
                    1 => null(),
                    _ => date(self.some_time()),
                },
            ]);
        }
        self.insert(
            "corrective_actions",
            &[
                "id",
                "alert_id",
                "profile_id",
                "action_taken",
                "taken_at",
                "temperature_after",
                "photo",
                "verified",
                "follow_up_due",
            ],
            rows,
        );

        // notification_deliveries: two per alert, plus one system message without an alert.
        let mut rows = Vec::new();
        let mut targets: Vec<Option<String>> = ids.alerts.iter().cloned().map(Some).collect();
        targets.extend(ids.alerts.clone().into_iter().map(Some));
        targets.push(None);
        for (i, alert) in targets.iter().enumerate() {
            let id = self.rng.uuid();
            ids.deliveries.push(id.clone());
            let user = self.some_user();
            let channel = ["sms", "email", "push", "voice"][i % 4];
            let recipient = match (channel, &user) {
                ("email", Some(u)) => u.email.clone().unwrap_or_default(),
                _ => format!("+4915100000{i:03}"),
            };
            let sent = self.some_time();
            rows.push(vec![
                q(&id),
                qo(alert.as_deref()),
                user.as_ref().map_or_else(null, |u| q(&u.id)),
                q(channel),
                q(&recipient),
                q(["sent", "delivered", "failed", "queued"][i % 4]),
                format!("{}", i % 4),
                if i % 3 == 0 {
                    null()
                } else {
                    q(["0.0075", "1234.5678", "0.0000"][i % 3])
                },
                tstz(sent),
                if i % 4 == 1 {
                    tstz(sent + 1_500_000)
                } else {
                    null()
                },
                if i % 4 == 2 {
                    q("550 5.1.1 <x@y>: Recipient address rejected\n\tretry=\"no\"")
                } else {
                    null()
                },
                match i % 3 {
                    0 => q(r#"{"id": 1e2, "id": "dup", "price": 0.1000000000000000055}"#),
                    1 => q(r#"  [ 1 , 2 ]  "#),
                    _ => null(),
                },
            ]);
        }
        self.insert(
            "notification_deliveries",
            &[
                "id",
                "alert_id",
                "profile_id",
                "channel",
                "recipient",
                "status",
                "attempts",
                "cost",
                "sent_at",
                "delivered_at",
                "error",
                "provider_response",
            ],
            rows,
        );
    }

    fn level7(&mut self, ids: &mut Ids) {
        // event_logs: two per alert, one per corrective action, one by a vanished user.
        let mut rows = Vec::new();
        let n_alert = ids.alerts.len();
        let total = n_alert * 2 + ids.corrective.len() + 1;
        for i in 0..total {
            let (alert, corrective) = if i < n_alert * 2 {
                (Some(ids.alerts[i / 2].clone()), None)
            } else if i < total - 1 {
                (None, Some(ids.corrective[i - n_alert * 2].clone()))
            } else {
                (None, None)
            };
            let actor = if i == total - 1 {
                q(ORPHAN_ACTOR_ID)
            } else {
                self.some_user_id()
            };
            let occurred = match i % 5 {
                0 => at(1970, 1, 1, 0, 0, 0),
                // Sub-millisecond digits: the target's timestamp(3) rounds them.
                1 => self.some_time() + 999,
                _ => self.some_time(),
            };
            rows.push(vec![
                q(&self.rng.uuid()),
                if i % 6 == 5 {
                    null()
                } else {
                    q(&ids.orgs[i % ids.orgs.len()])
                },
                actor,
                qo(alert.as_deref()),
                qo(corrective.as_deref()),
                q([
                    "alert.created",
                    "alert.acknowledged",
                    "action.logged",
                    "user.login",
                ][i % 4]),
                qo([Some("alert"), Some("corrective_action"), Some(""), None][i % 4]),
                if i % 2 == 0 {
                    q(&self.rng.uuid())
                } else {
                    null()
                },
                jsonb(HOSTILE_JSON[i % HOSTILE_JSON.len()]),
                qo([Some("203.0.113.7"), Some("2001:db8::7"), None][i % 3]),
                self.text_or_null(i + 17),
                tstz(occurred),
            ]);
        }
        self.insert(
            "event_logs",
            &[
                "id",
                "organization_id",
                "actor_id",
                "alert_id",
                "corrective_action_id",
                "event_type",
                "entity_type",
                "entity_id",
                "payload",
                "ip_address",
                "user_agent",
                "occurred_at",
            ],
            rows,
        );

        // pairing_sessions: one per sensor.
        let mut rows = Vec::new();
        for (i, (sensor, _)) in ids.sensors.clone().iter().enumerate() {
            let started = self.some_time();
            rows.push(vec![
                q(&self.rng.uuid()),
                q(sensor),
                if i % 3 == 2 {
                    null()
                } else {
                    q(&ids.deliveries[i % ids.deliveries.len()])
                },
                // char(6) with a short code: blank-padded.
                q(if i % 4 == 0 {
                    "A1"
                } else {
                    ["Q7X9Z2", "000000", "ÄÖÜ123"][i % 3]
                }),
                q(["pending", "completed", "expired"][i % 3]),
                format!("{}", i % 5),
                if i % 2 == 0 {
                    bytea(&[0, 0, 0, 1, 0x42, 0])
                } else {
                    null()
                },
                tstz(started),
                if i % 4 == 3 {
                    null()
                } else {
                    tstz(started + 600 * MICROS)
                },
                if i % 3 == 1 {
                    tstz(started + 42 * MICROS)
                } else {
                    null()
                },
            ]);
        }
        self.insert(
            "pairing_sessions",
            &[
                "id",
                "lora_sensor_id",
                "notification_delivery_id",
                "pairing_code",
                "status",
                "attempts",
                "qr_payload",
                "started_at",
                "expires_at",
                "completed_at",
            ],
            rows,
        );
    }
}
