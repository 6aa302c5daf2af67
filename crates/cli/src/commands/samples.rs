//! Sample files: JSONL rows with TRL's keys (`prompt`, `completion`, `reward`) plus whatever
//! else a command wrote (`tokens`, `finish`, ...), read and written without losing keys.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Result, bail};
use serde_json::Value;

/// One row of a samples file.
#[derive(Debug, Clone)]
pub struct SampleRow {
    /// The whole JSON object (written back with any added keys).
    pub value: Value,
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
    pub fn tokens(&self) -> Option<Vec<u32>> {
        self.value["tokens"].as_array().map(|a| {
            a.iter()
                .filter_map(|t| t.as_u64().map(|t| t as u32))
                .collect()
        })
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
        rows.push(SampleRow { value: v });
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

/// A calibrator whose reference for each prompt is the rewards of that prompt's rows.
pub fn calibrator_of(rows: &[SampleRow]) -> Result<infalign_rewards::Calibrator> {
    let mut cal = infalign_rewards::Calibrator::default();
    for (prompt, rewards) in rewards_by_prompt(rows) {
        cal.insert(&prompt, rewards)?;
    }
    Ok(cal)
}
