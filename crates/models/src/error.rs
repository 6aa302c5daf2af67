//! Errors of the models crate. Each names the file, tensor or field at fault and what was
//! expected.

use std::path::PathBuf;

/// An error loading, saving or running a model or tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// File-level failure from the core crate (I/O, JSONL).
    #[error(transparent)]
    Core(#[from] infalign_core::CoreError),
    /// A config file is not valid JSON or lacks a field.
    #[error("{path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What was wrong, naming the field.
        message: String,
    },
    /// A config's `model_type` is not one this crate implements.
    #[error("{path}: unsupported model_type `{found}`: expected one of gpt2, llama, qwen2")]
    UnknownModelType {
        /// The config file.
        path: PathBuf,
        /// The value found.
        found: String,
    },
    /// A hyperparameter is impossible (for example heads that do not divide the width).
    #[error("invalid config field `{field}`: {message}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// Why it is invalid.
        message: String,
    },
    /// A checkpoint lacks a tensor the architecture needs.
    #[error("{file}: missing tensor `{name}` (expected shape {expected:?})")]
    MissingTensor {
        /// The checkpoint.
        file: String,
        /// The tensor name.
        name: String,
        /// Its expected shape.
        expected: Vec<usize>,
    },
    /// A checkpoint tensor has the wrong shape.
    #[error("{file}: tensor `{name}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The checkpoint.
        file: String,
        /// The tensor name.
        name: String,
        /// Its expected shape.
        expected: Vec<usize>,
        /// The shape found.
        found: Vec<usize>,
    },
    /// A checkpoint tensor holds NaN or an infinity (a diverged run's weights).
    #[error(
        "{file}: tensor `{name}` holds {count} non-finite values (first at flat index {first}: \
         {value}); refusing weights that would make every output NaN"
    )]
    NonFiniteWeights {
        /// The checkpoint.
        file: String,
        /// The tensor name.
        name: String,
        /// How many values are NaN or infinite.
        count: usize,
        /// The flat index of the first.
        first: usize,
        /// Its value.
        value: f32,
    },
    /// A checkpoint tensor has a dtype this crate cannot read.
    #[error("{file}: tensor `{name}` has dtype {dtype}, expected F32, F16 or BF16")]
    UnsupportedDtype {
        /// The checkpoint.
        file: String,
        /// The tensor name.
        name: String,
        /// The dtype found.
        dtype: String,
    },
    /// A safetensors file is corrupt or truncated.
    #[error("{path}: not a valid safetensors file: {message}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The tokenizer failed to load, train, encode or decode.
    #[error("tokenizer{}: {message}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Tokenizer {
        /// The tokenizer file, when there is one.
        path: Option<PathBuf>,
        /// What went wrong.
        message: String,
    },
    /// The tokenizer and the model disagree on the vocabulary.
    #[error(
        "the tokenizer has {tokenizer} tokens but the model's vocab_size is {model}: \
         token ids would fall outside the embedding table"
    )]
    VocabMismatch {
        /// Tokens in the tokenizer (including added tokens).
        tokenizer: usize,
        /// The model's vocab_size.
        model: usize,
    },
    /// The tokenizer is far smaller than the model's vocabulary: a tokenizer of another model.
    #[error(
        "the tokenizer has {tokenizer} tokens but the model's vocab_size is {model}: ids from \
         {tokenizer} on would vanish from decoded text (is it another model's tokenizer? a \
         model may pad its vocabulary, not to twice its tokenizer's size)"
    )]
    VocabTooSmall {
        /// Tokens in the tokenizer (including added tokens).
        tokenizer: usize,
        /// The model's vocab_size.
        model: usize,
    },
    /// Two models that must share token ids have different tokenizers.
    #[error(
        "{first} and {second} have different tokenizers: the same ids would mean different \
         text"
    )]
    TokenizerMismatch {
        /// The first model's directory.
        first: PathBuf,
        /// The second model's directory.
        second: PathBuf,
    },
    /// The checkpoint holds weights of layers the config does not have.
    #[error(
        "{file}: holds tensor `{name}` of a layer the config does not have (config.json has \
         {layers} layers): config and weights belong to different models"
    )]
    ExtraLayers {
        /// The weights file or directory.
        file: String,
        /// The first such tensor.
        name: String,
        /// Layers in the config.
        layers: usize,
    },
    /// An input is longer than the model's context.
    #[error("input of {len} tokens exceeds the model's context of {max} positions")]
    ContextOverflow {
        /// Total length asked for.
        len: usize,
        /// The model's maximum.
        max: usize,
    },
    /// A token id is outside the vocabulary.
    #[error("token id {id} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A tensor could not be read back from the device.
    #[error("reading a tensor from the device failed: {0}")]
    Read(String),
    /// A training step produced a non-finite loss or gradient; nothing was applied.
    #[error(
        "the {quantity} is {value}: the step was not applied (a learning rate, reward or \
         transform too large for this model?)"
    )]
    NonFinite {
        /// What was not finite (`loss`, `gradient norm`).
        quantity: &'static str,
        /// Its value.
        value: f64,
    },
    /// Malformed input to an API (for example ragged batches).
    #[error("{0}")]
    Input(String),
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, ModelError>;
