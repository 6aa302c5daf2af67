//! Sample files: JSONL rows with TRL's keys (`prompt`, `completion`, `reward`) plus whatever
//! else a command wrote (`tokens`, `finish`, ...), read and written without losing keys.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Result, bail};
use infalign_models::LoadedModel;
use serde_json::Value;

/// One row of a samples file.
#[derive(Debug, Clone)]
pub struct SampleRow {
    /// The whole JSON object (written back with any added keys).
    pub value: Value,
    /// Its line in the file it was read from (1-based).
    pub line: usize,
}

impl SampleRow {
    pub fn prompt(&self) -> &str {
        self.value["prompt"].as_str().unwrap_or_default()
    }
    pub fn completion(&self) -> &str {
        self.value["completion"].as_str().unwrap_or_default()
    }
    pub fn reward(&self) -> Option<f64> {
        self.value["reward"].as_f64()
    }
    /// The completion's token ids, if the row has `tokens`: an error unless every entry is an
    /// integer in `0..2³²`.
    pub fn tokens(&self) -> std::result::Result<Option<Vec<u32>>, String> {
        let Some(list) = self.value.get("tokens") else {
            return Ok(None);
        };
        let Some(list) = list.as_array() else {
            return Err("`tokens` is not a list".into());
        };
        list.iter()
            .map(|t| {
                t.as_u64()
                    .and_then(|t| u32::try_from(t).ok())
                    .ok_or_else(|| format!("`tokens` holds {t}, not a token id"))
            })
            .collect::<std::result::Result<Vec<u32>, String>>()
            .map(Some)
    }

    /// The row as the model reads it: the prompt's ids and the completion's (its `tokens`, else
    /// the completion encoded), checked against the model's vocabulary and context; an error
    /// naming `path` and the row's line otherwise (an id past the vocabulary would index outside
    /// the embedding table, a row past the context outside the position table).
    pub fn model_ids(&self, path: &Path, lm: &LoadedModel) -> Result<(Vec<u32>, Vec<u32>)> {
        let at = || format!("{}:{}", path.display(), self.line);
        let prompt = lm.tokenizer.encode(self.prompt())?;
        let tokens = match self
            .tokens()
            .map_err(|e| anyhow::anyhow!("{}: {e}", at()))?
        {
            Some(t) => t,
            None => lm.tokenizer.encode(self.completion())?,
        };
        let all: Vec<u32> = prompt.iter().chain(&tokens).copied().collect();
        lm.model
            .check_ids(&all, all.len())
            .map_err(|e| anyhow::anyhow!("{}: {e}", at()))?;
        Ok((prompt, tokens))
    }
}

/// Reads a samples file, checking every row has a string `prompt` and `completion` (and a
/// finite `reward` when `need_reward`), naming the line otherwise.
pub fn read_samples(path: &Path, need_reward: bool) -> Result<Vec<SampleRow>> {
    let values: Vec<(usize, Value)> = infalign_core::io::read_jsonl_numbered(path)?;
    let mut rows = Vec::with_capacity(values.len());
    for (line, v) in values {
        if !v["prompt"].is_string() || !v["completion"].is_string() {
            bail!(
                "{}:{line}: expected string keys `prompt` and `completion`",
                path.display()
            );
        }
        if need_reward {
            match v["reward"].as_f64() {
                Some(r) if r.is_finite() => {}
                _ => bail!(
                    "{}:{line}: expected a finite number `reward`, found {}",
                    path.display(),
                    v["reward"]
                ),
            }
        }
        rows.push(SampleRow { value: v, line });
    }
    if rows.is_empty() {
        bail!("{}: no samples", path.display());
    }
    Ok(rows)
}

/// Rewards grouped by prompt.
pub fn rewards_by_prompt(rows: &[SampleRow]) -> HashMap<String, Vec<f64>> {
    let mut map: HashMap<String, Vec<f64>> = HashMap::new();
    for r in rows {
        if let Some(x) = r.reward() {
            map.entry(r.prompt().to_string()).or_default().push(x);
        }
    }
    map
}

/// Writes rows atomically.
pub fn write_samples(path: &Path, rows: &[SampleRow]) -> Result<()> {
    let values: Vec<&Value> = rows.iter().map(|r| &r.value).collect();
    infalign_core::io::write_jsonl_atomic(path, &values)?;
    Ok(())
}

/// A calibrator whose reference for each prompt is the rewards of that prompt's rows; it
/// smooths Ĉ away from 0 and 1 when asked, and always before a transform unbounded at 0
/// (`log`), where an unsmoothed Ĉ = 0 would become `ln ε` (−13.8 at ε = 1e-6), a cliff.
pub fn calibrator_of(
    rows: &[SampleRow],
    transform: Option<&infalign_rewards::Transform>,
    smoothing: bool,
) -> Result<infalign_rewards::Calibrator> {
    let mut cal = infalign_rewards::Calibrator::default();
    for (prompt, rewards) in rewards_by_prompt(rows) {
        cal.insert(&prompt, rewards)?;
    }
    cal.smoothing = smoothing || transform.is_some_and(|t| t.unbounded_at_zero());
    Ok(cal)
}
