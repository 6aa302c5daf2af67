//! Multi-objective prefix scoring (CD, docs/ALGORITHMS.md A.5.3): several prefix scorers, each
//! trained for its own reward, combined linearly at decode time,
//! `V_mix([x, y^t]) = Σ_i w_i V_i([x, y^t])`, with weights that may be negative and may change
//! between calls without retraining.
//!
//! Each scorer runs in lockstep with the base model on its own KV cache: it sees the same
//! prompts and the same chosen tokens, row for row. With a vocabulary-wide head the values of
//! every next token are ready before a token is chosen; the value of the prefix just extended by
//! token z is read from them (`V([x, y^t, z]) = head(h_t)[z]`), so tracking costs one scorer
//! forward per generated token.
//!
//! Blockwise CD needs a value only at the end of each block: [`ScorerMix::advance`] runs only the
//! backbone per token, and [`ScorerMix::read_block`] reads, per row, the one head entry the
//! block's value needs (`head(h_{t-1})[y_t]`, a dot product) instead of a vocabulary-wide row per
//! token.
//!
//! Invariant: rows are prompt-major like the base model's; `select` reorders scorer caches and
//! values exactly as the base cache is reordered.

use burn::tensor::{Device, Tensor};
use infalign_models::{KvCache, PrefixScorer, ScorerLayout, TokenBatch, weights::read_f32};

use crate::DecodingError;
use crate::generate::row_indices;

struct Track<'a> {
    scorer: &'a PrefixScorer,
    weight: f32,
    cache: KvCache,
    /// Head output after the current prefix, rows × width, read back to the host (empty after
    /// [`ScorerMix::advance`], or when the values stay on the device).
    next: Vec<f32>,
    /// The same where it was computed, `[rows, width]`, when the values stay on the device.
    next_t: Option<Tensor<2>>,
    width: usize,
    /// Value of each row's current prefix.
    last: Vec<f32>,
    /// The backbone's hidden state after each row's current prefix, `[rows, d]` (`None` before
    /// the first prefill).
    hidden: Option<Tensor<2>>,
    /// Hidden states after each token [`ScorerMix::advance`] fed since the last block was read.
    pending: Vec<Tensor<2>>,
}

/// A weighted sum of prefix scorers, tracking the rows being decoded.
pub struct ScorerMix<'a> {
    tracks: Vec<Track<'a>>,
    device: Device,
    /// Whether head outputs are read back to the host at every step (what the host-side
    /// [`ScorerMix::next_values`] and [`ScorerMix::candidate_values`] read); off, they stay on
    /// the device for [`ScorerMix::next_values_on_device`]. Asked for by
    /// [`ScorerMix::keep_values_on_device`], latched by [`ScorerMix::prefill`] into
    /// `values_on_host`.
    want_values_on_host: bool,
    values_on_host: bool,
}

impl std::fmt::Debug for ScorerMix<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ScorerMix(weights {:?})", self.weights())
    }
}

impl<'a> ScorerMix<'a> {
    /// `Σ_i w_i V_i` over `(w_i, scorer_i)`; every scorer must share the base vocabulary.
    pub fn new(
        scorers: Vec<(f32, &'a PrefixScorer)>,
        vocab: usize,
        device: Device,
    ) -> Result<Self, DecodingError> {
        if scorers.is_empty() {
            return Err(DecodingError::InvalidParameter {
                field: "scorer",
                message: "controlled decoding needs at least one --scorer".into(),
            });
        }
        for (w, s) in &scorers {
            let v = s.backbone().config().vocab_size();
            if v != vocab {
                return Err(DecodingError::InvalidParameter {
                    field: "scorer",
                    message: format!("a scorer has vocab_size {v}, the base model {vocab}"),
                });
            }
            if !w.is_finite() {
                return Err(DecodingError::InvalidParameter {
                    field: "weight",
                    message: format!("{w} is not finite"),
                });
            }
        }
        Ok(Self {
            tracks: scorers
                .into_iter()
                .map(|(weight, scorer)| Track {
                    scorer,
                    weight,
                    cache: scorer.new_cache(),
                    next_t: None,
                    next: Vec::new(),
                    width: 0,
                    last: Vec::new(),
                    hidden: None,
                    pending: Vec::new(),
                })
                .collect(),
            device,
            want_values_on_host: true,
            values_on_host: true,
        })
    }

    /// Keeps the vocabulary-wide head outputs on the device instead of reading them back every
    /// step (for sampling on the device: [`ScorerMix::next_values_on_device`]); takes effect at
    /// the next [`ScorerMix::prefill`]. Only for vocabulary-wide scorers, whose values of the
    /// chosen tokens are then gathered on the device. Returns whether it took effect.
    pub fn keep_values_on_device(&mut self, yes: bool) -> bool {
        if yes && !self.is_vocab_wide() {
            return false;
        }
        self.want_values_on_host = !yes;
        true
    }

    /// The current weights.
    pub fn weights(&self) -> Vec<f32> {
        self.tracks.iter().map(|t| t.weight).collect()
    }

    /// Changes the weights (one per scorer); takes effect at the next token.
    pub fn set_weights(&mut self, weights: &[f32]) -> Result<(), DecodingError> {
        if weights.len() != self.tracks.len() {
            return Err(DecodingError::InvalidParameter {
                field: "weight",
                message: format!(
                    "{} weights for {} scorers",
                    weights.len(),
                    self.tracks.len()
                ),
            });
        }
        for (t, &w) in self.tracks.iter_mut().zip(weights) {
            t.weight = w;
        }
        Ok(())
    }

    /// Whether every scorer gives values of all next tokens in one pass.
    pub fn is_vocab_wide(&self) -> bool {
        self.tracks
            .iter()
            .all(|t| t.scorer.layout() == ScorerLayout::VocabWide)
    }

    /// Starts tracking: `ids` are the prompts, each repeated `repeat` times (prompt-major).
    pub fn prefill(
        &mut self,
        ids: &[Vec<u32>],
        repeat: usize,
        pad_id: u32,
    ) -> Result<(), DecodingError> {
        let batch = TokenBatch::left_padded(ids, pad_id, &self.device)?;
        self.values_on_host = self.want_values_on_host;
        for t in &mut self.tracks {
            let mut cache = t.scorer.new_cache();
            let hidden = t.scorer.last_hidden(&batch, &mut cache);
            let out = t.scorer.head_outputs(hidden.clone());
            t.width = out.dims()[1];
            t.hidden = Some(if repeat > 1 {
                repeat_rows(hidden, repeat, &self.device)
            } else {
                hidden
            });
            if self.values_on_host {
                t.next = read_f32(out)?
                    .chunks(t.width)
                    .flat_map(|row| std::iter::repeat_n(row, repeat).flatten().copied())
                    .collect();
                t.next_t = None;
            } else {
                t.next = Vec::new();
                t.next_t = Some(if repeat > 1 {
                    repeat_rows(out, repeat, &self.device)
                } else {
                    out
                });
            }
            t.cache = if repeat > 1 {
                cache.repeat_interleave(repeat)
            } else {
                cache
            };
            t.last = vec![0.0; ids.len() * repeat];
            if t.scorer.layout() == ScorerLayout::Scalar {
                t.last = t.next.clone();
            }
        }
        Ok(())
    }

    /// Appends one token per row.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<(), DecodingError> {
        if self.tracks.iter().any(|t| {
            !t.pending.is_empty() || (t.next.is_empty() && t.next_t.is_none() && t.width > 0)
        }) {
            return Err(DecodingError::InvalidParameter {
                field: "scorer",
                message: "feed after advance: read the block (read_block) and prefill again \
                          before feeding token by token"
                    .into(),
            });
        }
        let batch = TokenBatch::step(tokens, &self.device);
        for t in &mut self.tracks {
            if t.scorer.layout() == ScorerLayout::VocabWide {
                if self.values_on_host {
                    for (r, &tok) in tokens.iter().enumerate() {
                        t.last[r] = t.next[r * t.width + tok as usize];
                    }
                } else if let Some(next) = t.next_t.take() {
                    let ids: Vec<usize> = tokens.iter().map(|&z| z as usize).collect();
                    let ids = row_indices(&ids, &self.device).reshape([tokens.len(), 1]);
                    t.last = read_f32(next.gather(1, ids))?;
                }
            }
            let hidden = t.scorer.last_hidden(&batch, &mut t.cache);
            let out = t.scorer.head_outputs(hidden.clone());
            if self.values_on_host {
                t.next = read_f32(out)?;
            } else {
                t.next_t = Some(out);
            }
            t.hidden = Some(hidden);
            if t.scorer.layout() == ScorerLayout::Scalar {
                t.last.clone_from(&t.next);
            }
        }
        Ok(())
    }

    /// Keeps rows `rows` (in that order; rows may repeat).
    pub fn select(&mut self, rows: &[usize]) {
        let idx = row_indices(rows, &self.device);
        // Rows leaving a batch (strictly increasing) move within the cache's own buffers.
        let leaving = rows.windows(2).all(|w| w[0] < w[1]);
        for t in &mut self.tracks {
            if leaving {
                t.cache.retain(rows, &self.device);
            } else {
                t.cache = t.cache.select(idx.clone());
            }
            t.hidden = t.hidden.take().map(|h| h.select(0, idx.clone()));
            t.next_t = t.next_t.take().map(|n| n.select(0, idx.clone()));
            for h in &mut t.pending {
                *h = h.clone().select(0, idx.clone());
            }
            if !t.next.is_empty() {
                t.next = rows
                    .iter()
                    .flat_map(|&r| t.next[r * t.width..(r + 1) * t.width].iter().copied())
                    .collect();
            }
            t.last = rows.iter().map(|&r| t.last[r]).collect();
        }
    }

    /// An error unless the head outputs of every row are on the host, as
    /// [`ScorerMix::next_values`] and [`ScorerMix::candidate_values`] read them.
    fn check_values_on_host(&self, rows: usize) -> Result<(), DecodingError> {
        match self.tracks.iter().all(|t| t.next.len() >= rows * t.width) {
            true => Ok(()),
            false => Err(DecodingError::InvalidParameter {
                field: "scorer",
                message: "next-token values read on the host while they are on the device \
                          (keep_values_on_device), after advance or before prefill"
                    .into(),
            }),
        }
    }

    /// `Σ_i w_i V_i(prefix + z)` for every next token z of `row` (vocabulary-wide scorers).
    pub fn next_values(&self, row: usize) -> Result<Vec<f32>, DecodingError> {
        self.check_values_on_host(row + 1)?;
        let width = self.tracks[0].width;
        let mut out = vec![0.0f32; width];
        for t in &self.tracks {
            let v = &t.next[row * t.width..(row + 1) * t.width];
            for (o, &x) in out.iter_mut().zip(v) {
                *o += t.weight * x;
            }
        }
        Ok(out)
    }

    /// `Σ_i w_i V_i(prefix + z)` for every next token z of every row, `[rows, vocab]`, where the
    /// scorers computed it (vocabulary-wide scorers; summed in the order of
    /// [`ScorerMix::next_values`]).
    pub fn next_values_on_device(&self) -> Result<Tensor<2>, DecodingError> {
        let mut sum: Option<Tensor<2>> = None;
        for t in &self.tracks {
            let v = t
                .next_t
                .clone()
                .ok_or_else(|| DecodingError::InvalidParameter {
                    field: "scorer",
                    message: "values read before prefill or after advance".into(),
                })?
                * t.weight;
            sum = Some(match sum {
                None => v,
                Some(s) => s + v,
            });
        }
        sum.ok_or_else(|| DecodingError::InvalidParameter {
            field: "scorer",
            message: "no scorers".into(),
        })
    }

    /// `Σ_i w_i V_i(prefix + z)` for each candidate token z of each row (`candidates[r]`, the
    /// same number for every row). Vocabulary-wide scorers read the values they hold; scalar
    /// scorers run one look-ahead step of all candidates on a copy of their cache, which is
    /// left as it was.
    pub fn candidate_values(
        &self,
        candidates: &[Vec<u32>],
    ) -> Result<Vec<Vec<f32>>, DecodingError> {
        let k = candidates.first().map_or(0, Vec::len);
        if candidates.iter().any(|c| c.len() != k) {
            return Err(DecodingError::InvalidParameter {
                field: "candidates",
                message: "every row needs the same number of candidate tokens".into(),
            });
        }
        let mut out = vec![vec![0.0f32; k]; candidates.len()];
        if k == 0 {
            return Ok(out);
        }
        if self.is_vocab_wide() {
            self.check_values_on_host(candidates.len())?;
        }
        for t in &self.tracks {
            let values: Vec<f32> = match t.scorer.layout() {
                ScorerLayout::VocabWide => candidates
                    .iter()
                    .enumerate()
                    .flat_map(|(r, c)| c.iter().map(move |&z| (r, z)))
                    .map(|(r, z)| t.next[r * t.width + z as usize])
                    .collect(),
                ScorerLayout::Scalar => {
                    let mut cache = t.cache.repeat_interleave(k);
                    let flat: Vec<u32> = candidates.iter().flatten().copied().collect();
                    let batch = TokenBatch::step(&flat, &self.device);
                    read_f32(t.scorer.forward_last(&batch, &mut cache))?
                }
            };
            for (o, v) in out.iter_mut().flatten().zip(values) {
                *o += t.weight * v;
            }
        }
        Ok(out)
    }

    /// Advances every scorer by one token per row, like [`ScorerMix::feed`], but without the
    /// head: only the backbone's hidden state is kept, for [`ScorerMix::read_block`] to read the
    /// values a block needs at its end. Afterwards [`ScorerMix::next_values`] and
    /// [`ScorerMix::feed`] are unavailable (`feed` is an error) until the next
    /// [`ScorerMix::prefill`].
    pub fn advance(&mut self, tokens: &[u32]) -> Result<(), DecodingError> {
        let batch = TokenBatch::step(tokens, &self.device);
        for t in &mut self.tracks {
            t.pending.push(t.scorer.last_hidden(&batch, &mut t.cache));
            t.next.clear();
            t.next_t = None;
        }
        Ok(())
    }

    /// After [`ScorerMix::advance`] has fed `block[r]` (all rows the same length) token by
    /// token, sets the value of each row's prefix through its last real token, `block[r][end]`
    /// for `ends[r] = Some(end)`; rows with `None` keep their value. Reads one head entry per
    /// row, `head(h_{t−1})[y_t]` (vocabulary-wide) or `head(h_t)` (scalar), instead of the
    /// vocabulary-wide row per token that [`ScorerMix::feed`] computes: the same values up to
    /// the order of summation.
    pub fn read_block(
        &mut self,
        block: &[Vec<u32>],
        ends: &[Option<usize>],
    ) -> Result<(), DecodingError> {
        let len = block.first().map_or(0, Vec::len);
        let rows = block.len();
        for t in &mut self.tracks {
            if t.pending.len() != len
                || ends.len() != rows
                || ends.iter().flatten().any(|&e| e >= len)
            {
                return Err(DecodingError::InvalidParameter {
                    field: "block",
                    message: format!(
                        "{} tokens advanced for a block of {len}, {} ends for {rows} rows",
                        t.pending.len(),
                        ends.len()
                    ),
                });
            }
            if len == 0 {
                continue;
            }
            let previous = t
                .hidden
                .take()
                .ok_or_else(|| DecodingError::InvalidParameter {
                    field: "scorer",
                    message: "a block read before prefill".into(),
                })?;
            // Position 0 holds the state before the block, position j + 1 the state after
            // `block[r][j]`.
            let mut states = vec![previous];
            states.append(&mut t.pending);
            let states = Tensor::stack::<3>(states, 1);
            let d = states.dims()[2];
            let states = states.reshape([rows * (len + 1), d]);
            let at = |offset: usize| -> Tensor<2> {
                let idx: Vec<usize> = ends
                    .iter()
                    .enumerate()
                    .map(|(r, e)| r * (len + 1) + e.map_or(0, |e| e + offset))
                    .collect();
                states.clone().select(0, row_indices(&idx, &self.device))
            };
            let values = match t.scorer.layout() {
                // V([x, y^t]) = head(h_{t-1})[y_t]: the state before each row's last token.
                ScorerLayout::VocabWide => {
                    let last: Vec<usize> = ends
                        .iter()
                        .zip(block)
                        .map(|(e, b)| e.map_or(0, |e| b[e] as usize))
                        .collect();
                    t.scorer
                        .token_values(at(0), row_indices(&last, &self.device))
                }
                // V([x, y^t]) = head(h_t): the state after it.
                ScorerLayout::Scalar => t.scorer.head_outputs(at(1)).reshape([rows]),
            };
            let values = read_f32(values.reshape([rows, 1]))?;
            for ((last, v), e) in t.last.iter_mut().zip(values).zip(ends) {
                if e.is_some() {
                    *last = v;
                }
            }
            t.hidden = Some(
                states
                    .reshape([rows, len + 1, d])
                    .narrow(1, len, 1)
                    .reshape([rows, d]),
            );
        }
        Ok(())
    }

    /// `Σ_i w_i V_i` of `row`'s current prefix.
    pub fn value(&self, row: usize) -> f32 {
        self.tracks.iter().map(|t| t.weight * t.last[row]).sum()
    }
}

/// Rows of `x` each repeated `n` times in place (`r0, r0, …, r1, r1, …`).
fn repeat_rows(x: Tensor<2>, n: usize, device: &Device) -> Tensor<2> {
    let rows = x.dims()[0];
    let idx: Vec<usize> = (0..rows * n).map(|i| i / n).collect();
    x.select(0, row_indices(&idx, device))
}
