//! # infalign-eval
//!
//! Honest evaluation: win rates against the base model, standard or under an inference-time
//! procedure applied to both sides, with bootstrap intervals ([`win_rate`],
//! [`inference_win_rate`]); paired comparisons of methods on the same prompts and base samples,
//! at matched KL along policy paths, and the fraction of the analytic optimum's gain reached
//! ([`paired`]); KL estimators and bounds ([`kl`]); and the calibrated-space analytic tool of
//! InfAlign ([`analytic`], docs/ALGORITHMS.md B.5), which predicts KL and win rates of any
//! transform without a model; curves of win rate against KL ([`curve`]), plots ([`plot`], SVG
//! and PNG) and run reports ([`report`], Markdown and self-contained HTML).
//!
//! ```
//! use infalign_eval::analytic::{Procedure, evaluate};
//! use infalign_rewards::Transform;
//!
//! // The identity transform at λ = 3: standard win rate 0.7191, KL 0.3069
//! // (docs/ALGORITHMS.md B.5).
//! let r = evaluate(&Transform::from_name("identity", None).unwrap(), 3.0, Procedure::Standard);
//! assert!((r.win_rate - 0.7191).abs() < 1e-3 && (r.kl - 0.3069).abs() < 1e-3);
//! ```

pub mod analytic;
pub mod curve;
mod error;
pub mod kl;
pub mod paired;
pub mod plot;
pub mod report;
mod win_rate;

pub use error::EvalError;
pub use paired::{
    Difference, Measure, Outcomes, Path, PathPoint, common_kl_range, gain_fraction,
    paired_difference, paired_difference_at_kl, paired_mean_reward_difference,
    paired_win_rate_difference, replicated_difference,
};
pub use win_rate::{Interval, Ties, inference_win_rate, per_prompt_win_rates, win_rate};
