//! Metrics as JSONL: one object per step, appended and flushed as the run goes, so a person can
//! follow a run with `tail -f` and a killed run keeps everything written so far.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::CoreError;

/// The `step` of every row of a metrics file, in file order (a row without one is an error
/// naming its line).
pub fn logged_steps(path: impl AsRef<Path>) -> Result<Vec<u64>, CoreError> {
    let path = path.as_ref();
    let rows: Vec<Value> = crate::io::read_jsonl(path)?;
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            r.get("step")
                .and_then(Value::as_u64)
                .ok_or_else(|| CoreError::Jsonl {
                    path: path.to_path_buf(),
                    line: i + 1,
                    message: "no whole-number `step`".into(),
                })
        })
        .collect()
}

/// Appends one JSON object per call to `metrics.jsonl`.
#[derive(Debug)]
pub struct MetricsWriter {
    path: PathBuf,
    file: File,
}

impl MetricsWriter {
    /// Opens (creating or appending to) the metrics file.
    pub fn append(path: impl AsRef<Path>) -> Result<Self, CoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| CoreError::io(dir, e))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| CoreError::io(&path, e))?;
        Ok(Self { path, file })
    }

    /// Opens the metrics file of a resumed run, keeping only the rows with `step <= last_step`
    /// (rows written after the last checkpoint are replayed by the resumed run).
    pub fn resume(path: impl AsRef<Path>, last_step: u64) -> Result<Self, CoreError> {
        let path = path.as_ref();
        if path.exists() {
            let text = crate::io::read_to_string(path)?;
            let kept: String = text
                .lines()
                .filter(|line| {
                    serde_json::from_str::<Value>(line)
                        .ok()
                        .and_then(|v| v.get("step").and_then(Value::as_u64))
                        .is_some_and(|s| s <= last_step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            crate::io::write_atomic(path, kept.as_bytes())?;
        }
        Self::append(path)
    }

    /// Writes one row, with `step` first.
    pub fn log(&mut self, step: u64, values: &[(&str, f64)]) -> Result<(), CoreError> {
        let mut row = Map::new();
        row.insert("step".into(), Value::from(step));
        for (k, v) in values {
            let v = serde_json::Number::from_f64(*v).map_or(Value::Null, Value::Number);
            row.insert((*k).into(), v);
        }
        let line = Value::Object(row).to_string();
        writeln!(self.file, "{line}")
            .and_then(|_| self.file.flush())
            .map_err(|e| CoreError::io(&self.path, e))
    }
}
