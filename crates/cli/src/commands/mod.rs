//! One module per subcommand.

pub mod align;
pub mod analytic;
pub mod bench;
pub mod calibrate;
pub mod common;
pub mod decode;
pub mod eval;
pub mod generate;
pub mod init;
pub mod logprobs;
pub mod preferences;
pub mod pretrain;
pub mod report;
pub mod rollouts;
pub mod samples;
pub mod sweep;
pub mod tokenizer;
pub mod train_rm;
pub mod train_scorer;
