//! One module per subcommand. Each exposes a `run` that reads top-down.

pub mod dry_run;
pub mod export;
pub mod import;
pub mod mapping;
pub mod migrate_users;
pub mod plan;
pub mod verify;
