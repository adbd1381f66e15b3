//! The library's error type: every message is one line that names the offending file, flag
//! or value and says what would be right.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A user-supplied value (flag, loss parameter, architecture) is out of range.
    #[error("{0}")]
    InvalidArgument(String),
    /// Shapes of tensors do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// Training produced a NaN or infinite value.
    #[error("{0}")]
    NonFinite(String),
    /// The requested device or executor is not available on this machine/build.
    #[error("{0}")]
    Device(String),
    /// Ctrl-C or SIGTERM stopped training (after saving what resumes it); the message says
    /// how to continue. The process exits with 130.
    #[error("{0}")]
    Interrupted(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
    pub fn file(path: impl Into<PathBuf>, message: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            message: message.to_string(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
