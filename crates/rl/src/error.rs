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
    /// A training step met a non-finite number; nothing of that step was applied.
    #[error(
        "step {step}: the {quantity} is {value}; training stopped before applying the step (a \
         learning rate, reward or transform too large for this model?)"
    )]
    NonFinite {
        /// The step (1-based).
        step: u64,
        /// What was not finite (`reward`, `transformed reward`, `loss`, `gradient norm`).
        quantity: &'static str,
        /// Its value.
        value: f64,
    },
    /// A hyperparameter is impossible or the data are unusable.
    #[error("invalid `{field}`: {message}")]
    InvalidParameter {
        /// The parameter or data set.
        field: &'static str,
        /// What was expected.
        message: String,
    },
}

impl RlError {
    /// Names `step` in a non-finite loss or gradient from the optimizer step.
    pub(crate) fn at_step(step: u64) -> impl Fn(RlError) -> RlError {
        move |e| match e {
            RlError::Model(infalign_models::ModelError::NonFinite { quantity, value }) => {
                RlError::NonFinite {
                    step,
                    quantity,
                    value,
                }
            }
            other => other,
        }
    }
}
