//! What a client's sync message may hold, checked before automerge reads it.
//!
//! automerge 0.12 takes a sync message's fields as they come: a bloom filter's probe
//! count sizes an allocation per change it tests (`u32::MAX` probes: 16 GiB, an abort no
//! `catch_unwind` stops), zero bits per entry divides by zero, and every `have` entry is
//! kept in the connection's sync state and tested again at each message the server
//! generates. A chunk that does not decode is skipped silently, so the reply would read
//! as an acknowledgement of it. So the counts are bounded, the filters' parameters are
//! those a real client uses, and every chunk is decoded as defensively as a change from
//! a log: a change (V1 messages carry one per chunk, V2 several back to back) or a saved
//! document.

use automerge::sync::{BloomFilter, Message};
use concord_core::doc;

/// Most `have` entries in one message (automerge sends one).
pub const HAVES_MAX: usize = 16;
/// Most hashes in one message's `heads`, `need`, or a `have`'s `last_sync`.
pub const HASHES_MAX: usize = 10_000;
/// A bloom filter's probes and bits per entry (automerge uses 7 and 10).
const PROBES_MAX: u64 = 32;
const BITS_PER_ENTRY_MAX: u64 = 64;

pub fn check(message: &Message) -> Result<(), String> {
    let counts = [("heads", message.heads.len()), ("need", message.need.len()), ("have", message.have.len())];
    for (what, n) in counts {
        let most = if what == "have" { HAVES_MAX } else { HASHES_MAX };
        if n > most {
            return Err(format!("{n} entries in {what}; at most {most}"));
        }
    }
    for have in &message.have {
        if have.last_sync.len() > HASHES_MAX {
            return Err(format!("{} hashes in a have's last_sync; at most {HASHES_MAX}", have.last_sync.len()));
        }
        check_bloom(&have.bloom)?;
    }
    for (i, chunk) in message.changes.iter().enumerate() {
        check_chunk(chunk).map_err(|e| format!("its chunk {i}: {e}"))?;
    }
    Ok(())
}

/// The filter's parameters, from its encoding (`entries bits_per_entry probes bits`,
/// LEB128; empty for an empty filter).
fn check_bloom(bloom: &BloomFilter) -> Result<(), String> {
    let bytes = bloom.to_bytes();
    if bytes.is_empty() {
        return Ok(());
    }
    let mut rest = &bytes[..];
    let mut next = || {
        let (value, after) = uleb128(rest).ok_or("a bloom filter with a bad header")?;
        rest = after;
        Ok::<u64, String>(value)
    };
    let (_entries, bits_per_entry, probes) = (next()?, next()?, next()?);
    if !(1..=BITS_PER_ENTRY_MAX).contains(&bits_per_entry) || !(1..=PROBES_MAX).contains(&probes) {
        return Err(format!(
            "a bloom filter of {bits_per_entry} bits per entry and {probes} probes \
             (1 to {BITS_PER_ENTRY_MAX}, 1 to {PROBES_MAX})"
        ));
    }
    Ok(())
}

/// A chunk of changes (one or several back to back) or a saved document, each decoding.
fn check_chunk(chunk: &[u8]) -> Result<(), String> {
    for (kind, piece) in doc::chunks::split_saved(chunk).map_err(|e| e.to_string())? {
        if kind == doc::chunks::DOCUMENT {
            doc::load_doc(piece).map_err(|e| e.to_string())?;
        } else {
            doc::decode_change(piece.to_vec()).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

fn uleb128(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f).checked_shl(7 * i as u32)?;
        if b & 0x80 == 0 {
            return Some((value, &bytes[i + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use automerge::sync::{ChunkList, Have, MessageVersion};
    use automerge::transaction::Transactable;

    fn message(have: Vec<Have>, changes: Vec<Vec<u8>>) -> Message {
        Message {
            heads: Vec::new(),
            need: Vec::new(),
            have,
            changes: ChunkList::from(changes),
            flags: None,
            version: MessageVersion::V1,
        }
    }

    fn bloom(bits_per_entry: u8, probes: u8) -> BloomFilter {
        // One entry: its bits rounded up to bytes.
        let mut bytes = vec![1, bits_per_entry, probes];
        bytes.extend(vec![0xff; (bits_per_entry as usize).div_ceil(8)]);
        BloomFilter::try_from(&bytes[..]).unwrap()
    }

    fn changes(n: usize) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut d = automerge::AutoCommit::new();
        let mut each = Vec::new();
        for i in 0..n {
            d.put(automerge::ROOT, "n", i as i64).unwrap();
            each.push(d.get_last_local_change().unwrap().raw_bytes().to_vec());
        }
        (each, d.save())
    }

    #[test]
    fn what_real_clients_send_passes_and_the_rest_is_refused() {
        let (each, saved) = changes(3);
        let have = |b| vec![Have { last_sync: Vec::new(), bloom: b }];
        assert_eq!(check(&message(have(bloom(10, 7)), each.clone())), Ok(()), "V1: a change per chunk");
        assert_eq!(check(&message(Vec::new(), vec![each.concat()])), Ok(()), "V2: changes back to back");
        assert_eq!(check(&message(Vec::new(), vec![saved])), Ok(()), "V2: a saved document");

        for (bits, probes) in [(0, 7), (10, 0), (10, 33), (65, 7)] {
            assert!(check(&message(have(bloom(bits, probes)), Vec::new())).is_err(), "{bits} bits, {probes} probes");
        }
        let many = (0..=HAVES_MAX).map(|_| Have { last_sync: Vec::new(), bloom: BloomFilter::default() }).collect();
        assert!(check(&message(many, Vec::new())).is_err());
        let mut damaged = each.concat();
        let at = damaged.len() - 2;
        damaged[at] ^= 0xff;
        assert!(check(&message(Vec::new(), vec![damaged])).is_err(), "a damaged change among several");
        assert!(check(&message(Vec::new(), vec![b"not automerge".to_vec()])).is_err());
    }
}
