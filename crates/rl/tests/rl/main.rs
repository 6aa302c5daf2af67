//! The integration tests of `infalign-rl` in one binary (each binary links burn: one
//! link instead of several).

mod bandit;
mod base_model;
mod resume;
mod scorers;
