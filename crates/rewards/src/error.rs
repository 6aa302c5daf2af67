//! Errors of the rewards crate.

/// An error scoring, calibrating or transforming a reward.
#[derive(Debug, thiserror::Error)]
pub enum RewardError {
    /// File-level failure (I/O, JSONL).
    #[error(transparent)]
    Core(#[from] infalign_core::CoreError),
    /// A model or checkpoint file failed to load or save (the message names the file).
    #[error(transparent)]
    Model(#[from] infalign_models::ModelError),
    /// A reward is NaN or infinite.
    #[error("{what}: reward {value} is not a finite number")]
    NotFinite {
        /// Which reward or sample.
        what: String,
        /// The value.
        value: f64,
    },
    /// Calibration was asked about a prompt that has no reference rollouts.
    #[error("no reference rollouts for prompt {prompt:?}: run `infalign rollouts` on it first")]
    NoRollouts {
        /// The prompt.
        prompt: String,
    },
    /// A parameter is out of range.
    #[error("invalid `{field}`: {message}")]
    InvalidParameter {
        /// The parameter.
        field: &'static str,
        /// What was expected.
        message: String,
    },
    /// A lexicon file has a malformed line.
    #[error("{path}:{line}: {message}")]
    Lexicon {
        /// The lexicon file.
        path: std::path::PathBuf,
        /// 1-based line.
        line: usize,
        /// What was expected.
        message: String,
    },
}
