//! `fmig migrate-users`: every exported Supabase user into Stack Auth, passwords and OAuth
//! accounts kept, crash-safe, never twice.
//!
//! The stages, in order:
//! 1. **plan**: read `auth_users.json` and put every user in exactly one [`Category`], decided
//!    up front from the data alone (password, OAuth only, e-mail only, or why it cannot be
//!    migrated as is); build the create-user body by the spec's default rules. `--dry-run`
//!    stops here, after printing the plan and checking the credentials with one read.
//! 2. **reconcile**: read the journal (an incomplete last line from a kill is dropped), then list
//!    *every* Stack Auth user (`include_anonymous=true`, which also shows restricted users,
//!    following `next_cursor`). A Supabase user whose id is in some Stack Auth user's
//!    `server_metadata.supabase_user_id` is already done - whether the journal knew it or a
//!    kill came between the server's answer and the journal write. A Stack Auth user with the
//!    same e-mail but no such id is a conflict for a human (or adopted with
//!    `--adopt-existing`). Only what is left gets created.
//! 3. **create**, `--concurrency` at a time within the `--rate-limit` budget: each answer is
//!    appended to the journal and fsynced before the user counts as done. 429/5xx back off and
//!    retry; a request without an answer (timeout, dropped connection) is reconciled for that
//!    user before any retry, and e-mail users are further protected by Stack Auth's own 409.
//!    401/403 stop everything at once.
//! 4. **write**: `user-mapping.json` (atomic, 0600) is rewritten from the journal after the
//!    reconciliation, every [`MAPPING_EVERY`] users and at the end - also when the run stops
//!    on an error - plus `password-reset-needed.csv` for the people to contact; then the
//!    summary, with every user that needs attention by name.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::Outcome;
use crate::cli::{BannedPolicy, MigrateUsersArgs};
use crate::files;
use crate::metadata::{self, Metadata};
use crate::progress;
use crate::report::{Align, TextTable, thousands};
use crate::stack_auth::{
    ApiError, Client, ClientOptions, CreateUser, OAuthProvider, RetryPolicy,
    USER_EMAIL_ALREADY_EXISTS, User,
};
use crate::user_mapping::{self, Journal, JournalEntry, JournalEvent, MappingEntry, UserMapping};

/// The mapping file is rewritten after this many new journal entries, so a crash leaves a
/// usable (if slightly behind) mapping even before the next run rebuilds it.
pub const MAPPING_EVERY: usize = 100;

/// One `auth.users` row as `fmig export` writes it (columns a GoTrue version lacks are absent).
#[derive(Clone, Debug, Deserialize)]
pub struct SupabaseUser {
    pub id: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub encrypted_password: Option<String>,
    #[serde(default)]
    pub email_confirmed_at: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub raw_user_meta_data: Option<Value>,
    #[serde(default)]
    pub raw_app_meta_data: Option<Value>,
    #[serde(default)]
    pub banned_until: Option<String>,
    #[serde(default)]
    pub deleted_at: Option<String>,
    #[serde(default)]
    pub is_anonymous: Option<bool>,
    #[serde(default)]
    pub is_sso_user: Option<bool>,
    #[serde(default)]
    pub identities: Vec<Identity>,
    /// `auth.mfa_factors` rows, nested by the export (absent for an older GoTrue).
    #[serde(default)]
    pub mfa_factors: Vec<MfaFactor>,
}

/// One second factor of a user (`auth.mfa_factors`). The secret is never logged.
#[derive(Clone, Deserialize)]
pub struct MfaFactor {
    pub factor_type: String,
    pub status: String,
    #[serde(default)]
    pub secret: Option<String>,
}

impl std::fmt::Debug for MfaFactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MfaFactor")
            .field("factor_type", &self.factor_type)
            .field("status", &self.status)
            .field("secret", &self.secret.as_ref().map(|_| crate::redact::MASK))
            .finish()
    }
}

/// What becomes of a created user's second factors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecondFactor {
    /// No verified factor.
    None,
    /// A verified TOTP secret is carried: the authenticator app keeps working.
    TotpCarried,
    /// Verified factors that cannot be carried (WebAuthn, phone, a secret encrypted at rest):
    /// the user had 2FA and must enrol again.
    Lost(String),
}

/// A base32 secret (RFC 4648, as authenticator apps take it; case, spaces and padding
/// ignored) as bytes; `None` when it is not one (e.g. GoTrue's encrypted JSON envelope).
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut bits: u64 = 0;
    let mut count = 0;
    let mut out = Vec::new();
    for c in text.chars().filter(|c| !c.is_whitespace() && *c != '=') {
        let value = match c.to_ascii_uppercase() {
            c @ 'A'..='Z' => c as u64 - 'A' as u64,
            c @ '2'..='7' => c as u64 - '2' as u64 + 26,
            _ => return None,
        };
        bits = (bits << 5) | value;
        count += 5;
        if count >= 8 {
            count -= 8;
            out.push((bits >> count) as u8);
            bits &= (1 << count) - 1;
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The TOTP secret to carry (base64 of its bytes) and what becomes of the user's 2FA. Only
/// verified factors count (an unverified one is an enrolment never finished); of several
/// verified TOTP factors the last enrolled is carried.
fn second_factor(u: &SupabaseUser) -> (Option<String>, SecondFactor) {
    let verified: Vec<&MfaFactor> = u
        .mfa_factors
        .iter()
        .filter(|f| f.status == "verified")
        .collect();
    let totp = verified
        .iter()
        .filter(|f| f.factor_type == "totp")
        .filter_map(|f| base32_decode(f.secret.as_deref()?))
        .next_back();
    let mut lost: Vec<String> = verified
        .iter()
        .filter(|f| f.factor_type != "totp")
        .map(|f| f.factor_type.clone())
        .collect();
    if verified
        .iter()
        .any(|f| f.factor_type == "totp" && f.secret.as_deref().and_then(base32_decode).is_none())
    {
        lost.push("totp secret encrypted at rest".into());
    }
    lost.dedup();
    match (totp, lost.is_empty()) {
        (Some(bytes), _) => (
            Some(crate::codec::base64(&bytes)),
            SecondFactor::TotpCarried,
        ),
        (None, false) => (None, SecondFactor::Lost(lost.join(", "))),
        (None, true) => (None, SecondFactor::None),
    }
}

/// One `auth.identities` row, nested under its user by the export.
#[derive(Clone, Debug, Deserialize)]
pub struct Identity {
    pub provider: String,
    #[serde(default)]
    pub provider_id: Option<String>,
    #[serde(default)]
    pub identity_data: Option<Value>,
    #[serde(default)]
    pub email: Option<String>,
}

/// What happens to a user, decided before any request. Every user is in exactly one; the
/// first six are created, the others are not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    /// A bcrypt hash Stack Auth accepts: the user keeps their password (and OAuth accounts).
    Password,
    /// No password, OAuth accounts of configured providers: they sign in as before.
    OAuthOnly,
    /// An e-mail and nothing else (magic-link users): created, need a link or a reset.
    EmailOnly,
    /// A password that is not an acceptable bcrypt hash: created without it, reset needed.
    InvalidHash,
    /// Has identities of providers not in `--oauth-providers`: created without them.
    ProviderNotConfigured,
    /// Banned in Supabase, created anyway (`--banned create`): an active account to restrict.
    BannedCreated,
    /// Another migratable user has the same e-mail (case-insensitively): a human decides.
    DuplicateEmail,
    /// An e-mail Stack Auth's validator rejects (e.g. an internationalised domain).
    EmailRejected,
    /// No e-mail and no carried OAuth account (phone-only users): nothing to sign in with.
    NoSignInMethod,
    Anonymous,
    /// SAML SSO users: no password and no OAuth account to carry.
    Sso,
    /// `banned_until` in the future (default `--banned skip`).
    Banned,
    /// `deleted_at` set (without `--include-deleted`).
    SoftDeleted,
}

impl Category {
    pub const ALL: [Category; 13] = [
        Category::Password,
        Category::OAuthOnly,
        Category::EmailOnly,
        Category::InvalidHash,
        Category::ProviderNotConfigured,
        Category::BannedCreated,
        Category::DuplicateEmail,
        Category::EmailRejected,
        Category::NoSignInMethod,
        Category::Anonymous,
        Category::Sso,
        Category::Banned,
        Category::SoftDeleted,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Category::Password => "password",
            Category::OAuthOnly => "OAuth only",
            Category::EmailOnly => "e-mail only",
            Category::InvalidHash => "invalid password hash",
            Category::ProviderNotConfigured => "OAuth provider not configured",
            Category::BannedCreated => "banned (created)",
            Category::DuplicateEmail => "e-mail shared by several users",
            Category::EmailRejected => "e-mail rejected by Stack Auth",
            Category::NoSignInMethod => "no e-mail and no OAuth",
            Category::Anonymous => "anonymous",
            Category::Sso => "SSO (SAML)",
            Category::Banned => "banned",
            Category::SoftDeleted => "soft-deleted",
        }
    }

    /// What fmig does with such a user, in the operator's words.
    pub fn action(self) -> &'static str {
        match self {
            Category::Password => "create; password and OAuth accounts kept",
            Category::OAuthOnly => "create; OAuth accounts kept",
            Category::EmailOnly => "create; needs a sign-in link or password reset",
            Category::InvalidHash => "create without password; password reset",
            Category::ProviderNotConfigured => "create without those OAuth accounts",
            Category::BannedCreated => "create as an ACTIVE account: restrict it by hand",
            Category::DuplicateEmail => "skip: decide which user keeps the e-mail",
            Category::EmailRejected => "skip: fix the e-mail by hand",
            Category::NoSignInMethod => "skip: nothing to sign in with",
            Category::Anonymous => "skip",
            Category::Sso => "skip: nothing to carry (set up SSO or a reset)",
            Category::Banned => "skip (--banned create creates them)",
            Category::SoftDeleted => "skip (--include-deleted creates them)",
        }
    }

    pub fn creates(self) -> bool {
        matches!(
            self,
            Category::Password
                | Category::OAuthOnly
                | Category::EmailOnly
                | Category::InvalidHash
                | Category::ProviderNotConfigured
                | Category::BannedCreated
        )
    }

    /// Users an operator must know about by name.
    pub fn needs_attention(self) -> bool {
        !matches!(self, Category::Password | Category::OAuthOnly)
    }
}

/// A user with its category and, when it is created, its request body.
#[derive(Clone, Debug)]
pub struct PlannedUser {
    pub id: String,
    pub email: Option<String>,
    pub category: Category,
    /// Why, in words, without secrets.
    pub notes: Vec<String>,
    pub body: Option<CreateUser>,
    /// Set when the user will exist but cannot sign in as before: the CSV's reason.
    pub reset_reason: Option<String>,
    /// Second factors, for created users.
    pub second_factor: SecondFactor,
}

/// What the planner needs besides the users.
#[derive(Clone, Debug)]
pub struct PlanOptions {
    /// Stack Auth provider ids configured in the project, lower-case.
    pub oauth_providers: HashSet<String>,
    pub include_deleted: bool,
    pub banned: BannedPolicy,
    pub now: DateTime<Utc>,
}

pub async fn run(args: &MigrateUsersArgs) -> Result<Outcome> {
    let started = Instant::now();
    // One run per mapping file: a second one would create the same users again.
    let _lock = if args.dry_run {
        None
    } else {
        let output = args.output_path();
        let dir = output
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Some(crate::lock::DirLock::acquire(dir, "migrate-users")?)
    };
    let input = input_path(args);
    let mut users = Vec::new();
    let mut seen = HashSet::new();
    let input_sha256 = read_checked_users(&args.export_dir, &input, args.input.is_some(), |u| {
        if !seen.insert(u.id.to_lowercase()) {
            bail!("{}: user {} appears twice", input.display(), u.id);
        }
        users.push(u);
        Ok(())
    })
    .context("migrate-users checks the users file first; nothing was sent to Stack Auth")?;
    let options = PlanOptions {
        oauth_providers: args
            .oauth_providers
            .iter()
            .map(|p| p.trim().to_lowercase())
            .filter(|p| !p.is_empty())
            .collect(),
        include_deleted: args.include_deleted,
        banned: args.banned,
        now: Utc::now(),
    };
    let plan = plan(&users, &options);
    drop(users);
    info!(input = %input.display(), users = plan.len(), to_create = plan.iter().filter(|p| p.category.creates()).count(), "users planned");
    log_plan(&plan);

    if args.dry_run {
        return dry_run(args, &plan).await;
    }
    progress::suspend(|| print!("{}", render_counts(&plan)));

    let credentials = args.stack_auth.credentials()?;
    let project_id = credentials.project_id.clone();
    let client = Client::new(&credentials, &client_options(args))?;
    let output = args.output_path();
    if let Some(dir) = output.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
    }
    let mut oauth_providers: Vec<String> = options.oauth_providers.iter().cloned().collect();
    oauth_providers.sort();
    UserChoices {
        project_id: project_id.clone(),
        oauth_providers,
        include_deleted: options.include_deleted,
        banned: options.banned,
        adopt_existing: args.adopt_existing,
        planned_at: options.now,
        input: input.display().to_string(),
        input_sha256,
    }
    .write(&output)?;

    // Stage 2: what already exists.
    let (mut journal, contents) = Journal::open(&user_mapping::journal_path(&output))?;
    if contents.torn_bytes > 0 {
        warn!(
            journal = %journal.path().display(),
            bytes = contents.torn_bytes,
            "the journal's last line was incomplete (the previous run was killed while writing it); \
             it was removed, and that user is found again in Stack Auth below"
        );
    }
    let others = contents.other_projects(&project_id);
    if others > 0 {
        warn!(
            entries = others,
            "the journal holds entries for another Stack Auth project; they are ignored"
        );
    }
    let mut mapped = contents.mappings(&project_id);
    let state = reconcile_all(
        &client,
        &plan,
        &mut mapped,
        &mut journal,
        &project_id,
        args.adopt_existing,
    )
    .await;
    let reconciled = match state {
        Ok(r) => r,
        Err(e) => {
            write_outputs(&output, &mapped, &plan)?;
            return Err(e);
        }
    };
    write_outputs(&output, &mapped, &plan)?;

    // Stage 3: create the rest.
    let to_create: Vec<&PlannedUser> = plan
        .iter()
        .filter(|p| reconciled.to_create.contains(&p.id))
        .collect();
    let recorder = Recorder::start(journal, mapped, output.clone());
    let ctx = Ctx {
        client: &client,
        recorder: &recorder,
        project_id: &project_id,
        adopt_existing: args.adopt_existing,
        max_attempts: args.max_attempts,
    };
    let created_started = Instant::now();
    let (results, fatal) = create_all(&ctx, &to_create, usize::from(args.concurrency)).await;
    let create_seconds = created_started.elapsed().as_secs_f64();
    let mapped = recorder.finish().await?;

    // Stage 4: files and summary.
    write_outputs(&output, &mapped, &plan)?;
    let mut outcomes: HashMap<&str, UserOutcome> = HashMap::new();
    for (id, how) in &reconciled.found {
        outcomes.insert(id.as_str(), how.clone());
    }
    for (id, conflict) in &reconciled.conflicts {
        outcomes.insert(id.as_str(), UserOutcome::Conflict(conflict.clone()));
    }
    for (id, outcome) in results {
        outcomes.insert(id, outcome);
    }
    let summary = Summary {
        plan: &plan,
        outcomes: &outcomes,
        mapped: &mapped,
        warnings: &reconciled.warnings,
        requests: client.requests_sent(),
        retries: client.retries(),
        seconds: started.elapsed().as_secs_f64(),
        create_seconds,
        output: &output,
    };
    write_attention_csv(
        &user_mapping::attention_csv_path(&output),
        &attention(&plan, &outcomes),
    )?;
    let text = summary.render();
    summary.log();
    progress::suspend(|| print!("{text}"));
    if let Some(e) = fatal {
        bail!(
            "{e}\nstopped: {} users are mapped in {}; fix the cause and re-run (nothing is created twice)",
            mapped.len(),
            output.display()
        );
    }
    Ok(if summary.problems() > 0 {
        Outcome::ProblemsFound
    } else {
        Outcome::Success
    })
}

fn client_options(args: &MigrateUsersArgs) -> ClientOptions {
    ClientOptions {
        timeout: Duration::from_secs(args.request_timeout),
        min_interval: Duration::from_millis(args.rate_limit),
        retry: RetryPolicy {
            max_attempts: args.max_attempts,
            base: Duration::from_millis(args.backoff_ms.max(1)),
            ..RetryPolicy::default()
        },
    }
}

/// `--input`, or the export directory's `auth_users.json` (or `.json.gz`).
fn input_path(args: &MigrateUsersArgs) -> PathBuf {
    match &args.input {
        Some(input) => input.clone(),
        None => users_file(&args.export_dir),
    }
}

/// The export directory's `auth_users.json`, or `auth_users.json.gz` when only that exists.
pub fn users_file(export_dir: &Path) -> PathBuf {
    let plain = export_dir.join(metadata::AUTH_USERS_FILE);
    let gz = export_dir.join(format!("{}.gz", metadata::AUTH_USERS_FILE));
    if !plain.exists() && gz.exists() {
        return gz;
    }
    plain
}

/// Reads the users file `input`, handing each user to `each` without keeping any, and returns
/// the file's SHA-256. When the file is the one of an export directory with a `metadata.json`
/// (`given` false: not `--input`), the recorded size, hash and row count are checked: a file
/// edited after the export (an e-mail or a password hash changed by hand) is refused. A file
/// given with `--input`, or a directory without `metadata.json`, is taken as it is.
pub fn read_checked_users(
    export_dir: &Path,
    input: &Path,
    given: bool,
    each: impl FnMut(SupabaseUser) -> Result<()>,
) -> Result<String> {
    let recorded = if given || !export_dir.join(metadata::FILE_NAME).exists() {
        None
    } else {
        Metadata::load(export_dir)?
            .auth_users
            .filter(|entry| input.file_name().is_some_and(|name| *name == *entry.file))
    };
    let (bytes, sha256) = files::sha256_file(input).with_context(|| {
        format!(
            "could not read the exported users {}: run fmig export first (without --skip-auth), or pass --input",
            input.display()
        )
    })?;
    let rows = for_each_user(input, each)?;
    if let Some(entry) = &recorded {
        let read = crate::json_rows::FileRead {
            rows,
            bytes,
            sha256: sha256.clone(),
        };
        entry.check_read(input, &read)?;
    }
    Ok(sha256)
}

/// What a migrate-users run decided with, written next to the mapping before anything is
/// created, so `fmig verify --only users` plans every user exactly as that run did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UserChoices {
    pub project_id: String,
    /// Stack Auth provider ids, lower-case, sorted.
    pub oauth_providers: Vec<String>,
    pub include_deleted: bool,
    pub banned: BannedPolicy,
    pub adopt_existing: bool,
    /// The instant bans were judged at (a ban that ends later still made the user "banned").
    #[serde(with = "crate::user_mapping::iso_time")]
    pub planned_at: DateTime<Utc>,
    /// The users file read, and its SHA-256.
    pub input: String,
    pub input_sha256: String,
}

impl UserChoices {
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            oauth_providers: self.oauth_providers.iter().cloned().collect(),
            include_deleted: self.include_deleted,
            banned: self.banned,
            now: self.planned_at,
        }
    }

    /// The choices recorded next to `mapping_path`, `None` when there are none.
    pub fn load(mapping_path: &Path) -> Result<Option<UserChoices>> {
        let path = user_mapping::choices_path(mapping_path);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("could not read {}", path.display())),
        };
        serde_json::from_slice(&bytes).map(Some).with_context(|| {
            format!(
                "{} is not fmig's record of a migrate-users run (edited by hand?); run \
                 fmig migrate-users again to rewrite it (nothing is created twice)",
                path.display()
            )
        })
    }

    fn write(&self, mapping_path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)?;
        files::write_atomically(&user_mapping::choices_path(mapping_path), &json)?;
        Ok(())
    }
}

/// Streams the export's JSON array of users (plain or gzip) through `each`, one user in memory
/// at a time; returns how many there were.
pub fn for_each_user(path: &Path, mut each: impl FnMut(SupabaseUser) -> Result<()>) -> Result<u64> {
    let file = std::fs::File::open(path).with_context(|| {
        format!(
            "could not open the exported users {}: run fmig export first (without --skip-auth), or pass --input",
            path.display()
        )
    })?;
    let reader = BufReader::with_capacity(256 * 1024, file);
    let mut failed: Option<anyhow::Error> = None;
    let visitor = UserVisitor {
        each: &mut each,
        failed: &mut failed,
    };
    let parsed = if path.extension().is_some_and(|e| e == "gz") {
        let mut de = serde_json::Deserializer::from_reader(BufReader::new(
            flate2::read::GzDecoder::new(reader),
        ));
        serde::Deserializer::deserialize_seq(&mut de, visitor).and_then(|n| de.end().map(|_| n))
    } else {
        let mut de = serde_json::Deserializer::from_reader(reader);
        serde::Deserializer::deserialize_seq(&mut de, visitor).and_then(|n| de.end().map(|_| n))
    };
    if let Some(e) = failed {
        return Err(e);
    }
    parsed.with_context(|| {
        format!(
            "{} is not fmig's auth_users.json (a JSON array of auth.users rows)",
            path.display()
        )
    })
}

/// Hands the array's users to a callback one by one; the callback's error ends the array.
struct UserVisitor<'a, F> {
    each: &'a mut F,
    failed: &'a mut Option<anyhow::Error>,
}

impl<'de, F: FnMut(SupabaseUser) -> Result<()>> serde::de::Visitor<'de> for UserVisitor<'_, F> {
    type Value = u64;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of users")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut n = 0u64;
        while let Some(user) = seq.next_element::<SupabaseUser>()? {
            n += 1;
            if let Err(e) = (self.each)(user) {
                *self.failed = Some(e);
                return Err(serde::de::Error::custom("stopped"));
            }
        }
        Ok(n)
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 1: the plan.

/// Categorises every user and builds the bodies of those to create.
pub fn plan(users: &[SupabaseUser], options: &PlanOptions) -> Vec<PlannedUser> {
    let mut planned: Vec<PlannedUser> = users.iter().map(|u| plan_user(u, options)).collect();
    let groups = shared_emails(
        planned
            .iter()
            .map(|p| p.email.as_deref().filter(|_| p.category.creates())),
    );
    for group in &groups {
        let ids: Vec<String> = group.iter().map(|&i| planned[i].id.clone()).collect();
        for &i in group {
            let p = &mut planned[i];
            let others: Vec<&str> = ids
                .iter()
                .filter(|id| **id != p.id)
                .map(String::as_str)
                .collect();
            p.notes.push(format!(
                "same e-mail as Supabase user {}",
                others.join(", ")
            ));
            p.category = Category::DuplicateEmail;
            p.body = None;
            p.reset_reason = None;
        }
    }
    planned
}

/// Two users that would both be created with one e-mail: Stack Auth would take the first and
/// answer 409 to the second, whichever came first. Which one keeps it is a human call, so
/// each such group (indexes into `emails`, the e-mails of the users that would be created) is
/// a [`Category::DuplicateEmail`].
pub fn shared_emails<'a>(emails: impl Iterator<Item = Option<&'a str>>) -> Vec<Vec<usize>> {
    let mut by_email: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, email) in emails.enumerate() {
        if let Some(email) = email {
            by_email.entry(email.to_lowercase()).or_default().push(i);
        }
    }
    by_email.into_values().filter(|g| g.len() > 1).collect()
}

/// One user's category and body, before [`shared_emails`] is applied.
pub fn plan_user(u: &SupabaseUser, options: &PlanOptions) -> PlannedUser {
    let email = u
        .email
        .as_deref()
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string);
    let password = u.encrypted_password.as_deref().filter(|p| !p.is_empty());
    let hash_problem = password.and_then(bcrypt_problem);
    let valid_hash = password.filter(|_| hash_problem.is_none());
    let banned = is_banned(u.banned_until.as_deref(), options.now);

    let mut carried: Vec<OAuthProvider> = Vec::new();
    let mut dropped: Vec<String> = Vec::new();
    for identity in &u.identities {
        let Some(stack_id) = stack_provider_id(&identity.provider) else {
            continue;
        };
        let data = identity.identity_data.as_ref();
        let account_id = identity
            .provider_id
            .clone()
            .filter(|s| !s.is_empty())
            .or_else(|| data.and_then(|d| d.get("sub")?.as_str().map(str::to_string)));
        let Some(account_id) = account_id else {
            dropped.push(format!("{} (no account id)", identity.provider));
            continue;
        };
        if !options.oauth_providers.contains(&stack_id) {
            dropped.push(identity.provider.clone());
            continue;
        }
        let identity_email = identity
            .email
            .clone()
            .or_else(|| data.and_then(|d| d.get("email")?.as_str().map(str::to_string)))
            .filter(|e| !e.is_empty());
        if !carried
            .iter()
            .any(|c| c.id == stack_id && c.account_id == account_id)
        {
            carried.push(OAuthProvider {
                id: stack_id,
                account_id,
                email: identity_email,
            });
        }
    }

    let mut notes = Vec::new();
    let deleted = u.deleted_at.is_some();
    if deleted {
        notes.push(format!(
            "deleted in Supabase at {}",
            u.deleted_at.as_deref().unwrap_or("")
        ));
    }
    if banned {
        notes.push(format!(
            "banned in Supabase until {}",
            u.banned_until.as_deref().unwrap_or("")
        ));
    }
    if let Some(problem) = &hash_problem {
        notes.push(format!("password: {problem}"));
    }
    if !dropped.is_empty() {
        notes.push(format!(
            "OAuth not configured in Stack Auth: {}",
            dropped.join(", ")
        ));
    }
    let email_problem = email.as_deref().and_then(email_problem);
    if let Some(problem) = &email_problem {
        notes.push(problem.clone());
    }

    let category = if deleted && !options.include_deleted {
        Category::SoftDeleted
    } else if u.is_anonymous == Some(true) {
        Category::Anonymous
    } else if u.is_sso_user == Some(true) {
        Category::Sso
    } else if banned && options.banned == BannedPolicy::Skip {
        Category::Banned
    } else if email.is_none() && carried.is_empty() {
        if let Some(phone) = u.phone.as_deref().filter(|p| !p.is_empty()) {
            notes.push(format!("phone {phone} only"));
        }
        Category::NoSignInMethod
    } else if email_problem.is_some() {
        Category::EmailRejected
    } else if banned {
        Category::BannedCreated
    } else if hash_problem.is_some() {
        Category::InvalidHash
    } else if !dropped.is_empty() {
        Category::ProviderNotConfigured
    } else if valid_hash.is_some() {
        Category::Password
    } else if !carried.is_empty() {
        Category::OAuthOnly
    } else {
        Category::EmailOnly
    };

    let (totp, mut second) = second_factor(u);
    if !category.creates() {
        second = SecondFactor::None;
    }
    match &second {
        SecondFactor::TotpCarried => notes.push("TOTP 2FA carried".into()),
        SecondFactor::Lost(what) => notes.push(format!("had 2FA ({what}): must enrol again")),
        SecondFactor::None => {}
    }
    let (body, reset_reason) = if category.creates() {
        let reason = match (&email, valid_hash, carried.is_empty()) {
            (Some(_), None, true) => Some(if let Some(problem) = &hash_problem {
                format!("password not carried: {problem}")
            } else if !dropped.is_empty() {
                format!(
                    "signed in with {} only, not configured in Stack Auth",
                    dropped.join(", ")
                )
            } else {
                "no password in Supabase (magic-link user)".to_string()
            }),
            _ => None,
        };
        let mut body = body_for(u, email.as_deref(), valid_hash, carried, banned, deleted);
        body.totp_secret_base64 = totp;
        (Some(body), reason)
    } else {
        (None, None)
    };
    PlannedUser {
        id: u.id.clone(),
        email,
        category,
        notes,
        body,
        reset_reason,
        second_factor: second,
    }
}

/// The create-user body by the spec's default rules.
fn body_for(
    u: &SupabaseUser,
    email: Option<&str>,
    hash: Option<&str>,
    oauth: Vec<OAuthProvider>,
    banned: bool,
    deleted: bool,
) -> CreateUser {
    let meta = u.raw_user_meta_data.as_ref().and_then(Value::as_object);
    let name_keys = ["display_name", "full_name", "name"];
    let display_name = meta.and_then(|m| {
        name_keys.iter().find_map(|k| {
            m.get(*k)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        })
    });
    let avatar = meta
        .and_then(|m| m.get("avatar_url"))
        .and_then(Value::as_str)
        .filter(|s| is_web_url(s))
        .map(str::to_string);
    let client_metadata = meta.and_then(|m| {
        let mut rest: Map<String, Value> = m.clone();
        if display_name.is_some() {
            for k in name_keys {
                rest.remove(k);
            }
        }
        if avatar.is_some() {
            rest.remove("avatar_url");
        }
        (!rest.is_empty()).then_some(Value::Object(rest))
    });
    let mut server = Map::new();
    server.insert("supabase_user_id".into(), json!(u.id));
    if let Some(app) = u.raw_app_meta_data.as_ref().filter(|v| !v.is_null()) {
        server.insert("supabase_app_metadata".into(), app.clone());
    }
    // So the accounts that need a decision can be found in Stack Auth later.
    if banned {
        server.insert("supabase_banned_until".into(), json!(u.banned_until));
    }
    if deleted {
        server.insert("supabase_deleted_at".into(), json!(u.deleted_at));
    }
    CreateUser {
        primary_email: email.map(str::to_string),
        primary_email_verified: email.map(|_| u.email_confirmed_at.is_some()),
        primary_email_auth_enabled: email.map(|_| true),
        display_name,
        password_hash: hash.map(str::to_string),
        oauth_providers: oauth,
        profile_image_url: avatar,
        client_metadata,
        server_metadata: Some(Value::Object(server)),
        totp_secret_base64: None,
    }
}

/// Supabase's provider name -> Stack Auth's provider id; `None` for sign-in methods that are
/// not OAuth (e-mail, phone, SAML SSO).
pub fn stack_provider_id(supabase: &str) -> Option<String> {
    let p = supabase.trim().to_lowercase();
    if p.is_empty()
        || crate::supabase::NON_OAUTH_PROVIDERS.contains(&p.as_str())
        || p == "anonymous"
        || p.starts_with("sso:")
        || p == "sso"
    {
        return None;
    }
    Some(
        match p.as_str() {
            "azure" => "microsoft",
            "linkedin_oidc" => "linkedin",
            "twitter" => "x",
            other => other,
        }
        .to_string(),
    )
}

/// Why `hash` is not a password hash Stack Auth accepts (bcrypt in Modular Crypt Format,
/// `$2a$`/`$2b$`/`$2y$`, cost 4..=16; the rule of [`crate::supabase::BCRYPT_PATTERN`] plus
/// Stack Auth's cost limit), or `None` when it is. Says what is wrong, never the hash.
pub fn bcrypt_problem(hash: &str) -> Option<String> {
    let b = hash.as_bytes();
    if hash.starts_with("$argon2") {
        return Some("an argon2 hash, not bcrypt".into());
    }
    if !hash.starts_with("$2") {
        return Some(format!("not a bcrypt hash ({} characters)", hash.len()));
    }
    if b.len() != 60 {
        return Some(format!(
            "bcrypt-like but {} characters long, not 60",
            hash.chars().count()
        ));
    }
    if !matches!(b[2], b'a' | b'b' | b'y') || b[3] != b'$' {
        return Some(format!(
            "bcrypt variant {} is not accepted (only $2a$, $2b$, $2y$)",
            String::from_utf8_lossy(&b[..4.min(b.len())])
        ));
    }
    let cost = std::str::from_utf8(&b[4..6])
        .ok()
        .and_then(|c| c.parse::<u32>().ok());
    match cost {
        Some(c) if (4..=16).contains(&c) && b[6] == b'$' => {}
        Some(c) if b[6] == b'$' => return Some(format!("bcrypt cost {c} outside 4..16")),
        _ => return Some("bcrypt-like but malformed cost".into()),
    }
    if !b[7..]
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'.' || *c == b'/')
    {
        return Some("bcrypt-like but with characters outside bcrypt's alphabet".into());
    }
    None
}

/// Why Stack Auth's e-mail validator would reject `email`, or `None`. Its rule is the HTML
/// standard's "valid e-mail address" (what yup's `.email()` checks): ASCII only, so an
/// internationalised domain such as `küche.example` is rejected (its punycode form would pass).
pub fn email_problem(email: &str) -> Option<String> {
    let Some((local, domain)) = email.split_once('@') else {
        return Some("e-mail has no @".into());
    };
    let local_ok = !local.is_empty()
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".!#$%&'*+/=?^_`{|}~-".contains(c));
    if !local_ok {
        return Some("e-mail's local part has characters Stack Auth rejects".into());
    }
    if !domain.is_ascii() {
        return Some(
            "e-mail has an internationalised domain, which Stack Auth rejects (its punycode form would be accepted)"
                .into(),
        );
    }
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b.len() <= 63
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
    };
    if !domain.split('.').all(label_ok) {
        return Some("e-mail's domain is not a valid host name".into());
    }
    None
}

/// `banned_until` in the future. `infinity` is a ban forever; an unreadable value counts as
/// banned, so nobody is let in by accident.
fn is_banned(until: Option<&str>, now: DateTime<Utc>) -> bool {
    match until.map(str::trim) {
        None | Some("") | Some("-infinity") => false,
        Some("infinity") => true,
        Some(text) => DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc) > now)
            .unwrap_or(true),
    }
}

fn is_web_url(text: &str) -> bool {
    url::Url::parse(text)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
}

// ---------------------------------------------------------------------------------------------
// --dry-run

async fn dry_run(args: &MigrateUsersArgs, plan: &[PlannedUser]) -> Result<Outcome> {
    let mut out = render_counts(plan);
    out.push_str(&render_attention(
        &attention(plan, &HashMap::new()),
        "the log file",
    ));
    out.push_str("\nSample request bodies (POST /api/v1/users; password hashes masked):\n");
    for category in Category::ALL.iter().filter(|c| c.creates()) {
        if let Some(p) = plan.iter().find(|p| p.category == *category) {
            let body = p.body.as_ref().expect("created users have a body").masked();
            let _ = writeln!(
                out,
                "-- {} (Supabase user {}):\n{}",
                category.label(),
                p.id,
                serde_json::to_string_pretty(&body)?
            );
        }
    }
    progress::suspend(|| print!("{out}"));

    let stack = &args.stack_auth;
    if stack
        .project
        .project_id
        .as_deref()
        .unwrap_or("")
        .trim()
        .is_empty()
        || stack.secret_key.as_deref().unwrap_or("").trim().is_empty()
    {
        let line = "credentials not checked: STACK_AUTH_PROJECT_ID and STACK_AUTH_SECRET_KEY are not both set";
        warn!("{line}");
        return Ok(Outcome::Success);
    }
    let credentials = stack.credentials()?;
    let client = Client::new(&credentials, &client_options(args))?;
    client.check_credentials().await.map_err(|e| {
        anyhow!(
            "the credentials check failed ({}): {e}",
            credentials.api_url
        )
    })?;
    let line = format!(
        "credentials OK: project {} at {} answered a read; nothing was created or written (dry run)",
        credentials.project_id, credentials.api_url
    );
    info!("{line}");
    progress::suspend(|| println!("{line}"));
    Ok(Outcome::Success)
}

// ---------------------------------------------------------------------------------------------
// Stage 2: reconcile with the journal and with Stack Auth.

/// How one user ended (or stood before this run's creations).
#[derive(Clone, Debug, PartialEq)]
enum UserOutcome {
    /// In the journal and in Stack Auth before this run.
    AlreadyMapped,
    /// In Stack Auth with our `supabase_user_id` but not in the journal (a killed run).
    Reconciled,
    /// Created by this run (also when the answer was lost and the user found afterwards).
    Created,
    /// Mapped to a same-e-mail user that fmig did not create (`--adopt-existing`).
    Adopted,
    Conflict(String),
    Failed(String),
}

#[derive(Default)]
struct Reconciliation {
    /// Supabase ids still to create.
    to_create: HashSet<String>,
    /// Supabase ids found mapped, and how.
    found: Vec<(String, UserOutcome)>,
    /// Supabase ids that conflict with an existing account.
    conflicts: Vec<(String, String)>,
    /// Things a human should look at that are not one user's outcome.
    warnings: Vec<String>,
    /// The Stack Auth user of each reconciled or adopted Supabase id.
    users: HashMap<String, User>,
}

async fn reconcile_all(
    client: &Client,
    plan: &[PlannedUser],
    mapped: &mut BTreeMap<String, MappingEntry>,
    journal: &mut Journal,
    project_id: &str,
    adopt_existing: bool,
) -> Result<Reconciliation> {
    let spinner = progress::spinner("listing Stack Auth users");
    let listed = client
        .list_all_users(None, |n| {
            spinner.set_message(format!("listing Stack Auth users: {n}"))
        })
        .await;
    spinner.finish_and_clear();
    let mut listed = listed.map_err(|e| anyhow!("could not list the Stack Auth users: {e}"))?;
    info!(
        users = listed.len(),
        journal = mapped.len(),
        "Stack Auth users listed"
    );

    // Journal entries whose user the list does not show: ask for each. Only a 404 means it
    // is gone; a list that missed a user must not make us create it again.
    let mut new_entries = Vec::new();
    let listed_ids: HashSet<String> = listed.iter().map(|u| u.id.to_lowercase()).collect();
    let absent: Vec<MappingEntry> = mapped
        .values()
        .filter(|m| !listed_ids.contains(&m.stack_auth_user_id.to_lowercase()))
        .cloned()
        .collect();
    let mut warnings = Vec::new();
    for m in absent {
        match client.get_user(&m.stack_auth_user_id).await {
            Ok(Some(user)) => {
                warn!(stack_auth_user_id = %user.id, "the user list did not include a journaled user that exists");
                listed.push(user);
            }
            Ok(None) => {
                let text = format!(
                    "Stack Auth user {} (Supabase user {}) recorded in the journal no longer exists; it is created again if still planned",
                    m.stack_auth_user_id, m.supabase_user_id
                );
                warn!("{text}");
                warnings.push(text);
                new_entries.push(JournalEntry {
                    event: JournalEvent::Missing,
                    project_id: project_id.to_string(),
                    supabase_user_id: m.supabase_user_id.clone(),
                    stack_auth_user_id: m.stack_auth_user_id.clone(),
                    email: m.email.clone(),
                    migrated_at: Utc::now(),
                });
                mapped.remove(&m.supabase_user_id);
            }
            Err(e) => bail!(
                "could not check Stack Auth user {}: {e}",
                m.stack_auth_user_id
            ),
        }
    }

    let mut r = reconcile(plan, mapped, &listed, adopt_existing);
    warnings.append(&mut r.warnings);
    r.warnings = warnings;
    for (id, how) in &r.found {
        let (event, user) = match how {
            UserOutcome::Reconciled => (JournalEvent::Reconciled, &r.users[id]),
            UserOutcome::Adopted => (JournalEvent::Adopted, &r.users[id]),
            _ => continue,
        };
        let email = plan
            .iter()
            .find(|p| &p.id == id)
            .and_then(|p| p.email.clone());
        new_entries.push(entry_for(event, project_id, id, user, email));
    }
    journal.append(&new_entries)?;
    for e in &new_entries {
        match e.event {
            JournalEvent::Missing => {}
            _ => {
                mapped.insert(e.supabase_user_id.clone(), mapping_of(e));
            }
        }
    }
    let found_now = r
        .found
        .iter()
        .filter(|(_, h)| *h != UserOutcome::AlreadyMapped)
        .count();
    info!(
        already = r.found.len() - found_now,
        found_now,
        conflicts = r.conflicts.len(),
        to_create = r.to_create.len(),
        "reconciled with Stack Auth"
    );
    Ok(r)
}

/// Decides, per planned user, from the journal's mapping and the full list of Stack Auth
/// users: already there, to create, or in conflict. Pure, so it is tested without a server.
fn reconcile(
    plan: &[PlannedUser],
    mapped: &BTreeMap<String, MappingEntry>,
    listed: &[User],
    adopt_existing: bool,
) -> Reconciliation {
    let mut by_supabase: HashMap<String, Vec<&User>> = HashMap::new();
    let mut by_email: HashMap<String, Vec<&User>> = HashMap::new();
    let listed_ids: HashSet<String> = listed.iter().map(|u| u.id.to_lowercase()).collect();
    for u in listed {
        if let Some(id) = u.supabase_user_id() {
            by_supabase.entry(id.to_lowercase()).or_default().push(u);
        }
        if let Some(email) = &u.primary_email {
            by_email.entry(email.to_lowercase()).or_default().push(u);
        }
    }
    let mut r = Reconciliation::default();
    for p in plan.iter().filter(|p| p.category.creates()) {
        let claims = by_supabase
            .get(&p.id.to_lowercase())
            .cloned()
            .unwrap_or_default();
        if let Some(m) = mapped
            .get(&p.id)
            .filter(|m| listed_ids.contains(&m.stack_auth_user_id.to_lowercase()))
        {
            if claims.len() > 1 {
                r.warnings
                    .push(duplicates_warning(p, &claims, &m.stack_auth_user_id));
            }
            r.found.push((p.id.clone(), UserOutcome::AlreadyMapped));
            continue;
        }
        if !claims.is_empty() {
            let oldest = claims
                .iter()
                .min_by_key(|u| (u.signed_up_at_millis.unwrap_or(i64::MAX), u.id.clone()))
                .expect("not empty");
            if claims.len() > 1 {
                r.warnings.push(duplicates_warning(p, &claims, &oldest.id));
            }
            r.users.insert(p.id.clone(), (*oldest).clone());
            r.found.push((p.id.clone(), UserOutcome::Reconciled));
            continue;
        }
        let same_email = p
            .email
            .as_ref()
            .and_then(|e| by_email.get(&e.to_lowercase()))
            .cloned()
            .unwrap_or_default();
        match same_email.as_slice() {
            [] => {
                r.to_create.insert(p.id.clone());
            }
            [existing] if existing.supabase_user_id().is_none() && adopt_existing => {
                r.users.insert(p.id.clone(), (*existing).clone());
                r.found.push((p.id.clone(), UserOutcome::Adopted));
            }
            users => {
                r.conflicts
                    .push((p.id.clone(), describe_conflict(users, adopt_existing)));
            }
        }
    }
    r
}

fn duplicates_warning(p: &PlannedUser, claims: &[&User], kept: &str) -> String {
    let ids: Vec<&str> = claims.iter().map(|u| u.id.as_str()).collect();
    format!(
        "Supabase user {} has {} Stack Auth users ({}); mapped to {kept} - delete the others by hand",
        p.id,
        claims.len(),
        ids.join(", ")
    )
}

fn describe_conflict(users: &[&User], adopt_existing: bool) -> String {
    let described: Vec<String> = users
        .iter()
        .map(|u| match u.supabase_user_id() {
            Some(other) => format!("{} (migrated from Supabase user {other})", u.id),
            None => format!("{} (not created by fmig)", u.id),
        })
        .collect();
    let hint = if users.len() == 1 && users[0].supabase_user_id().is_none() && !adopt_existing {
        "; --adopt-existing maps to it"
    } else {
        ""
    };
    format!(
        "Stack Auth already has this e-mail: user {}{hint}",
        described.join(", ")
    )
}

fn entry_for(
    event: JournalEvent,
    project_id: &str,
    supabase_id: &str,
    user: &User,
    fallback_email: Option<String>,
) -> JournalEntry {
    let migrated_at = match event {
        JournalEvent::Reconciled => user
            .signed_up_at_millis
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .unwrap_or_else(Utc::now),
        _ => Utc::now(),
    };
    JournalEntry {
        event,
        project_id: project_id.to_string(),
        supabase_user_id: supabase_id.to_string(),
        stack_auth_user_id: user.id.clone(),
        email: user
            .primary_email
            .clone()
            .or(fallback_email.map(|e| e.to_lowercase())),
        migrated_at,
    }
}

fn mapping_of(e: &JournalEntry) -> MappingEntry {
    MappingEntry {
        supabase_user_id: e.supabase_user_id.clone(),
        stack_auth_user_id: e.stack_auth_user_id.clone(),
        email: e.email.clone(),
        migrated_at: e.migrated_at,
    }
}

// ---------------------------------------------------------------------------------------------
// Stage 3: create.

/// A journal entry on its way to the recorder, with where to send "it is on disk".
type Record = (JournalEntry, oneshot::Sender<Result<(), String>>);

/// Owns the journal on a blocking thread: appends what workers send, one fsync per batch
/// (group commit), acknowledges each entry only once it is on disk, and rewrites the mapping
/// file every [`MAPPING_EVERY`] entries.
struct Recorder {
    sender: Option<mpsc::UnboundedSender<Record>>,
    handle: tokio::task::JoinHandle<BTreeMap<String, MappingEntry>>,
}

impl Recorder {
    fn start(
        mut journal: Journal,
        mut mapped: BTreeMap<String, MappingEntry>,
        output: PathBuf,
    ) -> Recorder {
        let (sender, mut receiver) = mpsc::unbounded_channel::<Record>();
        let handle = tokio::task::spawn_blocking(move || {
            let mut since_write = 0;
            while let Some(first) = receiver.blocking_recv() {
                let mut batch = vec![first];
                while batch.len() < 256 {
                    match receiver.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let entries: Vec<JournalEntry> = batch.iter().map(|(e, _)| e.clone()).collect();
                let result = journal.append(&entries).map_err(|e| format!("{e:#}"));
                if result.is_ok() {
                    for e in &entries {
                        mapped.insert(e.supabase_user_id.clone(), mapping_of(e));
                    }
                    since_write += entries.len();
                    if since_write >= MAPPING_EVERY {
                        since_write = 0;
                        let m = UserMapping::new(mapped.values().cloned().collect(), Utc::now());
                        if let Err(e) = m.write(&output) {
                            warn!("could not rewrite {}: {e:#}", output.display());
                        }
                    }
                }
                for (_, ack) in batch {
                    let _ = ack.send(result.clone());
                }
            }
            mapped
        });
        Recorder {
            sender: Some(sender),
            handle,
        }
    }

    /// Returns once `entry` is durable in the journal.
    async fn record(&self, entry: JournalEntry) -> Result<(), ApiError> {
        let (ack, done) = oneshot::channel();
        let failed = |m: String| ApiError::Fatal {
            status: None,
            code: None,
            message: format!("could not record a created user in the journal: {m}"),
        };
        self.sender
            .as_ref()
            .expect("recorder running")
            .send((entry, ack))
            .map_err(|_| failed("the journal writer stopped".into()))?;
        done.await
            .map_err(|_| failed("the journal writer stopped".into()))?
            .map_err(failed)
    }

    async fn finish(mut self) -> Result<BTreeMap<String, MappingEntry>> {
        drop(self.sender.take());
        self.handle.await.context("the journal writer panicked")
    }
}

struct Ctx<'a> {
    client: &'a Client,
    recorder: &'a Recorder,
    project_id: &'a str,
    adopt_existing: bool,
    max_attempts: u32,
}

/// Running counts for the progress bar.
#[derive(Default)]
struct Counters {
    created: AtomicU64,
    conflicts: AtomicU64,
    failed: AtomicU64,
}

/// Creates every user of `to_create`, `concurrency` at a time. Returns each user's outcome and
/// the fatal error that stopped the run, if one did (users not started then have no outcome).
async fn create_all<'a>(
    ctx: &Ctx<'_>,
    to_create: &[&'a PlannedUser],
    concurrency: usize,
) -> (Vec<(&'a str, UserOutcome)>, Option<ApiError>) {
    let bar = progress::bar(to_create.len() as u64, "Stack Auth users");
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>18} [{bar:30}] {human_pos}/{human_len} eta {eta} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let counters = Counters::default();
    let started = Instant::now();
    let mut results = Vec::with_capacity(to_create.len());
    let mut fatal = None;
    let mut stream = futures::stream::iter(to_create.iter().copied())
        .map(|p| async move { (p, migrate_one(ctx, p).await) })
        .buffer_unordered(concurrency.max(1));
    let mut done = 0usize;
    while let Some((p, result)) = stream.next().await {
        let outcome = match result {
            Ok(outcome) => outcome,
            Err(e) => {
                fatal = Some(e);
                break;
            }
        };
        match &outcome {
            UserOutcome::Created | UserOutcome::Adopted => {
                counters.created.fetch_add(1, Ordering::Relaxed);
            }
            UserOutcome::Conflict(why) => {
                counters.conflicts.fetch_add(1, Ordering::Relaxed);
                warn!(supabase_user_id = %p.id, email = p.email.as_deref().unwrap_or(""), "conflict: {why}");
            }
            UserOutcome::Failed(why) => {
                counters.failed.fetch_add(1, Ordering::Relaxed);
                warn!(supabase_user_id = %p.id, email = p.email.as_deref().unwrap_or(""), "not created: {why}");
            }
            _ => {}
        }
        results.push((p.id.as_str(), outcome));
        done += 1;
        update_bar(&bar, &counters, ctx.client, started);
        if done.is_multiple_of(250) {
            info!(
                done,
                of = to_create.len(),
                requests = ctx.client.requests_sent(),
                "creating users"
            );
        }
    }
    drop(stream);
    bar.finish_and_clear();
    (results, fatal)
}

fn update_bar(bar: &ProgressBar, c: &Counters, client: &Client, started: Instant) {
    let seconds = started.elapsed().as_secs_f64().max(0.001);
    bar.inc(1);
    bar.set_message(format!(
        "created {} conflicts {} failed {} | {:.0} req/s",
        c.created.load(Ordering::Relaxed),
        c.conflicts.load(Ordering::Relaxed),
        c.failed.load(Ordering::Relaxed),
        client.requests_sent() as f64 / seconds
    ));
}

/// Creates one user, retrying what is safe, and records it. `Err` only for a fatal error.
async fn migrate_one(ctx: &Ctx<'_>, p: &PlannedUser) -> Result<UserOutcome, ApiError> {
    let body = p.body.as_ref().expect("only created users are migrated");
    let mut attempt = 0;
    // Whether a create of ours may have succeeded unseen: only then is an account found
    // afterwards this run's creation; otherwise it was already there (another run made it).
    let mut answer_lost = false;
    loop {
        attempt += 1;
        let error = match ctx.client.create_user(body).await {
            Ok(user) => return record(ctx, p, JournalEvent::Created, &user).await,
            Err(e) => e,
        };
        match &error {
            ApiError::Fatal { .. } => return Err(error),
            ApiError::Rejected {
                status: 409, code, ..
            } if code.as_deref() == Some(USER_EMAIL_ALREADY_EXISTS) => {
                return after_conflict(ctx, p, &error, answer_lost).await;
            }
            ApiError::Rejected { message, .. } => {
                return Ok(UserOutcome::Failed(message.clone()));
            }
            ApiError::Transient {
                unreachable,
                message,
                ..
            } => {
                if attempt >= ctx.max_attempts {
                    if *unreachable {
                        return Err(ApiError::Fatal {
                            status: None,
                            code: None,
                            message: format!(
                                "could not reach Stack Auth after {attempt} attempts: {message}"
                            ),
                        });
                    }
                    return Ok(UserOutcome::Failed(format!(
                        "gave up after {attempt} attempts: {message}"
                    )));
                }
                debug!(supabase_user_id = %p.id, attempt, "retrying: {message}");
                ctx.client.back_off(attempt, &error).await;
            }
            ApiError::Ambiguous { message } => {
                // The server may have created the user: wait (a slow create may still commit),
                // then look before creating again.
                answer_lost = true;
                warn!(supabase_user_id = %p.id, attempt, "no answer to a create ({message}); checking whether the user exists");
                ctx.client.back_off(attempt, &error).await;
                match find_ours(ctx.client, p).await {
                    Ok(Some(user)) => {
                        return record(ctx, p, JournalEvent::Created, &user).await;
                    }
                    Ok(None) => {}
                    Err(e) if e.is_fatal() => return Err(e),
                    Err(e) => debug!(supabase_user_id = %p.id, "lookup failed: {e}"),
                }
                if attempt >= ctx.max_attempts {
                    return Ok(UserOutcome::Failed(format!(
                        "no answer after {attempt} attempts: {message}"
                    )));
                }
            }
        }
        ctx.client.note_retry();
    }
}

/// The Stack Auth user carrying this Supabase id, if any. Searches by e-mail (cheap); a user
/// without an e-mail needs the full list.
async fn find_ours(client: &Client, p: &PlannedUser) -> Result<Option<User>, ApiError> {
    let users = client.list_all_users(p.email.as_deref(), |_| {}).await?;
    Ok(users
        .into_iter()
        .filter(|u| {
            u.supabase_user_id()
                .is_some_and(|id| id.eq_ignore_ascii_case(&p.id))
        })
        .min_by_key(|u| (u.signed_up_at_millis.unwrap_or(i64::MAX), u.id.clone())))
}

/// A 409 `USER_EMAIL_ALREADY_EXISTS`: our own earlier attempt (answer lost), an account to
/// adopt, or a conflict.
async fn after_conflict(
    ctx: &Ctx<'_>,
    p: &PlannedUser,
    error: &ApiError,
    answer_lost: bool,
) -> Result<UserOutcome, ApiError> {
    let email = p.email.as_deref().unwrap_or_default();
    let users = match ctx.client.list_all_users(Some(email), |_| {}).await {
        Ok(users) => users,
        Err(e) if e.is_fatal() => return Err(e),
        Err(e) => {
            return Ok(UserOutcome::Conflict(format!(
                "{error}; lookup failed: {e}"
            )));
        }
    };
    let same: Vec<&User> = users
        .iter()
        .filter(|u| {
            u.primary_email
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(email))
        })
        .collect();
    if let Some(ours) = same.iter().find(|u| {
        u.supabase_user_id()
            .is_some_and(|id| id.eq_ignore_ascii_case(&p.id))
    }) {
        // Ours: created by this run if one of its creates went unanswered, else by an earlier
        // or concurrent run (counted as already there, never as created).
        let event = if answer_lost {
            JournalEvent::Created
        } else {
            JournalEvent::Reconciled
        };
        return record(ctx, p, event, ours).await;
    }
    if let [existing] = same.as_slice()
        && ctx.adopt_existing
        && existing.supabase_user_id().is_none()
    {
        return record(ctx, p, JournalEvent::Adopted, existing).await;
    }
    if same.is_empty() {
        return Ok(UserOutcome::Conflict(format!("{error}")));
    }
    Ok(UserOutcome::Conflict(describe_conflict(
        &same,
        ctx.adopt_existing,
    )))
}

async fn record(
    ctx: &Ctx<'_>,
    p: &PlannedUser,
    event: JournalEvent,
    user: &User,
) -> Result<UserOutcome, ApiError> {
    let entry = entry_for(event, ctx.project_id, &p.id, user, p.email.clone());
    ctx.recorder.record(entry).await?;
    debug!(supabase_user_id = %p.id, stack_auth_user_id = %user.id, category = p.category.label(), "user mapped");
    Ok(match event {
        JournalEvent::Adopted => UserOutcome::Adopted,
        JournalEvent::Reconciled => UserOutcome::Reconciled,
        _ => UserOutcome::Created,
    })
}

// ---------------------------------------------------------------------------------------------
// Stage 4: files and summary.

/// user-mapping.json from the journal's state, and password-reset-needed.csv for the mapped
/// users who cannot sign in as before.
fn write_outputs(
    output: &Path,
    mapped: &BTreeMap<String, MappingEntry>,
    plan: &[PlannedUser],
) -> Result<()> {
    UserMapping::new(mapped.values().cloned().collect(), Utc::now()).write(output)?;
    let mut csv = String::from("id,email,reason\n");
    for p in plan {
        if let (Some(reason), true) = (&p.reset_reason, mapped.contains_key(&p.id)) {
            let _ = writeln!(
                csv,
                "{},{},{}",
                csv_field(&p.id),
                csv_field(p.email.as_deref().unwrap_or("")),
                csv_field(reason)
            );
        }
    }
    files::write_atomically(&user_mapping::reset_csv_path(output), csv.as_bytes())?;
    Ok(())
}

/// RFC 4180 quoting, and a leading `'` for text a spreadsheet would run as a formula.
fn csv_field(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// The plan as a table: users per category and what happens to them.
fn render_counts(plan: &[PlannedUser]) -> String {
    let mut table = TextTable::new(&[
        ("category", Align::Left),
        ("users", Align::Right),
        ("what happens", Align::Left),
    ]);
    for c in Category::ALL {
        let n = plan.iter().filter(|p| p.category == c).count();
        if n > 0 {
            table.row(vec![
                c.label().into(),
                thousands(n as i64),
                c.action().into(),
            ]);
        }
    }
    let create = plan.iter().filter(|p| p.category.creates()).count();
    let reset = plan.iter().filter(|p| p.reset_reason.is_some()).count();
    format!(
        "Supabase users: {} - {} to create in Stack Auth ({} of them need a sign-in link or password reset), {} not migrated\n{}{}",
        thousands(plan.len() as i64),
        thousands(create as i64),
        thousands(reset as i64),
        thousands((plan.len() - create) as i64),
        table.render(),
        second_factor_line(plan)
    )
}

/// The second factors of the created users, in one line ("" when nobody has 2FA).
fn second_factor_line(plan: &[PlannedUser]) -> String {
    let carried = plan
        .iter()
        .filter(|p| p.second_factor == SecondFactor::TotpCarried)
        .count();
    let lost = plan
        .iter()
        .filter(|p| matches!(p.second_factor, SecondFactor::Lost(_)))
        .count();
    if carried + lost == 0 {
        return String::new();
    }
    format!(
        "Two-factor authentication: {} users keep their TOTP authenticator; {} had 2FA that \
         cannot be carried (WebAuthn, phone, a secret encrypted at rest) and must enrol again \
         (listed as needing attention)\n",
        thousands(carried as i64),
        thousands(lost as i64)
    )
}

/// Users listed per category on the console; the rest are in the CSV (or, for a dry run, the
/// log file). Hundreds of lines of ids hide the summary an operator is looking for.
const ATTENTION_SHOWN_PER_CATEGORY: usize = 5;

/// One user that needs attention: a skipped category, a conflict, a failure, a reset to send.
struct Attention<'a> {
    category: Category,
    user: &'a PlannedUser,
    details: String,
}

/// Every user that needs attention, in category order, with what happened or will happen.
fn attention<'a>(
    plan: &'a [PlannedUser],
    outcomes: &HashMap<&str, UserOutcome>,
) -> Vec<Attention<'a>> {
    let mut list = Vec::new();
    for c in Category::ALL {
        for p in plan.iter().filter(|p| p.category == c) {
            let outcome = outcomes.get(p.id.as_str());
            let problem = matches!(
                outcome,
                Some(UserOutcome::Conflict(_) | UserOutcome::Failed(_))
            );
            let lost_2fa = matches!(p.second_factor, SecondFactor::Lost(_));
            if !c.needs_attention() && !problem && !lost_2fa {
                continue;
            }
            let mut details = p.notes.clone();
            match outcome {
                Some(UserOutcome::Conflict(why)) => details.push(format!("CONFLICT: {why}")),
                Some(UserOutcome::Failed(why)) => details.push(format!("FAILED: {why}")),
                Some(UserOutcome::Adopted) => details.push("adopted an existing account".into()),
                _ => {}
            }
            if p.reset_reason.is_some() {
                details.push("in password-reset-needed.csv".into());
            }
            list.push(Attention {
                category: c,
                user: p,
                details: details.join("; "),
            });
        }
    }
    list
}

/// The attention list for the console: a few users per category, then how many more and
/// where the whole list is (`full_list`).
fn render_attention(list: &[Attention], full_list: &str) -> String {
    if list.is_empty() {
        return "\nNo user needs attention.\n".into();
    }
    let mut table = TextTable::new(&[
        ("category", Align::Left),
        ("Supabase user id", Align::Left),
        ("e-mail", Align::Left),
        ("details", Align::Left),
    ]);
    let mut hidden = 0;
    for c in Category::ALL {
        let users: Vec<&Attention> = list.iter().filter(|a| a.category == c).collect();
        for a in users.iter().take(ATTENTION_SHOWN_PER_CATEGORY) {
            table.row(vec![
                c.label().into(),
                a.user.id.clone(),
                a.user.email.clone().unwrap_or_default(),
                a.details.clone(),
            ]);
        }
        if users.len() > ATTENTION_SHOWN_PER_CATEGORY {
            let more = users.len() - ATTENTION_SHOWN_PER_CATEGORY;
            hidden += more;
            table.row(vec![
                c.label().into(),
                format!("... and {} more", thousands(more as i64)),
                String::new(),
                String::new(),
            ]);
        }
    }
    let shown = if hidden > 0 {
        format!(", {} shown; all in {full_list}", list.len() - hidden)
    } else {
        String::new()
    };
    format!(
        "\nUsers that need attention ({}{shown}):\n{}",
        thousands(list.len() as i64),
        table.render()
    )
}

/// `users-needing-attention.csv` next to the mapping: every user of the attention list (0600,
/// atomic: it holds e-mails).
fn write_attention_csv(path: &Path, list: &[Attention]) -> Result<()> {
    let mut csv = String::from("category,id,email,details\n");
    for a in list {
        let _ = writeln!(
            csv,
            "{},{},{},{}",
            csv_field(a.category.label()),
            csv_field(&a.user.id),
            csv_field(a.user.email.as_deref().unwrap_or("")),
            csv_field(&a.details)
        );
    }
    files::write_atomically(path, csv.as_bytes())?;
    Ok(())
}

fn log_plan(plan: &[PlannedUser]) {
    for c in Category::ALL {
        let n = plan.iter().filter(|p| p.category == c).count();
        if n > 0 {
            info!(target: "fmig::report", category = c.label(), users = n, action = c.action(), "user category");
        }
    }
    for p in plan.iter().filter(|p| p.category.needs_attention()) {
        info!(target: "fmig::report", supabase_user_id = %p.id, email = p.email.as_deref().unwrap_or(""), category = p.category.label(), action = p.category.action(), details = %p.notes.join("; "), "user needs attention");
    }
}

struct Summary<'a> {
    plan: &'a [PlannedUser],
    outcomes: &'a HashMap<&'a str, UserOutcome>,
    mapped: &'a BTreeMap<String, MappingEntry>,
    warnings: &'a [String],
    requests: u64,
    retries: u64,
    seconds: f64,
    create_seconds: f64,
    output: &'a Path,
}

#[derive(Default, Clone, Copy)]
struct Row {
    users: usize,
    created: usize,
    already: usize,
    adopted: usize,
    conflict: usize,
    failed: usize,
    skipped: usize,
    not_done: usize,
}

impl Summary<'_> {
    fn rows(&self) -> Vec<(Category, Row)> {
        let mut out = Vec::new();
        for c in Category::ALL {
            let mut row = Row::default();
            for p in self.plan.iter().filter(|p| p.category == c) {
                row.users += 1;
                if !c.creates() {
                    row.skipped += 1;
                    continue;
                }
                match self.outcomes.get(p.id.as_str()) {
                    Some(UserOutcome::Created) => row.created += 1,
                    Some(UserOutcome::AlreadyMapped | UserOutcome::Reconciled) => row.already += 1,
                    Some(UserOutcome::Adopted) => row.adopted += 1,
                    Some(UserOutcome::Conflict(_)) => row.conflict += 1,
                    Some(UserOutcome::Failed(_)) => row.failed += 1,
                    None => row.not_done += 1,
                }
            }
            if row.users > 0 {
                out.push((c, row));
            }
        }
        out
    }

    fn total(&self) -> Row {
        self.rows().iter().fold(Row::default(), |mut t, (_, r)| {
            t.users += r.users;
            t.created += r.created;
            t.already += r.already;
            t.adopted += r.adopted;
            t.conflict += r.conflict;
            t.failed += r.failed;
            t.skipped += r.skipped;
            t.not_done += r.not_done;
            t
        })
    }

    /// Users that failed or conflict, plus warnings a human must act on.
    fn problems(&self) -> usize {
        let t = self.total();
        t.conflict + t.failed + t.not_done + self.warnings.len()
    }

    fn render(&self) -> String {
        let mut table = TextTable::new(&[
            ("category", Align::Left),
            ("users", Align::Right),
            ("created", Align::Right),
            ("already there", Align::Right),
            ("adopted", Align::Right),
            ("conflict", Align::Right),
            ("failed", Align::Right),
            ("skipped", Align::Right),
            ("not done", Align::Right),
        ]);
        let n = |v: usize| thousands(v as i64);
        let mut push = |label: &str, r: &Row| {
            table.row(vec![
                label.to_string(),
                n(r.users),
                n(r.created),
                n(r.already),
                n(r.adopted),
                n(r.conflict),
                n(r.failed),
                n(r.skipped),
                n(r.not_done),
            ]);
        };
        for (c, r) in self.rows() {
            push(c.label(), &r);
        }
        let t = self.total();
        push("total", &t);
        let mut out = String::from("\n");
        out.push_str(&table.render());
        out.push_str(&second_factor_line(self.plan));
        out.push_str(&render_attention(
            &attention(self.plan, self.outcomes),
            &user_mapping::attention_csv_path(self.output)
                .display()
                .to_string(),
        ));
        if !self.warnings.is_empty() {
            out.push_str("\nWarnings:\n");
            for w in self.warnings {
                let _ = writeln!(out, "  {w}");
            }
        }
        let rate = if self.create_seconds > 0.0 {
            t.created as f64 / self.create_seconds
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "\n{} created ({rate:.1} users/s), {} already in Stack Auth, {} adopted, {} conflicts, {} failed, {} skipped{} in {:.1}s; {} requests ({} retries)\n{} mappings -> {} (kept until {}); {} users to contact -> {}",
            n(t.created),
            n(t.already),
            n(t.adopted),
            n(t.conflict),
            n(t.failed),
            n(t.skipped),
            if t.not_done > 0 {
                format!(", {} not done", n(t.not_done))
            } else {
                String::new()
            },
            self.seconds,
            thousands(self.requests as i64),
            thousands(self.retries as i64),
            n(self.mapped.len()),
            self.output.display(),
            user_mapping::iso(Utc::now() + chrono::Duration::days(user_mapping::RETENTION_DAYS)),
            n(self
                .plan
                .iter()
                .filter(|p| p.reset_reason.is_some() && self.mapped.contains_key(&p.id))
                .count()),
            user_mapping::reset_csv_path(self.output).display(),
        );
        out
    }

    fn log(&self) {
        for (c, r) in self.rows() {
            info!(target: "fmig::report", category = c.label(), users = r.users, created = r.created, already = r.already, adopted = r.adopted, conflict = r.conflict, failed = r.failed, skipped = r.skipped, not_done = r.not_done, "migrate-users category");
        }
        for p in self.plan {
            match self.outcomes.get(p.id.as_str()) {
                Some(UserOutcome::Conflict(why)) => {
                    info!(target: "fmig::report", supabase_user_id = %p.id, email = p.email.as_deref().unwrap_or(""), "conflict: {why}")
                }
                Some(UserOutcome::Failed(why)) => {
                    info!(target: "fmig::report", supabase_user_id = %p.id, email = p.email.as_deref().unwrap_or(""), "failed: {why}")
                }
                _ => {}
            }
        }
        let t = self.total();
        info!(target: "fmig::report", users = t.users, created = t.created, already = t.already, adopted = t.adopted, conflict = t.conflict, failed = t.failed, skipped = t.skipped, not_done = t.not_done, mappings = self.mapped.len(), requests = self.requests, retries = self.retries, seconds = self.seconds, create_seconds = self.create_seconds, output = %self.output.display(), "migrate-users summary");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "$2a$10$Bkh0efqmLf1BxI9pMUn0I..mGw1JZHrBQHCfgIBXsu/IEvBWl.TdG";

    fn user(id: &str, email: Option<&str>) -> SupabaseUser {
        SupabaseUser {
            id: id.into(),
            email: email.map(str::to_string),
            encrypted_password: Some(String::new()),
            email_confirmed_at: Some("2025-01-01T00:00:00.000000Z".into()),
            phone: None,
            raw_user_meta_data: None,
            raw_app_meta_data: None,
            banned_until: None,
            deleted_at: None,
            is_anonymous: Some(false),
            is_sso_user: Some(false),
            identities: Vec::new(),
            mfa_factors: Vec::new(),
        }
    }

    fn factor(factor_type: &str, status: &str, secret: Option<&str>) -> MfaFactor {
        MfaFactor {
            factor_type: factor_type.into(),
            status: status.into(),
            secret: secret.map(str::to_string),
        }
    }

    #[test]
    fn base32_secrets_decode_as_authenticator_apps_read_them() {
        // RFC 4648 test vector, and the same in lower case with spaces and padding.
        assert_eq!(base32_decode("MZXW6YTBOI======").unwrap(), b"foobar");
        assert_eq!(base32_decode("mzxw 6ytb oi").unwrap(), b"foobar");
        assert_eq!(base32_decode("{\"key_id\":\"k\",\"data\":\"x\"}"), None);
        assert_eq!(base32_decode("ABC1"), None);
    }

    #[test]
    fn verified_totp_is_carried_and_factors_that_cannot_be_are_named() {
        let options = PlanOptions {
            oauth_providers: HashSet::new(),
            include_deleted: false,
            banned: BannedPolicy::Skip,
            now: Utc::now(),
        };
        let mut u = user("a", Some("a@x.example"));
        u.encrypted_password = Some(HASH.into());
        u.mfa_factors = vec![
            factor("totp", "unverified", Some("GEZDGNBVGY3TQOJQ")),
            factor("totp", "verified", Some("MZXW6YTBOI")),
        ];
        let p = plan_user(&u, &options);
        assert_eq!(p.second_factor, SecondFactor::TotpCarried);
        let body = p.body.unwrap();
        assert_eq!(body.totp_secret_base64.as_deref(), Some("Zm9vYmFy"));
        // Never printed.
        assert!(!format!("{body:?}").contains("Zm9vYmFy"));
        assert!(
            !serde_json::to_string(&body.masked())
                .unwrap()
                .contains("Zm9vYmFy")
        );
        assert!(!format!("{:?}", u.mfa_factors).contains("MZXW6YTBOI"));

        // Only an unverified factor: nothing to carry, nothing lost.
        u.mfa_factors = vec![factor("totp", "unverified", Some("MZXW6YTBOI"))];
        let p = plan_user(&u, &options);
        assert_eq!(p.second_factor, SecondFactor::None);
        assert_eq!(p.body.unwrap().totp_secret_base64, None);

        // WebAuthn and an encrypted secret cannot be carried: created, must enrol again.
        u.mfa_factors = vec![
            factor("webauthn", "verified", None),
            factor(
                "totp",
                "verified",
                Some("{\"key_id\":\"k\",\"alg\":\"aes-gcm\"}"),
            ),
        ];
        let p = plan_user(&u, &options);
        assert_eq!(p.category, Category::Password);
        assert_eq!(
            p.second_factor,
            SecondFactor::Lost("webauthn, totp secret encrypted at rest".into())
        );
        assert!(
            p.notes.iter().any(|n| n.contains("must enrol again")),
            "{:?}",
            p.notes
        );
        assert_eq!(p.body.unwrap().totp_secret_base64, None);

        // A user who is not created has nothing to lose here.
        u.is_anonymous = Some(true);
        assert_eq!(plan_user(&u, &options).second_factor, SecondFactor::None);
    }

    fn identity(provider: &str, id: &str) -> Identity {
        Identity {
            provider: provider.into(),
            provider_id: Some(id.into()),
            identity_data: Some(json!({"sub": id, "email": format!("{id}@idp.example")})),
            email: Some(format!("{id}@idp.example")),
        }
    }

    fn options() -> PlanOptions {
        PlanOptions {
            oauth_providers: ["google", "github", "microsoft", "linkedin", "x"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            include_deleted: false,
            banned: BannedPolicy::Skip,
            now: DateTime::parse_from_rfc3339("2026-04-20T00:00:00Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    #[test]
    fn bodies_follow_the_specs_default_rules() {
        let mut u = user("u1", Some("Chef@FreshTrack.example"));
        u.encrypted_password = Some(HASH.into());
        u.raw_user_meta_data = Some(
            json!({"display_name": "", "full_name": "Chef Ünïcødé", "name": "x",
            "avatar_url": "https://cdn.example/a.png", "locale": "de"}),
        );
        u.raw_app_meta_data = Some(json!({"provider": "email", "roles": ["staff"]}));
        u.identities = vec![
            identity("email", "u1"),
            identity("azure", "az-1"),
            identity("linkedin_oidc", "li-1"),
            identity("twitter", "tw-1"),
        ];
        let p = &plan(&[u], &options())[0];
        assert_eq!(p.category, Category::Password);
        let body = serde_json::to_value(p.body.as_ref().unwrap()).unwrap();
        assert_eq!(
            body,
            json!({
                "primary_email": "Chef@FreshTrack.example",
                "primary_email_verified": true,
                "primary_email_auth_enabled": true,
                "display_name": "Chef Ünïcødé",
                "password_hash": HASH,
                "oauth_providers": [
                    {"id": "microsoft", "account_id": "az-1", "email": "az-1@idp.example"},
                    {"id": "linkedin", "account_id": "li-1", "email": "li-1@idp.example"},
                    {"id": "x", "account_id": "tw-1", "email": "tw-1@idp.example"}
                ],
                "profile_image_url": "https://cdn.example/a.png",
                "client_metadata": {"locale": "de"},
                "server_metadata": {"supabase_user_id": "u1",
                    "supabase_app_metadata": {"provider": "email", "roles": ["staff"]}}
            })
        );
        assert!(p.reset_reason.is_none());
    }

    #[test]
    fn every_category_is_decided_up_front() {
        let mut users = Vec::new();
        let mut add = |u: SupabaseUser| users.push(u);
        let mut pw = user("password", Some("a@x.example"));
        pw.encrypted_password = Some(HASH.into());
        add(pw);
        let mut oauth = user("oauth", Some("b@x.example"));
        oauth.identities = vec![identity("google", "g1")];
        add(oauth);
        let mut oauth_no_email = user("oauth_no_email", None);
        oauth_no_email.identities = vec![identity("github", "gh1")];
        add(oauth_no_email);
        add(user("magic", Some("c@x.example")));
        let mut bad = user("bad_hash", Some("d@x.example"));
        bad.encrypted_password =
            Some("$2x$10$abcdefghijklmnopqrstuvABCDEFGHIJKLMNOPQRSTUVWXYZ01234".into());
        add(bad);
        let mut discord = user("discord", Some("e@x.example"));
        discord.identities = vec![identity("discord", "d1")];
        add(discord);
        let mut phone = user("phone", Some(""));
        phone.phone = Some("4915100000".into());
        phone.encrypted_password = Some(HASH.into());
        add(phone);
        let mut anon = user("anon", None);
        anon.is_anonymous = Some(true);
        add(anon);
        let mut sso = user("sso", Some("a@x.example"));
        sso.is_sso_user = Some(true);
        add(sso);
        let mut banned = user("banned", Some("f@x.example"));
        banned.banned_until = Some("2099-12-31T23:59:59.000000Z".into());
        add(banned);
        let mut expired = user("expired_ban", Some("g@x.example"));
        expired.banned_until = Some("2020-01-01T00:00:00.000000Z".into());
        add(expired);
        let mut deleted = user("deleted", Some("h@x.example"));
        deleted.deleted_at = Some("2025-01-01T00:00:00.000000Z".into());
        add(deleted);
        add(user("idn", Some("chef@küche.example")));
        add(user("dup1", Some("Same@x.example")));
        add(user("dup2", Some("same@X.example")));

        let planned = plan(&users, &options());
        let got: HashMap<&str, Category> = planned
            .iter()
            .map(|p| (p.id.as_str(), p.category))
            .collect();
        use Category::*;
        let expected = [
            ("password", Password),
            ("oauth", OAuthOnly),
            ("oauth_no_email", OAuthOnly),
            ("magic", EmailOnly),
            ("bad_hash", InvalidHash),
            ("discord", ProviderNotConfigured),
            ("phone", NoSignInMethod),
            ("anon", Anonymous),
            ("sso", Sso),
            ("banned", Banned),
            ("expired_ban", EmailOnly),
            ("deleted", SoftDeleted),
            ("idn", EmailRejected),
            ("dup1", DuplicateEmail),
            ("dup2", DuplicateEmail),
        ];
        for (id, category) in expected {
            assert_eq!(got[id], category, "{id}");
        }
        let reasons: HashMap<&str, &str> = planned
            .iter()
            .filter_map(|p| Some((p.id.as_str(), p.reset_reason.as_deref()?)))
            .collect();
        assert_eq!(reasons.len(), 4, "{reasons:?}");
        assert!(reasons["bad_hash"].contains("$2x$"), "{reasons:?}");
        assert!(reasons["discord"].contains("discord"));
        assert!(reasons.contains_key("magic") && reasons.contains_key("expired_ban"));
        // No hash text in any note.
        for p in &planned {
            assert!(!p.notes.join(" ").contains("abcdefghij"), "{:?}", p.notes);
        }

        let mut opts = options();
        opts.include_deleted = true;
        opts.banned = BannedPolicy::Create;
        opts.oauth_providers.insert("discord".into());
        let planned = plan(&users, &opts);
        let got: HashMap<&str, Category> = planned
            .iter()
            .map(|p| (p.id.as_str(), p.category))
            .collect();
        assert_eq!(got["deleted"], EmailOnly);
        assert_eq!(got["banned"], BannedCreated);
        assert_eq!(got["discord"], OAuthOnly);
        let banned = planned.iter().find(|p| p.id == "banned").unwrap();
        let meta = banned
            .body
            .as_ref()
            .unwrap()
            .server_metadata
            .as_ref()
            .unwrap();
        assert!(meta.get("supabase_banned_until").is_some());
    }

    #[test]
    fn hash_and_email_rules_match_stack_auths() {
        assert_eq!(bcrypt_problem(HASH), None);
        assert_eq!(bcrypt_problem(&HASH.replace("$2a$10$", "$2y$16$")), None);
        assert!(
            bcrypt_problem(&HASH.replace("$2a$10$", "$2b$17$"))
                .unwrap()
                .contains("17")
        );
        assert!(bcrypt_problem(&HASH.replace("$2a$", "$2x$")).is_some());
        assert!(bcrypt_problem(&format!(" {HASH}")).is_some());
        assert!(bcrypt_problem("$2a$10$tooShort").is_some());
        assert!(
            bcrypt_problem("$argon2id$v=19$m=65536")
                .unwrap()
                .contains("argon2")
        );
        assert_eq!(email_problem("a.b+c@sub.example-1.com"), None);
        assert_eq!(email_problem("upper.CASE@FreshTrack.EXAMPLE"), None);
        assert!(
            email_problem("chef@küche.example")
                .unwrap()
                .contains("internationalised")
        );
        assert!(email_problem("no-at-sign").is_some());
        assert!(email_problem("a b@x.example").is_some());
        assert!(email_problem("a@-x.example").is_some());
        assert_eq!(stack_provider_id("azure").as_deref(), Some("microsoft"));
        assert_eq!(stack_provider_id("email"), None);
        assert_eq!(stack_provider_id("sso:1234"), None);
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("=cmd()"), "'=cmd()");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
    }

    fn stack_user(id: &str, email: Option<&str>, supabase: Option<&str>, at: i64) -> User {
        User {
            id: id.into(),
            primary_email: email.map(str::to_string),
            server_metadata: supabase.map(|s| json!({"supabase_user_id": s})),
            signed_up_at_millis: Some(at),
            ..User::default()
        }
    }

    #[test]
    fn reconciliation_matches_on_supabase_id_then_email() {
        let users: Vec<SupabaseUser> = ["s1", "s2", "s3", "s4", "s5", "s6"]
            .iter()
            .map(|id| user(id, Some(&format!("{id}@x.example"))))
            .collect();
        let planned = plan(&users, &options());
        let mut mapped = BTreeMap::new();
        mapped.insert(
            "s1".to_string(),
            MappingEntry {
                supabase_user_id: "s1".into(),
                stack_auth_user_id: "n1".into(),
                email: None,
                migrated_at: Utc::now(),
            },
        );
        let listed = vec![
            stack_user("n1", Some("s1@x.example"), Some("s1"), 1),
            // Killed before the journal write, and a duplicate from an older run.
            stack_user("n2b", Some("s2@x.example"), Some("s2"), 5),
            stack_user("n2", None, Some("S2"), 2),
            // Same e-mail, not ours.
            stack_user("n3", Some("S3@X.example"), None, 3),
            // Same e-mail, another Supabase user's.
            stack_user("n4", Some("s4@x.example"), Some("other"), 4),
        ];
        let r = reconcile(&planned, &mapped, &listed, false);
        let found: HashMap<&str, &UserOutcome> =
            r.found.iter().map(|(id, h)| (id.as_str(), h)).collect();
        assert_eq!(found["s1"], &UserOutcome::AlreadyMapped);
        assert_eq!(found["s2"], &UserOutcome::Reconciled);
        assert_eq!(r.users["s2"].id, "n2", "the oldest claim wins");
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        let conflicts: HashMap<&str, &str> = r
            .conflicts
            .iter()
            .map(|(id, why)| (id.as_str(), why.as_str()))
            .collect();
        assert!(
            conflicts["s3"].contains("--adopt-existing"),
            "{conflicts:?}"
        );
        assert!(conflicts["s4"].contains("other"), "{conflicts:?}");
        let mut to_create: Vec<&String> = r.to_create.iter().collect();
        to_create.sort();
        assert_eq!(to_create, ["s5", "s6"]);

        let r = reconcile(&planned, &mapped, &listed, true);
        let found: HashMap<&str, &UserOutcome> =
            r.found.iter().map(|(id, h)| (id.as_str(), h)).collect();
        assert_eq!(found["s3"], &UserOutcome::Adopted);
        assert_eq!(r.conflicts.len(), 1, "s4 stays a conflict");
    }
}
