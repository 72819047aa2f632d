//! Every error the API answers with: its `code`, the HTTP statuses it comes with, and
//! the JSON body `{"error": "...", "code": "...", ...}`.
//!
//! The codes are listed once, in [`error_codes!`], which generates the enum, its
//! string form, [`ErrorCode::ALL`] and [`ErrorCode::statuses`], so none of them can
//! miss a code. README.md ("Error codes") lists them all with what the caller should
//! do; a test checks that table against [`ErrorCode::ALL`]. Adding a code (say
//! `parked`, for a node that cannot read its log) is one line here and one row there.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! error_codes {
    ($( $(#[doc = $doc:literal])* $variant:ident = $code:literal, [$($status:literal),+]; )+) => {
        /// A machine-readable error code, the `code` of every error body. Serialized
        /// as its snake_case string ([`ErrorCode::as_str`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum ErrorCode {
            $( $(#[doc = $doc])* $variant, )+
        }

        impl ErrorCode {
            /// Every code, in the order of the declaration.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The code as it appears on the wire (`bad_key`).
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)+
                }
            }

            /// The HTTP statuses this code comes with (over NATS: in `Concord-Status`).
            pub const fn statuses(self) -> &'static [u16] {
                match self {
                    $(ErrorCode::$variant => &[$($status),+],)+
                }
            }

            /// The code named `s`, if there is one.
            pub fn parse(s: &str) -> Option<ErrorCode> {
                match s {
                    $($code => Some(ErrorCode::$variant),)+
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    // Fix the request (400).
    /// The key is empty, longer than 1,024 bytes, not UTF-8, or holds NUL.
    BadKey = "bad_key", [400];
    /// The bucket name is not 1–128 of `A-Z a-z 0-9 _ - .`.
    BadBucket = "bad_bucket", [400];
    /// A document operation is malformed or does not fit the document.
    BadOp = "bad_op", [400];
    /// The request fails an input rule not covered by a more precise code.
    BadRequest = "bad_request", [400];
    /// The request body could not be read.
    BadBody = "bad_body", [400];
    /// `durability` is not `async`, `region`, `remote` or `all`.
    BadDurability = "bad_durability", [400];
    /// `timeout_ms` is not 1 to 600000.
    BadTimeout = "bad_timeout", [400];
    /// `limit` is outside the range of the route.
    BadLimit = "bad_limit", [400];
    /// `format` is not `json` or `automerge`.
    BadFormat = "bad_format", [400];
    /// The session token (`Concord-Token`) does not decode.
    BadToken = "bad_token", [400];
    /// `wait_ms` is not 0 to 60000.
    BadWait = "bad_wait", [400];
    /// `since` is not an RFC 3339 time.
    BadSince = "bad_since", [400];
    /// `before` is not a cursor the API gave out.
    BadCursor = "bad_cursor", [400];
    /// The conflict id is not a UUID.
    BadConflictId = "bad_conflict_id", [400];
    /// The resolution is not exactly one of `{"value": ...}` or `{"pick": id}` of a version.
    BadResolution = "bad_resolution", [400];
    /// The route does not take this method.
    MethodNotAllowed = "method_not_allowed", [400];
    /// A NATS request names an operation this node does not know.
    UnknownOperation = "unknown_operation", [400];
    // Credentials (401, 403).
    /// No `Authorization: Bearer <token>`, or a token this deployment does not know.
    Unauthorized = "unauthorized", [401];
    /// The token may read, not write.
    Forbidden = "forbidden", [403];
    // The state says no.
    /// Nothing there: no such key, document, record or route.
    NotFound = "not_found", [404];
    /// The conflict was already resolved.
    AlreadyResolved = "already_resolved", [409];
    /// The value or request body is larger than `value_bytes_max`.
    ValueTooLarge = "value_too_large", [413];
    // Ask another node, or retry later (503).
    /// A write reached a follower (307, `Location` names the leader) or a leader that
    /// lost its lease (503).
    NotLeader = "not_leader", [307, 503];
    /// A follower knows no leader of its region to send a write to.
    NoLeader = "no_leader", [503];
    /// Too many requests at once, or the write queue is full.
    Overloaded = "overloaded", [503];
    /// The node is stopping.
    ShuttingDown = "shutting_down", [503];
    /// The region's log (NATS) is unreachable; a write's outcome is unknown.
    LogUnavailable = "log_unavailable", [503];
    /// The durability level cannot be met now (no live follower, no other region).
    DurabilityUnavailable = "durability_unavailable", [503];
    /// The replica has not applied what the session token names yet.
    SessionLag = "session_lag", [503];
    /// This node cannot read its region's log (a changeset of a newer format parked
    /// it): it takes no writes until it is upgraded.
    Parked = "parked", [503];
    // It took too long (504).
    /// No answer in time; a write may still apply.
    Timeout = "timeout", [504];
    /// Durable here, not confirmed in time by the regions in `unconfirmed`.
    DurabilityTimeout = "durability_timeout", [504];
    // A bug, or local state failed (500).
    /// Local state failed; the node stops.
    Internal = "internal", [500];
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// A code that is none of [`ErrorCode::ALL`] (from a newer peer, or not Concord's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownErrorCode(pub String);

impl std::fmt::Display for UnknownErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "unknown error code {:?}", self.0)
    }
}

impl std::error::Error for UnknownErrorCode {}

impl std::str::FromStr for ErrorCode {
    type Err = UnknownErrorCode;

    fn from_str(s: &str) -> Result<ErrorCode, UnknownErrorCode> {
        ErrorCode::parse(s).ok_or_else(|| UnknownErrorCode(s.to_string()))
    }
}

impl Serialize for ErrorCode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ErrorCode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub error: String,
    pub code: ErrorCode,
    /// `durability_timeout`: who did not confirm the write in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unconfirmed: Option<Vec<String>>,
    /// `session_lag`: per origin (`us-east.2`), what the token needs and what this
    /// replica applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub behind: Option<BTreeMap<String, Behind>>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, error: impl Into<String>) -> ErrorBody {
        ErrorBody { error: error.into(), code, unconfirmed: None, behind: None }
    }
}

/// How far one origin of a session token is ahead of a replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Behind {
    pub needed: u64,
    pub applied: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_unique_snake_case_and_round_trip() {
        let mut seen = std::collections::BTreeSet::new();
        for &code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "{s} twice");
            assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{s} is not snake_case");
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(s));
            assert_eq!(serde_json::from_value::<ErrorCode>(serde_json::json!(s)).unwrap(), code);
            assert_eq!(s.parse::<ErrorCode>().unwrap(), code);
            assert!(!code.statuses().is_empty());
        }
        assert!(serde_json::from_str::<ErrorCode>("\"no_such_code\"").is_err());
    }

    #[test]
    fn error_body_keeps_its_wire_shape() {
        let plain = ErrorBody::new(ErrorCode::BadKey, "key is empty");
        assert_eq!(
            serde_json::to_value(&plain).unwrap(),
            serde_json::json!({"error": "key is empty", "code": "bad_key"})
        );
        let lag = ErrorBody {
            behind: Some(BTreeMap::from([("us-east.1".to_string(), Behind { needed: 5, applied: 2 })])),
            ..ErrorBody::new(ErrorCode::SessionLag, "behind")
        };
        let v = serde_json::to_value(&lag).unwrap();
        assert_eq!(v["behind"], serde_json::json!({"us-east.1": {"needed": 5, "applied": 2}}));
        assert_eq!(serde_json::from_value::<ErrorBody>(v).unwrap(), lag);
        let newer = serde_json::json!({"error": "e", "code": "timeout", "hint": "a later field"});
        assert_eq!(serde_json::from_value::<ErrorBody>(newer).unwrap().code, ErrorCode::Timeout);
    }
}
