//! Finding the `medpool` binary. A test crate cannot name another crate's binary (`CARGO_BIN_EXE_*`
//! exists only inside the crate that defines it, and a binary cannot be a dev-dependency), so the
//! harness looks for it where `cargo build -p medpool` puts it: `$CARGO_TARGET_DIR/debug/medpool`, by
//! default `<workspace>/target/debug/medpool` (the workspace is `CARGO_MANIFEST_DIR/..`). When it is
//! missing or older than any source it is built from, the harness runs `cargo build -p medpool`
//! first. `MEDPOOL_BIN=/path/to/medpool` skips all of this and uses that file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::SystemTime;

use crate::HarnessError;

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    dir.canonicalize().unwrap_or(dir)
}

/// The medpool binary, built first when missing or stale. Built at most once per test process.
pub fn medpool_binary() -> Result<PathBuf, HarnessError> {
    if let Some(p) = std::env::var_os("MEDPOOL_BIN") {
        return Ok(PathBuf::from(p));
    }
    static BUILT: OnceLock<Result<PathBuf, (PathBuf, String)>> = OnceLock::new();
    BUILT
        .get_or_init(find_or_build)
        .clone()
        .map_err(|(path, why)| HarnessError::Binary { path, why })
}

fn find_or_build() -> Result<PathBuf, (PathBuf, String)> {
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug").join("medpool");
    let built_at = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    let newest_source = newest(&root);
    let fresh = matches!((built_at, newest_source), (Some(b), Some(s)) if b >= s)
        || (built_at.is_some() && newest_source.is_none());
    if fresh {
        return Ok(bin);
    }
    eprintln!(
        "medpool binary {} is {}: running `cargo build -p medpool`",
        bin.display(),
        if built_at.is_some() {
            "stale"
        } else {
            "missing"
        }
    );
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-p", "medpool"])
        .current_dir(&root)
        .output()
        .map_err(|e| (bin.clone(), format!("cannot run cargo: {e}")))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err((
            bin,
            format!("cargo build -p medpool failed:\n{}", tail.join("\n")),
        ));
    }
    Ok(bin)
}

/// The newest modification time among the sources the binary is built from.
fn newest(root: &Path) -> Option<SystemTime> {
    let roots = [
        "Cargo.lock",
        "Cargo.toml",
        "node/sip",
        "node/b2bua",
        "node/medpool",
        "cluster",
        "proto",
    ];
    let mut newest = None;
    for r in roots {
        walk(&root.join(r), &mut newest);
    }
    newest
}

fn walk(path: &Path, newest: &mut Option<SystemTime>) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(name, "tests" | "benches" | "target" | "fuzz") {
            return;
        }
        let Ok(entries) = std::fs::read_dir(path) else {
            return;
        };
        for e in entries.flatten() {
            walk(&e.path(), newest);
        }
        return;
    }
    let relevant = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e, "rs" | "proto" | "toml" | "lock"));
    if relevant && let Ok(m) = meta.modified() {
        *newest = Some(newest.map_or(m, |n: SystemTime| n.max(m)));
    }
}
