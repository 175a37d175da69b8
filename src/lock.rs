//! One run at a time: the commands that write take a lock before they read or write anything,
//! and a second run exits at once, naming the first.
//!
//! - `import` holds a session-level advisory lock in the target database
//!   ([`TARGET_LOCK_KEY`]) for the whole run, and names itself in the connection's
//!   `application_name`. The server releases the lock when the session ends, a killed run's
//!   included (the backend sees the closed socket), so a stale lock cannot exist.
//! - `export` and `migrate-users` hold an exclusive `flock` on `.fmig.lock` in the directory they
//!   write, and write who they are into it. The kernel releases the lock when the process dies,
//!   so again nothing stale is left; the file's content only names the last holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tokio_postgres::Client;

/// The advisory lock key of `fmig import` in a target database ("fmigimpt" in ASCII).
pub const TARGET_LOCK_KEY: i64 = 0x666d_6967_696d_7074;

/// The lock file's name in an export directory.
pub const LOCK_FILE: &str = ".fmig.lock";

/// Who this run is: command, process id, host and start time (UTC).
pub fn holder(command: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown host".into());
    format!(
        "fmig {command} pid {} on {host} since {}",
        std::process::id(),
        chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
    )
}

/// Takes `fmig import`'s lock in the target, or fails naming the run that holds it.
pub async fn lock_target(client: &Client) -> Result<()> {
    let me = holder("import");
    // application_name is at most 63 bytes; the pid and host come first.
    client
        .execute("SELECT set_config('application_name', $1, false)", &[&me])
        .await
        .context("could not name this session on the target")?;
    // A run killed a moment ago still holds the lock until its server process has seen the
    // closed connection, which takes milliseconds: a short grace, not a wait for a live run.
    for attempt in 0..20 {
        let taken: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&TARGET_LOCK_KEY])
            .await
            .context("could not take fmig's import lock on the target")?
            .get(0);
        if taken {
            return Ok(());
        }
        if attempt < 19 {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
    // A bigint key shows in pg_locks as classid (high half), objid (low half), objsubid 1.
    let other = client
        .query_opt(
            "SELECT a.application_name, a.pid, coalesce(a.client_addr::text, 'a local socket'), \
                    to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.classid::bigint = ($1::bigint >> 32) \
               AND l.objid::bigint = ($1::bigint & 4294967295) \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[&TARGET_LOCK_KEY],
        )
        .await
        .context("could not find the session holding fmig's import lock")?;
    let who = match other {
        Some(row) => format!(
            "{} (server process {}, connected from {} at {})",
            row.get::<_, String>(0),
            row.get::<_, i32>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3)
        ),
        None => "a session that has just ended".into(),
    };
    bail!(
        "another fmig import is writing to this target database: {who}.\n  next step: wait for \
         it to finish, or stop it (its lock goes with its connection: a killed run releases it, \
         and the next run resumes from the checkpoints); nothing was written by this run"
    )
}

/// An exclusive lock on a directory, held until dropped.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` (created if missing) for `command`, or fails naming the run that
    /// holds it.
    pub fn acquire(dir: &Path, command: &str) -> Result<DirLock> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("could not create {}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("could not open the lock file {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut who = String::new();
                let _ = file.read_to_string(&mut who);
                let who = who.trim();
                bail!(
                    "another fmig run is using {}: {}.\n  next step: wait for it to finish, or \
                     stop it (its lock goes with its process: a killed run releases it), then \
                     run this again; nothing was done by this run",
                    dir.display(),
                    if who.is_empty() {
                        "a run that is starting"
                    } else {
                        who
                    }
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(anyhow!(e))
                    .with_context(|| format!("could not lock {}", path.display()));
            }
        }
        file.set_len(0)?;
        file.seek(SeekFrom::Start(0))?;
        writeln!(file, "{}", holder(command))?;
        file.flush()?;
        Ok(DirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_directory_is_refused_naming_the_first_and_freed_by_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path(), "export").unwrap();
        let err = DirLock::acquire(dir.path(), "migrate-users")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&format!("fmig export pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("nothing was done"), "{err}");
        drop(first);
        let again = DirLock::acquire(dir.path(), "migrate-users").unwrap();
        let text = std::fs::read_to_string(again.path()).unwrap();
        assert!(text.starts_with("fmig migrate-users pid "), "{text}");
    }
}
