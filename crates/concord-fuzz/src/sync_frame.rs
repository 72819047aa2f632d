//! Frames of `GET /v1/sync` (automerge-repo's protocol): a WebSocket message read as the
//! server reads it (CBOR, then the document id, then the Automerge sync message and its
//! checks), then, when it passes, taken by automerge as the server takes it: received
//! into a document with changes of its own, which then generates its reply (testing the
//! client's bloom filters against its changes).

use automerge::sync::{State, SyncDoc};
use concord_node::api::sync::read_frame;

use crate::seeds;

/// Never a panic or an abort: refused, or received and answered (automerge's own
/// refusals and caught panics are refusals too).
pub fn sync_frame(data: &[u8]) {
    let Ok(Some((id, message))) = read_frame(data) else { return };
    assert!(!id.as_str().is_empty());
    let mut document = seeds::sync_document();
    let mut state = State::new();
    let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        document.receive_sync_message(&mut state, message).ok()?;
        document.generate_sync_message(&mut state)
    }));
    let _ = answered;
}
