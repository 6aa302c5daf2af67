//! Batched ancestral generation with a KV cache.
//!
//! Prompts are encoded, left-padded into one batch and prefilled once; the cache is then
//! repeated so the N samples of each prompt continue from the shared prefill. Each sample draws
//! from its own seeded stream, `seed.derive("sample", prompt_index * N + j)`, so a sample does
//! not depend on how prompts were batched.
//!
//! Invariants: a row that has finished (EOS, stop string) draws no further randomness; every
//! sample's `base_logprobs` are the unprocessed model's, its `policy_logprobs` those of the
//! distribution it was actually drawn from.

use burn::tensor::{Device, Int, Tensor, TensorData};
use infalign_core::Seed;
use infalign_models::{LoadedModel, TokenBatch, weights::read_f32};
use serde::{Deserialize, Serialize};

use crate::sampler::{SamplingConfig, kl_divergence, process_logprobs, sample_token};
use crate::{DecodingError, Finish, Sample};

/// What to generate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenerationConfig {
    /// Largest number of new tokens per sample.
    pub max_new_tokens: usize,
    /// Samples per prompt.
    pub n: usize,
    /// Next-token processing.
    pub sampling: SamplingConfig,
    /// Strings that end a completion when they appear in its text.
    pub stop: Vec<String>,
    /// Prompts prefilled together (each expands to `n` rows); on the CPU, chunks of this many
    /// prompts are also what the cores decode in parallel.
    pub prompt_batch: usize,
    /// Rows (prompts × samples) decoded at once at most; 0: as many as keep the KV cache under
    /// [`KV_BUDGET_BYTES`]. When `prompt_batch × n` exceeds it, prompts decode one at a time and
    /// their samples in blocks of this many, so memory stays bounded whatever `n` is; each
    /// sample keeps its own random stream, so the samples are those of `prompt_batch = 1`.
    #[serde(default)]
    pub max_rows: usize,
}

/// A unit of decoding work: the index of its first prompt, the prompts' ids, and the samples of
/// each prompt it draws.
type Chunk<'a> = (usize, &'a [Vec<u32>], std::ops::Range<usize>);

/// The chunks of a decode: `chunk` prompts at a time (the index of the first, their ids), each
/// with its samples in ranges of `block`, prompt-major.
fn chunk_list(encoded: &[Vec<u32>], chunk: usize, block: usize, n: usize) -> Vec<Chunk<'_>> {
    encoded
        .chunks(chunk)
        .enumerate()
        .flat_map(|(c, ids)| {
            (0..n)
                .step_by(block)
                .map(move |j| (c * chunk, ids, j..(j + block).min(n)))
        })
        .collect()
}

/// The KV-cache memory a decoding chunk may take when [`GenerationConfig::max_rows`] is 0 (on
/// the CPU, chunks decode one per core at once: the bound is per chunk).
pub const KV_BUDGET_BYTES: usize = 2 << 30;

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 64,
            n: 1,
            sampling: SamplingConfig::default(),
            stop: Vec::new(),
            prompt_batch: 8,
            max_rows: 0,
        }
    }
}

/// Adjusts the base model's next-token log-probs step by step (tokenwise controlled decoding).
/// It sees the same prompt batch and the same chosen tokens as the base model, row for row.
pub trait Steer: Send {
    /// Called once per prompt chunk with the prompts' ids; each will be repeated `repeat`
    /// times, prompt-major.
    fn prefill(
        &mut self,
        ids: &[Vec<u32>],
        repeat: usize,
        pad_id: u32,
    ) -> Result<(), DecodingError>;
    /// Called after every step with the token each row appended (padding for finished rows).
    fn feed(&mut self, tokens: &[u32]) -> Result<(), DecodingError>;
    /// Called once per step before [`Steer::adjust`], with every row's base log-probs
    /// (`rows × vocab`, row-major): room for work batched over rows. Does nothing by default.
    fn prepare(&mut self, base_logp: &[f32], vocab: usize) -> Result<(), DecodingError> {
        let _ = (base_logp, vocab);
        Ok(())
    }
    /// The log-probs to sample row `row` from, given the base log-probs (normalised).
    fn adjust(&self, row: usize, base_logp: &[f32]) -> Vec<f32>;
    /// Called when rows leave the batch (their completions ended): keep the rows `keep`, in
    /// that order, before the next [`Steer::feed`].
    fn select(&mut self, keep: &[usize]);
}

/// The batch positions `rows` as an index tensor, for [`infalign_models::KvCache::select`].
pub(crate) fn row_indices(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::from_data(TensorData::new(ids, [rows.len()]), device)
}

/// Generates completions from a loaded model.
#[derive(Debug)]
pub struct Generator<'a> {
    lm: &'a LoadedModel,
    device: Device,
}

struct Row {
    tokens: Vec<u32>,
    policy: Vec<f32>,
    base: Vec<f32>,
    step_kl: Vec<f32>,
    finish: Option<Finish>,
    rng: rand_chacha::ChaCha8Rng,
}

impl<'a> Generator<'a> {
    /// A generator over `lm` running on `device`.
    pub fn new(lm: &'a LoadedModel, device: Device) -> Self {
        Self { lm, device }
    }

    /// `cfg.n` completions of every prompt, ordered by prompt then sample.
    pub fn generate(
        &self,
        prompts: &[String],
        cfg: &GenerationConfig,
        seed: Seed,
    ) -> Result<Vec<Sample>, DecodingError> {
        self.generate_steered(prompts, cfg, seed, None)
    }

    /// Like [`Generator::generate`], sampling each token from what `steer` makes of the base
    /// log-probs.
    pub fn generate_steered<'s>(
        &self,
        prompts: &[String],
        cfg: &GenerationConfig,
        seed: Seed,
        steer: Option<&mut (dyn Steer + 's)>,
    ) -> Result<Vec<Sample>, DecodingError> {
        let (encoded, chunk, block) = self.plan(prompts, cfg)?;
        let chunks = chunk_list(&encoded, chunk, block, cfg.n);
        let run = |first: usize,
                   ids: &[Vec<u32>],
                   samples: std::ops::Range<usize>,
                   steer: Option<&mut (dyn Steer + 's)>| {
            let prompts = &prompts[first..first + ids.len()];
            self.generate_chunk(prompts, ids, first, samples, cfg, seed, steer)
        };
        let mut out = Vec::with_capacity(prompts.len() * cfg.n);
        match steer {
            // A steer tracks the rows of one batch: its chunks go one after the other.
            Some(s) => {
                for (first, ids, samples) in &chunks {
                    out.extend(run(*first, ids, samples.clone(), Some(&mut *s))?);
                }
            }
            // Chunks are independent (each sample has its own random stream): on the CPU they
            // decode in parallel, with the same result as one after the other.
            None => {
                let done = infalign_core::run_on_workers(&self.device, chunks.len(), |c| {
                    let (first, ids, samples) = &chunks[c];
                    run(*first, ids, samples.clone(), None)
                })?;
                out.extend(done.into_iter().flatten());
            }
        }
        Ok(out)
    }

    /// Like [`Generator::generate`], handing the samples to `sink` block by block as they are
    /// decoded instead of returning them all: memory stays bounded by one wave of blocks (one
    /// block per core) whatever `cfg.n` is, for selections over a huge N. Blocks arrive
    /// prompt-major in the order `generate` returns the samples, and the samples are the same.
    pub fn generate_each(
        &self,
        prompts: &[String],
        cfg: &GenerationConfig,
        seed: Seed,
        sink: &mut dyn FnMut(Vec<Sample>) -> Result<(), DecodingError>,
    ) -> Result<(), DecodingError> {
        let (encoded, chunk, block) = self.plan(prompts, cfg)?;
        let chunks = chunk_list(&encoded, chunk, block, cfg.n);
        let wave = std::thread::available_parallelism().map_or(1, usize::from);
        for part in chunks.chunks(wave) {
            let done = infalign_core::run_on_workers(&self.device, part.len(), |c| {
                let (first, ids, samples) = &part[c];
                let prompts = &prompts[*first..*first + ids.len()];
                self.generate_chunk(prompts, ids, *first, samples.clone(), cfg, seed, None)
            })?;
            for samples in done {
                sink(samples)?;
            }
        }
        Ok(())
    }

    /// Checks the config; the prompts' ids and how they are split: `chunk` prompts per decoding batch, their
    /// samples in blocks of `block`. Chunks are `prompt_batch` prompts whatever the number of
    /// workers (the padding of a prefill batch changes rounding, and results must not depend on
    /// the machine's cores); past `max_rows` rows, one prompt per chunk and its samples in
    /// blocks.
    fn plan(
        &self,
        prompts: &[String],
        cfg: &GenerationConfig,
    ) -> Result<(Vec<Vec<u32>>, usize, usize), DecodingError> {
        cfg.sampling.validate()?;
        if cfg.n == 0 {
            return Err(DecodingError::InvalidParameter {
                field: "n",
                message: "must be at least 1".into(),
            });
        }
        let encoded = prompts
            .iter()
            .map(|p| self.encode_prompt(p, cfg.max_new_tokens))
            .collect::<Result<Vec<_>, _>>()?;
        let longest = encoded.iter().map(Vec::len).max().unwrap_or(0);
        let max_rows = self.max_rows(cfg, longest.saturating_add(cfg.max_new_tokens));
        let (chunk, block) = if cfg.prompt_batch.max(1) * cfg.n > max_rows {
            (1, max_rows.min(cfg.n))
        } else {
            (cfg.prompt_batch.max(1), cfg.n)
        };
        Ok((encoded, chunk, block))
    }

    /// `cfg.max_rows`, or the rows whose KV cache (every layer's keys and values, f32, for
    /// `positions` = the longest prompt plus `max_new_tokens`) fits [`KV_BUDGET_BYTES`]; at
    /// least 1.
    fn max_rows(&self, cfg: &GenerationConfig, positions: usize) -> usize {
        if cfg.max_rows > 0 {
            return cfg.max_rows;
        }
        let c = self.lm.model.config();
        let per_row = (c.n_layers() * 2 * c.d_model() * 4).saturating_mul(positions.max(1));
        (KV_BUDGET_BYTES / per_row.max(1)).max(1)
    }

    /// Token ids of a prompt; an empty prompt starts from BOS (or EOS, GPT-2's convention).
    pub(crate) fn encode_prompt(
        &self,
        prompt: &str,
        max_new: usize,
    ) -> Result<Vec<u32>, DecodingError> {
        let mut ids = self.lm.tokenizer.encode(prompt)?;
        if ids.is_empty() {
            let start = match self.lm.model.config() {
                infalign_models::ModelConfig::Gpt2(c) => c.bos_token_id,
                infalign_models::ModelConfig::Llama(c, _) => c.bos_token_id,
            };
            ids.push(start.or(self.lm.eos_ids.first().copied()).unwrap_or(0));
        }
        let max = self.lm.model.config().max_positions();
        if ids.len() + max_new > max {
            return Err(DecodingError::ContextOverflow {
                prompt: ids.len(),
                new: max_new,
                max,
            });
        }
        self.lm.model.check_ids(&ids, ids.len())?;
        Ok(ids)
    }

    #[allow(clippy::too_many_arguments)]
    fn generate_chunk<'s>(
        &self,
        prompts: &[String],
        ids: &[Vec<u32>],
        first_index: usize,
        samples: std::ops::Range<usize>,
        cfg: &GenerationConfig,
        seed: Seed,
        mut steer: Option<&mut (dyn Steer + 's)>,
    ) -> Result<Vec<Sample>, DecodingError> {
        let model = &self.lm.model;
        // Rows per prompt in this chunk: samples `samples` of each.
        let n = samples.len();
        if let Some(s) = steer.as_deref_mut() {
            s.prefill(ids, n, self.lm.pad_id)?;
        }
        let batch = TokenBatch::left_padded(ids, self.lm.pad_id, &self.device)?;
        let mut cache = model.new_cache();
        let prefill = model.next_token_logprobs(&batch, &mut cache);
        let vocab = prefill.dims()[1];
        let prefill = read_f32(prefill)?;
        // Rows are prompt-major: prompt i, samples 0..n.
        let mut logp: Vec<f32> = prefill
            .chunks(vocab)
            .flat_map(|row| std::iter::repeat_n(row, n).flatten().copied())
            .collect();
        cache.reserve(cfg.max_new_tokens);
        if n > 1 {
            cache = cache.repeat_interleave(n);
        }
        let mut rows: Vec<Row> = (0..ids.len() * n)
            .map(|r| Row {
                tokens: Vec::new(),
                policy: Vec::new(),
                base: Vec::new(),
                step_kl: Vec::new(),
                finish: None,
                rng: seed
                    .derive(
                        "sample",
                        ((first_index + r / n) * cfg.n + samples.start + r % n) as u64,
                    )
                    .stream("sampling"),
            })
            .collect();
        // Batch position i decodes `rows[live[i]]`. Rows whose completions ended leave the
        // batch (cache, log-probs and steer alike) once they are an eighth of it: until then
        // they are fed padding, which costs less than copying the cache at every step.
        let mut live: Vec<usize> = (0..rows.len()).collect();
        for step in 0..cfg.max_new_tokens {
            if let Some(s) = steer.as_deref_mut() {
                s.prepare(&logp, vocab)?;
            }
            let mut next = Vec::with_capacity(live.len());
            for (i, &r) in live.iter().enumerate() {
                let row = &mut rows[r];
                if row.finish.is_some() {
                    next.push(self.lm.pad_id);
                    continue;
                }
                let lp = &logp[i * vocab..(i + 1) * vocab];
                // The distribution this token is drawn from, and its exact KL to the base.
                let steered = steer.as_deref().map(|s| s.adjust(i, lp));
                let dist = steered.as_deref().unwrap_or(lp);
                let (tok, policy_lp, kl) = if cfg.sampling.greedy {
                    let (tok, _) = sample_token(dist, &cfg.sampling, &mut row.rng);
                    (tok, 0.0, -f64::from(lp[tok as usize]))
                } else {
                    let identity = cfg.sampling.is_identity();
                    let processed;
                    let policy = if identity {
                        dist
                    } else {
                        processed = process_logprobs(dist, &cfg.sampling);
                        &processed
                    };
                    let (tok, l) = sample_token(policy, &SamplingConfig::default(), &mut row.rng);
                    let kl = if identity && steered.is_none() {
                        0.0
                    } else {
                        kl_divergence(policy, lp)
                    };
                    (tok, l, kl)
                };
                row.step_kl.push(kl as f32);
                row.tokens.push(tok);
                row.policy.push(policy_lp);
                row.base.push(lp[tok as usize]);
                row.finish = self.ended(&row.tokens, &cfg.stop)?;
                next.push(tok);
            }
            if step + 1 == cfg.max_new_tokens {
                break;
            }
            let keep: Vec<usize> = (0..live.len())
                .filter(|&i| rows[live[i]].finish.is_none())
                .collect();
            if keep.is_empty() {
                break;
            }
            if (live.len() - keep.len()) * 8 >= live.len() {
                cache = cache.select(row_indices(&keep, &self.device));
                if let Some(s) = steer.as_deref_mut() {
                    s.select(&keep);
                }
                next = keep.iter().map(|&i| next[i]).collect();
                live = keep.iter().map(|&i| live[i]).collect();
            }
            // The steer's forward (a scorer's) needs only the chosen tokens, not the base
            // model's next log-probs: the two run at once.
            let step_batch = TokenBatch::step(&next, &self.device);
            let mut base_step = || read_f32(model.next_token_logprobs(&step_batch, &mut cache));
            logp = match steer.as_deref_mut() {
                None => base_step()?,
                Some(s) => {
                    let (lp, fed) = infalign_core::beside(base_step, || s.feed(&next));
                    fed?;
                    lp?
                }
            };
        }
        rows.into_iter()
            .enumerate()
            .map(|(r, row)| {
                let p = r / n;
                self.finish_sample(
                    &prompts[p],
                    first_index + p,
                    &ids[p],
                    row.tokens,
                    row.policy,
                    row.base,
                    row.step_kl,
                    row.finish.unwrap_or(Finish::Length),
                    &cfg.stop,
                )
            })
            .collect()
    }

    /// Whether a completion ends with its last token: an EOS token, or a stop string in its
    /// text (the token budget is the caller's).
    pub(crate) fn ended(
        &self,
        tokens: &[u32],
        stop: &[String],
    ) -> Result<Option<Finish>, DecodingError> {
        if tokens.last().is_some_and(|t| self.lm.eos_ids.contains(t)) {
            return Ok(Some(Finish::Eos));
        }
        if !stop.is_empty() {
            let text = self.lm.tokenizer.decode(tokens)?;
            if stop.iter().any(|s| text.contains(s.as_str())) {
                return Ok(Some(Finish::Stop));
            }
        }
        Ok(None)
    }

    /// Assembles a [`Sample`]: decodes the text and cuts it before a stop string.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn finish_sample(
        &self,
        prompt: &str,
        prompt_index: usize,
        prompt_ids: &[u32],
        tokens: Vec<u32>,
        policy_logprobs: Vec<f32>,
        base_logprobs: Vec<f32>,
        step_kl: Vec<f32>,
        finish: Finish,
        stop: &[String],
    ) -> Result<Sample, DecodingError> {
        let mut completion = self.lm.tokenizer.decode(&tokens)?;
        if finish == Finish::Stop
            && let Some(cut) = stop
                .iter()
                .filter_map(|s| completion.find(s.as_str()))
                .min()
        {
            completion.truncate(cut);
        }
        Ok(Sample {
            prompt: prompt.to_string(),
            prompt_index,
            prompt_ids: prompt_ids.to_vec(),
            terminal_index: tokens.len().checked_sub(1),
            tokens,
            completion,
            finish,
            policy_logprobs,
            base_logprobs,
            step_kl,
            reward: None,
        })
    }

    /// The model being decoded.
    pub fn model(&self) -> &LoadedModel {
        self.lm
    }

    /// The device it runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}
