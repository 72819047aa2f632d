//! Who may use the HTTP API: a bearer token per deployment (`Authorization: Bearer
//! <token>`), one that may read and write and, optionally, one that may only read.
//!
//! - No token, or one the deployment does not know: 401 `unauthorized` (with
//!   `WWW-Authenticate: Bearer`). A read token on a request that writes: 403
//!   `forbidden`.
//! - Tokens are compared in constant time (`subtle`), so the time an answer takes says
//!   nothing about how much of a guess was right; they are held in [`Secret`], whose
//!   `Debug` prints nothing, and never logged.
//! - A node refuses to start without a read-write token unless `api_auth = "none"`
//!   says, on purpose, that its API is open (a bench on loopback).
//! - Open to anyone, because they hold no data: `GET /v1/health` (for orchestrators'
//!   health checks) and the dashboard's static files (the page asks for the token and
//!   sends it with every request it makes).
//!
//! Over NATS the API is guarded by NATS's own credentials (`concord cluster up`
//! generates them), not by these tokens.

use std::path::Path;

use axum::http::{HeaderMap, HeaderValue, header};
use subtle::ConstantTimeEq;

use crate::error::NodeError;

/// The least a token may hold: guessing one must be hopeless.
pub const TOKEN_BYTES_MIN: usize = 16;

/// A credential: compared in constant time, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    fn matches(&self, presented: &[u8]) -> bool {
        self.0.as_bytes().ct_eq(presented).into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The tokens a node takes.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// `None`: authentication is off (`api_auth = "none"`).
    write: Option<Secret>,
    read: Option<Secret>,
}

impl Tokens {
    /// No authentication (`api_auth = "none"`).
    pub fn open() -> Tokens {
        Tokens::default()
    }

    pub fn new(write: Secret, read: Option<Secret>) -> Result<Tokens, String> {
        for (what, t) in [("api token", Some(&write)), ("api read token", read.as_ref())] {
            if let Some(t) = t
                && (t.0.len() < TOKEN_BYTES_MIN || t.0.chars().any(|c| c.is_whitespace() || c.is_control()))
            {
                return Err(format!(
                    "the {what} must be at least {TOKEN_BYTES_MIN} bytes, without spaces or control characters"
                ));
            }
        }
        if read.as_ref() == Some(&write) {
            return Err("the api read token must differ from the api token".into());
        }
        Ok(Tokens { write: Some(write), read })
    }

    /// The read-write token, for this node's own requests to its peers.
    pub fn write_token(&self) -> Option<&Secret> {
        self.write.as_ref()
    }

    /// Whether a request with these headers may do what `needs` says.
    pub fn check(&self, headers: &HeaderMap, needs: Access) -> Result<(), NodeError> {
        self.check_presented(bearer(headers), needs)
    }

    /// As [`Tokens::check`], for a token presented some other way (`None`: none was).
    pub fn check_presented(&self, presented: Option<&[u8]>, needs: Access) -> Result<(), NodeError> {
        let Some(write) = &self.write else { return Ok(()) };
        let presented =
            presented.ok_or_else(|| NodeError::Unauthorized("send Authorization: Bearer <token>".into()))?;
        // Both are compared, whatever the first says: the time taken does not tell which.
        let (is_write, is_read) = (write.matches(presented), self.read.as_ref().is_some_and(|r| r.matches(presented)));
        match (is_write, is_read, needs) {
            (true, _, _) | (false, true, Access::Read) => Ok(()),
            (false, true, Access::Write) => Err(NodeError::Forbidden("this token may read, not write".into())),
            (false, false, _) => Err(NodeError::Unauthorized("the token is not one of this deployment's".into())),
        }
    }
}

/// The token of `Authorization: Bearer <token>`, if the request has one.
pub fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
}

/// `WWW-Authenticate` of a 401.
pub fn challenge() -> HeaderValue {
    HeaderValue::from_static("Bearer realm=\"concord\"")
}

/// A token from a file: its first line, trimmed (a missing or empty file is an error).
pub fn read_token_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading the token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    Ok(Secret::new(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(a) = auth {
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(a).unwrap());
        }
        h
    }

    #[test]
    fn tokens_grant_what_they_should_and_nothing_more() {
        let write = "w".repeat(32);
        let read = "r".repeat(32);
        let t = Tokens::new(Secret::new(&write), Some(Secret::new(&read))).unwrap();
        let bearer = |s: &str| format!("Bearer {s}");
        assert!(t.check(&headers(Some(&bearer(&write))), Access::Write).is_ok());
        assert!(t.check(&headers(Some(&bearer(&read))), Access::Read).is_ok());
        assert!(matches!(t.check(&headers(Some(&bearer(&read))), Access::Write), Err(NodeError::Forbidden(_))));
        assert!(matches!(t.check(&headers(None), Access::Read), Err(NodeError::Unauthorized(_))));
        for wrong in [bearer(&write[1..]), bearer(&format!("{write}x")), write.clone(), format!("Basic {write}")] {
            assert!(
                matches!(t.check(&headers(Some(&wrong)), Access::Read), Err(NodeError::Unauthorized(_))),
                "{wrong}"
            );
        }
        assert!(Tokens::open().check(&headers(None), Access::Write).is_ok());
        assert!(Tokens::new(Secret::new("short"), None).is_err());
        assert!(Tokens::new(Secret::new(&write), Some(Secret::new(&write))).is_err());
        assert_eq!(format!("{:?}", Secret::new(&write)), "Secret(..)", "never printed");
    }
}
