//! Session tokens (`Concord-Token` on HTTP and NATS requests, and in followers' progress
//! reports) and the origin names inside them.

use concord_core::ids::{Origin, REGION_BYTES_MAX, RegionId};
use concord_core::token;

/// Most entries a token decodes to (the decoder's limit).
const TOKEN_ENTRIES_MAX: usize = 10_000;

/// `token::decode` on a header value: refused, or an applied vector within the limit
/// whose encoding is header-safe text that decodes to it again.
pub fn session_token(data: &[u8]) {
    // A header value that is not UTF-8 never reaches the decoder (the front ends take
    // the header as a string or drop it).
    let Ok(text) = std::str::from_utf8(data) else { return };
    origin_names(text);
    let Ok(vv) = token::decode(text) else { return };
    assert!(vv.len() <= TOKEN_ENTRIES_MAX, "{} entries", vv.len());
    let encoded = token::encode(&vv);
    assert!(encoded.bytes().all(|b| b.is_ascii_graphic()), "a token is header-safe: {encoded:?}");
    assert_eq!(token::decode(&encoded).expect("an encoded token decodes"), vv, "decode(encode(vv)) == vv");
    for (origin, seq) in vv.iter() {
        assert!(seq >= 1, "a token names no zero sequence ({origin})");
    }
}

/// Region and origin names (`us-east`, `us-east.3`): refused, or valid names that print
/// as they parse.
fn origin_names(text: &str) {
    if let Ok(region) = RegionId::new(text) {
        assert!((1..=REGION_BYTES_MAX).contains(&region.as_str().len()));
        assert_eq!(region.to_string(), text);
    }
    if let Ok(origin) = text.parse::<Origin>() {
        let printed = origin.to_string();
        assert_eq!(printed.parse::<Origin>().expect("a printed origin parses"), origin);
        let actor = origin.actor_bytes();
        assert_eq!(actor, printed.as_bytes(), "an origin's Automerge actor is its name");
    }
}
