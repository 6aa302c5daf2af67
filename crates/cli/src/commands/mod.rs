//! One module per subcommand.

pub mod generate;
pub mod init;
pub mod logprobs;
pub mod tokenizer;
