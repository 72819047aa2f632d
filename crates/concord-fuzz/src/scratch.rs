//! Scratch redb stores for the surfaces that need one (snapshots, cursors): each in a
//! directory of its own, removed when dropped. Under `/dev/shm` when the machine has it
//! (a commit's fsync costs nothing there, so a fuzzer runs hundreds of imports a second),
//! else under the system's temporary directory; `CONCORD_FUZZ_SCRATCH` overrides both.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use concord_storage::Store;

pub struct ScratchStore {
    pub store: Store,
    dir: PathBuf,
}

impl ScratchStore {
    pub fn new() -> ScratchStore {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = base_dir().join(format!("concord-fuzz-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).unwrap_or_else(|e| panic!("a scratch store at {}: {e}", dir.display()));
        ScratchStore { store, dir }
    }
}

impl Default for ScratchStore {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ScratchStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CONCORD_FUZZ_SCRATCH") {
        return PathBuf::from(dir);
    }
    let shm = PathBuf::from("/dev/shm");
    if shm.is_dir() { shm } else { std::env::temp_dir() }
}
