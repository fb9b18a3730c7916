//! Progress of long work: a bar on a terminal, and off one (stderr redirected to a log, a CI
//! job) a plain line every few seconds, so that a run of minutes is never silent.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Seconds between two progress lines when stderr is not a terminal; `BIMAMBA_PROGRESS_SECS`
/// overrides it (0: a line at every step).
const LINE_EVERY_S: f64 = 5.0;

pub struct Progress {
    bar: ProgressBar,
    /// Off a terminal: what a line says, and when the last one was printed.
    lines: Option<Lines>,
}

struct Lines {
    what: String,
    every: Duration,
    last: Instant,
    start: Instant,
}

impl Progress {
    /// A progress of `len` steps, drawn with `template` on a terminal; `what` names the steps
    /// in the lines printed otherwise ("windows", "boolq documents"). `quiet` shows nothing.
    pub fn new(len: u64, template: &str, what: &str, quiet: bool) -> Progress {
        let bar = ProgressBar::new(len);
        bar.set_style(ProgressStyle::with_template(template).expect("the progress template is a valid constant"));
        let tty = std::io::stderr().is_terminal();
        if quiet || !tty {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        let lines = (!quiet && !tty).then(|| {
            let secs = std::env::var("BIMAMBA_PROGRESS_SECS").ok().and_then(|s| s.parse::<f64>().ok());
            let every = Duration::from_secs_f64(secs.filter(|s| s.is_finite() && *s >= 0.0).unwrap_or(LINE_EVERY_S));
            let now = Instant::now();
            Lines { what: what.to_string(), every, last: now, start: now }
        });
        Progress { bar, lines }
    }

    pub fn set_prefix(&self, prefix: &'static str) {
        self.bar.set_prefix(prefix);
    }

    /// Records `done` of `total` steps (a line off a terminal when one is due).
    pub fn set(&mut self, done: u64, total: u64) {
        self.bar.set_length(total);
        self.bar.set_position(done);
        if let Some(l) = &mut self.lines {
            if l.last.elapsed() >= l.every {
                l.last = Instant::now();
                eprintln!("progress: {done}/{total} {} in {:.0} s", l.what, l.start.elapsed().as_secs_f64());
            }
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
