//! Logging to the console and to the log file at the same time.
//!
//! Operators watch the console and keep the file: the console gets human-readable lines (colour
//! only on a terminal and without `NO_COLOR`), the file gets one JSON object per line, a
//! persistent record of the run. Both writers pass every line through [`crate::redact::scrub`].
//! The file is written by a background thread; the [`LogGuard`] returned by [`init`] flushes it
//! when dropped, which `main` does on every exit path.

use std::fs::OpenOptions;
use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::time::{ChronoLocal, ChronoUtc};
use tracing_subscriber::prelude::*;

use crate::{progress, redact};

/// What `-v`/`-q` and `--log-file` asked for.
#[derive(Clone, Debug)]
pub struct LogSettings {
    pub file: PathBuf,
    pub verbose: u8,
    pub quiet: u8,
}

/// Keeps the file writer alive; dropping it flushes the log file.
pub struct LogGuard {
    _file: WorkerGuard,
}

/// Installs the console and file loggers. `RUST_LOG`, when set, replaces the console filter.
pub fn init(settings: &LogSettings) -> Result<LogGuard> {
    let file = open_log_file(&settings.file)?;
    let (file_writer, guard) = tracing_appender::non_blocking(file);

    let console_filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.is_empty() => EnvFilter::new(directives),
        _ => EnvFilter::new(console_directives(settings.verbose, settings.quiet)),
    };
    let file_filter = EnvFilter::new(if settings.verbose > 0 {
        "warn,fmig=debug"
    } else {
        "warn,fmig=info"
    });
    let colour = io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();

    let console = tracing_subscriber::fmt::layer()
        .with_writer(Scrubbing(Console))
        .with_ansi(colour)
        .with_target(settings.verbose > 1)
        .with_timer(ChronoLocal::new("%H:%M:%S".to_string()))
        .with_filter(console_filter);
    let file_layer = tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_timer(ChronoUtc::rfc_3339())
        .with_writer(Scrubbing(file_writer))
        .with_filter(file_filter);
    tracing_subscriber::registry()
        .with(console)
        .with(file_layer)
        .try_init()
        .context("could not install the logger")?;
    Ok(LogGuard { _file: guard })
}

fn console_directives(verbose: u8, quiet: u8) -> &'static str {
    match (verbose, quiet) {
        (0, 0) => "warn,fmig=info,fmig::report=off",
        (0, 1) => "warn,fmig::report=off",
        (0, _) => "error,fmig::report=off",
        (1, _) => "warn,fmig=debug,fmig::report=off",
        _ => "info,fmig=trace,fmig::report=off",
    }
}

/// Opens the log file for appending. It is created 0600: it may name users by e-mail.
fn open_log_file(path: &Path) -> Result<std::fs::File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path).with_context(|| {
        format!(
            "could not open the log file {}: choose another with --log-file or LOG_FILE_PATH",
            path.display()
        )
    })
}

/// Standard error, with the progress bars cleared while a line is written.
struct Console;

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        progress::suspend(|| io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for Console {
    type Writer = Console;
    fn make_writer(&'a self) -> Console {
        Console
    }
}

/// Wraps a writer so that registered secrets are masked in everything written through it.
/// tracing-subscriber formats each event into one buffer and writes it with one `write_all`, so
/// a secret is never split between two calls.
struct Scrubbing<M>(M);

struct ScrubbingWriter<W>(W);

impl<W: Write> Write for ScrubbingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(redact::scrub(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Scrubbing<M> {
    type Writer = ScrubbingWriter<M::Writer>;
    fn make_writer(&'a self) -> Self::Writer {
        ScrubbingWriter(self.0.make_writer())
    }
}
