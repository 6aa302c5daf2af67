//! Errors of the core crate: each names the file, line or field at fault and what was expected.

use std::path::PathBuf;

/// An error from device selection, file I/O or JSONL parsing.
#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    /// An output path names something other than a regular file (a link, a FIFO, a device, a
    /// directory): writing would replace it.
    #[error("refusing to write {path}: it is {what}; outputs replace only regular files")]
    NotAFile {
        /// The output path.
        path: PathBuf,
        /// What is there.
        what: &'static str,
    },
    /// The system refused a worker thread.
    #[error("could not start a worker thread: {0}")]
    Worker(String),
    /// The device string did not parse.
    #[error("unknown device `{given}`: expected one of cpu, flex, ndarray, wgpu, cuda, cuda:N")]
    UnknownDevice {
        /// What the user wrote.
        given: String,
    },
    /// The device exists but this build does not include its backend.
    #[error(
        "device `{device}` is not in this build: rebuild with `--features {feature}` \
         (for example `cargo build --release -p infalign --features {feature}`)"
    )]
    DeviceNotBuilt {
        /// The device asked for.
        device: String,
        /// The Cargo feature that enables it.
        feature: &'static str,
    },
    /// The backend is built but the machine cannot run it.
    #[error("device `{device}` is unavailable: {reason}")]
    DeviceUnavailable {
        /// The device asked for.
        device: String,
        /// Why.
        reason: String,
    },
    /// A file could not be read or written. (The I/O error is in the message, not chained as
    /// a source, so that `{:#}` says it once.)
    #[error("{path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A line of a JSONL file is not the expected JSON object.
    #[error("{path}:{line}: {message}")]
    Jsonl {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What was wrong and what was expected.
        message: String,
    },
    /// A run config is malformed or names an unknown key.
    #[error("config: {message}")]
    Config {
        /// What was wrong, naming the key or file.
        message: String,
    },
    /// A value could not be serialized.
    #[error("{what}: {source}")]
    Serialize {
        /// What was being serialized.
        what: String,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
}

impl CoreError {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, error: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            error,
        }
    }
}
