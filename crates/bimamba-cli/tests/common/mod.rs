//! Helpers shared by the CLI integration tests: run the binary, scratch directories, and the
//! shape of a user error (one line, non-zero exit, no panic).
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `bimamba ARGS` with `env` set and the model/data defaults cleared.
pub fn bimamba_env(args: &[&str], env: &[(&str, &str)]) -> Out {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bimamba"));
    cmd.args(args).env_remove("BIMAMBA_MODEL").env_remove("BIMAMBA_EVAL_DATA");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().expect("the bimamba binary runs");
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

pub fn bimamba(args: &[&str]) -> Out {
    bimamba_env(args, &[])
}

/// A fresh, empty scratch directory unique to this process, `prefix` and `name`.
pub fn scratch(prefix: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bimamba-{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("the temp dir is writable");
    d
}

/// A user error: non-zero exit, exactly one line on stderr that mentions every needle, no panic.
pub fn assert_user_error(o: &Out, needles: &[&str]) {
    assert_ne!(o.code, 0, "expected failure; stdout: {} stderr: {}", o.stdout, o.stderr);
    assert!(!o.stderr.contains("panicked"), "panic: {}", o.stderr);
    let lines: Vec<&str> = o.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one line, got: {}", o.stderr);
    for n in needles {
        assert!(lines[0].contains(n), "`{n}` missing from: {}", lines[0]);
    }
}
