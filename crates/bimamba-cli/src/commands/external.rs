//! Training commands live in the separate `bimamba-train` binary (the only one built on Burn,
//! so that the inference binary stays small and quick to build). `bimamba train ...` runs it
//! with the same arguments, the way git and cargo run their external subcommands.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

pub const TRAIN_BINARY: &str = "bimamba-train";

/// `bimamba-train` next to this executable, else on PATH.
fn find_train_binary() -> Option<PathBuf> {
    let name = format!("{TRAIN_BINARY}{}", std::env::consts::EXE_SUFFIX);
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(|p| p.to_path_buf())) {
        let p = dir.join(&name);
        if p.is_file() {
            return Some(p);
        }
    }
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|d| d.join(&name)).find(|p| p.is_file()))
        .unwrap_or(None)
}

/// Runs `bimamba-train SUBCOMMAND ARGS...`, passing its exit status through.
pub fn run(subcommand: &str, args: &[String]) -> Result<()> {
    let Some(bin) = find_train_binary() else {
        bail!(
            "`bimamba {subcommand}` needs the {TRAIN_BINARY} binary next to bimamba or on PATH; build it with `cargo build --release -p bimamba-train` (add `--features cuda` for the GPU)"
        );
    };
    let status = Command::new(&bin)
        .arg(subcommand)
        .args(args)
        .status()
        .with_context(|| format!("{}: could not start", bin.display()))?;
    if !status.success() {
        // The training binary has already printed its own one-line error.
        std::process::exit(status.code().unwrap_or(1));
    }
    Ok(())
}
