//! # infalign-core
//!
//! The shared vocabulary of the infalign workspace: device selection from a string
//! ([`DeviceSpec`]), named random streams derived from one seed ([`Seed`]), JSONL reading with
//! line-numbered errors and atomic file writes ([`io`]), and the metrics writer
//! ([`MetricsWriter`]). Every other crate depends on this one and on nothing above it.
//!
//! ```
//! use infalign_core::{DeviceSpec, Seed};
//! use rand::Rng;
//!
//! let spec: DeviceSpec = "cpu".parse().unwrap();
//! let device = spec.device().unwrap();
//! let _ = device;
//! // Two streams of one seed are independent, and each is reproducible.
//! let seed = Seed(7);
//! let a: u64 = seed.stream("sampling").random();
//! let b: u64 = seed.stream("sampling").random();
//! assert_eq!(a, b);
//! assert_ne!(a, seed.stream("init").random::<u64>());
//! ```

pub mod config;
mod device;
mod error;
pub mod io;
pub mod metrics;
mod seed;
mod tidy;
pub mod workers;

pub use device::DeviceSpec;
pub use error::CoreError;
pub use metrics::MetricsWriter;
pub use seed::Seed;
pub use workers::{beside, is_flex, job_threads, run_on_workers};

/// burn's runtime device handle, re-exported so that downstream crates name one type.
pub use burn::tensor::Device;
