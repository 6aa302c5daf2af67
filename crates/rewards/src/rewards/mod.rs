//! Built-in rewards, one file each.

mod composite;
mod length;
mod sentiment;
mod tokens;

pub use composite::WeightedSum;
pub use length::LengthReward;
pub use sentiment::LexiconSentiment;
pub use tokens::TokenCount;
