//! Training infrastructure, apart from the model definitions: what every trainer of the
//! workspace shares (`run`: the run directory, step reports, checkpoints written whole;
//! `optim`: the sharded descent step, gradient clipping and the learning-rate schedule) and
//! next-token pretraining (`pretrain`). The trainers themselves live with what they train:
//! reward models in `infalign-rewards`, prefix scorers and policies in `infalign-rl`.

pub mod optim;
pub mod pretrain;
pub mod run;
