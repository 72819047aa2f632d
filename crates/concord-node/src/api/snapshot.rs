//! `GET /v1/snapshot`: this replica's whole state, for a new replica to start from and
//! for `concord backup`, streamed as the store reads it (one read transaction, so one
//! consistent state): a blocking thread writes it record by record into a bounded
//! channel of chunks that the answer's body drains, so neither side holds the snapshot
//! in memory. At most [`EXPORTS_MAX`] run at once; another is refused with 503
//! `overloaded`. A failure part way (the store, the client gone) ends the body early: the
//! reader sees a truncated answer (a snapshot's end is marked, so a cut one never loads).

use std::io::Write;
use std::sync::{Arc, LazyLock};

use axum::body::Body;
use bytes::Bytes;
use concord_api::ErrorCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::warn;

use crate::Node;
use crate::error::NodeError;

/// Snapshots exported at once (each holds a read transaction and a blocking thread).
pub const EXPORTS_MAX: usize = 2;
/// The size of the pieces the body is sent in, and how many may wait to be sent.
const CHUNK_BYTES: usize = 256 << 10;
const CHUNKS_IN_FLIGHT: usize = 8;

static EXPORTS: LazyLock<Arc<Semaphore>> = LazyLock::new(|| Arc::new(Semaphore::new(EXPORTS_MAX)));

/// The body of `GET /v1/snapshot`, or 503 when [`EXPORTS_MAX`] run already.
pub fn snapshot_body(node: &Node) -> Result<Body, NodeError> {
    let permit = EXPORTS.clone().try_acquire_owned().map_err(|_| {
        NodeError::unavailable(ErrorCode::Overloaded, format!("{EXPORTS_MAX} snapshots are being sent already"))
    })?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_IN_FLIGHT);
    let store = node.store.clone();
    tokio::task::spawn_blocking(move || export(store, tx, permit));
    let chunks = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|chunk| (chunk, rx)) });
    Ok(Body::from_stream(chunks))
}

fn export(
    store: concord_storage::Store,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    _permit: OwnedSemaphorePermit,
) {
    let mut out = std::io::BufWriter::with_capacity(CHUNK_BYTES, Chunks(tx.clone()));
    let result = store
        .export_snapshot_to(&mut out)
        .and_then(|()| out.flush().map_err(|e| concord_storage::StorageError::Database(e.to_string())));
    if let Err(e) = result {
        warn!(error = %e, "a snapshot was not sent whole");
        let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
    }
}

/// Writes go to the body as chunks (blocking while the body is behind).
struct Chunks(mpsc::Sender<Result<Bytes, std::io::Error>>);

impl Write for Chunks {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(Bytes::copy_from_slice(buf)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the reader went away"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
