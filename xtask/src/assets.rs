//! `cargo xtask assets`: rebuilds everything under `assets/` from Debian packages and the
//! project's own commands: the corpus (fortunes and WordNet example sentences), the prompts,
//! the byte-level BPE tokenizer, and the tiny pretrained base model.
//!
//! Needs `apt-get install fortunes fortunes-min wordnet-base`. Deterministic: the same packages
//! give the same corpus, split and prompts (a fixed seed), and the same seed gives the same model.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_json::json;

const FORTUNES: &str = "/usr/share/games/fortunes";
const WORDNET: &str = "/usr/share/wordnet";
/// Fortune files left out: pictures, not prose.
const SKIP_FORTUNES: [&str; 3] = ["art", "ascii-art", "translate-me"];

/// A small deterministic generator (xorshift64*), so the split needs no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// One fortune: tabs to spaces, lines trimmed, blank lines dropped.
fn clean_fortune(raw: &str) -> Option<String> {
    let lines: Vec<String> = raw
        .lines()
        .map(|l| {
            l.replace('\t', " ")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        })
        .filter(|l| !l.is_empty())
        .collect();
    let text = lines.join("\n");
    let letters = text
        .chars()
        .filter(|c| c.is_alphabetic() || *c == ' ')
        .count();
    let ok = !text.is_empty()
        && text.len() <= 1200
        && letters * 10 >= text.chars().count() * 8 // mostly prose, not pictures
        && !text.contains("\u{8}");
    ok.then_some(text)
}

fn fortunes() -> Result<Vec<(String, String)>> {
    let dir = Path::new(FORTUNES);
    if !dir.is_dir() {
        bail!("{FORTUNES} not found: apt-get install fortunes fortunes-min wordnet-base");
    }
    let mut names: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.contains('.') && !SKIP_FORTUNES.contains(&n.as_str()))
        .collect();
    names.sort();
    let mut docs = Vec::new();
    for name in names {
        let path = dir.join(&name);
        if !path.is_file() {
            continue;
        }
        let bytes = fs::read(&path).with_context(|| path.display().to_string())?;
        let text = String::from_utf8_lossy(&bytes);
        for entry in text.split("\n%\n") {
            if let Some(doc) = clean_fortune(entry.trim_matches('%')) {
                docs.push((format!("fortunes/{name}"), doc));
            }
        }
    }
    Ok(docs)
}

/// Example sentences (the quoted parts of glosses) of WordNet 3.0.
fn wordnet() -> Result<Vec<(String, String)>> {
    let mut docs = Vec::new();
    for pos in ["noun", "verb", "adj", "adv"] {
        let path = Path::new(WORDNET).join(format!("data.{pos}"));
        let text = fs::read_to_string(&path)
            .with_context(|| format!("{}: apt-get install wordnet-base", path.display()))?;
        for line in text.lines().filter(|l| !l.starts_with(' ')) {
            let Some((_, gloss)) = line.split_once(" | ") else {
                continue;
            };
            for (i, part) in gloss.split('"').enumerate() {
                let s = part.trim();
                if i % 2 == 1 && s.split_whitespace().count() >= 3 {
                    let mut s = s.to_string();
                    if !s.ends_with(['.', '!', '?']) {
                        s.push('.');
                    }
                    let mut c = s.chars();
                    let s = match c.next() {
                        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
                        None => s,
                    };
                    docs.push((format!("wordnet/{pos}"), s));
                }
            }
        }
    }
    Ok(docs)
}

/// A prompt: the first 2 to 6 words of a held-out document's first line.
fn prompt_of(doc: &str, rng: &mut Rng) -> Option<String> {
    let words: Vec<&str> = doc.lines().next()?.split_whitespace().collect();
    if words.len() < 4 {
        return None;
    }
    // 2 to 6 words, always leaving at least 2 for the model to write.
    let k = 2 + rng.below(5.min(words.len() - 3));
    Some(words[..k].join(" "))
}

fn write_jsonl(path: &Path, rows: &[serde_json::Value]) -> Result<()> {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    fs::write(path, text).with_context(|| path.display().to_string())
}

/// Builds `assets/corpus/{train,valid}.jsonl` and `assets/prompts.jsonl`; returns counts.
pub fn corpus(root: &Path) -> Result<serde_json::Value> {
    let mut docs = fortunes()?;
    let n_fortunes = docs.len();
    docs.extend(wordnet()?);
    let mut seen = HashSet::new();
    docs.retain(|(_, d)| seen.insert(d.to_lowercase()));
    let mut rng = Rng(0x1f2e_3d4c_5b6a_7988);
    for i in (1..docs.len()).rev() {
        docs.swap(i, rng.below(i + 1));
    }
    let n = docs.len();
    let n_valid = n / 25;
    let n_heldout = n / 16;
    let (valid, rest) = docs.split_at(n_valid);
    let (heldout, train) = rest.split_at(n_heldout);
    let dir = root.join("assets/corpus");
    fs::create_dir_all(&dir)?;
    let rows = |d: &[(String, String)]| -> Vec<serde_json::Value> {
        d.iter()
            .map(|(src, t)| json!({"text": t, "source": src}))
            .collect()
    };
    write_jsonl(&dir.join("train.jsonl"), &rows(train))?;
    write_jsonl(&dir.join("valid.jsonl"), &rows(valid))?;
    let mut prompts = Vec::new();
    let mut seen = HashSet::new();
    for (_, d) in heldout {
        if let Some(p) = prompt_of(d, &mut rng)
            && seen.insert(p.clone())
        {
            prompts.push(json!({"prompt": p}));
        }
    }
    write_jsonl(&root.join("assets/prompts.jsonl"), &prompts)?;
    let bytes = |d: &[(String, String)]| d.iter().map(|(_, t)| t.len()).sum::<usize>();
    Ok(json!({
        "documents": n, "fortunes": n_fortunes, "train_docs": train.len(),
        "valid_docs": valid.len(), "prompts": prompts.len(),
        "train_bytes": bytes(train), "valid_bytes": bytes(valid),
    }))
}

/// The paths the rest of the pipeline uses.
pub fn paths(root: &Path) -> (PathBuf, PathBuf) {
    (
        root.join("assets/base-model"),
        root.join("assets/pretrain.toml"),
    )
}
