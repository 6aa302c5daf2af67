//! # infalign-rl
//!
//! Training against rewards. Prefix scorers for controlled decoding (docs/ALGORITHMS.md A.3):
//! [`ScorerMethod::Fudge`] (every prefix of a base rollout regresses onto the final reward,
//! eq. 4) and [`ScorerMethod::Q`] (a Bellman target under stop-gradient, eq. 5), both in
//! [`train_scorer`]. KL-regularised policy optimisation with calibrated, transformed rewards
//! (InfAlign-CTRL, docs/ALGORITHMS.md B.4): [`train_policy`] with the RLOO objective ([`rloo`]).
//!
//! ```no_run
//! # // Needs a base model and rollouts; see crates/rl/tests for a runnable example.
//! use infalign_rl::{ScorerMethod, ScorerTrainConfig};
//! let cfg = ScorerTrainConfig { method: ScorerMethod::Q, steps: 200, ..Default::default() };
//! assert_eq!(cfg.target_sync_every, 0); // the paper's default: no target network
//! ```

mod cd_fudge;
mod cd_q;
pub mod dpo;
mod error;
pub mod ipo;
mod policy_checkpoint;
mod policy_config;
mod policy_objective;
mod policy_train;
mod ppo;
pub mod preference_pairs;
pub mod rloo;
mod rollout;
mod scorer_batch;
mod scorer_objective;
mod scorer_train;
mod token_table;

pub use error::RlError;
pub use policy_checkpoint::PolicyTrainState;
pub use policy_config::{Algo, KlMode, PolicyTrainConfig, PpoConfig, SNAPSHOT_DIR};
pub use policy_objective::StepMetrics;
pub use policy_train::{train_policy, train_policy_on_pairs};
pub use ppo::{VALUE_DIR, VALUE_OPTIMIZER_FILE};
pub use preference_pairs::OfflinePair;
pub use rollout::RewardPipeline;
pub use scorer_train::{
    ClassifierCheck, ScorerMethod, ScorerRollout, ScorerTrainConfig, ScorerTrainState, TARGET_DIR,
    classifier_check, train_scorer,
};
