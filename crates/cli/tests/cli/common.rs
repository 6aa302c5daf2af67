//! Running the binary from the integration tests.

#![allow(dead_code)]

use std::process::{Command, Output};

/// A command that runs `infalign`: directly, or through the runner that the environment
/// variable `INFALIGN_TEST_RUNNER` names (a program and its arguments, split at spaces), as
/// `cargo xtask test-cpu` does to run the binary on an emulated CPU.
pub fn command() -> Command {
    let bin = env!("CARGO_BIN_EXE_infalign");
    let runner = std::env::var("INFALIGN_TEST_RUNNER").unwrap_or_default();
    let mut parts = runner.split_whitespace();
    match parts.next() {
        Some(program) => {
            let mut c = Command::new(program);
            c.args(parts).arg(bin);
            c
        }
        None => Command::new(bin),
    }
}

/// Runs `infalign` with `args` (RUST_LOG cleared).
pub fn infalign(args: &[&str]) -> Output {
    command()
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
