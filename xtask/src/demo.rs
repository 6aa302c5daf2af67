//! `cargo xtask demo`: the main job end to end on the shipped base model, sized for a 2-core
//! CPU: the `demo` preset (`xtask/presets/demo.toml`, run by [`crate::exp`]) from a fresh run
//! directory, then the tables of `runs/demo/report.md` (results, paired comparisons, prefix
//! scorers) printed with the wall time.
//!
//! The preset has two parts. InfAlign, on the sentiment reward: calibrate against base
//! rollouts; align with CTRL (calibrated reward, exp transform, aimed at best-of-4) at β = 1
//! and β = 5 (near standard RLHF's KL), with CTRL for worst-of-N (calibrated reward, −exp(−4u))
//! at β = 0.01 and 0.005, with standard RLHF (raw reward; β = 0.05) and with the calibrated
//! reward alone; evaluate each against the base on held-out prompts. Controlled
//! decoding, on CD's length reward: train a CD-Q prefix scorer and check it on held-out
//! prompts; decode with tokenwise and blockwise CD and best-of-N; train PPO and online DPO on
//! the same reward and evaluate them on the best-of-N sweep's base samples, so that tokenwise
//! CD is compared with them at equal KL on the same base. The report has a section per part
//! and `--compare`s their claims paired on the same prompts.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

/// Flags of `cargo xtask demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the finished steps of an earlier demo run instead of starting over.
    #[arg(long)]
    keep: bool,
    #[command(flatten)]
    flags: crate::exp::RunFlags,
}

pub fn run(root: &Path, a: &Args) -> Result<()> {
    let start = Instant::now();
    let run = crate::exp::run(
        root,
        &crate::exp::Options {
            preset: "demo".into(),
            fresh: !a.keep,
            run: None,
            flags: a.flags.clone(),
        },
    )?;
    let report = run.join("report.md");
    let md = std::fs::read_to_string(&report).with_context(|| report.display().to_string())?;
    // Every section's results table and the paired comparisons, each from its header to the
    // first line that is not a table row, under the heading it follows.
    let mut heading = "";
    let mut lines = md.lines().peekable();
    while let Some(line) = lines.next() {
        if line.starts_with("## ") {
            heading = line;
        }
        if line.starts_with("| method")
            || line.starts_with("| A − B")
            || line.starts_with("| scorer")
        {
            println!("{heading}\n\n{line}");
            while let Some(row) = lines.next_if(|l| l.starts_with('|')) {
                println!("{row}");
            }
            println!();
        }
    }
    println!(
        "Wall time {:.0} s. Report: {} and {}",
        start.elapsed().as_secs_f64(),
        report.display(),
        run.join("report.html").display()
    );
    Ok(())
}
