//! Errors of the RL crate.

/// An error while training.
#[derive(Debug, thiserror::Error)]
pub enum RlError {
    /// The model failed.
    #[error(transparent)]
    Model(#[from] infalign_models::ModelError),
    /// Decoding failed.
    #[error(transparent)]
    Decoding(#[from] infalign_decoding::DecodingError),
    /// A reward failed.
    #[error(transparent)]
    Reward(#[from] infalign_rewards::RewardError),
    /// File-level failure.
    #[error(transparent)]
    Core(#[from] infalign_core::CoreError),
    /// A hyperparameter is impossible or the data are unusable.
    #[error("invalid `{field}`: {message}")]
    InvalidParameter {
        /// The parameter or data set.
        field: &'static str,
        /// What was expected.
        message: String,
    },
}
