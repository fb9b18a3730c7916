//! `bimamba-fuzz`: runs the fuzz targets of `targets.rs` on mutations of their seed corpus and
//! reports executions and crashes per target (docs/FUZZING.md has the figures and the commands).
//!
//! ```text
//! bimamba-fuzz [--seconds S] [--execs N] [--seed K] [--out DIR] [--root REPO] [TARGET ...]
//! bimamba-fuzz --list
//! ```
//!
//! An input that a parser accepted joins the corpus (up to a bound), so later mutations start
//! from deeper inside the format. A panic is caught, counted as a crash and its input written to
//! `DIR/crash-TARGET-N`; an abort (an allocation the size of a corrupted header, a stack
//! overflow) ends the process, and the input it was running is `DIR/current-TARGET`, written
//! before each execution. Allocations above [`ALLOC_LIMIT`] fail, so that a size read from a
//! file and trusted shows up as an abort instead of swapping the machine.

mod mutate;
mod targets;

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use mutate::{mutate, Rng};
use targets::{Setup, TARGETS};

/// The largest single allocation an input may cause: 2 GiB (the fixtures need a few MB).
const ALLOC_LIMIT: usize = 2 << 30;

struct Limited;

// SAFETY: forwards to the system allocator; a request above the limit returns null, which the
// standard library reports as an allocation failure.
unsafe impl GlobalAlloc for Limited {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: same layout contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: as in `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_LIMIT {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr`/`layout` came from this allocator, which is the system's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Limited = Limited;

thread_local! {
    /// The message of the last panic, written beside its input.
    static LAST_PANIC: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

/// Inputs kept per target: the seeds plus accepted mutations.
const MAX_CORPUS: usize = 256;
/// Mutated inputs are cut to this many bytes (the largest seed is about 350 KB).
const MAX_LEN: usize = 1 << 20;

struct Options {
    seconds: f64,
    execs: u64,
    seed: u64,
    out: PathBuf,
    /// The repository (its fixtures/ and configs/ are the seeds).
    root: PathBuf,
    targets: Vec<String>,
}

fn parse_args() -> Result<Option<Options>, String> {
    let mut o = Options {
        seconds: 5.0,
        execs: u64::MAX,
        seed: 1,
        out: std::env::temp_dir().join("bimamba-fuzz"),
        // The working directory when it is a checkout (a copied binary), else this source tree.
        root: if Path::new("fixtures/ss-bimamba-col").is_dir() {
            PathBuf::from(".")
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
        },
        targets: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--seconds" => o.seconds = value("--seconds")?.parse().map_err(|_| "--seconds: expected a number")?,
            "--execs" => o.execs = value("--execs")?.parse().map_err(|_| "--execs: expected a whole number")?,
            "--seed" => o.seed = value("--seed")?.parse().map_err(|_| "--seed: expected a whole number")?,
            "--out" => o.out = PathBuf::from(value("--out")?),
            "--root" => o.root = PathBuf::from(value("--root")?),
            "--list" => {
                for t in &TARGETS {
                    println!("{:<17} {}", t.name, t.about);
                }
                return Ok(None);
            }
            "-h" | "--help" => {
                println!(
                    "bimamba-fuzz [--seconds S] [--execs N] [--seed K] [--out DIR] [--root REPO] [TARGET ...] | --list"
                );
                return Ok(None);
            }
            t if TARGETS.iter().any(|x| x.name == t) => o.targets.push(t.to_string()),
            other => return Err(format!("unknown argument or target `{other}` (--list names the targets)")),
        }
    }
    if o.targets.is_empty() {
        o.targets = TARGETS.iter().map(|t| t.name.to_string()).collect();
    }
    Ok(Some(o))
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(Some(o)) => o,
        Ok(None) => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = std::fs::create_dir_all(&opts.out) {
        eprintln!("error: {}: {e}", opts.out.display());
        return ExitCode::FAILURE;
    }
    let setup = Setup::new(&opts.root, &opts.out.join(format!("scratch-{}", std::process::id())));
    // Panics are counted, not printed (each would print a message and a backtrace); the message
    // is kept next to the crashing input.
    std::panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|p| *p.borrow_mut() = info.to_string());
    }));
    let mut total_crashes = 0;
    println!("{:<17} {:>10} {:>8} {:>8} {:>7} {:>8}", "target", "execs", "execs/s", "crashes", "corpus", "accepted");
    for name in &opts.targets {
        let target = TARGETS.iter().find(|t| t.name == name).expect("checked in parse_args");
        let r = fuzz(&setup, target, &opts);
        total_crashes += r.crashes;
        println!(
            "{:<17} {:>10} {:>8.0} {:>8} {:>7} {:>8}",
            name,
            r.execs,
            r.execs as f64 / r.seconds.max(1e-9),
            r.crashes,
            r.corpus,
            r.accepted
        );
    }
    let _ = std::fs::remove_dir_all(&setup.scratch);
    if total_crashes > 0 {
        eprintln!("{total_crashes} crashing inputs written to {}", opts.out.display());
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

struct Report {
    execs: u64,
    seconds: f64,
    crashes: u64,
    corpus: usize,
    accepted: u64,
}

fn fuzz(setup: &Setup, target: &targets::Target, opts: &Options) -> Report {
    let mut corpus = setup.seeds(target.name);
    let mut rng =
        Rng::new(opts.seed ^ target.name.bytes().fold(0u64, |h, b| h.wrapping_mul(131).wrapping_add(b as u64)));
    let current = opts.out.join(format!("current-{}", target.name));
    let (mut execs, mut crashes, mut accepted) = (0u64, 0u64, 0u64);
    let t0 = Instant::now();
    let budget = Duration::from_secs_f64(opts.seconds);
    // The seeds themselves first: they must be accepted without a crash.
    let mut queue: Vec<Vec<u8>> = corpus.clone();
    while execs < opts.execs && (t0.elapsed() < budget || !queue.is_empty()) {
        let input = match queue.pop() {
            Some(seed) => seed,
            None => {
                let mut m = corpus[rng.below(corpus.len())].clone();
                let other = &corpus[rng.below(corpus.len())];
                mutate(&mut rng, &mut m, other, MAX_LEN);
                m
            }
        };
        let _ = std::fs::write(&current, &input);
        let ok = std::panic::catch_unwind(|| (target.run)(setup, &input));
        execs += 1;
        match ok {
            Err(_) => {
                crashes += 1;
                let _ = std::fs::write(opts.out.join(format!("crash-{}-{crashes}", target.name)), &input);
                let msg = LAST_PANIC.with(|p| p.borrow().clone());
                let _ = std::fs::write(opts.out.join(format!("crash-{}-{crashes}.txt", target.name)), msg);
            }
            Ok(false) => {}
            Ok(true) => {
                // A mutation the parser accepted is cheap feedback (no coverage here): a sample of
                // them joins the corpus, so later mutations start deeper inside the format.
                if corpus.len() < MAX_CORPUS && rng.below(16) == 0 {
                    accepted += 1;
                    corpus.push(input);
                }
            }
        }
    }
    let _ = std::fs::remove_file(&current);
    Report { execs, seconds: t0.elapsed().as_secs_f64(), crashes, corpus: corpus.len(), accepted }
}
