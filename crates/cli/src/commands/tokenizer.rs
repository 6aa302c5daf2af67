//! `infalign tokenizer ...`: train a byte-level BPE tokenizer.

use std::path::PathBuf;

use anyhow::Result;
use infalign_models::Tokenizer;

/// Tokenizer subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Train a byte-level BPE tokenizer on text files.
    Train {
        /// Text files to train on.
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
            let tk = Tokenizer::train_byte_level_bpe(&files, vocab_size, min_frequency, &special)?;
            tk.save(&out)?;
            eprintln!("wrote {} ({} tokens)", out.display(), tk.vocab_size());
        }
    }
    Ok(())
}
