//! The node's error type: what a write or read answers, grouped by what the caller does.

use std::collections::BTreeMap;

use concord_api::{Behind, ErrorBody, ErrorCode};
use concord_core::CoreError;
use concord_storage::StorageError;
use concord_transport::LogError;
use thiserror::Error;

#[derive(Debug, Error, Clone)]
pub enum NodeError {
    /// Fix the request (400).
    #[error("{message}")]
    BadRequest { code: ErrorCode, message: String },
    /// Ask another node (307): a write sent to a follower goes to the leader.
    #[error("{message}")]
    Redirect { message: String, location: String },
    /// Present a token (401), or one that may do this (403).
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
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
    Unavailable { code: ErrorCode, message: String },
    /// A read's session token names writes this replica has not applied yet (503).
    #[error("{message}")]
    SessionLag { message: String, behind: BTreeMap<String, Behind> },
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
    pub fn bad(code: ErrorCode, message: impl Into<String>) -> Self {
        debug_assert_eq!(code.statuses(), [400], "{code} is no 400 code");
        NodeError::BadRequest { code, message: message.into() }
    }

    pub fn unavailable(code: ErrorCode, message: impl Into<String>) -> Self {
        debug_assert!(code.statuses().contains(&503), "{code} is no 503 code");
        NodeError::Unavailable { code, message: message.into() }
    }

    pub fn status(&self) -> u16 {
        match self {
            NodeError::BadRequest { .. } => 400,
            NodeError::NotFound(_) => 404,
            NodeError::Unauthorized(_) => 401,
            NodeError::Forbidden(_) => 403,
            NodeError::Redirect { .. } => 307,
            NodeError::TooLarge(_) => 413,
            NodeError::Conflict(_) => 409,
            NodeError::Unavailable { .. } | NodeError::SessionLag { .. } => 503,
            NodeError::Timeout(_) | NodeError::DurabilityTimeout { .. } => 504,
            NodeError::Fatal(_) => 500,
        }
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            NodeError::BadRequest { code, .. } | NodeError::Unavailable { code, .. } => *code,
            NodeError::NotFound(_) => ErrorCode::NotFound,
            NodeError::Unauthorized(_) => ErrorCode::Unauthorized,
            NodeError::Forbidden(_) => ErrorCode::Forbidden,
            NodeError::Redirect { .. } => ErrorCode::NotLeader,
            NodeError::TooLarge(_) => ErrorCode::ValueTooLarge,
            NodeError::Conflict(_) => ErrorCode::AlreadyResolved,
            NodeError::Timeout(_) => ErrorCode::Timeout,
            NodeError::SessionLag { .. } => ErrorCode::SessionLag,
            NodeError::DurabilityTimeout { .. } => ErrorCode::DurabilityTimeout,
            NodeError::Fatal(_) => ErrorCode::Internal,
        }
    }

    /// The JSON body of this error.
    pub fn body(&self) -> ErrorBody {
        let mut body = ErrorBody::new(self.code(), self.to_string());
        match self {
            NodeError::DurabilityTimeout { unconfirmed, .. } => body.unconfirmed = Some(unconfirmed.clone()),
            NodeError::SessionLag { behind, .. } => body.behind = Some(behind.clone()),
            _ => {}
        }
        body
    }
}

impl From<StorageError> for NodeError {
    fn from(e: StorageError) -> Self {
        NodeError::Fatal(e.to_string())
    }
}

impl From<concord_engine::Fatal> for NodeError {
    fn from(e: concord_engine::Fatal) -> Self {
        NodeError::Fatal(e.to_string())
    }
}

impl From<LogError> for NodeError {
    fn from(e: LogError) -> Self {
        NodeError::unavailable(ErrorCode::LogUnavailable, e.to_string())
    }
}

impl From<CoreError> for NodeError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::InvalidOp(m) => NodeError::bad(ErrorCode::BadOp, m),
            CoreError::InvalidInput(m) => NodeError::bad(ErrorCode::BadRequest, m),
            other => NodeError::Fatal(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of error answers with a status its code documents.
    #[test]
    fn statuses_match_the_codes() {
        let errors = [
            NodeError::bad(ErrorCode::BadKey, "k"),
            NodeError::Redirect { message: "m".into(), location: "l".into() },
            NodeError::NotFound("n".into()),
            NodeError::Unauthorized("u".into()),
            NodeError::Forbidden("f".into()),
            NodeError::Conflict("c".into()),
            NodeError::TooLarge("t".into()),
            NodeError::unavailable(ErrorCode::NotLeader, "fenced"),
            NodeError::unavailable(ErrorCode::Overloaded, "o"),
            NodeError::SessionLag { message: "s".into(), behind: BTreeMap::new() },
            NodeError::Timeout("t".into()),
            NodeError::DurabilityTimeout { message: "d".into(), unconfirmed: vec!["eu-west".into()] },
            NodeError::Fatal("f".into()),
        ];
        for e in errors {
            assert!(e.code().statuses().contains(&e.status()), "{:?} answers {}", e, e.status());
        }
    }
}
