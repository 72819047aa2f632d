//! automerge-repo's document ids: 16 bytes in base58check (Bitcoin's alphabet, the first
//! four bytes of the payload's double SHA-256 appended). Users see them as
//! `automerge:<id>`; messages carry the bare id. In Concord a document id names a key of
//! the sync bucket: the bare id, so the same document is read and written over HTTP as
//! `/v1/docs/<sync_bucket>/<id>`.

use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 58] = b"123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
const ID_BYTES: usize = 16;
/// The longest text a 20-byte base58check can be (longer input is refused unread).
const TEXT_MAX: usize = 28;

/// A document id, checked: `automerge:<id>` or the bare id in, the bare id kept.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DocId(String);

impl DocId {
    pub fn parse(text: &str) -> Result<DocId, String> {
        let bare = text.strip_prefix("automerge:").unwrap_or(text);
        let bytes = decode_check(bare).map_err(|e| format!("document id {:?}: {e}", truncate(bare)))?;
        if bytes.len() != ID_BYTES {
            return Err(format!("document id {:?}: {} bytes, not {ID_BYTES}", truncate(bare), bytes.len()));
        }
        Ok(DocId(bare.to_string()))
    }

    pub fn from_bytes(bytes: [u8; ID_BYTES]) -> DocId {
        DocId(encode_check(&bytes))
    }

    /// The bare id (the key in the sync bucket, and the id in messages).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

fn checksum(payload: &[u8]) -> [u8; 4] {
    let twice = Sha256::digest(Sha256::digest(payload));
    [twice[0], twice[1], twice[2], twice[3]]
}

pub fn encode_check(payload: &[u8]) -> String {
    let mut bytes = payload.to_vec();
    bytes.extend_from_slice(&checksum(payload));
    // Base 58 digits, least significant first.
    let mut digits: Vec<u8> = Vec::new();
    for &byte in &bytes {
        let mut carry = byte as u32;
        for d in digits.iter_mut() {
            carry += (*d as u32) << 8;
            *d = (carry % 58) as u8;
            carry /= 58;
        }
        while carry > 0 {
            digits.push((carry % 58) as u8);
            carry /= 58;
        }
    }
    let zeros = bytes.iter().take_while(|b| **b == 0).count();
    let mut out = "1".repeat(zeros);
    out.extend(digits.iter().rev().map(|d| ALPHABET[*d as usize] as char));
    out
}

pub fn decode_check(text: &str) -> Result<Vec<u8>, String> {
    if text.is_empty() || text.len() > TEXT_MAX {
        return Err(format!("{} characters; an id has 1 to {TEXT_MAX}", text.len()));
    }
    // Bytes, least significant first.
    let mut bytes: Vec<u8> = Vec::new();
    for c in text.bytes() {
        let digit = ALPHABET.iter().position(|a| *a == c).ok_or_else(|| format!("{:?} is not base58", c as char))?;
        let mut carry = digit as u32;
        for b in bytes.iter_mut() {
            carry += (*b as u32) * 58;
            *b = (carry & 0xff) as u8;
            carry >>= 8;
        }
        while carry > 0 {
            bytes.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    let zeros = text.bytes().take_while(|c| *c == b'1').count();
    let mut out = vec![0u8; zeros];
    out.extend(bytes.iter().rev());
    if out.len() < 4 {
        return Err("too short for a checksum".into());
    }
    let (payload, sum) = out.split_at(out.len() - 4);
    if checksum(payload) != sum {
        return Err("bad checksum".into());
    }
    Ok(payload.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_damage_is_refused() {
        // Bitcoin's base58check of a version-0 hash of zeros (a well-known address).
        assert_eq!(encode_check(&[0u8; 21]), "1111111111111111111114oLvT2");
        assert_eq!(decode_check("1111111111111111111114oLvT2").unwrap(), vec![0u8; 21]);
        for seed in 0..200u8 {
            let bytes: [u8; 16] = std::array::from_fn(|i| seed.wrapping_mul(31).wrapping_add(i as u8 * 7));
            let id = DocId::from_bytes(bytes);
            assert_eq!(DocId::parse(id.as_str()), Ok(id.clone()));
            assert_eq!(DocId::parse(&format!("automerge:{}", id.as_str())), Ok(id.clone()));
            let mut damaged = id.as_str().as_bytes().to_vec();
            let last = damaged.len() - 1;
            damaged[last] = if damaged[last] == b'2' { b'3' } else { b'2' };
            assert!(DocId::parse(std::str::from_utf8(&damaged).unwrap()).is_err());
        }
        assert!(DocId::parse("").is_err());
        assert!(DocId::parse("0OIl").is_err(), "not the alphabet");
        assert!(DocId::parse(&encode_check(&[7; 15])).is_err(), "15 bytes");
        assert!(DocId::parse(&"z".repeat(500)).is_err());
    }
}
