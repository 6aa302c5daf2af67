//! The integration tests of `infalign-rewards` in one binary (each binary links burn: one
//! link instead of several).

mod bradley_terry;
mod calibrated_reward_model;
mod common;
mod resume;
