//! Changesets: what a leader publishes to its region's log.
//!
//! A changeset is a batch of changes from one origin with the contiguous sequence
//! numbers `first_seq .. first_seq + changes.len()`. On the wire:
//!
//! ```text
//! "CCS" version(u8 = 1) origin(str) first_seq(varint) count(varint) change*
//! change = hlc.wall_ms(varint) hlc.logical(varint) bucket(str) key(str) kind(u8) body
//!   kind 1 put:    value(bytes) vv
//!   kind 2 delete: vv
//!   kind 3 doc:    automerge change(bytes)
//!   kind 4 mark:   floor(vv) stable(vv)           (version 2 only; bucket and key empty)
//!   kind | 0x80:   the same, followed by the 16-byte id of the conflict it resolves
//! vv = count(varint) (origin(str) seq(varint))*
//! ```
//!
//! A changeset holding a mark is written as version 2 (so a node that predates marks
//! parks the stream instead of misreading it); any other as version 1. A mark is a
//! writer's statement of what it had applied (`floor`) and of what every region had
//! applied as far as it knew (`stable`): tombstone collection rests on it
//! (`concord_engine`'s `marks`).
//!
//! A decoder meets bytes from other regions, possibly newer builds or corrupt peers:
//! [`Changeset::decode`] rejects anything it does not fully understand with an error,
//! a timestamp past the year 9999 included ([`Hlc::decoded`]).

use crate::codec::{Reader, Writer};
use crate::hlc::Hlc;
use crate::ids::Origin;
use crate::input::{BUCKET_BYTES_MAX, KEY_BYTES_MAX};
use crate::vv::VersionVector;
use crate::{CoreError, CoreResult};

const MAGIC: &[u8; 3] = b"CCS";
/// The newest format this build reads and writes (2: marks).
pub const FORMAT_VERSION: u8 = 2;
/// The format of a changeset without marks (read by every build).
const FORMAT_VERSION_PLAIN: u8 = 1;
/// No changeset may hold more changes than this (a decoder's limit, not a batch size).
pub const CHANGES_MAX: usize = 100_000;
/// A single value or document change: far above any configured value limit.
pub const BODY_BYTES_MAX: usize = 64 << 20;
const VV_ENTRIES_MAX: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeBody {
    Put {
        value: Vec<u8>,
        vv: VersionVector,
    },
    Delete {
        vv: VersionVector,
    },
    Doc {
        change: Vec<u8>,
    },
    /// A writer's mark: what it had applied (`floor`), and the pointwise minimum of the
    /// latest floors of every region it knew (`stable`). Its bucket and key are empty.
    Mark {
        floor: VersionVector,
        stable: VersionVector,
    },
}

impl ChangeBody {
    pub fn is_mark(&self) -> bool {
        matches!(self, ChangeBody::Mark { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub hlc: Hlc,
    pub bucket: String,
    pub key: String,
    pub body: ChangeBody,
    /// The conflict-log record this change resolves (POST /v1/conflicts/{id}/resolve).
    pub resolves: Option<uuid::Uuid>,
}

const RESOLVES_FLAG: u8 = 0x80;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Changeset {
    pub origin: Origin,
    pub first_seq: u64,
    pub changes: Vec<Change>,
}

impl Changeset {
    /// The sequence number of the last change.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.changes.len() as u64 - 1
    }

    /// The message id used for JetStream deduplication.
    pub fn message_id(&self) -> String {
        format!("{}:{}", self.origin, self.first_seq)
    }

    pub fn encode(&self) -> Vec<u8> {
        assert!(!self.changes.is_empty(), "a changeset holds at least one change");
        assert!(self.first_seq >= 1, "origin sequences start at 1");
        let mut w = Writer::new();
        w.raw(MAGIC);
        let marks = self.changes.iter().any(|c| c.body.is_mark());
        w.u8(if marks { FORMAT_VERSION } else { FORMAT_VERSION_PLAIN });
        w.str(&self.origin.to_string());
        w.u64(self.first_seq);
        w.u64(self.changes.len() as u64);
        for c in &self.changes {
            w.u64(c.hlc.wall_ms);
            w.u64(u64::from(c.hlc.logical));
            w.str(&c.bucket);
            w.str(&c.key);
            let flag = if c.resolves.is_some() { RESOLVES_FLAG } else { 0 };
            match &c.body {
                ChangeBody::Put { value, vv } => {
                    w.u8(1 | flag);
                    w.bytes(value);
                    encode_vv(&mut w, vv);
                }
                ChangeBody::Delete { vv } => {
                    w.u8(2 | flag);
                    encode_vv(&mut w, vv);
                }
                ChangeBody::Doc { change } => {
                    w.u8(3 | flag);
                    w.bytes(change);
                }
                ChangeBody::Mark { floor, stable } => {
                    w.u8(4 | flag);
                    encode_vv(&mut w, floor);
                    encode_vv(&mut w, stable);
                }
            }
            if let Some(id) = c.resolves {
                w.raw(id.as_bytes());
            }
        }
        w.finish()
    }

    /// The origin a changeset says it is of, read from its header alone (`None`: not a
    /// changeset this build reads).
    pub fn peek_origin(bytes: &[u8]) -> Option<Origin> {
        let mut r = Reader::new(bytes);
        if r.raw(3).ok()? != MAGIC || !(FORMAT_VERSION_PLAIN..=FORMAT_VERSION).contains(&r.u8().ok()?) {
            return None;
        }
        parse_origin(&r.string(64).ok()?).ok()
    }

    pub fn decode(bytes: &[u8]) -> CoreResult<Changeset> {
        let mut r = Reader::new(bytes);
        if r.raw(3)? != MAGIC {
            return Err(CoreError::Corrupt("not a changeset (bad magic)".into()));
        }
        let version = r.u8()?;
        if !(FORMAT_VERSION_PLAIN..=FORMAT_VERSION).contains(&version) {
            return Err(CoreError::UnsupportedVersion { found: version, supported: FORMAT_VERSION });
        }
        let origin: Origin = parse_origin(&r.string(64)?)?;
        let first_seq = r.u64()?;
        let count = r.len(CHANGES_MAX)?;
        if count == 0 || first_seq == 0 || first_seq.checked_add(count as u64).is_none() {
            return Err(CoreError::Corrupt("bad sequence range".into()));
        }
        let mut changes = Vec::with_capacity(count.min(1024));
        for _ in 0..count {
            let hlc = Hlc::decoded(r.u64()?, r.u32()?)?;
            let bucket = r.string(BUCKET_BYTES_MAX)?;
            let key = r.string(KEY_BYTES_MAX)?;
            let kind = r.u8()?;
            let body = match kind & !RESOLVES_FLAG {
                1 => {
                    let value = r.bytes(BODY_BYTES_MAX)?.to_vec();
                    ChangeBody::Put { value, vv: decode_vv(&mut r)? }
                }
                2 => ChangeBody::Delete { vv: decode_vv(&mut r)? },
                3 => ChangeBody::Doc { change: r.bytes(BODY_BYTES_MAX)?.to_vec() },
                4 if version >= 2 && bucket.is_empty() && key.is_empty() => {
                    ChangeBody::Mark { floor: decode_vv(&mut r)?, stable: decode_vv(&mut r)? }
                }
                kind => return Err(CoreError::Corrupt(format!("unknown change kind {kind}"))),
            };
            let resolves = if kind & RESOLVES_FLAG != 0 {
                let raw: [u8; 16] = r.raw(16)?.try_into().expect("16 bytes");
                Some(uuid::Uuid::from_bytes(raw))
            } else {
                None
            };
            changes.push(Change { hlc, bucket, key, body, resolves });
        }
        r.expect_end()?;
        Ok(Changeset { origin, first_seq, changes })
    }
}

fn parse_origin(s: &str) -> CoreResult<Origin> {
    s.parse().map_err(|e: CoreError| CoreError::Corrupt(e.to_string()))
}

/// A version vector in the codec of changesets (for other records that hold one).
pub fn encode_vector(w: &mut Writer, vv: &VersionVector) {
    encode_vv(w, vv)
}

/// A version vector in the codec of changesets, decoded as defensively.
pub fn decode_vector(r: &mut Reader<'_>) -> CoreResult<VersionVector> {
    decode_vv(r)
}

pub(crate) fn encode_vv(w: &mut Writer, vv: &VersionVector) {
    w.u64(vv.len() as u64);
    for (origin, seq) in vv.iter() {
        w.str(&origin.to_string());
        w.u64(seq);
    }
}

pub(crate) fn decode_vv(r: &mut Reader<'_>) -> CoreResult<VersionVector> {
    let n = r.len(VV_ENTRIES_MAX)?;
    let mut vv = VersionVector::new();
    for _ in 0..n {
        let origin = parse_origin(&r.string(64)?)?;
        let seq = r.u64()?;
        if seq == 0 {
            return Err(CoreError::Corrupt("zero entry in version vector".into()));
        }
        vv.observe(&origin, seq);
    }
    Ok(vv)
}

/// The encoding of one stored LWW register (local state), versioned like the wire:
/// version 1 held one version; version 2 holds the register's siblings.
pub mod stored {
    use super::*;
    use crate::lww::{Register, SIBLINGS_MAX, Version};

    const STORED_VERSION: u8 = 2;

    fn encode_version(w: &mut Writer, v: &Version) {
        w.str(&v.origin.to_string());
        w.u64(v.hlc.wall_ms);
        w.u64(u64::from(v.hlc.logical));
        match &v.value {
            Some(value) => {
                w.u8(1);
                w.bytes(value);
            }
            None => w.u8(0),
        }
        encode_vv(w, &v.vv);
    }

    fn decode_version(r: &mut Reader<'_>) -> CoreResult<Version> {
        let origin = parse_origin(&r.string(64)?)?;
        let hlc = Hlc::decoded(r.u64()?, r.u32()?)?;
        let value = match r.u8()? {
            1 => Some(r.bytes(BODY_BYTES_MAX)?.to_vec()),
            0 => None,
            other => return Err(CoreError::Corrupt(format!("bad value tag {other}"))),
        };
        let vv = decode_vv(r)?;
        Ok(Version { value, hlc, origin, vv })
    }

    pub fn encode(reg: &Register) -> Vec<u8> {
        let mut w = Writer::new();
        w.u8(STORED_VERSION);
        w.u64(reg.versions().len() as u64);
        for v in reg.versions() {
            encode_version(&mut w, v);
        }
        w.finish()
    }

    pub fn decode(bytes: &[u8]) -> CoreResult<Register> {
        let mut r = Reader::new(bytes);
        let versions = match r.u8()? {
            1 => vec![decode_version(&mut r)?],
            2 => {
                let n = r.len(SIBLINGS_MAX)?;
                (0..n).map(|_| decode_version(&mut r)).collect::<CoreResult<Vec<_>>>()?
            }
            found => return Err(CoreError::UnsupportedVersion { found, supported: STORED_VERSION }),
        };
        r.expect_end()?;
        Register::from_versions(versions).ok_or_else(|| CoreError::Corrupt("a register without versions".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::WALL_MS_MAX;
    use crate::ids::RegionId;
    use proptest::prelude::*;

    fn origin(i: u8, epoch: u64) -> Origin {
        Origin::new(RegionId::new(["us-east", "eu-west", "ap-south"][i as usize % 3]).unwrap(), epoch)
    }

    fn vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u8..3, 1u64..1000, 1u64..u64::MAX), 0..5)
            .prop_map(|v| v.into_iter().map(|(o, e, s)| (origin(o, e), s)).collect())
    }

    fn body() -> impl Strategy<Value = ChangeBody> {
        prop_oneof![
            (proptest::collection::vec(any::<u8>(), 0..64), vv()).prop_map(|(value, vv)| ChangeBody::Put { value, vv }),
            vv().prop_map(|vv| ChangeBody::Delete { vv }),
            proptest::collection::vec(any::<u8>(), 0..64).prop_map(|change| ChangeBody::Doc { change }),
            (vv(), vv()).prop_map(|(floor, stable)| ChangeBody::Mark { floor, stable }),
        ]
    }

    fn change() -> impl Strategy<Value = Change> {
        (0..=WALL_MS_MAX, any::<u32>(), "[a-z]{1,8}", "\\PC{1,16}", body(), proptest::option::of(any::<u128>()))
            .prop_map(|(wall_ms, logical, bucket, key, body, resolves)| {
                let mark = body.is_mark();
                Change {
                    hlc: Hlc { wall_ms, logical },
                    bucket: if mark { String::new() } else { bucket },
                    key: if mark { String::new() } else { key },
                    body,
                    resolves: resolves.map(uuid::Uuid::from_u128),
                }
            })
    }

    fn changeset() -> impl Strategy<Value = Changeset> {
        (0u8..3, 1u64..u64::MAX / 2, 1u64..1_000_000, proptest::collection::vec(change(), 1..8))
            .prop_map(|(o, e, first_seq, changes)| Changeset { origin: origin(o, e), first_seq, changes })
    }

    proptest! {
        #[test]
        fn changesets_round_trip(cs in changeset()) {
            let bytes = cs.encode();
            prop_assert_eq!(Changeset::peek_origin(&bytes), Some(cs.origin.clone()));
            prop_assert_eq!(Changeset::decode(&bytes).unwrap(), cs);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Changeset::decode(&bytes);
            let _ = stored::decode(&bytes);
        }

        #[test]
        fn damaged_changesets_are_rejected_or_decode_to_something_valid(
            cs in changeset(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), bit in 0u8..8
        ) {
            let bytes = cs.encode();
            // Truncation always fails: the format ends exactly at the last change.
            let n = cut.index(bytes.len());
            prop_assert!(Changeset::decode(&bytes[..n]).is_err());
            // A flipped bit either fails or decodes to a changeset that re-encodes to itself.
            let mut damaged = bytes.clone();
            damaged[flip.index(bytes.len())] ^= 1 << bit;
            if let Ok(d) = Changeset::decode(&damaged) {
                prop_assert_eq!(Changeset::decode(&d.encode()).unwrap(), d);
            }
        }

        #[test]
        fn stored_registers_round_trip(value in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
                                       vv in vv(), wall_ms in 0..=WALL_MS_MAX, logical in any::<u32>()) {
            let mut own = vv.clone();
            own.observe(&origin(1, 3), 1);
            let v = crate::lww::Version { value, hlc: Hlc { wall_ms, logical }, origin: origin(1, 3), vv: own };
            let mut reg = crate::lww::Register::new(v.clone());
            let other = crate::lww::Version { value: None, hlc: Hlc { wall_ms: 1, logical: 0 }, origin: origin(2, 9),
                vv: [(origin(2, 9), 1)].into_iter().collect() };
            reg.insert(other);
            prop_assert_eq!(stored::decode(&stored::encode(&reg)).unwrap(), reg);
        }
    }

    #[test]
    fn times_past_the_year_9999_do_not_decode() {
        let change = |wall_ms| Change {
            hlc: Hlc { wall_ms, logical: u32::MAX },
            bucket: "b".into(),
            key: "k".into(),
            body: ChangeBody::Delete { vv: [(origin(0, 1), 1)].into_iter().collect() },
            resolves: None,
        };
        let cs = |wall_ms| Changeset { origin: origin(0, 1), first_seq: 1, changes: vec![change(wall_ms)] };
        assert!(Changeset::decode(&cs(WALL_MS_MAX).encode()).is_ok());
        assert!(matches!(Changeset::decode(&cs(u64::MAX).encode()), Err(CoreError::Corrupt(_))));
        let version = |wall_ms| crate::lww::Version {
            value: None,
            hlc: Hlc { wall_ms, logical: 0 },
            origin: origin(0, 1),
            vv: [(origin(0, 1), 1)].into_iter().collect(),
        };
        let reg = |wall_ms| crate::lww::Register::new(version(wall_ms));
        assert!(stored::decode(&stored::encode(&reg(WALL_MS_MAX))).is_ok());
        assert!(matches!(stored::decode(&stored::encode(&reg(WALL_MS_MAX + 1))), Err(CoreError::Corrupt(_))));
    }

    #[test]
    fn newer_versions_are_refused_by_name() {
        let cs = Changeset {
            origin: origin(0, 1),
            first_seq: 1,
            changes: vec![Change {
                hlc: Hlc::ZERO,
                bucket: "b".into(),
                key: "k".into(),
                body: ChangeBody::Delete { vv: VersionVector::new() },
                resolves: None,
            }],
        };
        let mut bytes = cs.encode();
        bytes[3] = 9;
        assert_eq!(Changeset::decode(&bytes), Err(CoreError::UnsupportedVersion { found: 9, supported: 2 }));
    }

    #[test]
    fn a_changeset_with_a_mark_is_version_2_and_a_mark_needs_it() {
        let mark = Change {
            hlc: Hlc::ZERO,
            bucket: String::new(),
            key: String::new(),
            body: ChangeBody::Mark {
                floor: [(origin(0, 1), 7), (origin(1, 2), 3)].into_iter().collect(),
                stable: [(origin(0, 1), 5)].into_iter().collect(),
            },
            resolves: None,
        };
        let cs = Changeset { origin: origin(0, 1), first_seq: 8, changes: vec![mark] };
        let bytes = cs.encode();
        assert_eq!(bytes[3], 2);
        assert_eq!(Changeset::decode(&bytes).unwrap(), cs);
        let mut old = bytes.clone();
        old[3] = 1;
        assert!(matches!(Changeset::decode(&old), Err(CoreError::Corrupt(_))), "no mark in a version 1 changeset");
        // A changeset without marks stays version 1: every build reads it.
        let plain = Changeset {
            origin: origin(0, 1),
            first_seq: 1,
            changes: vec![Change {
                hlc: Hlc::ZERO,
                bucket: "b".into(),
                key: "k".into(),
                body: ChangeBody::Delete { vv: VersionVector::new() },
                resolves: None,
            }],
        };
        assert_eq!(plain.encode()[3], 1);
    }
}
