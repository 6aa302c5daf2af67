//! One module per subcommand.

pub mod bench;
pub mod decode;
pub mod generate;
pub mod init;
pub mod logprobs;
pub mod pretrain;
pub mod tokenizer;
