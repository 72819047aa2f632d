//! The core's one error type, grouped by what the caller does about it.

use thiserror::Error;

/// Errors of the core. `Invalid*` means "fix the input"; `Corrupt*` means bytes from
/// disk or the wire cannot be trusted (count, log, skip); `Unsupported*` means a peer
/// runs a newer format (upgrade this node).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// A key, bucket, region or value that the API refuses.
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A document operation that cannot apply to this document.
    #[error("invalid document operation: {0}")]
    InvalidOp(String),
    /// Bytes that do not decode.
    #[error("corrupt encoding: {0}")]
    Corrupt(String),
    /// An encoding version this build does not understand.
    #[error("unsupported encoding version {found} (this build reads up to {supported})")]
    UnsupportedVersion { found: u8, supported: u8 },
}

pub type CoreResult<T> = Result<T, CoreError>;
