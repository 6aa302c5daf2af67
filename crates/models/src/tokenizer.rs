//! The tokenizer: any Hugging Face `tokenizer.json`, or a byte-level BPE trained here from text
//! files (GPT-2's scheme: no normaliser, byte-level pre-tokenizer without a prefix space).
//!
//! Invariants: `encode` adds no special tokens; `decode(encode(s)) == s` for byte-level BPE;
//! the EOS and padding ids come from the model config first and the tokenizer's special tokens
//! second.

use std::path::{Path, PathBuf};

use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, NormalizerWrapper, TokenizerBuilder, TokenizerImpl};

use crate::{ModelError, Result};

/// The end-of-text token of byte-level BPE tokenizers trained here (GPT-2's spelling).
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Special-token spellings recognised as end of sequence when a config names none.
const EOS_SPELLINGS: [&str; 4] = [END_OF_TEXT, "</s>", "<eos>", "<|im_end|>"];
const PAD_SPELLINGS: [&str; 3] = ["<pad>", "<|pad|>", "[PAD]"];

/// A loaded tokenizer with its end-of-sequence and padding ids.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: Option<PathBuf>,
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        if !path.exists() {
            return Err(ModelError::Tokenizer {
                path: Some(path.to_path_buf()),
                message: "file not found".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| ModelError::Tokenizer {
            path: Some(path.to_path_buf()),
            message: e.to_string(),
        })?;
        Ok(Self {
            inner,
            path: Some(path.to_path_buf()),
        })
    }

    /// A word-level tokenizer over `words` (ids in order; whitespace splits words; an unknown
    /// word encodes as the first): the tiny, exactly known vocabularies of tests and toy
    /// experiments.
    pub fn word_level(words: &[&str]) -> Result<Self> {
        let vocab: serde_json::Map<String, serde_json::Value> = words
            .iter()
            .enumerate()
            .map(|(i, w)| ((*w).to_string(), serde_json::Value::from(i)))
            .collect();
        let unk = words.first().copied().unwrap_or_default();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": null, "decoder": null,
            "model": {"type": "WordLevel", "unk_token": unk, "vocab": vocab},
        });
        let inner: tokenizers::Tokenizer =
            json.to_string()
                .parse()
                .map_err(|e: tokenizers::Error| ModelError::Tokenizer {
                    path: None,
                    message: format!("word-level vocabulary: {e}"),
                })?;
        Ok(Self { inner, path: None })
    }

    /// Trains a byte-level BPE tokenizer of `vocab_size` tokens (special tokens included) on
    /// text files. `special_tokens` get the first ids, in order; [`END_OF_TEXT`] is added first
    /// when absent.
    pub fn train_byte_level_bpe(
        files: &[PathBuf],
        vocab_size: usize,
        min_frequency: u64,
        special_tokens: &[String],
    ) -> Result<Self> {
        let err = |message: String| ModelError::Tokenizer {
            path: None,
            message,
        };
        for f in files {
            if !f.is_file() {
                return Err(ModelError::Tokenizer {
                    path: Some(f.clone()),
                    message: "training file not found".into(),
                });
            }
        }
        let mut specials: Vec<String> = special_tokens.to_vec();
        if !specials.iter().any(|s| s == END_OF_TEXT) {
            specials.insert(0, END_OF_TEXT.into());
        }
        let alphabet = ByteLevel::alphabet().into_iter().collect();
        if vocab_size < 256 + specials.len() {
            return Err(err(format!(
                "vocab_size {vocab_size} is below the 256 byte symbols plus {} special tokens",
                specials.len()
            )));
        }
        let mut trainer = BpeTrainerBuilder::new()
            .show_progress(false)
            .vocab_size(vocab_size)
            .min_frequency(min_frequency)
            .special_tokens(
                specials
                    .iter()
                    .map(|s| AddedToken::from(s.clone(), true))
                    .collect(),
            )
            .initial_alphabet(alphabet)
            .build();
        let byte_level = ByteLevel::new(false, true, true);
        let mut tk: TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel> =
            TokenizerBuilder::new()
                .with_model(BPE::default())
                .with_normalizer(None)
                .with_pre_tokenizer(Some(byte_level))
                .with_post_processor(Some(byte_level))
                .with_decoder(Some(byte_level))
                .build()
                .map_err(|e| err(e.to_string()))?;
        let names = files.iter().map(|p| p.display().to_string()).collect();
        tk.train_from_files(&mut trainer, names)
            .map_err(|e| err(format!("training failed: {e}")))?;
        Ok(Self {
            inner: tk.into(),
            path: None,
        })
    }

    /// Writes `tokenizer.json` atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let text = self
            .inner
            .to_string(true)
            .map_err(|e| ModelError::Tokenizer {
                path: Some(path.as_ref().to_path_buf()),
                message: e.to_string(),
            })?;
        Ok(infalign_core::io::write_atomic(path, text.as_bytes())?)
    }

    /// Token ids of `text`, with no special tokens added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| self.error(format!("encoding failed: {e}")))
    }

    /// Text of `ids`, skipping special tokens.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, true)
            .map_err(|e| self.error(format!("decoding failed: {e}")))
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Whether `other` maps the same tokens to the same ids (added tokens included).
    pub fn same_vocab(&self, other: &Tokenizer) -> bool {
        self.inner.get_vocab(true) == other.inner.get_vocab(true)
    }

    /// The id of a token spelled exactly `token`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// End-of-sequence id: the tokenizer's own special token, by its usual spellings.
    pub fn eos_id(&self) -> Option<u32> {
        EOS_SPELLINGS.iter().find_map(|s| self.token_id(s))
    }

    /// A padding id: a dedicated pad token if there is one, else `eos`.
    pub fn pad_id(&self) -> Option<u32> {
        PAD_SPELLINGS
            .iter()
            .find_map(|s| self.token_id(s))
            .or_else(|| self.eos_id())
    }

    /// The file it was loaded from, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn error(&self, message: String) -> ModelError {
        ModelError::Tokenizer {
            path: self.path.clone(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn word_level_ids_follow_the_word_list() {
        let tk = Tokenizer::word_level(&["a", "b", "c"]).unwrap();
        assert_eq!(tk.encode("a c b c").unwrap(), [0, 2, 1, 2]);
        assert_eq!(
            tk.encode("zzz b").unwrap(),
            [0, 1],
            "unknown words map to the first"
        );
        assert_eq!(tk.vocab_size(), 3);
    }

    use super::*;

    #[test]
    fn trains_saves_loads_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("corpus.txt");
        let body = "the cat sat on the mat. the dog sat on the log. ".repeat(50);
        std::fs::write(&text, format!("{body}\nÜnïcødé ✓ too\n")).unwrap();
        let tk = Tokenizer::train_byte_level_bpe(&[text], 300, 2, &[]).unwrap();
        assert_eq!(tk.token_id(END_OF_TEXT), Some(0));
        assert_eq!(tk.eos_id(), Some(0));
        assert_eq!(tk.pad_id(), Some(0));
        assert!(tk.vocab_size() <= 300 && tk.vocab_size() > 257);
        let s = "the cat sat on the log. Ünïcødé ✓";
        let ids = tk.encode(s).unwrap();
        assert!(ids.len() < s.len(), "merges were learned");
        assert_eq!(tk.decode(&ids).unwrap(), s);

        let path = dir.path().join("tokenizer.json");
        tk.save(&path).unwrap();
        let back = Tokenizer::from_file(&path).unwrap();
        assert_eq!(back.encode(s).unwrap(), ids);
    }

    #[test]
    fn bad_files_are_named() {
        let e = Tokenizer::from_file("/nonexistent/tokenizer.json").unwrap_err();
        assert!(e.to_string().contains("/nonexistent/tokenizer.json"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokenizer.json");
        std::fs::write(&p, "{\"model\": 3}").unwrap();
        let e = Tokenizer::from_file(&p).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
        let e = Tokenizer::train_byte_level_bpe(&[dir.path().join("none.txt")], 500, 2, &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("none.txt"), "{e}");
    }
}
