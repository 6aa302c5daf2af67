//! The prefix-scorer training loop shared by CD-FUDGE and CD-Q: batches of scored rollouts,
//! AdamW with global gradient clipping, metrics, and an optional periodically synchronised
//! target network for CD-Q (**not the paper's**: the paper bootstraps from the network being
//! trained, under stop-gradient; `target_sync_every = 0` keeps that default).
//!
//! Rollouts are (prompt ids, completion ids, reward, terminal) with the reward computed once per
//! full sequence. Prefixes counted in the loss are those ending inside the completion.
//!
//! Invariants: batches are drawn from `seed.derive("scorer-data", step)`, so a run is
//! reproducible on the CPU. A checkpoint (`checkpoint/` of the run directory, every
//! `save_every` steps and at the end) holds the scorer, its AdamW state, CD-Q's target network
//! (when there is one) and the step: all that carries over between steps, so a run killed after
//! its last checkpoint and resumed ends with the weights of an uninterrupted run, and
//! `metrics.jsonl` keeps one row per logged step.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::{AdamWConfig, ModuleOptimizer};
use burn::tensor::Device;
use infalign_core::Seed;
use infalign_models::training::optim::{SHARDS, descend_sharded, shard_rows};
use infalign_models::training::run::{
    OPTIMIZER_FILE, StepReport, load_optimizer, read_state, save_optimizer, warn_on_config_change,
    write_checkpoint,
};
use infalign_models::weights::read_f32;
use infalign_models::{CausalLm, PrefixScorer, RunFiles, TokenBatch, Tokenizer};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::RlError;
use crate::cd_fudge::CdFudge;
use crate::cd_q::CdQ;
use crate::scorer_batch::ScorerBatch;
pub use crate::scorer_batch::ScorerRollout;
use crate::scorer_objective::ScorerObjective;

/// Which objective trains the scorer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScorerMethod {
    /// CD-FUDGE: every prefix regresses onto the final reward (on-policy rollouts).
    Fudge,
    /// CD-Q: Bellman target `Σ_z π_ref(z|prefix) V(prefix + z)` under stop-gradient.
    #[default]
    Q,
}

/// Hyperparameters of scorer training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScorerTrainConfig {
    /// The objective.
    pub method: ScorerMethod,
    /// Optimizer steps.
    pub steps: u64,
    /// Rollouts per step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f32,
    /// Global gradient-norm clip (0 disables).
    pub grad_clip: f64,
    /// CD-Q only: copy the scorer into a frozen target network every N steps (0: no target
    /// network, the paper's choice).
    pub target_sync_every: u64,
    /// Seed of the batch order.
    pub seed: u64,
    /// Write a metrics row every N steps.
    pub log_every: u64,
    /// Checkpoint every N steps (0: only at the end); needs a run directory.
    #[serde(alias = "checkpoint_every")]
    pub save_every: u64,
    /// Stop after this step as if the process were killed (tests of resumption); 0 = never.
    pub halt_after: u64,
    /// Where every value of a fresh scorer starts (its head's bias; the weights start at zero).
    pub value_prior: f64,
    /// Start every value at the mean reward of the training rollouts instead of `value_prior`
    /// (see `PrefixScorer::from_base_with_prior` for what each choice does).
    pub value_prior_from_data: bool,
    /// Start every value at the largest reward of the training rollouts instead: an optimistic
    /// start, which a continuation the rollouts never tried keeps until the data lowers it (for
    /// `ln(T/T_max)` it is 0, the default's value; for a calibrated reward about 1).
    pub value_prior_from_max: bool,
}

impl ScorerTrainConfig {
    /// The starting value of a fresh scorer trained on `data`; an error when both data-derived
    /// starts are asked for, or a data-derived start from no rollouts.
    pub fn prior(&self, data: &[ScorerRollout]) -> Result<f64, RlError> {
        // The field that asked for the start that cannot be had.
        let field = if self.value_prior_from_max {
            "value_prior_from_max"
        } else {
            "value_prior_from_data"
        };
        let invalid = |message: &str| RlError::InvalidParameter {
            field,
            message: message.into(),
        };
        match (self.value_prior_from_data, self.value_prior_from_max) {
            (true, true) => Err(invalid(
                "value_prior_from_data and value_prior_from_max both set: choose one start",
            )),
            (false, false) => Ok(self.value_prior),
            _ if data.is_empty() => Err(invalid("a start from the data needs training rollouts")),
            (true, false) => Ok(data.iter().map(|r| r.reward).sum::<f64>() / data.len() as f64),
            (false, true) => Ok(data
                .iter()
                .map(|r| r.reward)
                .fold(f64::NEG_INFINITY, f64::max)),
        }
    }
}

impl Default for ScorerTrainConfig {
    fn default() -> Self {
        Self {
            method: ScorerMethod::Q,
            steps: 500,
            batch_size: 16,
            lr: 1e-3,
            weight_decay: 0.0,
            grad_clip: 1.0,
            target_sync_every: 0,
            seed: 0,
            log_every: 10,
            save_every: 0,
            halt_after: 0,
            value_prior: 0.0,
            value_prior_from_data: false,
            value_prior_from_max: false,
        }
    }
}

impl ScorerTrainConfig {
    /// Whether a run with this config stops at `halt_after` before its last step.
    pub fn halts_early(&self) -> bool {
        self.halt_after > 0 && self.halt_after < self.steps
    }
}

/// What `checkpoint/state.json` of a scorer run records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScorerTrainState {
    /// Last completed step.
    pub step: u64,
    /// Whether the checkpoint holds CD-Q's target network (in `target/`).
    pub has_target: bool,
    /// The config of the run that wrote it.
    pub config: ScorerTrainConfig,
}

/// CD-Q's target network inside a scorer checkpoint (a scorer directory).
pub const TARGET_DIR: &str = "target";

fn save_scorer_checkpoint(
    dir: &Path,
    scorer: &PrefixScorer,
    optim: &ModuleOptimizer,
    target: Option<&PrefixScorer>,
    tokenizer: &Tokenizer,
    state: &ScorerTrainState,
) -> Result<(), RlError> {
    Ok(write_checkpoint(dir, state, |tmp| {
        scorer.save(tmp, tokenizer, "checkpoint")?;
        save_optimizer(&tmp.join(OPTIMIZER_FILE), optim)?;
        if let Some(t) = target {
            t.save(tmp.join(TARGET_DIR), tokenizer, "CD-Q target network")?;
        }
        Ok(())
    })?)
}

/// The scorer (autodiff device `ad`), its optimizer, the target network (plain `device`) and
/// the step of a checkpoint.
type Resumed = (PrefixScorer, ModuleOptimizer, Option<PrefixScorer>, u64);

fn load_scorer_checkpoint(
    dir: &Path,
    cfg: &ScorerTrainConfig,
    ad: &Device,
    device: &Device,
) -> Result<Resumed, RlError> {
    let state: ScorerTrainState = read_state(dir)?;
    warn_on_config_change(
        &state.config,
        cfg,
        &["steps", "halt_after", "save_every", "log_every"],
    );
    let (scorer, _, _) = PrefixScorer::load(dir, ad)?;
    let optim = load_optimizer(&dir.join(OPTIMIZER_FILE), optimizer(cfg))?;
    let target = if state.has_target {
        Some(PrefixScorer::load(dir.join(TARGET_DIR), device)?.0)
    } else {
        None
    };
    Ok((scorer, optim, target, state.step))
}

fn optimizer(cfg: &ScorerTrainConfig) -> ModuleOptimizer {
    AdamWConfig::new()
        .with_weight_decay(cfg.weight_decay)
        .init()
}

/// Trains `scorer` (on an autodiff device) against `base` (frozen, on a plain device) with the
/// configured objective, calling `on_step` after each step; returns the trained scorer (without
/// autodiff). With `files`, metrics
/// and checkpoints go to its directory, and `files.resume` continues from the checkpoint there
/// (`scorer` is then unused). After `halt_after` steps, returns the scorer of that step.
#[allow(clippy::too_many_arguments)]
pub fn train_scorer(
    cfg: &ScorerTrainConfig,
    base: &CausalLm,
    scorer: PrefixScorer,
    data: &[ScorerRollout],
    pad_id: u32,
    device: &Device,
    files: Option<RunFiles<'_>>,
    mut on_step: impl FnMut(&StepReport<'_>),
) -> Result<PrefixScorer, RlError> {
    if data.is_empty() {
        return Err(RlError::InvalidParameter {
            field: "rollouts",
            message: "no rollouts to train on".into(),
        });
    }
    if let Some(r) = data
        .iter()
        .find(|r| !r.reward.is_finite() || r.tokens.is_empty())
    {
        return Err(RlError::InvalidParameter {
            field: "rollouts",
            message: format!(
                "a rollout has reward {} and {} tokens: rewards must be finite and completions non-empty",
                r.reward,
                r.tokens.len()
            ),
        });
    }
    let ad = device.clone().autodiff();
    let (mut scorer, mut optim, mut target, start) = match files {
        Some(f) if f.resume => {
            let r = load_scorer_checkpoint(&f.checkpoint(), cfg, &ad, device)?;
            tracing::info!(step = r.3, "resuming scorer training");
            r
        }
        _ => (scorer, optimizer(cfg), None, 0),
    };
    let mut metrics = files.map(|f| f.metrics_writer(start)).transpose()?;
    let ckpt: Option<(PathBuf, &Tokenizer)> = files.map(|f| (f.checkpoint(), f.tokenizer));
    let seed = Seed(cfg.seed);
    for step in start + 1..=cfg.steps {
        if cfg.method == ScorerMethod::Q
            && cfg.target_sync_every > 0
            && (step - 1) % cfg.target_sync_every == 0
        {
            target = Some(scorer.valid());
        }
        let mut rng = seed.derive("scorer-data", step).stream("data");
        let rows: Vec<&ScorerRollout> = (0..cfg.batch_size.min(data.len()).max(1))
            .map(|_| &data[rng.random_range(0..data.len())])
            .collect();
        // The batch's rows in SHARDS shards (one per core on the CPU), each normalised by the
        // whole batch's prefixes so that the shards' losses add up to the batch's.
        let shards = SHARDS.min(rows.len());
        let mut parts = (0..shards)
            .map(|s| {
                let (lo, hi) = shard_rows(rows.len(), shards, s);
                ScorerBatch::new(&rows[lo..hi], pad_id, &ad)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let prefixes: f64 = parts.iter().map(|p| p.prefixes).sum();
        parts.iter_mut().for_each(|p| p.prefixes = prefixes);
        let objective: &(dyn ScorerObjective + Sync) = match cfg.method {
            ScorerMethod::Fudge => &CdFudge,
            ScorerMethod::Q => &CdQ { base, device },
        };
        let loss_of =
            |scorer: &PrefixScorer, s: usize| objective.loss(scorer, target.as_ref(), &parts[s]);
        let (updated, loss_value, grad_norm) =
            descend_sharded(scorer, &mut optim, shards, loss_of, cfg.lr, cfg.grad_clip)
                .map_err(RlError::at_step(step))?;
        scorer = updated;
        let row = [("scorer/loss", loss_value), ("scorer/grad_norm", grad_norm)];
        if let Some(m) = metrics.as_mut()
            && (step % cfg.log_every.max(1) == 0 || step == cfg.steps)
        {
            m.log(step, &row)?;
        }
        on_step(&StepReport {
            step,
            steps: cfg.steps,
            metrics: &row,
        });
        let save_now = (cfg.save_every > 0 && step % cfg.save_every == 0) || step == cfg.steps;
        if let Some((dir, tokenizer)) = &ckpt
            && save_now
        {
            let state = ScorerTrainState {
                step,
                has_target: target.is_some(),
                config: cfg.clone(),
            };
            save_scorer_checkpoint(dir, &scorer, &optim, target.as_ref(), tokenizer, &state)?;
        }
        if cfg.halt_after > 0 && step >= cfg.halt_after && step < cfg.steps {
            return Ok(scorer.valid());
        }
    }
    Ok(scorer.valid())
}

#[cfg(test)]
mod tests {
    use super::{ScorerRollout, ScorerTrainConfig, accuracy_interval};

    #[test]
    fn a_scorer_starts_at_the_chosen_value() {
        let rollout = |reward| ScorerRollout {
            prompt_ids: vec![1],
            tokens: vec![2],
            reward,
            terminal: true,
        };
        let data = vec![rollout(-2.0), rollout(0.5), rollout(-0.5)];
        let cfg = |mean, max| ScorerTrainConfig {
            value_prior: 0.25,
            value_prior_from_data: mean,
            value_prior_from_max: max,
            ..Default::default()
        };
        assert_eq!(cfg(false, false).prior(&data).unwrap(), 0.25);
        assert!((cfg(true, false).prior(&data).unwrap() - (-2.0 / 3.0)).abs() < 1e-12);
        assert_eq!(cfg(false, true).prior(&data).unwrap(), 0.5);
        // Both data-derived starts, or one from no rollouts: an error naming the field.
        for (c, d) in [(cfg(true, true), &data[..]), (cfg(false, true), &[][..])] {
            let e = c.prior(d).unwrap_err().to_string();
            assert!(e.contains("value_prior_from_max"), "{e}");
        }
        // The fixed start needs no rollouts.
        assert_eq!(cfg(false, false).prior(&[]).unwrap(), 0.25);
    }

    #[test]
    fn the_accuracy_interval_holds_the_estimate_and_shrinks_with_more_prompts() {
        // Every prompt at 3/4: no spread between prompts, the interval is the point.
        let same = vec![(3.0, 4); 10];
        assert_eq!(accuracy_interval(&same), (0.75, 0.75));
        // Prompts at 0 or 1 alike: the accuracy is ½; the interval covers it and narrows
        // roughly as 1/√prompts (binomial standard error 0.5/√n over n prompts).
        let few: Vec<(f64, usize)> = (0..10).map(|i| ((i % 2) as f64, 1)).collect();
        let many: Vec<(f64, usize)> = (0..400).map(|i| ((i % 2) as f64, 1)).collect();
        let (lo, hi) = accuracy_interval(&few);
        let (lo2, hi2) = accuracy_interval(&many);
        assert!(lo < 0.5 && hi > 0.5 && lo2 < 0.5 && hi2 > 0.5);
        let (w, w2) = (hi - lo, hi2 - lo2);
        // 95% width ≈ 2·1.96·0.5/√n: 0.62 at 10 prompts, 0.098 at 400.
        assert!((w - 0.62).abs() < 0.15, "width {w}");
        assert!((w2 - 0.098).abs() < 0.02, "width {w2}");
    }
}

/// A prefix scorer read as a classifier of complete rollouts (the CD paper's Table 1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifierCheck {
    /// Same-prompt pairs with different rewards.
    pub pairs: usize,
    /// Fraction of those pairs where the higher-reward rollout gets the higher value (ties ½);
    /// `None` without pairs.
    pub pairwise_accuracy: Option<f64>,
    /// A 95% percentile-bootstrap interval of the pairwise accuracy, resampling prompts (pairs
    /// of one prompt are not independent); `None` without pairs.
    pub pairwise_accuracy_interval: Option<(f64, f64)>,
    /// Prompts that contribute at least one pair.
    pub prompts: usize,
    /// `V([x, y])` of each rollout, in the order given.
    pub values: Vec<f32>,
    /// Mean squared error of the value against the reward; `None` without rollouts.
    pub mse: Option<f64>,
}

/// `V([x, y])` of every complete rollout, compared within each prompt against its reward.
pub fn classifier_check(
    scorer: &PrefixScorer,
    rollouts: &[ScorerRollout],
    pad_id: u32,
    device: &Device,
) -> Result<ClassifierCheck, RlError> {
    let mut values = Vec::with_capacity(rollouts.len());
    for chunk in rollouts.chunks(32) {
        let rows: Vec<Vec<u32>> = chunk
            .iter()
            .map(|r| r.prompt_ids.iter().chain(&r.tokens).copied().collect())
            .collect();
        let batch = TokenBatch::left_padded(&rows, pad_id, device)?;
        let v = scorer.prefix_values(&batch, &mut scorer.new_cache());
        let [b, l] = v.dims();
        values.extend(read_f32(v.narrow(1, l - 1, 1).reshape([b]))?);
    }
    // (wins, pairs) per prompt, in order of first appearance.
    let mut per_prompt: Vec<(&[u32], f64, usize)> = Vec::new();
    for (i, a) in rollouts.iter().enumerate() {
        for (j, b) in rollouts.iter().enumerate().skip(i + 1) {
            if a.prompt_ids != b.prompt_ids || a.reward == b.reward {
                continue;
            }
            let (hi, lo) = if a.reward > b.reward { (i, j) } else { (j, i) };
            let win = match values[hi].total_cmp(&values[lo]) {
                std::cmp::Ordering::Greater => 1.0,
                std::cmp::Ordering::Equal => 0.5,
                std::cmp::Ordering::Less => 0.0,
            };
            match per_prompt
                .iter_mut()
                .find(|(p, _, _)| *p == a.prompt_ids.as_slice())
            {
                Some(entry) => {
                    entry.1 += win;
                    entry.2 += 1;
                }
                None => per_prompt.push((&a.prompt_ids, win, 1)),
            }
        }
    }
    let wins: f64 = per_prompt.iter().map(|p| p.1).sum();
    let pairs: usize = per_prompt.iter().map(|p| p.2).sum();
    let counts: Vec<(f64, usize)> = per_prompt.iter().map(|p| (p.1, p.2)).collect();
    let mse = rollouts
        .iter()
        .zip(&values)
        .map(|(r, &v)| (f64::from(v) - r.reward).powi(2))
        .sum::<f64>()
        / rollouts.len().max(1) as f64;
    Ok(ClassifierCheck {
        pairs,
        pairwise_accuracy: (pairs > 0).then(|| wins / pairs as f64),
        pairwise_accuracy_interval: (pairs > 0).then(|| accuracy_interval(&counts)),
        prompts: counts.len(),
        mse: (!rollouts.is_empty()).then_some(mse),
        values,
    })
}

/// The 2.5% and 97.5% percentiles of `Σ wins / Σ pairs` over 2,000 resamples (with
/// replacement, seeded) of the prompts' `(wins, pairs)`.
fn accuracy_interval(per_prompt: &[(f64, usize)]) -> (f64, f64) {
    const RESAMPLES: usize = 2000;
    let mut rng = Seed(0).stream("pairwise-accuracy-bootstrap");
    let mut stats: Vec<f64> = (0..RESAMPLES)
        .map(|_| {
            let (mut w, mut n) = (0.0, 0usize);
            for _ in 0..per_prompt.len() {
                let (pw, pn) = per_prompt[rng.random_range(0..per_prompt.len())];
                w += pw;
                n += pn;
            }
            w / n.max(1) as f64
        })
        .collect();
    stats.sort_by(f64::total_cmp);
    let at = |q: f64| stats[((RESAMPLES - 1) as f64 * q).round() as usize];
    (at(0.025), at(0.975))
}
