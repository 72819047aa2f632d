//! The simulator over many seeds, its determinism, and proof that it catches broken rules.
//!
//! - `many_seeds`: `CONCORD_SIM_SEEDS` seeds (default 500) from `CONCORD_SIM_BASE`
//!   (default: from the clock, printed), on every core, every fault enabled.
//! - `one_seed`: `CONCORD_SIM_SEED=N` runs one seed and prints its line.

use concord_sim::{Mutation, Options, Report, run};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

/// Run `seeds` on every core; reports in seed order.
fn run_all(seeds: Vec<u64>, opts: Options) -> Vec<Report> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).max(1);
    let chunks: Vec<Vec<u64>> =
        (0..threads).map(|t| seeds.iter().copied().skip(t).step_by(threads).collect()).collect();
    let mut reports: Vec<Report> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| s.spawn(move || c.into_iter().map(|seed| run(seed, opts)).collect::<Vec<_>>()))
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a simulation thread panicked")).collect()
    });
    reports.sort_by_key(|r| r.seed);
    reports
}

#[test]
fn many_seeds() {
    let count = env_u64("CONCORD_SIM_SEEDS").unwrap_or(500);
    let base = env_u64("CONCORD_SIM_BASE").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_secs() * 1000
    });
    println!("simulating seeds {base}..{} (CONCORD_SIM_BASE={base} CONCORD_SIM_SEEDS={count})", base + count);
    let started = std::time::Instant::now();
    let reports = run_all((base..base + count).collect(), Options::default());
    let mut totals: std::collections::BTreeMap<&str, u64> = Default::default();
    for r in &reports {
        println!("{}", r.line());
        for (k, v) in &r.counts {
            *totals.entry(k).or_default() += v;
        }
    }
    let acked: usize = reports.iter().map(|r| r.acked).sum();
    let unknown: usize = reports.iter().map(|r| r.unknown).sum();
    println!(
        "{count} seeds in {:.1} s; {acked} writes acknowledged, {unknown} unanswered (crashes); faults and events: {totals:?}",
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&Report> = reports.iter().filter(|r| r.failure.is_some()).collect();
    for r in &failed {
        println!("FAILED {}: {}\n  reproduce: {}", r.line(), r.failure.as_deref().unwrap_or(""), r.reproduce());
    }
    assert!(failed.is_empty(), "{} of {count} seeds failed (see above for how to reproduce each)", failed.len());
    for fault in [
        "crashes",
        "dropped messages",
        "redeliveries",
        "unknown appends",
        "promotions",
        "deposed leaders",
        "partitions",
        "gaps opened",
        "abandoned appends",
        "void appends",
        "log entries removed",
        "gaps lifted",
        "values dropped by anti-entropy",
    ] {
        assert!(totals.get(fault).copied().unwrap_or(0) > 0, "no run exercised {fault}");
    }
}

#[test]
fn one_seed() {
    let seed = env_u64("CONCORD_SIM_SEED").unwrap_or(1);
    let report = run(seed, Options::default());
    println!("{}", report.line());
    println!(
        "faults and events: {:?}; {} writes acknowledged, {} unanswered",
        report.counts, report.acked, report.unknown
    );
    if let Some(why) = &report.failure {
        panic!("{why}\n  reproduce: {}", report.reproduce());
    }
}

#[test]
fn the_same_seed_prints_the_same_line() {
    for seed in [7, 4242] {
        let (a, b) = (run(seed, Options::default()), run(seed, Options::default()));
        assert_eq!(a.line(), b.line(), "seed {seed} is not deterministic");
        assert_eq!(a.failure, b.failure);
    }
    assert_ne!(run(7, Options::default()).digest, run(8, Options::default()).digest, "different seeds, different runs");
}

/// Run seeds with a broken rule until one fails; it must, and again on a rerun.
fn caught(mutation: Mutation) -> Report {
    caught_with(Options { mutation: Some(mutation), ..Options::default() })
}

fn caught_with(opts: Options) -> Report {
    let mutation = opts.mutation.expect("a mutation");
    let reports = run_all((1..=60).collect(), opts);
    let failed = reports.into_iter().find(|r| r.failure.is_some());
    let failed =
        failed.unwrap_or_else(|| panic!("60 seeds ran with {mutation:?} and none failed: the simulator misses it"));
    let again = run(failed.seed, opts);
    assert_eq!(again.failure, failed.failure, "the failing seed reproduces");
    assert_eq!(again.line(), failed.line());
    println!("{mutation:?} caught: {} — {}", failed.line(), failed.failure.as_deref().unwrap_or(""));
    failed
}

#[test]
fn a_merge_that_ignores_version_vectors_is_caught() {
    let failed = caught(Mutation::IgnoreVersionVector);
    let why = failed.failure.expect("failed");
    assert!(why.contains("acknowledged write"), "caught by the lost-write check: {why}");
}

#[test]
fn applying_past_a_gap_is_caught() {
    let failed = caught(Mutation::ApplyPastGaps);
    let why = failed.failure.expect("failed");
    assert!(why.contains("given only"), "caught by the gap check: {why}");
}

#[test]
fn waiting_behind_a_void_changeset_is_caught() {
    // A deposed leader's second pipelined append lands right after the new leader's
    // first message (it expected that sequence), after a hole in its origin that never
    // fills: a replica that waits for it never converges.
    let failed = caught(Mutation::WaitBehindVoid);
    let why = failed.failure.expect("failed");
    assert!(why.contains("gaps"), "caught as a gap that never closes: {why}");
}

#[test]
fn collecting_a_tombstone_before_every_region_applied_it_is_caught() {
    // A write concurrent with a delete reaches a replica that already collected the
    // tombstone: the key comes back there and nowhere else, or a later write of it is a
    // conflict there and nowhere else.
    // Anti-entropy would repair it (the peer's state has the tombstone's effect): this
    // is about what collection alone does.
    let failed =
        caught_with(Options { mutation: Some(Mutation::CollectEarly), anti_entropy: false, ..Options::default() });
    let why = failed.failure.expect("failed");
    assert!(why.contains("differ"), "caught as replicas that differ: {why}");
}
