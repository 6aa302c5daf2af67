//! # infalign-rewards
//!
//! Rewards and what InfAlign does to them before RL: the [`Reward`] trait and built-in rewards
//! (CD's length reward, lexicon sentiment, weighted sums), learned reward models trained with
//! the Bradley-Terry loss ([`RewardModel`], [`bradley_terry`]) on real or synthetic
//! ([`preferences`]) preference pairs or trained to predict calibrated rewards
//! ([`calibrated_reward_model`]), calibration against base-policy
//! samples ([`Calibrator`], docs/ALGORITHMS.md B.3), and the transforms Φ that adapt a calibrated
//! reward to an inference-time procedure ([`Transform`], docs/ALGORITHMS.md B.4).
//!
//! ```
//! use infalign_rewards::{Calibrator, RewardTransform, Transform};
//!
//! // Five base-policy rewards for one prompt.
//! let mut cal = Calibrator::default();
//! cal.insert("x", vec![0.1, 0.4, 0.2, 0.9, 0.5]).unwrap();
//! // 0.45 beats 3 of 5 reference rewards: its calibrated reward is 0.6.
//! assert_eq!(cal.calibrate("x", 0.45).unwrap(), 0.6);
//! // For best-of-N, InfAlign transforms the calibrated reward with exp(t u).
//! let phi = Transform::exp(2.0);
//! assert!((phi.apply(0.6) - (1.2f64).exp()).abs() < 1e-12);
//! ```

pub mod bradley_terry;
pub mod calibrated_reward_model;
mod calibration;
mod error;
pub mod preferences;
mod reward;
mod reward_model;
pub mod rewards;
pub mod rm_train;
mod spec;
pub mod transforms;

pub use calibration::{Calibrator, calibrated_from_cdf};
pub use error::RewardError;
pub use reward::{Reward, RewardInput};
pub use reward_model::{RewardModel, RewardModelOutput};
pub use spec::{reward_from_spec, reward_from_spec_on};
pub use transforms::{RewardTransform, Transform};
