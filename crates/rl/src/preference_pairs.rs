//! Online preference optimisation (the CD paper's online DPO and IPO baselines): each step
//! samples k ≥ 2 completions per prompt from the current policy, orders them by the (shaped)
//! reward, and takes the best as preferred and the worst as dispreferred; the pair's margin
//! against the frozen reference goes through the DPO ([`crate::dpo`]) or IPO ([`crate::ipo`])
//! loss.
//!
//! Invariants: a prompt whose samples all score the same gives no pair (no preference); pairs
//! stay together in one shard, so shard gradients add up to the batch's; the loss is averaged
//! over pairs.

use burn::tensor::{Tensor, TensorData};
use infalign_models::CausalLm;
use infalign_models::optim::{SHARDS, descend_sharded, shard_rows};

use crate::RlError;
use crate::policy_train::{Algo, PolicyTrainConfig, TokenTable};

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
pub(crate) fn step(
    policy: CausalLm,
    optim: &mut burn::optim::ModuleOptimizer,
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
        let total = match cfg.algo {
            Algo::Ipo => crate::ipo::loss(margins, beta),
            _ => crate::dpo::loss(margins, beta),
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
