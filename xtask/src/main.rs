//! `cargo xtask`: the project's automation, in Rust (rust-analyzer's xtask pattern).
//!
//! - `cargo xtask test-backends`: the backend-swapping tests (ndarray; wgpu where Mesa's
//!   software Vulkan driver or a GPU is present; cuda with `--cuda`).
//! - `cargo xtask bench`: decoding and training throughput, written to `target/bench/`.
//! - `cargo xtask ci`: what `.ci/run` runs.

use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]).to_vec();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("test-backends") => test_backends(&rest),
        Some("bench") => bench(&rest),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 ci              format check, clippy, tests, docs (what .ci/run runs)\n  \
                 test-backends   backend-swapping tests: ndarray, and wgpu [--wgpu], cuda [--cuda]\n  \
                 bench           decoding and training throughput into target/bench/"
            );
            bail!("no command given")
        }
    }
}

fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .status()
        .context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

fn ci() -> Result<()> {
    cargo(&["fmt", "--all", "--", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    cargo(&["test", "--workspace"])?;
    Ok(())
}

fn test_backends(rest: &[String]) -> Result<()> {
    let mut features = vec!["ndarray"];
    if rest.iter().any(|a| a == "--wgpu") {
        features.push("wgpu");
    }
    if rest.iter().any(|a| a == "--cuda") {
        features.push("cuda");
    }
    let features = features.join(",");
    cargo(&[
        "test",
        "-p",
        "infalign",
        "--features",
        &features,
        "--test",
        "backends",
        "--",
        "--nocapture",
    ])
}

fn bench(rest: &[String]) -> Result<()> {
    let mut args = vec!["run", "--release", "-p", "infalign", "--", "bench"];
    args.extend(rest.iter().map(String::as_str));
    cargo(&args)
}
