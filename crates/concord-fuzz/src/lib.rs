//! Every decoder that meets outside input, as one function per surface: `NAME(data)`
//! feeds `data` to Concord's real decoder and asserts what must hold for *any* bytes.
//! The same functions run under libFuzzer (`fuzz/`, one cargo-fuzz target each, run by
//! `.ci/fuzz.sh` for a bounded time) and under proptest (`tests/`, arbitrary bytes and
//! mutations of valid encodings from [`seeds`], bounded case counts in CI).
//!
//! The properties, for every surface:
//!
//! - **never panics**: damaged bytes give an error, never a crash (an `assert!` failing
//!   here is a bug in the decoder, or in what Concord does with what it decoded);
//! - **round-trips** where an encoder exists: what decodes, re-encodes to bytes that
//!   decode to the same value;
//! - **limits hold**: what decodes stays within the documented maximums (changes per
//!   changeset, bucket and key bytes, siblings, ops per request, entries per token) and
//!   never holds more payload than the input had;
//! - **nothing half-done**: a refused request leaves the document, a refused snapshot
//!   leaves the store, as they were;
//! - **the consumer goes on** ([`log_entry`]): whatever a log carries is applied, held
//!   back, parked (a newer format) or dead-lettered (recorded and counted), and the next
//!   good changeset still applies.
//!
//! | function | surface | decoder |
//! |---|---|---|
//! | [`changeset`] | changesets read from NATS | `Changeset::decode` |
//! | [`stored_register`] | LWW registers in local state and snapshots | `changeset::stored::decode` |
//! | [`log_entry`] | a message on a region's log, through the consumer | `Engine::prepare`/`apply` |
//! | [`automerge_change`] | a document change inside another region's changeset | `doc::decode_change`, the engine's apply |
//! | [`session_token`] | `Concord-Token` (HTTP and NATS headers), follower reports | `token::decode`, `Origin` |
//! | [`doc_ops`] | `POST /v1/docs`, NATS `doc.apply` bodies | `doc::parse_ops`, `apply_ops` |
//! | `http_path` (feature `node`) | `/v1/kv/{bucket}/{key}`, `/v1/docs/..`; NATS `Concord-Bucket`/`Concord-Key` | `percent_decode`, `input::check_*` |
//! | `nats_request` (feature `node`) | NATS API subjects, follower progress reports | `Op::of_subject`, `Report` |
//! | `sync_frame` (feature `node`) | `GET /v1/sync` WebSocket messages | `api::sync::read_frame`, then automerge's sync |
//! | [`cursors`] | `?prefix=&after=` of lists, `?since=&before=` of conflicts, `?before=` of dead letters | `Store::list_kv`, `list_conflicts`, `dead_letters` |
//! | [`snapshot`] | `GET /v1/snapshot` read by a new follower | `Store::import_snapshot`, then every table's reader |
//! | [`automerge_doc`] | saved documents (snapshots, `?format=automerge`) | `doc::load_doc`, `to_json`, `conflicts` |
//! | [`api_json`] | JSON contract bodies, leader and lease records of the NATS KV buckets | `serde_json` into `concord_api` types |
//!
//! Not reachable from here (private to `concord-node`, or inside async-nats): the query
//! string split (`params`), the `bucket/key` split of paths, `durability`, `limit`,
//! `timeout_ms` and `wait_ms` parsing, the `since`/`before` checks of the conflicts route,
//! the epoch counter of `concord_epochs`, and the NATS wire protocol and header parser.
//! The functions here call the public pieces those use. The surfaces that live in
//! `concord-node` need the `node` feature (on by default; the cargo-fuzz build leaves
//! it out unless asked, as it doubles the build).
//!
//! Crashes found are fixed, and kept with their inputs in `tests/fuzz_regressions.rs`:
//! damaged Automerge changes inside a changeset made automerge 0.12.0 panic in
//! `Engine::apply`, or save a document that no longer loads ([`log_entry`],
//! [`automerge_change`]); a snapshot with a short key in the conflict time index made
//! the next `Store::commit` panic ([`snapshot`]); a 365-byte change bundle made
//! `Automerge::load` and `Change::from_bytes` grow past 8 GB ([`automerge_doc`]; now
//! refused by `concord_core::doc`'s check of Automerge's chunk types, before automerge
//! parses it). Crashes not fixed yet: none known. Forged but well-formed changesets
//! (which the byte fuzzers rarely build) are tested in
//! `crates/concord-engine/tests/forged_changesets.rs`.

mod api_json;
mod automerge_doc;
mod changeset;
mod cursors;
mod doc_ops;
#[cfg(feature = "node")]
mod http_path;
mod log_entry;
#[cfg(feature = "node")]
mod nats_request;
pub mod replica;
pub mod scratch;
pub mod seeds;
mod session_token;
mod snapshot;
#[cfg(feature = "node")]
mod sync_frame;

pub use api_json::api_json;
pub use automerge_doc::{automerge_change, automerge_doc};
pub use changeset::{changeset, stored_register};
pub use cursors::cursors;
pub use doc_ops::doc_ops;
#[cfg(feature = "node")]
pub use http_path::http_path;
pub use log_entry::log_entry;
#[cfg(feature = "node")]
pub use nats_request::nats_request;
pub use session_token::session_token;
pub use snapshot::snapshot;
#[cfg(feature = "node")]
pub use sync_frame::sync_frame;

/// A surface: its name (the cargo-fuzz target's) and its function.
pub type Surface = (&'static str, fn(&[u8]));

/// Every surface (those of `concord-node` with the `node` feature).
pub fn targets() -> Vec<Surface> {
    let core: [Surface; 10] = [
        ("changeset", changeset),
        ("stored_register", stored_register),
        ("log_entry", log_entry),
        ("automerge_change", automerge_change),
        ("session_token", session_token),
        ("doc_ops", doc_ops),
        ("cursors", cursors),
        ("snapshot", snapshot),
        ("automerge_doc", automerge_doc),
        ("api_json", api_json),
    ];
    #[cfg(feature = "node")]
    let node: [Surface; 3] = [("http_path", http_path), ("nats_request", nats_request), ("sync_frame", sync_frame)];
    #[cfg(not(feature = "node"))]
    let node: [Surface; 0] = [];
    core.into_iter().chain(node).collect()
}

/// For the cargo-fuzz targets (`fuzz_target!(init: concord_fuzz::init_libfuzzer(), ..)`).
/// libfuzzer-sys makes every panic abort the run, even one that Concord catches on
/// purpose (`doc::load_doc` refuses a document whose bytes make Automerge panic). This
/// hook prints a panic in one line and lets it unwind instead: a panic Concord catches is
/// no crash, and one that leaves the target still aborts the run (libfuzzer-sys aborts
/// when a panic comes out of the target).
pub fn init_libfuzzer() {
    std::panic::set_hook(Box::new(|info| eprintln!("{info}")));
}
