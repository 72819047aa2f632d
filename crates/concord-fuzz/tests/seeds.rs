//! The seeds are what they claim to be: valid inputs that each surface accepts (so the
//! fuzzers start past the first checks), and the committed corpus under `fuzz/corpus`
//! is exactly what `cargo run -p concord-fuzz --example seed_corpus` writes.

use std::path::PathBuf;

use concord_core::changeset::{Changeset, stored};
use concord_fuzz::scratch::ScratchStore;
use concord_fuzz::seeds::{corpus, seeds};

#[test]
fn every_seed_passes_its_surface() {
    for (name, surface) in concord_fuzz::targets() {
        for seed in seeds(name) {
            surface(&seed);
        }
    }
}

#[test]
fn seeds_are_accepted_by_their_decoders() {
    for s in seeds("changeset") {
        Changeset::decode(&s).expect("a changeset seed decodes");
    }
    for s in seeds("stored_register") {
        stored::decode(&s).expect("a register seed decodes");
    }
    for s in seeds("session_token").iter().filter(|s| s.starts_with(b"v1:")) {
        concord_core::token::decode(std::str::from_utf8(s).unwrap()).expect("a token seed decodes");
    }
    for s in seeds("doc_ops") {
        concord_core::doc::parse_ops(&s).expect("a document request seed parses");
    }
    for s in seeds("snapshot") {
        ScratchStore::new().store.import_snapshot(&s).expect("a snapshot seed loads");
    }
    for s in seeds("automerge_doc") {
        concord_core::doc::load_doc(&s).expect("a document seed loads");
    }
    for s in seeds("automerge_change") {
        automerge::Change::from_bytes(s).expect("a change seed decodes");
    }
    for s in seeds("api_json") {
        serde_json::from_slice::<serde_json::Value>(&s).expect("an API seed is JSON");
    }
}

#[test]
fn the_committed_corpus_is_current() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    for (target, name, bytes) in corpus() {
        let path = dir.join(target).join(&name);
        let committed = std::fs::read(&path).unwrap_or_default();
        assert!(
            committed == bytes,
            "{} differs from its seed: run `cargo run -p concord-fuzz --example seed_corpus`",
            path.display()
        );
    }
}
