//! `fmig verify --only users`: proves the Stack Auth side. Every exported Supabase user is
//! planned again exactly as migrate-users planned it (same rules, same flags, read from the
//! choices that run recorded next to the mapping), and the project's accounts are listed
//! (every page, `include_anonymous=true`) and compared with that plan and `user-mapping.json`:
//!
//! - each migratable user has exactly one account carrying its `supabase_user_id`, the one the
//!   mapping names, with the e-mail (as Stack Auth normalises it), verification, e-mail sign-in,
//!   password, OAuth accounts, display name and TOTP flag the create body set;
//! - a skipped user has no account and no mapping entry;
//! - an account no Supabase user explains is listed.
//!
//! What the accounts must be comes from `auth_users.json` and the mapping alone, never from
//! Stack Auth. The listing is streamed: a page is compared and dropped, so memory holds one
//! small expectation per Supabase user, not the accounts.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;
use tracing::{error, info};

use super::{Status, status_text};
use crate::cli::VerifyArgs;
use crate::commands::migrate_users::{self, Category, PlanOptions, UserChoices};
use crate::report::{Align, TextTable, thousands};
use crate::stack_auth::{Client, ClientOptions, CreateUser, User};
use crate::user_mapping::{self, Journal, UserMapping};

/// Problems kept for the report; beyond it only the count grows, so a project where every
/// account is wrong cannot exhaust memory.
const PROBLEMS_KEPT: usize = 10_000;

/// The users section of the verification report.
#[derive(Debug, Serialize)]
pub struct UsersReport {
    pub project_id: String,
    pub users_file: String,
    /// Where the planning rules' flags came from.
    pub choices: String,
    pub supabase_users: u64,
    /// Users migrate-users creates: each must have exactly one right account.
    pub migratable: u64,
    /// Of those, users whose one account matches the plan and the mapping.
    pub migratable_ok: u64,
    /// Users migrate-users skips: each must have no account.
    pub skipped: u64,
    pub skipped_ok: u64,
    pub accounts_listed: u64,
    /// Accounts no exported user explains.
    pub unexplained: u64,
    pub status: Status,
    pub problems: Vec<UserProblem>,
    /// All problems found; more than `problems` holds when it was cut at its limit.
    pub problems_total: u64,
    pub seconds: f64,
    pub error: Option<String>,
}

/// One thing wrong, named by user and field.
#[derive(Debug, Serialize)]
pub struct UserProblem {
    pub supabase_user_id: Option<String>,
    pub stack_auth_user_id: Option<String>,
    pub email: Option<String>,
    /// `account`, `user-mapping.json`, a user field (`primary_email`, `has_password`,
    /// `oauth_providers`, `requires_totp_mfa`, ...) or `unexplained account`.
    pub field: String,
    pub expected: String,
    pub found: String,
}

impl UserProblem {
    pub fn line(&self) -> String {
        let who = match (&self.supabase_user_id, &self.stack_auth_user_id) {
            (Some(s), _) => format!("Supabase user {s}"),
            (None, Some(a)) => format!("Stack Auth user {a}"),
            (None, None) => "?".into(),
        };
        let email = self
            .email
            .as_deref()
            .map(|e| format!(" <{e}>"))
            .unwrap_or_default();
        format!(
            "{who}{email}: {}: expected {}, Stack Auth has {}",
            self.field, self.expected, self.found
        )
    }
}

/// Whether a plain `fmig verify` checks the users too: the Stack Auth settings are there, and
/// there is a migration of users to check (a users file or a mapping).
pub fn wanted_by_default(args: &VerifyArgs) -> bool {
    let set = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
    set(&args.stack_auth.project.project_id)
        && set(&args.stack_auth.secret_key)
        && (migrate_users::users_file(&args.export_dir).exists() || args.mapping_path().exists())
}

/// Runs the check. Settings and files that cannot be used are errors (exit 2); a Stack Auth
/// that stops answering becomes the report's error, like a table that could not be read.
pub async fn verify(args: &VerifyArgs) -> Result<UsersReport> {
    let started = Instant::now();
    let credentials = args.stack_auth.credentials().context(
        "verifying the users needs STACK_AUTH_PROJECT_ID and STACK_AUTH_SECRET_KEY (the \
         project migrate-users wrote to); --only tables checks the tables alone",
    )?;
    let mapping_path = args.mapping_path();
    let mapping = UserMapping::load(&mapping_path).with_context(|| {
        format!(
            "no usable user mapping at {}: run fmig migrate-users first, or give the one it \
             wrote with --mapping",
            mapping_path.display()
        )
    })?;
    let recorded = UserChoices::load(&mapping_path)?;
    let (options, choices) = match &recorded {
        Some(c) => {
            if c.project_id != credentials.project_id {
                bail!(
                    "{} was written for Stack Auth project {}, but STACK_AUTH_PROJECT_ID is {}: \
                     verify the project the users were migrated into",
                    user_mapping::choices_path(&mapping_path).display(),
                    c.project_id,
                    credentials.project_id
                );
            }
            (
                c.plan_options(),
                format!(
                    "as migrate-users ran at {} ({})",
                    user_mapping::iso(c.planned_at),
                    user_mapping::CHOICES_FILE_NAME
                ),
            )
        }
        None => {
            info!(target: "fmig::report", "no {} next to the mapping: planning the users with migrate-users' default flags", user_mapping::CHOICES_FILE_NAME);
            (
                default_options(),
                format!(
                    "migrate-users' defaults (no {})",
                    user_mapping::CHOICES_FILE_NAME
                ),
            )
        }
    };
    let input = users_file(&args.export_dir, recorded.as_ref());
    // Each user planned as it is read, and kept only as what its account must look like.
    let mut check = Check::default();
    let sha256 = migrate_users::read_checked_users(&args.export_dir, &input, false, |u| {
        check.add(migrate_users::plan_user(&u, &options), &input)
    })
    .context("verify plans the users from the export alone")?;
    if let Some(c) = recorded.as_ref().filter(|c| c.input_sha256 != sha256) {
        bail!(
            "{} is not the users file migrate-users read (its SHA-256 was {}, {} now): the \
             accounts were planned from other data.\n  next step: run fmig migrate-users again \
             with this file (nothing is created twice), then verify",
            input.display(),
            c.input_sha256,
            sha256
        );
    }
    let supabase_users = check.expected.len() as u64;
    check.shared_emails();
    let adopted = match Journal::read(&user_mapping::journal_path(&mapping_path))? {
        Some(journal) => journal.adopted(&credentials.project_id),
        None => HashSet::new(),
    };
    check.attach(mapping, &adopted);

    let client = Client::new(&credentials, &ClientOptions::default())?;
    let listed = client
        .for_each_page(None, |page| {
            for account in page {
                check.account(account);
            }
        })
        .await;
    let mut report = UsersReport {
        project_id: credentials.project_id.clone(),
        users_file: input.display().to_string(),
        choices,
        supabase_users,
        migratable: 0,
        migratable_ok: 0,
        skipped: 0,
        skipped_ok: 0,
        accounts_listed: check.accounts_listed,
        unexplained: check.unexplained,
        status: Status::Ok,
        problems: Vec::new(),
        problems_total: 0,
        seconds: 0.0,
        error: None,
    };
    match listed {
        Err(e) => {
            report.status = Status::Error;
            report.error = Some(format!("could not list the Stack Auth users: {e}"));
        }
        Ok(()) => check.finish(&mut report),
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The users file verify plans from: the export directory's, else the one migrate-users
/// recorded reading (a `--input` elsewhere).
fn users_file(export_dir: &Path, recorded: Option<&UserChoices>) -> PathBuf {
    let in_export = migrate_users::users_file(export_dir);
    match recorded.map(|c| PathBuf::from(&c.input)) {
        Some(other) if !in_export.exists() && other.exists() => other,
        _ => in_export,
    }
}

/// migrate-users' planning flags at their defaults (its clap defaults, read from the parser
/// so the two cannot drift apart).
fn default_options() -> PlanOptions {
    use clap::Parser;
    let cli = crate::cli::Cli::try_parse_from(["fmig", "migrate-users"])
        .expect("migrate-users parses without arguments");
    let crate::cli::Command::MigrateUsers(args) = cli.command else {
        unreachable!("parsed as migrate-users")
    };
    PlanOptions {
        oauth_providers: args
            .oauth_providers
            .iter()
            .map(|p| p.trim().to_lowercase())
            .collect(),
        include_deleted: args.include_deleted,
        banned: args.banned,
        now: chrono::Utc::now(),
    }
}

/// What one account must look like: the create body's fields as Stack Auth reads them back.
#[derive(Debug, PartialEq)]
struct Want {
    primary_email: Option<String>,
    primary_email_verified: bool,
    primary_email_auth_enabled: bool,
    has_password: bool,
    oauth: BTreeSet<(String, String)>,
    display_name: Option<String>,
    requires_totp_mfa: bool,
}

impl Want {
    fn of(body: &CreateUser) -> Want {
        Want {
            primary_email: body.primary_email.as_deref().map(normalise_email),
            primary_email_verified: body.primary_email_verified.unwrap_or(false),
            primary_email_auth_enabled: body.primary_email_auth_enabled.unwrap_or(false),
            has_password: body.password_hash.is_some(),
            oauth: body
                .oauth_providers
                .iter()
                .map(|o| (o.id.clone(), o.account_id.clone()))
                .collect(),
            display_name: body.display_name.clone(),
            requires_totp_mfa: body.totp_secret_base64.is_some(),
        }
    }

    /// Each field that differs: (field, expected, found).
    fn differences(&self, account: &User, email_only: bool) -> Vec<(&'static str, String, String)> {
        let mut out = Vec::new();
        let email = account.primary_email.as_deref().map(normalise_email);
        if email != self.primary_email {
            out.push(("primary_email", shown(&self.primary_email), shown(&email)));
        }
        if email_only {
            return out;
        }
        let mut flag = |field, want: bool, found: bool| {
            if want != found {
                out.push((field, want.to_string(), found.to_string()));
            }
        };
        flag(
            "primary_email_verified",
            self.primary_email_verified,
            account.primary_email_verified,
        );
        flag(
            "primary_email_auth_enabled",
            self.primary_email_auth_enabled,
            account.primary_email_auth_enabled,
        );
        flag("has_password", self.has_password, account.has_password);
        flag(
            "requires_totp_mfa",
            self.requires_totp_mfa,
            account.requires_totp_mfa,
        );
        let found: BTreeSet<(String, String)> = account
            .oauth_providers
            .iter()
            .map(|o| (o.id.clone(), o.account_id.clone()))
            .collect();
        if found != self.oauth {
            let list = |set: &BTreeSet<(String, String)>| {
                if set.is_empty() {
                    "none".to_string()
                } else {
                    set.iter()
                        .map(|(p, a)| format!("{p}:{a}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            out.push(("oauth_providers", list(&self.oauth), list(&found)));
        }
        if account.display_name != self.display_name {
            out.push((
                "display_name",
                shown(&self.display_name),
                shown(&account.display_name),
            ));
        }
        out
    }
}

/// Stack Auth lower-cases e-mails; surrounding spaces never reach it (the planner trims).
fn normalise_email(email: &str) -> String {
    email.trim().to_lowercase()
}

fn shown(value: &Option<String>) -> String {
    value
        .as_deref()
        .map_or_else(|| "none".to_string(), |v| format!("{v:?}"))
}

/// One exported user, reduced to what the comparison needs.
struct Expected {
    id: String,
    email: Option<String>,
    category: Category,
    /// `Some` for a user migrate-users creates.
    want: Option<Want>,
    /// The Stack Auth id user-mapping.json names.
    mapped: Option<String>,
    adopted: bool,
    /// Accounts found for this user (carrying its id, or the mapped one).
    accounts: Vec<String>,
    /// A field of its account differs (found while listing).
    faulty: bool,
}

/// The comparison's state while the listing streams past.
#[derive(Default)]
struct Check {
    expected: Vec<Expected>,
    /// Supabase id (lower-case) -> index in `expected`.
    by_supabase: HashMap<String, usize>,
    /// Mapped Stack Auth id (lower-case) -> index in `expected`.
    by_account: HashMap<String, usize>,
    /// Mapping entries for Supabase users the export does not have.
    stray_mappings: Vec<(String, String)>,
    accounts_listed: u64,
    unexplained: u64,
    problems: Vec<UserProblem>,
    problems_total: u64,
}

impl Check {
    /// One planned user, reduced to its expectation.
    fn add(&mut self, p: migrate_users::PlannedUser, file: &Path) -> Result<()> {
        let index = self.expected.len();
        if self
            .by_supabase
            .insert(p.id.to_lowercase(), index)
            .is_some()
        {
            bail!("{}: user {} appears twice", file.display(), p.id);
        }
        self.expected.push(Expected {
            want: p
                .body
                .as_ref()
                .filter(|_| p.category.creates())
                .map(Want::of),
            id: p.id,
            email: p.email,
            category: p.category,
            mapped: None,
            adopted: false,
            accounts: Vec::new(),
            faulty: false,
        });
        Ok(())
    }

    /// migrate-users' rule for users that would be created with one e-mail: none is.
    fn shared_emails(&mut self) {
        let groups = migrate_users::shared_emails(
            self.expected
                .iter()
                .map(|e| e.email.as_deref().filter(|_| e.want.is_some())),
        );
        for i in groups.into_iter().flatten() {
            self.expected[i].want = None;
            self.expected[i].category = Category::DuplicateEmail;
        }
    }

    /// The mapping's account of each user, and which of them were adopted.
    fn attach(&mut self, mapping: UserMapping, adopted: &HashSet<String>) {
        self.by_account.reserve(mapping.mappings.len());
        for m in mapping.mappings {
            match self.by_supabase.get(&m.supabase_user_id.to_lowercase()) {
                Some(&i) => {
                    self.by_account
                        .insert(m.stack_auth_user_id.to_lowercase(), i);
                    let e = &mut self.expected[i];
                    e.adopted = adopted.contains(&e.id);
                    e.mapped = Some(m.stack_auth_user_id);
                }
                None => self
                    .stray_mappings
                    .push((m.supabase_user_id, m.stack_auth_user_id)),
            }
        }
    }

    fn problem(&mut self, problem: UserProblem) {
        self.problems_total += 1;
        if self.problems.len() < PROBLEMS_KEPT {
            self.problems.push(problem);
        }
    }

    fn field_problems(&mut self, i: usize, account: &User) {
        let e = &self.expected[i];
        let Some(want) = &e.want else { return };
        let found = want.differences(account, e.adopted);
        let (id, email) = (e.id.clone(), e.email.clone());
        self.expected[i].faulty |= !found.is_empty();
        for (field, expected, found) in found {
            self.problem(UserProblem {
                supabase_user_id: Some(id.clone()),
                stack_auth_user_id: Some(account.id.clone()),
                email: email.clone(),
                field: field.into(),
                expected,
                found,
            });
        }
    }

    /// One listed account.
    fn account(&mut self, account: User) {
        self.accounts_listed += 1;
        let claimed = account.supabase_user_id().map(str::to_lowercase);
        let by_claim = claimed
            .as_deref()
            .and_then(|s| self.by_supabase.get(s).copied());
        let by_mapping = self.by_account.get(&account.id.to_lowercase()).copied();
        match (by_claim, by_mapping) {
            (Some(i), _) => {
                let e = &mut self.expected[i];
                e.accounts.push(account.id.clone());
                // Fields are compared on the account the mapping names (or the only one
                // there is); a second account is reported once the listing is complete.
                let is_mapped = e
                    .mapped
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(&account.id));
                if is_mapped {
                    self.field_problems(i, &account);
                }
            }
            (None, Some(i)) => {
                let e = &mut self.expected[i];
                e.accounts.push(account.id.clone());
                if !e.adopted {
                    e.faulty = true;
                    let (id, email) = (e.id.clone(), e.email.clone());
                    self.problem(UserProblem {
                        supabase_user_id: Some(id.clone()),
                        stack_auth_user_id: Some(account.id.clone()),
                        email,
                        field: "server_metadata.supabase_user_id".into(),
                        expected: id,
                        found: claimed.unwrap_or_else(|| "none".into()),
                    });
                }
                self.field_problems(i, &account);
            }
            (None, None) => {
                self.unexplained += 1;
                let found = match &claimed {
                    Some(s) => format!(
                        "an account migrated from Supabase user {s}, who is not in the users file"
                    ),
                    None if account.is_anonymous => {
                        "an anonymous account (not created by fmig)".into()
                    }
                    None => "an account not created by fmig (no supabase_user_id)".into(),
                };
                self.problem(UserProblem {
                    supabase_user_id: None,
                    stack_auth_user_id: Some(account.id.clone()),
                    email: account.primary_email.clone(),
                    field: "unexplained account".into(),
                    expected: "only accounts of migrated users".into(),
                    found,
                });
            }
        }
    }

    /// What the complete listing says about each user; fills the report's counts.
    fn finish(mut self, report: &mut UsersReport) {
        for (supabase, account) in std::mem::take(&mut self.stray_mappings) {
            self.problem(UserProblem {
                supabase_user_id: Some(supabase),
                stack_auth_user_id: Some(account),
                email: None,
                field: "user-mapping.json".into(),
                expected: "only users of the users file".into(),
                found: "an entry for a Supabase user the users file does not have".into(),
            });
        }
        let expected = std::mem::take(&mut self.expected);
        for e in &expected {
            let problems_before = self.problems_total;
            let say = |check: &mut Check, field: &str, expected: String, found: String| {
                check.problem(UserProblem {
                    supabase_user_id: Some(e.id.clone()),
                    stack_auth_user_id: e.accounts.first().cloned().or(e.mapped.clone()),
                    email: e.email.clone(),
                    field: field.into(),
                    expected,
                    found,
                });
            };
            if e.want.is_some() {
                report.migratable += 1;
                match (e.accounts.as_slice(), &e.mapped) {
                    ([], Some(m)) => say(
                        &mut self,
                        "account",
                        format!("Stack Auth user {m} (user-mapping.json)"),
                        "no such account (deleted?)".into(),
                    ),
                    ([], None) => say(
                        &mut self,
                        "account",
                        "one account".into(),
                        "none (see migrate-users' summary: failed or in conflict)".into(),
                    ),
                    ([_, _, ..], _) => say(
                        &mut self,
                        "account",
                        "one account".into(),
                        format!("{} accounts: {}", e.accounts.len(), e.accounts.join(", ")),
                    ),
                    ([_], None) => say(
                        &mut self,
                        "user-mapping.json",
                        format!("an entry naming {}", e.accounts[0]),
                        "no entry: import wrote this user's references as NULL (or failed)".into(),
                    ),
                    ([one], Some(m)) if !one.eq_ignore_ascii_case(m) => say(
                        &mut self,
                        "user-mapping.json",
                        format!("{one} (the account carrying this user's id)"),
                        format!("{m} in the mapping"),
                    ),
                    ([_], Some(_)) => {}
                }
                if self.problems_total == problems_before && !e.faulty {
                    report.migratable_ok += 1;
                }
            } else {
                report.skipped += 1;
                if !e.accounts.is_empty() {
                    say(
                        &mut self,
                        "account",
                        format!("none (skipped: {})", e.category.label()),
                        e.accounts.join(", "),
                    );
                }
                if let Some(m) = &e.mapped {
                    say(
                        &mut self,
                        "user-mapping.json",
                        format!("no entry (skipped: {})", e.category.label()),
                        format!("an entry naming {m}"),
                    );
                }
                if self.problems_total == problems_before {
                    report.skipped_ok += 1;
                }
            }
        }
        report.accounts_listed = self.accounts_listed;
        report.unexplained = self.unexplained;
        report.problems_total = self.problems_total;
        report.problems = self.problems;
        report.status = if report.problems_total == 0 {
            Status::Ok
        } else {
            Status::Differs
        };
    }
}

/// The console section: one table of counts, then each problem (up to `max`).
pub fn render(r: &UsersReport, max: usize) -> String {
    let mut table = TextTable::new(&[
        ("Stack Auth users", Align::Left),
        ("expected", Align::Right),
        ("ok", Align::Right),
        ("status", Align::Left),
    ]);
    let n = |v: u64| thousands(v as i64);
    let state = |ok: bool| if ok { "ok" } else { "DIFFERS" };
    let listed = r.error.is_none();
    table.row(vec![
        "migrated users (one right account each)".into(),
        n(r.migratable),
        n(r.migratable_ok),
        state(r.migratable_ok == r.migratable).into(),
    ]);
    table.row(vec![
        "skipped users (no account)".into(),
        n(r.skipped),
        n(r.skipped_ok),
        state(r.skipped_ok == r.skipped).into(),
    ]);
    table.row(vec![
        "accounts no Supabase user explains".into(),
        "0".into(),
        n(r.unexplained),
        state(r.unexplained == 0).into(),
    ]);
    let mut out = format!(
        "\nUsers: {} Supabase users of {}, planned {}; {} Stack Auth accounts listed\n\n",
        n(r.supabase_users),
        r.users_file,
        r.choices,
        n(r.accounts_listed)
    );
    if listed {
        out.push_str(&table.render());
    }
    if r.status != Status::Ok {
        out.push_str(&format!("\nusers ({}):\n", status_text(r.status)));
        if let Some(e) = &r.error {
            out.push_str(&format!("  error: {e}\n"));
        }
        for p in r.problems.iter().take(max) {
            out.push_str(&format!("  {}\n", p.line()));
        }
        let hidden = r.problems_total - r.problems.len().min(max) as u64;
        if hidden > 0 {
            out.push_str(&format!(
                "  {} more in the JSON report{}\n",
                n(hidden),
                if r.problems_total > r.problems.len() as u64 {
                    format!(" (which keeps the first {})", n(r.problems.len() as u64))
                } else {
                    String::new()
                }
            ));
        }
    }
    out.push_str(&match r.status {
        Status::Ok => format!(
            "\n{} users verified: Stack Auth holds exactly what migrate-users planned. {:.1}s\n",
            n(r.supabase_users),
            r.seconds
        ),
        _ => format!(
            "\n{} user problem(s) in Stack Auth. {:.1}s\n",
            n(r.problems_total),
            r.seconds
        ),
    });
    out
}

/// The log lines of the section.
pub fn log(r: &UsersReport) {
    if r.status == Status::Ok {
        info!(target: "fmig::report", supabase_users = r.supabase_users, migratable = r.migratable, skipped = r.skipped, accounts = r.accounts_listed, seconds = r.seconds, "users verified");
        return;
    }
    error!(target: "fmig::report", supabase_users = r.supabase_users, migratable = r.migratable, migratable_ok = r.migratable_ok, skipped = r.skipped, skipped_ok = r.skipped_ok, accounts = r.accounts_listed, unexplained = r.unexplained, problems = r.problems_total, error = r.error.as_deref().unwrap_or(""), "users verification failed");
    for p in &r.problems {
        error!(target: "fmig::report", "{}", p.line());
    }
}

/// The error verify ends with when the users could not be verified at all.
pub fn failure(r: &UsersReport) -> Option<anyhow::Error> {
    r.error
        .as_ref()
        .map(|e| anyhow!("could not verify the users: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::BannedPolicy;
    use crate::commands::migrate_users::SupabaseUser;
    use crate::user_mapping::MappingEntry;
    use serde_json::json;

    const A: &str = "00000000-0000-4000-8000-00000000000a";
    const B: &str = "00000000-0000-4000-8000-00000000000b";
    const C: &str = "00000000-0000-4000-8000-00000000000c";
    const D: &str = "00000000-0000-4000-8000-00000000000d";

    fn options() -> PlanOptions {
        PlanOptions {
            oauth_providers: ["google".to_string()].into_iter().collect(),
            include_deleted: false,
            banned: BannedPolicy::Skip,
            now: chrono::Utc::now(),
        }
    }

    fn user(id: &str, email: &str) -> SupabaseUser {
        serde_json::from_value(json!({
            "id": id,
            "email": email,
            "encrypted_password": format!("$2a$10${}", "a".repeat(53)),
            "email_confirmed_at": "2025-01-01T00:00:00Z",
            "raw_user_meta_data": {"full_name": "Ann"},
        }))
        .unwrap()
    }

    /// The account migrate-users creates for `u` (as Stack Auth reads it back), as `id`.
    fn account_of(u: &SupabaseUser, id: &str) -> User {
        let p = migrate_users::plan_user(u, &options());
        let body = p.body.unwrap();
        User {
            id: id.into(),
            primary_email: body.primary_email.map(|e| e.to_lowercase()),
            primary_email_verified: body.primary_email_verified.unwrap_or(false),
            primary_email_auth_enabled: body.primary_email_auth_enabled.unwrap_or(false),
            display_name: body.display_name,
            has_password: body.password_hash.is_some(),
            server_metadata: body.server_metadata,
            ..User::default()
        }
    }

    fn check(users: &[SupabaseUser], mapped: &[(&str, &str)], adopted: &[&str]) -> Check {
        let mut check = Check::default();
        for u in users {
            check
                .add(migrate_users::plan_user(u, &options()), Path::new("f"))
                .unwrap();
        }
        check.shared_emails();
        let entries = mapped
            .iter()
            .map(|(s, a)| MappingEntry {
                supabase_user_id: s.to_string(),
                stack_auth_user_id: a.to_string(),
                email: None,
                migrated_at: chrono::Utc::now(),
            })
            .collect();
        check.attach(
            UserMapping::new(entries, chrono::Utc::now()),
            &adopted.iter().map(|s| s.to_string()).collect(),
        );
        check
    }

    fn finished(check: Check) -> UsersReport {
        let mut report = UsersReport {
            project_id: String::new(),
            users_file: String::new(),
            choices: String::new(),
            supabase_users: 0,
            migratable: 0,
            migratable_ok: 0,
            skipped: 0,
            skipped_ok: 0,
            accounts_listed: 0,
            unexplained: 0,
            status: Status::Ok,
            problems: Vec::new(),
            problems_total: 0,
            seconds: 0.0,
            error: None,
        };
        check.finish(&mut report);
        report
    }

    fn fields(report: &UsersReport) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = report
            .problems
            .iter()
            .map(|p| {
                (
                    p.supabase_user_id
                        .clone()
                        .or(p.stack_auth_user_id.clone())
                        .unwrap(),
                    p.field.clone(),
                )
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn the_accounts_migrate_users_creates_pass() {
        let users = [user(A, "Ann@X.example"), user(B, "bob@x.example")];
        let mut c = check(&users, &[(A, C), (B, D)], &[]);
        c.account(account_of(&users[0], C));
        c.account(account_of(&users[1], D));
        let report = finished(c);
        assert_eq!(report.status, Status::Ok, "{:?}", report.problems);
        assert_eq!((report.migratable, report.migratable_ok), (2, 2));
    }

    #[test]
    fn an_adopted_account_is_checked_for_its_email_only() {
        let users = [user(A, "ann@x.example"), user(B, "bob@x.example")];
        let mut c = check(&users, &[(A, C), (B, D)], &[A, B]);
        // Someone else's accounts: no supabase_user_id, no password, another name.
        let mut ann = account_of(&users[0], C);
        ann.server_metadata = None;
        ann.has_password = false;
        ann.display_name = Some("Ann from the new app".into());
        c.account(ann);
        let mut bob = account_of(&users[1], D);
        bob.server_metadata = None;
        bob.primary_email = Some("robert@x.example".into());
        c.account(bob);
        let report = finished(c);
        assert_eq!(fields(&report), vec![(B.into(), "primary_email".into())]);
        assert_eq!(report.migratable_ok, 1);
    }

    #[test]
    fn a_mapped_account_without_its_id_a_stray_mapping_and_shared_emails_are_named() {
        // A and B share an e-mail: neither is created, so B's account is one too many.
        let users = [
            user(A, "same@x.example"),
            user(B, "Same@x.example"),
            user(C, "carl@x.example"),
        ];
        let stray = "00000000-0000-4000-8000-0000000000ff";
        let mut c = check(&users, &[(C, D), (stray, A)], &[]);
        c.account(account_of(&users[1], B));
        let mut carl = account_of(&users[2], D);
        carl.server_metadata = Some(json!({"note": "edited by hand"}));
        c.account(carl);
        let report = finished(c);
        assert_eq!(
            fields(&report),
            vec![
                (B.into(), "account".into()),
                (C.into(), "server_metadata.supabase_user_id".into()),
                (stray.into(), "user-mapping.json".into()),
            ]
        );
        assert_eq!((report.skipped, report.skipped_ok), (2, 1));
        assert_eq!((report.migratable, report.migratable_ok), (1, 0));
    }
}
