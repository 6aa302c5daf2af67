//! `cargo xtask demo`: the main job end to end on the shipped base model, sized for a 2-core
//! CPU: the `demo` preset (`xtask/presets/demo.toml`, run by [`crate::exp`]) from a fresh run
//! directory, then the summary table of `runs/demo/report.md` printed with the wall time.
//!
//! The preset calibrates a sentiment reward against base rollouts; aligns with CTRL
//! (calibrated reward, exp transform, aimed at best-of-4; β = 1, since exp(4u) spans 1 to 55)
//! and with standard RLHF (raw reward in (-1, 1); β = 0.05); trains a CD-Q prefix scorer;
//! decodes with tokenwise and blockwise CD and best-of-N; evaluates every method against the
//! base on held-out prompts (standard and best-of-4 win rates, KL); and writes
//! `runs/demo/report.md` and `report.html` with plots.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

pub fn run(root: &Path, rest: &[String]) -> Result<()> {
    let start = Instant::now();
    let mut args = vec!["demo".to_string()];
    if !rest.iter().any(|a| a == "--keep") {
        args.push("--fresh".into());
    }
    args.extend(rest.iter().filter(|a| *a != "--keep").cloned());
    let run = crate::exp::run(root, &args)?;
    let report = run.join("report.md");
    let md = std::fs::read_to_string(&report).with_context(|| report.display().to_string())?;
    // The results table: from its header to the first blank line after it.
    let table: Vec<&str> = md
        .lines()
        .skip_while(|l| !l.starts_with("| method"))
        .take_while(|l| l.starts_with('|'))
        .collect();
    println!("{}\n", table.join("\n"));
    println!(
        "Wall time {:.0} s. Report: {} and {}",
        start.elapsed().as_secs_f64(),
        report.display(),
        run.join("report.html").display()
    );
    Ok(())
}
