//! Errors of the decoding crate.

/// An error while decoding.
#[derive(Debug, thiserror::Error)]
pub enum DecodingError {
    /// The model or tokenizer failed.
    #[error(transparent)]
    Model(#[from] infalign_models::ModelError),
    /// A reward failed.
    #[error(transparent)]
    Reward(#[from] infalign_rewards::RewardError),
    /// The prompt plus the token budget does not fit the model's context.
    #[error(
        "a prompt of {prompt} tokens plus max-new-tokens {new} exceeds the model's context of \
         {max} positions: shorten the prompt or lower --max-new-tokens"
    )]
    ContextOverflow {
        /// Prompt tokens.
        prompt: usize,
        /// Requested new tokens.
        new: usize,
        /// The model's context.
        max: usize,
    },
    /// A decoding parameter is impossible.
    #[error(transparent)]
    Core(#[from] infalign_core::CoreError),
    /// A row's next-token log-probs hold NaN (seen where tokens are drawn on the device).
    #[error(
        "the next-token log-probs of batch row {row} are NaN: the model's weights or inputs \
         hold non-finite numbers"
    )]
    NonFinite {
        /// The row in the decoding batch.
        row: usize,
    },
    #[error("invalid `{field}`: {message}")]
    InvalidParameter {
        /// The parameter (as the command line spells it).
        field: &'static str,
        /// What was expected.
        message: String,
    },
}
