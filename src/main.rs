//! Parses the command line, loads `.env`, sets up logging, runs the subcommand and turns its
//! result into an exit code. Everything else lives in the library.

use std::process::ExitCode;

use clap::Parser;
use fmig::cli::Cli;
use fmig::logging::{self, LogSettings};
use fmig::{Outcome, progress, redact};

const EXIT_PROBLEMS: u8 = 1;
const EXIT_ERROR: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    if let Err(err) = fmig::cli::load_env_file(std::env::args_os()) {
        eprintln!("error: {}", redact::scrub(&format!("{err:#}")));
        return ExitCode::from(EXIT_ERROR);
    }
    let cli = Cli::parse();
    progress::init(!cli.global.no_progress);
    let _log = match logging::init(&LogSettings {
        file: cli.global.log_file.clone(),
        verbose: cli.global.verbose,
        quiet: cli.global.quiet,
    }) {
        Ok(guard) => guard,
        Err(err) => {
            eprintln!("error: {}", redact::scrub(&format!("{err:#}")));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("could not start the async runtime: {err}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async {
        tokio::select! {
            result = fmig::run(&cli.command) => Some(result),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    // Stop connection tasks before the log guard flushes, so their last words are in the file.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Some(Ok(Outcome::Success)) => ExitCode::SUCCESS,
        Some(Ok(Outcome::ProblemsFound)) => ExitCode::from(EXIT_PROBLEMS),
        Some(Err(err)) => {
            tracing::error!("{err:#}");
            ExitCode::from(EXIT_ERROR)
        }
        None => {
            tracing::error!("interrupted (Ctrl-C)");
            ExitCode::from(EXIT_INTERRUPTED)
        }
    }
}
