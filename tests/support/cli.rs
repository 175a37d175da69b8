//! Runs the real `fmig` binary the way an operator does, in a scratch directory so that no
//! `.env` or `migration.log` of the developer's checkout is read or written.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// Environment variables fmig reads; cleared so the developer's own settings cannot leak in.
const FMIG_ENV: &[&str] = &[
    "SUPABASE_DB_URL",
    "DATABASE_URL",
    "STACK_AUTH_PROJECT_ID",
    "STACK_AUTH_SECRET_KEY",
    "STACK_AUTH_API_URL",
    "LOG_FILE_PATH",
    "EXPORT_DIR",
    "RUST_LOG",
    "PGPASSWORD",
];

/// A scratch working directory for fmig runs.
pub struct Workdir {
    dir: TempDir,
}

/// What one run printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Panics with the whole output unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "fmig exited {} (expected {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

impl Workdir {
    pub fn new() -> Workdir {
        Workdir {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("migration.log")
    }

    /// The log file's text ("" when it does not exist).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A command for `fmig` in this directory with a clean environment plus `env`.
    pub fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        // Only test binaries have it; the demo includes this module but does not run it.
        let Some(exe) = option_env!("CARGO_BIN_EXE_fmig") else {
            panic!(
                "Workdir::command runs only in integration tests, where cargo sets CARGO_BIN_EXE_fmig"
            );
        };
        let mut cmd = Command::new(exe);
        cmd.args(args).current_dir(self.path());
        for var in FMIG_ENV {
            cmd.env_remove(var);
        }
        cmd.env("HOME", self.path()).env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Runs `fmig` to completion.
    pub fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let out = self
            .command(args, env)
            .output()
            .expect("run the fmig binary");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}
