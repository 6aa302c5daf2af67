//! `cargo xtask`: the project's automation, in Rust (rust-analyzer's xtask pattern).
//!
//! - `cargo xtask test-backends`: the backend-swapping tests (ndarray; wgpu where Mesa's
//!   software Vulkan driver or a GPU is present; cuda with `--cuda`).
//! - `cargo xtask bench`: decoding and training throughput, written to `target/bench/`;
//!   `--against transformers` compares the same tasks with Hugging Face transformers.
//! - `cargo xtask bandwidth`: the memory read bandwidth that the bench's floor uses.
//! - `cargo xtask assets`: rebuilds the corpus, prompts, tokenizer and base model in `assets/`.
//! - `cargo xtask demo`: the main job on the shipped model (the `demo` preset).
//! - `cargo xtask exp <preset>`: an experiment preset (`xtask/presets/*.toml`).
//! - `cargo xtask ci`: what `.ci/run` runs.

mod assets;
mod bench;
mod demo;
mod exp;
mod training_bench;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest = args.get(1..).unwrap_or(&[]).to_vec();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("test-backends") => test_backends(&rest),
        Some("bench") => bench::run(&root(), &rest),
        Some("bandwidth") => bench::bandwidth_command(),
        Some("assets") => build_assets(&rest),
        Some("demo") => demo::run(&root(), &rest),
        Some("exp") => exp::run(&root(), &rest).map(|_| ()),
        Some("cuda-llvm") => cuda_llvm(),
        _ => {
            eprintln!(
                "usage: cargo xtask <command>\n\n\
                 commands:\n  \
                 ci              format check, clippy, tests, docs (what .ci/run runs)\n  \
                 test-backends   backend-swapping tests: ndarray, and wgpu [--wgpu], cuda [--cuda]\n  \
                 bench           decoding and training throughput into target/bench/\n                  \
                 [--against transformers]: the same tasks in transformers, as ratios\n  \
                 bandwidth       memory read bandwidth (the bench's batch-1 floor)\n  \
                 assets          corpus, prompts, tokenizer and base model in assets/ [--corpus-only]\n  \
                 demo            the main job on the shipped model: runs/demo/report.{{md,html}}\n  \
                 exp <preset>    an experiment preset of xtask/presets into runs/<preset>/\n                  \
                 [--scale cpu|gpu] [--set key=value] [--fresh] [--release]\n  \
                 cuda-llvm       point burn's CUDA build at Debian's LLVM 22 (no download)"
            );
            bail!("no command given")
        }
    }
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
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

/// `.ci/run`, the one definition of what CI checks (fmt, clippy, doc, tests, the ndarray
/// backend swap).
fn ci() -> Result<()> {
    let root = root();
    let status = std::process::Command::new("bash")
        .arg(root.join(".ci/run"))
        .current_dir(&root)
        .status()
        .context("running .ci/run")?;
    if !status.success() {
        bail!(".ci/run failed");
    }
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

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}

fn build_assets(rest: &[String]) -> Result<()> {
    let root = root();
    let counts = assets::corpus(&root)?;
    eprintln!("corpus: {counts}");
    if rest.iter().any(|a| a == "--corpus-only") {
        return Ok(());
    }
    let (model_dir, pretrain_toml) = assets::paths(&root);
    std::fs::create_dir_all(&model_dir)?;
    let tok = model_dir.join("tokenizer.json");
    let infalign = |args: &[&str]| -> Result<()> {
        let mut all = vec!["run", "-q", "-p", "infalign", "--"];
        all.extend(args);
        cargo(&all)
    };
    infalign(&[
        "tokenizer",
        "train",
        "--files",
        "assets/corpus/train.jsonl",
        "--vocab-size",
        "4096",
        "--out",
        tok.to_str().unwrap_or_default(),
    ])?;
    let mut pretrain = vec![
        "pretrain",
        "--config",
        pretrain_toml.to_str().unwrap_or_default(),
    ];
    let extra: Vec<String> = rest.iter().filter(|a| a.contains('=')).cloned().collect();
    for e in &extra {
        pretrain.push("--set");
        pretrain.push(e);
    }
    infalign(&pretrain)?;
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(
            root.join("runs/base-model/final").join(f),
            model_dir.join(f),
        )?;
    }
    std::fs::copy(
        root.join("runs/base-model/summary.json"),
        model_dir.join("summary.json"),
    )?;
    infalign(&[
        "generate",
        "--prompts",
        "assets/sample-prompts.jsonl",
        "--n",
        "2",
        "--max-new-tokens",
        "60",
        "--seed",
        "0",
        "--out",
        "assets/base-model/samples.jsonl",
    ])?;
    Ok(())
}

/// burn 0.22.1's CUDA backend builds cubecl-llvm, whose build script downloads an LLVM 23.1
/// bundle into `~/.local/share/tracel/tracel-llvm-23.1.0-4` unless that directory already holds
/// an LLVM install marked by `.tracel-llvm-installed`. This fills it with links to Debian's
/// LLVM 22 (`apt-get install llvm-22-dev libpolly-22-dev libz3-dev libzstd-dev`), so
/// `--features cuda` builds offline. The bundler turns llvm-config's `/usr/lib/.../libz3.so`
/// into `-llibz3`, so a `liblibz3.so` link is added beside LLVM's libraries.
fn cuda_llvm() -> Result<()> {
    let llvm = Path::new("/usr/lib/llvm-22");
    for needed in ["bin/llvm-config", "lib/libPolly.a"] {
        if !llvm.join(needed).exists() {
            bail!(
                "{} is missing: apt-get install llvm-22-dev libpolly-22-dev",
                llvm.join(needed).display()
            );
        }
    }
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let dir = Path::new(&home).join(".local/share/tracel/tracel-llvm-23.1.0-4");
    std::fs::create_dir_all(&dir)?;
    for sub in ["bin", "include", "lib", "share"] {
        let link = dir.join(sub);
        if link.symlink_metadata().is_ok() {
            std::fs::remove_file(&link).or_else(|_| std::fs::remove_dir_all(&link))?;
        }
        std::os::unix::fs::symlink(llvm.join(sub), &link)?;
    }
    std::fs::write(dir.join(".tracel-llvm-installed"), b"")?;
    let z3 = llvm.join("lib/liblibz3.so");
    if z3.symlink_metadata().is_err() {
        std::os::unix::fs::symlink("/usr/lib/x86_64-linux-gnu/libz3.so", &z3)
            .with_context(|| format!("linking {}", z3.display()))?;
    }
    eprintln!(
        "{} now points at {}; build with --features cuda",
        dir.display(),
        llvm.display()
    );
    Ok(())
}
