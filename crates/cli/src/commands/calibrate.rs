//! `infalign calibrate`: adds the calibrated reward Ĉ (and optionally Φ(Ĉ)) to every sample,
//! against the reference rollouts of its prompt (InfAlign, docs/ALGORITHMS.md B.3).

use std::path::PathBuf;

use anyhow::Result;
use infalign_rewards::RewardTransform;

use super::common::TransformArgs;
use super::samples::{calibrator_of, read_samples, write_samples};

/// Flags of `infalign calibrate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Reference rollouts: K base samples per prompt with `reward` (from `infalign rollouts`).
    #[arg(long)]
    pub reference: PathBuf,
    /// Samples to calibrate (default: the reference rollouts themselves, leave-one-out).
    #[arg(long)]
    pub samples: Option<PathBuf>,
    /// Map Ĉ to (K Ĉ + ½)/(K + 1) so that log Ĉ is finite (always on with `--transform log`).
    #[arg(long)]
    pub smoothing: bool,
    /// Also write `transformed` = Φ(Ĉ).
    #[command(flatten)]
    pub transform: TransformArgs,
    /// λ = 1/β at which `--transform optimal` is solved.
    #[arg(long, value_parser = super::common::finite_non_negative)]
    pub lambda: Option<f64>,
    /// Output JSONL (the samples with `calibrated` and `transformed` added).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    if a.lambda.is_some() && a.transform.transform != Some(super::common::TransformName::Optimal) {
        anyhow::bail!("--lambda is the λ of --transform optimal: give that transform too");
    }
    let transform = a.transform.resolve(a.lambda)?;
    super::common::refuse_output_over_input(
        "--out",
        &a.out,
        &[
            ("--reference", Some(&a.reference)),
            ("--samples", a.samples.as_deref()),
        ],
    )?;
    let reference = read_samples(&a.reference, true)?;
    let cal = calibrator_of(&reference, transform.as_ref(), a.smoothing)?;
    let leave_one_out = a.samples.is_none();
    let mut rows = match &a.samples {
        Some(p) => read_samples(p, true)?,
        None => reference,
    };
    for r in &mut rows {
        let reward = r.reward().expect("checked on read");
        let c = if leave_one_out {
            cal.calibrate_leave_one_out(r.prompt(), reward)?
        } else {
            cal.calibrate(r.prompt(), reward)?
        };
        r.value["calibrated"] = c.into();
        if let Some(t) = &transform {
            r.value["transformed"] = t.apply(c).into();
        }
    }
    write_samples(&a.out, &rows)?;
    eprintln!(
        "wrote {} calibrated samples to {}",
        rows.len(),
        a.out.display()
    );
    Ok(())
}
