//! Preference optimisation with DPO ([`crate::dpo`]) or IPO ([`crate::ipo`]). Online (the CD
//! paper's baselines): each step samples k ≥ 2 completions per prompt from the current policy,
//! orders them by the (shaped) reward, and takes the best as preferred and the worst as
//! dispreferred. Offline: pairs from a preference file ([`OfflinePair`]). Either way the pair's
//! margin against the frozen reference goes through the loss.
//!
//! Invariants: a prompt whose samples all score the same gives no pair (no preference); pairs
//! stay together in one shard, so shard gradients add up to the batch's; the loss is averaged
//! over pairs.

use burn::tensor::{Device, Tensor, TensorData};
use infalign_core::Seed;
use infalign_models::training::optim::{SHARDS, descend_sharded, shard_rows};
use infalign_models::{CausalLm, LoadedModel};
use rand::Rng;

use burn::optim::ModuleOptimizer;

use crate::RlError;
use crate::policy_config::PolicyTrainConfig;
use crate::policy_objective::{PolicyObjective, StepBatch, StepMetrics};
use crate::token_table::TokenTable;

/// The loss a preference pair goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PairLoss {
    /// `−log σ(β·h)` ([`crate::dpo`]).
    Dpo,
    /// `(h − 1/(2τ))²` ([`crate::ipo`]).
    Ipo,
}

impl PolicyObjective for PairLoss {
    fn step(
        &mut self,
        policy: CausalLm,
        optim: &mut ModuleOptimizer,
        batch: &StepBatch,
        cfg: &PolicyTrainConfig,
        beta: f64,
        _m: &mut StepMetrics,
    ) -> Result<(CausalLm, f64), RlError> {
        step(
            *self,
            policy,
            optim,
            &batch.table,
            &batch.pairs,
            &batch.ref_seq,
            cfg,
            beta,
        )
    }
}

/// A preference pair as the model reads it: the prompt's ids and each completion's.
#[derive(Debug, Clone, PartialEq)]
pub struct OfflinePair {
    /// The prompt.
    pub prompt: Vec<u32>,
    /// The preferred completion.
    pub chosen: Vec<u32>,
    /// The dispreferred completion.
    pub rejected: Vec<u32>,
}

/// An offline step's batch: `prompts_per_step` pairs drawn with replacement from the seeded
/// stream of `step`, as rows (prompt + chosen, prompt + rejected, ...) with their reference
/// log-probs; `m` gets the rows' mean completion length. No KL is measured (the rows are not
/// the policy's samples): the step's KL and reward metrics stay 0.
pub(crate) fn offline_batch(
    cfg: &PolicyTrainConfig,
    lm: &LoadedModel,
    pairs: &[OfflinePair],
    device: &Device,
    step: u64,
    m: &mut StepMetrics,
) -> Result<StepBatch, RlError> {
    let mut rng = Seed(cfg.seed)
        .derive("policy-prompts", step)
        .stream("prompts");
    let picked: Vec<&OfflinePair> = (0..cfg.prompts_per_step)
        .map(|_| &pairs[rng.random_range(0..pairs.len())])
        .collect();
    let mut rows = Vec::with_capacity(2 * picked.len());
    let mut prompt_lens = Vec::with_capacity(2 * picked.len());
    for p in &picked {
        for completion in [&p.chosen, &p.rejected] {
            rows.push(
                p.prompt
                    .iter()
                    .chain(completion)
                    .copied()
                    .collect::<Vec<u32>>(),
            );
            prompt_lens.push(p.prompt.len());
        }
    }
    let ref_lp = lm.model.sequence_logprobs(&rows, lm.pad_id, device)?;
    let ref_seq: Vec<f64> = ref_lp
        .iter()
        .zip(&prompt_lens)
        .map(|(r, &n)| CausalLm::completion_logprob(r, n))
        .collect();
    let n = rows.len() as f64;
    m.response_length = rows
        .iter()
        .zip(&prompt_lens)
        .map(|(r, &p)| (r.len() - p) as f64)
        .sum::<f64>()
        / n;
    let table = TokenTable::new(
        &rows,
        &prompt_lens,
        None,
        &ref_lp,
        lm.pad_id,
        &device.clone().autodiff(),
    )?;
    Ok(StepBatch {
        table,
        scores: vec![0.0; rows.len()],
        shaped_scores: vec![0.0; rows.len()],
        ref_seq,
        pairs: (0..picked.len()).map(|i| (2 * i, 2 * i + 1)).collect(),
    })
}

/// The (preferred, dispreferred) rows of each prompt's group of `k` consecutive scores: its
/// best and its worst (the first of equals); none where every score of the group is equal.
pub fn pairs_by_score(scores: &[f64], k: usize) -> Vec<(usize, usize)> {
    scores
        .chunks(k)
        .enumerate()
        .filter_map(|(g, group)| {
            let best = (0..group.len()).fold(0, |b, i| if group[i] > group[b] { i } else { b });
            let worst = (0..group.len()).fold(0, |w, i| if group[i] < group[w] { i } else { w });
            (group[best] > group[worst]).then_some((g * k + best, g * k + worst))
        })
        .collect()
}

/// One step of DPO or IPO over `pairs` of `table`'s rows (`ref_seq[row]`: the reference's
/// log-prob of that row's completion). Returns the new policy and the mean loss over pairs.
#[allow(clippy::too_many_arguments)]
fn step(
    loss: PairLoss,
    policy: CausalLm,
    optim: &mut ModuleOptimizer,
    table: &TokenTable,
    pairs: &[(usize, usize)],
    ref_seq: &[f64],
    cfg: &PolicyTrainConfig,
    beta: f64,
) -> Result<(CausalLm, f64), RlError> {
    if pairs.is_empty() {
        // No prompt had a preference this step: no update.
        return Ok((policy, 0.0));
    }
    // Rows in pair order (w0, l0, w1, l1, ...), so that a shard of pairs is a run of rows.
    let order: Vec<usize> = pairs.iter().flat_map(|&(w, l)| [w, l]).collect();
    let paired = table.select(&order);
    let ref_margins: Vec<f32> = pairs
        .iter()
        .map(|&(w, l)| (ref_seq[w] - ref_seq[l]) as f32)
        .collect();
    let n = pairs.len();
    let shards = SHARDS.min(n);
    let loss_of = |p: &CausalLm, s: usize| {
        let (lo, hi) = shard_rows(n, shards, s);
        let part = paired.rows(2 * lo, 2 * hi);
        let weight = part.tensor(&part.weight);
        let seq = (part.token_logprobs(p) * weight)
            .sum_dim(1)
            .reshape([hi - lo, 2]);
        let chosen = seq.clone().narrow(1, 0, 1).reshape([hi - lo]);
        let rejected = seq.narrow(1, 1, 1).reshape([hi - lo]);
        let reference = Tensor::<1>::from_data(
            TensorData::new(ref_margins[lo..hi].to_vec(), [hi - lo]),
            &chosen.device(),
        );
        let margins = chosen - rejected - reference;
        let total = match loss {
            PairLoss::Ipo => crate::ipo::loss(margins, beta),
            PairLoss::Dpo => crate::dpo::loss(margins, beta),
        };
        Ok::<_, RlError>(total / n as f64)
    };
    let (policy, value, _) =
        descend_sharded(policy, optim, shards, loss_of, cfg.lr, cfg.grad_clip)?;
    Ok((policy, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_take_each_groups_best_and_worst_and_skip_ties() {
        let scores = [0.1, 0.9, 0.5, 2.0, 2.0, 2.0, -1.0, 3.0, 3.0];
        assert_eq!(pairs_by_score(&scores, 3), vec![(1, 0), (7, 6)]);
        assert_eq!(pairs_by_score(&[1.0, 0.0], 2), vec![(0, 1)]);
    }
}
