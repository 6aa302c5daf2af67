//! Running the binary from the integration tests.

#![allow(dead_code)]

use std::process::{Command, Output};

/// Runs `infalign` with `args` (RUST_LOG cleared).
pub fn infalign(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_infalign"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("the binary runs")
}

/// Runs `infalign`, asserts success, returns stdout.
pub fn ok(args: &[&str]) -> String {
    let out = infalign(args);
    assert!(
        out.status.success(),
        "infalign {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `infalign`, asserts a clean failure (no panic), returns stderr.
pub fn err(args: &[&str]) -> String {
    let out = infalign(args);
    assert!(!out.status.success(), "infalign {args:?} should fail");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        !stderr.contains("panicked"),
        "a panic, not an error: {stderr}"
    );
    stderr
}
