//! Who writes the region's log: the writer's states and their transitions.
//!
//! ```text
//!  Follower ───────────────────────────────────────────── reads every stream
//!  CatchingUp ──caught_up──▶ (need an epoch) ──start_writing──▶ Writing
//!       ▲                  └─▶ Deposed (another origin of the region wrote later)
//!       │                  └─▶ Stuck (the region's log is parked: upgrade)
//!  Writing ──append_done(Failed)──┘
//! ```
//!
//! A leader starts by reading its region's log to its end, so everything acknowledged
//! (acknowledged = in the log) is applied before it writes; then it writes in a new
//! epoch (a new origin and Automerge actor, never reused). An append carries the log
//! sequence it must follow, so a deposed writer's appends are refused by the log; when
//! an append fails or its outcome is unknown, the writer catches up again: if the log
//! now holds a later origin of its region, it was deposed and becomes a follower of its
//! own log (what it acknowledged is in the log and merges as usual); otherwise it goes on
//! in a new epoch, so no origin sequence is ever reused for other content.
//!
//! ## Pipelined appends
//!
//! A writer keeps up to `appends_in_flight_max` appends in flight (group commit,
//! pipelined): the next changeset is made while the ones before it are being stored.
//! Each names the log sequence its predecessor will take as the one it follows, so the
//! log stores them in order, each only right after the one before it:
//!
//! - outcomes are taken in order; a changeset's writers are answered, and its state
//!   committed, only once it and every one before it are stored;
//! - a new changeset is made over the state of the ones in flight (the facts loaded
//!   from the store are brought forward by their batches, [`Facts::with_batch`]);
//! - when an append fails, every later one is abandoned with it (its writers hear the
//!   write may still apply; the runtime drops them): the writer catches up, and reading
//!   the log tells what of them was stored.
//!
//! A sequence alone lets one thing through: when a new leader's first message takes the
//! place the old leader's next append expected, the old leader's append after that one
//! expects exactly the place after the new leader's message, and is stored there,
//! behind a hole in its origin that nothing can ever fill (its predecessor could only
//! ever be stored where the new leader's message is). Every replica recognizes such a
//! changeset by the message right before it in the log, which is not its predecessor,
//! and dead-letters it instead of waiting for ever ([`crate::classify`], "void"). (The
//! log could refuse it instead, by the predecessor's message id; but on a three-server
//! JetStream cluster, NATS 2.15.1, one append refused that way leaves the stream taking
//! no more messages: see `concord-transport/tests/nats_fencing.rs`.)
//!
//! Stream entries are not applied while appends are in flight (a batch in flight was
//! made over state that an apply would change): the runtime lets the pipeline drain
//! first.

use std::collections::VecDeque;

use concord_core::hlc::Hlc;
use concord_core::ids::Origin;

use crate::engine::Engine;
use crate::output::{Ack, Alert, AppendOutcome, Output, WriteError};
use crate::state::Batch;

#[cfg(doc)]
use crate::state::Facts;

/// An append on its way: what it acknowledges once the log stored it.
#[derive(Debug)]
pub(crate) struct Inflight {
    pub first_seq: u64,
    pub last_seq: u64,
    /// Each write of the changeset and, when it made a change, its sequence and time.
    pub members: Vec<(u64, Option<(u64, Hlc)>)>,
    pub batch: Batch,
    /// The last sequence of the changeset that holds data (not a mark).
    pub data_last: Option<u64>,
}

#[derive(Debug)]
pub(crate) enum Writer {
    /// Reads every stream, its region's log included; never writes.
    Follower,
    /// Reads its region's log to the end before writing (`previous`: the origin it
    /// wrote as before, if any; `next`: the next log sequence to read).
    CatchingUp { previous: Option<Origin>, next: u64 },
    Writing {
        origin: Origin,
        /// The first sequence of the next changeset to be stored (applied + 1).
        next_seq: u64,
        /// Appends made and not yet ended, oldest first (contiguous from `next_seq`).
        inflight: VecDeque<Inflight>,
    },
    /// Another origin of the region wrote after this one: a follower now.
    Deposed { origin: Origin, by: Origin },
    /// The region's log is parked at a message this node cannot read.
    Stuck { reason: String },
}

/// What a replica is now, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoleView {
    Follower,
    CatchingUp,
    Leader { origin: Origin },
    Deposed { origin: Origin, by: Origin },
    Stuck { reason: String },
}

/// What a catching-up leader reads next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Not catching up.
    Idle,
    /// Read these sequences of the region's log, apply them, then call
    /// [`Engine::read_through`] with `to`.
    Read { from: u64, to: u64 },
    /// Read to the end (or the log is parked): call [`Engine::caught_up`].
    Done,
}

/// What a leader does after reading its region's log to the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaughtUp {
    /// Allocate a new epoch and call [`Engine::start_writing`].
    NeedEpoch,
    /// Not yet: this replica has not applied everything its region's previous writers
    /// had (`missing`): what their marks say they applied, or what a changeset of the
    /// region waits for ([`crate::marks`]). It arrives through the other streams: apply
    /// them, then read the log's end again and call [`Engine::caught_up`] again.
    Waiting {
        missing: concord_core::vv::VersionVector,
    },
    Deposed {
        by: Origin,
    },
    Stuck {
        reason: String,
    },
}

impl Writer {
    pub fn follows_own_log(&self) -> bool {
        matches!(self, Writer::Follower | Writer::Deposed { .. })
    }

    pub fn validate(&self, e: &Engine) -> Result<(), String> {
        let Writer::Writing { origin, next_seq, inflight } = self else { return Ok(()) };
        if origin.region != e.cfg.region {
            return Err(format!("writing as {origin} in region {}", e.cfg.region));
        }
        if e.applied.get(origin) + 1 != *next_seq {
            return Err(format!("{origin} next sequence {next_seq}, applied {}", e.applied.get(origin)));
        }
        if inflight.len() > e.cfg.appends_in_flight_max {
            return Err(format!("{} appends in flight, at most {}", inflight.len(), e.cfg.appends_in_flight_max));
        }
        let mut expect = *next_seq;
        for i in inflight {
            if i.first_seq != expect || i.last_seq < i.first_seq {
                return Err(format!(
                    "an append in flight for {}..{} where {expect} comes next",
                    i.first_seq, i.last_seq
                ));
            }
            expect = i.last_seq + 1;
        }
        if e.parked.contains_key(&e.cfg.own_stream) {
            return Err("writing while the region's log is parked".into());
        }
        if let Some(later) = e.applied.iter().find(|(o, _)| o.region == origin.region && o.epoch > origin.epoch) {
            return Err(format!("writing as {origin} although {} wrote later", later.0));
        }
        Ok(())
    }
}

impl Engine {
    pub fn role(&self) -> RoleView {
        match &self.writer {
            Writer::Follower => RoleView::Follower,
            Writer::CatchingUp { .. } => RoleView::CatchingUp,
            Writer::Writing { origin, .. } => RoleView::Leader { origin: origin.clone() },
            Writer::Deposed { origin, by } => RoleView::Deposed { origin: origin.clone(), by: by.clone() },
            Writer::Stuck { reason } => RoleView::Stuck { reason: reason.clone() },
        }
    }

    /// The origin this replica writes as, while it writes.
    pub fn writing_origin(&self) -> Option<Origin> {
        match &self.writer {
            Writer::Writing { origin, .. } => Some(origin.clone()),
            _ => None,
        }
    }

    /// Whether a writer should mark now (`now_ms`): it has not in this epoch, or its
    /// last mark is `interval_ms` old and it has news: data applied that its last floor
    /// does not cover, or data that its last `stable` did not cover and every region's
    /// floors now cover more of. Marks alone are no news (each region's mark would
    /// otherwise make the others mark, for ever): an idle deployment stops marking once
    /// every mark covers all the data.
    pub fn mark_due(&self, now_ms: u64, interval_ms: u64) -> bool {
        let Some(origin) = self.writing_origin() else { return false };
        match self.marked_at_ms {
            None => true,
            Some(at) if now_ms.saturating_sub(at) < interval_ms => false,
            Some(_) => {
                // The first mark of the epoch is on its way.
                let Some(last) = self.marks.get(&origin) else { return false };
                let news = |v: &concord_core::vv::VersionVector| self.data_seq.iter().any(|(o, s)| *s > v.get(o));
                news(&last.floor) || (news(&last.stable) && self.stable().is_some_and(|s| s != last.stable))
            }
        }
    }

    /// Whether this replica follows its region's log (a follower, or deposed): it may be
    /// promoted.
    pub fn role_follows(&self) -> bool {
        self.writer.follows_own_log()
    }

    /// A timer fired; `log_last` is the region log's last sequence now. A writer that
    /// finds the log longer than what it wrote knows another writer appended: it reads
    /// the log to the end (and so learns whether it was deposed) before writing again.
    /// Without this, a deposed writer that takes no writes would never notice.
    pub fn tick(&mut self, log_last: u64) -> Output {
        let own = self.cursor(&self.cfg.own_stream);
        match &self.writer {
            Writer::Writing { origin, inflight, .. } if inflight.is_empty() && log_last > own => {
                self.begin_catch_up(Some(origin.clone()));
                Output { catch_up: true, ..Output::default() }
            }
            _ => Output::default(),
        }
    }

    /// True between an [`Output::append`] and its [`Engine::append_done`]: the runtime
    /// applies no stream entries then.
    pub fn append_in_flight(&self) -> bool {
        self.appends_in_flight() > 0
    }

    /// How many appends are in flight.
    pub fn appends_in_flight(&self) -> usize {
        match &self.writer {
            Writer::Writing { inflight, .. } => inflight.len(),
            _ => 0,
        }
    }

    /// Whether [`Engine::write`] may be called now: this replica does not write (the
    /// writes are refused at once), or it has room for one more append in flight.
    pub fn takes_writes(&self) -> bool {
        self.appends_in_flight() < self.cfg.appends_in_flight_max
    }

    /// Start catching up: from the cursor on, or from the log's start when an origin of
    /// this region has a gap here (a follower that missed a message is promoted: what
    /// it missed may still be in the log, and a writer must have it all).
    pub(crate) fn begin_catch_up(&mut self, previous: Option<Origin>) {
        let gap = self.waiting.keys().any(|o| o.region == self.cfg.region);
        let next = if gap { 1 } else { self.cursor(&self.cfg.own_stream) + 1 };
        self.writer = Writer::CatchingUp { previous, next };
    }

    /// What a catching-up leader reads next, at most `chunk_max` messages; `log_last`
    /// is the log's last sequence (read when the catch-up began, or later).
    pub fn catch_up_next(&self, log_last: u64, chunk_max: u64) -> CatchUp {
        let Writer::CatchingUp { next, .. } = self.writer else { return CatchUp::Idle };
        if next > log_last || self.parked.contains_key(&self.cfg.own_stream) {
            return CatchUp::Done;
        }
        CatchUp::Read { from: next, to: log_last.min(next + chunk_max.max(1) - 1) }
    }

    /// The catch-up read its region's log through `to`.
    pub(crate) fn caught_up_through(&mut self, stream: &str, to: u64) {
        if let Writer::CatchingUp { next, .. } = &mut self.writer
            && stream == self.cfg.own_stream
        {
            *next = (*next).max(to + 1);
        }
    }

    /// The leader read its region's log up to `log_last` (the log's last sequence when
    /// the catch-up began or later): decide whether it writes again.
    pub fn caught_up(&mut self, log_last: u64) -> (CaughtUp, Output) {
        assert_eq!(self.catch_up_next(log_last, 1), CatchUp::Done, "caught_up before reading to the end");
        let Writer::CatchingUp { previous, .. } = &self.writer else { unreachable!("checked above") };
        let previous = previous.clone();
        let own = self.cfg.own_stream.clone();
        if let Some(parked) = self.parked.get(&own) {
            let reason = format!("the region's log is parked: {}", parked.reason);
            self.writer = Writer::Stuck { reason: reason.clone() };
            return (CaughtUp::Stuck { reason }, Output::default());
        }
        let mut out = Output::default();
        let later = previous.as_ref().and_then(|p| {
            self.applied.iter().map(|(o, _)| o).filter(|o| o.region == p.region && o.epoch > p.epoch).max().cloned()
        });
        match (previous, later) {
            (Some(origin), Some(by)) => {
                out.alerts.push(Alert::Deposed { origin: origin.clone(), by: by.clone() });
                out.follow.push((own.clone(), self.cursor(&own) + 1));
                self.writer = Writer::Deposed { origin, by: by.clone() };
                (CaughtUp::Deposed { by }, out)
            }
            _ => match self.not_ready_to_write() {
                Some(missing) => (CaughtUp::Waiting { missing }, out),
                None => (CaughtUp::NeedEpoch, out),
            },
        }
    }

    /// A follower becomes its region's writer: it stops following its region's log,
    /// reads it to the end ([`Output::catch_up`]), then writes in a new epoch.
    pub fn promote(&mut self) -> Output {
        assert!(self.writer.follows_own_log(), "promote while {:?}", self.writer);
        self.begin_catch_up(None);
        Output { unfollow: vec![self.cfg.own_stream.clone()], catch_up: true, ..Output::default() }
    }

    /// The writer lost its lease (or could not renew it in time): it stops writing at
    /// once and follows its region's log, so whoever takes the lease over finds what it
    /// acknowledged there. Called between steps (never with an append in flight).
    pub fn step_down(&mut self) -> Output {
        assert!(!self.append_in_flight(), "step_down with an append in flight");
        let origin = match &self.writer {
            Writer::Writing { origin, .. } => Some(origin.clone()),
            Writer::CatchingUp { previous, .. } => previous.clone(),
            Writer::Follower | Writer::Deposed { .. } => return Output::default(),
            Writer::Stuck { .. } => None,
        };
        self.writer = Writer::Follower;
        let own = self.cfg.own_stream.clone();
        let mut out = Output { alerts: vec![Alert::SteppedDown { origin }], ..Output::default() };
        if !self.parked.contains_key(&own) {
            out.follow.push((own.clone(), self.cursor(&own) + 1));
        }
        out
    }

    /// Write as `epoch` from now on: an epoch never used before in this region (the
    /// runtime allocates it with compare-and-set).
    ///
    /// When the region's log already holds an origin of this epoch or a later one, this
    /// replica does not write: it is deposed by that origin, and follows its region's
    /// log again (it may be promoted again, with a new epoch). Epochs come from a
    /// counter, so that log entry was not written by a leader the counter knew of: the
    /// counter was reset, or someone published a changeset of a forged epoch (fuzzing
    /// found that a forged `u64::MAX` made this an assertion that stopped the node at
    /// every promotion). Until the counter passes that epoch, the region takes no writes.
    pub fn start_writing(&mut self, epoch: u64) -> Output {
        assert!(matches!(self.writer, Writer::CatchingUp { .. }), "start_writing while {:?}", self.writer);
        let region = self.cfg.region.clone();
        let origin = Origin::new(region.clone(), epoch);
        let later = self.applied.iter().map(|(o, _)| o).filter(|o| o.region == region && o.epoch >= epoch).max();
        if let Some(by) = later.cloned() {
            let own = self.cfg.own_stream.clone();
            let follow = (!self.parked.contains_key(&own)).then(|| (own.clone(), self.cursor(&own) + 1));
            self.writer = Writer::Deposed { origin: origin.clone(), by: by.clone() };
            return Output {
                alerts: vec![Alert::Deposed { origin, by }],
                follow: follow.into_iter().collect(),
                ..Output::default()
            };
        }
        self.writer = Writer::Writing { origin: origin.clone(), next_seq: 1, inflight: VecDeque::new() };
        self.marked_at_ms = None;
        Output { alerts: vec![Alert::Leading { origin }], ..Output::default() }
    }

    /// How the oldest append in flight ended (outcomes are reported in the order the
    /// appends were made). When it failed, the appends after it are abandoned with it
    /// ([`Output::appends_abandoned`]): their writers are answered now, and the runtime
    /// must not report them.
    pub fn append_done(&mut self, outcome: AppendOutcome) -> Output {
        let Writer::Writing { origin, inflight, .. } = &mut self.writer else {
            panic!("append_done while {:?}", self.writer)
        };
        let flight = inflight.pop_front().expect("an append in flight");
        let (origin, behind) = (origin.clone(), !inflight.is_empty());
        let expected = self.cursor(&self.cfg.own_stream) + 1;
        let mut out = Output::default();
        let unknown =
            |why: &str| WriteError::LogUnavailable(format!("write not acknowledged (it may still apply): {why}"));
        match outcome {
            AppendOutcome::Stored { stream_seq } if stream_seq == expected => {
                self.stored(flight, origin, stream_seq, &mut out);
            }
            AppendOutcome::Stored { stream_seq } => {
                let why =
                    format!("the log stored the changeset at {stream_seq}, not at {expected}: reading the log again");
                fail(&mut out, flight.members, unknown(&why));
                self.abandon(origin, &mut out);
            }
            // Nothing was stored; the appends behind it expected it in the log, so they
            // are refused too (or were already).
            AppendOutcome::TooLarge(why) => {
                fail(&mut out, flight.members, WriteError::TooLarge(why));
                if behind {
                    self.abandon(origin, &mut out);
                }
            }
            AppendOutcome::Failed(why) => {
                fail(&mut out, flight.members, unknown(&why));
                self.abandon(origin, &mut out);
            }
        }
        out
    }

    /// The log stored `flight` where it belongs: commit it, acknowledge its writers.
    fn stored(&mut self, flight: Inflight, origin: Origin, stream_seq: u64, out: &mut Output) {
        let Writer::Writing { next_seq, .. } = &mut self.writer else { unreachable!("called while writing") };
        *next_seq = flight.last_seq + 1;
        let own = self.cfg.own_stream.clone();
        self.applied.observe(&origin, flight.last_seq);
        self.cursors.insert(own.clone(), stream_seq);
        for (o, mark) in &flight.batch.marks {
            self.marks.insert(o.clone(), mark.clone());
        }
        if let Some(seq) = flight.data_last {
            self.data_seq.insert(origin.clone(), seq);
        }
        let mut batch = flight.batch;
        batch.applied.push((origin.clone(), flight.last_seq));
        batch.cursors.push((own, stream_seq));
        out.commit = Some(batch);
        out.stats.changesets_published = 1;
        out.stats.changes_published = flight.last_seq - flight.first_seq + 1;
        for (id, made) in flight.members {
            let ack = Ack {
                origin: origin.clone(),
                seq: made.map(|(s, _)| s),
                hlc: made.map(|(_, h)| h),
                log_seq: made.map(|_| stream_seq),
            };
            out.stats.writes_acked += 1;
            out.replies.push((id, Ok(ack)));
        }
    }

    /// An append failed: the ones after it are abandoned, and the writer reads its log
    /// to the end before it writes again (which tells what of them was stored).
    fn abandon(&mut self, origin: Origin, out: &mut Output) {
        let Writer::Writing { inflight, .. } = &mut self.writer else { unreachable!("called while writing") };
        out.appends_abandoned = inflight.len();
        for flight in inflight.drain(..) {
            let e = WriteError::LogUnavailable(
                "write not acknowledged (it may still apply): an append made before it failed".into(),
            );
            fail(out, flight.members, e);
        }
        self.begin_catch_up(Some(origin));
        out.catch_up = true;
    }

    /// Why this replica refuses writes now, if it does.
    pub(crate) fn not_writing(&self) -> Option<WriteError> {
        match &self.writer {
            Writer::Writing { .. } => None,
            Writer::Follower => Some(WriteError::NotLeader("this replica is a follower".into())),
            Writer::CatchingUp { .. } => {
                Some(WriteError::NotLeader("this leader is reading its region's log before it writes".into()))
            }
            Writer::Deposed { by, .. } => {
                Some(WriteError::NotLeader(format!("this replica lost its leadership to {by} (fenced)")))
            }
            Writer::Stuck { reason } => Some(WriteError::Parked(reason.clone())),
        }
    }
}

fn fail(out: &mut Output, members: Vec<(u64, Option<(u64, Hlc)>)>, e: WriteError) {
    for (id, _) in members {
        out.stats.writes_failed += 1;
        out.replies.push((id, Err(e.clone())));
    }
}
