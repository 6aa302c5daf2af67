//! Errors of the evaluation crate.

/// An error while evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// A parameter or an input is unusable.
    #[error("invalid `{field}`: {message}")]
    Invalid {
        /// The parameter or input.
        field: &'static str,
        /// What was expected.
        message: String,
    },
    /// Reading or writing a file failed.
    #[error(transparent)]
    Io(#[from] infalign_core::CoreError),
}
