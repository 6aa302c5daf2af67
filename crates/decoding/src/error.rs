//! Errors of the decoding crate.

/// An error while decoding.
#[derive(Debug, thiserror::Error)]
pub enum DecodingError {
    /// The model or tokenizer failed.
    #[error(transparent)]
    Model(#[from] infalign_models::ModelError),
    /// A decoding parameter is impossible.
    #[error("invalid `{field}`: {message}")]
    InvalidParameter {
        /// The parameter (as the command line spells it).
        field: &'static str,
        /// What was expected.
        message: String,
    },
}
