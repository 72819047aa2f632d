//! Validation at the API edge: what a key, a bucket and a value may be.

use crate::{CoreError, CoreResult};

/// Keys are non-empty UTF-8 of at most this many bytes.
pub const KEY_BYTES_MAX: usize = 1024;
/// Bucket names: 1..=128 of `A-Z a-z 0-9 _ - .`.
pub const BUCKET_BYTES_MAX: usize = 128;
/// The default largest value (configurable per node).
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1 << 20;

pub fn check_bucket(bucket: &str) -> CoreResult<()> {
    let ok_chars = bucket.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if bucket.is_empty() || bucket.len() > BUCKET_BYTES_MAX || !ok_chars {
        return Err(CoreError::InvalidInput(format!(
            "bucket {bucket:?}: use 1 to {BUCKET_BYTES_MAX} of A-Z, a-z, 0-9, '_', '-', '.'"
        )));
    }
    Ok(())
}

/// A key arrives as raw bytes (after percent-decoding): it must be UTF-8, non-empty,
/// at most [`KEY_BYTES_MAX`] bytes and free of NUL (NUL separates bucket and key on disk).
pub fn check_key(key: &[u8]) -> CoreResult<&str> {
    if key.is_empty() {
        return Err(CoreError::InvalidInput("key is empty".into()));
    }
    if key.len() > KEY_BYTES_MAX {
        return Err(CoreError::InvalidInput(format!("key is {} bytes; the limit is {KEY_BYTES_MAX}", key.len())));
    }
    let key = std::str::from_utf8(key).map_err(|_| CoreError::InvalidInput("key is not valid UTF-8".into()))?;
    if key.contains('\0') {
        return Err(CoreError::InvalidInput("key contains NUL".into()));
    }
    Ok(key)
}

/// Percent-encode a key or bucket as one URL path segment (keys may hold any UTF-8,
/// slashes included): the inverse of the server's percent-decoding.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_buckets() {
        assert!(check_key(b"a/b c").is_ok());
        assert!(check_key(b"").is_err());
        assert!(check_key(&[0xff]).is_err());
        assert!(check_key("k".repeat(1024).as_bytes()).is_ok());
        assert!(check_key("k".repeat(1025).as_bytes()).is_err());
        assert!(check_bucket("users_v2.eu").is_ok());
        assert!(check_bucket("").is_err());
        assert!(check_bucket("a/b").is_err());
        assert_eq!(encode_segment("a/b ü"), "a%2Fb%20%C3%BC");
    }
}
