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

use crate::device_sampler::sample_on_device;
use crate::sampler::{SamplingConfig, process_logprobs, sample_token, sample_token_with_kl};
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

/// The fewest rows a part of a chunk decodes when [`Generator::split_for_cores`] splits the
/// chunk's samples: below that, one chunk whose matrix products split their columns over the
/// cores reads each weight once a step instead of once per core, which is what bounds small
/// batches of a large model.
const MIN_ROWS_PER_PART: usize = 8;

/// The samples of `parts` (decoded in that order, each prompt-major within its part) in
/// prompt-major order over all `prompts`, `n` each.
fn prompt_major(
    parts: &[Chunk<'_>],
    done: Vec<Vec<Sample>>,
    prompts: usize,
    n: usize,
) -> Vec<Sample> {
    let mut at: Vec<Option<Sample>> = (0..prompts * n).map(|_| None).collect();
    for ((first, _, samples), part) in parts.iter().zip(done) {
        let width = samples.len();
        for (r, sample) in part.into_iter().enumerate() {
            at[(first + r / width) * n + samples.start + r % width] = Some(sample);
        }
    }
    at.into_iter().flatten().collect()
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
    fn adjust(&self, row: usize, base_logp: &[f32]) -> Result<Vec<f32>, DecodingError>;
    /// Called when rows leave the batch (their completions ended): keep the rows `keep`, in
    /// that order, before the next [`Steer::feed`].
    fn select(&mut self, keep: &[usize]);
    /// Called before [`Steer::prefill`] with whether the generator samples on the device;
    /// returns whether this steer will then adjust there ([`Steer::adjust_on_device`], instead
    /// of [`Steer::prepare`] and [`Steer::adjust`], which are then not called). By default it
    /// cannot, and the generator samples on the host.
    fn use_device(&mut self, yes: bool) -> bool {
        let _ = yes;
        false
    }
    /// The log-probs to sample every row from, `[rows, vocab]` and normalised, given the base
    /// log-probs where they were computed; only after [`Steer::use_device`] returned true.
    fn adjust_on_device(&self, base_logp: Tensor<2>) -> Result<Tensor<2>, DecodingError> {
        let _ = base_logp;
        Err(DecodingError::InvalidParameter {
            field: "steer",
            message: "this steer adjusts log-probs on the host only".into(),
        })
    }
}

/// The batch positions `rows` as an index tensor, for [`infalign_models::KvCache::select`].
pub(crate) fn row_indices(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    let ids: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::from_data(TensorData::new(ids, [rows.len()]), device)
}

/// Whether a stop string appears in the text of `tokens`, looking only at a tail: checked after
/// every token, a stop string that appears now overlaps the last token's text, so the decoded
/// tail needs, before the last token's text, as many bytes as the longest stop string, plus room
/// for what decoding a tail may change at its start (a character cut in the middle becomes
/// U+FFFD, a leading space may be dropped). The window doubles until it is that long or holds
/// every token: a step costs the decoding of a few tokens, not of the whole completion.
fn stop_in_tail(
    decode: impl Fn(&[u32]) -> Result<String, DecodingError>,
    tokens: &[u32],
    stop: &[String],
) -> Result<bool, DecodingError> {
    let Some(longest) = stop.iter().map(String::len).max() else {
        return Ok(false);
    };
    // U+FFFD for each of up to three bytes of a cut character, and a dropped space.
    const START_SLACK: usize = 3 * 3 + 1;
    // The last token's text alone, at least as long as in context (U+FFFD is 3 bytes).
    let last = match tokens.last() {
        Some(t) => decode(std::slice::from_ref(t))?.len(),
        None => return Ok(false),
    };
    let mut window = 4usize;
    loop {
        let start = tokens.len().saturating_sub(window);
        let text = decode(&tokens[start..])?;
        if start == 0 || text.len() >= last + longest + START_SLACK {
            return Ok(stop.iter().any(|s| text.contains(s.as_str())));
        }
        window *= 2;
    }
}

/// Generates completions from a loaded model.
#[derive(Debug)]
pub struct Generator<'a> {
    lm: &'a LoadedModel,
    device: Device,
    /// Where tokens are drawn: `None` decides by the device (the host on the CPU).
    device_sampling: Option<bool>,
    /// The cores a decode splits its samples over: `None` decides by the device and the caller
    /// ([`Generator::split_for_cores`]).
    cores: Option<usize>,
}

/// A step's next-token log-probs, `[rows, vocab]`: read back to the host (row-major), or left
/// on the device for [`crate::device_sampler`].
pub(crate) enum StepLogp {
    Host(Vec<f32>),
    Device(Box<Tensor<2>>),
}

impl StepLogp {
    /// The model's log-probs `logp`, read back unless `on_device`.
    pub(crate) fn new(logp: Tensor<2>, on_device: bool) -> Result<Self, DecodingError> {
        Ok(if on_device {
            Self::Device(Box::new(logp))
        } else {
            Self::Host(read_f32(logp)?)
        })
    }

    /// Rows `rows` of `logp` (`vocab` wide), in that order (rows may repeat), kept where they
    /// are: on the host, or on `device`.
    pub(crate) fn rows(self, rows: &[usize], vocab: usize, device: &Device) -> Self {
        match self {
            Self::Host(v) => Self::Host(
                rows.iter()
                    .flat_map(|&r| v[r * vocab..(r + 1) * vocab].iter().copied())
                    .collect(),
            ),
            Self::Device(t) => Self::Device(Box::new(t.select(0, row_indices(rows, device)))),
        }
    }
}

/// Each row's uniform for this step's draw, from its own stream: none (0, unused) for a
/// finished row or a greedy step, exactly as the host sampler consumes its streams.
pub(crate) fn step_uniforms<'r>(
    streams: impl Iterator<Item = (bool, &'r mut rand_chacha::ChaCha8Rng)>,
    sampling: &SamplingConfig,
) -> Vec<f64> {
    use rand::Rng;
    streams
        .map(|(finished, rng)| {
            if finished || sampling.greedy {
                0.0
            } else {
                rng.random()
            }
        })
        .collect()
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
        Self {
            lm,
            device,
            device_sampling: None,
            cores: None,
        }
    }

    /// Splits a decode's samples over `cores` parts at most (when its prompt chunks are fewer,
    /// each keeping at least 8 rows), instead of the cores the caller may use on the CPU (1
    /// elsewhere). The samples do not depend on it: for tests, and to compare the speed of the
    /// two ways.
    pub fn cores(mut self, cores: usize) -> Self {
        self.cores = Some(cores.max(1));
        self
    }

    /// Draws tokens on the device ([`crate::sample_on_device`]) when `yes`, on the host when not,
    /// whatever the device. By default they are drawn on the host on the CPU (burn-flex, where
    /// the log-probs already are in host memory and the host sampler stops at the drawn token)
    /// and on the device elsewhere. A steer adjusts on the device when it can
    /// ([`Steer::use_device`]: tokenwise CD with vocabulary-wide scorers and no candidate
    /// restriction), else every step is drawn on the host.
    pub fn sample_on_device(mut self, yes: bool) -> Self {
        self.device_sampling = Some(yes);
        self
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
        match steer {
            // A steer tracks the rows of one batch: its chunks go one after the other.
            Some(s) => {
                let mut out = Vec::with_capacity(prompts.len() * cfg.n);
                for (first, ids, samples) in &chunks {
                    out.extend(run(*first, ids, samples.clone(), Some(&mut *s))?);
                }
                Ok(out)
            }
            // Chunks are independent (each sample has its own random stream): on the CPU they
            // decode in parallel, with the same result as one after the other.
            None => {
                let parts = self.split_for_cores(chunks);
                let done = infalign_core::run_on_workers(&self.device, parts.len(), |c| {
                    let (first, ids, samples) = &parts[c];
                    run(*first, ids, samples.clone(), None)
                })?;
                Ok(prompt_major(&parts, done, prompts.len(), cfg.n))
            }
        }
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

    /// On the CPU, when `chunks` are fewer than the cores the caller may use
    /// ([`infalign_core::job_threads`], or [`Generator::cores`]), each chunk's samples split into blocks, so that every
    /// core decodes a part of the rows on its own (single-threaded, as the jobs of
    /// [`infalign_core::run_on_workers`] run), as long as every part keeps at least
    /// [`MIN_ROWS_PER_PART`] rows. A chunk's prompts stay together (a prefill's padding changes
    /// rounding) and every sample keeps its own random stream, so the samples are those of the
    /// unsplit chunks; [`prompt_major`] puts them back in order.
    fn split_for_cores<'c>(&self, chunks: Vec<Chunk<'c>>) -> Vec<Chunk<'c>> {
        let cores = self.cores.unwrap_or_else(|| {
            if infalign_core::is_flex(&self.device) {
                infalign_core::job_threads()
            } else {
                1
            }
        });
        if chunks.is_empty() || chunks.len() >= cores {
            return chunks;
        }
        let per_chunk = cores.div_ceil(chunks.len());
        chunks
            .into_iter()
            .flat_map(|(first, ids, samples)| {
                let (start, len) = (samples.start, samples.len());
                let parts = per_chunk
                    .min(ids.len() * len / MIN_ROWS_PER_PART)
                    .min(len)
                    .max(1);
                (0..parts).map(move |p| {
                    (
                        first,
                        ids,
                        start + len * p / parts..start + len * (p + 1) / parts,
                    )
                })
            })
            .collect()
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
        // Off the CPU the log-probs stay on the device and are sampled there, steered there too
        // when the steer can (otherwise everything is read back and drawn on the host).
        let on_device = match steer.as_deref_mut() {
            Some(s) => s.use_device(self.samples_on_device()),
            None => self.samples_on_device(),
        };
        if let Some(s) = steer.as_deref_mut() {
            s.prefill(ids, n, self.lm.pad_id)?;
        }
        let batch = TokenBatch::left_padded(ids, self.lm.pad_id, &self.device)?;
        let mut cache = model.new_cache();
        let prefill = model.next_token_logprobs(&batch, &mut cache);
        let vocab = prefill.dims()[1];
        // Rows are prompt-major: prompt i, samples 0..n.
        let rep: Vec<usize> = (0..ids.len() * n).map(|r| r / n).collect();
        let mut logp = StepLogp::new(prefill, on_device)?.rows(&rep, vocab, &self.device);
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
            let next = match logp {
                StepLogp::Host(ref logp) => {
                    self.draw_on_host(logp, vocab, &live, &mut rows, cfg, steer.as_deref_mut())?
                }
                StepLogp::Device(logp) => {
                    let steered = match steer.as_deref() {
                        Some(s) => Some(s.adjust_on_device((*logp).clone())?),
                        None => None,
                    };
                    self.draw_on_device(*logp, steered, &live, &mut rows, cfg)?
                }
            };
            let mut next = next;
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
                cache.retain(&keep, &self.device);
                if let Some(s) = steer.as_deref_mut() {
                    s.select(&keep);
                }
                next = keep.iter().map(|&i| next[i]).collect();
                live = keep.iter().map(|&i| live[i]).collect();
            }
            // The steer's forward (a scorer's) needs only the chosen tokens, not the base
            // model's next log-probs: the two run at once.
            let step_batch = TokenBatch::step(&next, &self.device);
            let mut base_step = || {
                StepLogp::new(
                    model.next_token_logprobs(&step_batch, &mut cache),
                    on_device,
                )
            };
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

    /// Whether this generator samples on the device (off the CPU, or when asked to with
    /// [`Generator::sample_on_device`]) rather than reading every row's log-probs back.
    pub(crate) fn samples_on_device(&self) -> bool {
        self.device_sampling
            .unwrap_or_else(|| !infalign_core::is_flex(&self.device))
    }

    /// One step on the host: every live row's token drawn from its log-probs (`logp`, one
    /// `vocab`-long row per batch position), steered when a steer is given; returns the tokens
    /// to feed (padding for finished rows).
    fn draw_on_host(
        &self,
        logp: &[f32],
        vocab: usize,
        live: &[usize],
        rows: &mut [Row],
        cfg: &GenerationConfig,
        mut steer: Option<&mut (dyn Steer + '_)>,
    ) -> Result<Vec<u32>, DecodingError> {
        if let Some(s) = steer.as_deref_mut() {
            s.prepare(logp, vocab)?;
        }
        self.each_unfinished(live, rows, cfg, |i, row| {
            let lp = &logp[i * vocab..(i + 1) * vocab];
            // The distribution this token is drawn from, and its exact KL to the base.
            let steered = match steer.as_deref() {
                Some(s) => Some(s.adjust(i, lp)?),
                None => None,
            };
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
                if identity && steered.is_none() {
                    let (tok, l) = sample_token(policy, &SamplingConfig::default(), &mut row.rng);
                    (tok, l, 0.0)
                } else {
                    sample_token_with_kl(policy, lp, &mut row.rng)
                }
            };
            Ok((tok, policy_lp, lp[tok as usize], kl as f32))
        })
    }

    /// One step on the device ([`crate::device_sampler`]), from `steered` when a steer adjusted
    /// the base log-probs: each unfinished row draws its uniform from its own stream, as the
    /// host sampler would; only the tokens and three numbers per row come back.
    fn draw_on_device(
        &self,
        logp: Tensor<2>,
        steered: Option<Tensor<2>>,
        live: &[usize],
        rows: &mut [Row],
        cfg: &GenerationConfig,
    ) -> Result<Vec<u32>, DecodingError> {
        // `live` holds distinct rows: each stream is borrowed once.
        let mut streams: Vec<Option<&mut Row>> = rows.iter_mut().map(Some).collect();
        let uniforms = step_uniforms(
            live.iter().map(|&r| {
                let row = streams[r].take().expect("live rows are distinct");
                (row.finish.is_some(), &mut row.rng)
            }),
            &cfg.sampling,
        );
        let draws = sample_on_device(logp, steered, &cfg.sampling, &uniforms)?;
        self.each_unfinished(live, rows, cfg, |i, _| {
            Ok((
                draws.tokens[i],
                draws.policy_logprobs[i],
                draws.base_logprobs[i],
                draws.kl[i],
            ))
        })
    }

    /// The step's tokens to feed, batch position by position: for each unfinished row the token
    /// `draw(position, row)` returns with its policy and base log-probs and the step's KL
    /// (appended to the row, which is then checked for its end), padding for finished rows.
    fn each_unfinished(
        &self,
        live: &[usize],
        rows: &mut [Row],
        cfg: &GenerationConfig,
        mut draw: impl FnMut(usize, &mut Row) -> Result<(u32, f32, f32, f32), DecodingError>,
    ) -> Result<Vec<u32>, DecodingError> {
        let mut next = Vec::with_capacity(live.len());
        for (i, &r) in live.iter().enumerate() {
            let row = &mut rows[r];
            if row.finish.is_some() {
                next.push(self.lm.pad_id);
                continue;
            }
            let (tok, policy_lp, base_lp, kl) = draw(i, row)?;
            row.step_kl.push(kl);
            row.tokens.push(tok);
            row.policy.push(policy_lp);
            row.base.push(base_lp);
            row.finish = self.ended(&row.tokens, &cfg.stop)?;
            next.push(tok);
        }
        Ok(next)
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
        if stop_in_tail(|t| Ok(self.lm.tokenizer.decode(t)?), tokens, stop)? {
            return Ok(Some(Finish::Stop));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stop_string_is_found_in_the_tail_as_in_the_whole_text() {
        // Tokens decode to pieces of 1 to 9 bytes, some cutting a multi-byte character in two
        // (decoded alone, the cut half becomes U+FFFD); after every token the tail check must
        // agree with searching the whole text.
        let pieces: Vec<Vec<u8>> = vec![
            b"a".to_vec(),
            b" the".to_vec(),
            "é".as_bytes()[..1].to_vec(),
            "é".as_bytes()[1..].to_vec(),
            b"xyzzy end".to_vec(),
            b"\n".to_vec(),
            "€".as_bytes().to_vec(),
            b" ".to_vec(),
            b"b".to_vec(),
            // A long token: a stop string ending in it may start many tokens earlier.
            [b"\n".as_slice(), &[b'-'; 40]].concat(),
        ];
        let decode = |t: &[u32]| -> Result<String, DecodingError> {
            let bytes: Vec<u8> = t.iter().flat_map(|&i| pieces[i as usize].clone()).collect();
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        use rand::{Rng, SeedableRng};
        // Stops spanning up to 8 tokens, some ending inside the long token.
        let stops: Vec<Vec<String>> = vec![
            vec!["é".into(), "end\n".into()],
            vec!["the a the".into()],
            vec!["€€".into(), "a a".into()],
            vec!["a b a\n---".into()],
            vec!["b a b a b\n-".into()],
            vec!["ab ba".into()],
        ];
        let mut found = 0;
        for _ in 0..300 {
            let tokens: Vec<u32> = (0..60)
                .map(|_| rng.random_range(0..pieces.len() as u32))
                .collect();
            for stop in &stops {
                for end in 1..=tokens.len() {
                    let whole = decode(&tokens[..end]).unwrap();
                    let want = stop.iter().any(|s| whole.contains(s.as_str()));
                    assert_eq!(stop_in_tail(decode, &tokens[..end], stop).unwrap(), want);
                    if want {
                        found += 1;
                        break; // generation stops at the first step a stop string appears
                    }
                }
            }
        }
        assert!(found > 300, "the test must exercise stops: {found}");
        // The case a window of the last few tokens misses: the stop starts 5 tokens before the
        // long last token, whose 41 bytes make any tail look long enough.
        let tokens = [0, 7, 8, 7, 0, 9];
        let stop = vec!["a b a\n".to_string()];
        assert!(decode(&tokens).unwrap().contains("a b a\n"));
        assert!(stop_in_tail(decode, &tokens, &stop).unwrap());
        assert!(!stop_in_tail(decode, &[0, 1], &[]).unwrap());
    }
}
