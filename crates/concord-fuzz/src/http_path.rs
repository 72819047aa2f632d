//! Paths of the HTTP API (`/v1/kv/{bucket}/{key}`, `/v1/docs/{bucket}/{key}`): what
//! follows the route's prefix, percent-decoded and checked as the front end does. Over
//! NATS the same names arrive in the `Concord-Bucket` and `Concord-Key` headers and go
//! through the same checks.

use concord_core::input::{self, BUCKET_BYTES_MAX, KEY_BYTES_MAX};
use concord_node::api::http::percent_decode;

/// `percent_decode` and `input::check_bucket` / `check_key` on the rest of a path:
/// names that pass are within their limits, free of NUL, and a client's
/// `input::encode_segment` of them decodes back to them exactly.
pub fn http_path(data: &[u8]) {
    // The front end takes the path as a string (hyper refuses other bytes).
    let Ok(rest) = std::str::from_utf8(data) else { return };
    assert_eq!(percent_decode(&input::encode_segment(rest)), rest.as_bytes(), "decode(encode(s)) == s");
    let decoded = percent_decode(rest);
    assert!(decoded.len() <= rest.len(), "percent-decoding never grows");
    let (bucket_raw, key_raw) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket = String::from_utf8_lossy(&percent_decode(bucket_raw)).into_owned();
    let bucket_ok = input::check_bucket(&bucket).is_ok();
    if bucket_ok {
        assert!((1..=BUCKET_BYTES_MAX).contains(&bucket.len()));
        assert_eq!(input::encode_segment(&bucket), bucket, "a valid bucket needs no escaping");
    }
    let key_bytes = percent_decode(key_raw);
    if let Ok(key) = input::check_key(&key_bytes) {
        assert!((1..=KEY_BYTES_MAX).contains(&key.len()));
        assert!(!key.contains('\0'), "NUL separates bucket and key on disk");
        assert_eq!(percent_decode(&input::encode_segment(key)), key.as_bytes(), "a client's path names this key");
        if bucket_ok {
            let record = concord_storage::record_key(&bucket, key);
            let parts: Vec<&[u8]> = record.splitn(2, |b| *b == 0).collect();
            assert_eq!(parts, [bucket.as_bytes(), key.as_bytes()], "a record key splits back into bucket and key");
        }
    }
    // The same names as NATS headers: taken as they are, no decoding.
    let _ = input::check_bucket(rest);
    let _ = input::check_key(rest.as_bytes());
}
