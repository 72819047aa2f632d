//! What a node reads from NATS besides the logs: the subject of a request to the
//! `concord` micro service (which names its operation), and the progress reports
//! followers publish on `concord.applied.<region>.<node>` (read by the leader).
//!
//! The request's headers reach the node as strings, already split by async-nats; their
//! values go through the decoders fuzzed elsewhere ([`crate::session_token`] for
//! `Concord-Token`, [`crate::http_path`] for `Concord-Bucket`/`Concord-Key`,
//! [`crate::cursors`] for the list parameters); the body is a value (bytes, taken as they
//! are) or a document request ([`crate::doc_ops`]).

use concord_node::api::Op;
use concord_node::followers::{Followers, Report};

const GROUP: &str = "concord.api.us-east";

/// The input is `subject` `\n` `report`: the subject parses to the operation it names
/// (exactly its name, or the service group then its name) or is refused; the report is
/// refused, or re-serializes to itself and is taken in (or ignored for a bad token)
/// without a panic.
pub fn nats_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (subject, report) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(op) = Op::of_subject(GROUP, subject) {
        let named = subject == op.name() || subject == format!("{GROUP}.{op}");
        assert!(named, "{subject:?} is not the subject of {op}");
        assert_eq!(Op::parse(op.name()).expect("an operation's name parses"), op);
    }
    let Ok(parsed) = serde_json::from_slice::<Report>(report.as_bytes()) else { return };
    let json = serde_json::to_vec(&parsed).expect("a report serializes");
    let again: Report = serde_json::from_slice(&json).expect("a serialized report parses");
    assert_eq!(serde_json::to_vec(&again).expect("a report serializes"), json, "a report round-trips");
    let followers = Followers::default();
    followers.record(parsed);
    assert!(followers.live().len() <= 1);
}
