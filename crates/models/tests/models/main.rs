//! The integration tests of `infalign-models` in one binary (each binary links burn: one
//! link instead of several).

mod contracts;
mod golden;
mod pretrain;
