//! `infalign analytic`: the calibrated-space analytic tool (docs/ALGORITHMS.md B.5). Prints one
//! JSON object with `lambda`, `kl`, `win_rate` (under the procedure) and `standard_win_rate`.

use anyhow::{Result, bail};
use infalign_eval::analytic::{
    evaluate, lambda_for_kl, optimal_transform, optimal_transform_at_kl,
};
use infalign_rewards::Transform;

use super::common::{TransformArgs, TransformName};

/// Flags of `infalign analytic`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The transform (default: identity); `optimal` is the converged fixed point at `--lambda`
    /// or at the λ that gives `--kl`.
    #[command(flatten)]
    pub transform: TransformArgs,
    /// λ = 1/β.
    #[arg(long, conflicts_with = "kl", value_parser = super::common::finite_non_negative)]
    pub lambda: Option<f64>,
    /// Solve λ for this KL instead.
    #[arg(long, value_parser = super::common::finite_non_negative)]
    pub kl: Option<f64>,
}

pub fn run(a: Args) -> Result<()> {
    let procedure = a.transform.procedure();
    let (phi, lambda) = if a.transform.transform == Some(TransformName::Optimal) {
        // The optimal transform depends on λ: at a KL, λ is solved with it.
        match (a.lambda, a.kl) {
            (Some(l), None) => (
                Transform::Tabulated(optimal_transform(procedure, l, 201)?),
                l,
            ),
            (None, Some(kl)) => {
                let (l, phi) = optimal_transform_at_kl(procedure, kl, 201)?;
                (Transform::Tabulated(phi), l)
            }
            _ => bail!("--transform optimal needs --lambda L or --kl K"),
        }
    } else {
        let phi = match a.transform.parametric()? {
            Some(phi) => phi,
            None => Transform::from_name("identity", None)?,
        };
        let lambda = match (a.lambda, a.kl) {
            (Some(l), None) if l >= 0.0 => l,
            (Some(l), None) => bail!("--lambda {l} must be non-negative"),
            (None, Some(kl)) => lambda_for_kl(&phi, kl)?,
            _ => bail!("give --lambda L or --kl K"),
        };
        (phi, lambda)
    };
    let p = evaluate(&phi, lambda, procedure);
    let out = serde_json::json!({
        "procedure": a.transform.procedure.name(), "n": a.transform.n,
        "transform": a.transform.transform.unwrap_or(TransformName::Identity).name(),
        "t": a.transform.t,
        "lambda": p.lambda, "kl": p.kl, "win_rate": p.win_rate,
        "standard_win_rate": p.standard_win_rate,
    });
    println!("{out}");
    Ok(())
}
