//! Blockwise controlled decoding (Mudgal et al. 2024, eq. 7; docs/ALGORITHMS.md A.5.2): at each
//! step draw K continuations of M tokens from the base model, keep the one whose extended
//! prefix the scorer values most, append it, and repeat until an accepted block ends the
//! sequence (EOS, a stop string, or the token budget). With M at least the budget and a perfect scorer this is
//! best-of-K; its throughput is that of best-of-K, but the first block streams after M tokens.
//!
//! Candidate k of prompt p draws from the seeded stream `seed.derive("sample", p * K + k)`,
//! continued across blocks: with K = 1 the output is base sampling, token for token. Ties
//! between candidates go to the first (default) or to a seeded random one.
//!
//! Invariants: all K candidates of a prompt restart each block from the accepted prefix (their
//! base and scorer caches are reordered together); the KV cache of the prompt is computed once;
//! a prompt whose accepted block ends leaves the batch (caches and values are compacted), so
//! the others do not pay for it. Each candidate keeps its own random stream throughout, so the
//! output does not depend on how prompts are batched. The scorers advance beside the base model
//! without their heads; each candidate's value is read once, at the end of its block, at its last
//! real token.
//! A blockwise sample's `policy_logprobs` are those of the drafting sampler; the blockwise
//! policy's own likelihood is intractable, and its KL is bounded instead
//! (`(ln K − (K−1)/K) · L / M`).

use infalign_core::Seed;
use infalign_models::TokenBatch;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::device_sampler::sample_on_device;
use crate::generate::{GenerationConfig, Generator, StepLogp, step_uniforms};
use crate::sampler::sample_token;
use crate::scorer_mix::ScorerMix;
use crate::strategy::DecodingStrategy;
use crate::{DecodingError, Finish, Sample};

/// How ties between equally valued blocks are broken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TieBreak {
    /// The lowest-numbered candidate.
    #[default]
    First,
    /// A uniformly random one among the tied (seeded).
    Random,
}

/// Blockwise CD: best of K blocks of M tokens, by a (possibly multi-objective) prefix scorer.
#[derive(Debug)]
pub struct BlockwiseCd<'a> {
    /// Candidates per block.
    pub k: usize,
    /// Tokens per block.
    pub m: usize,
    /// Tie-breaking rule.
    pub tie_break: TieBreak,
    /// The scorers.
    pub mix: ScorerMix<'a>,
}

struct Row {
    tokens: Vec<u32>,
    policy: Vec<f32>,
    base: Vec<f32>,
    finish: Option<Finish>,
    value: f32,
    rng: rand_chacha::ChaCha8Rng,
}

impl DecodingStrategy for BlockwiseCd<'_> {
    /// One sample per prompt (`cfg.n` is ignored: K plays its role).
    fn decode(
        &mut self,
        generator: &Generator<'_>,
        prompts: &[String],
        cfg: &GenerationConfig,
        seed: Seed,
    ) -> Result<Vec<Sample>, DecodingError> {
        cfg.sampling.validate()?;
        let ids = prompts
            .iter()
            .map(|p| generator.encode_prompt(p, cfg.max_new_tokens))
            .collect::<Result<Vec<_>, _>>()?;
        let chunk = cfg.prompt_batch.max(1);
        let mut out = Vec::with_capacity(prompts.len());
        for (c, chunk_ids) in ids.chunks(chunk).enumerate() {
            let first = c * chunk;
            out.extend(self.decode_chunk(
                generator,
                &prompts[first..],
                chunk_ids,
                first,
                cfg,
                seed,
            )?);
        }
        Ok(out)
    }
}

impl<'a> BlockwiseCd<'a> {
    /// Blockwise CD with K candidates of M tokens.
    pub fn new(
        k: usize,
        m: usize,
        tie_break: TieBreak,
        mix: ScorerMix<'a>,
    ) -> Result<Self, DecodingError> {
        crate::strategy::at_least_one("k", k)?;
        crate::strategy::at_least_one("m", m)?;
        Ok(Self {
            k,
            m,
            tie_break,
            mix,
        })
    }

    fn decode_chunk(
        &mut self,
        generator: &Generator<'_>,
        prompts: &[String],
        ids: &[Vec<u32>],
        first: usize,
        cfg: &GenerationConfig,
        seed: Seed,
    ) -> Result<Vec<Sample>, DecodingError> {
        let lm = generator.model();
        let device = generator.device().clone();
        let (k, n_prompts) = (self.k, ids.len());
        let batch = TokenBatch::left_padded(ids, lm.pad_id, &device)?;
        let mut cache = lm.model.new_cache();
        let prefill = lm.model.next_token_logprobs(&batch, &mut cache);
        let vocab = prefill.dims()[1];
        // Off the CPU the candidates are drawn on the device ([`crate::device_sampler`]).
        let on_device = generator.samples_on_device();
        let rep: Vec<usize> = (0..n_prompts * k).map(|r| r / k).collect();
        let mut logp = StepLogp::new(prefill, on_device)?.rows(&rep, vocab, &device);
        cache.reserve(cfg.max_new_tokens);
        if k > 1 {
            cache = cache.repeat_interleave(k);
        }
        self.mix.prefill(ids, k, lm.pad_id)?;
        let mut rows: Vec<Row> = (0..n_prompts * k)
            .map(|r| Row {
                tokens: Vec::new(),
                policy: Vec::new(),
                base: Vec::new(),
                finish: None,
                value: 0.0,
                rng: seed
                    .derive("sample", ((first + r / k) * k + r % k) as u64)
                    .stream("sampling"),
            })
            .collect();
        let mut tie_rng = seed.derive("tie-break", first as u64).stream("tie-break");
        // The accepted sample of each finished prompt; rows hold only unfinished prompts, K
        // each, in prompt order (`alive[i]` is the prompt of rows i*K..(i+1)*K).
        let mut done: Vec<Option<Sample>> = (0..n_prompts).map(|_| None).collect();
        let mut alive: Vec<usize> = (0..n_prompts).collect();
        while !alive.is_empty() {
            // Draft one block for every candidate of every unfinished prompt.
            // The block's tokens, row by row (padding once a row ends), and the position of
            // each row's last real token: the scorers read them once, at the block's end.
            let mut block: Vec<Vec<u32>> = vec![Vec::with_capacity(self.m); rows.len()];
            let mut ends: Vec<Option<usize>> = vec![None; rows.len()];
            for j in 0..self.m {
                let mut next = Vec::with_capacity(rows.len());
                let mut active = vec![false; rows.len()];
                let draws = match &logp {
                    StepLogp::Device(lp) => {
                        let uniforms = step_uniforms(
                            rows.iter_mut().map(|r| (r.finish.is_some(), &mut r.rng)),
                            &cfg.sampling,
                        );
                        Some(sample_on_device(
                            (**lp).clone(),
                            None,
                            &cfg.sampling,
                            &uniforms,
                        )?)
                    }
                    StepLogp::Host(_) => None,
                };
                for (r, row) in rows.iter_mut().enumerate() {
                    if row.finish.is_some() {
                        next.push(lm.pad_id);
                        continue;
                    }
                    let (tok, policy_lp, base_lp) = match (&draws, &logp) {
                        (Some(d), _) => (d.tokens[r], d.policy_logprobs[r], d.base_logprobs[r]),
                        (None, StepLogp::Host(logp)) => {
                            let lp = &logp[r * vocab..(r + 1) * vocab];
                            let (tok, policy_lp) = sample_token(lp, &cfg.sampling, &mut row.rng);
                            (tok, policy_lp, lp[tok as usize])
                        }
                        (None, StepLogp::Device(_)) => {
                            unreachable!("device log-probs are drawn above")
                        }
                    };
                    row.tokens.push(tok);
                    row.policy.push(policy_lp);
                    row.base.push(base_lp);
                    row.finish = generator.ended(&row.tokens, &cfg.stop)?;
                    if row.finish.is_none() && row.tokens.len() >= cfg.max_new_tokens {
                        row.finish = Some(Finish::Length);
                    }
                    active[r] = true;
                    ends[r] = Some(j);
                    next.push(tok);
                }
                if !active.iter().any(|&a| a) {
                    break;
                }
                for (b, &tok) in block.iter_mut().zip(&next) {
                    b.push(tok);
                }
                // The scorers' forwards need only the chosen tokens: they run beside the base
                // model's.
                let step = TokenBatch::step(&next, &device);
                let mix = &mut self.mix;
                let (lp, fed) = infalign_core::beside(
                    || StepLogp::new(lm.model.next_token_logprobs(&step, &mut cache), on_device),
                    || mix.advance(&next),
                );
                fed?;
                logp = lp?;
                if rows.iter().all(|row| row.finish.is_some()) {
                    break;
                }
            }
            self.mix.read_block(&block, &ends)?;
            for (r, row) in rows.iter_mut().enumerate() {
                if ends[r].is_some() {
                    row.value = self.mix.value(r);
                }
            }
            // Accept the best block of each prompt. A finished winner ends its prompt, whose
            // rows then leave the batch; the others' candidates all continue from the winner.
            let mut keep = Vec::with_capacity(rows.len());
            let mut order = Vec::with_capacity(rows.len());
            let mut still = Vec::with_capacity(alive.len());
            for (i, &p) in alive.iter().enumerate() {
                let cands = i * k..(i + 1) * k;
                let best_v = cands
                    .clone()
                    .map(|r| rows[r].value)
                    .fold(f32::NEG_INFINITY, f32::max);
                let tied: Vec<usize> = cands.clone().filter(|&r| rows[r].value == best_v).collect();
                let winner = match self.tie_break {
                    TieBreak::First => tied[0],
                    TieBreak::Random => tied[tie_rng.random_range(0..tied.len())],
                };
                if let Some(finish) = rows[winner].finish {
                    // The prompt's rows leave the batch below: its winner can be taken apart.
                    let w = &mut rows[winner];
                    done[p] = Some(generator.finish_sample(
                        &prompts[p],
                        first + p,
                        &ids[p],
                        std::mem::take(&mut w.tokens),
                        std::mem::take(&mut w.policy),
                        std::mem::take(&mut w.base),
                        Vec::new(),
                        finish,
                        &cfg.stop,
                    )?);
                    continue;
                }
                still.push(p);
                let (tokens, policy, base, value) = {
                    let w = &rows[winner];
                    (w.tokens.clone(), w.policy.clone(), w.base.clone(), w.value)
                };
                for r in cands {
                    // Each candidate keeps its own random stream.
                    let row = &mut rows[r];
                    row.tokens.clone_from(&tokens);
                    row.policy.clone_from(&policy);
                    row.base.clone_from(&base);
                    row.value = value;
                    row.finish = None;
                    keep.push(r);
                    order.push(winner);
                }
            }
            alive = still;
            if alive.is_empty() {
                break;
            }
            if order.len() != rows.len() || order.iter().enumerate().any(|(r, &o)| r != o) {
                cache = cache.select(crate::generate::row_indices(&order, &device));
                logp = logp.rows(&order, vocab, &device);
                self.mix.select(&order);
                let mut old: Vec<Option<Row>> = rows.into_iter().map(Some).collect();
                rows = keep
                    .iter()
                    .map(|&r| old[r].take().expect("each row is kept once"))
                    .collect();
            }
        }
        Ok(done
            .into_iter()
            .map(|s| s.expect("every prompt is done"))
            .collect())
    }
}
