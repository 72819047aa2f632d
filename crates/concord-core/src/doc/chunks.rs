//! The chunks of Automerge bytes from outside, checked before Automerge parses them.
//!
//! Automerge's binary format is a sequence of chunks, each `magic(4) checksum(4)
//! type(1) length(LEB128) data(length)`. Concord writes two types only: a document (0),
//! what `Automerge::save` writes first, and a change (1), what `Change::raw_bytes` gives
//! (the document changes of changesets and the pending changes) and what `save` appends
//! for changes whose dependencies have not arrived. automerge 0.12 reads two more types,
//! and with each a few bytes can take the machine's memory before any check:
//!
//! - a **bundle** (3, new in 0.12): its parser expands the run-length-encoded op counter
//!   column into a `Vec<i64>` first (`storage/bundle/storage.rs`, `decode_delta_int`),
//!   so a run length in a few bytes claims billions of ops. A 365-byte bundle found by
//!   fuzzing (`crates/concord-fuzz`, target `automerge_doc`) allocates past 8 GB, and
//!   the process aborts, which no `catch_unwind` stops. `Change::from_bytes` parses a
//!   chunk before it refuses its type, so the same bytes as a changeset's document
//!   change abort every replica that reads the log (and again at every restart);
//! - a **compressed change** (2): inflated with `read_to_end`, without bound (DEFLATE
//!   expands up to about 1000 times).
//!
//! So bytes holding another chunk type are refused here, by a walk of the chunk headers
//! that reads no more than the headers. What this does not bound: a document chunk's
//! DEFLATE-compressed columns (a document, in proportion to its size, as Automerge
//! itself writes them), and whatever Automerge's parsers do inside the two types it
//! is left with (automerge 0.12 bounds its op tables with `try_reserve`).

use crate::{CoreError, CoreResult};

const MAGIC: [u8; 4] = [0x85, 0x6f, 0x4a, 0x83];
pub const DOCUMENT: u8 = 0;
pub const CHANGE: u8 = 1;

/// Walk the chunks of `bytes`, calling `check` with each chunk's type in order (it
/// refuses a type before the walk reads further); returns how many there are. `Err`
/// also when the framing is broken (a bad magic number, a length past the end), which
/// Automerge refuses too.
fn walk(bytes: &[u8], check: impl FnMut(u8) -> CoreResult<()>) -> CoreResult<usize> {
    walk_chunks(bytes, check, |_, _| {})
}

/// [`walk`], handing each whole chunk (header included) and its type to `each`.
fn walk_chunks<'a>(
    bytes: &'a [u8],
    mut check: impl FnMut(u8) -> CoreResult<()>,
    mut each: impl FnMut(u8, &'a [u8]),
) -> CoreResult<usize> {
    let mut count = 0;
    let mut rest = bytes;
    while !rest.is_empty() {
        let (magic, after) = rest.split_at_checked(MAGIC.len()).ok_or_else(|| broken("a truncated chunk header"))?;
        if magic != MAGIC {
            return Err(broken("a chunk without Automerge's magic bytes"));
        }
        let (&chunk_type, after) =
            after.get(4..).and_then(<[u8]>::split_first).ok_or_else(|| broken("a truncated chunk header"))?;
        check(chunk_type)?;
        let (len, after) = uleb128(after).ok_or_else(|| broken("a bad chunk length"))?;
        let len = usize::try_from(len)
            .ok()
            .filter(|len| *len <= after.len())
            .ok_or_else(|| broken("a chunk longer than the bytes"))?;
        count += 1;
        let whole = rest.len() - after.len() + len;
        each(chunk_type, &rest[..whole]);
        rest = &after[len..];
    }
    Ok(count)
}

/// A saved document holds documents and changes only.
pub(crate) fn check_saved(bytes: &[u8]) -> CoreResult<()> {
    walk(bytes, |t| if t == DOCUMENT || t == CHANGE { Ok(()) } else { Err(refused(t)) }).map(|_| ())
}

/// The chunks of bytes from outside that hold documents and changes only (what a sync
/// message carries: changes one after another, or a saved document), each with its type
/// ([`DOCUMENT`] or [`CHANGE`]).
pub fn split_saved(bytes: &[u8]) -> CoreResult<Vec<(u8, &[u8])>> {
    let mut chunks = Vec::new();
    let allowed = |t| if t == DOCUMENT || t == CHANGE { Ok(()) } else { Err(refused(t)) };
    walk_chunks(bytes, allowed, |t, chunk| chunks.push((t, chunk)))?;
    Ok(chunks)
}

/// A document change is one change chunk.
pub(crate) fn check_change(bytes: &[u8]) -> CoreResult<()> {
    match walk(bytes, |t| if t == CHANGE { Ok(()) } else { Err(refused(t)) })? {
        1 => Ok(()),
        n => Err(CoreError::Corrupt(format!("a document change of {n} Automerge chunks, not one"))),
    }
}

fn refused(chunk_type: u8) -> CoreError {
    let what = match chunk_type {
        DOCUMENT => "a document where a change belongs",
        2 => "a compressed change",
        3 => "a change bundle",
        _ => "an unknown type",
    };
    CoreError::Corrupt(format!("an Automerge chunk of type {chunk_type} ({what}), which Concord never writes"))
}

fn broken(what: &str) -> CoreError {
    CoreError::Corrupt(format!("not Automerge bytes: {what}"))
}

/// An unsigned LEB128 number of at most 64 bits, and what follows it.
fn uleb128(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(b & 0x7f);
        if i == 9 && bits > 1 {
            return None;
        }
        value |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(chunk_type: u8, data: &[u8]) -> Vec<u8> {
        let mut c = MAGIC.to_vec();
        c.extend_from_slice(&[0; 4]);
        c.push(chunk_type);
        c.push(u8::try_from(data.len()).unwrap());
        c.extend_from_slice(data);
        c
    }

    #[test]
    fn only_the_chunk_types_concord_writes_pass() {
        let doc = super::super::new_doc();
        assert_eq!(check_saved(&doc.save()), Ok(()));
        assert_eq!(check_saved(&[]), Ok(()), "an empty document saves to nothing");
        let both = [chunk(DOCUMENT, b"d"), chunk(CHANGE, b"c"), chunk(CHANGE, b"")].concat();
        assert_eq!(check_saved(&both), Ok(()));
        let split = split_saved(&both).unwrap();
        let types: Vec<u8> = split.iter().map(|(t, _)| *t).collect();
        assert_eq!(types, vec![DOCUMENT, CHANGE, CHANGE]);
        assert_eq!(split.iter().map(|(_, c)| c.to_vec()).collect::<Vec<_>>().concat(), both, "every byte, in order");
        assert_eq!(split[0].1, &chunk(DOCUMENT, b"d")[..]);
        assert!(split_saved(&chunk(3, b"bundle")).is_err());
        assert_eq!(check_change(&chunk(CHANGE, b"c")), Ok(()));
        for t in [2, 3, 4, 255] {
            assert!(check_saved(&[chunk(DOCUMENT, b"d"), chunk(t, b"x")].concat()).is_err(), "type {t}");
            assert!(check_change(&chunk(t, b"x")).is_err(), "type {t}");
        }
        assert!(check_change(&chunk(DOCUMENT, b"d")).is_err());
        assert!(check_change(&[chunk(CHANGE, b"c"), chunk(CHANGE, b"c")].concat()).is_err());
        assert!(check_change(&[]).is_err());
    }

    #[test]
    fn broken_framing_is_refused() {
        let c = chunk(CHANGE, b"abc");
        for cut in 0..c.len() {
            assert!(check_saved(&c[..cut]).is_err() || cut == 0, "cut at {cut}");
        }
        let mut bad_magic = c.clone();
        bad_magic[0] = 0;
        assert!(check_saved(&bad_magic).is_err());
        let mut long = c;
        long[9] = 0xff; // an unterminated length
        assert!(check_saved(&long).is_err());
        assert_eq!(uleb128(&[0xff; 9].iter().copied().chain([1]).collect::<Vec<_>>()).map(|(v, _)| v), Some(u64::MAX));
        assert_eq!(uleb128(&[0xff; 9].iter().copied().chain([2]).collect::<Vec<_>>()), None);
    }
}
