//! `infalign tokenizer ...`: train a byte-level BPE tokenizer.

use std::path::PathBuf;

use anyhow::Result;
use infalign_models::Tokenizer;

/// Tokenizer subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Train a byte-level BPE tokenizer on text files.
    Train {
        /// Text files to train on (`.jsonl` files: the `text` key of every row).
        #[arg(long, required = true, num_args = 1..)]
        files: Vec<PathBuf>,
        /// Vocabulary size, special tokens included.
        #[arg(long, default_value_t = 4096)]
        vocab_size: usize,
        /// Minimum pair frequency for a merge.
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        /// Extra special tokens (`<|endoftext|>` is always first).
        #[arg(long)]
        special: Vec<String>,
        /// Where to write tokenizer.json.
        #[arg(long)]
        out: PathBuf,
    },
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Train {
            files,
            vocab_size,
            min_frequency,
            special,
            out,
        } => {
            let (texts, _guard) = plain_text_files(&files, &out)?;
            let tk = Tokenizer::train_byte_level_bpe(&texts, vocab_size, min_frequency, &special)?;
            tk.save(&out)?;
            eprintln!("wrote {} ({} tokens)", out.display(), tk.vocab_size());
        }
    }
    Ok(())
}

/// Removes the temporary text files on drop.
struct TempFiles(Vec<PathBuf>);

impl Drop for TempFiles {
    fn drop(&mut self) {
        for f in &self.0 {
            let _ = std::fs::remove_file(f);
        }
    }
}

/// Plain-text files for the trainer: `.jsonl` inputs become temporary files of their texts.
fn plain_text_files(files: &[PathBuf], out: &std::path::Path) -> Result<(Vec<PathBuf>, TempFiles)> {
    #[derive(serde::Deserialize)]
    struct Row {
        text: String,
    }
    let mut texts = Vec::new();
    let mut temps = Vec::new();
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir)?;
    for (i, f) in files.iter().enumerate() {
        if f.extension().is_some_and(|e| e == "jsonl") {
            let rows: Vec<Row> = infalign_core::io::read_jsonl(f)?;
            let tmp = dir.join(format!(".tokenizer-corpus-{}-{i}.txt", std::process::id()));
            let body: String = rows.into_iter().map(|r| r.text + "\n").collect();
            std::fs::write(&tmp, body)?;
            temps.push(tmp.clone());
            texts.push(tmp);
        } else {
            texts.push(f.clone());
        }
    }
    Ok((texts, TempFiles(temps)))
}
