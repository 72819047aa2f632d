//! The node's error type: what a write or read answers, grouped by what the caller does.

use concord_core::CoreError;
use concord_storage::StorageError;
use concord_transport::LogError;
use thiserror::Error;

#[derive(Debug, Error, Clone)]
pub enum NodeError {
    /// Fix the request (400).
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// Ask another node (307): a write sent to a follower goes to the leader.
    #[error("{message}")]
    Redirect { message: String, location: String },
    /// Nothing there (404).
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the current state, e.g. resolving a resolved conflict (409).
    #[error("{0}")]
    Conflict(String),
    /// The value is larger than the configured limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// Retry later, perhaps elsewhere (503): the log is unreachable, the queue is full,
    /// or this node is not (or no longer) the leader.
    #[error("{message}")]
    Unavailable { code: &'static str, message: String },
    /// A read's session token names writes this replica has not applied yet (503).
    #[error("{message}")]
    SessionLag { message: String, behind: serde_json::Value },
    /// The write was not confirmed in time (504); it may still apply.
    #[error("{0}")]
    Timeout(String),
    /// The write is durable here but other regions did not confirm it in time (504).
    #[error("{message}")]
    DurabilityTimeout { message: String, unconfirmed: Vec<String> },
    /// Local state failed; the node stops.
    #[error("internal error: {0}")]
    Fatal(String),
}

impl NodeError {
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        NodeError::BadRequest { code, message: message.into() }
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        NodeError::Unavailable { code, message: message.into() }
    }

    pub fn status(&self) -> u16 {
        match self {
            NodeError::BadRequest { .. } => 400,
            NodeError::NotFound(_) => 404,
            NodeError::Redirect { .. } => 307,
            NodeError::TooLarge(_) => 413,
            NodeError::Conflict(_) => 409,
            NodeError::Unavailable { .. } | NodeError::SessionLag { .. } => 503,
            NodeError::Timeout(_) | NodeError::DurabilityTimeout { .. } => 504,
            NodeError::Fatal(_) => 500,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            NodeError::BadRequest { code, .. } | NodeError::Unavailable { code, .. } => code,
            NodeError::NotFound(_) => "not_found",
            NodeError::Redirect { .. } => "not_leader",
            NodeError::TooLarge(_) => "value_too_large",
            NodeError::Conflict(_) => "already_resolved",
            NodeError::Timeout(_) => "timeout",
            NodeError::SessionLag { .. } => "session_lag",
            NodeError::DurabilityTimeout { .. } => "durability_timeout",
            NodeError::Fatal(_) => "internal",
        }
    }
}

impl From<StorageError> for NodeError {
    fn from(e: StorageError) -> Self {
        NodeError::Fatal(e.to_string())
    }
}

impl From<LogError> for NodeError {
    fn from(e: LogError) -> Self {
        NodeError::unavailable("log_unavailable", e.to_string())
    }
}

impl From<CoreError> for NodeError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::InvalidOp(m) => NodeError::bad("bad_op", m),
            CoreError::InvalidInput(m) => NodeError::bad("bad_request", m),
            other => NodeError::Fatal(other.to_string()),
        }
    }
}
