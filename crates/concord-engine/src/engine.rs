//! The engine's state between steps, how it is opened from durable state, what it shows,
//! and the invariants [`Engine::validate`] checks after every step.

use std::collections::{BTreeMap, BTreeSet};

use concord_core::changeset::Changeset;
use concord_core::hlc::Clock;
use concord_core::ids::{Origin, RegionId};
use concord_core::vv::VersionVector;

use crate::Fatal;
use crate::marks::context_met;
use crate::state::{Durable, Mark, Waiting};
use crate::writer::Writer;

/// The largest sequence a replica holds (applied, cursor, void from). JetStream's
/// sequences are `u64`, but no log reaches 2^63 (a million appends a second for 290,000
/// years): a stored sequence past it is damage, and the bound leaves room to add one.
pub const SEQ_MAX: u64 = i64::MAX as u64;

/// Most changesets kept waiting behind gaps, and their bytes, unless configured.
pub const WAITING_MAX_DEFAULT: usize = 10_000;
pub const WAITING_BYTES_MAX_DEFAULT: usize = 256 << 20;
/// Most appends a writer has in flight at once, unless configured.
pub const APPENDS_IN_FLIGHT_MAX_DEFAULT: usize = 4;

/// How a replica starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAs {
    /// Reads its region's log to its end, then writes in a new epoch.
    Leader,
    /// Reads every stream, its region's log included, and never writes.
    Follower,
}

/// A deliberately broken rule, for the simulator to prove it catches such bugs.
#[cfg(feature = "mutations")]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// LWW merge by timestamp alone: a concurrent version is overwritten, not kept as a
    /// sibling, so no conflict is recorded.
    IgnoreVersionVector,
    /// A changeset after a gap is applied at once, and the applied vector jumps the gap.
    ApplyPastGaps,
    /// A changeset stored right after a message that is not its predecessor waits for
    /// its predecessor (for ever) instead of being recognized as void.
    WaitBehindVoid,
    /// The changeset of another region that holds its origin's change number
    /// [`DROPPED_SEQ`] is counted as applied, but none of its changes is: a replica
    /// silently loses one changeset of every other origin.
    DropChangeset,
    /// Tombstones are collected as soon as this replica applied them (no marks, no
    /// stability): a write concurrent with the delete, arriving later, brings the key
    /// back here and nowhere else.
    CollectEarly,
}

/// The origin sequence whose changeset [`Mutation::DropChangeset`] drops.
#[cfg(feature = "mutations")]
pub const DROPPED_SEQ: u64 = 3;

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub region: RegionId,
    /// The region's own log.
    pub own_stream: String,
    /// Every stream this replica applies (its own log included) and whose log each holds.
    pub streams: BTreeMap<String, RegionId>,
    /// Buckets whose conflicts wait for a person.
    pub manual_buckets: BTreeSet<String>,
    /// Most changesets waiting behind gaps; beyond it the stream parks.
    pub waiting_max: usize,
    pub waiting_bytes_max: usize,
    /// The largest value of another replica's put that applies; a changeset holding a
    /// larger one is a dead letter. It must be at least what every writer of the
    /// deployment accepts (the node's `value_bytes_max`, the same in every region), or
    /// acknowledged writes become dead letters here. Unless configured: the largest
    /// body a changeset can carry (`BODY_BYTES_MAX`), so nothing that decodes is refused.
    pub value_bytes_max: usize,
    /// Most appends a writer has in flight at once (pipelined group commit): each
    /// changeset is appended while the ones before it are still being stored, and
    /// acknowledged in order. At least 1.
    pub appends_in_flight_max: usize,
    #[cfg(feature = "mutations")]
    pub mutation: Option<Mutation>,
}

impl EngineConfig {
    /// A configuration with the defaults: `streams` must include `own_stream`.
    pub fn new(region: RegionId, own_stream: String, streams: BTreeMap<String, RegionId>) -> EngineConfig {
        assert_eq!(streams.get(&own_stream), Some(&region), "the own stream holds the region's log");
        EngineConfig {
            region,
            own_stream,
            streams,
            manual_buckets: BTreeSet::new(),
            waiting_max: WAITING_MAX_DEFAULT,
            waiting_bytes_max: WAITING_BYTES_MAX_DEFAULT,
            value_bytes_max: concord_core::changeset::BODY_BYTES_MAX,
            appends_in_flight_max: APPENDS_IN_FLIGHT_MAX_DEFAULT,
            #[cfg(feature = "mutations")]
            mutation: None,
        }
    }

    #[cfg(feature = "mutations")]
    pub(crate) fn mutated(&self, m: Mutation) -> bool {
        self.mutation == Some(m)
    }
}

/// Why a stream stopped: nothing at or after `stream_seq` is applied until a node that
/// can read it runs (the cursor stays before it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub stream_seq: u64,
    pub reason: String,
    /// Parked because the waiting table was full: it resumes by itself once there is
    /// room. (A newer format waits for a node that reads it.)
    pub for_room: bool,
}

/// An origin whose changesets wait behind a gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub origin: Origin,
    /// The highest contiguous sequence applied.
    pub applied: u64,
    /// The first sequence of the first waiting changeset.
    pub next_waiting: u64,
    pub waiting: usize,
    /// Where the first waiting changeset was read: the changesets missing before it
    /// were stored below `stream_seq` (what a repair reads back from).
    pub stream: String,
    pub stream_seq: u64,
}

/// An entry consumed from a stream, as far as the entry after it is checked against it
/// ([`crate::classify`], "void").
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tail {
    pub seq: u64,
    /// Its changeset's origin and last sequence; `None`: not a changeset this replica
    /// reads (garbage).
    pub changeset: Option<(Origin, u64)>,
}

/// A waiting changeset, decoded once.
#[derive(Debug, Clone)]
pub(crate) struct Held {
    pub meta: Waiting,
    pub cs: Changeset,
}

pub struct Engine {
    pub(crate) cfg: EngineConfig,
    pub(crate) clock: Clock,
    pub(crate) applied: VersionVector,
    pub(crate) cursors: BTreeMap<String, u64>,
    pub(crate) parked: BTreeMap<String, Parked>,
    pub(crate) waiting: BTreeMap<Origin, BTreeMap<u64, Held>>,
    pub(crate) waiting_bytes: usize,
    pub(crate) dead_letters: u64,
    pub(crate) writer: Writer,
    pub(crate) tails: BTreeMap<String, Tails>,
    /// See [`Durable::void_from`].
    pub(crate) void_from: BTreeMap<Origin, u64>,
    /// Each origin's latest mark applied ([`crate::marks`]).
    pub(crate) marks: BTreeMap<Origin, Mark>,
    /// When this writer last made a mark (`now_ms` of that write), in its current epoch.
    pub(crate) marked_at_ms: Option<u64>,
    /// Per origin, the latest sequence applied here that held data (not a mark): what
    /// a mark has news of (in memory; unknown after a restart).
    pub(crate) data_seq: BTreeMap<Origin, u64>,
}

/// What a held changeset's marks need that `applied` lacks.
fn missing_context(cs: &Changeset, applied: &VersionVector) -> VersionVector {
    let mut need = VersionVector::new();
    for c in &cs.changes {
        if let concord_core::changeset::ChangeBody::Mark { stable, .. } = &c.body {
            need.join(stable);
        }
    }
    need.iter().filter(|(o, s)| applied.get(o) < *s && **o != cs.origin).map(|(o, s)| (o.clone(), s)).collect()
}

/// Per stream, in memory (unknown after a restart; dropped when messages were removed
/// unread): the last entry consumed, and the one with the highest sequence (they differ
/// while a stream is delivered again from further back).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tails {
    pub latest: Tail,
    pub highest: Tail,
}

impl Tails {
    pub fn consumed(old: Option<Tails>, t: Tail) -> Tails {
        let highest = match old {
            Some(o) if o.highest.seq > t.seq => o.highest,
            _ => t.clone(),
        };
        Tails { latest: t, highest }
    }
}

impl Engine {
    /// The engine as durable state left it. Waiting changesets must decode (they did
    /// when they were stored): one that does not means local state is corrupt.
    pub fn open(cfg: EngineConfig, durable: Durable, start: StartAs) -> Result<Engine, Fatal> {
        assert!(cfg.appends_in_flight_max >= 1, "a writer needs room for one append");
        let mut waiting: BTreeMap<Origin, BTreeMap<u64, Held>> = BTreeMap::new();
        let mut waiting_bytes = 0;
        for meta in durable.waiting {
            let cs = Changeset::decode(&meta.payload)
                .map_err(|e| Fatal(format!("a stored waiting changeset of {}: {e}", meta.origin)))?;
            waiting_bytes += meta.payload.len();
            waiting.entry(meta.origin.clone()).or_default().insert(meta.first_seq, Held { meta, cs });
        }
        // Cursors of streams no longer configured (a region left the deployment) stay
        // stored but are not this engine's concern.
        let cursors = durable.cursors.into_iter().filter(|(s, _)| cfg.streams.contains_key(s)).collect();
        let mut engine = Engine {
            cfg,
            clock: Clock::default(),
            applied: durable.applied,
            cursors,
            parked: BTreeMap::new(),
            waiting,
            waiting_bytes,
            dead_letters: durable.dead_letters,
            writer: Writer::Follower,
            tails: BTreeMap::new(),
            void_from: durable.void_from,
            marks: durable.marks,
            marked_at_ms: None,
            data_seq: BTreeMap::new(),
        };
        let broken = |e| Fatal(format!("durable state breaks an invariant: {e}"));
        engine.check_sequences().map_err(broken)?;
        if start == StartAs::Leader {
            engine.begin_catch_up(None);
        }
        engine.validate().map_err(broken)?;
        Ok(engine)
    }

    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    pub fn applied(&self) -> &VersionVector {
        &self.applied
    }

    /// The last stream sequence consumed (applied, held back or dead-lettered).
    pub fn cursor(&self, stream: &str) -> u64 {
        self.cursors.get(stream).copied().unwrap_or(0)
    }

    pub fn cursors(&self) -> &BTreeMap<String, u64> {
        &self.cursors
    }

    pub fn parked(&self) -> &BTreeMap<String, Parked> {
        &self.parked
    }

    pub fn dead_letters(&self) -> u64 {
        self.dead_letters
    }

    /// Origins whose changesets wait behind a gap (not those that wait for a mark's
    /// context: [`Engine::context_waits`]).
    pub fn gaps(&self) -> Vec<Gap> {
        self.waiting
            .iter()
            .filter(|(origin, held)| held.keys().next().is_some_and(|f| *f > self.applied.get(origin) + 1))
            .filter_map(|(origin, held)| {
                let (&next_waiting, first) = held.iter().next()?;
                Some(Gap {
                    origin: origin.clone(),
                    applied: self.applied.get(origin),
                    next_waiting,
                    waiting: held.len(),
                    stream: first.meta.stream.clone(),
                    stream_seq: first.meta.stream_seq,
                })
            })
            .collect()
    }

    /// Origins whose next changeset waits until this replica applies what its mark says
    /// every region had applied ([`crate::marks`]), with what is missing of it.
    pub fn context_waits(&self) -> Vec<(Origin, VersionVector)> {
        self.waiting
            .iter()
            .filter_map(|(origin, held)| {
                let (first, h) = held.iter().next()?;
                (*first <= self.applied.get(origin) + 1)
                    .then(|| (origin.clone(), missing_context(&h.cs, &self.applied)))
            })
            .collect()
    }

    pub fn waiting_count(&self) -> usize {
        self.waiting.values().map(BTreeMap::len).sum()
    }

    /// Whether one more changeset of `bytes` may wait.
    pub(crate) fn waiting_has_room(&self, count: usize, waiting_bytes: usize, bytes: usize) -> bool {
        count < self.cfg.waiting_max && waiting_bytes + bytes <= self.cfg.waiting_bytes_max
    }

    /// The streams a runtime should follow now, each from the position after its cursor:
    /// every configured stream except parked ones, and except the region's own log while
    /// this replica leads (it writes that log; it reads it only to catch up).
    pub fn streams_to_follow(&self) -> Vec<(String, u64)> {
        self.cfg
            .streams
            .keys()
            .filter(|s| !self.parked.contains_key(*s))
            .filter(|s| **s != self.cfg.own_stream || self.writer.follows_own_log())
            .map(|s| (s.clone(), self.cursor(s) + 1))
            .collect()
    }

    /// Every sequence held is at most [`SEQ_MAX`]: the other checks, and every step, add
    /// one to them.
    fn check_sequences(&self) -> Result<(), String> {
        let applied = self.applied.iter().map(|(o, s)| (o.to_string(), s));
        let cursors = self.cursors.iter().map(|(s, c)| (s.clone(), *c));
        let void = self.void_from.iter().map(|(o, s)| (o.to_string(), *s));
        match applied.chain(cursors).chain(void).find(|(_, seq)| *seq > SEQ_MAX) {
            Some((name, seq)) => {
                Err(format!("{name} is at sequence {seq}, past the largest a log reaches ({SEQ_MAX})"))
            }
            None => Ok(()),
        }
    }

    /// The invariants that hold between steps. Checked after every step by the
    /// simulator and, in debug builds, by the node runtime.
    pub fn validate(&self) -> Result<(), String> {
        self.check_sequences()?;
        for (origin, held) in &self.waiting {
            let have = self.applied.get(origin);
            for (first, h) in held {
                if *first != h.meta.first_seq || h.meta.origin != *origin || h.cs.first_seq != *first {
                    return Err(format!("waiting changeset {origin}:{first} is filed under the wrong key"));
                }
                if *first <= have + 1 && context_met(&h.cs, &self.applied) {
                    return Err(format!("{origin}:{first} waits although {origin} is applied up to {have}"));
                }
            }
        }
        // (More may wait than `waiting_max` allows when the bound was lowered since: they
        // stay; the bound refuses new ones.)
        let bytes: usize = self.waiting.values().flat_map(|h| h.values()).map(|h| h.meta.payload.len()).sum();
        if bytes != self.waiting_bytes {
            return Err(format!("waiting accounting: {bytes} bytes counted as {}", self.waiting_bytes));
        }
        for (stream, parked) in &self.parked {
            if self.cursor(stream) >= parked.stream_seq {
                return Err(format!("{stream} is parked at {} but its cursor is past it", parked.stream_seq));
            }
        }
        for (origin, from) in &self.void_from {
            if *from <= self.applied.get(origin) + 1 {
                return Err(format!("{origin} is void from {from} but applied up to {}", self.applied.get(origin)));
            }
            if self.waiting.get(origin).is_some_and(|h| h.keys().next_back().is_some_and(|f| f >= from)) {
                return Err(format!("a changeset of {origin} waits although {origin} is void from {from}"));
            }
        }
        if let Some(s) = self.cursors.keys().find(|s| !self.cfg.streams.contains_key(*s)) {
            return Err(format!("a cursor for {s}, which this replica does not read"));
        }
        self.writer.validate(self)
    }
}
