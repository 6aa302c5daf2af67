//! The settings of policy optimisation (`align`): the algorithm, PPO's own hyperparameters,
//! where the KL penalty goes, β fixed or adaptive, steps, batch, checkpoints and snapshots.
//! Plain serialisable data with defaults; `align --set key=value` and `--config` write it, and
//! each checkpoint records it (docs/ALGORITHMS.md B.4).
//!
//! Invariant: unknown keys are refused (`deny_unknown_fields`), so a misspelt `--set` never
//! trains with a default silently.

use serde::{Deserialize, Serialize};

/// Where the KL penalty goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum KlMode {
    /// In the reward, per sequence, with k1 = log π − log π_ref (TRL's default).
    #[default]
    RewardK1,
    /// In the loss, per token, with k3 = e^{−r} − 1 + r (GRPO-style). Its expected gradient is
    /// that of the forward KL(π_ref ‖ π), so the optimum is `β π_ref / (μ − R)`, not
    /// `π_ref e^{R/β} / Z` (both checked on a bandit in `tests/rl/bandit.rs`).
    LossK3,
}

/// The policy-gradient algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algo {
    /// REINFORCE leave-one-out over k samples per prompt.
    #[default]
    Rloo,
    /// PPO with a learned value head, GAE and clipped ratios.
    Ppo,
    /// Online DPO: the best and the worst of k samples per prompt as a preference pair, the
    /// DPO loss against the frozen reference with β as its KL weight (`crate::dpo`).
    Dpo,
    /// Online IPO: the same pairs, the IPO loss with β as its τ (`crate::ipo`).
    Ipo,
}

/// PPO's own hyperparameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PpoConfig {
    /// Optimisation epochs over each batch of rollouts.
    pub epochs: usize,
    /// Ratio clip ε.
    pub clip: f64,
    /// Value clip around the old values.
    pub value_clip: f64,
    /// GAE λ.
    pub gae_lambda: f64,
    /// Discount γ.
    pub gamma: f64,
    /// Learning rate of the value head's network.
    pub value_lr: f64,
}

impl Default for PpoConfig {
    fn default() -> Self {
        Self {
            epochs: 2,
            clip: 0.2,
            value_clip: 0.2,
            gae_lambda: 0.95,
            gamma: 1.0,
            value_lr: 1e-4,
        }
    }
}

/// Hyperparameters of policy optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PolicyTrainConfig {
    /// RLOO or PPO.
    pub algo: Algo,
    /// PPO's settings (ignored by RLOO).
    pub ppo: PpoConfig,
    /// Optimizer steps.
    pub steps: u64,
    /// Prompts per step.
    pub prompts_per_step: usize,
    /// Samples per prompt (RLOO's k).
    pub k: usize,
    /// New tokens per sample at most.
    pub max_new_tokens: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// KL weight β (initial value when adaptive).
    pub beta: f64,
    /// Adaptive β: target KL per sequence (0: fixed β).
    pub target_kl: f64,
    /// Adaptive β: gain K_β of the proportional controller, `β ← β·(1 + K_β·e)` with the
    /// relative KL error `e` clipped to ±0.2 (Ziegler et al. 2019 use 0.1).
    pub kl_gain: f64,
    /// Where the KL goes.
    pub kl_mode: KlMode,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// Seed of sampling and prompt order.
    pub seed: u64,
    /// Checkpoint every N steps (0: only at the end); needs the run's files.
    #[serde(alias = "checkpoint_every")]
    pub save_every: u64,
    /// Keep a model directory `snapshots/step-N` of the run directory every N steps (0: none), to evaluate
    /// the policy along its KL path.
    pub snapshot_every: u64,
    /// Stop after this step as if the process were killed (tests of resumption); 0 = never.
    pub halt_after: u64,
}

impl Default for PolicyTrainConfig {
    fn default() -> Self {
        Self {
            algo: Algo::Rloo,
            ppo: PpoConfig::default(),
            steps: 100,
            prompts_per_step: 8,
            k: 4,
            max_new_tokens: 32,
            lr: 1e-5,
            beta: 0.05,
            target_kl: 0.0,
            kl_gain: 0.1,
            kl_mode: KlMode::RewardK1,
            grad_clip: 1.0,
            seed: 0,
            save_every: 0,
            snapshot_every: 0,
            halt_after: 0,
        }
    }
}

/// Where policy snapshots go inside the run directory (`snapshot_every`).
pub const SNAPSHOT_DIR: &str = "snapshots";

impl PolicyTrainConfig {
    /// Whether a run with this config stops at `halt_after` before its last step.
    pub fn halts_early(&self) -> bool {
        self.halt_after > 0 && self.halt_after < self.steps
    }
}
