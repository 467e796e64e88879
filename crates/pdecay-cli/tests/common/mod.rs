//! Helpers shared by the end-to-end tests: run the real binary, make scratch folders.
// Each test file uses a subset of these.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `pdecay` binary with `args`, without `$PDECAY_DATA` and without backtraces.
pub fn pdecay(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pdecay"))
        .args(args)
        .env_remove("PDECAY_DATA")
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the pdecay binary runs")
}

/// Runs `args`, which must succeed; returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = pdecay(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `args`, which must fail with a message containing every one of `needles`.
pub fn fails(args: &[&str], needles: &[&str]) {
    let out = pdecay(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} should fail");
    for needle in needles {
        assert!(
            err.contains(needle),
            "{args:?}: expected {needle:?} in {err}"
        );
    }
}

/// An empty scratch folder unique to this test process.
pub fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pdecay-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A path as a command-line argument.
pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A JSON file's contents.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}
