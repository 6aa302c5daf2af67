//! `infalign analytic`: the calibrated-space analytic tool (docs/ALGORITHMS.md B.5). Prints one
//! JSON object with `lambda`, `kl`, `win_rate` (under the procedure) and `standard_win_rate`.

use anyhow::{Result, bail};
use infalign_eval::analytic::{
    Procedure, evaluate, lambda_for_kl, optimal_transform, optimal_transform_at_kl,
};
use infalign_rewards::Transform;

/// Flags of `infalign analytic`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// standard, bon (best-of-N) or won (worst-of-N).
    #[arg(long, default_value = "standard")]
    pub procedure: String,
    /// N of best-of-N / worst-of-N.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub n: u32,
    /// identity, log, exp, negexp, power, or optimal (fixed point; needs --lambda).
    #[arg(long, default_value = "identity")]
    pub transform: String,
    /// Parameter of the transform (t of exp/negexp, k of power, eps of log).
    #[arg(long)]
    pub t: Option<f64>,
    /// λ = 1/β.
    #[arg(long, conflicts_with = "kl", value_parser = super::common::finite_non_negative)]
    pub lambda: Option<f64>,
    /// Solve λ for this KL instead.
    #[arg(long, value_parser = super::common::finite_non_negative)]
    pub kl: Option<f64>,
}

pub fn run(a: Args) -> Result<()> {
    let procedure = match a.procedure.as_str() {
        "standard" => Procedure::Standard,
        "bon" => Procedure::BestOfN { n: a.n.max(1) },
        "won" => Procedure::WorstOfN { n: a.n.max(1) },
        other => bail!("--procedure `{other}`: expected standard, bon or won"),
    };
    let (phi, lambda) = if a.transform == "optimal" {
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
        let phi = Transform::from_name(&a.transform, a.t)?;
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
        "procedure": a.procedure, "n": a.n, "transform": a.transform, "t": a.t,
        "lambda": p.lambda, "kl": p.kl, "win_rate": p.win_rate,
        "standard_win_rate": p.standard_win_rate,
    });
    println!("{out}");
    Ok(())
}
