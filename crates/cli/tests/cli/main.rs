//! The binary's integration tests in one test binary (each links burn: one link instead of
//! several); the backend-swapping test stays apart (`--test backends`, run with features).

mod common;
mod end_to_end;
mod resume;
