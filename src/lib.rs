//! fmig: moves a Supabase application's PostgreSQL data to a self-hosted PostgreSQL and its
//! users to Stack Auth, during one maintenance window.
//!
//! `main.rs` parses the command line and sets up logging; [`run`] dispatches to one module per
//! subcommand under [`commands`]. The shared pieces are named for what they hold: [`connect`]
//! (URLs, TLS, redaction), [`manifest`] (the tables and their order), [`catalog`] (what a live
//! database says), [`supabase`] (auth.users), [`logging`] and [`progress`], [`report`].

pub mod catalog;
pub mod checksum;
pub mod cli;
pub mod codec;
pub mod column_map;
pub mod commands;
pub mod connect;
pub mod copy_binary;
pub mod copy_text;
pub mod files;
pub mod ident;
pub mod import_choices;
pub mod json_rows;
pub mod lock;
pub mod logging;
pub mod manifest;
pub mod metadata;
pub mod pg_oid;
pub mod pipeline;
pub mod progress;
pub mod redact;
pub mod report;
pub mod schema_diff;
pub mod sign_in;
pub mod stack_auth;
pub mod supabase;
pub mod user_mapping;

use anyhow::Result;

use cli::Command;

/// How a command ended when it did not fail outright.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0.
    Success,
    /// The job ran and found a problem (a missing table, a verification mismatch): exit code 1.
    ProblemsFound,
}

/// Runs one subcommand.
pub async fn run(command: &Command) -> Result<Outcome> {
    match command {
        Command::Export(args) if args.dry_run => commands::dry_run::run(args).await,
        Command::Export(args) => commands::export::run(args).await,
        Command::MigrateUsers(args) => commands::migrate_users::run(args).await,
        Command::Mapping(args) => commands::mapping::run(args),
        Command::Import(args) => commands::import::run(args).await,
        Command::Verify(args) => commands::verify::run(args).await,
        Command::Plan(args) => commands::plan::run(args).await,
    }
}
