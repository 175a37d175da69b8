//! `fmig mapping lookup|prune`: the customer-support workflow user-mapping.json exists for.
//!
//! For 90 days after the migration support answers "my old dashboard showed X" by looking a
//! user up by old id, new id or e-mail; after that the file (personal data: e-mail addresses)
//! and everything derived from it - the journal it is rebuilt from, the password-reset list -
//! are deleted. `prune` refuses to delete early unless told to.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use chrono::Utc;
use tracing::{info, warn};

use crate::Outcome;
use crate::cli::{MappingArgs, MappingCommand, MappingLookupArgs, MappingPruneArgs};
use crate::files;
use crate::report::{Align, TextTable};
use crate::user_mapping::{self, MappingEntry, UserMapping, iso};

pub fn run(args: &MappingArgs) -> Result<Outcome> {
    match &args.command {
        MappingCommand::Lookup(args) => lookup(args),
        MappingCommand::Prune(args) => prune(args),
    }
}

fn lookup(args: &MappingLookupArgs) -> Result<Outcome> {
    let path = args.file.path();
    let mapping = UserMapping::load(&path)?;
    let found: Vec<&MappingEntry> = mapping.lookup(&args.key);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&found)?);
    } else if found.is_empty() {
        println!(
            "no user in {} matches {:?} ({} mappings; give a Supabase id, a Stack Auth id or an e-mail)",
            path.display(),
            args.key,
            mapping.mappings.len()
        );
    } else {
        let mut table = TextTable::new(&[
            ("Supabase user id", Align::Left),
            ("Stack Auth user id", Align::Left),
            ("e-mail", Align::Left),
            ("migrated at", Align::Left),
        ]);
        for m in &found {
            table.row(vec![
                m.supabase_user_id.clone(),
                m.stack_auth_user_id.clone(),
                m.email.clone().unwrap_or_default(),
                iso(m.migrated_at),
            ]);
        }
        print!("{}", table.render());
    }
    info!(key_kind = if args.key.contains('@') { "email" } else { "id" }, matches = found.len(), mapping = %path.display(), "mapping lookup");
    Ok(if found.is_empty() {
        Outcome::ProblemsFound
    } else {
        Outcome::Success
    })
}

fn prune(args: &MappingPruneArgs) -> Result<Outcome> {
    let path = args.file.path();
    let now = Utc::now();
    match UserMapping::load(&path) {
        Ok(mapping) if !mapping.is_expired(now) && !args.force => {
            let days = (mapping.retain_until - now).num_days();
            println!(
                "not deleted: {} is kept until {} ({days} more days, for customer support). \
                 Use --force to delete it now.",
                path.display(),
                iso(mapping.retain_until)
            );
            return Ok(Outcome::ProblemsFound);
        }
        Ok(mapping) => info!(
            mappings = mapping.mappings.len(),
            retain_until = %iso(mapping.retain_until),
            forced = !mapping.is_expired(now),
            "pruning the user mapping"
        ),
        Err(e) if !args.force => {
            return Err(e.context(
                "cannot tell whether the retention period is over; --force deletes anyway",
            ));
        }
        Err(e) => warn!("{e:#}; deleting anyway (--force)"),
    }
    let targets: Vec<PathBuf> = vec![
        path.clone(),
        user_mapping::journal_path(&path),
        user_mapping::reset_csv_path(&path),
        user_mapping::attention_csv_path(&path),
        user_mapping::choices_path(&path),
        temp_of(&path),
        temp_of(&user_mapping::reset_csv_path(&path)),
        temp_of(&user_mapping::attention_csv_path(&path)),
        temp_of(&user_mapping::choices_path(&path)),
    ];
    let mut deleted = Vec::new();
    for target in &targets {
        match std::fs::remove_file(target) {
            Ok(()) => deleted.push(target.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("could not delete {}", target.display()));
            }
        }
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        files::sync_dir(dir)?;
    }
    if deleted.is_empty() {
        println!("nothing to delete: no {} here", path.display());
    } else {
        for d in &deleted {
            println!("deleted {d}");
        }
    }
    info!(files = ?deleted, "user mapping pruned");
    Ok(Outcome::Success)
}

/// The temporary name `files::write_atomically` uses for `path`, left behind by a crash.
fn temp_of(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{}{name}", files::TEMP_PREFIX))
}
