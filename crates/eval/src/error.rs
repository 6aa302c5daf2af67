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
    /// A value lies outside the range where it can be answered without extrapolating (for
    /// example a KL outside a policy path's snapshots).
    #[error("`{field}` {value} is outside the range [{low}, {high}]")]
    OutOfRange {
        /// The parameter.
        field: &'static str,
        /// The value asked for.
        value: f64,
        /// The lowest value available.
        low: f64,
        /// The highest value available.
        high: f64,
    },
    /// Reading or writing a file failed.
    #[error(transparent)]
    Io(#[from] infalign_core::CoreError),
}
