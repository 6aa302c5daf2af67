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
//! Invariant: rows are prompt-major like the base model's; `select` reorders scorer caches and
//! values exactly as the base cache is reordered.

use burn::tensor::Device;
use infalign_models::{KvCache, PrefixScorer, ScorerLayout, TokenBatch, weights::read_f32};

use crate::DecodingError;

struct Track<'a> {
    scorer: &'a PrefixScorer,
    weight: f32,
    cache: KvCache,
    /// Head output after the current prefix, rows × width.
    next: Vec<f32>,
    width: usize,
    /// Value of each row's current prefix.
    last: Vec<f32>,
}

/// A weighted sum of prefix scorers, tracking the rows being decoded.
pub struct ScorerMix<'a> {
    tracks: Vec<Track<'a>>,
    device: Device,
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
                    next: Vec::new(),
                    width: 0,
                    last: Vec::new(),
                })
                .collect(),
            device,
        })
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
        for t in &mut self.tracks {
            let mut cache = t.scorer.new_cache();
            let out = t.scorer.forward_last(&batch, &mut cache);
            t.width = out.dims()[1];
            let out = read_f32(out)?;
            t.next = out
                .chunks(t.width)
                .flat_map(|row| std::iter::repeat_n(row, repeat).flatten().copied())
                .collect();
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
        let batch = TokenBatch::step(tokens, &self.device);
        for t in &mut self.tracks {
            if t.scorer.layout() == ScorerLayout::VocabWide {
                for (r, &tok) in tokens.iter().enumerate() {
                    t.last[r] = t.next[r * t.width + tok as usize];
                }
            }
            t.next = read_f32(t.scorer.forward_last(&batch, &mut t.cache))?;
            if t.scorer.layout() == ScorerLayout::Scalar {
                t.last.clone_from(&t.next);
            }
        }
        Ok(())
    }

    /// Keeps rows `rows` (in that order; rows may repeat).
    pub fn select(&mut self, rows: &[usize]) {
        let idx = crate::generate::row_indices(rows, &self.device);
        for t in &mut self.tracks {
            t.cache = t.cache.select(idx.clone());
            t.next = rows
                .iter()
                .flat_map(|&r| t.next[r * t.width..(r + 1) * t.width].iter().copied())
                .collect();
            t.last = rows.iter().map(|&r| t.last[r]).collect();
        }
    }

    /// `Σ_i w_i V_i(prefix + z)` for every next token z of `row` (vocabulary-wide scorers).
    pub fn next_values(&self, row: usize) -> Vec<f32> {
        let width = self.tracks[0].width;
        let mut out = vec![0.0f32; width];
        for t in &self.tracks {
            let v = &t.next[row * t.width..(row + 1) * t.width];
            for (o, &x) in out.iter_mut().zip(v) {
                *o += t.weight * x;
            }
        }
        out
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

    /// `Σ_i w_i V_i` of `row`'s current prefix.
    pub fn value(&self, row: usize) -> f32 {
        self.tracks.iter().map(|t| t.weight * t.last[row]).sum()
    }
}
