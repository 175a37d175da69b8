//! The whole command line: every subcommand, flag, environment variable and help text.
//!
//! Option groups shared by several subcommands (the source and target connections, connection
//! behaviour) are `#[command(flatten)]`ed so a flag has one name and one meaning everywhere.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::{ArgAction, Args, Parser, Subcommand};

use crate::connect::{ConnectOptions, DbUrl, Side};

const EXAMPLES: &str = "\
The maintenance window, in order:
  fmig export --dry-run        tables, import order, row counts, users; touches nothing
  fmig export                  source -> ./migration-data: one snapshot, JSON files, checksums
  fmig migrate-users           users -> Stack Auth, passwords kept; user-mapping.json
  fmig import                  ./migration-data -> target, user ids rewritten, resumable
  fmig verify                  prove target == source, row by row, after the mappings

Before the window: fmig plan compares the two schemas; fmig plan --write-template starts
the column mapping (fmig.toml) for the differences it finds.
After it: fmig mapping lookup <id or e-mail> answers 'which user was this?' for 90 days;
fmig mapping prune then deletes user-mapping.json (it holds e-mail addresses).

Configuration comes from the environment or a .env file (see .env.example):
  SUPABASE_DB_URL  source: the direct connection, port 5432, e.g.
                   postgresql://postgres:PASSWORD@db.<ref>.supabase.co:5432/postgres?sslmode=require
  DATABASE_URL     target, e.g. postgresql://app:PASSWORD@db.internal:5432/freshtrack

Exit codes: 0 success; 1 the job found a problem (e.g. a missing table); 2 usage,
configuration or connection error; 130 interrupted.";

/// fmig: move a Supabase application to a self-hosted PostgreSQL and Stack Auth.
#[derive(Debug, Parser)]
#[command(name = "fmig", version, about, after_help = EXAMPLES, max_term_width = 110)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags accepted by every subcommand.
#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOpts {
    /// Read settings from this file (default: ./.env when it exists). Variables already set in
    /// the environment win over the file.
    #[arg(long, global = true, value_name = "PATH")]
    pub env_file: Option<PathBuf>,

    /// Append a JSON-lines record of the run to this file (created 0600).
    #[arg(
        long,
        global = true,
        env = "LOG_FILE_PATH",
        hide_env_values = true,
        default_value = "./migration.log",
        value_name = "PATH"
    )]
    pub log_file: PathBuf,

    /// More detail on the console and in the log file (-vv for everything).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Less on the console: -q warnings and errors only, -qq errors only. The log file keeps
    /// everything from info up.
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub quiet: u8,

    /// Do not draw progress bars (they are never drawn when stderr is not a terminal).
    #[arg(long, global = true)]
    pub no_progress: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Export the tables and the Supabase users from the source into the export directory.
    ///
    /// Every table of the source's public schema is exported: the built-in list and the ones
    /// discovered beside it. Writes <table>.json per table, auth_users.json (users with their
    /// identities) and, last,
    /// metadata.json (counts, sizes, SHA-256s, content checksums, column types). Every file
    /// comes from the same read-only snapshot; each is complete or absent, and an export that
    /// fails leaves no metadata.json. Files are mode 0600.
    ///
    /// With --dry-run, list what would be exported, in import order with levels computed from
    /// the source's foreign keys, exact row counts and sizes, the user-id columns, and the
    /// auth.users population, all from one read-only snapshot; and report where the built-in
    /// table list disagrees with the database (the column mapping's skip and
    /// user_id_columns.remove settle findings). Exit code 1 when a listed table is missing or
    /// foreign keys form a cycle; what fmig resolves itself is a warning.
    #[command(
        after_help = "Examples:\n  fmig export --dry-run\n  fmig export --dry-run --skip-large --json\n  fmig export\n  fmig export --jobs 4 --gzip\n  fmig export --table sites,areas --skip-auth --output-dir /tmp/partial"
    )]
    Export(ExportArgs),

    /// Create the exported Supabase users in Stack Auth and write user-mapping.json.
    ///
    /// Every user of auth_users.json is put in one category first (password, OAuth only,
    /// e-mail only, or a reason it cannot be migrated as is) and the list is printed. Users
    /// keep their passwords (Supabase's bcrypt hashes are carried) and OAuth accounts. Before
    /// creating anything, fmig lists the project's users and maps those it already created
    /// (server_metadata.supabase_user_id), so a re-run - also after a crash or kill -9 -
    /// never creates a second account. Each created user is recorded in a fsynced journal;
    /// user-mapping.json (mode 0600) is rewritten from it. Exit code 1 when some users failed
    /// or conflict with an existing account (the mapping still holds everyone else), 2 on bad
    /// credentials, which stop the run at once.
    #[command(
        after_help = "Examples:\n  fmig migrate-users --dry-run\n  fmig migrate-users\n  fmig migrate-users --concurrency 8 --rate-limit 50\n  fmig migrate-users --oauth-providers google,github,microsoft --banned create\n  fmig migrate-users --adopt-existing     # map to same-e-mail accounts that already exist"
    )]
    MigrateUsers(MigrateUsersArgs),

    /// Look up and, after the retention period, delete the user mapping (for customer
    /// support: "my old dashboard showed X").
    Mapping(MappingArgs),

    /// Load the export directory into the target, rewriting user ids.
    ///
    /// Checks every file against metadata.json (SHA-256, row count) and every user id against
    /// user-mapping.json before the first write. Then loads the tables in the target's
    /// foreign-key order with COPY, --batch-size rows per transaction, each transaction also
    /// advancing a checkpoint in the target (fmig.import_progress): a re-run after a crash or
    /// kill resumes after the last committed batch, with no duplicate and no gap. The column
    /// mapping (fmig.toml, see `fmig plan`) renames, drops and computes columns, leaves rows
    /// behind (listed in <input-dir>/left-behind/) and feeds a second target table from a
    /// table's rows (an `also` entry: a unit `<table>+<target>` with its own checkpoint).
    /// Sequences are advanced to the imported maximum at the end.
    #[command(
        after_help = "Examples:\n  fmig import --dry-run\n  fmig import\n  fmig import --truncate-first --yes      # start over\n  fmig import --disable-fk                # then checks every foreign key for orphans\n  fmig import --jobs 4                    # four connections: tables side by side, the largest in parallel batches\n  fmig import --restore-schema            # put back what an interrupted import set aside"
    )]
    Import(ImportArgs),

    /// Prove the target equals the source, after the user and column mappings.
    ///
    /// Per table, row counts and a content checksum of both sides, streamed at the same time;
    /// when they
    /// differ, the primary keys missing, extra or changed (with the columns and both values,
    /// personal data masked); then user ids unknown to the mapping and foreign-key orphans.
    /// What the target must hold is computed from the source alone (filters, lookups, splits);
    /// a target table fed by several units is compared per unit.
    #[command(
        after_help = "Examples:\n  fmig verify\n  fmig verify --table sites,areas --max-diffs 50\n  fmig verify --skip-checksum            # row counts only\n  fmig verify --jobs 4 --output /tmp/verification-report.json\n  fmig verify --only users               # the Stack Auth accounts, against the export and the mapping\n  fmig verify --only sign-in --sign-in accounts.csv   # real accounts through Stack Auth\n\nExit codes: 0 every table equal; 1 differences found; 2 could not run."
    )]
    Verify(VerifyArgs),

    /// Compare the source and target schemas before the window, with the column mapping.
    ///
    /// Reads both databases (read-only snapshots) and lists, per table, every difference:
    /// renamed, retyped, source-only and target-only columns, enum labels, domains, NOT NULL
    /// and defaults, generated and identity columns, partitioning, foreign keys, import levels,
    /// and user-id columns (configured, by foreign key to auth.users, and by value). Each is
    /// ok, lossy (data may change: the affected values are counted on the source) or blocking
    /// (the import would fail or lose data silently). The mapping file (fmig.toml) settles
    /// differences: rename, drop, set expressions and lookups, where, unmapped, also (one table
    /// into two), user-id columns, skip. Exit code 1 while anything is blocking.
    #[command(
        after_help = "Examples:\n  fmig plan\n  fmig plan --write-template          # writes ./fmig.toml to edit\n  fmig plan --mapping-config staging.toml --json"
    )]
    Plan(PlanArgs),
}

/// Where the source database is and how to reach it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Source database")]
pub struct SourceOpts {
    /// Source (Supabase) database URL. Use the direct connection (port 5432), not the
    /// transaction pooler (6543). The session is always read-only.
    #[arg(
        long,
        env = "SUPABASE_DB_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub source_url: Option<String>,
}

impl SourceOpts {
    pub fn url(&self) -> Result<DbUrl> {
        parse_url(Side::Source, self.source_url.as_deref())
    }
}

/// Where the target database is and how to reach it.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Target database")]
pub struct TargetOpts {
    /// Target (self-hosted) database URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub target_url: Option<String>,
}

impl TargetOpts {
    pub fn url(&self) -> Result<DbUrl> {
        parse_url(Side::Target, self.target_url.as_deref())
    }
}

/// How connections behave, for both databases.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Connection")]
pub struct ConnectOpts {
    /// Give up connecting after this many seconds (transient failures are retried until then).
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub connect_timeout: u64,

    /// Allow a URL on port 6543 (Supabase's transaction pooler) or with pgbouncer=true. Only
    /// for a server that is not really a transaction pooler.
    #[arg(long)]
    pub allow_pooler: bool,
}

impl ConnectOpts {
    pub fn options(&self) -> ConnectOptions {
        ConnectOptions {
            connect_timeout: Duration::from_secs(self.connect_timeout.max(1)),
            allow_pooler: self.allow_pooler,
        }
    }
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Export options")]
pub struct ExportArgs {
    /// Directory the export files go to.
    #[arg(
        long,
        env = "EXPORT_DIR",
        hide_env_values = true,
        default_value = "./migration-data",
        value_name = "DIR"
    )]
    pub output_dir: PathBuf,

    /// Only this table (repeat the flag, or separate names with commas).
    #[arg(long = "table", value_name = "NAME", value_delimiter = ',')]
    pub tables: Vec<String>,

    /// Leave out the large tables (sensor_readings, alerts, event_logs).
    #[arg(long)]
    pub skip_large: bool,

    /// Leave out auth.users and auth.identities.
    #[arg(long)]
    pub skip_auth: bool,

    /// Tables exported at the same time, each on its own connection, all reading the same
    /// snapshot.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=32))]
    pub jobs: u16,

    /// Write `<table>.json.gz` instead of `<table>.json` (import reads both).
    #[arg(long)]
    pub gzip: bool,

    /// Show what would be exported and touch nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// With --dry-run: print the report as JSON on stdout instead of a table.
    #[arg(long, requires = "dry_run")]
    pub json: bool,

    /// With --dry-run: the column mapping file whose decisions settle findings (skip = true for
    /// a missing table, user_id_columns.remove for a listed column the source lacks). Default:
    /// ./fmig.toml when it exists.
    #[arg(long, value_name = "PATH", requires = "dry_run")]
    pub mapping_config: Option<PathBuf>,

    #[command(flatten)]
    pub source: SourceOpts,
    #[command(flatten)]
    pub connect: ConnectOpts,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Plan options")]
pub struct PlanArgs {
    /// The column mapping file (TOML). Default: ./fmig.toml when it exists, else no mapping.
    #[arg(long, value_name = "PATH")]
    pub mapping_config: Option<PathBuf>,

    /// Write a commented starting mapping, one entry per difference, to PATH (default
    /// ./fmig.toml). It describes every difference, so the current mapping is not applied.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = "fmig.toml")]
    pub write_template: Option<PathBuf>,

    /// With --write-template: replace an existing file.
    #[arg(long, requires = "write_template")]
    pub force: bool,

    /// Print the report as JSON on stdout instead of tables.
    #[arg(long)]
    pub json: bool,

    /// List every difference one per line, the ones that need nothing too, and every user-id
    /// column. By default a lossy pattern repeated over 3 or more columns is one line with the
    /// counts added up, and what needs nothing is counted (the JSON always has everything).
    #[arg(long)]
    pub all: bool,

    #[command(flatten)]
    pub source: SourceOpts,
    #[command(flatten)]
    pub target: TargetOpts,
    #[command(flatten)]
    pub connect: ConnectOpts,
}

/// What to do with a user id that user-mapping.json does not know.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unmapped {
    /// Stop before writing anything and list the ids (default).
    Fail,
    /// Write NULL instead (only for nullable columns).
    Null,
    /// Keep the old Supabase id (it will point at no Stack Auth user).
    Keep,
    /// Leave the whole row behind, listed in left-behind/<table>.csv (for NOT NULL columns
    /// whose user was not migrated: anonymous, SSO, banned, deleted).
    #[value(alias = "skip_row")]
    SkipRow,
}

impl Unmapped {
    /// The mapping file's spelling of this policy.
    pub fn mapping_name(self) -> &'static str {
        match self {
            Unmapped::Fail => "fail",
            Unmapped::Null => "null",
            Unmapped::Keep => "keep",
            Unmapped::SkipRow => "skip_row",
        }
    }

    /// The spelling of the mapping file (`unmapped = "skip_row"`).
    pub fn parse_mapping(text: &str) -> Option<Unmapped> {
        match text {
            "fail" => Some(Unmapped::Fail),
            "null" => Some(Unmapped::Null),
            "keep" => Some(Unmapped::Keep),
            "skip_row" => Some(Unmapped::SkipRow),
            _ => None,
        }
    }
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Import options")]
pub struct ImportArgs {
    /// The export directory to load (written by fmig export).
    #[arg(
        long,
        env = "EXPORT_DIR",
        hide_env_values = true,
        default_value = "./migration-data",
        value_name = "DIR"
    )]
    pub input_dir: PathBuf,

    /// The user mapping written by fmig migrate-users (default: <input-dir>/user-mapping.json).
    #[arg(long, value_name = "PATH")]
    pub mapping: Option<PathBuf>,

    /// The column mapping file (TOML). Default: ./fmig.toml when it exists, else no mapping.
    #[arg(long, value_name = "PATH")]
    pub mapping_config: Option<PathBuf>,

    /// Only this table (repeat the flag, or separate names with commas).
    #[arg(long = "table", value_name = "NAME", value_delimiter = ',')]
    pub tables: Vec<String>,

    /// Rows per transaction; each commits together with its checkpoint.
    #[arg(long, value_name = "ROWS", default_value_t = 500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub batch_size: u32,

    /// Empty the imported target tables and forget the checkpoints first. Needs --yes.
    #[arg(long)]
    pub truncate_first: bool,

    /// Confirm --truncate-first.
    #[arg(long)]
    pub yes: bool,

    /// Load with foreign-key and other triggers off (session_replication_role = replica, needs
    /// superuser), then check every foreign key of the imported tables for orphans.
    #[arg(long)]
    pub disable_fk: bool,

    /// Connections writing at the same time: tables of one foreign-key level load together,
    /// and connections a level has more of than tables write batches of its largest tables
    /// side by side (committed in file order, so checkpoints and resume stay per table).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub jobs: u16,

    /// Load with every foreign key and secondary index in place (slower). By default a table's
    /// foreign keys and non-unique indexes are set aside while it loads (their definitions
    /// recorded in fmig.deferred_definitions first) and rebuilt at the end; primary keys and
    /// unique constraints always stay.
    #[arg(long)]
    pub keep_constraints: bool,

    /// Only put back the foreign keys and indexes an interrupted import set aside, then stop.
    /// (Every import does this first anyway.)
    #[arg(long)]
    pub restore_schema: bool,

    /// Do not ANALYZE the imported tables at the end (leave the statistics to autovacuum).
    #[arg(long)]
    pub skip_analyze: bool,

    /// What to do with user ids that have no mapping (the column mapping's `unmapped` overrides
    /// it per table or user-id column).
    #[arg(long, value_enum, default_value_t = Unmapped::Fail)]
    pub unmapped: Unmapped,

    /// Check the files, hashes, user mapping, column mapping and target tables, print what
    /// would be loaded, and write nothing.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub target: TargetOpts,
    #[command(flatten)]
    pub connect: ConnectOpts,
}

/// The Stack Auth project migrate-users talks to.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Stack Auth")]
pub struct StackAuthOpts {
    #[command(flatten)]
    pub project: StackAuthProject,

    /// The project's secret server key (ssk_...). Prefer the environment or .env: a flag is
    /// visible to other users in the process list.
    #[arg(
        long,
        env = "STACK_AUTH_SECRET_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub secret_key: Option<String>,
}

/// Which Stack Auth project, and where its API is (migrate-users, verify --sign-in).
#[derive(Debug, Clone, Args)]
pub struct StackAuthProject {
    /// The Stack Auth API base: the cloud API, or a self-hosted backend's URL.
    #[arg(
        long,
        env = "STACK_AUTH_API_URL",
        default_value = crate::stack_auth::DEFAULT_API_URL,
        value_name = "URL"
    )]
    pub stack_auth_url: String,

    /// The Stack Auth project id (a UUID).
    #[arg(long, env = "STACK_AUTH_PROJECT_ID", value_name = "UUID")]
    pub project_id: Option<String>,
}

impl StackAuthOpts {
    /// The checked settings; the key is registered as a secret before anything else happens.
    pub fn credentials(&self) -> Result<crate::stack_auth::Credentials> {
        crate::stack_auth::Credentials::new(
            &self.project.stack_auth_url,
            self.project.project_id.as_deref().unwrap_or(""),
            self.secret_key.as_deref().unwrap_or(""),
        )
    }
}

/// What to do with users banned in Supabase (`banned_until` in the future).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum BannedPolicy {
    /// Do not create them; list them.
    Skip,
    /// Create them anyway. Stack Auth's create has no "restricted" flag, so they become
    /// ordinary accounts: each is listed loudly to restrict by hand.
    Create,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Migrate-users options")]
pub struct MigrateUsersArgs {
    /// The export directory: where auth_users.json is read and user-mapping.json written.
    #[arg(
        long,
        env = "EXPORT_DIR",
        hide_env_values = true,
        default_value = "./migration-data",
        value_name = "DIR"
    )]
    pub export_dir: PathBuf,

    /// The exported users (default: <export-dir>/auth_users.json, or .json.gz).
    #[arg(long, value_name = "PATH")]
    pub input: Option<PathBuf>,

    /// The user mapping to write (default: <export-dir>/user-mapping.json). The journal
    /// (user-migration.journal.jsonl), password-reset-needed.csv and
    /// users-needing-attention.csv go next to it.
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Print the users by category, sample request bodies (password hashes masked) and the
    /// users that need attention; check the credentials with one read; create nothing and
    /// write no output file.
    #[arg(long)]
    pub dry_run: bool,

    /// Minimum milliseconds between two requests to Stack Auth, all workers together
    /// (1000 / requests per second). 0: no limit beyond --concurrency.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub rate_limit: u64,

    /// Users created at the same time.
    #[arg(long, value_name = "N", default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,

    /// OAuth providers configured in the Stack Auth project (Stack Auth ids; Supabase's azure,
    /// linkedin_oidc and twitter become microsoft, linkedin and x). Identities of other
    /// providers cannot be carried: their users are listed.
    #[arg(
        long,
        value_name = "IDS",
        value_delimiter = ',',
        default_value = "google,github,microsoft,apple,discord,gitlab,bitbucket,linkedin,x,facebook,spotify,twitch"
    )]
    pub oauth_providers: Vec<String>,

    /// Also migrate soft-deleted users (deleted_at set); skipped and listed by default.
    #[arg(long)]
    pub include_deleted: bool,

    /// Users banned in Supabase: skip (default) or create.
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = BannedPolicy::Skip)]
    pub banned: BannedPolicy,

    /// Map a Supabase user to an existing Stack Auth user with the same e-mail that fmig did
    /// not create (without this, such a user is a conflict to settle by hand).
    #[arg(long)]
    pub adopt_existing: bool,

    /// Attempts per request on 429, 5xx and timeouts before the user counts as failed.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_attempts: u32,

    /// Seconds before a request without an answer counts as timed out.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub request_timeout: u64,

    /// First back-off in milliseconds when a 429 has no Retry-After (then doubling, jittered).
    #[arg(long, value_name = "MS", default_value_t = 250, hide = true)]
    pub backoff_ms: u64,

    #[command(flatten)]
    pub stack_auth: StackAuthOpts,
}

impl MigrateUsersArgs {
    /// --output, or <export-dir>/user-mapping.json.
    pub fn output_path(&self) -> PathBuf {
        self.output
            .clone()
            .unwrap_or_else(|| self.export_dir.join(crate::user_mapping::FILE_NAME))
    }
}

#[derive(Debug, Args)]
pub struct MappingArgs {
    #[command(subcommand)]
    pub command: MappingCommand,
}

#[derive(Debug, Subcommand)]
pub enum MappingCommand {
    /// Which Stack Auth user a Supabase user became, or the reverse: give an old id, a new id
    /// or an e-mail address. Exit code 1 when nothing matches.
    #[command(
        after_help = "Examples:\n  fmig mapping lookup 0b4c5f4e-2f9a-4c55-9a59-5d2f1c7b9e11\n  fmig mapping lookup chef@freshtrack.example --json"
    )]
    Lookup(MappingLookupArgs),

    /// Delete user-mapping.json, its journal, password-reset-needed.csv,
    /// users-needing-attention.csv and user-migration.choices.json once retainUntil
    /// (90 days after the migration) has passed. Refuses before then (exit code 1) unless
    /// --force.
    #[command(after_help = "Examples:\n  fmig mapping prune\n  fmig mapping prune --force")]
    Prune(MappingPruneArgs),
}

/// Where the mapping file is.
#[derive(Debug, Clone, Args)]
pub struct MappingFileOpts {
    /// The export directory holding user-mapping.json.
    #[arg(
        long,
        env = "EXPORT_DIR",
        hide_env_values = true,
        default_value = "./migration-data",
        value_name = "DIR"
    )]
    pub export_dir: PathBuf,

    /// The mapping file (default: <export-dir>/user-mapping.json).
    #[arg(long, value_name = "PATH")]
    pub mapping: Option<PathBuf>,
}

impl MappingFileOpts {
    pub fn path(&self) -> PathBuf {
        self.mapping
            .clone()
            .unwrap_or_else(|| self.export_dir.join(crate::user_mapping::FILE_NAME))
    }
}

#[derive(Debug, Args)]
pub struct MappingLookupArgs {
    /// A Supabase user id, a Stack Auth user id or an e-mail address.
    #[arg(value_name = "ID_OR_EMAIL")]
    pub key: String,

    /// Print the matches as JSON on stdout.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub file: MappingFileOpts,
}

#[derive(Debug, Args)]
pub struct MappingPruneArgs {
    /// Delete even though retainUntil has not passed (or the mapping cannot be read).
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub file: MappingFileOpts,
}

/// Where verify compares the target against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyAgainst {
    /// The live source database (default).
    Source,
    /// The export files and their metadata.json (no source connection needed).
    Export,
}

/// The part of the migration verify checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum VerifyOnly {
    /// The tables alone.
    Tables,
    /// The Stack Auth accounts alone, against auth_users.json and user-mapping.json (no
    /// database needed).
    Users,
    /// Only the sign-ins of --sign-in (no database needed).
    SignIn,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Verify options")]
pub struct VerifyArgs {
    /// The export directory: where user-mapping.json is read and the report written.
    #[arg(
        long,
        env = "EXPORT_DIR",
        hide_env_values = true,
        default_value = "./migration-data",
        value_name = "DIR"
    )]
    pub export_dir: PathBuf,

    /// The user mapping import used (default: <export-dir>/user-mapping.json).
    #[arg(long, value_name = "PATH")]
    pub mapping: Option<PathBuf>,

    /// The column mapping file (TOML). Default: ./fmig.toml when it exists, else no mapping.
    #[arg(long, value_name = "PATH")]
    pub mapping_config: Option<PathBuf>,

    /// Only this table (repeat the flag, or separate names with commas).
    #[arg(long = "table", value_name = "NAME", value_delimiter = ',')]
    pub tables: Vec<String>,

    /// Compare row counts only.
    #[arg(long)]
    pub skip_checksum: bool,

    /// Stop at the first table that differs.
    #[arg(long)]
    pub fail_fast: bool,

    /// The JSON report (default: <export-dir>/verification-report.json).
    #[arg(long, value_name = "PATH")]
    pub output: Option<PathBuf>,

    /// Differences listed per table.
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub max_diffs: usize,

    /// What the target is compared with.
    #[arg(long, value_enum, value_name = "WHAT", default_value_t = VerifyAgainst::Source)]
    pub against: VerifyAgainst,

    /// How the import treated user ids without a mapping (`fmig import --unmapped`), so that
    /// verify expects the same: NULL, or the old id kept. `fail` means none were left.
    /// Default: what the import recorded in the target (fmig.import_choices), else null. A value
    /// that contradicts the recorded one is refused unless --ignore-recorded.
    #[arg(long, value_enum)]
    pub unmapped: Option<Unmapped>,

    /// Verify with --unmapped and the column mapping as given, even where they differ from the
    /// choices the import recorded in the target.
    #[arg(long)]
    pub ignore_recorded: bool,

    /// Sign in with each account of PATH (a CSV `email,password` with a header, mode 0600: it
    /// holds passwords) through Stack Auth's client password sign-in, as users will; a TOTP
    /// user counts as "password accepted, TOTP required". Passwords are never logged.
    #[arg(long, value_name = "PATH")]
    pub sign_in: Option<PathBuf>,

    /// Check only this part. Without it: the tables; the users too when the Stack Auth settings
    /// (STACK_AUTH_PROJECT_ID, STACK_AUTH_SECRET_KEY) are present; the sign-ins of --sign-in.
    #[arg(long, value_enum, value_name = "PART")]
    pub only: Option<VerifyOnly>,

    /// The project the users were migrated into (users check, --sign-in).
    #[command(flatten)]
    pub stack_auth: StackAuthOpts,

    /// The project's publishable client key, pck_... (for --sign-in).
    #[arg(
        long,
        env = "STACK_AUTH_PUBLISHABLE_CLIENT_KEY",
        hide_env_values = true,
        value_name = "KEY"
    )]
    pub publishable_client_key: Option<String>,

    /// Tables verified at the same time (each uses three connections).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub jobs: u16,

    #[command(flatten)]
    pub source: SourceOpts,
    #[command(flatten)]
    pub target: TargetOpts,
    #[command(flatten)]
    pub connect: ConnectOpts,
}

impl VerifyArgs {
    /// --mapping, or <export-dir>/user-mapping.json.
    pub fn mapping_path(&self) -> PathBuf {
        self.mapping
            .clone()
            .unwrap_or_else(|| self.export_dir.join(crate::user_mapping::FILE_NAME))
    }

    /// --output, or <export-dir>/verification-report.json.
    pub fn output_path(&self) -> PathBuf {
        self.output
            .clone()
            .unwrap_or_else(|| self.export_dir.join("verification-report.json"))
    }
}

fn parse_url(side: Side, value: Option<&str>) -> Result<DbUrl> {
    let flag = match side {
        Side::Source => "--source-url",
        Side::Target => "--target-url",
    };
    match value {
        Some(text) if !text.trim().is_empty() => DbUrl::parse(side, text),
        _ => Err(anyhow!(
            "no {side} database given: set {} in the environment or in .env, or pass {flag}",
            side.env_var()
        )),
    }
}

/// Loads `--env-file` (or ./.env when present) into the environment before clap reads it, so
/// that `env = ...` flags see the file's values. Variables already set win. Returns the file
/// that was loaded.
pub fn load_env_file(args: impl IntoIterator<Item = OsString>) -> Result<Option<PathBuf>> {
    let mut explicit: Option<PathBuf> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        if arg == "--env-file" {
            explicit = args.next().map(PathBuf::from);
        } else if let Some(value) = arg.to_str().and_then(|a| a.strip_prefix("--env-file=")) {
            explicit = Some(PathBuf::from(value));
        }
    }
    let path = match explicit {
        Some(path) => {
            if !path.is_file() {
                return Err(anyhow!("--env-file {}: no such file", path.display()));
            }
            path
        }
        None if Path::new(".env").is_file() => PathBuf::from(".env"),
        None => return Ok(None),
    };
    // dotenvy's parse error quotes the whole line, password and all: name the line instead.
    dotenvy::from_path(&path).map_err(|err| {
        let what = match &err {
            dotenvy::Error::LineParse(line, at) => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                let number = text
                    .lines()
                    .position(|l| l.trim_end() == line.trim_end())
                    .map_or_else(String::new, |n| format!("line {}, ", n + 1));
                // Only a variable's name is shown, never a value (nor a line that has no name).
                let key = line
                    .split_once('=')
                    .map(|(key, _)| key.trim().trim_start_matches("export ").trim())
                    .filter(|key| {
                        !key.is_empty()
                            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    });
                match key {
                    Some(key) => {
                        format!(
                            "{number}the {key} line cannot be parsed at character {}",
                            at + 1
                        )
                    }
                    None => format!("{number}a line cannot be parsed"),
                }
            }
            other => crate::redact::scrub(&other.to_string()).to_string(),
        };
        anyhow!(
            "could not read {}: {what} (its value is not shown: it may hold a password).\n  \
             next step: write KEY=value lines; quote values that contain spaces or #, and close \
             every quote",
            path.display()
        )
    })?;
    Ok(Some(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn tables_accept_repeats_and_commas() {
        let cli = Cli::try_parse_from([
            "fmig",
            "export",
            "--dry-run",
            "--table",
            "sites,areas",
            "--table",
            "units",
        ])
        .unwrap();
        let Command::Export(args) = cli.command else {
            panic!("not export")
        };
        assert_eq!(args.tables, ["sites", "areas", "units"]);
    }

    #[test]
    fn json_needs_dry_run() {
        assert!(Cli::try_parse_from(["fmig", "export", "--json"]).is_err());
    }
}
