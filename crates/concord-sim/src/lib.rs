//! A deterministic fault simulator of Concord's replication engine.
//!
//! Seeded and single-threaded, with simulated time, in-memory logs (JetStream's rules:
//! deduplication, expected-last-sequence fencing) and in-memory stores (the node
//! store's semantics), it runs several regions, each with a leader and followers, all
//! real [`concord_engine::Engine`]s, through random client writes and faults (see
//! [`world`]; garbage published straight to a log among them, and retention removing
//! log entries that other regions have not read, which only anti-entropy rounds repair),
//! then settles (heals, restarts, delivers everything, runs anti-entropy rounds, and
//! re-delivers every stream from its start) and checks:
//!
//! - after every step of every node: the engine's invariants (`validate`), its store
//!   agrees with it (applied vector, cursors, waiting changesets, dead letters), and its
//!   applied vector never claims a sequence it was not given contiguously, dead letters
//!   not counting as given (nothing applied past a gap or a dead letter);
//! - every acknowledgement names the sequence at which the log stored the write;
//! - at the end: every replica converged (applied vectors, LWW registers byte for byte,
//!   the document's JSON and heads; nothing parked, waiting or pending), every
//!   acknowledged LWW write is current, causally overwritten or in the replica's conflict
//!   log, and the counter equals the increments the logs hold (each applied once; every
//!   acknowledged increment is among them).
//!
//! A run prints `sim seed=N steps=S digest=HEX` (the digest hashes every replica's final
//! state); the same seed gives the same line. Reproduce one run with
//! `CONCORD_SIM_SEED=N cargo test -p concord-sim --test sim -- --nocapture one_seed`.

mod check;
mod digest;
mod log;
mod oracle;
mod rng;
mod runtime;
pub mod world;

use world::World;

/// A deliberately broken engine rule (see `concord_engine::Mutation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    IgnoreVersionVector,
    ApplyPastGaps,
    WaitBehindVoid,
    CollectEarly,
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub regions: usize,
    /// Followers per region.
    pub followers: usize,
    /// Steps of the fault phase.
    pub steps: usize,
    pub faults: bool,
    pub mutation: Option<Mutation>,
    /// Retention removes log entries, and anti-entropy rounds run (as steps, and when
    /// settling). Without it nothing repairs a divergence but the logs: what a broken
    /// rule did stays visible.
    pub anti_entropy: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options { regions: 3, followers: 1, steps: 300, faults: true, mutation: None, anti_entropy: true }
    }
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Report {
    pub seed: u64,
    pub steps: u64,
    pub digest: u64,
    /// What broke, if anything.
    pub failure: Option<String>,
    /// Faults injected and events seen, by name.
    pub counts: Vec<(&'static str, u64)>,
    pub acked: usize,
    pub unknown: usize,
}

impl Report {
    /// The line every run prints.
    pub fn line(&self) -> String {
        format!("sim seed={} steps={} digest={:016x}", self.seed, self.steps, self.digest)
    }

    /// How to run this seed again.
    pub fn reproduce(&self) -> String {
        format!("CONCORD_SIM_SEED={} cargo test -p concord-sim --test sim -- --nocapture one_seed", self.seed)
    }
}

/// Run one seed.
pub fn run(seed: u64, opts: Options) -> Report {
    let mut world = World::new(seed, opts);
    let result = simulate(&mut world);
    let mut h = digest::Fnv::new();
    for node in &world.nodes {
        digest::replica(&mut h, &node.name, &node.store);
    }
    Report {
        seed,
        steps: world.steps,
        digest: h.finish(),
        failure: result.err(),
        counts: world.counts.iter().map(|(k, v)| (*k, *v)).collect(),
        acked: world.oracle.count(|s| matches!(s, oracle::Status::Acked(_))),
        unknown: world.oracle.count(|s| matches!(s, oracle::Status::Unknown)),
    }
}

fn simulate(world: &mut World) -> Result<(), String> {
    world.setup()?;
    world.faulty = world.opts.faults;
    for _ in 0..world.opts.steps {
        world.step()?;
    }
    world.settle()?;
    world.redeliver_everything()?;
    world.collect_all()?;
    world.check()
}
