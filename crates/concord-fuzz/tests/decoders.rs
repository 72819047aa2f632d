//! Bounded fuzzing in CI: every surface of `concord_fuzz` on arbitrary bytes, and on
//! valid encodings (the seeds, made by Concord's own encoders) damaged by a few
//! mutations (bits flipped, bytes set, inserted, deleted, ranges truncated, duplicated,
//! spliced from another seed), so the cases reach past each decoder's first checks.
//!
//! Case counts keep the whole file well under a minute in a debug build on two cores;
//! `CONCORD_FUZZ_CASES=N` runs N cases of every property instead. The cases are drawn
//! from a fixed seed, so CI draws the same ones every run and never fails by chance;
//! `CONCORD_FUZZ_SEED=N` draws others, `CONCORD_FUZZ_SEED=random` new ones each run
//! (libFuzzer, `.ci/fuzz.sh`, explores too). A failure prints the shrunk input: fix the bug, and
//! keep the input in `tests/fuzz_regressions.rs`.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngSeed};

/// The seed CI draws its cases from.
const SEED: u64 = 0x00c0_4c04_d0f0_22ed;

/// `default` cases, or `CONCORD_FUZZ_CASES`; drawn from [`SEED`], or `CONCORD_FUZZ_SEED`.
fn config(default: u32) -> Config {
    let cases = std::env::var("CONCORD_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(default);
    let rng_seed = match std::env::var("CONCORD_FUZZ_SEED").as_deref() {
        Err(_) => RngSeed::Fixed(SEED),
        Ok("random") => RngSeed::Random,
        Ok(n) => RngSeed::Fixed(n.parse().expect("CONCORD_FUZZ_SEED: a number, or `random`")),
    };
    Config { cases, rng_seed, failure_persistence: None, ..Config::default() }
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
    Duplicate(Index, usize),
    /// Overwrite from another seed of the same target (or the same one elsewhere).
    Splice(Index, Index, Index, usize),
    /// An interesting integer as a LEB128 varint (how lengths, counts, sequences and
    /// times are encoded) or as text (how tokens, cursors and JSON hold them).
    Number(Index, u64, bool),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let number = prop_oneof![
        Just(0u64),
        Just(1),
        Just(127),
        Just(128),
        Just(u64::from(u32::MAX)),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        any::<u64>()
    ];
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        (any::<Index>(), vec(any::<u8>(), 1..8)).prop_map(|(i, b)| Mutation::Insert(i, b)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| Mutation::Delete(i, n)),
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1usize..32).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
        (any::<Index>(), any::<Index>(), any::<Index>(), 1usize..64)
            .prop_map(|(s, f, t, n)| Mutation::Splice(s, f, t, n)),
        (any::<Index>(), number, any::<bool>()).prop_map(|(i, n, text)| Mutation::Number(i, n, text)),
    ]
}

fn varint(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

fn apply(mut data: Vec<u8>, m: &Mutation, seeds: &[Vec<u8>]) -> Vec<u8> {
    let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
    match m {
        Mutation::FlipBit(i, bit) if !data.is_empty() => {
            let i = at(i, data.len());
            data[i] ^= 1 << bit;
        }
        Mutation::SetByte(i, b) if !data.is_empty() => {
            let i = at(i, data.len());
            data[i] = *b;
        }
        Mutation::Insert(i, bytes) => {
            let i = at(i, data.len() + 1);
            data.splice(i..i, bytes.iter().copied());
        }
        Mutation::Delete(i, n) if !data.is_empty() => {
            let i = at(i, data.len());
            data.drain(i..(i + n).min(data.len()));
        }
        Mutation::Truncate(i) => data.truncate(at(i, data.len() + 1)),
        Mutation::Duplicate(i, n) if !data.is_empty() => {
            let i = at(i, data.len());
            let copy = data[i..(i + n).min(data.len())].to_vec();
            data.splice(i..i, copy);
        }
        Mutation::Splice(s, from, to, n) => {
            let other = &seeds[s.index(seeds.len())];
            if !other.is_empty() {
                let from = at(from, other.len());
                let piece = &other[from..(from + n).min(other.len())];
                let to = at(to, data.len() + 1);
                let end = (to + piece.len()).min(data.len());
                data.splice(to..end, piece.iter().copied());
            }
        }
        Mutation::Number(i, n, text) => {
            let i = at(i, data.len() + 1);
            let bytes = if *text { n.to_string().into_bytes() } else { varint(*n) };
            data.splice(i..i, bytes);
        }
        _ => {}
    }
    data
}

/// A seed of `target`, damaged by 1 to 6 mutations.
fn mutated(target: &'static str) -> impl Strategy<Value = Vec<u8>> {
    mutated_from(concord_fuzz::seeds::seeds(target))
}

fn mutated_from(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    assert!(!seeds.is_empty(), "no seeds to mutate");
    (any::<Index>(), vec(mutation(), 1..6)).prop_map(move |(pick, ms)| {
        let seed = seeds[pick.index(seeds.len())].clone();
        ms.iter().fold(seed, |data, m| apply(data, m, &seeds))
    })
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

/// For the text surfaces: arbitrary text, mostly of the characters that matter there.
fn text() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof!["\\PC{0,64}", "[a-z0-9.%=,:/ \\n{}\\[\\]\"-]{0,64}"].prop_map(String::into_bytes)
}

/// `[#[cfg(..)]] surface: arbitrary cases, mutated cases, arbitrary input;`: a module per
/// surface with both properties.
macro_rules! surfaces {
    ($($(#[$cfg:meta])* $name:ident: $arbitrary:expr, $mutated:expr, $input:expr;)+) => {$(
        $(#[$cfg])*
        mod $name {
            use super::*;

            proptest! {
                #![proptest_config(config($arbitrary))]
                #[test]
                fn arbitrary_input(data in $input) {
                    concord_fuzz::$name(&data);
                }
            }

            proptest! {
                #![proptest_config(config($mutated))]
                #[test]
                fn mutated_seeds(data in mutated(stringify!($name))) {
                    concord_fuzz::$name(&data);
                }
            }
        }
    )+};
}

surfaces! {
    changeset: 10_000, 20_000, bytes(512);
    stored_register: 10_000, 20_000, bytes(256);
    log_entry: 2_000, 4_000, bytes(512);
    session_token: 10_000, 10_000, text();
    doc_ops: 3_000, 6_000, text();
    #[cfg(feature = "node")]
    http_path: 10_000, 10_000, text();
    #[cfg(feature = "node")]
    nats_request: 10_000, 10_000, text();
    #[cfg(feature = "node")]
    sync_frame: 2_000, 4_000, bytes(512);
    cursors: 3_000, 6_000, text();
    snapshot: 2_000, 4_000, bytes(512);
    automerge_doc: 3_000, 6_000, bytes(512);
    automerge_change: 3_000, 6_000, bytes(512);
    api_json: 5_000, 10_000, text();
}
