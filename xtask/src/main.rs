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
//! - `cargo xtask ci`: `.ci/run`, the one definition of what CI checks.
//! - `cargo xtask test-cpu`: the workspace's tests on an emulated CPU (QEMU user mode), to
//!   check that no tolerance rests on one CPU's rounding.
//!
//! Flags are parsed by clap (`cargo xtask <task> --help`).

mod assets;
mod bench;
mod demo;
mod exp;
mod training_bench;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

/// Writes `text` to `path` whole or not at all: into a sibling temporary file, then renamed over
/// `path`.
pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = std::fs::write(&tmp, text)
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| {
            std::fs::rename(&tmp, path).with_context(|| format!("renaming {}", tmp.display()))
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The project's automation.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", about)]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// What CI checks: `.ci/run` (format, clippy, doc, tests, the ndarray backend swap).
    Ci,
    /// The backend-swapping tests: ndarray, and wgpu or cuda on request.
    TestBackends {
        /// Also wgpu (Mesa's software Vulkan driver or a GPU).
        #[arg(long)]
        wgpu: bool,
        /// Also CUDA.
        #[arg(long)]
        cuda: bool,
    },
    /// Decoding and training throughput into target/bench/; `--against transformers` runs the
    /// same tasks in transformers and prints the ratios.
    Bench(bench::Options),
    /// Memory read bandwidth (the bench's batch-1 floor).
    Bandwidth,
    /// Corpus, prompts, tokenizer and base model in assets/.
    Assets {
        /// Only the corpus and prompts.
        #[arg(long)]
        corpus_only: bool,
        /// Pretraining settings `KEY=VALUE` passed on as `--set`.
        sets: Vec<String>,
    },
    /// The main job on the shipped model: runs/demo/report.{md,html}.
    Demo(demo::Args),
    /// An experiment preset of `xtask/presets` into `runs/<preset>/` (or `--run DIR`).
    Exp(exp::Options),
    /// Point burn's CUDA build at Debian's LLVM 22 (no download).
    CudaLlvm,
    /// `cargo test --workspace` on an emulated x86-64 CPU (QEMU user mode, Debian's
    /// `qemu-user`): test binaries and the `infalign` processes they start run on it, so burn and
    /// the kernels take that CPU's SIMD path (doc tests run natively).
    TestCpu {
        /// QEMU's CPU model, with feature flags (`qemu-x86_64 -cpu help`): the default is an
        /// Intel Haswell (AVX2 and FMA, no AVX-512) without the features QEMU cannot emulate;
        /// `Nehalem` has SSE4.2 and no AVX.
        #[arg(long, default_value = HASWELL)]
        cpu: String,
        /// Passed on to `cargo test --workspace`.
        #[arg(last = true)]
        cargo_args: Vec<String>,
    },
}

/// QEMU's Haswell without the features its emulator lacks (each would print a warning).
const HASWELL: &str = "Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-invpcid,-rtm";

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Ci => ci(),
        Task::TestBackends { wgpu, cuda } => test_backends(wgpu, cuda),
        Task::Bench(o) => bench::run(&root(), &o.with_environment()),
        Task::Bandwidth => bench::bandwidth_command(),
        Task::Assets { corpus_only, sets } => build_assets(corpus_only, &sets),
        Task::Demo(a) => demo::run(&root(), &a),
        Task::Exp(o) => exp::run(&root(), &o).map(|_| ()),
        Task::CudaLlvm => cuda_llvm(),
        Task::TestCpu { cpu, cargo_args } => test_cpu(&cpu, &cargo_args),
    }
}

fn test_cpu(cpu: &str, cargo_args: &[String]) -> Result<()> {
    if !cfg!(target_arch = "x86_64") {
        bail!("test-cpu emulates x86-64 CPUs: run it on an x86-64 machine");
    }
    let qemu = "qemu-x86_64";
    let found = Command::new(qemu).arg("--version").output();
    if !found.is_ok_and(|o| o.status.success()) {
        bail!("`{qemu}` was not found: install QEMU's user-mode emulator (Debian: qemu-user)");
    }
    let runner = format!("{qemu} -cpu {cpu}");
    let mut args = vec!["test", "--workspace"];
    args.extend(cargo_args.iter().map(String::as_str));
    eprintln!("(test binaries and the infalign processes they start run under `{runner}`)");
    cargo_with(
        &args,
        &[
            ("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", &runner),
            ("INFALIGN_TEST_RUNNER", &runner),
        ],
    )
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    cargo_with(args, &[])
}

/// `cargo args` with environment variables `envs` set.
fn cargo_with(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .envs(envs.iter().copied())
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

fn test_backends(wgpu: bool, cuda: bool) -> Result<()> {
    let mut features = vec!["ndarray"];
    if wgpu {
        features.push("wgpu");
    }
    if cuda {
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

fn build_assets(corpus_only: bool, sets: &[String]) -> Result<()> {
    let root = root();
    let counts = assets::corpus(&root)?;
    eprintln!("corpus: {counts}");
    if corpus_only {
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
    for e in sets {
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent_and_test_cpu_passes_arguments_on() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "cargo xtask",
            "test-cpu",
            "--cpu",
            "Nehalem",
            "--",
            "--no-fail-fast",
            "--lib",
        ])
        .unwrap();
        match cli.command {
            Task::TestCpu { cpu, cargo_args } => {
                assert_eq!(cpu, "Nehalem");
                assert_eq!(cargo_args, ["--no-fail-fast", "--lib"]);
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
