//! Live progress on the console.
//!
//! Bars are drawn on stderr only when it is a terminal and `--no-progress` was not given: in a
//! pipe, a CI log or a `tee`d session they would be noise. Log lines written while bars are
//! visible go through [`suspend`], so a bar is never torn by a log line.

use std::io::IsTerminal;
use std::sync::OnceLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

static MULTI: OnceLock<MultiProgress> = OnceLock::new();

/// Decides once, at start-up, whether bars are drawn.
pub fn init(enabled: bool) {
    let draw = enabled && std::io::stderr().is_terminal();
    let target = if draw {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let _ = MULTI.set(MultiProgress::with_draw_target(target));
}

fn multi() -> &'static MultiProgress {
    MULTI.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::hidden()))
}

/// Runs `f` (which writes to the terminal) with the bars cleared, then redraws them.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    multi().suspend(f)
}

/// A bar for work of known size (rows of a table, users), with rate and ETA.
pub fn bar(len: u64, label: &str) -> ProgressBar {
    let bar = multi().add(ProgressBar::new(len));
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>24} [{bar:30}] {human_pos}/{human_len} {per_sec} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_prefix(label.to_string());
    bar
}

/// A spinner for work of unknown size (connecting, counting).
pub fn spinner(label: &str) -> ProgressBar {
    let bar = multi().add(ProgressBar::new_spinner());
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
    bar.set_message(label.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}
