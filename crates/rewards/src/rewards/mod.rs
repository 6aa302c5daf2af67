//! Built-in rewards, one file each.

mod composite;
mod length;
mod sentiment;

pub use composite::WeightedSum;
pub use length::LengthReward;
pub use sentiment::LexiconSentiment;
