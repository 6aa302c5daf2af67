//! `cargo xtask bench --training [--infalign-bin PATH] [--baseline-bin PATH] [--device D]
//! [--baseline-device D] [--release]`: the training commands on the shipped model, timed as whole
//! processes, as a user runs them.
//!
//! The tasks are the demo's settings at a few steps: reference rollouts (24 prompts × 8), 10
//! `align` steps with RLOO on the calibrated exp reward and 10 with PPO on the raw reward (6
//! prompts × 4 samples, 32 new tokens), and 50 `train-scorer` steps of CD-Q (batch 16). With
//! `--baseline-bin`, another build runs the same tasks right after each task of this one, so the
//! table's ratios compare two builds on the same machine in the same run (for example the
//! commit before a change, built into another target directory). `--device` runs every task on
//! that device (default: the CPU); `--baseline-device` runs the baseline's on another (default:
//! the same), so one binary against itself compares two devices, e.g. CUDA against the CPU.
//!
//! Invariant: every number comes from this run; nothing is compared with a figure measured
//! elsewhere.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde_json::json;

/// The timed tasks: a name and the infalign arguments (`{run}` is the build's scratch
/// directory, `{prompts}` the prompt file).
fn tasks() -> Vec<(&'static str, Vec<&'static str>)> {
    let align = |rest: &[&'static str]| -> Vec<&'static str> {
        let mut args = vec![
            "align",
            "--prompts",
            "{prompts}",
            "--reward",
            "sentiment",
            "--set",
            "steps=10",
            "--set",
            "lr=1e-4",
            "--set",
            "max_new_tokens=32",
            "--set",
            "k=4",
            "--set",
            "prompts_per_step=6",
        ];
        args.extend(rest);
        args
    };
    vec![
        (
            "rollouts: 24 prompts x 8, 32 new tokens",
            vec![
                "rollouts",
                "--prompts",
                "{prompts}",
                "--k",
                "8",
                "--reward",
                "sentiment",
                "--max-new-tokens",
                "32",
                "--out",
                "{run}/reference.jsonl",
            ],
        ),
        (
            "align RLOO, calibrated exp(4u): 10 steps of 6 prompts x 4",
            align(&[
                "--beta",
                "1.0",
                "--reference",
                "{run}/reference.jsonl",
                "--transform",
                "exp",
                "--t",
                "4",
                "--out",
                "{run}/rloo",
            ]),
        ),
        (
            "align PPO, raw reward: 10 steps of 6 prompts x 4",
            align(&[
                "--algo",
                "ppo",
                "--beta",
                "0.05",
                "--raw",
                "--out",
                "{run}/ppo",
            ]),
        ),
        (
            "train-scorer CD-Q: 50 steps of 16 rollouts",
            vec![
                "train-scorer",
                "--rollouts",
                "{run}/reference.jsonl",
                "--method",
                "q",
                "--calibrate",
                "--set",
                "steps=50",
                "--set",
                "batch_size=16",
                "--set",
                "lr=3e-4",
                "--out",
                "{run}/cdq",
            ],
        ),
    ]
}

/// Runs one task with `bin` in a fresh `run` directory; returns its wall time in seconds.
fn time_task(
    bin: &Path,
    device: Option<&str>,
    args: &[&str],
    prompts: &Path,
    run: &Path,
) -> Result<f64> {
    let mut args: Vec<String> = args
        .iter()
        .map(|a| {
            a.replace("{run}", &run.display().to_string())
                .replace("{prompts}", &prompts.display().to_string())
        })
        .collect();
    if let Some(d) = device {
        args.extend(["--device".to_string(), d.to_string()]);
    }
    let shown = format!("{} {}", bin.display(), args.join(" "));
    eprintln!("$ {shown}");
    let start = Instant::now();
    let out = Command::new(bin)
        .args(&args)
        .output()
        .with_context(|| format!("running `{shown}`"))?;
    let seconds = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(seconds)
}

/// One build measured by [`run`]: its binary and the device its tasks run on (`None`: the CPU
/// default).
pub struct Build<'a> {
    pub bin: &'a Path,
    pub device: Option<&'a str>,
}

impl Build<'_> {
    fn shown(&self) -> String {
        format!(
            "{} on {}",
            self.bin.display(),
            self.device.unwrap_or("the default device (cpu)")
        )
    }
}

/// `cargo xtask bench --training ...`.
pub fn run(root: &Path, this: Build, baseline: Option<Build>) -> Result<()> {
    let dir = root.join("target/bench/training");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let prompts = dir.join("prompts.jsonl");
    let all = std::fs::read_to_string(root.join("assets/prompts.jsonl"))
        .context("reading assets/prompts.jsonl")?;
    let first: Vec<&str> = all
        .lines()
        .filter(|l| !l.trim().is_empty())
        .take(24)
        .collect();
    std::fs::write(&prompts, first.join("\n") + "\n")
        .with_context(|| format!("writing {}", prompts.display()))?;
    let builds: Vec<(&str, &Build)> = std::iter::once(("this build", &this))
        .chain(baseline.as_ref().map(|b| ("baseline", b)))
        .collect();
    let mut rows = Vec::new();
    for (task, args) in tasks() {
        let mut times = Vec::new();
        for (name, b) in &builds {
            let run: PathBuf = dir.join(name.replace(' ', "-"));
            std::fs::create_dir_all(&run)?;
            times.push(time_task(b.bin, b.device, &args, &prompts, &run)?);
        }
        rows.push((task, times));
    }
    let header = if baseline.is_some() {
        "| task | this build (s) | baseline (s) | speed-up |\n|---|---:|---:|---:|"
    } else {
        "| task | this build (s) |\n|---|---:|"
    };
    println!("{header}");
    for (task, t) in &rows {
        match t.as_slice() {
            [a, b] => println!("| {task} | {a:.2} | {b:.2} | {:.2} |", b / a),
            [a] => println!("| {task} | {a:.2} |"),
            _ => {}
        }
    }
    println!(
        "\nWhole processes (model load included), on the shipped model; this build: {}{}",
        this.shown(),
        baseline
            .as_ref()
            .map_or(String::new(), |b| format!("; baseline: {}", b.shown()))
    );
    let json = json!({
        "binary": this.bin.display().to_string(),
        "device": this.device,
        "baseline": baseline.as_ref().map(|b| b.bin.display().to_string()),
        "baseline_device": baseline.as_ref().map(|b| b.device),
        "rows": rows.iter().map(|(task, t)| json!({"task": task, "seconds": t})).collect::<Vec<_>>(),
    });
    let path = root.join("target/bench/training.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {}", path.display());
    Ok(())
}
