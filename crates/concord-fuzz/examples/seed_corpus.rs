//! Writes the seed corpora of the cargo-fuzz targets (valid encodings made by Concord's
//! own encoders, see `concord_fuzz::seeds`) into `fuzz/corpus/<target>/seed-<n>`, or
//! under the directory given as the first argument:
//!
//! ```text
//! cargo run -p concord-fuzz --example seed_corpus [DIR]
//! ```

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let default = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let dir = std::env::args_os().nth(1).map(PathBuf::from).unwrap_or(default);
    concord_fuzz::seeds::write_corpus(&dir)?;
    let n = concord_fuzz::seeds::corpus().len();
    println!("wrote {n} seeds under {}", dir.display());
    Ok(())
}
